//! The real `latchctl` binary against an in-process latch-central on 127.0.0.1:0 (SQLite):
//! the main commands, exit codes, terminal escaping, login, and audit export / verify.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use latch_central::{config::Config, Server};
use latch_proto::v1::{
    agent_service_client::AgentServiceClient, Ancestor, ApprovalRequest, Op, RegisterRequest,
    SubscribeRequest,
};
use tonic::Request;

const BIN: &str = env!("CARGO_BIN_EXE_latchctl");
const ALICE: &str = "tok-alice-0001";
const BOB: &str = "tok-bob-00002";
const ADMIN: &str = "tok-admin-0005";
const VIEWER: &str = "tok-viewer-006";
const AGENT: &str = "agent-token-h1";

const RULES: &str = r#"workloads:
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
  - name: network-tools
    workload: ai-agents
    on: exec
    paths: ["/usr/bin/curl"]
    action: approve
"#;

struct Env {
    dir: tempfile::TempDir,
    server: Server,
    url: String,
}

impl Env {
    async fn start() -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        let text = format!(
            r#"
listen = "127.0.0.1:0"
database = "sqlite://{db}"
[audit]
signing_key = "{key}"
[[reviewers]]
token = "{ALICE}"
subject = "alice"
role = "approver"
[[reviewers]]
token = "{BOB}"
subject = "bob"
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
token = "{AGENT}"
"#,
            db = dir.path().join("central.db").display(),
            key = dir.path().join("audit.pem").display(),
        );
        let config = Config::parse("test.toml", &text).expect("config");
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let server = latch_central::start(&config, Some(l))
            .await
            .expect("start central");
        let url = format!("http://{}", server.addr());
        for (name, tok) in [
            ("alice", ALICE),
            ("bob", BOB),
            ("admin", ADMIN),
            ("viewer", VIEWER),
        ] {
            std::fs::write(dir.path().join(name), format!("{tok}\n")).expect("token file");
        }
        std::fs::write(dir.path().join("rules.yaml"), RULES).expect("rules");
        Env { dir, server, url }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs latchctl as `who` (a token file name) with `args`.
    async fn run(&self, who: &str, args: &[&str]) -> Output {
        let mut c = Command::new(BIN);
        c.arg("--server")
            .arg(&self.url)
            .arg("--token-file")
            .arg(self.path(who))
            .args(args)
            .env_remove("LATCH_TOKEN")
            .env_remove("LATCH_SERVER")
            .env("XDG_CONFIG_HOME", self.path("xdg"));
        tokio::task::spawn_blocking(move || c.output().expect("run latchctl"))
            .await
            .expect("join")
    }
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn no_control(s: &str) -> bool {
    !s.chars().any(|c| {
        (c.is_control() && c != '\n')
            || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
    })
}

fn md<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {AGENT}").parse().expect("md"),
    );
    r
}

/// Registers h1, subscribes, and submits a held exec whose argv and names carry escapes.
/// Returns central's id and the agent stream (kept open by the caller).
async fn submit(env: &Env, id: &str) -> (String, tonic::Streaming<latch_proto::v1::AgentMessage>) {
    let mut a = AgentServiceClient::connect(env.url.clone())
        .await
        .expect("agent");
    a.register(md(RegisterRequest {
        host_id: "h1".into(),
        hostname: "h1.example".into(),
        labels: HashMap::new(),
        agent_version: "0.1.0".into(),
        capabilities: None,
    }))
    .await
    .expect("register");
    let stream = a
        .subscribe(md(SubscribeRequest {
            host_id: "h1".into(),
            ..Default::default()
        }))
        .await
        .expect("subscribe")
        .into_inner();
    let approval_id = a
        .request_approval(md(ApprovalRequest {
            request_id: id.into(),
            host_id: "h1".into(),
            op: Op::Exec as i32,
            pid: 7,
            tgid: 7,
            ppid: 1,
            uid: 1000,
            user: "llm".into(),
            cgroup_path: "/ai.slice/x.service".into(),
            unit: "x\u{202e}ecivres.service".into(),
            comm: "curl".into(),
            exe: "/usr/bin/curl".into(),
            exec_path: "/usr/bin/curl".into(),
            argv: vec![
                "curl".into(),
                "\x1b]0;pwned\x07\x1b[2J\u{9b}31mhttps://evil".into(),
            ],
            ancestors: vec![Ancestor {
                pid: 1,
                exe: "/sbin/init\x1b[1A".into(),
                argv: vec!["init".into()],
            }],
            rule_id: policy_rule_id("network-tools"),
            rule_name: "network-tools".into(),
            workload: "ai-agents".into(),
            requester: "unit:x.service".into(),
            created_at_unix_ms: 1,
            justification: "needed for the\u{202e} nightly export".into(),
            ..Default::default()
        }))
        .await
        .expect("request")
        .into_inner()
        .approval_id;
    (approval_id, stream)
}

