//! Reviewers' tokens from the company's OpenID Connect provider (Okta, Azure AD, Keycloak...).
//!
//! How to use it:
//!
//! - Configure `[oidc]` ([`OidcConfig`]); `latch-central serve` then authenticates reviewers
//!   through [`ReviewerAuth`]: bearer tokens that look like JWTs are verified here, other tokens
//!   are looked up among the static `[[reviewers]]` (when any are configured).
//! - Any channel that holds a bearer token calls [`crate::Central::authenticate`]; it gets an
//!   [`Identity`] whose `groups` are the token's groups and whose `roles` come from
//!   `[oidc.roles]`.
//! - A login flow run by central itself (the web console's authorization code flow) takes
//!   [`crate::Central::oidc`], reads the provider's endpoints with [`Oidc::endpoints`] and the
//!   console's client with [`Oidc::console_client`], and checks the ID token it receives with
//!   [`Oidc::verify_id_token`] and the nonce it sent.
//!
//! What is accepted: RS256 and ES256 signatures only, by a key of the provider's JWKS whose type
//! matches the algorithm (`alg: none`, HMAC, and an HMAC "signed" with the public key are
//! refused before any key is looked at); `iss` equal to the configured issuer; an `aud` among the
//! configured audiences; `exp` and `nbf` within the leeway. The JWKS is cached and fetched again
//! when a token names a key id it does not know (at most once per `jwks_refetch_interval`), so the
//! provider can rotate keys without a restart of central.
//!
//! This module does not decide what an identity may do beyond mapping groups to roles: that is the
//! approval engine's ([`crate::approval`]).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use jsonwebtoken::{
    errors::ErrorKind,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk},
    Algorithm, DecodingKey, Validation,
};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{Mutex, RwLock};

pub use crate::config::oidc::{
    check_url, OidcConfig, DEFAULT_GROUPS_CLAIM, DEFAULT_JWKS_REFETCH_INTERVAL, DEFAULT_LEEWAY,
    DEFAULT_USERNAME_CLAIM,
};
use crate::{
    auth::{AuthError, Authenticator, Identity, Login, Role, StaticTokens},
    config::Config,
};

/// Cached keys are fetched again on use after this long, so retired keys stop being trusted.
pub const JWKS_MAX_AGE: Duration = Duration::from_secs(3600);
/// Timeout of one request to the provider.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// The provider's endpoints, from its discovery document.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Endpoints {
    /// The issuer (equal to the configured one).
    pub issuer: String,
    /// Where the browser is sent to log in.
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    /// Where codes and device codes are exchanged for tokens.
    #[serde(default)]
    pub token_endpoint: Option<String>,
    /// Where a device login starts (RFC 8628).
    #[serde(default)]
    pub device_authorization_endpoint: Option<String>,
    /// The key set.
    pub jwks_uri: String,
}

/// The web console's OAuth client.
#[derive(Clone)]
pub struct ConsoleClient {
    /// Client id.
    pub client_id: String,
    /// Client secret, for confidential clients.
    pub client_secret: Option<String>,
}

impl std::fmt::Debug for ConsoleClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleClient")
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Why the provider could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum OidcSetupError {
    /// The configuration is inconsistent.
    #[error("{0}")]
    Config(String),
    /// The console client secret file.
    #[error("oidc.console_client_secret_file {path}: {source}")]
    Secret {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The HTTP client.
    #[error("building the HTTP client for the identity provider: {0}")]
    Http(reqwest::Error),
}

/// A verified token.
#[derive(Clone, Debug)]
pub struct Verified {
    /// Who.
    pub identity: Identity,
    /// When the token stops being valid (its `exp`).
    pub expires_at: SystemTime,
    /// Whether the provider says the `email` claim is the person's own (`email_verified: true`).
    pub email_verified: bool,
}

/// One key of the provider's set, usable for exactly one algorithm.
#[derive(Clone)]
struct VerifyKey {
    alg: Algorithm,
    key: DecodingKey,
}

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, VerifyKey>,
    fetched_at: Option<Instant>,
}

