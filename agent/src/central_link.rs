//! The agent's link to `latch-central`.
//!
//! It registers the host, keeps one subscription open (rule sets, decisions and revocations
//! arrive on it as they are made), submits every held operation with its context, and reports
//! cancellations. It reconnects with exponential backoff and jitter; on every (re)connection it
//! tells central what it still holds, so nothing decided while it was away is lost, and it
//! submits its held operations again (central deduplicates them). Rule sets are cached on disk
//! so a host enforces the last rules it had at boot, before central answers.
//!
//! It never touches the kernel: decisions go to the engine task through its handle.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use agent_common::{GrantKey, Op, Outcome};
use latch_proto::v1::{
    agent_message::Body, agent_service_client::AgentServiceClient, AgentAuditRecord,
    ApprovalRequest, AuditBatch, CancelApprovalRequest, Capabilities, Destination, RegisterRequest,
    RuleEnforcement, RuleStatus, RulesAck, SubscribeRequest,
};
use tokio::sync::{mpsc, watch};
use tonic::{
    metadata::MetadataValue,
    service::interceptor::InterceptedService,
    transport::{Channel, Endpoint},
    Request, Status,
};

use crate::{
    context::{self, Masker},
    engine_task::{EngineHandle, NameGrant, Policy},
    events::KernelEvent,
    kernel::{Backend, Decision, EngineError, RequestId, Scope},
};

/// Everything the link needs to know.
#[derive(Clone)]
pub struct LinkSettings {
    /// Central's gRPC address (`http://host:port` or `https://host:port`).
    pub address: String,
    /// This host's bearer token (none when it authenticates with a client certificate).
    pub token: Option<String>,
    /// TLS files for an `https://` address, re-read when they change.
    pub tls: Option<crate::tls::ReloadingTls>,
    /// This host's id.
    pub host_id: String,
    /// Labels central selects rule sets by.
    pub labels: BTreeMap<String, String>,
    /// Where the last rule set is cached.
    pub rules_cache: PathBuf,
    /// Exec backend, for rule status reports.
    pub backend: Backend,
    /// Whether BPF LSM is available, for capability reports.
    pub lsm_available: bool,
    /// `latch-agent doctor`'s one-line verdict for this host (what is enforced, what is not).
    pub enforcement: String,
    /// Metrics (the link's state).
    pub metrics: crate::metrics::Metrics,
    /// The journal to ship.
    pub recorder: crate::recorder::Recorder,
    /// Where the workloads read central's id of their requests.
    pub board: crate::workload::Board,
}

/// Link failures (each ends one session; the link reconnects).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Central cannot be reached.
    #[error("cannot reach central at {address}: {reason}")]
    Connect {
        /// Address.
        address: String,
        /// Why.
        reason: String,
    },
    /// Central answered with an error.
    #[error("central refused {call}: {status}")]
    Call {
        /// Which call.
        call: &'static str,
        /// The status (code and message).
        status: Status,
    },
    /// The subscription ended.
    #[error("central closed the subscription")]
    Closed,
    /// The engine task is gone.
    #[error("the kernel engine task has stopped")]
    EngineGone,
    /// The TLS files changed: reconnect to present the new ones.
    #[error("the TLS files changed")]
    TlsFilesChanged,
}

type Client = AgentServiceClient<InterceptedService<Channel, Auth>>;

#[derive(Clone)]
struct Auth(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            req.metadata_mut().insert("authorization", token.clone());
        }
        Ok(req)
    }
}

/// Reads the cached rule set, if any and valid.
pub fn cached_policy(path: &std::path::Path) -> Option<Policy> {
    let text = std::fs::read_to_string(path).ok()?;
    match Policy::from_text(&format!("{} (cached)", path.display()), &text) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::error!("ignoring the cached rules: {e}");
            None
        }
    }
}

/// Where the grants central made are remembered (by id, with their kernel keys), next to the
/// rules cache: a restarted agent must still find a grant's kernel entry when it is revoked.
fn grants_file(rules_cache: &std::path::Path) -> PathBuf {
    rules_cache.with_file_name("grants.json")
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredGrant {
    scope: u8,
    rule_id: u32,
    subject: u64,
    target: u64,
    expires_at_unix_ms: i64,
    /// The host name it covers (absent in files written before grants could).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<NameGrant>,
}

/// A grant central made, as this agent keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Kept {
    key: GrantKey,
    expires_at_unix_ms: i64,
    name: Option<NameGrant>,
}

