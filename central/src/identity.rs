//! Reviewer identities: who a bearer token is ([`Central::authenticate`]), and who an e-mail
//! address is ([`Central::identity_by_email`]) for channels that know people only by address
//! (chat integrations map their user to an identity before a decision counts).
//!
//! Identities come from two places: the static `[[reviewers]]` of the configuration (always
//! current), and identities learned when a token from the identity provider authenticated. The
//! latter are remembered in the `identities` table with the groups and roles of their last login,
//! written at most every [`WRITE_EVERY`] per identity unless something changed, and trusted for
//! look-ups by e-mail for [`REMEMBER_FOR`] after that login: a person removed from the approver
//! groups stops being found once their last login is that old.
//!
//! This module does not verify tokens itself (that is [`crate::auth`] and [`crate::oidc`]).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use sqlx::Row;

use crate::{
    auth::{bearer, AuthError, Identity, Login, Role},
    error::{Error, Result},
    server::Central,
    store::{now_ms, QueryContext, StoreError},
};

/// A remembered identity is written again after this long even when nothing changed, so
/// `last_seen_ms` stays roughly current without a write per call.
pub const WRITE_EVERY: Duration = Duration::from_secs(5 * 60);

/// How long after its last login a remembered identity is found by e-mail.
pub const REMEMBER_FOR: Duration = Duration::from_secs(30 * 24 * 3600);

/// Schema of the `identities` table (the same DDL on SQLite and PostgreSQL).
pub(crate) const MIGRATION: &[&str] = &[
    "CREATE TABLE identities (issuer TEXT NOT NULL, subject TEXT NOT NULL, email TEXT NOT NULL,
        email_lower TEXT NOT NULL, groups_json TEXT NOT NULL, roles_json TEXT NOT NULL,
        aliases_json TEXT NOT NULL, first_seen_ms BIGINT NOT NULL, last_seen_ms BIGINT NOT NULL,
        PRIMARY KEY (issuer, subject))",
    "CREATE INDEX identities_email ON identities (email_lower, last_seen_ms)",
];

/// Per-replica memory of when each learned identity was last written, so that a busy reviewer
/// does not cost a database write per call.
#[derive(Debug, Default)]
pub struct IdentityLog {
    written: Mutex<HashMap<(String, String), (Instant, Identity)>>,
}

impl IdentityLog {
    /// Whether `identity` from `issuer` needs writing now; marks it written when it does.
    fn due(&self, issuer: &str, identity: &Identity) -> bool {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        let key = (issuer.to_string(), identity.subject.clone());
        match written.get(&key) {
            Some((at, last)) if last == identity && at.elapsed() < WRITE_EVERY => false,
            _ => {
                written.insert(key, (Instant::now(), identity.clone()));
                true
            }
        }
    }

    /// Forgets a write that failed, so the next call tries again.
    fn forget(&self, issuer: &str, subject: &str) {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        written.remove(&(issuer.to_string(), subject.to_string()));
    }
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Viewer => "viewer",
        Role::Approver => "approver",
        Role::Admin => "admin",
    }
}

fn corrupt(what: &str, e: serde_json::Error) -> Error {
    Error::Store(StoreError::Corrupt {
        what: format!("identities.{what}"),
        message: e.to_string(),
    })
}

/// Printed on standard error at start while static reviewer tokens are configured.
const STATIC_TOKENS_WARNING: &str = "\
################################################################################
WARNING: static reviewer tokens are enabled ([[reviewers]] in the configuration).
They never expire, are not tied to the company's identity provider, and anyone
who reads the configuration file can use them. Use them for a first start only:
configure [oidc], then remove every [[reviewers]] entry.
################################################################################";

impl Central {
    /// The identity provider reviewers log in with, when `[oidc]` is configured.
    pub fn oidc(&self) -> Option<std::sync::Arc<crate::oidc::Oidc>> {
        self.reviewers.oidc()
    }

    /// Says at start how reviewers authenticate: static tokens are announced on standard error
    /// and in the audit trail (`auth.static_tokens`); the identity provider's keys are fetched.
    pub(crate) async fn announce_reviewer_auth(&self, config: &crate::Config) -> Result<()> {
        if !config.reviewers.is_empty() {
            eprintln!("{STATIC_TOKENS_WARNING}");
            let subjects: Vec<String> =
                config.reviewers.iter().map(|r| r.subject.clone()).collect();
            tracing::warn!(
                count = subjects.len(),
                subjects = ?subjects,
                "static reviewer tokens are enabled; configure [oidc] and remove them"
            );
            self.store
                .audit(&crate::store::AuditFact {
                    kind: "auth.static_tokens".into(),
                    actor: format!("replica:{}", self.replica_id),
                    payload: serde_json::json!({
                        "subjects": subjects,
                        "roles": config.reviewers.iter().map(|r| role_name(r.role)).collect::<Vec<_>>(),
                    }),
                    ..Default::default()
                })
                .await?;
        }
        if let Some(oidc) = self.oidc() {
            // In the background: an unreachable provider must not keep agents from connecting.
            tokio::spawn(async move {
                let _ = oidc.warm_up().await;
            });
        }
        Ok(())
    }

