//! Break-glass: the one way around the approval engine's rules. An admin decides a request
//! alone, even one they requested, without the N-of-M count or the approver groups of its rule.
//!
//! It exists for emergencies (every other approver unreachable while production burns), so it is
//! off unless `[break_glass] enabled = true`, needs a written reason, and every use and every
//! refused attempt is audited (`decision.break_glass`, `decision.break_glass_refused`) and logged
//! at error level. The decision itself goes through the approval engine's resolve path
//! ([`crate::approval`]), so agents, grants, watchers and the audit chain see an ordinary
//! approval or denial.
//!
//! This module does not authenticate (see [`crate::identity`]) and adds no other exception.

use latch_proto::v1::{ApprovalRecord, DecisionKind};
use serde_json::json;

use crate::{
    approval::{
        already, approvals_of, grant_for, lock_pending, resolve_group_in, resolve_in, DecideInput,
        State,
    },
    auth::{Identity, Role},
    clock::now_ms,
    engine::Central,
    error::{Error, Result},
    events::Event,
    store::{AuditFact, QueryContext, Store},
    tally::Choice,
};

impl Central {
    /// Whether break-glass decisions are enabled on this replica.
    pub fn break_glass_enabled(&self) -> bool {
        self.break_glass.enabled
    }

    /// Decides `d` as `who` through break-glass. Refused (and audited) unless break-glass is
    /// enabled, `who` is an admin and the reason is long enough.
    pub async fn break_glass(&self, who: &Identity, d: DecideInput) -> Result<ApprovalRecord> {
        let reason_chars = d.reason.trim().chars().count();
        let refusal = if !self.break_glass.enabled {
            Some(Error::PermissionDenied(
                "break-glass is disabled on this central ([break_glass] enabled = false)".into(),
            ))
        } else if !who.has(Role::Admin) {
            Some(Error::PermissionDenied(format!(
                "'{}' is not an admin; break-glass needs the admin role",
                who.subject
            )))
        } else if reason_chars < self.break_glass.min_reason_chars {
            Some(Error::InvalidArgument(format!(
                "a break-glass reason must say why in at least {} characters (got {reason_chars})",
                self.break_glass.min_reason_chars
            )))
        } else {
            None
        };
        let row = self.request_row(&d.approval_id).await?;
        if let Some(e) = refusal {
            tracing::error!(approval_id = %d.approval_id, by = %who.subject, refusal = %e,
                "break-glass attempt refused");
            let fact = AuditFact {
                kind: "decision.break_glass_refused".into(),
                actor: who.subject.clone(),
                host_id: row.as_ref().map(|r| r.host_id.clone()).unwrap_or_default(),
                request_id: d.approval_id.clone(),
                rule_name: row
                    .as_ref()
                    .map(|r| r.rule_name.clone())
                    .unwrap_or_default(),
                workload: row.as_ref().map(|r| r.workload.clone()).unwrap_or_default(),
                action: "refused".into(),
                payload: json!({"decision": d.kind.as_str_name(), "reason": d.reason,
                    "refusal": e.to_string()}),
                ..Default::default()
            };
            if let Err(audit) = self.store.audit(&fact).await {
                tracing::error!(error = %audit, "recording a refused break-glass attempt failed");
            }
            return Err(e);
        }
        let row = match row {
            Some(r) => self.decidable(&d.approval_id, Some(r)).await?,
            None => return Err(Error::NotFound(format!("request '{}'", d.approval_id))),
        };
        let now = now_ms();
        let approve = matches!(d.kind, DecisionKind::ApproveOnce | DecisionKind::ApproveFor);
        let (to, outcome) = if approve {
            (State::Approved, "allow")
        } else {
            (State::Denied, "deny")
        };
        let mut tx = self.store.begin().await?;
        let Some(locked) = lock_pending(&mut tx, &row.approval_id, now).await? else {
            // Committed, not dropped: see `Central::decide`.
            tx.commit().await.ctx("waiting for the resolution")?;
            return Err(match self.request_row(&row.approval_id).await? {
                Some(r) => already(&r),
                None => Error::NotFound(format!("request '{}'", row.approval_id)),
            });
        };
        let votes = approvals_of(&mut tx, &row.approval_id).await?;
        // What the ordinary path would have refused, for whoever reviews the audit trail.
        let self_approval = approve && who.is_requester(&row.requester);
        let outside_groups = !row.approver_groups.is_empty()
            && !who.groups.iter().any(|g| row.approver_groups.contains(g));
        Store::audit_in(
            &mut tx,
            &AuditFact {
                kind: "decision.break_glass".into(),
                actor: who.subject.clone(),
                host_id: row.host_id.clone(),
                request_id: row.approval_id.clone(),
                rule_name: row.rule_name.clone(),
                workload: row.workload.clone(),
                action: outcome.into(),
                payload: json!({
                    "decision": d.kind.as_str_name(),
                    "reason": d.reason,
                    "requester": row.requester,
                    "email": who.email,
                    "groups": who.groups,
                    "self_approval": self_approval,
                    "outside_approver_groups": outside_groups,
                    "approver_groups": row.approver_groups,
                    "approvers_needed": row.approvers_needed,
                    "approvals_before": votes,
                }),
                time_ms: now,
                ..Default::default()
            },
        )
        .await?;
        // Break-glass decides alone: earlier votes neither count nor narrow its terms.
        let grant = match d.choice() {
            Choice::Approve(terms) => grant_for(&row, terms, &who.subject, now),
            Choice::Deny => None,
        };
        let reason = format!("BREAK-GLASS: {}", d.reason.trim());
        let after = resolve_in(
            &mut tx,
            &row,
            to,
            outcome,
            &who.subject,
            &reason,
            grant.as_ref(),
            serde_json::Value::Null,
            now,
        )
        .await?;
        if to == State::Approved {
            crate::known_names::remember_in(&mut tx, &row, &who.subject, now).await?;
        }
        let members = resolve_group_in(&mut tx, &after, locked, now).await?;
        tx.commit().await.ctx("committing break-glass decision")?;
        self.publish_members(&members).await;
        tracing::error!(approval_id = %row.approval_id, by = %who.subject, outcome,
            self_approval, requester = %row.requester, reason = %d.reason,
            "BREAK-GLASS decision");
        self.publish(Event::Request {
            approval_id: row.approval_id.clone(),
            host_id: row.host_id.clone(),
        })
        .await;
        self.record_of(&after).await
    }
}
