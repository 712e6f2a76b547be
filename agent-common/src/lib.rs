//! Types shared by Latch's kernel programs (`agent-ebpf`) and the host agent (`agent`).
//!
//! This crate owns every byte layout that crosses the kernel/user boundary: map keys and values,
//! the ring-buffer event record, action and outcome codes, map names and the target fingerprint
//! both sides compute. It is `#![no_std]`, allocation-free and has no logic beyond encoding; it
//! must not learn about rules files, gRPC or anything else that only one side needs.
//!
//! Every type is `#[repr(C)]`, `Copy`, has its padding spelled out as named fields (so that the
//! kernel never reads uninitialised bytes from a key) and a compile-time size check. With the
//! `user` feature each type also implements `aya::Pod`.
#![no_std]
#![deny(missing_docs)]

pub mod fingerprint;
pub mod maps;

/// What a rule (or a workload's default) says to do with an operation.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// Let it through without a record.
    Allow = 1,
    /// Let it through and record it.
    Audit = 2,
    /// Hold it until a decision arrives.
    Approve = 3,
    /// Refuse it (EPERM for connect/sendmsg, EPERM or SIGKILL for exec).
    Deny = 4,
}

impl Action {
    /// Decodes a byte read from a map or an event.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Allow),
            2 => Some(Self::Audit),
            3 => Some(Self::Approve),
            4 => Some(Self::Deny),
            _ => None,
        }
    }

    /// How strict an action is; on equally specific rules the stricter one wins.
    pub const fn strictness(self) -> u8 {
        self as u8
    }
}

/// What happens when the agent's heartbeat is stale and nobody can decide.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailMode {
    /// Refuse every operation that would have waited for a decision.
    Deny = 1,
    /// Let it through and record that it was let through unreviewed.
    AllowAndRecord = 2,
}

/// The kind of operation an event or a pending entry is about.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// A new program image (`execve`/`execveat`).
    Exec = 1,
    /// `connect()` on a TCP or UDP socket.
    Connect = 2,
    /// `sendmsg()`/`sendto()` with an explicit destination on an unconnected UDP socket.
    Sendmsg = 3,
    /// Debugging another process (`ptrace` attach, `PTRACE_TRACEME`, `process_vm_writev`,
    /// `/proc/PID/mem`), refused to a watched task; never held.
    Debug = 4,
    /// A watched thread moved out of every watched cgroup (`cgroup.procs`, `cgroup.threads`):
    /// still watched by its lineage; reported, never held.
    Move = 5,
    /// A 32-bit system call by a watched task on the tracepoint backend, which ends the task;
    /// the event's `target` is the call's (32-bit) number. Never held.
    Syscall32 = 6,
    /// A watched task made a process that shares its descriptor table or its memory (`clone`
    /// with `CLONE_FILES`, or `CLONE_VM` without `CLONE_VFORK`, and without `CLONE_THREAD`) on
    /// the tracepoint backend, which ends the task; the event's `target` is the new process's
    /// tgid. Never held.
    Shared = 7,
    /// A watched task was passed a socket made outside the cgroups of its workload
    /// (`SCM_RIGHTS`): refused (LSM) or the task ended (tracepoint backend). The event's
    /// `target` is the socket's address family. Never held.
    Received = 8,
}

impl Op {
    /// Decodes a byte read from a map or an event.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Exec),
            2 => Some(Self::Connect),
            3 => Some(Self::Sendmsg),
            4 => Some(Self::Debug),
            5 => Some(Self::Move),
            6 => Some(Self::Syscall32),
            7 => Some(Self::Shared),
            8 => Some(Self::Received),
            _ => None,
        }
    }
}

/// What the kernel did with an operation, as reported in an [`Event`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Let through by an `audit` rule.
    Audited = 1,
    /// Refused by a `deny` rule.
    Denied = 2,
    /// Held; a decision is needed (see [`PENDING`](maps::PENDING)).
    Paused = 3,
    /// Let through by a grant.
    Granted = 4,
    /// Refused by a deny grant.
    GrantDenied = 5,
    /// Nobody could decide (stale heartbeat) and the fail mode let it through.
    FailOpen = 6,
    /// Nobody could decide (stale heartbeat, full pending table) and the fail mode refused it.
    FailClosed = 7,
    /// The context cannot be paused and restarted (io_uring worker, signal refused): refused.
    Unpausable = 8,
    /// The process went away while its operation was pending.
    Cancelled = 9,
}

