//! `cargo xtask`: Latch's developer commands.
//!
//! - `setup`: install what the build and tests need (idempotent).
//! - `build`: build everything, the kernel programs first (through `agent/build.rs`).
//! - `test`: set up, check formatting and lints, and run every test, the kernel tests included
//!   (they need root; without it they fail unless `LATCH_SKIP_PRIVILEGED=1`).
//! - `run`: run the product on this host with the example rules.
//! - `vmtest`: run the privileged suites on Debian's kernels in VMs (also the end of `test`).
//! - `fuzz`: run every fuzz target under libFuzzer for a while (also a step of `test`).
//!
//! It owns no product logic: it only prepares the machine and calls cargo and the binaries.

mod fuzz;
mod setup;
mod vm;

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

use setup::run;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Latch developer commands")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the build and test prerequisites (Debian packages, bpf-linker).
    Setup,
    /// Build every binary in release mode.
    Build,
    /// Check formatting and lints, then run every test.
    Test {
        /// Skip `cargo fmt --check` and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Measure overhead, decision latency, footprint, central at fleet scale and audit
    /// verification against baselines in the same run (needs root).
    Bench {
        /// A short smoke run.
        #[arg(long)]
        quick: bool,
        /// Also the long runs (audit verification of 10 million records).
        #[arg(long, conflicts_with = "quick")]
        full: bool,
        /// Only these sections, comma-separated: overhead, content, args, events, round-trip,
        /// stack, fleet, audit, names.
        #[arg(long)]
        only: Option<String>,
        /// Fleet sizes, comma-separated (default: 1000, and 10000 unless --quick).
        #[arg(long)]
        fleet_agents: Option<String>,
        /// Fleet databases, comma-separated: sqlite, postgres, postgres2 (default: all).
        #[arg(long)]
        fleet_databases: Option<String>,
        /// Audit rules added to the fleet's three, for a rule set of a fleet's size (default: 0).
        #[arg(long)]
        fleet_extra_rules: Option<String>,
    },
    /// Install the binaries, the systemd units and a default configuration on this host.
    Install {
        /// Where the binaries go (`PREFIX/bin`); the units refer to /usr/local/bin.
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
        /// Root of the file system to install into (for packaging).
        #[arg(long, default_value = "/")]
        destdir: PathBuf,
    },
    /// Run the product on this host: central (embedded SQLite) and the agent, with the example
    /// rules (needs root).
    Run {
        /// Rules file.
        #[arg(long, default_value = "examples/rules.yaml")]
        rules: PathBuf,
    },
    /// Run the privileged suites on Debian's kernels (6.1, 6.12; arm64 boot check) in VMs, with
    /// BPF LSM on and off, and print the matrix (needs root; installs qemu and virtme-ng).
    Vmtest(vm::Args),
    /// Build every fuzz target (`*/fuzz`) and run each under libFuzzer for a while (also a
    /// step of `test`, for less time each).
    Fuzz {
        /// How long each target runs.
        #[arg(long, default_value_t = 120)]
        seconds: u64,
    },
}

/// How long `test` runs each fuzz target: long enough for libFuzzer to get past the inputs it
/// starts from, short enough for the whole step to stay a few minutes.
const TEST_FUZZ_SECONDS: u64 = 5;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    // What xtask builds is built once, not edited and rebuilt: incremental caches would only add
    // gigabytes of disk to a test run.
    c.env("CARGO_INCREMENTAL", "0");
    c
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => setup::setup(true),
        Cmd::Build => {
            setup::setup(false)?;
            run(cargo().args(["build", "--release", "--workspace", "--bins"]))
        }
        Cmd::Test {
            no_lint,
            cargo_args,
        } => test(no_lint, &cargo_args),
        Cmd::Install { prefix, destdir } => install(&prefix, &destdir),
        Cmd::Bench {
            quick,
            full,
            only,
            fleet_agents,
            fleet_databases,
            fleet_extra_rules,
        } => {
            setup::setup(false)?;
            setup::bench_tools()?;
            // The deployed-stack and fleet benchmarks run the release daemons as processes.
            run(cargo().args([
                "build",
                "--release",
                "-p",
                "latch-bench",
                "-p",
                "latch-agent",
                "-p",
                "latch-central",
            ]))?;
            if !nix::unistd::geteuid().is_root() {
                bail!("the benchmarks load kernel programs: run `cargo xtask bench` as root");
            }
            let mut c = Command::new(root().join("target/release/latch-bench"));
            c.current_dir(root()).args(["run", "--out", "target/bench"]);
            if quick {
                c.arg("--quick");
            }
            if full {
                c.arg("--full");
            }
            for (flag, value) in [
                ("--only", only),
                ("--fleet-agents", fleet_agents),
                ("--fleet-databases", fleet_databases),
                ("--fleet-extra-rules", fleet_extra_rules),
            ] {
                if let Some(v) = value {
                    c.args([flag, &v]);
                }
            }
            run(&mut c)
        }
        Cmd::Run { rules } => run_product(&rules),
        Cmd::Vmtest(args) => vm::vmtest(&args),
        Cmd::Fuzz { seconds } => {
            setup::setup(true)?;
            run(cargo().args(["build", "--workspace", "--bins"]))?;
            fuzz::run(seconds)
        }
    }
}

