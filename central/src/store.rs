//! Storage: one code path over SQLite (embedded default) and PostgreSQL (replicas). The only
//! module of central that speaks SQL: the domain modules ask it for rows in their own terms
//! (one submodule per group of tables), and know nothing of the driver.
//!
//! Queries are plain SQL run at runtime through `sqlx`'s `Any` driver, written in the dialect both
//! engines accept (`$N` parameters, `ON CONFLICT`, `RETURNING`). Only the DDL differs, in
//! [`MIGRATIONS`]. Times are Unix milliseconds in `BIGINT` columns.
//!
//! The `audit` table is append-only (a trigger refuses UPDATE, and DELETE except below a recorded
//! retention boundary) and hash-chained ([`crate::chain`]): on PostgreSQL every append takes the
//! chain head's row lock (`audit_head`) in its transaction, so sequence numbers are dense and
//! chain order is seq order across replicas; on SQLite the batch of the one writer holds the
//! head (see the `group_commit` module).

mod chat;
mod checkpoints;
mod console;
mod grants;
mod group_commit;
mod hosts;
mod identities;
mod known_names;
mod migrations;
mod notify;
pub mod recommendations;
mod requests;
mod rule_sets;

use std::{
    ops::{Deref, DerefMut},
    path::Path,
    str::FromStr,
    time::Duration,
};

pub use chat::{Delivered, Lease};
pub use checkpoints::Prune;
pub use console::{NewSession, SessionRow};
pub use grants::{GrantRow, Revoke};
use group_commit::{BatchHead, BatchTx, Writer};
pub use group_commit::{CommitObserver, WriterStats};
pub use hosts::{HostRow, NewHost, RuleStatusRow};
pub use identities::{IdentityRow, NewLogin};
pub use known_names::Known;
pub use migrations::MIGRATIONS;
use migrations::MIGRATIONS_AFTER;
pub use notify::Listener;
pub use requests::{History, NewRequest, NewVote, RequestRow, Resolution, State, VoteRow};
pub use rule_sets::{NewRulesVersion, RulesVersion};

use serde_json::Value;

use crate::chain::{parse_hash, Hash, Record, GENESIS};
use crate::clock::now_ms;
use sqlx::{
    any::{AnyConnectOptions, AnyPoolOptions},
    AnyConnection, AnyPool, Connection, Row,
};

/// Storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Could not open the database.
    #[error("cannot open database {url}: {source}")]
    Open {
        /// The URL, without password.
        url: String,
        /// Cause.
        source: sqlx::Error,
    },
    /// Could not create the SQLite file's directory.
    #[error("cannot create directory {dir}: {source}")]
    Dir {
        /// Directory.
        dir: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Could not create the SQLite file.
    #[error("cannot create database file {path}: {source}")]
    Create {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A migration failed.
    #[error("database migration {version} failed: {source}")]
    Migration {
        /// Version.
        version: i64,
        /// Cause.
        source: sqlx::Error,
    },
    /// The database was written by a newer release.
    #[error("database schema version {found} is newer than this release knows ({known})")]
    TooNew {
        /// In the database.
        found: i64,
        /// Known here.
        known: i64,
    },
    /// A query failed.
    #[error("database error while {op}: {source}")]
    Query {
        /// What was being done.
        op: String,
        /// Cause.
        source: sqlx::Error,
    },
    /// A stored value does not decode.
    #[error("corrupt stored value in {what}: {message}")]
    Corrupt {
        /// Where.
        what: String,
        /// What.
        message: String,
    },
}

impl StoreError {
    /// Whether retrying (on this or another replica) may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Query { source, .. } | StoreError::Open { source, .. } => matches!(
                source,
                sqlx::Error::Io(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::WorkerCrashed
            ),
            _ => false,
        }
    }
}

/// Attaches what was being done to a `sqlx` error.
pub(crate) trait QueryContext<T> {
    fn ctx(self, op: impl Into<String>) -> Result<T, StoreError>;
}

impl<T> QueryContext<T> for Result<T, sqlx::Error> {
    fn ctx(self, op: impl Into<String>) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Query {
            op: op.into(),
            source,
        })
    }
}

/// Which engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// One SQLite file.
    Sqlite,
    /// PostgreSQL, possibly shared by replicas.
    Postgres,
}

/// A database URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((cred, host)) = rest.split_once('@') {
            let user = cred.split(':').next().unwrap_or("");
            return format!("{scheme}://{user}:***@{host}");
        }
    }
    url.to_string()
}

/// Serialises migrations of replicas starting together on one PostgreSQL.
const MIGRATION_LOCK: i64 = 0x4c61_7463_6801;

/// The database.
///
/// On SQLite, writes go through one connection with group commit ([`group_commit`]) and the pool
/// holds read-only connections beside it (WAL lets them read while it writes). On PostgreSQL the
/// pool does both, and the server does its own group commit.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    writer: Option<Writer>,
    backend: Backend,
    url: String,
}

/// What [`Store::write`] runs inside its transaction.
pub type TxBody<'t, T, E> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send + 't>>;