impl Outcome {
    /// Decodes a byte read from an event.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Audited),
            2 => Some(Self::Denied),
            3 => Some(Self::Paused),
            4 => Some(Self::Granted),
            5 => Some(Self::GrantDenied),
            6 => Some(Self::FailOpen),
            7 => Some(Self::FailClosed),
            8 => Some(Self::Unpausable),
            9 => Some(Self::Cancelled),
            _ => None,
        }
    }
}

/// Protocol numbers as the kernel reports them in `bpf_sock_addr.protocol`.
pub mod proto {
    /// Matches every protocol in a rule.
    pub const ANY: u8 = 0;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
}

/// Address families as in `<sys/socket.h>`.
pub mod family {
    /// IPv4.
    pub const INET: u8 = 2;
    /// IPv6.
    pub const INET6: u8 = 10;
    /// Link layer (`AF_PACKET`): an event about such a socket carries no address.
    pub const PACKET: u8 = 17;
}

/// Longest executable path, in bytes, that exec rules and events hold. Rules with longer paths are
/// refused at load time; longer paths at exec time are reported truncated and match only prefixes.
pub const PATH_CAP: usize = 248;

/// Most cgroup levels examined when deciding whether a task is watched (its own and its ancestors).
pub const MAX_CGROUP_DEPTH: u32 = 24;

/// Most port/protocol entries one destination prefix carries, inherited entries included.
pub const PORT_RULES_CAP: usize = 16;

/// Rule id the kernel puts on an exec it cannot match by itself (a relative path such as
/// `./curl`): it is held like an approval, and the agent resolves the program's real path and
/// applies the rules to it.
pub const RESOLVE_RULE: u32 = u32::MAX;

/// Rule id the agent puts on an exec path or file that rules with `args` name: the kernel
/// cannot read a program's arguments before the exec, so such an exec is held once the new
/// image is in place, before its first instruction, and the agent decides on the arguments the
/// program received. It ranks as an approval: a rule that denies the program outright wins.
pub const ARGS_RULE: u32 = u32::MAX - 1;

/// As [`ARGS_RULE`], where a rule with `args` denies some invocations: when nobody can decide
/// (the agent is gone or degraded), such an exec is refused whatever the fail mode, since
/// the invocations the rule denies cannot be told apart from the others without the agent.
pub const ARGS_DENY_RULE: u32 = u32::MAX - 2;

/// Whether a kernel rule id holds an exec for the agent to decide on its arguments.
pub const fn is_args_rule(rule_id: u32) -> bool {
    rule_id == ARGS_RULE || rule_id == ARGS_DENY_RULE
}

/// `clone` flags (`include/uapi/linux/sched.h`).
pub mod clone_flags {
    /// The memory is shared.
    pub const VM: u64 = 0x100;
    /// The descriptor table is shared.
    pub const FILES: u64 = 0x400;
    /// The maker waits until the child execs or exits.
    pub const VFORK: u64 = 0x4000;
    /// A thread of the maker's process.
    pub const THREAD: u64 = 0x10000;
}

/// Whether a task made with these `clone` flags is another process that shares its maker's
/// descriptor table, or its memory while the maker runs on (`vfork`'s maker waits until the
/// child execs or exits). On the tracepoint backend, a watched task that makes one is ended.
pub const fn clone_shares(flags: u64) -> bool {
    use clone_flags::*;
    if flags & THREAD != 0 {
        return false;
    }
    flags & FILES != 0 || (flags & VM != 0 && flags & VFORK == 0)
}

/// `-ERESTARTNOINTR`: makes the kernel run the system call again after the stop.
pub const ERESTARTNOINTR: i32 = -513;

/// A watched cgroup: every task in it, or in a cgroup below it, is inspected.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watch {
    /// The workload this cgroup belongs to; rules are keyed by it.
    pub workload: u32,
    /// [`Action`] for operations that no rule matches.
    pub default_action: u8,
    /// [`watch_flags`].
    pub flags: u8,
    /// [`Action`] for a connection to an address that no network rule covers and that the
    /// workload did not resolve from a name; 0: the default action.
    pub unresolved: u8,
    /// Explicit padding.
    pub _pad: u8,
}

