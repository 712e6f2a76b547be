//! Central at fleet scale: a real `latch-central` process and thousands of simulated agents, each
//! with its own gRPC connection, registered and subscribed exactly as `latch-agent`'s central
//! link does, all held by one multi-threaded runtime in this process. Measures the time to
//! connect them all, the time to push a new rule set to every one, decisions per second with
//! several concurrent reviewer clients, and central's resident memory.
//!
//! Agents are handled in groups: one task connects a group's agents one after another and then
//! reads all their streams merged, so the number of tasks and of connection attempts in flight
//! stays bounded whatever the fleet size. It owns its central process and nothing else.

use std::{
    collections::HashSet,
    hash::{Hash, Hasher},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use latch_proto::v1::{
    agent_message::Body, agent_service_client::AgentServiceClient, ApprovalRequest, Capabilities,
    DecideRequest, DecisionKind, Destination, ListRequestsRequest, Op, RegisterRequest,
    RequestState, SubscribeRequest, WatchRequestsRequest,
};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_stream::{StreamExt, StreamMap};

use crate::{
    central_process::{Access, Agent, Bearer, CentralProcess, Database, Reviewer, SharedPostgres},
    process_stats::{self, Memory},
    Latency,
};

/// Longest any phase may take before the run is declared hung (a guard, not a target).
const HANG: Duration = Duration::from_secs(600);

/// How many agents one task connects and reads.
const GROUP: usize = 100;

fn rules(revision: u32, extra: usize) -> String {
    let mut yaml = format!(
        "# revision {revision}\nworkloads:\n  - name: fleet\n    cgroups: [\"/fleet.slice/*\"]\nrules:\n  \
         - {{name: prod-db, workload: fleet, on: connect, to: [10.20.0.0/16], ports: [5432], action: approve, timeout: 10m}}\n  \
         - {{name: metadata, workload: fleet, on: connect, to: [169.254.169.254/32], action: deny}}\n  \
         - {{name: tools-{revision}, workload: fleet, on: exec, paths: [/usr/bin/curl, /usr/bin/scp], action: audit}}\n"
    );
    for i in 0..extra {
        yaml.push_str(&format!(
            "  - {{name: extra-{i}, workload: fleet, on: exec, paths: [/opt/fleet/bin/tool-{i}], action: audit}}\n"
        ));
    }
    yaml
}

/// What one fleet size measured.
#[derive(Serialize)]
pub struct FleetResult {
    /// Where central kept its state, and how many replicas shared it.
    pub database: String,
    /// Simulated agents, each with its own connection and stream.
    pub agents: usize,
    /// From the first connection attempt to the last agent holding its stream with the current
    /// rules, in seconds.
    pub connect_all_s: f64,
    /// Agents connected per second over that time.
    pub connects_per_s: f64,
    /// Central's memory with every agent connected (with replicas, the largest replica's).
    pub central_connected: Memory,
    /// From ApplyRules returning to the first agent receiving the new version, in ms.
    pub push_first_ms: f64,
    /// From ApplyRules returning to the last agent receiving it, in ms.
    pub push_last_ms: f64,
    /// The size of the pushed rule set (its YAML), in bytes.
    pub pushed_rules_bytes: usize,
    /// Requests submitted by the agents and decided by reviewers.
    pub decisions: usize,
    /// Concurrent reviewer clients.
    pub reviewers: usize,
    /// Decisions delivered to the agents per second (first submission to last delivery).
    pub decisions_per_s: f64,
    /// CPU time central spent per decision over that time (all replicas; not the database
    /// server's), in ms: what the rate would be bound by on a machine of its own.
    pub central_cpu_ms_per_decision: f64,
    /// Requests outstanding at any time.
    pub outstanding: usize,
    /// Submission to the decision arriving on the agent's stream, with `outstanding` requests
    /// in the system.
    pub decision_latency: Latency,
    /// Central's memory after the decisions (with replicas, the largest replica's).
    pub central_after: Memory,
}

/// What the agents' streams report to the measuring task.
enum Arrival {
    Rules { version: u64, at: Instant },
    Decision { request_id: String, at: Instant },
    Failed { agent: usize, error: String },
}

fn host(i: usize) -> String {
    format!("fleet-{i:05}")
}

fn token(i: usize) -> String {
    format!("fleet-token-{i:05}-bench")
}

/// One group: connects its agents, hands their clients back, then forwards what their streams
/// carry until the streams end.
async fn run_group(
    address: String,
    agents: std::ops::Range<usize>,
    clients: oneshot::Sender<Vec<(usize, Agent)>>,
    tx: mpsc::UnboundedSender<Arrival>,
) {
    let mut streams = StreamMap::new();
    let mut held = Vec::with_capacity(agents.len());
    for i in agents {
        match connect_agent(&address, i).await {
            Ok((client, stream)) => {
                streams.insert(i, stream);
                held.push((i, client));
            }
            Err(e) => {
                let _ = tx.send(Arrival::Failed {
                    agent: i,
                    error: format!("{e:#}"),
                });
            }
        }
    }
    let _ = clients.send(held);
    while let Some((i, msg)) = streams.next().await {
        let at = Instant::now();
        let arrival = match msg {
            Ok(m) => match m.body {
                Some(Body::Rules(r)) => Arrival::Rules {
                    version: r.version,
                    at,
                },
                Some(Body::Decision(d)) => Arrival::Decision {
                    request_id: d.request_id,
                    at,
                },
                _ => continue,
            },
            Err(status) => Arrival::Failed {
                agent: i,
                error: status.to_string(),
            },
        };
        if tx.send(arrival).is_err() {
            return;
        }
    }
}

/// Registers and subscribes agent `i` on its own connection, as the agent's central link does.
async fn connect_agent(
    address: &str,
    i: usize,
) -> Result<(Agent, tonic::Streaming<latch_proto::v1::AgentMessage>)> {
    let channel = tonic::transport::Endpoint::from_shared(address.to_string())?
        .connect_timeout(Duration::from_secs(30))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("agent {i}: connecting"))?;
    let mut client = AgentServiceClient::with_interceptor(channel, Bearer::new(&token(i))?);
    client
        .register(RegisterRequest {
            host_id: host(i),
            hostname: format!("{}.fleet.example", host(i)),
            labels: [("fleet".to_string(), "bench".to_string())]
                .into_iter()
                .collect(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            capabilities: Some(Capabilities {
                kernel: "6.18.0".into(),
                backends: vec!["cgroup-sock-addr".into(), "tracepoint-exec".into()],
                features: [("bpf_lsm".to_string(), "no".to_string())]
                    .into_iter()
                    .collect(),
            }),
        })
        .await
        .with_context(|| format!("agent {i}: Register"))?;
    let stream = client
        .subscribe(SubscribeRequest {
            host_id: host(i),
            pending_request_ids: Vec::new(),
            grant_ids: Vec::new(),
            rules_version: 0,
        })
        .await
        .with_context(|| format!("agent {i}: Subscribe"))?
        .into_inner();
    Ok((client, stream))
}

/// Where central keeps its state in a fleet run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FleetDatabase {
    /// One central with SQLite on disk (the default deployment).
    Sqlite,
    /// A PostgreSQL server of its own on loopback (`fsync` and synchronous commits on), shared
    /// by this many central replicas. Agents and reviewers are spread over the replicas in
    /// turn, so about half of the decisions are made on another replica than the one holding the agent's
    /// stream, and rules are applied through the first.
    Postgres { replicas: usize },
}

