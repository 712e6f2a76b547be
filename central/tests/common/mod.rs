//! Test harness: a database per test (a SQLite file, or a fresh PostgreSQL server in a temp
//! dir), central servers on 127.0.0.1:0, and an in-process agent stand-in over real gRPC.

#![allow(dead_code)]

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Duration,
};

use latch_central::{config::Config, Server};
use latch_proto::v1::{
    agent_message::Body, agent_service_client::AgentServiceClient,
    reviewer_service_client::ReviewerServiceClient, AgentMessage, ApprovalAccepted,
    ApprovalRequest, Capabilities, Decision, Destination, Op, RegisterRequest, RequestEvent,
    RequestState, Revocation, SubscribeRequest,
};
use tonic::{transport::Channel, Request, Streaming};

pub use latch_test_pg::Postgres;

/// A safety net against a hung test, never a performance threshold.
pub const HANG: Duration = Duration::from_secs(120);

pub const RULES: &str = r#"workloads:
  - name: ai-agents
    cgroups: ["/ai.slice/*"]
rules:
  - name: prod-db
    workload: ai-agents
    on: connect
    to: ["10.20.0.0/16"]
    ports: [5432]
    action: approve
    timeout: 10m
  - name: two-person
    workload: ai-agents
    on: exec
    paths: ["/usr/bin/psql"]
    action: approve
    approvers: { groups: ["dba-oncall"], count: 2 }
  - name: quick-expiry
    workload: ai-agents
    on: exec
    paths: ["/usr/bin/scp"]
    action: approve
    timeout: 1s
    on_timeout: allow
  - name: shadow-curl
    workload: ai-agents
    on: exec
    paths: ["/usr/bin/curl"]
    action: audit
"#;

pub fn rule_id(name: &str) -> u32 {
    rule_id_in(RULES, name)
}

/// The id of rule `name` in the rules file `yaml`.
pub fn rule_id_in(yaml: &str, name: &str) -> u32 {
    policy::RuleSet::parse("rules.yaml", yaml)
        .expect("test rules parse")
        .rules
        .iter()
        .find(|r| r.name == name)
        .map(|r| r.id)
        .unwrap_or_else(|| panic!("no rule '{name}' in the test rules"))
}

/// Starts central with `config`, which must refuse to start; returns why it refused.
pub async fn start_refused(config: &Config) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    latch_central::start(config, Some(l))
        .await
        .err()
        .expect("central refused to start")
        .to_string()
}

pub const ALICE: &str = "tok-alice-0001";
pub const BOB: &str = "tok-bob-00002";
pub const CAROL: &str = "tok-carol-0003";
pub const DAVE: &str = "tok-dave-00004";
pub const ADMIN: &str = "tok-admin-0005";
pub const VIEWER: &str = "tok-viewer-006";

pub fn host_token(host: &str) -> String {
    format!("agent-token-{host}")
}

/// A database and a configuration; servers started from it share the database.
pub struct Env {
    pub config: Config,
    pub dir: tempfile::TempDir,
    _sqlite: Option<tempfile::TempDir>,
    _pg: Option<Postgres>,
    pub kind: &'static str,
}

fn config(database: String, key: &Path) -> Config {
    Config::parse("test.toml", &config_text(&database, key)).expect("test config")
}

/// The test configuration's text: the reviewers and agents above, `database`, and the audit
/// signing key at `key`.
pub fn config_text(database: &str, key: &Path) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"
database = "{database}"
[audit]
signing_key = "{key}"
[[reviewers]]
token = "{ALICE}"
subject = "alice"
email = "alice@example.com"
groups = ["dba-oncall"]
role = "approver"
[[reviewers]]
token = "{BOB}"
subject = "bob"
groups = ["dba-oncall"]
role = "approver"
[[reviewers]]
token = "{CAROL}"
subject = "carol"
role = "approver"
[[reviewers]]
token = "{DAVE}"
subject = "dave"
groups = ["dba-oncall"]
role = "approver"
[[reviewers]]
token = "{ADMIN}"
subject = "root-admin"
role = "admin"
[[reviewers]]
token = "{VIEWER}"
subject = "vic"
role = "viewer"
[[agents]]
host_id = "h1"
token = "{h1}"
[[agents]]
host_id = "h2"
token = "{h2}"
"#,
        h1 = host_token("h1"),
        h2 = host_token("h2"),
        key = key.display(),
    )
}