fn load_grants(path: &std::path::Path) -> HashMap<String, Kept> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return HashMap::new();
    };
    match serde_json::from_str::<HashMap<String, StoredGrant>>(&text) {
        Ok(stored) => stored
            .into_iter()
            .map(|(id, g)| {
                let key = GrantKey {
                    scope: g.scope,
                    _pad: [0; 3],
                    rule_id: g.rule_id,
                    subject: g.subject,
                    target: g.target,
                };
                let kept = Kept {
                    key,
                    expires_at_unix_ms: g.expires_at_unix_ms,
                    name: g.name,
                };
                (id, kept)
            })
            .collect(),
        Err(e) => {
            tracing::error!(file = %path.display(), "ignoring the recorded grants: {e}");
            HashMap::new()
        }
    }
}

/// Where the names central said each workload has reached are kept, next to the rules cache: a
/// restarted agent holds none of them as new while it has not reached central yet.
fn known_names_file(rules_cache: &std::path::Path) -> PathBuf {
    rules_cache.with_file_name("known-names.json")
}

/// The names known to each workload (by name), as last recorded beside `rules_cache`; none
/// when there is no record or it cannot be read (then they are held as new until central says
/// otherwise).
pub fn known_names(rules_cache: &std::path::Path) -> HashMap<String, BTreeSet<String>> {
    let path = known_names_file(rules_cache);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return HashMap::new();
    };
    serde_json::from_str(&text).unwrap_or_else(|e| {
        tracing::error!(file = %path.display(), "ignoring the recorded known names: {e}");
        HashMap::new()
    })
}

/// The grants on host names recorded beside `rules_cache` that are still in force, for the
/// engine task to go on extending from its start.
pub fn name_grants(rules_cache: &std::path::Path) -> Vec<(GrantKey, NameGrant)> {
    let now = crate::unix_ms();
    load_grants(&grants_file(rules_cache))
        .into_values()
        .filter(|g| g.expires_at_unix_ms > now)
        .filter_map(|g| Some((g.key, g.name?)))
        .collect()
}

/// Records the grants that have not expired yet (expired ones are gone from the kernel).
fn save_grants(path: &std::path::Path, grants: &HashMap<String, Kept>) -> std::io::Result<()> {
    let now = crate::unix_ms();
    let stored: HashMap<&String, StoredGrant> = grants
        .iter()
        .filter(|(_, g)| g.expires_at_unix_ms > now)
        .map(|(id, g)| {
            (
                id,
                StoredGrant {
                    scope: g.key.scope,
                    rule_id: g.key.rule_id,
                    subject: g.key.subject,
                    target: g.key.target,
                    expires_at_unix_ms: g.expires_at_unix_ms,
                    name: g.name.clone(),
                },
            )
        })
        .collect();
    let text = serde_json::to_string(&stored).map_err(std::io::Error::other)?;
    write_cache(path, &text)
}

fn write_cache(path: &std::path::Path, yaml: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, yaml)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}

struct Link {
    settings: LinkSettings,
    engine: EngineHandle,
    policy_tx: watch::Sender<Option<Arc<Policy>>>,
    masker: Arc<dyn Masker>,
    rules_version: u64,
    /// Grants central made for this host, by id.
    grants: HashMap<String, Kept>,
    /// Requests submitted to central and not yet decided by it or cancelled.
    submitted: HashSet<RequestId>,
    /// Names central says each workload (by name) has reached, as recorded on disk.
    known_names: HashMap<String, BTreeSet<String>>,
}

/// Runs the link until the engine task goes away.
pub async fn run(
    settings: LinkSettings,
    engine: EngineHandle,
    policy_tx: watch::Sender<Option<Arc<Policy>>>,
    mut events: mpsc::Receiver<KernelEvent>,
    masker: Arc<dyn Masker>,
) {
    let grants = load_grants(&grants_file(&settings.rules_cache));
    let known_names = known_names(&settings.rules_cache);
    let mut justified = settings.board.justifications();
    let mut link = Link {
        settings,
        engine,
        policy_tx,
        masker,
        rules_version: 0,
        known_names,
        grants,
        submitted: HashSet::new(),
    };
    let mut failures = 0u32;
    loop {
        let result = link.session(&mut events, &mut justified).await;
        link.settings.metrics.central_connected.set(0);
        if link.engine.central(false).await.is_err() {
            return;
        }
        match result {
            Err(LinkError::EngineGone) => return,
            Err(LinkError::TlsFilesChanged) => failures = 0,
            Err(e) => {
                failures = failures.saturating_add(1);
                let wait = backoff(failures);
                tracing::warn!(
                    "central link down ({e}); retrying in {:.1}s",
                    wait.as_secs_f64()
                );
                // Keep draining events meanwhile: held operations are resubmitted from the
                // engine's pending list on reconnection, so nothing is lost by dropping these.
                let sleep = tokio::time::sleep(wait);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        _ = &mut sleep => break,
                        ev = events.recv() => if ev.is_none() { return },
                        // Kept on the board, and sent with the request's next submission.
                        _ = justified.recv() => {}
                    }
                }
            }
            Ok(()) => failures = 0,
        }
    }
}

