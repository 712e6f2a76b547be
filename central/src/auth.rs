//! Who is calling: reviewer identities behind [`Authenticator`], and per-host agent tokens.
//!
//! Reviewer calls carry `authorization: Bearer <token>`, checked by an [`Authenticator`]:
//! [`StaticTokens`] (tokens from the configuration file, for a first start) or the identity
//! provider ([`crate::oidc`]), chained by [`crate::oidc::ReviewerAuth`].

use std::collections::HashMap;

use crate::config::{AgentToken, ReviewerToken};
pub use crate::role::Role;

/// An authenticated reviewer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Stable subject.
    pub subject: String,
    /// E-mail address (may be empty).
    pub email: String,
    /// Groups.
    pub groups: Vec<String>,
    /// Roles.
    pub roles: Vec<Role>,
    /// Workload identities (requester strings) that are this person.
    pub aliases: Vec<String>,
}

impl Identity {
    /// Whether one of the roles reaches `role`.
    pub fn has(&self, role: Role) -> bool {
        self.roles.iter().any(|r| *r >= role)
    }

    /// Whether a request's requester (a workload identity such as `user:alice`,
    /// `unit:alice-dev.service` or `sa:ns/alice`) is this person. Errs on the side of "yes".
    pub fn is_requester(&self, requester: &str) -> bool {
        let requester = requester.trim();
        let bare = requester
            .split_once(':')
            .map(|(_, v)| v)
            .unwrap_or(requester);
        let mut names = vec![self.subject.as_str()];
        if !self.email.is_empty() {
            names.push(self.email.as_str());
            if let Some((local, _)) = self.email.split_once('@') {
                names.push(local);
            }
        }
        names.iter().any(|n| {
            !n.is_empty() && (n.eq_ignore_ascii_case(requester) || n.eq_ignore_ascii_case(bare))
        }) || self
            .aliases
            .iter()
            .any(|a| a.eq_ignore_ascii_case(requester))
    }
}

/// Why authentication failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `authorization` metadata, or not `Bearer <token>`.
    #[error("missing or malformed 'authorization: Bearer <token>' metadata")]
    Missing,
    /// The token is not known.
    #[error("unknown token")]
    Unknown,
    /// The token is refused (bad signature, expired, wrong audience or issuer...).
    #[error("token refused: {0}")]
    Invalid(String),
    /// The token is valid but none of the person's groups maps to a role.
    #[error("'{subject}' has no role in Latch: none of the groups in the '{claim}' claim ({}) is mapped in [oidc.roles]", if groups.is_empty() { "none".to_string() } else { groups.join(", ") })]
    NoRole {
        /// Who.
        subject: String,
        /// Their groups.
        groups: Vec<String>,
        /// The claim the groups came from.
        claim: String,
    },
    /// The identity provider cannot be reached or answers nonsense; retrying may help.
    #[error("identity provider: {0}")]
    Provider(String),
    /// The agent token belongs to another host.
    #[error("this token belongs to host '{token_host}', not '{host_id}'")]
    WrongHost {
        /// The host the call names.
        host_id: String,
        /// The host of the token.
        token_host: String,
    },
}

impl From<AuthError> for crate::error::Error {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::WrongHost { .. } | AuthError::NoRole { .. } => {
                crate::error::Error::PermissionDenied(e.to_string())
            }
            AuthError::Provider(_) => crate::error::Error::Unavailable(e.to_string()),
            _ => crate::error::Error::Unauthenticated(e.to_string()),
        }
    }
}

/// An authenticated reviewer and where the identity came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Login {
    /// Who.
    pub identity: Identity,
    /// The identity provider that vouched for it (its issuer URL); `None` for identities from
    /// the configuration file, which are known without a login.
    pub issuer: Option<String>,
    /// When the token stops being valid; `None` for tokens that do not expire.
    pub expires_at: Option<std::time::SystemTime>,
    /// Whether the e-mail address is known to be the person's: the provider said
    /// `email_verified: true`, or the configuration file gives it.
    pub email_verified: bool,
}

/// Turns a reviewer's bearer token into an [`Identity`].
#[tonic::async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// Authenticates `token` (without the `Bearer ` prefix).
    async fn authenticate(&self, token: &str) -> Result<Identity, AuthError>;

    /// [`Authenticator::authenticate`], also saying who vouched for the identity. Identities
    /// vouched for by an identity provider are remembered (see [`crate::identity`]).
    async fn login(&self, token: &str) -> Result<Login, AuthError> {
        Ok(Login {
            identity: self.authenticate(token).await?,
            issuer: None,
            expires_at: None,
            email_verified: true,
        })
    }

    /// Identities known without a login (static tokens from the configuration file).
    fn configured(&self) -> Vec<Identity> {
        Vec::new()
    }
}

