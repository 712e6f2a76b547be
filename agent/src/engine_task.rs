//! The task that owns the kernel engine. Everything else talks to it over a channel
//! ([`EngineHandle`]); the rules arrive as a watched value, so the newest rule set always wins
//! and a slow apply never queues stale ones.
//!
//! On every tick it refreshes the heartbeat and resolves held operations whose rule's timeout has
//! passed (by the rule's `on_timeout`). Watched cgroups follow the workload globs as cgroups come
//! and go (inotify on the cgroup tree, [`cgroups::TreeWatch`]), with a slow full rescan as a
//! safety net. With a central service configured, a link down for longer than the central-loss
//! timeout resolves held operations by the fail mode and stops holding new ones until it is back.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

mod name_grants;
mod names;

pub use name_grants::NameGrant;

use agent_common::{Counter, FailMode, GrantKey, Outcome};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    cgroups::{self, TreeChange, TreeWatch, WorkloadGlobs},
    events::KernelEvent,
    kernel::{Backend, Decision, Engine, EngineError, PendingOp, RequestId, Scope},
    metrics::{CounterLabel, Metrics},
    programs,
    rules::{self, Compiled},
};

/// How often the files exec rules name are looked at again, so that a program replaced on disk
/// (a package upgrade writes a new file and renames it over the old) is recognised by its new
/// identity. Until then the replaced program is still matched by its path.
pub const PROGRAM_REFRESH: Duration = Duration::from_secs(2);

/// A rule set ready for the kernel: validated, compiled, globs compiled.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Where it came from (file name, version).
    pub source: String,
    /// The rules.
    pub rules: policy::RuleSet,
    /// Map entries.
    pub compiled: Compiled,
    /// Workload globs.
    pub globs: Vec<WorkloadGlobs>,
    /// What each workload that decides programs by content says about contents.
    pub content: programs::content::ContentTable,
    /// The paths exec rules name exactly, as written.
    pub named: Vec<programs::NamedProgram>,
    /// Those of them that were no file when last looked at.
    pub missing: Vec<programs::NamedProgram>,
}

/// Why a rule set cannot become a [`Policy`].
#[derive(Debug, thiserror::Error)]
pub enum PolicyLoadError {
    /// The file cannot be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// File.
        path: String,
        /// Why.
        reason: String,
    },
    /// Refused by validation (every problem with its line).
    #[error(transparent)]
    Invalid(#[from] policy::PolicyError),
    /// Valid, but the kernel maps cannot hold it.
    #[error("{source_name}: {error}")]
    Compile {
        /// File.
        source_name: String,
        /// Why.
        error: rules::CompileError,
    },
    /// A cgroup glob that does not compile.
    #[error(transparent)]
    Pattern(#[from] cgroups::PatternError),
}

impl Policy {
    /// Validates and compiles rules text.
    pub fn from_text(source: &str, text: &str) -> Result<Self, PolicyLoadError> {
        let parsed = policy::RuleSet::parse(source, text)?;
        // The author's paths, not the aliases added below: an alias missing on this host (no
        // merged /usr) is nobody's mistake.
        let named = programs::named_exactly(&parsed);
        let rules = rules::with_path_aliases(&parsed, &rules::HostPaths);
        let mut compiled = rules::compile(&rules).map_err(|error| PolicyLoadError::Compile {
            source_name: source.to_string(),
            error,
        })?;
        let host = programs::HostFiles::now();
        (compiled.exec_files, compiled.exec_file_paths) =
            programs::resolve_with_paths(&rules, &compiled, &host);
        let missing = programs::missing(&named, &host);
        let globs = rules
            .workloads
            .iter()
            .map(|w| {
                let mut flags = 0;
                if rules.decides_content(w.id) {
                    flags |= agent_common::watch_flags::CONTENT;
                }
                if rules.decides_names(w.id) {
                    flags |= agent_common::watch_flags::NAMES;
                }
                WorkloadGlobs::new(w, flags)
            })
            .collect::<Result<_, _>>()?;
        let content = programs::content::table(&rules, &mut Default::default());
        Ok(Self {
            source: source.to_string(),
            rules,
            compiled,
            globs,
            content,
            named,
            missing,
        })
    }

    /// Reads, validates and compiles a rules file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, PolicyLoadError> {
        let text = std::fs::read_to_string(path).map_err(|e| PolicyLoadError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_text(&path.display().to_string(), &text)
    }
}

/// A held operation with what the agent knows about it.
#[derive(Clone, Debug, Serialize)]
pub struct RequestView {
    /// The kernel's view.
    #[serde(flatten)]
    pub pending: PendingOp,
    /// Rule name.
    pub rule: Option<String>,
    /// Workload name.
    pub workload_name: Option<String>,
    /// Seconds until the rule's timeout resolves it.
    pub expires_in_s: Option<u64>,
    /// The event that opened it (command, path or destination), when it arrived.
    pub event: Option<KernelEvent>,
    /// Central's id of it, once central accepted it.
    pub approval_id: Option<String>,
    /// What the workload said it needs this for, when it said so.
    pub justification: Option<String>,
}

/// What `latch-agent status` shows.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// Exec backend.
    pub backend: Backend,
    /// Whether the kernel accepted a BPF LSM program.
    pub lsm_available: bool,
    /// Whether hooks outlive the agent process.
    pub links_pinned: bool,
    /// Rules source.
    pub rules_source: Option<String>,
    /// Number of rules.
    pub rules: usize,
    /// Watched cgroups.
    pub watched_cgroups: Vec<String>,
    /// Held operations.
    pub pending: usize,
    /// Kernel counters by name.
    pub counters: Vec<(String, u64)>,
    /// Events received from the kernel.
    pub events_received: u64,
    /// Fail mode.
    pub fail_mode: String,
    /// Heartbeat timeout in seconds.
    pub heartbeat_timeout_s: f64,
    /// Whether operations are held for review now (false while shutting down, with the journal
    /// full, or with central unreachable past the central-loss timeout: the fail mode applies).
    pub holding: bool,
    /// Directories of the cgroup tree followed through inotify (0: periodic rescan only).
    pub followed_dirs: usize,
    /// Watched processes that can undo enforcement (dangerous capabilities in the host's user
    /// namespace), as of the last rescan.
    pub privileged: Vec<crate::privileged::Privileged>,
    /// Watched processes using an io_uring ring whose submission thread works for a process
    /// outside every watched cgroup, as of the last rescan.
    pub foreign_rings: Vec<crate::rings::ForeignRing>,
    /// The resolver proxy's port on loopback (0: none).
    pub dns_proxy_port: u16,
    /// Addresses learned from workloads' DNS answers, not yet expired.
    pub learned_addresses: usize,
    /// Paths exec rules name exactly that were no file in the agent's view when last looked
    /// at: matched only as the path string given to `execve` until they are.
    pub missing_programs: Vec<programs::NamedProgram>,
}

/// A grant a decision wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Granted {
    /// Its key in the kernel.
    pub key: GrantKey,
    /// The host name it covers, as the engine task extends it (`None`: its address alone).
    pub name: Option<NameGrant>,
}

