//! Hosts: registration, connection state, the rules version each one enforces and how it
//! enforces each rule.

use std::collections::HashMap;

use latch_proto::v1::{
    Capabilities, HostInfo, RegisterRequest, RuleEnforcement, RuleStatus, RulesAck,
};
use prost::Message;
use serde_json::json;
use sqlx::Row;

use crate::{
    clock::now_ms,
    engine::Central,
    error::{Error, Result},
    store::{AuditFact, QueryContext, Store},
};

fn enforcement_name(e: RuleEnforcement) -> &'static str {
    match e {
        RuleEnforcement::Enforced => "enforced",
        RuleEnforcement::Degraded => "degraded",
        RuleEnforcement::Unsupported => "unsupported",
        RuleEnforcement::Unspecified => "unspecified",
    }
}

fn enforcement_of(s: &str) -> RuleEnforcement {
    match s {
        "enforced" => RuleEnforcement::Enforced,
        "degraded" => RuleEnforcement::Degraded,
        "unsupported" => RuleEnforcement::Unsupported,
        _ => RuleEnforcement::Unspecified,
    }
}

impl Central {
    /// Registers or updates a host.
    pub async fn register_host(&self, r: &RegisterRequest) -> Result<()> {
        let now = now_ms();
        let labels = serde_json::to_string(&r.labels).unwrap_or_else(|_| "{}".into());
        let caps = r.capabilities.clone().unwrap_or_default().encode_to_vec();
        let mut tx = self.store.begin().await?;
        sqlx::query(
            "INSERT INTO hosts (host_id, hostname, labels_json, agent_version, capabilities, registered_at_ms, last_seen_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $6)
             ON CONFLICT (host_id) DO UPDATE SET hostname = excluded.hostname, labels_json = excluded.labels_json,
                agent_version = excluded.agent_version, capabilities = excluded.capabilities,
                last_seen_ms = excluded.last_seen_ms",
        )
        .bind(&r.host_id)
        .bind(&r.hostname)
        .bind(&labels)
        .bind(&r.agent_version)
        .bind(caps)
        .bind(now)
        .execute(&mut *tx)
        .await
        .ctx(format!("registering host {}", r.host_id))?;
        Store::audit_in(
            &mut tx,
            &AuditFact {
                kind: "host.registered".into(),
                actor: format!("host:{}", r.host_id),
                host_id: r.host_id.clone(),
                payload: json!({"hostname": r.hostname, "labels": r.labels, "agent_version": r.agent_version,
                    "kernel": r.capabilities.as_ref().map(|c| c.kernel.clone()).unwrap_or_default(),
                    "backends": r.capabilities.as_ref().map(|c| c.backends.clone()).unwrap_or_default()}),
                time_ms: now,
                ..Default::default()
            },
        )
        .await?;
        tx.commit().await.ctx("committing host registration")?;
        Ok(())
    }

