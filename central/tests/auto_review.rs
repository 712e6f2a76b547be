//! The `auto` review step end to end over real HTTP: central posts each request of a rule with
//! `auto` to the reviewer the rule names (the reference reviewer, and reviewers that misbehave),
//! signed; a verified answer approves, denies or escalates; an advisory one is only shown; a
//! slow, garbled, forged or misdirected answer decides nothing; a reviewer that approves too
//! much is switched to escalate-only; a rule without `auto` never reaches a reviewer.

mod common;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{
    body::Bytes,
    extract::{Path, State},
    response::{IntoResponse, Response},
    routing::post,
    Router,
};
use common::*;
use latch_central::{
    auto_protocol::{ReviewAnswer, ReviewRequest, Verdict},
    config::AutoReviewerConfig,
    Server,
};
use latch_proto::v1::{
    ApplyRulesRequest, ApprovalRecord, AutoRecommendation, GetRequestRequest, Outcome, RequestState,
};

const SECRET: &str = "reviewer-secret-0123456789abcdefghij";

/// Each reviewer's own secret (central refuses two reviewers sharing one).
fn secret_of(reviewer: &str) -> String {
    format!("{SECRET}-{reviewer}")
}

const RULES: &str = r#"
workloads:
  - name: ai-agents
    cgroups: ["/ai.slice/*"]
rules:
  - {name: web, workload: ai-agents, on: connect, to: ["10.1.0.0/16"], action: approve,
     review: [auto, human], auto: {reviewer: ref}}
  - {name: advice, workload: ai-agents, on: connect, to: ["10.2.0.0/16"], action: approve,
     review: [auto, human], auto: {reviewer: ref, advisory: true}}
  - {name: machine, workload: ai-agents, on: connect, to: ["10.3.0.0/16"], action: approve,
     review: [auto], auto: {reviewer: ref}}
  - {name: slow, workload: ai-agents, on: connect, to: ["10.4.0.0/16"], action: approve,
     review: [auto, human], auto: {reviewer: slow}}
  - {name: garbage, workload: ai-agents, on: connect, to: ["10.5.0.0/16"], action: approve,
     review: [auto, human], auto: {reviewer: garbage}}
  - {name: forged, workload: ai-agents, on: connect, to: ["10.6.0.0/16"], action: approve,
     review: [auto, human], auto: {reviewer: forged}}
  - {name: other, workload: ai-agents, on: connect, to: ["10.7.0.0/16"], action: approve,
     review: [auto, human], auto: {reviewer: other}}
  - {name: error, workload: ai-agents, on: connect, to: ["10.9.0.0/16"], action: approve,
     review: [auto, human], auto: {reviewer: error}}
  - {name: eager, workload: ai-agents, on: connect, to: ["10.8.0.0/16"], action: approve,
     review: [auto, human], auto: {reviewer: eager}}
  - {name: people, workload: ai-agents, on: connect, to: ["10.10.0.0/16"], action: approve}
  - {name: gated, workload: ai-agents, on: connect, to: ["10.11.0.0/16"], action: approve,
     review: [auto, human], auto: {reviewer: gated}}
"#;

/// Reviewers that misbehave, by path; each counts its calls.
#[derive(Default)]
struct Bad {
    calls: AtomicUsize,
    /// Calls to `gated`, which approves once `open` is set.
    gated_calls: AtomicUsize,
    open: std::sync::atomic::AtomicBool,
    /// SHA-256 (hex) of each body received.
    bodies: std::sync::Mutex<Vec<String>>,
}