impl KeyCache {
    fn is_fresh(&self) -> bool {
        self.fetched_at.is_some_and(|t| t.elapsed() < JWKS_MAX_AGE)
    }
}

/// The identity provider: discovery, keys and token verification.
pub struct Oidc {
    config: OidcConfig,
    leeway: Duration,
    refetch_interval: Duration,
    console: Option<ConsoleClient>,
    http: reqwest::Client,
    endpoints: RwLock<Option<Endpoints>>,
    keys: RwLock<KeyCache>,
    /// Serialises fetches and remembers the last one caused by an unknown key id.
    fetching: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oidc")
            .field("issuer", &self.config.issuer)
            .finish()
    }
}

/// Claims this module reads; the rest of the token is ignored.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    nonce: Option<String>,
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
}

/// Whether a bearer token has the shape of a JWS compact serialisation (three base64url parts).
pub fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && parts[0].starts_with("eyJ")
        && parts.iter().take(2).all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn invalid(message: impl Into<String>) -> AuthError {
    AuthError::Invalid(message.into())
}

fn provider(message: impl Into<String>) -> AuthError {
    AuthError::Provider(message.into())
}

/// The key of a JWK and the one algorithm it may verify; `None` for keys of other types
/// (symmetric keys in a public key set are never used).
fn verify_key(jwk: &Jwk) -> Option<Result<VerifyKey, String>> {
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        _ => return None,
    };
    if let Some(declared) = jwk.common.key_algorithm {
        match Algorithm::try_from(declared) {
            Ok(a) if a == alg => {}
            // A key declared for another algorithm (RS384, PS256...) is not ours to use.
            _ => return None,
        }
    }
    if matches!(
        jwk.common.public_key_use,
        Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
    ) {
        return None;
    }
    Some(
        DecodingKey::from_jwk(jwk)
            .map(|key| VerifyKey { alg, key })
            .map_err(|e| e.to_string()),
    )
}

impl Oidc {
    /// From validated configuration. Nothing is fetched yet: the provider is asked for its
    /// discovery document and keys on first use (and by [`Oidc::warm_up`]), so central starts
    /// even while the provider is unreachable.
    pub fn new(config: &OidcConfig) -> Result<Oidc, OidcSetupError> {
        config.validate().map_err(OidcSetupError::Config)?;
        let leeway = config.leeway().map_err(OidcSetupError::Config)?;
        let refetch_interval = config
            .jwks_refetch_interval()
            .map_err(OidcSetupError::Config)?;
        let console = match &config.console_client_id {
            None => None,
            Some(id) => {
                let client_secret = match &config.console_client_secret_file {
                    None => None,
                    Some(p) => Some(
                        std::fs::read_to_string(p)
                            .map_err(|source| OidcSetupError::Secret {
                                path: p.display().to_string(),
                                source,
                            })?
                            .trim()
                            .to_string(),
                    ),
                };
                Some(ConsoleClient {
                    client_id: id.clone(),
                    client_secret,
                })
            }
        };
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(OidcSetupError::Http)?;
        Ok(Oidc {
            config: config.clone(),
            leeway,
            refetch_interval,
            console,
            http,
            endpoints: RwLock::new(None),
            keys: RwLock::new(KeyCache::default()),
            fetching: Mutex::new(None),
        })
    }

    /// The configured issuer.
    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    /// The web console's client, when configured.
    pub fn console_client(&self) -> Option<&ConsoleClient> {
        self.console.as_ref()
    }