impl Env {
    pub async fn sqlite() -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        let path: PathBuf = dir.path().join("state").join("central.db");
        let keys = tempfile::tempdir().expect("temp dir");
        Env {
            config: config(
                format!("sqlite://{}", path.display()),
                &keys.path().join("audit-key.pem"),
            ),
            dir: keys,
            _sqlite: Some(dir),
            _pg: None,
            kind: "sqlite",
        }
    }

    pub async fn postgres() -> Option<Env> {
        let pg = Postgres::start()?;
        let url = pg.create_db("latch_test").await.expect("create database");
        let keys = tempfile::tempdir().expect("temp dir");
        Some(Env {
            config: config(url, &keys.path().join("audit-key.pem")),
            dir: keys,
            _sqlite: None,
            _pg: Some(pg),
            kind: "postgres",
        })
    }

    pub async fn start(&self) -> Server {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        latch_central::start(&self.config, Some(l))
            .await
            .expect("start central")
    }

    /// A server named `replica`: replicas in one test process would otherwise share the
    /// default name (host name and process id), which separate machines never do.
    pub async fn start_replica(&self, replica: &str) -> Server {
        let mut config = self.config.clone();
        config.replica_id = Some(replica.into());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        latch_central::start(&config, Some(l))
            .await
            .expect("start central")
    }
}

/// A connection pool that may write the central's database behind its back, as someone with the
/// database file or credentials would: on SQLite a pool of its own (the store's readers are
/// read-only), on PostgreSQL the store's pool.
pub async fn tamper_pool(server: &Server) -> sqlx::AnyPool {
    let store = server.central().store();
    match store.backend() {
        latch_central::store::Backend::Sqlite => sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect(store.url())
            .await
            .expect("a writable connection to the SQLite file"),
        latch_central::store::Backend::Postgres => store.pool().clone(),
    }
}

pub fn req<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    r
}

/// The first 1,000 audit records of `kind` (every kind when empty), oldest first, as a viewer
/// reads them.
pub async fn audit_kind(
    rv: &mut ReviewerServiceClient<Channel>,
    kind: &str,
) -> Vec<latch_proto::v1::AuditEntry> {
    rv.query_audit(req(
        latch_proto::v1::QueryAuditRequest {
            kind: kind.into(),
            limit: 1000,
            ..Default::default()
        },
        VIEWER,
    ))
    .await
    .expect("audit")
    .into_inner()
    .entries
}

pub async fn reviewer(server: &Server) -> ReviewerServiceClient<Channel> {
    ReviewerServiceClient::connect(format!("http://{}", server.addr()))
        .await
        .expect("connect reviewer client")
}

pub async fn agent_client(server: &Server) -> AgentServiceClient<Channel> {
    AgentServiceClient::connect(format!("http://{}", server.addr()))
        .await
        .expect("connect agent client")
}

/// Applies RULES as admin.
pub async fn apply_rules(server: &Server) -> u64 {
    apply_yaml(server, "rules.yaml", RULES).await
}

/// Applies the rules file `yaml` (named `source_name`) as admin; returns its version.
pub async fn apply_yaml(server: &Server, source_name: &str, yaml: &str) -> u64 {
    let mut r = reviewer(server).await;
    r.apply_rules(req(
        latch_proto::v1::ApplyRulesRequest {
            source_name: source_name.into(),
            yaml: yaml.into(),
            ..Default::default()
        },
        ADMIN,
    ))
    .await
    .expect("apply rules")
    .into_inner()
    .version
}