async fn bad(State(b): State<Arc<Bad>>, Path(mode): Path<String>, body: Bytes) -> Response {
    b.calls.fetch_add(1, Ordering::SeqCst);
    {
        use sha2::Digest;
        b.bodies
            .lock()
            .expect("bodies")
            .push(hex::encode(sha2::Sha256::digest(&body)));
    }
    let Ok(req) = serde_json::from_slice::<ReviewRequest>(&body) else {
        return (axum::http::StatusCode::BAD_REQUEST, "not a request").into_response();
    };
    let key = secret_of(&mode);
    let answer = |id: &str| ReviewAnswer {
        approval_id: id.into(),
        reviewer: req.reviewer.clone(),
        verdict: Verdict::Approve,
        rationale: "looks fine".into(),
        confidence: 0.99,
    };
    match mode.as_str() {
        "slow" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            latch_reference_reviewer::signed(key.as_bytes(), &answer(&req.approval_id))
        }
        "garbage" => latch_reference_reviewer::signed(
            key.as_bytes(),
            &ReviewAnswer {
                confidence: 7.0,
                ..answer(&req.approval_id)
            },
        ),
        "error" => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "model unavailable",
        )
            .into_response(),
        "forged" => latch_reference_reviewer::signed(
            b"not the shared secret at all, but long",
            &answer(&req.approval_id),
        ),
        "other" => latch_reference_reviewer::signed(key.as_bytes(), &answer("another-request")),
        "gated" => {
            b.gated_calls.fetch_add(1, Ordering::SeqCst);
            while !b.open.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            latch_reference_reviewer::signed(key.as_bytes(), &answer(&req.approval_id))
        }
        _ => latch_reference_reviewer::signed(key.as_bytes(), &answer(&req.approval_id)),
    }
}

async fn serve(app: Router) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

/// A reviewer given time to answer even on a loaded machine; a test of the timeout itself sets
/// a short one.
fn reviewer(name: &str, url: String, secret_file: &std::path::Path) -> AutoReviewerConfig {
    AutoReviewerConfig {
        name: name.into(),
        url,
        secret_file: secret_file.to_path_buf(),
        timeout: Some("60s".into()),
        breaker_window: 4,
        breaker_max_approve_share: 0.5,
        breaker_max_failures: 100,
        breaker_cooldown: Some("1h".into()),
    }
}

async fn record(server: &Server, id: &str) -> ApprovalRecord {
    reviewer_client(server)
        .await
        .get_request(req(
            GetRequestRequest {
                approval_id: id.into(),
            },
            VIEWER,
        ))
        .await
        .expect("get")
        .into_inner()
}

async fn reviewer_client(
    server: &Server,
) -> latch_proto::v1::reviewer_service_client::ReviewerServiceClient<tonic::transport::Channel> {
    common::reviewer(server).await
}

/// The decision the agent is sent for `approval_id` (others may come first).
async fn decision_for(agent: &mut Agent, approval_id: &str) -> latch_proto::v1::Decision {
    loop {
        let d = agent.next_decision().await;
        if d.approval_id == approval_id {
            return d;
        }
    }
}

