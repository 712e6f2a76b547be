//! Every map the kernel programs use, declared in this one file.
//!
//! Names come from `agent_common::maps` (at most 15 bytes, as the kernel keeps them) and the
//! layouts from `agent_common`; nothing here defines a layout of its own except the per-CPU
//! scratch area, which user space never reads. Maps that carry state across an agent restart are
//! pinned by name under the agent's bpffs directory.

use agent_common::{
    ContentVerdict, DnsOrigin, DnsPeerKey, Event, ExecExactKey, ExecFileKey, ExecPrefixData,
    FingerprintKey, Grant, GrantKey, Heartbeat, Learned, LearnedKey, Lineage, Net4Data, Net6Data,
    Pending, PortRules, RuleRef, Watch, COUNTER_SLOTS,
};
use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};

/// Watched cgroups (cgroup v2 id → workload and default action). A task is inspected when its
/// cgroup or one of its ancestors is here; the agent fills it from the workload globs.
#[map(name = "WATCHED")]
pub static WATCHED: HashMap<u64, Watch> = HashMap::pinned(16_384, 0);

/// Exec rules matched on the whole path, per workload.
#[map(name = "EXEC_EXACT")]
pub static EXEC_EXACT: HashMap<ExecExactKey, RuleRef> = HashMap::pinned(65_536, 0);

/// Exec rules matched on a path prefix (`/usr/bin/ssh*`), per workload; the longest prefix wins.
#[map(name = "EXEC_PREFIX")]
pub static EXEC_PREFIX: LpmTrie<ExecPrefixData, RuleRef> = LpmTrie::pinned(65_536, 0);

/// Exec rules matched on the identity of the executed file, per workload: looked up before the
/// path maps, so that a rule follows the program through every name it has.
#[map(name = "EXEC_FILES")]
pub static EXEC_FILES: HashMap<ExecFileKey, RuleRef> = HashMap::pinned(65_536, 0);

/// What the agent found hashing a file, per workload, while the file is unchanged. A miss
/// (evicted, never hashed, changed) holds the exec for the agent: the cache only saves work.
#[map(name = "CONTENT")]
pub static CONTENT: LruHashMap<ExecFileKey, ContentVerdict> =
    LruHashMap::with_max_entries(65_536, 0);

/// IPv4 destination rules per workload; the value lists port/protocol clauses, most specific
/// first, inherited from shorter prefixes by the agent's rule compiler.
/// See [`agent_common::maps::ARGS_DUE`].
#[map(name = "ARGS_DUE")]
pub static ARGS_DUE: HashMap<u32, u32> = HashMap::pinned(16_384, 0);

#[map(name = "NET4_RULES")]
pub static NET4_RULES: LpmTrie<Net4Data, PortRules> = LpmTrie::pinned(262_144, 0);

/// IPv6 destination rules per workload, as [`NET4_RULES`].
#[map(name = "NET6_RULES")]
pub static NET6_RULES: LpmTrie<Net6Data, PortRules> = LpmTrie::pinned(131_072, 0);

/// Operations held in the kernel, by thread id. The kernel adds entries and consumes decisions;
/// the agent writes decisions and resolves entries after a restart.
#[map(name = "PENDING")]
pub static PENDING: HashMap<u32, Pending> = HashMap::pinned(16_384, 0);

/// Standing decisions (grants) for a process, a workload or the host.
#[map(name = "GRANTS")]
pub static GRANTS: HashMap<GrantKey, Grant> = HashMap::pinned(65_536, 0);

/// Connections a grant let through: socket cookie → the grant's key. Revoking a grant with
/// "close connections" destroys the sockets recorded against it. Least recently used entries
/// make room for new ones; a socket's cookie is never reused while the kernel runs.
#[map(name = "GRANT_CONNS")]
pub static GRANT_CONNS: LruHashMap<u64, GrantKey> = LruHashMap::pinned(65_536, 0);

/// Threads that were in a watched cgroup, or descend from one (thread id → where they came
/// from): they stay watched wherever they move.
#[map(name = "LINEAGE")]
pub static LINEAGE: HashMap<u32, Lineage> = HashMap::pinned(131_072, 0);

/// Sockets made by threads watched by their lineage alone (socket cookie → that lineage), for
/// the egress backstop; added at `sock_create`, removed at `sock_release`. Pinned, so that the
/// sockets made before an agent restart stay decided after it.
#[map(name = "SOCK_LINEAGE")]
pub static SOCK_LINEAGE: HashMap<u64, Lineage> = HashMap::pinned(65_536, 0);

/// Socket cookie → when the egress backstop last reported a packet of it dropped (ns).
#[map(name = "PKT_REPORTED")]
pub static PKT_REPORTED: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4096, 0);

/// `mm_struct` address → 1: the memory of a `vfork` child ended for a mapping (see
/// `mapped::end_task`).
#[map(name = "DOOMED_MM")]
pub static DOOMED_MM: LruHashMap<u64, u8> = LruHashMap::with_max_entries(4096, 0);

/// DNS queries turned to the agent's resolver proxy, by socket cookie (see `dns`). Not
/// pinned: a new agent has a new proxy.
#[map(name = "DNS_ORIG")]
pub static DNS_ORIG: LruHashMap<u64, DnsOrigin> = LruHashMap::with_max_entries(16_384, 0);

/// The same, by the port of the workload's socket as the proxy hears it.
#[map(name = "DNS_PEERS")]
pub static DNS_PEERS: LruHashMap<DnsPeerKey, DnsOrigin> = LruHashMap::with_max_entries(16_384, 0);

/// Addresses workloads resolved names to, with the clauses of the names' rules, until the
/// answer's TTL. The agent bounds each workload's share and removes expired entries. Not
/// pinned: the names behind the entries are the agent's, and a new agent learns them again.
#[map(name = "LEARNED")]
pub static LEARNED: HashMap<LearnedKey, Learned> = HashMap::with_max_entries(16_384, 0);

/// The agent's heartbeat and the fail mode, one entry.
#[map(name = "HEARTBEAT")]
pub static HEARTBEAT: Array<Heartbeat> = Array::pinned(1, 0);

/// The host's secret key of target fingerprints, one entry: where the agent keeps the key
/// across restarts (the grants it wrote are found by it). Programs read the key from globals
/// the agent sets at load (`kconf`), not from here.
#[map(name = "FP_KEY")]
pub static FP_KEY: Array<FingerprintKey> = Array::pinned(1, 0);

/// Events for the agent: pauses, denials, audits, fail-mode verdicts, cancellations.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::pinned(8 << 20, 0);

/// Per-CPU counters, one slot per `agent_common::Counter`.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTER_SLOTS, 0);

/// Per-CPU scratch space for path keys and the event under construction (too big for the stack).
#[map(name = "SCRATCH")]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Shorthand for the LPM key of [`EXEC_PREFIX`].
pub type ExecPrefixKey = Key<ExecPrefixData>;

/// What one program run needs beyond the stack (the value of [`SCRATCH`]). Programs run to
/// completion on one CPU without preemption by another program of ours on that CPU, so one slot
/// per CPU is enough.
#[repr(C)]
pub struct Scratch {
    pub exact: ExecExactKey,
    pub prefix: ExecPrefixKey,
    pub event: Event,
    /// The fingerprint of `exact.path`, taken as soon as the path is read: the hash is then
    /// verified once, not again on every path through the program that reaches the event.
    pub path_fingerprint: u64,
}
