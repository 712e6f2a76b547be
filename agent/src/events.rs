//! Kernel events: decoding the ring buffer's records and reading them without losing any.
//!
//! Records are decoded strictly: a record with an unknown operation or outcome is an error that
//! names the byte, not a guess. Reading is batch-wise and wakes on the ring buffer's fd, so the
//! reader keeps up with bursts; what the kernel could not write is counted there
//! (`Counter::RingbufFull`) and reported by the agent.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
};

use agent_common::{event_flags, family, Event, Op, Outcome, PATH_CAP};
use aya::maps::{MapData, RingBuf};
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;

use crate::kernel::RequestId;

/// A record that is not a valid event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than an event.
    #[error("event record is {0} bytes; an event is {size}", size = std::mem::size_of::<Event>())]
    Short(usize),
    /// Unknown operation code.
    #[error("event has unknown operation code {0}")]
    Op(u8),
    /// Unknown outcome code.
    #[error("event has unknown outcome code {0}")]
    Outcome(u8),
    /// Unknown address family.
    #[error("event has unknown address family {0}")]
    Family(u8),
}

/// What a kernel event says, in user-space types.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KernelEvent {
    /// `CLOCK_MONOTONIC` ns.
    pub ts_ns: u64,
    /// Operation.
    #[serde(serialize_with = "ser_op")]
    pub op: Op,
    /// What the kernel did.
    #[serde(serialize_with = "ser_outcome")]
    pub outcome: Outcome,
    /// Rule id (0: the workload's default action).
    pub rule_id: u32,
    /// Workload id.
    pub workload: u32,
    /// Thread id.
    pub pid: u32,
    /// Process id.
    pub tgid: u32,
    /// Parent process id (0 when unknown).
    pub ppid: u32,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Cgroup id.
    pub cgroup_id: u64,
    /// Task command name.
    pub comm: String,
    /// Executable path (exec events).
    pub path: Option<String>,
    /// Whether `path` was cut at the kernel's limit.
    pub path_truncated: bool,
    /// Destination (network events).
    pub destination: Option<SocketAddr>,
    /// IP protocol number (network events).
    pub protocol: u8,
    /// The pending request this event opened or closed (paused and cancelled events).
    pub request: Option<RequestId>,
    /// Target fingerprint.
    pub target: u64,
    /// The operation had already been held and came back (a resume from elsewhere).
    pub reentered: bool,
    /// An exec held before it happened (LSM backend): the old image still runs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub before_exec: bool,
    /// A packet dropped by the egress backstop (ping and raw sockets, other IP protocols): no
    /// process is known, and no request was opened.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub packet: bool,
    /// Exec: the identity of the file that was executed (at the level that decided it: for a
    /// script, the interpreter, when that is what a rule named).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileId>,
    /// Exec held at an interpreter level before it happened: `path` is the interpreter.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interp: bool,
    /// Exec held for the agent to hash the file (the verdict on its content was not known).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub content: bool,
    /// What the agent found hashing the file, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<Program>,
    /// A program mapped for execution without an exec (the dynamic loader run as a program),
    /// refused: no path, the file is `file`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mapped: bool,
    /// An `AF_PACKET` socket the task tried to create, refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub packet_socket: bool,
    /// Debugging another process, refused: the process it was to debug (0 when not known, as
    /// for `PTRACE_TRACEME`, where it is the parent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debugged: Option<u32>,
    /// A watched thread moved out of every watched cgroup: where to. `pid` is the thread,
    /// `cgroup_id` the watched cgroup whose rules it keeps, `uid` and `comm` the mover's (the
    /// agent reads the thread's own while it lives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_to: Option<MovedTo>,
    /// A 32-bit system call that ended the task (tracepoint backend): its number in the 32-bit
    /// table (`ptrace` is 26, `socket` 359 on x86).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syscall32: Option<u32>,
    /// A process made sharing the task's descriptor table or memory, which ended the task
    /// (tracepoint backend): the new process's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_with: Option<u32>,
    /// A socket made outside the cgroups of the task's workload and passed to it, refused: its
    /// address family (2 IPv4, 10 IPv6, 17 link layer, 44 XDP; 0 when it could not be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_family: Option<u16>,
}