/// Bits of [`Watch::flags`].
pub mod watch_flags {
    /// The workload's rules decide programs by content (`sha256`, `copies`, `unknown_programs`):
    /// an exec of a file whose verdict is not in [`CONTENT`](crate::maps::CONTENT), or whose
    /// change time moved since, is held for the agent to hash.
    pub const CONTENT: u8 = 1;
    /// The workload's rules name hosts (or say what unresolved destinations get): its DNS
    /// queries go to the agent's resolver proxy, and connections are decided first by the
    /// names it learned ([`LEARNED`](crate::maps::LEARNED)).
    pub const NAMES: u8 = 2;
}

/// Where a watched workload sent a DNS query that the socket hooks turned to the agent's
/// resolver proxy: the value of [`DNS_ORIG`](maps::DNS_ORIG) (by socket cookie) and of
/// [`DNS_PEERS`](maps::DNS_PEERS) (by the port the proxy hears the query from).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsOrigin {
    /// The destination as the workload wrote it (network order; an IPv4 address in the first
    /// 4 bytes on an IPv4 socket): written back as the source of the proxy's answers.
    pub user: [u8; 16],
    /// The server as decided (family [`DnsOrigin::family`]; `0.0.0.0` already made the local
    /// address the kernel would use): where the proxy forwards the query.
    pub addr: [u8; 16],
    /// The workload whose rules the answer's names fall under.
    pub workload: u32,
    /// The server's port, host order.
    pub port: u16,
    /// [`family`] of `addr`.
    pub family: u8,
    /// [`proto::TCP`] or [`proto::UDP`].
    pub proto: u8,
    /// The workload socket's own port once known (host order; 0 before): its
    /// [`DNS_PEERS`](maps::DNS_PEERS) entry, removed when the socket is released.
    pub peer_port: u16,
    /// Explicit padding.
    pub _pad: [u8; 6],
}

/// Key of [`DNS_PEERS`](maps::DNS_PEERS): a workload's socket as the proxy sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DnsPeerKey {
    /// Local port of the workload's socket, host order.
    pub port: u16,
    /// [`proto::TCP`] or [`proto::UDP`].
    pub proto: u8,
    /// [`family`] the query reaches the proxy over.
    pub family: u8,
}

/// Key of [`LEARNED`](maps::LEARNED): an address a workload resolved a name to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LearnedKey {
    /// Workload id.
    pub workload: u32,
    /// [`family`].
    pub family: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
    /// The address, network order; IPv4 in the first 4 bytes, the rest zero.
    pub addr: [u8; 16],
}

/// Value of [`LEARNED`](maps::LEARNED): the clauses of the name rules that cover the names the
/// workload last resolved to this address (none: resolved, but no name rule names it), until
/// the answer's TTL runs out.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Learned {
    /// `CLOCK_MONOTONIC` ns after which the entry no longer counts.
    pub expires_ns: u64,
    /// The clauses, most specific first, as in the network rules.
    pub rules: PortRules,
}

/// Value of [`CONTENT`](maps::CONTENT), keyed by [`ExecFileKey`]: what a file's content gets
/// from one workload's rules, while the file is unchanged.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContentVerdict {
    /// The file's change time (ns since the epoch) as the kernel read it when the file was held:
    /// any write or metadata change moves it, and a different value is a miss.
    pub ctime_ns: u64,
    /// The kernel address of the inode hashed: device and inode number do not tell files apart
    /// on every file system (btrfs numbers each subvolume's inodes on its own under one
    /// device), the live inode does.
    pub inode: u64,
    /// The content rule that applies (0: the workload's `unknown_programs`, or none).
    pub rule_id: u32,
    /// [`Action`]; [`Action::Allow`] when the content is known and no content rule names it.
    pub action: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
}

/// Value of [`LINEAGE`](maps::LINEAGE): a thread that was in a watched cgroup (or descends from
/// one that was) and stays watched wherever it moves.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lineage {
    /// The watched cgroup it came from.
    pub cgroup_id: u64,
    /// That cgroup's watch.
    pub watch: Watch,
}

/// A rule's identity and action, the value of the exec maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleRef {
    /// Stable rule id assigned by the agent's rule compiler.
    pub rule_id: u32,
    /// [`Action`].
    pub action: u8,
    /// [`rule_flags`] (in `EXEC_FILES` entries; 0 elsewhere).
    pub flags: u8,
    /// Explicit padding.
    pub _pad: [u8; 2],
}

