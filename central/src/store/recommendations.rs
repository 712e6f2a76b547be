//! A request's automatic review (`requests.recommendation`): what the reviewer said, as JSON
//! that `crate::auto` writes and reads. How it is stored, not what it means.

use super::{QueryContext, StoreError, Tx};

/// Stores the recommendation on `approval_id` in `tx`.
pub async fn set_in(tx: &mut Tx, approval_id: &str, json: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE requests SET recommendation = $2 WHERE approval_id = $1")
        .bind(approval_id)
        .bind(json)
        .execute(&mut **tx)
        .await
        .ctx(format!("recording the recommendation on {approval_id}"))?;
    Ok(())
}