/// A write transaction of [`Store::begin`]: `&mut *tx` is the connection to run statements on.
/// Dropped without [`Tx::commit`], its writes are rolled back.
pub struct Tx(TxKind);

enum TxKind {
    Pool(sqlx::Transaction<'static, sqlx::Any>),
    Batch(BatchTx),
}

impl Tx {
    /// Makes this transaction wait for every other one that serialises on the same `key` until
    /// it ends (a check-then-insert that a unique index cannot express). On SQLite every write
    /// transaction already runs alone on the one writer: nothing to take.
    pub async fn serialize_on(&mut self, key: i64, what: &str) -> Result<(), StoreError> {
        if let TxKind::Pool(tx) = &mut self.0 {
            sqlx::query("SELECT 1 AS ok FROM pg_advisory_xact_lock($1)")
                .bind(key)
                .execute(&mut **tx)
                .await
                .ctx(what)?;
        }
        Ok(())
    }

    /// Commits; returns once the writes are durable.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self.0 {
            TxKind::Pool(tx) => tx.commit().await,
            TxKind::Batch(tx) => tx.commit().await,
        }
    }
}

impl Deref for Tx {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        match &self.0 {
            TxKind::Pool(tx) => tx,
            TxKind::Batch(tx) => tx.conn(),
        }
    }
}

impl DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match &mut self.0 {
            TxKind::Pool(tx) => tx,
            TxKind::Batch(tx) => tx.conn_mut(),
        }
    }
}

/// One fact for the audit table.
#[derive(Clone, Debug, Default)]
pub struct AuditFact {
    /// Dotted kind: `request.created`, `request.approved`, `grant.revoked`, `rules.applied`, ...
    pub kind: String,
    /// Who caused it: a reviewer subject, `host:<id>`, `timeout`, ...
    pub actor: String,
    /// Host concerned.
    pub host_id: String,
    /// Central's request id concerned.
    pub request_id: String,
    /// Grant concerned.
    pub grant_id: String,
    /// Rule concerned.
    pub rule_name: String,
    /// Workload concerned.
    pub workload: String,
    /// Action taken (agent records).
    pub action: String,
    /// The agent's record id (agent records only; makes uploads idempotent).
    pub record_id: Option<String>,
    /// The agent journal's sequence number (agent records only; 0 otherwise).
    pub host_seq: i64,
    /// Everything else.
    pub payload: Value,
    /// When; 0 means now.
    pub time_ms: i64,
}

/// Which audit records a query returns. Empty strings and zeros mean "any".
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Records with `seq > after_seq`.
    pub after_seq: i64,
    /// Records with `seq <= until_seq` (0: no bound).
    pub until_seq: i64,
    /// Exact kind, or a prefix ending with '.'.
    pub kind: String,
    /// Host.
    pub host_id: String,
    /// At or after (Unix ms).
    pub since_ms: i64,
    /// Before (Unix ms).
    pub until_ms: i64,
    /// Workload.
    pub workload: String,
    /// Rule.
    pub rule_name: String,
    /// Who (a reviewer's subject, `host:<id>`, `timeout`, ...).
    pub actor: String,
    /// Outcome or action (`allow`, `deny`, `refused`, `audit`, ...).
    pub action: String,
    /// Central's request id.
    pub request_id: String,
}

impl AuditFilter {
    /// Whether only the seq bounds are set (the result is a contiguous piece of the chain).
    pub fn is_unfiltered(&self) -> bool {
        self.kind.is_empty()
            && self.host_id.is_empty()
            && self.since_ms == 0
            && self.until_ms == 0
            && self.workload.is_empty()
            && self.rule_name.is_empty()
            && self.actor.is_empty()
            && self.action.is_empty()
            && self.request_id.is_empty()
    }
}

const AUDIT_COLUMNS: &str = "seq, time_ms, kind, actor, host_id, host_seq, request_id, grant_id,
    rule_name, workload, action, record_id, payload, hash";

fn audit_record(r: &sqlx::any::AnyRow) -> Result<Record, StoreError> {
    let get = || -> Result<(Record, Option<String>), sqlx::Error> {
        Ok((
            Record {
                seq: r.try_get("seq")?,
                time_unix_ms: r.try_get("time_ms")?,
                time: String::new(),
                kind: r.try_get("kind")?,
                actor: r.try_get("actor")?,
                host_id: r.try_get("host_id")?,
                host_seq: r.try_get("host_seq")?,
                request_id: r.try_get("request_id")?,
                grant_id: r.try_get("grant_id")?,
                rule_name: r.try_get("rule_name")?,
                workload: r.try_get("workload")?,
                action: r.try_get("action")?,
                record_id: r
                    .try_get::<Option<String>, _>("record_id")?
                    .unwrap_or_default(),
                payload_json: r.try_get("payload")?,
                hash: GENESIS,
            },
            r.try_get::<Option<String>, _>("hash")?,
        ))
    };
    let (mut rec, hash) = get().ctx("decoding audit")?;
    rec.time = crate::clock::rfc3339(rec.time_unix_ms);
    rec.hash = match hash {
        None => GENESIS,
        Some(h) => parse_hash(&h).map_err(|message| StoreError::Corrupt {
            what: format!("audit seq {}", rec.seq),
            message,
        })?,
    };
    Ok(rec)
}