/// Flags of an `EXEC_FILES` entry.
pub mod rule_flags {
    /// A rule names the file by an exact path (not only through a prefix): it is a program, so
    /// mapping it for execution without an exec (the dynamic loader run as a program) is
    /// decided as an exec of it. Files under a prefix may be libraries, which programs map.
    pub const EXACT: u8 = 1;
}

/// Key of [`EXEC_EXACT`](maps::EXEC_EXACT): one workload, one exact executable path.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecExactKey {
    /// Workload id.
    pub workload: u32,
    /// Length of `path` in bytes; bytes past it are zero.
    pub len: u32,
    /// The path, zero-padded.
    pub path: [u8; PATH_CAP],
}

/// Key of [`EXEC_FILES`](maps::EXEC_FILES): one workload, one program file by identity (the
/// device of its file system, in the kernel's `dev_t` encoding, and its inode number), so that
/// every name, link, mount and file descriptor of the file is the same program.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExecFileKey {
    /// Workload id.
    pub workload: u32,
    /// `inode->i_sb->s_dev`: major in the high 12 bits, minor in the low 20.
    pub dev: u32,
    /// `inode->i_ino`.
    pub ino: u64,
}

impl ExecFileKey {
    /// The kernel's `dev_t` for a user-space `st_dev` (glibc's encoding).
    pub fn kernel_dev(st_dev: u64) -> u32 {
        let major = ((st_dev >> 8) & 0xfff) | ((st_dev >> 32) & !0xfff);
        let minor = (st_dev & 0xff) | ((st_dev >> 12) & !0xff);
        ((major << 20) | (minor & 0xf_ffff)) as u32
    }
}

/// Data part of the LPM-trie key of [`EXEC_PREFIX`](maps::EXEC_PREFIX).
///
/// The workload id is stored big-endian first so that "workload + path prefix" is one bit prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecPrefixData {
    /// Workload id, big-endian.
    pub workload_be: [u8; 4],
    /// Path bytes.
    pub path: [u8; PATH_CAP],
}

/// Data part of the LPM-trie key of [`NET4_RULES`](maps::NET4_RULES).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net4Data {
    /// Workload id, big-endian.
    pub workload_be: [u8; 4],
    /// IPv4 address, network order.
    pub addr: [u8; 4],
}

/// Data part of the LPM-trie key of [`NET6_RULES`](maps::NET6_RULES).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net6Data {
    /// Workload id, big-endian.
    pub workload_be: [u8; 4],
    /// IPv6 address, network order.
    pub addr: [u8; 16],
}

/// One port-range and protocol clause of a destination rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRule {
    /// First port, inclusive.
    pub port_lo: u16,
    /// Last port, inclusive.
    pub port_hi: u16,
    /// [`proto`] number, or [`proto::ANY`].
    pub proto: u8,
    /// [`Action`].
    pub action: u8,
    /// Explicit padding.
    pub _pad: [u8; 2],
    /// Rule id.
    pub rule_id: u32,
}

/// Value of the destination LPM tries: every clause that applies to addresses under this prefix,
/// most specific first, so the kernel takes the first one whose port and protocol match.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRules {
    /// Number of valid entries in `rules`.
    pub len: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// The clauses; entries past `len` are zero.
    pub rules: [PortRule; PORT_RULES_CAP],
}

impl PortRules {
    /// No clause.
    pub const EMPTY: PortRules = PortRules {
        len: 0,
        _pad: 0,
        rules: [PortRule {
            port_lo: 0,
            port_hi: 0,
            proto: 0,
            action: 0,
            _pad: [0; 2],
            rule_id: 0,
        }; PORT_RULES_CAP],
    };
}

/// State of a [`Pending`] entry.
pub mod pending_state {
    /// Waiting for a decision.
    pub const WAITING: u8 = 1;
    /// Decided: let it through once.
    pub const ALLOW: u8 = 2;
    /// Decided: refuse it.
    pub const DENY: u8 = 3;
}

