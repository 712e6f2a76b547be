//! Slack approvals end to end, over real HTTP: central posts to a local Slack-compatible Web API
//! (it answers `chat.postMessage`, `chat.update`, `chat.postEphemeral` and `users.info` the way
//! Slack does), and the tests post signed interactive callbacks to central's web server as Slack
//! would. Checked: the message reaches the routed channel with hostile argv escaped; a signed
//! Approve decides and the agent hears it; the message follows every change of state; forged,
//! stale and replayed callbacks are refused, also with timestamps at the ends of the range and
//! replayed to another replica; unmapped users, addresses Slack has not confirmed, addresses the
//! identity provider has not verified or that two reviewers claim, viewers and the requester
//! decide nothing; a person approving in Slack and over gRPC at once counts once; two replicas
//! post once; a decision completes while Slack leaves its update unanswered.

mod common;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{header, HeaderMap, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::any,
    Router,
};
use common::*;
use hmac::{Hmac, Mac};
use latch_central::{
    approval::State as ReqState,
    config::{SlackConfig, WebConfig},
    Server,
};
use latch_proto::v1::{
    ApplyRulesRequest, CancelApprovalRequest, DecideRequest, DecisionKind, JustifyRequest, Outcome,
    RequestState, WatchRequestsRequest,
};
use serde_json::{json, Value};
use sha2::Sha256;

const BOT_TOKEN: &str = "xoxb-1234-test-bot-token";
const SIGNING_SECRET: &str = "e3b0c44298fc1c149afbf4c8996fb924";
const DEFAULT_CHANNEL: &str = "#latch-approvals";

/// Slack users the local API knows: id → (e-mail, whether Slack confirmed it) (None: Slack
/// shares no address).
fn slack_users() -> HashMap<&'static str, Option<(&'static str, bool)>> {
    HashMap::from([
        ("UALICE", Some(("alice@example.com", true))),
        ("UBOB", Some(("Bob@Example.com", true))),
        ("UDAVE", Some(("dave@example.com", true))),
        ("UVIC", Some(("vic@example.com", true))),
        ("UMALLORY", Some(("mallory@example.com", true))),
        ("UNOMAIL", None),
        // A member who typed Dave's address into their own profile.
        ("UTYPED", Some(("dave@example.com", false))),
        ("UAMIR", Some(("amir@example.com", true))),
        ("UOLGA", Some(("olga@example.com", true))),
    ])
}

/// One call the local Slack API answered.
#[derive(Clone, Debug)]
struct Call {
    method: String,
    body: Value,
    answer: Value,
}

#[derive(Default)]
struct PeerState {
    calls: Mutex<Vec<Call>>,
    changed: tokio::sync::Notify,
    /// chat.postMessage calls still to refuse with HTTP 429 (rate limited).
    refuse_posts: AtomicUsize,
    next_ts: AtomicUsize,
}

/// A local Slack-compatible Web API on 127.0.0.1.
struct SlackPeer {
    addr: SocketAddr,
    state: Arc<PeerState>,
}

fn slack_answer(v: Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        v.to_string(),
    )
        .into_response()
}

fn channel_id(name: &str) -> String {
    match name {
        "#dba-oncall" => "C0DBAONCALL".into(),
        DEFAULT_CHANNEL => "C0APPROVALS".into(),
        other => other.to_string(),
    }
}

async fn slack_api(
    State(st): State<Arc<PeerState>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {BOT_TOKEN}"))
    {
        return slack_answer(json!({"ok": false, "error": "invalid_auth"}));
    }
    let body: Value = if method == "users.info" {
        let q: HashMap<String, String> =
            serde_urlencoded::from_str(uri.query().unwrap_or("")).expect("query");
        json!(q)
    } else {
        let json_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !json_type {
            return slack_answer(json!({"ok": false, "error": "invalid_form_data"}));
        }
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => return slack_answer(json!({"ok": false, "error": "invalid_json"})),
        }
    };
    let answer = match method.as_str() {
        "chat.postMessage" => {
            if st
                .refuse_posts
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::RETRY_AFTER, "1")],
                    json!({"ok": false, "error": "ratelimited"}).to_string(),
                )
                    .into_response();
            }
            let n = st.next_ts.fetch_add(1, Ordering::SeqCst);
            json!({
                "ok": true,
                "channel": channel_id(body["channel"].as_str().unwrap_or("")),
                "ts": format!("1700000000.{n:06}"),
                "message": {"text": body["text"], "blocks": body["blocks"]},
            })
        }
        "chat.update" => {
            let known = st.calls.lock().expect("calls").iter().any(|c| {
                c.method == "chat.postMessage"
                    && c.answer["ts"] == body["ts"]
                    && c.answer["channel"] == body["channel"]
            });
            if known {
                json!({"ok": true, "channel": body["channel"], "ts": body["ts"], "text": body["text"]})
            } else {
                json!({"ok": false, "error": "message_not_found"})
            }
        }
        "chat.postEphemeral" => json!({"ok": true, "message_ts": "1700000001.000001"}),
        "users.info" => {
            let id = body["user"].as_str().unwrap_or("");
            match slack_users().get(id) {
                None => json!({"ok": false, "error": "user_not_found"}),
                Some(email) => {
                    let mut profile = json!({"real_name": id});
                    let mut confirmed = true;
                    if let Some((e, c)) = email {
                        profile["email"] = json!(e);
                        confirmed = *c;
                    }
                    // Where Slack puts it: on the user, beside the profile.
                    json!({"ok": true, "user": {"id": id, "name": id.to_lowercase(),
                        "deleted": false, "is_bot": false, "is_email_confirmed": confirmed,
                        "profile": profile}})
                }
            }
        }
        _ => json!({"ok": false, "error": "unknown_method"}),
    };
    st.calls.lock().expect("calls").push(Call {
        method,
        body,
        answer: answer.clone(),
    });
    st.changed.notify_waiters();
    slack_answer(answer)
}