fn policy_rule_id(name: &str) -> u32 {
    policy::RuleSet::parse("rules.yaml", RULES)
        .expect("rules")
        .rules
        .iter()
        .find(|r| r.name == name)
        .map(|r| r.id)
        .expect("rule")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_main_commands() {
    let env = Env::start().await;

    // Rules: a viewer may not apply; an admin may; diff and list.
    let o = env
        .run(
            "viewer",
            &[
                "rules",
                "apply",
                env.path("rules.yaml").to_str().expect("path"),
            ],
        )
        .await;
    assert_eq!(code(&o), 5, "{}", stderr(&o));
    let o = env
        .run(
            "admin",
            &[
                "rules",
                "apply",
                env.path("rules.yaml").to_str().expect("path"),
                "--comment",
                "first",
            ],
        )
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stdout(&o).contains("applied version 1 (2 rules, 1 workloads)"),
        "{}",
        stdout(&o)
    );
    std::fs::write(env.path("bad.yaml"), "rules: [").expect("write");
    let o = env
        .run(
            "admin",
            &[
                "rules",
                "apply",
                env.path("bad.yaml").to_str().expect("path"),
            ],
        )
        .await;
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("bad.yaml"), "{}", stderr(&o));
    let o = env
        .run("admin", &["rules", "apply", "/nonexistent/rules.yaml"])
        .await;
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    std::fs::write(
        env.path("rules2.yaml"),
        RULES.replace("timeout: 10m", "timeout: 20m"),
    )
    .expect("write");
    let o = env
        .run(
            "viewer",
            &[
                "rules",
                "diff",
                env.path("rules2.yaml").to_str().expect("path"),
            ],
        )
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("+    timeout: 20m"), "{}", stdout(&o));
    let o = env.run("viewer", &["rules", "list"]).await;
    assert!(stdout(&o).starts_with("VERSION"), "{}", stdout(&o));
    assert!(stdout(&o).contains("root-admin"));
    let o = env
        .run("admin", &["rules", "rollback", "9", "--reason", "x"])
        .await;
    assert_eq!(code(&o), 3, "{}", stderr(&o));

    // A held exec whose argv carries terminal escapes, and an identical one that waits with it.
    let (id, _s1) = submit(&env, "7.1").await;
    let (joined, _s1b) = submit(&env, "7.1b").await;
    let o = env.run("viewer", &["pending"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains(&id) && out.contains("network-tools"), "{out}");
    assert!(
        !out.contains(&joined),
        "shown in the row it waits with: {out}"
    );
    assert!(
        out.lines().next().is_some_and(|h| h.contains("COUNT")),
        "{out}"
    );
    let row: Vec<&str> = out
        .lines()
        .find(|l| l.contains(&id))
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert!(row.contains(&"2"), "the row counts both: {row:?}");
    let o = env.run("viewer", &["show", &joined]).await;
    assert!(
        stdout(&o).contains(&format!("{id} (identical; resolved with it)")),
        "{}",
        stdout(&o)
    );
    let o = env.run("viewer", &["show", &id]).await;
    assert!(
        stdout(&o).contains("1 more waiting; a decision here decides all 2"),
        "{}",
        stdout(&o)
    );
    assert!(no_control(&out), "{out:?}");
    assert!(out.contains("\\x1b]0;pwned\\x07"), "{out}");
    let o = env.run("viewer", &["show", &id]).await;
    let out = stdout(&o);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(no_control(&out), "{out:?}");
    for needle in [
        "argv[1]",
        "\\x9b31m",
        "\\u{202e}",
        "/sbin/init\\x1b[1A",
        "unit:x.service",
        "parent 1",
        "workload says (unverified)",
        "needed for the\\u{202e} nightly export",
    ] {
        assert!(out.contains(needle), "show lacks {needle}: {out}");
    }
    let o = env.run("viewer", &["--json", "show", &id]).await;
    let out = stdout(&o);
    assert!(no_control(&out), "{out:?}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["argv"][1], "\x1b]0;pwned\x07\x1b[2J\u{9b}31mhttps://evil");
    assert_eq!(v["justification"], "needed for the\u{202e} nightly export");
    let o = env.run("viewer", &["--json", "pending"]).await;
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(v.as_array().map(|a| a.len()), Some(1));
    assert_eq!(v[0]["merged"], 1);

    // Decisions: exit codes for usage, not found, permission denied and conflict.
    let o = env
        .run(
            "alice",
            &["approve", &id, "--reason", "ok", "--scope", "host"],
        )
        .await;
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let o = env
        .run("alice", &["approve", "no-such-request", "--reason", "ok"])
        .await;
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let o = env.run("viewer", &["approve", &id, "--reason", "ok"]).await;
    assert_eq!(code(&o), 5, "{}", stderr(&o));
    let o = env
        .run(
            "alice",
            &[
                "approve", &id, "--reason", "ticket 9", "--for", "15m", "--scope", "workload",
            ],
        )
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("approved"), "{}", stdout(&o));
    let o = env.run("bob", &["deny", &id, "--reason", "too late"]).await;
    assert_eq!(code(&o), 6, "{}", stderr(&o));
    assert!(stderr(&o).contains("already approved"), "{}", stderr(&o));

    // Grants.
    let o = env.run("viewer", &["--json", "grants", "list"]).await;
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    let grant = v[0]["grant_id"].as_str().expect("grant id").to_string();
    assert_eq!(v[0]["scope"], "workload");
    let o = env.run("viewer", &["grants", "list"]).await;
    assert!(
        stdout(&o).contains(&grant) && stdout(&o).contains("active"),
        "{}",
        stdout(&o)
    );
    let o = env
        .run("bob", &["grants", "revoke", &grant, "--reason", "done"])
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = env
        .run("bob", &["grants", "revoke", &grant, "--reason", "again"])
        .await;
    assert_eq!(code(&o), 6, "{}", stderr(&o));
    let o = env
        .run("bob", &["grants", "revoke", "nope", "--reason", "x"])
        .await;
    assert_eq!(code(&o), 3, "{}", stderr(&o));

    // Hosts, whoami, a second request denied.
    let o = env.run("viewer", &["hosts"]).await;
    assert!(stdout(&o).contains("h1.example"), "{}", stdout(&o));
    let (id2, _s2) = submit(&env, "7.2").await;
    let o = env.run("bob", &["deny", &id2, "--reason", "no"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = env.run("viewer", &["pending"]).await;
    assert!(!stdout(&o).contains(&id2));

    // Unknown token: permission denied; no token at all: usage.
    std::fs::write(env.path("bad-token"), "not-a-token\n").expect("write");
    let o = env.run("bad-token", &["hosts"]).await;
    assert_eq!(code(&o), 5, "{}", stderr(&o));
    let o = Command::new(BIN)
        .args(["--server", &env.url, "hosts"])
        .env_remove("LATCH_TOKEN")
        .env("XDG_CONFIG_HOME", env.path("nowhere"))
        .output()
        .expect("run");
    assert_eq!(code(&o), 2, "{}", stderr(&o));

    // Login stores the token (0600) and later calls use it.
    let o = Command::new(BIN)
        .args(["--server", &env.url, "login", "--token-file"])
        .arg(env.path("viewer"))
        .env("XDG_CONFIG_HOME", env.path("xdg"))
        .output()
        .expect("login");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let stored = env.path("xdg").join("latch").join("token");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&stored)
        .expect("stored")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let o = Command::new(BIN)
        .args(["--server", &env.url, "whoami"])
        .env_remove("LATCH_TOKEN")
        .env("XDG_CONFIG_HOME", env.path("xdg"))
        .output()
        .expect("whoami");
    assert!(
        stdout(&o).contains("vic") && stdout(&o).contains("viewer"),
        "{}",
        stdout(&o)
    );

    // Audit: tail, export (both formats), verify online and offline, report.
    let o = env.run("viewer", &["audit", "tail", "-n", "5"]).await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 6, "{}", stdout(&o));
    let o = env.run("viewer", &["audit", "verify"]).await;
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("intact") && stderr(&o).contains("records/s"),
        "{}",
        stdout(&o)
    );
    let jsonl = env.path("audit.jsonl");
    let o = env
        .run(
            "viewer",
            &["audit", "export", "-o", jsonl.to_str().expect("p")],
        )
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let csv = env.path("audit.csv");
    let o = env
        .run(
            "viewer",
            &[
                "audit",
                "export",
                "--format",
                "csv",
                "-o",
                csv.to_str().expect("p"),
            ],
        )
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let from_jsonl: Vec<_> =
        latch_central::chain::read_jsonl("a", std::fs::read(&jsonl).expect("read").as_slice())
            .filter_map(|l| match l.expect("line") {
                latch_central::chain::ExportLine::Record(r) => Some(r),
                _ => None,
            })
            .collect();
    let from_csv: Vec<_> =
        latch_central::chain::read_csv("c", std::fs::read(&csv).expect("read").as_slice())
            .collect::<Result<_, _>>()
            .expect("csv");
    // The CSV export started a moment later: the JSONL export's own seal may be one record more.
    assert!(from_csv.len() >= from_jsonl.len());
    assert_eq!(from_csv[..from_jsonl.len()], from_jsonl[..]);
    let key = env.path("audit.pem.pub");
    let verify = |file: &Path| {
        let mut c = Command::new(BIN);
        c.args(["audit", "verify", "--export"])
            .arg(file)
            .arg("--public-key")
            .arg(&key);
        c
    };
    let o = verify(&jsonl).output().expect("verify");
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    // Offline, a tampered export is named and exits 7.
    let text = std::fs::read_to_string(&jsonl).expect("read");
    let tampered: String = text
        .lines()
        .map(|l| {
            if l.contains("\"kind\":\"request.denied\"") {
                l.replace("\"actor\":\"bob\"", "\"actor\":\"alice\"")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let seq = from_jsonl
        .iter()
        .find(|r| r.kind == "request.denied")
        .expect("denied")
        .seq;
    std::fs::write(env.path("tampered.jsonl"), tampered).expect("write");
    let o = verify(&env.path("tampered.jsonl"))
        .output()
        .expect("verify");
    assert_eq!(code(&o), 7, "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains(&format!("seq {seq}: edited")),
        "{}",
        stdout(&o)
    );
    let o = Command::new(BIN)
        .args(["audit", "verify", "--export"])
        .arg(&jsonl)
        .output()
        .expect("verify without key");
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let o = env
        .run(
            "viewer",
            &[
                "audit",
                "export",
                "--outcome",
                "deny",
                "-o",
                env.path("f.jsonl").to_str().expect("p"),
            ],
        )
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = verify(&env.path("f.jsonl"))
        .output()
        .expect("verify filtered");
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("filtered export"), "{}", stderr(&o));
    let html = env.path("report.html");
    let o = env
        .run(
            "viewer",
            &[
                "audit",
                "report",
                "--verify",
                "-o",
                html.to_str().expect("p"),
            ],
        )
        .await;
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let page = std::fs::read_to_string(&html).expect("report");
    // 7.1, the identical 7.1b resolved with it, and 7.2.
    assert!(page.contains("Approval-required actions (3)"), "{page}");
    assert!(page.contains("ticket 9") && page.contains("The audit chain verified"));
    assert!(!page.contains('\x1b') && !page.contains("\u{9b}"));

    env.server.shutdown().await;
}