fn random_token() -> Result<String> {
    use std::io::Read;
    let mut b = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn run_product(rules: &std::path::Path) -> Result<()> {
    setup::setup(false)?;
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "latch-agent",
        "-p",
        "latch-central",
        "-p",
        "latchctl",
    ]))?;
    if !nix::unistd::geteuid().is_root() {
        bail!("the agent loads kernel programs: run `cargo xtask run` as root");
    }
    let rules = if rules.is_absolute() {
        rules.to_path_buf()
    } else {
        root().join(rules)
    };
    let bin = root().join("target/release");
    let state = root().join("target/run");
    std::fs::create_dir_all(&state)?;
    let (admin, reviewer, agent) = (random_token()?, random_token()?, random_token()?);
    for (name, token) in [
        ("admin.token", &admin),
        ("reviewer.token", &reviewer),
        ("agent.token", &agent),
    ] {
        std::fs::write(state.join(name), format!("{token}\n"))?;
    }
    std::fs::write(
        state.join("central.toml"),
        format!(
            "listen = \"127.0.0.1:7443\"\ndatabase = \"sqlite://{db}\"\n\n\
             [[reviewers]]\ntoken = \"{admin}\"\nsubject = \"admin\"\nrole = \"admin\"\n\n\
             [[reviewers]]\ntoken = \"{reviewer}\"\nsubject = \"reviewer\"\nrole = \"approver\"\ngroups = [\"dba-oncall\"]\n\n\
             [[agents]]\nhost_id = \"local\"\ntoken = \"{agent}\"\n\n\
             [web]\nlisten = \"127.0.0.1:7480\"\n",
            db = state.join("central.db").display()
        ),
    )?;
    std::fs::write(
        state.join("agent.toml"),
        format!(
            "rules = \"{rules}\"\nadmin_socket = \"{s}/agent.sock\"\njournal_dir = \"{s}/journal\"\n\
             waiting_dir = \"{s}/waiting\"\n\n[central]\naddress = \"http://127.0.0.1:7443\"\n\
             token_file = \"{s}/agent.token\"\nhost_id = \"local\"\nrules_cache = \"{s}/rules.cache.yaml\"\n",
            rules = rules.display(),
            s = state.display()
        ),
    )?;
    let mut central = Command::new(bin.join("latch-central"))
        .args(["serve", "--config"])
        .arg(state.join("central.toml"))
        .spawn()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect("127.0.0.1:7443").is_err() {
        if std::time::Instant::now() > deadline || central.try_wait()?.is_some() {
            let _ = central.kill();
            bail!("latch-central did not start listening on 127.0.0.1:7443");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let latchctl = |token: &str| {
        let mut c = Command::new(bin.join("latchctl"));
        c.args(["--server", "http://127.0.0.1:7443", "--token-file"])
            .arg(state.join(token));
        c
    };
    if let Err(e) = run(latchctl("admin.token").args(["rules", "apply"]).arg(&rules)) {
        let _ = central.kill();
        return Err(e);
    }
    let mut agent = Command::new(bin.join("latch-agent"))
        .arg("--config")
        .arg(state.join("agent.toml"))
        .arg("run")
        .spawn()?;
    eprintln!(
        "\nLatch is running: central on 127.0.0.1:7443 ({db}), the agent on this host with {rules}.\n\
         Try it from another shell (see README), then decide as the reviewer:\n  \
         {ctl} --token-file {tok} pending\n  \
         {ctl} --token-file {tok} approve ID --reason \"looked fine\"\n\
         or in the web console, http://127.0.0.1:7480, signed in with the token in {tok}.\n\
         Ctrl-C stops both.\n",
        db = state.join("central.db").display(),
        rules = rules.display(),
        ctl = bin.join("latchctl").display(),
        tok = state.join("reviewer.token").display(),
    );
    let status = agent.wait();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(central.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = central.wait();
    let status = status?;
    if !status.success()
        && status.code() != Some(130)
        && std::os::unix::process::ExitStatusExt::signal(&status).is_none()
    {
        bail!("latch-agent exited with {status}");
    }
    Ok(())
}

fn install(prefix: &std::path::Path, destdir: &std::path::Path) -> Result<()> {
    setup::setup(false)?;
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "latch-agent",
        "-p",
        "latch-central",
    ]))?;
    let under = |p: &std::path::Path| destdir.join(p.strip_prefix("/").unwrap_or(p));
    let bin = under(&prefix.join("bin"));
    let units = under(std::path::Path::new("/etc/systemd/system"));
    let etc = under(std::path::Path::new("/etc/latch"));
    for d in [&bin, &units, &etc] {
        std::fs::create_dir_all(d)?;
    }
    let copy = |from: PathBuf, to: PathBuf, overwrite: bool| -> Result<()> {
        if !overwrite && to.exists() {
            eprintln!("install: keeping existing {}", to.display());
            return Ok(());
        }
        std::fs::copy(&from, &to)
            .map_err(|e| anyhow::anyhow!("{} -> {}: {e}", from.display(), to.display()))?;
        eprintln!("install: {}", to.display());
        Ok(())
    };
    for b in ["latch-agent", "latch-central"] {
        copy(root().join("target/release").join(b), bin.join(b), true)?;
    }
    for u in ["latch-agent.service", "latch-central.service"] {
        copy(root().join("systemd").join(u), units.join(u), true)?;
    }
    copy(
        root().join("systemd/agent.toml"),
        etc.join("agent.toml"),
        false,
    )?;
    copy(
        root().join("examples/rules.yaml"),
        etc.join("rules.yaml"),
        false,
    )?;
    eprintln!("install: done; `systemctl daemon-reload && systemctl enable --now latch-agent`");
    Ok(())
}

