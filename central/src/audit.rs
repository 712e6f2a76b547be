//! Audit: the append-only, hash-chained record of every audit-worthy fact (stored by
//! [`crate::store`], chained and verified with [`crate::chain`]), agents' uploaded records
//! (idempotent by record id, with their journals' own sequence numbers), signed checkpoints,
//! retention, queries and export, and the shadow-mode report (how many approvals `audit` rules
//! would have asked for, per workload and day).
//!
//! Retention: with `[audit] retention` set, central periodically finds the newest record `B`
//! such that every record up to `B` is older than the retention period, verifies the chain up to
//! `B`, signs a `retention` checkpoint at `B`, records the boundary, and deletes records up to
//! `B` (the table's trigger allows deleting nothing else). Checkpoints are kept for ever, so a
//! verifier starts from the retention checkpoint and the rest of the chain stays verifiable.

use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use latch_proto::v1::{AuditBatch, AuditCheckpoint, AuditEntry, ShadowCount};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::{
    chain::{self, parse_hash, Checkpoint, Record, Report, Verifier, VerifyOptions},
    clock::{day, now_ms, rfc3339},
    config::Config,
    engine::Central,
    error::{Error, Result},
    store::{AuditFact, AuditFilter, Prune, QueryContext, Store},
};

/// Records read per database round trip when verifying or exporting.
pub const PAGE: i64 = 5_000;

impl From<Record> for AuditEntry {
    fn from(r: Record) -> Self {
        AuditEntry {
            seq: r.seq,
            time_unix_ms: r.time_unix_ms,
            kind: r.kind,
            actor: r.actor,
            host_id: r.host_id,
            request_id: r.request_id,
            grant_id: r.grant_id,
            rule_name: r.rule_name,
            workload: r.workload,
            payload_json: r.payload_json,
            host_seq: r.host_seq,
            action: r.action,
            record_id: r.record_id,
            hash: hex::encode(r.hash),
        }
    }
}

/// The chain record of a wire entry.
pub fn record_of_entry(e: AuditEntry) -> Result<Record, String> {
    let hash = parse_hash(&e.hash).map_err(|m| format!("seq {}: {m}", e.seq))?;
    Ok(Record {
        seq: e.seq,
        time_unix_ms: e.time_unix_ms,
        time: rfc3339(e.time_unix_ms),
        kind: e.kind,
        actor: e.actor,
        host_id: e.host_id,
        host_seq: e.host_seq,
        request_id: e.request_id,
        grant_id: e.grant_id,
        rule_name: e.rule_name,
        workload: e.workload,
        action: e.action,
        record_id: e.record_id,
        payload_json: e.payload_json,
        hash,
    })
}

/// The wire form of a checkpoint.
pub fn checkpoint_to_proto(c: &Checkpoint) -> AuditCheckpoint {
    AuditCheckpoint {
        seq: c.seq,
        hash: hex::encode(c.hash),
        time_unix_ms: c.time_unix_ms,
        kind: c.kind.clone(),
        key_id: c.key_id.clone(),
        signature: c.signature.clone(),
    }
}

/// A checkpoint from the wire.
pub fn checkpoint_of_proto(c: AuditCheckpoint) -> Result<Checkpoint, String> {
    Ok(Checkpoint {
        seq: c.seq,
        hash: parse_hash(&c.hash).map_err(|m| format!("checkpoint at seq {}: {m}", c.seq))?,
        time_unix_ms: c.time_unix_ms,
        kind: c.kind,
        key_id: c.key_id,
        signature: c.signature,
    })
}

/// Every stored checkpoint, by seq.
pub async fn list_checkpoints(store: &Store) -> Result<Vec<Checkpoint>> {
    Ok(store.checkpoints().await?)
}

/// The retention boundary (records up to it were deleted; 0: none).
pub async fn retention_boundary(store: &Store) -> Result<i64> {
    Ok(store.retention_boundary().await?)
}

