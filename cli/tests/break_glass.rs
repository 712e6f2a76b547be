//! `latchctl approve ID --break-glass`: the real binary against an in-process latch-central whose
//! reviewers log in through the test identity provider.

use std::{
    collections::HashMap,
    path::PathBuf,
    process::{Command, Output},
};

use latch_central::{config::Config, Server};
use latch_proto::v1::{
    agent_service_client::AgentServiceClient, reviewer_service_client::ReviewerServiceClient,
    ApplyRulesRequest, ApprovalRequest, Op, QueryAuditRequest, RegisterRequest, SubscribeRequest,
};
use latch_test_idp::TestIdp;
use tonic::Request;

const BIN: &str = env!("CARGO_BIN_EXE_latchctl");
const AGENT: &str = "agent-token-h1";
const RULES: &str = r#"workloads:
  - name: ai-agents
    cgroups: ["/ai.slice/*"]
rules:
  - name: two-dbas
    workload: ai-agents
    on: exec
    paths: ["/usr/bin/psql"]
    action: approve
    approvers: { groups: ["dba-oncall"], count: 2 }
"#;
const REASON: &str = "INC-4711: primary database down, every DBA unreachable";

fn md<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    r
}

struct Env {
    dir: tempfile::TempDir,
    idp: TestIdp,
    server: Server,
    url: String,
}

impl Env {
    async fn start(break_glass: bool) -> Env {
        let idp = TestIdp::start().await.expect("identity provider");
        idp.add_user("ann", "ann@example.com", &["latch-admins"]);
        idp.add_user("amir", "amir@example.com", &["dba-oncall"]);
        let dir = tempfile::tempdir().expect("temp dir");
        let text = format!(
            r#"
listen = "127.0.0.1:0"
database = "sqlite://{db}"
[audit]
signing_key = "{key}"
[oidc]
issuer = "{issuer}"
audiences = ["{aud}"]
[oidc.roles]
"latch-admins" = "admin"
"dba-oncall" = "approver"
[break_glass]
enabled = {break_glass}
[[agents]]
host_id = "h1"
token = "{AGENT}"
"#,
            db = dir.path().join("central.db").display(),
            key = dir.path().join("audit.pem").display(),
            issuer = idp.issuer(),
            aud = idp.api_audience(),
        );
        let config = Config::parse("test.toml", &text).expect("config");
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let server = latch_central::start(&config, Some(l))
            .await
            .expect("start central");
        let url = format!("http://{}", server.addr());
        for user in ["ann", "amir"] {
            std::fs::write(
                dir.path().join(user),
                idp.token(user).expect("token") + "\n",
            )
            .expect("token file");
        }
        Env {
            dir,
            idp,
            server,
            url,
        }
    }

    fn token_file(&self, user: &str) -> PathBuf {
        self.dir.path().join(user)
    }

    /// Applies the rules as ann and submits a held `psql` that ann herself asked for.
    async fn submit(&self) -> (String, tonic::Streaming<latch_proto::v1::AgentMessage>) {
        let ann = self.idp.token("ann").expect("token");
        ReviewerServiceClient::connect(self.url.clone())
            .await
            .expect("reviewer")
            .apply_rules(md(
                ApplyRulesRequest {
                    source_name: "rules.yaml".into(),
                    yaml: RULES.into(),
                    ..Default::default()
                },
                &ann,
            ))
            .await
            .expect("apply rules");
        let mut a = AgentServiceClient::connect(self.url.clone())
            .await
            .expect("agent");
        a.register(md(
            RegisterRequest {
                host_id: "h1".into(),
                hostname: "h1.example".into(),
                labels: HashMap::new(),
                agent_version: "0.1.0".into(),
                capabilities: None,
            },
            AGENT,
        ))
        .await
        .expect("register");
        let stream = a
            .subscribe(md(
                SubscribeRequest {
                    host_id: "h1".into(),
                    ..Default::default()
                },
                AGENT,
            ))
            .await
            .expect("subscribe")
            .into_inner();
        let rule_id = policy::RuleSet::parse("rules.yaml", RULES)
            .expect("rules")
            .rules[0]
            .id;
        let id = a
            .request_approval(md(
                ApprovalRequest {
                    request_id: "9.1".into(),
                    host_id: "h1".into(),
                    op: Op::Exec as i32,
                    pid: 9,
                    tgid: 9,
                    exe: "/usr/bin/psql".into(),
                    exec_path: "/usr/bin/psql".into(),
                    argv: vec!["psql".into()],
                    rule_id,
                    rule_name: "two-dbas".into(),
                    workload: "ai-agents".into(),
                    requester: "user:ann".into(),
                    created_at_unix_ms: 1,
                    ..Default::default()
                },
                AGENT,
            ))
            .await
            .expect("request")
            .into_inner()
            .approval_id;
        (id, stream)
    }

    async fn run(&self, user: &str, args: &[&str]) -> Output {
        let mut c = Command::new(BIN);
        c.arg("--server")
            .arg(&self.url)
            .arg("--token-file")
            .arg(self.token_file(user))
            .args(args)
            .env_remove("LATCH_TOKEN")
            .env("XDG_CONFIG_HOME", self.dir.path().join("xdg"));
        tokio::task::spawn_blocking(move || c.output().expect("run latchctl"))
            .await
            .expect("join")
    }

    async fn audit(&self, kind: &str) -> usize {
        let ann = self.idp.token("ann").expect("token");
        ReviewerServiceClient::connect(self.url.clone())
            .await
            .expect("reviewer")
            .query_audit(md(
                QueryAuditRequest {
                    kind: kind.into(),
                    ..Default::default()
                },
                &ann,
            ))
            .await
            .expect("audit")
            .into_inner()
            .entries
            .len()
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_from_the_command_line() {
    let env = Env::start(true).await;
    let (id, _stream) = env.submit().await;

    // The ordinary path refuses ann's own request.
    let o = env.run("ann", &["approve", &id, "--reason", REASON]).await;
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));

    // An approver is not an admin.
    let o = env
        .run(
            "amir",
            &["approve", &id, "--break-glass", "--reason", REASON],
        )
        .await;
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not an admin"),
        "{}",
        text(&o)
    );

    // Too short a reason.
    let o = env
        .run("ann", &["approve", &id, "--break-glass", "--reason", "now"])
        .await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    let o = env
        .run(
            "ann",
            &[
                "approve",
                &id,
                "--break-glass",
                "--for",
                "15m",
                "--reason",
                REASON,
            ],
        )
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("BREAK-GLASS"),
        "the warning is printed: {}",
        text(&o)
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("approved (break-glass)"),
        "{}",
        text(&o)
    );
    assert_eq!(env.audit("decision.break_glass").await, 1);
    assert_eq!(env.audit("decision.break_glass_refused").await, 2);
    let _ = &env.server;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_is_refused_when_central_disables_it() {
    let env = Env::start(false).await;
    let (id, _stream) = env.submit().await;
    let o = env
        .run(
            "ann",
            &["approve", &id, "--break-glass", "--reason", REASON],
        )
        .await;
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("disabled"),
        "{}",
        text(&o)
    );
    assert_eq!(env.audit("decision.break_glass").await, 0);
}
