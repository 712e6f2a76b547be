//! Central's SQLite database across a crash and a clean stop: what a call committed before
//! central was killed with SIGKILL is there afterwards, read through SQLite (its `-wal` file
//! included) by `latch-central audit verify` and by a store opening the database again; after a
//! clean stop the database file alone holds everything. Under a storm of concurrent decisions
//! (which share commits), every decision a reviewer or the agent was told of survives SIGKILL.

mod common;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use latch_central::store::{AuditFilter, Store};
use latch_proto::v1::{
    agent_message::Body, reviewer_service_client::ReviewerServiceClient, ApplyRulesRequest,
    DecideRequest, DecisionKind, Outcome,
};
use sqlx::Row;

const BIN: &str = env!("CARGO_BIN_EXE_latch-central");

/// A safety net against a hung start, never a performance threshold.
const HANG: Duration = Duration::from_secs(120);

const ADMIN_TOKEN: &str = "sqlite-test-admin-token";

const RULES: &str = "workloads:\n  - name: w\n    cgroups: [\"/w.slice/*\"]\nrules:\n  \
    - {name: db, workload: w, on: connect, to: [10.0.0.0/8], ports: [5432], action: approve}\n";

/// Adds the admin's bearer token to every call.
type Bearer = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;

/// An admin client.
type Admin = ReviewerServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
>;

/// A `latch-central serve` process, killed with SIGKILL on drop if still running.
struct Central(Child);

impl Drop for Central {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts central with `config`, its standard error into `log`; returns it and the address it
/// says it listens on.
async fn serve(config: &Path, log: &Path) -> (Central, String) {
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("run latch-central");
    let stdout = child.stdout.take().expect("stdout");
    let central = Central(child);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        // Read to the end even when nobody listens any more: a closed pipe would fail
        // central's later writes.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let addr = tokio::time::timeout(HANG, async {
        while let Some(line) = rx.recv().await {
            if let Some(rest) = line.strip_prefix("latch-central listening on ") {
                return rest.split_whitespace().next().map(str::to_string);
            }
        }
        None
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "latch-central hung before saying where it listens: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        )
    })
    .unwrap_or_else(|| {
        panic!(
            "latch-central exited without saying where it listens: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        )
    });
    (central, addr)
}

