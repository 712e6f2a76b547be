//! Audit: the append-only record of every audit-worthy fact (stored by [`crate::store`]),
//! agents' uploaded records (idempotent by record id), queries, export, and the shadow-mode
//! report (how many approvals `audit` rules would have asked for, per workload and day).

use latch_proto::v1::{AuditBatch, AuditEntry, ShadowCount};
use serde_json::Value;

use crate::{
    error::{Error, Result},
    server::Central,
    store::{AuditFact, AuditRow, QueryContext},
};

/// RFC 3339 UTC time of Unix milliseconds.
pub fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// `YYYY-MM-DD` of a day number (days since the Unix epoch).
pub fn day(days: i64) -> String {
    rfc3339(days * 86_400_000).chars().take(10).collect()
}

impl From<AuditRow> for AuditEntry {
    fn from(r: AuditRow) -> Self {
        AuditEntry {
            seq: r.seq,
            time_unix_ms: r.time_ms,
            kind: r.kind,
            actor: r.actor,
            host_id: r.host_id,
            request_id: r.request_id,
            grant_id: r.grant_id,
            rule_name: r.rule_name,
            workload: r.workload,
            payload_json: r.payload,
        }
    }
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
            let fact = AuditFact {
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

#[cfg(test)]
mod tests {
    #[test]
    fn days() {
        assert_eq!(super::day(0), "1970-01-01");
        assert_eq!(super::day(20_000), "2024-10-04");
        assert_eq!(super::rfc3339(1_000), "1970-01-01T00:00:01.000Z");
    }
}
