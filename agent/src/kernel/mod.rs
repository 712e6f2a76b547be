//! The kernel engine: owns the loaded eBPF object, its maps and its links.
//!
//! [`Engine`] is the only place that touches the kernel side. It loads the embedded object,
//! attaches the programs, pins maps and links under one bpffs directory so that a restarted agent
//! finds the state it left (and enforcement never stops in between), and offers typed operations:
//! watch a cgroup, load a compiled rule set, list and decide held operations, write grants and the
//! heartbeat. It is synchronous and not `Sync`: the daemon gives it to one task and talks to that
//! task over channels ([`crate::engine_task`]).

mod attach;
pub use attach::{kprobes_supported, COMPAT_EXITS};
pub mod btf;
mod layout;
mod mounts;
pub mod probe;
pub mod sockets;

use std::{
    collections::HashSet,
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use agent_common::{
    maps as names, pending_flags, pending_state, scope, Action, ContentVerdict, Counter, DnsOrigin,
    DnsPeerKey, ExecExactKey, ExecFileKey, ExecPrefixData, FailMode, FingerprintKey, Grant,
    GrantKey, Heartbeat, Learned, LearnedKey, Lineage, Net4Data, Net6Data, Op, Pending, PortRules,
    RuleRef, Watch, COUNTER_SLOTS,
};
use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf},
    programs::links::FdLink,
    Ebpf, EbpfLoader, Pod,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

pub use mounts::{cgroup2_root, parse_cgroup2_root};

use crate::rules::Compiled;

/// The kernel programs, built by `build.rs` from `agent-ebpf`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/latch.bpf.o"));

/// Grant uses value that means "until it expires".
pub const UNLIMITED_USES: u32 = u32::MAX;

/// Everything that can go wrong between the agent and the kernel.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A pseudo file system could not be found or mounted.
    #[error("cannot prepare {what} at {}: {reason}", path.display())]
    Mount {
        /// bpffs, tracefs or cgroup2.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The object could not be loaded.
    #[error("cannot load the kernel programs: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    /// A program could not be loaded or attached.
    #[error("cannot load or attach program '{name}': {reason}")]
    Program {
        /// Program name.
        name: &'static str,
        /// Why (with the verifier log where there is one).
        reason: String,
    },
    /// A map is missing from the object or has the wrong layout.
    #[error("map '{name}': {reason}")]
    Map {
        /// Map name.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// A map pinned by an earlier agent has another layout than this build's.
    #[error(
        "map {name} pinned at {} has another layout than this build needs ({pinned}; this build: \
         {wants}). Stop the agent, run `latch-agent release` to resolve what it held, remove {} \
         and start this build (grants and held operations in that map are lost)",
        pin.display(),
        pin.display()
    )]
    Layout {
        /// Map name.
        name: &'static str,
        /// The pin.
        pin: PathBuf,
        /// Its layout.
        pinned: String,
        /// The layout this build needs.
        wants: String,
    },
    /// A pin could not be written or removed.
    #[error("cannot pin at {}: {reason}", path.display())]
    Pin {
        /// Where.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No such held operation (already decided, or the process went away).
    #[error("no pending operation {0}")]
    NotPending(RequestId),
    /// A decision did not apply (the kernel refused a map update or a signal).
    #[error("cannot apply the decision on {id}: {reason}")]
    Decide {
        /// The request.
        id: RequestId,
        /// Why.
        reason: String,
    },
    /// A cgroup path that does not exist or is not a cgroup v2 directory.
    #[error("cgroup {}: {reason}", path.display())]
    Cgroup {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> EngineError {
    move |e| EngineError::Map {
        name,
        reason: e.to_string(),
    }
}

/// Names a held operation: the thread that is stopped and when it was held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId {
    /// Thread id.
    pub tid: u32,
    /// `CLOCK_MONOTONIC` ns when the kernel held it.
    pub created_ns: u64,
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.tid, self.created_ns)
    }
}

/// A request id that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("'{0}' is not a request id (expected <thread id>.<nanoseconds>, like 4242.918273645)")]
pub struct BadRequestId(pub String);

impl FromStr for RequestId {
    type Err = BadRequestId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadRequestId(s.to_string());
        let (tid, ns) = s.split_once('.').ok_or_else(bad)?;
        Ok(Self {
            tid: tid.parse().map_err(|_| bad())?,
            created_ns: ns.parse().map_err(|_| bad())?,
        })
    }
}

impl Serialize for RequestId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RequestId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Who a grant covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The requesting process.
    Process,
    /// Every process of the requesting workload.
    Workload,
    /// Every watched process on this host.
    Host,
}

/// A decision on a held operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "lowercase")]
pub enum Decision {
    /// Let this one operation through.
    Allow,
    /// Refuse it: EPERM for network operations; the new image is killed for exec.
    Deny,
    /// Let it through, and the same target from the same scope until `ttl` passes (or `uses`
    /// more times, when given).
    Grant {
        /// Who the grant covers.
        scope: Scope,
        /// How long it lasts.
        #[serde(with = "secs")]
        ttl: Duration,
        /// How many further uses, if limited.
        uses: Option<u32>,
    },
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
    }
}

/// An operation held in the kernel, as the pending map shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingOp {
    /// Its id.
    pub id: RequestId,
    /// Process id.
    pub tgid: u32,
    /// What kind of operation.
    pub op: String,
    /// Rule that asked for approval.
    pub rule_id: u32,
    /// Workload id.
    pub workload: u32,
    /// Cgroup id.
    pub cgroup_id: u64,
    /// Target fingerprint.
    pub target: u64,
    /// Waiting, or decided but not yet consumed.
    pub state: String,
    /// How long it has been held.
    pub age_ms: u64,
    /// Destination of a network operation.
    pub destination: Option<std::net::SocketAddr>,
    /// IP protocol number of a network operation.
    pub protocol: u8,
}

/// Where and how the engine runs.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// bpffs directory for pins (`/sys/fs/bpf/latch`).
    pub pin_dir: PathBuf,
    /// cgroup v2 root; found from mountinfo when `None`.
    pub cgroup_root: Option<PathBuf>,
    /// Heartbeat age after which the kernel stops pausing.
    pub stale_after: Duration,
    /// What applies while the heartbeat is stale.
    pub fail_mode: FailMode,
    /// The exec backend to use; `None` picks the LSM one where the kernel runs BPF LSM programs.
    pub exec_backend: Option<Backend>,
    /// The port of the agent's resolver proxy on loopback; 0: none, and workloads' DNS
    /// queries go where they were sent (their names are not learned).
    pub dns_proxy_port: u16,
    /// Whether the proxy also listens on `::1`.
    pub dns_proxy_v6: bool,
}