/// The chain head: the last record's seq and hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// Last seq (0 when empty).
    pub seq: i64,
    /// Its chain hash.
    pub hash: Hash,
}

fn head_of(r: &sqlx::any::AnyRow) -> Result<Head, StoreError> {
    let seq: i64 = r.try_get("seq").ctx("reading the audit chain head")?;
    let hash: String = r.try_get("hash").ctx("reading the audit chain head")?;
    Ok(Head {
        seq,
        hash: parse_hash(&hash).map_err(|message| StoreError::Corrupt {
            what: "audit chain head".into(),
            message,
        })?,
    })
}

/// A setting every SQLite connection gets could not be made.
#[derive(Debug, thiserror::Error)]
#[error("{statement} failed: {source}")]
pub struct SqliteSettingError {
    /// The statement.
    pub statement: &'static str,
    /// Cause.
    #[source]
    pub source: sqlx::Error,
}

/// Runs one setting statement; returns the row it answers with, if any.
async fn sqlite_setting(
    conn: &mut sqlx::AnyConnection,
    statement: &'static str,
) -> Result<Option<sqlx::any::AnyRow>, sqlx::Error> {
    sqlx::query(statement)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|source| match source {
            // Kept as is: an I/O error is what makes a failure transient.
            sqlx::Error::Io(_) => source,
            source => {
                sqlx::Error::AnyDriverError(Box::new(SqliteSettingError { statement, source }))
            }
        })
}

/// What every SQLite connection runs before its first use.
///
/// WAL with `synchronous = FULL`: a commit appends to the `-wal` file and fsyncs it once (a
/// rollback journal costs four: the journal twice, its directory and the database), and a commit
/// that returned survives a crash and a power loss. `NORMAL` would skip that fsync
/// and lose the last commits on power loss, so never `NORMAL` or `OFF`. SQLite creates the
/// `-wal` and `-shm` files beside the database with the database file's permission bits.
async fn sqlite_settings(conn: &mut sqlx::AnyConnection) -> Result<(), sqlx::Error> {
    // How long a statement waits for another process's lock (an operator's `audit verify`
    // migrating an older database, a backup tool) before it fails: well inside the pool's 30 s
    // acquire timeout.
    sqlite_setting(conn, "PRAGMA busy_timeout = 10000").await?;
    let mode: String = sqlite_setting(conn, "PRAGMA journal_mode = WAL")
        .await?
        .map(|r| r.try_get::<String, _>(0))
        .transpose()?
        .unwrap_or_default();
    // An in-memory database has no journal file, and one opened read-only cannot change its
    // mode; either way commits stay durable, only dearer.
    if !mode.eq_ignore_ascii_case("wal") && !mode.eq_ignore_ascii_case("memory") {
        tracing::warn!(
            journal_mode = %mode,
            "SQLite kept its journal mode instead of WAL (is the database read-only?)"
        );
    }
    // Set explicitly, so that it is not the default a SQLite build gives WAL connections that
    // never set it (`SQLITE_DEFAULT_WAL_SYNCHRONOUS`, which a build may make NORMAL).
    sqlite_setting(conn, "PRAGMA synchronous = FULL").await?;
    Ok(())
}

/// Creates a missing database file readable by its owner only: it holds who reviews what, the
/// audit trail and the grants, and SQLite would create it 0644 less the umask. Its `-wal` and
/// `-shm` files take the database file's mode. An existing file keeps the mode its owner gave it.
fn create_private(path: &str) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    if path.is_empty() || path == ":memory:" || path.starts_with("file:") {
        return Ok(());
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(StoreError::Create {
            path: path.to_string(),
            source,
        }),
    }
}