/// Exponential backoff from 200 ms to 30 s with ±50 % jitter, so a fleet does not reconnect in
/// lock step after a central restart.
pub fn backoff(failures: u32) -> Duration {
    let base = 200f64 * 2f64.powi(failures.min(8) as i32);
    let capped = base.min(30_000.0);
    let jitter = 0.5 + rand::random::<f64>();
    Duration::from_millis((capped * jitter) as u64)
}

impl Link {
    async fn connect(&mut self) -> Result<Client, LinkError> {
        let err = |reason: String| LinkError::Connect {
            address: self.settings.address.clone(),
            reason,
        };
        let mut endpoint = Endpoint::from_shared(self.settings.address.clone())
            .map_err(|e| err(e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        if let Some(tls) = self.settings.tls.as_mut() {
            let loaded = tls.current().map_err(|e| err(e.to_string()))?;
            endpoint = endpoint
                .tls_config(loaded.config)
                .map_err(|e| err(crate::kernel::error_chain(&e)))?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| err(crate::kernel::error_chain(&e)))?;
        let token = match &self.settings.token {
            Some(t) => Some(MetadataValue::try_from(format!("Bearer {t}")).map_err(|_| {
                err("the host token contains characters not allowed in a header".into())
            })?),
            None => None,
        };
        Ok(AgentServiceClient::with_interceptor(channel, Auth(token)))
    }

    async fn session(
        &mut self,
        events: &mut mpsc::Receiver<KernelEvent>,
        justified: &mut mpsc::UnboundedReceiver<RequestId>,
    ) -> Result<(), LinkError> {
        let mut client = self.connect().await?;
        let hostname = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut features = HashMap::new();
        features.insert(
            "bpf_lsm".to_string(),
            if self.settings.lsm_available {
                "yes"
            } else {
                "no"
            }
            .to_string(),
        );
        // Central caps feature values at 256 characters.
        let enforcement: String = self.settings.enforcement.chars().take(256).collect();
        features.insert("enforcement".to_string(), enforcement);
        let exec_backend = match self.settings.backend {
            Backend::Lsm => "lsm-exec",
            Backend::Tracepoint => "tracepoint-exec",
        };
        client
            .register(RegisterRequest {
                host_id: self.settings.host_id.clone(),
                hostname,
                labels: self.settings.labels.clone().into_iter().collect(),
                agent_version: env!("CARGO_PKG_VERSION").to_string(),
                capabilities: Some(Capabilities {
                    kernel: kernel.trim().to_string(),
                    backends: vec!["cgroup-sock-addr".into(), exec_backend.into()],
                    features,
                }),
            })
            .await
            .map_err(|status| LinkError::Call {
                call: "Register",
                status,
            })?;

        let pending = self
            .engine
            .pending()
            .await
            .map_err(|_| LinkError::EngineGone)?
            .unwrap_or_default();
        let mut stream = client
            .subscribe(SubscribeRequest {
                host_id: self.settings.host_id.clone(),
                pending_request_ids: pending.iter().map(|p| p.pending.id.to_string()).collect(),
                grant_ids: self.grants.keys().cloned().collect(),
                rules_version: self.rules_version,
            })
            .await
            .map_err(|status| LinkError::Call {
                call: "Subscribe",
                status,
            })?
            .into_inner();
        tracing::info!(address = %self.settings.address, host = %self.settings.host_id, "connected to central");
        self.settings.metrics.central_connected.set(1);
        self.engine
            .central(true)
            .await
            .map_err(|_| LinkError::EngineGone)?;
        self.cancel_resolved_meanwhile(&mut client, &pending)
            .await?;
        for view in pending {
            if let Some(ev) = view.event {
                self.submit(&mut client, &ev).await?;
            }
        }
        let mut ship = tokio::time::interval(Duration::from_secs(1));
        ship.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ship.tick() => {
                    if self.settings.tls.as_mut().is_some_and(|t| t.changed()) {
                        return Err(LinkError::TlsFilesChanged);
                    }
                    self.ship(&mut client).await?
                }
                msg = stream.message() => match msg {
                    Ok(Some(m)) => self.handle(&mut client, m.body).await?,
                    Ok(None) => return Err(LinkError::Closed),
                    Err(status) => return Err(LinkError::Call { call: "Subscribe", status }),
                },
                ev = events.recv() => match ev {
                    Some(ev) => self.on_event(&mut client, &ev).await?,
                    None => return Err(LinkError::EngineGone),
                },
                Some(id) = justified.recv() => self.justify(&mut client, id).await?,
            }
        }
    }

