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
    reviewer_service_client::ReviewerServiceClient, ApplyRulesRequest, ApprovalRecord,
    DecideRequest, DecisionKind, ListRequestsRequest, QueryAuditRequest, RequestState,
};
use latch_tests::{binary, outcome, privileged, probe, spawn_in, wait_state, TestCgroup, PATIENCE};
use tonic::{metadata::MetadataValue, transport::Channel, Request};

const ADMIN: &str = "admin-token-for-tests";
const ALICE: &str = "alice-token-for-tests";
const AGENT: &str = "agent-token-for-tests";

struct Stack {
    dir: PathBuf,
    central: Child,
    agent: Option<Child>,
    address: String,
    host: String,
    pin_dir: PathBuf,
    agent_config: PathBuf,
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(a) = self.agent.as_mut() {
            let _ = a.kill();
            let _ = a.wait();
        }
        let _ = self.central.kill();
        let _ = self.central.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl Stack {
    async fn start(cg: &TestCgroup) -> Stack {
        let name = cg.rel.trim_start_matches('/').to_string();
        let dir = std::env::temp_dir().join(format!("{name}-stack"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let port = free_port();
        let host = format!("host-{name}");
        let central_config = dir.join("central.toml");
        std::fs::write(
            &central_config,
            format!(
                "listen = \"127.0.0.1:{port}\"\ndatabase = \"sqlite://{db}\"\n\
                 [[reviewers]]\ntoken = \"{ADMIN}\"\nsubject = \"root-admin\"\nrole = \"admin\"\n\
                 [[reviewers]]\ntoken = \"{ALICE}\"\nsubject = \"alice\"\nrole = \"approver\"\ngroups = [\"dba-oncall\"]\n\
                 [[agents]]\nhost_id = \"{host}\"\ntoken = \"{AGENT}\"\n",
                db = dir.join("central.db").display()
            ),
        )
        .expect("write central config");
        let central = Command::new(binary("latch-central"))
            .args(["serve", "--config"])
            .arg(&central_config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start latch-central");
        let address = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + PATIENCE;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "central never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        let token_file = dir.join("agent.token");
        std::fs::write(&token_file, format!("{AGENT}\n")).expect("token");
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(&name);
        let agent_config = dir.join("agent.toml");
        std::fs::write(
            &agent_config,
            format!(
                "rules = \"{rules}\"\nadmin_socket = \"{sock}\"\npin_dir = \"{pin}\"\nrescan_interval = \"200ms\"\nmetrics_listen = \"\"\nwaiting_dir = \"\"\njournal_dir = \"{journal}\"\n\
                 [central]\naddress = \"{address}\"\ntoken_file = \"{token}\"\nhost_id = \"{host}\"\n\
                 rules_cache = \"{cache}\"\nlabels = {{ suite = \"{name}\" }}\n",
                rules = dir.join("no-local-rules.yaml").display(),
                sock = dir.join("agent.sock").display(),
                pin = pin_dir.display(),
                token = token_file.display(),
                cache = dir.join("rules.cache.yaml").display(),
                journal = dir.join("journal").display(),
            ),
        )
        .expect("write agent config");
        Stack {
            dir,
            central,
            agent: None,
            address,
            host,
            pin_dir,
            agent_config,
        }
    }

    fn start_agent(&mut self) {
        let child = Command::new(binary("latch-agent"))
            .arg("--config")
            .arg(&self.agent_config)
            .arg("run")
            .stderr(Stdio::null())
            .spawn()
            .expect("start latch-agent");
        self.agent = Some(child);
    }

    fn wait_watching(&self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let out = Command::new(binary("latch-agent"))
                .arg("--config")
                .arg(&self.agent_config)
                .args(["status", "--json"])
                .output()
                .expect("status");
            if out.status.success() {
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
                if v["watched_cgroups"]
                    .as_array()
                    .is_some_and(|a| !a.is_empty())
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the agent never enforced rules from central"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    async fn reviewer(
        &self,
        token: &str,
    ) -> ReviewerServiceClient<
        tonic::service::interceptor::InterceptedService<Channel, impl tonic::service::Interceptor>,
    > {
        let channel = Channel::from_shared(self.address.clone())
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        let value: MetadataValue<_> = format!("Bearer {token}").parse().expect("header");
        ReviewerServiceClient::with_interceptor(channel, move |mut req: Request<()>| {
            req.metadata_mut().insert("authorization", value.clone());
            Ok(req)
        })
    }
}

/// Applies rules for this test's cgroup to the hosts labelled with this test's suite.
async fn apply(stack: &Stack, cg: &TestCgroup, body: &str) {
    let mut admin = stack.reviewer(ADMIN).await;
    let suite = cg.rel.trim_start_matches('/').to_string();
    admin
        .apply_rules(ApplyRulesRequest {
            source_name: "suite.yaml".into(),
            yaml: rules(cg, body),
            selector: [("suite".to_string(), suite)].into_iter().collect(),
            dry_run: false,
            comment: "test".into(),
        })
        .await
        .expect("apply rules");
}

fn rules(cg: &TestCgroup, body: &str) -> String {
    format!(
        "workloads:\n  - name: test\n    cgroups: [\"{}\"]\nrules:\n{body}",
        cg.rel
    )
}

async fn wait_request(
    client: &mut ReviewerServiceClient<
        tonic::service::interceptor::InterceptedService<Channel, impl tonic::service::Interceptor>,
    >,
    host: &str,
    tgid: u32,
    state: RequestState,
) -> ApprovalRecord {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let list = client
            .list_requests(ListRequestsRequest {
                state: state as i32,
                host_id: host.to_string(),
                limit: 100,
            })
            .await
            .expect("list")
            .into_inner();
        if let Some(r) = list
            .requests
            .into_iter()
            .find(|r| r.request.as_ref().is_some_and(|q| q.tgid == tgid))
        {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no {state:?} request for {tgid} at central"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
    alice
        .decide(DecideRequest {
            approval_id: rec.approval_id.clone(),
            kind: DecisionKind::ApproveOnce as i32,
            duration_seconds: 0,
            scope: 0,
            reason: "checked with the owner".into(),
        })
        .await
        .expect("decide");
    assert_eq!(outcome(child)["ok"], true);

    // Denied: EPERM.
    let child = spawn_in(&cg.path, &probe(), &["connect", &target]);
    let rec = wait_request(&mut alice, &stack.host, child.id(), RequestState::Pending).await;
    alice
        .decide(DecideRequest {
            approval_id: rec.approval_id,
            kind: DecisionKind::Deny as i32,
            duration_seconds: 0,
            scope: 0,
            reason: "not during the freeze".into(),
        })
        .await
        .expect("decide");
    assert_eq!(outcome(child)["errno"], 1);

    // A process that dies while held cancels its request at central.
    let mut child = spawn_in(&cg.path, &probe(), &["connect", &target]);
    let pid = child.id();
    wait_request(&mut alice, &stack.host, pid, RequestState::Pending).await;
    child.kill().expect("kill");
    child.wait().expect("reap");
    wait_request(&mut alice, &stack.host, pid, RequestState::Cancelled).await;

    // The host's journal reaches central: its events and decisions, each once, in host order.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let entries = admin
            .query_audit(QueryAuditRequest {
                host_id: stack.host.clone(),
                limit: 1000,
                ..Default::default()
            })
            .await
            .expect("query audit")
            .into_inner()
            .entries;
        let agent: Vec<_> = entries.iter().filter(|e| !e.record_id.is_empty()).collect();
        let decisions = agent.iter().filter(|e| e.kind.contains("decision")).count();
        if decisions >= 2 {
            let mut seqs: Vec<i64> = agent.iter().map(|e| e.host_seq).collect();
            let n = seqs.len();
            seqs.sort_unstable();
            seqs.dedup();
            assert_eq!(seqs.len(), n, "no journal record stored twice");
            assert!(
                agent.iter().any(|e| e.kind.contains("connect")),
                "kernel events shipped: {agent:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the journal never reached central: {agent:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