/// Waits until the request's reviewer has answered (or failed to).
async fn recommended(server: &Server, id: &str) -> (ApprovalRecord, AutoRecommendation) {
    tokio::time::timeout(HANG, async {
        loop {
            let r = record(server, id).await;
            if let Some(rec) = r.recommendation.clone() {
                return (r, rec);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no automatic review of {id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_automatic_reviewer_decides_recommends_or_escalates() {
    let secrets = tempfile::tempdir().expect("secrets");
    let secret_file = |name: &str| {
        let p = secrets.path().join(format!("{name}.secret"));
        std::fs::write(&p, format!("{}\n", secret_of(name))).expect("write secret");
        p
    };
    let reference = serve(latch_reference_reviewer::router(
        secret_of("ref").into_bytes(),
        latch_reference_reviewer::Rules {
            approve_ports: vec![443],
            approve_programs: vec![],
            deny_words: vec!["drop table".into()],
        },
    ))
    .await;
    let bad_state = Arc::new(Bad::default());
    let misbehaving = serve(
        Router::new()
            .route("/{mode}", post(bad))
            .with_state(bad_state.clone()),
    )
    .await;

    let mut env = Env::sqlite().await;
    env.config.auto_reviewers = vec![reviewer(
        "ref",
        format!("http://{reference}/review"),
        &secret_file("ref"),
    )];
    for mode in [
        "slow", "garbage", "error", "forged", "other", "eager", "gated",
    ] {
        let mut r = reviewer(
            mode,
            format!("http://{misbehaving}/{mode}"),
            &secret_file(mode),
        );
        if mode == "slow" {
            // It answers after 30 s: past this timeout.
            r.timeout = Some("1s".into());
        }
        env.config.auto_reviewers.push(r);
    }
    let server = env.start().await;
    let mut admin = common::reviewer(&server).await;
    // A rule naming a reviewer central does not have is refused, with its rule and line.
    let e = admin
        .apply_rules(req(
            ApplyRulesRequest {
                source_name: "auto.yaml".into(),
                yaml: format!(
                    "{RULES}  - {{name: unknown, workload: ai-agents, on: connect, to: [\"10.9.0.0/16\"], action: approve,\n     review: [auto, human], auto: {{reviewer: nobody}}}}\n"
                ),
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .expect_err("an unknown reviewer");
    assert!(
        e.message().contains("rule 'unknown'")
            && e.message().contains("`auto.reviewer` 'nobody' is not one of central's [[auto_reviewers]] (configured: eager, error, forged, garbage, gated, other, ref, slow)"),
        "{e}"
    );
    apply_yaml(&server, "auto.yaml", RULES).await;
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    agent.next_rules().await;
    let connect = |agent: &Agent, id: &str, rule: &str, port: u32, argv: &[&str]| {
        let mut r = agent.request(id, "prod-db");
        r.rule_id = rule_id_in(RULES, rule);
        r.rule_name = rule.into();
        if let Some(d) = r.destination.as_mut() {
            d.port = port;
        }
        r.argv = argv.iter().map(|a| a.to_string()).collect();
        r
    };

    // Approved by the reviewer: the agent is told, as `auto:ref`.
    let acc = agent
        .submit(connect(&agent, "1", "web", 443, &["curl"]))
        .await;
    assert_eq!(acc.state, RequestState::Pending as i32);
    let d = decision_for(&mut agent, &acc.approval_id).await;
    assert_eq!(
        (d.approval_id.as_str(), d.outcome, d.decided_by.as_str()),
        (acc.approval_id.as_str(), Outcome::Allow as i32, "auto:ref")
    );
    let (_, rec) = recommended(&server, &acc.approval_id).await;
    assert!(rec.decided && rec.verdict == "approve", "{rec:?}");
    assert_eq!(rec.rationale, "port 443 is on this reviewer's list");

    // Denied by it.
    let acc = agent
        .submit(connect(
            &agent,
            "2",
            "web",
            443,
            &["psql", "-c", "DROP TABLE orders"],
        ))
        .await;
    let d = decision_for(&mut agent, &acc.approval_id).await;
    assert_eq!(
        (d.approval_id.as_str(), d.outcome, d.decided_by.as_str()),
        (acc.approval_id.as_str(), Outcome::Deny as i32, "auto:ref")
    );

    // Escalated: a person decides, with the reviewer's words beside the request.
    let acc = agent
        .submit(connect(&agent, "3", "web", 5432, &["psql"]))
        .await;
    let (r, rec) = recommended(&server, &acc.approval_id).await;
    assert_eq!(r.state, RequestState::Pending as i32);
    assert_eq!((rec.verdict.as_str(), rec.decided), ("escalate", false));
    let decided = admin
        .decide(req(
            latch_proto::v1::DecideRequest {
                approval_id: acc.approval_id.clone(),
                kind: latch_proto::v1::DecisionKind::ApproveOnce as i32,
                reason: "checked".into(),
                ..Default::default()
            },
            ALICE,
        ))
        .await
        .expect("a person decides")
        .into_inner();
    assert_eq!(
        decided
            .request
            .and_then(|r| r.decision)
            .map(|d| d.decided_by),
        Some("alice".to_string())
    );

    // Advisory: the approval is shown, not applied.
    let acc = agent
        .submit(connect(&agent, "4", "advice", 443, &["curl"]))
        .await;
    let (r, rec) = recommended(&server, &acc.approval_id).await;
    assert_eq!(r.state, RequestState::Pending as i32);
    assert_eq!((rec.verdict.as_str(), rec.decided), ("approve", false));
    assert!(rec.note.contains("advisory"), "{rec:?}");

    // A chain without people: what the reviewer does not decide is denied.
    let acc = agent
        .submit(connect(&agent, "5", "machine", 5432, &["psql"]))
        .await;
    let d = decision_for(&mut agent, &acc.approval_id).await;
    assert_eq!(
        (d.approval_id.as_str(), d.outcome, d.decided_by.as_str()),
        (
            acc.approval_id.as_str(),
            Outcome::Deny as i32,
            "review-chain"
        )
    );

    // Answers that cannot be used decide nothing, and say why.
    for (n, (rule, why)) in [
        ("slow", "no answer within"),
        ("garbage", "the confidence 7 is not between 0 and 1"),
        (
            "forged",
            "the answer's signature: the signature does not match the body",
        ),
        ("other", "the answer is for request 'another-request'"),
        ("error", "the reviewer answered HTTP 500"),
    ]
    .into_iter()
    .enumerate()
    {
        let acc = agent
            .submit(connect(&agent, &format!("6.{n}"), rule, 443, &["curl"]))
            .await;
        let (r, rec) = recommended(&server, &acc.approval_id).await;
        assert_eq!(r.state, RequestState::Pending as i32, "{rule}");
        assert_eq!(
            (rec.verdict.as_str(), rec.decided),
            ("failed", false),
            "{rule}"
        );
        assert!(rec.rationale.contains(why), "{rule}: {rec:?}");
    }

    // A reviewer that approves everything: three approvals decide, the fourth fills its window
    // above the share (0.5 of 4) and it is switched to escalate-only, with an audit record.
    let mut outcomes = Vec::new();
    for k in 0..5 {
        let acc = agent
            // Each another command line: identical requests would wait as one.
            .submit(connect(
                &agent,
                &format!("7.{k}"),
                "eager",
                443,
                &["curl", &format!("https://10.8.0.{k}/")],
            ))
            .await;
        let (_, rec) = recommended(&server, &acc.approval_id).await;
        outcomes.push(rec.decided);
    }
    assert_eq!(outcomes, [true, true, true, false, false]);
    let opened = audit_kind(&mut admin, "auto_reviewer.breaker_open").await;
    assert_eq!(opened.len(), 1, "{opened:?}");
    assert_eq!(opened[0].actor, "auto:eager");
    assert!(opened[0]
        .payload_json
        .contains("above the configured share"));
    // Each answer is on record with the digest of exactly what its reviewer was sent.
    let posted = bad_state.bodies.lock().expect("bodies").clone();
    let eager: Vec<_> = audit_kind(&mut admin, "request.auto_reviewed")
        .await
        .into_iter()
        .filter(|e| e.actor == "auto:eager")
        .collect();
    assert_eq!(eager.len(), 5);
    let approved: Vec<_> = audit_kind(&mut admin, "request.approved")
        .await
        .into_iter()
        .filter(|e| e.actor == "auto:eager")
        .collect();
    assert_eq!(approved.len(), 3, "the decisions before the breaker opened");
    for e in eager.iter().chain(&approved) {
        let v: serde_json::Value = serde_json::from_str(&e.payload_json).expect("payload");
        let digest = v["inputs_sha256"].as_str().expect("inputs_sha256");
        assert!(
            posted.iter().any(|p| p == digest),
            "{digest} was not posted"
        );
    }

    // Identical requests wait as one: the reviewer is asked about the first, and its approval
    // decides both.
    let first = agent
        .submit(connect(&agent, "10.1", "gated", 443, &["curl"]))
        .await;
    tokio::time::timeout(HANG, async {
        while bad_state.gated_calls.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the reviewer is asked");
    let second = agent
        .submit(connect(&agent, "10.2", "gated", 443, &["curl"]))
        .await;
    assert_eq!(
        record(&server, &second.approval_id).await.merged_into,
        first.approval_id,
        "the second waits with the first"
    );
    bad_state.open.store(true, Ordering::SeqCst);
    let mut told = std::collections::HashMap::new();
    tokio::time::timeout(HANG, async {
        while told.len() < 2 {
            let d = agent.next_decision().await;
            if [&first.approval_id, &second.approval_id].contains(&&d.approval_id) {
                told.insert(d.approval_id.clone(), (d.outcome, d.decided_by));
            }
        }
    })
    .await
    .expect("both requests decided");
    for id in [&first.approval_id, &second.approval_id] {
        assert_eq!(
            told.get(id),
            Some(&(Outcome::Allow as i32, "auto:gated".to_string())),
            "{id}"
        );
        assert_eq!(
            record(&server, id).await.state,
            RequestState::Approved as i32,
            "{id}"
        );
    }
    assert_eq!(
        bad_state.gated_calls.load(Ordering::SeqCst),
        1,
        "the request waiting with another is not reviewed on its own"
    );

    // A rule without `auto` never reaches a reviewer.
    let calls = bad_state.calls.load(Ordering::SeqCst);
    let acc = agent
        .submit(connect(&agent, "8", "people", 443, &["curl"]))
        .await;
    // Not the command line of 6.3, which still waits: it would wait with it, unreviewed.
    let later = agent
        .submit(connect(&agent, "9", "other", 443, &["curl", "-I"]))
        .await;
    recommended(&server, &later.approval_id).await;
    assert_eq!(bad_state.calls.load(Ordering::SeqCst), calls + 1);
    let r = record(&server, &acc.approval_id).await;
    assert!(r.recommendation.is_none(), "{r:?}");
    let reviewed = audit_kind(&mut admin, "request.auto_reviewed").await;
    assert!(
        !reviewed.iter().any(|e| e.request_id == acc.approval_id),
        "{reviewed:?}"
    );
    assert_eq!(
        reviewed.len(),
        17,
        "every other request was reviewed once, a group once"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewer_without_a_usable_secret_stops_the_start() {
    let env_dir = tempfile::tempdir().expect("dir");
    let short = env_dir.path().join("short.secret");
    std::fs::write(&short, "too short\n").expect("write");
    let shared = env_dir.path().join("shared.secret");
    std::fs::write(&shared, format!("{}\n", secret_of("shared"))).expect("write");
    let copy = env_dir.path().join("copy.secret");
    std::fs::write(&copy, secret_of("shared")).expect("write");
    for (files, want) in [
        (vec![short.clone()], "auto_reviewers 'ref': the secret in"),
        (
            vec![env_dir.path().join("missing.secret")],
            "auto_reviewers 'ref': reading the secret file",
        ),
        // Two reviewers with one secret: either's answer would pass for the other's.
        (
            vec![shared.clone(), copy.clone()],
            "auto_reviewers 'ref' and 'ref2' have the same secret",
        ),
    ] {
        let mut env = Env::sqlite().await;
        env.config.auto_reviewers = files
            .iter()
            .enumerate()
            .map(|(i, f)| {
                reviewer(
                    if i == 0 { "ref" } else { "ref2" },
                    "http://127.0.0.1:9/review".into(),
                    f,
                )
            })
            .collect();
        let text = start_refused(&env.config).await;
        assert!(text.contains(want), "{want:?} not in {text}");
    }
}

/// An answer that arrives after the request's deadline decides nothing: the rule's `on_timeout`
/// does. A request that waited for its reviewer when central stopped is asked about again when
/// it starts, and the first answer is the only one taken. Every answer is counted by reviewer
/// and verdict on `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_answers_decide_nothing_and_a_restart_asks_again() {
    const LATE_RULES: &str = r#"
workloads:
  - name: ai-agents
    cgroups: ["/ai.slice/*"]
rules:
  - {name: late, workload: ai-agents, on: connect, to: ["10.1.0.0/16"], action: approve,
     timeout: 3s, on_timeout: deny, review: [auto, human], auto: {reviewer: sleepy}}
  - {name: web, workload: ai-agents, on: connect, to: ["10.2.0.0/16"], action: approve,
     timeout: 10m, review: [auto, human], auto: {reviewer: ref}}
"#;
    let secrets = tempfile::tempdir().expect("secrets");
    let secret_file = |name: &str| {
        let p = secrets.path().join(format!("{name}.secret"));
        std::fs::write(&p, secret_of(name)).expect("write secret");
        p
    };
    // Answers "approve" once the test has seen the request expire: after the rule's deadline,
    // within its own 10 s timeout.
    let sleepy_calls = Arc::new(AtomicUsize::new(0));
    let calls = sleepy_calls.clone();
    let expired = Arc::new(tokio::sync::Notify::new());
    let gate = expired.clone();
    let sleepy = serve(Router::new().route(
        "/review",
        post(move |body: Bytes| {
            let (calls, gate) = (calls.clone(), gate.clone());
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let Ok(r) = serde_json::from_slice::<ReviewRequest>(&body) else {
                    return (axum::http::StatusCode::BAD_REQUEST, "not a request").into_response();
                };
                gate.notified().await;
                latch_reference_reviewer::signed(
                    secret_of("sleepy").as_bytes(),
                    &ReviewAnswer {
                        approval_id: r.approval_id,
                        reviewer: r.reviewer,
                        verdict: Verdict::Approve,
                        rationale: "fine".into(),
                        confidence: 0.9,
                    },
                )
            }
        }),
    ))
    .await;
    // Never answers: central stops while it waits.
    let silent_calls = Arc::new(AtomicUsize::new(0));
    let calls = silent_calls.clone();
    let silent = serve(Router::new().route(
        "/review",
        post(move || {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(3600)).await;
                "never"
            }
        }),
    ))
    .await;
    let reference = serve(latch_reference_reviewer::router(
        secret_of("ref").into_bytes(),
        latch_reference_reviewer::Rules {
            approve_ports: vec![443],
            approve_programs: vec![],
            deny_words: vec![],
        },
    ))
    .await;

    let mut env = Env::sqlite().await;
    env.config.metrics_listen = Some("127.0.0.1:0".parse().expect("address"));
    let mut sleepy_cfg = reviewer(
        "sleepy",
        format!("http://{sleepy}/review"),
        &secret_file("sleepy"),
    );
    sleepy_cfg.timeout = Some("10s".into());
    let mut ref_cfg = reviewer(
        "ref",
        format!("http://{silent}/review"),
        &secret_file("ref"),
    );
    ref_cfg.timeout = Some("60s".into());
    env.config.auto_reviewers = vec![sleepy_cfg.clone(), ref_cfg.clone()];
    let server = env.start().await;
    let version = apply_yaml(&server, "late.yaml", LATE_RULES).await;
    let mut agent = Agent::connect(&server, "h1", vec![], vec![]).await;
    agent.next_rules().await;
    let connect = |agent: &Agent, id: &str, rule: &str, address: &str| {
        let mut r = agent.request(id, "prod-db");
        r.rule_id = rule_id_in(LATE_RULES, rule);
        r.rule_name = rule.into();
        r.rules_version = version;
        if let Some(d) = r.destination.as_mut() {
            d.address = address.into();
            d.port = 443;
        }
        r
    };

    let late = agent
        .submit(connect(&agent, "l.1", "late", "10.1.0.1"))
        .await;
    let d = decision_for(&mut agent, &late.approval_id).await;
    assert_eq!(
        (d.outcome, d.decided_by.as_str()),
        (Outcome::Deny as i32, "timeout"),
        "the deadline decides"
    );
    // Now it answers, and the answer changes nothing; it is counted as late.
    expired.notify_one();
    let metrics = server.metrics_addr().expect("metrics");
    tokio::time::timeout(HANG, async {
        loop {
            let text = scrape(metrics).await;
            if sample(
                &text,
                r#"latch_central_auto_reviews_total{reviewer="sleepy",verdict="late"}"#,
            ) == Some(1.0)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the late answer was never counted");
    let r = record(&server, &late.approval_id).await;
    assert_eq!(r.state, RequestState::Expired as i32);
    assert_eq!(
        r.decision.clone().map(|d| (d.outcome, d.decided_by)),
        Some((Outcome::Deny as i32, "timeout".to_string()))
    );
    assert!(
        r.recommendation.is_none(),
        "a late answer is not kept: {r:?}"
    );
    assert_eq!(sleepy_calls.load(Ordering::SeqCst), 1);

    // Central stops while "ref" is being asked; started again with "ref" reachable, it asks
    // again and the answer decides.
    let waiting = agent
        .submit(connect(&agent, "w.1", "web", "10.2.0.1"))
        .await;
    tokio::time::timeout(HANG, async {
        while silent_calls.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("central never asked the silent reviewer");
    assert!(
        record(&server, &waiting.approval_id)
            .await
            .recommendation
            .is_none(),
        "the silent reviewer answered"
    );
    server.shutdown().await;
    drop(agent);
    let mut ref_cfg = reviewer(
        "ref",
        format!("http://{reference}/review"),
        &secret_file("ref"),
    );
    ref_cfg.timeout = Some("10s".into());
    env.config.auto_reviewers = vec![sleepy_cfg, ref_cfg];
    let server = env.start().await;
    let metrics = server.metrics_addr().expect("metrics");
    let mut agent = Agent::connect(&server, "h1", vec!["w.1".into()], vec![]).await;
    let d = decision_for(&mut agent, &waiting.approval_id).await;
    assert_eq!(
        (d.outcome, d.decided_by.as_str()),
        (Outcome::Allow as i32, "auto:ref")
    );
    let text = scrape(metrics).await;
    assert_eq!(
        sample(
            &text,
            r#"latch_central_auto_reviews_total{reviewer="ref",verdict="approve"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"latch_central_auto_reviewer_breaker_open{reviewer="ref"}"#
        ),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"latch_central_auto_reviewer_breaker_open{reviewer="sleepy"}"#
        ),
        Some(0.0),
        "{text}"
    );
    // The expired request is not asked about again.
    assert_eq!(sleepy_calls.load(Ordering::SeqCst), 1);
    server.shutdown().await;
}