/// Verifies the whole stored chain against `keys`, streaming it page by page. `progress` is
/// called after each page with the records read so far.
pub async fn verify_store(
    store: &Store,
    keys: Vec<VerifyingKey>,
    mut progress: impl FnMut(u64),
) -> Result<Report> {
    let head = store.audit_head().await?;
    let mut v = Verifier::new(
        keys,
        VerifyOptions {
            require_seal: false,
            expected_head: Some(head.seq),
        },
    );
    for cp in list_checkpoints(store).await? {
        v.add_checkpoint(cp);
    }
    // Everything stored, also past the head: records renumbered beyond it must be seen.
    let mut f = AuditFilter::default();
    let mut n = 0u64;
    loop {
        let page = store.query_audit(&f, PAGE).await?;
        let Some(last) = page.last() else { break };
        f.after_seq = last.seq;
        n += page.len() as u64;
        for r in page {
            v.push(r);
        }
        progress(n);
    }
    Ok(v.finish())
}

/// The non-secret part of a configuration, as recorded in the audit trail.
pub fn config_summary(c: &Config) -> Value {
    json!({
        "listen": c.listen.to_string(),
        "database": crate::store::redact_url(&c.database),
        "max_connections": c.max_connections,
        "replica_id": c.replica_id,
        "reviewers": c.reviewers.iter().map(|r| json!({"subject": r.subject, "email": r.email,
            "groups": r.groups, "role": format!("{:?}", r.role).to_lowercase(), "aliases": r.aliases})).collect::<Vec<_>>(),
        "agents": c.agents.iter().map(|a| a.host_id.clone()).collect::<Vec<_>>(),
        "audit": {
            "signing_key": c.signing_key_path().display().to_string(),
            "checkpoint_every": c.audit.checkpoint_every(),
            "checkpoint_interval": c.audit.checkpoint_interval.clone().unwrap_or_else(|| "5m".into()),
            "retention": c.audit.retention.clone().unwrap_or_else(|| "forever".into()),
            "prune_interval": c.audit.prune_interval.clone().unwrap_or_else(|| "1h".into()),
        },
    })
}

impl Central {
    /// Stores a batch of agent records; returns (stored, duplicates).
    pub async fn upload_audit(&self, batch: &AuditBatch) -> Result<(u32, u32)> {
        let mut tx = self.store.begin().await?;
        let (mut stored, mut dup) = (0, 0);
        for (i, r) in batch.records.iter().enumerate() {
            let details: Value = if r.details_json.is_empty() {
                Value::Object(Default::default())
            } else {
                serde_json::from_str(&r.details_json).map_err(|e| {
                    Error::InvalidArgument(format!(
                        "records[{i}] (record_id '{}'): details_json is not JSON: {e}",
                        r.record_id
                    ))
                })?
            };
            let host_seq = i64::try_from(r.host_seq).map_err(|_| {
                Error::InvalidArgument(format!(
                    "records[{i}] (record_id '{}'): host_seq {} is out of range",
                    r.record_id, r.host_seq
                ))
            })?;
            let fact = AuditFact {
                host_seq,
                kind: format!("agent.{}", r.kind),
                actor: format!("host:{}", batch.host_id),
                host_id: batch.host_id.clone(),
                rule_name: r.rule_name.clone(),
                workload: r.workload.clone(),
                action: r.action.clone(),
                record_id: Some(r.record_id.clone()),
                payload: serde_json::json!({"rule_id": r.rule_id, "details": details}),
                time_ms: r.time_unix_ms,
                ..Default::default()
            };
            if crate::store::Store::audit_in(&mut tx, &fact).await? {
                stored += 1;
            } else {
                dup += 1;
            }
        }
        tx.commit().await.ctx("committing audit batch")?;
        Ok((stored, dup))
    }