    /// Fetches the discovery document and keys now unless a fresh copy is cached; logs and
    /// returns the failure.
    pub async fn warm_up(&self) -> Result<(), AuthError> {
        let _fetching = self.fetching.lock().await;
        if self.keys_fresh().await {
            return Ok(());
        }
        let r = self.refresh_keys().await;
        match &r {
            Ok(n) => {
                tracing::info!(issuer = %self.config.issuer, keys = n, "identity provider keys loaded")
            }
            Err(e) => tracing::error!(issuer = %self.config.issuer, error = %e,
                "identity provider unreachable; reviewer logins fail until it answers"),
        }
        r.map(|_| ())
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        url: &str,
    ) -> Result<T, AuthError> {
        let resp = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| provider(format!("fetching {what} {url}: {e}")))?;
        if !resp.status().is_success() {
            return Err(provider(format!(
                "fetching {what} {url}: HTTP {}",
                resp.status()
            )));
        }
        resp.json::<T>()
            .await
            .map_err(|e| provider(format!("{what} {url} is not valid: {e}")))
    }

    /// The provider's endpoints (fetched once, then cached).
    pub async fn endpoints(&self) -> Result<Endpoints, AuthError> {
        if let Some(e) = self.endpoints.read().await.as_ref() {
            return Ok(e.clone());
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.config.issuer.trim_end_matches('/')
        );
        let e: Endpoints = self.get_json("discovery document", &url).await?;
        if e.issuer != self.config.issuer {
            return Err(provider(format!(
                "discovery document {url} names issuer '{}', not the configured '{}'",
                e.issuer, self.config.issuer
            )));
        }
        check_url("jwks_uri", &e.jwks_uri).map_err(provider)?;
        for u in [
            &e.authorization_endpoint,
            &e.token_endpoint,
            &e.device_authorization_endpoint,
        ]
        .into_iter()
        .flatten()
        {
            check_url("endpoint", u).map_err(provider)?;
        }
        *self.endpoints.write().await = Some(e.clone());
        Ok(e)
    }

    /// Fetches the key set; returns how many usable keys it has.
    async fn refresh_keys(&self) -> Result<usize, AuthError> {
        let endpoints = self.endpoints().await?;
        #[derive(Deserialize)]
        struct RawSet {
            keys: Vec<Value>,
        }
        let raw: RawSet = self.get_json("key set", &endpoints.jwks_uri).await?;
        let mut keys = HashMap::new();
        for v in raw.keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(v) else {
                continue;
            };
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            match verify_key(&jwk) {
                Some(Ok(k)) => {
                    keys.insert(kid, k);
                }
                Some(Err(e)) => {
                    tracing::warn!(kid, error = %e, "identity provider key is unusable");
                }
                None => {}
            }
        }
        let n = keys.len();
        *self.keys.write().await = KeyCache {
            keys,
            fetched_at: Some(Instant::now()),
        };
        Ok(n)
    }

    async fn keys_fresh(&self) -> bool {
        self.keys.read().await.is_fresh()
    }

    /// The key `kid`, fetching the key set when `kid` is unknown or the cache is stale, at most
    /// once per `jwks_refetch_interval` (so a flood of made-up key ids cannot become a flood of
    /// requests to the provider). While the provider cannot be reached, a stale cached key keeps
    /// working.
    async fn key(&self, kid: &str) -> Result<VerifyKey, AuthError> {
        let unknown = || {
            invalid(format!(
                "token is signed with key '{kid}', which the identity provider does not publish"
            ))
        };
        {
            let cache = self.keys.read().await;
            if let (true, Some(k)) = (cache.is_fresh(), cache.keys.get(kid)) {
                return Ok(k.clone());
            }
        }
        let mut last = self.fetching.lock().await;
        let recently = last.is_some_and(|t| t.elapsed() < self.refetch_interval);
        let cached = {
            // Another call may have fetched while this one waited.
            let cache = self.keys.read().await;
            let cached = cache.keys.get(kid).cloned();
            match (&cached, cache.is_fresh(), recently) {
                (Some(k), true, _) | (Some(k), false, true) => return Ok(k.clone()),
                (None, _, true) if cache.fetched_at.is_some() => return Err(unknown()),
                _ => cached,
            }
        };
        *last = Some(Instant::now());
        match self.refresh_keys().await {
            Ok(_) => self
                .keys
                .read()
                .await
                .keys
                .get(kid)
                .cloned()
                .ok_or_else(unknown),
            Err(e) => match cached {
                Some(k) => {
                    tracing::warn!(error = %e, kid, "identity provider unreachable; using the cached key");
                    Ok(k)
                }
                None => Err(e),
            },
        }
    }

    /// Verifies a token's signature and claims against `audiences`; `nonce` (ID tokens from a
    /// login central started) must equal the token's.
    async fn verify(
        &self,
        token: &str,
        audiences: &[String],
        nonce: Option<&str>,
    ) -> Result<Verified, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| {
            invalid(format!(
                "token header refused (only RS256 and ES256 signed tokens are accepted): {e}"
            ))
        })?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(invalid(format!(
                "token algorithm {:?} is not accepted (only RS256 and ES256)",
                header.alg
            )));
        }
        let kid = header
            .kid
            .as_deref()
            .ok_or_else(|| invalid("token header has no key id (kid)"))?;
        let key = self.key(kid).await?;
        if key.alg != header.alg {
            return Err(invalid(format!(
                "token says {:?} but key '{kid}' is a {:?} key",
                header.alg, key.alg
            )));
        }
        let mut v = Validation::new(key.alg);
        v.algorithms = vec![key.alg];
        v.leeway = self.leeway.as_secs();
        v.validate_exp = true;
        v.validate_nbf = true;
        v.validate_aud = true;
        v.set_issuer(&[&self.config.issuer]);
        v.set_audience(audiences);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &v).map_err(|e| {
            invalid(match e.kind() {
                ErrorKind::ExpiredSignature => "token has expired".to_string(),
                ErrorKind::ImmatureSignature => "token is not valid yet (nbf)".to_string(),
                ErrorKind::InvalidAudience => {
                    format!("token audience is not one of {}", audiences.join(", "))
                }
                ErrorKind::InvalidIssuer => {
                    format!("token issuer is not '{}'", self.config.issuer)
                }
                ErrorKind::InvalidSignature => "token signature does not verify".to_string(),
                ErrorKind::MissingRequiredClaim(c) => format!("token has no '{c}' claim"),
                _ => format!("token refused: {e}"),
            })
        })?;
        let claims = data.claims;
        if let Some(expected) = nonce {
            if claims.nonce.as_deref() != Some(expected) {
                return Err(invalid("ID token nonce does not match the login's"));
            }
        }
        let identity = self.identity(&claims)?;
        Ok(Verified {
            identity,
            expires_at: SystemTime::UNIX_EPOCH + Duration::from_secs(claims.exp),
            // Anything but the boolean `true` (absent, "true", 1) is no verification.
            email_verified: claims.other.get("email_verified") == Some(&Value::Bool(true)),
        })
    }

    /// Maps verified claims to an identity; refuses a person none of whose groups has a role.
    fn identity(&self, claims: &Claims) -> Result<Identity, AuthError> {
        let groups: Vec<String> = match claims.other.get(&self.config.groups_claim) {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|g| g.as_str().map(str::to_string))
                .collect(),
            Some(Value::String(s)) => vec![s.clone()],
            _ => Vec::new(),
        };
        let mut roles: Vec<Role> = groups
            .iter()
            .filter_map(|g| self.config.roles.get(g).copied())
            .collect();
        roles.sort();
        roles.dedup();
        if roles.is_empty() {
            return Err(AuthError::NoRole {
                subject: claims.sub.clone(),
                groups: groups.clone(),
                claim: self.config.groups_claim.clone(),
            });
        }
        let mut aliases = Vec::new();
        if let Some(Value::String(u)) = claims.other.get(&self.config.username_claim) {
            if !u.trim().is_empty() {
                aliases.push(format!("user:{u}"));
                aliases.push(u.clone());
            }
        }
        Ok(Identity {
            subject: claims.sub.clone(),
            email: claims.email.clone().unwrap_or_default(),
            groups,
            roles,
            aliases,
        })
    }

    /// Verifies a bearer token sent to central's API (audience among `oidc.audiences`).
    pub async fn verify_access_token(&self, token: &str) -> Result<Verified, AuthError> {
        self.verify(token, &self.config.audiences, None).await
    }

    /// Verifies an ID token from a login central started: audience the console's client id,
    /// `nonce` the one the login sent.
    pub async fn verify_id_token(
        &self,
        id_token: &str,
        nonce: &str,
    ) -> Result<Verified, AuthError> {
        let client = self
            .console
            .as_ref()
            .ok_or_else(|| invalid("oidc.console_client_id is not configured"))?;
        self.verify(
            id_token,
            std::slice::from_ref(&client.client_id),
            Some(nonce),
        )
        .await
    }
}

