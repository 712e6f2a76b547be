//! Grants: time-bounded, scoped permissions created by "approve for a duration" decisions, and
//! their revocation, which is pushed to the host's agent at once.

use latch_proto::v1::{ApprovalRequest, Destination, Grant, GrantScope, Op};
use serde_json::json;

use crate::{
    auth::{Identity, Role},
    clock::now_ms,
    engine::Central,
    error::{Error, Result},
    events::Event,
    store::{AuditFact, GrantRow, QueryContext, Revoke, Store, Tx},
};

/// Stored name of a scope.
pub fn scope_name(s: GrantScope) -> &'static str {
    match s {
        GrantScope::Process => "process",
        GrantScope::Workload => "workload",
        GrantScope::Host => "host",
        GrantScope::Unspecified => "unspecified",
    }
}

pub(crate) fn scope_of(s: &str) -> GrantScope {
    match s {
        "process" => GrantScope::Process,
        "workload" => GrantScope::Workload,
        "host" => GrantScope::Host,
        _ => GrantScope::Unspecified,
    }
}

/// The host name a grant on `req` covers: the name the workload resolved to the destination,
/// when the agent says the rule that held the connection names that host (`by_name`). Empty
/// otherwise: the grant covers the address alone, which is also what a request central cannot
/// read gets (the narrower grant).
pub(crate) fn covered_name(req: &ApprovalRequest) -> &str {
    let network = matches!(Op::try_from(req.op), Ok(Op::Connect | Op::Sendmsg));
    match &req.destination {
        Some(d) if network && d.by_name => d.host_name.as_str(),
        _ => "",
    }
}

/// What an approval for a period covers on a connection held by a rule naming its host, in
/// words for a reviewer: the name, not only the address. `None` for one held for its address.
pub fn covers_text(d: &Destination) -> Option<String> {
    (d.by_name && !d.host_name.is_empty()).then(|| {
        format!(
            "every address {} resolves to, on port {}, while it lasts",
            d.host_name, d.port
        )
    })
}

fn from_row(r: GrantRow) -> Grant {
    Grant {
        grant_id: r.grant_id,
        scope: scope_of(&r.scope) as i32,
        expires_at_unix_ms: r.expires_at_ms,
        host_id: r.host_id,
        rule_id: r.rule_id as u32,
        rule_name: r.rule_name,
        workload: r.workload,
        tgid: r.tgid as u32,
        request_id: r.approval_id,
        granted_by: r.granted_by,
        created_at_unix_ms: r.created_at_ms,
        revoked_at_unix_ms: r.revoked_at_ms,
        revoked_by: r.revoked_by,
        revoke_reason: r.revoke_reason,
        close_connections: r.close_connections != 0,
        host_name: r.host_name,
    }
}

/// Stores a new grant inside the decision's transaction.
pub(crate) async fn insert_in(tx: &mut Tx, g: &Grant) -> Result<()> {
    let scope = GrantScope::try_from(g.scope).unwrap_or(GrantScope::Unspecified);
    Store::insert_grant(
        tx,
        &GrantRow {
            grant_id: g.grant_id.clone(),
            approval_id: g.request_id.clone(),
            host_id: g.host_id.clone(),
            rule_id: g.rule_id as i64,
            rule_name: g.rule_name.clone(),
            workload: g.workload.clone(),
            scope: scope_name(scope).into(),
            tgid: g.tgid as i64,
            granted_by: g.granted_by.clone(),
            created_at_ms: g.created_at_unix_ms,
            expires_at_ms: g.expires_at_unix_ms,
            host_name: g.host_name.clone(),
            ..GrantRow::default()
        },
    )
    .await?;
    Store::audit_in(
        tx,
        &AuditFact {
            kind: "grant.created".into(),
            actor: g.granted_by.clone(),
            host_id: g.host_id.clone(),
            request_id: g.request_id.clone(),
            grant_id: g.grant_id.clone(),
            rule_name: g.rule_name.clone(),
            workload: g.workload.clone(),
            payload: json!({"scope": scope_name(scope), "expires_at_unix_ms": g.expires_at_unix_ms,
                "tgid": g.tgid, "host_name": g.host_name}),
            time_ms: g.created_at_unix_ms,
            ..Default::default()
        },
    )
    .await?;
    Ok(())
}

impl Central {
    /// One grant.
    pub async fn grant(&self, grant_id: &str) -> Result<Grant> {
        self.store
            .grant(grant_id)
            .await?
            .map(from_row)
            .ok_or_else(|| Error::NotFound(format!("grant '{grant_id}'")))
    }

    /// Grants, newest first: only active ones unless `include_inactive`.
    pub async fn list_grants(&self, include_inactive: bool, host_id: &str) -> Result<Vec<Grant>> {
        let rows = self
            .store
            .grants(include_inactive, host_id, now_ms())
            .await?;
        Ok(rows.into_iter().map(from_row).collect())
    }