/// Requests to the engine task.
pub enum Command {
    /// List held operations.
    Pending(oneshot::Sender<Result<Vec<RequestView>, String>>),
    /// Decide one.
    Decide {
        /// Which.
        id: RequestId,
        /// What.
        decision: Decision,
        /// Who decided and why, as the workload is told.
        by: crate::workload::Resolution,
        /// The host name a grant of the decision covers (`None`: its address alone).
        covers: Option<String>,
        /// Outcome, with the grant written if any.
        reply: oneshot::Sender<Result<Option<Granted>, EngineError>>,
    },
    /// The grant a decision of `scope` on a held operation would write, not written yet.
    PlanGrant {
        /// Which.
        id: RequestId,
        /// What the grant would cover.
        scope: Scope,
        /// The host name it would cover.
        covers: Option<String>,
        /// The grant.
        reply: oneshot::Sender<Result<Granted, EngineError>>,
    },
    /// Names known to a workload (by name), from central.
    KnownNames(String, Vec<String>, oneshot::Sender<()>),
    /// Remove a grant; with `close_connections`, also close the connections it let through
    /// (off this task, on a blocking thread: that is netlink work, not map work).
    Revoke {
        /// The grant.
        key: GrantKey,
        /// Whether its connections are to be closed.
        close_connections: bool,
        /// What was done.
        reply: oneshot::Sender<Result<Revoked, EngineError>>,
    },
    /// Resolve an exec the kernel held for resolution (`RESOLVE_RULE`): decide it by the rules,
    /// or, when a rule asks for approval, return the event rewritten as that request. A hold
    /// for the file's content comes with what hashing it found.
    Resolve(
        Box<KernelEvent>,
        Option<Inspection>,
        oneshot::Sender<Option<KernelEvent>>,
    ),
    /// Report status.
    Status(oneshot::Sender<Result<Status, String>>),
    /// Events read from the kernel.
    Events(Vec<KernelEvent>),
    /// The journal is full (`true`) or writable again (`false`): with nowhere to record
    /// decisions, operations are no longer held and the fail mode applies.
    Degrade(bool),
    /// The central link came up (`true`) or went down (`false`).
    Central(bool),
    /// Resolve every held operation by the fail mode and stop refreshing the heartbeat.
    Shutdown(oneshot::Sender<Result<usize, String>>),
    /// Where a DNS query the resolver proxy heard was going, and whose it is.
    DnsOrigin(
        agent_common::DnsPeerKey,
        oneshot::Sender<Option<agent_common::DnsOrigin>>,
    ),
    /// The name a workload last resolved to an address, while it counts.
    HostName(u32, std::net::IpAddr, oneshot::Sender<Option<String>>),
    /// Learn the addresses of an answer for a workload; replies once the kernel has them.
    Learn {
        /// The workload that asked.
        workload: u32,
        /// What the answer says.
        answer: crate::dns::message::Answer,
        /// `true` once learned.
        reply: oneshot::Sender<bool>,
    },
}

/// A revocation applied to the kernel.
#[derive(Debug, Default)]
pub struct Revoked {
    /// Whether the grant was still in the kernel map.
    pub removed: bool,
    /// Connections the grant let through that are being closed, when asked for.
    pub closing: usize,
}

/// The way to talk to the engine task.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
}

/// The engine task is gone (it stopped or panicked).
#[derive(Debug, thiserror::Error)]
#[error("the kernel engine task has stopped")]
pub struct EngineGone;

impl EngineHandle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, EngineGone> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| EngineGone)?;
        rx.await.map_err(|_| EngineGone)
    }

    /// Held operations.
    pub async fn pending(&self) -> Result<Result<Vec<RequestView>, String>, EngineGone> {
        self.ask(Command::Pending).await
    }

    /// Decides one held operation.
    pub async fn decide(
        &self,
        id: RequestId,
        decision: Decision,
    ) -> Result<Result<Option<Granted>, EngineError>, EngineGone> {
        self.decide_as(id, decision, "local-admin", "", None).await
    }

    /// Decides a held operation for a reviewer `by`, with their `reason` (which the workload
    /// may read). A grant of the decision that `covers` a host name also reaches every address
    /// the name is resolved to while it lasts.
    pub async fn decide_as(
        &self,
        id: RequestId,
        decision: Decision,
        by: &str,
        reason: &str,
        covers: Option<String>,
    ) -> Result<Result<Option<Granted>, EngineError>, EngineGone> {
        let by = crate::workload::Resolution {
            allowed: !matches!(decision, Decision::Deny),
            by: by.to_string(),
            reason: reason.to_string(),
        };
        self.ask(|reply| Command::Decide {
            id,
            decision,
            by,
            covers,
            reply,
        })
        .await
    }

    /// The grant a decision of `scope` on held operation `id` would write (that `covers` a host
    /// name), without deciding: for recording it before it exists.
    pub async fn plan_grant(
        &self,
        id: RequestId,
        scope: Scope,
        covers: Option<String>,
    ) -> Result<Result<Granted, EngineError>, EngineGone> {
        self.ask(|reply| Command::PlanGrant {
            id,
            scope,
            covers,
            reply,
        })
        .await
    }

    /// Resolves an exec held for resolution; `Some` when it became a request for approval.
    /// `inspection`: for a hold on the file's content, what hashing the file found.
    pub async fn resolve(
        &self,
        ev: KernelEvent,
        inspection: Option<Inspection>,
    ) -> Result<Option<KernelEvent>, EngineGone> {
        self.ask(|reply| Command::Resolve(Box::new(ev), inspection, reply))
            .await
    }

    /// Removes a grant from the kernel and, with `close_connections`, closes the connections it
    /// let through (the reply comes before they are closed; the outcome is logged).
    pub async fn revoke(
        &self,
        key: GrantKey,
        close_connections: bool,
    ) -> Result<Result<Revoked, EngineError>, EngineGone> {
        self.ask(|reply| Command::Revoke {
            key,
            close_connections,
            reply,
        })
        .await
    }

    /// Status.
    pub async fn status(&self) -> Result<Result<Status, String>, EngineGone> {
        self.ask(Command::Status).await
    }

    /// Forwards kernel events.
    pub async fn events(&self, batch: Vec<KernelEvent>) -> Result<(), EngineGone> {
        self.tx
            .send(Command::Events(batch))
            .await
            .map_err(|_| EngineGone)
    }

    /// Tells the engine the journal is full or writable again, from a thread outside the
    /// runtime (the journal's).
    pub fn degrade_blocking(&self, full: bool) {
        let _ = self.tx.blocking_send(Command::Degrade(full));
    }

    /// Tells the engine whether central can be reached (for the central-loss timeout).
    pub async fn central(&self, connected: bool) -> Result<(), EngineGone> {
        self.tx
            .send(Command::Central(connected))
            .await
            .map_err(|_| EngineGone)
    }

    /// Releases every held operation by the fail mode and stops the heartbeat.
    pub async fn shutdown(&self) -> Result<Result<usize, String>, EngineGone> {
        self.ask(Command::Shutdown).await
    }
}

struct State {
    engine: Engine,
    policy: Option<Arc<Policy>>,
    cgroup_root: PathBuf,
    opened: HashMap<RequestId, KernelEvent>,
    /// Watched cgroups this run put in the kernel map: path relative to the root → id.
    watched: BTreeMap<String, u64>,
    tree: Option<TreeWatch>,
    events_received: u64,
    fail_mode: FailMode,
    heartbeat_timeout: Duration,
    expiry_grace: Duration,
    beating: bool,
    metrics: Metrics,
    waiting_dir: Option<PathBuf>,
    waiting_files: HashSet<PathBuf>,
    board: crate::workload::Board,
    recorder: Option<crate::recorder::Recorder>,
    degraded: bool,
    central_loss_timeout: Option<Duration>,
    /// Since when central cannot be reached (`None` while it can, or without central).
    central_down_since: Option<Instant>,
    /// Central has been unreachable for longer than the timeout: the fail mode is in force.
    central_lost: bool,
    /// Watched processes with dangerous capabilities at the last rescan.
    privileged: Vec<crate::privileged::Privileged>,
    /// Rings found by the last rescan (see [`crate::rings`]).
    foreign_rings: Vec<crate::rings::ForeignRing>,
    /// Digests of the files `copies` rules name, by identity and change time.
    digests: programs::content::DigestCache,
    /// What workloads resolved, by address.
    learned: crate::dns::learned::Learned,
    /// Grants that cover a host name, extended to each address it is resolved to.
    name_grants: name_grants::NameGrants,
    /// Names central says each workload (by name) has reached: not new to it.
    known_names: HashMap<String, BTreeSet<String>>,
}

/// How the engine task runs.
#[derive(Clone)]
pub struct TaskOptions {
    /// Heartbeat and expiry period.
    pub tick: Duration,
    /// Period of the full cgroup rescan that backs up the inotify events.
    pub rescan: Duration,
    /// With central: how long it may be unreachable before held operations are resolved by the
    /// fail mode (and new ones no longer held until it is back).
    pub central_loss_timeout: Option<Duration>,
    /// Fail mode (for shutdown and status).
    pub fail_mode: FailMode,
    /// Heartbeat timeout (for status).
    pub heartbeat_timeout: Duration,
    /// Extra time before the agent expires a request itself (central expires it first).
    pub expiry_grace: Duration,
    /// Metrics to keep up to date.
    pub metrics: Metrics,
    /// Where each watched cgroup's held requests are listed for its processes to read.
    pub waiting_dir: Option<PathBuf>,
    /// Where decisions are recorded.
    pub recorder: Option<crate::recorder::Recorder>,
    /// What the workloads may read of their held requests.
    pub board: crate::workload::Board,
    /// Grants on host names a previous run wrote and that are still in force (kept beside the
    /// rules cache): covered from the first answer on, before any rule is enforced.
    pub name_grants: Vec<(GrantKey, NameGrant)>,
    /// Names known to each workload (by name) as a previous run recorded them: not held as new
    /// before central says so again.
    pub known_names: HashMap<String, BTreeSet<String>>,
}

