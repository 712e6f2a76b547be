//! The `known_names` table: the host names each workload has reached with an approval of a
//! rule of new names. How they are stored; what makes a name known is `crate::known_names`'.

use sqlx::Row;

use super::{QueryContext, Store, StoreError, Tx};

/// A name becoming known.
pub struct Known<'a> {
    /// The workload, as rules name it.
    pub workload: &'a str,
    /// The name.
    pub name: &'a str,
    /// The request whose approval made it known.
    pub approval_id: &'a str,
    /// Who approved.
    pub approved_by: &'a str,
    /// When (Unix ms).
    pub at_ms: i64,
}

impl Store {
    /// Records a name as known to its workload in `tx`; a name known already keeps its first
    /// record.
    pub async fn remember_name(tx: &mut Tx, k: &Known<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO known_names (workload, name, approval_id, approved_by, at_ms)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (workload, name) DO NOTHING",
        )
        .bind(k.workload)
        .bind(k.name)
        .bind(k.approval_id)
        .bind(k.approved_by)
        .bind(k.at_ms)
        .execute(&mut **tx)
        .await
        .ctx(format!("recording {} as known to {}", k.name, k.workload))?;
        Ok(())
    }

    /// Whether `name` is known to `workload`.
    pub async fn is_known(&self, workload: &str, name: &str) -> Result<bool, StoreError> {
        let row =
            sqlx::query("SELECT 1 AS known FROM known_names WHERE workload = $1 AND name = $2")
                .bind(workload)
                .bind(name)
                .fetch_optional(self.pool())
                .await
                .ctx(format!("looking up whether {name} is known to {workload}"))?;
        Ok(row.is_some())
    }

    /// Every known name, as (workload, name), ordered by workload then name.
    pub async fn known_names(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query("SELECT workload, name FROM known_names ORDER BY workload, name")
            .fetch_all(self.pool())
            .await
            .ctx("reading the known names")?;
        rows.iter()
            .map(|r| Ok((r.try_get("workload")?, r.try_get("name")?)))
            .collect::<Result<_, sqlx::Error>>()
            .ctx("reading the known names")
    }
}