    /// The key that signs checkpoints.
    pub fn public_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// Signs a checkpoint of `kind` at the chain head (None when the log is empty).
    pub async fn sign_checkpoint(&self, kind: &str) -> Result<Option<Checkpoint>> {
        let head = self.store.audit_head().await?;
        if head.seq == 0 {
            return Ok(None);
        }
        self.sign_checkpoint_at(head.seq, kind).await.map(Some)
    }

    /// Signs a checkpoint of `kind` at `seq`, after checking that the stored chain links from the
    /// newest valid checkpoint at or before `seq` up to `seq`: central never signs over a chain
    /// that was altered since it last signed.
    pub async fn sign_checkpoint_at(&self, seq: i64, kind: &str) -> Result<Checkpoint> {
        let own = [self.public_key()];
        let anchor = list_checkpoints(&self.store)
            .await?
            .into_iter()
            .filter(|c| c.seq <= seq && c.check(&own).is_ok())
            .max_by_key(|c| c.seq);
        let (mut pos, mut prev) = anchor
            .map(|c| (c.seq, c.hash))
            .unwrap_or((0, chain::GENESIS));
        let mut f = AuditFilter {
            after_seq: pos,
            until_seq: seq,
            ..Default::default()
        };
        while pos < seq {
            let page = self.store.query_audit(&f, PAGE).await?;
            if page.is_empty() {
                break;
            }
            for r in page {
                if r.seq != pos + 1 {
                    return Err(Error::FailedPrecondition(format!(
                        "audit chain broken: seq {} follows seq {pos}; refusing to sign a checkpoint (run `latchctl audit verify`)",
                        r.seq
                    )));
                }
                if r.link(&prev) != r.hash {
                    return Err(Error::FailedPrecondition(format!(
                        "audit chain broken at seq {}: the record does not match its hash; refusing to sign a checkpoint (run `latchctl audit verify`)",
                        r.seq
                    )));
                }
                pos = r.seq;
                prev = r.hash;
            }
            f.after_seq = pos;
        }
        if pos != seq {
            return Err(Error::FailedPrecondition(format!(
                "audit chain ends at seq {pos}, not {seq}; refusing to sign a checkpoint"
            )));
        }
        let cp = Checkpoint::sign(&self.signing, seq, prev, now_ms(), kind);
        let mut tx = self.store.begin().await?;
        Store::insert_checkpoint(&mut tx, &cp, &self.replica_id).await?;
        tx.commit()
            .await
            .ctx(format!("committing the {kind} checkpoint at seq {seq}"))?;
        let stored = list_checkpoints(&self.store)
            .await?
            .into_iter()
            .find(|c| c.seq == seq && c.kind == kind)
            .unwrap_or(cp);
        tracing::info!(seq, kind, "audit checkpoint signed");
        Ok(stored)
    }

    /// Deletes the records older than `cutoff_ms` (the oldest contiguous run of them), keeping
    /// the chain verifiable with a signed retention checkpoint at the boundary. Returns the new
    /// boundary, or None when nothing was due.
    pub async fn prune_audit(&self, cutoff_ms: i64) -> Result<Option<i64>> {
        let current = retention_boundary(&self.store).await?;
        let head = self.store.audit_head().await?;
        let first_kept = self.store.first_audit_seq_since(cutoff_ms).await?;
        let boundary = first_kept.map(|s| s - 1).unwrap_or(head.seq);
        if boundary <= current {
            return Ok(None);
        }
        let cp = self
            .sign_checkpoint_at(boundary, chain::kind::RETENTION)
            .await?;
        let now = now_ms();
        let mut tx = self.store.begin().await?;
        let deleted = Store::prune_audit(
            &mut tx,
            &Prune {
                boundary,
                cutoff_ms,
                now_ms: now,
                replica: &self.replica_id,
            },
        )
        .await?;
        Store::audit_in(
            &mut tx,
            &AuditFact {
                kind: "audit.pruned".into(),
                actor: "central".into(),
                payload: json!({"boundary_seq": boundary, "cutoff": rfc3339(cutoff_ms),
                    "deleted": deleted, "checkpoint_hash": hex::encode(cp.hash),
                    "replica": self.replica_id}),
                time_ms: now,
                ..Default::default()
            },
        )
        .await?;
        tx.commit().await.ctx("committing retention")?;
        tracing::info!(boundary, deleted, "audit records past retention deleted");
        Ok(Some(boundary))
    }

