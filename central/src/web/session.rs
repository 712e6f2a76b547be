//! Browser sessions of the web console, kept in the database so that every replica behind a load
//! balancer knows them. (A login at the identity provider in progress is kept by the browser:
//! see [`super::pending`].)
//!
//! The browser holds only a random session id (an `HttpOnly`, `SameSite=Lax` cookie, `Secure`
//! and `__Host-` prefixed when the console is served over https); the database holds its SHA-256,
//! so a copy of the database does not carry usable sessions. Each session has its own CSRF token,
//! required in every form that changes something.
//!
//! A session from a static token follows the configuration: its identity is looked up again on
//! every request, so a token removed from the file ends its sessions. A session from the identity
//! provider carries the identity the ID token stated and ends when the ID token expires.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    auth::{Identity, Role},
    clock::now_ms,
    engine::Central,
    error::{Error, Result},
    store::{NewSession, SessionRow, StoreError},
};

/// How long a browser may take at the identity provider before the login must start again.
pub const LOGIN_WINDOW: Duration = Duration::from_secs(10 * 60);

/// Where a session's identity comes from.
pub const VIA_TOKEN: &str = "token";
/// Prefix of `via` for identity-provider sessions (followed by the issuer).
pub const VIA_OIDC: &str = "oidc:";

/// A random secret: 32 bytes from the operating system, as URL-safe base64 without padding.
pub fn random_secret() -> Result<String> {
    use base64::Engine;
    let mut b = [0u8; 32];
    getrandom::getrandom(&mut b).map_err(|e| {
        Error::Unavailable(format!("the system random number generator failed: {e}"))
    })?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

/// Hex SHA-256 of a secret, as stored.
pub fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Compares two secrets in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Viewer => "viewer",
        Role::Approver => "approver",
        Role::Admin => "admin",
    }
}

fn role_of(s: &str) -> Option<Role> {
    match s {
        "viewer" => Some(Role::Viewer),
        "approver" => Some(Role::Approver),
        "admin" => Some(Role::Admin),
        _ => None,
    }
}

/// The highest role of an identity, as shown to people.
pub fn role_label(id: &Identity) -> &'static str {
    id.roles
        .iter()
        .max()
        .map(|r| role_name(*r))
        .unwrap_or("none")
}

#[derive(Serialize, Deserialize)]
struct StoredIdentity {
    subject: String,
    email: String,
    groups: Vec<String>,
    roles: Vec<String>,
    aliases: Vec<String>,
}

impl From<&Identity> for StoredIdentity {
    fn from(i: &Identity) -> Self {
        StoredIdentity {
            subject: i.subject.clone(),
            email: i.email.clone(),
            groups: i.groups.clone(),
            roles: i.roles.iter().map(|r| role_name(*r).to_string()).collect(),
            aliases: i.aliases.clone(),
        }
    }
}

impl StoredIdentity {
    fn into_identity(self) -> Identity {
        Identity {
            subject: self.subject,
            email: self.email,
            groups: self.groups,
            // A role name this version does not know grants nothing.
            roles: self.roles.iter().filter_map(|r| role_of(r)).collect(),
            aliases: self.aliases,
        }
    }
}

/// A signed-in browser.
#[derive(Clone, Debug)]
pub struct Session {
    /// SHA-256 of the session id.
    pub id_hash: String,
    /// Who (for static-token sessions, as configured now).
    pub identity: Identity,
    /// [`VIA_TOKEN`], or [`VIA_OIDC`] and the issuer.
    pub via: String,
    /// The token every form of this session must carry.
    pub csrf: String,
    /// When it ends (Unix ms).
    pub expires_at_ms: i64,
}

impl Central {
    /// Opens a session for `identity` until `expires_at_ms`; returns the session id for the
    /// cookie. Expired sessions are removed on the way.
    pub(crate) async fn open_session(
        &self,
        identity: &Identity,
        via: &str,
        expires_at_ms: i64,
    ) -> Result<String> {
        let id = random_secret()?;
        let csrf = random_secret()?;
        let now = now_ms();
        let json = serde_json::to_string(&StoredIdentity::from(identity)).map_err(|e| {
            Error::Store(StoreError::Corrupt {
                what: "session identity".into(),
                message: e.to_string(),
            })
        })?;
        self.store
            .open_web_session(&NewSession {
                id_hash: &digest(&id),
                subject: &identity.subject,
                row: &SessionRow {
                    identity_json: json,
                    via: via.to_string(),
                    csrf,
                    expires_at_ms,
                },
                now_ms: now,
            })
            .await?;
        Ok(id)
    }

    /// The live session with id `id`, if any. A static-token session whose subject is no longer
    /// configured is closed.
    pub(crate) async fn session(&self, id: &str) -> Result<Option<Session>> {
        let id_hash = digest(id);
        let Some(row) = self.store.web_session(&id_hash, now_ms()).await? else {
            return Ok(None);
        };
        let stored: StoredIdentity = serde_json::from_str(&row.identity_json).map_err(|e| {
            Error::Store(StoreError::Corrupt {
                what: "web_sessions.identity_json".into(),
                message: e.to_string(),
            })
        })?;
        let via = row.via;
        let identity = if via == VIA_TOKEN {
            match self
                .reviewers
                .configured()
                .into_iter()
                .find(|i| i.subject == stored.subject)
            {
                Some(current) => current,
                None => {
                    self.close_session(id).await?;
                    return Ok(None);
                }
            }
        } else {
            stored.into_identity()
        };
        Ok(Some(Session {
            id_hash,
            identity,
            via,
            csrf: row.csrf,
            expires_at_ms: row.expires_at_ms,
        }))
    }

    /// Ends a session.
    pub(crate) async fn close_session(&self, id: &str) -> Result<()> {
        Ok(self.store.close_web_session(&digest(id)).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_compared_whole() {
        let a = random_secret().expect("random");
        let b = random_secret().expect("random");
        assert_ne!(a, b);
        assert_eq!(a.len(), 43, "32 bytes of base64url");
        assert!(same_secret(&a, &a.clone()));
        assert!(!same_secret(&a, &b));
        assert!(!same_secret(&a, &a[..42]));
        assert_eq!(digest("x").len(), 64);
    }

    #[test]
    fn stored_identities_keep_roles_and_drop_unknown_ones() {
        let id = Identity {
            subject: "alice".into(),
            email: "alice@example.com".into(),
            groups: vec!["dba-oncall".into()],
            roles: vec![Role::Approver],
            aliases: vec!["user:alice".into()],
        };
        let json = serde_json::to_string(&StoredIdentity::from(&id)).expect("json");
        let back: StoredIdentity = serde_json::from_str(&json).expect("json");
        assert_eq!(back.into_identity(), id);
        let odd: StoredIdentity = serde_json::from_str(
            r#"{"subject":"x","email":"","groups":[],"roles":["root","viewer"],"aliases":[]}"#,
        )
        .expect("json");
        assert_eq!(odd.into_identity().roles, vec![Role::Viewer]);
    }
}