#[tonic::async_trait]
impl Authenticator for Oidc {
    async fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        Ok(self.verify_access_token(token).await?.identity)
    }

    async fn login(&self, token: &str) -> Result<Login, AuthError> {
        let verified = self.verify_access_token(token).await?;
        Ok(Login {
            identity: verified.identity,
            issuer: Some(self.config.issuer.clone()),
            expires_at: Some(verified.expires_at),
            email_verified: verified.email_verified,
        })
    }
}

/// The reviewer authenticator `latch-central serve` uses: JWTs go to the identity provider (when
/// `[oidc]` is configured), other tokens to the static `[[reviewers]]` (when any are configured).
pub struct ReviewerAuth {
    oidc: Option<Arc<Oidc>>,
    tokens: StaticTokens,
}

impl ReviewerAuth {
    /// From the configuration.
    pub fn from_config(config: &Config) -> Result<ReviewerAuth, OidcSetupError> {
        let oidc = match &config.oidc {
            Some(c) => Some(Arc::new(Oidc::new(c)?)),
            None => None,
        };
        Ok(ReviewerAuth {
            oidc,
            tokens: StaticTokens::new(&config.reviewers),
        })
    }

    /// The identity provider, when configured.
    pub fn oidc(&self) -> Option<&Arc<Oidc>> {
        self.oidc.as_ref()
    }
}

