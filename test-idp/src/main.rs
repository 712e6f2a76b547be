//! `latch-test-idp`: runs the test OpenID Connect provider on loopback for local runs and prints
//! its issuer URL. Not for production: users log in by name alone.

use anyhow::Context;
use clap::Parser;

/// A local OpenID Connect provider for trying Latch's reviewer logins.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
    /// A user: NAME:EMAIL[:GROUP,GROUP...]. Repeatable.
    #[arg(long = "user", value_name = "NAME:EMAIL[:GROUPS]")]
    users: Vec<String>,
    /// A user (given with --user) whose tokens say `email_verified: false`. Repeatable.
    #[arg(long = "unverified-email", value_name = "NAME")]
    unverified_emails: Vec<String>,
    /// A public client: ID[=REDIRECT_URI,...]. Repeatable.
    #[arg(long = "client", value_name = "ID[=REDIRECT_URIS]")]
    clients: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !cli.listen.ip().is_loopback() {
        anyhow::bail!("--listen {} is not a loopback address", cli.listen);
    }
    let idp = latch_test_idp::TestIdp::start_on(cli.listen)
        .await
        .context("starting the provider")?;
    for u in &cli.users {
        let mut parts = u.splitn(3, ':');
        let (Some(name), Some(email)) = (parts.next(), parts.next()) else {
            anyhow::bail!("--user '{u}': expected NAME:EMAIL[:GROUP,GROUP...]");
        };
        let groups: Vec<&str> = parts
            .next()
            .map(|g| g.split(',').filter(|g| !g.is_empty()).collect())
            .unwrap_or_default();
        idp.add_user(name, email, &groups);
    }
    for name in &cli.unverified_emails {
        idp.set_email_verified(name, false)
            .with_context(|| format!("--unverified-email {name}"))?;
    }
    for c in &cli.clients {
        let (id, uris) = c.split_once('=').unwrap_or((c.as_str(), ""));
        let uris: Vec<&str> = uris.split(',').filter(|u| !u.is_empty()).collect();
        idp.add_client(id, None, &uris);
    }
    println!("{}", idp.issuer());
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    idp.stop().await;
    Ok(())
}