impl Store {
    /// Opens (creating a SQLite file and its directory when missing) and migrates.
    pub async fn open(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let mut full = url.to_string();
        if backend == Backend::Sqlite {
            let path = url
                .trim_start_matches("sqlite:")
                .trim_start_matches("//")
                .split('?')
                .next()
                .unwrap_or("");
            if let Some(dir) = Path::new(path).parent() {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
                        dir: dir.display().to_string(),
                        source,
                    })?;
                }
            }
            if !url.contains("mode=") || url.contains("mode=rwc") {
                create_private(path)?;
            }
            if !url.contains("mode=") {
                full.push_str(if url.contains('?') { "&" } else { "?" });
                full.push_str("mode=rwc");
            }
        }
        let redacted = redact_url(url);
        let opts = AnyConnectOptions::from_str(&full).map_err(|source| StoreError::Open {
            url: redacted.clone(),
            source,
        })?;
        let open_error = |source| StoreError::Open {
            url: redacted.clone(),
            source,
        };
        match backend {
            Backend::Sqlite => {
                let mut conn = AnyConnection::connect_with(&opts)
                    .await
                    .map_err(open_error)?;
                sqlite_settings(&mut conn).await.map_err(open_error)?;
                migrate_on(&mut conn, backend).await?;
                // Readers only: a write that bypassed the writer would take SQLite's write lock
                // outside the batch, and fail at once with SQLITE_BUSY_SNAPSHOT if it had read first.
                let pool = AnyPoolOptions::new()
                    .max_connections(max_connections.clamp(2, 16))
                    .acquire_timeout(Duration::from_secs(30))
                    // A connection to a local file has no peer that could have hung up: a ping
                    // before each read would be one more round trip to its thread for nothing.
                    // (The pool still pings on release, which rolls back what a dropped read
                    // left open.)
                    .test_before_acquire(false)
                    // On every connection the pool opens, not once: the pool replaces
                    // connections (idle, lifetime, errors), and the settings are per connection.
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            sqlite_settings(conn).await?;
                            sqlite_setting(conn, "PRAGMA query_only = ON").await?;
                            Ok(())
                        })
                    })
                    .connect_with(opts)
                    .await
                    .map_err(open_error)?;
                Ok(Store {
                    pool,
                    writer: Some(Writer::new(conn)),
                    backend,
                    url: url.to_string(),
                })
            }
            Backend::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(max_connections.max(2))
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_with(opts)
                    .await
                    .map_err(open_error)?;
                let store = Store {
                    pool,
                    writer: None,
                    backend,
                    url: url.to_string(),
                };
                store.migrate_postgres().await?;
                Ok(store)
            }
        }
    }

    /// The engine.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The URL it was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The pool for reads (on PostgreSQL, for writes too; on SQLite its connections are read-only:
    /// write through [`Store::begin`]).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The write path's counters (SQLite; `None` on PostgreSQL, whose server batches commits).
    pub fn writer_stats(&self) -> Option<&WriterStats> {
        self.writer.as_ref().map(Writer::stats)
    }

    /// Commits what is open and closes every connection.
    pub async fn close(&self) {
        if self.backend == Backend::Sqlite {
            // Only the last connection's close folds the WAL into the database file, and the
            // pool's close can return while a connection on its way back to the pool stays open:
            // so the readers are taken and closed one by one first, and the writer goes last.
            for _ in 0..64 {
                if self.pool.size() == 0 {
                    break;
                }
                match tokio::time::timeout(Duration::from_secs(1), self.pool.acquire()).await {
                    Ok(Ok(conn)) => {
                        if let Err(e) = conn.close().await {
                            tracing::warn!(error = %e, "closing a SQLite read connection");
                        }
                    }
                    _ => break,
                }
            }
        }
        self.pool.close().await;
        if let Some(writer) = &self.writer {
            writer.close().await;
        }
    }

    async fn migrate_postgres(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.ctx("acquiring a connection")?;
        sqlx::query("SELECT 1 AS ok FROM pg_advisory_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await
            .ctx("taking the migration lock")?;
        let result = migrate_on(&mut conn, self.backend).await;
        sqlx::query("SELECT 1 AS ok FROM pg_advisory_unlock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await
            .ctx("releasing the migration lock")?;
        result
    }
}

/// Brings the schema to this release's version, one transaction per migration.
async fn migrate_on(conn: &mut sqlx::AnyConnection, backend: Backend) -> Result<(), StoreError> {
    {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at_ms BIGINT NOT NULL)",
        )
        .execute(&mut *conn)
        .await
        .ctx("creating schema_migrations")?;
        let current: i64 =
            sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations")
                .fetch_one(&mut *conn)
                .await
                .ctx("reading the schema version")?
                .try_get("v")
                .ctx("reading the schema version")?;
        let known = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
        if current > known {
            return Err(StoreError::TooNew {
                found: current,
                known,
            });
        }
        for (version, sqlite, postgres) in MIGRATIONS {
            if *version <= current {
                continue;
            }
            let stmts = match backend {
                Backend::Sqlite => sqlite,
                Backend::Postgres => postgres,
            };
            let mut tx = conn.begin().await.map_err(|source| StoreError::Migration {
                version: *version,
                source,
            })?;
            for s in stmts.iter() {
                sqlx::query(s)
                    .execute(&mut *tx)
                    .await
                    .map_err(|source| StoreError::Migration {
                        version: *version,
                        source,
                    })?;
            }
            if *version == 2 {
                chain_existing(&mut tx).await?;
            }
            for (v, sqlite, postgres) in MIGRATIONS_AFTER {
                if v != version {
                    continue;
                }
                let stmts = match backend {
                    Backend::Sqlite => sqlite,
                    Backend::Postgres => postgres,
                };
                for s in stmts.iter() {
                    sqlx::query(s).execute(&mut *tx).await.map_err(|source| {
                        StoreError::Migration {
                            version: *version,
                            source,
                        }
                    })?;
                }
            }
            sqlx::query("INSERT INTO schema_migrations (version, applied_at_ms) VALUES ($1, $2)")
                .bind(*version)
                .bind(now_ms())
                .execute(&mut *tx)
                .await
                .map_err(|source| StoreError::Migration {
                    version: *version,
                    source,
                })?;
            tx.commit().await.map_err(|source| StoreError::Migration {
                version: *version,
                source,
            })?;
            tracing::info!(version, "database migrated");
        }
        Ok(())
    }
}