/// Bits of [`Pending::flags`].
pub mod pending_flags {
    /// The task has been told to stop and the agent has been told about the entry. A network
    /// hook only records the entry; the stop and the event come from the system call's exit
    /// (see `agent-ebpf`'s `hold` module), so until this bit is set nobody may decide the entry:
    /// a decision and its SIGCONT could otherwise overtake the SIGSTOP and leave the task stopped.
    pub const ANNOUNCED: u8 = 1;
    /// The held system call fails with `-ERESTARTNOINTR` and runs again once resumed, so a
    /// verdict written into the entry is consumed by the hook on that second run (network calls,
    /// and execs held by the LSM hook before the new image replaces the old). Without it the
    /// operation has already happened (an exec seen after the fact) and a deny ends the process.
    pub const RESTARTS: u8 = 2;
    /// An exec entry made at the first level of its execve (the file the caller named, not an
    /// interpreter): its approval also covers the interpreters the program runs under.
    pub const FIRST_LEVEL: u8 = 4;
}

/// An operation held in the kernel, keyed by thread id in [`PENDING`](maps::PENDING).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    /// When the operation was first held (`CLOCK_MONOTONIC` ns); with the thread id it names the
    /// request.
    pub created_ns: u64,
    /// [`fingerprint`] of the operation's target, so a decision applies only to what was asked.
    pub target: u64,
    /// Cgroup id of the task.
    pub cgroup_id: u64,
    /// Process (thread group) id.
    pub tgid: u32,
    /// Rule that asked for approval.
    pub rule_id: u32,
    /// Workload of the task.
    pub workload: u32,
    /// [`pending_state`].
    pub state: u8,
    /// [`Op`].
    pub op: u8,
    /// [`pending_flags`].
    pub flags: u8,
    /// Explicit padding.
    pub _pad: u8,
    /// Destination address of a network operation, network order (IPv4 in the first 4 bytes),
    /// so that a restarted agent can submit what it finds held without the lost event. Exec:
    /// bytes 0..8 the fingerprint of the path asked for (which the agent's retargeting of a
    /// relative path leaves alone), 8..16 the inode of the file held.
    pub addr: [u8; 16],
    /// Destination port, host order.
    pub port: u16,
    /// [`family`] for network operations, 0 for exec.
    pub family: u8,
    /// [`proto`] number.
    pub proto: u8,
    /// Exec: the device of the file held (with `addr[8..16]`, its inode), which tells the level
    /// of an interpreter chain the entry was made at; 0 for network operations.
    pub file_dev: u32,
}

/// Who a grant covers.
pub mod scope {
    /// One process (thread group).
    pub const PROCESS: u8 = 1;
    /// Every process of one workload.
    pub const WORKLOAD: u8 = 2;
    /// Every watched process on the host.
    pub const HOST: u8 = 3;
}

/// Key of [`GRANTS`](maps::GRANTS).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GrantKey {
    /// [`scope`].
    pub scope: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
    /// Rule the grant answers.
    pub rule_id: u32,
    /// tgid for [`scope::PROCESS`], workload id for [`scope::WORKLOAD`], 0 for [`scope::HOST`].
    pub subject: u64,
    /// [`fingerprint`] of the target the grant is for.
    pub target: u64,
}

/// Value of [`GRANTS`](maps::GRANTS): a standing decision.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// [`Action::Allow`] or [`Action::Deny`].
    pub action: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
    /// Uses left, counted down by the kernel; 0 means unlimited until `expires_ns`.
    pub uses_left: u32,
    /// Expiry (`CLOCK_MONOTONIC` ns); 0 means no expiry.
    pub expires_ns: u64,
}

/// The single entry of [`HEARTBEAT`](maps::HEARTBEAT).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// Last time the agent said it is alive (`CLOCK_MONOTONIC` ns). 0 = never: nothing is paused.
    pub beat_ns: u64,
    /// How old `beat_ns` may get before the kernel stops pausing.
    pub stale_after_ns: u64,
    /// [`FailMode`] applied while the heartbeat is stale.
    pub fail_mode: u8,
    /// Explicit padding.
    pub _pad: [u8; 7],
}

/// The single entry of [`FP_KEY`](maps::FP_KEY): the secret key of the host's target
/// fingerprints ([`fingerprint`]). A grant is found by the fingerprint of what it covers, so a
/// workload that could compute fingerprints could search offline for another program or
/// destination with the fingerprint of one it got approved; keyed, it cannot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FingerprintKey {
    /// First half of the SipHash key.
    pub k0: u64,
    /// Second half of the SipHash key.
    pub k1: u64,
}

impl FingerprintKey {
    /// Whether the key was never drawn (the map's initial zeros).
    pub fn is_unset(&self) -> bool {
        self.k0 == 0 && self.k1 == 0
    }
}

