//! `latch-bench`: what Latch costs and how fast it decides, measured against a baseline taken in
//! the same run on the same machine.
//!
//! Method. Every figure comes from a worker process (this binary, `worker` subcommand) placed in
//! the cgroup under test; it times batches of system calls with `CLOCK_MONOTONIC` and reports the
//! median batch mean, which shrugs off the scheduler hiccups of a shared machine. Scenarios are
//! interleaved round by round (baseline, unwatched, watched …, then again), and each scenario's
//! figure is the median over rounds, so slow drift hits all of them alike. The kernel's own
//! per-program run time comes from BPF statistics (`kernel.bpf_stats_enabled`). Round trips are
//! held `connect()` calls approved by an in-process approver that wakes on the ring buffer's fd,
//! recorded in an HDR histogram.
//!
//! Beyond the kernel: the deployed pair ([`stack`]: the real `latch-agent` and `latch-central`
//! processes, a gRPC reviewer, the round trip a workload sees and the footprint at rest), central
//! at fleet scale ([`fleet`]: thousands of simulated agents on their own connections), and audit
//! verification of millions of records ([`audit_chain`]), and what a statement of central's SQLite
//! write path costs ([`handoff`]). Hardware counters are used where the machine exposes them
//! ([`perf_counters`]).
//!
//! Results: tables on stdout, `target/bench/results.json`, `target/bench/overhead.svg` and
//! `target/bench/round-trip.svg`.

mod args;
mod audit_chain;
mod central_process;
mod content;
mod fleet;
mod handoff;
mod names;
mod perf_counters;
mod process_stats;
mod stack;
mod summary;

use std::{
    io::Write,
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use agent_common::FailMode;
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use latch_agent::{
    cgroups,
    events::EventReader,
    kernel::{Decision, Engine, EngineOptions, Scope},
    rules,
};
use latch_tests::{spawn_in, TestCgroup};
use serde::Serialize;

#[derive(Parser)]
#[command(
    name = "latch-bench",
    about = "Latch benchmarks: overhead and decision latency"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every benchmark (needs root).
    Run {
        /// Fewer rounds and calls, smaller fleet and audit chain: a smoke run.
        #[arg(long)]
        quick: bool,
        /// Also the long runs: audit verification of 10 million records.
        #[arg(long, conflicts_with = "quick")]
        full: bool,
        /// Only these sections (comma-separated); default: all.
        #[arg(long, value_enum, value_delimiter = ',')]
        only: Vec<Section>,
        /// Output directory.
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
        /// Fleet sizes to simulate (comma-separated); default: 1000, and 10000 unless --quick.
        #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=100_000))]
        fleet_agents: Vec<u32>,
        /// Where the fleet's central keeps its state (comma-separated); default: all three.
        #[arg(long, value_enum, value_delimiter = ',')]
        fleet_databases: Vec<FleetStore>,
        /// Audit rules added to the fleet's rule set, to push a rule set of a fleet's size
        /// (about 100 bytes each); default: none, three rules in all.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=5_000))]
        fleet_extra_rules: u32,
    },
    /// Internal: the measured process.
    Worker {
        /// connect | exec | held
        what: String,
        /// Destination for connect/held.
        #[arg(long)]
        addr: Option<SocketAddr>,
        /// Calls per batch (for `dns`: names looked up in a pass).
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Batches (for `dns`: passes over the names).
        #[arg(long, default_value_t = 20)]
        batches: usize,
        /// `dns`: the first benchmark name to look up.
        #[arg(long, default_value_t = 0)]
        first: u32,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Worker {
            what,
            addr,
            batch,
            batches,
            first,
        } => match what.as_str() {
            "dns" => dns_worker(addr, first, batch, batches),
            _ => worker(&what, addr, batch, batches),
        },
        Cmd::Run {
            quick,
            full,
            only,
            out,
            fleet_agents,
            fleet_databases,
            fleet_extra_rules,
        } => {
            let fleet = FleetChoice {
                agents: fleet_agents.into_iter().map(|n| n as usize).collect(),
                databases: fleet_databases,
                extra_rules: fleet_extra_rules as usize,
            };
            run(quick, full, &only, &fleet, &out)
        }
    }
}

// ----- worker -----

/// Looks up names `first..first + count`, `passes` times, each query from the same unconnected
/// UDP socket to `addr`, timed from send to its answer; prints every round trip.
fn dns_worker(addr: Option<SocketAddr>, first: u32, count: usize, passes: usize) -> Result<()> {
    let server = addr.context("--addr")?;
    let count = u32::try_from(count).context("--batch: too many names")?;
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").context("bind udp")?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut all = Vec::with_capacity(count as usize * passes);
    let mut buf = [0u8; 1500];
    let mut id: u16 = 0;
    for _ in 0..passes {
        for i in first..first + count {
            id = id.wrapping_add(1);
            let name = names::name_of(i);
            let q = names::query(id, &name)?;
            let t = Instant::now();
            sock.send_to(&q, server).context("send a query")?;
            let answers = loop {
                let (n, _) = sock
                    .recv_from(&mut buf)
                    .with_context(|| format!("no answer for {name}"))?;
                if let Some(a) = names::answer_to(&buf[..n], id)? {
                    break a;
                }
            };
            all.push(t.elapsed().as_nanos() as u64);
            if answers == 0 {
                bail!("{name}: an answer without an address");
            }
        }
    }
    writeln!(
        std::io::stdout().lock(),
        "{}",
        serde_json::json!({ "ns": all })
    )?;
    Ok(())
}