    /// Authenticates a reviewer's call from its `authorization: Bearer` metadata.
    pub async fn authenticate_metadata(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Identity> {
        self.authenticate(bearer(metadata)?).await
    }

    /// Authenticates a reviewer's bearer token (without `Bearer `) and remembers identities an
    /// identity provider vouched for. Every reviewer channel goes through here.
    pub async fn authenticate(&self, token: &str) -> Result<Identity> {
        let login = self
            .reviewers
            .login(token)
            .await
            .map_err(|e: AuthError| Error::from(e))?;
        if let Some(issuer) = &login.issuer {
            if self.identity_log.due(issuer, &login.identity) {
                if let Err(e) = self.remember(&login).await {
                    // Authentication stands; only the look-up by e-mail misses this login.
                    self.identity_log.forget(issuer, &login.identity.subject);
                    tracing::warn!(error = %e, subject = %login.identity.subject, "remembering an identity failed");
                }
            }
        }
        Ok(login.identity)
    }

    /// Remembers an identity from a login central ran itself (the web console's ID token,
    /// verified with [`crate::oidc::Oidc::verify_id_token`]), as [`Central::authenticate`] does
    /// for bearer tokens, so that [`Central::identity_by_email`] finds the person.
    pub async fn record_provider_login(&self, identity: &Identity) {
        let Some(oidc) = self.oidc() else {
            return;
        };
        let login = Login {
            identity: identity.clone(),
            issuer: Some(oidc.issuer().to_string()),
        };
        if self.identity_log.due(oidc.issuer(), identity) {
            if let Err(e) = self.remember(&login).await {
                self.identity_log.forget(oidc.issuer(), &identity.subject);
                tracing::warn!(error = %e, subject = %identity.subject, "remembering an identity failed");
            }
        }
    }

    /// Stores (or refreshes) an identity an identity provider vouched for.
    async fn remember(&self, login: &Login) -> Result<()> {
        let Some(issuer) = &login.issuer else {
            return Ok(());
        };
        let id = &login.identity;
        let roles: Vec<&str> = id.roles.iter().map(|r| role_name(*r)).collect();
        let now = now_ms();
        sqlx::query(
            "INSERT INTO identities (issuer, subject, email, email_lower, groups_json, roles_json,
                aliases_json, first_seen_ms, last_seen_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
             ON CONFLICT (issuer, subject) DO UPDATE SET email = excluded.email,
                email_lower = excluded.email_lower, groups_json = excluded.groups_json,
                roles_json = excluded.roles_json, aliases_json = excluded.aliases_json,
                last_seen_ms = excluded.last_seen_ms",
        )
        .bind(issuer)
        .bind(&id.subject)
        .bind(&id.email)
        .bind(id.email.to_lowercase())
        .bind(serde_json::json!(id.groups).to_string())
        .bind(serde_json::json!(roles).to_string())
        .bind(serde_json::json!(id.aliases).to_string())
        .bind(now)
        .execute(self.store.pool())
        .await
        .ctx(format!("remembering identity {}", id.subject))?;
        Ok(())
    }

    /// The reviewer whose e-mail address is `email` (ignoring case): a configured reviewer
    /// first, else the most recent identity-provider login with that address within
    /// [`REMEMBER_FOR`]. `None` when nobody matches or `email` is blank.
    pub async fn identity_by_email(&self, email: &str) -> Result<Option<Identity>> {
        let email = email.trim();
        if email.is_empty() {
            return Ok(None);
        }
        if let Some(id) = self
            .reviewers
            .configured()
            .into_iter()
            .find(|i| i.email.eq_ignore_ascii_case(email))
        {
            return Ok(Some(id));
        }
        let since = now_ms() - REMEMBER_FOR.as_millis() as i64;
        let row = sqlx::query(
            "SELECT subject, email, groups_json, roles_json, aliases_json FROM identities
             WHERE email_lower = $1 AND last_seen_ms >= $2 ORDER BY last_seen_ms DESC LIMIT 1",
        )
        .bind(email.to_lowercase())
        .bind(since)
        .fetch_optional(self.store.pool())
        .await
        .ctx(format!("looking up identity {email}"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let text = |col: &str| -> Result<String> {
            Ok(row
                .try_get::<String, _>(col)
                .ctx(format!("reading identities.{col}"))?)
        };
        let groups: Vec<String> =
            serde_json::from_str(&text("groups_json")?).map_err(|e| corrupt("groups_json", e))?;
        let roles: Vec<Role> =
            serde_json::from_str(&text("roles_json")?).map_err(|e| corrupt("roles_json", e))?;
        let aliases: Vec<String> =
            serde_json::from_str(&text("aliases_json")?).map_err(|e| corrupt("aliases_json", e))?;
        Ok(Some(Identity {
            subject: text("subject")?,
            email: text("email")?,
            groups,
            roles,
            aliases,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(groups: &[&str]) -> Identity {
        Identity {
            subject: "u1".into(),
            email: "a@example.com".into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            roles: vec![Role::Approver],
            aliases: vec![],
        }
    }

    #[test]
    fn writes_are_throttled_until_something_changes() {
        let log = IdentityLog::default();
        assert!(log.due("https://idp", &id(&["a"])));
        assert!(!log.due("https://idp", &id(&["a"])));
        assert!(log.due("https://idp", &id(&["a", "b"])), "groups changed");
        assert!(log.due("https://other", &id(&["a", "b"])), "other issuer");
        log.forget("https://idp", "u1");
        assert!(
            log.due("https://idp", &id(&["a", "b"])),
            "failed write retried"
        );
    }
}