/// Starts the engine task.
pub fn spawn(
    engine: Engine,
    mut policy: watch::Receiver<Option<Arc<Policy>>>,
    opts: TaskOptions,
) -> (EngineHandle, tokio::task::JoinHandle<()>) {
    let TaskOptions {
        tick,
        rescan,
        central_loss_timeout,
        fail_mode,
        heartbeat_timeout,
        expiry_grace,
        metrics,
        waiting_dir,
        recorder,
        board,
        name_grants,
        known_names,
    } = opts;
    let (tx, mut rx) = mpsc::channel::<Command>(256);
    let cgroup_root = engine.cgroup_root().to_path_buf();
    let mut st = State {
        engine,
        policy: None,
        cgroup_root,
        opened: HashMap::new(),
        watched: BTreeMap::new(),
        tree: None,
        events_received: 0,
        fail_mode,
        heartbeat_timeout,
        expiry_grace,
        beating: true,
        metrics,
        waiting_dir,
        waiting_files: HashSet::new(),
        board,
        recorder,
        degraded: false,
        central_loss_timeout,
        // Until the link first connects, central counts as unreachable since start-up.
        central_down_since: central_loss_timeout.map(|_| Instant::now()),
        central_lost: false,
        privileged: Vec::new(),
        foreign_rings: Vec::new(),
        digests: Default::default(),
        learned: Default::default(),
        name_grants: name_grants::NameGrants::from(name_grants),
        known_names,
    };
    let task = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rescans = tokio::time::interval(rescan);
        rescans.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut program_checks = tokio::time::interval(PROGRAM_REFRESH);
        program_checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        match TreeWatch::new(&st.cgroup_root) {
            Ok(t) => st.tree = Some(t),
            Err(e) => tracing::warn!(
                "{e}; new cgroups are found by the periodic rescan only (every {})",
                humantime::format_duration(rescan)
            ),
        }
        // Whatever was published before the task started applies at once.
        let first = policy.borrow_and_update().clone();
        if let Some(p) = first {
            st.apply(p);
        }
        st.recover_events();
        loop {
            tokio::select! {
                changed = policy.changed() => {
                    if changed.is_err() {
                        // The publisher is gone; keep enforcing what we have.
                        std::future::pending::<()>().await;
                    }
                    let p = policy.borrow_and_update().clone();
                    if let Some(p) = p {
                        st.apply(p);
                    }
                }
                cmd = rx.recv() => match cmd {
                    Some(cmd) => st.handle(cmd),
                    None => break,
                },
                _ = ticker.tick() => st.tick(),
                _ = rescans.tick() => st.rescan(),
                _ = program_checks.tick() => st.refresh_programs(),
                change = next_change(&mut st.tree) => match change {
                    Some(c) => st.on_tree_change(c),
                    None => {
                        tracing::warn!("no longer following the cgroup tree; the periodic rescan remains");
                        st.tree = None;
                    }
                },
            }
        }
    });
    (EngineHandle { tx }, task)
}

/// The next cgroup tree change; never resolves without a tree to follow.
async fn next_change(tree: &mut Option<TreeWatch>) -> Option<TreeChange> {
    match tree {
        Some(t) => t.next().await,
        None => std::future::pending().await,
    }
}

