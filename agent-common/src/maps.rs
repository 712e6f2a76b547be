//! Names of the kernel maps, as the agent opens and pins them.
//!
//! The kernel cuts map names at 15 characters; every name here is shorter, and a unit test in the
//! agent parses the built object and checks that it declares exactly these maps.

/// Watched cgroups: cgroup id → [`Watch`](crate::Watch).
pub const WATCHED: &str = "WATCHED";
/// Exec rules by exact path: [`ExecExactKey`](crate::ExecExactKey) → [`RuleRef`](crate::RuleRef).
pub const EXEC_EXACT: &str = "EXEC_EXACT";
/// Exec rules by path prefix (LPM trie): [`ExecPrefixData`](crate::ExecPrefixData) → [`RuleRef`](crate::RuleRef).
pub const EXEC_PREFIX: &str = "EXEC_PREFIX";
/// Exec rules matched on the identity of the executed file (device and inode), per workload.
pub const EXEC_FILES: &str = "EXEC_FILES";
/// IPv4 destination rules (LPM trie): [`Net4Data`](crate::Net4Data) → [`PortRules`](crate::PortRules).
pub const NET4_RULES: &str = "NET4_RULES";
/// IPv6 destination rules (LPM trie): [`Net6Data`](crate::Net6Data) → [`PortRules`](crate::PortRules).
pub const NET6_RULES: &str = "NET6_RULES";
/// Operations held in the kernel: thread id → [`Pending`](crate::Pending).
pub const PENDING: &str = "PENDING";
/// Standing decisions: [`GrantKey`](crate::GrantKey) → [`Grant`](crate::Grant).
pub const GRANTS: &str = "GRANTS";
/// The agent's heartbeat and the fail mode: one [`Heartbeat`](crate::Heartbeat).
pub const HEARTBEAT: &str = "HEARTBEAT";
/// The host's secret key of target fingerprints: one [`FingerprintKey`](crate::FingerprintKey),
/// drawn by the first agent and kept by every later one (grants are found by fingerprint).
pub const FP_KEY: &str = "FP_KEY";
/// Ring buffer of [`Event`](crate::Event) records.
pub const EVENTS: &str = "EVENTS";
/// Per-CPU counters indexed by [`Counter`](crate::Counter).
pub const COUNTERS: &str = "COUNTERS";
/// Per-CPU scratch space for keys and events too large for the BPF stack.
pub const SCRATCH: &str = "SCRATCH";
/// Connections let through by a grant: socket cookie → the [`GrantKey`](crate::GrantKey) that
/// allowed it (LRU), so that revoking the grant can close them.
pub const GRANT_CONNS: &str = "GRANT_CONNS";
/// Threads that were in a watched cgroup, or descend from one, by thread id: they stay watched
/// wherever they move.
pub const LINEAGE: &str = "LINEAGE";
/// Sockets made by a thread watched by its lineage alone (it left its watched cgroup), by socket
/// cookie → the [`Lineage`](crate::Lineage) it carried: their packets meet the egress backstop,
/// which otherwise knows a packet's watch by its socket's cgroup only. Only sockets the backstop
/// decides (not TCP, not UDP) are kept, until they are released.
pub const SOCK_LINEAGE: &str = "SOCK_LINEAGE";
/// When the egress backstop last reported a dropped packet of a socket (cookie → ns), so that a
/// flood makes one event per socket per second, not one per packet.
pub const PKT_REPORTED: &str = "PKT_REPORTED";
/// The memory (`mm_struct` address) of a `vfork` child ended for a mapping it made there: its
/// parent, which shares that memory and wakes when the child ends, is ended on its way back
/// from the call.
pub const DOOMED_MM: &str = "DOOMED_MM";
/// Verdicts on file contents (LRU): [`ExecFileKey`](crate::ExecFileKey) →
/// [`ContentVerdict`](crate::ContentVerdict). Not pinned: it is a cache of what the agent
/// hashed, which a new agent rebuilds.
pub const CONTENT: &str = "CONTENT";
/// Threads whose exec passed the LSM check on condition that its arguments are decided once the
/// new image is in place (thread id → the rule id to hold it under, [`ARGS_RULE`](crate::ARGS_RULE)
/// or [`ARGS_DENY_RULE`](crate::ARGS_DENY_RULE)). Pinned, so that an agent being replaced and
/// its successor share the marks: an exec one's check marks, the other's holds.
pub const ARGS_DUE: &str = "ARGS_DUE";
/// DNS queries turned to the agent's resolver proxy: socket cookie →
/// [`DnsOrigin`](crate::DnsOrigin) (LRU), so that the proxy's answers are shown as coming from
/// the server the workload asked.
pub const DNS_ORIG: &str = "DNS_ORIG";
/// The same, by the workload socket's port as the proxy sees it:
/// [`DnsPeerKey`](crate::DnsPeerKey) → [`DnsOrigin`](crate::DnsOrigin) (LRU), so that the proxy
/// knows which server a query was for and whose it is.
pub const DNS_PEERS: &str = "DNS_PEERS";
/// Addresses a workload resolved names to: [`LearnedKey`](crate::LearnedKey) →
/// [`Learned`](crate::Learned), filled by the proxy before the workload gets the answer.
pub const LEARNED: &str = "LEARNED";
/// aya-log's ring buffer (declared by aya-log-ebpf, not by us).
pub const AYA_LOGS: &str = "AYA_LOGS";

/// Every map the object declares, in one list for the loader and the name check.
pub const ALL: &[&str] = &[
    WATCHED,
    EXEC_EXACT,
    EXEC_PREFIX,
    EXEC_FILES,
    NET4_RULES,
    NET6_RULES,
    PENDING,
    GRANTS,
    HEARTBEAT,
    FP_KEY,
    EVENTS,
    COUNTERS,
    SCRATCH,
    GRANT_CONNS,
    LINEAGE,
    SOCK_LINEAGE,
    PKT_REPORTED,
    DOOMED_MM,
    CONTENT,
    ARGS_DUE,
    DNS_ORIG,
    DNS_PEERS,
    LEARNED,
    AYA_LOGS,
];

/// Maps the agent pins so that a restarted agent finds the kernel state it left.
pub const PINNED: &[&str] = &[
    WATCHED,
    EXEC_EXACT,
    EXEC_PREFIX,
    EXEC_FILES,
    NET4_RULES,
    NET6_RULES,
    PENDING,
    GRANTS,
    HEARTBEAT,
    FP_KEY,
    EVENTS,
    COUNTERS,
    GRANT_CONNS,
    LINEAGE,
    SOCK_LINEAGE,
    ARGS_DUE,
];

/// The kernel keeps at most this many bytes of a map name (16 with the NUL).
pub const NAME_MAX: usize = 15;

const _: () = {
    let mut i = 0;
    while i < ALL.len() {
        assert!(ALL[i].len() <= NAME_MAX);
        i += 1;
    }
};