fn worker(what: &str, addr: Option<SocketAddr>, batch: usize, batches: usize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match what {
        "connect" | "exec" | "udp" | "getppid" => {
            let mut means = Vec::with_capacity(batches);
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").context("bind udp")?;
            // One warm-up batch: page cache, socket slabs, the kernel's hash buckets.
            for b in 0..=batches {
                let t = Instant::now();
                for _ in 0..batch {
                    if what == "getppid" {
                        // SAFETY: no arguments, cannot fail.
                        std::hint::black_box(unsafe { libc::getppid() });
                    } else if what == "connect" {
                        let a = addr.context("--addr")?;
                        drop(TcpStream::connect(a).context("connect")?);
                    } else if what == "udp" {
                        // Unconnected: every datagram passes the sendmsg4 hook.
                        let a = addr.context("--addr")?;
                        udp.send_to(b"latch", a).context("sendto")?;
                    } else {
                        let st = Command::new("/bin/true")
                            .status()
                            .context("exec /bin/true")?;
                        if !st.success() {
                            bail!("/bin/true failed: {st}");
                        }
                    }
                }
                if b > 0 {
                    means.push(t.elapsed().as_nanos() as f64 / batch as f64);
                }
            }
            writeln!(
                out,
                "{}",
                serde_json::json!({ "ns_per_call": median(&mut means) })
            )?;
        }
        "held" => {
            // Each connect is held and approved; report every call's duration.
            let a = addr.context("--addr")?;
            let mut all = Vec::with_capacity(batch * batches);
            for _ in 0..batch * batches {
                let t = Instant::now();
                drop(TcpStream::connect(a).context("held connect")?);
                all.push(t.elapsed().as_nanos() as u64);
            }
            writeln!(out, "{}", serde_json::json!({ "ns": all }))?;
        }
        other => bail!("unknown worker '{other}'"),
    }
    Ok(())
}

/// The parts of a run.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Section {
    /// Hook overhead on connect() and fork+exec, with BPF run-time statistics.
    Overhead,
    /// Audit events through the ring buffer.
    Events,
    /// Decision round trip with an in-process approver on the ring buffer (kernel only).
    RoundTrip,
    /// The real agent and central: footprint at rest and the round trip through them.
    Stack,
    /// Central with 1,000 and 10,000 simulated agents.
    Fleet,
    /// Audit chain verification of millions of records.
    Audit,
    /// Exec in a workload that decides programs by content: a cached verdict, and a new
    /// program hashed before it runs.
    Content,
    /// Exec of a program that rules with `args` name: held after the exec, its arguments read
    /// and decided, released.
    Args,
    /// Destinations by name: a DNS lookup through the agent's resolver proxy against one
    /// straight to the server, and `connect()` with 10,000 learned names (the real agent).
    Names,
    /// Central's SQLite write path: a write transaction's statements through central's driver
    /// (a hand-off to the connection's thread each) against the same on that thread.
    Handoff,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

// ----- driver -----

#[derive(Serialize, Clone)]
struct Row {
    benchmark: String,
    scenario: String,
    ns_per_call: f64,
    ratio: f64,
    kernel_ns_per_run: Option<f64>,
}

/// A latency distribution (from an HDR histogram of nanoseconds).
#[derive(Serialize, Clone)]
pub(crate) struct Latency {
    samples: u64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    max_us: f64,
}

/// Percentiles of nanosecond samples.
pub(crate) fn latency_of(ns: &[u64]) -> Result<Latency> {
    let mut h = hdrhistogram::Histogram::<u64>::new(3)?;
    for &x in ns {
        h.record(x)?;
    }
    Ok(latency_from(&h))
}

/// Percentiles of a histogram of nanoseconds.
pub(crate) fn latency_from(h: &hdrhistogram::Histogram<u64>) -> Latency {
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Latency {
        samples: h.len(),
        p50_us: us(0.5),
        p90_us: us(0.9),
        p99_us: us(0.99),
        max_us: h.max() as f64 / 1000.0,
    }
}