impl SlackPeer {
    async fn start() -> SlackPeer {
        let state = Arc::new(PeerState::default());
        let app = Router::new()
            .route("/api/{method}", any(slack_api))
            .with_state(state.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(l, app).await });
        SlackPeer { addr, state }
    }

    fn calls(&self) -> Vec<Call> {
        self.state.calls.lock().expect("calls").clone()
    }

    /// Waits until `f` finds something in the calls so far (bounded by HANG, a hang guard).
    async fn wait<T>(&self, what: &str, f: impl Fn(&[Call]) -> Option<T>) -> T {
        tokio::time::timeout(HANG, async {
            loop {
                let changed = self.state.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if let Some(t) = f(&self.calls()) {
                    return t;
                }
                changed.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("waiting for {what}: {:#?}", self.calls()))
    }

    /// The message posted for a request: (call, channel id, ts).
    async fn posted(&self, approval_id: &str) -> (Call, String, String) {
        self.wait(&format!("chat.postMessage for {approval_id}"), |calls| {
            calls
                .iter()
                .find(|c| {
                    c.method == "chat.postMessage" && c.body.to_string().contains(approval_id)
                })
                .map(|c| {
                    (
                        c.clone(),
                        c.answer["channel"].as_str().expect("channel").to_string(),
                        c.answer["ts"].as_str().expect("ts").to_string(),
                    )
                })
        })
        .await
    }

    /// The first chat.update of message `ts` whose text contains `needle`.
    async fn updated(&self, ts: &str, needle: &str) -> Call {
        self.wait(&format!("chat.update of {ts} with '{needle}'"), |calls| {
            calls
                .iter()
                .find(|c| {
                    c.method == "chat.update"
                        && c.body["ts"] == ts
                        && c.body["text"].as_str().is_some_and(|t| t.contains(needle))
                })
                .cloned()
        })
        .await
    }

    /// The first ephemeral message to `user` at or after call number `from`.
    async fn ephemeral(&self, user: &str, from: usize) -> String {
        self.wait(&format!("ephemeral reply to {user}"), |calls| {
            calls.iter().skip(from).find_map(|c| {
                (c.method == "chat.postEphemeral" && c.body["user"] == user)
                    .then(|| c.body["text"].as_str().unwrap_or("").to_string())
            })
        })
        .await
    }

    fn count(&self, method: &str, approval_id: &str) -> usize {
        self.calls()
            .iter()
            .filter(|c| c.method == method && c.body.to_string().contains(approval_id))
            .count()
    }
}

/// The test rules, with `prod-db` routed to #dba-oncall.
fn routed_rules() -> String {
    RULES.replacen(
        "    timeout: 10m\n",
        "    notify: { slack: \"#dba-oncall\" }\n    timeout: 10m\n",
        1,
    )
}

/// Configures `env` for Slack against `peer` (secrets in files, as in production).
fn configure(env: &mut Env, peer: &SlackPeer) {
    configure_api(env, format!("http://{}/api/", peer.addr));
}

/// Configures `env` for Slack with the Web API at `api_base_url`.
fn configure_api(env: &mut Env, api_base_url: String) {
    let token = env.dir.path().join("slack-bot-token");
    let secret = env.dir.path().join("slack-signing-secret");
    std::fs::write(&token, format!("{BOT_TOKEN}\n")).expect("write token");
    std::fs::write(&secret, format!("{SIGNING_SECRET}\n")).expect("write secret");
    env.config.web = Some(WebConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..Default::default()
    });
    env.config.slack = Some(SlackConfig {
        bot_token_file: token,
        signing_secret_file: secret,
        api_base_url: Some(api_base_url),
        default_channel: Some(DEFAULT_CHANNEL.into()),
        replay_window: None,
        remind_before: None,
    });
    for r in &mut env.config.reviewers {
        match r.subject.as_str() {
            "bob" => r.email = "bob@example.com".into(),
            "dave" => r.email = "dave@example.com".into(),
            "vic" => r.email = "vic@example.com".into(),
            _ => {}
        }
    }
}