    /// Requests central still waits on that the host resolved while the link was down (by the
    /// fail mode or the local timeout) are cancelled there, so no reviewer decides a request
    /// that no longer waits.
    async fn cancel_resolved_meanwhile(
        &mut self,
        client: &mut Client,
        pending: &[crate::engine_task::RequestView],
    ) -> Result<(), LinkError> {
        let still: HashSet<RequestId> = pending.iter().map(|v| v.pending.id).collect();
        let gone: Vec<RequestId> = self.submitted.difference(&still).copied().collect();
        for id in gone {
            let r = client
                .cancel_approval(CancelApprovalRequest {
                    host_id: self.settings.host_id.clone(),
                    request_id: id.to_string(),
                    reason: "resolved on the host while central was unreachable".into(),
                })
                .await;
            match r {
                Ok(_) => {
                    tracing::info!(request = %id, "cancelled at central: resolved on the host meanwhile")
                }
                // Decided or expired at central already.
                Err(s)
                    if matches!(
                        s.code(),
                        tonic::Code::NotFound | tonic::Code::FailedPrecondition
                    ) => {}
                Err(status) => {
                    return Err(LinkError::Call {
                        call: "CancelApproval",
                        status,
                    })
                }
            }
            self.submitted.remove(&id);
        }
        Ok(())
    }

    /// Uploads what central has not acknowledged, oldest first, and acknowledges it locally
    /// once central has stored it (at least once: central deduplicates by record id).
    async fn ship(&mut self, client: &mut Client) -> Result<(), LinkError> {
        loop {
            let records = self.settings.recorder.unacked(500).await;
            let Some(last) = records.last().map(|r| r.seq) else {
                return Ok(());
            };
            let n = records.len();
            let batch = AuditBatch {
                host_id: self.settings.host_id.clone(),
                records: records.into_iter().map(audit_record).collect(),
            };
            client
                .upload_audit(batch)
                .await
                .map_err(|status| LinkError::Call {
                    call: "UploadAudit",
                    status,
                })?;
            self.settings.recorder.ack(last);
            self.settings.metrics.journal_shipped.inc_by(n as u64);
            if n < 500 {
                return Ok(());
            }
        }
    }

    async fn on_event(&mut self, client: &mut Client, ev: &KernelEvent) -> Result<(), LinkError> {
        match (ev.outcome, ev.request) {
            (Outcome::Paused, Some(_)) => self.submit(client, ev).await,
            (Outcome::Cancelled, Some(id)) => {
                self.submitted.remove(&id);
                let r = client
                    .cancel_approval(CancelApprovalRequest {
                        host_id: self.settings.host_id.clone(),
                        request_id: id.to_string(),
                        reason: "the process exited while its operation was held".into(),
                    })
                    .await;
                match r {
                    Ok(_) => Ok(()),
                    // Already decided or unknown: nothing left to cancel.
                    Err(s)
                        if matches!(
                            s.code(),
                            tonic::Code::NotFound | tonic::Code::FailedPrecondition
                        ) =>
                    {
                        Ok(())
                    }
                    Err(status) => Err(LinkError::Call {
                        call: "CancelApproval",
                        status,
                    }),
                }
            }
            _ => Ok(()),
        }
    }