#[derive(Serialize)]
struct Results {
    kernel: String,
    cpus: usize,
    rounds: usize,
    quick: bool,
    /// `/proc/loadavg` (1 min) when the run started and ended: the machine's other load.
    load_average: [f64; 2],
    overhead: Vec<Row>,
    /// Held connect() approved by an in-process approver on the ring buffer: the kernel's part.
    round_trip: Option<Latency>,
    events: Option<Throughput>,
    /// The real agent and central: central's database on disk, on tmpfs, then PostgreSQL.
    stack: Vec<stack::StackResults>,
    /// Destinations by name (the real agent, a real DNS server).
    names: Option<names::NamesResults>,
    fleet: Vec<fleet::FleetResult>,
    audit_verify: Vec<audit_chain::AuditVerify>,
    handoff: Option<handoff::Handoff>,
    perf_counters: perf_counters::Availability,
    /// Sections that failed, with why.
    errors: Vec<String>,
    method: &'static str,
}

#[derive(Serialize)]
struct Throughput {
    /// Audit events the workload caused.
    caused: u64,
    /// Events the reader received.
    received: u64,
    /// Events the kernel could not put in the ring buffer.
    dropped: u64,
    /// Received events per second, over the workload's run.
    per_second: f64,
    /// Agent-side CPU time per 10,000 events, in milliseconds (reader thread, user + system).
    cpu_ms_per_10k: f64,
}

struct Setup {
    engine: Option<Engine>,
    cgroup: TestCgroup,
    unwatched: TestCgroup,
    pin_dir: PathBuf,
}

fn rules_text(cg: &str, extra_rules: usize) -> String {
    let mut s = format!(
        "workloads:\n  - name: bench\n    cgroups: [\"{cg}\"]\nrules:\n  - {{name: loopback-ok, workload: bench, on: connect, to: [127.0.0.1/32], action: allow}}\n  - {{name: true-ok, workload: bench, on: exec, paths: [/bin/true], action: allow}}\n  - {{name: held, workload: bench, on: connect, to: [127.0.0.2/32], action: approve}}\n  - {{name: recorded, workload: bench, on: connect, to: [127.0.0.3/32], action: audit}}\n  - {{name: held-exec, workload: bench, on: exec, paths: [/usr/bin/sleep], action: approve}}\n"
    );
    if extra_rules > 0 {
        s.push_str(
            "  - name: many\n    workload: bench\n    on: connect\n    action: deny\n    to:\n",
        );
        for i in 0..extra_rules as u32 {
            s.push_str(&format!(
                "      - 10.{}.{}.{}\n",
                10 + (i >> 16),
                (i >> 8) & 0xff,
                i & 0xff
            ));
        }
    }
    s
}

impl Setup {
    fn new() -> Result<Self> {
        let cgroup = TestCgroup::new();
        let unwatched = TestCgroup::new();
        let pin_dir =
            PathBuf::from("/sys/fs/bpf").join(format!("latch-bench-{}", std::process::id()));
        Ok(Setup {
            engine: None,
            cgroup,
            unwatched,
            pin_dir,
        })
    }

    fn load(&mut self, extra_rules: usize) -> Result<()> {
        self.load_with(extra_rules, 0)
    }

    /// As [`Setup::load`], with the watched cgroup's [`agent_common::watch_flags`].
    fn load_with(&mut self, extra_rules: usize, flags: u8) -> Result<()> {
        let text = rules_text(&self.cgroup.rel, extra_rules);
        self.load_text(&text, flags).map(|_| ())
    }

    /// Loads the engine (once) and puts `text`'s rules in force; returns what was compiled.
    fn load_text(&mut self, text: &str, flags: u8) -> Result<rules::Compiled> {
        if self.engine.is_none() {
            let e = Engine::load(EngineOptions {
                pin_dir: self.pin_dir.clone(),
                cgroup_root: None,
                stale_after: Duration::from_secs(3600),
                fail_mode: FailMode::Deny,
                exec_backend: None,
                dns_proxy_port: 0,
                dns_proxy_v6: false,
            })?;
            self.engine = Some(e);
        }
        let rs = policy::RuleSet::parse("bench.yaml", text)?;
        let compiled = rules::compile(&rs)?;
        let engine = self.engine.as_mut().context("engine")?;
        engine.apply(&compiled, None)?;
        let root = engine.cgroup_root().to_path_buf();
        let globs: Vec<_> = rs
            .workloads
            .iter()
            .map(|w| cgroups::WorkloadGlobs::new(w, flags))
            .collect::<Result<_, _>>()?;
        for m in cgroups::scan(&root, &globs) {
            engine.watch(m.id, m.watch())?;
        }
        Ok(compiled)
    }

    fn unload(&mut self) -> Result<()> {
        if let Some(e) = self.engine.take() {
            e.uninstall()?;
        }
        Ok(())
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = self.unload();
    }
}

/// A worker that is killed and reaped if the driver bails out before waiting for it.
pub(crate) struct Worker(Option<std::process::Child>);

impl Worker {
    pub(crate) fn start(cg: &Path, args: &[&str]) -> Result<Self> {
        Ok(Worker(Some(spawn_in(cg, &self_exe()?, args))))
    }