impl State {
    fn apply(&mut self, p: Arc<Policy>) {
        let previous = self.policy.as_ref().map(|p| &p.compiled);
        match self.engine.apply(&p.compiled, previous) {
            Ok(()) => {
                tracing::info!(source = %p.source, rules = p.rules.rules.len(), entries = p.compiled.len(), "rules in force");
                let workloads: HashSet<u32> = p.rules.workloads.iter().map(|w| w.id).collect();
                match self.engine.forget_lineage_except(&workloads) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        threads = n,
                        "threads of workloads the rules no longer have are no longer watched"
                    ),
                    Err(e) => tracing::error!("cannot clear the lineage of removed workloads: {e}"),
                }
                // Content verdicts were made by the previous rules.
                if let Err(e) = self.engine.forget_content() {
                    tracing::error!("cannot clear the content verdicts of the previous rules: {e}");
                }
                self.say_missing(&p.source, &p.missing, &[]);
                self.policy = Some(p);
                self.relearn();
                self.rescan();
                // The previous rule set and what compiling the new one took are freed now. Off
                // this task: trimming walks every allocator arena.
                tokio::task::spawn_blocking(crate::heap::release_freed);
            }
            Err(e) => {
                tracing::error!(source = %p.source, "rules not applied, the previous ones stay in force: {e}")
            }
        }
    }

    /// Says which exact rule paths name no file now (each once, when it starts to), and which do
    /// again: in the log, and in the journal, so that central's audit trail shows on which
    /// hosts a rule names nothing.
    fn say_missing(
        &self,
        source: &str,
        now: &[programs::NamedProgram],
        before: &[programs::NamedProgram],
    ) {
        let record = |kind: &str, n: &programs::NamedProgram| {
            if let Some(r) = &self.recorder {
                r.record_durable(
                    kind,
                    serde_json::json!({ "rule": n.rule, "path": n.path, "rules": source }),
                );
            }
        };
        for n in now.iter().filter(|n| !before.contains(n)) {
            tracing::warn!(
                source,
                rule = %n.rule,
                path = %n.path,
                "an exec rule names a path that is no file in the agent's view: until it is one, \
                 only an exec by that very path is matched, not the file's other names (looked \
                 at again every 2 s)"
            );
            record("program_missing", n);
        }
        for n in before.iter().filter(|n| !now.contains(n)) {
            tracing::info!(source, rule = %n.rule, path = %n.path, "a path an exec rule names is a file now");
            record("program_found", n);
        }
    }

    /// Looks at the files the rules name again and, if one was replaced, created or removed,
    /// puts the rule set back in force with their current identities.
    fn refresh_programs(&mut self) {
        let Some(p) = self.policy.clone() else { return };
        let content = programs::content::table(&p.rules, &mut self.digests);
        if content != p.content {
            // A file a `copies` rule names changed: its copies are other contents now.
            tracing::info!(source = %p.source, "a program named by a `copies` rule changed on disk; its new content is in force");
            if let Err(e) = self.engine.forget_content() {
                tracing::error!("cannot clear the content verdicts: {e}");
            }
            self.policy = Some(Arc::new(Policy {
                content,
                ..(*p).clone()
            }));
        }
        let Some(p) = self.policy.clone() else { return };
        let host = programs::HostFiles::now();
        let missing = programs::missing(&p.named, &host);
        if missing != p.missing {
            self.say_missing(&p.source, &missing, &p.missing);
            self.policy = Some(Arc::new(Policy {
                missing,
                ..(*p).clone()
            }));
        }
        let Some(p) = self.policy.clone() else { return };
        let (files, paths) = programs::resolve_with_paths(&p.rules, &p.compiled, &host);
        if files == p.compiled.exec_files && paths == p.compiled.exec_file_paths {
            return;
        }
        let mut compiled = p.compiled.clone();
        compiled.exec_files = files;
        compiled.exec_file_paths = paths;
        match self.engine.apply(&compiled, Some(&p.compiled)) {
            Ok(()) => {
                tracing::info!(
                    source = %p.source,
                    files = compiled.exec_files.len(),
                    "program files named by the rules changed on disk; their new identities are in force"
                );
                self.policy = Some(Arc::new(Policy {
                    source: p.source.clone(),
                    rules: p.rules.clone(),
                    compiled,
                    globs: p.globs.clone(),
                    content: p.content.clone(),
                    named: p.named.clone(),
                    missing: p.missing.clone(),
                }));
            }
            Err(e) => {
                tracing::error!("cannot put the new identities of program files in force: {e}")
            }
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Pending(reply) => {
                let _ = reply.send(self.views().map_err(|e| e.to_string()));
            }
            Command::Decide {
                id,
                decision,
                by,
                covers,
                reply,
            } => {
                let held = self.engine.held(id).ok();
                let r = self.engine.decide(id, decision).map(|key| {
                    key.map(|key| {
                        let name = held.and_then(|p| name_grant_of(&p, covers));
                        if let Some(g) = &name {
                            self.grant_name(key, g.clone());
                        }
                        Granted { key, name }
                    })
                });
                if r.is_ok() {
                    tracing::info!(request = %id, ?decision, "decided");
                    self.metrics.decided(outcome_label(&decision), held_for(id));
                    self.record_decision(id, &decision, "reviewer");
                    self.board.resolve(id, by, crate::unix_ms());
                    self.opened.remove(&id);
                }
                let _ = reply.send(r);
            }
            Command::PlanGrant {
                id,
                scope,
                covers,
                reply,
            } => {
                let r = self.engine.held(id).map(|p| Granted {
                    key: crate::kernel::held_grant_key(scope, &p),
                    name: name_grant_of(&p, covers),
                });
                let _ = reply.send(r);
            }
            Command::Resolve(ev, inspection, reply) => {
                let _ = reply.send(self.resolve(*ev, inspection));
            }
            Command::KnownNames(workload, names, reply) => {
                self.know_names(workload, names);
                let _ = reply.send(());
            }
            Command::Revoke {
                key,
                close_connections,
                reply,
            } => {
                // Its copies under the addresses of a name it covers go with it.
                let copies = self.revoke_name_grant(&key);
                let r = self.engine.revoke(&key).and_then(|removed| {
                    if removed {
                        tracing::info!(rule = key.rule_id, scope = key.scope, "grant revoked");
                    }
                    // Taken either way: the record is useless once the grant is gone.
                    let mut connections = self.engine.take_connections(&key)?;
                    for k in &copies {
                        connections.extend(self.engine.take_connections(k)?);
                    }
                    let closing = if close_connections {
                        close_connections_of(key, connections.into_iter().collect())
                    } else {
                        0
                    };
                    Ok(Revoked { removed, closing })
                });
                let _ = reply.send(r);
            }
            Command::Status(reply) => {
                let _ = reply.send(self.status().map_err(|e| e.to_string()));
            }
            Command::Events(batch) => {
                for ev in batch {
                    self.events_received += 1;
                    self.metrics.events.inc();
                    log_event(&ev);
                    match (ev.outcome, ev.request) {
                        (Outcome::Paused, Some(id)) => {
                            self.open(id, ev);
                        }
                        (Outcome::Cancelled, Some(id)) => {
                            self.opened.remove(&id);
                            self.board.end(id, crate::unix_ms());
                        }
                        _ => {}
                    }
                }
            }
            Command::Degrade(full) => {
                self.degraded = full;
                self.refresh_holding();
            }
            Command::Central(true) => {
                self.central_down_since = None;
                if self.central_lost {
                    self.central_lost = false;
                    tracing::warn!(
                        "central is reachable again; operations are held for review again"
                    );
                    self.refresh_holding();
                }
            }
            Command::Central(false) => {
                if self.central_loss_timeout.is_some() && self.central_down_since.is_none() {
                    self.central_down_since = Some(Instant::now());
                }
            }
            Command::HostName(workload, addr, reply) => {
                let _ = reply.send(self.host_name(workload, addr));
            }
            Command::DnsOrigin(key, reply) => {
                let _ = reply.send(self.dns_origin(key));
            }
            Command::Learn {
                workload,
                answer,
                reply,
            } => {
                let _ = reply.send(self.learn(workload, answer));
            }
            Command::Shutdown(reply) => {
                self.beating = false;
                let r = self
                    .engine
                    .flatline()
                    .and_then(|()| {
                        self.engine
                            .release_for_exit(self.fail_mode, Duration::from_secs(2))
                    })
                    .map_err(|e| e.to_string());
                let _ = reply.send(r);
            }
        }
    }

    fn resolve(
        &mut self,
        mut ev: KernelEvent,
        inspection: Option<Inspection>,
    ) -> Option<KernelEvent> {
        let id = ev.request?;
        let policy = self.policy.clone();
        let mut by_content = None;
        let mut digest = None;
        let real = if ev.content {
            match inspection {
                Some(Ok(found)) => {
                    by_content = Some(self.content_verdict(&mut ev, &found, policy.as_deref()));
                    digest = Some(found.digest.0);
                    found.real
                }
                Some(Err(e)) => {
                    // Nothing is decided from a file that cannot be shown to be the one held.
                    tracing::warn!(request = %id, "held exec refused: {e}");
                    self.apply_resolved(id, Decision::Deny);
                    return None;
                }
                None => {
                    tracing::warn!(request = %id, "held exec refused: its file was not hashed");
                    self.apply_resolved(id, Decision::Deny);
                    return None;
                }
            }
        } else if ev.before_exec {
            // Held before the exec: the path is relative to the caller's working directory,
            // which cannot change while the whole process is stopped.
            let rel = ev.path.clone()?;
            let real = std::fs::canonicalize(format!("/proc/{}/cwd/{rel}", ev.tgid)).ok()?;
            real.to_string_lossy().into_owned()
        } else {
            // The new image is in place and stopped: its /proc entry names the real file.
            let real = std::fs::read_link(format!("/proc/{}/exe", ev.tgid)).ok()?;
            real.to_string_lossy().into_owned()
        };
        // The name asked for (when the kernel looked it up as written), the real path, the
        // file's identity and its content: the strictest applies, as in the kernel.
        let for_args = agent_common::is_args_rule(ev.rule_id);
        let asked = ev
            .path
            .clone()
            .filter(|p| (ev.content || for_args) && !ev.interp && p.starts_with('/'));
        // After the exec the arguments are the new image's, which nothing changes while it is
        // stopped; before it (LSM), they are not known yet, and every rule with `args` counts.
        let argv = if ev.before_exec {
            None
        } else {
            match programs::argv::read(ev.tgid) {
                Ok(a) => Some(a),
                Err(e) => {
                    tracing::warn!(request = %id, "held exec decided as if every argument rule matched: {e}");
                    None
                }
            }
        };
        let verdict = policy
            .as_deref()
            .map(|p| by_rules(p, &ev, &real, asked.as_deref(), by_content, argv.as_deref()))
            .unwrap_or(Verdict {
                rule_id: 0,
                action: agent_common::Action::Deny,
                by_content: false,
            });
        let rule_id = verdict.rule_id;
        let decision = match verdict.action {
            agent_common::Action::Allow | agent_common::Action::Audit => Decision::Allow,
            agent_common::Action::Deny => Decision::Deny,
            agent_common::Action::Approve => {
                // Held for its content: reviewed (and granted) as that content, by any name.
                let content = verdict.by_content.then_some(digest).flatten();
                let target = match &content {
                    Some(d) => {
                        agent_common::fingerprint::content(&self.engine.fingerprint_key(), d)
                    }
                    None => agent_common::fingerprint::path_of(
                        &self.engine.fingerprint_key(),
                        real.as_bytes(),
                    ),
                };
                if self.granted_after(&ev, policy.as_deref(), rule_id, target, content.is_some()) {
                    tracing::info!(request = %id, path = %real, rule = rule_id, "held exec allowed by a grant");
                    self.apply_resolved(id, Decision::Allow);
                    ev.outcome = agent_common::Outcome::Granted;
                    ev.request = None;
                    ev.rule_id = rule_id;
                    ev.target = target;
                    ev.path = Some(real);
                    return Some(ev);
                }
                if let Err(e) = self.engine.retarget(id, rule_id, target) {
                    tracing::error!(request = %id, "cannot retarget a resolved exec: {e}");
                    return None;
                }
                tracing::info!(request = %id, path = %real, rule = rule_id, "held exec resolved: needs approval");
                ev.rule_id = rule_id;
                ev.target = target;
                ev.path = Some(real);
                self.open(id, ev.clone());
                return Some(ev);
            }
        };
        tracing::info!(request = %id, path = %real, ?decision, sha256 = ev.program.as_ref().map(|p| p.sha256.as_str()), "held exec resolved");
        self.apply_resolved(id, decision);
        None
    }

    /// Whether a grant covers an exec held for approval after the kernel let it past its own
    /// grant lookup: under a rule with `args` (the kernel holds every exec of the program) or
    /// for its content (the kernel holds it to be hashed). The agent looks the grant up, for the
    /// same rule and program (its content, where the content decided), narrowest scope first,
    /// and takes a use.
    fn granted_after(
        &mut self,
        ev: &KernelEvent,
        policy: Option<&Policy>,
        rule_id: u32,
        target: u64,
        by_content: bool,
    ) -> bool {
        let by_args = policy
            .and_then(|p| p.rules.rule(rule_id))
            .is_some_and(|r| matches!(r.matcher, policy::Matcher::Exec { args: Some(_), .. }));
        if !by_args && !by_content {
            return false;
        }
        match self.engine.use_grant(ev.tgid, ev.workload, rule_id, target) {
            Ok(found) => found.is_some(),
            Err(e) => {
                tracing::error!("cannot look up grants for a held exec (asking a reviewer): {e}");
                false
            }
        }
    }

    fn apply_resolved(&mut self, id: RequestId, decision: Decision) {
        if let Err(e) = self.engine.decide(id, decision) {
            tracing::error!(request = %id, "cannot apply the resolved exec's verdict: {e}");
        }
        self.opened.remove(&id);
        self.board.resolve(
            id,
            crate::workload::Resolution {
                allowed: !matches!(decision, Decision::Deny),
                by: "rules".into(),
                reason: String::new(),
            },
            crate::unix_ms(),
        );
    }

    /// What a held exec's content gets, put in the kernel's cache while the file is unchanged
    /// and in the event for the reviewer.
    fn content_verdict(
        &mut self,
        ev: &mut KernelEvent,
        found: &programs::content::Inspected,
        policy: Option<&Policy>,
    ) -> (u32, agent_common::Action) {
        if found.known_reloaded {
            // A program installed since may have been refused as unknown.
            if let Err(e) = self.engine.forget_content() {
                tracing::error!("cannot clear the content verdicts: {e}");
            }
        }
        let w = policy.and_then(|p| p.content.get(&ev.workload));
        let known =
            found.packaged || (found.real_here && w.is_some_and(|w| w.known_by_path(&found.real)));
        let (rule_id, action) = match w {
            Some(w) => programs::content::verdict(w, &found.digest, known),
            None => (0, policy::Action::Allow),
        };
        let action = rules::kernel_action(action);
        ev.program = Some(programs::content::Program {
            sha256: found.digest.to_string(),
            known,
            real: found.real.clone(),
        });
        if let Some(f) = ev.file.filter(|f| f.ctime_ns != 0) {
            let key = agent_common::ExecFileKey {
                workload: ev.workload,
                dev: f.dev,
                ino: f.ino,
            };
            let v = agent_common::ContentVerdict {
                ctime_ns: f.ctime_ns,
                inode: f.inode,
                rule_id,
                action: action as u8,
                _pad: [0; 3],
            };
            if let Err(e) = self.engine.remember_content(key, v) {
                tracing::warn!("cannot cache a content verdict (the next exec of the file is hashed again): {e}");
            }
        }
        (rule_id, action)
    }

    /// Whether operations are held for review now: not shutting down, the journal can record
    /// decisions, and someone can make them.
    fn holding(&self) -> bool {
        self.beating && !self.degraded && !self.central_lost
    }

    /// Writes the heartbeat, or stops it so that the kernel applies the fail mode at once.
    fn refresh_holding(&mut self) {
        let r = if self.holding() {
            self.engine.beat()
        } else {
            self.engine.flatline()
        };
        if let Err(e) = r {
            tracing::error!("cannot update the heartbeat: {e}");
        }
    }

    fn tick(&mut self) {
        self.expire_learned();
        if self.holding() {
            if let Err(e) = self.engine.beat() {
                tracing::error!("cannot refresh the heartbeat: {e}");
            }
        }
        self.engine.flush_kernel_log();
        if let Err(e) = self.engine.resume_overtaken() {
            tracing::error!("cannot check decided operations: {e}");
        }
        self.recover_events();
        self.check_central();
        self.expire();
        self.publish();
    }

    /// Past the central-loss timeout, nobody can decide: held operations are resolved by the
    /// fail mode and new ones are no longer held (the kernel sees a stopped heartbeat).
    fn check_central(&mut self) {
        let (Some(timeout), Some(since)) = (self.central_loss_timeout, self.central_down_since)
        else {
            return;
        };
        if self.central_lost || since.elapsed() < timeout {
            return;
        }
        self.central_lost = true;
        tracing::error!(
            fail_mode = ?self.fail_mode,
            "central unreachable for {}; held operations are resolved by the fail mode and new ones are not held until it is back",
            humantime::format_duration(timeout)
        );
        self.refresh_holding();
        let decision = match self.fail_mode {
            FailMode::Deny => Decision::Deny,
            FailMode::AllowAndRecord => Decision::Allow,
        };
        let Ok(pending) = self.engine.pending() else {
            return;
        };
        for op in pending.into_iter().filter(|op| op.state == "waiting") {
            match self.engine.decide(op.id, decision) {
                Ok(_) => {
                    tracing::warn!(request = %op.id, ?decision, "resolved by the fail mode: central unreachable");
                    self.metrics
                        .decided(outcome_label(&decision), held_for(op.id));
                    self.decided_here(op.id, &decision, "fail-mode");
                    self.opened.remove(&op.id);
                }
                Err(EngineError::NotPending(_)) => {}
                Err(e) => tracing::error!(request = %op.id, "cannot apply the fail mode: {e}"),
            }
        }
    }

    /// Held operations whose opening event this process never read (they were held before a
    /// restart, or the ring buffer lost the event) are described from the pending entry and
    /// `/proc`, so that they can still be listed and submitted for review.
    fn recover_events(&mut self) {
        let Ok(pending) = self.engine.pending() else {
            return;
        };
        for op in pending {
            if op.state != "waiting" || self.opened.contains_key(&op.id) {
                continue;
            }
            let for_args = agent_common::is_args_rule(op.rule_id);
            let resolving = op.rule_id == agent_common::RESOLVE_RULE || for_args;
            if resolving && held_for(op.id) < RESOLVING.as_secs_f64() {
                // Being resolved (hashed, perhaps) by the event's own path: not a request yet.
                continue;
            }
            if for_args {
                // Its opening event was lost (or read by an earlier agent): decided now on its
                // arguments as it would have been, and a request only if a rule asks for one.
                if let Some(ev) = recovered_event(&op) {
                    tracing::info!(request = %op.id, pid = op.tgid, "held for its arguments before this agent read it; deciding it now");
                    // A request it becomes is kept in `opened`, as a recovered one is.
                    let _ = self.resolve(ev, None);
                }
                continue;
            }
            if let Some(ev) = recovered_event(&op) {
                tracing::info!(request = %op.id, pid = op.tgid, "held before this agent started; taking it over");
                self.open(op.id, ev);
            }
        }
    }

    fn on_tree_change(&mut self, change: TreeChange) {
        let Some(p) = self.policy.clone() else { return };
        match change {
            TreeChange::Rescan => self.rescan(),
            TreeChange::Created(rel) => {
                let Some(tree) = self.tree.as_mut() else {
                    return;
                };
                let created = tree.scan_created(&rel, &p.globs);
                for m in &created {
                    if self.watched.contains_key(&m.path) {
                        continue;
                    }
                    match self.engine.watch(m.id, m.watch()) {
                        Ok(()) => {
                            tracing::info!(cgroup = %m.path, id = m.id, "watching");
                            self.watched.insert(m.path.clone(), m.id);
                        }
                        Err(e) => tracing::error!(cgroup = %m.path, "cannot watch: {e}"),
                    }
                }
                // Processes that got there before the watch did.
                self.remember_lineage(&created);
            }
            TreeChange::Removed(rel) => {
                if let Some(id) = self.watched.remove(&rel) {
                    match self.engine.unwatch(id) {
                        Ok(()) => {
                            tracing::info!(cgroup = %rel, id, "cgroup removed; no longer watched")
                        }
                        Err(e) => tracing::error!(cgroup = %rel, id, "cannot unwatch: {e}"),
                    }
                }
            }
        }
    }

    /// Ends a request the agent decided itself (`by`: `timeout`, `fail-mode`) for the workload's
    /// board too.
    fn decided_here(&mut self, id: RequestId, decision: &Decision, by: &str) {
        self.record_decision(id, decision, by);
        self.board.resolve(
            id,
            crate::workload::Resolution {
                allowed: !matches!(decision, Decision::Deny),
                by: by.into(),
                reason: String::new(),
            },
            crate::unix_ms(),
        );
    }

    /// A held operation: kept with its event, and put on the workload's board when a rule holds
    /// it for a person (not while the agent only resolves which rule applies).
    fn open(&mut self, id: RequestId, ev: KernelEvent) {
        let rule = self
            .policy
            .as_ref()
            .and_then(|p| p.rules.rule(ev.rule_id).map(|r| (p, r)));
        if let Some((p, rule)) = rule {
            let now = crate::unix_ms();
            let held_since = now.saturating_sub((held_for(id) * 1000.0) as i64).max(0);
            self.board.open(crate::workload::Opened {
                id,
                tgid: ev.tgid,
                uid: ev.uid,
                hold: crate::workload::Hold {
                    op: crate::events::op_name(ev.op).into(),
                    target: ev
                        .path
                        .clone()
                        .or_else(|| ev.destination.map(|d| d.to_string()))
                        .unwrap_or_default(),
                    rule: rule.name.clone(),
                    workload: p
                        .rules
                        .workloads
                        .iter()
                        .find(|w| w.id == ev.workload)
                        .map(|w| w.name.clone())
                        .unwrap_or_default(),
                    held_since_unix_ms: held_since,
                    deadline_unix_ms: held_since + rule.timeout.as_millis() as i64,
                    on_timeout: if rule.on_timeout == policy::Action::Allow {
                        "allow".into()
                    } else {
                        "deny".into()
                    },
                    approvers_needed: rule.approvers.count,
                    approver_groups: rule.approvers.groups.clone(),
                },
            });
        }
        self.opened.insert(id, ev);
    }

    fn record_decision(&self, id: RequestId, decision: &Decision, by: &str) {
        let Some(r) = &self.recorder else { return };
        let rule = self.opened.get(&id).map(|e| e.rule_id).and_then(|rid| {
            self.policy
                .as_ref()
                .and_then(|p| p.rules.rule(rid))
                .map(|r| (rid, r.name.clone()))
        });
        r.record_durable(
            if by == "timeout" {
                "expired"
            } else {
                "decision"
            },
            serde_json::json!({
                "request": id.to_string(),
                "decision": decision,
                "decided_by": by,
                "rule_id": rule.as_ref().map(|r| r.0),
                "rule_name": rule.map(|r| r.1),
                "action": outcome_label(decision),
            }),
        );
    }

    /// Metrics, and the per-cgroup lists of held requests that the workload can read.
    fn publish(&mut self) {
        if let Ok(values) = self.engine.counters() {
            for (i, v) in values.into_iter().enumerate() {
                if let Some(name) = counter_name(i as u32) {
                    self.metrics
                        .kernel
                        .get_or_create(&CounterLabel {
                            counter: name.to_string(),
                        })
                        .set(v as i64);
                }
            }
        }
        let Ok(views) = self.views() else { return };
        self.metrics.pending.set(views.len() as i64);
        let waiting: HashSet<RequestId> = views
            .iter()
            .filter(|v| v.pending.state == "waiting")
            .map(|v| v.pending.id)
            .collect();
        self.board.keep_only(&waiting, crate::unix_ms());
        let Some(dir) = self.waiting_dir.clone() else {
            return;
        };
        let mut by_cgroup: HashMap<u64, Vec<serde_json::Value>> = HashMap::new();
        let now_ms = crate::unix_ms();
        for v in &views {
            if v.pending.state != "waiting" {
                continue;
            }
            let target = v.event.as_ref().and_then(|e| {
                e.path
                    .clone()
                    .or_else(|| e.destination.map(|d| d.to_string()))
            });
            by_cgroup
                .entry(v.pending.cgroup_id)
                .or_default()
                .push(serde_json::json!({
                    "request": v.pending.id.to_string(),
                    "pid": v.pending.tgid,
                    "op": v.pending.op,
                    "target": target,
                    "rule": v.rule,
                    "waiting_ms": v.pending.age_ms,
                    "deadline_unix_ms": v.expires_in_s.map(|s| now_ms + (s as i64) * 1000),
                }));
        }
        // Root only: every workload's requests are listed here (workloads ask the workload
        // socket, which shows each its own).
        if std::fs::create_dir_all(&dir).is_err()
            || std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .is_err()
        {
            return;
        }
        let mut written = HashSet::new();
        for (cgroup, items) in by_cgroup {
            let path = dir.join(format!("cgroup-{cgroup}.json"));
            let body = serde_json::json!({ "cgroup_id": cgroup, "waiting": items });
            let tmp = path.with_extension("tmp");
            let ok = std::fs::write(&tmp, body.to_string()).is_ok()
                && std::fs::rename(&tmp, &path).is_ok();
            if ok {
                written.insert(path);
            }
        }
        for stale in self.waiting_files.difference(&written) {
            let _ = std::fs::remove_file(stale);
        }
        self.waiting_files = written;
    }

    fn rescan(&mut self) {
        let Some(p) = self.policy.clone() else { return };
        let found = match self.tree.as_mut() {
            Some(t) => t.scan(&p.globs),
            None => cgroups::scan(&self.cgroup_root, &p.globs),
        };
        let want: HashSet<u64> = found.iter().map(|m| m.id).collect();
        let ours: HashSet<u64> = self.watched.values().copied().collect();
        for m in &found {
            if !ours.contains(&m.id) {
                match self.engine.watch(m.id, m.watch()) {
                    Ok(()) => tracing::info!(cgroup = %m.path, id = m.id, "watching"),
                    Err(e) => tracing::error!(cgroup = %m.path, "cannot watch: {e}"),
                }
            }
        }
        // Entries left by an earlier run (pinned) or cgroups that no longer match.
        let current: Vec<u64> = match self.engine.watched() {
            Ok(w) => w.into_iter().map(|(id, _)| id).collect(),
            Err(e) => {
                tracing::error!("cannot list watched cgroups: {e}");
                return;
            }
        };
        for id in current {
            if !want.contains(&id) {
                if let Err(e) = self.engine.unwatch(id) {
                    tracing::error!(id, "cannot unwatch: {e}");
                }
            }
        }
        self.remember_lineage(&found);
        // Every process of the watched cgroups, read once for both checks.
        let procs: Vec<(u32, &str)> = found
            .iter()
            .flat_map(|m| {
                let dir = self.cgroup_root.join(m.path.trim_start_matches('/'));
                cgroups::procs_under(&dir)
                    .into_iter()
                    .map(move |pid| (pid, m.path.as_str()))
            })
            .collect();
        self.find_privileged(&procs);
        self.find_foreign_rings(&found, &procs);
        self.watched = found.into_iter().map(|m| (m.path, m.id)).collect();
    }

    /// Finds watched processes (`procs`: each with the watched cgroup it was found under) that
    /// can undo enforcement, and says so once per process.
    fn find_privileged(&mut self, procs: &[(u32, &str)]) {
        let proc_root = std::path::Path::new("/proc");
        let mut now: Vec<_> = procs
            .iter()
            .filter_map(|&(pid, cgroup)| crate::privileged::check(proc_root, pid, cgroup))
            .collect();
        now.sort_by_key(|p| p.pid);
        now.dedup_by_key(|p| p.pid);
        for p in &now {
            if !self.privileged.iter().any(|q| q.pid == p.pid) {
                tracing::warn!(
                    pid = p.pid,
                    comm = %p.comm,
                    cgroup = %p.cgroup,
                    caps = %p.caps.join(","),
                    "a watched process holds capabilities with which it can undo enforcement"
                );
                // In the journal, and so in central's audit trail, where the host's own log
                // may not be read.
                if let Some(r) = &self.recorder {
                    r.record_durable(
                        "privileged",
                        serde_json::json!({
                            "pid": p.pid,
                            "comm": p.comm,
                            "cgroup": p.cgroup,
                            "caps": p.caps,
                        }),
                    );
                }
            }
        }
        self.metrics.privileged.set(now.len() as i64);
        self.privileged = now;
    }

    /// Finds watched processes (`procs`, found under the watched cgroups `found`) that use an
    /// io_uring ring whose submission thread works for a process outside every watched cgroup,
    /// and says so once per ring.
    fn find_foreign_rings(&mut self, found: &[cgroups::Match], procs: &[(u32, &str)]) {
        let proc_root = std::path::Path::new("/proc");
        let watched = |c: &str| {
            found.iter().any(|m| {
                m.path == "/"
                    || c == m.path
                    || c.strip_prefix(m.path.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            })
        };
        let mut now: Vec<_> = procs
            .iter()
            .flat_map(|&(pid, cgroup)| crate::rings::foreign(proc_root, pid, cgroup, watched))
            .collect();
        now.sort_by_key(|r| (r.pid, r.fd));
        now.dedup_by_key(|r| (r.pid, r.fd));
        for r in &now {
            if !self.foreign_rings.contains(r) {
                tracing::warn!(
                    pid = r.pid,
                    comm = %r.comm,
                    cgroup = %r.cgroup,
                    fd = r.fd,
                    owner = r.owner,
                    owner_cgroup = %r.owner_cgroup,
                    "a watched process uses an io_uring ring whose submission thread works for a \
                     process outside the watched cgroups: what it submits there is not seen"
                );
                if let Some(rec) = &self.recorder {
                    rec.record_durable(
                        "foreign_ring",
                        serde_json::json!({
                            "pid": r.pid,
                            "comm": r.comm,
                            "cgroup": r.cgroup,
                            "fd": r.fd,
                            "owner": r.owner,
                            "owner_cgroup": r.owner_cgroup,
                        }),
                    );
                }
            }
        }
        self.foreign_rings = now;
    }

    /// Threads already in watched cgroups stay watched if they leave (the kernel keeps this for
    /// forks and moves into watched cgroups; these were there before). `found` is sorted by
    /// path, so a deeper watched cgroup's watch is written last and wins.
    fn remember_lineage(&mut self, found: &[cgroups::Match]) {
        for m in found {
            let dir = self.cgroup_root.join(m.path.trim_start_matches('/'));
            let watch = m.watch();
            for tid in cgroups::threads_under(&dir) {
                if let Err(e) = self.engine.remember_lineage(tid, m.id, watch) {
                    tracing::error!(cgroup = %m.path, tid, "cannot record a watched thread: {e}");
                    return;
                }
                // A thread that ended between the read and the write must not leave its id
                // watched for whatever process gets it next (the kernel removes the entries of
                // threads that end after this point).
                if !std::path::Path::new(&format!("/proc/{tid}")).exists() {
                    let _ = self.engine.forget_lineage(tid);
                }
            }
        }
    }

    fn expire(&mut self) {
        let Ok(pending) = self.engine.pending() else {
            return;
        };
        let policy = self.policy.clone();
        for op in pending {
            if op.state != "waiting" {
                continue;
            }
            let rule = policy.as_ref().and_then(|p| p.rules.rule(op.rule_id));
            let (timeout, on_timeout) = match rule {
                Some(r) => (r.timeout, r.on_timeout),
                None => (policy::DEFAULT_TIMEOUT, policy::Action::Deny),
            };
            if Duration::from_millis(op.age_ms) < timeout + self.expiry_grace {
                continue;
            }
            let decision = if on_timeout == policy::Action::Allow {
                Decision::Allow
            } else {
                Decision::Deny
            };
            match self.engine.decide(op.id, decision) {
                Ok(_) => {
                    tracing::warn!(request = %op.id, ?decision, "expired without a decision");
                    self.metrics.decided("expired", held_for(op.id));
                    self.decided_here(op.id, &decision, "timeout");
                    self.opened.remove(&op.id);
                }
                Err(EngineError::NotPending(_)) => {}
                Err(e) => tracing::error!(request = %op.id, "cannot expire: {e}"),
            }
        }
    }

    fn views(&self) -> Result<Vec<RequestView>, EngineError> {
        let policy = self.policy.as_ref();
        Ok(self
            .engine
            .pending()?
            .into_iter()
            .map(|op| {
                let rule = policy.and_then(|p| p.rules.rule(op.rule_id));
                let workload_name = policy
                    .and_then(|p| p.rules.workloads.iter().find(|w| w.id == op.workload))
                    .map(|w| w.name.clone());
                let timeout = rule.map(|r| r.timeout).unwrap_or(policy::DEFAULT_TIMEOUT);
                let (approval_id, justification) = self.board.said_of(op.id);
                RequestView {
                    approval_id,
                    justification,
                    expires_in_s: Some(timeout.as_secs().saturating_sub(op.age_ms / 1000)),
                    rule: rule.map(|r| r.name.clone()),
                    workload_name,
                    event: self.opened.get(&op.id).cloned(),
                    pending: op,
                }
            })
            .collect())
    }

    fn status(&self) -> Result<Status, EngineError> {
        let counters = self.engine.counters()?;
        Ok(Status {
            backend: self.engine.backend(),
            lsm_available: self.engine.lsm_available(),
            links_pinned: self.engine.links_pinned(),
            rules_source: self.policy.as_ref().map(|p| p.source.clone()),
            rules: self
                .policy
                .as_ref()
                .map(|p| p.rules.rules.len())
                .unwrap_or(0),
            watched_cgroups: self.watched.keys().cloned().collect(),
            pending: self.engine.pending()?.len(),
            counters: counters
                .into_iter()
                .enumerate()
                .filter_map(|(i, v)| counter_name(i as u32).map(|n| (n.to_string(), v)))
                .collect(),
            events_received: self.events_received,
            fail_mode: match self.fail_mode {
                FailMode::Deny => "deny",
                FailMode::AllowAndRecord => "allow-and-record",
            }
            .into(),
            heartbeat_timeout_s: self.heartbeat_timeout.as_secs_f64(),
            holding: self.holding(),
            followed_dirs: self.tree.as_ref().map(TreeWatch::followed).unwrap_or(0),
            privileged: self.privileged.clone(),
            foreign_rings: self.foreign_rings.clone(),
            dns_proxy_port: self.engine.dns_proxy_port(),
            learned_addresses: self.learned.len(),
            missing_programs: self
                .policy
                .as_ref()
                .map(|p| p.missing.clone())
                .unwrap_or_default(),
        })
    }
}