impl Store {
    /// Starts a write transaction (on SQLite, it waits for the write connection).
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        match &self.writer {
            Some(writer) => writer.begin().await.map(|tx| Tx(TxKind::Batch(tx))),
            None => self.pool.begin().await.map(|tx| Tx(TxKind::Pool(tx))),
        }
        .ctx("starting a transaction")
    }

    /// Runs `body` in a write transaction and commits it when it returns `Ok` (returning once the
    /// writes are durable); an `Err` rolls it back. `what` names the transaction for errors.
    pub async fn write<T, E, F>(&self, what: &'static str, body: F) -> Result<T, E>
    where
        F: for<'t> FnOnce(&'t mut Tx) -> TxBody<'t, T, E>,
        E: From<StoreError>,
    {
        let mut tx = self.begin().await?;
        let out = body(&mut tx).await?;
        tx.commit().await.ctx(what)?;
        Ok(out)
    }

    /// Runs one statement in a write transaction of its own and returns once it is durable;
    /// `op` says what it does, for the error.
    pub async fn execute_alone<'q>(
        &self,
        statement: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
        op: &str,
    ) -> Result<sqlx::any::AnyQueryResult, StoreError> {
        let mut tx = self.begin().await?;
        let done = statement.execute(&mut *tx).await.ctx(op)?;
        tx.commit().await.ctx(format!("{op}: commit"))?;
        Ok(done)
    }

    /// Appends one fact to the audit chain inside `tx`. Returns false when an agent record with
    /// the same id was already stored.
    ///
    /// On PostgreSQL it takes the chain head's row lock for the rest of `tx`: call it after the
    /// transaction's other writes, so that appends from every replica serialise briefly and in
    /// seq order. On SQLite the write batch holds the head (read once per batch, written before
    /// its `COMMIT`).
    pub async fn audit_in(tx: &mut Tx, fact: &AuditFact) -> Result<bool, StoreError> {
        let time = if fact.time_ms == 0 {
            now_ms()
        } else {
            fact.time_ms
        };
        let head = match &mut tx.0 {
            // The batch holds SQLite's write lock, and the head it read.
            TxKind::Batch(b) => match b.chain_head().head {
                Some(h) => h,
                None => {
                    let r = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
                        .fetch_one(b.conn_mut())
                        .await
                        .ctx("reading the audit chain head")?;
                    let h = head_of(&r)?;
                    b.chain_head().head = Some(h);
                    h
                }
            },
            TxKind::Pool(p) => head_of(
                &sqlx::query("UPDATE audit_head SET seq = seq WHERE id = 1 RETURNING seq, hash")
                    .fetch_one(&mut **p)
                    .await
                    .ctx("locking the audit chain head")?,
            )?,
        };
        if let Some(id) = &fact.record_id {
            let dup = sqlx::query("SELECT seq FROM audit WHERE host_id = $1 AND record_id = $2")
                .bind(&fact.host_id)
                .bind(id)
                .fetch_optional(&mut **tx)
                .await
                .ctx(format!("looking up audit record {id}"))?;
            if dup.is_some() {
                return Ok(false);
            }
        }
        let mut rec = Record {
            seq: head.seq + 1,
            time_unix_ms: time,
            time: String::new(),
            kind: fact.kind.clone(),
            actor: fact.actor.clone(),
            host_id: fact.host_id.clone(),
            host_seq: fact.host_seq,
            request_id: fact.request_id.clone(),
            grant_id: fact.grant_id.clone(),
            rule_name: fact.rule_name.clone(),
            workload: fact.workload.clone(),
            action: fact.action.clone(),
            record_id: fact.record_id.clone().unwrap_or_default(),
            payload_json: fact.payload.to_string(),
            hash: GENESIS,
        };
        rec.hash = rec.link(&head.hash);
        let hash = hex::encode(rec.hash);
        sqlx::query(
            "INSERT INTO audit (seq, time_ms, kind, actor, host_id, host_seq, request_id, grant_id,
                rule_name, workload, action, record_id, payload, hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(rec.seq)
        .bind(rec.time_unix_ms)
        .bind(&rec.kind)
        .bind(&rec.actor)
        .bind(&rec.host_id)
        .bind(rec.host_seq)
        .bind(&rec.request_id)
        .bind(&rec.grant_id)
        .bind(&rec.rule_name)
        .bind(&rec.workload)
        .bind(&rec.action)
        .bind(fact.record_id.clone())
        .bind(&rec.payload_json)
        .bind(&hash)
        .execute(&mut **tx)
        .await
        .ctx(format!("appending audit '{}'", fact.kind))?;
        match &mut tx.0 {
            // Written once for the batch, before its COMMIT.
            TxKind::Batch(b) => {
                *b.chain_head() = BatchHead {
                    head: Some(Head {
                        seq: rec.seq,
                        hash: rec.hash,
                    }),
                    advanced: true,
                }
            }
            TxKind::Pool(p) => {
                sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
                    .bind(rec.seq)
                    .bind(&hash)
                    .execute(&mut **p)
                    .await
                    .ctx("advancing the audit chain head")?;
            }
        }
        Ok(true)
    }

    /// Appends one fact to the audit table.
    pub async fn audit(&self, fact: &AuditFact) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let stored = Store::audit_in(&mut tx, fact).await?;
        tx.commit().await.ctx("committing audit")?;
        Ok(stored)
    }

    /// The chain head as stored.
    pub async fn audit_head(&self) -> Result<Head, StoreError> {
        let r = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .ctx("reading the audit chain head")?;
        head_of(&r)
    }

    /// Audit records matching `f`, oldest first, at most `limit`.
    pub async fn query_audit(
        &self,
        f: &AuditFilter,
        limit: i64,
    ) -> Result<Vec<Record>, StoreError> {
        let (kind_exact, kind_prefix) = if f.kind.ends_with('.') {
            (String::new(), format!("{}%", f.kind))
        } else {
            (f.kind.clone(), String::new())
        };
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit
             WHERE seq > $1 AND ($2 = 0 OR seq <= $2) AND ($3 = '' OR kind = $3) AND ($4 = '' OR kind LIKE $4)
               AND ($5 = '' OR host_id = $5) AND ($6 = 0 OR time_ms >= $6) AND ($7 = 0 OR time_ms < $7)
               AND ($8 = '' OR workload = $8) AND ($9 = '' OR rule_name = $9) AND ($10 = '' OR actor = $10)
               AND ($11 = '' OR action = $11) AND ($12 = '' OR request_id = $12)
             ORDER BY seq LIMIT $13"
        );
        let rows = sqlx::query(&sql)
            .bind(f.after_seq)
            .bind(f.until_seq)
            .bind(kind_exact)
            .bind(kind_prefix)
            .bind(&f.host_id)
            .bind(f.since_ms)
            .bind(f.until_ms)
            .bind(&f.workload)
            .bind(&f.rule_name)
            .bind(&f.actor)
            .bind(&f.action)
            .bind(&f.request_id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .ctx("querying audit")?;
        rows.iter().map(audit_record).collect()
    }

    /// Shadow-mode counts: agent records with action `audit`, per rule, workload and UTC day
    /// (days since the Unix epoch).
    pub async fn shadow_counts(
        &self,
        since_ms: i64,
    ) -> Result<Vec<(String, String, i64, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT rule_name, workload, time_ms / 86400000 AS day, COUNT(*) AS n FROM audit
             WHERE action = 'audit' AND record_id IS NOT NULL AND time_ms >= $1
             GROUP BY rule_name, workload, time_ms / 86400000
             ORDER BY rule_name, workload, day",
        )
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await
        .ctx("counting shadow-mode records")?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("rule_name")?,
                    r.try_get("workload")?,
                    r.try_get("day")?,
                    r.try_get("n")?,
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .ctx("decoding shadow-mode counts")
    }
}

