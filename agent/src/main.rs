//! `latch-agent`: the host daemon and its local commands.
//!
//! Exit codes: 0 success; 1 operational failure; 2 bad input (usage, config, rules, request id);
//! 3 no such held operation; 4 the agent cannot be reached. `whyheld` about one request: 0
//! allowed, 5 denied, 6 still held, 7 ended undecided (its process went away; or, with
//! `--justify`, no longer held).

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use comfy_table::{presets::NOTHING, Table};
use latch_agent::{
    admin::{self, AdminError, AdminRequest},
    central_link,
    config::{self, Config, Settings},
    engine_task::{self, Policy},
    events::EventReader,
    kernel::{self, Decision, Engine, EngineOptions, RequestId, Scope},
    workload,
};

mod terminal;
mod whyheld;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(
    name = "latch-agent",
    version,
    about = "Latch host agent: holds sensitive operations of AI workloads until a person decides"
)]
struct Cli {
    /// Configuration file (default: /etc/latch/agent.toml if it exists).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load the kernel programs and enforce the rules (the daemon).
    Run {
        /// Rules file (overrides `rules` in the configuration).
        #[arg(long)]
        rules: Option<PathBuf>,
    },
    /// Check the configuration and the rules file without loading anything.
    Validate {
        /// Rules file (overrides `rules` in the configuration).
        #[arg(long)]
        rules: Option<PathBuf>,
    },
    /// List operations held for approval.
    Pending {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Decide a held operation.
    Decide {
        /// Request id, as `latch-agent pending` shows it.
        id: String,
        /// allow, deny, or grant (allow this and the same target for a while).
        verdict: Verdict,
        /// How long a grant lasts (like 15m).
        #[arg(long = "for", default_value = "15m")]
        ttl: String,
        /// Who a grant covers.
        #[arg(long, value_enum, default_value = "process")]
        scope: ScopeArg,
        /// Limit a grant to this many further uses.
        #[arg(long)]
        uses: Option<u32>,
    },
    /// Show the agent's state.
    Status {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Resolve every held operation by the fail mode (the service's stop hook).
    Release,
    /// For a workload (any user may run it): what its process tree waits for, or one request's
    /// decision with who decided and why. Asks about the tree of the process that runs this
    /// command (its parent), which must be in the same cgroup as the held process.
    Whyheld {
        /// A request id, as listed: show where it stands.
        request: Option<String>,
        /// Wait for the request's decision.
        #[arg(long, requires = "request")]
        wait: bool,
        /// Say what the held operation is for (once, while it is held): reviewers see it,
        /// masked, marked as the workload's own words.
        #[arg(
            long,
            requires = "request",
            conflicts_with = "wait",
            value_name = "TEXT"
        )]
        justify: Option<String>,
        /// With --wait: seconds to wait at most (1 to 3600).
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Ask about this command's own process tree instead of its parent's.
        #[arg(long)]
        own: bool,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        /// The agent's workload socket (default: `workload_socket` of the configuration, or
        /// /run/latch/workload.sock where the configuration cannot be read).
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Check what this kernel lets Latch guarantee: loads and attaches the programs beside the
    /// agent's (watching nothing), then removes them. Exit code 0 all enforced, 1 something
    /// degraded, 3 something unsupported.
    Doctor {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Verdict {
    Allow,
    Deny,
    Grant,
}

#[derive(Clone, Copy, ValueEnum)]
enum ScopeArg {
    Process,
    Workload,
    Host,
}

fn settings(path: Option<&Path>) -> Result<Settings, config::ConfigError> {
    match path {
        Some(p) => Config::load(Some(p)),
        None if Path::new(config::DEFAULT_PATH).exists() => {
            Config::load(Some(Path::new(config::DEFAULT_PATH)))
        }
        None => Config::load(None),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Cmd::Whyheld {
        request,
        wait,
        justify,
        timeout,
        own,
        json,
        socket,
    } = cli.cmd
    {
        // A workload's user may not read the agent's configuration: only the socket is needed.
        let socket = socket.unwrap_or_else(|| {
            settings(cli.config.as_deref())
                .map(|s| s.config.workload_socket)
                .unwrap_or_else(|_| PathBuf::from("/run/latch/workload.sock"))
        });
        if socket.as_os_str().is_empty() {
            eprintln!("error: the workload socket is turned off here (workload_socket = \"\")");
            return ExitCode::from(4);
        }
        let scope = if own {
            workload::Scope::Process
        } else {
            workload::Scope::Parent
        };
        let ask = match (justify, wait) {
            (Some(text), _) => whyheld::Ask::Justify(text),
            (None, true) => whyheld::Ask::Wait(timeout),
            (None, false) => whyheld::Ask::Outcome,
        };
        return whyheld::run(&socket, request, ask, scope, json);
    }
    let settings = match settings(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Run { rules } => exit(run(settings, rules).await, 1),
            Cmd::Validate { rules } => validate(&settings, rules),
            Cmd::Pending { json } => {
                client(&settings, AdminRequest::Pending {}, |v| {
                    print_pending(v, json)
                })
                .await
            }
            Cmd::Doctor { json } => {
                let facts = latch_agent::doctor::gather(
                    &settings.config.pin_dir,
                    settings.config.cgroup_root.clone(),
                );
                let report = latch_agent::doctor::judge(facts);
                print_doctor(&report, json);
                ExitCode::from(report.exit_code())
            }
            Cmd::Status { json } => {
                client(&settings, AdminRequest::Status {}, |v| {
                    print_status(v, json)
                })
                .await
            }
            Cmd::Decide {
                id,
                verdict,
                ttl,
                scope,
                uses,
            } => {
                let id: RequestId = match id.parse() {
                    Ok(id) => id,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(2);
                    }
                };
                let decision = match verdict {
                    Verdict::Allow => Decision::Allow,
                    Verdict::Deny => Decision::Deny,
                    Verdict::Grant => match humantime::parse_duration(&ttl) {
                        Ok(ttl)
                            if ttl > Duration::ZERO && ttl <= Duration::from_secs(30 * 86400) =>
                        {
                            Decision::Grant {
                                scope: match scope {
                                    ScopeArg::Process => Scope::Process,
                                    ScopeArg::Workload => Scope::Workload,
                                    ScopeArg::Host => Scope::Host,
                                },
                                ttl,
                                uses,
                            }
                        }
                        Ok(_) => {
                            eprintln!("error: --for {ttl}: a grant lasts between 1s and 30d");
                            return ExitCode::from(2);
                        }
                        Err(e) => {
                            eprintln!("error: --for {ttl}: {e}");
                            return ExitCode::from(2);
                        }
                    },
                };
                client(&settings, AdminRequest::Decide { id, decision }, |_| {
                    println!(
                        "{id}: {}",
                        match verdict {
                            Verdict::Allow => "allowed",
                            Verdict::Deny => "denied",
                            Verdict::Grant => "allowed and granted",
                        }
                    );
                })
                .await
            }
            Cmd::Release => exit(release(&settings), 1),
            Cmd::Whyheld { .. } => ExitCode::from(2),
        }
    })
}

fn exit(r: anyhow::Result<()>, code: u8) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}

fn validate(settings: &Settings, rules: Option<PathBuf>) -> ExitCode {
    if let Some(c) = &settings.config.central {
        if let Err(e) = c.load_tls() {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    }
    let path = rules.unwrap_or_else(|| settings.config.rules.clone());
    match Policy::from_file(&path) {
        Ok(p) => {
            println!(
                "ok: configuration valid; {}: {} workloads, {} rules, {} kernel map entries",
                path.display(),
                p.rules.workloads.len(),
                p.rules.rules.len(),
                p.compiled.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

async fn client(
    settings: &Settings,
    req: AdminRequest,
    show: impl FnOnce(serde_json::Value),
) -> ExitCode {
    match admin::call(&settings.config.admin_socket, &req).await {
        Ok(v) => {
            show(v);
            ExitCode::SUCCESS
        }
        Err(AdminError::Refused(msg)) if msg.starts_with("no pending operation") => {
            eprintln!("error: {msg}");
            ExitCode::from(3)
        }
        Err(e @ AdminError::Socket { .. }) => {
            eprintln!("error: {e}");
            ExitCode::from(4)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn print_pending(v: serde_json::Value, json: bool) {
    if json {
        println!("{}", terminal::safe_json(&v));
        return;
    }
    let items = v.as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        println!("nothing is held");
        return;
    }
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header([
        "ID",
        "PID",
        "OP",
        "TARGET",
        "COMMAND",
        "RULE",
        "AGE",
        "EXPIRES IN",
        "APPROVAL",
        "WORKLOAD SAYS",
    ]);
    for p in items {
        let ev = &p["event"];
        let target = ev["path"]
            .as_str()
            .map(str::to_string)
            .or_else(|| ev["destination"].as_str().map(str::to_string))
            .unwrap_or_else(|| "?".into());
        t.add_row([
            p["id"].as_str().unwrap_or("?").to_string(),
            p["tgid"].to_string(),
            p["op"].as_str().unwrap_or("?").to_string(),
            terminal::clean(&target),
            terminal::clean(ev["comm"].as_str().unwrap_or("?")),
            p["rule"].as_str().unwrap_or("?").to_string(),
            format!("{:.1}s", p["age_ms"].as_f64().unwrap_or(0.0) / 1000.0),
            format!("{}s", p["expires_in_s"]),
            terminal::clean(p["approval_id"].as_str().unwrap_or("-")),
            p["justification"]
                .as_str()
                .map(|j| terminal::cut(j, 48))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    println!("{t}");
}

fn print_status(v: serde_json::Value, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return;
    }
    let mut t = Table::new();
    t.load_preset(NOTHING);
    let get = |k: &str| v[k].to_string().trim_matches('"').to_string();
    for k in [
        "backend",
        "lsm_available",
        "links_pinned",
        "rules_source",
        "rules",
        "pending",
        "events_received",
        "fail_mode",
        "heartbeat_timeout_s",
        "holding",
        "followed_dirs",
    ] {
        t.add_row([k.replace('_', " "), get(k)]);
    }
    let watched = v["watched_cgroups"]
        .as_array()
        .map(|a| a.len())
        .unwrap_or(0);
    t.add_row(["watched cgroups".to_string(), watched.to_string()]);
    println!("{t}");
    let mut c = Table::new();
    c.load_preset(NOTHING);
    c.set_header(["KERNEL COUNTER", "VALUE"]);
    for pair in v["counters"].as_array().cloned().unwrap_or_default() {
        c.add_row([
            pair[0].as_str().unwrap_or("?").to_string(),
            pair[1].to_string(),
        ]);
    }
    println!("\n{c}");
    // A string field of a listed item, made safe for a terminal.
    let text = |x: &serde_json::Value, k: &str| terminal::clean(x[k].as_str().unwrap_or(""));
    let items = |k: &str| v[k].as_array().cloned().unwrap_or_default();
    print_listing(
        &[
            "PRIVILEGED WATCHED PROCESS",
            "COMMAND",
            "CGROUP",
            "CAPABILITIES",
        ],
        items("privileged").iter().map(|x| {
            let caps: Vec<&str> = x["caps"]
                .as_array()
                .map(|a| a.iter().filter_map(|c| c.as_str()).collect())
                .unwrap_or_default();
            vec![
                x["pid"].to_string(),
                text(x, "comm"),
                text(x, "cgroup"),
                caps.join(","),
            ]
        }),
        "(these can undo enforcement: see the README's 'Ways around a rule')",
    );
    print_listing(
        &[
            "WATCHED PROCESS",
            "COMMAND",
            "CGROUP",
            "RING FD",
            "SUBMITTED BY",
            "ITS CGROUP",
        ],
        items("foreign_rings").iter().map(|x| {
            vec![
                x["pid"].to_string(),
                text(x, "comm"),
                text(x, "cgroup"),
                x["fd"].to_string(),
                x["owner"].to_string(),
                text(x, "owner_cgroup"),
            ]
        }),
        "(io_uring rings worked outside the watched cgroups: what is submitted there is not seen)",
    );
    print_listing(
        &["RULE", "PATH THAT IS NO FILE HERE"],
        items("missing_programs")
            .iter()
            .map(|x| vec![text(x, "rule"), text(x, "path")]),
        "(matched only by that path string, not by other names of the file, until it exists)",
    );
}

/// A table of `rows` under `header`, then `note`; nothing when there are no rows.
fn print_listing(header: &[&str], rows: impl Iterator<Item = Vec<String>>, note: &str) {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header(header.iter().copied());
    let mut any = false;
    for r in rows {
        t.add_row(r);
        any = true;
    }
    if any {
        println!("\n{t}\n{note}");
    }
}

fn print_doctor(r: &latch_agent::doctor::Report, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
        return;
    }
    let f = &r.facts;
    let mut t = Table::new();
    t.load_preset(NOTHING);
    let opt = |v: Option<String>| v.unwrap_or_else(|| "?".into());
    let lsm = format!(
        "loads {}, attaches {}, runs {}{}",
        f.lsm.loads,
        f.lsm.attaches,
        f.lsm.runs,
        f.lsm
            .reason
            .as_ref()
            .map(|w| format!(" ({w})"))
            .unwrap_or_default()
    );
    for (k, v) in [
        ("kernel", f.kernel.clone()),
        ("architecture", f.arch.clone()),
        (
            "cgroup v2",
            opt(f.cgroup2.as_ref().map(|p| p.display().to_string())),
        ),
        ("BTF", f.btf.to_string()),
        ("active LSMs", opt(f.lsm_list.clone())),
        ("BPF LSM", lsm),
        (
            "programs",
            f.load.clone().err().unwrap_or_else(|| "ok".into()),
        ),
        ("exec backend", opt(f.backend.map(|b| b.to_string()))),
        ("network hold", r.hold.to_string()),
        ("links pinned", f.links_pinned.to_string()),
        ("hooks", f.hooks.join(" ")),
    ] {
        t.add_row([k.to_string(), terminal::clean(&v)]);
    }
    println!("{t}\n");
    let mut g = Table::new();
    g.load_preset(NOTHING);
    g.set_header(["GUARANTEE", "VERDICT", "WHY"]);
    for x in &r.guarantees {
        g.add_row([x.name.to_string(), x.verdict.to_string(), x.why.clone()]);
    }
    println!("{g}\n\noverall: {}", r.verdict);
}

fn release(settings: &Settings) -> anyhow::Result<()> {
    let n = kernel::release_pinned(&settings.config.pin_dir, settings.config.fail_mode.into())
        .context("releasing held operations")?;
    println!("released {n} held operation(s) by the fail mode");
    Ok(())
}

fn host_id(configured: Option<&String>) -> String {
    if let Some(h) = configured {
        return h.clone();
    }
    std::fs::read_to_string("/etc/machine-id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .map(|h| h.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "unknown-host".into())
}

async fn run(settings: Settings, rules: Option<PathBuf>) -> anyhow::Result<()> {
    // First of all: the unit is active (`Type=exec`), and so reloadable, while the programs
    // load, and SIGHUP's default action would end the agent with a status systemd counts as
    // clean, so it would not be restarted. A reload asked for meanwhile is done once ready.
    let mut hup = signal(SignalKind::hangup())?;
    let rules_path = rules.unwrap_or_else(|| settings.config.rules.clone());
    tracing::info!(rules = %rules_path.display(), "latch-agent starting");
    let central = settings.config.central.clone();
    // Certificates are checked before anything is loaded, so a bad file stops the start with
    // its key and path rather than after the kernel programs are attached.
    let central_tls = match &central {
        Some(c) => c.load_tls()?,
        None => None,
    };
    // With central, the last rules it sent are enforced at once; the local file is the fallback
    // for a host that never reached central. Without central, the local file is the policy.
    let initial = match &central {
        Some(c) => match central_link::cached_policy(&c.rules_cache) {
            Some(p) => Some(p),
            None if rules_path.exists() => Some(Policy::from_file(&rules_path)?),
            None => {
                tracing::warn!(
                    "no cached or local rules: nothing is enforced until central sends rules"
                );
                None
            }
        },
        None => Some(Policy::from_file(&rules_path)?),
    };
    let fail_mode = settings.config.fail_mode.into();
    // Bound before the programs load: they carry its port.
    let proxy = match latch_agent::dns::proxy::Proxy::bind() {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::error!(
                "cannot bind the resolver proxy on loopback: {e}; the names in connect rules \
                 are not learned: every destination of a workload whose rules name hosts is \
                 unresolved"
            );
            None
        }
    };
    let mut engine = Engine::load(EngineOptions {
        pin_dir: settings.config.pin_dir.clone(),
        cgroup_root: settings.config.cgroup_root.clone(),
        stale_after: settings.heartbeat_timeout,
        fail_mode,
        exec_backend: None,
        dns_proxy_port: proxy.as_ref().map_or(0, |p| p.port()),
        dns_proxy_v6: proxy.as_ref().is_some_and(|p| p.has_v6()),
    })?;
    tracing::info!(
        pin_dir = %settings.config.pin_dir.display(),
        cgroup_root = %engine.cgroup_root().display(),
        lsm = engine.lsm_available(),
        links_pinned = engine.links_pinned(),
        "kernel programs attached"
    );
    let backend = engine.backend();
    let cgroup_root = engine.cgroup_root().to_path_buf();
    let lsm_available = engine.lsm_available();
    let enforcement = {
        let mut facts = latch_agent::doctor::host_facts();
        latch_agent::doctor::engine_facts(&mut facts, &engine);
        let report = latch_agent::doctor::judge(facts);
        tracing::info!(backend = %backend, verdict = %report.summary(), "enforcement on this host");
        report.summary()
    };
    let ring = engine.take_events().context("event ring buffer")?;
    // What loading parsed (the kernel's BTF, several times) is no longer needed.
    latch_agent::heap::release_freed();
    let (policy_tx, policy_rx) = tokio::sync::watch::channel(initial.map(Arc::new));
    // With central deciding expiries, the local timeout is only the backstop for a lost link.
    let grace = if central.is_some() {
        Duration::from_secs(5)
    } else {
        Duration::ZERO
    };
    let metrics = latch_agent::metrics::Metrics::new();
    let board = workload::Board::new();
    let waiting_dir = settings.config.waiting_dir.clone();
    let host = host_id(central.as_ref().and_then(|c| c.host_id.as_ref()));
    // The journal's full-disk hook reaches the engine task, which starts right after.
    let engine_slot: Arc<std::sync::OnceLock<engine_task::EngineHandle>> = Arc::default();
    let slot = engine_slot.clone();
    let recorder = latch_agent::recorder::Recorder::start(
        settings.config.journal_dir.clone(),
        &host,
        settings.config.journal_max_mib << 20,
        Box::new(move |full| {
            if let Some(h) = slot.get() {
                h.degrade_blocking(full);
            }
        }),
        metrics.clone(),
    )
    .with_context(|| format!("journal_dir {}", settings.config.journal_dir.display()))?;
    let (handle, engine_task) = engine_task::spawn(
        engine,
        policy_rx,
        engine_task::TaskOptions {
            tick: settings.tick,
            rescan: settings.rescan_interval,
            central_loss_timeout: settings.central_loss_timeout,
            fail_mode,
            heartbeat_timeout: settings.heartbeat_timeout,
            expiry_grace: grace,
            metrics: metrics.clone(),
            waiting_dir: (!waiting_dir.as_os_str().is_empty()).then_some(waiting_dir),
            recorder: Some(recorder.clone()),
            board: board.clone(),
            name_grants: central
                .as_ref()
                .map(|c| central_link::name_grants(&c.rules_cache))
                .unwrap_or_default(),
            known_names: central
                .as_ref()
                .map(|c| central_link::known_names(&c.rules_cache))
                .unwrap_or_default(),
        },
    );
    let _ = engine_slot.set(handle.clone());
    if let Some(p) = proxy {
        let port = p.port();
        p.spawn(handle.clone(), metrics.clone())
            .context("resolver proxy")?;
        tracing::info!(port, "resolver proxy serving on loopback");
    }
    if !settings.config.metrics_listen.is_empty() {
        let listener = tokio::net::TcpListener::bind(&settings.config.metrics_listen)
            .await
            .with_context(|| format!("metrics_listen {}", settings.config.metrics_listen))?;
        tracing::info!(address = %settings.config.metrics_listen, "serving /metrics");
        tokio::spawn(latch_agent::metrics::serve(listener, metrics.clone()));
    }

    let (link_tx, link_rx) = tokio::sync::mpsc::channel(4096);
    if let Some(c) = &central {
        let redactor = redact::Redactor::new(&settings.config.redact).context("[redact]")?;
        let token = match &c.token_file {
            Some(file) => {
                let token = std::fs::read_to_string(file)
                    .with_context(|| format!("central.token_file {}", file.display()))?;
                let token = token.lines().next().unwrap_or("").trim().to_string();
                if token.is_empty() {
                    anyhow::bail!("central.token_file {} is empty", file.display());
                }
                Some(token)
            }
            None => None,
        };
        let link = central_link::LinkSettings {
            address: c.address.clone(),
            token,
            tls: central_tls.clone(),
            host_id: host.clone(),
            labels: c.labels.clone(),
            rules_cache: c.rules_cache.clone(),
            backend,
            lsm_available,
            enforcement,
            metrics: metrics.clone(),
            recorder: recorder.clone(),
            board: board.clone(),
        };
        tokio::spawn(central_link::run(
            link,
            handle.clone(),
            policy_tx.clone(),
            link_rx,
            Arc::new(redactor),
        ));
    } else {
        drop(link_rx);
    }

    let policy_seen = policy_tx.subscribe();
    // At most this many files are hashed at once; more holds wait their turn.
    let hashing = Arc::new(tokio::sync::Semaphore::new(4));
    let known = Arc::new(latch_agent::programs::known::Known::new(
        latch_agent::programs::known::DPKG_DIR,
    ));
    let mut reader = EventReader::new(ring).context("event reader")?;
    let events_handle = handle.clone();
    let event_recorder = recorder.clone();
    tokio::spawn(async move {
        let mut batch = Vec::new();
        loop {
            match reader.next_batch(&mut batch).await {
                Ok(_) => {
                    let mut out = Vec::with_capacity(batch.len());
                    for mut ev in batch.drain(..) {
                        ev.enrich(&cgroup_root);
                        // A move into a child of the watched cgroup is no departure.
                        if !ev.moved_within(&cgroup_root) {
                            event_recorder.record(
                                latch_agent::events::op_name(ev.op),
                                serde_json::to_value(&ev).unwrap_or_default(),
                            );
                        }
                        if (ev.rule_id == agent_common::RESOLVE_RULE
                            || agent_common::is_args_rule(ev.rule_id))
                            && ev.outcome == agent_common::Outcome::Paused
                        {
                            if ev.content {
                                // Hashing can take a while: off this loop, so that other
                                // events keep flowing.
                                // The package lists are read only for a workload that
                                // decides unknown programs.
                                let asks_known = policy_seen.borrow().as_ref().is_some_and(|p| {
                                    p.rules.workloads.iter().any(|w| {
                                        w.id == ev.workload && w.unknown_programs.is_some()
                                    })
                                });
                                tokio::spawn(resolve_content(
                                    ev,
                                    events_handle.clone(),
                                    link_tx.clone(),
                                    asks_known.then(|| known.clone()),
                                    hashing.clone(),
                                ));
                                continue;
                            }
                            // Decided here by the rules, or turned into a real request.
                            match events_handle.resolve(ev, None).await {
                                Ok(Some(resolved)) => ev = resolved,
                                Ok(None) => continue,
                                Err(_) => return,
                            }
                        }
                        submit(&link_tx, &ev);
                        out.push(ev);
                    }
                    batch = out;
                    if events_handle
                        .events(std::mem::take(&mut batch))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Err(e) => {
                    tracing::error!("event reader failed: {e}");
                    break;
                }
            }
        }
    });

    // Before anything can see the agent ready, so that a stop from then on releases what it
    // holds. Earlier, the default action ends it at once, and what the kernel holds by then is
    // resolved by the next start (or `latch-agent release`).
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let listener = admin::bind(&settings.config.admin_socket)?;
    tokio::spawn(admin::serve(listener, handle.clone()));
    let workload_socket = &settings.config.workload_socket;
    if !workload_socket.as_os_str().is_empty() {
        let listener = workload::bind(workload_socket)?;
        tracing::info!(socket = %workload_socket.display(), "serving held workloads");
        tokio::spawn(workload::serve(listener, board));
    }
    tracing::info!(socket = %settings.config.admin_socket.display(), rules = %rules_path.display(), "latch-agent ready");

    loop {
        tokio::select! {
            _ = hup.recv(), if central.is_none() => match Policy::from_file(&rules_path) {
                Ok(p) => {
                    tracing::info!(rules = %rules_path.display(), "reloading rules");
                    let _ = policy_tx.send(Some(Arc::new(p)));
                }
                Err(e) => tracing::error!("rules not reloaded, the ones in force stay: {e}"),
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("stopping: releasing held operations by the fail mode");
    match handle.shutdown().await {
        Ok(Ok(n)) => tracing::info!(released = n, "held operations released"),
        Ok(Err(e)) => tracing::error!("cannot release held operations: {e}"),
        Err(e) => tracing::error!("{e}"),
    }
    recorder.close().await;
    let _ = std::fs::remove_file(&settings.config.admin_socket);
    if !workload_socket.as_os_str().is_empty() {
        let _ = std::fs::remove_file(workload_socket);
    }
    drop(handle);
    engine_task.abort();
    Ok(())
}

/// Hands a request to the central link. A full queue loses nothing: held operations are
/// resubmitted from the kernel's pending map on reconnection.
fn submit(
    link_tx: &tokio::sync::mpsc::Sender<latch_agent::events::KernelEvent>,
    ev: &latch_agent::events::KernelEvent,
) {
    if ev.request.is_some() && !link_tx.is_closed() && link_tx.try_send(ev.clone()).is_err() {
        tracing::warn!(
            "central link queue full; request {} will be resubmitted",
            ev.request.map(|r| r.to_string()).unwrap_or_default()
        );
    }
}

/// An exec held for its content: the file is hashed on a blocking thread, then the engine
/// decides, and a resulting request goes where the event loop would have sent it.
async fn resolve_content(
    ev: latch_agent::events::KernelEvent,
    handle: latch_agent::engine_task::EngineHandle,
    link_tx: tokio::sync::mpsc::Sender<latch_agent::events::KernelEvent>,
    known: Option<Arc<latch_agent::programs::known::Known>>,
    hashing: Arc<tokio::sync::Semaphore>,
) {
    // Never closed: a failure here would mean no permit, and the exec stays held.
    let Ok(_permit) = hashing.acquire_owned().await else {
        return;
    };
    let held = ev.clone();
    let inspection = tokio::task::spawn_blocking(move || {
        latch_agent::programs::content::inspect(&held, known.as_deref())
    })
    .await
    .ok();
    if let Ok(Some(resolved)) = handle.resolve(ev, inspection).await {
        submit(&link_tx, &resolved);
        let _ = handle.events(vec![resolved]).await;
    }
}
