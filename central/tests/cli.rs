//! The binary's subcommands.

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

const BIN: &str = env!("CARGO_BIN_EXE_latch-central");

#[test]
fn validate_accepts_the_example() {
    let out = Command::new(BIN)
        .args(["validate", "--config"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/central.example.toml"))
        .output()
        .expect("run latch-central");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(": ok"), "{stdout}");
}

#[test]
fn validate_refuses_a_bad_file_with_its_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:7443\"\ndatabse = \"sqlite:///x\"\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .expect("run latch-central");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.toml") && stderr.contains("databse") && stderr.contains("line 2"),
        "{stderr}"
    );
}

#[test]
fn validate_reports_a_missing_file() {
    let out = Command::new(BIN)
        .args(["validate", "--config", "/nonexistent/central.toml"])
        .output()
        .expect("run latch-central");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/central.toml"));
}

/// A safety net against a hung start, never a performance threshold.
const HANG: Duration = Duration::from_secs(120);

/// What a first-time user does: `latch-central` with no arguments, then `latch-central serve`,
/// on a machine without /etc/latch/central.toml. Each must start on the default loopback address
/// with its database in the state directory, say where it listens, and answer gRPC there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_arguments_it_serves_the_defaults_on_loopback() {
    use latch_proto::v1::{reviewer_service_client::ReviewerServiceClient, WhoAmIRequest};

    assert!(
        !std::path::Path::new(latch_central::config::DEFAULT_CONFIG_FILE).exists(),
        "{} exists on this machine: this test needs a machine without it",
        latch_central::config::DEFAULT_CONFIG_FILE
    );
    // Said plainly rather than mistaken for a failure to start: the default port is fixed.
    drop(
        tokio::net::TcpListener::bind(latch_central::config::DEFAULT_LISTEN)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{} is taken ({e}): this test starts central on its default address",
                    latch_central::config::DEFAULT_LISTEN
                )
            }),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).expect("home");

    for args in [&[][..], &["serve"][..]] {
        let mut child = Command::new(BIN)
            .args(args)
            .current_dir(dir.path())
            .env("STATE_DIRECTORY", &state)
            .env("HOME", &home)
            .env_remove("XDG_STATE_HOME")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run latch-central");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            // Read to the end even when nobody listens any more: a closed pipe would fail
            // central's later writes.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut rx = rx;
        let mut said = Vec::new();
        let listening = tokio::time::timeout(HANG, async move {
            while let Some(line) = rx.recv().await {
                said.push(line.clone());
                if let Some(rest) = line.strip_prefix("latch-central listening on ") {
                    return Some((rest.to_string(), said));
                }
            }
            None
        })
        .await
        .expect("latch-central hung before saying where it listens");
        let Some((rest, said)) = listening else {
            let out = child.wait_with_output().expect("wait");
            panic!(
                "{args:?}: latch-central exited ({}) without saying where it listens:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let addr = rest.split_whitespace().next().expect("an address");
        assert_eq!(
            addr,
            latch_central::config::DEFAULT_LISTEN,
            "{args:?}: {rest}"
        );
        let db = state.join("central.db");
        assert!(
            rest.contains(&format!("database sqlite://{}", db.display())),
            "{args:?}: {rest}"
        );
        let all = said.join("\n");
        assert!(
            all.contains("starting with the defaults"),
            "{args:?}: {all}"
        );
        assert!(db.is_file(), "{args:?}: no database at {}", db.display());
        assert!(
            state.join("audit-signing-key.pem").is_file(),
            "{args:?}: the signing key is not beside the database"
        );

        // Real gRPC at the printed address: reflection lists Latch's services, and the reviewer
        // API answers (nobody is configured, so an unknown token is refused).
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect to the printed address");
        let names = common::list_services(channel.clone()).await;
        assert!(
            names.iter().any(|s| s == "latch.v1.ReviewerService"),
            "{names:?}"
        );
        let mut request = tonic::Request::new(WhoAmIRequest {});
        request.metadata_mut().insert(
            "authorization",
            "Bearer not-a-configured-token".parse().expect("metadata"),
        );
        let e = ReviewerServiceClient::new(channel)
            .who_am_i(request)
            .await
            .expect_err("no reviewer is configured");
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");

        // SIGTERM stops it cleanly, which frees the port for the next start.
        // SAFETY: kill with a pid this test spawned and has not reaped.
        let sent = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(sent, 0, "kill");
        let out = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .expect("join")
            .expect("wait");
        assert!(
            out.status.success(),
            "{args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stray: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read temp dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        stray.len(),
        2,
        "only state/ and home/ were written: {stray:?}"
    );
}
