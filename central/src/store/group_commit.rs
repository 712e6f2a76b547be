//! Group commit on SQLite: every write transaction runs on one connection, and one `COMMIT` (one
//! fsync of the WAL) makes a whole batch of them durable.
//!
//! A batch is one open `BEGIN IMMEDIATE` on the write connection; each caller's transaction after
//! the first is a savepoint inside it, run while the caller holds the connection. `commit` releases the
//! savepoint and hands the connection on; a task it spawns then queues for the connection behind
//! the transactions already waiting (the lock is first come, first served) and, if the batch is
//! still open when its turn comes, commits it for every member. So the transactions that arrive
//! while one fsync runs share the next one.
//!
//! Nobody is answered before the `COMMIT` that holds their writes has returned: what a caller was
//! told survives kill -9 and power loss exactly as with a commit per transaction. A failed
//! `COMMIT` fails every member. A transaction dropped without commit is rolled back to its
//! savepoint by the next holder of the connection, before anything else runs on it.
//!
//! The batch owns the audit chain's head: it reads the head row once, each append advances the
//! head it holds, and the row is written once, just before the `COMMIT`. So an audited write
//! costs its `INSERT`, not a read and a write of the head besides. A member rolled back to its
//! savepoint takes its appends with it, and the head goes back to where it was when the member
//! began. The head is read again for every batch: another process (an operator's
//! `latch-central` command) may have appended between two batches.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use sqlx::{AnyConnection, Connection};
use tokio::sync::{watch, Mutex, OwnedMutexGuard};

use super::Head;

/// How long a transaction waits for the write connection.
const WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// What a batch's `COMMIT` came to; `None` while it is open.
type Outcome = Option<Result<(), Arc<str>>>;

/// Told of every batch committed: how long its `COMMIT` (the fsync) took and how many write
/// transactions it carried. Set once, by whoever wires the store to its metrics.
pub trait CommitObserver: Send + Sync {
    /// A batch of `members` transactions committed in `took`.
    fn committed(&self, took: std::time::Duration, members: u64);
}

/// Counters of the write path, for metrics and tests.
#[derive(Default)]
pub struct WriterStats {
    /// Batches committed (each one fsync).
    pub commits: AtomicU64,
    /// Transactions committed, over all batches.
    pub transactions: AtomicU64,
    /// Batches whose `COMMIT` failed (every member was told).
    pub failed: AtomicU64,
    /// Transactions dropped without commit and rolled back.
    pub abandoned: AtomicU64,
    observer: std::sync::OnceLock<Arc<dyn CommitObserver>>,
}

impl std::fmt::Debug for WriterStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterStats")
            .field("commits", &self.commits)
            .field("transactions", &self.transactions)
            .field("failed", &self.failed)
            .field("abandoned", &self.abandoned)
            .finish_non_exhaustive()
    }
}

impl WriterStats {
    /// Sets the observer of commits; `false` if one was set already.
    pub fn observe(&self, o: Arc<dyn CommitObserver>) -> bool {
        self.observer.set(o).is_ok()
    }
}

/// The write connection.
#[derive(Clone)]
pub(crate) struct Writer {
    slot: Arc<Mutex<Slot>>,
    stats: Arc<WriterStats>,
    wait: std::time::Duration,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("stats", &self.stats)
            .finish()
    }
}

/// The audit chain's head as the open batch leaves it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct BatchHead {
    /// Read from the head row once per batch, then advanced by each append; `None` until read.
    pub(crate) head: Option<Head>,
    /// Whether an append advanced it, so that the row must be written before the `COMMIT`.
    pub(crate) advanced: bool,
}

struct Slot {
    /// `None` once closed.
    conn: Option<AnyConnection>,
    /// The open batch's chain head.
    head: BatchHead,
    batch: Option<Batch>,
    /// A transaction was dropped uncommitted: undo it before anything else runs.
    abandoned: Option<Undo>,
    stats: Arc<WriterStats>,
}

/// How a dropped transaction is undone.
#[derive(Clone, Copy)]
enum Undo {
    /// It opened the batch and nobody has joined it: roll the batch back.
    Batch,
    /// It was a savepoint in a batch others are in; the chain head was this when it began.
    Savepoint(BatchHead),
}

struct Batch {
    done: watch::Sender<Outcome>,
    members: u64,
}

async fn run(conn: &mut AnyConnection, statement: &'static str) -> Result<(), sqlx::Error> {
    sqlx::query(statement).execute(&mut *conn).await.map(|_| ())
}

fn closed() -> sqlx::Error {
    sqlx::Error::PoolClosed
}

impl Slot {
    fn conn(&mut self) -> Result<&mut AnyConnection, sqlx::Error> {
        self.conn.as_mut().ok_or_else(closed)
    }