/// The cgroup a watched thread moved to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedTo {
    /// Its cgroup v2 id.
    pub cgroup_id: u64,
    /// Its path below the cgroup v2 root (`/batch/escape`), when the thread was still there
    /// when the agent looked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// What the agent found about the file a held exec runs (`programs::content` hashes it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Program {
    /// SHA-256 of the content, lowercase hex.
    pub sha256: String,
    /// Known to the host: installed by the package manager, or under the workload's
    /// `known_programs`.
    pub known: bool,
    /// The file's real path, as the agent opened it (`memfd:…` and `(deleted)` included).
    pub real: String,
}

/// A file's identity as the kernel saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    /// Device, kernel `dev_t` encoding (major << 20 | minor).
    pub dev: u32,
    /// Inode number.
    pub ino: u64,
    /// Change time (ns since the epoch) as the kernel read it; 0 when unknown.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ctime_ns: u64,
    /// The inode's kernel address, for the content cache's key; never recorded or sent.
    #[serde(skip)]
    pub inode: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn ser_op<S: serde::Serializer>(op: &Op, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(op_name(*op))
}

/// A short name for an operation, for logs and records.
pub fn op_name(op: Op) -> &'static str {
    match op {
        Op::Exec => "exec",
        Op::Connect => "connect",
        Op::Sendmsg => "sendmsg",
        Op::Debug => "debug",
        Op::Move => "move",
        Op::Syscall32 => "syscall32",
        Op::Shared => "shared",
        Op::Received => "received",
    }
}

fn ser_outcome<S: serde::Serializer>(o: &Outcome, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(outcome_name(*o))
}

/// A short name for an outcome, for logs and tables.
pub fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Audited => "audited",
        Outcome::Denied => "denied",
        Outcome::Paused => "paused",
        Outcome::Granted => "granted",
        Outcome::GrantDenied => "grant-denied",
        Outcome::FailOpen => "fail-open",
        Outcome::FailClosed => "fail-closed",
        Outcome::Unpausable => "unpausable",
        Outcome::Cancelled => "cancelled",
    }
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

