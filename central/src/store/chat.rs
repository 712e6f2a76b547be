//! The chat surfaces' tables: `notifications` (one row per surface and request: where its
//! message is, which state it shows, and the lease of whoever is updating it) and
//! `slack_callbacks` (signatures of accepted callbacks, so that a replay is refused by every
//! replica). What the rows mean is `crate::notify`'s; this is how they are read and written.

use sqlx::Row;

use super::{QueryContext, Store, StoreError};

/// A lease to take on a surface's message for a request.
pub struct Lease<'a> {
    /// The surface (`slack`, `teams`).
    pub kind: &'a str,
    /// The request.
    pub approval_id: &'a str,
    /// Who holds it (replica and a fresh id).
    pub token: &'a str,
    /// Until when (Unix ms).
    pub until_ms: i64,
    /// Now (Unix ms).
    pub now_ms: i64,
}

/// What a delivery did, stored when its lease is let go.
pub enum Delivered<'a> {
    /// The message was posted or updated.
    Applied {
        /// Where it is.
        channel: &'a str,
        /// Its id there.
        message_ref: &'a str,
        /// The state it shows.
        revision: &'a str,
        /// It needs no more work.
        settled: bool,
    },
    /// It failed; counted, and tried again by a later sweep.
    Failed(&'a str),
}

impl Store {
    /// Requests whose delivery is unfinished, not leased at `now_ms`, and tried fewer than
    /// `max_attempts` times; at most `limit`.
    pub async fn unfinished_notifications(
        &self,
        now_ms: i64,
        max_attempts: i64,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT approval_id FROM notifications
             WHERE settled = 0 AND lease_until_ms < $1 AND attempts < $2 LIMIT $3",
        )
        .bind(now_ms)
        .bind(max_attempts)
        .bind(limit)
        .fetch_all(self.pool())
        .await
        .ctx("finding unfinished notifications")?;
        rows.iter()
            .map(|r| r.try_get("approval_id"))
            .collect::<Result<_, _>>()
            .ctx("finding unfinished notifications")
    }

    /// Creates the row of a first delivery, leased to `lease`; `false` when it exists.
    pub async fn claim_notification(&self, lease: &Lease<'_>) -> Result<bool, StoreError> {
        let Lease {
            kind, approval_id, ..
        } = lease;
        let created = self
            .execute_alone(
                sqlx::query(
                    "INSERT INTO notifications (kind, approval_id, lease_owner, lease_until_ms, created_at_ms,
                        updated_at_ms)
                     VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (kind, approval_id) DO NOTHING",
                )
                .bind(*kind)
                .bind(*approval_id)
                .bind(lease.token)
                .bind(lease.until_ms)
                .bind(lease.now_ms),
                &format!("claiming the {kind} message of {approval_id}"),
            )
            .await?;
        Ok(created.rows_affected() == 1)
    }

    /// Takes the lease on an existing row when nobody holds it, it is not settled, and it shows
    /// another state than `revision`; returns where its message is (channel, message id) and
    /// what it shows (its stored revision).
    pub async fn lease_notification(
        &self,
        lease: &Lease<'_>,
        revision: &str,
    ) -> Result<Option<(String, String, String)>, StoreError> {
        let Lease {
            kind, approval_id, ..
        } = lease;
        let mut tx = self.begin().await?;
        let taken = sqlx::query(
            "UPDATE notifications SET lease_owner = $3, lease_until_ms = $4
             WHERE kind = $1 AND approval_id = $2 AND lease_until_ms < $5 AND settled = 0
                AND revision <> $6
             RETURNING channel, message_ref, revision",
        )
        .bind(*kind)
        .bind(*approval_id)
        .bind(lease.token)
        .bind(lease.until_ms)
        .bind(lease.now_ms)
        .bind(revision)
        .fetch_optional(&mut *tx)
        .await
        .ctx(format!("leasing the {kind} message of {approval_id}"))?;
        tx.commit().await.ctx(format!(
            "committing the lease of the {kind} message of {approval_id}"
        ))?;
        let Some(r) = taken else {
            return Ok(None);
        };
        let read = format!("reading the {kind} message of {approval_id}");
        Ok(Some((
            r.try_get("channel").ctx(read.clone())?,
            r.try_get("message_ref").ctx(read.clone())?,
            r.try_get("revision").ctx(read)?,
        )))
    }

    /// Stores what the holder of `token` did and lets go of the lease.
    pub async fn release_notification(
        &self,
        kind: &str,
        approval_id: &str,
        token: &str,
        outcome: Delivered<'_>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let q = match outcome {
            Delivered::Applied {
                channel,
                message_ref,
                revision,
                settled,
            } => sqlx::query(
                "UPDATE notifications SET channel = $4, message_ref = $5, revision = $6, settled = $7,
                    attempts = 0, last_error = '', lease_owner = '', lease_until_ms = 0,
                    updated_at_ms = $8
                 WHERE kind = $1 AND approval_id = $2 AND lease_owner = $3",
            )
            .bind(kind)
            .bind(approval_id)
            .bind(token)
            .bind(channel)
            .bind(message_ref)
            .bind(revision)
            .bind(settled as i64)
            .bind(now_ms),
            Delivered::Failed(error) => sqlx::query(
                "UPDATE notifications SET attempts = attempts + 1, last_error = $4, lease_owner = '',
                    lease_until_ms = 0, updated_at_ms = $5
                 WHERE kind = $1 AND approval_id = $2 AND lease_owner = $3",
            )
            .bind(kind)
            .bind(approval_id)
            .bind(token)
            .bind(error)
            .bind(now_ms),
        };
        self.execute_alone(q, &format!("recording the {kind} message of {approval_id}"))
            .await?;
        Ok(())
    }

    /// Where a surface's message for a request is (channel, message id), when it has a row.
    pub async fn notification_message(
        &self,
        kind: &str,
        approval_id: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        let r = sqlx::query(
            "SELECT channel, message_ref FROM notifications WHERE kind = $1 AND approval_id = $2",
        )
        .bind(kind)
        .bind(approval_id)
        .fetch_optional(self.pool())
        .await
        .ctx(format!("reading the {kind} message of {approval_id}"))?;
        let Some(r) = r else {
            return Ok(None);
        };
        let read = format!("reading the {kind} message of {approval_id}");
        Ok(Some((
            r.try_get("channel").ctx(read.clone())?,
            r.try_get("message_ref").ctx(read)?,
        )))
    }

    /// Records an accepted Slack callback's signature (lowercase hex); `false` when it was
    /// recorded before (a replay).
    pub async fn record_slack_callback(
        &self,
        signature: &str,
        request_ts: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let fresh = self
            .execute_alone(
                sqlx::query(
                    "INSERT INTO slack_callbacks (signature, request_ts, seen_at_ms) VALUES ($1, $2, $3)
                     ON CONFLICT (signature) DO NOTHING",
                )
                .bind(signature)
                .bind(request_ts)
                .bind(now_ms),
                "recording a Slack callback signature",
            )
            .await?;
        Ok(fresh.rows_affected() == 1)
    }

    /// Forgets the Slack callback signatures seen before `before_ms`.
    pub async fn forget_slack_callbacks(&self, before_ms: i64) -> Result<(), StoreError> {
        self.execute_alone(
            sqlx::query("DELETE FROM slack_callbacks WHERE seen_at_ms < $1").bind(before_ms),
            "forgetting old Slack callback signatures",
        )
        .await?;
        Ok(())
    }
}