    /// Revokes a grant and tells its host's agent at once.
    pub async fn revoke_grant(
        &self,
        who: &Identity,
        grant_id: &str,
        reason: &str,
    ) -> Result<Grant> {
        self.revoke_grant_closing(who, grant_id, reason, false)
            .await
    }

    /// Revokes a grant and tells its host's agent at once; with `close_connections` the agent
    /// also closes the live connections the grant let through.
    pub async fn revoke_grant_closing(
        &self,
        who: &Identity,
        grant_id: &str,
        reason: &str,
        close_connections: bool,
    ) -> Result<Grant> {
        if !who.has(Role::Approver) {
            return Err(Error::PermissionDenied(format!(
                "'{}' is not an approver",
                who.subject
            )));
        }
        let g = self.grant(grant_id).await?;
        let now = now_ms();
        let mut tx = self.store.begin().await?;
        let revoked = Store::revoke_grant(
            &mut tx,
            &Revoke {
                grant_id,
                by: &who.subject,
                reason,
                close_connections,
                now_ms: now,
            },
        )
        .await?;
        if !revoked {
            // Revoked since `g` was read, possibly by a call in this open batch: its commit
            // comes first, so the reader then sees who revoked it.
            tx.commit().await.ctx("committing an empty revocation")?;
            let now = self.grant(grant_id).await?;
            return Err(Error::FailedPrecondition(format!(
                "grant '{grant_id}' was already revoked by {}",
                now.revoked_by
            )));
        }
        Store::audit_in(
            &mut tx,
            &AuditFact {
                kind: "grant.revoked".into(),
                actor: who.subject.clone(),
                host_id: g.host_id.clone(),
                request_id: g.request_id.clone(),
                grant_id: grant_id.to_string(),
                rule_name: g.rule_name.clone(),
                workload: g.workload.clone(),
                payload: json!({"reason": reason, "close_connections": close_connections}),
                time_ms: now,
                ..Default::default()
            },
        )
        .await?;
        tx.commit().await.ctx("committing revocation")?;
        self.publish(Event::Revoked {
            grant_id: grant_id.to_string(),
            host_id: g.host_id.clone(),
        })
        .await;
        tracing::info!(grant_id, by = %who.subject, "grant revoked");
        self.grant(grant_id).await
    }

    /// Revocations to replay to a reconnecting agent: grants it holds that are revoked or that
    /// central does not know.
    pub async fn replay_revocations(
        &self,
        grant_ids: &[String],
    ) -> Result<Vec<latch_proto::v1::Revocation>> {
        let mut out = Vec::new();
        for id in grant_ids {
            match self.grant(id).await {
                Ok(g) if g.revoked_at_unix_ms != 0 => out.push(latch_proto::v1::Revocation {
                    grant_id: id.clone(),
                    reason: g.revoke_reason,
                    revoked_by: g.revoked_by,
                    close_connections: g.close_connections,
                }),
                Ok(_) => {}
                Err(Error::NotFound(_)) => out.push(latch_proto::v1::Revocation {
                    grant_id: id.clone(),
                    reason: "central does not know this grant".into(),
                    revoked_by: "central".into(),
                    close_connections: false,
                }),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use latch_proto::v1::{ApprovalRequest, Destination, Op};

    use super::{covered_name, covers_text};

    #[test]
    fn a_grant_covers_the_name_only_when_the_rule_held_it_by_that_name() {
        let req = |op: Op, name: &str, by_name: bool| ApprovalRequest {
            op: op as i32,
            destination: Some(Destination {
                address: "10.0.0.1".into(),
                port: 443,
                host_name: name.into(),
                by_name,
                ..Default::default()
            }),
            ..Default::default()
        };
        let cases: &[(&str, ApprovalRequest, &str)] = &[
            (
                "connect held by its name",
                req(Op::Connect, "api.example.com", true),
                "api.example.com",
            ),
            (
                "sendmsg held by its name",
                req(Op::Sendmsg, "dns.example.com", true),
                "dns.example.com",
            ),
            (
                "held by an address rule",
                req(Op::Connect, "api.example.com", false),
                "",
            ),
            ("no name known", req(Op::Connect, "", false), ""),
            ("an exec", req(Op::Exec, "api.example.com", true), ""),
            (
                "no destination",
                ApprovalRequest {
                    op: Op::Connect as i32,
                    ..Default::default()
                },
                "",
            ),
        ];
        for (what, r, want) in cases {
            assert_eq!(covered_name(r), *want, "{what}");
        }
    }

    #[test]
    fn a_grant_is_said_to_cover_the_name_only_for_a_connection_held_by_it() {
        let d = |host_name: &str, by_name: bool| Destination {
            address: "52.216.1.12".into(),
            port: 443,
            host_name: host_name.into(),
            by_name,
            ..Default::default()
        };
        assert_eq!(
            covers_text(&d("upload.example.com", true)).as_deref(),
            Some("every address upload.example.com resolves to, on port 443, while it lasts")
        );
        assert_eq!(covers_text(&d("upload.example.com", false)), None);
        assert_eq!(covers_text(&d("", true)), None);
    }
}