    async fn submit(&mut self, client: &mut Client, ev: &KernelEvent) -> Result<(), LinkError> {
        let Some(id) = ev.request else { return Ok(()) };
        let op = match ev.op {
            Op::Exec => latch_proto::v1::Op::Exec,
            Op::Connect => latch_proto::v1::Op::Connect,
            Op::Sendmsg => latch_proto::v1::Op::Sendmsg,
            // Refused in the kernel, never held: nothing to ask.
            Op::Debug | Op::Move | Op::Syscall32 | Op::Shared | Op::Received => return Ok(()),
        };
        let policy = self.policy_tx.borrow().clone();
        let rule = policy
            .as_ref()
            .and_then(|p| p.rules.rule(ev.rule_id).cloned());
        let (workload, env_names) = policy
            .as_ref()
            .and_then(|p| p.rules.workloads.iter().find(|w| w.id == ev.workload))
            .map(|w| (w.name.clone(), w.context_env.clone()))
            .unwrap_or_default();
        let masker = self.masker.clone();
        let (tgid, uid, gid) = (ev.tgid, ev.uid, ev.gid);
        let ctx = tokio::task::spawn_blocking(move || {
            context::gather(tgid, uid, gid, &env_names, masker.as_ref())
        })
        .await
        .unwrap_or_default();
        let host_name = match (ev.op, ev.destination) {
            (Op::Exec, _) | (_, None) => None,
            (_, Some(d)) => self
                .engine
                .host_name(ev.workload, d.ip())
                .await
                .map_err(|_| LinkError::EngineGone)?,
        };
        let (destination, exec_path) = match (ev.op, ev.destination) {
            (Op::Exec, _) => (None, ev.path.clone().unwrap_or_default()),
            (_, Some(d)) => (
                Some(Destination {
                    family: if d.is_ipv4() { "inet" } else { "inet6" }.into(),
                    address: d.ip().to_string(),
                    port: d.port() as u32,
                    protocol: match ev.protocol {
                        agent_common::proto::TCP => "tcp",
                        agent_common::proto::UDP => "udp",
                        _ => "other",
                    }
                    .into(),
                    by_name: host_name
                        .as_deref()
                        .is_some_and(|n| rule.as_ref().is_some_and(|r| r.names_host(n))),
                    new_name: host_name.is_some()
                        && policy
                            .as_ref()
                            .is_some_and(|p| p.rules.is_new_names(ev.rule_id)),
                    host_name: host_name.unwrap_or_default(),
                }),
                String::new(),
            ),
            (_, None) => (None, String::new()),
        };
        let req = ApprovalRequest {
            request_id: id.to_string(),
            host_id: self.settings.host_id.clone(),
            op: op as i32,
            pid: ev.pid,
            tgid: ev.tgid,
            ppid: ctx.ppid,
            uid: ev.uid,
            gid: ev.gid,
            user: ctx.user,
            group: ctx.group,
            cgroup_id: ev.cgroup_id,
            cgroup_path: ctx.cgroup_path,
            unit: ctx.unit,
            comm: ev.comm.clone(),
            exe: ctx.exe,
            argv: ctx.argv,
            ancestors: ctx
                .ancestors
                .into_iter()
                .map(|a| latch_proto::v1::Ancestor {
                    pid: a.pid,
                    exe: a.exe,
                    argv: a.argv,
                })
                .collect(),
            destination,
            exec_path,
            rule_id: ev.rule_id,
            rule_name: match (rule, &ev.program) {
                (Some(r), _) => r.name,
                // Held by the workload's `unknown_programs`: say so, with what the file is.
                (None, Some(p)) if !p.known => format!("unknown program (sha256 {})", p.sha256),
                (None, _) => String::new(),
            },
            workload,
            requester: ctx.requester,
            created_at_unix_ms: crate::unix_ms(),
            rules_version: self.rules_version,
            // Sent on its own once central has the request (`justify`).
            justification: String::new(),
            env: ctx
                .env
                .into_iter()
                .map(|(name, value)| latch_proto::v1::EnvVar { name, value })
                .collect(),
            trace: ctx.trace.map(|t| latch_proto::v1::TraceContext {
                trace_id: t.trace_id,
                parent_id: t.parent_id,
                sampled: t.sampled,
            }),
        };
        let accepted = client
            .request_approval(req)
            .await
            .map_err(|status| LinkError::Call {
                call: "RequestApproval",
                status,
            })?
            .into_inner();
        tracing::info!(request = %id, approval = %accepted.approval_id, "submitted for approval");
        self.settings
            .board
            .submitted(id, &accepted.approval_id, accepted.expires_at_unix_ms);
        self.submitted.insert(id);
        if let Some(d) = accepted.decision {
            self.apply_decision(d).await?;
        }
        // Given before (or while) it was submitted, or while central was out of reach.
        self.justify(client, id).await
    }

