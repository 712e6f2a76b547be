//! The real agent and the real central together: rules pushed from central, a held operation
//! submitted with its context, decided by a reviewer over gRPC, and the process continuing or
//! failing in the kernel.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use latch_proto::v1::{
    reviewer_service_client::ReviewerServiceClient, ApplyRulesRequest, ApprovalRecord, AuditEntry,
    DecideRequest, DecisionKind, GrantScope, ListGrantsRequest, ListRequestsRequest,
    QueryAuditRequest, RequestState, RevokeGrantRequest,
};
use latch_tests::{
    binary, destination, finish, outcome, patience, privileged, probe, spawn_in,
    stack::{
        apply, decide_once, free_port, rules, spawn_central, wait_request, Stack, ADMIN, ALICE,
    },
    wait_state, TestCgroup,
};
use tonic::{metadata::MetadataValue, transport::Channel, Request};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
async fn reviewer_decisions_reach_the_kernel_through_central() {
    if !privileged() {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let target = format!("127.0.0.1:{}", listener.local_addr().expect("addr").port());
    let cg = TestCgroup::new();
    let mut stack = Stack::start(&cg).await;
    let mut admin = stack.reviewer(ADMIN).await;
    apply(&stack, &cg, "  - {name: db, workload: test, on: connect, to: [127.0.0.1/32], action: approve, timeout: 10m}\n").await;
    stack.start_agent();
    stack.wait_watching();
    let mut alice = stack.reviewer(ALICE).await;

    // The host reports what it enforces, as its own doctor judges it.
    let status = stack.agent_cli(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    let hosts = admin
        .list_hosts(latch_proto::v1::ListHostsRequest {})
        .await
        .expect("list hosts")
        .into_inner()
        .hosts;
    let caps = hosts
        .iter()
        .find(|h| h.host_id == stack.host)
        .and_then(|h| h.capabilities.clone())
        .expect("the host's capabilities");
    let verdict = caps
        .features
        .get("enforcement")
        .cloned()
        .unwrap_or_default();
    match status["backend"].as_str() {
        Some("lsm") => assert!(caps.backends.contains(&"lsm-exec".to_string()), "{caps:?}"),
        Some("tracepoint") => {
            assert!(
                caps.backends.contains(&"tracepoint-exec".to_string()),
                "{caps:?}"
            );
            assert!(verdict.contains("exec-deny degraded"), "{verdict}");
        }
        other => panic!("status shows no backend: {other:?}"),
    }

    // Approved: the one held connect() completes.
    let child = spawn_in(
        &cg.path,
        &probe(),
        &["connect", &target, "--token=hunter2-very-secret"],
    );
    let pid = child.id();
    let rec = wait_request(&mut alice, &stack.host, pid, RequestState::Pending).await;
    wait_state(pid, 'T');
    let req = rec.request.clone().expect("request context");
    assert_eq!(req.rule_name, "db");
    assert_eq!(req.workload, "test");
    assert_eq!(req.comm, "latch-probe");
    assert!(req.exe.ends_with("latch-probe"), "{}", req.exe);
    assert_eq!(
        req.destination.as_ref().map(|d| d.port),
        Some(
            target
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0)
        )
    );
    assert_eq!(
        req.argv.get(1).map(String::as_str),
        Some("connect"),
        "{:?}",
        req.argv
    );
    assert_eq!(
        req.argv.get(2),
        Some(&target),
        "destinations are not masked by default"
    );
    let joined = req.argv.join(" ");
    assert!(
        !joined.contains("hunter2"),
        "a secret left the host: {joined}"
    );
    assert!(joined.contains("[SECRET]"), "{joined}");
    assert_eq!(req.user, "root");
    assert!(req.requester.starts_with("user:"), "{}", req.requester);
    decide_once(
        &mut alice,
        &rec.approval_id,
        DecisionKind::ApproveOnce,
        "checked with the owner",
    )
    .await;
    assert_eq!(outcome(child)["ok"], true);

    // Denied: EPERM.
    let child = spawn_in(&cg.path, &probe(), &["connect", &target]);
    let rec = wait_request(&mut alice, &stack.host, child.id(), RequestState::Pending).await;
    decide_once(
        &mut alice,
        &rec.approval_id,
        DecisionKind::Deny,
        "not during the freeze",
    )
    .await;
    assert_eq!(outcome(child)["errno"], 1);

    // A process that dies while held cancels its request at central.
    let mut child = spawn_in(&cg.path, &probe(), &["connect", &target]);
    let pid = child.id();
    wait_request(&mut alice, &stack.host, pid, RequestState::Pending).await;
    child.kill().expect("kill");
    child.wait().expect("reap");
    wait_request(&mut alice, &stack.host, pid, RequestState::Cancelled).await;

    // The host's journal reaches central: its events and decisions, each once, in host order.
    let deadline = Instant::now() + patience();
    let shipped = loop {
        let agent = journal_at_central(&mut admin, &stack.host).await;
        let decisions = agent.iter().filter(|e| e.kind.contains("decision")).count();
        if decisions >= 2 {
            assert_once_in_host_order(&agent);
            assert!(
                agent.iter().any(|e| e.kind.contains("connect")),
                "kernel events shipped: {agent:?}"
            );
            break agent;
        }
        assert!(
            Instant::now() < deadline,
            "the journal never reached central: {agent:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // What an agent sends again: its whole journal, as after losing what central acknowledged.
    // Central keeps each record once, where it first stored it.
    let state = stack.dir.join("journal").join("state.json");
    wait_acked(&state, shipped.len() as i64);
    stack.kill_agent();
    let mut acked: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state).expect("read the journal's state"))
            .expect("the journal's state");
    acked["acked_through"] = 0.into();
    std::fs::write(&state, acked.to_string()).expect("write the journal's state");
    stack.start_agent();
    stack.wait_watching();
    // The agent acknowledges a record only once central has answered for it: acknowledged
    // again, the records were sent again.
    wait_acked(&state, shipped.len() as i64);
    let again = journal_at_central(&mut admin, &stack.host).await;
    assert_once_in_host_order(&again);
    let place = |e: &[AuditEntry]| -> Vec<(i64, String)> {
        e.iter().map(|e| (e.seq, e.record_id.clone())).collect()
    };
    assert_eq!(
        place(&again[..shipped.len().min(again.len())]),
        place(&shipped),
        "records sent again moved or were replaced"
    );
}

/// Waits until the agent's journal (its `state.json`) says central has acknowledged records up
/// to `n`.
fn wait_acked(state: &std::path::Path, n: i64) {
    let deadline = Instant::now() + patience();
    loop {
        let acked = match std::fs::read(state) {
            Ok(b) => serde_json::from_slice::<serde_json::Value>(&b).expect("the journal's state")
                ["acked_through"]
                .as_i64()
                .expect("acked_through"),
            // Nothing acknowledged yet.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => panic!("reading {}: {e}", state.display()),
        };
        if acked >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the agent's journal never had {n} records acknowledged (it has {acked})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The host's journal records at central (those with a record id), in the order central serves
/// them.
async fn journal_at_central(
    admin: &mut ReviewerServiceClient<
        tonic::service::interceptor::InterceptedService<Channel, impl tonic::service::Interceptor>,
    >,
    host: &str,
) -> Vec<AuditEntry> {
    admin
        .query_audit(QueryAuditRequest {
            host_id: host.to_string(),
            limit: 10_000,
            ..Default::default()
        })
        .await
        .expect("query audit")
        .into_inner()
        .entries
        .into_iter()
        .filter(|e| !e.record_id.is_empty())
        .collect()
}

/// The audit trail's `request.created` records that `filter` selects (its kind and limit are
/// set here).
async fn requests_created(
    admin: &mut ReviewerServiceClient<
        tonic::service::interceptor::InterceptedService<Channel, impl tonic::service::Interceptor>,
    >,
    filter: QueryAuditRequest,
) -> Vec<AuditEntry> {
    admin
        .query_audit(QueryAuditRequest {
            kind: "request.created".into(),
            limit: 10,
            ..filter
        })
        .await
        .expect("query audit")
        .into_inner()
        .entries
}

/// `served` (a host's journal records as central serves them) is the host's records 1, 2, 3, …
/// in its chain order: each once, none missing, none out of place. Nothing is sorted first:
/// the order checked is central's.
fn assert_once_in_host_order(served: &[AuditEntry]) {
    let order: Vec<(i64, i64)> = served.iter().map(|e| (e.seq, e.host_seq)).collect();
    assert!(
        order.windows(2).all(|w| w[0].0 < w[1].0),
        "central served its chain out of order: (seq, host_seq) {order:?}"
    );
    let host_seqs: Vec<i64> = order.iter().map(|o| o.1).collect();
    let want: Vec<i64> = (1..=served.len() as i64).collect();
    assert_eq!(
        host_seqs, want,
        "the host's journal in central's chain order is not its records 1.. once each: \
         (seq, host_seq) {order:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
async fn unanswered_request_expires_by_the_rule_and_cached_rules_survive_central_outage() {
    if !privileged() {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let target = format!("127.0.0.1:{}", listener.local_addr().expect("addr").port());
    let cg = TestCgroup::new();
    let mut stack = Stack::start(&cg).await;
    let mut admin = stack.reviewer(ADMIN).await;
    apply(&stack, &cg, "  - {name: quick, workload: test, on: connect, to: [127.0.0.1/32], action: approve, timeout: 1s, on_timeout: deny}\n").await;
    stack.start_agent();
    stack.wait_watching();
    let child = spawn_in(&cg.path, &probe(), &["connect", &target]);
    let pid = child.id();
    assert_eq!(
        outcome(child)["errno"],
        1,
        "expired by the rule's on_timeout (deny)"
    );
    wait_request(&mut admin, &stack.host, pid, RequestState::Expired).await;

    // Central goes away; a restarted agent enforces the cached rules at once.
    let _ = stack.central.kill();
    let _ = stack.central.wait();
    if let Some(mut a) = stack.agent.take() {
        let _ = a.kill();
        let _ = a.wait();
    }
    stack.start_agent();
    stack.wait_watching();
    let child = spawn_in(&cg.path, &probe(), &["connect", &target]);
    let out = outcome(child);
    assert_eq!(
        out["errno"], 1,
        "held, then expired locally by the cached rule: {out}"
    );
}

/// A long-lived connection from the probe's `hold` mode: its first line says it connected.
struct Held {
    child: Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl Held {
    fn start(cg: &TestCgroup, target: &str) -> Held {
        let mut child = spawn_in(&cg.path, &probe(), &["hold", target]);
        let out = child.stdout.take().expect("probe stdout");
        Held {
            child,
            lines: std::io::BufRead::lines(std::io::BufReader::new(out)),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next JSON line the probe prints (blocks until it does).
    fn next(&mut self) -> serde_json::Value {
        let line = self
            .lines
            .next()
            .expect("the probe printed nothing more")
            .expect("read probe output");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("probe printed {line:?}: {e}"))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Accepts connections and keeps the server side of each open, in arrival order.
fn keep_accepting(listener: TcpListener) -> std::sync::mpsc::Receiver<std::net::TcpStream> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            if tx.send(s).is_err() {
                return;
            }
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
async fn revoking_a_grant_with_close_connections_cuts_only_its_connections() {
    if !privileged() {
        return;
    }
    let a = TcpListener::bind("127.0.0.1:0").expect("bind");
    let b = TcpListener::bind("127.0.0.1:0").expect("bind");
    let (port_a, port_b) = (
        a.local_addr().expect("addr").port(),
        b.local_addr().expect("addr").port(),
    );
    let (target_a, target_b) = (format!("127.0.0.1:{port_a}"), format!("127.0.0.1:{port_b}"));
    let accepted_a = keep_accepting(a);
    let accepted_b = keep_accepting(b);
    let cg = TestCgroup::new();
    let mut stack = Stack::start(&cg).await;
    apply(
        &stack,
        &cg,
        &format!(
            "  - {{name: db, workload: test, on: connect, to: [127.0.0.1/32], ports: [{port_a}], action: approve, timeout: 10m}}\n\
             \x20 - {{name: cache, workload: test, on: connect, to: [127.0.0.1/32], ports: [{port_b}], action: approve, timeout: 10m}}\n"
        ),
    )
    .await;
    stack.start_agent();
    stack.wait_watching();
    let mut alice = stack.reviewer(ALICE).await;
    let grant_for = |rec: ApprovalRecord| DecideRequest {
        approval_id: rec.approval_id,
        kind: DecisionKind::ApproveFor as i32,
        duration_seconds: 3600,
        scope: GrantScope::Host as i32,
        reason: "maintenance window".into(),
    };

    // The held connection that the grant was made for, and one the grant let through later.
    let mut first = Held::start(&cg, &target_a);
    let rec = wait_request(&mut alice, &stack.host, first.pid(), RequestState::Pending).await;
    let decided = alice
        .decide(grant_for(rec))
        .await
        .expect("decide")
        .into_inner();
    let grant_a = decided
        .request
        .and_then(|r| r.decision)
        .and_then(|d| d.grant)
        .expect("a grant")
        .grant_id;
    assert_eq!(first.next()["connected"], true);
    let mut second = Held::start(&cg, &target_a);
    assert_eq!(second.next()["connected"], true, "let through by the grant");

    // A connection through another grant.
    let mut other = Held::start(&cg, &target_b);
    let rec = wait_request(&mut alice, &stack.host, other.pid(), RequestState::Pending).await;
    alice.decide(grant_for(rec)).await.expect("decide");
    assert_eq!(other.next()["connected"], true);
    let _server_a: Vec<_> = (0..2)
        .map(|_| accepted_a.recv_timeout(patience()).expect("accepted on A"))
        .collect();
    let mut server_b = accepted_b.recv_timeout(patience()).expect("accepted on B");

    alice
        .revoke_grant(RevokeGrantRequest {
            grant_id: grant_a.clone(),
            reason: "window closed".into(),
            close_connections: true,
        })
        .await
        .expect("revoke");
    for (name, held) in [("first", &mut first), ("second", &mut second)] {
        let cut = held.next();
        assert_eq!(cut["ok"], false, "{name} connection still open: {cut}");
        assert_eq!(
            cut["errno"],
            libc::ECONNABORTED,
            "{name} connection was not aborted: {cut}"
        );
    }
    // The connection of the other grant is still usable.
    std::io::Write::write_all(&mut server_b, b"still-open\n").expect("write to B");
    let alive = other.next();
    assert_eq!(alive["read"], "still-open", "{alive}");

    // The grant is gone from the kernel: the same connection is held again.
    let again = spawn_in(&cg.path, &probe(), &["connect", &target_a]);
    let rec = wait_request(&mut alice, &stack.host, again.id(), RequestState::Pending).await;
    decide_once(&mut alice, &rec.approval_id, DecisionKind::Deny, "revoked").await;
    assert_eq!(outcome(again)["errno"], 1);
    let g = listed_grant(&mut alice, &stack.host, &grant_a).await;
    assert!(g.revoked_at_unix_ms > 0 && g.close_connections, "{g:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
async fn a_restarted_agent_applies_a_decision_made_after_a_kill_9() {
    if !privileged() {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let target = format!("127.0.0.1:{}", listener.local_addr().expect("addr").port());
    let cg = TestCgroup::new();
    let mut stack = Stack::start(&cg).await;
    apply(&stack, &cg, "  - {name: db, workload: test, on: connect, to: [127.0.0.1/32], action: approve, timeout: 10m}\n").await;
    stack.start_agent();
    stack.wait_watching();
    let mut alice = stack.reviewer(ALICE).await;
    let child = spawn_in(&cg.path, &probe(), &["connect", &target]);
    let pid = child.id();
    let rec = wait_request(&mut alice, &stack.host, pid, RequestState::Pending).await;
    wait_state(pid, 'T');

    stack.kill_agent();
    assert_eq!(
        latch_tests::state(pid),
        Some('T'),
        "still held while no agent runs"
    );
    stack.start_agent();
    stack.wait_watching();
    // Decided only now, after the restart: the new agent finds the held operation in the pinned
    // map and applies the decision to it.
    decide_once(
        &mut alice,
        &rec.approval_id,
        DecisionKind::ApproveOnce,
        "checked",
    )
    .await;
    assert_eq!(outcome(child)["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
async fn release_after_a_killed_agent_resolves_held_processes_by_the_fail_mode() {
    if !privileged() {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let target = format!("127.0.0.1:{}", listener.local_addr().expect("addr").port());
    let cg = TestCgroup::new();
    let mut stack = Stack::start(&cg).await;
    apply(&stack, &cg, "  - {name: db, workload: test, on: connect, to: [127.0.0.1/32], action: approve, timeout: 10m}\n").await;
    stack.start_agent();
    stack.wait_watching();
    let mut alice = stack.reviewer(ALICE).await;
    let child = spawn_in(&cg.path, &probe(), &["connect", &target]);
    let pid = child.id();
    wait_request(&mut alice, &stack.host, pid, RequestState::Pending).await;
    wait_state(pid, 'T');

    stack.kill_agent();
    // The hooks outlive the agent: their links are pinned.
    for hook in ["connect4", "held-connect", "exit"] {
        let pin = stack.pin_dir.join("links").join(hook);
        assert!(pin.exists(), "{} is gone with the agent", pin.display());
    }
    // The unit's ExecStopPost.
    let out = stack.agent_cli(&["release"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("released 1 held operation"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Fail mode deny, and the hooks still attached: the held connect() runs again, meets the
    // verdict in the kernel and fails with EPERM.
    let out = outcome(child);
    assert_eq!(out["errno"], 1, "refused by the pinned hook: {out}");
    // Nothing left to release.
    let out = stack.agent_cli(&["release"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("released 0 held operation"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
async fn central_loss_applies_the_fail_mode_and_the_journal_arrives_once_after_it_returns() {
    if !privileged() {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let target = format!("127.0.0.1:{}", listener.local_addr().expect("addr").port());
    let cg = TestCgroup::new();
    let mut stack = Stack::start_with(
        &cg,
        "fail_mode = \"allow-and-record\"",
        "loss_timeout = \"2s\"",
    )
    .await;
    let mut admin = stack.reviewer(ADMIN).await;
    apply(&stack, &cg, "  - {name: db, workload: test, on: connect, to: [127.0.0.1/32], action: approve, timeout: 10m, on_timeout: deny}\n").await;
    stack.start_agent();
    stack.wait_watching();
    let held = spawn_in(&cg.path, &probe(), &["connect", &target]);
    let held_pid = held.id();
    wait_request(&mut admin, &stack.host, held_pid, RequestState::Pending).await;
    wait_state(held_pid, 'T');

    stack.kill_central();
    // Not the rule's timeout (10 minutes, deny): the fail mode, allow-and-record, once central
    // has been unreachable for the loss timeout.
    let out = outcome(held);
    assert_eq!(out["ok"], true, "resolved by the fail mode: {out}");
    // While central is away nothing is held: the fail mode applies at once.
    let out = outcome(spawn_in(&cg.path, &probe(), &["connect", &target]));
    assert_eq!(out["ok"], true, "{out}");

    stack.restart_central();
    let mut admin = stack.reviewer(ADMIN).await;
    // The request central still had is cancelled: the host resolved it meanwhile.
    wait_request(&mut admin, &stack.host, held_pid, RequestState::Cancelled).await;
    // With central back, operations are held for review again.
    let again = spawn_in(&cg.path, &probe(), &["connect", &target]);
    let rec = wait_request(&mut admin, &stack.host, again.id(), RequestState::Pending).await;
    decide_once(
        &mut admin,
        &rec.approval_id,
        DecisionKind::Deny,
        "after the outage",
    )
    .await;
    assert_eq!(outcome(again)["errno"], 1);

    // The journal: the fail-mode verdict and the decision after the outage reach central, and
    // every record of the host up to the last one is there exactly once.
    let deadline = Instant::now() + patience();
    loop {
        let agent = journal_at_central(&mut admin, &stack.host).await;
        let fail_mode = agent
            .iter()
            .any(|e| e.kind.contains("decision") && e.payload_json.contains("\"fail-mode\""));
        let reviewed = agent
            .iter()
            .any(|e| e.kind.contains("decision") && e.payload_json.contains("\"reviewer\""));
        if fail_mode && reviewed {
            assert_once_in_host_order(&agent);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the journal never reached central after the outage: {agent:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A CA, central's certificate for 127.0.0.1/localhost and `host`'s client certificate, as
/// PEM files in `dir`: (ca, server cert, server key, agent cert, agent key).
fn mutual_tls_files(dir: &std::path::Path, host: &str) -> [PathBuf; 5] {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa,
        KeyPair, SanType,
    };
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().expect("key")).expect("ca");
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    p.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate().expect("key");
    let server = p.signed_by(&server_key, &*ca).expect("server cert");
    let mut p = CertificateParams::new(vec![host.to_string()]).expect("params");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let agent_key = KeyPair::generate().expect("key");
    let agent = p.signed_by(&agent_key, &*ca).expect("agent cert");
    let files = [
        ("ca.pem", ca.pem()),
        ("central.pem", server.pem()),
        ("central.key", server_key.serialize_pem()),
        ("agent.pem", agent.pem()),
        ("agent.key", agent_key.serialize_pem()),
    ];
    files.map(|(name, text)| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write TLS file");
        path
    })
}

/// Processes and files of a test, gone on drop.
struct Cleanup(Vec<Child>, Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
        for d in &self.1 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
async fn the_agent_connects_over_mutual_tls_with_its_certificate_alone() {
    if !privileged() {
        return;
    }
    let cg = TestCgroup::new();
    let name = cg.rel.trim_start_matches('/').to_string();
    let dir = std::env::temp_dir().join(format!("{name}-mtls"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let pin_dir = PathBuf::from("/sys/fs/bpf").join(format!("{name}-mtls"));
    let mut cleanup = Cleanup(Vec::new(), vec![dir.clone(), pin_dir.clone()]);
    let host = format!("host-{name}");
    let [ca, server_cert, server_key, agent_cert, agent_key] = mutual_tls_files(&dir, &host);
    let port = free_port();
    let central_config = dir.join("central.toml");
    // No [[agents]] tokens: the certificate is the agent's only credential.
    std::fs::write(
        &central_config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndatabase = \"sqlite://{db}\"\n\
             [tls]\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\nclient_ca_file = \"{ca}\"\n\
             [[reviewers]]\ntoken = \"{ADMIN}\"\nsubject = \"root-admin\"\nrole = \"admin\"\n",
            db = dir.join("central.db").display(),
            cert = server_cert.display(),
            key = server_key.display(),
            ca = ca.display(),
        ),
    )
    .expect("central config");
    cleanup.0.push(spawn_central(&central_config, port));

    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            std::fs::read(&ca).expect("ca"),
        ))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://localhost:{port}"))
        .expect("uri")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("reviewer over TLS");
    let value: MetadataValue<_> = format!("Bearer {ADMIN}").parse().expect("header");
    let mut admin = ReviewerServiceClient::with_interceptor(channel, move |mut req: Request<()>| {
        req.metadata_mut().insert("authorization", value.clone());
        Ok(req)
    });
    let version = admin
        .apply_rules(ApplyRulesRequest {
            source_name: "suite.yaml".into(),
            yaml: rules(&cg, "  - {name: db, workload: test, on: connect, to: [127.0.0.1/32], action: approve, timeout: 10m}\n"),
            selector: [("suite".to_string(), name.clone())].into_iter().collect(),
            dry_run: false,
            comment: "test".into(),
        })
        .await
        .expect("apply rules")
        .into_inner()
        .version;

    let agent_config = dir.join("agent.toml");
    let local_rules = dir.join("local-rules.yaml");
    std::fs::write(&local_rules, "workloads: []\nrules: []\n").expect("local rules");
    std::fs::write(
        &agent_config,
        format!(
            "rules = \"{rules}\"\nadmin_socket = \"{sock}\"\npin_dir = \"{pin}\"\nmetrics_listen = \"\"\nwaiting_dir = \"\"\nworkload_socket = \"{sock}.workload\"\njournal_dir = \"{journal}\"\n\
             [central]\naddress = \"https://localhost:{port}\"\nhost_id = \"{host}\"\n\
             ca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n\
             rules_cache = \"{cache}\"\nlabels = {{ suite = \"{name}\" }}\n",
            rules = local_rules.display(),
            sock = dir.join("agent.sock").display(),
            pin = pin_dir.display(),
            journal = dir.join("journal").display(),
            cache = dir.join("rules.cache.yaml").display(),
            ca = ca.display(),
            cert = agent_cert.display(),
            key = agent_key.display(),
        ),
    )
    .expect("agent config");
    let validate = Command::new(binary("latch-agent"))
        .arg("--config")
        .arg(&agent_config)
        .arg("validate")
        .output()
        .expect("latch-agent validate");
    assert!(
        validate.status.success(),
        "{}",
        String::from_utf8_lossy(&validate.stderr)
    );
    cleanup.0.push(
        Command::new(binary("latch-agent"))
            .arg("--config")
            .arg(&agent_config)
            .arg("run")
            .stderr(Stdio::null())
            .spawn()
            .expect("start latch-agent"),
    );

    // Registered, subscribed and the rules acknowledged: all over the mutual-TLS link.
    let deadline = Instant::now() + patience();
    loop {
        let hosts = admin
            .list_hosts(latch_proto::v1::ListHostsRequest {})
            .await
            .expect("hosts")
            .into_inner()
            .hosts;
        if hosts
            .iter()
            .any(|h| h.host_id == host && h.connected && h.rules_version_acked == version)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never connected over mutual TLS: {hosts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn latch_agent_validate_names_an_unreadable_certificate() {
    let dir = tempfile_dir("agent-validate-tls");
    let missing = dir.join("missing.pem");
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[central]\naddress = \"https://central.internal:7443\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            missing.display(),
            dir.join("agent.key").display()
        ),
    )
    .expect("config");
    let out = Command::new(binary("latch-agent"))
        .arg("--config")
        .arg(&config)
        .arg("validate")
        .output()
        .expect("latch-agent validate");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("`central.cert_file` = {missing:?}: cannot read")),
        "{stderr}"
    );
}

fn tempfile_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("latch-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
async fn an_operation_held_while_central_was_down_is_submitted_by_a_restarted_agent() {
    if !privileged() {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let target = format!("127.0.0.1:{port}");
    let cg = TestCgroup::new();
    let mut stack = Stack::start(&cg).await;
    apply(&stack, &cg, "  - {name: db, workload: test, on: connect, to: [127.0.0.1/32], action: approve, timeout: 10m}\n").await;
    stack.start_agent();
    stack.wait_watching();

    // Held while central is away (well within the loss timeout), then the agent dies before it
    // could submit: only the pinned pending entry knows about the operation.
    stack.kill_central();
    let child = spawn_in(&cg.path, &probe(), &["connect", &target]);
    let pid = child.id();
    wait_state(pid, 'T');
    stack.kill_agent();
    stack.restart_central();
    stack.start_agent();
    stack.wait_watching();

    let mut alice = stack.reviewer(ALICE).await;
    let rec = wait_request(&mut alice, &stack.host, pid, RequestState::Pending).await;
    let req = rec.request.clone().expect("request context");
    assert_eq!(req.rule_name, "db");
    assert_eq!(
        req.destination
            .as_ref()
            .map(|d| (d.address.as_str(), d.port)),
        Some(("127.0.0.1", port as u32)),
        "the destination comes from the pinned entry"
    );
    assert_eq!(req.comm, "latch-probe");
    decide_once(
        &mut alice,
        &rec.approval_id,
        DecisionKind::ApproveOnce,
        "checked",
    )
    .await;
    assert_eq!(outcome(child)["ok"], true);
}

/// Copies of the workspace's binaries where an unprivileged user can run them, and a directory
/// that user can write to.
fn unprivileged_workdir(name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile_dir(name);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    for bin in ["latch-agent", "latch-probe"] {
        let to = dir.join(bin);
        std::fs::copy(binary(bin), &to).expect("copy binary");
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    dir
}

fn wait_file(path: &std::path::Path) -> String {
    let deadline = Instant::now() + patience();
    loop {
        if let Ok(t) = std::fs::read_to_string(path) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A rule whose review is `[policy]` alone: its check approves a held connect() as it reaches
/// central, and the connection arrives at its destination with no person involved; one the
/// check does not approve is denied at once (nothing else in the chain can decide), gets EPERM
/// and never arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
async fn a_policy_check_decides_a_held_connect_without_a_person() {
    if !privileged() {
        return;
    }
    let (listener, target) = destination();
    let cg = TestCgroup::new();
    let mut stack = Stack::start(&cg).await;
    apply(
        &stack,
        &cg,
        "  - name: db\n    workload: test\n    on: connect\n    to: [127.0.0.1/32]\n    action: approve\n    timeout: 10m\n    review: [policy]\n    policy:\n      - {name: probe-reads, approve_if: 'process.comm == \"latch-probe\" && process.argv.exists(a, a == \"--read-only\")'}\n",
    )
    .await;
    stack.start_agent();
    stack.wait_watching();
    let mut admin = stack.reviewer(ADMIN).await;

    // Before the rule holds anything here, nothing is waiting at the destination.
    assert!(listener.accept().is_err(), "a connection before the test");

    let child = spawn_in(&cg.path, &probe(), &["connect", &target, "--read-only"]);
    let pid = child.id();
    assert_eq!(outcome(child)["ok"], true);
    assert!(
        latch_tests::arrives(&listener),
        "the approved connection never reached its destination"
    );
    let rec = wait_request(&mut admin, &stack.host, pid, RequestState::Approved).await;
    let d = rec.decision.expect("decision");
    assert_eq!(d.decided_by, "policy:db/probe-reads");
    assert!(rec.votes.is_empty(), "no person voted: {:?}", rec.votes);

    let child = spawn_in(&cg.path, &probe(), &["connect", &target]);
    let pid = child.id();
    assert_eq!(outcome(child)["errno"], 1);
    assert!(
        listener.accept().is_err(),
        "a denied connection reached its destination"
    );
    let rec = wait_request(&mut admin, &stack.host, pid, RequestState::Denied).await;
    assert_eq!(rec.decision.expect("decision").decided_by, "review-chain");
}

/// The reference automatic reviewer, its own process, answering central over signed HTTP.
struct ReferenceReviewer {
    child: Child,
    url: String,
}

impl ReferenceReviewer {
    /// Starts it with `rules` (TOML keys) and the secret in `secret`; returns once it listens.
    fn start(dir: &std::path::Path, secret: &std::path::Path, rules: &str) -> ReferenceReviewer {
        let config = dir.join("reviewer.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\nsecret_file = \"{}\"\n{rules}\n",
                secret.display()
            ),
        )
        .expect("write the reviewer's configuration");
        let log = dir.join("reviewer.log");
        let child = Command::new(binary("latch-reference-reviewer"))
            .arg("--config")
            .arg(&config)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("reviewer log"))
            .spawn()
            .expect("start latch-reference-reviewer");
        let deadline = Instant::now() + patience();
        let addr = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(a) = text
                .split("listen=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
            {
                break a.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "the reviewer never listened: {text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        ReferenceReviewer {
            child,
            url: format!("http://{addr}/review"),
        }
    }
}

impl Drop for ReferenceReviewer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A rule whose review is `[auto, human]`, its reviewer the reference reviewer in its own
/// process: a held connect() to a port on the reviewer's list is approved by it and arrives at
/// its destination with no person involved; one to another port is escalated, and the person
/// who then denies it is the one whose word the kernel applies (EPERM, nothing arrives).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
async fn an_automatic_reviewer_approves_a_held_connect_and_escalates_another() {
    if !privileged() {
        return;
    }
    let approved = TcpListener::bind("127.0.0.1:0").expect("bind");
    approved.set_nonblocking(true).expect("nonblocking");
    let escalated = TcpListener::bind("127.0.0.1:0").expect("bind");
    escalated.set_nonblocking(true).expect("nonblocking");
    let port = |l: &TcpListener| l.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("dir");
    let secret = dir.path().join("reviewer.secret");
    std::fs::write(&secret, "shared-secret-of-the-reviewer-0123456789\n").expect("secret");
    let reviewer = ReferenceReviewer::start(
        dir.path(),
        &secret,
        &format!("approve_ports = [{}]", port(&approved)),
    );
    let cg = TestCgroup::new();
    let mut stack = Stack::start_extra(
        &cg,
        &latch_tests::stack::Extra {
            central: format!(
                "[[auto_reviewers]]\nname = \"ref\"\nurl = \"{}\"\nsecret_file = \"{}\"\n",
                reviewer.url,
                secret.display()
            ),
            ..Default::default()
        },
    )
    .await;
    apply(
        &stack,
        &cg,
        "  - {name: db, workload: test, on: connect, to: [127.0.0.1/32], action: approve, timeout: 10m, review: [auto, human], auto: {reviewer: ref}}\n",
    )
    .await;
    stack.start_agent();
    stack.wait_watching();
    let mut alice = stack.reviewer(ALICE).await;

    let child = spawn_in(
        &cg.path,
        &probe(),
        &["connect", &format!("127.0.0.1:{}", port(&approved))],
    );
    let pid = child.id();
    assert_eq!(outcome(child)["ok"], true);
    assert!(
        latch_tests::arrives(&approved),
        "the approved connection never reached its destination"
    );
    let rec = wait_request(&mut alice, &stack.host, pid, RequestState::Approved).await;
    assert_eq!(rec.decision.expect("decision").decided_by, "auto:ref");
    assert!(rec.votes.is_empty(), "no person voted: {:?}", rec.votes);

    let child = spawn_in(
        &cg.path,
        &probe(),
        &["connect", &format!("127.0.0.1:{}", port(&escalated))],
    );
    let pid = child.id();
    let rec = wait_request(&mut alice, &stack.host, pid, RequestState::Pending).await;
    let deadline = Instant::now() + patience();
    let said = loop {
        let r = alice
            .get_request(latch_proto::v1::GetRequestRequest {
                approval_id: rec.approval_id.clone(),
            })
            .await
            .expect("get request")
            .into_inner();
        if let Some(a) = r.recommendation {
            break a;
        }
        assert!(Instant::now() < deadline, "the reviewer never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((said.verdict.as_str(), said.decided), ("escalate", false));
    decide_once(
        &mut alice,
        &rec.approval_id,
        DecisionKind::Deny,
        "not that port",
    )
    .await;
    assert_eq!(outcome(child)["errno"], 1);
    assert!(
        escalated.accept().is_err(),
        "a denied connection reached its destination"
    );
}

/// Runs `script` as user nobody with `sh`, in `cgroup`: an unprivileged workload.
fn as_nobody(cgroup: &std::path::Path, script: &str, args: &[&str]) -> std::process::Child {
    let mut argv = vec![
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        "/bin/sh",
        "-c",
        script,
        "sh",
    ];
    argv.extend_from_slice(args);
    spawn_in(cgroup, std::path::Path::new("/usr/bin/setpriv"), &argv)
}

/// An unprivileged workload asks the agent's workload socket what it waits for, waits, and is
/// told who denied it and why; the held program's own result is the evidence that it was held
/// and denied. Another process tree of the same user, in the same cgroup, learns nothing, not
/// even that the request exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
async fn a_held_workload_reads_what_it_waits_for_and_why_it_was_denied() {
    if !privileged() {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let target = format!("127.0.0.1:{}", listener.local_addr().expect("addr").port());
    let cg = TestCgroup::new();
    let mut stack = Stack::start(&cg).await;
    // The workload's requests carry its session's variables.
    let yaml = rules(
        &cg,
        "  - {name: db, workload: test, on: connect, to: [127.0.0.1/32], action: approve, \
         timeout: 10m, approvers: {groups: [dba-oncall], count: 1}}\n",
    )
    .replace(
        "    cgroups:",
        "    context_env: [AGENT_SESSION_ID, TOOL_CALL_ID, DB_URL]\n    cgroups:",
    );
    stack
        .reviewer(ADMIN)
        .await
        .apply_rules(ApplyRulesRequest {
            source_name: "suite.yaml".into(),
            yaml,
            selector: [(
                "suite".to_string(),
                cg.rel.trim_start_matches('/').to_string(),
            )]
            .into_iter()
            .collect(),
            dry_run: false,
            comment: "test".into(),
        })
        .await
        .expect("apply rules");
    stack.start_agent();
    stack.wait_watching();
    let mut alice = stack.reviewer(ALICE).await;
    let socket = stack.dir.join("agent.sock.workload");
    let w = unprivileged_workdir("workload-socket");
    let (wd, sock) = (w.display().to_string(), socket.display().to_string());

    // The workload: a shell that runs the program that will be held, then asks about it as
    // `latch-agent whyheld` does (for the shell's tree), then waits for the decision.
    let script = r#"
W=$1; S=$2; T=$3
AGENT_SESSION_ID=s-42 TOOL_CALL_ID=call-7 DB_URL=postgres://app:s3cret@db/prod OPENAI_API_KEY=sk-unlisted \
TRACEPARENT=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 \
  "$W/latch-probe" connect "$T" > "$W/probe.out" 2>&1 &
n=0
until "$W/latch-agent" whyheld --socket "$S" > "$W/list.txt" 2>&1 && grep -q '^held:' "$W/list.txt"; do
  n=$((n+1)); [ "$n" -gt 6000 ] && exit 9; sleep 0.02
done
"$W/latch-agent" whyheld --socket "$S" --json > "$W/list.json"
req=$(sed -n 's/^held: \([^ ]*\) .*/\1/p' "$W/list.txt" | head -n 1)
"$W/latch-agent" whyheld --socket "$S" --justify "nightly export of orders; password=hunter2" "$req" > "$W/just.txt" 2>&1
echo $? >> "$W/just.txt"
echo "$req" > "$W/req.tmp" && mv "$W/req.tmp" "$W/req"
"$W/latch-agent" whyheld --socket "$S" --wait --timeout 600 "$req" > "$W/wait.txt" 2>&1
echo $? > "$W/wait.rc.tmp" && mv "$W/wait.rc.tmp" "$W/wait.rc"
wait
"#;
    let mut workload = as_nobody(&cg.path, script, &[&wd, &sock, &target]);
    let req = wait_file(&w.join("req")).trim().to_string();
    let listed: serde_json::Value =
        serde_json::from_str(&wait_file(&w.join("list.json"))).expect("list json");
    let held = &listed["held"];
    assert_eq!(held.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(held[0]["request"], req.as_str());
    assert_eq!(held[0]["state"], "held");
    assert_eq!(held[0]["rule"], "db");
    assert_eq!(held[0]["target"], target.as_str());
    assert_eq!(held[0]["approver_groups"][0], "dba-oncall");
    let pid = held[0]["pid"].as_u64().expect("pid") as u32;
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .map(|c| c.contains("latch-probe"))
            .ok(),
        Some(true),
        "the listed pid is the held program"
    );
    let rec = wait_request(&mut alice, &stack.host, pid, RequestState::Pending).await;
    let deadline = held[0]["deadline_unix_ms"].as_i64().unwrap_or(0);

    // The held process's session variables (the listed ones, masked) and its trace context
    // reach the reviewer and the audit trail.
    let sent = rec.request.clone().expect("request context");
    let env: Vec<(&str, &str)> = sent
        .env
        .iter()
        .map(|v| (v.name.as_str(), v.value.as_str()))
        .collect();
    assert_eq!(
        env[..2],
        [("AGENT_SESSION_ID", "s-42"), ("TOOL_CALL_ID", "call-7")],
        "{env:?}"
    );
    assert!(
        env.len() == 3
            && env[2].0 == "DB_URL"
            && env[2].1.starts_with("postgres://")
            && !env[2].1.contains("s3cret"),
        "only the listed variables, masked: {env:?}"
    );
    let trace = sent.trace.clone().expect("trace context");
    assert_eq!(
        (
            trace.trace_id.as_str(),
            trace.parent_id.as_str(),
            trace.sampled
        ),
        ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", true)
    );
    let created = requests_created(
        &mut stack.reviewer(ADMIN).await,
        QueryAuditRequest {
            host_id: stack.host.clone(),
            ..Default::default()
        },
    )
    .await;
    assert!(
        created.iter().any(|e| e.payload_json.contains("call-7")
            && e.payload_json.contains("4bf92f3577b34da6a3ce929d0e0e4736")
            && !e.payload_json.contains("sk-unlisted")),
        "{created:?}"
    );
    assert!(
        (deadline - rec.expires_at_unix_ms).abs() < 60_000,
        "deadline {deadline} vs central's {}",
        rec.expires_at_unix_ms
    );

    // Another tree of the same user in the same cgroup: nothing listed, and the request's id
    // is refused exactly as an id that does not exist.
    let stranger = r#"
W=$1; S=$2; R=$3
"$W/latch-agent" whyheld --socket "$S" > "$W/s-list.txt" 2>&1; echo $? >> "$W/s-list.txt"
"$W/latch-agent" whyheld --socket "$S" --own > "$W/s-own.txt" 2>&1; echo $? >> "$W/s-own.txt"
"$W/latch-agent" whyheld --socket "$S" "$R" > "$W/s-req.txt" 2>&1; echo $? >> "$W/s-req.txt"
"$W/latch-agent" whyheld --socket "$S" 1.1 > "$W/s-none.txt" 2>&1; echo $? >> "$W/s-none.txt"
"$W/latch-agent" whyheld --socket "$S" --justify "me too" "$R" > "$W/s-just.txt" 2>&1; echo $? >> "$W/s-just.txt"
"#;
    let s = finish(as_nobody(&cg.path, stranger, &[&wd, &sock, &req]));
    assert!(s.status.success(), "{s:?}");
    let read = |f: &str| std::fs::read_to_string(w.join(f)).expect(f);
    assert_eq!(
        read("s-list.txt"),
        "nothing of this process tree is held\n0\n"
    );
    assert_eq!(
        read("s-own.txt"),
        "nothing of this process tree is held\n0\n"
    );
    assert_eq!(
        read("s-req.txt"),
        format!("error: no request {req} in this process tree\n3\n")
    );
    assert_eq!(
        read("s-none.txt"),
        "error: no request 1.1 in this process tree\n3\n"
    );
    assert_eq!(
        read("s-just.txt"),
        format!("error: no request {req} in this process tree\n3\n")
    );
    // A process whose parent is the workload's parent too (the test process, outside the
    // cgroup): that parent's tree holds the request, but the parent is not in the workload.
    let direct = finish(as_nobody(
        &cg.path,
        r#"exec "$1/latch-agent" whyheld --socket "$2" --justify "me too" "$3""#,
        &[&wd, &sock, &req],
    ));
    assert_eq!(direct.status.code(), Some(3), "{direct:?}");
    let direct = finish(as_nobody(
        &cg.path,
        r#"exec "$1/latch-agent" whyheld --socket "$2""#,
        &[&wd, &sock],
    ));
    assert_eq!(
        String::from_utf8_lossy(&direct.stdout),
        "nothing of this process tree is held\n",
        "{direct:?}"
    );

    // The workload's justification reaches the reviewer masked, as its own words.
    assert!(read("just.txt").ends_with("\n0\n"), "{}", read("just.txt"));
    let deadline = Instant::now() + patience();
    let said = loop {
        let said = alice
            .get_request(latch_proto::v1::GetRequestRequest {
                approval_id: rec.approval_id.clone(),
            })
            .await
            .expect("get request")
            .into_inner()
            .request
            .map(|r| r.justification)
            .unwrap_or_default();
        if !said.is_empty() {
            break said;
        }
        assert!(
            Instant::now() < deadline,
            "the justification never reached central"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        said.starts_with("nightly export of orders") && !said.contains("hunter2"),
        "{said}"
    );
    // The host's admin sees it too, beside central's id of the request.
    let out = stack.agent_cli(&["pending", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("pending json");
    let mine = listed
        .as_array()
        .and_then(|a| a.iter().find(|p| p["tgid"] == pid))
        .unwrap_or_else(|| panic!("pid {pid} not in {listed}"));
    assert_eq!(mine["approval_id"], rec.approval_id.as_str(), "{mine}");
    assert!(
        mine["justification"]
            .as_str()
            .is_some_and(|j| j.starts_with("nightly export of orders")),
        "{mine}"
    );
    let out = stack.agent_cli(&["pending"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("WORKLOAD SAYS")
            && table.contains("nightly export of orders")
            && table.contains(&rec.approval_id),
        "{table}"
    );

    decide_once(
        &mut alice,
        &rec.approval_id,
        DecisionKind::Deny,
        "use the read replica",
    )
    .await;
    assert_eq!(
        wait_file(&w.join("wait.rc")).trim(),
        "5",
        "{}",
        read("wait.txt")
    );
    let told = read("wait.txt");
    assert!(
        told.starts_with("denied by alice: use the read replica")
            && told.contains(&req)
            && told.contains(&rec.approval_id)
            && told.contains(&target),
        "{told}"
    );
    let status = workload.wait().expect("workload");
    assert!(status.success(), "{status:?}");
    let probe: serde_json::Value =
        serde_json::from_str(read("probe.out").trim()).expect("probe output");
    assert_eq!(probe["errno"], 1, "the held connect() was denied: {probe}");
    assert!(
        listener.set_nonblocking(true).is_ok() && listener.accept().is_err(),
        "nothing reached the destination"
    );
    drop(stack);
    let _ = std::fs::remove_dir_all(&w);
}

/// Two processes of one workload make the same held connect(): reviewers see one request with a
/// count, and one approval releases both in the kernel (both connections arrive); a connect to
/// another port waits on its own and is untouched by that approval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
async fn identical_held_connects_wait_as_one_request_and_one_approval_releases_both() {
    if !privileged() {
        return;
    }
    let (listener, target) = destination();
    let (other, other_target) = destination();
    let cg = TestCgroup::new();
    let mut stack = Stack::start(&cg).await;
    apply(&stack, &cg, "  - {name: db, workload: test, on: connect, to: [127.0.0.1/32], action: approve, timeout: 10m}\n").await;
    stack.start_agent();
    stack.wait_watching();
    let mut alice = stack.reviewer(ALICE).await;

    let first = spawn_in(&cg.path, &probe(), &["connect", &target]);
    let primary = wait_request(&mut alice, &stack.host, first.id(), RequestState::Pending).await;
    let second = spawn_in(&cg.path, &probe(), &["connect", &target]);
    let third = spawn_in(&cg.path, &probe(), &["connect", &other_target]);
    let apart = wait_request(&mut alice, &stack.host, third.id(), RequestState::Pending).await;
    assert_eq!(apart.merged, 0, "another destination is another request");
    let deadline = Instant::now() + patience();
    loop {
        let rec = alice
            .get_request(latch_proto::v1::GetRequestRequest {
                approval_id: primary.approval_id.clone(),
            })
            .await
            .expect("get")
            .into_inner();
        if rec.merged == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second connect never joined the first: {rec:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_state(second.id(), 'T');
    assert!(listener.accept().is_err(), "a held connection arrived");

    decide_once(
        &mut alice,
        &primary.approval_id,
        DecisionKind::ApproveOnce,
        "both, once",
    )
    .await;
    let second_pid = second.id();
    assert_eq!(outcome(first)["ok"], true);
    assert_eq!(outcome(second)["ok"], true);
    let mut arrived = 0;
    let deadline = Instant::now() + patience();
    while arrived < 2 {
        match listener.accept() {
            Ok(_) => arrived += 1,
            Err(_) => {
                assert!(
                    Instant::now() < deadline,
                    "{arrived} of 2 connections arrived"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    let rec = wait_request(&mut alice, &stack.host, second_pid, RequestState::Approved).await;
    assert_eq!(rec.merged_into, primary.approval_id);
    assert_eq!(
        rec.decision.expect("decision").decided_by,
        primary_decider(&mut alice, &primary.approval_id).await
    );

    // The request that differs still waits; nothing reached its destination.
    assert!(other.accept().is_err(), "the other connect was released");
    decide_once(
        &mut alice,
        &apart.approval_id,
        DecisionKind::Deny,
        "not that one",
    )
    .await;
    assert_eq!(outcome(third)["errno"], 1);
    assert!(other.accept().is_err(), "a denied connection arrived");
}

async fn primary_decider(
    client: &mut ReviewerServiceClient<
        tonic::service::interceptor::InterceptedService<Channel, impl tonic::service::Interceptor>,
    >,
    id: &str,
) -> String {
    client
        .get_request(latch_proto::v1::GetRequestRequest {
            approval_id: id.to_string(),
        })
        .await
        .expect("get")
        .into_inner()
        .decision
        .expect("decision")
        .decided_by
}

/// A connection held by a rule that names a host: the reviewer sees the name the workload
/// resolved beside the address, and an approval lets the connection through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
async fn a_connection_held_by_a_name_rule_shows_the_reviewer_the_name() {
    if !privileged() {
        return;
    }
    let listener = TcpListener::bind(("127.0.0.41", 0)).expect("bind destination");
    let port = listener.local_addr().expect("addr").port();
    listener.set_nonblocking(true).expect("nonblocking");
    let dns = latch_tests::dns::DnsServer::start(&["held.test,127.0.0.41,300"], &[]);
    let cg = TestCgroup::new();
    let mut stack = Stack::start(&cg).await;
    apply(
        &stack,
        &cg,
        "  - {name: by-name, workload: test, on: connect, to: [held.test], action: approve, timeout: 10m}\n",
    )
    .await;
    stack.start_agent();
    stack.wait_watching();
    let mut admin = stack.reviewer(ADMIN).await;

    let conf = dns.resolv_conf.to_string_lossy().into_owned();
    let child = spawn_in(
        &cg.path,
        &probe(),
        &["resolve", &conf, "held.test", &port.to_string()],
    );
    let pid = child.id();
    let rec = wait_request(&mut admin, &stack.host, pid, RequestState::Pending).await;
    let d = rec
        .request
        .as_ref()
        .and_then(|r| r.destination.clone())
        .expect("a destination");
    assert_eq!(
        (d.host_name.as_str(), d.address.as_str()),
        ("held.test", "127.0.0.41")
    );
    assert!(listener.accept().is_err(), "arrived while held");
    decide_once(
        &mut admin,
        &rec.approval_id,
        DecisionKind::ApproveOnce,
        "ok",
    )
    .await;
    let v = outcome(child);
    assert_eq!(v["ok"], true, "{v}");
    assert!(
        latch_tests::arrives(&listener),
        "the approved connection never arrived"
    );
    // The audit trail's record of the request has the name too.
    let created = requests_created(
        &mut admin,
        QueryAuditRequest {
            request_id: rec.approval_id.clone(),
            ..Default::default()
        },
    )
    .await;
    let [entry] = created.as_slice() else {
        panic!("one request.created record for the request: {created:?}");
    };
    let payload: serde_json::Value =
        serde_json::from_str(&entry.payload_json).expect("the record's payload is JSON");
    assert_eq!(
        payload["destination"]["host_name"], "held.test",
        "{payload}"
    );
}

/// Grant `id` of `host` as central lists it, revoked and expired ones included.
async fn listed_grant(
    admin: &mut ReviewerServiceClient<
        tonic::service::interceptor::InterceptedService<Channel, impl tonic::service::Interceptor>,
    >,
    host: &str,
    id: &str,
) -> latch_proto::v1::Grant {
    admin
        .list_grants(ListGrantsRequest {
            include_inactive: true,
            host_id: host.to_string(),
        })
        .await
        .expect("list grants")
        .into_inner()
        .grants
        .into_iter()
        .find(|g| g.grant_id == id)
        .unwrap_or_else(|| panic!("grant {id} is not listed"))
}

/// Waits until `child`'s connection is held at central, denies it, and checks that the
/// connection failed with `EPERM` and that nothing arrived at `at` (`what`).
async fn deny_held(
    admin: &mut ReviewerServiceClient<
        tonic::service::interceptor::InterceptedService<Channel, impl tonic::service::Interceptor>,
    >,
    host: &str,
    child: std::process::Child,
    at: &TcpListener,
    what: &str,
) {
    let rec = wait_request(admin, host, child.id(), RequestState::Pending).await;
    decide_once(admin, &rec.approval_id, DecisionKind::Deny, what).await;
    assert_eq!(outcome(child)["errno"], libc::EPERM, "{what}");
    assert!(at.accept().is_err(), "arrived at {what}");
}

/// A grant on a connection held by a rule that names its host covers the name: after the name
/// moves to another address (as cloud endpoints' do), the workload reaches the new address
/// without a request, also through an agent restarted in between. It does not reach an address
/// an address rule asks about; another name of the same rule is still asked about; the revoked
/// grant covers nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
async fn a_grant_on_a_name_covers_the_addresses_the_name_moves_to() {
    if !privileged() {
        return;
    }
    let first = TcpListener::bind(("127.0.0.51", 0)).expect("bind the first address");
    let port = first.local_addr().expect("addr").port();
    let moved = TcpListener::bind(("127.0.0.52", port)).expect("bind the address it moves to");
    let other = TcpListener::bind(("127.0.0.53", port)).expect("bind the other name's address");
    let db = TcpListener::bind(("127.0.0.54", port)).expect("bind the address a rule guards");
    for l in [&first, &moved, &other, &db] {
        l.set_nonblocking(true).expect("nonblocking");
    }
    let cg = TestCgroup::new();
    let mut stack = Stack::start(&cg).await;
    apply(
        &stack,
        &cg,
        "  - {name: by-name, workload: test, on: connect, to: [moving.test, other.test], action: approve, timeout: 10m}\n\
         \x20 - {name: db, workload: test, on: connect, to: [127.0.0.54/32], action: approve, timeout: 10m}\n",
    )
    .await;
    stack.start_agent();
    stack.wait_watching();
    let mut admin = stack.reviewer(ADMIN).await;
    let resolve = |conf: &std::path::Path, name: &str| {
        spawn_in(
            &cg.path,
            &probe(),
            &["resolve", &conf.to_string_lossy(), name, &port.to_string()],
        )
    };

    let dns = latch_tests::dns::DnsServer::start(
        &["moving.test,127.0.0.51,300", "other.test,127.0.0.53,300"],
        &[],
    );
    let child = resolve(&dns.resolv_conf, "moving.test");
    let rec = wait_request(&mut admin, &stack.host, child.id(), RequestState::Pending).await;
    let grant = admin
        .decide(DecideRequest {
            approval_id: rec.approval_id.clone(),
            kind: DecisionKind::ApproveFor as i32,
            duration_seconds: 3600,
            scope: GrantScope::Workload as i32,
            reason: "this host for an hour".into(),
        })
        .await
        .expect("decide")
        .into_inner()
        .request
        .and_then(|r| r.decision)
        .and_then(|d| d.grant)
        .expect("a grant");
    assert_eq!(grant.host_name, "moving.test", "{grant:?}");
    let v = outcome(child);
    assert_eq!(v["ok"], true, "{v}");
    assert!(
        latch_tests::arrives(&first),
        "the approved connection never arrived"
    );

    // A restarted agent goes on covering the name.
    stack.kill_agent();
    stack.start_agent();
    stack.wait_watching();

    // The name moves: a new server answers with another address.
    drop(dns);
    let dns = latch_tests::dns::DnsServer::start(
        &["moving.test,127.0.0.52,300", "other.test,127.0.0.53,300"],
        &[],
    );
    let v = outcome(resolve(&dns.resolv_conf, "moving.test"));
    assert_eq!(
        (v["ok"].clone(), v["resolved"].clone()),
        (true.into(), "127.0.0.52".into()),
        "the grant on the name did not cover its new address: {v}"
    );
    assert!(
        latch_tests::arrives(&moved),
        "nothing arrived at the new address"
    );

    // A name its workload's server moves onto an address an address rule asks about does not
    // take the grant there.
    drop(dns);
    let dns = latch_tests::dns::DnsServer::start(&["moving.test,127.0.0.54,300"], &[]);
    let child = resolve(&dns.resolv_conf, "moving.test");
    deny_held(&mut admin, &stack.host, child, &db, "the guarded address").await;
    drop(dns);
    let dns = latch_tests::dns::DnsServer::start(
        &["moving.test,127.0.0.52,300", "other.test,127.0.0.53,300"],
        &[],
    );

    // Another name of the same rule is asked about.
    let child = resolve(&dns.resolv_conf, "other.test");
    deny_held(
        &mut admin,
        &stack.host,
        child,
        &other,
        "the other name's address",
    )
    .await;

    // Revoked, the grant covers neither address: the name is asked about again.
    admin
        .revoke_grant(RevokeGrantRequest {
            grant_id: grant.grant_id.clone(),
            reason: "done".into(),
            close_connections: false,
        })
        .await
        .expect("revoke");
    // The revocation reaches the agent over its stream: until it has, a connection may still go
    // through. Once it has, the name is asked about again.
    let deadline = Instant::now() + patience();
    let mut through = 0;
    let (child, rec) = loop {
        let mut child = resolve(&dns.resolv_conf, "moving.test");
        let found = loop {
            if child.try_wait().expect("wait").is_some() {
                break None;
            }
            let pending = admin
                .list_requests(ListRequestsRequest {
                    state: RequestState::Pending as i32,
                    host_id: stack.host.clone(),
                    limit: 100,
                })
                .await
                .expect("list")
                .into_inner()
                .requests;
            if let Some(r) = pending
                .into_iter()
                .find(|r| r.request.as_ref().is_some_and(|q| q.tgid == child.id()))
            {
                break Some(r);
            }
            assert!(
                Instant::now() < deadline,
                "after the revocation moving.test was never held ({through} connections went through)"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        match found {
            Some(rec) => break (child, rec),
            None => {
                through += 1;
                assert!(
                    Instant::now() < deadline,
                    "after the revocation moving.test was never held ({through} connections went through)"
                );
                let _ = moved.accept();
            }
        }
    };
    decide_once(&mut admin, &rec.approval_id, DecisionKind::Deny, "revoked").await;
    assert_eq!(outcome(child)["errno"], libc::EPERM, "after the revocation");
    assert!(moved.accept().is_err(), "arrived after the revocation");

    // The listing says what the grant covered.
    let g = listed_grant(&mut admin, &stack.host, &grant.grant_id).await;
    assert_eq!(g.host_name, "moving.test");
}

/// A rule of new names holds a workload's first connection to each name it has not reached
/// before. A person's approval makes the name known (central remembers it): later connections
/// to it go through, also from an agent restarted while central is down, while another new name
/// is still held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
async fn a_first_connection_to_a_new_name_waits_for_a_person() {
    if !privileged() {
        return;
    }
    let fresh = TcpListener::bind(("127.0.0.61", 0)).expect("bind the first name's address");
    let port = fresh.local_addr().expect("addr").port();
    let second = TcpListener::bind(("127.0.0.62", port)).expect("bind the second name's address");
    for l in [&fresh, &second] {
        l.set_nonblocking(true).expect("nonblocking");
    }
    let dns = latch_tests::dns::DnsServer::start(
        &["fresh.test,127.0.0.61,300", "second.test,127.0.0.62,300"],
        &[],
    );
    let cg = TestCgroup::new();
    let mut stack = Stack::start(&cg).await;
    apply(
        &stack,
        &cg,
        "  - {name: first-time, workload: test, on: connect, new_names: true, action: approve, timeout: 10m}\n",
    )
    .await;
    stack.start_agent();
    stack.wait_watching();
    let mut admin = stack.reviewer(ADMIN).await;
    let resolve = |name: &str| {
        spawn_in(
            &cg.path,
            &probe(),
            &[
                "resolve",
                &dns.resolv_conf.to_string_lossy(),
                name,
                &port.to_string(),
            ],
        )
    };
    let goes_through = |child: std::process::Child, at: &TcpListener, what: &str| {
        let v = outcome(child);
        assert_eq!(v["ok"], true, "{what}: {v}");
        assert!(latch_tests::arrives(at), "{what}: nothing arrived");
    };

    let child = resolve("fresh.test");
    let rec = wait_request(&mut admin, &stack.host, child.id(), RequestState::Pending).await;
    let r = rec.request.as_ref().expect("the request");
    let d = r.destination.as_ref().expect("a destination");
    assert_eq!(
        (r.rule_name.as_str(), d.host_name.as_str(), d.new_name),
        ("first-time", "fresh.test", true),
        "{r:?}"
    );
    assert!(fresh.accept().is_err(), "arrived while held");
    decide_once(
        &mut admin,
        &rec.approval_id,
        DecisionKind::ApproveOnce,
        "a partner's API",
    )
    .await;
    goes_through(child, &fresh, "the approved first connection");

    goes_through(resolve("fresh.test"), &fresh, "the name, once known");
    deny_held(
        &mut admin,
        &stack.host,
        resolve("second.test"),
        &second,
        "another new name",
    )
    .await;

    // Restarted while central is down, the agent still knows the name.
    stack.kill_central();
    stack.kill_agent();
    stack.start_agent();
    stack.wait_watching();
    goes_through(
        resolve("fresh.test"),
        &fresh,
        "the known name after a restart without central",
    );
}