impl FleetDatabase {
    /// How a table names it.
    pub fn label(self) -> String {
        match self {
            FleetDatabase::Sqlite => "SQLite".into(),
            FleetDatabase::Postgres { replicas: 1 } => "PostgreSQL".into(),
            FleetDatabase::Postgres { replicas } => format!("PostgreSQL, {replicas} replicas"),
        }
    }
}

/// Settings of one fleet size (the reviewers decide as requests appear, `outstanding` at a
/// time: a closed loop, so the figure is the service's rate, not the length of a queue).
pub struct FleetPlan {
    /// Where central keeps its state.
    pub database: FleetDatabase,
    /// Simulated agents.
    pub agents: usize,
    /// Requests to decide.
    pub decisions: usize,
    /// Concurrent reviewer clients.
    pub reviewers: usize,
    /// Requests outstanding (submitted, not yet decided) at any time.
    pub outstanding: usize,
    /// Audit rules added to the three of the rule set.
    pub extra_rules: usize,
}

/// Runs one fleet size against a fresh central.
pub fn run(plan: &FleetPlan) -> Result<FleetResult> {
    // One descriptor per agent connection here and one in central (which inherits the limit),
    // plus room for everything else.
    let want = plan.agents as u64 + 4096;
    let got = crate::process_stats::raise_nofile(want)?;
    if got < plan.agents as u64 + 256 {
        bail!(
            "{} simulated agents need about {want} open files, but RLIMIT_NOFILE stops at {got} \
             and cannot be raised here (no CAP_SYS_RESOURCE); raise the hard limit (ulimit -Hn)",
            plan.agents
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let dir = std::env::temp_dir().join(format!(
        "latch-bench-fleet-{}-{}",
        std::process::id(),
        plan.agents
    ));
    let reviewer_tokens: Vec<String> = (0..plan.reviewers)
        .map(|r| format!("fleet-reviewer-{r}-bench"))
        .collect();
    let access = Access {
        approvers: reviewer_tokens.clone(),
        agents: (0..plan.agents).map(|i| (host(i), token(i))).collect(),
    };
    let (pg, centrals) = match plan.database {
        FleetDatabase::Sqlite => (
            None,
            vec![CentralProcess::start(
                &dir,
                Database::Sqlite(None),
                &access,
            )?],
        ),
        FleetDatabase::Postgres { replicas } => {
            let pg = SharedPostgres::start(&rt, "latch_fleet")?;
            let mut centrals = Vec::with_capacity(replicas);
            for r in 0..replicas {
                centrals.push(CentralProcess::start(
                    &dir.with_extension(format!("replica{r}")),
                    pg.database(),
                    &access,
                )?);
            }
            (Some(pg), centrals)
        }
    };
    let result = rt.block_on(measure(&centrals, plan, &reviewer_tokens));
    // Close the agents' connections before central goes, and central before its database.
    drop(rt);
    drop(centrals);
    drop(pg);
    result
}

/// CPU time of every replica so far, including threads that have ended.
fn central_cpu(centrals: &[CentralProcess]) -> Result<Duration> {
    centrals
        .iter()
        .map(|c| process_stats::stat_time(c.pid()))
        .sum()
}

/// The largest memory of the replicas.
fn largest_memory(centrals: &[CentralProcess]) -> Result<Memory> {
    let mut largest: Option<Memory> = None;
    for c in centrals {
        let m = process_stats::memory(c.pid())?;
        if largest.as_ref().is_none_or(|l| m.rss_mib() > l.rss_mib()) {
            largest = Some(m);
        }
    }
    largest.context("no central was started")
}

async fn measure(
    centrals: &[CentralProcess],
    plan: &FleetPlan,
    reviewer_tokens: &[String],
) -> Result<FleetResult> {
    let n = plan.agents;
    let central = centrals
        .first()
        .context("no central was started (0 replicas)")?;
    let v1 = central
        .apply_rules(&rules(1, plan.extra_rules), &[])
        .await?;
    let (tx, mut rx) = mpsc::unbounded_channel();

    // Connect everyone.
    let started = Instant::now();
    let mut handovers = Vec::new();
    for start in (0..n).step_by(GROUP) {
        let (ctx, crx) = oneshot::channel();
        handovers.push(crx);
        // Whole groups go to one replica each, in turn.
        tokio::spawn(run_group(
            centrals[(start / GROUP) % centrals.len()].address.clone(),
            start..(start + GROUP).min(n),
            ctx,
            tx.clone(),
        ));
    }
    drop(tx);
    let mut connected = 0usize;
    while connected < n {
        match next(&mut rx, "connecting the fleet").await? {
            Arrival::Rules { version, .. } if version == v1 => connected += 1,
            Arrival::Failed { agent, error } => bail!("agent {agent}: {error}"),
            _ => {}
        }
        if connected > 0 && connected.is_multiple_of(2000) {
            eprintln!("    {connected} agents connected");
        }
    }
    let connect_all = started.elapsed().as_secs_f64();
    let mut clients: Vec<Agent> = Vec::with_capacity(n);
    for h in handovers {
        let mut group = h.await.context("a group task ended early")?;
        group.sort_by_key(|(i, _)| *i);
        clients.extend(group.into_iter().map(|(_, c)| c));
    }
    // Let the connection bookkeeping settle before reading memory.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let central_connected = largest_memory(centrals)?;
    eprintln!(
        "    {n} agents connected in {connect_all:.1} s; central {:.0} MiB",
        central_connected.rss_mib()
    );

    // Push a new rule set to all of them.
    let mut admin = central
        .reviewer(crate::central_process::ADMIN_TOKEN)
        .await?;
    let pushed = rules(2, plan.extra_rules);
    let v2 = central.apply_with(&mut admin, &pushed, &[]).await?;
    let applied = Instant::now();
    let (mut first, mut last, mut got) = (None::<Instant>, applied, 0usize);
    while got < n {
        match next(&mut rx, "pushing rules").await? {
            Arrival::Rules { version, at } if version == v2 => {
                got += 1;
                first = Some(first.map_or(at, |f| f.min(at)));
                last = last.max(at);
            }
            Arrival::Failed { agent, error } => bail!("agent {agent}: {error}"),
            _ => {}
        }
    }
    let ms = |t: Instant| t.saturating_duration_since(applied).as_secs_f64() * 1000.0;
    let (push_first_ms, push_last_ms) = (ms(first.unwrap_or(applied)), ms(last));
    eprintln!(
        "    rules version {v2} ({} bytes) reached all {n} agents {push_last_ms:.0} ms after ApplyRules returned",
        pushed.len()
    );

    // Decisions: agents submit, reviewers decide as requests appear.
    let rule_id = policy::RuleSet::parse("fleet.yaml", &pushed)?
        .rules
        .iter()
        .find(|r| r.name == "prod-db")
        .map(|r| r.id)
        .context("the fleet rules have no prod-db rule")?;
    let mut reviewers = Vec::new();
    let deciding = Arc::new(Mutex::new(HashSet::new()));
    for (r, t) in reviewer_tokens.iter().enumerate() {
        let client = centrals[r % centrals.len()].reviewer(t).await?;
        reviewers.push(tokio::spawn(review(
            client,
            r,
            reviewer_tokens.len(),
            deciding.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = plan.decisions;
    let cpu_before = central_cpu(centrals)?;
    let submitted: Arc<Vec<OnceLock<Instant>>> =
        Arc::new((0..m).map(|_| OnceLock::new()).collect());
    // Closed loop: a new request goes in when a decision comes back.
    let gate = Arc::new(Semaphore::new(plan.outstanding));
    let (fail_tx, mut fail_rx) = mpsc::unbounded_channel::<String>();
    let started = Instant::now();
    let submitter = {
        let submitted = submitted.clone();
        let clients = clients.clone();
        let gate = gate.clone();
        tokio::spawn(async move {
            for k in 0..m {
                let Ok(permit) = gate.acquire().await else {
                    return;
                };
                permit.forget();
                let agent = k % clients.len();
                let mut client = clients[agent].clone();
                let submitted = submitted.clone();
                let fail_tx = fail_tx.clone();
                tokio::spawn(async move {
                    let _ = submitted[k].set(Instant::now());
                    if let Err(e) = client
                        .request_approval(request(agent, k, rule_id, v2))
                        .await
                    {
                        let _ = fail_tx.send(format!("request {k}: {e}"));
                    }
                });
            }
        })
    };
    let mut hist = hdrhistogram::Histogram::<u64>::new(3)?;
    let mut decided = 0usize;
    let mut last = started;
    while decided < m {
        tokio::select! {
            a = next(&mut rx, "deciding") => match a? {
                Arrival::Decision { request_id, at } => {
                    let Some(k) = request_id.strip_prefix('r').and_then(|s| s.parse::<usize>().ok()) else {
                        continue;
                    };
                    if let Some(sent) = submitted.get(k).and_then(|s| s.get()) {
                        hist.record(at.saturating_duration_since(*sent).as_nanos() as u64)?;
                    }
                    decided += 1;
                    gate.add_permits(1);
                    last = last.max(at);
                    if decided.is_multiple_of(1000) {
                        eprintln!("    {decided}/{m} decided");
                    }
                }
                Arrival::Failed { agent, error } => bail!("agent {agent}: {error}"),
                Arrival::Rules { .. } => {}
            },
            Some(e) = fail_rx.recv() => bail!("submission failed: {e}"),
        }
    }
    let elapsed = last.saturating_duration_since(started).as_secs_f64();
    let cpu = central_cpu(centrals)?.saturating_sub(cpu_before);
    submitter.abort();
    for r in reviewers {
        r.abort();
    }
    let central_after = largest_memory(centrals)?;
    Ok(FleetResult {
        database: plan.database.label(),
        agents: n,
        connect_all_s: connect_all,
        connects_per_s: n as f64 / connect_all,
        central_connected,
        push_first_ms,
        push_last_ms,
        pushed_rules_bytes: pushed.len(),
        decisions: m,
        reviewers: reviewer_tokens.len(),
        decisions_per_s: m as f64 / elapsed,
        central_cpu_ms_per_decision: cpu.as_secs_f64() * 1000.0 / m as f64,
        outstanding: plan.outstanding,
        decision_latency: crate::latency_from(&hist),
        central_after,
    })
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Arrival>, phase: &str) -> Result<Arrival> {
    match tokio::time::timeout(HANG, rx.recv()).await {
        Ok(Some(a)) => Ok(a),
        Ok(None) => bail!("{phase}: every agent stream ended"),
        Err(_) => bail!("{phase}: nothing arrived for {} s", HANG.as_secs()),
    }
}

/// A held connect() as the agent reports it (request id `r<k>`).
fn request(agent: usize, k: usize, rule_id: u32, version: u64) -> ApprovalRequest {
    ApprovalRequest {
        request_id: format!("r{k}"),
        host_id: host(agent),
        op: Op::Connect as i32,
        pid: 4242,
        tgid: 4242,
        ppid: 1,
        uid: 1000,
        gid: 1000,
        user: "llm".into(),
        group: "llm".into(),
        cgroup_id: 777,
        cgroup_path: "/fleet.slice/runner.service".into(),
        unit: "runner.service".into(),
        comm: "python3".into(),
        exe: "/usr/bin/python3.11".into(),
        argv: vec![
            "python3".into(),
            "agent.py".into(),
            "--db".into(),
            "[SECRET]".into(),
            // Each request its own operation: identical ones would wait as one.
            format!("--call={k}"),
        ],
        ancestors: vec![latch_proto::v1::Ancestor {
            pid: 1,
            exe: "/usr/lib/systemd/systemd".into(),
            argv: vec!["/sbin/init".into()],
        }],
        destination: Some(Destination {
            family: "inet".into(),
            address: "10.20.1.5".into(),
            port: 5432,
            protocol: "tcp".into(),
            host_name: String::new(),
            by_name: false,
            new_name: false,
        }),
        exec_path: String::new(),
        rule_id,
        rule_name: "prod-db".into(),
        workload: "fleet".into(),
        requester: "unit:runner.service".into(),
        created_at_unix_ms: 1,
        rules_version: version,
        justification: String::new(),
        ..Default::default()
    }
}

/// Whether reviewer `r` of `of` takes this request (each request has one reviewer).
fn mine(approval_id: &str, r: usize, of: usize) -> bool {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    approval_id.hash(&mut h);
    (h.finish() as usize) % of == r
}

/// A reviewer: decides its share of pending requests as they appear on its watch; when the
/// watch falls behind (central ends it), it watches again and sweeps what is still pending.
async fn review(client: Reviewer, r: usize, of: usize, deciding: Arc<Mutex<HashSet<String>>>) {
    let gate = Arc::new(Semaphore::new(32));
    let claim = |id: &str| -> bool {
        deciding
            .lock()
            .map(|mut s| s.insert(id.to_string()))
            .unwrap_or(false)
    };
    let decide = |id: String| {
        let mut c = client.clone();
        let gate = gate.clone();
        async move {
            let Ok(_permit) = gate.acquire_owned().await else {
                return;
            };
            // A failure other than "already decided" is retried a few times.
            for _ in 0..3 {
                match c
                    .decide(DecideRequest {
                        approval_id: id.clone(),
                        kind: DecisionKind::ApproveOnce as i32,
                        duration_seconds: 0,
                        scope: 0,
                        reason: "benchmark".into(),
                    })
                    .await
                {
                    Ok(_) => return,
                    Err(s) if s.code() == tonic::Code::FailedPrecondition => return,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }
    };
    loop {
        let mut c = client.clone();
        let Ok(resp) = c.watch_requests(WatchRequestsRequest {}).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        // Anything missed while the watch was down.
        if let Ok(list) = c
            .list_requests(ListRequestsRequest {
                state: RequestState::Pending as i32,
                host_id: String::new(),
                limit: 1000,
            })
            .await
        {
            for rec in list.into_inner().requests {
                if mine(&rec.approval_id, r, of) && claim(&rec.approval_id) {
                    tokio::spawn(decide(rec.approval_id));
                }
            }
        }
        let mut stream = resp.into_inner();
        while let Ok(Some(ev)) = stream.message().await {
            let Some(rec) = ev.request else { continue };
            if rec.state == RequestState::Pending as i32
                && rec.votes.is_empty()
                && mine(&rec.approval_id, r, of)
                && claim(&rec.approval_id)
            {
                tokio::spawn(decide(rec.approval_id));
            }
        }
    }
}