fn test(no_lint: bool, cargo_args: &[String]) -> Result<()> {
    setup::setup(true)?;
    let privileged = nix::unistd::geteuid().is_root();
    let skip = std::env::var("LATCH_SKIP_PRIVILEGED").as_deref() == Ok("1");
    if !privileged && !skip {
        bail!(
            "the kernel tests load eBPF programs and need root: run `cargo xtask test` as root, \
             or set LATCH_SKIP_PRIVILEGED=1 to skip them explicitly"
        );
    }
    if !no_lint {
        run(cargo().args(["fmt", "--all", "--check"]))?;
        run(
            Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .current_dir(root().join("agent-ebpf"))
                .args(["fmt", "--check"]),
        )?;
        run(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    // Binaries first: the kernel tests run the workload probe and the daemons as processes.
    run(cargo().args(["build", "--workspace", "--bins"]))?;
    let mut t = cargo();
    t.args(["test", "--workspace", "--no-fail-fast"]);
    // It installs the units and starts systemd over the cgroup tree: the VM matrix runs it.
    t.env("LATCH_SKIP_SYSTEMD", "1");
    if !cargo_args.is_empty() {
        t.arg("--").args(cargo_args);
    }
    // The fuzzing and the kernel matrix run even when a native test failed: every result is
    // worth having.
    let native = run(&mut t);
    let fuzzed = fuzz::run(TEST_FUZZ_SECONDS);
    let matrix = vm::from_test();
    native?;
    fuzzed?;
    matrix
}
