//! Announcing approval requests where reviewers already are: Slack ([`slack`]: an interactive
//! message whose buttons decide, once the clicker is mapped to a reviewer identity) and
//! Microsoft Teams ([`teams`]: a card that links to the request in the web console).
//!
//! Delivery never blocks the approval engine. [`Central::dispatch`] sends the request id into the
//! queue of [`Notifier::queue`] (a channel send), and a background task ([`deliver`]) renders the
//! request's current state and talks to the outside with retries and backoff. With several
//! replicas every replica hears every change, so the `notifications` table decides who acts: a
//! row per (surface, request) is claimed with `INSERT ... ON CONFLICT DO NOTHING` before the first
//! post, and a lease on that row serialises later updates, so each request gets one message and
//! its updates land in order. Whoever holds the lease renders the state as it is *then*, and
//! looks again after letting go, so a change that arrived meanwhile is never lost.
//!
//! This module decides nothing itself: button clicks go through [`Central::decide`] like every
//! other channel, with the same checks (roles, groups, N-of-M, no self-approval). It shows only
//! what reviewers may see (agents redact the context before it leaves the host) and escapes
//! everything the workload controls for the surface it lands on.

pub mod slack;
pub mod teams;

use std::{collections::HashMap, path::Path, sync::Arc, time::Duration};

use latch_proto::v1::{ApprovalRequest, Op};
use tokio::sync::{mpsc, Semaphore};

use crate::{
    approval::{RequestRow, State},
    clock::now_ms,
    config::Config,
    engine::Central,
    error::Result,
    store::{Delivered, Lease},
    text::term_safe,
};

/// How long a delivery may hold a request's row before another replica may take over (it
/// covers every retry of one delivery; a replica that dies mid-delivery delays that request's
/// message by this much).
const LEASE: Duration = Duration::from_secs(300);
/// How often unfinished deliveries are looked at again.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// Failed deliveries are retried by the sweep this many times, then left (and logged).
const MAX_SWEEP_ATTEMPTS: i64 = 10;
/// Deliveries running at once on one replica.
const CONCURRENT_DELIVERIES: usize = 8;

/// Why notifications could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// A secret file could not be read.
    #[error("{key} '{path}': {source}")]
    ReadSecret {
        /// Configuration key.
        key: &'static str,
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A secret file is empty.
    #[error("{key} '{path}' is empty")]
    EmptySecret {
        /// Configuration key.
        key: &'static str,
        /// File.
        path: String,
    },
    /// A setting is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(reqwest::Error),
}

/// Reads a secret from a file, trimmed. `key` names the setting in messages.
pub(crate) fn read_secret(key: &'static str, path: &Path) -> Result<String, NotifyError> {
    let text = std::fs::read_to_string(path).map_err(|source| NotifyError::ReadSecret {
        key,
        path: path.display().to_string(),
        source,
    })?;
    let text = text.trim().to_string();
    if text.is_empty() {
        return Err(NotifyError::EmptySecret {
            key,
            path: path.display().to_string(),
        });
    }
    Ok(text)
}

/// The HTTP client for outgoing notifications.
fn http_client() -> Result<reqwest::Client, NotifyError> {
    reqwest::Client::builder()
        .user_agent(concat!("latch-central/", env!("CARGO_PKG_VERSION")))
        .timeout(Duration::from_secs(15))
        .connect_timeout(Duration::from_secs(5))
        // Slack and Teams answer directly; a redirect would carry the bot token elsewhere.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(NotifyError::Client)
}

/// The configured surfaces, held by their delivery task and the Slack callback route.
#[derive(Default)]
pub struct Notifier {
    tx: Option<mpsc::UnboundedSender<String>>,
    slack: Option<Arc<slack::Slack>>,
    teams: Option<Arc<teams::Teams>>,
    /// Requests with a timer queued to look at them again (a reminder falling due): when, and
    /// the timer, which is stopped once the request needs none.
    waking: Arc<std::sync::Mutex<HashMap<String, Wake>>>,
}

/// A timer queued by [`Notifier::wake`].
struct Wake {
    at_ms: i64,
    /// Tells this timer from a later one for the same request.
    serial: u64,
    timer: tokio::task::AbortHandle,
}

/// Request ids waiting for delivery; consumed by [`deliver`].
pub struct Jobs(mpsc::UnboundedReceiver<String>);