/// Runs `latch-central audit verify` as an operator would and expects the chain intact.
fn assert_chain_intact(config: &Path, when: &str) {
    let out = Command::new(BIN)
        .args(["audit", "verify", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run latch-central audit verify");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(": intact"),
        "audit verify {when} ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn beside(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

/// Rule versions applied (each returned to the caller only once committed) survive SIGKILL:
/// the database is left with its `-wal` file, and both `audit verify` and a store opened on it
/// read them through SQLite, with the audit chain intact. A clean stop leaves no `-wal`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_survive_sigkill_and_are_read_through_the_wal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("state").join("central.db");
    let config = dir.path().join("central.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndatabase = \"sqlite://{}\"\n\n[[reviewers]]\ntoken = \
             \"{ADMIN_TOKEN}\"\nsubject = \"admin\"\nrole = \"admin\"\n",
            db.display()
        ),
    )
    .expect("write config");

    let (mut central, addr) = serve(&config, &dir.path().join("central.log")).await;
    let mut admin = admin_client(&addr).await;
    let mut versions = Vec::new();
    for i in 0..3 {
        versions.push(apply(&mut admin, i).await);
    }
    central.0.kill().expect("SIGKILL");
    central.0.wait().expect("reap");

    let wal = beside(&db, "-wal");
    let wal_len = std::fs::metadata(&wal)
        .unwrap_or_else(|e| panic!("no WAL left beside the database after SIGKILL: {e}"))
        .len();
    assert!(wal_len > 0, "{} is empty", wal.display());

    assert_chain_intact(&config, "after SIGKILL");

    assert_eq!(
        applied_versions(&db).await,
        versions,
        "rule versions returned before SIGKILL, as a new store reads them"
    );

    // A clean stop (SIGTERM) folds the WAL into the database: `central.db` copied alone, as a
    // file backup of a stopped central would, holds every version.
    let (mut central, addr) = serve(&config, &dir.path().join("central-2.log")).await;
    let mut admin = admin_client(&addr).await;
    versions.push(apply(&mut admin, 3).await);
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    let rc = unsafe { libc::kill(central.0.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0, "SIGTERM: {}", std::io::Error::last_os_error());
    let status = central.0.wait().expect("wait");
    assert!(status.success(), "central stopped with {status}");
    assert!(
        !beside(&db, "-wal").exists(),
        "a WAL is left after a clean stop"
    );
    let copy = dir.path().join("copy.db");
    std::fs::copy(&db, &copy).expect("copy the database file");
    assert_eq!(
        applied_versions(&copy).await,
        versions,
        "rule versions in the copy of a cleanly stopped database"
    );
}

/// The rule versions whose application the database at `db` records, oldest first, read through
/// a store of its own (which reads a WAL left beside the file).
async fn applied_versions(db: &std::path::Path) -> Vec<u64> {
    let store = Store::open(&format!("sqlite://{}", db.display()), 1)
        .await
        .unwrap_or_else(|e| panic!("open {}: {e}", db.display()));
    let applied = store
        .query_audit(
            &AuditFilter {
                kind: "rules.applied".into(),
                ..Default::default()
            },
            100,
        )
        .await
        .expect("query");
    store.close().await;
    applied
        .iter()
        .map(|r| {
            let p: serde_json::Value = serde_json::from_str(&r.payload_json).expect("payload");
            p["version"].as_u64().expect("version")
        })
        .collect()
}

async fn admin_client(addr: &str) -> Admin {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    ReviewerServiceClient::with_interceptor(channel, bearer as Bearer)
}

fn bearer(mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {ADMIN_TOKEN}").parse().expect("metadata"),
    );
    Ok(req)
}

/// Applies revision `i` of the rules; returns the version, known committed once returned.
async fn apply(admin: &mut Admin, i: u32) -> u64 {
    admin
        .apply_rules(ApplyRulesRequest {
            source_name: "rules.yaml".into(),
            yaml: format!("# revision {i}\n{RULES}"),
            selector: Default::default(),
            dry_run: false,
            comment: format!("revision {i}"),
        })
        .await
        .expect("ApplyRules")
        .into_inner()
        .version
}

/// Decisions made by reviewers in parallel (so commits are shared) while central is killed with
/// SIGKILL: every decision a reviewer was answered for, and every decision the agent received,
/// is in the database afterwards, approved, with its audit record; the chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_told_before_sigkill_survives_a_storm() {
    const REQUESTS: usize = 240;
    const KILL_AFTER: usize = 80;
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("central.db");
    let config = dir.path().join("central.toml");
    std::fs::write(
        &config,
        common::config_text(
            &format!("sqlite://{}", db.display()),
            &dir.path().join("audit-key.pem"),
        ),
    )
    .expect("write config");
    let (mut central, addr) = serve(&config, &dir.path().join("central.log")).await;

    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    ReviewerServiceClient::new(channel.clone())
        .apply_rules(common::req(
            ApplyRulesRequest {
                source_name: "rules.yaml".into(),
                yaml: common::RULES.into(),
                ..Default::default()
            },
            common::ADMIN,
        ))
        .await
        .expect("ApplyRules");
    let mut agent = common::Agent::connect_at(
        &addr,
        "h1",
        [("env".to_string(), "prod".to_string())].into(),
        vec![],
        vec![],
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..REQUESTS {
        let mut r = agent.request(&format!("storm-{i}"), "prod-db");
        // Each its own: identical requests would wait as one.
        r.argv.push(format!("--call={i}"));
        ids.push(agent.submit(r).await.approval_id);
    }

    // What the agent is told, until its stream breaks with central.
    let mut stream = agent.stream;
    let delivered = tokio::spawn(async move {
        let mut told = Vec::new();
        while let Ok(Some(m)) = stream.message().await {
            if let Some(Body::Decision(d)) = m.body {
                assert_eq!(d.outcome, Outcome::Allow as i32, "{d:?}");
                told.push(d.approval_id);
            }
        }
        told
    });

    // Four reviewers, each deciding every fourth request; the answers counted as they come.
    let answered = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let enough = std::sync::Arc::new(tokio::sync::Notify::new());
    let reviewers: Vec<_> = [common::ALICE, common::BOB, common::CAROL, common::DAVE]
        .into_iter()
        .enumerate()
        .map(|(k, token)| {
            let mine: Vec<String> = ids.iter().skip(k).step_by(4).cloned().collect();
            let mut client = ReviewerServiceClient::new(channel.clone());
            let (answered, enough) = (answered.clone(), enough.clone());
            tokio::spawn(async move {
                for id in mine {
                    let decided = client
                        .decide(common::req(
                            DecideRequest {
                                approval_id: id.clone(),
                                kind: DecisionKind::ApproveOnce as i32,
                                reason: "storm".into(),
                                ..Default::default()
                            },
                            token,
                        ))
                        .await;
                    if decided.is_err() {
                        // Central is gone: what was answered before is what counts.
                        return;
                    }
                    let mut a = answered.lock().expect("answers");
                    a.push(id);
                    if a.len() == KILL_AFTER {
                        enough.notify_one();
                    }
                }
            })
        })
        .collect();
    tokio::time::timeout(common::HANG, enough.notified())
        .await
        .expect("the storm hung before the kill");
    central.0.kill().expect("SIGKILL");
    central.0.wait().expect("reap");
    for r in reviewers {
        r.await.expect("reviewer task");
    }
    let answered = answered.lock().expect("answers").clone();
    let delivered = delivered.await.expect("agent task");
    assert!(answered.len() >= KILL_AFTER, "{}", answered.len());
    assert!(
        answered.len() < REQUESTS,
        "the kill came after the storm ended: nothing was cut"
    );

    assert_chain_intact(&config, "after SIGKILL in a storm");

    let store = Store::open(&format!("sqlite://{}", db.display()), 2)
        .await
        .expect("open after SIGKILL");
    let mut told: Vec<&String> = answered.iter().chain(delivered.iter()).collect();
    told.sort();
    told.dedup();
    for id in &told {
        let state: String = sqlx::query("SELECT state FROM requests WHERE approval_id = $1")
            .bind(id.as_str())
            .fetch_one(store.pool())
            .await
            .unwrap_or_else(|e| panic!("request {id} after SIGKILL: {e}"))
            .try_get("state")
            .expect("state");
        assert_eq!(
            state, "approved",
            "request {id}, told approved before SIGKILL"
        );
        let audited: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM audit WHERE kind = 'request.approved' AND request_id = $1",
        )
        .bind(id.as_str())
        .fetch_one(store.pool())
        .await
        .expect("audit")
        .try_get("n")
        .expect("n");
        assert_eq!(audited, 1, "audit records of the approval of {id}");
    }
    store.close().await;
    eprintln!(
        "storm: {} answered, {} delivered, {} told of in all, out of {REQUESTS}",
        answered.len(),
        delivered.len(),
        told.len()
    );
}