    fn pid(&self) -> u32 {
        self.0.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub(crate) fn finish(mut self) -> Result<std::process::Output> {
        let child = self.0.take().context("worker already finished")?;
        Ok(child.wait_with_output()?)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn self_exe() -> Result<PathBuf> {
    std::env::current_exe().context("own path")
}

fn worker_args(what: &str, addr: SocketAddr, batch: usize, batches: usize) -> Vec<String> {
    vec![
        "worker".to_string(),
        what.to_string(),
        "--addr".into(),
        addr.to_string(),
        "--batch".into(),
        batch.to_string(),
        "--batches".into(),
        batches.to_string(),
    ]
}

/// Runs a worker (`args` from [`worker_args`], and more) in `cg` to its end and returns the
/// JSON it printed.
fn run_worker(cg: &Path, args: &[String]) -> Result<serde_json::Value> {
    let what = args.get(1).map_or("?", String::as_str);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = Worker::start(cg, &args)?.finish()?;
    if !out.status.success() {
        bail!(
            "worker {what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("worker {what}'s output"))
}

fn measure(cg: &Path, what: &str, addr: SocketAddr, batch: usize, batches: usize) -> Result<f64> {
    let v = run_worker(cg, &worker_args(what, addr, batch, batches))?;
    v["ns_per_call"].as_f64().context("ns_per_call")
}

/// Cumulative (run time ns, runs) of every loaded program with this name.
fn kernel_stats(prog_name: &str) -> (u128, u64) {
    let mut time = 0u128;
    let mut runs = 0u64;
    for p in aya::programs::loaded_programs().flatten() {
        if p.name_as_str() == Some(prog_name) {
            time += p.run_time().as_nanos();
            runs += p.run_count();
        }
    }
    (time, runs)
}

/// Kernel time per program run accumulated over a scenario's measurements.
#[derive(Default, Clone, Copy)]
struct KernelTime {
    ns: u128,
    runs: u64,
}

impl KernelTime {
    fn add(&mut self, before: (u128, u64), after: (u128, u64)) {
        self.ns += after.0.saturating_sub(before.0);
        self.runs += after.1.saturating_sub(before.1);
    }

    fn per_run(&self) -> Option<f64> {
        (self.runs > 0).then(|| self.ns as f64 / self.runs as f64)
    }
}

fn set_bpf_stats(on: bool) {
    let _ = std::fs::write(
        "/proc/sys/kernel/bpf_stats_enabled",
        if on { "1" } else { "0" },
    );
}

/// A fleet database as the command line names it.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FleetStore {
    Sqlite,
    Postgres,
    /// Two replicas sharing one PostgreSQL database.
    Postgres2,
}

impl FleetStore {
    fn database(self) -> fleet::FleetDatabase {
        match self {
            FleetStore::Sqlite => fleet::FleetDatabase::Sqlite,
            FleetStore::Postgres => fleet::FleetDatabase::Postgres { replicas: 1 },
            FleetStore::Postgres2 => fleet::FleetDatabase::Postgres { replicas: 2 },
        }
    }
}

/// Which fleets the fleet section runs; empty lists take the defaults.
struct FleetChoice {
    agents: Vec<usize>,
    databases: Vec<FleetStore>,
    extra_rules: usize,
}

fn run(
    quick: bool,
    full: bool,
    only: &[Section],
    fleet_choice: &FleetChoice,
    out_dir: &Path,
) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("benchmarks load kernel programs: run as root (cargo xtask bench does)");
    }
    let wants = |s: Section| only.is_empty() || only.contains(&s);
    let (rounds, batch_c, batches_c, batch_e, batches_e, held_n) = if quick {
        (3, 50, 5, 10, 3, 200)
    } else {
        (7, 200, 15, 25, 6, 2000)
    };
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for s in listener.incoming() {
            drop(s);
        }
    });
    let held_listener = TcpListener::bind("127.0.0.2:0").context("bind 127.0.0.2")?;
    let held_addr = held_listener.local_addr()?;
    std::thread::spawn(move || {
        for s in held_listener.incoming() {
            drop(s);
        }
    });

    let mut results = Results {
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
        cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        rounds,
        quick,
        load_average: [load_average(), 0.0],
        overhead: Vec::new(),
        round_trip: None,
        events: None,
        stack: Vec::new(),
        names: None,
        fleet: Vec::new(),
        audit_verify: Vec::new(),
        handoff: None,
        perf_counters: perf_counters::Availability::probe(),
        errors: Vec::new(),
        method: "median over interleaved rounds of median batch means; ratio = scenario / 'no latch' of the same run",
    };
    let mut setup = Setup::new()?;
    set_bpf_stats(true);
    if wants(Section::Overhead) {
        results.overhead = overhead(
            &mut setup,
            addr,
            held_addr,
            rounds,
            (batch_c, batches_c),
            (batch_e, batches_e),
            &mut results.perf_counters,
        )?;
    }
    if wants(Section::Content) {
        match content::rows(&mut setup, rounds, (batch_e, batches_e)) {
            Ok(rows) => results.overhead.extend(rows),
            Err(e) => results.errors.push(format!("content: {e:#}")),
        }
    }
    if wants(Section::Args) {
        match args::rows(&mut setup, rounds, (batch_e, batches_e)) {
            Ok(rows) => results.overhead.extend(rows),
            Err(e) => results.errors.push(format!("args: {e:#}")),
        }
    }
    if wants(Section::Events) {
        results.events = Some(throughput(&mut setup, held_n * 50)?);
    }
    if wants(Section::RoundTrip) {
        results.round_trip = Some(round_trips(&mut setup, held_addr, held_n)?);
    }
    set_bpf_stats(false);
    setup.unload()?;