/// An agent stand-in: registered, subscribed.
pub struct Agent {
    pub host: String,
    pub client: AgentServiceClient<Channel>,
    pub stream: Streaming<AgentMessage>,
    /// Decisions already returned: delivery is at least once (a replica may deliver a decision
    /// both for the request's own event and for a later one), and agents apply a repeat as a
    /// no-op, so the simulated agent skips repeats as well.
    seen: std::collections::HashSet<(String, i32, String)>,
}

impl Agent {
    pub async fn connect(
        server: &Server,
        host: &str,
        pending: Vec<String>,
        grants: Vec<String>,
    ) -> Agent {
        Agent::connect_labels(
            server,
            host,
            HashMap::from([("env".to_string(), "prod".to_string())]),
            pending,
            grants,
        )
        .await
    }

    pub async fn connect_labels(
        server: &Server,
        host: &str,
        labels: HashMap<String, String>,
        pending: Vec<String>,
        grants: Vec<String>,
    ) -> Agent {
        Agent::connect_at(&server.addr().to_string(), host, labels, pending, grants).await
    }

    /// An agent of central at `addr` (host:port), which may be another process.
    pub async fn connect_at(
        addr: &str,
        host: &str,
        labels: HashMap<String, String>,
        pending: Vec<String>,
        grants: Vec<String>,
    ) -> Agent {
        let mut client = AgentServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("connect agent client");
        let token = host_token(host);
        client
            .register(req(
                RegisterRequest {
                    host_id: host.into(),
                    hostname: format!("{host}.example"),
                    labels,
                    agent_version: "0.1.0".into(),
                    capabilities: Some(Capabilities {
                        kernel: "6.18.0".into(),
                        backends: vec!["cgroup-sock-addr".into(), "tracepoint-exec".into()],
                        features: HashMap::from([("bpf_lsm".to_string(), "no".to_string())]),
                    }),
                },
                &token,
            ))
            .await
            .expect("register");
        let stream = client
            .subscribe(req(
                SubscribeRequest {
                    host_id: host.into(),
                    pending_request_ids: pending,
                    grant_ids: grants,
                    rules_version: 0,
                },
                &token,
            ))
            .await
            .expect("subscribe")
            .into_inner();
        Agent {
            host: host.into(),
            client,
            stream,
            seen: Default::default(),
        }
    }

    pub fn token(&self) -> String {
        host_token(&self.host)
    }

    /// Next message (the stream must not end).
    pub async fn next(&mut self) -> Body {
        let m = tokio::time::timeout(HANG, self.stream.message())
            .await
            .expect("agent stream hung")
            .expect("agent stream failed")
            .expect("agent stream ended");
        m.body.expect("message without body")
    }

    /// Next decision not seen before, skipping rules pushes.
    pub async fn next_decision(&mut self) -> Decision {
        loop {
            match self.next().await {
                Body::Decision(d) => {
                    let key = (d.approval_id.clone(), d.outcome, d.decided_by.clone());
                    if self.seen.insert(key) {
                        return d;
                    }
                }
                Body::Rules(_) | Body::KnownNames(_) => continue,
                Body::Revocation(r) => panic!("expected a decision, got revocation {r:?}"),
            }
        }
    }

    /// A rules push and the next new decision, in whichever order they come (a reconnection's
    /// replay queues them in that order, but a decision dispatched live meanwhile can come
    /// first).
    pub async fn next_rules_and_decision(&mut self) -> (u64, Decision) {
        let (mut rules, mut decision): (Option<u64>, Option<Decision>) = (None, None);
        loop {
            if let (Some(v), Some(d)) = (rules, decision.as_ref()) {
                return (v, d.clone());
            }
            match self.next().await {
                Body::Rules(r) => rules = Some(r.version),
                Body::Decision(d) => {
                    let key = (d.approval_id.clone(), d.outcome, d.decided_by.clone());
                    if decision.is_none() && self.seen.insert(key) {
                        decision = Some(d);
                    }
                }
                Body::KnownNames(_) => continue,
                Body::Revocation(r) => panic!("expected rules and a decision, got {r:?}"),
            }
        }
    }

