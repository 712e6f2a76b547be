//! The product as deployed: the real `latch-agent` and the real `latch-central` release binaries
//! started as processes on this host, a reviewer client on gRPC, and a workload in a watched
//! cgroup. Measures their footprint at rest (with the example rules) and the decision round trip
//! a workload sees when a reviewer approves each held `connect()` the instant it appears.
//!
//! It owns the two processes, their state directory and the agent's pin directory, all removed
//! when it finishes; the workload's cgroup belongs to the caller.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use latch_proto::v1::{
    DecideRequest, DecisionKind, ListHostsRequest, RequestState, WatchRequestsRequest,
};
use latch_tests::TestCgroup;
use serde::Serialize;

use crate::{
    central_process::{sibling_binary, Access, CentralProcess, Database, Reviewer, SharedPostgres},
    process_stats::{self, IdleCpu, Memory},
    Latency, Worker,
};

/// The example rules shipped with Latch, as an operator starts with them.
const EXAMPLE_RULES: &str = include_str!("../../examples/rules.yaml");

const REVIEWER_TOKEN: &str = "bench-reviewer-token";
const AGENT_TOKEN: &str = "bench-agent-token";

/// What the deployed pair costs at rest.
#[derive(Serialize)]
pub struct Footprint {
    /// Rules loaded while measuring.
    pub rules: &'static str,
    /// The agent's memory at rest.
    pub agent: Memory,
    /// The agent's CPU over the quiet interval.
    pub agent_idle_cpu: IdleCpu,
    /// Central's memory at rest with one agent connected.
    pub central: Memory,
    /// Central's CPU over the same interval.
    pub central_idle_cpu: IdleCpu,
    /// The agent's memory after the round-trip run (its peak includes the load).
    pub agent_after_load: Memory,
    /// Central's memory after the round-trip run.
    pub central_after_load: Memory,
}

/// Results of the deployed-stack benchmarks.
#[derive(Serialize)]
pub struct StackResults {
    /// Where central's database was.
    pub database: &'static str,
    /// Footprint at rest (when measured).
    pub footprint: Option<Footprint>,
    /// Held `connect()` as the workload sees it, approved through central.
    pub round_trip: Latency,
    /// The reviewer's Decide call alone (part of the round trip).
    pub decide_call: Latency,
    /// Decide calls that failed (each leaves a workload call waiting for its timeout).
    pub decide_errors: u64,
}

/// The agent process, stopped with SIGTERM (so it detaches its programs) on drop.
struct AgentProcess(Option<Child>);

impl AgentProcess {
    fn pid(&self) -> u32 {
        self.0.as_ref().map(Child::id).unwrap_or(0)
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Removes the agent's pin directory once the agent has gone.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Settings of one run.
pub struct StackPlan<'a> {
    /// The workload's cgroup (watched by the bench rules).
    pub cgroup: &'a TestCgroup,
    /// A listener the approve rule holds connections to.
    pub held: SocketAddr,
    /// Held connects to time.
    pub requests: usize,
    /// The quiet interval for idle CPU; no footprint is measured when `None`.
    pub quiet: Option<Duration>,
    /// Where central keeps its state.
    pub database: StackDatabase,
}

/// Where central keeps its state in a stack run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackDatabase {
    /// SQLite in a temporary folder on disk (the default deployment).
    SqliteDisk,
    /// SQLite on tmpfs (`/dev/shm`): the same code without the cost of fsync, to show how much
    /// of the round trip is the database's durability.
    SqliteTmpfs,
    /// A PostgreSQL server of its own on loopback, with `fsync` and synchronous commits on.
    Postgres,
}

impl StackDatabase {
    /// How a table names it.
    pub fn label(self) -> &'static str {
        match self {
            StackDatabase::SqliteDisk => "SQLite on disk",
            StackDatabase::SqliteTmpfs => "SQLite on tmpfs (no fsync)",
            StackDatabase::Postgres => "PostgreSQL on disk",
        }
    }
}

