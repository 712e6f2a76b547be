//! `latch-central serve --config FILE` runs the service; `latch-central validate --config FILE`
//! checks a configuration without starting anything.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use latch_central::Config;

/// Latch's central service: approvals, rules, grants and audit for the fleet's agents.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the service.
    Serve {
        /// Configuration file (TOML).
        #[arg(long, default_value = "/etc/latch/central.toml")]
        config: PathBuf,
    },
    /// Checks a configuration file and exits.
    Validate {
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
    match Cli::parse().command {
        Command::Validate { config } => {
            let c = Config::load(&config)?;
            println!(
                "{}: ok (listen {}, database {}, {} reviewer token(s), {} agent token(s))",
                config.display(),
                c.listen,
                latch_central::store::redact_url(&c.database),
                c.reviewers.len(),
                c.agents.len()
            );
            Ok(())
        }
        Command::Serve { config } => {
            let c = Config::load(&config)?;
            let server = latch_central::start(&c, None)
                .await
                .with_context(|| format!("starting with {}", config.display()))?;
            server
                .run_until(async {
                    let mut term = match tokio::signal::unix::signal(
                        tokio::signal::unix::SignalKind::terminate(),
                    ) {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot watch SIGTERM; stop with Ctrl-C");
                            let _ = tokio::signal::ctrl_c().await;
                            return;
                        }
                    };
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                })
                .await
                .context("serving")?;
            Ok(())
        }
    }
}