impl Notifier {
    /// Sets up the surfaces `config` enables (reading their secret files). Returns the jobs
    /// queue for [`deliver`] when any is enabled.
    pub fn start(config: &Config) -> Result<(Notifier, Option<Jobs>), NotifyError> {
        let slack = match &config.slack {
            Some(c) => Some(Arc::new(slack::Slack::new(c, http_client()?)?)),
            None => None,
        };
        let teams = match &config.teams {
            Some(c) => {
                let public_url = config
                    .web
                    .as_ref()
                    .and_then(|w| w.public_url.as_deref())
                    .ok_or_else(|| {
                        NotifyError::Invalid(
                            "teams: web.public_url is required: cards link to the request in the console"
                                .into(),
                        )
                    })?;
                Some(Arc::new(teams::Teams::new(c, public_url, http_client()?)?))
            }
            None => None,
        };
        if slack.is_none() && teams.is_none() {
            return Ok((Notifier::default(), None));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        Ok((
            Notifier {
                tx: Some(tx),
                slack,
                teams,
                waking: Default::default(),
            },
            Some(Jobs(rx)),
        ))
    }

    /// Queues `approval_id` again at `at_ms` (one timer per request however often it is
    /// asked; a new time replaces the old), so that a message that must change with time alone
    /// does so then rather than at the next sweep. The timer holds no strong sender: it keeps
    /// nothing alive at shutdown.
    fn wake(&self, approval_id: &str, at_ms: i64) {
        static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let Some(tx) = self.tx.as_ref().map(|t| t.downgrade()) else {
            return;
        };
        let mut waking = self.waking.lock().unwrap_or_else(|e| e.into_inner());
        if waking.get(approval_id).is_some_and(|w| w.at_ms == at_ms) {
            return;
        }
        let serial = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = approval_id.to_string();
        let mine = self.waking.clone();
        let wait = Duration::from_millis(at_ms.saturating_sub(now_ms()).max(0) as u64);
        let timer = tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            {
                let mut waking = mine.lock().unwrap_or_else(|e| e.into_inner());
                if waking.get(&id).is_some_and(|w| w.serial == serial) {
                    waking.remove(&id);
                }
            }
            if let Some(tx) = tx.upgrade() {
                let _ = tx.send(id);
            }
        })
        .abort_handle();
        if let Some(old) = waking.insert(
            approval_id.to_string(),
            Wake {
                at_ms,
                serial,
                timer,
            },
        ) {
            old.timer.abort();
        }
    }

    /// Stops the timer of a request whose messages need no change with time any more (it was
    /// decided, or waits with another).
    fn unwake(&self, approval_id: &str) {
        let gone = self
            .waking
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(approval_id);
        if let Some(w) = gone {
            w.timer.abort();
        }
    }

    /// How many timers are queued.
    #[cfg(test)]
    fn timers(&self) -> usize {
        self.waking.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Where the engine queues the ids of requests that changed (accepted, voted on, resolved)
    /// for delivery; none when no surface is configured. Sending never blocks.
    pub fn queue(&self) -> Option<mpsc::UnboundedSender<String>> {
        self.tx.clone()
    }

    /// The Slack surface, when configured.
    pub fn slack(&self) -> Option<&Arc<slack::Slack>> {
        self.slack.as_ref()
    }
}

/// The central web server's routes for callbacks from chat surfaces (`POST /slack/actions`).
pub fn routes(central: Arc<Central>, notifier: &Notifier) -> axum::Router {
    axum::Router::new()
        .route("/slack/actions", axum::routing::post(slack::actions))
        .with_state(slack::Callbacks {
            central,
            slack: notifier.slack.clone(),
        })
}

/// Delivers queued changes until the queue closes; also sweeps unfinished deliveries (a
/// replica that died holding a lease, a surface that was down) every 30 seconds.
pub async fn deliver(central: Arc<Central>, notifier: Arc<Notifier>, jobs: Jobs) {
    let Jobs(mut rx) = jobs;
    let permits = Arc::new(Semaphore::new(CONCURRENT_DELIVERIES));
    // Deliveries end with this task (at shutdown) rather than outliving the database pool.
    let mut running = tokio::task::JoinSet::new();
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let ids: Vec<String> = tokio::select! {
            id = rx.recv() => match id {
                Some(id) => vec![id],
                None => return,
            },
            _ = sweep.tick() => match sweep_due(&central, &notifier).await {
                Ok(ids) => ids,
                Err(e) => {
                    tracing::warn!(error = %e, "finding unfinished notifications failed");
                    Vec::new()
                }
            },
        };
        while running.try_join_next().is_some() {}
        for id in ids {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let c = central.clone();
            let n = notifier.clone();
            running.spawn(async move {
                sync_all(&c, &n, &id).await;
                drop(permit);
            });
        }
    }
}