/// Starts central and the agent, measures them at rest, then the round trip.
pub fn run(plan: &StackPlan) -> Result<StackResults> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let name = format!("latch-bench-stack-{}", std::process::id());
    let dir = std::env::temp_dir().join(&name);
    let host = format!("bench-{}", std::process::id());
    let tmpfs_db = PathBuf::from("/dev/shm").join(format!("{name}-db"));
    let pg = match plan.database {
        StackDatabase::Postgres => Some(SharedPostgres::start(&rt, "latch_bench")?),
        _ => None,
    };
    let database = match (plan.database, &pg) {
        (StackDatabase::SqliteTmpfs, _) => Database::Sqlite(Some(tmpfs_db.as_path())),
        (_, Some(pg)) => pg.database(),
        _ => Database::Sqlite(None),
    };
    let central = CentralProcess::start(
        &dir,
        database,
        &Access {
            approvers: vec![REVIEWER_TOKEN.into()],
            agents: vec![(host.clone(), AGENT_TOKEN.into())],
        },
    )?;
    let selector = [("bench", name.as_str())];
    let v1 = rt.block_on(central.apply_rules(EXAMPLE_RULES, &selector))?;

    let pin_dir = PinDir(PathBuf::from("/sys/fs/bpf").join(&name));
    let token_file = dir.join("agent.token");
    std::fs::write(&token_file, format!("{AGENT_TOKEN}\n"))?;
    let agent_config = dir.join("agent.toml");
    std::fs::write(
        &agent_config,
        format!(
            "rules = \"{rules}\"\nadmin_socket = \"{sock}\"\npin_dir = \"{pin}\"\n\
             metrics_listen = \"127.0.0.1:{metrics}\"\nwaiting_dir = \"{waiting}\"\nworkload_socket = \"{sock}.workload\"\njournal_dir = \"{journal}\"\n\
             [central]\naddress = \"{address}\"\ntoken_file = \"{token}\"\nhost_id = \"{host}\"\n\
             rules_cache = \"{cache}\"\nlabels = {{ bench = \"{name}\" }}\n",
            rules = dir.join("no-local-rules.yaml").display(),
            sock = dir.join("agent.sock").display(),
            pin = pin_dir.0.display(),
            metrics = crate::central_process::free_port()?,
            waiting = dir.join("waiting").display(),
            journal = dir.join("journal").display(),
            address = central.address,
            token = token_file.display(),
            cache = dir.join("rules.cache.yaml").display(),
        ),
    )?;
    let log = std::fs::File::create(dir.join("agent.log"))?;
    let agent = AgentProcess(Some(
        Command::new(sibling_binary("latch-agent")?)
            .arg("--config")
            .arg(&agent_config)
            .arg("run")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting latch-agent")?,
    ));
    rt.block_on(wait_acked(&central, &host, v1))
        .with_context(|| agent_log(&dir))?;

    // At rest: the example rules in the kernel, the stream to central open, nothing happening.
    let at_rest = match plan.quiet {
        Some(quiet) => {
            std::thread::sleep(Duration::from_secs(2));
            let cpu = process_stats::idle_cpu(&[agent.pid(), central.pid()], quiet)?;
            let a = process_stats::memory(agent.pid())?;
            let c = process_stats::memory(central.pid())?;
            eprintln!(
                "  footprint at rest: agent {:.1} MiB, {:.2} % of a core; central {:.1} MiB",
                a.rss_mib(),
                cpu[0].percent_of_core,
                c.rss_mib()
            );
            Some((a, cpu[0], c, cpu[1]))
        }
        None => None,
    };

    let rules = format!(
        "workloads:\n  - name: bench\n    cgroups: [\"{cg}\"]\nrules:\n  - {{name: held, workload: bench, on: connect, to: [{ip}/32], ports: [{port}], action: approve, timeout: 10m}}\n",
        cg = plan.cgroup.rel,
        ip = plan.held.ip(),
        port = plan.held.port(),
    );
    let v2 = rt.block_on(central.apply_rules(&rules, &selector))?;
    rt.block_on(wait_acked(&central, &host, v2))
        .with_context(|| agent_log(&dir))?;
    wait_watching(&agent_config).with_context(|| agent_log(&dir))?;

    // The reviewer: one stream of request events, a Decide the moment a pending one appears.
    let errors = Arc::new(AtomicU64::new(0));
    let decide_ns = Arc::new(Mutex::new(Vec::with_capacity(plan.requests)));
    let reviewer = rt.block_on(central.reviewer(REVIEWER_TOKEN))?;
    let approver = rt.spawn(approve_all(reviewer, errors.clone(), decide_ns.clone()));
    // Let the watch open before the first request.
    std::thread::sleep(Duration::from_millis(300));

    let t = plan.held.to_string();
    let n = plan.requests.to_string();
    let child = Worker::start(
        &plan.cgroup.path,
        &[
            "worker",
            "held",
            "--addr",
            &t,
            "--batch",
            &n,
            "--batches",
            "1",
        ],
    )?;
    let out = child.finish()?;
    approver.abort();
    if !out.status.success() {
        bail!(
            "round-trip worker failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            agent_log(&dir)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("worker output")?;
    let samples: Vec<u64> = v["ns"]
        .as_array()
        .context("worker output has no 'ns'")?
        .iter()
        .filter_map(|x| x.as_u64())
        .collect();
    let round_trip = crate::latency_of(&samples)?;
    let decide_call = crate::latency_of(
        &decide_ns
            .lock()
            .map_err(|_| anyhow::anyhow!("reviewer task panicked"))?,
    )?;
    let (agent_after_load, central_after_load) = (
        process_stats::memory(agent.pid())?,
        process_stats::memory(central.pid())?,
    );
    let footprint = at_rest.map(
        |(agent, agent_idle_cpu, central, central_idle_cpu)| Footprint {
            rules: "examples/rules.yaml (from central)",
            agent,
            agent_idle_cpu,
            central,
            central_idle_cpu,
            agent_after_load,
            central_after_load,
        },
    );
    drop(agent);
    drop(pin_dir);
    drop(central);
    drop(pg);
    Ok(StackResults {
        database: plan.database.label(),
        footprint,
        round_trip,
        decide_call,
        decide_errors: errors.load(Ordering::Relaxed),
    })
}

fn agent_log(dir: &std::path::Path) -> String {
    let text = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(20).collect();
    format!(
        "agent log (last lines):\n{}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    )
}

/// Waits until the host reports it enforces `version`.
async fn wait_acked(central: &CentralProcess, host: &str, version: u64) -> Result<()> {
    let mut admin = central
        .reviewer(crate::central_process::ADMIN_TOKEN)
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let hosts = admin
            .list_hosts(ListHostsRequest {})
            .await
            .context("ListHosts")?
            .into_inner()
            .hosts;
        if let Some(h) = hosts.iter().find(|h| h.host_id == host) {
            if !h.rules_error.is_empty() {
                bail!(
                    "the agent refused rules version {version}: {}",
                    h.rules_error
                );
            }
            if h.rules_version_acked >= version {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the agent did not acknowledge rules version {version} within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the agent watches a cgroup (its rescan found the workload's).
fn wait_watching(agent_config: &std::path::Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new(sibling_binary("latch-agent")?)
            .arg("--config")
            .arg(agent_config)
            .args(["status", "--json"])
            .output()
            .context("latch-agent status")?;
        if out.status.success() {
            let v: serde_json::Value =
                serde_json::from_slice(&out.stdout).context("latch-agent status --json")?;
            if v["watched_cgroups"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
            {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the agent never watched the workload's cgroup");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Approves every request the moment its "pending" event arrives, until aborted.
async fn approve_all(mut reviewer: Reviewer, errors: Arc<AtomicU64>, took: Arc<Mutex<Vec<u64>>>) {
    loop {
        let mut stream = match reviewer.watch_requests(WatchRequestsRequest {}).await {
            Ok(s) => s.into_inner(),
            Err(e) => {
                eprintln!("  reviewer: WatchRequests failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while let Ok(Some(ev)) = stream.message().await {
            let Some(rec) = ev.request else { continue };
            if rec.state != RequestState::Pending as i32 || !rec.votes.is_empty() {
                continue;
            }
            let started = Instant::now();
            let r = reviewer
                .decide(DecideRequest {
                    approval_id: rec.approval_id,
                    kind: DecisionKind::ApproveOnce as i32,
                    duration_seconds: 0,
                    scope: 0,
                    reason: "benchmark".into(),
                })
                .await;
            if let Ok(mut t) = took.lock() {
                t.push(started.elapsed().as_nanos() as u64);
            }
            if r.is_err() {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