/// Reviewer tokens from the configuration file.
#[derive(Debug, Default)]
pub struct StaticTokens {
    by_token: HashMap<String, Identity>,
}

impl StaticTokens {
    /// From the configuration's `[[reviewers]]`.
    pub fn new(reviewers: &[ReviewerToken]) -> StaticTokens {
        StaticTokens {
            by_token: reviewers
                .iter()
                .map(|r| {
                    (
                        r.token.clone(),
                        Identity {
                            subject: r.subject.clone(),
                            email: r.email.clone(),
                            groups: r.groups.clone(),
                            roles: vec![r.role],
                            aliases: r.aliases.clone(),
                        },
                    )
                })
                .collect(),
        }
    }
}

impl StaticTokens {
    /// Whether no token is configured.
    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty()
    }
}

#[tonic::async_trait]
impl Authenticator for StaticTokens {
    async fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        self.by_token.get(token).cloned().ok_or(AuthError::Unknown)
    }

    fn configured(&self) -> Vec<Identity> {
        self.by_token.values().cloned().collect()
    }
}

/// Per-host agent tokens (mTLS replaces them later).
#[derive(Debug, Default)]
pub struct AgentTokens {
    host_by_token: HashMap<String, String>,
}

impl AgentTokens {
    /// From the configuration's `[[agents]]`.
    pub fn new(agents: &[AgentToken]) -> AgentTokens {
        AgentTokens {
            host_by_token: agents
                .iter()
                .map(|a| (a.token.clone(), a.host_id.clone()))
                .collect(),
        }
    }

    /// Checks that `token` is `host_id`'s.
    pub fn check(&self, token: &str, host_id: &str) -> Result<(), AuthError> {
        match self.host_by_token.get(token) {
            None => Err(AuthError::Unknown),
            Some(h) if h == host_id => Ok(()),
            Some(h) => Err(AuthError::WrongHost {
                host_id: host_id.to_string(),
                token_host: h.clone(),
            }),
        }
    }
}

/// The bearer token of a call's metadata.
pub fn bearer(metadata: &tonic::metadata::MetadataMap) -> Result<&str, AuthError> {
    let v = metadata
        .get("authorization")
        .ok_or(AuthError::Missing)?
        .to_str()
        .map_err(|_| AuthError::Missing)?;
    let t = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .ok_or(AuthError::Missing)?
        .trim();
    if t.is_empty() {
        return Err(AuthError::Missing);
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Identity {
        Identity {
            subject: "alice".into(),
            email: "alice.smith@example.com".into(),
            groups: vec![],
            roles: vec![Role::Approver],
            aliases: vec!["sa:ml/trainer".into()],
        }
    }

    #[test]
    fn requester_matching() {
        let a = alice();
        for r in [
            "alice",
            "user:alice",
            "USER:Alice",
            "alice.smith@example.com",
            "user:alice.smith",
            "sa:ml/trainer",
        ] {
            assert!(a.is_requester(r), "{r}");
        }
        for r in ["bob", "user:bob", "unit:runner.service", "sa:ml/other"] {
            assert!(!a.is_requester(r), "{r}");
        }
    }

    #[test]
    fn roles_are_ordered() {
        let a = alice();
        assert!(a.has(Role::Viewer) && a.has(Role::Approver) && !a.has(Role::Admin));
    }

    #[test]
    fn agent_tokens_are_per_host() {
        let t = AgentTokens::new(&[AgentToken {
            host_id: "h1".into(),
            token: "secret-1".into(),
        }]);
        assert!(t.check("secret-1", "h1").is_ok());
        assert!(matches!(
            t.check("secret-1", "h2"),
            Err(AuthError::WrongHost { .. })
        ));
        assert!(matches!(t.check("nope", "h1"), Err(AuthError::Unknown)));
    }

    #[test]
    fn bearer_parsing() {
        let mut md = tonic::metadata::MetadataMap::new();
        assert!(matches!(bearer(&md), Err(AuthError::Missing)));
        md.insert("authorization", "Basic abc".parse().expect("value"));
        assert!(matches!(bearer(&md), Err(AuthError::Missing)));
        md.insert("authorization", "Bearer abc".parse().expect("value"));
        assert_eq!(bearer(&md).ok(), Some("abc"));
    }
}
