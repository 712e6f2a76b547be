//! What a statement costs on central's SQLite write path: the statements of a write transaction
//! shaped like a decision's (a savepoint, a lookup, inserts and an update on indexed tables)
//! run through `sqlx`, central's driver, which hands each statement to the connection's own
//! thread and its result back, against the same statements run on the thread that owns the
//! connection (`rusqlite`). Rounds alternate between the two, each on its own database file with
//! the same schema and settings (WAL, `synchronous=FULL`), inside one open transaction, so the
//! commit's `fsync`, which both would pay alike, is left out. The ratio says how much of a write
//! transaction's time is the hand-off: the ceiling that running whole transactions where the
//! connection lives would lift. It owns its scratch directory and removes it.

use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;
use sqlx::{Connection, SqliteConnection};

/// Statements per transaction, as in [`transaction_sqlx`] and [`transaction_on_thread`].
const STATEMENTS: usize = 7;

const SCHEMA: &str = "
    CREATE TABLE requests (id TEXT PRIMARY KEY, host TEXT NOT NULL, state TEXT NOT NULL,
        context BLOB NOT NULL, updated_at INTEGER NOT NULL);
    CREATE INDEX requests_pending ON requests (host, state);
    CREATE TABLE transitions (id TEXT NOT NULL, state TEXT NOT NULL, at INTEGER NOT NULL);
    CREATE INDEX transitions_id ON transitions (id);";

/// The comparison's figures.
#[derive(Serialize)]
pub struct Handoff {
    /// Statements in each transaction.
    pub statements: usize,
    /// Transactions in each round.
    pub transactions: usize,
    /// Rounds of each kind, alternating.
    pub rounds: usize,
    /// Median over rounds of the mean time of a transaction through `sqlx`, in microseconds.
    pub sqlx_us: f64,
    /// The same on the connection's own thread.
    pub on_thread_us: f64,
    /// `sqlx_us / on_thread_us`.
    pub ratio: f64,
}

/// Runs `rounds` rounds of `transactions` transactions each way.
pub fn run(rounds: usize, transactions: usize) -> Result<Handoff> {
    let dir = tempfile::Builder::new()
        .prefix("latch-bench-handoff-")
        .tempdir()?;
    let through = dir.path().join("sqlx.db");
    let owned = dir.path().join("thread.db");
    // Two workers, as central's runtime has on this machine's two cores.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut sqlx_conn = rt.block_on(async {
        let mut c = SqliteConnection::connect(&format!("sqlite://{}?mode=rwc", through.display()))
            .await
            .context("opening the sqlx database")?;
        sqlx::raw_sql("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
            .execute(&mut c)
            .await?;
        sqlx::raw_sql(SCHEMA).execute(&mut c).await?;
        sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut c).await?;
        anyhow::Ok(c)
    })?;
    let thread_conn =
        rusqlite::Connection::open(&owned).context("opening the rusqlite database")?;
    thread_conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")?;
    thread_conn.execute_batch(SCHEMA)?;
    thread_conn.execute_batch("BEGIN IMMEDIATE")?;

    let (mut via_sqlx, mut on_thread) = (Vec::new(), Vec::new());
    let mut next = 0u64;
    for _ in 0..rounds {
        let t = Instant::now();
        rt.block_on(async {
            for _ in 0..transactions {
                next += 1;
                transaction_sqlx(&mut sqlx_conn, next).await?;
            }
            anyhow::Ok(())
        })?;
        via_sqlx.push(t.elapsed().as_secs_f64() * 1e6 / transactions as f64);
        let t = Instant::now();
        for _ in 0..transactions {
            next += 1;
            transaction_on_thread(&thread_conn, next)?;
        }
        on_thread.push(t.elapsed().as_secs_f64() * 1e6 / transactions as f64);
    }
    rt.block_on(async {
        sqlx::raw_sql("COMMIT").execute(&mut sqlx_conn).await?;
        sqlx_conn.close().await?;
        anyhow::Ok(())
    })?;
    thread_conn.execute_batch("COMMIT")?;
    let (sqlx_us, on_thread_us) = (crate::median(&mut via_sqlx), crate::median(&mut on_thread));
    Ok(Handoff {
        statements: STATEMENTS,
        transactions,
        rounds,
        sqlx_us,
        on_thread_us,
        ratio: sqlx_us / on_thread_us,
    })
}

async fn transaction_sqlx(c: &mut SqliteConnection, n: u64) -> Result<()> {
    let id = format!("request-{n}");
    let at = n as i64;
    sqlx::query("SAVEPOINT tx").execute(&mut *c).await?;
    sqlx::query("SELECT id FROM requests WHERE host = $1 AND state = 'pending' LIMIT 1")
        .bind("host-1")
        .fetch_optional(&mut *c)
        .await?;
    sqlx::query("INSERT INTO requests VALUES ($1, $2, 'pending', $3, $4)")
        .bind(&id)
        .bind("host-1")
        .bind(vec![0u8; 300])
        .bind(at)
        .execute(&mut *c)
        .await?;
    sqlx::query("INSERT INTO transitions VALUES ($1, 'pending', $2)")
        .bind(&id)
        .bind(at)
        .execute(&mut *c)
        .await?;
    sqlx::query("UPDATE requests SET state = 'approved', updated_at = $2 WHERE id = $1")
        .bind(&id)
        .bind(at + 1)
        .execute(&mut *c)
        .await?;
    sqlx::query("INSERT INTO transitions VALUES ($1, 'approved', $2)")
        .bind(&id)
        .bind(at + 1)
        .execute(&mut *c)
        .await?;
    sqlx::query("RELEASE SAVEPOINT tx").execute(&mut *c).await?;
    Ok(())
}

fn transaction_on_thread(c: &rusqlite::Connection, n: u64) -> Result<()> {
    let id = format!("request-{n}");
    let at = n as i64;
    c.prepare_cached("SAVEPOINT tx")?.execute([])?;
    c.prepare_cached("SELECT id FROM requests WHERE host = ?1 AND state = 'pending' LIMIT 1")?
        .query(["host-1"])?
        .next()?;
    c.prepare_cached("INSERT INTO requests VALUES (?1, ?2, 'pending', ?3, ?4)")?
        .execute(rusqlite::params![id, "host-1", vec![0u8; 300], at])?;
    c.prepare_cached("INSERT INTO transitions VALUES (?1, 'pending', ?2)")?
        .execute(rusqlite::params![id, at])?;
    c.prepare_cached("UPDATE requests SET state = 'approved', updated_at = ?2 WHERE id = ?1")?
        .execute(rusqlite::params![id, at + 1])?;
    c.prepare_cached("INSERT INTO transitions VALUES (?1, 'approved', ?2)")?
        .execute(rusqlite::params![id, at + 1])?;
    c.prepare_cached("RELEASE SAVEPOINT tx")?.execute([])?;
    Ok(())
}
