//! A real `latch-central` (the release binary next to this one) started as a process with a
//! configuration of its own, and gRPC clients that talk to it as reviewers and agents do.
//!
//! It owns the process and its state directory, both removed on drop; it knows nothing about
//! what a benchmark measures.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use latch_proto::v1::{
    agent_service_client::AgentServiceClient, reviewer_service_client::ReviewerServiceClient,
    ApplyRulesRequest,
};
use latch_test_pg::{Durability, Postgres};
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::interceptor::InterceptedService,
    transport::{Channel, Endpoint},
    Request, Status,
};

/// The admin's token in every configuration written here.
pub const ADMIN_TOKEN: &str = "bench-admin-token";

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Bearer {
    /// For `token`.
    pub fn new(token: &str) -> Result<Bearer> {
        Ok(Bearer(format!("Bearer {token}").parse().with_context(
            || format!("token '{token}' is not a valid header value"),
        )?))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// A reviewer (or admin) client.
pub type Reviewer = ReviewerServiceClient<InterceptedService<Channel, Bearer>>;
/// An agent client.
pub type Agent = AgentServiceClient<InterceptedService<Channel, Bearer>>;

/// A workspace binary built next to this one (`target/release`).
pub fn sibling_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("own path")?;
    let p = exe.parent().context("own directory")?.join(name);
    if !p.exists() {
        bail!(
            "{} is missing: build it first (`cargo build --release -p latch-agent -p latch-central`; \
             `cargo xtask bench` does)",
            p.display()
        );
    }
    Ok(p)
}

/// A free TCP port on loopback.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Who may call the service.
pub struct Access {
    /// Approver tokens (subject `reviewer-<i>`), in order.
    pub approvers: Vec<String>,
    /// `(host_id, token)` per agent.
    pub agents: Vec<(String, String)>,
}

/// Where a central keeps its state.
#[derive(Clone)]
pub enum Database<'a> {
    /// SQLite in the central's own directory, or in this folder when given (created afresh and
    /// removed on drop).
    Sqlite(Option<&'a Path>),
    /// PostgreSQL at this URL, possibly shared with other replicas, which then need the same
    /// audit signing key (`signing_key`, created by the first to start).
    Postgres { url: &'a str, signing_key: PathBuf },
}

/// A PostgreSQL server of the bench's own with a database for central and the audit signing
/// key its replicas share; the server stops and the key goes when it is dropped (after the
/// centrals that use it).
pub struct SharedPostgres {
    _server: Postgres,
    keys: tempfile::TempDir,
    url: String,
}

impl SharedPostgres {
    /// Starts a server with the defaults a production one has (`fsync`, synchronous commits)
    /// and creates database `db` on it.
    pub fn start(rt: &tokio::runtime::Runtime, db: &str) -> Result<SharedPostgres> {
        let server =
            Postgres::start_with(Durability::Full).context("starting PostgreSQL for central")?;
        let url = rt.block_on(server.create_db(db))?;
        let keys = tempfile::Builder::new()
            .prefix("latch-bench-keys-")
            .tempdir()?;
        Ok(SharedPostgres {
            _server: server,
            keys,
            url,
        })
    }

    /// What a central started with it uses.
    pub fn database(&self) -> Database<'_> {
        Database::Postgres {
            url: &self.url,
            signing_key: self.keys.path().join("audit-signing-key.pem"),
        }
    }
}

/// A running `latch-central` with its state directory.
pub struct CentralProcess {
    child: Option<Child>,
    /// Its state directory (configuration, database unless placed elsewhere, log).
    pub dir: PathBuf,
    /// Where the database is when not in `dir`.
    database_dir: Option<PathBuf>,
    /// `http://127.0.0.1:PORT`.
    pub address: String,
}

impl CentralProcess {
    /// Writes a configuration into `dir` (created afresh) and starts the service; returns once
    /// it accepts connections.
    pub fn start(dir: &Path, database: Database, access: &Access) -> Result<CentralProcess> {
        let database_dir = match &database {
            Database::Sqlite(d) => *d,
            Database::Postgres { .. } => None,
        };
        for d in std::iter::once(dir).chain(database_dir) {
            let _ = std::fs::remove_dir_all(d);
            std::fs::create_dir_all(d).with_context(|| format!("mkdir {}", d.display()))?;
        }
        let port = free_port()?;
        let store = match database {
            Database::Sqlite(d) => format!(
                "database = \"sqlite://{}\"\n",
                d.unwrap_or(dir).join("central.db").display()
            ),
            Database::Postgres { url, signing_key } => format!(
                "database = \"{url}\"\n[audit]\nsigning_key = \"{}\"\n",
                signing_key.display()
            ),
        };
        let mut config = format!(
            "listen = \"127.0.0.1:{port}\"\n{store}\n\
             [[reviewers]]\ntoken = \"{ADMIN_TOKEN}\"\nsubject = \"bench-admin\"\nrole = \"admin\"\n"
        );
        for (i, t) in access.approvers.iter().enumerate() {
            config.push_str(&format!(
                "\n[[reviewers]]\ntoken = \"{t}\"\nsubject = \"reviewer-{i}\"\nrole = \"approver\"\n"
            ));
        }
        for (host, token) in &access.agents {
            config.push_str(&format!(
                "\n[[agents]]\nhost_id = \"{host}\"\ntoken = \"{token}\"\n"
            ));
        }
        let config_path = dir.join("central.toml");
        std::fs::write(&config_path, config)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let log = std::fs::File::create(dir.join("central.log"))?;
        let child = Command::new(sibling_binary("latch-central")?)
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting latch-central")?;
        let mut central = CentralProcess {
            child: Some(child),
            dir: dir.to_path_buf(),
            database_dir: database_dir.map(Path::to_path_buf),
            address: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(st) = central
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "latch-central exited ({st}) before listening: {}",
                    std::fs::read_to_string(dir.join("central.log")).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!("latch-central did not listen on 127.0.0.1:{port} within 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(central)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// A fresh channel (its own TCP connection).
    pub async fn channel(&self) -> Result<Channel> {
        // Like the agent's: keep-alive pings so that idle streams are noticed when a peer dies.
        Endpoint::from_shared(self.address.clone())?
            .connect_timeout(Duration::from_secs(30))
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_while_idle(true)
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connecting to {}", self.address))
    }

    /// A reviewer client with `token`, on its own connection.
    pub async fn reviewer(&self, token: &str) -> Result<Reviewer> {
        Ok(ReviewerServiceClient::with_interceptor(
            self.channel().await?,
            Bearer::new(token)?,
        ))
    }

    /// Applies a rule set to the hosts matching `selector`; returns its version.
    pub async fn apply_rules(&self, yaml: &str, selector: &[(&str, &str)]) -> Result<u64> {
        let mut admin = self.reviewer(ADMIN_TOKEN).await?;
        self.apply_with(&mut admin, yaml, selector).await
    }

    /// [`CentralProcess::apply_rules`] through an existing admin client.
    pub async fn apply_with(
        &self,
        admin: &mut Reviewer,
        yaml: &str,
        selector: &[(&str, &str)],
    ) -> Result<u64> {
        Ok(admin
            .apply_rules(ApplyRulesRequest {
                source_name: "bench.yaml".into(),
                yaml: yaml.to_string(),
                selector: selector
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                dry_run: false,
                comment: "benchmark".into(),
            })
            .await
            .context("ApplyRules")?
            .into_inner()
            .version)
    }
}

impl Drop for CentralProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(d) = &self.database_dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
