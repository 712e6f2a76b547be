//! Microsoft Teams cards end to end, over real HTTP: central posts to a local incoming-webhook
//! endpoint that answers like Teams; each request gets one Adaptive Card with the context
//! (workload text only in non-Markdown runs, escaped) and a link to the request in the console,
//! and one more card when the workload explains itself later; a decision completes while the
//! webhook leaves the card unanswered.

mod common;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    body::Bytes,
    extract::State,
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
    Router,
};
use common::*;
use latch_central::{
    config::{TeamsConfig, WebConfig},
    Server,
};
use latch_proto::v1::{
    DecideRequest, DecisionKind, JustifyRequest, Outcome, RequestState, WatchRequestsRequest,
};
use serde_json::Value;

const PUBLIC_URL: &str = "https://latch.example.com";

#[derive(Default)]
struct Hook {
    cards: Mutex<Vec<Value>>,
    changed: tokio::sync::Notify,
}

async fn webhook(State(h): State<Arc<Hook>>, headers: HeaderMap, body: Bytes) -> Response {
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            "Bad payload received by generic incoming webhook.",
        )
            .into_response();
    };
    if !json_type || v["type"] != "message" {
        return (
            StatusCode::BAD_REQUEST,
            "Bad payload received by generic incoming webhook.",
        )
            .into_response();
    }
    h.cards.lock().expect("cards").push(v);
    h.changed.notify_waiters();
    // What a Teams connector webhook answers on success.
    (StatusCode::OK, "1").into_response()
}

/// A local Teams incoming-webhook endpoint.
struct TeamsPeer {
    addr: SocketAddr,
    hook: Arc<Hook>,
}

impl TeamsPeer {
    async fn start() -> TeamsPeer {
        let hook = Arc::new(Hook::default());
        let app = Router::new()
            .route("/webhookb2/{*rest}", post(webhook))
            .with_state(hook.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(l, app).await });
        TeamsPeer { addr, hook }
    }

    fn url(&self) -> String {
        format!(
            "http://{}/webhookb2/0000-1111/IncomingWebhook/abc/def",
            self.addr
        )
    }

    fn cards(&self) -> Vec<Value> {
        self.hook.cards.lock().expect("cards").clone()
    }

    async fn card_for(&self, approval_id: &str) -> Value {
        self.cards_for(approval_id, 1).await.remove(0)
    }

    /// The first `n` cards that name `approval_id`, once there are that many.
    async fn cards_for(&self, approval_id: &str, n: usize) -> Vec<Value> {
        tokio::time::timeout(HANG, async {
            loop {
                let changed = self.hook.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let found: Vec<Value> = self
                    .cards()
                    .into_iter()
                    .filter(|c| c.to_string().contains(approval_id))
                    .collect();
                if found.len() >= n {
                    return found;
                }
                changed.await;
            }
        })
        .await
        .expect("card posted")
    }
}

/// A SQLite environment whose central posts Teams cards to `peer` (the webhook URL in a file,
/// as in production), with the console's public URL the cards link to.
async fn teams_env(peer: &TeamsPeer) -> Env {
    let mut env = Env::sqlite().await;
    let url_file = env.dir.path().join("teams-webhook");
    std::fs::write(&url_file, format!("{}\n", peer.url())).expect("write webhook file");
    env.config.web = Some(WebConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        public_url: Some(PUBLIC_URL.into()),
        ..Default::default()
    });
    env.config.teams = Some(TeamsConfig {
        webhook_url_file: Some(url_file),
        webhook_url: None,
    });
    env
}