    if wants(Section::Names) {
        eprintln!("latch-bench: destinations by name (the real agent, dnsmasq)");
        match names::run(rounds, (batch_c, batches_c)) {
            Ok((r, rows)) => {
                print_names(&r);
                results.overhead.extend(rows);
                results.names = Some(r);
            }
            Err(e) => results.errors.push(format!("names: {e:#}")),
        }
    }

    if wants(Section::Stack) {
        eprintln!("latch-bench: the real agent and central");
        for database in [
            stack::StackDatabase::SqliteDisk,
            stack::StackDatabase::SqliteTmpfs,
            stack::StackDatabase::Postgres,
        ] {
            let plan = stack::StackPlan {
                cgroup: &setup.cgroup,
                held: held_addr,
                requests: if quick { 200 } else { 2000 },
                // The footprint at rest is central's default deployment's.
                quiet: (database == stack::StackDatabase::SqliteDisk)
                    .then(|| Duration::from_secs(if quick { 3 } else { 10 })),
                database,
            };
            match stack::run(&plan) {
                Ok(r) => results.stack.push(r),
                Err(e) => results
                    .errors
                    .push(format!("stack ({}): {e:#}", database.label())),
            }
        }
    }
    if wants(Section::Fleet) {
        let sizes: &[usize] = match (&fleet_choice.agents[..], quick) {
            ([], true) => &[1_000],
            ([], false) => &[1_000, 10_000],
            (chosen, _) => chosen,
        };
        let databases: Vec<_> = if fleet_choice.databases.is_empty() {
            vec![
                FleetStore::Sqlite,
                FleetStore::Postgres,
                FleetStore::Postgres2,
            ]
        } else {
            fleet_choice.databases.clone()
        }
        .into_iter()
        .map(FleetStore::database)
        .collect();
        for (&agents, database) in sizes
            .iter()
            .flat_map(|a| databases.iter().map(move |d| (a, *d)))
        {
            eprintln!(
                "latch-bench: central with {agents} simulated agents ({})",
                database.label()
            );
            let plan = fleet::FleetPlan {
                database,
                agents,
                decisions: if quick { 1_000 } else { 3_000 },
                reviewers: 4,
                // Enough in flight for commits to be shared, as a fleet's load would be.
                outstanding: 512,
                extra_rules: fleet_choice.extra_rules,
            };
            match fleet::run(&plan) {
                Ok(r) => results.fleet.push(r),
                Err(e) => results
                    .errors
                    .push(format!("fleet of {agents} ({}): {e:#}", database.label())),
            }
        }
    }
    if wants(Section::Handoff) {
        eprintln!("latch-bench: a write transaction's statements, handed off and on the connection's thread");
        let (rounds, transactions) = if quick { (3, 500) } else { (7, 2_000) };
        match handoff::run(rounds, transactions) {
            Ok(r) => results.handoff = Some(r),
            Err(e) => results.errors.push(format!("handoff: {e:#}")),
        }
    }
    if wants(Section::Audit) {
        let sizes: &[u64] = if quick {
            &[100_000]
        } else if full {
            &[1_000_000, 10_000_000]
        } else {
            &[1_000_000]
        };
        for &n in sizes {
            eprintln!("latch-bench: audit verification of {n} records");
            match audit_chain::run(n) {
                Ok(r) => results.audit_verify.push(r),
                Err(e) => results.errors.push(format!("audit of {n}: {e:#}")),
            }
        }
    }