/// Bits of [`Event::flags`].
pub mod event_flags {
    /// The exec path was longer than [`PATH_CAP`](crate::PATH_CAP) and is cut.
    pub const PATH_TRUNCATED: u8 = 1;
    /// The operation re-entered the hook while already pending (for example after a SIGCONT
    /// that did not come from the agent).
    pub const REENTERED: u8 = 2;
    /// An exec held before it happened (LSM backend): the task still runs its old image, and a
    /// relative path is resolved against its working directory, not `/proc/PID/exe`.
    pub const BEFORE_EXEC: u8 = 4;
    /// A packet dropped by the egress backstop: no socket hook saw it, and no process is known
    /// (pid, uid and command are zero).
    pub const PACKET: u8 = 8;
    /// An exec held at an interpreter level before it happened: `path` is the interpreter this
    /// level runs (as the `#!` line names it), not the name the caller asked for.
    pub const INTERP: u8 = 16;
    /// An exec held because the verdict on the file's content is not known (not cached, or the
    /// file changed since): the agent hashes the file and decides.
    pub const CONTENT: u8 = 32;
    /// A program mapped for execution without an exec (`mmap`/`mprotect` with `PROT_EXEC`: the
    /// dynamic loader run as a program), refused: `path` is empty, the file is in `file_dev`
    /// and `addr`.
    pub const MAPPED: u8 = 64;
    /// An `AF_PACKET` socket a watched task tried to create, refused (or the task ended).
    pub const PACKET_SOCKET: u8 = 128;
}

/// A record the kernel writes to [`EVENTS`](maps::EVENTS).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// `CLOCK_MONOTONIC` ns when it happened.
    pub ts_ns: u64,
    /// Cgroup v2 id (inode number) of the task; for [`Op::Move`], the watched cgroup whose
    /// rules the thread carries.
    pub cgroup_id: u64,
    /// For [`Outcome::Paused`] and [`Outcome::Cancelled`]: the pending entry's `created_ns`.
    pub created_ns: u64,
    /// [`fingerprint`] of the target; for [`Op::Debug`], the process that was to be debugged
    /// (its tgid; 0 when not known); for [`Op::Move`], the cgroup v2 id it moved to.
    pub target: u64,
    /// Thread id; for [`Op::Move`], the thread that moved (`uid` and `gid` are then those of
    /// the task that moved it, often itself, and `comm` is the thread's when it moved itself,
    /// empty otherwise).
    pub pid: u32,
    /// Process id; for [`Op::Move`], the thread's id again (the agent reads its process).
    pub tgid: u32,
    /// Parent process id; 0 when the kernel side could not read it (the agent fills it in).
    pub ppid: u32,
    /// Real user id.
    pub uid: u32,
    /// Real group id.
    pub gid: u32,
    /// Matching rule; 0 for a workload default.
    pub rule_id: u32,
    /// Workload id.
    pub workload: u32,
    /// Destination port, host order.
    pub port: u16,
    /// [`Op`].
    pub op: u8,
    /// [`Outcome`].
    pub outcome: u8,
    /// [`Action`] that applied.
    pub action: u8,
    /// [`family`] for network operations, 0 for exec.
    pub family: u8,
    /// [`proto`] number.
    pub proto: u8,
    /// [`event_flags`].
    pub flags: u8,
    /// Exec: the device of the executed file (kernel `dev_t` encoding); 0 when unknown and for
    /// network operations.
    pub file_dev: u32,
    /// Network operations: destination address, network order (IPv4 in the first 4 bytes).
    /// Exec: bytes 0..8 the fingerprint of the path asked for, 8..16 the executed file's inode
    /// number (0 when unknown).
    pub addr: [u8; 16],
    /// Exec: the executed file's change time (ns since the epoch) as the kernel read it; 0 when
    /// unknown and for network operations.
    pub file_ctime_ns: u64,
    /// Exec: the kernel address of the executed file's inode, the other half of the content
    /// cache's key ([`ContentVerdict::inode`]); never shown.
    pub file_inode: u64,
    /// `comm` of the task.
    pub comm: [u8; 16],
    /// Executable path for exec events (zero-padded).
    pub path: [u8; PATH_CAP],
}