    /// Undoes a dropped transaction's writes.
    async fn undo_abandoned(&mut self) {
        let Some(undo) = self.abandoned else {
            return;
        };
        // Cleared once undone, not before: if this stops half-way (the runtime shutting down),
        // the next holder tries again, and at worst fails the batch.
        self.stats.abandoned.fetch_add(1, Ordering::Relaxed);
        let undone = match (self.conn(), undo) {
            (Ok(conn), Undo::Batch) => {
                let done = run(conn, "ROLLBACK").await;
                self.batch = None;
                self.head = BatchHead::default();
                done
            }
            (Ok(conn), Undo::Savepoint(before)) => {
                let done = match run(conn, "ROLLBACK TO SAVEPOINT latch_tx").await {
                    Ok(()) => run(conn, "RELEASE SAVEPOINT latch_tx").await,
                    Err(e) => Err(e),
                };
                self.head = before;
                done
            }
            (Err(e), _) => Err(e),
        };
        self.abandoned = None;
        if let Err(e) = undone {
            // SQLite may have rolled back the whole transaction on the error that made the caller
            // give up: nothing of this batch can be committed any more.
            self.fail(format!("rolling back a dropped transaction failed: {e}"))
                .await;
        }
    }

    /// Ends the open batch without committing it, telling its members.
    async fn fail(&mut self, why: String) {
        self.head = BatchHead::default();
        if let Some(batch) = self.batch.take() {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(members = batch.members, error = %why, "a batch of writes failed");
            batch.done.send_replace(Some(Err(why.into())));
        }
        if let Ok(conn) = self.conn() {
            // Nothing may be open when the next batch begins; an error here means nothing was.
            let _ = run(conn, "ROLLBACK").await;
        }
    }

    /// Commits the open batch, if there is one.
    async fn finish(&mut self) {
        self.undo_abandoned().await;
        let Some(batch) = self.batch.as_ref() else {
            return;
        };
        let members = batch.members;
        let head = std::mem::take(&mut self.head);
        if let (Some(h), true) = (head.head, head.advanced) {
            // Only onto a record this transaction still holds: if SQLite had rolled the batch
            // back by itself (a full disk), the head must not name records that are gone, or
            // every later append would chain onto nothing.
            let written = match self.conn() {
                Ok(conn) => sqlx::query(
                    "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1
                       AND EXISTS (SELECT 1 FROM audit WHERE seq = $1 AND hash = $2)",
                )
                .bind(h.seq)
                .bind(hex::encode(h.hash))
                .execute(conn)
                .await
                .map(|r| r.rows_affected()),
                Err(e) => Err(e),
            };
            match written {
                Ok(1) => {}
                Ok(_) => {
                    self.fail(format!(
                        "the audit chain head cannot move to seq {}: the batch no longer holds \
                         that record",
                        h.seq
                    ))
                    .await;
                    return;
                }
                Err(e) => {
                    self.fail(format!("writing the audit chain head failed: {e}"))
                        .await;
                    return;
                }
            }
        }
        let started = std::time::Instant::now();
        let committed = match self.conn() {
            Ok(conn) => run(conn, "COMMIT").await,
            Err(e) => Err(e),
        };
        match committed {
            Ok(()) => {
                if let Some(batch) = self.batch.take() {
                    if members > 0 {
                        self.stats.commits.fetch_add(1, Ordering::Relaxed);
                        if let Some(o) = self.stats.observer.get() {
                            o.committed(started.elapsed(), members);
                        }
                    }
                    self.stats
                        .transactions
                        .fetch_add(members, Ordering::Relaxed);
                    batch.done.send_replace(Some(Ok(())));
                }
            }
            Err(e) => self.fail(format!("COMMIT failed: {e}")).await,
        }
    }
}

impl Writer {
    /// Takes over `conn`, which must have no transaction open.
    pub(crate) fn new(conn: AnyConnection) -> Writer {
        let stats = Arc::new(WriterStats::default());
        Writer {
            slot: Arc::new(Mutex::new(Slot {
                conn: Some(conn),
                head: BatchHead::default(),
                batch: None,
                abandoned: None,
                stats: stats.clone(),
            })),
            stats,
            wait: WAIT,
        }
    }

    pub(crate) fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Waits for the connection and opens a savepoint on it (and the batch, when none is open).
    ///
    /// Run as a task of its own: a caller that gives up (a gRPC call its client cancelled) must
    /// not stop it between a statement and the state that records it, which would leave SQLite
    /// in a transaction the slot does not know of. A transaction that is begun for nobody is
    /// dropped, and so undone, like any other.
    pub(crate) async fn begin(&self) -> Result<BatchTx, sqlx::Error> {
        let writer = self.clone();
        tokio::spawn(async move { writer.begin_here().await })
            .await
            .map_err(|e| sqlx::Error::Protocol(format!("beginning a transaction failed: {e}")))?
    }

