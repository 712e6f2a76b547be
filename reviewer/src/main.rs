//! `latch-reference-reviewer --config reviewer.toml`: serves the reference automatic reviewer.
//!
//! ```toml
//! listen = "127.0.0.1:7460"
//! secret_file = "/etc/latch/reviewer.secret"   # the secret central's [[auto_reviewers]] names
//! approve_ports = [443]
//! approve_programs = ["/usr/bin/git"]
//! deny_words = ["drop table", "rm -rf"]
//! ```

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use clap::Parser;
use latch_reference_reviewer::{router, Rules};
use serde::Deserialize;

#[derive(Parser)]
#[command(
    version,
    about = "The reference automatic reviewer for Latch's `auto` review step"
)]
struct Args {
    /// Configuration file (TOML).
    #[arg(long)]
    config: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    listen: SocketAddr,
    secret_file: PathBuf,
    #[serde(flatten)]
    rules: Rules,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        // The service's log is its standard error (the journal under systemd); colour only
        // for a person's terminal.
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let config: Config =
        toml::from_str(&text).with_context(|| format!("parsing {}", args.config.display()))?;
    let secret = std::fs::read(&config.secret_file)
        .with_context(|| format!("reading {}", config.secret_file.display()))?
        .trim_ascii()
        .to_vec();
    anyhow::ensure!(
        secret.len() >= latch_central::auto_protocol::MIN_SECRET,
        "the secret in {} is {} bytes; at least {} are needed",
        config.secret_file.display(),
        secret.len(),
        latch_central::auto_protocol::MIN_SECRET
    );
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    // The address bound (port 0 picks one), for whoever started it.
    let bound = listener.local_addr()?;
    tracing::info!(listen = %bound, "reviewing");
    axum::serve(listener, router(secret, config.rules)).await?;
    Ok(())
}