/// How exec is decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// BPF LSM `bprm_check_security`: before the exec; a deny is `EPERM`, a hold stops inside
    /// `execve`.
    Lsm,
    /// `sched_process_exec` + SIGSTOP/SIGKILL and the `sys_enter` gate (works without BPF LSM):
    /// after the exec, before the new image's first instruction.
    Tracepoint,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Lsm => "lsm",
            Backend::Tracepoint => "tracepoint",
        })
    }
}

/// The kernel engine. See the module documentation.
pub struct Engine {
    opts: EngineOptions,
    cgroup_root: PathBuf,
    ebpf: Ebpf,
    // Dropping the logger closes aya-log's map, and later program loads fail: keep it.
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    watched: HashMap<MapData, u64, Watch>,
    exec_exact: HashMap<MapData, ExecExactKey, RuleRef>,
    exec_prefix: LpmTrie<MapData, ExecPrefixData, RuleRef>,
    exec_files: HashMap<MapData, ExecFileKey, RuleRef>,
    dns_peers: HashMap<MapData, DnsPeerKey, DnsOrigin>,
    learned: HashMap<MapData, LearnedKey, Learned>,
    // An LRU hash in the kernel; the same typed view serves it.
    content: HashMap<MapData, ExecFileKey, ContentVerdict>,
    lineage: HashMap<MapData, u32, Lineage>,
    net4: LpmTrie<MapData, Net4Data, PortRules>,
    net6: LpmTrie<MapData, Net6Data, PortRules>,
    pending: HashMap<MapData, u32, Pending>,
    grants: HashMap<MapData, GrantKey, Grant>,
    // An LRU hash in the kernel; the same typed view serves it.
    grant_conns: HashMap<MapData, u64, GrantKey>,
    heartbeat: Array<MapData, Heartbeat>,
    // The host's fingerprint key, as the programs got it at load (kept in `FP_KEY`).
    fp_key: FingerprintKey,
    counters: PerCpuArray<MapData, u64>,
    events: Option<RingBuf<MapData>>,
    backend: Backend,
    // Why the kernel cannot read executed files' identity (`None`: it can).
    file_identity: Option<String>,
    // Why 32-bit system calls cannot be told apart (`None`: they can).
    syscall32: Option<String>,
    /// Why moves are decided by the destination's id only (no ancestors), if they are.
    ancestry: Option<String>,
    // Why `restop` could not attach (the `sys_enter` gate stands in).
    restop_refused: Option<String>,
    lsm: probe::LsmProbe,
    // Attached hooks; dropping one detaches it unless it is pinned.
    links: Vec<FdLink>,
    links_pinned: bool,
    hooks: Vec<&'static str>,
    // Whether the resume guards (`restop`, the gate) are attached: always on the tracepoint
    // backend, on the LSM backend once rules with `args` are in force.
    guards: bool,
}

/// The host's fingerprint key: the one an earlier agent drew (kept in the pinned `FP_KEY`, so
/// the grants it wrote still match), or a new one from the kernel's random source. Read before
/// the programs are loaded: they get it as read-only globals.
fn fingerprint_key(map_dir: &Path) -> Result<FingerprintKey, EngineError> {
    let pin = map_dir.join(names::FP_KEY);
    if pin.exists() {
        let data = MapData::from_pin(&pin).map_err(map_err(names::FP_KEY))?;
        let map: Array<MapData, FingerprintKey> =
            Array::try_from(aya::maps::Map::Array(data)).map_err(map_err(names::FP_KEY))?;
        let kept = map.get(&0, 0).map_err(map_err(names::FP_KEY))?;
        if !kept.is_unset() {
            return Ok(kept);
        }
    }
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).map_err(|e| EngineError::Map {
        name: names::FP_KEY,
        reason: format!("no random key can be drawn: {e}"),
    })?;
    let [k0, k1] = [&bytes[..8], &bytes[8..]].map(|h| {
        let mut w = [0u8; 8];
        w.copy_from_slice(h);
        u64::from_ne_bytes(w)
    });
    tracing::info!("drew this host's fingerprint key (grants are found by it)");
    Ok(FingerprintKey { k0, k1 })
}

/// Keeps the key in the (pinned) `FP_KEY` map for the next agent.
fn keep_fingerprint_key(ebpf: &mut Ebpf, key: FingerprintKey) -> Result<(), EngineError> {
    // Borrowed, not taken: the engine keeps no handle on it, only the value.
    let map = ebpf.map_mut(names::FP_KEY).ok_or(EngineError::Map {
        name: names::FP_KEY,
        reason: "missing from the object".into(),
    })?;
    let mut map: Array<&mut MapData, FingerprintKey> =
        Array::try_from(map).map_err(map_err(names::FP_KEY))?;
    map.set(0, key, 0).map_err(map_err(names::FP_KEY))
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, EngineError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(EngineError::Map {
        name,
        reason: "missing from the object".into(),
    })?;
    T::try_from(map).map_err(map_err(name))
}

/// The cookie of the agent's network namespace (`SO_NETNS_COOKIE`, Linux 5.14), which the
/// kernel programs compare with a call's: only queries from this namespace can reach the
/// resolver proxy on its loopback. 0 where it cannot be read (every namespace's queries are
/// then sent to the proxy, and a container's fail).
fn own_netns_cookie() -> u64 {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let sock = match std::net::UdpSocket::bind("127.0.0.1:0") {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot read this network namespace's cookie: {e}");
            return 0;
        }
    };
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: a valid socket and an out-buffer of the size given.
    let r = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if r != 0 {
        tracing::warn!(
            "cannot read this network namespace's cookie ({}): workloads in network namespaces \
             of their own cannot resolve names where their rules name hosts",
            std::io::Error::last_os_error()
        );
        return 0;
    }
    cookie
}

/// `CLOCK_MONOTONIC` in ns, the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