    /// A registered host's labels.
    pub async fn host_labels(&self, host_id: &str) -> Result<HashMap<String, String>> {
        let row = sqlx::query("SELECT labels_json FROM hosts WHERE host_id = $1")
            .bind(host_id)
            .fetch_optional(self.store.pool())
            .await
            .ctx(format!("reading host {host_id}"))?
            .ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "host '{host_id}' is not registered; call Register first"
                ))
            })?;
        let labels: String = row.try_get("labels_json").ctx("reading host labels")?;
        serde_json::from_str(&labels).map_err(|e| {
            Error::Store(crate::store::StoreError::Corrupt {
                what: format!("labels of host {host_id}"),
                message: e.to_string(),
            })
        })
    }

    /// Records an agent stream opening or closing on this replica.
    pub async fn host_connection(&self, host_id: &str, connected: bool) -> Result<()> {
        let now = now_ms();
        let mut tx = self.store.begin().await?;
        let sql = if connected {
            "UPDATE hosts SET connected_replica = $2, last_seen_ms = $3 WHERE host_id = $1"
        } else {
            "UPDATE hosts SET connected_replica = '', last_seen_ms = $3 WHERE host_id = $1 AND connected_replica = $2"
        };
        sqlx::query(sql)
            .bind(host_id)
            .bind(&self.replica_id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .ctx(format!("updating connection of host {host_id}"))?;
        Store::audit_in(
            &mut tx,
            &AuditFact {
                kind: if connected {
                    "agent.connected".into()
                } else {
                    "agent.disconnected".into()
                },
                actor: format!("host:{host_id}"),
                host_id: host_id.to_string(),
                payload: json!({"replica": self.replica_id}),
                time_ms: now,
                ..Default::default()
            },
        )
        .await?;
        tx.commit().await.ctx("committing host connection")?;
        Ok(())
    }

    /// Records the rules version a host enforces and each rule's enforcement.
    pub async fn ack_rules(&self, ack: &RulesAck) -> Result<()> {
        let now = now_ms();
        let mut tx = self.store.begin().await?;
        let r = sqlx::query(
            "UPDATE hosts SET rules_version_acked = $2, rules_error = $3, last_seen_ms = $4 WHERE host_id = $1",
        )
        .bind(&ack.host_id)
        .bind(if ack.error.is_empty() { ack.version as i64 } else { 0 })
        .bind(&ack.error)
        .bind(now)
        .execute(&mut *tx)
        .await
        .ctx(format!("recording rules ack of host {}", ack.host_id))?;
        if r.rows_affected() == 0 {
            return Err(Error::FailedPrecondition(format!(
                "host '{}' is not registered; call Register first",
                ack.host_id
            )));
        }
        if ack.error.is_empty() {
            sqlx::query("DELETE FROM host_rule_status WHERE host_id = $1")
                .bind(&ack.host_id)
                .execute(&mut *tx)
                .await
                .ctx("clearing rule status")?;
            for s in &ack.rules {
                let e = RuleEnforcement::try_from(s.enforcement)
                    .unwrap_or(RuleEnforcement::Unspecified);
                sqlx::query(
                    "INSERT INTO host_rule_status (host_id, version, rule_id, rule_name, enforcement, message)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (host_id, rule_id) DO UPDATE SET version = excluded.version,
                        rule_name = excluded.rule_name, enforcement = excluded.enforcement, message = excluded.message",
                )
                .bind(&ack.host_id)
                .bind(ack.version as i64)
                .bind(s.rule_id as i64)
                .bind(&s.rule_name)
                .bind(enforcement_name(e))
                .bind(&s.message)
                .execute(&mut *tx)
                .await
                .ctx("recording rule status")?;
            }
        }
        Store::audit_in(
            &mut tx,
            &AuditFact {
                kind: "rules.acked".into(),
                actor: format!("host:{}", ack.host_id),
                host_id: ack.host_id.clone(),
                payload: json!({"version": ack.version, "error": ack.error,
                    "rules": ack.rules.iter().map(|s| json!({"rule": s.rule_name,
                        "enforcement": enforcement_name(RuleEnforcement::try_from(s.enforcement).unwrap_or(RuleEnforcement::Unspecified)),
                        "message": s.message})).collect::<Vec<_>>()}),
                time_ms: now,
                ..Default::default()
            },
        )
        .await?;
        tx.commit().await.ctx("committing rules ack")?;
        Ok(())
    }

    /// Every host with its state.
    pub async fn list_hosts(&self) -> Result<Vec<HostInfo>> {
        let pool = self.store.pool();
        let rows = sqlx::query(
            "SELECT host_id, hostname, labels_json, agent_version, capabilities, last_seen_ms, connected_replica,
                rules_version_acked, rules_error FROM hosts ORDER BY host_id",
        )
        .fetch_all(pool)
        .await
        .ctx("listing hosts")?;
        let statuses = sqlx::query(
            "SELECT host_id, rule_id, rule_name, enforcement, message FROM host_rule_status ORDER BY host_id, rule_name",
        )
        .fetch_all(pool)
        .await
        .ctx("listing rule status")?;
        let mut by_host: HashMap<String, Vec<RuleStatus>> = HashMap::new();
        for s in &statuses {
            let host: String = s.try_get("host_id").ctx("decoding rule status")?;
            by_host.entry(host).or_default().push(RuleStatus {
                rule_id: s.try_get::<i64, _>("rule_id").ctx("decoding rule status")? as u32,
                rule_name: s.try_get("rule_name").ctx("decoding rule status")?,
                enforcement: enforcement_of(
                    &s.try_get::<String, _>("enforcement")
                        .ctx("decoding rule status")?,
                ) as i32,
                message: s.try_get("message").ctx("decoding rule status")?,
            });
        }
        let versions = self.rule_versions().await?;
        let mut out = Vec::new();
        for r in &rows {
            let dec = |e: sqlx::Error| {
                Error::from(crate::store::StoreError::Query {
                    op: "decoding host".into(),
                    source: e,
                })
            };
            let host_id: String = r.try_get("host_id").map_err(dec)?;
            let labels: HashMap<String, String> =
                serde_json::from_str(&r.try_get::<String, _>("labels_json").map_err(dec)?)
                    .unwrap_or_default();
            let caps = Capabilities::decode(
                r.try_get::<Vec<u8>, _>("capabilities")
                    .map_err(dec)?
                    .as_slice(),
            )
            .ok();
            let desired = versions
                .iter()
                .find(|v| crate::rules::selector_matches(&v.selector, &labels))
                .map(|v| v.version as u64)
                .unwrap_or(0);
            let replica: String = r.try_get("connected_replica").map_err(dec)?;
            out.push(HostInfo {
                hostname: r.try_get("hostname").map_err(dec)?,
                labels,
                agent_version: r.try_get("agent_version").map_err(dec)?,
                capabilities: caps,
                connected: !replica.is_empty(),
                last_seen_unix_ms: r.try_get("last_seen_ms").map_err(dec)?,
                rules_version_desired: desired,
                rules_version_acked: r.try_get::<i64, _>("rules_version_acked").map_err(dec)?
                    as u64,
                rules_error: r.try_get("rules_error").map_err(dec)?,
                rules: by_host.remove(&host_id).unwrap_or_default(),
                host_id,
            });
        }
        Ok(out)
    }
}