/// Hashes the records stored before the chain existed (migration 2), renumbering them densely.
async fn chain_existing(tx: &mut sqlx::Transaction<'_, sqlx::Any>) -> Result<(), StoreError> {
    let mut prev = GENESIS;
    let mut next = 1i64;
    let mut after = 0i64;
    loop {
        let sql =
            format!("SELECT {AUDIT_COLUMNS} FROM audit WHERE seq > $1 ORDER BY seq LIMIT 1000");
        let rows = sqlx::query(&sql)
            .bind(after)
            .fetch_all(&mut **tx)
            .await
            .ctx("reading audit records to chain")?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            let mut rec = audit_record(row)?;
            after = rec.seq;
            let old = rec.seq;
            rec.seq = next;
            rec.hash = rec.link(&prev);
            sqlx::query("UPDATE audit SET seq = $1, hash = $2 WHERE seq = $3")
                .bind(rec.seq)
                .bind(hex::encode(rec.hash))
                .bind(old)
                .execute(&mut **tx)
                .await
                .ctx(format!("chaining audit record {old}"))?;
            prev = rec.hash;
            next += 1;
        }
    }
    sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
        .bind(next - 1)
        .bind(hex::encode(prev))
        .execute(&mut **tx)
        .await
        .ctx("setting the audit chain head")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    async fn pragma_i64(conn: &mut sqlx::AnyConnection, name: &str) -> i64 {
        sqlx::query(&format!("PRAGMA {name}"))
            .fetch_one(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("PRAGMA {name}: {e}"))
            .try_get(0)
            .unwrap_or_else(|e| panic!("PRAGMA {name}: {e}"))
    }

    async fn journal_mode(conn: &mut sqlx::AnyConnection) -> String {
        sqlx::query("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await
            .expect("PRAGMA journal_mode")
            .try_get(0)
            .expect("journal_mode")
    }

    fn url(path: &Path) -> String {
        format!("sqlite://{}", path.display())
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode()
            & 0o777
    }

    fn beside(db: &Path, suffix: &str) -> std::path::PathBuf {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        name.into()
    }

    async fn write_one(store: &Store) {
        store
            .audit(&AuditFact {
                kind: "test.written".into(),
                actor: "test".into(),
                ..Default::default()
            })
            .await
            .expect("audit");
    }

    /// The connection the store uses is in WAL with synchronous FULL, on a fresh file (SQLite's
    /// default there is a rollback journal) and on the connection the pool opens to replace one.
    #[tokio::test]
    async fn sqlite_connections_are_wal_with_full_sync() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("central.db");
        let store = Store::open(&url(&db), 4).await.expect("open");
        let mut conn = store.pool().acquire().await.expect("acquire");
        assert_eq!(journal_mode(&mut conn).await, "wal");
        assert_eq!(pragma_i64(&mut conn, "synchronous").await, 2, "FULL");
        assert_eq!(pragma_i64(&mut conn, "busy_timeout").await, 10_000);
        // A mark only this connection carries, then closed: the pool must open another.
        sqlx::query("PRAGMA cache_size = -4321")
            .execute(&mut *conn)
            .await
            .expect("mark");
        conn.close().await.expect("close");

        let mut conn = store.pool().acquire().await.expect("acquire again");
        assert_ne!(
            pragma_i64(&mut conn, "cache_size").await,
            -4321,
            "the pool handed back the closed connection"
        );
        assert_eq!(journal_mode(&mut conn).await, "wal");
        assert_eq!(pragma_i64(&mut conn, "synchronous").await, 2, "FULL");
        assert_eq!(pragma_i64(&mut conn, "busy_timeout").await, 10_000);
        drop(conn);
        write_one(&store).await;
        store.close().await;
    }

    /// Writes that arrive together share a commit; every one is stored, chained in order, and
    /// answered only once durable.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_commits_and_all_land() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("central.db");
        let store = Store::open(&url(&db), 4).await.expect("open");
        let before = store.audit_head().await.expect("head").seq;
        let stats = |s: &Store| {
            let w = s.writer_stats().expect("SQLite has a writer");
            (
                w.commits.load(std::sync::atomic::Ordering::Relaxed),
                w.transactions.load(std::sync::atomic::Ordering::Relaxed),
            )
        };
        let (commits0, txs0) = stats(&store);
        let writes: Vec<_> = (0..64)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .audit(&AuditFact {
                            kind: "test.concurrent".into(),
                            actor: format!("writer-{i}"),
                            ..Default::default()
                        })
                        .await
                })
            })
            .collect();
        for w in writes {
            assert!(w.await.expect("join").expect("audit"));
        }
        let (commits, txs) = stats(&store);
        assert_eq!(txs - txs0, 64);
        assert!(
            commits - commits0 < 64,
            "64 concurrent writes took {} commits",
            commits - commits0
        );
        // What was answered is visible to a new reader, and the chain is dense.
        let head = store.audit_head().await.expect("head");
        assert_eq!(head.seq, before + 64);
        let actors: Vec<String> =
            sqlx::query("SELECT actor FROM audit WHERE kind = 'test.concurrent' ORDER BY seq")
                .fetch_all(store.pool())
                .await
                .expect("rows")
                .iter()
                .map(|r| r.try_get("actor").expect("actor"))
                .collect();
        let mut sorted = actors.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 64, "{actors:?}");
        store.close().await;
    }

    /// The batch holds the chain head: a member that appended and was dropped takes its records
    /// and its advance of the head with it, and the member after it in the same batch chains
    /// on the record before it, so the stored chain verifies and the head row names its last
    /// record.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_member_leaves_the_batch_chain_intact() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&url(&dir.path().join("central.db")), 4)
            .await
            .expect("open");
        let fact = |actor: &str| AuditFact {
            kind: "test.batch".into(),
            actor: actor.into(),
            ..Default::default()
        };
        let count = |s: &Store| {
            let w = s.writer_stats().expect("writer");
            (
                w.commits.load(std::sync::atomic::Ordering::Relaxed),
                w.transactions.load(std::sync::atomic::Ordering::Relaxed),
                w.abandoned.load(std::sync::atomic::Ordering::Relaxed),
            )
        };
        let before = count(&store);
        // The first member holds the batch open while the other two queue for the connection,
        // in this order, ahead of the commit that the first member's commit starts.
        let mut first = store.begin().await.expect("begin");
        Store::audit_in(&mut first, &fact("first"))
            .await
            .expect("append");
        let dropped = {
            let store = store.clone();
            tokio::spawn(async move {
                let mut tx = store.begin().await.expect("begin");
                Store::audit_in(&mut tx, &fact("dropped"))
                    .await
                    .expect("append");
                Store::audit_in(&mut tx, &fact("dropped too"))
                    .await
                    .expect("append");
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let last = {
            let store = store.clone();
            tokio::spawn(async move {
                let mut tx = store.begin().await.expect("begin");
                Store::audit_in(&mut tx, &fact("last"))
                    .await
                    .expect("append");
                tx.commit().await.expect("commit last");
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        first.commit().await.expect("commit first");
        dropped.await.expect("join");
        last.await.expect("join");
        let after = count(&store);
        assert_eq!(
            (after.0 - before.0, after.1 - before.1, after.2 - before.2),
            (1, 2, 1),
            "not one batch of the first and last members with the dropped one undone"
        );
        let rows: Vec<(i64, String)> =
            sqlx::query("SELECT seq, actor FROM audit WHERE kind = 'test.batch' ORDER BY seq")
                .fetch_all(store.pool())
                .await
                .expect("rows")
                .iter()
                .map(|r| {
                    (
                        r.try_get("seq").expect("seq"),
                        r.try_get("actor").expect("actor"),
                    )
                })
                .collect();
        let head = store.audit_head().await.expect("head");
        assert_eq!(
            rows.iter().map(|(_, a)| a.as_str()).collect::<Vec<_>>(),
            ["first", "last"]
        );
        assert_eq!(rows[1].0, rows[0].0 + 1, "{rows:?}");
        assert_eq!(head.seq, rows[1].0);
        let report = crate::audit::verify_store(&store, Vec::new(), |_| {})
            .await
            .expect("verify");
        assert!(report.ok(), "{:?}", report.findings);
        assert_eq!(hex::encode(head.hash), report.head_hash);
        store.close().await;
    }

    /// A batch that SQLite rolled back by itself (as after a full disk) fails its members and
    /// leaves the head row where it was: the next append chains onto the last stored record.
    #[tokio::test]
    async fn a_batch_rolled_back_under_it_does_not_move_the_head() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&url(&dir.path().join("central.db")), 4)
            .await
            .expect("open");
        write_one(&store).await;
        let mut tx = store.begin().await.expect("begin");
        Store::audit_in(
            &mut tx,
            &AuditFact {
                kind: "test.lost".into(),
                actor: "test".into(),
                ..Default::default()
            },
        )
        .await
        .expect("append");
        // What SQLite does on its own after some errors.
        sqlx::query("ROLLBACK")
            .execute(&mut *tx)
            .await
            .expect("roll back under the batch");
        assert!(tx.commit().await.is_err(), "a rolled-back batch committed");
        write_one(&store).await;
        let head = store.audit_head().await.expect("head");
        assert_eq!(head.seq, 2, "the head moved onto the lost record");
        let report = crate::audit::verify_store(&store, Vec::new(), |_| {})
            .await
            .expect("verify");
        assert!(report.ok(), "{:?}", report.findings);
        assert_eq!(report.records, 2);
        store.close().await;
    }

    /// A transaction dropped without commit leaves nothing, also when the next one shares its
    /// batch; and the pool's connections cannot write around the writer.
    #[tokio::test]
    async fn a_dropped_transaction_is_undone_and_readers_cannot_write() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("central.db");
        let store = Store::open(&url(&db), 4).await.expect("open");
        let count = |s: Store| async move {
            sqlx::query("SELECT COUNT(*) AS n FROM audit WHERE kind LIKE 'test.%'")
                .fetch_one(s.pool())
                .await
                .expect("count")
                .try_get::<i64, _>("n")
                .expect("n")
        };
        let mut tx = store.begin().await.expect("begin");
        Store::audit_in(
            &mut tx,
            &AuditFact {
                kind: "test.dropped".into(),
                actor: "test".into(),
                ..Default::default()
            },
        )
        .await
        .expect("append");
        drop(tx);
        write_one(&store).await;
        assert_eq!(count(store.clone()).await, 1, "the dropped write was kept");
        let stats = store.writer_stats().expect("writer");
        assert_eq!(
            stats.abandoned.load(std::sync::atomic::Ordering::Relaxed),
            1
        );

        let e = sqlx::query("DELETE FROM web_sessions")
            .execute(store.pool())
            .await
            .expect_err("a write through a reader");
        assert!(e.to_string().contains("readonly"), "{e}");
        store.close().await;
        let store = Store::open(&url(&db), 4).await.expect("reopen");
        assert_eq!(count(store.clone()).await, 1);
        assert!(store.begin().await.is_ok());
        store.close().await;
        assert!(store.begin().await.is_err(), "a closed store began a write");
    }

    /// `-wal` and `-shm` are no more open than the database itself, whatever its mode; a clean
    /// close folds the WAL back into the database file.
    #[tokio::test]
    async fn wal_files_take_the_database_files_mode() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("central.db");
        let (wal, shm) = (beside(&db, "-wal"), beside(&db, "-shm"));

        let store = Store::open(&url(&db), 1).await.expect("open");
        write_one(&store).await;
        assert!(
            wal.exists() && shm.exists(),
            "no -wal/-shm beside the database"
        );
        assert_eq!(mode(&db), 0o600, "a new database is its owner's alone");
        assert_eq!((mode(&wal), mode(&shm)), (0o600, 0o600));
        store.close().await;
        assert!(!wal.exists(), "the WAL is left after a clean close");

        // An owner who lets a group read it (a backup user) keeps that choice.
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let store = Store::open(&url(&db), 1).await.expect("open again");
        write_one(&store).await;
        assert_eq!(mode(&db), 0o640);
        assert_eq!((mode(&wal), mode(&shm)), (0o640, 0o640));
        let head = store.audit_head().await.expect("head");
        store.close().await;
        assert!(head.seq >= 2, "{head:?}");
    }
}
