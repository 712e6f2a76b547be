//! Slack: one interactive message per request, in the channel its rule routes to (`notify.slack`)
//! or the configured default, with the redacted context and Approve / Deny buttons; the message
//! is updated on every change of state with the outcome and who decided.
//!
//! Clicks arrive at `POST /slack/actions`. A callback counts only when it carries Slack's v0
//! signature (HMAC-SHA256 of `v0:{timestamp}:{body}` with the app's signing secret, compared in
//! constant time), its timestamp is within the replay window, and its signature has not been
//! accepted before (stored in the database, so a replay is refused by every replica). The
//! clicker is then mapped to a reviewer: Slack user → `users.info` → e-mail address, which Slack
//! must have confirmed (`is_email_confirmed`) → [`Central::reviewer_by_email`], which finds
//! exactly one reviewer with that address verified, or nobody; without a match nothing is
//! decided. The decision goes through [`Central::decide`], and the clicker gets the result as an
//! ephemeral message.
//!
//! Everything the workload controls is shown in `plain_text` objects (no mentions, links or
//! formatting are parsed there) and additionally escaped (`&`, `<`, `>`), so neither
//! `<!channel>`, `<@U…>` nor `<https://…|…>` can be injected; the fallback `text` is sent with
//! `mrkdwn: false`.

use std::{sync::Arc, time::Duration};

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use backon::Retryable;
use hmac::{Hmac, Mac};
use latch_proto::v1::{DecideRequest, DecisionKind, Outcome};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Sha256;

use super::{backoff, shown, Applied, Delivery, NotifyError, Surface, View};
use crate::{
    clock::now_ms, config::SlackConfig, engine::Central, error::Error, identity::ByEmail,
    store::AuditFact,
};

/// `kind` of Slack rows in `notifications`.
pub const KIND: &str = "slack";
/// `action_id` of the Approve button.
pub const APPROVE: &str = "latch.approve";
/// `action_id` of the Deny button.
pub const DENY: &str = "latch.deny";
/// Slack shows an error to the clicker when the callback is not answered within 3 s; the
/// answer goes out after this long even when the decision is still being made.
const ANSWER_WITHIN: Duration = Duration::from_millis(2500);