fn log_event(ev: &KernelEvent) {
    let what = ev
        .path
        .clone()
        .or_else(|| ev.destination.map(|d| d.to_string()))
        .unwrap_or_default();
    let outcome = crate::events::outcome_name(ev.outcome);
    match ev.outcome {
        Outcome::Paused => {
            tracing::warn!(pid = ev.tgid, comm = %ev.comm, target = %what, rule = ev.rule_id, request = ?ev.request.map(|r| r.to_string()), "held for approval")
        }
        Outcome::Denied | Outcome::FailClosed | Outcome::Unpausable | Outcome::GrantDenied => {
            tracing::warn!(pid = ev.tgid, comm = %ev.comm, target = %what, rule = ev.rule_id, outcome, "refused")
        }
        _ => {
            tracing::info!(pid = ev.tgid, comm = %ev.comm, target = %what, rule = ev.rule_id, outcome, "recorded")
        }
    }
}

/// The name a grant on held network operation `p` covers, as the engine task extends it.
fn name_grant_of(p: &agent_common::Pending, covers: Option<String>) -> Option<NameGrant> {
    match covers {
        Some(name) if p.family != 0 => Some(NameGrant {
            name,
            workload: p.workload,
            port: p.port,
            proto: p.proto,
        }),
        _ => None,
    }
}