#[tonic::async_trait]
impl Authenticator for ReviewerAuth {
    async fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        Ok(self.login(token).await?.identity)
    }

    async fn login(&self, token: &str) -> Result<Login, AuthError> {
        match &self.oidc {
            Some(o) if looks_like_jwt(token) => o.login(token).await,
            _ if !self.tokens.is_empty() => self.tokens.login(token).await,
            Some(_) => Err(invalid(
                "not a token from the identity provider (log in with `latchctl login --oidc`)",
            )),
            None => Err(AuthError::Unknown),
        }
    }

    fn configured(&self) -> Vec<Identity> {
        self.tokens.configured()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Result<OidcConfig, String> {
        let text = format!(
            "issuer = \"https://idp.example.com\"\naudiences = [\"latch\"]\n{extra}\n[roles]\n\"ops\" = \"approver\"\n"
        );
        let c: OidcConfig = toml::from_str(&text).map_err(|e| e.to_string())?;
        c.validate().map(|_| c)
    }

    #[test]
    fn defaults() {
        let c = config("").expect("config");
        assert_eq!(c.groups_claim, "groups");
        assert_eq!(c.username_claim, "preferred_username");
        assert_eq!(c.leeway(), Ok(Duration::from_secs(60)));
        assert_eq!(c.jwks_refetch_interval(), Ok(Duration::from_secs(30)));
        assert_eq!(c.roles.get("ops"), Some(&Role::Approver));
    }

    #[test]
    fn bad_settings_name_their_key() {
        for (extra, needle) in [
            ("leeway = \"soon\"", "oidc.leeway 'soon'"),
            (
                "leeway = \"10m\"",
                "oidc.leeway '10m' is longer than 5 minutes",
            ),
            (
                "jwks_refetch_interval = \"x\"",
                "oidc.jwks_refetch_interval 'x'",
            ),
            ("groups_claim = \" \"", "oidc.groups_claim is empty"),
            (
                "console_client_id = \"\"",
                "oidc.console_client_id is empty",
            ),
            (
                "console_client_secret_file = \"/x\"",
                "oidc.console_client_secret_file is set without",
            ),
        ] {
            let e = config(extra).expect_err(extra);
            assert!(e.contains(needle), "{extra}: {e}");
        }
        for (text, needle) in [
            (
                "issuer = \"http://idp.example.com\"\naudiences = [\"a\"]\n[roles]\ng = \"admin\"",
                "oidc.issuer 'http://idp.example.com' must be an https:// URL",
            ),
            (
                "issuer = \"not a url\"\naudiences = [\"a\"]\n[roles]\ng = \"admin\"",
                "oidc.issuer 'not a url'",
            ),
            (
                "issuer = \"https://i\"\naudiences = []\n[roles]\ng = \"admin\"",
                "oidc.audiences is empty",
            ),
            (
                "issuer = \"https://i\"\naudiences = [\"a\", \"\"]\n[roles]\ng = \"admin\"",
                "oidc.audiences[1] is empty",
            ),
            (
                "issuer = \"https://i\"\naudiences = [\"a\"]\n",
                "oidc.roles is empty",
            ),
        ] {
            let c: OidcConfig = toml::from_str(text).expect(text);
            let e = c.validate().expect_err(text);
            assert!(e.contains(needle), "{text}: {e}");
        }
        let e = toml::from_str::<OidcConfig>(
            "issuer = \"https://i\"\naudiences = [\"a\"]\n[roles]\ng = \"boss\"",
        )
        .expect_err("unknown role");
        assert!(e.to_string().contains("boss"), "{e}");
        let e = toml::from_str::<OidcConfig>(
            "issuer = \"https://i\"\naudiences = [\"a\"]\naudience = \"b\"",
        )
        .expect_err("unknown key");
        assert!(e.to_string().contains("audience"), "{e}");
    }

    #[test]
    fn http_issuer_only_on_loopback() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://localhost/x",
            "http://[::1]:1",
        ] {
            assert!(check_url("oidc.issuer", ok).is_ok(), "{ok}");
        }
        for bad in ["http://10.0.0.1", "ftp://localhost", "https://i?x=1"] {
            assert!(check_url("oidc.issuer", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn jwt_shape() {
        assert!(looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"));
        assert!(looks_like_jwt("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."));
        assert!(!looks_like_jwt("replace-with-a-long-random-token"));
        assert!(!looks_like_jwt("a.b.c"));
        assert!(!looks_like_jwt("eyJ.x y.z"));
    }

    #[test]
    fn symmetric_and_mismatched_keys_are_never_used() {
        let oct: Jwk = serde_json::from_value(serde_json::json!({
            "kty": "oct", "kid": "h", "k": "c2VjcmV0"
        }))
        .expect("jwk");
        assert!(verify_key(&oct).is_none());
        let rsa_declared_es: Jwk = serde_json::from_value(serde_json::json!({
            "kty": "RSA", "kid": "r", "alg": "ES256", "n": "sXch", "e": "AQAB"
        }))
        .expect("jwk");
        assert!(verify_key(&rsa_declared_es).is_none());
        let rsa: Jwk = serde_json::from_value(serde_json::json!({
            "kty": "RSA", "kid": "r", "n": "sXch", "e": "AQAB"
        }))
        .expect("jwk");
        assert!(matches!(
            verify_key(&rsa),
            Some(Ok(VerifyKey {
                alg: Algorithm::RS256,
                ..
            }))
        ));
    }
}