    /// Sends the workload's justification of a submitted request, masked like its arguments.
    async fn justify(&mut self, client: &mut Client, id: RequestId) -> Result<(), LinkError> {
        if !self.submitted.contains(&id) {
            // Sent once the request is: central takes it only for a request it has.
            return Ok(());
        }
        let Some(text) = self.settings.board.unsent_justification(id) else {
            return Ok(());
        };
        let mut text = self.masker.mask_text(&text);
        // A mask's marker can be longer than what it hides.
        if text.len() > crate::workload::MAX_JUSTIFICATION {
            let mut cut = crate::workload::MAX_JUSTIFICATION;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        let req = latch_proto::v1::JustifyRequest {
            host_id: self.settings.host_id.clone(),
            request_id: id.to_string(),
            text,
        };
        match client.justify(req).await {
            Ok(_) => {
                tracing::info!(request = %id, "the workload's justification sent");
                self.settings.board.justification_sent(id);
            }
            // Decided meanwhile, or refused as it is: sending it again changes nothing.
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::FailedPrecondition
                        | tonic::Code::NotFound
                        | tonic::Code::InvalidArgument
                ) =>
            {
                tracing::warn!(request = %id, "central did not take the workload's justification: {}", status.message());
                self.settings.board.justification_sent(id);
            }
            Err(status) => {
                return Err(LinkError::Call {
                    call: "Justify",
                    status,
                })
            }
        }
        Ok(())
    }

    async fn handle(&mut self, client: &mut Client, body: Option<Body>) -> Result<(), LinkError> {
        match body {
            Some(Body::Rules(push)) => {
                let source = if push.source_name.is_empty() {
                    format!("central v{}", push.version)
                } else {
                    format!("{} (central v{})", push.source_name, push.version)
                };
                let ack = match Policy::from_text(&source, &push.yaml) {
                    Ok(p) => {
                        if let Err(e) = write_cache(&self.settings.rules_cache, &push.yaml) {
                            tracing::error!(cache = %self.settings.rules_cache.display(), "cannot cache the rules: {e}");
                        }
                        let statuses = self.rule_statuses(&p);
                        let _ = self.policy_tx.send(Some(Arc::new(p)));
                        self.rules_version = push.version;
                        RulesAck {
                            host_id: self.settings.host_id.clone(),
                            version: push.version,
                            rules: statuses,
                            error: String::new(),
                        }
                    }
                    Err(e) => {
                        tracing::error!("rules from central refused, the ones in force stay: {e}");
                        RulesAck {
                            host_id: self.settings.host_id.clone(),
                            version: push.version,
                            rules: Vec::new(),
                            error: e.to_string(),
                        }
                    }
                };
                client
                    .ack_rules(ack)
                    .await
                    .map_err(|status| LinkError::Call {
                        call: "AckRules",
                        status,
                    })?;
                Ok(())
            }
            Some(Body::Decision(d)) => self.apply_decision(d).await,
            Some(Body::Revocation(r)) => self.revoke(r).await,
            Some(Body::KnownNames(k)) => self.know_names(k).await,
            None => Ok(()),
        }
    }

    /// Central says names are known to a workload: the engine task stops holding them as new,
    /// and the record on disk keeps them for the next start.
    async fn know_names(&mut self, k: latch_proto::v1::KnownNames) -> Result<(), LinkError> {
        tracing::info!(workload = %k.workload, names = k.names.len(), "names known to the workload");
        let set = self.known_names.entry(k.workload.clone()).or_default();
        let before = set.len();
        set.extend(k.names.iter().cloned());
        if set.len() != before {
            let path = known_names_file(&self.settings.rules_cache);
            let written = serde_json::to_string(&self.known_names)
                .map_err(std::io::Error::other)
                .and_then(|text| write_cache(&path, &text));
            if let Err(e) = written {
                tracing::error!(file = %path.display(), "cannot record the known names (a restarted agent holds them as new until it reaches central): {e}");
            }
        }
        self.engine
            .know_names(k.workload, k.names)
            .await
            .map_err(|_| LinkError::EngineGone)
    }

