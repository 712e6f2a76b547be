//! The agent's side of the audit trail: every kernel event and every decision goes into the
//! durable local journal (`journal` crate) before anything else happens to it, and is shipped to
//! central from there, at least once (central deduplicates by record id).
//!
//! The journal is synchronous and compresses sealed segments inline, so it lives on its own
//! thread; everyone else sends it records over an unbounded channel (a record is never dropped
//! for want of queue space). When the disk is full the recorder says so loudly, raises
//! `latch_journal_disk_full`, and tells the engine to stop holding operations: with nowhere to
//! record decisions, the fail mode applies until space returns.

use std::path::PathBuf;

use journal::{Journal, JournalConfig, NewRecord, Record, Seq};
use tokio::sync::{mpsc, oneshot};

/// What the recorder can be asked.
enum Cmd {
    Append {
        kind: String,
        payload: serde_json::Value,
        durable: bool,
    },
    Unacked {
        max: usize,
        reply: oneshot::Sender<Vec<Record>>,
    },
    Ack(Seq),
    Close(oneshot::Sender<()>),
}

/// Handle to the recorder thread.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::UnboundedSender<Cmd>,
}

/// Called with `true` when the disk fills and `false` when records fit again.
pub type DiskFullHook = Box<dyn Fn(bool) + Send>;

impl Recorder {
    /// Opens the journal in `dir` and starts the recorder thread.
    pub fn start(
        dir: PathBuf,
        host_id: &str,
        max_total_bytes: u64,
        on_disk_full: DiskFullHook,
        metrics: crate::metrics::Metrics,
    ) -> Result<Self, journal::JournalError> {
        let mut config = JournalConfig::new(sanitize_host(host_id));
        config.max_total_bytes = max_total_bytes;
        let mut j = Journal::open(&dir, config)?;
        for r in j.repairs() {
            tracing::warn!(file = %r.path.display(), offset = r.offset, dropped = r.dropped_bytes, "journal tail repaired");
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<Cmd>();
        std::thread::Builder::new()
            .name("latch-journal".into())
            .spawn(move || {
                let mut full = false;
                let mut closed = None;
                while let Some(cmd) = rx.blocking_recv() {
                    match cmd {
                        Cmd::Append { kind, payload, durable } => {
                            let rec = NewRecord::new(kind, payload);
                            let r = if durable { j.append_durable(&rec) } else { j.append(&rec) };
                            match r {
                                Ok(_) if full => {
                                    full = false;
                                    metrics.journal_disk_full.set(0);
                                    tracing::warn!(dir = %j.dir().display(), "journal writable again; holding operations resumes");
                                    on_disk_full(false);
                                }
                                Ok(_) => {}
                                Err(e) if e.is_disk_full() || matches!(e, journal::JournalError::QuotaExceeded { .. }) => {
                                    metrics.journal_lost.inc();
                                    if !full {
                                        full = true;
                                        metrics.journal_disk_full.set(1);
                                        tracing::error!(dir = %j.dir().display(), "JOURNAL FULL: {e}; nothing more can be recorded, so operations are no longer held and the fail mode applies");
                                        on_disk_full(true);
                                    }
                                }
                                Err(e) => {
                                    metrics.journal_lost.inc();
                                    tracing::error!(dir = %j.dir().display(), "cannot journal a record: {e}");
                                }
                            }
                        }
                        Cmd::Unacked { max, reply } => {
                            let out = match j.unacked() {
                                Ok(it) => it.take(max).filter_map(Result::ok).collect(),
                                Err(e) => {
                                    tracing::error!("cannot read the journal: {e}");
                                    Vec::new()
                                }
                            };
                            let _ = reply.send(out);
                        }
                        Cmd::Ack(seq) => {
                            if let Err(e) = j.ack(seq) {
                                tracing::error!(seq, "cannot record central's acknowledgement: {e}");
                            }
                        }
                        Cmd::Close(reply) => {
                            closed = Some(reply);
                            break;
                        }
                    }
                }
                if let Err(e) = j.sync() {
                    tracing::error!("cannot sync the journal on close: {e}");
                }
                drop(j);
                if let Some(reply) = closed {
                    let _ = reply.send(());
                }
            })
            .map_err(|e| journal::JournalError::Io { path: dir.clone(), source: e })?;
        Ok(Recorder { tx })
    }

    /// Appends a record (flushed at segment boundaries).
    pub fn record(&self, kind: &str, payload: serde_json::Value) {
        let _ = self.tx.send(Cmd::Append {
            kind: kind.to_string(),
            payload,
            durable: false,
        });
    }

    /// Appends a record and syncs it to disk before the next one (decisions).
    pub fn record_durable(&self, kind: &str, payload: serde_json::Value) {
        let _ = self.tx.send(Cmd::Append {
            kind: kind.to_string(),
            payload,
            durable: true,
        });
    }

    /// Up to `max` records central has not acknowledged, oldest first.
    pub async fn unacked(&self, max: usize) -> Vec<Record> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Cmd::Unacked { max, reply }).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Syncs and closes the journal (after everything sent before).
    pub async fn close(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Cmd::Close(reply)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Central has stored everything up to `seq`.
    pub fn ack(&self, seq: Seq) {
        let _ = self.tx.send(Cmd::Ack(seq));
    }
}

/// Record ids are `<host>:<seq>`; a host id with whitespace is made safe for them.
fn sanitize_host(h: &str) -> String {
    let s: String = h
        .chars()
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect();
    if s.is_empty() {
        "unknown-host".into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_survive_a_restart_until_acknowledged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = crate::metrics::Metrics::new();
        let r = Recorder::start(
            dir.path().to_path_buf(),
            "host a",
            64 << 20,
            Box::new(|_| {}),
            m.clone(),
        )
        .expect("open");
        r.record("event", serde_json::json!({"n": 1}));
        r.record_durable("decision", serde_json::json!({"n": 2}));
        let got = r.unacked(10).await;
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].id, "host_a:1");
        r.ack(got[0].seq);
        r.close().await;
        let r = Recorder::start(
            dir.path().to_path_buf(),
            "host a",
            64 << 20,
            Box::new(|_| {}),
            m,
        )
        .expect("reopen");
        let left = r.unacked(10).await;
        assert_eq!(
            left.len(),
            1,
            "only the unacknowledged record is shipped again"
        );
        assert_eq!(left[0].kind, "decision");
        assert_eq!(left[0].payload["n"], 2);
    }
}
