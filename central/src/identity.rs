//! Reviewer identities: who a bearer token is ([`Central::authenticate`]), and who an e-mail
//! address is ([`Central::reviewer_by_email`]) for channels that know people only by address
//! (chat integrations map their user to an identity before a decision counts).
//!
//! Identities come from two places: the static `[[reviewers]]` of the configuration (always
//! current), and identities learned when a token from the identity provider authenticated. The
//! latter are remembered in the `identities` table with the groups and roles of their last login,
//! written at most every [`WRITE_EVERY`] per identity unless something changed, and trusted for
//! look-ups by e-mail for [`REMEMBER_FOR`] after that login: a person removed from the approver
//! groups stops being found once their last login is that old. Only addresses the provider
//! verified (`email_verified: true`) are found, and only when no other subject has the same
//! verified address: providers that let people edit their own address would otherwise let
//! anyone claim a colleague's.
//!
//! A reviewer's login (`reviewer.login` in the audit trail) is recorded once per token: the
//! `reviewer_logins` table keeps the SHA-256 of each token recorded until the token expires, so
//! a client that asks who it is at every call adds nothing after its first call.
//!
//! This module does not verify tokens itself (that is [`crate::auth`] and [`crate::oidc`]).

use std::time::Duration;

use crate::{
    auth::{bearer, AuthError, Identity, Login, Role},
    clock::now_ms,
    engine::Central,
    error::{Error, Result},
    store::{AuditFact, IdentityRow, NewLogin, QueryContext, Store, StoreError},
};
use sha2::{Digest, Sha256};

pub use crate::engine::identity_log::WRITE_EVERY;

/// How long after its last login a remembered identity is found by e-mail.
pub const REMEMBER_FOR: Duration = Duration::from_secs(30 * 24 * 3600);