    results.load_average[1] = load_average();
    if !results.overhead.is_empty() {
        print_table(&results);
    }
    if let Some(e) = &results.events {
        print_throughput(e);
    }
    summary::print_decisions(&results);
    summary::print_footprint(&results);
    summary::print_fleet(&results);
    summary::print_audit(&results);
    summary::print_handoff(&results);
    println!("{}", results.perf_counters);
    println!(
        "machine: {} CPUs, Linux {}, load average {:.1} at the start and {:.1} at the end",
        results.cpus, results.kernel, results.load_average[0], results.load_average[1]
    );
    std::fs::create_dir_all(out_dir)?;
    std::fs::write(
        out_dir.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    if !results.overhead.is_empty() {
        plot(&results.overhead, &out_dir.join("overhead.svg"))?;
    }
    summary::plot_round_trip(&results, &out_dir.join("round-trip.svg"))?;
    eprintln!(
        "latch-bench: wrote {}/results.json, overhead.svg and round-trip.svg",
        out_dir.display()
    );
    if !results.errors.is_empty() {
        bail!("some benchmarks failed:\n  {}", results.errors.join("\n  "));
    }
    Ok(())
}

/// The 1-minute load average (other work on the machine skews every figure).
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// Hook overhead: every scenario, interleaved round by round.
fn overhead(
    setup: &mut Setup,
    addr: SocketAddr,
    held_addr: SocketAddr,
    rounds: usize,
    (batch_c, batches_c): (usize, usize),
    (batch_e, batches_e): (usize, usize),
    perf: &mut perf_counters::Availability,
) -> Result<Vec<Row>> {
    let scenarios: &[(&str, Option<usize>, bool)] = &[
        ("no latch", None, false),
        ("loaded, unwatched", Some(0), false),
        ("watched, allowed (1 rule)", Some(0), true),
        ("watched, allowed (1,000 rules)", Some(1_000), true),
        ("watched, allowed (100,000 rules)", Some(100_000), true),
    ];
    let mut connect: Vec<Vec<f64>> = vec![Vec::new(); scenarios.len() + 1];
    let mut exec: Vec<Vec<f64>> = vec![Vec::new(); scenarios.len()];
    let mut connect_k = vec![KernelTime::default(); scenarios.len() + 1];
    let mut exec_k = vec![KernelTime::default(); scenarios.len()];
    // getppid() in an unwatched cgroup: what every process on the host pays. The last slot is
    // "an exec held elsewhere".
    let batch_s = batch_c * 50;
    let mut syscall: Vec<Vec<f64>> = vec![Vec::new(); scenarios.len() + 1];
    let mut syscall_k = vec![KernelTime::default(); scenarios.len() + 1];
    eprintln!(
        "latch-bench: {rounds} rounds of {} scenarios",
        scenarios.len() + 1
    );
    for round in 0..rounds {
        for (i, (name, rules_n, watched)) in scenarios.iter().enumerate() {
            match rules_n {
                None => setup.unload()?,
                Some(n) => setup.load(*n)?,
            }
            let cg = if *watched {
                setup.cgroup.path.clone()
            } else {
                setup.unwatched.path.clone()
            };
            let before = kernel_stats("connect4");
            connect[i].push(measure(&cg, "connect", addr, batch_c, batches_c)?);
            connect_k[i].add(before, kernel_stats("connect4"));
            let before = kernel_stats("exec");
            exec[i].push(measure(&cg, "exec", addr, batch_e, batches_e)?);
            exec_k[i].add(before, kernel_stats("exec"));
            if !*watched {
                let before = kernel_stats("gate");
                syscall[i].push(measure(&cg, "getppid", addr, batch_s, batches_c)?);
                syscall_k[i].add(before, kernel_stats("gate"));
            }
            // Hardware counters once, in the last round: instructions per call.
            if round + 1 == rounds && perf.usable() && (i == 0 || i == 2) {
                for (what, batch) in [("connect", batch_c), ("exec", batch_e)] {
                    let short = worker_args(what, addr, batch, 1);
                    let long = worker_args(what, addr, batch, 3);
                    let short: Vec<&str> = short.iter().map(String::as_str).collect();
                    let long: Vec<&str> = long.iter().map(String::as_str).collect();
                    match perf_counters::per_call(&cg, &self_exe()?, &short, &long, batch * 2) {
                        Ok(c) => perf.record(what, name, c),
                        Err(e) => perf.fail(format!("{what}, {name}: {e:#}")),
                    }
                }
            }
            eprintln!("  round {}/{rounds}: {name}", round + 1);
        }
        // An exec held in the watched cgroup while an unwatched process makes system calls.
        setup.load(0)?;
        {
            let held = spawn_in(&setup.cgroup.path, Path::new("/usr/bin/sleep"), &["30"]);
            let mut held = Worker(Some(held));
            let pid = held.pid();
            let deadline = Instant::now() + Duration::from_secs(20);
            let engine = setup.engine.as_mut().context("engine")?;
            let id = loop {
                if let Some(p) = engine.pending()?.into_iter().find(|p| p.op == "exec") {
                    break p.id;
                }
                if Instant::now() > deadline {
                    bail!("the exec of sleep (pid {pid}) was never held");
                }
                std::thread::sleep(Duration::from_millis(5));
            };
            let unwatched = setup.unwatched.path.clone();
            let before = kernel_stats("gate");
            syscall[scenarios.len()]
                .push(measure(&unwatched, "getppid", addr, batch_s, batches_c)?);
            syscall_k[scenarios.len()].add(before, kernel_stats("gate"));
            let engine = setup.engine.as_mut().context("engine")?;
            let _ = engine.decide(id, Decision::Deny);
            if let Some(mut c) = held.0.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        // Cached grant: the target is held once, granted to the host, then measured.
        let cg = setup.cgroup.path.clone();
        grant_once(setup, &cg, held_addr)?;
        let before = kernel_stats("connect4");
        connect[scenarios.len()].push(measure(&cg, "connect", held_addr, batch_c, batches_c)?);
        connect_k[scenarios.len()].add(before, kernel_stats("connect4"));
    }

    let mut rows = Vec::new();
    let base_c = median(&mut connect[0].clone());
    let base_e = median(&mut exec[0].clone());
    for (i, (name, _, _)) in scenarios.iter().enumerate() {
        let c = median(&mut connect[i]);
        rows.push(Row {
            benchmark: "connect() to loopback".into(),
            scenario: name.to_string(),
            ns_per_call: c,
            ratio: c / base_c,
            kernel_ns_per_run: connect_k[i].per_run(),
        });
    }
    let g = median(&mut connect[scenarios.len()]);
    rows.push(Row {
        benchmark: "connect() to loopback".into(),
        scenario: "watched, cached grant".into(),
        ns_per_call: g,
        ratio: g / base_c,
        kernel_ns_per_run: connect_k[scenarios.len()].per_run(),
    });
    let base_s = median(&mut syscall[0].clone());
    let syscall_rows =
        scenarios
            .iter()
            .map(|(name, _, _)| name.to_string())
            .chain(std::iter::once(
                "loaded, an exec held elsewhere".to_string(),
            ));
    for (i, name) in syscall_rows.enumerate() {
        if syscall[i].is_empty() {
            continue;
        }
        let c = median(&mut syscall[i]);
        rows.push(Row {
            benchmark: "getppid(), unwatched process".into(),
            scenario: name,
            ns_per_call: c,
            ratio: c / base_s,
            kernel_ns_per_run: syscall_k[i].per_run(),
        });
    }
    for (i, (name, _, _)) in scenarios.iter().enumerate() {
        let e = median(&mut exec[i]);
        rows.push(Row {
            benchmark: "fork+exec /bin/true".into(),
            scenario: name.to_string(),
            ns_per_call: e,
            ratio: e / base_e,
            kernel_ns_per_run: exec_k[i].per_run(),
        });
    }
    Ok(rows)
}

fn grant_once(setup: &mut Setup, cg: &Path, target: SocketAddr) -> Result<()> {
    let t = target.to_string();
    let child = Worker::start(
        cg,
        &[
            "worker",
            "held",
            "--addr",
            &t,
            "--batch",
            "1",
            "--batches",
            "1",
        ],
    )?;
    let pid = child.pid();
    let engine = setup.engine.as_mut().context("engine")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let op = loop {
        if let Some(p) = engine.pending()?.into_iter().find(|p| p.tgid == pid) {
            break p;
        }
        if Instant::now() > deadline {
            bail!("the grant set-up connect was never held");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    engine.decide(
        op.id,
        Decision::Grant {
            scope: Scope::Host,
            ttl: Duration::from_secs(3600),
            uses: None,
        },
    )?;
    let out = child.finish()?;
    if !out.status.success() {
        bail!("grant set-up worker failed");
    }
    Ok(())
}

/// Audit-action events through the ring buffer as fast as several workers can cause them.
fn throughput(setup: &mut Setup, per_worker: usize) -> Result<Throughput> {
    setup.unload()?;
    setup.load(0)?;
    let engine = setup.engine.as_mut().context("engine")?;
    let ring = engine.take_events().context("ring buffer")?;
    let dropped_before = engine.counter(agent_common::Counter::RingbufFull)?;
    // Audit rule target: datagrams to 127.0.0.3, the cheapest call that passes a hook, so the
    // workers can outrun the reader.
    let sink = std::net::UdpSocket::bind("127.0.0.3:0").context("bind 127.0.0.3")?;
    let addr = sink.local_addr()?;
    let workers = 4;
    let a = addr.to_string();
    let n = per_worker.to_string();
    let started = Instant::now();
    let children: Vec<Worker> = (0..workers)
        .map(|_| {
            Worker::start(
                &setup.cgroup.path,
                &[
                    "worker",
                    "udp",
                    "--addr",
                    &a,
                    "--batch",
                    &n,
                    "--batches",
                    "1",
                ],
            )
        })
        .collect::<Result<_>>()?;
    let caused = (workers * per_worker * 2) as u64; // one warm-up batch plus the measured one
    let cpu_before = thread_cpu();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let received = rt.block_on(async {
        let mut reader = EventReader::new(ring)?;
        let mut batch = Vec::new();
        let mut got = 0u64;
        while got < caused {
            batch.clear();
            match tokio::time::timeout(Duration::from_secs(5), reader.next_batch(&mut batch)).await
            {
                Ok(r) => got += r? as u64,
                // Nothing more is coming: the rest was dropped.
                Err(_) => break,
            }
        }
        anyhow::Ok(got)
    })?;
    let cpu = thread_cpu().saturating_sub(cpu_before);
    drop(sink);
    for c in children {
        let out = c.finish()?;
        if !out.status.success() {
            bail!("throughput worker failed");
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let engine = setup.engine.as_mut().context("engine")?;
    let dropped = engine.counter(agent_common::Counter::RingbufFull)? - dropped_before;
    Ok(Throughput {
        caused,
        received,
        dropped,
        per_second: received as f64 / elapsed,
        cpu_ms_per_10k: if received > 0 {
            cpu.as_secs_f64() * 1000.0 * 10_000.0 / received as f64
        } else {
            f64::NAN
        },
    })
}

/// CPU time (user + system) of the calling thread.
fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32))
        .unwrap_or_default()
}

fn round_trips(setup: &mut Setup, target: SocketAddr, n: usize) -> Result<Latency> {
    // A fresh engine: no grants, only the approve rule for the target.
    setup.unload()?;
    setup.load(0)?;
    let engine = setup.engine.as_mut().context("engine")?;
    let ring = engine.take_events().context("ring buffer")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let t = target.to_string();
    let ns = n.to_string();
    let mut child = Worker::start(
        &setup.cgroup.path,
        &[
            "worker",
            "held",
            "--addr",
            &t,
            "--batch",
            &ns,
            "--batches",
            "1",
        ],
    )?;
    let stdout = child
        .0
        .as_mut()
        .and_then(|c| c.stdout.take())
        .context("worker stdout")?;
    let reader_thread = std::thread::spawn(move || -> Result<serde_json::Value> {
        Ok(serde_json::from_reader(std::io::BufReader::new(stdout))?)
    });
    let engine = setup.engine.as_mut().context("engine")?;
    rt.block_on(async {
        let mut reader = EventReader::new(ring)?;
        let mut batch = Vec::new();
        let mut approved = 0;
        while approved < n {
            batch.clear();
            reader.next_batch(&mut batch).await?;
            for ev in &batch {
                if let (agent_common::Outcome::Paused, Some(id)) = (ev.outcome, ev.request) {
                    engine.decide(id, Decision::Allow)?;
                    approved += 1;
                }
            }
        }
        anyhow::Ok(())
    })?;
    let status = child.finish()?.status;
    if !status.success() {
        bail!("round-trip worker failed: {status}");
    }
    let v = reader_thread
        .join()
        .map_err(|_| anyhow::anyhow!("reader thread"))??;
    let ns: Vec<u64> = v["ns"]
        .as_array()
        .context("ns")?
        .iter()
        .filter_map(|x| x.as_u64())
        .collect();
    latency_of(&ns)
}

fn print_names(r: &names::NamesResults) {
    let row = |what: &str, l: &Latency| {
        println!(
            "  {what:<28} p50 {:>8.1} µs  p99 {:>8.1} µs  ({} queries)",
            l.p50_us, l.p99_us, l.samples
        )
    };
    println!("DNS lookup (raw UDP query, answered by dnsmasq on 127.0.0.1:53):");
    row("straight to the server", &r.lookup_direct);
    row("through the agent's proxy", &r.lookup_proxied);
    println!(
        "  p50 ratio {:.2}; {} addresses learned when connect() was measured",
        r.lookup_p50_ratio, r.learned_addresses
    );
}

fn print_throughput(e: &Throughput) {
    println!(
        "audit events through the ring buffer: {} caused, {} received, {} dropped; {:.0} events/s; \
         reader CPU {:.1} ms per 10,000 events",
        e.caused, e.received, e.dropped, e.per_second, e.cpu_ms_per_10k
    );
}

fn print_table(r: &Results) {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header([
        "benchmark",
        "scenario",
        "per call",
        "vs no latch",
        "kernel per run",
    ]);
    for row in &r.overhead {
        t.add_row([
            row.benchmark.clone(),
            row.scenario.clone(),
            format!("{:.2} µs", row.ns_per_call / 1000.0),
            format!("{:.3}×", row.ratio),
            row.kernel_ns_per_run
                .map(|n| format!("{n:.0} ns"))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    println!("{t}");
}

fn plot(rows: &[Row], path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (960, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = rows.iter().map(|r| r.ratio).fold(1.0f64, f64::max) * 1.1;
    let labels: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{}: {}",
                if r.benchmark.starts_with("connect") {
                    "connect"
                } else {
                    "exec"
                },
                r.scenario
            )
        })
        .collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Latch overhead, ratio to no Latch (same run)",
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(330)
        .build_cartesian_2d(0.0..max, (0..rows.len()).into_segmented())?;
    chart
        .configure_mesh()
        .y_labels(rows.len())
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_desc("ratio")
        .draw()?;
    chart.draw_series(rows.iter().enumerate().map(|(i, r)| {
        Rectangle::new(
            [
                (0.0, SegmentValue::Exact(i)),
                (r.ratio, SegmentValue::Exact(i + 1)),
            ],
            BLUE.mix(0.5).filled(),
        )
    }))?;
    root.present()?;
    Ok(())
}