/// Every element of a card body with its type.
fn elements<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(m) => {
            if m.get("type").is_some() {
                out.push(v);
            }
            m.values().for_each(|x| elements(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| elements(x, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_card_per_request_with_escaped_context_and_a_console_link() {
    let peer = TeamsPeer::start().await;
    let env = teams_env(&peer).await;
    let server = env.start().await;
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    apply_rules(&server).await;
    agent.next_rules().await;

    let mut r = agent.request("r.1", "two-person");
    r.argv = vec![
        "psql".into(),
        "[approve me](https://evil.example)".into(),
        "**urgent**".into(),
        "{{DATE(2030-01-01T00:00:00Z, SHORT)}}".into(),
        "<at>admins</at>".into(),
        "\u{1b}]0;title\u{7}".into(),
    ];
    let acc = agent.submit(r).await;
    let id = acc.approval_id.clone();
    let card = peer.card_for(&id).await;
    assert_eq!(
        card["attachments"][0]["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    let content = &card["attachments"][0]["content"];
    assert_eq!(content["type"], "AdaptiveCard");
    let actions = content["actions"].as_array().expect("actions");
    assert_eq!(actions.len(), 1, "no decide buttons: {actions:?}");
    assert_eq!(actions[0]["type"], "Action.OpenUrl");
    assert_eq!(actions[0]["url"], format!("{PUBLIC_URL}/requests/{id}"));

    let mut all = Vec::new();
    elements(&content["body"], &mut all);
    // Markdown-rendering TextBlocks carry only Latch's own words; everything else is in runs.
    for e in &all {
        if e["type"] == "TextBlock" {
            let t = e["text"].as_str().expect("text");
            assert!(!t.contains("evil") && !t.contains("psql"), "{t}");
        }
    }
    let runs: String = all
        .iter()
        .filter(|e| e["type"] == "TextRun")
        .map(|e| e["text"].as_str().expect("run text"))
        .collect::<Vec<_>>()
        .join("\n");
    for needle in [
        "[approve me](https://evil.example)",
        "**urgent**",
        "{\u{200b}{DATE(",
        "<at>admins</at>",
        "\\x1b]0;title\\x07",
        "/usr/bin/psql",
        "unit:runner.service",
        "two-person",
        "0 of 2 so far; groups: dba-oncall",
    ] {
        assert!(runs.contains(needle), "{needle} not in:\n{runs}");
    }
    assert!(!runs.contains("{{") && !runs.contains('\u{1b}'), "{runs}");

    // A justification given after the card was posted comes as a second card, the workload's
    // words in runs like every other text of its own.
    let token = agent.token();
    agent
        .client
        .justify(req(
            JustifyRequest {
                host_id: "h1".into(),
                request_id: "r.1".into(),
                text: "[approve me](https://evil.example) {{DATE(2030-01-01T00:00:00Z, SHORT)}}"
                    .into(),
            },
            &token,
        ))
        .await
        .expect("justify");
    let second = peer.cards_for(&id, 2).await.remove(1);
    let mut all = Vec::new();
    elements(&second["attachments"][0]["content"]["body"], &mut all);
    let runs: Vec<&str> = all
        .iter()
        .filter(|e| e["type"] == "TextRun")
        .filter_map(|e| e["text"].as_str())
        .collect();
    assert!(
        runs.contains(
            &"[approve me](https://evil.example) {\u{200b}{DATE(2030-01-01T00:00:00Z, SHORT)}}"
        ),
        "{runs:?}"
    );
    assert!(runs.contains(&"Workload says (unverified): "), "{runs:?}");
    for e in &all {
        if e["type"] == "TextBlock" {
            let t = e["text"].as_str().expect("text");
            assert!(!t.contains("evil"), "{t}");
        }
    }
    assert_eq!(
        second["attachments"][0]["content"]["actions"][0]["url"],
        format!("{PUBLIC_URL}/requests/{id}")
    );

    // Deciding does not post again: an incoming webhook cannot update a card.
    let mut rv = reviewer(&server).await;
    for token in [ALICE, BOB] {
        rv.decide(req(
            DecideRequest {
                approval_id: id.clone(),
                kind: DecisionKind::ApproveOnce as i32,
                reason: "ok".into(),
                ..Default::default()
            },
            token,
        ))
        .await
        .expect("decide");
    }
    agent.next_decision().await;
    let acc2 = agent.submit(agent.request("r.2", "prod-db")).await;
    peer.card_for(&acc2.approval_id).await;
    // Settled when its justification was posted: nothing can follow.
    wait_settled(&server, &id).await;
    let for_first = peer
        .cards()
        .iter()
        .filter(|c| c.to_string().contains(&id))
        .count();
    assert_eq!(for_first, 2);

    // A request decided without a justification settles with its decision, after one card.
    let id2 = acc2.approval_id.clone();
    rv.decide(req(
        DecideRequest {
            approval_id: id2.clone(),
            kind: DecisionKind::Deny as i32,
            reason: "no".into(),
            ..Default::default()
        },
        ALICE,
    ))
    .await
    .expect("decide");
    agent.next_decision().await;
    wait_settled(&server, &id2).await;
    let for_second = peer
        .cards()
        .iter()
        .filter(|c| c.to_string().contains(&id2))
        .count();
    assert_eq!(for_second, 1);
    server.shutdown().await;
}

/// Waits until the Teams delivery of `approval_id` needs no more work.
async fn wait_settled(server: &Server, approval_id: &str) {
    tokio::time::timeout(HANG, async {
        loop {
            let settled: i64 = {
                use sqlx::Row;
                sqlx::query(
                    "SELECT settled FROM notifications WHERE kind = 'teams' AND approval_id = $1",
                )
                .bind(approval_id)
                .fetch_one(server.central().store().pool())
                .await
                .expect("row")
                .try_get("settled")
                .expect("settled")
            };
            if settled == 1 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the Teams delivery of {approval_id} settles"))
}

/// A webhook that takes every card and never answers.
fn never_answers(_: &str) -> Option<String> {
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_completes_while_the_webhook_hangs() {
    let chat = HangingChat::start(never_answers).await;
    let mut env = Env::sqlite().await;
    env.config.web = Some(WebConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        public_url: Some(PUBLIC_URL.into()),
        ..Default::default()
    });
    env.config.teams = Some(TeamsConfig {
        webhook_url_file: None,
        webhook_url: Some(format!(
            "http://{}/webhookb2/0000-1111/IncomingWebhook/abc/def",
            chat.addr
        )),
    });
    let server = env.start().await;
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    apply_rules(&server).await;
    agent.next_rules().await;
    let acc = agent.submit(agent.request("r.1", "prod-db")).await;
    let id = acc.approval_id.clone();
    let card = chat.call("the card", |c| c.body.contains(&id)).await;

    // A reviewer decides through the API while the card's post is unanswered.
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
                kind: DecisionKind::Deny as i32,
                reason: "while Teams hangs".into(),
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
        ("r.1", Outcome::Deny as i32)
    );
    watched(&mut watch, &id, RequestState::Denied).await;
    assert!(
        chat.with_call(card, ChatCall::still_waiting),
        "the card's client gave up before the decision was through: the decision waited for \
         Teams (calls: {:?})",
        chat.paths()
    );
    tokio::time::timeout(HANG, server.shutdown())
        .await
        .expect("shutdown with a card unanswered");
}

#[test]
fn teams_settings_are_checked_with_their_key() {
    let web = "[web]\nlisten = \"127.0.0.1:0\"\npublic_url = \"https://latch.example.com\"\n";
    latch_central::Config::parse(
        "c.toml",
        &format!("{web}[teams]\nwebhook_url_file = \"/etc/latch/teams-webhook\"\n"),
    )
    .expect("valid [teams]");
    for (text, needle) in [
        (
            format!("{web}[teams]\n"),
            "teams: webhook_url_file (or webhook_url) is required",
        ),
        (
            format!(
                "{web}[teams]\nwebhook_url = \"https://x.example/h\"\nwebhook_url_file = \"/f\"\n"
            ),
            "not both",
        ),
        (
            format!("{web}[teams]\nwebhook_url = \"not a url\"\n"),
            "teams.webhook_url: not a URL",
        ),
        (
            "[web]\n[teams]\nwebhook_url_file = \"/f\"\n".to_string(),
            "teams: web.public_url is required",
        ),
        (
            "[teams]\nwebhook_url_file = \"/f\"\n".to_string(),
            "teams: web.public_url is required",
        ),
        (
            format!("{web}[teams]\nurl = \"https://x.example/h\"\n"),
            "unknown field `url`",
        ),
    ] {
        let e = latch_central::Config::parse("c.toml", &text).expect_err(&text);
        assert!(e.to_string().contains(needle), "{text}: {e}");
    }
}

#[tokio::test]
async fn a_webhook_file_that_is_not_a_url_stops_the_start() {
    let mut env = Env::sqlite().await;
    let url_file = env.dir.path().join("teams-webhook");
    std::fs::write(&url_file, "paste the URL here\n").expect("write");
    env.config.web = Some(WebConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        public_url: Some(PUBLIC_URL.into()),
        ..Default::default()
    });
    env.config.teams = Some(TeamsConfig {
        webhook_url_file: Some(url_file),
        webhook_url: None,
    });
    let e = start_refused(&env.config).await;
    assert!(e.contains("teams.webhook_url_file"), "{e}");
}

/// An automatic reviewer's answer that arrives after the request's card was posted comes as one
/// more card, with the request's deadline; the first card did not have it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_automatic_reviewers_later_answer_comes_as_one_more_card() {
    const SECRET: &str = "teams-test-reviewer-secret-0123456789";
    let peer = TeamsPeer::start().await;
    // The reviewer answers only once the first card is seen, so the order is the test's.
    let gate = Arc::new(tokio::sync::Notify::new());
    let g = gate.clone();
    let reviewer_app = Router::new().route(
        "/review",
        post(move |body: Bytes| {
            let g = g.clone();
            async move {
                let Ok(r) =
                    serde_json::from_slice::<latch_central::auto_protocol::ReviewRequest>(&body)
                else {
                    return (StatusCode::BAD_REQUEST, "not a request").into_response();
                };
                g.notified().await;
                latch_reference_reviewer::signed(
                    SECRET.as_bytes(),
                    &latch_central::auto_protocol::ReviewAnswer {
                        approval_id: r.approval_id,
                        reviewer: r.reviewer,
                        verdict: latch_central::auto_protocol::Verdict::Approve,
                        rationale: "a read-only replica port".into(),
                        confidence: 0.9,
                    },
                )
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let reviewer_addr = l.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(l, reviewer_app).await });

    let mut env = teams_env(&peer).await;
    let secret_file = env.dir.path().join("reviewer.secret");
    std::fs::write(&secret_file, SECRET).expect("write secret");
    env.config.auto_reviewers = vec![latch_central::config::AutoReviewerConfig {
        name: "advisor".into(),
        url: format!("http://{reviewer_addr}/review"),
        secret_file,
        timeout: Some("30s".into()),
        breaker_window: 4,
        breaker_max_approve_share: 1.0,
        breaker_max_failures: 100,
        breaker_cooldown: Some("1h".into()),
    }];
    let server = env.start().await;
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    let yaml = "workloads:\n  - name: ai-agents\n    cgroups: [\"/ai.slice/*\"]\nrules:\n  - {name: advice, workload: ai-agents, on: connect, to: [\"10.20.0.0/16\"], action: approve,\n     review: [auto, human], auto: {reviewer: advisor, advisory: true}}\n";
    let version = apply_yaml(&server, "advice.yaml", yaml).await;
    agent.next_rules().await;
    let mut r = agent.request("adv.1", "prod-db");
    r.rule_id = rule_id_in(yaml, "advice");
    r.rule_name = "advice".into();
    r.workload = "ai-agents".into();
    r.rules_version = version;
    let id = agent.submit(r).await.approval_id;

    let first = peer.card_for(&id).await;
    assert!(!first.to_string().contains("Automatic reviewer"), "{first}");
    gate.notify_one();
    let second = peer.cards_for(&id, 2).await.remove(1);
    let mut all = Vec::new();
    elements(&second["attachments"][0]["content"]["body"], &mut all);
    let runs: Vec<&str> = all
        .iter()
        .filter(|e| e["type"] == "TextRun")
        .filter_map(|e| e["text"].as_str())
        .collect();
    assert!(runs.contains(&"Automatic reviewer: "), "{runs:?}");
    assert!(runs.contains(&"Deadline: "), "{runs:?}");
    assert!(
        runs.iter().any(|r| r.contains("a read-only replica port")),
        "{runs:?}"
    );
    assert!(
        !runs.contains(&"Workload says (unverified): "),
        "nothing was justified: {runs:?}"
    );
    server.shutdown().await;
}
