//! The audit trail's side tables: `audit_checkpoints`, the signed checkpoints of the chain, and
//! `audit_retention`, the boundaries below which records were deleted. The chain's rules are
//! `crate::chain`'s; when to sign and prune, `crate::audit`'s.

use sqlx::Row;

use super::{QueryContext, Store, StoreError, Tx};
use crate::chain::{parse_hash, Checkpoint};

/// A retention boundary to record, with the deletion it allows.
pub struct Prune<'a> {
    /// The last seq deleted.
    pub boundary: i64,
    /// Records older than this went (Unix ms).
    pub cutoff_ms: i64,
    /// Now (Unix ms).
    pub now_ms: i64,
    /// The replica that prunes.
    pub replica: &'a str,
}

impl Store {
    /// Every stored checkpoint, by seq.
    pub async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, kind, hash, time_ms, key_id, signature FROM audit_checkpoints ORDER BY seq, time_ms",
        )
        .fetch_all(self.pool())
        .await
        .ctx("listing audit checkpoints")?;
        rows.iter()
            .map(|r| {
                let seq: i64 = r.try_get("seq").ctx("decoding audit checkpoint")?;
                let hash: String = r.try_get("hash").ctx("decoding audit checkpoint")?;
                Ok(Checkpoint {
                    seq,
                    hash: parse_hash(&hash).map_err(|message| StoreError::Corrupt {
                        what: format!("audit checkpoint at seq {seq}"),
                        message,
                    })?,
                    time_unix_ms: r.try_get("time_ms").ctx("decoding audit checkpoint")?,
                    kind: r.try_get("kind").ctx("decoding audit checkpoint")?,
                    key_id: r.try_get("key_id").ctx("decoding audit checkpoint")?,
                    signature: r.try_get("signature").ctx("decoding audit checkpoint")?,
                })
            })
            .collect()
    }

    /// Stores a checkpoint `replica` signed, unless one of its seq and kind is stored already.
    pub async fn insert_checkpoint(
        tx: &mut Tx,
        cp: &Checkpoint,
        replica: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_checkpoints (seq, kind, hash, time_ms, key_id, signature, replica)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (seq, kind) DO NOTHING",
        )
        .bind(cp.seq)
        .bind(&cp.kind)
        .bind(hex::encode(cp.hash))
        .bind(cp.time_unix_ms)
        .bind(&cp.key_id)
        .bind(&cp.signature)
        .bind(replica)
        .execute(&mut **tx)
        .await
        .ctx(format!(
            "storing the {} checkpoint at seq {}",
            cp.kind, cp.seq
        ))?;
        Ok(())
    }

    /// The seq and time of the last checkpoint (zeros: none).
    pub async fn last_checkpoint(&self) -> Result<(i64, i64), StoreError> {
        let r = sqlx::query(
            "SELECT COALESCE(MAX(seq), 0) AS s, COALESCE(MAX(time_ms), 0) AS t FROM audit_checkpoints",
        )
        .fetch_one(self.pool())
        .await
        .ctx("reading the last checkpoint")?;
        Ok((
            r.try_get("s").ctx("reading the last checkpoint")?,
            r.try_get("t").ctx("reading the last checkpoint")?,
        ))
    }

    /// The payload of the last audit record of `kind`, if there is one.
    pub async fn last_audit_payload(&self, kind: &str) -> Result<Option<String>, StoreError> {
        let last =
            sqlx::query("SELECT payload FROM audit WHERE kind = $1 ORDER BY seq DESC LIMIT 1")
                .bind(kind)
                .fetch_optional(self.pool())
                .await
                .ctx(format!("reading the last {kind} record"))?;
        last.map(|r| r.try_get("payload"))
            .transpose()
            .ctx(format!("reading the last {kind} record"))
    }

    /// The retention boundary (records up to it were deleted; 0: none).
    pub async fn retention_boundary(&self) -> Result<i64, StoreError> {
        let r = sqlx::query("SELECT COALESCE(MAX(boundary_seq), 0) AS b FROM audit_retention")
            .fetch_one(self.pool())
            .await
            .ctx("reading the retention boundary")?;
        r.try_get::<i64, _>("b")
            .ctx("reading the retention boundary")
    }

    /// The first record at or after `time_ms`, if any.
    pub async fn first_audit_seq_since(&self, time_ms: i64) -> Result<Option<i64>, StoreError> {
        let r = sqlx::query("SELECT MIN(seq) AS s FROM audit WHERE time_ms >= $1")
            .bind(time_ms)
            .fetch_one(self.pool())
            .await
            .ctx("finding records past retention")?;
        r.try_get("s").ctx("finding records past retention")
    }

    /// Records a retention boundary and deletes the records up to it; returns how many went.
    pub async fn prune_audit(tx: &mut Tx, p: &Prune<'_>) -> Result<u64, StoreError> {
        sqlx::query(
            "INSERT INTO audit_retention (boundary_seq, time_ms, cutoff_ms, replica) VALUES ($1, $2, $3, $4)",
        )
        .bind(p.boundary)
        .bind(p.now_ms)
        .bind(p.cutoff_ms)
        .bind(p.replica)
        .execute(&mut **tx)
        .await
        .ctx("recording the retention boundary")?;
        Ok(sqlx::query("DELETE FROM audit WHERE seq <= $1")
            .bind(p.boundary)
            .execute(&mut **tx)
            .await
            .ctx("deleting records past retention")?
            .rows_affected())
    }
}