    async fn begin_here(&self) -> Result<BatchTx, sqlx::Error> {
        // As long as a pool waits for a connection: a caller stuck holding the connection makes
        // the others fail (transiently, so that they may retry) instead of queueing forever.
        let mut slot = tokio::time::timeout(self.wait, self.slot.clone().lock_owned())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?;
        slot.undo_abandoned().await;
        // The first transaction of a batch needs no savepoint: until it commits, nobody else is
        // in the batch, and undoing it is undoing the batch. So a write that meets no other
        // costs what a plain transaction does: BEGIN, its statements, COMMIT.
        let undo = match slot.batch {
            None => {
                if let Err(e) = run(slot.conn()?, "BEGIN IMMEDIATE").await {
                    // A ROLLBACK that failed (an I/O error) can leave SQLite in the transaction
                    // the slot has given up on: end it, once, rather than refuse every write.
                    if !e.to_string().contains("within a transaction") {
                        return Err(e);
                    }
                    tracing::warn!(
                        "the write connection was left in a transaction; rolling it back"
                    );
                    run(slot.conn()?, "ROLLBACK").await?;
                    run(slot.conn()?, "BEGIN IMMEDIATE").await?;
                }
                slot.batch = Some(Batch {
                    done: watch::channel(None).0,
                    members: 0,
                });
                Undo::Batch
            }
            Some(_) => {
                run(slot.conn()?, "SAVEPOINT latch_tx").await?;
                Undo::Savepoint(slot.head)
            }
        };
        Ok(BatchTx {
            slot: Some(slot),
            writer: self.slot.clone(),
            undo,
        })
    }

    /// Commits what is open and closes the connection; later transactions fail.
    pub(crate) async fn close(&self) {
        let mut slot = self.slot.lock().await;
        slot.finish().await;
        if let Some(conn) = slot.conn.take() {
            if let Err(e) = conn.close().await {
                tracing::warn!(error = %e, "closing the SQLite write connection");
            }
        }
    }
}

/// One transaction: a savepoint in the open batch, holding the write connection.
///
/// After a statement fails, drop it rather than carry on: an error such as SQLITE_FULL can make
/// SQLite roll the whole batch back by itself, and what ran after it would not be in any batch.
pub(crate) struct BatchTx {
    /// `None` once committed.
    slot: Option<OwnedMutexGuard<Slot>>,
    writer: Arc<Mutex<Slot>>,
    undo: Undo,
}

impl BatchTx {
    pub(crate) fn conn(&self) -> &AnyConnection {
        self.slot
            .as_ref()
            .and_then(|s| s.conn.as_ref())
            .expect("an uncommitted transaction holds the open write connection")
    }

    /// The open batch's chain head, for the audit chain's appends.
    pub(crate) fn chain_head(&mut self) -> &mut BatchHead {
        &mut self
            .slot
            .as_mut()
            .expect("an uncommitted transaction holds the write connection")
            .head
    }

    pub(crate) fn conn_mut(&mut self) -> &mut AnyConnection {
        self.slot
            .as_mut()
            .and_then(|s| s.conn.as_mut())
            .expect("an uncommitted transaction holds the open write connection")
    }

    /// Releases the savepoint and returns once the batch holding it is durable (or failed).
    ///
    /// Run as a task of its own, as `begin` is: a caller that gives up must not stop it between
    /// the `RELEASE` and the bookkeeping that counts the transaction in its batch.
    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        tokio::spawn(self.commit_here())
            .await
            .map_err(|e| sqlx::Error::Protocol(format!("committing a transaction failed: {e}")))?
    }

    async fn commit_here(mut self) -> Result<(), sqlx::Error> {
        let Some(mut slot) = self.slot.take() else {
            return Err(closed());
        };
        if let Undo::Savepoint(_) = self.undo {
            if let Err(e) = run(slot.conn()?, "RELEASE SAVEPOINT latch_tx").await {
                slot.abandoned = Some(self.undo);
                return Err(e);
            }
        }
        let Some(batch) = slot.batch.as_mut() else {
            // A savepoint is only ever opened inside a batch.
            return Err(sqlx::Error::Protocol(
                "a transaction outlived its batch".into(),
            ));
        };
        batch.members += 1;
        let mut done = batch.done.subscribe();
        drop(slot);
        // Spawned, so that a caller that stops waiting does not leave the batch open.
        let writer = self.writer.clone();
        let ours = done.clone();
        tokio::spawn(async move {
            let mut slot = writer.lock_owned().await;
            if ours.borrow().is_none() {
                slot.finish().await;
            }
        });
        let outcome = done
            .wait_for(Option::is_some)
            .await
            .map_err(|_| sqlx::Error::Protocol("the batch was dropped uncommitted".into()))?
            .clone();
        match outcome {
            Some(Ok(())) => Ok(()),
            Some(Err(why)) => Err(sqlx::Error::Protocol(format!(
                "the batch of writes this transaction was in failed: {why}"
            ))),
            None => Err(sqlx::Error::Protocol("the batch was left open".into())),
        }
    }
}