    /// Next revocation, skipping rules pushes and repeats of decisions already returned.
    pub async fn next_revocation(&mut self) -> Revocation {
        loop {
            match self.next().await {
                Body::Revocation(r) => return r,
                Body::Rules(_) | Body::KnownNames(_) => continue,
                Body::Decision(d) => {
                    let key = (d.approval_id.clone(), d.outcome, d.decided_by.clone());
                    assert!(
                        self.seen.contains(&key),
                        "expected a revocation, got a new decision {d:?}"
                    );
                }
            }
        }
    }

    /// Next rules push (version).
    pub async fn next_rules(&mut self) -> u64 {
        match self.next().await {
            Body::Rules(r) => r.version,
            other => panic!("expected rules, got {other:?}"),
        }
    }

    pub fn request(&self, id: &str, rule: &str) -> ApprovalRequest {
        let exec = rule != "prod-db";
        ApprovalRequest {
            request_id: id.into(),
            host_id: self.host.clone(),
            op: if exec { Op::Exec } else { Op::Connect } as i32,
            pid: 4242,
            tgid: 4242,
            ppid: 1,
            uid: 1000,
            gid: 1000,
            user: "llm".into(),
            group: "llm".into(),
            cgroup_id: 777,
            cgroup_path: "/ai.slice/runner.service".into(),
            unit: "runner.service".into(),
            comm: "python3".into(),
            exe: "/usr/bin/python3.11".into(),
            argv: vec![
                "python3".into(),
                "agent.py".into(),
                "--token=[REDACTED]".into(),
            ],
            ancestors: vec![latch_proto::v1::Ancestor {
                pid: 1,
                exe: "/usr/lib/systemd/systemd".into(),
                argv: vec!["/sbin/init".into()],
            }],
            destination: (!exec).then(|| Destination {
                family: "inet".into(),
                address: "10.20.1.5".into(),
                port: 5432,
                protocol: "tcp".into(),
                host_name: String::new(),
                by_name: false,
                new_name: false,
            }),
            exec_path: if exec {
                "/usr/bin/psql".into()
            } else {
                String::new()
            },
            rule_id: rule_id(rule),
            rule_name: rule.into(),
            workload: "ai-agents".into(),
            requester: "unit:runner.service".into(),
            created_at_unix_ms: 1,
            rules_version: 0,
            justification: String::new(),
            ..Default::default()
        }
    }

    pub async fn submit(&mut self, r: ApprovalRequest) -> ApprovalAccepted {
        let t = self.token();
        self.client
            .request_approval(req(r, &t))
            .await
            .expect("request approval")
            .into_inner()
    }
}

/// Reads a reviewer's watch (`WatchRequests`) until it shows request `approval_id` in `state`.
pub async fn watched(watch: &mut Streaming<RequestEvent>, approval_id: &str, state: RequestState) {
    tokio::time::timeout(HANG, async {
        loop {
            let ev = watch
                .message()
                .await
                .expect("watch failed")
                .expect("watch ended");
            if ev
                .request
                .is_some_and(|r| r.approval_id == approval_id && r.state == state as i32)
            {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the watch never showed {approval_id} {state:?}"))
}

/// Runs each named `async fn(&Env)` as a test on SQLite and again on PostgreSQL (skipped when
/// `LATCH_SKIP_POSTGRES` says so).
#[allow(unused_macros)]
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let env = super::Env::sqlite().await;
                    super::$name(&env).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(env) = super::Env::postgres().await else { return };
                    super::$name(&env).await;
                }
            )*
        }
    };
}

/// One call a [`HangingChat`] received.
pub struct ChatCall {
    /// Request path (`/api/chat.update`, `/webhookb2/...`).
    pub path: String,
    /// Request body.
    pub body: String,
    /// The connection of a call left unanswered; `None` once answered.
    held: Option<std::net::TcpStream>,
}

