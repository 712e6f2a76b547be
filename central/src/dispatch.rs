//! Delivery of committed changes on this replica: a request's decision to its host's stream
//! and to reviewers' watches (and a word to the chat surfaces), a revocation to its host, a new
//! rules version to every stream whose labels it selects, with a `rules.pushed` audit record per
//! host. Changes reach it from [`crate::events`] (this replica's, or every replica's through
//! PostgreSQL).

use std::sync::Arc;

use latch_proto::v1::{agent_message::Body, AgentMessage, RequestEvent, Revocation};

use crate::{
    engine::Central,
    error::Result,
    events::{Event, Snapshot},
    rules::{rules_push, Version},
    store::{Store, StoreError},
};

impl Central {
    /// Delivers an event to the streams open on this replica; a request's snapshot, when the
    /// change was made here, saves reading it back.
    pub async fn dispatch(&self, event: Event, snapshot: Snapshot) {
        if let Err(e) = self.dispatch_inner(&event, snapshot).await {
            tracing::warn!(error = %e, ?event, "delivering event failed");
        }
    }

    async fn dispatch_inner(&self, event: &Event, snapshot: Snapshot) -> Result<()> {
        match event {
            Event::Request {
                approval_id,
                host_id,
            } => {
                self.chat_changed(approval_id);
                // Only a resolved record: a request resolves once and then stays, so its
                // snapshot cannot be overtaken; a vote's snapshot could reach the queue after the
                // resolution it preceded, so a pending request is read as it is now.
                let resolved = |r: &latch_proto::v1::ApprovalRecord| {
                    &r.approval_id == approval_id
                        && r.state != latch_proto::v1::RequestState::Pending as i32
                };
                if let Some(rec) = snapshot.filter(|r| resolved(r)) {
                    if let Some(d) = rec.decision.clone() {
                        self.hub.send_to_host(
                            host_id,
                            &AgentMessage {
                                body: Some(Body::Decision(d)),
                            },
                        );
                    }
                    self.hub.notify_watchers(RequestEvent {
                        request: Some(Arc::unwrap_or_clone(rec)),
                        snapshot: false,
                    });
                    return Ok(());
                }
                let Some(row) = self.request_row(approval_id).await? else {
                    return Ok(());
                };
                if let Some(d) = self.decision_of(&row).await? {
                    self.hub.send_to_host(
                        host_id,
                        &AgentMessage {
                            body: Some(Body::Decision(d)),
                        },
                    );
                }
                let rec = self.record_of(&row).await?;
                self.hub.notify_watchers(RequestEvent {
                    request: Some(rec),
                    snapshot: false,
                });
            }
            Event::Revoked { grant_id, host_id } => {
                let g = self.grant(grant_id).await?;
                self.hub.send_to_host(
                    host_id,
                    &AgentMessage {
                        body: Some(Body::Revocation(Revocation {
                            grant_id: grant_id.clone(),
                            reason: g.revoke_reason,
                            revoked_by: g.revoked_by,
                            close_connections: g.close_connections,
                        })),
                    },
                );
            }
            Event::Rules { .. } => {
                let versions = self.rule_versions().await?;
                // Every stream first, then one transaction for the audit records: a write per
                // host between sends made the last of 10,000 hosts wait ~30 s.
                let mut pushed = Vec::new();
                for a in self.hub.agents() {
                    let Some(v) = versions
                        .iter()
                        .find(|v| crate::rules::selector_matches(&v.selector, &a.labels))
                    else {
                        continue;
                    };
                    let prev = a
                        .rules_sent
                        .fetch_max(v.version as u64, std::sync::atomic::Ordering::SeqCst);
                    if prev < v.version as u64 {
                        let m = self.hub.rules_push(v.version, || rules_push(v));
                        self.hub.send_to(&a.host_id, a.id, m);
                        pushed.push((a.host_id, v));
                    }
                }
                self.record_pushes(&pushed).await?;
            }
        }
        Ok(())
    }
}

impl Central {
    /// Records that a rules version was pushed to a host's stream on this replica.
    pub(crate) async fn record_push(&self, host_id: &str, v: &Version) -> Result<()> {
        self.store.audit(&self.push_fact(host_id, v)).await?;
        Ok(())
    }

    /// [`Central::record_push`] for many hosts, in one transaction.
    async fn record_pushes(&self, pushed: &[(String, &Version)]) -> Result<()> {
        if pushed.is_empty() {
            return Ok(());
        }
        let mut tx = self.store.begin().await?;
        for (host_id, v) in pushed {
            Store::audit_in(&mut tx, &self.push_fact(host_id, v)).await?;
        }
        tx.commit().await.map_err(|source| StoreError::Query {
            op: format!("committing {} rules.pushed records", pushed.len()),
            source,
        })?;
        Ok(())
    }

    fn push_fact(&self, host_id: &str, v: &Version) -> crate::store::AuditFact {
        crate::store::AuditFact {
            kind: "rules.pushed".into(),
            actor: format!("replica:{}", self.replica_id),
            host_id: host_id.to_string(),
            payload: serde_json::json!({"version": v.version, "sha256": v.sha256}),
            ..Default::default()
        }
    }
}
