//! Hosts: registration, connection state, the rules version each one enforces and how it
//! enforces each rule.

use std::collections::HashMap;

use latch_proto::v1::{
    Capabilities, HostInfo, RegisterRequest, RuleEnforcement, RuleStatus, RulesAck,
};
use prost::Message;
use serde_json::json;

use crate::{
    clock::now_ms,
    engine::Central,
    error::{Error, Result},
    store::{AuditFact, NewHost, QueryContext, RuleStatusRow, Store},
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
        Store::upsert_host(
            &mut tx,
            &NewHost {
                host_id: &r.host_id,
                hostname: &r.hostname,
                labels_json: &labels,
                agent_version: &r.agent_version,
                capabilities: caps,
                now_ms: now,
            },
        )
        .await?;
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
        let labels = self.store.host_labels_json(host_id).await?;
        parse_labels(host_id, labels)
    }

    /// Records an agent stream opening or closing on this replica.
    pub async fn host_connection(&self, host_id: &str, connected: bool) -> Result<()> {
        let now = now_ms();
        let mut tx = self.store.begin().await?;
        Store::set_host_connection(&mut tx, host_id, &self.replica_id, connected, now).await?;
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
        let acked = if ack.error.is_empty() {
            ack.version as i64
        } else {
            0
        };
        if !Store::ack_host_rules(&mut tx, &ack.host_id, acked, &ack.error, now).await? {
            return Err(Error::FailedPrecondition(format!(
                "host '{}' is not registered; call Register first",
                ack.host_id
            )));
        }
        if ack.error.is_empty() {
            let rules: Vec<RuleStatusRow> = ack
                .rules
                .iter()
                .map(|s| RuleStatusRow {
                    host_id: ack.host_id.clone(),
                    rule_id: s.rule_id as i64,
                    rule_name: s.rule_name.clone(),
                    enforcement: enforcement_name(
                        RuleEnforcement::try_from(s.enforcement)
                            .unwrap_or(RuleEnforcement::Unspecified),
                    )
                    .into(),
                    message: s.message.clone(),
                })
                .collect();
            Store::replace_host_rule_status(&mut tx, &ack.host_id, ack.version as i64, &rules)
                .await?;
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
        let rows = self.store.hosts().await?;
        let mut by_host: HashMap<String, Vec<RuleStatus>> = HashMap::new();
        for s in self.store.host_rule_statuses().await? {
            by_host.entry(s.host_id).or_default().push(RuleStatus {
                rule_id: s.rule_id as u32,
                rule_name: s.rule_name,
                enforcement: enforcement_of(&s.enforcement) as i32,
                message: s.message,
            });
        }
        let versions = self.rule_versions().await?;
        let mut out = Vec::new();
        for r in rows {
            let labels: HashMap<String, String> =
                serde_json::from_str(&r.labels_json).unwrap_or_default();
            let caps = Capabilities::decode(r.capabilities.as_slice()).ok();
            let desired = versions
                .iter()
                .find(|v| crate::rules::selector_matches(&v.selector, &labels))
                .map(|v| v.version as u64)
                .unwrap_or(0);
            out.push(HostInfo {
                hostname: r.hostname,
                labels,
                agent_version: r.agent_version,
                capabilities: caps,
                connected: !r.connected_replica.is_empty(),
                last_seen_unix_ms: r.last_seen_ms,
                rules_version_desired: desired,
                rules_version_acked: r.rules_version_acked as u64,
                rules_error: r.rules_error,
                rules: by_host.remove(&r.host_id).unwrap_or_default(),
                host_id: r.host_id,
            });
        }
        Ok(out)
    }
}

/// A host's labels as stored (`None`: the host is not registered).
pub(crate) fn parse_labels(
    host_id: &str,
    labels_json: Option<String>,
) -> Result<HashMap<String, String>> {
    let labels = labels_json.ok_or_else(|| {
        Error::FailedPrecondition(format!(
            "host '{host_id}' is not registered; call Register first"
        ))
    })?;
    serde_json::from_str(&labels).map_err(|e| {
        Error::Store(crate::store::StoreError::Corrupt {
            what: format!("labels of host {host_id}"),
            message: e.to_string(),
        })
    })
}
