//! The `grants` table: one row per grant an approval for a duration made, with its
//! revocation. What a grant covers is `crate::approval`'s; who may revoke it, `crate::grants`'.

use sqlx::{any::AnyRow, Row};

use super::{QueryContext, Store, StoreError, Tx};

const GRANT_COLUMNS: &str =
    "grant_id, approval_id, host_id, rule_id, rule_name, workload, scope, tgid,
    granted_by, created_at_ms, expires_at_ms, revoked_at_ms, revoke_reason, revoked_by,
    close_connections, host_name";

/// A stored grant.
#[derive(Clone, Debug, Default)]
pub struct GrantRow {
    /// Its id.
    pub grant_id: String,
    /// The request whose approval made it.
    pub approval_id: String,
    /// The host it applies on.
    pub host_id: String,
    /// The rule it answers.
    pub rule_id: i64,
    /// That rule's name.
    pub rule_name: String,
    /// The workload it applies to.
    pub workload: String,
    /// `process`, `workload` or `host`.
    pub scope: String,
    /// The process, for a `process` grant.
    pub tgid: i64,
    /// Who granted it.
    pub granted_by: String,
    /// When (Unix ms).
    pub created_at_ms: i64,
    /// When it ends (Unix ms).
    pub expires_at_ms: i64,
    /// When it was revoked (Unix ms; 0: it was not).
    pub revoked_at_ms: i64,
    /// Why.
    pub revoke_reason: String,
    /// By whom.
    pub revoked_by: String,
    /// Whether the revocation closes the connections the grant let through (0 or 1).
    pub close_connections: i64,
    /// The host name it covers, besides the request's address (empty: the address alone).
    pub host_name: String,
}

fn grant_row(r: &AnyRow) -> Result<GrantRow, sqlx::Error> {
    Ok(GrantRow {
        grant_id: r.try_get("grant_id")?,
        approval_id: r.try_get("approval_id")?,
        host_id: r.try_get("host_id")?,
        rule_id: r.try_get("rule_id")?,
        rule_name: r.try_get("rule_name")?,
        workload: r.try_get("workload")?,
        scope: r.try_get("scope")?,
        tgid: r.try_get("tgid")?,
        granted_by: r.try_get("granted_by")?,
        created_at_ms: r.try_get("created_at_ms")?,
        expires_at_ms: r.try_get("expires_at_ms")?,
        revoked_at_ms: r.try_get("revoked_at_ms")?,
        revoke_reason: r.try_get("revoke_reason")?,
        revoked_by: r.try_get("revoked_by")?,
        close_connections: r.try_get("close_connections")?,
        host_name: r.try_get("host_name")?,
    })
}

/// A revocation to record.
pub struct Revoke<'a> {
    /// The grant.
    pub grant_id: &'a str,
    /// Who revokes it.
    pub by: &'a str,
    /// Why.
    pub reason: &'a str,
    /// Whether its live connections are closed too.
    pub close_connections: bool,
    /// Now (Unix ms).
    pub now_ms: i64,
}

impl Store {
    /// Stores a new grant (its revocation fields are not read).
    pub async fn insert_grant(tx: &mut Tx, g: &GrantRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO grants (grant_id, approval_id, host_id, rule_id, rule_name, workload, scope, tgid,
                granted_by, created_at_ms, expires_at_ms, host_name)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&g.grant_id)
        .bind(&g.approval_id)
        .bind(&g.host_id)
        .bind(g.rule_id)
        .bind(&g.rule_name)
        .bind(&g.workload)
        .bind(&g.scope)
        .bind(g.tgid)
        .bind(&g.granted_by)
        .bind(g.created_at_ms)
        .bind(g.expires_at_ms)
        .bind(&g.host_name)
        .execute(&mut **tx)
        .await
        .ctx(format!("storing grant {}", g.grant_id))?;
        Ok(())
    }

    /// One grant, if it exists.
    pub async fn grant(&self, grant_id: &str) -> Result<Option<GrantRow>, StoreError> {
        let sql = format!("SELECT {GRANT_COLUMNS} FROM grants WHERE grant_id = $1");
        let row = sqlx::query(&sql)
            .bind(grant_id)
            .fetch_optional(self.pool())
            .await
            .ctx(format!("reading grant {grant_id}"))?;
        row.as_ref()
            .map(grant_row)
            .transpose()
            .ctx(format!("decoding grant {grant_id}"))
    }

    /// Grants, newest first: those neither revoked nor ended by `now_ms` unless
    /// `include_inactive`; on one host unless `host_id` is empty.
    pub async fn grants(
        &self,
        include_inactive: bool,
        host_id: &str,
        now_ms: i64,
    ) -> Result<Vec<GrantRow>, StoreError> {
        let sql = format!(
            "SELECT {GRANT_COLUMNS} FROM grants
             WHERE ($1 = 1 OR (revoked_at_ms = 0 AND expires_at_ms > $2)) AND ($3 = '' OR host_id = $3)
             ORDER BY created_at_ms DESC, grant_id"
        );
        let rows = sqlx::query(&sql)
            .bind(include_inactive as i64)
            .bind(now_ms)
            .bind(host_id)
            .fetch_all(self.pool())
            .await
            .ctx("listing grants")?;
        rows.iter()
            .map(grant_row)
            .collect::<Result<_, _>>()
            .ctx("decoding grants")
    }

    /// Records a revocation; `false` when the grant was already revoked (or does not exist).
    pub async fn revoke_grant(tx: &mut Tx, r: &Revoke<'_>) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE grants SET revoked_at_ms = $2, revoked_by = $3, revoke_reason = $4,
             close_connections = $5
             WHERE grant_id = $1 AND revoked_at_ms = 0",
        )
        .bind(r.grant_id)
        .bind(r.now_ms)
        .bind(r.by)
        .bind(r.reason)
        .bind(r.close_connections as i64)
        .execute(&mut **tx)
        .await
        .ctx(format!("revoking grant {}", r.grant_id))?;
        Ok(done.rows_affected() > 0)
    }
}
