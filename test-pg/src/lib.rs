//! A PostgreSQL server of its own for a test or a benchmark: Debian's binaries, a fresh data
//! directory in a temporary folder, loopback only, stopped and deleted on drop.
//!
//! Tests run it without `fsync` (they check behaviour, not durability); a benchmark asks for
//! [`Durability::Full`] so that its figures include the cost a production server pays.
//!
//! Owns: starting, addressing and stopping such a server. Must not: know Latch's schema or
//! anything a test checks; depend on the kernel harness (`latch-tests`), so that central's tests
//! build without the eBPF toolchain.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Output},
};

/// Where Debian's `postgresql` packages put the servers' programs, one folder per version.
pub const PG_LIB: &str = "/usr/lib/postgresql";

/// The programs of the newest PostgreSQL installed under [`PG_LIB`].
pub fn bin_dir() -> Option<PathBuf> {
    let newest = std::fs::read_dir(PG_LIB)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .max()?;
    Some(Path::new(PG_LIB).join(newest.to_string()).join("bin"))
}

/// Set to `1` to skip the tests that need PostgreSQL, on purpose ([`Postgres::start`] says so).
pub const SKIP_VARIABLE: &str = "LATCH_SKIP_POSTGRES";

/// How the server treats its write-ahead log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// `fsync = off`: for tests, which check behaviour and must not wait for the disk.
    Tests,
    /// The server's defaults (`fsync = on`, `synchronous_commit = on`): a commit is on disk
    /// before it is acknowledged, as in production.
    Full,
}

/// Why a server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("PostgreSQL binaries not found under {PG_LIB}/VERSION/bin: install Debian package `postgresql`")]
    Missing,
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A PostgreSQL program, run as the `postgres` user when we are root (PostgreSQL refuses root).
fn pg_command(bin_dir: &Path, bin: &str) -> Command {
    let path = bin_dir.join(bin);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

fn output_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A running server, stopped and deleted on drop.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Postgres {
    /// Whether the caller asked to skip what needs PostgreSQL.
    pub fn skipped() -> bool {
        std::env::var(SKIP_VARIABLE).as_deref() == Ok("1")
    }

    /// Starts a server: `None` (after saying so) when `LATCH_SKIP_POSTGRES=1`; otherwise
    /// missing binaries fail the test loudly.
    pub fn start() -> Option<Postgres> {
        if Self::skipped() {
            eprintln!("SKIPPED: {SKIP_VARIABLE}=1");
            return None;
        }
        match Self::start_with(Durability::Tests) {
            Ok(pg) => Some(pg),
            Err(e) => panic!("{e} (or set {SKIP_VARIABLE}=1 to skip what needs it)"),
        }
    }

    /// Starts a server with the given durability.
    pub fn start_with(durability: Durability) -> Result<Postgres, PgError> {
        let bin = match bin_dir() {
            Some(b) if b.join("initdb").exists() => b,
            _ => return Err(PgError::Missing),
        };
        let dir = tempfile::Builder::new().prefix("latch-pg-").tempdir()?;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let chown = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .output()?;
            if !chown.status.success() {
                return Err(PgError::Command {
                    what: format!("chown of {} to postgres", dir.path().display()),
                    detail: output_text(&chown),
                });
            }
        }
        let data = dir.path().join("data");
        let out = pg_command(&bin, "initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .output()?;
        if !out.status.success() {
            return Err(PgError::Command {
                what: "initdb".into(),
                detail: output_text(&out),
            });
        }
        let fsync = match durability {
            Durability::Tests => " -c fsync=off",
            Durability::Full => "",
        };
        let mut last = String::new();
        // Another process may take the port between the probe and the server's bind.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let opts = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200{fsync}",
                dir.path().display()
            );
            let st = pg_command(&bin, "pg_ctl")
                .arg("-D")
                .arg(&data)
                .args(["-o", &opts, "-w", "-l"])
                .arg(dir.path().join("log"))
                .arg("start")
                .output()?;
            if st.status.success() {
                return Ok(Postgres { dir, bin, port });
            }
            last = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
            eprintln!("pg_ctl start on port {port} failed: {last}");
        }
        Err(PgError::Command {
            what: "pg_ctl start (5 ports tried)".into(),
            detail: last,
        })
    }

    /// The URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `db`; returns its URL.
    pub async fn create_db(&self, db: &str) -> Result<String, sqlx::Error> {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&self.url("postgres")).await?;
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(&mut c)
            .await?;
        Ok(self.url(db))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = pg_command(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}