impl Engine {
    /// Loads, attaches and pins everything. Maps already pinned under `pin_dir` (from an earlier
    /// agent) are reused with their contents; the new links replace the old ones in place, so
    /// there is no moment without enforcement.
    pub fn load(opts: EngineOptions) -> Result<Self, EngineError> {
        let cgroup_root = match &opts.cgroup_root {
            Some(p) => p.clone(),
            None => mounts::cgroup2_root()?,
        };
        mounts::ensure_bpffs(&opts.pin_dir)?;
        let tracefs = mounts::ensure_tracefs()?;
        let map_dir = opts.pin_dir.join("maps");
        let link_dir = opts.pin_dir.join("links");
        for d in [&map_dir, &link_dir] {
            std::fs::create_dir_all(d).map_err(|e| EngineError::Pin {
                path: d.clone(),
                reason: e.to_string(),
            })?;
        }
        layout::check(OBJECT, &map_dir)?;
        let ret_offset =
            probe::sys_exit_ret_offset(&tracefs).map_err(|reason| EngineError::Program {
                name: "held",
                reason,
            })?;
        let lineage_offsets =
            probe::lineage_offsets(&tracefs).map_err(|reason| EngineError::Program {
                name: "fork",
                reason,
            })?;
        let layout = probe::layout();
        let bprm_filename = &layout.bprm;
        let fp_key = fingerprint_key(&map_dir)?;
        let mut loader = EbpfLoader::new();
        loader
            .override_global("FP_KEY_LO", &fp_key.k0, true)
            .override_global("FP_KEY_HI", &fp_key.k1, true);
        loader.default_map_pin_directory(&map_dir).override_global(
            "SYS_EXIT_RET_OFF",
            &ret_offset,
            true,
        );
        if let Ok(offs) = bprm_filename {
            for (global, off) in offs {
                loader.override_global(global, off, true);
            }
        }
        let ctime_on: u32 = 1;
        match &layout.ctime {
            Ok((sec, nsec)) => {
                loader.override_global("CTIME_SEC_OFF", sec, true);
                loader.override_global("CTIME_NSEC_OFF", nsec, true);
                loader.override_global("CTIME_ON", &ctime_on, true);
            }
            Err(e) => tracing::warn!(
                "content verdicts cannot be cached: the change time of executed files cannot be \
                 read ({e}); with content rules every exec is hashed"
            ),
        }
        for (global, off) in &lineage_offsets {
            loader.override_global(global, off, true);
        }
        let on: u32 = 1;
        match &layout.ancestry {
            Ok(offs) => {
                for (global, off) in offs {
                    loader.override_global(global, off, true);
                }
                loader.override_global("ANCESTRY_ON", &on, true);
            }
            Err(e) => tracing::warn!(
                "a thread moved into a cgroup below a watched one by another process is watched \
                 there but keeps no lineage when it leaves: the ancestors of a cgroup cannot be \
                 read here ({e})"
            ),
        }
        match &layout.compat {
            Ok(off) => {
                loader.override_global("TASK_STATUS_OFF", off, true);
                loader.override_global("COMPAT_ON", &on, true);
            }
            Err(e) => tracing::info!("32-bit system calls are not told apart here ({e})"),
        }
        let file_offsets = &layout.files;
        match file_offsets {
            Ok(offs) => {
                for (global, off) in &offs.0 {
                    loader.override_global(global, off, true);
                }
                loader.override_global("FILE_ID_ON", &on, true);
            }
            Err(e) => tracing::warn!(
                "exec rules match paths only: the identity of executed files cannot be read ({e})"
            ),
        }
        // Where a socket passed to a watched task was made needs its file (above), its cgroup's
        // id (ancestry) and these; without all three the receiving hooks are not attached.
        if let (Ok(()), Ok(offs)) = (layout.receives(), &layout.received) {
            for (global, off) in offs {
                loader.override_global(global, off, true);
            }
            loader.override_global("RECEIVED_ON", &on, true);
        }
        let dns_port = u32::from(opts.dns_proxy_port);
        loader.override_global("DNS_PROXY_PORT", &dns_port, true);
        let dns_v6 = u32::from(opts.dns_proxy_v6);
        loader.override_global("DNS_PROXY_V6", &dns_v6, true);
        let netns = own_netns_cookie();
        loader.override_global("AGENT_NETNS", &netns, true);
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|e| EngineError::Load(Box::new(e)))?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!("kernel-side logging unavailable: {e}");
                None
            }
        };

        keep_fingerprint_key(&mut ebpf, fp_key)?;
        let mut engine = Engine {
            watched: take(&mut ebpf, names::WATCHED)?,
            exec_exact: take(&mut ebpf, names::EXEC_EXACT)?,
            exec_prefix: take(&mut ebpf, names::EXEC_PREFIX)?,
            exec_files: take(&mut ebpf, names::EXEC_FILES)?,
            dns_peers: take(&mut ebpf, names::DNS_PEERS)?,
            learned: take(&mut ebpf, names::LEARNED)?,
            content: take(&mut ebpf, names::CONTENT)?,
            lineage: take(&mut ebpf, names::LINEAGE)?,
            net4: take(&mut ebpf, names::NET4_RULES)?,
            net6: take(&mut ebpf, names::NET6_RULES)?,
            pending: take(&mut ebpf, names::PENDING)?,
            grants: take(&mut ebpf, names::GRANTS)?,
            grant_conns: take(&mut ebpf, names::GRANT_CONNS)?,
            heartbeat: take(&mut ebpf, names::HEARTBEAT)?,
            fp_key,
            counters: take(&mut ebpf, names::COUNTERS)?,
            events: Some(take(&mut ebpf, names::EVENTS)?),
            logger,
            backend: Backend::Tracepoint,
            file_identity: file_offsets.as_ref().err().cloned(),
            syscall32: layout.compat.as_ref().err().cloned(),
            ancestry: layout.ancestry.as_ref().err().cloned(),
            restop_refused: None,
            lsm: probe::LsmProbe::default(),
            links: Vec::new(),
            links_pinned: false,
            hooks: Vec::new(),
            guards: false,
            cgroup_root,
            opts,
            ebpf,
        };
        // Before anything is attached: a stale beat from an earlier run must not fail requests.
        engine.beat()?;
        let kbtf = probe::read_kernel_btf();
        engine.lsm = probe::lsm(&mut engine.ebpf, &engine.counters, &kbtf);
        let lsm_usable = match (&engine.lsm.runs, bprm_filename) {
            (true, Ok(_)) => Ok(()),
            (true, Err(e)) => Err(format!("a field of linux_binprm was not found: {e}")),
            (false, _) => Err(engine
                .lsm
                .reason
                .clone()
                .unwrap_or_else(|| "BPF LSM programs do not run".into())),
        };
        engine.backend = match (engine.opts.exec_backend, lsm_usable) {
            (Some(Backend::Lsm), Err(why)) => {
                return Err(EngineError::Program {
                    name: "exec_lsm",
                    reason: format!("the LSM exec backend was asked for, but {why}"),
                })
            }
            (Some(b), _) => b,
            (None, Ok(())) => Backend::Lsm,
            (None, Err(why)) => {
                tracing::info!("exec decided by the tracepoint backend: {why}");
                Backend::Tracepoint
            }
        };
        let attached = attach::attach_all(
            &mut engine.ebpf,
            &engine.cgroup_root,
            &link_dir,
            engine.backend,
            engine.ancestry.is_none(),
            &kbtf,
        )?;
        engine.links = attached.links;
        engine.links_pinned = attached.pinned;
        engine.hooks = attached.hooks;
        engine.restop_refused = attached.restop_refused;
        engine.guards = engine.backend == Backend::Tracepoint;
        Ok(engine)
    }

    /// Whether the hooks are pinned (and so outlive this process).
    pub fn links_pinned(&self) -> bool {
        self.links_pinned
    }

    /// The key of this host's target fingerprints ([`agent_common::fingerprint`]).
    pub fn fingerprint_key(&self) -> FingerprintKey {
        self.fp_key
    }

    /// The pin directory.
    pub fn pin_dir(&self) -> &Path {
        &self.opts.pin_dir
    }

    /// The cgroup v2 root the network hooks are attached to.
    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }

    /// The exec backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Records that thread `tid`, found in the watched cgroup `cgroup`, stays watched by `watch`
    /// wherever it moves. (The kernel records forks and moves itself; this is for threads that
    /// were there before the agent watched the cgroup.)
    pub fn remember_lineage(
        &mut self,
        tid: u32,
        cgroup: u64,
        watch: Watch,
    ) -> Result<(), EngineError> {
        let entry = Lineage {
            cgroup_id: cgroup,
            watch,
        };
        self.lineage
            .insert(tid, entry, 0)
            .map_err(map_err(names::LINEAGE))
    }

    /// Forgets the lineage of every thread whose workload is not in `workloads` (a workload the
    /// rules no longer have). Returns how many were forgotten.
    pub fn forget_lineage_except(
        &mut self,
        workloads: &HashSet<u32>,
    ) -> Result<usize, EngineError> {
        let stale: Vec<u32> = self
            .lineage
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, l)| !workloads.contains(&l.watch.workload))
            .map(|(tid, _)| tid)
            .collect();
        for tid in &stale {
            ignore_missing(self.lineage.remove(tid)).map_err(map_err(names::LINEAGE))?;
        }
        Ok(stale.len())
    }

    /// The lineage the kernel keeps for thread `tid`, if any.
    pub fn lineage_of(&self, tid: u32) -> Result<Option<Lineage>, EngineError> {
        match self.lineage.get(&tid, 0) {
            Ok(l) => Ok(Some(l)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(names::LINEAGE)(e)),
        }
    }

    /// Forgets one thread's lineage.
    pub fn forget_lineage(&mut self, tid: u32) -> Result<(), EngineError> {
        ignore_missing(self.lineage.remove(&tid)).map_err(map_err(names::LINEAGE))
    }

    /// Why the tracepoint backend's `restop` could not attach, where the `sys_enter` gate stands
    /// in for it (`None`: it attached, or the LSM backend is in use).
    pub fn restop_refused(&self) -> Option<&str> {
        self.restop_refused.as_deref()
    }

    /// Why exec rules cannot follow files by identity on this kernel (`None`: they do).
    pub fn file_identity_missing(&self) -> Option<&str> {
        self.file_identity.as_deref()
    }

    /// Why the programs cannot tell a 32-bit system call from a 64-bit one, if they cannot.
    pub fn syscall32_missing(&self) -> Option<&str> {
        self.syscall32.as_deref()
    }

    /// Why a move into a cgroup below a watched one gives no lineage here, if it does not.
    pub fn ancestry_missing(&self) -> Option<&str> {
        self.ancestry.as_deref()
    }

    /// Whether BPF LSM programs run on this kernel (the start-up probe saw one called).
    pub fn lsm_available(&self) -> bool {
        self.lsm.runs
    }

    /// What the start-up probe found out about BPF LSM.
    pub fn lsm_probe(&self) -> &probe::LsmProbe {
        &self.lsm
    }

    /// The hooks attached, by pin name.
    pub fn hooks(&self) -> &[&'static str] {
        &self.hooks
    }

    /// Writes what the kernel programs logged (error paths only) to the agent's log.
    pub fn flush_kernel_log(&mut self) {
        if let Some(l) = self.logger.as_mut() {
            l.flush();
        }
    }

    /// Takes the event ring buffer (once) for the event reader.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// Refreshes the heartbeat.
    pub fn beat(&mut self) -> Result<(), EngineError> {
        self.write_heartbeat(monotonic_ns(), self.opts.stale_after)
    }

    /// Marks the heartbeat as never refreshed, as if the agent were gone (used on shutdown and
    /// when nothing can be recorded, so the kernel applies the fail mode at once).
    pub fn flatline(&mut self) -> Result<(), EngineError> {
        self.write_heartbeat(0, Duration::ZERO)
    }

    fn write_heartbeat(&mut self, beat_ns: u64, stale_after: Duration) -> Result<(), EngineError> {
        let hb = Heartbeat {
            beat_ns,
            stale_after_ns: stale_after.as_nanos() as u64,
            fail_mode: self.opts.fail_mode as u8,
            _pad: [0; 7],
        };
        self.heartbeat
            .set(0, hb, 0)
            .map_err(map_err(names::HEARTBEAT))
    }

    /// Watches a cgroup (and everything below it) for a workload.
    pub fn watch(&mut self, cgroup_id: u64, w: Watch) -> Result<(), EngineError> {
        self.watched
            .insert(cgroup_id, w, 0)
            .map_err(map_err(names::WATCHED))
    }

    /// Remembers what a file's content gets from a workload's rules, while the file keeps the
    /// change time the kernel saw when it held the exec.
    pub fn remember_content(
        &mut self,
        key: ExecFileKey,
        verdict: ContentVerdict,
    ) -> Result<(), EngineError> {
        self.content
            .insert(key, verdict, 0)
            .map_err(map_err(names::CONTENT))
    }

    /// Forgets every content verdict (the rules or the known programs changed): the next exec
    /// of each file is hashed again.
    pub fn forget_content(&mut self) -> Result<usize, EngineError> {
        let keys: Vec<ExecFileKey> = self.content.keys().filter_map(Result::ok).collect();
        for k in &keys {
            ignore_missing(self.content.remove(k)).map_err(map_err(names::CONTENT))?;
        }
        Ok(keys.len())
    }

    /// The resolver proxy's port the programs were loaded with (0: none).
    pub fn dns_proxy_port(&self) -> u16 {
        self.opts.dns_proxy_port
    }

    /// Where the DNS query from a workload socket (as the resolver proxy hears it) was going,
    /// and whose it is.
    pub fn dns_origin(&self, key: &DnsPeerKey) -> Result<Option<DnsOrigin>, EngineError> {
        match self.dns_peers.get(key, 0) {
            Ok(o) => Ok(Some(o)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(names::DNS_PEERS)(e)),
        }
    }

    /// Gives the kernel what a workload learned about an address.
    pub fn learn(&mut self, key: LearnedKey, value: Learned) -> Result<(), EngineError> {
        self.learned
            .insert(key, value, 0)
            .map_err(map_err(names::LEARNED))
    }

    /// Forgets a learned address.
    pub fn unlearn(&mut self, key: &LearnedKey) -> Result<(), EngineError> {
        ignore_missing(self.learned.remove(key)).map_err(map_err(names::LEARNED))
    }

    /// Stops watching a cgroup.
    pub fn unwatch(&mut self, cgroup_id: u64) -> Result<(), EngineError> {
        ignore_missing(self.watched.remove(&cgroup_id)).map_err(map_err(names::WATCHED))
    }

    /// Watched cgroups and their workload ids.
    pub fn watched(&self) -> Result<Vec<(u64, u32)>, EngineError> {
        self.watched
            .iter()
            .map(|r| r.map(|(k, v)| (k, v.workload)))
            .collect::<Result<_, _>>()
            .map_err(map_err(names::WATCHED))
    }

    /// Replaces the rule maps' contents with a compiled rule set: new and changed entries are
    /// written first, stale ones removed after, so no lookup ever finds an empty rule set. If a
    /// write fails (a map is full) the previous rule set is written back and the error returned.
    pub fn apply(
        &mut self,
        new: &Compiled,
        previous: Option<&Compiled>,
    ) -> Result<(), EngineError> {
        self.guard_for(new)?;
        if let Err(e) = self.write_rules(new) {
            if let Some(prev) = previous {
                // Best effort: put back what was in force; the first error is the one to report.
                let _ = self.write_rules(prev);
                let _ = self.prune_rules(prev);
            }
            return Err(e);
        }
        self.prune_rules(new)
    }

    /// Attaches the resume guards before rules that need them reach the maps: on the LSM
    /// backend, an exec decided by its arguments is held after the fact, which only they keep
    /// stopped. Once attached they stay until the agent stops.
    fn guard_for(&mut self, new: &Compiled) -> Result<(), EngineError> {
        if self.backend != Backend::Lsm || self.guards {
            return Ok(());
        }
        let link_dir = self.opts.pin_dir.join("links");
        if new.exec_args.is_empty() {
            // An earlier agent's guards stay while an exec it held after the fact still waits.
            let held_after_exec = self.pending.iter().flatten().any(|(_, p)| {
                p.op == Op::Exec as u8
                    && p.state == pending_state::WAITING
                    && p.flags & pending_flags::RESTARTS == 0
            });
            if self.links_pinned && !held_after_exec {
                attach::remove_guard_pins(&link_dir);
            }
            return Ok(());
        }
        let a = attach::attach_guards(&mut self.ebpf, &link_dir, self.links_pinned)?;
        self.links.extend(a.links);
        self.hooks.extend(a.hooks);
        self.restop_refused = a.restop_refused;
        self.guards = true;
        tracing::info!("rules with `args` are in force: resume guards attached");
        Ok(())
    }

    fn write_rules(&mut self, c: &Compiled) -> Result<(), EngineError> {
        for (k, v) in &c.exec_exact {
            self.exec_exact
                .insert(k, v, 0)
                .map_err(map_err(names::EXEC_EXACT))?;
        }
        for (len, d, v) in &c.exec_prefix {
            self.exec_prefix
                .insert(&Key::new(*len, *d), v, 0)
                .map_err(map_err(names::EXEC_PREFIX))?;
        }
        for (k, v) in &c.exec_files {
            self.exec_files
                .insert(k, v, 0)
                .map_err(map_err(names::EXEC_FILES))?;
        }
        for (len, d, v) in &c.net4 {
            self.net4
                .insert(&Key::new(*len, *d), v, 0)
                .map_err(map_err(names::NET4_RULES))?;
        }
        for (len, d, v) in &c.net6 {
            self.net6
                .insert(&Key::new(*len, *d), v, 0)
                .map_err(map_err(names::NET6_RULES))?;
        }
        Ok(())
    }

    fn prune_rules(&mut self, keep: &Compiled) -> Result<(), EngineError> {
        let exact: HashSet<Vec<u8>> = keep
            .exec_exact
            .iter()
            .map(|(k, _)| bytes(k).to_vec())
            .collect();
        let stale: Vec<ExecExactKey> = self
            .exec_exact
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !exact.contains(bytes(k)))
            .collect();
        for k in stale {
            ignore_missing(self.exec_exact.remove(&k)).map_err(map_err(names::EXEC_EXACT))?;
        }
        let files: HashSet<ExecFileKey> = keep.exec_files.iter().map(|(k, _)| *k).collect();
        let stale: Vec<ExecFileKey> = self
            .exec_files
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !files.contains(k))
            .collect();
        for k in stale {
            ignore_missing(self.exec_files.remove(&k)).map_err(map_err(names::EXEC_FILES))?;
        }
        prune_lpm(
            &mut self.exec_prefix,
            keep.exec_prefix.iter().map(|(l, d, _)| Key::new(*l, *d)),
        )
        .map_err(map_err(names::EXEC_PREFIX))?;
        prune_lpm(
            &mut self.net4,
            keep.net4.iter().map(|(l, d, _)| Key::new(*l, *d)),
        )
        .map_err(map_err(names::NET4_RULES))?;
        prune_lpm(
            &mut self.net6,
            keep.net6.iter().map(|(l, d, _)| Key::new(*l, *d)),
        )
        .map_err(map_err(names::NET6_RULES))?;
        Ok(())
    }

    /// Operations held in the kernel now.
    pub fn pending(&self) -> Result<Vec<PendingOp>, EngineError> {
        let now = monotonic_ns();
        let mut out = Vec::new();
        for item in self.pending.iter() {
            let (tid, p) = item.map_err(map_err(names::PENDING))?;
            if p.flags & pending_flags::ANNOUNCED == 0 {
                // Not stopped yet: nobody may decide it before its stop is queued.
                continue;
            }
            out.push(PendingOp {
                id: RequestId {
                    tid,
                    created_ns: p.created_ns,
                },
                tgid: p.tgid,
                op: match Op::from_u8(p.op) {
                    Some(Op::Exec) => "exec",
                    Some(Op::Connect) => "connect",
                    Some(Op::Sendmsg) => "sendmsg",
                    Some(Op::Debug | Op::Move | Op::Syscall32 | Op::Shared | Op::Received)
                    | None => "unknown",
                }
                .to_string(),
                rule_id: p.rule_id,
                workload: p.workload,
                cgroup_id: p.cgroup_id,
                target: p.target,
                state: match p.state {
                    pending_state::WAITING => "waiting",
                    pending_state::ALLOW => "allowed",
                    pending_state::DENY => "denied",
                    _ => "unknown",
                }
                .to_string(),
                age_ms: now.saturating_sub(p.created_ns) / 1_000_000,
                destination: destination_of(&p),
                protocol: p.proto,
            });
        }
        out.sort_by_key(|p| p.id);
        Ok(out)
    }

    /// Applies a decision to a held operation and resumes (or ends) the process. Returns the
    /// key of the grant it wrote, if any (to revoke it later).
    pub fn decide(
        &mut self,
        id: RequestId,
        decision: Decision,
    ) -> Result<Option<GrantKey>, EngineError> {
        let p = self.held(id)?;
        let decide_err = |reason: String| EngineError::Decide { id, reason };
        let mut granted = None;
        if let Decision::Grant {
            scope: sc,
            ttl,
            uses,
        } = decision
        {
            let key = held_grant_key(sc, &p);
            let grant = Grant {
                action: Action::Allow as u8,
                _pad: [0; 3],
                uses_left: uses.unwrap_or(UNLIMITED_USES),
                expires_ns: monotonic_ns().saturating_add(ttl.as_nanos() as u64),
            };
            self.grants
                .insert(key, grant, 0)
                .map_err(|e| decide_err(e.to_string()))?;
            granted = Some(key);
        }
        // The engine holds its hooks, so a network verdict is consumed when the call restarts.
        resolve_held(
            &mut self.pending,
            id,
            p,
            !matches!(decision, Decision::Deny),
            true,
        )?;
        Ok(granted)
    }

    /// Resumes threads that are stopped although their call was decided. A thread that someone
    /// else resumed runs its call again; if the agent's verdict lands between that second run's
    /// hook and the call's exit, the exit stops the thread once more after the agent's SIGCONT
    /// was spent. Called on every tick; returns how many it resumed.
    pub fn resume_overtaken(&self) -> Result<usize, EngineError> {
        let both = pending_flags::ANNOUNCED | pending_flags::RESTARTS;
        let mut n = 0;
        for item in self.pending.iter() {
            let (tid, p) = item.map_err(map_err(names::PENDING))?;
            if p.flags & both != both || p.state == pending_state::WAITING {
                continue;
            }
            let stopped = std::fs::read_to_string(format!("/proc/{}/task/{tid}/stat", p.tgid))
                .ok()
                .and_then(|s| crate::procfs::parse_state(&s))
                == Some('T');
            if stopped {
                let _ = signal(Pid::from_raw(p.tgid as i32), Signal::SIGCONT);
                n += 1;
            }
        }
        Ok(n)
    }

    /// The pending entry of `id`, if it is still the operation that was held (the thread id may
    /// have been reused since) and announced.
    pub fn held(&self, id: RequestId) -> Result<Pending, EngineError> {
        match self.pending.get(&id.tid, 0) {
            Ok(p) if p.created_ns == id.created_ns && p.flags & pending_flags::ANNOUNCED != 0 => {
                Ok(p)
            }
            Ok(_) => Err(EngineError::NotPending(id)),
            Err(e) if is_missing(&e) => Err(EngineError::NotPending(id)),
            Err(e) => Err(map_err(names::PENDING)(e)),
        }
    }

    /// Points a held operation at the rule and target it turned out to be (a relative exec the
    /// agent resolved), so that the decision and any grant apply to the real program.
    pub fn retarget(
        &mut self,
        id: RequestId,
        rule_id: u32,
        target: u64,
    ) -> Result<(), EngineError> {
        let mut p = self.held(id)?;
        p.rule_id = rule_id;
        p.target = target;
        self.pending
            .insert(id.tid, p, aya_obj_flags::BPF_EXIST)
            .map_err(|e| EngineError::Decide {
                id,
                reason: e.to_string(),
            })
    }

    /// Resolves every operation still waiting with the fail mode (on shutdown, or after a
    /// restart when nobody can decide). Operations already decided keep their verdict. Returns
    /// how many were released.
    pub fn release_all(&mut self, mode: FailMode) -> Result<usize, EngineError> {
        let ids: Vec<RequestId> = self
            .pending()?
            .into_iter()
            .filter(|p| p.state == "waiting")
            .map(|p| p.id)
            .collect();
        let decision = match mode {
            FailMode::Deny => Decision::Deny,
            FailMode::AllowAndRecord => Decision::Allow,
        };
        let mut n = 0;
        for id in ids {
            match self.decide(id, decision) {
                Ok(_) => n += 1,
                Err(EngineError::NotPending(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    /// Releases every held operation by the fail mode before the agent exits, and waits (up to
    /// `patience`) for the network calls to consume their verdicts while the hooks are still
    /// attached. When the hooks die with this process, a denied call that has not consumed its
    /// verdict by then is ended with its process: once the hooks are gone nothing would refuse it.
    pub fn release_for_exit(
        &mut self,
        mode: FailMode,
        patience: Duration,
    ) -> Result<usize, EngineError> {
        let n = self.release_all(mode)?;
        let deadline = std::time::Instant::now() + patience;
        loop {
            let left: Vec<PendingOp> = self
                .pending()?
                .into_iter()
                .filter(|p| p.state != "waiting")
                .collect();
            if left.is_empty() {
                break;
            }
            if std::time::Instant::now() >= deadline {
                if !self.links_pinned {
                    for p in left.iter().filter(|p| p.state == "denied") {
                        let _ = signal(Pid::from_raw(p.tgid as i32), Signal::SIGKILL);
                        let _ = ignore_missing(self.pending.remove(&p.id.tid));
                    }
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(n)
    }

    /// Removes a grant (revocation). `Ok(false)` if there was none.
    pub fn revoke(&mut self, key: &GrantKey) -> Result<bool, EngineError> {
        match self.grants.remove(key) {
            Ok(()) => Ok(true),
            Err(e) if is_missing(&e) => Ok(false),
            Err(e) => Err(map_err(names::GRANTS)(e)),
        }
    }

    /// The grant at `key`, if there is one (expired or not).
    fn grant_at(&self, key: &GrantKey) -> Result<Option<Grant>, EngineError> {
        match self.grants.get(key, 0) {
            Ok(g) => Ok(Some(g)),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(map_err(names::GRANTS)(e)),
        }
    }

    /// Writes, under `target`, a copy of the grant in force at `base` (same decision, uses and
    /// expiry): a grant on a host name reaches an address the workload resolved that name to.
    /// A grant in force already at that key (another grant's, or a copy of it: two names of one
    /// rule may share an address) is left as it is, so that each entry stays the one grant's
    /// its expiry tells ([`Engine::extensions`]). `None` when `base` is no longer in force
    /// (expired, spent or revoked), so there is nothing to extend; else the key.
    pub fn extend_grant(
        &mut self,
        base: &GrantKey,
        target: u64,
    ) -> Result<Option<GrantKey>, EngineError> {
        let now = monotonic_ns();
        let Some(g) = self.grant_at(base)?.filter(|g| in_force(g, now)) else {
            return Ok(None);
        };
        let key = GrantKey { target, ..*base };
        let taken = self
            .grant_at(&key)?
            .is_some_and(|other| in_force(&other, now));
        if !taken {
            self.grants
                .insert(key, g, 0)
                .map_err(map_err(names::GRANTS))?;
        }
        Ok(Some(key))
    }

    /// The copies [`Engine::extend_grant`] made of the grant at `base`: entries of the same
    /// scope, rule and subject with the same expiry, `base` left out. Read before `base` is
    /// revoked (its expiry is what tells its copies).
    pub fn extensions(&self, base: &GrantKey) -> Result<Vec<GrantKey>, EngineError> {
        let Some(g) = self.grant_at(base)? else {
            return Ok(Vec::new());
        };
        Ok(self
            .grants
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, v)| {
                k != base
                    && (k.scope, k.rule_id, k.subject) == (base.scope, base.rule_id, base.subject)
                    && v.expires_ns == g.expires_ns
            })
            .map(|(k, _)| k)
            .collect())
    }

    /// Takes the record of the connections a grant let through: their socket cookies, removed
    /// from the map (a revoked grant lets nothing through any more, and a reissued one records
    /// its own).
    pub fn take_connections(&mut self, key: &GrantKey) -> Result<Vec<u64>, EngineError> {
        let cookies: Vec<u64> = self
            .grant_conns
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, k)| k == key)
            .map(|(cookie, _)| cookie)
            .collect();
        for c in &cookies {
            ignore_missing(self.grant_conns.remove(c)).map_err(map_err(names::GRANT_CONNS))?;
        }
        Ok(cookies)
    }

    /// Takes one use of the first allowing grant in force for `rule_id` and `target` that covers
    /// process `tgid` of `workload` (narrowest scope first), for a held operation the agent
    /// decides itself (an exec decided by its arguments, whose
    /// rule the kernel never looks grants up under). An expired grant met on the way is
    /// removed. Returns the grant used.
    pub fn use_grant(
        &mut self,
        tgid: u32,
        workload: u32,
        rule_id: u32,
        target: u64,
    ) -> Result<Option<GrantKey>, EngineError> {
        let now = monotonic_ns();
        let keys = [Scope::Process, Scope::Workload, Scope::Host]
            .map(|sc| grant_key(sc, tgid, workload, rule_id, target));
        for key in &keys {
            let Some(mut g) = self.grant_at(key)? else {
                continue;
            };
            if !in_force(&g, now) {
                ignore_missing(self.grants.remove(key)).map_err(map_err(names::GRANTS))?;
                continue;
            }
            if g.action != Action::Allow as u8 || g.uses_left == 0 {
                continue;
            }
            if g.uses_left != UNLIMITED_USES {
                g.uses_left -= 1;
            }
            if g.uses_left == 0 {
                ignore_missing(self.grants.remove(key)).map_err(map_err(names::GRANTS))?;
            } else {
                self.grants
                    .insert(key, g, 0)
                    .map_err(map_err(names::GRANTS))?;
            }
            return Ok(Some(*key));
        }
        Ok(None)
    }

    /// Grants in force.
    pub fn grants(&self) -> Result<Vec<(GrantKey, Grant)>, EngineError> {
        self.grants
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(names::GRANTS))
    }

    /// Sum of a kernel counter over all CPUs.
    pub fn counter(&self, c: Counter) -> Result<u64, EngineError> {
        let v = self
            .counters
            .get(&(c as u32), 0)
            .map_err(map_err(names::COUNTERS))?;
        Ok(v.iter().sum())
    }

    /// Every kernel counter, by slot.
    pub fn counters(&self) -> Result<Vec<u64>, EngineError> {
        (0..COUNTER_SLOTS)
            .map(|i| {
                self.counters
                    .get(&i, 0)
                    .map(|v| v.iter().sum())
                    .map_err(map_err(names::COUNTERS))
            })
            .collect()
    }

    /// Detaches everything and removes the pins: enforcement stops. For tests and uninstall;
    /// a normal stop leaves the programs in place.
    pub fn uninstall(self) -> Result<(), EngineError> {
        let dir = self.opts.pin_dir.clone();
        drop(self);
        std::fs::remove_dir_all(&dir).map_err(|e| EngineError::Pin {
            path: dir,
            reason: e.to_string(),
        })
    }
}

fn destination_of(p: &Pending) -> Option<std::net::SocketAddr> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    let ip = match p.family {
        agent_common::family::INET => {
            IpAddr::V4(Ipv4Addr::new(p.addr[0], p.addr[1], p.addr[2], p.addr[3]))
        }
        agent_common::family::INET6 => IpAddr::V6(Ipv6Addr::from(p.addr)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, p.port))
}

/// Resolves every held operation by the fail mode using only the pinned pending map, without
/// loading any program: the service's stop hook, run after the daemon is gone.
pub fn release_pinned(pin_dir: &Path, mode: FailMode) -> Result<usize, EngineError> {
    let path = pin_dir.join("maps").join(names::PENDING);
    if !path.exists() {
        return Ok(0);
    }
    let data = MapData::from_pin(&path).map_err(map_err(names::PENDING))?;
    let mut pending: HashMap<MapData, u32, Pending> =
        HashMap::try_from(aya::maps::Map::HashMap(data)).map_err(map_err(names::PENDING))?;
    let entries: Vec<(u32, Pending)> = pending.iter().filter_map(Result::ok).collect();
    let hooks_pinned = pin_dir.join("links").join("connect4").exists();
    let mut n = 0;
    for (tid, p) in entries {
        let id = RequestId {
            tid,
            created_ns: p.created_ns,
        };
        // A verdict written before the agent died stands; only what still waits gets the fail
        // mode.
        let allow = match p.state {
            pending_state::ALLOW => true,
            pending_state::DENY => false,
            _ => mode == FailMode::AllowAndRecord,
        };
        resolve_held(&mut pending, id, p, allow, hooks_pinned)?;
        n += 1;
    }
    Ok(n)
}

/// Applies a verdict to a held operation `p` and resumes or ends its process.
///
/// A call that restarts (network, and exec held by the LSM hook): while hooks are attached
/// (`hooks_live`), the verdict is written into the entry and consumed when the call runs again;
/// with no hook left to see the restart, a refused call ends with its process. An exec held
/// after the fact (tracepoint backend): the image is already in place, so it is resumed, or
/// ended before its first instruction.
fn resolve_held(
    pending: &mut HashMap<MapData, u32, Pending>,
    id: RequestId,
    p: Pending,
    allow: bool,
    hooks_live: bool,
) -> Result<(), EngineError> {
    let decide_err = |reason: String| EngineError::Decide { id, reason };
    let pid = Pid::from_raw(p.tgid as i32);
    if p.flags & pending_flags::RESTARTS != 0 && hooks_live {
        let mut decided = p;
        decided.state = if allow {
            pending_state::ALLOW
        } else {
            pending_state::DENY
        };
        // BPF_EXIST: if the entry vanished meanwhile (the process exited), don't recreate it.
        return match pending.insert(id.tid, decided, aya_obj_flags::BPF_EXIST) {
            Ok(()) => signal(pid, Signal::SIGCONT).map_err(decide_err),
            Err(e) if is_missing(&e) => Ok(()),
            Err(e) => Err(decide_err(e.to_string())),
        };
    }
    if allow {
        ignore_missing(pending.remove(&id.tid)).map_err(|e| decide_err(e.to_string()))?;
        signal(pid, Signal::SIGCONT).map_err(decide_err)
    } else {
        signal(pid, Signal::SIGKILL).map_err(decide_err)?;
        ignore_missing(pending.remove(&id.tid)).map_err(|e| decide_err(e.to_string()))
    }
}

mod aya_obj_flags {
    /// Update only an existing element (`BPF_EXIST` in `<linux/bpf.h>`).
    pub const BPF_EXIST: u64 = 2;
}

fn signal(pid: Pid, sig: Signal) -> Result<(), String> {
    match kill(pid, sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(format!("cannot send {sig} to {pid}: {e}")),
    }
}

/// Whether a map error says the key was not there. aya reports a failed delete as the system
/// call's `ENOENT`, not as `KeyNotFound`: both mean the entry is gone (a held process that exited
/// takes its entry with it, a grant the kernel dropped when it expired).
fn is_missing(e: &aya::maps::MapError) -> bool {
    match e {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(s) => {
            s.io_error.raw_os_error() == Some(nix::errno::Errno::ENOENT as i32)
        }
        _ => false,
    }
}

/// The key the grant of `scope` of a decision on held operation `p` is written under. The agent
/// reads it before deciding, to record a grant before it is written: a crash right after must
/// not leave a grant in the kernel that a revocation would not find.
pub fn held_grant_key(scope: Scope, p: &Pending) -> GrantKey {
    grant_key(scope, p.tgid, p.workload, p.rule_id, p.target)
}

/// Whether a grant still counts at `now_ns` (the kernel ignores it once expired).
fn in_force(g: &Grant, now_ns: u64) -> bool {
    g.expires_ns == 0 || now_ns < g.expires_ns
}

/// The key of a grant of `scope` for an operation of process `tgid` in `workload`: the one
/// mapping from a scope to its subject, for the grants the agent writes and those it looks up.
fn grant_key(scope: Scope, tgid: u32, workload: u32, rule_id: u32, target: u64) -> GrantKey {
    let (scope, subject) = match scope {
        Scope::Process => (scope::PROCESS, tgid as u64),
        Scope::Workload => (scope::WORKLOAD, workload as u64),
        Scope::Host => (scope::HOST, 0),
    };
    GrantKey {
        scope,
        _pad: [0; 3],
        rule_id,
        subject,
        target,
    }
}

fn ignore_missing(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(e) if is_missing(&e) => Ok(()),
        other => other,
    }
}

fn bytes<T: Pod>(v: &T) -> &[u8] {
    // SAFETY: `Pod` types are plain bytes with no padding holes (see agent-common).
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

fn prune_lpm<K: Pod, V: Pod>(
    map: &mut LpmTrie<MapData, K, V>,
    keep: impl Iterator<Item = Key<K>>,
) -> Result<(), aya::maps::MapError> {
    let keep: HashSet<Vec<u8>> = keep.map(|k| bytes(&k).to_vec()).collect();
    let stale: Vec<Key<K>> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !keep.contains(bytes(k)))
        .collect();
    for k in stale {
        ignore_missing(map.remove(&k))?;
    }
    Ok(())
}

fn program_error_text(e: &aya::programs::ProgramError) -> String {
    match e {
        aya::programs::ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            format!("{io_error}\nverifier log:\n{verifier_log}")
        }
        other => error_chain(other),
    }
}

/// An error and its sources, on one line: aya's top-level messages leave out the errno.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
