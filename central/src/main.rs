//! `latch-central serve --config FILE` runs the service; `latch-central` alone (or `serve` without
//! `--config`) runs it from /etc/latch/central.toml or, when that file does not exist, with the
//! defaults: loopback, and a SQLite database in the state directory
//! ([`latch_central::config::first_start_state_dir`]). `latch-central validate --config FILE`
//! checks a configuration without starting anything; `latch-central audit verify` checks the
//! stored audit chain directly in the database (exit 7 when it does not verify) and
//! `latch-central audit public-key` prints the key that signs its checkpoints.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use latch_central::Config;
use tokio::signal::unix::{signal, SignalKind};

/// Latch's central service: approvals, rules, grants and audit for the fleet's agents.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Without a command: `serve`.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the service (the default command).
    Serve {
        /// Configuration file (TOML). Default: /etc/latch/central.toml, or, when that file does
        /// not exist, the defaults: 127.0.0.1:7443 and a SQLite database in the state directory
        /// ($STATE_DIRECTORY; for root /var/lib/latch; else $XDG_STATE_HOME/latch or
        /// ~/.local/state/latch).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Checks a configuration file and exits.
    Validate {
        /// Configuration file (TOML).
        #[arg(long, default_value = "/etc/latch/central.toml")]
        config: PathBuf,
    },
    /// The audit trail, read directly from the database.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verifies the whole chain and its checkpoints; prints records per second.
    Verify {
        /// Configuration file (TOML).
        #[arg(long, default_value = "/etc/latch/central.toml")]
        config: PathBuf,
        /// Trusted public key (PEM); default: the one next to the configured signing key.
        #[arg(long)]
        public_key: Option<PathBuf>,
    },
    /// Prints the public key (PEM) that signs checkpoints.
    PublicKey {
        /// Configuration file (TOML).
        #[arg(long, default_value = "/etc/latch/central.toml")]
        config: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match Cli::parse()
        .command
        .unwrap_or(Command::Serve { config: None })
    {
        Command::Validate { config } => {
            let c = Config::load(&config)?;
            let tls = match &c.tls {
                Some(t) => {
                    let loaded = latch_central::tls::ServerTls::load(t)
                        .with_context(|| config.display().to_string())?;
                    if loaded.verifies_clients() {
                        "TLS with client certificates"
                    } else {
                        "TLS"
                    }
                }
                None => "plaintext",
            };
            println!(
                "{}: ok (listen {} {tls}, database {}, {} reviewer token(s), {} agent token(s))",
                config.display(),
                c.listen,
                latch_central::store::redact_url(&c.database),
                c.reviewers.len(),
                c.agents.len()
            );
            Ok(())
        }
        Command::Audit {
            command: AuditCommand::PublicKey { config },
        } => {
            let c = Config::load(&config)?;
            let path = latch_central::chain::public_key_path(&c.signing_key_path());
            let key = latch_central::chain::read_public_key(&path)?;
            print!("{}", latch_central::chain::public_key_pem(&key));
            Ok(())
        }
        Command::Audit {
            command: AuditCommand::Verify { config, public_key },
        } => {
            let c = Config::load(&config)?;
            let path = public_key
                .unwrap_or_else(|| latch_central::chain::public_key_path(&c.signing_key_path()));
            let key = latch_central::chain::read_public_key(&path)?;
            let store = latch_central::store::Store::open(&c.database, 2).await?;
            let started = std::time::Instant::now();
            let report = latch_central::audit::verify_store(&store, vec![key], |n| {
                if n % 1_000_000 < latch_central::audit::PAGE as u64 {
                    eprintln!("{n} records read");
                }
            })
            .await?;
            let secs = started.elapsed().as_secs_f64();
            // Closed before exit: with nothing else holding the database open, that folds the
            // WAL into it and removes the `-wal` and `-shm` files.
            store.close().await;
            for f in &report.findings {
                println!("TAMPERED {f}");
            }
            for g in &report.host_gaps {
                println!("GAP {g}");
            }
            println!(
                "{} records (seq {}..{}), {} checkpoints checked, head {}: {}",
                report.records,
                report.first_seq,
                report.last_seq,
                report.checkpoints_checked,
                report.head_hash,
                if report.ok() { "intact" } else { "NOT INTACT" }
            );
            eprintln!(
                "verified in {secs:.1} s: {:.0} records/s",
                report.records as f64 / secs.max(1e-9)
            );
            if !report.ok() {
                std::process::exit(7);
            }
            Ok(())
        }
        Command::Serve { config } => {
            // Watched before the service is up: from the moment it answers, SIGTERM and SIGINT
            // stop it cleanly. Watched only once serving, a signal in between ended it at once.
            let mut term = signal(SignalKind::terminate()).context("watching SIGTERM")?;
            let mut int = signal(SignalKind::interrupt()).context("watching SIGINT")?;
            let (c, source) = serve_config(config)?;
            let server = latch_central::start(&c, None)
                .await
                .with_context(|| format!("starting with {source}"))?;
            // On standard output whatever the log level, for people and for scripts that wait
            // for the service to be up.
            println!(
                "latch-central listening on {} (gRPC, {}), database {}{}",
                server.addr(),
                if c.tls.is_some() { "TLS" } else { "plaintext" },
                latch_central::store::redact_url(&c.database),
                match server.web_addr() {
                    Some(a) => format!(", web console on http://{a}"),
                    None => String::new(),
                }
            );
            server
                .run_until(async move {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                })
                .await
                .context("serving")?;
            Ok(())
        }
    }
}

/// The configuration to serve with, and how to name it in messages: the file given; else
/// /etc/latch/central.toml; else, when that file does not exist, the defaults.
fn serve_config(given: Option<PathBuf>) -> anyhow::Result<(Config, String)> {
    if let Some(path) = given {
        let c = Config::load(&path)?;
        return Ok((c, path.display().to_string()));
    }
    let path = std::path::Path::new(latch_central::config::DEFAULT_CONFIG_FILE);
    match Config::load(path) {
        Ok(c) => Ok((c, path.display().to_string())),
        Err(latch_central::config::ConfigError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            // SAFETY: geteuid has no preconditions and cannot fail.
            let is_root = unsafe { libc::geteuid() } == 0;
            let dir =
                latch_central::config::first_start_state_dir(|k| std::env::var_os(k), is_root)?;
            let c = Config::first_start(&dir);
            println!(
                "latch-central: no {} and no --config: starting with the defaults, state in {}",
                path.display(),
                dir.display()
            );
            println!(
                "latch-central: no agent or reviewer can sign in yet: write a configuration with \
                 [[agents]] and [oidc] (or [[reviewers]] for a first try; see \
                 central.example.toml) and start with --config FILE"
            );
            Ok((c, "the defaults".to_string()))
        }
        Err(e) => Err(e.into()),
    }
}
