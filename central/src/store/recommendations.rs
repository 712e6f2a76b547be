//! A request's automatic review (`requests.recommendation`): what the reviewer said, as JSON
//! that `crate::auto` writes and reads. How it is stored, not what it means.

use sqlx::Row;

use super::{QueryContext, StoreError, Tx};

/// Stores the recommendation on `approval_id` in `tx`, unless it has one: false then (the
/// first answer taken on a request is its only one).
pub async fn set_in(tx: &mut Tx, approval_id: &str, json: &str) -> Result<bool, StoreError> {
    let r = sqlx::query(
        "UPDATE requests SET recommendation = $2 WHERE approval_id = $1 AND recommendation = ''",
    )
    .bind(approval_id)
    .bind(json)
    .execute(&mut **tx)
    .await
    .ctx(format!("recording the recommendation on {approval_id}"))?;
    Ok(r.rows_affected() == 1)
}

/// Pending requests reviewers see that have no automatic review yet, oldest first: those a
/// replica was asking about, or had not yet asked about, when it stopped.
pub async fn unreviewed(pool: &sqlx::AnyPool, limit: i64) -> Result<Vec<String>, StoreError> {
    let rows = sqlx::query(
        "SELECT approval_id FROM requests
         WHERE state = 'pending' AND recommendation = '' AND merged_into = ''
         ORDER BY received_at_ms, approval_id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
    .ctx("finding requests waiting for an automatic review")?;
    rows.iter()
        .map(|r| r.try_get("approval_id"))
        .collect::<Result<_, _>>()
        .ctx("finding requests waiting for an automatic review")
}