impl KernelEvent {
    /// Decodes a ring-buffer record.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let e = Event::from_bytes(bytes).ok_or(DecodeError::Short(bytes.len()))?;
        let op = Op::from_u8(e.op).ok_or(DecodeError::Op(e.op))?;
        let outcome = Outcome::from_u8(e.outcome).ok_or(DecodeError::Outcome(e.outcome))?;
        let destination = match (op, e.family) {
            (Op::Exec | Op::Debug | Op::Move | Op::Syscall32 | Op::Shared | Op::Received, _) => {
                None
            }
            (_, family::INET) => {
                let a = Ipv4Addr::new(e.addr[0], e.addr[1], e.addr[2], e.addr[3]);
                Some(SocketAddr::new(IpAddr::V4(a), e.port))
            }
            (_, family::INET6) => Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(e.addr)), e.port)),
            // Cancellations carry no destination, nor do refused link-layer sockets.
            (_, 0) if outcome == Outcome::Cancelled => None,
            (_, family::PACKET) => None,
            (_, f) => return Err(DecodeError::Family(f)),
        };
        let path = (op == Op::Exec && e.path[0] != 0).then(|| c_string(&e.path[..PATH_CAP]));
        let request =
            matches!(outcome, Outcome::Paused | Outcome::Cancelled).then_some(RequestId {
                tid: e.pid,
                created_ns: e.created_ns,
            });
        Ok(KernelEvent {
            ts_ns: e.ts_ns,
            op,
            outcome,
            rule_id: e.rule_id,
            workload: e.workload,
            pid: e.pid,
            tgid: e.tgid,
            ppid: e.ppid,
            uid: e.uid,
            gid: e.gid,
            cgroup_id: e.cgroup_id,
            comm: c_string(&e.comm),
            path,
            path_truncated: e.flags & event_flags::PATH_TRUNCATED != 0,
            destination,
            protocol: e.proto,
            request,
            target: e.target,
            reentered: e.flags & event_flags::REENTERED != 0,
            before_exec: e.flags & event_flags::BEFORE_EXEC != 0,
            packet: e.flags & event_flags::PACKET != 0,
            file: (op == Op::Exec)
                .then(|| {
                    let mut ino = [0u8; 8];
                    ino.copy_from_slice(&e.addr[8..16]);
                    FileId {
                        dev: e.file_dev,
                        ino: u64::from_ne_bytes(ino),
                        ctime_ns: e.file_ctime_ns,
                        inode: e.file_inode,
                    }
                })
                .filter(|f| f.ino != 0),
            interp: e.flags & event_flags::INTERP != 0,
            content: e.flags & event_flags::CONTENT != 0,
            mapped: e.flags & event_flags::MAPPED != 0,
            packet_socket: e.flags & event_flags::PACKET_SOCKET != 0,
            debugged: (op == Op::Debug).then_some(e.target as u32),
            syscall32: (op == Op::Syscall32).then_some(e.target as u32),
            shared_with: (op == Op::Shared).then_some(e.target as u32),
            received_family: (op == Op::Received).then_some(e.target as u16),
            moved_to: (op == Op::Move).then_some(MovedTo {
                cgroup_id: e.target,
                path: None,
            }),
            program: None,
        })
    }

    /// Fills in what the kernel side leaves to user space (parent pid), from `/proc` while the
    /// process is still there. A process that is already gone keeps the kernel's values.
    pub fn enrich(&mut self, cgroup_root: &std::path::Path) {
        if self.op == Op::Move {
            self.enrich_move(cgroup_root);
        }
        if self.ppid == 0 {
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.tgid)) {
                if let Some(ppid) = crate::procfs::parse_ppid(&stat) {
                    self.ppid = ppid;
                }
            }
        }
    }

    /// A move's thread: its process, its name, and the path of the cgroup it moved to, read
    /// from `/proc` where it still lives in that cgroup.
    fn enrich_move(&mut self, cgroup_root: &std::path::Path) {
        let Some(to) = self.moved_to.as_mut() else {
            return;
        };
        let dir = format!("/proc/{}", self.pid);
        if let Some(tgid) = std::fs::read_to_string(format!("{dir}/status"))
            .ok()
            .as_deref()
            .and_then(crate::procfs::parse_tgid)
        {
            self.tgid = tgid;
        }
        if let Ok(comm) = std::fs::read_to_string(format!("{dir}/comm")) {
            self.comm = comm.trim_end_matches('\n').to_string();
        }
        let path = std::fs::read_to_string(format!("{dir}/cgroup"))
            .ok()
            .as_deref()
            .and_then(crate::procfs::parse_unified_cgroup)
            .map(str::to_string);
        to.path = path.filter(|p| {
            crate::cgroups::id_of(&cgroup_root.join(p.trim_start_matches('/')))
                .is_ok_and(|id| id == to.cgroup_id)
        });
    }

    /// Whether a move went below the watched cgroup the thread came from (into a child cgroup,
    /// as a supervisor does before it enables controllers): the thread is still in that
    /// subtree, so it did not leave. Not known (the thread has gone, or moved again) is `false`.
    pub fn moved_within(&self, cgroup_root: &std::path::Path) -> bool {
        let Some(path) = self.moved_to.as_ref().and_then(|m| m.path.as_deref()) else {
            return false;
        };
        std::path::Path::new(path.trim_start_matches('/'))
            .ancestors()
            .skip(1)
            .any(|a| {
                crate::cgroups::id_of(&cgroup_root.join(a)).is_ok_and(|id| id == self.cgroup_id)
            })
    }
}

/// Reads events from the kernel's ring buffer.
pub struct EventReader {
    ring: AsyncFd<RingBuf<MapData>>,
    /// Records that did not decode (counted, logged, never silently dropped).
    pub malformed: u64,
}

impl EventReader {
    /// Wraps the ring buffer taken from the engine. Needs a tokio runtime.
    pub fn new(ring: RingBuf<MapData>) -> std::io::Result<Self> {
        // SAFETY: the ring buffer owns its fd, keeps it open and returns the same one for as
        // long as it lives, and the AsyncFd owns the ring buffer.
        let ring = unsafe { AsyncFd::register(ring) }.map_err(|e| e.into_parts().1)?;
        Ok(Self { ring, malformed: 0 })
    }