/// Whether a delivery brought the message up to date (for the deliveries metric): neither the
/// surface nor central failed it.
fn delivered(r: &Result<Next>) -> bool {
    matches!(r, Ok(Next::At(_) | Next::Nothing))
}

/// Brings every configured surface's message for one request up to date.
async fn sync_all(central: &Central, notifier: &Notifier, approval_id: &str) {
    if let Some(s) = &notifier.slack {
        let r = sync(central, approval_id, s.as_ref()).await;
        central.metrics.delivered("slack", delivered(&r));
        match r {
            Ok(Next::At(at)) => notifier.wake(approval_id, at),
            Ok(Next::Nothing) => notifier.unwake(approval_id),
            Ok(Next::Failed) => {}
            Err(e) => {
                tracing::warn!(approval_id, surface = "slack", error = %e, "notification failed")
            }
        }
    }
    if let Some(t) = &notifier.teams {
        let r = sync(central, approval_id, t.as_ref()).await;
        central.metrics.delivered("teams", delivered(&r));
        if let Err(e) = r {
            tracing::warn!(approval_id, surface = "teams", error = %e, "notification failed");
        }
    }
}

/// Requests whose delivery is unfinished and not being worked on; also forgets old Slack
/// callback signatures.
async fn sweep_due(central: &Central, notifier: &Notifier) -> Result<Vec<String>> {
    let now = now_ms();
    if let Some(s) = &notifier.slack {
        slack::forget_old_callbacks(central, s.replay_window()).await?;
    }
    Ok(central
        .store
        .unfinished_notifications(now, MAX_SWEEP_ATTEMPTS, 500)
        .await?)
}

/// A request as a notification shows it.
pub(crate) struct View {
    /// The stored request.
    pub row: RequestRow,
    /// The context the agent sent (already redacted by the agent).
    pub req: ApprovalRequest,
    /// Approvals counted so far.
    pub approvals: u32,
    /// Identical requests waiting with it (resolved with it, once resolved).
    pub merged: u32,
}

/// Longest value shown for one fact; the console shows everything.
const MAX_FACT: usize = 300;
/// Longest command line shown.
const MAX_ARGV: usize = 1500;

