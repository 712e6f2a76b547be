//! Delivery of committed changes on this replica: a request's decision to its host's stream
//! and to reviewers' watches (and a word to the chat surfaces), a revocation to its host, a new
//! rules version to every stream whose labels it selects, with a `rules.pushed` audit record per
//! host. Changes reach it from [`crate::events`] (this replica's, or every replica's through
//! PostgreSQL).

use std::sync::Arc;

use latch_proto::v1::{
    agent_message::Body, AgentMessage, ApprovalRecord, RequestEvent, RequestState, Revocation,
};

use latch_proto::encoded::EncodedAgentMessage;

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
                let delivered_before = self.delivered.note(approval_id);
                if let Some(rec) =
                    snapshot.filter(|r| snapshot_usable(r, approval_id, delivered_before))
                {
                    self.tell_known(&rec).await;
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
                let rec = self.record_of(&row).await?;
                self.tell_known(&rec).await;
                if let Some(d) = self.decision_of(&row).await? {
                    self.hub.send_to_host(
                        host_id,
                        &AgentMessage {
                            body: Some(Body::Decision(d)),
                        },
                    );
                }
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
    /// A request approved under a rule of new names made its name known: every agent stream
    /// on this replica is told, before the decision reaches the host that asked.
    /// A failure to look it up is logged and does not hold back the decision: the agent is told
    /// the name when its stream next opens.
    async fn tell_known(&self, rec: &ApprovalRecord) {
        let known = match self.made_known_by(rec).await {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(approval_id = %rec.approval_id, error = %e, "cannot tell agents the name an approval made known");
                None
            }
        };
        if let Some((workload, name)) = known {
            let m = EncodedAgentMessage::new(&crate::known_names::message(
                workload,
                vec![name.to_string()],
            ));
            for a in self.hub.agents() {
                self.hub.send_to(&a.host_id, a.id, m.clone());
            }
        }
    }

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

/// Whether a published record of `approval_id` may be delivered as it is, rather than the
/// request read as it is now. A resolved record may: a request resolves once and then stays, so
/// its record cannot be overtaken. A creation's record may when nothing of the request was
/// delivered before it. A vote's record could reach the queue after the resolution it
/// preceded, so any other pending record is not.
fn snapshot_usable(r: &ApprovalRecord, approval_id: &str, delivered_before: bool) -> bool {
    r.approval_id == approval_id
        && (r.state != RequestState::Pending as i32
            || (!delivered_before && crate::approval::is_created_record(r)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use latch_proto::v1::{Transition, Vote};

    fn record(
        state: RequestState,
        votes: usize,
        transitions: usize,
        merged: u32,
    ) -> ApprovalRecord {
        ApprovalRecord {
            approval_id: "a".into(),
            state: state as i32,
            votes: vec![Vote::default(); votes],
            transitions: vec![Transition::default(); transitions],
            merged,
            ..Default::default()
        }
    }

    #[test]
    fn which_published_records_are_delivered_as_they_are() {
        use RequestState::{Approved, Denied, Pending};
        let created = record(Pending, 0, 1, 0);
        let joined = ApprovalRecord {
            merged_into: "b".into(),
            ..created.clone()
        };
        let (vote, grew, promoted) = (
            record(Pending, 1, 1, 0),
            record(Pending, 0, 1, 1),
            record(Pending, 0, 2, 0),
        );
        let (approved, denied) = (record(Approved, 1, 2, 0), record(Denied, 1, 2, 0));
        // (what, record, event's request, delivered before, delivered as it is)
        let cases = [
            ("a creation, first", &created, "a", false, true),
            ("a creation, after a change", &created, "a", true, false),
            ("of another request", &created, "b", false, false),
            ("a vote", &vote, "a", false, false),
            ("a group that grew", &grew, "a", false, false),
            ("a request that joined a group", &joined, "a", false, false),
            ("a promoted request", &promoted, "a", false, false),
            ("a resolution", &approved, "a", true, true),
            ("a denial, first delivered", &denied, "a", false, true),
        ];
        for (what, r, id, before, usable) in cases {
            assert_eq!(snapshot_usable(r, id, before), usable, "{what}");
        }
    }
}