    /// Waits for events and appends every one available to `out`; returns how many.
    pub async fn next_batch(&mut self, out: &mut Vec<KernelEvent>) -> std::io::Result<usize> {
        loop {
            let mut guard = self.ring.readable_mut().await?;
            let n = drain(guard.get_inner_mut(), out, &mut self.malformed);
            guard.clear_ready();
            if n > 0 {
                return Ok(n);
            }
        }
    }

    /// Appends every event available now, without waiting.
    pub fn try_batch(&mut self, out: &mut Vec<KernelEvent>) -> usize {
        drain(self.ring.get_mut(), out, &mut self.malformed)
    }

    /// The ring buffer's fd (for diagnostics).
    pub fn fd(&self) -> i32 {
        self.ring.get_ref().as_raw_fd()
    }
}

/// Appends every available record to `out`; undecodable ones are logged and counted.
pub fn drain(
    ring: &mut RingBuf<MapData>,
    out: &mut Vec<KernelEvent>,
    malformed: &mut u64,
) -> usize {
    let mut n = 0;
    while let Some(item) = ring.next() {
        match KernelEvent::decode(&item) {
            Ok(ev) => {
                out.push(ev);
                n += 1;
            }
            Err(e) => {
                *malformed += 1;
                tracing::error!("dropping a kernel event that does not decode: {e}");
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::Event;

    fn raw(e: &Event) -> Vec<u8> {
        // SAFETY: Event is plain data.
        unsafe {
            std::slice::from_raw_parts(
                (e as *const Event).cast::<u8>(),
                std::mem::size_of::<Event>(),
            )
        }
        .to_vec()
    }

    fn base() -> Event {
        // SAFETY: all-zero is a valid Event.
        let mut e: Event = unsafe { std::mem::zeroed() };
        e.op = Op::Connect as u8;
        e.outcome = Outcome::Paused as u8;
        e.family = family::INET;
        e.addr[..4].copy_from_slice(&[10, 20, 3, 4]);
        e.port = 5432;
        e.pid = 77;
        e.created_ns = 123;
        e.comm[..6].copy_from_slice(b"python");
        e
    }

    #[test]
    fn decodes_a_paused_connect() {
        let ev = KernelEvent::decode(&raw(&base())).expect("decodes");
        assert_eq!(
            ev.destination,
            Some("10.20.3.4:5432".parse().expect("addr"))
        );
        assert_eq!(
            ev.request,
            Some(RequestId {
                tid: 77,
                created_ns: 123
            })
        );
        assert_eq!(ev.comm, "python");
        assert_eq!(ev.path, None);
    }

    #[test]
    fn refuses_short_records_and_unknown_codes() {
        assert_eq!(KernelEvent::decode(&[0u8; 10]), Err(DecodeError::Short(10)));
        let mut e = base();
        e.op = 99;
        assert_eq!(KernelEvent::decode(&raw(&e)), Err(DecodeError::Op(99)));
        let mut e = base();
        e.outcome = 0;
        assert_eq!(KernelEvent::decode(&raw(&e)), Err(DecodeError::Outcome(0)));
        let mut e = base();
        e.family = 7;
        assert_eq!(KernelEvent::decode(&raw(&e)), Err(DecodeError::Family(7)));
    }

    #[test]
    fn decodes_exec_path_and_truncation_flag() {
        let mut e = base();
        e.op = Op::Exec as u8;
        e.outcome = Outcome::Denied as u8;
        e.family = 0;
        e.path[..9].copy_from_slice(b"/bin/curl");
        e.flags = event_flags::PATH_TRUNCATED;
        let ev = KernelEvent::decode(&raw(&e)).expect("decodes");
        assert_eq!(ev.path.as_deref(), Some("/bin/curl"));
        assert!(ev.path_truncated);
        assert_eq!(ev.request, None);
    }

    #[test]
    fn decodes_a_move_with_where_it_went_and_no_destination() {
        let mut e = base();
        e.op = Op::Move as u8;
        e.outcome = Outcome::Audited as u8;
        e.family = 0;
        e.target = 4242;
        let ev = KernelEvent::decode(&raw(&e)).expect("decodes");
        assert_eq!(
            ev.moved_to,
            Some(MovedTo {
                cgroup_id: 4242,
                path: None
            })
        );
        assert_eq!(
            (ev.destination, ev.request, ev.debugged),
            (None, None, None)
        );
        assert_eq!(op_name(ev.op), "move");
    }
}