/// Destroys the sockets a revoked grant let through, on a blocking thread; returns how many.
fn close_connections_of(key: GrantKey, cookies: HashSet<u64>) -> usize {
    let n = cookies.len();
    if n == 0 {
        return 0;
    }
    tokio::task::spawn_blocking(move || match crate::kernel::sockets::destroy(&cookies) {
        Ok(done) => {
            tracing::info!(
                rule = key.rule_id,
                scope = key.scope,
                closed = done.closed,
                already_gone = done.gone,
                "connections of a revoked grant closed"
            );
            for (cookie, why) in done.failed {
                tracing::error!(
                    cookie,
                    "cannot close a connection of a revoked grant: {why}"
                );
            }
        }
        Err(e) => tracing::error!("cannot close the connections of a revoked grant: {e}"),
    });
    n
}

/// What hashing a held exec's file found, or why it could not.
pub type Inspection = Result<programs::content::Inspected, programs::content::ContentError>;

/// The strictest of what the rules say about a resolved exec: its real path, the name asked
/// for, the file's identity, its content; the workload's default when no path rule names it.
/// Rules with `args` count only where `args` match (all of them where `args` is `None`).
fn by_rules(
    p: &Policy,
    ev: &KernelEvent,
    real: &str,
    asked: Option<&str>,
    by_content: Option<(u32, agent_common::Action)>,
    args: rules::Args<'_>,
) -> Verdict {
    let decode = |a: u8| agent_common::Action::from_u8(a).unwrap_or(agent_common::Action::Deny);
    let default = p
        .rules
        .workloads
        .iter()
        .find(|w| w.id == ev.workload)
        .map(|w| rules::kernel_action(w.default_action))
        .unwrap_or(agent_common::Action::Deny);
    let default_ref = agent_common::RuleRef {
        rule_id: 0,
        action: default as u8,
        flags: 0,
        _pad: [0; 2],
    };
    let verdict =
        |path: &str| rules::exec_verdict(&p.compiled, ev.workload, path, args, default_ref);
    let by_path = [Some(real), asked]
        .into_iter()
        .flatten()
        .filter_map(verdict)
        .max_by_key(|r| r.action)
        .map(|r| (r.rule_id, decode(r.action)))
        .unwrap_or((0, default));
    let by_file = ev.file.and_then(|f| {
        let (key, r) = p
            .compiled
            .exec_files
            .iter()
            .find(|(k, _)| k.workload == ev.workload && k.dev == f.dev && k.ino == f.ino)?;
        let r = if agent_common::is_args_rule(r.rule_id) {
            // Decided by the rules of the path the entry was resolved from.
            verdict(p.compiled.exec_file_paths.get(key)?)?
        } else {
            *r
        };
        Some((r.rule_id, decode(r.action)))
    });
    // An approval the content asks for is made (and granted) for the content even where a path
    // rule asks the same (a `copies` rule run by its own path): the grant then covers every
    // copy, as the rule says.
    let mut best = (by_path, false);
    for (v, content) in [(by_file, false), (by_content, true)] {
        match v {
            Some(v) if v.1 > best.0 .1 => best = (v, content),
            Some(v) if content && v.1 == best.0 .1 && v.1 == agent_common::Action::Approve => {
                best = (v, content)
            }
            _ => {}
        }
    }
    Verdict {
        rule_id: best.0 .0,
        action: best.0 .1,
        by_content: best.1,
    }
}