/// A recorded token is remembered this long past its expiry, beyond the leeway with which
/// expired tokens are still accepted, so that it is never recorded twice.
const LOGIN_KEPT_AFTER_EXPIRY: Duration = Duration::from_secs(10 * 60);

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
        self.oidc.clone()
    }

    /// Says at start how reviewers authenticate: static tokens are announced on standard error
    /// and in the audit trail (`auth.static_tokens`); the identity provider's keys are fetched.
    pub(crate) async fn announce_reviewer_auth(
        &self,
        config: &crate::config::Config,
    ) -> Result<()> {
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
        Ok(self.login(token).await?.identity)
    }

    /// [`Central::authenticate`], also saying who vouched for the identity and until when.
    pub async fn login(&self, token: &str) -> Result<Login> {
        let login = self
            .reviewers
            .login(token)
            .await
            .map_err(|e: AuthError| Error::from(e))?;
        if let Some(issuer) = &login.issuer {
            if self
                .identity_log
                .due(issuer, &login.identity, login.email_verified)
            {
                if let Err(e) = self.remember(&login).await {
                    // Authentication stands; only the look-up by e-mail misses this login.
                    self.identity_log.forget(issuer, &login.identity.subject);
                    tracing::warn!(error = %e, subject = %login.identity.subject, "remembering an identity failed");
                }
            }
        }
        Ok(login)
    }

    /// Records `login`, made with `token` through `channel`, as `reviewer.login` in the audit
    /// trail, unless this token's login is already recorded. Returns whether it recorded.
    pub async fn record_login(&self, token: &str, login: &Login, channel: &str) -> Result<bool> {
        let token_hash = hex::encode(Sha256::digest(token.as_bytes()));
        if self
            .store
            .login_recorded(&token_hash, &login.identity.subject)
            .await?
        {
            return Ok(false);
        }
        let now = now_ms();
        let expires_at_ms = login
            .expires_at
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| (d + LOGIN_KEPT_AFTER_EXPIRY).as_millis() as i64)
            .unwrap_or(i64::MAX);
        let id = &login.identity;
        let mut tx = self.store.begin().await?;
        // Another call with the same token may have recorded it since the look-up.
        let recorded = Store::insert_login(
            &mut tx,
            &NewLogin {
                token_hash: &token_hash,
                subject: &id.subject,
                now_ms: now,
                expires_at_ms,
            },
        )
        .await?;
        if !recorded {
            return Ok(false);
        }
        let role = id
            .roles
            .iter()
            .max()
            .map(|r| role_name(*r))
            .unwrap_or_default();
        Store::audit_in(
            &mut tx,
            &AuditFact {
                kind: "reviewer.login".into(),
                actor: id.subject.clone(),
                payload: serde_json::json!({"channel": channel, "email": id.email,
                    "groups": id.groups, "role": role, "issuer": login.issuer}),
                time_ms: now,
                ..Default::default()
            },
        )
        .await?;
        tx.commit()
            .await
            .ctx(format!("committing the login of {}", id.subject))?;
        Ok(true)
    }

    /// Remembers an identity from a login central ran itself (the web console's ID token,
    /// verified with [`crate::oidc::Oidc::verify_id_token`]), as [`Central::authenticate`] does
    /// for bearer tokens, so that [`Central::identity_by_email`] finds the person.
    pub async fn record_provider_login(&self, verified: &crate::oidc::Verified) {
        let Some(oidc) = self.oidc() else {
            return;
        };
        let identity = &verified.identity;
        let login = Login {
            identity: identity.clone(),
            issuer: Some(oidc.issuer().to_string()),
            expires_at: Some(verified.expires_at),
            email_verified: verified.email_verified,
        };
        if self
            .identity_log
            .due(oidc.issuer(), identity, verified.email_verified)
        {
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
        let mut tx = self.store.begin().await?;
        let row = IdentityRow {
            subject: id.subject.clone(),
            email: id.email.clone(),
            groups_json: serde_json::json!(id.groups).to_string(),
            roles_json: serde_json::json!(roles).to_string(),
            aliases_json: serde_json::json!(id.aliases).to_string(),
        };
        Store::upsert_identity(&mut tx, issuer, &row, login.email_verified, now).await?;
        tx.commit()
            .await
            .ctx(format!("committing identity {}", id.subject))?;
        Ok(())
    }

    /// The reviewer whose e-mail address is `email`, or `None`: see [`Central::reviewer_by_email`].
    pub async fn identity_by_email(&self, email: &str) -> Result<Option<Identity>> {
        Ok(match self.reviewer_by_email(email).await? {
            ByEmail::One(id) => Some(id),
            ByEmail::Nobody | ByEmail::Ambiguous { .. } => None,
        })
    }

    /// Who the verified address `email` (compared ignoring case) belongs to. Claims count when
    /// they are verified: a configured reviewer's address, or an identity-provider login within
    /// [`REMEMBER_FOR`] whose token said `email_verified: true`. An address claimed so by more
    /// than one subject belongs to nobody, since either could be the impostor; a subject's
    /// configured identity comes before its logins, then its most recent login.
    pub async fn reviewer_by_email(&self, email: &str) -> Result<ByEmail> {
        let email = email.trim();
        if email.is_empty() {
            return Ok(ByEmail::Nobody);
        }
        let mut found: Vec<Identity> = self
            .reviewers
            .configured()
            .into_iter()
            .filter(|i| i.email.eq_ignore_ascii_case(email))
            .collect();
        let since = now_ms() - REMEMBER_FOR.as_millis() as i64;
        for row in self.store.identities_by_email(email, since).await? {
            found.push(remembered(row)?);
        }
        let mut subjects: Vec<String> = found.iter().map(|i| i.subject.clone()).collect();
        subjects.sort();
        subjects.dedup();
        Ok(match subjects.len() {
            0 => ByEmail::Nobody,
            1 => found
                .into_iter()
                .next()
                .map_or(ByEmail::Nobody, ByEmail::One),
            _ => ByEmail::Ambiguous { subjects },
        })
    }
}

/// Who an e-mail address belongs to ([`Central::reviewer_by_email`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ByEmail {
    /// Exactly one reviewer.
    One(Identity),
    /// No reviewer with that verified address.
    Nobody,
    /// Several subjects claim it, verified: none of them is trusted with it.
    Ambiguous {
        /// The subjects, sorted.
        subjects: Vec<String>,
    },
}

/// A remembered identity from its `identities` row.
fn remembered(row: IdentityRow) -> Result<Identity> {
    let groups: Vec<String> =
        serde_json::from_str(&row.groups_json).map_err(|e| corrupt("groups_json", e))?;
    let roles: Vec<Role> =
        serde_json::from_str(&row.roles_json).map_err(|e| corrupt("roles_json", e))?;
    let aliases: Vec<String> =
        serde_json::from_str(&row.aliases_json).map_err(|e| corrupt("aliases_json", e))?;
    Ok(Identity {
        subject: row.subject,
        email: row.email,
        groups,
        roles,
        aliases,
    })
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
        let log = crate::engine::identity_log::IdentityLog::default();
        assert!(log.due("https://idp", &id(&["a"]), true));
        assert!(!log.due("https://idp", &id(&["a"]), true));
        assert!(
            log.due("https://idp", &id(&["a", "b"]), true),
            "groups changed"
        );
        assert!(
            log.due("https://idp", &id(&["a", "b"]), false),
            "verification withdrawn"
        );
        assert!(
            log.due("https://other", &id(&["a", "b"]), false),
            "other issuer"
        );
        log.forget("https://idp", "u1");
        assert!(
            log.due("https://idp", &id(&["a", "b"]), false),
            "failed write retried"
        );
    }
}