    /// Signs periodic checkpoints and applies retention until the task is dropped.
    pub async fn audit_maintenance(&self) {
        let every = self.audit_config.checkpoint_every() as i64;
        let interval = self
            .audit_config
            .checkpoint_interval()
            .unwrap_or(Duration::from_secs(300));
        let retention = self.audit_config.retention().unwrap_or(None);
        let prune_every = self
            .audit_config
            .prune_interval()
            .unwrap_or(Duration::from_secs(3600));
        let tick = interval.min(Duration::from_secs(10));
        let mut last_prune: Option<Instant> = None;
        loop {
            tokio::time::sleep(tick).await;
            if let Err(e) = self.periodic_checkpoint(every, interval).await {
                tracing::warn!(error = %e, "signing a periodic audit checkpoint failed");
            }
            if let Some(keep) = retention {
                if last_prune
                    .map(|t| t.elapsed() >= prune_every)
                    .unwrap_or(true)
                {
                    last_prune = Some(Instant::now());
                    let cutoff = now_ms() - keep.as_millis() as i64;
                    if let Err(e) = self.prune_audit(cutoff).await {
                        tracing::warn!(error = %e, "audit retention failed");
                    }
                }
            }
        }
    }

    async fn periodic_checkpoint(&self, every: i64, interval: Duration) -> Result<()> {
        let head = self.store.audit_head().await?;
        let (last_seq, last_time) = self.store.last_checkpoint().await?;
        if head.seq > last_seq
            && (head.seq - last_seq >= every || now_ms() - last_time >= interval.as_millis() as i64)
        {
            self.sign_checkpoint(chain::kind::PERIODIC).await?;
        }
        Ok(())
    }

    /// Records a start of this replica and, when it differs from the last one recorded, its
    /// configuration.
    pub async fn record_start(&self, config: &Config) -> Result<()> {
        let summary = config_summary(config);
        let digest = hex::encode(Sha256::digest(summary.to_string().as_bytes()));
        let last = self.store.last_audit_payload("config.changed").await?;
        let previous = match last {
            Some(p) => serde_json::from_str::<Value>(&p)
                .ok()
                .and_then(|v| v.get("sha256").and_then(|s| s.as_str()).map(String::from))
                .unwrap_or_default(),
            None => String::new(),
        };
        let mut tx = self.store.begin().await?;
        if previous != digest {
            Store::audit_in(
                &mut tx,
                &AuditFact {
                    kind: "config.changed".into(),
                    actor: format!("replica:{}", self.replica_id),
                    payload: json!({"sha256": digest, "previous_sha256": previous, "config": summary}),
                    ..Default::default()
                },
            )
            .await?;
        }
        Store::audit_in(
            &mut tx,
            &AuditFact {
                kind: "central.started".into(),
                actor: format!("replica:{}", self.replica_id),
                payload: json!({"version": env!("CARGO_PKG_VERSION"), "config_sha256": digest,
                    "key_id": chain::key_id(&self.public_key())}),
                ..Default::default()
            },
        )
        .await?;
        tx.commit().await.ctx("committing start record")?;
        Ok(())
    }

    /// Shadow-mode counts since `since_ms`.
    pub async fn shadow_report(&self, since_ms: i64) -> Result<Vec<ShadowCount>> {
        Ok(self
            .store
            .shadow_counts(since_ms)
            .await?
            .into_iter()
            .map(|(rule_name, workload, d, n)| ShadowCount {
                rule_name,
                workload,
                day: day(d),
                count: n.max(0) as u64,
            })
            .collect())
    }
}