/// `s` made harmless for a terminal-like display (control and bidirectional characters as
/// visible escapes) and cut to `max` characters.
pub(crate) fn shown(s: &str, max: usize) -> String {
    let s = term_safe(s);
    if s.chars().count() <= max {
        return s;
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn argv_line(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if a.is_empty() || a.contains(char::is_whitespace) {
                format!("{a:?}")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl View {
    /// The request as it is now; `None` when it does not exist.
    pub async fn load(central: &Central, approval_id: &str) -> Result<Option<View>> {
        let Some(row) = central.request_row(approval_id).await? else {
            return Ok(None);
        };
        let req = row.request()?;
        let approvals = central.approvals_so_far(approval_id).await?;
        let merged = central.merged_count(&row).await?;
        Ok(Some(View {
            row,
            req,
            approvals,
            merged,
        }))
    }

    /// What the message shows, as a string that changes whenever the message must.
    pub fn revision(&self) -> String {
        match self.row.state {
            // The workload's justification and the automatic reviewer's recommendation, once
            // given, are part of what the message shows.
            State::Pending => format!(
                "pending:{}:{}{}{}",
                self.approvals,
                self.merged,
                if self.req.justification.is_empty() {
                    ""
                } else {
                    ":justified"
                },
                if self.row.recommendation.is_empty() {
                    ""
                } else {
                    ":reviewed"
                }
            ),
            s => s.as_str().to_string(),
        }
    }

    /// Whether the request is resolved (nothing will change any more).
    pub fn is_final(&self) -> bool {
        self.row.state != State::Pending
    }

    /// Connect, send or exec.
    pub fn op(&self) -> Op {
        Op::try_from(self.req.op).unwrap_or(Op::Unspecified)
    }

    /// One line saying what is held, with workload-controlled parts made visible-safe.
    pub fn headline(&self) -> String {
        let what = match self.op() {
            Op::Exec => format!("run {}", shown(&self.req.exec_path, 120)),
            Op::Connect | Op::Sendmsg => match &self.req.destination {
                Some(d) => format!("connect to {}", shown(&port_words(d), 120)),
                None => "connect".into(),
            },
            Op::Unspecified => "an operation".into(),
        };
        format!(
            "Approval needed: {} on {}",
            what,
            shown(&self.row.host_id, 60)
        )
    }

    /// Label and value of each fact, values made visible-safe and cut.
    pub fn facts(&self) -> Vec<(&'static str, String)> {
        let r = &self.req;
        let mut out = vec![
            ("Requester", shown(&self.row.requester, MAX_FACT)),
            ("Host", shown(&self.row.host_id, MAX_FACT)),
            ("Workload", shown(&self.row.workload, MAX_FACT)),
            (
                "Unit / cgroup",
                shown(
                    &format!(
                        "{} {}",
                        if r.unit.is_empty() { "-" } else { &r.unit },
                        r.cgroup_path
                    ),
                    MAX_FACT,
                ),
            ),
        ];
        match (self.op(), &r.destination) {
            (Op::Exec, _) => out.push(("Program", shown(&r.exec_path, MAX_FACT))),
            (_, Some(d)) => {
                out.push((
                    "Destination",
                    shown(&format!("{} ({})", port_words(d), d.protocol), MAX_FACT),
                ));
                if let Some(c) = crate::grants::covers_text(d) {
                    out.push(("An approval for a period covers", shown(&c, MAX_FACT)));
                }
                if let Some(n) = crate::known_names::new_name_text(d) {
                    out.push(("New name", shown(&n, MAX_FACT)));
                }
            }
            _ => {}
        }
        out.push(("Rule", shown(&self.row.rule_name, MAX_FACT)));
        out.push(("Deadline", self.deadline()));
        if self.merged > 0 {
            out.push((
                "Identical requests",
                crate::merge::count_line(self.merged, !self.is_final()),
            ));
        }
        let mut approvers = format!("{} of {} so far", self.approvals, self.row.approvers_needed);
        if !self.row.approver_groups.is_empty() {
            approvers.push_str(&format!(
                "; groups: {}",
                shown(&self.row.approver_groups.join(", "), MAX_FACT)
            ));
        }
        out.push(("Approvals", approvers));
        if !r.env.is_empty() || r.trace.is_some() {
            let mut session: Vec<String> = r
                .env
                .iter()
                .map(|v| format!("{}={}", v.name, v.value))
                .collect();
            if let Some(t) = &r.trace {
                session.push(format!("trace {} (span {})", t.trace_id, t.parent_id));
            }
            out.push((
                "Session (set by the workload, unverified)",
                shown(&session.join(", "), MAX_FACT),
            ));
        }
        if !r.justification.is_empty() {
            // The workload's own words: shown as what it claims, never as a finding.
            out.push((
                "Workload says (unverified)",
                shown(&r.justification, MAX_FACT),
            ));
        }
        if let Some(said) = self.recommendation() {
            out.push(("Automatic reviewer", shown(&said, MAX_FACT)));
        }
        out
    }

    /// When the request expires and what happens then.
    pub fn deadline(&self) -> String {
        format!(
            "{} (then {})",
            crate::clock::rfc3339(self.row.expires_at_ms),
            self.row.on_timeout
        )
    }

    /// The automatic reviewer's answer in one line, once it answered.
    pub fn recommendation(&self) -> Option<String> {
        serde_json::from_str::<crate::auto_protocol::Recommendation>(&self.row.recommendation)
            .ok()
            .map(|a| crate::auto_protocol::summary(&a.to_proto()))
    }

    /// The held process and its command line.
    pub fn process(&self) -> String {
        let r = &self.req;
        format!(
            "pid {} ({}), uid {} ({}), {}\n{}",
            r.pid,
            shown(&r.comm, 40),
            r.uid,
            shown(&r.user, 60),
            shown(&r.exe, MAX_FACT),
            shown(&argv_line(&r.argv), MAX_ARGV)
        )
    }

    /// The process tree, nearest ancestor first, one line each.
    pub fn tree(&self) -> String {
        if self.req.ancestors.is_empty() {
            return "-".into();
        }
        self.req
            .ancestors
            .iter()
            .take(8)
            .map(|a| {
                format!(
                    "pid {} {} {}",
                    a.pid,
                    shown(&a.exe, 200),
                    shown(&argv_line(&a.argv), 300)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// For a resolved request: the outcome and who decided, in one line.
    pub fn outcome(&self) -> Option<String> {
        let row = &self.row;
        let reason = shown(&row.reason, MAX_FACT);
        Some(match row.state {
            State::Pending => return None,
            State::Approved => format!("Approved by {}: {}", shown(&row.decided_by, 120), reason),
            State::Denied => format!("Denied by {}: {}", shown(&row.decided_by, 120), reason),
            State::Expired => format!(
                "Expired: nobody decided in time; {} applied",
                if row.outcome == "allow" {
                    "allow"
                } else {
                    "deny"
                }
            ),
            State::Cancelled => format!("Cancelled: {reason}"),
        })
    }
}

/// What a surface did with a request.
pub(crate) struct Applied {
    /// Where the message is (Slack's channel id), empty when nothing was posted.
    pub channel: String,
    /// The message (Slack's `ts`), empty when nothing was posted.
    pub message_ref: String,
    /// Whether the message needs no more work (the final state is shown, or nothing will be
    /// posted for this request).
    pub settled: bool,
}

/// The state of a request's message on one surface, as stored.
#[derive(Clone, Debug, Default)]
pub(crate) struct Delivery {
    /// Where it went.
    pub channel: String,
    /// Which message.
    pub message_ref: String,
    /// What it shows (the surface's revision when it was last brought up to date).
    pub revision: String,
}

/// A surface that shows requests.
pub(crate) trait Surface: Send + Sync {
    /// `kind` column value.
    fn kind(&self) -> &'static str;
    /// A string that changes whenever the message must (Teams posts once and never updates),
    /// given the time now.
    fn revision(&self, view: &View, now_ms: i64) -> String;
    /// When the message must change with nothing else happening (a reminder falls due), as
    /// Unix ms; `None` when never.
    fn wake_at(&self, _view: &View, _now_ms: i64) -> Option<i64> {
        None
    }
    /// Posts or updates the message so that it shows `view` as `revision`, with retries.
    fn apply<'a>(
        &'a self,
        central: &'a Central,
        view: &'a View,
        revision: &'a str,
        delivery: &'a Delivery,
    ) -> impl std::future::Future<Output = Result<Applied, String>> + Send + 'a;
}

/// Takes the lease on a request's row for `kind` when it shows something other than
/// `revision` and nobody else holds it; creates the row when it is the first. Returns the
/// stored delivery and the lease token.
async fn acquire(
    central: &Central,
    kind: &str,
    approval_id: &str,
    revision: &str,
) -> Result<Option<(Delivery, String)>> {
    let now = now_ms();
    let until = now + LEASE.as_millis() as i64;
    let token = format!("{}/{}", central.replica_id, uuid::Uuid::new_v4());
    let lease = Lease {
        kind,
        approval_id,
        token: &token,
        until_ms: until,
        now_ms: now,
    };
    if central.store.claim_notification(&lease).await? {
        return Ok(Some((Delivery::default(), token)));
    }
    let Some((channel, message_ref, revision)) =
        central.store.lease_notification(&lease, revision).await?
    else {
        return Ok(None);
    };
    Ok(Some((
        Delivery {
            channel,
            message_ref,
            revision,
        },
        token,
    )))
}

/// Stores what a delivery did and lets go of the lease.
async fn release(
    central: &Central,
    kind: &str,
    approval_id: &str,
    token: &str,
    outcome: std::result::Result<(&Applied, &str), &str>,
) -> Result<()> {
    let shown_error;
    let outcome = match outcome {
        Ok((applied, revision)) => Delivered::Applied {
            channel: &applied.channel,
            message_ref: &applied.message_ref,
            revision,
            settled: applied.settled,
        },
        Err(error) => {
            shown_error = shown(error, 1000);
            Delivered::Failed(&shown_error)
        }
    };
    Ok(central
        .store
        .release_notification(kind, approval_id, token, outcome, now_ms())
        .await?)
}

/// What a delivery leaves to do for a request, with nothing else happening.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Look again at this time (Unix ms): a reminder falls due.
    At(i64),
    /// Nothing: the message is final, or does not change with time alone.
    Nothing,
    /// The surface refused the message; the sweep tries again, and a timer already queued
    /// stays.
    Failed,
}

impl Next {
    fn at(t: Option<i64>) -> Next {
        t.map_or(Next::Nothing, Next::At)
    }
}

/// Brings one surface's message for a request up to date (see the module documentation).
/// Returns what is left to do with nothing else happening.
async fn sync<S: Surface>(central: &Central, approval_id: &str, surface: &S) -> Result<Next> {
    let kind = surface.kind();
    loop {
        let Some(view) = View::load(central, approval_id).await? else {
            return Ok(Next::Nothing);
        };
        if !view.row.merged_into.is_empty() {
            // It waits with an identical request whose message counts it; it gets a message of
            // its own only if it takes that one's place.
            return Ok(Next::Nothing);
        }
        let revision = surface.revision(&view, now_ms());
        let Some((delivery, token)) = acquire(central, kind, approval_id, &revision).await? else {
            return Ok(Next::at(surface.wake_at(&view, now_ms())));
        };
        // Looked at again under the lease: the state may have moved since.
        let Some(view) = View::load(central, approval_id).await? else {
            return Ok(Next::Nothing);
        };
        let revision = surface.revision(&view, now_ms());
        match surface.apply(central, &view, &revision, &delivery).await {
            Ok(applied) => {
                release(
                    central,
                    kind,
                    approval_id,
                    &token,
                    Ok((&applied, &revision)),
                )
                .await?;
                if applied.settled {
                    return Ok(Next::Nothing);
                }
            }
            Err(e) => {
                tracing::error!(approval_id, surface = kind, error = %e, "notification not delivered; the sweep retries");
                release(central, kind, approval_id, &token, Err(&e)).await?;
                return Ok(Next::Failed);
            }
        }
        // A change that arrived while the lease was held found it taken: look again.
        match View::load(central, approval_id).await? {
            Some(now) if surface.revision(&now, now_ms()) != revision => continue,
            Some(now) => return Ok(Next::at(surface.wake_at(&now, now_ms()))),
            None => return Ok(Next::Nothing),
        }
    }
}

/// Exponential backoff for calls to a surface: 0.5 s doubling to 30 s, six retries (about a
/// minute in all), with jitter so that replicas do not retry in step.
pub(crate) fn backoff() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(30))
        .with_max_times(6)
        .with_jitter()
}

/// `address port N`, after the name the workload resolved to the address when it is known:
/// `name (address port N)`.
fn port_words(d: &latch_proto::v1::Destination) -> String {
    let at = format!("{} port {}", d.address, d.port);
    if d.host_name.is_empty() {
        at
    } else {
        format!("{} ({at})", d.host_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destination_is_told_by_its_name_when_the_workload_resolved_one() {
        let mut d = latch_proto::v1::Destination {
            address: "52.216.1.12".into(),
            port: 443,
            ..Default::default()
        };
        assert_eq!(port_words(&d), "52.216.1.12 port 443");
        d.host_name = "upload.example.com".into();
        assert_eq!(port_words(&d), "upload.example.com (52.216.1.12 port 443)");
    }

    #[tokio::test]
    async fn a_timer_is_replaced_by_a_new_time_and_stopped_once_not_needed() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let n = Notifier {
            tx: Some(tx),
            ..Default::default()
        };
        let now = now_ms();
        n.wake("a", now + 100);
        n.wake("a", now + 100);
        assert_eq!(n.timers(), 1, "one timer per request");
        // A later time replaces the earlier; a request that needs none any more has none.
        n.wake("a", now + 150);
        n.wake("b", now + 50);
        n.unwake("b");
        assert_eq!(n.timers(), 1);
        let first = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("the timer fires");
        // Had either stopped timer fired, it would have come first, or left the new one queued.
        assert_eq!(first.as_deref(), Some("a"));
        assert_eq!(n.timers(), 0, "the timer that fired was the last one");
        assert!(rx.try_recv().is_err());
    }
}