    fn save_grants(&self) {
        let path = grants_file(&self.settings.rules_cache);
        if let Err(e) = save_grants(&path, &self.grants) {
            tracing::error!(file = %path.display(), "cannot record the grants in force (a revocation after a restart would not find them): {e}");
        }
    }

    /// Removes a revoked grant from the kernel at once and, when the revocation asks for it,
    /// closes the connections the grant let through.
    async fn revoke(&mut self, r: latch_proto::v1::Revocation) -> Result<(), LinkError> {
        let Some(key) = self.grants.get(&r.grant_id).map(|k| k.key) else {
            return Ok(());
        };
        let revoked = match self
            .engine
            .revoke(key, r.close_connections)
            .await
            .map_err(|_| LinkError::EngineGone)?
        {
            Ok(v) => v,
            Err(e) => {
                // Kept on record: central replays the revocation when the agent reconnects.
                tracing::error!(grant = %r.grant_id, "cannot revoke: {e}");
                return Ok(());
            }
        };
        // Forgotten only once the kernel no longer holds it: an agent that died in between
        // still lists the grant to central, which sends the revocation again.
        self.grants.remove(&r.grant_id);
        self.save_grants();
        tracing::info!(
            grant = %r.grant_id,
            by = %r.revoked_by,
            in_kernel = revoked.removed,
            closing_connections = revoked.closing,
            "grant revoked"
        );
        Ok(())
    }

    fn rule_statuses(&self, p: &Policy) -> Vec<RuleStatus> {
        p.rules
            .rules
            .iter()
            .map(|r| {
                let refuses = r.action == policy::Action::Deny || r.action == policy::Action::Approve;
                let (enforcement, message) = match (&r.matcher, self.settings.backend) {
                    // The arguments exist only after the exec, on every backend.
                    (policy::Matcher::Exec { args: Some(_), .. }, _) if refuses => (
                        RuleEnforcement::Enforced,
                        "decided on its arguments once the new image is in place: a refused invocation is killed (SIGKILL) before its first instruction".to_string(),
                    ),
                    (policy::Matcher::Exec { .. }, Backend::Tracepoint) if r.action == policy::Action::Deny || r.action == policy::Action::Approve => (
                        RuleEnforcement::Degraded,
                        "no BPF LSM: a refused program is killed (SIGKILL) before its first instruction instead of execve failing with EPERM".to_string(),
                    ),
                    _ => (RuleEnforcement::Enforced, String::new()),
                };
                RuleStatus { rule_id: r.id, rule_name: r.name.clone(), enforcement: enforcement as i32, message }
            })
            .collect()
    }

    async fn apply_decision(&mut self, d: latch_proto::v1::Decision) -> Result<(), LinkError> {
        let id: RequestId = match d.request_id.parse() {
            Ok(id) => id,
            Err(e) => {
                tracing::error!("central sent a decision for an unknown id: {e}");
                return Ok(());
            }
        };
        let allow = d.outcome == latch_proto::v1::Outcome::Allow as i32;
        let decision = match (&d.grant, allow) {
            (_, false) => Decision::Deny,
            (Some(g), true) => {
                let ttl_ms = g.expires_at_unix_ms.saturating_sub(crate::unix_ms());
                if ttl_ms <= 0 {
                    Decision::Allow
                } else {
                    Decision::Grant {
                        scope: match latch_proto::v1::GrantScope::try_from(g.scope) {
                            Ok(latch_proto::v1::GrantScope::Workload) => Scope::Workload,
                            Ok(latch_proto::v1::GrantScope::Host) => Scope::Host,
                            _ => Scope::Process,
                        },
                        ttl: Duration::from_millis(ttl_ms as u64),
                        uses: None,
                    }
                }
            }
            (None, true) => Decision::Allow,
        };
        let covers = d
            .grant
            .as_ref()
            .map(|g| g.host_name.clone())
            .filter(|n| !n.is_empty());
        // Recorded before it is written: an agent that dies right after writing it must still
        // find it when it is revoked, and go on extending a grant on a name.
        if let (Decision::Grant { scope, .. }, Some(g)) = (decision, &d.grant) {
            let planned = self
                .engine
                .plan_grant(id, scope, covers.clone())
                .await
                .map_err(|_| LinkError::EngineGone)?;
            if let Ok(granted) = planned {
                let kept = Kept {
                    key: granted.key,
                    expires_at_unix_ms: g.expires_at_unix_ms,
                    name: granted.name,
                };
                self.grants.insert(g.grant_id.clone(), kept);
                self.save_grants();
            }
        }
        match self
            .engine
            .decide_as(id, decision, &d.decided_by, &d.reason, covers)
            .await
            .map_err(|_| LinkError::EngineGone)?
        {
            Ok(granted) => {
                self.submitted.remove(&id);
                tracing::info!(request = %id, by = %d.decided_by, reason = %d.reason, ?decision, "decision applied");
                if let (Some(granted), Some(g)) = (granted, d.grant) {
                    let kept = Kept {
                        key: granted.key,
                        expires_at_unix_ms: g.expires_at_unix_ms,
                        name: granted.name,
                    };
                    // Recorded already unless the operation changed between the two asks.
                    if self.grants.get(&g.grant_id) != Some(&kept) {
                        self.grants.insert(g.grant_id, kept);
                        self.save_grants();
                    }
                }
            }
            // Decisions repeat across reconnections; the first one already applied.
            Err(EngineError::NotPending(_)) => {
                self.submitted.remove(&id);
            }
            Err(e) => tracing::error!(request = %id, "cannot apply the decision: {e}"),
        }
        Ok(())
    }
}