impl ChatCall {
    /// Whether the call is unanswered and its client still waits for the answer. Read off the
    /// socket itself: a client that gave up has closed it (a peek then reads 0 bytes), and one
    /// that waits sends nothing more (a peek would block).
    pub fn still_waiting(&self) -> bool {
        let Some(conn) = &self.held else {
            return false;
        };
        matches!(conn.peek(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

#[derive(Default)]
struct ChatCalls {
    calls: std::sync::Mutex<Vec<ChatCall>>,
    changed: tokio::sync::Notify,
}

/// A chat endpoint (the Slack Web API, a Teams webhook) on 127.0.0.1 that answers only the calls
/// its `answer` function has a JSON body for and leaves every other one unanswered, the
/// connection open, for as long as the client is willing to wait. Plain HTTP/1.1 over a socket
/// of its own, so that whether a held call's client still waits can be observed.
pub struct HangingChat {
    pub addr: std::net::SocketAddr,
    state: std::sync::Arc<ChatCalls>,
}

impl HangingChat {
    pub async fn start(answer: fn(&str) -> Option<String>) -> HangingChat {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let state = std::sync::Arc::new(ChatCalls::default());
        let calls = state.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = l.accept().await {
                let calls = calls.clone();
                tokio::spawn(async move { chat_call(conn, answer, &calls).await });
            }
        });
        HangingChat { addr, state }
    }

    /// Waits until a call that `f` accepts has arrived (bounded by HANG, a hang guard) and returns
    /// its index, for [`HangingChat::with_call`].
    pub async fn call(&self, what: &str, f: impl Fn(&ChatCall) -> bool) -> usize {
        tokio::time::timeout(HANG, async {
            loop {
                let changed = self.state.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if let Some(i) = self.state.calls.lock().expect("calls").iter().position(&f) {
                    return i;
                }
                changed.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("waiting for {what}: calls so far {:?}", self.paths()))
    }

    /// Looks at call number `i`.
    pub fn with_call<T>(&self, i: usize, f: impl FnOnce(&ChatCall) -> T) -> T {
        f(&self.state.calls.lock().expect("calls")[i])
    }

    /// The paths of every call so far.
    pub fn paths(&self) -> Vec<String> {
        self.state
            .calls
            .lock()
            .expect("calls")
            .iter()
            .map(|c| c.path.clone())
            .collect()
    }
}

/// Reads one request; answers it when `answer` says how, else keeps its connection.
async fn chat_call(
    mut conn: tokio::net::TcpStream,
    answer: fn(&str) -> Option<String>,
    calls: &ChatCalls,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).to_string();
    let held = match answer(&path) {
        Some(json) => {
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json; charset=utf-8\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{json}",
                json.len()
            );
            let _ = conn.write_all(reply.as_bytes()).await;
            let _ = conn.shutdown().await;
            None
        }
        None => Some(conn.into_std().expect("a std socket")),
    };
    calls
        .calls
        .lock()
        .expect("calls")
        .push(ChatCall { path, body, held });
    calls.changed.notify_waiters();
}

/// The services `grpc.reflection.v1` lists on `channel`, as `grpcurl list` asks for them.
pub async fn list_services(channel: Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut resp = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(vec![ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }]))
        .await
        .expect("reflection")
        .into_inner();
    let m = resp
        .message()
        .await
        .expect("reflection stream")
        .expect("a response");
    let Some(MessageResponse::ListServicesResponse(list)) = m.message_response else {
        panic!("unexpected reflection response {m:?}");
    };
    list.service.into_iter().map(|s| s.name).collect()
}

/// One scrape of `/metrics` at `addr`, over plain HTTP.
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    let body = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("GET /metrics")
        .error_for_status()
        .expect("/metrics status")
        .text()
        .await
        .expect("/metrics body");
    promtext::testing::promtool_check(&body);
    body
}

/// The value of the sample line that starts with `series ` (name and labels), if any.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}