/// Indexes of [`COUNTERS`](maps::COUNTERS): one per kernel error path and per outcome, so that
/// nothing the kernel does is invisible.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// An event could not be reserved in the ring buffer (the agent is too slow).
    RingbufFull = 0,
    /// The pending table was full; the fail mode applied.
    PendingFull = 1,
    /// `bpf_send_signal_thread` failed; the operation was refused.
    SignalFailed = 2,
    /// The exec path could not be read.
    PathUnreadable = 3,
    /// The per-CPU scratch area was missing (cannot happen on a loaded object).
    ScratchMissing = 4,
    /// A paused thread came back with a different target than the one held.
    TargetMismatch = 5,
    /// The heartbeat entry was missing.
    HeartbeatMissing = 6,
    /// The heartbeat was stale when a pause was due.
    HeartbeatStale = 7,
    /// A context that cannot be restarted asked for approval.
    Unpausable = 8,
    /// Operations paused.
    Paused = 9,
    /// Operations refused by rule.
    Denied = 10,
    /// Operations let through by an audit rule.
    Audited = 11,
    /// Operations let through by a grant.
    Granted = 12,
    /// Paused operations re-entered while still waiting (and stopped again).
    Repaused = 13,
    /// Pending entries removed because the task exited.
    CancelledOnExit = 14,
    /// Expired grants removed.
    GrantExpired = 15,
    /// A socket address the program could not read.
    AddrUnreadable = 16,
    /// A connection a grant let through could not be recorded with its grant (so revoking the
    /// grant cannot close it).
    ConnUntracked = 17,
    /// The BPF LSM probe program ran (start-up check that LSM programs are really called).
    LsmProbeRan = 18,
    /// An exec was refused by the LSM hook (a clean `EPERM` from `execve`).
    ExecRefused = 19,
    /// A kernel field located through BTF could not be read.
    FieldUnreadable = 20,
    /// A held exec ran a system call before its decision (resumed by someone other than the
    /// agent, or by a tracer) and was killed (tracepoint backend).
    ResumeKilled = 21,
    /// The identity of an executed file could not be read; only its path was matched.
    FileUnreadable = 22,
    /// A packet from a watched workload that no socket hook decided (ping and raw sockets,
    /// other IP protocols) was dropped by the egress backstop.
    PacketDropped = 23,
    /// A `bpf()` call from a watched task was refused (LSM backend).
    BpfRefused = 24,
    /// A watched thread moved to a cgroup nobody watches (it stays watched by its lineage).
    LeftWatched = 25,
    /// A thread that needed a lineage entry found the map full.
    LineageFull = 26,
    /// The file an approved exec named was replaced before the exec ran again: the approval was
    /// not used, and the new file was decided afresh.
    ExecSwapped = 27,
    /// An exec was held for the agent to hash its file (content rules).
    ContentHeld = 28,
    /// LSM backend: an exec was let on by `bprm_check_security` and held after the new image
    /// was in place, for the agent to read its arguments (rules with `args`). The tracepoint
    /// backend holds such an exec as any other.
    ArgsHeld = 29,
    /// An exec whose arguments had to be read could not be marked for it (the `ARGS_DUE` map
    /// was full): it was refused.
    ArgsLost = 30,
    /// A file a rule refuses or holds was mapped for execution without an exec (the dynamic
    /// loader run as a program): refused (LSM) or the task ended (tracepoint backend).
    MapRefused = 31,
    /// A watched task tried to create an `AF_PACKET` socket: refused (LSM) or the task ended
    /// (tracepoint backend).
    PacketSocketRefused = 32,
    /// A watched task tried to debug another process (or to be traced): refused (LSM) or the
    /// task ended (tracepoint backend).
    DebugRefused = 33,
    /// A watched task made a 32-bit system call (`int 0x80`, or a 32-bit program), which the
    /// 64-bit system-call tracepoints do not see: the task ended (tracepoint backend).
    CompatKilled = 34,
    /// A thread watched by its lineage alone made a socket the egress backstop decides, and
    /// the socket could not be recorded (`SOCK_LINEAGE` full): the socket was refused.
    SockLineageFull = 35,
    /// A watched task made a process sharing its descriptor table or memory on the tracepoint
    /// backend, and was ended.
    ShareKilled = 36,
    /// A `vfork` child was ended for a mapping and its memory could not be recorded
    /// (`DOOMED_MM` full): its parent may run what it mapped.
    DoomedFull = 37,
    /// A watched workload's DNS query was turned to the agent's resolver proxy.
    DnsRedirected = 38,
    /// A DNS query's origin could not be recorded: it went to the server it was sent to,
    /// unseen by the proxy (its names are not learned), or the proxy could not tell whose it
    /// was and dropped it.
    DnsUnrecorded = 39,
    /// A watched task was passed a socket made outside the cgroups of its workload (whose
    /// connection or packets no rule of the task decided): refused (LSM) or the task ended
    /// (tracepoint backend).
    ReceiveRefused = 40,
}