/// A failed Slack Web API call.
#[derive(Debug, thiserror::Error)]
pub enum SlackError {
    /// The call did not complete.
    #[error("{method}: {source}")]
    Http {
        /// API method.
        method: &'static str,
        /// Cause.
        source: reqwest::Error,
    },
    /// Slack answered with an HTTP error.
    #[error("{method}: HTTP {status}: {body}")]
    Status {
        /// API method.
        method: &'static str,
        /// HTTP status.
        status: u16,
        /// `Retry-After`, when given.
        retry_after: Option<Duration>,
        /// Start of the body.
        body: String,
    },
    /// Slack answered `ok: false`.
    #[error("{method}: Slack answered '{error}'")]
    Api {
        /// API method.
        method: &'static str,
        /// Slack's error code.
        error: String,
    },
    /// The answer is not what the API documents.
    #[error("{method}: unexpected answer: {message}")]
    Answer {
        /// API method.
        method: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl SlackError {
    /// Whether the same call may succeed later.
    pub fn is_transient(&self) -> bool {
        match self {
            SlackError::Http { source, .. } => {
                source.is_timeout() || source.is_connect() || source.is_request()
            }
            SlackError::Status { status, .. } => *status == 429 || *status >= 500,
            SlackError::Api { error, .. } => matches!(
                error.as_str(),
                "ratelimited"
                    | "rate_limited"
                    | "internal_error"
                    | "fatal_error"
                    | "service_unavailable"
                    | "request_timeout"
            ),
            SlackError::Answer { .. } => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            SlackError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Escapes the three characters Slack treats as markup everywhere (`&`, `<`, `>`), which is
/// what mentions (`<!channel>`, `<@U…>`) and links (`<url|text>`) are made of.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// A `plain_text` object for text that may come from the workload, escaped and cut to `max`
/// characters (Slack's limits count the text as sent, entities included).
fn plain(s: &str, max: usize) -> Value {
    let full = escape(&shown(s, max));
    let text = if full.chars().count() <= max {
        full
    } else {
        let mut t: String = full.chars().take(max.saturating_sub(1)).collect();
        // Never leave half an entity behind.
        if let Some(amp) = t.rfind('&') {
            if !t[amp..].contains(';') {
                t.truncate(amp);
            }
        }
        t.push('…');
        t
    };
    json!({"type": "plain_text", "text": text, "emoji": false})
}

/// The Slack Web API, authenticated with the bot token.
struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn answer(method: &'static str, resp: reqwest::Response) -> Result<Value, SlackError> {
        let status = resp.status();
        if !status.is_success() {
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = resp.text().await.unwrap_or_default();
            return Err(SlackError::Status {
                method,
                status: status.as_u16(),
                retry_after,
                body: shown(&body, 300),
            });
        }
        let v: Value = resp
            .json()
            .await
            .map_err(|source| SlackError::Http { method, source })?;
        if v.get("ok").and_then(Value::as_bool) != Some(true) {
            let error = v
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no error code")
                .to_string();
            return Err(SlackError::Api { method, error });
        }
        Ok(v)
    }

    /// One write method with a JSON body.
    async fn post(&self, method: &'static str, body: &Value) -> Result<Value, SlackError> {
        let resp = self
            .http
            .post(format!("{}/{method}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .map_err(|source| SlackError::Http { method, source })?;
        Api::answer(method, resp).await
    }

    /// [`Api::post`] with retries and backoff on transient failures; `approval_id` names the
    /// request in logs.
    async fn post_retrying(
        &self,
        method: &'static str,
        body: &Value,
        approval_id: &str,
    ) -> Result<Value, SlackError> {
        (|| self.post(method, body))
            .retry(backoff())
            .when(SlackError::is_transient)
            .adjust(|e, d| d.map(|d| e.retry_after().unwrap_or(d)))
            .notify(|e, d| {
                tracing::warn!(approval_id, error = %e, retry_in = ?d, "Slack call failed; retrying")
            })
            .await
    }

    /// The confirmed e-mail address of a Slack user (`users.info`); `Err` explains a refusal.
    async fn user_email(&self, user: &str) -> Result<Result<String, String>, SlackError> {
        let method = "users.info";
        let call = || async {
            let resp = self
                .http
                .get(format!("{}/{method}", self.base))
                .bearer_auth(&self.token)
                .query(&[("user", user)])
                .send()
                .await
                .map_err(|source| SlackError::Http { method, source })?;
            Api::answer(method, resp).await
        };
        let v = call
            .retry(backoff().with_max_times(2))
            .when(SlackError::is_transient)
            .await?;
        let u = v.get("user").ok_or_else(|| SlackError::Answer {
            method,
            message: "no `user`".into(),
        })?;
        if u.get("deleted").and_then(Value::as_bool) == Some(true) {
            return Ok(Err("your Slack account is deactivated".into()));
        }
        if u.get("is_bot").and_then(Value::as_bool) == Some(true) {
            return Ok(Err("bots do not decide requests".into()));
        }
        let Some(email) = u
            .pointer("/profile/email")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|e| !e.is_empty())
        else {
            return Ok(Err(
                "Slack did not share your e-mail address (the app needs the users:read.email scope)"
                    .into(),
            ));
        };
        // A workspace member can type any address into a profile; only an address Slack has
        // confirmed (by mail sent there) says who the member is.
        if u.get("is_email_confirmed").and_then(Value::as_bool) != Some(true) {
            return Ok(Err(format!(
                "Slack has not confirmed that your e-mail address {email} is yours"
            )));
        }
        Ok(Ok(email.to_string()))
    }
}

/// The end of a pending request's revision once its reminder is due: stored once the message is
/// brought up to date past that moment, whether or not a reminder could be posted then.
const REMINDED: &str = ":reminded";

/// The Slack surface: API client, callback verification and routing.
pub struct Slack {
    api: Api,
    signing_secret: String,
    default_channel: Option<String>,
    replay_window: Duration,
    remind_before: Option<Duration>,
}

impl Slack {
    /// From `[slack]`, reading the token and signing secret files.
    pub(crate) fn new(c: &SlackConfig, http: reqwest::Client) -> Result<Slack, NotifyError> {
        Ok(Slack {
            api: Api {
                http,
                base: c.api_base_url().map_err(NotifyError::Invalid)?,
                token: super::read_secret("slack.bot_token_file", &c.bot_token_file)?,
            },
            signing_secret: super::read_secret(
                "slack.signing_secret_file",
                &c.signing_secret_file,
            )?,
            default_channel: c.default_channel.clone(),
            replay_window: c.replay_window().map_err(NotifyError::Invalid)?,
            remind_before: c.remind_before().map_err(NotifyError::Invalid)?,
        })
    }

    /// When a pending request's reminder falls due (Unix ms): `remind_before` ahead of its
    /// deadline, for a request that waits at least twice that long in all (a shorter one's
    /// first message is reminder enough). `None` when it gets none.
    fn reminder_at(&self, view: &View) -> Option<i64> {
        let before = self.remind_before?.as_millis() as i64;
        let row = &view.row;
        let waits = row.expires_at_ms.saturating_sub(row.received_at_ms);
        (!view.is_final() && waits >= 2 * before).then(|| row.expires_at_ms - before)
    }

    /// Posts the reminder of a pending request in its message's thread, also sent to the
    /// channel so that it is seen.
    async fn remind(&self, view: &View, delivery: &Delivery) -> Result<(), String> {
        let row = &view.row;
        let minutes = (row.expires_at_ms - crate::clock::now_ms()).max(0) / 60_000;
        let text = format!(
            "Reminder: {} expires at {} (in {}), then {}. Approvals: {} of {}.",
            shown(&view.headline(), 300),
            crate::clock::rfc3339(row.expires_at_ms),
            if minutes == 0 {
                "less than a minute".to_string()
            } else {
                format!("about {minutes} min")
            },
            row.on_timeout,
            view.approvals,
            row.approvers_needed.max(1)
        );
        let body = json!({
            "channel": delivery.channel,
            "thread_ts": delivery.message_ref,
            "reply_broadcast": true,
            "text": escape(&text),
            "unfurl_links": false,
            "unfurl_media": false,
        });
        let id = row.approval_id.as_str();
        self.api
            .post_retrying("chat.postMessage", &body, id)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(approval_id = id, "reminded on Slack");
        Ok(())
    }

    /// How far a callback's timestamp may be from now.
    pub fn replay_window(&self) -> Duration {
        self.replay_window
    }

    /// The channel a request goes to: its rule's `notify.slack`, else the default channel.
    async fn channel_for(&self, central: &Central, view: &View) -> Option<String> {
        match rule_channel(central, view).await {
            Ok(Some(ch)) => return Some(ch),
            Ok(None) => {}
            Err(e) => tracing::warn!(
                approval_id = %view.row.approval_id, error = %e,
                "cannot read the request's rule; posting to the default Slack channel"
            ),
        }
        self.default_channel.clone()
    }
}

/// The channel the request's rule names, in the rules version the agent matched against.
async fn rule_channel(central: &Central, view: &View) -> crate::error::Result<Option<String>> {
    if view.row.rule_id == 0 {
        return Ok(None);
    }
    let version = if view.req.rules_version > 0 {
        view.req.rules_version as i64
    } else {
        let labels = central.host_labels(&view.row.host_id).await?;
        match central.desired_version(&labels).await? {
            Some(v) => v.version,
            None => return Ok(None),
        }
    };
    let set = central.rule_set(version).await?;
    Ok(set
        .rule(view.row.rule_id)
        .and_then(|r| r.notify.slack.clone()))
}

/// The message for a request: fallback text and blocks.
pub(crate) fn message(view: &View) -> (String, Vec<Value>) {
    let id = &view.row.approval_id;
    let headline = view.headline();
    let fields: Vec<Value> = view
        .facts()
        .into_iter()
        .map(|(label, value)| plain(&format!("{label}\n{value}"), 1900))
        .collect();
    let mut blocks = vec![
        json!({"type": "header", "text": plain(&headline, 150)}),
        json!({"type": "section", "fields": fields}),
        json!({"type": "section", "text": plain(&format!("Process\n{}", view.process()), 2900)}),
        json!({"type": "section", "text": plain(&format!("Process tree\n{}", view.tree()), 2900)}),
    ];
    match view.outcome() {
        None => blocks.push(json!({
            "type": "actions",
            "block_id": "latch.decide",
            "elements": [
                {
                    "type": "button",
                    "action_id": APPROVE,
                    "style": "primary",
                    "text": {"type": "plain_text", "text": "Approve", "emoji": false},
                    "value": id,
                    "confirm": {
                        "title": {"type": "plain_text", "text": "Approve this request?"},
                        "text": plain(&headline, 300),
                        "confirm": {"type": "plain_text", "text": "Approve"},
                        "deny": {"type": "plain_text", "text": "Cancel"},
                    },
                },
                {
                    "type": "button",
                    "action_id": DENY,
                    "style": "danger",
                    "text": {"type": "plain_text", "text": "Deny", "emoji": false},
                    "value": id,
                },
            ],
        })),
        Some(outcome) => {
            blocks.push(json!({"type": "section", "text": plain(&outcome, 2900)}));
        }
    }
    blocks.push(json!({
        "type": "context",
        "elements": [plain(&format!("Latch request {id}"), 200)],
    }));
    let text = match view.outcome() {
        None => headline,
        Some(o) => format!("{headline}: {o}"),
    };
    (escape(&shown(&text, 1000)), blocks)
}

impl Surface for Slack {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn revision(&self, view: &View, now_ms: i64) -> String {
        let mut r = view.revision();
        if self.reminder_at(view).is_some_and(|at| now_ms >= at) {
            r.push_str(REMINDED);
        }
        r
    }

    fn wake_at(&self, view: &View, now_ms: i64) -> Option<i64> {
        self.reminder_at(view).filter(|at| *at > now_ms)
    }

    async fn apply(
        &self,
        central: &Central,
        view: &View,
        revision: &str,
        delivery: &Delivery,
    ) -> Result<Applied, String> {
        let id = view.row.approval_id.as_str();
        let (text, blocks) = message(view);
        if delivery.message_ref.is_empty() {
            if view.is_final() {
                // Resolved before it could be announced: nothing to ask anyone.
                return Ok(Applied {
                    channel: String::new(),
                    message_ref: String::new(),
                    settled: true,
                });
            }
            let Some(channel) = self.channel_for(central, view).await else {
                tracing::debug!(approval_id = id, "no Slack channel for this request");
                return Ok(Applied {
                    channel: String::new(),
                    message_ref: String::new(),
                    settled: true,
                });
            };
            let body = json!({
                "channel": channel,
                "text": text,
                "mrkdwn": false,
                "blocks": blocks,
                "unfurl_links": false,
                "unfurl_media": false,
            });
            let v = self
                .api
                .post_retrying("chat.postMessage", &body, id)
                .await
                .map_err(|e| e.to_string())?;
            let (Some(channel_id), Some(ts)) = (
                v.get("channel").and_then(Value::as_str),
                v.get("ts").and_then(Value::as_str),
            ) else {
                return Err("chat.postMessage: the answer has no channel or ts".into());
            };
            tracing::info!(approval_id = id, channel = %channel, "posted to Slack");
            return Ok(Applied {
                channel: channel_id.to_string(),
                message_ref: ts.to_string(),
                settled: false,
            });
        }
        let body = json!({
            "channel": delivery.channel,
            "ts": delivery.message_ref,
            "text": text,
            "blocks": blocks,
        });
        self.api
            .post_retrying("chat.update", &body, id)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(approval_id = id, revision, "updated the Slack message");
        // Once: the stored revision says whether the message's thread has it.
        if revision.ends_with(REMINDED) && !delivery.revision.ends_with(REMINDED) {
            // The message itself is current; a reminder that cannot be posted (after the
            // client's own retries) is not worth posting it again for.
            if let Err(e) = self.remind(view, delivery).await {
                tracing::warn!(approval_id = id, error = %e, "the Slack reminder could not be posted");
            }
        }
        Ok(Applied {
            channel: delivery.channel.clone(),
            message_ref: delivery.message_ref.clone(),
            settled: view.is_final(),
        })
    }
}

/// Why a callback was refused before anything in it was looked at.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    /// A header Slack always sends is missing or unreadable.
    #[error("missing or unreadable header {0}")]
    Header(&'static str),
    /// The timestamp is not a number of seconds.
    #[error("X-Slack-Request-Timestamp '{0}' is not a Unix time in seconds")]
    Timestamp(String),
    /// The timestamp is outside the replay window.
    #[error("X-Slack-Request-Timestamp {ts} is {off} s away from now; the window is {window} s")]
    Stale {
        /// The timestamp.
        ts: i64,
        /// Seconds from now.
        off: i64,
        /// Window in seconds.
        window: u64,
    },
    /// The signature does not match.
    #[error("X-Slack-Signature does not match the body")]
    Signature,
    /// The same signed callback was accepted before.
    #[error("this callback was already received (replay)")]
    Replayed,
    /// The body is not an interactive payload.
    #[error("body: {0}")]
    Body(String),
    /// The replay store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl IntoResponse for CallbackError {
    fn into_response(self) -> Response {
        let status = match &self {
            CallbackError::Body(_) => StatusCode::BAD_REQUEST,
            CallbackError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        };
        (status, self.to_string()).into_response()
    }
}

/// Slack's v0 signature of `body` sent at `timestamp`, as the `X-Slack-Signature` header
/// carries it.
pub fn sign(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mac = mac(secret, timestamp, body);
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

fn mac(secret: &str, timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    mac
}

/// Whether `signature` (the header's value) is the v0 signature of `body` at `timestamp`;
/// compared in constant time.
pub fn verify(secret: &str, timestamp: &str, body: &[u8], signature: &str) -> bool {
    let Some(hex_sig) = signature.trim().strip_prefix("v0=") else {
        return false;
    };
    let Ok(given) = hex::decode(hex_sig) else {
        return false;
    };
    mac(secret, timestamp, body).verify_slice(&given).is_ok()
}

impl Slack {
    /// Authenticates a callback: signature, replay window, and first sight of the signature.
    async fn authenticate(
        &self,
        central: &Central,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), CallbackError> {
        let header = |name: &'static str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .ok_or(CallbackError::Header(name))
        };
        let ts_text = header("x-slack-request-timestamp")?;
        let signature = header("x-slack-signature")?;
        let ts: i64 = ts_text
            .parse()
            .map_err(|_| CallbackError::Timestamp(shown(ts_text, 40)))?;
        // The timestamp is the sender's to choose (i64::MIN, i64::MAX): a plain subtraction
        // could overflow. Clamping cannot change the verdict, since the window is minutes long.
        let off = (now_ms() / 1000).saturating_sub(ts);
        if off.unsigned_abs() > self.replay_window.as_secs() {
            return Err(CallbackError::Stale {
                ts,
                off,
                window: self.replay_window.as_secs(),
            });
        }
        if !verify(&self.signing_secret, ts_text, body, signature) {
            return Err(CallbackError::Signature);
        }
        let fresh = central
            .store
            .record_slack_callback(&signature.to_ascii_lowercase(), ts, now_ms())
            .await?;
        if !fresh {
            return Err(CallbackError::Replayed);
        }
        Ok(())
    }
}

/// Forgets callback signatures too old to be replayed (their timestamps are refused anyway).
pub(crate) async fn forget_old_callbacks(
    central: &Central,
    window: Duration,
) -> crate::error::Result<()> {
    let before = now_ms() - 2 * window.as_millis() as i64;
    Ok(central.store.forget_slack_callbacks(before).await?)
}

/// The parts of an interactive payload this service reads (Slack sends many more).
#[derive(Debug, Deserialize)]
pub struct Payload {
    /// `block_actions` for button clicks.
    #[serde(rename = "type")]
    pub kind: String,
    /// Who clicked.
    pub user: PayloadUser,
    /// Where.
    #[serde(default)]
    pub channel: Option<PayloadChannel>,
    /// The message clicked on.
    #[serde(default)]
    pub container: Option<Container>,
    /// What was clicked.
    #[serde(default)]
    pub actions: Vec<Action>,
}

/// The clicking user.
#[derive(Debug, Deserialize)]
pub struct PayloadUser {
    /// Slack user id.
    pub id: String,
}

/// The channel of the click.
#[derive(Debug, Deserialize)]
pub struct PayloadChannel {
    /// Channel id.
    pub id: String,
}

/// The message a click happened on.
#[derive(Debug, Deserialize)]
pub struct Container {
    /// Channel id.
    #[serde(default)]
    pub channel_id: Option<String>,
    /// Message `ts`.
    #[serde(default)]
    pub message_ts: Option<String>,
}

/// One clicked element.
#[derive(Debug, Deserialize)]
pub struct Action {
    /// Which button.
    pub action_id: String,
    /// The request id the button carries.
    #[serde(default)]
    pub value: Option<String>,
}

#[derive(Deserialize)]
struct Form {
    payload: String,
}

/// Parses a form-encoded `payload=<json>` body.
pub fn parse_payload(body: &[u8]) -> Result<Payload, CallbackError> {
    let form: Form = serde_urlencoded::from_bytes(body)
        .map_err(|e| CallbackError::Body(format!("not a form with a `payload` field: {e}")))?;
    serde_json::from_str(&form.payload)
        .map_err(|e| CallbackError::Body(format!("`payload` is not an interactive payload: {e}")))
}

/// What `POST /slack/actions` acts with.
#[derive(Clone)]
pub(crate) struct Callbacks {
    pub(crate) central: Arc<Central>,
    /// None when Slack is not configured.
    pub(crate) slack: Option<Arc<Slack>>,
}

/// `POST /slack/actions`.
pub(crate) async fn actions(
    State(Callbacks { central, slack }): State<Callbacks>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(slack) = slack else {
        return (StatusCode::NOT_FOUND, "Slack is not configured").into_response();
    };
    if let Err(e) = slack.authenticate(&central, &headers, &body).await {
        tracing::warn!(error = %e, "Slack callback refused");
        return e.into_response();
    }
    let payload = match parse_payload(&body) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "Slack callback refused");
            return e.into_response();
        }
    };
    if payload.kind != "block_actions" {
        tracing::debug!(kind = %payload.kind, "ignoring a Slack interaction that is not a click");
        return StatusCode::OK.into_response();
    }
    // Answered within Slack's limit even if Slack's API is slow; the work goes on.
    let work = tokio::spawn(async move { slack.clicked(&central, payload).await });
    let _ = tokio::time::timeout(ANSWER_WITHIN, work).await;
    StatusCode::OK.into_response()
}

impl Slack {
    /// Handles a verified click: maps the user, decides, tells the clicker.
    async fn clicked(&self, central: &Central, p: Payload) {
        let Some(action) = p
            .actions
            .iter()
            .find(|a| a.action_id == APPROVE || a.action_id == DENY)
        else {
            return;
        };
        let approval_id = action.value.clone().unwrap_or_default();
        let user = p.user.id.clone();
        let channel = p
            .container
            .as_ref()
            .and_then(|c| c.channel_id.clone())
            .or_else(|| p.channel.as_ref().map(|c| c.id.clone()))
            .unwrap_or_default();
        let reply = self
            .decide(central, &p, &user, &channel, &approval_id, action)
            .await;
        tracing::info!(approval_id, slack_user = %user, reply = %reply, "Slack click");
        if channel.is_empty() {
            return;
        }
        let body = json!({"channel": channel, "user": user, "text": escape(&shown(&reply, 2000))});
        if let Err(e) = self
            .api
            .post_retrying("chat.postEphemeral", &body, &approval_id)
            .await
        {
            tracing::warn!(approval_id, slack_user = %user, error = %e, "cannot tell the Slack user the result");
        }
    }

    /// The decision a click asks for; returns what to tell the clicker.
    async fn decide(
        &self,
        central: &Central,
        p: &Payload,
        user: &str,
        channel: &str,
        approval_id: &str,
        action: &Action,
    ) -> String {
        let approve = action.action_id == APPROVE;
        // The click must come from the message posted for that request.
        match posted_message(central, approval_id).await {
            Ok(Some((ch, ts))) => {
                let clicked_ts = p.container.as_ref().and_then(|c| c.message_ts.as_deref());
                if ch != channel || clicked_ts != Some(ts.as_str()) {
                    return format!(
                        "Nothing was decided: this is not the message Latch posted for request {approval_id}."
                    );
                }
            }
            Ok(None) => {}
            Err(e) => return format!("Nothing was decided: {e}"),
        }
        let email = match self.api.user_email(user).await {
            Ok(Ok(e)) => e,
            Ok(Err(why)) => {
                refuse_unmapped(central, user, approval_id, &why).await;
                return format!("Nothing was decided: {why}.");
            }
            Err(e) => {
                return format!("Nothing was decided: Latch could not look you up in Slack ({e}); try again or use latchctl.")
            }
        };
        let who = match central.reviewer_by_email(&email).await {
            Ok(ByEmail::One(who)) => who,
            Ok(ByEmail::Nobody) => {
                let why = format!("your Slack e-mail address {email} is not a Latch reviewer");
                refuse_unmapped(central, user, approval_id, &why).await;
                return format!("Nothing was decided: {why}.");
            }
            Ok(ByEmail::Ambiguous { subjects }) => {
                let why = format!(
                    "your Slack e-mail address {email} belongs to {} Latch reviewers, so it \
                     says nothing about which one you are; an administrator must resolve it \
                     (decide with latchctl or the console meanwhile)",
                    subjects.len()
                );
                // The subjects go to the audit trail, for the administrator, not to the clicker.
                let audited = format!("{why}: {}", subjects.join(", "));
                refuse_unmapped(central, user, approval_id, &audited).await;
                return format!("Nothing was decided: {why}.");
            }
            Err(e) => return format!("Nothing was decided: {e}"),
        };
        let request = DecideRequest {
            approval_id: approval_id.to_string(),
            kind: if approve {
                DecisionKind::ApproveOnce
            } else {
                DecisionKind::Deny
            } as i32,
            reason: format!(
                "{} in Slack by {}",
                if approve { "approved" } else { "denied" },
                who.subject
            ),
            ..Default::default()
        };
        let input = match crate::validate::validate_decide(&request) {
            Ok(i) => i,
            Err(e) => return format!("Nothing was decided: {e}"),
        };
        match central.decide(&who, input).await {
            Ok((_, true)) if approve => format!(
                "You ({}) approved request {approval_id}; the operation goes ahead.",
                who.subject
            ),
            Ok((_, true)) => format!(
                "You ({}) denied request {approval_id}; the operation is refused.",
                who.subject
            ),
            Ok((rec, false)) => {
                let counted = rec
                    .votes
                    .iter()
                    .filter(|v| v.outcome == Outcome::Allow as i32)
                    .count();
                format!(
                    "Your approval ({}) of request {approval_id} is counted: {counted} of {} approvers so far.",
                    who.subject, rec.approvers_needed
                )
            }
            Err(Error::PermissionDenied(m)) if m.contains("is the requester") => {
                format!("Nothing was decided: you cannot approve your own request ({m}).")
            }
            Err(Error::PermissionDenied(m) | Error::FailedPrecondition(m)) => {
                format!("Nothing was decided: {m}.")
            }
            Err(e) => format!("Nothing was decided: {e}"),
        }
    }
}

/// Where the message for a request was posted (channel id, ts), when it was.
async fn posted_message(
    central: &Central,
    approval_id: &str,
) -> crate::error::Result<Option<(String, String)>> {
    let Some((ch, ts)) = central
        .store
        .notification_message(KIND, approval_id)
        .await?
    else {
        return Ok(None);
    };
    Ok((!ts.is_empty()).then_some((ch, ts)))
}

/// Audits a click by someone who is not a reviewer.
async fn refuse_unmapped(central: &Central, user: &str, approval_id: &str, why: &str) {
    let row = central.request_row(approval_id).await.ok().flatten();
    let fact = AuditFact {
        kind: "request.decision_refused".into(),
        actor: format!("slack:{user}"),
        host_id: row.as_ref().map(|r| r.host_id.clone()).unwrap_or_default(),
        request_id: approval_id.to_string(),
        rule_name: row
            .as_ref()
            .map(|r| r.rule_name.clone())
            .unwrap_or_default(),
        workload: row.as_ref().map(|r| r.workload.clone()).unwrap_or_default(),
        action: "refused".into(),
        payload: json!({"channel": "slack", "slack_user": user, "refusal": why}),
        ..Default::default()
    };
    if let Err(e) = central.store.audit(&fact).await {
        tracing::warn!(approval_id, error = %e, "recording a refused Slack click failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        // Slack's documented example.
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let secret = "8f742231b10e8888abcd99yyyzzz85a5";
        let ts = "1531420618";
        let expected = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
        assert_eq!(sign(secret, ts, body), expected);
        assert!(verify(secret, ts, body, expected));
        assert!(!verify(secret, "1531420619", body, expected));
        assert!(!verify("other", ts, body, expected));
        assert!(!verify(secret, ts, b"x", expected));
        assert!(!verify(secret, ts, body, &expected[3..]));
        assert!(!verify(secret, ts, body, "v0=zz"));
        assert!(!verify(secret, ts, body, "v1=a2114d57"));
    }

    #[test]
    fn escaping() {
        assert_eq!(
            escape("<!channel> <@U123> <https://evil|ok> a&b"),
            "&lt;!channel&gt; &lt;@U123&gt; &lt;https://evil|ok&gt; a&amp;b"
        );
        let p = plain("\u{202e}<!here>\n", 100);
        let t = p["text"].as_str().expect("text");
        assert_eq!(t, "\\u{202e}&lt;!here&gt;\\n");
        let long = plain(&"<".repeat(500), 150);
        let t = long["text"].as_str().expect("text");
        assert!(t.chars().count() <= 150, "{}", t.chars().count());
        assert!(t.ends_with("&lt;…"), "{t}");
    }

    #[test]
    fn payloads() {
        let json = r#"{"type":"block_actions","user":{"id":"U1","name":"a"},"container":{"type":"message","channel_id":"C1","message_ts":"1.2"},"actions":[{"action_id":"latch.approve","value":"id-1","type":"button"}],"extra":1}"#;
        let body = serde_urlencoded::to_string([("payload", json)]).expect("form");
        let p = parse_payload(body.as_bytes()).expect("payload");
        assert_eq!(p.user.id, "U1");
        assert_eq!(p.actions[0].value.as_deref(), Some("id-1"));
        assert!(matches!(
            parse_payload(b"payload=%7Bnot-json"),
            Err(CallbackError::Body(m)) if m.contains("not an interactive payload")
        ));
        assert!(matches!(
            parse_payload(b"nothing=1"),
            Err(CallbackError::Body(m)) if m.contains("`payload`")
        ));
    }
}