impl Drop for BatchTx {
    fn drop(&mut self) {
        if let Some(mut slot) = self.slot.take() {
            // Undone by the next holder: a rollback needs an await. One is sent at once, so that
            // the batch does not stay open (holding SQLite's write lock) until the next write.
            slot.abandoned = Some(self.undo);
            drop(slot);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let writer = self.writer.clone();
                runtime.spawn(async move { writer.lock().await.finish().await });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Row;
    use std::time::Duration;

    async fn writer() -> (tempfile::TempDir, Writer) {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        sqlx::any::install_default_drivers();
        let mut conn = AnyConnection::connect(&url).await.expect("connect");
        run(&mut conn, "CREATE TABLE t (v TEXT NOT NULL)")
            .await
            .expect("table");
        (dir, Writer::new(conn))
    }

    async fn insert(tx: &mut BatchTx, v: &str) {
        sqlx::query("INSERT INTO t (v) VALUES ($1)")
            .bind(v.to_string())
            .execute(tx.conn_mut())
            .await
            .expect("insert");
    }

    /// Callers that give up at any point of beginning (a cancelled call) leave the connection
    /// usable and nothing of theirs behind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_that_gives_up_while_beginning_leaves_nothing_behind() {
        let (_dir, w) = writer().await;
        for i in 0..60u64 {
            let _ = tokio::time::timeout(Duration::from_micros(i * 15), async {
                let mut tx = w.begin().await.expect("begin");
                insert(&mut tx, "given up").await;
                tokio::task::yield_now().await;
                tx.commit().await
            })
            .await;
            let mut tx = w.begin().await.expect("begin after a caller gave up");
            insert(&mut tx, "kept").await;
            tx.commit().await.expect("commit after a caller gave up");
        }
        let mut tx = w.begin().await.expect("begin");
        let kept: i64 = sqlx::query("SELECT COUNT(*) AS n FROM t WHERE v = 'kept'")
            .fetch_one(tx.conn_mut())
            .await
            .expect("count")
            .try_get_unchecked("n")
            .expect("n");
        tx.commit().await.expect("commit");
        assert_eq!(kept, 60);
        w.close().await;
    }

    /// A transaction that cannot have the connection in time fails as a pool would, transiently.
    #[tokio::test]
    async fn waiting_for_the_connection_has_a_limit() {
        let (_dir, mut w) = writer().await;
        w.wait = Duration::from_millis(100);
        let held = w.begin().await.expect("begin");
        let e = w
            .begin()
            .await
            .err()
            .expect("a second transaction while one is open");
        assert!(matches!(e, sqlx::Error::PoolTimedOut), "{e}");
        held.commit().await.expect("commit");
        w.begin()
            .await
            .expect("begin after the commit")
            .commit()
            .await
            .expect("commit");
    }

    /// A transaction that joined a batch and was dropped takes only its own writes with it:
    /// the batch's first member and the member after it are committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_member_leaves_the_rest_of_its_batch() {
        let (_dir, w) = writer().await;
        let mut first = w.begin().await.expect("begin");
        insert(&mut first, "first").await;
        let (queued_tx, queued) = tokio::sync::oneshot::channel();
        let joiner = {
            let w = w.clone();
            tokio::spawn(async move {
                let _ = queued_tx.send(());
                let mut tx = w.begin().await.expect("begin");
                insert(&mut tx, "dropped").await;
                let undo = tx.undo;
                drop(tx);
                let mut tx = w.begin().await.expect("begin");
                insert(&mut tx, "last").await;
                tx.commit().await.expect("commit last");
                undo
            })
        };
        queued.await.expect("joiner started");
        // Lets the joiner queue for the connection before the first member lets go of it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        first.commit().await.expect("commit first");
        let undo = joiner.await.expect("join");
        let mut tx = w.begin().await.expect("begin");
        let rows: Vec<String> = sqlx::query("SELECT v FROM t ORDER BY rowid")
            .fetch_all(tx.conn_mut())
            .await
            .expect("rows")
            .iter()
            .map(|r| r.try_get("v").expect("v"))
            .collect();
        tx.commit().await.expect("commit the read");
        assert_eq!(rows, ["first", "last"]);
        assert!(
            matches!(undo, Undo::Savepoint(_)),
            "the joiner opened a batch"
        );
        assert_eq!(w.stats().abandoned.load(Ordering::Relaxed), 1);
        assert_eq!(w.stats().transactions.load(Ordering::Relaxed), 3);
        w.close().await;
    }
}