/// Number of slots in [`COUNTERS`](maps::COUNTERS).
pub const COUNTER_SLOTS: u32 = 64;

macro_rules! size_check {
    ($($t:ty => $n:expr),* $(,)?) => {
        $(const _: () = assert!(core::mem::size_of::<$t>() == $n);)*
    };
}

size_check! {
    Watch => 8,
    Lineage => 16,
    RuleRef => 8,
    ExecExactKey => 256,
    ExecFileKey => 16,
    ExecPrefixData => 252,
    Net4Data => 8,
    Net6Data => 20,
    PortRule => 12,
    PortRules => 8 + 12 * PORT_RULES_CAP,
    Pending => 64,
    GrantKey => 24,
    Grant => 16,
    Heartbeat => 24,
    FingerprintKey => 16,
    Event => 72 + 16 + 16 + 16 + PATH_CAP,
    ContentVerdict => 24,
    DnsOrigin => 48,
    DnsPeerKey => 4,
    LearnedKey => 24,
    Learned => 8 + 8 + 12 * PORT_RULES_CAP,
}

// The LPM trie key (u32 prefix length + data) must fit the kernel's 256-byte data limit.
const _: () = assert!(core::mem::size_of::<ExecPrefixData>() <= 256);
const _: () = assert!((COUNTER_SLOTS as usize) > Counter::ReceiveRefused as usize);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: every type below is `repr(C)`, `Copy`, made only of integers and byte arrays, and
    // has its padding as explicit fields, so every bit pattern is valid and none is uninitialised.
    unsafe impl aya::Pod for Watch {}
    unsafe impl aya::Pod for FingerprintKey {}
    unsafe impl aya::Pod for Lineage {}
    unsafe impl aya::Pod for RuleRef {}
    unsafe impl aya::Pod for ExecExactKey {}
    unsafe impl aya::Pod for ExecFileKey {}
    unsafe impl aya::Pod for ExecPrefixData {}
    unsafe impl aya::Pod for Net4Data {}
    unsafe impl aya::Pod for Net6Data {}
    unsafe impl aya::Pod for PortRule {}
    unsafe impl aya::Pod for PortRules {}
    unsafe impl aya::Pod for Pending {}
    unsafe impl aya::Pod for GrantKey {}
    unsafe impl aya::Pod for Grant {}
    unsafe impl aya::Pod for Heartbeat {}
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for ContentVerdict {}
    unsafe impl aya::Pod for DnsOrigin {}
    unsafe impl aya::Pod for DnsPeerKey {}
    unsafe impl aya::Pod for LearnedKey {}
    unsafe impl aya::Pod for Learned {}
}

impl Event {
    /// Reads an event from ring-buffer bytes; `None` if the record is too short.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < core::mem::size_of::<Self>() {
            return None;
        }
        // SAFETY: length checked above; `Event` is plain old data, so any bytes are a valid
        // value, and `read_unaligned` makes no alignment assumption about the ring buffer.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_another_process_sharing_the_table_or_running_memory_is_refused() {
        use clone_flags::*;
        const SIGCHLD: u64 = 17;
        const SIGHAND: u64 = 0x800;
        // (flags, shares)
        let table = [
            (SIGCHLD, false),                               // fork
            (VM | VFORK | SIGCHLD, false),                  // vfork, posix_spawn
            (FILES | SIGCHLD, true),                        // the table alone
            (VM | SIGCHLD, true),                           // memory, its maker runs on
            (VM | VFORK | FILES | SIGCHLD, true),           // vfork with the table
            (VM | FILES | SIGHAND | THREAD, false),         // a thread
            (VM | FILES | SIGHAND | THREAD | VFORK, false), // a thread, however made
        ];
        for (flags, want) in table {
            assert_eq!(clone_shares(flags), want, "{flags:#x}");
        }
    }
}
