//! The reviewers' tables: `identities`, each person an identity provider vouched for (found
//! again by verified e-mail), and `reviewer_logins`, the tokens whose login the audit trail
//! already recorded. Who may do what is `crate::auth`'s and `crate::identity`'s.

use sqlx::{any::AnyRow, Row};

use super::{QueryContext, Store, StoreError, Tx};

/// A login to record once per token.
pub struct NewLogin<'a> {
    /// SHA-256 of the bearer token, hex.
    pub token_hash: &'a str,
    /// The reviewer.
    pub subject: &'a str,
    /// Now (Unix ms).
    pub now_ms: i64,
    /// When the record may go (Unix ms).
    pub expires_at_ms: i64,
}

/// An identity as stored: its lists as JSON arrays.
pub struct IdentityRow {
    /// The reviewer.
    pub subject: String,
    /// Their e-mail address.
    pub email: String,
    /// Groups (JSON array of strings).
    pub groups_json: String,
    /// Roles (JSON array).
    pub roles_json: String,
    /// Other names (JSON array of strings).
    pub aliases_json: String,
}

fn identity_row(r: &AnyRow) -> Result<IdentityRow, sqlx::Error> {
    Ok(IdentityRow {
        subject: r.try_get("subject")?,
        email: r.try_get("email")?,
        groups_json: r.try_get("groups_json")?,
        roles_json: r.try_get("roles_json")?,
        aliases_json: r.try_get("aliases_json")?,
    })
}

impl Store {
    /// Whether the login of the token that hashes to `token_hash` is recorded.
    pub async fn login_recorded(&self, token_hash: &str, who: &str) -> Result<bool, StoreError> {
        let known = sqlx::query("SELECT 1 AS known FROM reviewer_logins WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(self.pool())
            .await
            .ctx(format!("looking up the login of {who}"))?;
        Ok(known.is_some())
    }

    /// Records a token's login, and forgets those of tokens that expired; `false` when another
    /// call recorded it first.
    pub async fn insert_login(tx: &mut Tx, l: &NewLogin<'_>) -> Result<bool, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO reviewer_logins (token_hash, subject, recorded_at_ms, expires_at_ms)
             VALUES ($1, $2, $3, $4) ON CONFLICT (token_hash) DO NOTHING",
        )
        .bind(l.token_hash)
        .bind(l.subject)
        .bind(l.now_ms)
        .bind(l.expires_at_ms)
        .execute(&mut **tx)
        .await
        .ctx(format!("recording the login of {}", l.subject))?;
        if inserted.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM reviewer_logins WHERE expires_at_ms <= $1")
            .bind(l.now_ms)
            .execute(&mut **tx)
            .await
            .ctx("removing the logins of expired tokens")?;
        Ok(true)
    }

    /// Stores or refreshes an identity `issuer` vouched for.
    pub async fn upsert_identity(
        tx: &mut Tx,
        issuer: &str,
        id: &IdentityRow,
        email_verified: bool,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO identities (issuer, subject, email, email_lower, groups_json, roles_json,
                aliases_json, first_seen_ms, last_seen_ms, email_verified)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9)
             ON CONFLICT (issuer, subject) DO UPDATE SET email = excluded.email,
                email_lower = excluded.email_lower, groups_json = excluded.groups_json,
                roles_json = excluded.roles_json, aliases_json = excluded.aliases_json,
                last_seen_ms = excluded.last_seen_ms, email_verified = excluded.email_verified",
        )
        .bind(issuer)
        .bind(&id.subject)
        .bind(&id.email)
        .bind(id.email.to_lowercase())
        .bind(&id.groups_json)
        .bind(&id.roles_json)
        .bind(&id.aliases_json)
        .bind(now_ms)
        .bind(i64::from(email_verified))
        .execute(&mut **tx)
        .await
        .ctx(format!("remembering identity {}", id.subject))?;
        Ok(())
    }

    /// The identities with the verified address `email` (any case) seen since `since_ms`,
    /// latest first.
    pub async fn identities_by_email(
        &self,
        email: &str,
        since_ms: i64,
    ) -> Result<Vec<IdentityRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT subject, email, groups_json, roles_json, aliases_json FROM identities
             WHERE email_lower = $1 AND email_verified = 1 AND last_seen_ms >= $2
             ORDER BY last_seen_ms DESC",
        )
        .bind(email.to_lowercase())
        .bind(since_ms)
        .fetch_all(self.pool())
        .await
        .ctx(format!("looking up identity {email}"))?;
        rows.iter()
            .map(identity_row)
            .collect::<Result<_, _>>()
            .ctx("reading identities")
    }
}