/// What [`by_rules`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Verdict {
    rule_id: u32,
    action: agent_common::Action,
    /// The content's verdict decided: stricter than the path's and the file's, or an approval
    /// they ask alike.
    by_content: bool,
}

/// The opening event of a held operation, rebuilt from its pending entry and `/proc`. `None` when
/// the process is gone or the entry's operation is unknown.
fn recovered_event(op: &PendingOp) -> Option<KernelEvent> {
    let kind = match op.op.as_str() {
        "exec" => agent_common::Op::Exec,
        "connect" => agent_common::Op::Connect,
        "sendmsg" => agent_common::Op::Sendmsg,
        _ => return None,
    };
    let status = std::fs::read_to_string(format!("/proc/{}/status", op.tgid)).ok()?;
    let id_field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<u32>().ok())
    };
    let comm = std::fs::read_to_string(format!("/proc/{}/task/{}/comm", op.tgid, op.id.tid))
        .map(|c| c.trim_end().to_string())
        .unwrap_or_default();
    let path = (kind == agent_common::Op::Exec)
        .then(|| std::fs::read_link(format!("/proc/{}/exe", op.tgid)).ok())
        .flatten()
        .map(|p| p.to_string_lossy().into_owned());
    Some(KernelEvent {
        ts_ns: op.id.created_ns,
        op: kind,
        outcome: Outcome::Paused,
        rule_id: op.rule_id,
        workload: op.workload,
        pid: op.id.tid,
        tgid: op.tgid,
        ppid: id_field("PPid:").unwrap_or(0),
        uid: id_field("Uid:")?,
        gid: id_field("Gid:")?,
        cgroup_id: op.cgroup_id,
        comm,
        path,
        path_truncated: false,
        destination: op.destination,
        protocol: op.protocol,
        request: Some(op.id),
        target: op.target,
        reentered: false,
        before_exec: false,
        packet: false,
        file: None,
        interp: false,
        content: false,
        program: None,
        mapped: false,
        packet_socket: false,
        debugged: None,
        moved_to: None,
        syscall32: None,
        shared_with: None,
        received_family: None,
    })
}