async fn apply_routed_rules(server: &Server) {
    reviewer(server)
        .await
        .apply_rules(req(
            ApplyRulesRequest {
                source_name: "rules.yaml".into(),
                yaml: routed_rules(),
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .expect("apply rules");
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// Slack's v0 signature, computed here independently of central's code.
fn signature(secret: &str, ts: &str, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(format!("v0:{ts}:{body}").as_bytes());
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

/// A `block_actions` callback body for a click on the message (channel, ts).
fn click_body(user: &str, action_id: &str, approval_id: &str, channel: &str, ts: &str) -> String {
    let payload = json!({
        "type": "block_actions",
        "team": {"id": "T0LATCH", "domain": "example"},
        "user": {"id": user, "username": user.to_lowercase(), "team_id": "T0LATCH"},
        "api_app_id": "A0LATCH",
        "token": "legacy-verification-token",
        "container": {"type": "message", "message_ts": ts, "channel_id": channel, "is_ephemeral": false},
        "trigger_id": "1.2.3",
        "channel": {"id": channel, "name": "dba-oncall"},
        "message": {"type": "message", "ts": ts, "text": "..."},
        "response_url": "https://hooks.slack.invalid/actions/T0LATCH/1/2",
        "actions": [{
            "type": "button", "action_id": action_id, "block_id": "latch.decide",
            "value": approval_id, "action_ts": "1700000002.000001",
            "text": {"type": "plain_text", "text": "Approve"},
        }],
    });
    serde_urlencoded::to_string([("payload", payload.to_string())]).expect("form")
}

/// Posts a callback with the given timestamp and signature; returns status and body.
async fn post_callback(server: &Server, body: &str, ts: &str, sig: Option<&str>) -> (u16, String) {
    let web = server.web_addr().expect("web console listening");
    let mut r = reqwest::Client::new()
        .post(format!("http://{web}/slack/actions"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", ts)
        .body(body.to_string());
    if let Some(sig) = sig {
        r = r.header("x-slack-signature", sig);
    }
    let resp = r.send().await.expect("post callback");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// A correctly signed click, now.
async fn click(
    server: &Server,
    user: &str,
    action_id: &str,
    approval_id: &str,
    (channel, ts): (&str, &str),
) -> (u16, String) {
    let body = click_body(user, action_id, approval_id, channel, ts);
    let now = now_secs().to_string();
    let sig = signature(SIGNING_SECRET, &now, &body);
    post_callback(server, &body, &now, Some(&sig)).await
}

/// Every `text` of every text object in a block tree.
fn texts<'a>(v: &'a Value, out: &mut Vec<(&'a str, &'a str)>) {
    match v {
        Value::Object(m) => {
            if let (Some(Value::String(kind)), Some(Value::String(text))) =
                (m.get("type"), m.get("text"))
            {
                out.push((kind.as_str(), text.as_str()));
            }
            m.values().for_each(|x| texts(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| texts(x, out)),
        _ => {}
    }
}

async fn state_of(server: &Server, approval_id: &str) -> (ReqState, usize) {
    let c = server.central();
    let row = c
        .request_row(approval_id)
        .await
        .expect("read request")
        .expect("request exists");
    let rec = c.record(approval_id).await.expect("record");
    (row.state, rec.votes.len())
}

async fn started(env: &mut Env, peer: &SlackPeer) -> (Server, Agent) {
    configure(env, peer);
    let server = env.start().await;
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    apply_routed_rules(&server).await;
    agent.next_rules().await;
    (server, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_approve_decides_and_the_message_follows() {
    let peer = SlackPeer::start().await;
    let mut env = Env::sqlite().await;
    let (server, mut agent) = started(&mut env, &peer).await;

    // Slack is rate limiting at first: the post is retried, and made once.
    peer.state.refuse_posts.store(1, Ordering::SeqCst);
    let mut r = agent.request("r.1", "prod-db");
    r.unit = "evil<!here>.service".into();
    r.argv = vec![
        "python3".into(),
        "<!channel>".into(),
        "<@U0ADMIN>".into(),
        "<https://evil.example|click to approve>".into(),
        "a&b".into(),
        "\u{1b}[31mred".into(),
        "*bold* _it_ `code`".into(),
        "\u{202e}txt.exe".into(),
    ];
    let acc = agent.submit(r).await;
    let id = acc.approval_id.clone();

    let (post, channel, ts) = peer.posted(&id).await;
    assert_eq!(post.body["channel"], "#dba-oncall", "routed by the rule");
    assert_eq!(channel, "C0DBAONCALL");
    assert_eq!(post.body["mrkdwn"], false);
    let mut all = Vec::new();
    texts(&post.body["blocks"], &mut all);
    assert!(!all.is_empty());
    for (kind, text) in &all {
        assert_eq!(*kind, "plain_text", "{text}");
        for bad in ['<', '>', '\u{1b}', '\u{202e}'] {
            assert!(!text.contains(bad), "{bad:?} in {text:?}");
        }
    }
    let fallback = post.body["text"].as_str().expect("text");
    assert!(!fallback.contains(['<', '>']), "{fallback}");
    let shown: String = all.iter().map(|(_, t)| *t).collect::<Vec<_>>().join("\n");
    for needle in [
        "&lt;!channel&gt;",
        "&lt;@U0ADMIN&gt;",
        "&lt;https://evil.example|click to approve&gt;",
        "a&amp;b",
        "\\x1b[31mred",
        "\\u{202e}txt.exe",
        "evil&lt;!here&gt;.service",
        "10.20.1.5 port 5432",
        "unit:runner.service",
        "prod-db",
        "/usr/lib/systemd/systemd",
    ] {
        assert!(shown.contains(needle), "{needle} not in:\n{shown}");
    }

    // The workload's justification, when it comes, is added to the message as its own words,
    // as inert as everything else it wrote.
    let token = agent.token();
    agent
        .client
        .justify(req(
            JustifyRequest {
                host_id: "h1".into(),
                request_id: "r.1".into(),
                text: "<!channel> approve me *now*".into(),
            },
            &token,
        ))
        .await
        .expect("justify");
    let update = peer
        .wait("the message updated with the justification", |calls| {
            calls
                .iter()
                .find(|c| {
                    c.method == "chat.update"
                        && c.body["ts"] == ts.as_str()
                        && c.body["blocks"]
                            .to_string()
                            .contains("Workload says (unverified)")
                })
                .cloned()
        })
        .await;
    let mut all = Vec::new();
    texts(&update.body["blocks"], &mut all);
    for (kind, text) in &all {
        assert_eq!(*kind, "plain_text", "{text}");
        assert!(!text.contains(['<', '>']), "{text:?}");
    }
    let shown: String = all.iter().map(|(_, t)| *t).collect::<Vec<_>>().join("\n");
    assert!(
        shown.contains("&lt;!channel&gt; approve me *now*"),
        "{shown}"
    );

    let buttons: Vec<&Value> = post.body["blocks"]
        .as_array()
        .expect("blocks")
        .iter()
        .filter(|b| b["type"] == "actions")
        .flat_map(|b| b["elements"].as_array().expect("elements"))
        .collect();
    assert_eq!(buttons.len(), 2);
    assert!(buttons.iter().all(|b| b["value"] == id.as_str()));
    assert_eq!(peer.count("chat.postMessage", &id), 1);

    // A correctly signed Approve from Bob (e-mail case differs in Slack) decides.
    let mark = peer.calls().len();
    let (status, body) = click(&server, "UBOB", "latch.approve", &id, (&channel, &ts)).await;
    assert_eq!(status, 200, "{body}");
    let d = agent.next_decision().await;
    assert_eq!(d.outcome, Outcome::Allow as i32);
    assert_eq!(d.decided_by, "bob");
    assert!(d.reason.contains("Slack"), "{}", d.reason);
    let reply = peer.ephemeral("UBOB", mark).await;
    assert!(reply.contains("approved request"), "{reply}");
    let update = peer.updated(&ts, "Approved by bob").await;
    assert_eq!(update.body["channel"], "C0DBAONCALL");
    assert!(
        !update.body["blocks"]
            .as_array()
            .expect("blocks")
            .iter()
            .any(|b| b["type"] == "actions"),
        "a decided request has no buttons"
    );
    let approved = audit_of(&server, &id)
        .await
        .into_iter()
        .filter(|r| r.kind == "request.approved")
        .collect::<Vec<_>>();
    assert_eq!(approved.len(), 1);
    assert_eq!(approved[0].actor, "bob");

    // A click on a decided request changes nothing and says so.
    let mark = peer.calls().len();
    let (status, _) = click(&server, "UDAVE", "latch.deny", &id, (&channel, &ts)).await;
    assert_eq!(status, 200);
    let reply = peer.ephemeral("UDAVE", mark).await;
    assert!(reply.contains("already approved"), "{reply}");

    // Expiry and cancellation update their messages too (default channel: no route).
    let acc = agent.submit(agent.request("r.2", "quick-expiry")).await;
    let (post, channel, ts) = peer.posted(&acc.approval_id).await;
    assert_eq!(post.body["channel"], DEFAULT_CHANNEL);
    assert_eq!(channel, "C0APPROVALS");
    peer.updated(&ts, "Expired").await;
    let acc = agent.submit(agent.request("r.3", "two-person")).await;
    let (_, _, ts) = peer.posted(&acc.approval_id).await;
    let token = agent.token();
    agent
        .client
        .cancel_approval(req(
            CancelApprovalRequest {
                host_id: "h1".into(),
                request_id: "r.3".into(),
                reason: "the process <!channel> exited".into(),
            },
            &token,
        ))
        .await
        .expect("cancel");
    let update = peer.updated(&ts, "Cancelled").await;
    assert!(
        update.body.to_string().contains("&lt;!channel&gt;"),
        "{}",
        update.body
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_stale_and_replayed_callbacks_are_refused() {
    let peer = SlackPeer::start().await;
    let mut env = Env::sqlite().await;
    let (server, mut agent) = started(&mut env, &peer).await;
    let acc = agent.submit(agent.request("r.1", "two-person")).await;
    let id = acc.approval_id.clone();
    let (_, channel, ts) = peer.posted(&id).await;
    let body = click_body("UALICE", "latch.approve", &id, &channel, &ts);
    let now = now_secs().to_string();

    // Signed with another secret, signed over another body, unsigned, not hex.
    let forged = signature("not-the-signing-secret", &now, &body);
    let (status, text) = post_callback(&server, &body, &now, Some(&forged)).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("does not match"), "{text}");
    let other = signature(SIGNING_SECRET, &now, &body.replace("UALICE", "UBOB"));
    assert_eq!(
        post_callback(&server, &body, &now, Some(&other)).await.0,
        401
    );
    let (status, text) = post_callback(&server, &body, &now, None).await;
    assert_eq!(status, 401);
    assert!(text.contains("x-slack-signature"), "{text}");
    assert_eq!(
        post_callback(&server, &body, &now, Some("v0=not-hex"))
            .await
            .0,
        401
    );
    // The timestamp is part of what is signed: moving it breaks the signature.
    let sig = signature(SIGNING_SECRET, &now, &body);
    let later = (now_secs() + 1).to_string();
    assert_eq!(
        post_callback(&server, &body, &later, Some(&sig)).await.0,
        401
    );

    // Correctly signed, but too old or too far ahead (the window is 5 minutes).
    for ts_off in [-6 * 60, 6 * 60] {
        let t = (now_secs() + ts_off).to_string();
        let sig = signature(SIGNING_SECRET, &t, &body);
        let (status, text) = post_callback(&server, &body, &t, Some(&sig)).await;
        assert_eq!(status, 401, "{text}");
        assert!(text.contains("the window is 300 s"), "{text}");
    }
    let (status, text) = post_callback(&server, &body, "yesterday", Some(&sig)).await;
    assert_eq!(status, 401);
    assert!(text.contains("'yesterday'"), "{text}");
    assert_eq!(state_of(&server, &id).await, (ReqState::Pending, 0));

    // Accepted once: Alice's approval counts (one of two) ...
    let sig = signature(SIGNING_SECRET, &now, &body);
    let mark = peer.calls().len();
    let (status, text) = post_callback(&server, &body, &now, Some(&sig)).await;
    assert_eq!(status, 200, "{text}");
    let reply = peer.ephemeral("UALICE", mark).await;
    assert!(reply.contains("is counted: 1 of 2"), "{reply}");
    // ... and the very same callback again is a replay.
    let (status, text) = post_callback(&server, &body, &now, Some(&sig)).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("replay"), "{text}");
    assert_eq!(state_of(&server, &id).await, (ReqState::Pending, 1));
    peer.updated(&ts, "Approval needed").await;

    // A body that is not an interactive payload, correctly signed: refused as bad input.
    let junk = "payload=%7Bnot-json";
    let sig = signature(SIGNING_SECRET, &now, junk);
    let (status, text) = post_callback(&server, junk, &now, Some(&sig)).await;
    assert_eq!(status, 400, "{text}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_at_the_ends_of_the_range_are_refused_not_a_crash() {
    let peer = SlackPeer::start().await;
    let mut env = Env::sqlite().await;
    let (server, mut agent) = started(&mut env, &peer).await;
    let acc = agent.submit(agent.request("r.1", "two-person")).await;
    let id = acc.approval_id.clone();
    let (_, channel, ts) = peer.posted(&id).await;
    let body = click_body("UALICE", "latch.approve", &id, &channel, &ts);

    // Each correctly signed, so that only the time can refuse it. An overflow in a debug build
    // would panic in the handler, and the connection would close without an answer.
    let ten_years = 10 * 365 * 24 * 3600;
    for t in [
        i64::MIN.to_string(),
        i64::MAX.to_string(),
        (now_secs() + ten_years).to_string(),
        (now_secs() - ten_years).to_string(),
    ] {
        let sig = signature(SIGNING_SECRET, &t, &body);
        let (status, text) = post_callback(&server, &body, &t, Some(&sig)).await;
        assert_eq!(status, 401, "{t}: {text}");
        assert!(text.contains("the window is 300 s"), "{t}: {text}");
    }
    // Beyond i64, or no number at all: refused as unreadable, also before any signature check.
    for t in [
        "9223372036854775808",
        "-9223372036854775809",
        "1e10",
        "0x10",
    ] {
        let sig = signature(SIGNING_SECRET, t, &body);
        let (status, text) = post_callback(&server, &body, t, Some(&sig)).await;
        assert_eq!(status, 401, "{t}: {text}");
        assert!(
            text.contains("is not a Unix time in seconds"),
            "{t}: {text}"
        );
    }
    assert_eq!(state_of(&server, &id).await, (ReqState::Pending, 0));

    // The same server still takes a click signed now.
    let mark = peer.calls().len();
    let (status, text) = click(&server, "UALICE", "latch.approve", &id, (&channel, &ts)).await;
    assert_eq!(status, 200, "{text}");
    let reply = peer.ephemeral("UALICE", mark).await;
    assert!(reply.contains("is counted: 1 of 2"), "{reply}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_mapped_approvers_other_than_the_requester_decide() {
    let peer = SlackPeer::start().await;
    let mut env = Env::sqlite().await;
    let (server, mut agent) = started(&mut env, &peer).await;
    let mut r = agent.request("r.1", "prod-db");
    r.requester = "user:alice".into();
    let acc = agent.submit(r).await;
    let id = acc.approval_id.clone();
    let (_, channel, ts) = peer.posted(&id).await;
    let msg = (channel.as_str(), ts.as_str());

    for (user, needle) in [
        ("UMALLORY", "mallory@example.com is not a Latch reviewer"),
        ("UNOMAIL", "did not share your e-mail address"),
        (
            "UTYPED",
            "Slack has not confirmed that your e-mail address dave@example.com is yours",
        ),
        ("UNKNOWN1", "could not look you up in Slack"),
        ("UVIC", "'vic' is not an approver"),
        ("UALICE", "you cannot approve your own request"),
    ] {
        let mark = peer.calls().len();
        let (status, text) = click(&server, user, "latch.approve", &id, msg).await;
        assert_eq!(status, 200, "{user}: {text}");
        let reply = peer.ephemeral(user, mark).await;
        assert!(reply.contains(needle), "{user}: {reply}");
        assert!(reply.starts_with("Nothing was decided"), "{user}: {reply}");
        assert_eq!(
            state_of(&server, &id).await,
            (ReqState::Pending, 0),
            "{user}"
        );
    }
    // A click that claims to come from another message decides nothing either.
    let mark = peer.calls().len();
    click(
        &server,
        "UBOB",
        "latch.approve",
        &id,
        (&channel, "1.000001"),
    )
    .await;
    let reply = peer.ephemeral("UBOB", mark).await;
    assert!(reply.contains("not the message Latch posted"), "{reply}");
    assert_eq!(state_of(&server, &id).await, (ReqState::Pending, 0));

    // The refusals of people who are no reviewers are audited under their Slack id.
    let refused = audit_of(&server, &id)
        .await
        .into_iter()
        .filter(|r| r.kind == "request.decision_refused")
        .collect::<Vec<_>>();
    assert!(
        refused.iter().any(|r| r.actor == "slack:UMALLORY"),
        "{refused:?}"
    );

    // Alice may still deny her own request (only approving it is refused).
    let mark = peer.calls().len();
    click(&server, "UALICE", "latch.deny", &id, msg).await;
    let reply = peer.ephemeral("UALICE", mark).await;
    assert!(reply.contains("denied request"), "{reply}");
    let d = agent.next_decision().await;
    assert_eq!(
        (d.outcome, d.decided_by.as_str()),
        (Outcome::Deny as i32, "alice")
    );
    peer.updated(&ts, "Denied by alice").await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_two_reviewers_claim_decides_nothing() {
    let peer = SlackPeer::start().await;
    let mut env = Env::sqlite().await;
    configure(&mut env, &peer);
    for r in &mut env.config.reviewers {
        if r.subject == "carol" {
            r.email = "BOB@example.com".into();
        }
    }
    let server = env.start().await;
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    apply_routed_rules(&server).await;
    agent.next_rules().await;
    let acc = agent.submit(agent.request("r.1", "prod-db")).await;
    let id = acc.approval_id.clone();
    let (_, channel, ts) = peer.posted(&id).await;

    let mark = peer.calls().len();
    let (status, text) = click(&server, "UBOB", "latch.approve", &id, (&channel, &ts)).await;
    assert_eq!(status, 200, "{text}");
    let reply = peer.ephemeral("UBOB", mark).await;
    assert!(
        reply.starts_with("Nothing was decided")
            && reply.contains("Bob@Example.com belongs to 2 Latch reviewers"),
        "{reply}"
    );
    assert!(
        !reply.contains("carol"),
        "the clicker is not told who: {reply}"
    );
    assert_eq!(state_of(&server, &id).await, (ReqState::Pending, 0));
    let refused = audit_of(&server, &id)
        .await
        .into_iter()
        .filter(|r| r.kind == "request.decision_refused")
        .collect::<Vec<_>>();
    assert!(
        refused
            .iter()
            .any(|r| r.actor == "slack:UBOB" && r.payload_json.contains("bob, carol")),
        "{refused:?}"
    );
    server.shutdown().await;
}

/// The provider's groups and the roles central gives them.
fn oidc_config(idp: &latch_test_idp::TestIdp) -> latch_central::oidc::OidcConfig {
    let text = format!(
        "issuer = \"{}\"\naudiences = [\"{}\"]\n[roles]\n\"dba-oncall\" = \"approver\"\n",
        idp.issuer(),
        idp.api_audience()
    );
    toml::from_str(&text).expect("oidc config")
}

/// A login at central with a provider token, as `latchctl whoami` makes it.
async fn log_in(server: &Server, idp: &latch_test_idp::TestIdp, user: &str) {
    reviewer(server)
        .await
        .who_am_i(req(
            latch_proto::v1::WhoAmIRequest {},
            &idp.token(user).expect("token"),
        ))
        .await
        .unwrap_or_else(|e| panic!("{user} logs in: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_logins_count_only_for_verified_addresses_of_one_person() {
    let idp = latch_test_idp::TestIdp::start()
        .await
        .expect("start the test identity provider");
    idp.add_user("amir", "amir@example.com", &["dba-oncall"]);
    idp.add_user("olga", "olga@example.com", &["dba-oncall"]);
    idp.set_email_verified("olga", false).expect("olga");
    // Mallory's provider lets her put any address into her profile; it does not verify it.
    idp.add_user("mallory", "amir@example.com", &["dba-oncall"]);
    idp.set_email_verified("mallory", false).expect("mallory");
    // Eve's address was verified, wrongly or not: the provider vouches for it.
    idp.add_user("eve", "Amir@Example.com", &["dba-oncall"]);

    let peer = SlackPeer::start().await;
    let mut env = Env::sqlite().await;
    configure(&mut env, &peer);
    env.config.oidc = Some(oidc_config(&idp));
    env.config.validate().expect("valid config");
    let server = env.start().await;
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    apply_routed_rules(&server).await;
    agent.next_rules().await;
    let acc = agent.submit(agent.request("r.1", "prod-db")).await;
    let id = acc.approval_id.clone();
    let (_, channel, ts) = peer.posted(&id).await;
    let msg = (channel.as_str(), ts.as_str());

    // An unverified address maps to nobody, even its only claimant.
    log_in(&server, &idp, "olga").await;
    let mark = peer.calls().len();
    click(&server, "UOLGA", "latch.approve", &id, msg).await;
    let reply = peer.ephemeral("UOLGA", mark).await;
    assert!(
        reply.starts_with("Nothing was decided")
            && reply.contains("olga@example.com is not a Latch reviewer"),
        "{reply}"
    );
    assert_eq!(state_of(&server, &id).await, (ReqState::Pending, 0));

    // Amir logs in, then Mallory with his address unverified: the later login does not take
    // Amir's clicks over, and his own click still decides as him.
    log_in(&server, &idp, "amir").await;
    log_in(&server, &idp, "mallory").await;
    let mark = peer.calls().len();
    click(&server, "UAMIR", "latch.approve", &id, msg).await;
    let reply = peer.ephemeral("UAMIR", mark).await;
    assert!(reply.contains("approved request"), "{reply}");
    let d = agent.next_decision().await;
    assert_eq!(d.outcome, Outcome::Allow as i32);
    assert_eq!(d.decided_by, idp.subject_of("amir"));

    // A second subject with the same verified address: the address says nothing any more.
    log_in(&server, &idp, "eve").await;
    let acc = agent.submit(agent.request("r.2", "prod-db")).await;
    let id = acc.approval_id.clone();
    let (_, channel, ts) = peer.posted(&id).await;
    let mark = peer.calls().len();
    click(&server, "UAMIR", "latch.approve", &id, (&channel, &ts)).await;
    let reply = peer.ephemeral("UAMIR", mark).await;
    assert!(
        reply.starts_with("Nothing was decided")
            && reply.contains("amir@example.com belongs to 2 Latch reviewers"),
        "{reply}"
    );
    assert_eq!(state_of(&server, &id).await, (ReqState::Pending, 0));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_person_on_two_channels_at_once_counts_once() {
    let peer = SlackPeer::start().await;
    let mut env = Env::sqlite().await;
    let (server, mut agent) = started(&mut env, &peer).await;
    let acc = agent.submit(agent.request("r.1", "two-person")).await;
    let id = acc.approval_id.clone();
    let (_, channel, ts) = peer.posted(&id).await;

    let mut rv = reviewer(&server).await;
    let mark = peer.calls().len();
    let (grpc, (status, _)) = tokio::join!(
        rv.decide(req(
            DecideRequest {
                approval_id: id.clone(),
                kind: DecisionKind::ApproveOnce as i32,
                reason: "looks fine".into(),
                ..Default::default()
            },
            ALICE,
        )),
        click(&server, "UALICE", "latch.approve", &id, (&channel, &ts)),
    );
    assert_eq!(status, 200);
    let reply = peer.ephemeral("UALICE", mark).await;
    match grpc {
        Ok(r) => {
            assert!(!r.into_inner().r#final);
            assert!(reply.contains("already voted"), "{reply}");
        }
        Err(e) => {
            assert!(e.message().contains("already voted"), "{e:?}");
            assert!(reply.contains("is counted: 1 of 2"), "{reply}");
        }
    }
    assert_eq!(state_of(&server, &id).await, (ReqState::Pending, 1));
    peer.updated(&ts, "Approval needed").await;

    // A second person in the approver group completes it from Slack.
    click(&server, "UBOB", "latch.approve", &id, (&channel, &ts)).await;
    let d = agent.next_decision().await;
    assert_eq!(
        (d.outcome, d.decided_by.as_str()),
        (Outcome::Allow as i32, "bob")
    );
    peer.updated(&ts, "Approved by bob").await;
    assert_eq!(state_of(&server, &id).await, (ReqState::Approved, 2));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_post_and_update_once() {
    let Some(mut env) = Env::postgres().await else {
        return;
    };
    let peer = SlackPeer::start().await;
    configure(&mut env, &peer);
    let a = env.start().await;
    let b = env.start().await;
    let mut agent = Agent::connect(&a, "h1", vec![], vec![]).await;
    apply_routed_rules(&b).await;
    agent.next_rules().await;

    let acc = agent.submit(agent.request("r.1", "prod-db")).await;
    let id = acc.approval_id.clone();
    let (_, channel, ts) = peer.posted(&id).await;
    // The click lands on the other replica's web server.
    let (status, text) = click(&b, "UBOB", "latch.approve", &id, (&channel, &ts)).await;
    assert_eq!(status, 200, "{text}");
    let d = agent.next_decision().await;
    assert_eq!(d.decided_by, "bob");
    peer.updated(&ts, "Approved by bob").await;

    // Once the final state is shown the row is settled: neither replica touches it again.
    let settled = tokio::time::timeout(HANG, async {
        loop {
            let row = sqlx::query(
                "SELECT settled, lease_until_ms FROM notifications WHERE kind = 'slack' AND approval_id = $1",
            )
            .bind(&id)
            .fetch_one(a.central().store().pool())
            .await
            .expect("notification row");
            use sqlx::Row;
            let settled: i64 = row.try_get("settled").expect("settled");
            let lease: i64 = row.try_get("lease_until_ms").expect("lease");
            if settled == 1 && lease == 0 {
                return;
            }
            // Polling a database row; the pause only spares the CPU.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(settled.is_ok(), "the message never settled");
    assert_eq!(
        peer.count("chat.postMessage", &id),
        1,
        "{:#?}",
        peer.calls()
    );
    let finals = peer
        .calls()
        .iter()
        .filter(|c| {
            c.method == "chat.update"
                && c.body["ts"] == ts.as_str()
                && c.body["text"]
                    .as_str()
                    .is_some_and(|t| t.contains("Approved by bob"))
        })
        .count();
    assert_eq!(finals, 1, "{:#?}", peer.calls());
    b.shutdown().await;
    a.shutdown().await;
}

/// Audit records about request `approval_id`, as replica `server` reads them.
async fn audit_of(server: &Server, approval_id: &str) -> Vec<latch_central::chain::Record> {
    server
        .central()
        .store()
        .query_audit(
            &latch_central::store::AuditFilter {
                request_id: approval_id.into(),
                ..Default::default()
            },
            1000,
        )
        .await
        .expect("audit")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_replayed_to_another_replica_is_refused() {
    let Some(mut env) = Env::postgres().await else {
        return;
    };
    let peer = SlackPeer::start().await;
    configure(&mut env, &peer);
    let a = env.start_replica("a").await;
    let b = env.start_replica("b").await;
    let mut agent = Agent::connect(&a, "h1", vec![], vec![]).await;
    apply_routed_rules(&a).await;
    agent.next_rules().await;
    // Two approvals needed: the first one leaves the request open for a replay to act on.
    let acc = agent.submit(agent.request("r.1", "two-person")).await;
    let id = acc.approval_id.clone();
    let (_, channel, ts) = peer.posted(&id).await;

    // Alice's Approve, signed once, reaches replica A and counts.
    let body = click_body("UALICE", "latch.approve", &id, &channel, &ts);
    let now = now_secs().to_string();
    let sig = signature(SIGNING_SECRET, &now, &body);
    let mark = peer.calls().len();
    let (status, text) = post_callback(&a, &body, &now, Some(&sig)).await;
    assert_eq!(status, 200, "{text}");
    let reply = peer.ephemeral("UALICE", mark).await;
    assert!(reply.contains("is counted: 1 of 2"), "{reply}");
    let audited = audit_of(&a, &id).await;

    // The identical callback, delivered to replica B (a load balancer, or someone who captured
    // it), is a replay there too: refused before anything in it is acted on.
    let mark = peer.calls().len();
    let (status, text) = post_callback(&b, &body, &now, Some(&sig)).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("replay"), "{text}");
    assert_eq!(state_of(&b, &id).await, (ReqState::Pending, 1));
    let after = audit_of(&b, &id).await;
    assert_eq!(
        after.iter().map(|r| r.seq).collect::<Vec<_>>(),
        audited.iter().map(|r| r.seq).collect::<Vec<_>>(),
        "the replay left a trace: {after:#?}"
    );
    assert!(
        !peer.calls()[mark..]
            .iter()
            .any(|c| c.method == "chat.postEphemeral"),
        "the replay was answered in Slack: {:#?}",
        &peer.calls()[mark..]
    );

    // The request is still Alice's one approval away from done: Bob completes it on B.
    click(&b, "UBOB", "latch.approve", &id, (&channel, &ts)).await;
    let d = agent.next_decision().await;
    assert_eq!(
        (d.outcome, d.decided_by.as_str()),
        (Outcome::Allow as i32, "bob")
    );
    assert_eq!(state_of(&a, &id).await, (ReqState::Approved, 2));
    b.shutdown().await;
    a.shutdown().await;
}

/// The Web API as a stub that posts messages and never answers anything else: the update that
/// would show a decision hangs.
fn posts_only(path: &str) -> Option<String> {
    path.ends_with("/chat.postMessage").then(|| {
        json!({"ok": true, "channel": "C0APPROVALS", "ts": "1700000000.000001"}).to_string()
    })
}

/// A reviewer decides through the API while the Slack update that would show the decision hangs
/// unanswered: the decision completes and reaches the agent and a watcher while that update's
/// client is still waiting for Slack.
async fn a_decision_completes_while_slack_hangs(mut env: Env) {
    let chat = HangingChat::start(posts_only).await;
    configure_api(&mut env, format!("http://{}/api/", chat.addr));
    let server = env.start().await;
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    apply_rules(&server).await;
    agent.next_rules().await;
    let acc = agent.submit(agent.request("r.1", "prod-db")).await;
    let id = acc.approval_id.clone();
    chat.call("the post", |c| {
        c.path.ends_with("/chat.postMessage") && c.body.contains(&id)
    })
    .await;
    // Once the post is recorded and its lease let go, the decision's update is a delivery of its
    // own rather than a change an earlier delivery picks up.
    tokio::time::timeout(HANG, async {
        loop {
            let row = sqlx::query(
                "SELECT message_ref, lease_until_ms FROM notifications WHERE kind = 'slack' AND approval_id = $1",
            )
            .bind(&id)
            .fetch_optional(server.central().store().pool())
            .await
            .expect("notification row");
            if let Some(row) = row {
                use sqlx::Row;
                let posted: String = row.try_get("message_ref").expect("message_ref");
                let lease: i64 = row.try_get("lease_until_ms").expect("lease");
                if !posted.is_empty() && lease == 0 {
                    return;
                }
            }
            // Polling a database row; the pause only spares the CPU.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the post was never recorded");

    let mut rv = reviewer(&server).await;
    let mut watch = rv
        .watch_requests(req(WatchRequestsRequest {}, VIEWER))
        .await
        .expect("watch")
        .into_inner();
    let decided = tokio::time::timeout(
        HANG,
        rv.decide(req(
            DecideRequest {
                approval_id: id.clone(),
                kind: DecisionKind::ApproveOnce as i32,
                reason: "while Slack hangs".into(),
                ..Default::default()
            },
            ALICE,
        )),
    )
    .await
    .expect("the decision hung")
    .expect("decide")
    .into_inner();
    assert!(decided.r#final);
    let d = agent.next_decision().await;
    assert_eq!(
        (d.request_id.as_str(), d.outcome),
        ("r.1", Outcome::Allow as i32)
    );
    watched(&mut watch, &id, RequestState::Approved).await;
    let update = chat
        .call("the update showing the decision", |c| {
            c.path.ends_with("/chat.update")
        })
        .await;
    assert!(
        chat.with_call(update, ChatCall::still_waiting),
        "the update's client gave up before the decision was through: the decision waited for \
         Slack (calls: {:?})",
        chat.paths()
    );
    tokio::time::timeout(HANG, server.shutdown())
        .await
        .expect("shutdown with a Slack call unanswered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_completes_while_slack_hangs_on_sqlite() {
    a_decision_completes_while_slack_hangs(Env::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_completes_while_slack_hangs_on_postgres() {
    let Some(env) = Env::postgres().await else {
        return;
    };
    a_decision_completes_while_slack_hangs(env).await;
}

#[test]
fn slack_settings_are_checked_with_their_key() {
    let base = "[web]\nlisten = \"127.0.0.1:0\"\n[slack]\nbot_token_file = \"/t\"\nsigning_secret_file = \"/s\"\n";
    latch_central::Config::parse("c.toml", base).expect("minimal [slack]");
    for (extra, needle) in [
        (
            "replay_window = \"1h\"",
            "slack.replay_window '1h' must be between 30s and 15m",
        ),
        ("replay_window = \"soon\"", "slack.replay_window 'soon'"),
        (
            "api_base_url = \"ftp://slack.example\"",
            "slack.api_base_url 'ftp://slack.example'",
        ),
        (
            "api_base_url = \"not a url\"",
            "slack.api_base_url 'not a url'",
        ),
        (
            "default_channel = \"dba oncall\"",
            "slack.default_channel 'dba oncall' is not a Slack channel",
        ),
        ("channel = \"#x\"", "unknown field `channel`"),
    ] {
        let e =
            latch_central::Config::parse("c.toml", &format!("{base}{extra}\n")).expect_err(extra);
        assert!(e.to_string().contains(needle), "{extra}: {e}");
    }
    let e = latch_central::Config::parse(
        "c.toml",
        "[slack]\nbot_token_file = \"/t\"\nsigning_secret_file = \"/s\"\n",
    )
    .expect_err("no [web]");
    assert!(
        e.to_string().contains("slack: a [web] table is required"),
        "{e}"
    );
    let e = latch_central::Config::parse("c.toml", "[web]\n[slack]\nbot_token_file = \"/t\"\n")
        .expect_err("no secret");
    assert!(e.to_string().contains("signing_secret_file"), "{e}");
}

#[tokio::test]
async fn unreadable_or_empty_secret_files_stop_the_start() {
    let peer = SlackPeer::start().await;
    let mut env = Env::sqlite().await;
    configure(&mut env, &peer);
    let token = env.dir.path().join("slack-bot-token");
    std::fs::write(&token, "  \n").expect("write");
    let e = start_refused(&env.config).await;
    assert!(
        e.contains("slack.bot_token_file") && e.contains("is empty"),
        "{e}"
    );
    std::fs::remove_file(&token).expect("remove");
    let e = start_refused(&env.config).await;
    assert!(e.contains("slack.bot_token_file"), "{e}");
}

/// An automatic reviewer's answer, when it comes, is added to the request's message, in plain
/// text like everything else the message shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_automatic_reviewers_answer_is_added_to_the_message() {
    let peer = SlackPeer::start().await;
    let mut env = Env::sqlite().await;
    configure(&mut env, &peer);
    let secret = "a-secret-only-this-reviewer-and-central-know";
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let app = latch_reference_reviewer::router(
        secret.as_bytes().to_vec(),
        latch_reference_reviewer::Rules::default(),
    );
    tokio::spawn(async move { axum::serve(l, app).await });
    let secret_file = env.dir.path().join("reviewer.secret");
    std::fs::write(&secret_file, secret).expect("write secret");
    env.config.auto_reviewers = vec![latch_central::config::AutoReviewerConfig {
        name: "ref".into(),
        url: format!("http://{addr}/review"),
        secret_file,
        timeout: None,
        breaker_window: 20,
        breaker_max_approve_share: 0.9,
        breaker_max_failures: 3,
        breaker_cooldown: None,
    }];
    let server = env.start().await;
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    apply_yaml(
        &server,
        "rules.yaml",
        &routed_rules().replacen(
            "    notify: { slack: \"#dba-oncall\" }\n",
            "    notify: { slack: \"#dba-oncall\" }\n    review: [auto, human]\n    auto: { reviewer: ref }\n",
            1,
        ),
    )
    .await;
    agent.next_rules().await;
    let acc = agent.submit(agent.request("r.1", "prod-db")).await;
    let (posted, _, ts) = peer.posted(&acc.approval_id).await;
    // The answer may come before the message is first posted (then the post shows it) or after
    // (then an update does).
    let update = peer
        .wait("the message showing the automatic review", |calls| {
            calls
                .iter()
                .find(|c| {
                    ((c.method == "chat.update" && c.body["ts"] == ts.as_str())
                        || (c.method == "chat.postMessage" && c.body == posted.body))
                        && c.body["blocks"].to_string().contains("Automatic reviewer")
                })
                .cloned()
        })
        .await;
    let mut all = Vec::new();
    texts(&update.body["blocks"], &mut all);
    let shown: String = all.iter().map(|(_, t)| *t).collect::<Vec<_>>().join("\n");
    assert!(
        shown.contains("ref: escalate (confidence 0.00)")
            && shown.contains("port 5432 is not on this reviewer's list"),
        "{shown}"
    );
    server.shutdown().await;
}

/// A request that waits long enough gets one reminder in its message's thread, sent to the
/// channel too, `remind_before` ahead of its deadline (when it falls due, not at the next
/// sweep); a request that waits less than twice that gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reminder_is_posted_once_in_the_thread_before_the_deadline() {
    let peer = SlackPeer::start().await;
    let mut env = Env::sqlite().await;
    configure(&mut env, &peer);
    if let Some(s) = env.config.slack.as_mut() {
        s.remind_before = Some("4s".into());
    }
    let server = env.start().await;
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    let yaml = "workloads:\n  - name: ai-agents\n    cgroups: [\"/ai.slice/*\"]\nrules:\n  - {name: reminded, workload: ai-agents, on: connect, to: [\"10.20.0.0/16\"], action: approve, timeout: 10s, on_timeout: deny}\n  - {name: brief, workload: ai-agents, on: connect, to: [\"10.30.0.0/16\"], action: approve, timeout: 7s, on_timeout: deny}\n";
    let version = apply_yaml(&server, "remind.yaml", yaml).await;
    agent.next_rules().await;
    let request = |agent: &Agent, id: &str, rule: &str, address: &str| {
        let mut r = agent.request(id, "prod-db");
        r.rule_id = rule_id_in(yaml, rule);
        r.rule_name = rule.into();
        r.rules_version = version;
        if let Some(d) = r.destination.as_mut() {
            d.address = address.into();
        }
        r
    };
    let long = agent
        .submit(request(&agent, "rem.1", "reminded", "10.20.1.5"))
        .await
        .approval_id;
    let short = agent
        .submit(request(&agent, "rem.2", "brief", "10.30.1.5"))
        .await
        .approval_id;
    let (_, channel, ts) = peer.posted(&long).await;
    peer.posted(&short).await;
    let reminder = peer
        .wait("the reminder", |calls| {
            calls
                .iter()
                .find(|c| c.method == "chat.postMessage" && c.body["thread_ts"] == ts.as_str())
                .cloned()
        })
        .await;
    assert_eq!(reminder.body["channel"], channel.as_str());
    assert_eq!(reminder.body["reply_broadcast"], true);
    let text = reminder.body["text"].as_str().expect("text");
    assert!(text.starts_with("Reminder: "), "{text}");
    assert!(text.contains("10.20.1.5 port 5432"), "{text}");
    assert!(text.contains("then deny. Approvals: 0 of 1."), "{text}");
    // Both expire; only the first was reminded, once.
    for _ in [&long, &short] {
        let d = agent.next_decision().await;
        assert_eq!(d.state, RequestState::Expired as i32, "{d:?}");
    }
    peer.updated(&ts, "Expired").await;
    let threaded = peer
        .calls()
        .iter()
        .filter(|c| c.method == "chat.postMessage" && !c.body["thread_ts"].is_null())
        .count();
    assert_eq!(threaded, 1, "{:#?}", peer.calls());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_requests_are_one_message_and_one_click_decides_them_all() {
    let peer = SlackPeer::start().await;
    let mut env = Env::sqlite().await;
    let (server, mut agent) = started(&mut env, &peer).await;
    let first = agent
        .submit(agent.request("m.1", "prod-db"))
        .await
        .approval_id;
    let (_, channel, ts) = peer.posted(&first).await;
    let second = agent
        .submit(agent.request("m.2", "prod-db"))
        .await
        .approval_id;
    let counted = peer
        .wait("the message updated with the count", |calls| {
            calls
                .iter()
                .find(|c| {
                    c.method == "chat.update"
                        && c.body["ts"] == ts.as_str()
                        && c.body["blocks"].to_string().contains("Identical requests")
                })
                .cloned()
        })
        .await;
    let mut all = Vec::new();
    texts(&counted.body["blocks"], &mut all);
    let shown: String = all.iter().map(|(_, t)| *t).collect::<Vec<_>>().join("\n");
    assert!(
        shown.contains("1 more waiting; a decision here decides all 2"),
        "{shown}"
    );

    let (status, body) = click(&server, "UBOB", "latch.approve", &first, (&channel, &ts)).await;
    assert_eq!(status, 200, "{body}");
    let mut decided = std::collections::BTreeMap::new();
    for _ in 0..2 {
        let d = agent.next_decision().await;
        decided.insert(d.request_id.clone(), (d.outcome, d.decided_by.clone()));
    }
    for id in ["m.1", "m.2"] {
        assert_eq!(
            decided.get(id),
            Some(&(Outcome::Allow as i32, "bob".to_string())),
            "{decided:?}"
        );
    }
    let done = peer.updated(&ts, "Approved by bob").await;
    assert!(
        done.body["blocks"]
            .to_string()
            .contains("1 more, resolved with this one"),
        "{}",
        done.body
    );
    // The request that waited with the first never had a message of its own.
    assert_eq!(
        peer.count("chat.postMessage", &second),
        0,
        "{:#?}",
        peer.calls()
    );
    server.shutdown().await;
}
