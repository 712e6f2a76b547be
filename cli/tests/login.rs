//! `latchctl login --oidc` end to end: the real binary, the test identity provider over HTTP
//! (device authorization grant), and an in-process latch-central that verifies the token.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use latch_central::{config::Config, Server};
use latch_test_idp::TestIdp;

const BIN: &str = env!("CARGO_BIN_EXE_latchctl");
/// A safety net against a hung test, never a performance threshold.
const HANG: Duration = Duration::from_secs(120);

struct Env {
    dir: tempfile::TempDir,
    idp: TestIdp,
    server: Server,
    url: String,
}

impl Env {
    async fn start() -> Env {
        let idp = TestIdp::start().await.expect("identity provider");
        idp.add_user("amir", "amir@example.com", &["sre-oncall"]);
        idp.add_user("mark", "mark@example.com", &["marketing"]);
        idp.add_client("latchctl", None, &[]);
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
"sre-oncall" = "approver"
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
        Env {
            dir,
            idp,
            server,
            url,
        }
    }

    fn xdg(&self) -> PathBuf {
        self.dir.path().join("xdg")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--server")
            .arg(&self.url)
            .args(args)
            .env_remove("LATCH_TOKEN")
            .env_remove("LATCH_SERVER")
            .env_remove("NO_COLOR")
            .env("XDG_CONFIG_HOME", self.xdg())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    async fn run(&self, args: &[&str]) -> Output {
        let mut c = self.command(args);
        tokio::task::spawn_blocking(move || c.output().expect("run latchctl"))
            .await
            .expect("join")
    }

    /// Runs `latchctl login --oidc`, and acts as the person at the provider: approves the user
    /// code it is shown as `user`, or denies it when `user` is None.
    async fn device_login(&self, user: Option<&str>) -> Output {
        let child = self
            .command(&[
                "login",
                "--oidc",
                "--issuer",
                self.idp.issuer(),
                "--client-id",
                "latchctl",
            ])
            .spawn()
            .expect("spawn latchctl login");
        let code = tokio::time::timeout(HANG, async {
            loop {
                if let Some(c) = self.idp.pending_user_codes().pop() {
                    return c;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("latchctl never started a device login");
        match user {
            Some(u) => self.idp.approve_device(&code, u).expect("approve"),
            None => self.idp.deny_device(&code).expect("deny"),
        }
        let out = tokio::time::timeout(
            HANG,
            tokio::task::spawn_blocking(move || child.wait_with_output().expect("wait")),
        )
        .await
        .expect("latchctl login hung")
        .expect("join");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&code) && stderr.contains(&format!("{}/device", self.idp.issuer())),
            "the verification URI and user code are shown: {stderr}"
        );
        out
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

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

#[tokio::test]
async fn device_login_stores_a_token_that_later_calls_use() {
    let env = Env::start().await;
    let out = env.device_login(Some("amir")).await;
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("logged in") && stdout.contains("amir@example.com"),
        "{stdout}"
    );

    let token_file = env.xdg().join("latch/token");
    let session_file = env.xdg().join("latch/login.json");
    assert_eq!(mode(&token_file), 0o600);
    assert_eq!(mode(&session_file), 0o600);
    let session: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&session_file).expect("read"))
            .expect("session json");
    assert_eq!(session["subject"], env.idp.subject_of("amir"));
    assert_eq!(session["issuer"], env.idp.issuer());
    assert!(session["expires_at_unix_ms"].as_i64().unwrap_or(0) > latch_central::clock::now_ms());

    // A later call uses the stored token, and shows its expiry.
    let out = env.run(&["whoami"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&env.idp.subject_of("amir"))
            && stdout.contains("approver")
            && stdout.contains("EXPIRES")
            && stdout.contains(" (in "),
        "{stdout}"
    );
    let out = env.run(&["whoami", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["email"], "amir@example.com");
    assert_eq!(v["groups"], serde_json::json!(["sre-oncall"]));
    assert!(v["expires_at"].is_string(), "{v}");

    // Once the stored login has expired, latchctl says so before asking central.
    let mut s = session.clone();
    s["expires_at_unix_ms"] = serde_json::json!(latch_central::clock::now_ms() - 1000);
    std::fs::write(&session_file, s.to_string()).expect("write");
    let out = env.run(&["whoami"]).await;
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("login expired"),
        "{}",
        text(&out)
    );
    let _ = &env.server;
}

#[tokio::test]
async fn refused_device_logins_store_nothing() {
    let env = Env::start().await;
    // Denied at the provider.
    let out = env.device_login(None).await;
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("access_denied"),
        "{}",
        text(&out)
    );
    assert!(!env.xdg().join("latch/token").exists());

    // Approved at the provider, but none of mark's groups has a role in central.
    let out = env.device_login(Some("mark")).await;
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no role"),
        "{}",
        text(&out)
    );
    assert!(!env.xdg().join("latch/token").exists());

    // Usage errors.
    let out = env
        .run(&["login", "--oidc", "--issuer", env.idp.issuer()])
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = env
        .run(&[
            "login",
            "--oidc",
            "--issuer",
            "http://idp.example.com",
            "--client-id",
            "latchctl",
        ])
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("https://"),
        "{}",
        text(&out)
    );
}
