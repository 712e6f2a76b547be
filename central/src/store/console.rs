//! The console's table: `web_sessions`, one row per open session, found by the SHA-256 of its
//! id (the id itself is only in the browser's cookie). What a session means is `crate::web`'s.

use sqlx::Row;

use super::{QueryContext, Store, StoreError};

/// A stored console session.
pub struct SessionRow {
    /// The reviewer's identity, as `crate::web` wrote it (JSON).
    pub identity_json: String,
    /// How they logged in.
    pub via: String,
    /// The session's CSRF token.
    pub csrf: String,
    /// When it ends (Unix ms).
    pub expires_at_ms: i64,
}

/// A session to open.
pub struct NewSession<'a> {
    /// SHA-256 of the session id, hex.
    pub id_hash: &'a str,
    /// The reviewer's subject.
    pub subject: &'a str,
    /// The stored row's fields.
    pub row: &'a SessionRow,
    /// Now (Unix ms).
    pub now_ms: i64,
}

impl Store {
    /// Opens a console session, after removing the expired ones.
    pub async fn open_web_session(&self, s: &NewSession<'_>) -> Result<(), StoreError> {
        self.execute_alone(
            sqlx::query("DELETE FROM web_sessions WHERE expires_at_ms <= $1").bind(s.now_ms),
            "removing expired console sessions",
        )
        .await?;
        self.execute_alone(
            sqlx::query(
                "INSERT INTO web_sessions (id_hash, subject, identity_json, via, csrf, created_at_ms, expires_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(s.id_hash)
            .bind(s.subject)
            .bind(&s.row.identity_json)
            .bind(&s.row.via)
            .bind(&s.row.csrf)
            .bind(s.now_ms)
            .bind(s.row.expires_at_ms),
            &format!("opening a console session for {}", s.subject),
        )
        .await?;
        Ok(())
    }

    /// The session whose id hashes to `id_hash`, when it has not ended by `now_ms`.
    pub async fn web_session(
        &self,
        id_hash: &str,
        now_ms: i64,
    ) -> Result<Option<SessionRow>, StoreError> {
        let row = sqlx::query(
            "SELECT identity_json, via, csrf, expires_at_ms FROM web_sessions
             WHERE id_hash = $1 AND expires_at_ms > $2",
        )
        .bind(id_hash)
        .bind(now_ms)
        .fetch_optional(self.pool())
        .await
        .ctx("reading a console session")?;
        let Some(row) = row else {
            return Ok(None);
        };
        let col = |c: &str| {
            row.try_get::<String, _>(c)
                .ctx(format!("reading web_sessions.{c}"))
        };
        Ok(Some(SessionRow {
            identity_json: col("identity_json")?,
            via: col("via")?,
            csrf: col("csrf")?,
            expires_at_ms: row
                .try_get("expires_at_ms")
                .ctx("reading web_sessions.expires_at_ms")?,
        }))
    }

    /// Ends the session whose id hashes to `id_hash`.
    pub async fn close_web_session(&self, id_hash: &str) -> Result<(), StoreError> {
        self.execute_alone(
            sqlx::query("DELETE FROM web_sessions WHERE id_hash = $1").bind(id_hash),
            "closing a console session",
        )
        .await?;
        Ok(())
    }
}
