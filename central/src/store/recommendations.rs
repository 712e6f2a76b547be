//! A request's automatic review (`requests.recommendation`): what the reviewer said, as JSON
//! that `crate::auto` writes and reads. How it is stored, not what it means.

use sqlx::Row;

use super::{QueryContext, StoreError, Tx};

/// Stores the recommendation on `approval_id` in `tx` (the caller checked, under the request's
/// lock, that it had none: the first answer taken on a request is its only one).
pub async fn set_in(tx: &mut Tx, approval_id: &str, json: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE requests SET recommendation = $2 WHERE approval_id = $1")
        .bind(approval_id)
        .bind(json)
        .execute(&mut **tx)
        .await
        .ctx(format!("recording the recommendation on {approval_id}"))?;
    Ok(())
}

/// Whether `approval_id` already has an automatic review, read in `tx`.
pub async fn has_one_in(tx: &mut Tx, approval_id: &str) -> Result<bool, StoreError> {
    let r = sqlx::query("SELECT recommendation FROM requests WHERE approval_id = $1")
        .bind(approval_id)
        .fetch_optional(&mut **tx)
        .await
        .ctx(format!("reading the recommendation on {approval_id}"))?;
    Ok(match r {
        Some(r) => !r
            .try_get::<String, _>("recommendation")
            .ctx(format!("reading the recommendation on {approval_id}"))?
            .is_empty(),
        None => false,
    })
}

/// Pending requests reviewers see that have no automatic review yet, oldest first: those a
/// replica was asking about, or had not yet asked about, when it stopped.
/// Past their deadline at `now_ms`, they are the expiry's.
pub async fn unreviewed(
    pool: &sqlx::AnyPool,
    now_ms: i64,
    limit: i64,
) -> Result<Vec<String>, StoreError> {
    let rows = sqlx::query(
        "SELECT approval_id FROM requests
         WHERE state = 'pending' AND recommendation = '' AND merged_into = ''
            AND expires_at_ms > $1
         ORDER BY received_at_ms, approval_id LIMIT $2",
    )
    .bind(now_ms)
    .bind(limit)
    .fetch_all(pool)
    .await
    .ctx("finding requests waiting for an automatic review")?;
    rows.iter()
        .map(|r| r.try_get("approval_id"))
        .collect::<Result<_, _>>()
        .ctx("finding requests waiting for an automatic review")
}