fn audit_record(r: journal::Record) -> AgentAuditRecord {
    let p = &r.payload;
    let text = |k: &str| p[k].as_str().unwrap_or_default().to_string();
    AgentAuditRecord {
        host_seq: r.seq,
        record_id: r.id,
        time_unix_ms: r.time_unix_ms as i64,
        kind: r.kind,
        rule_id: p["rule_id"].as_u64().unwrap_or(0) as u32,
        rule_name: text("rule_name"),
        workload: text("workload_name"),
        action: if p["action"].is_string() {
            text("action")
        } else {
            text("outcome")
        },
        details_json: p.to_string(),
    }
}

#[cfg(test)]
mod grant_book_tests {
    use super::*;

    #[test]
    fn grants_survive_a_restart_and_expired_ones_are_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = grants_file(&dir.path().join("rules.cache.yaml"));
        let key = |subject| GrantKey {
            scope: agent_common::scope::HOST,
            _pad: [0; 3],
            rule_id: 3,
            subject,
            target: 0xfeed,
        };
        let now = crate::unix_ms();
        let kept = |subject, expires_at_unix_ms, name: Option<NameGrant>| Kept {
            key: key(subject),
            expires_at_unix_ms,
            name,
        };
        let name = NameGrant {
            name: "api.example.com".into(),
            workload: 4,
            port: 443,
            proto: agent_common::proto::TCP,
        };
        let grants: HashMap<String, Kept> = [
            ("live".to_string(), kept(0, now + 60_000, None)),
            (
                "named".to_string(),
                kept(2, now + 60_000, Some(name.clone())),
            ),
            ("expired".to_string(), kept(1, now - 1, None)),
        ]
        .into_iter()
        .collect();
        save_grants(&path, &grants).expect("save");
        let loaded = load_grants(&path);
        assert_eq!(loaded.len(), 2);
        assert_eq!(loaded["live"], kept(0, now + 60_000, None));
        assert_eq!(loaded["named"], kept(2, now + 60_000, Some(name)));
    }

    #[test]
    fn a_file_from_before_names_loads_with_no_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("grants.json");
        let old = r#"{"g1":{"scope":2,"rule_id":3,"subject":5,"target":7,"expires_at_unix_ms":9}}"#;
        std::fs::write(&path, old).expect("write");
        let loaded = load_grants(&path);
        assert_eq!(loaded["g1"].name, None);
        assert_eq!(loaded["g1"].key.target, 7);
    }

    #[test]
    fn known_names_are_read_back_and_a_damaged_record_is_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = dir.path().join("rules.cache.yaml");
        assert!(known_names(&cache).is_empty(), "no record yet");
        let path = known_names_file(&cache);
        std::fs::write(&path, r#"{"ai":["a.test","b.test"]}"#).expect("write");
        let got = known_names(&cache);
        assert_eq!(
            got["ai"].iter().map(String::as_str).collect::<Vec<_>>(),
            ["a.test", "b.test"]
        );
        std::fs::write(&path, "{not json").expect("write");
        assert!(known_names(&cache).is_empty());
    }

    #[test]
    fn a_damaged_grants_file_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("grants.json");
        std::fs::write(&path, "{not json").expect("write");
        assert!(load_grants(&path).is_empty());
        assert!(load_grants(&dir.path().join("missing.json")).is_empty());
    }
}