/// How long an exec held for the agent to resolve (or hash) is left to the event's own path
/// before a tick takes it over as a held operation it has no event for.
const RESOLVING: Duration = Duration::from_secs(60);

fn held_for(id: RequestId) -> f64 {
    crate::kernel::monotonic_ns().saturating_sub(id.created_ns) as f64 / 1e9
}

fn outcome_label(d: &Decision) -> &'static str {
    match d {
        Decision::Allow => "allow",
        Decision::Deny => "deny",
        Decision::Grant { .. } => "grant",
    }
}

/// Name of a kernel counter slot.
pub fn counter_name(slot: u32) -> Option<&'static str> {
    const NAMES: &[(Counter, &str)] = &[
        (Counter::RingbufFull, "ringbuf_full"),
        (Counter::PendingFull, "pending_full"),
        (Counter::SignalFailed, "signal_failed"),
        (Counter::PathUnreadable, "path_unreadable"),
        (Counter::ScratchMissing, "scratch_missing"),
        (Counter::TargetMismatch, "target_mismatch"),
        (Counter::HeartbeatMissing, "heartbeat_missing"),
        (Counter::HeartbeatStale, "heartbeat_stale"),
        (Counter::Unpausable, "unpausable"),
        (Counter::Paused, "paused"),
        (Counter::Denied, "denied"),
        (Counter::Audited, "audited"),
        (Counter::Granted, "granted"),
        (Counter::Repaused, "repaused"),
        (Counter::CancelledOnExit, "cancelled_on_exit"),
        (Counter::GrantExpired, "grant_expired"),
        (Counter::AddrUnreadable, "addr_unreadable"),
        (Counter::ConnUntracked, "conn_untracked"),
        (Counter::LsmProbeRan, "lsm_probe_ran"),
        (Counter::ExecRefused, "exec_refused"),
        (Counter::FieldUnreadable, "field_unreadable"),
        (Counter::ResumeKilled, "resume_killed"),
        (Counter::FileUnreadable, "file_unreadable"),
        (Counter::PacketDropped, "packet_dropped"),
        (Counter::BpfRefused, "bpf_refused"),
        (Counter::LeftWatched, "left_watched"),
        (Counter::LineageFull, "lineage_full"),
        (Counter::ExecSwapped, "exec_swapped"),
        (Counter::ContentHeld, "content_held"),
        (Counter::ArgsHeld, "args_held"),
        (Counter::ArgsLost, "args_lost"),
        (Counter::MapRefused, "map_refused"),
        (Counter::PacketSocketRefused, "packet_socket_refused"),
        (Counter::DebugRefused, "debug_refused"),
        (Counter::CompatKilled, "compat_killed"),
        (Counter::SockLineageFull, "sock_lineage_full"),
        (Counter::ShareKilled, "share_killed"),
        (Counter::DoomedFull, "doomed_full"),
        (Counter::DnsRedirected, "dns_redirected"),
        (Counter::DnsUnrecorded, "dns_unrecorded"),
        (Counter::ReceiveRefused, "receive_refused"),
    ];
    NAMES
        .iter()
        .find(|(c, _)| *c as u32 == slot)
        .map(|(_, n)| *n)
}
