//! A real OpenID Connect provider on loopback for Latch's tests, standing in for the company's
//! identity provider (Okta, Azure AD, Keycloak...).
//!
//! It speaks the real protocols over real HTTP, so the code under test (central's token
//! verification, `latchctl login --oidc`, the web console's login) runs unchanged against it:
//!
//! | path | what |
//! |---|---|
//! | `GET /.well-known/openid-configuration` | discovery document |
//! | `GET /jwks` | public keys: one RS256 and one ES256 key; [`TestIdp::rotate`] replaces both |
//! | `GET /authorize` | authorization code flow: PKCE with `S256` required; shows an HTML login form (a `username` input and a "Sign in" button) |
//! | `POST /authorize` | the form's submission; redirects to the client with `code`, `state` (and `iss`) |
//! | `POST /token` | `authorization_code` (checks `code_verifier`, `redirect_uri`, client), `refresh_token`, and `urn:ietf:params:oauth:grant-type:device_code` |
//! | `POST /device_authorization` | device authorization grant (RFC 8628) |
//! | `GET /device`, `POST /device` | where a person enters the user code, their user name, and approves or denies |
//!
//! ```no_run
//! # async fn example() -> Result<(), latch_test_idp::IdpError> {
//! use latch_test_idp::TestIdp;
//! let idp = TestIdp::start().await?;
//! idp.add_user("alice", "alice@example.com", &["sre-oncall"]);
//! // A browser client: register it with its exact redirect URI.
//! idp.add_client("latch-console", None, &["http://127.0.0.1:7480/oidc/callback"]);
//! // An access token for central's API (audience: `idp.api_audience()`, "latch" by default).
//! let token = idp.token("alice")?;
//! // A device login started by a command line tool: approve it as alice.
//! # let user_code = String::new();
//! idp.approve_device(&user_code, "alice")?;
//! # Ok(()) }
//! ```
//!
//! Tokens carry `iss`, `sub` (an opaque id per user, [`TestIdp::subject_of`]), `aud`, `iat`,
//! `nbf`, `exp`, `email`, `email_verified` (true unless [`TestIdp::set_email_verified`] says
//! otherwise for that user), `preferred_username` and `groups`; ID tokens also carry `nonce` when
//! the login sent one. Access tokens are JWTs whose audience is [`TestIdp::api_audience`]; ID
//! tokens' audience is the client id. For negative tests it also mints tokens that a correct
//! verifier must refuse ([`TestIdp::expired_token`], [`TestIdp::unsigned_token`],
//! [`TestIdp::hmac_with_public_key_token`], ...).
//!
//! It keeps everything in memory and must not be used for anything but tests and local runs.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    extract::{Form, Query, State},
    http::{header, HeaderMap, StatusCode},
    response::{Html, IntoResponse, Redirect, Response},
    routing::get,
    Json, Router,
};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use jsonwebtoken::{jwk::Jwk, Algorithm, EncodingKey, Header};
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

/// The grant type of RFC 8628's token request.
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum IdpError {
    /// Binding the loopback port.
    #[error("cannot listen on 127.0.0.1: {0}")]
    Bind(std::io::Error),
    /// Generating or encoding a key.
    #[error("key {0}")]
    Key(String),
    /// Signing a token.
    #[error("signing a token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
    /// No such user.
    #[error("no user '{0}' is registered on the identity provider")]
    UnknownUser(String),
    /// No pending device login has this user code.
    #[error("no pending device login has user code '{0}'")]
    UnknownUserCode(String),
}

/// A signing algorithm the provider publishes keys for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    /// RSA PKCS#1 v1.5 with SHA-256.
    RS256,
    /// ECDSA on P-256 with SHA-256.
    ES256,
}

impl Alg {
    fn jwt(self) -> Algorithm {
        match self {
            Alg::RS256 => Algorithm::RS256,
            Alg::ES256 => Algorithm::ES256,
        }
    }
}

/// A person registered on the provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// Login name (`preferred_username`).
    pub name: String,
    /// E-mail address.
    pub email: String,
    /// Whether tokens say the provider verified the address (`email_verified`). Providers that
    /// let people edit their own address say `false` until the person proved they receive mail
    /// there.
    pub email_verified: bool,
    /// Groups (`groups` claim).
    pub groups: Vec<String>,
}

/// How to mint a token with [`TestIdp::mint`]; `Default` is a valid access token.
#[derive(Clone, Debug, Default)]
pub struct Mint {
    /// Signing algorithm (default RS256).
    pub alg: Option<Alg>,
    /// `aud` (default [`TestIdp::api_audience`]).
    pub audience: Option<String>,
    /// `iss` (default the provider's issuer).
    pub issuer: Option<String>,
    /// Seconds added to "now" for `iat` and `nbf` (negative: issued in the past).
    pub issued_offset: i64,
    /// Lifetime from `iat` (default [`TestIdp::set_token_lifetime`], 1 hour).
    pub lifetime: Option<Duration>,
    /// Seconds added to `iat` for `nbf` (default 0).
    pub not_before_offset: i64,
    /// `nonce`.
    pub nonce: Option<String>,
    /// Header `kid` instead of the signing key's own.
    pub kid: Option<String>,
    /// Extra or replaced claims.
    pub claims: serde_json::Map<String, Value>,
}

struct SigningKey {
    kid: String,
    alg: Alg,
    encoding: EncodingKey,
    jwk: Jwk,
    /// The RSA public key in PEM (SubjectPublicKeyInfo), for the key-confusion token.
    public_pem: Option<String>,
}

fn random_token(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rng().fill(&mut b[..]);
    URL_SAFE_NO_PAD.encode(b)
}

fn rsa_key(kid: String) -> Result<SigningKey, IdpError> {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs8::{EncodePublicKey, LineEnding};
    let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
        .map_err(|e| IdpError::Key(format!("generation: {e}")))?;
    let der = private
        .to_pkcs1_der()
        .map_err(|e| IdpError::Key(format!("encoding: {e}")))?;
    let public_pem = private
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| IdpError::Key(format!("encoding: {e}")))?;
    signing_key(
        kid,
        Alg::RS256,
        EncodingKey::from_rsa_der(der.as_bytes()),
        Some(public_pem),
    )
}

fn ec_key(kid: String) -> Result<SigningKey, IdpError> {
    use p256::pkcs8::EncodePrivateKey;
    let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let der = secret
        .to_pkcs8_der()
        .map_err(|e| IdpError::Key(format!("encoding: {e}")))?;
    signing_key(
        kid,
        Alg::ES256,
        EncodingKey::from_ec_der(der.as_bytes()),
        None,
    )
}

fn signing_key(
    kid: String,
    alg: Alg,
    encoding: EncodingKey,
    public_pem: Option<String>,
) -> Result<SigningKey, IdpError> {
    let mut jwk = Jwk::from_encoding_key(&encoding, alg.jwt())?;
    jwk.common.key_id = Some(kid.clone());
    jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
    Ok(SigningKey {
        kid,
        alg,
        encoding,
        jwk,
        public_pem,
    })
}

#[derive(Clone)]
struct Client {
    secret: Option<String>,
    redirect_uris: Vec<String>,
}

struct AuthRequest {
    client_id: String,
    redirect_uri: String,
    state: Option<String>,
    nonce: Option<String>,
    code_challenge: String,
    scope: String,
    created: Instant,
}

struct Code {
    client_id: String,
    redirect_uri: String,
    nonce: Option<String>,
    code_challenge: String,
    scope: String,
    user: String,
    created: Instant,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum DeviceState {
    Pending,
    Approved(String),
    Denied,
}

struct Device {
    client_id: String,
    user_code: String,
    scope: String,
    state: DeviceState,
    created: Instant,
}

struct Refresh {
    client_id: String,
    user: String,
    scope: String,
}

/// How long codes, login forms and device logins stay usable.
const CODE_LIFETIME: Duration = Duration::from_secs(600);

struct Inner {
    keys: Vec<SigningKey>,
    generation: u32,
    users: BTreeMap<String, User>,
    clients: HashMap<String, Client>,
    auth_requests: HashMap<String, AuthRequest>,
    codes: HashMap<String, Code>,
    devices: HashMap<String, Device>,
    refresh_tokens: HashMap<String, Refresh>,
    api_audience: String,
    token_lifetime: Duration,
    device_interval: u64,
}

impl Inner {
    fn key(&self, alg: Alg) -> &SigningKey {
        self.keys
            .iter()
            .rev()
            .find(|k| k.alg == alg)
            .expect("one key per algorithm is always published")
    }
}

struct Shared {
    issuer: String,
    inner: Mutex<Inner>,
    jwks_fetches: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The running provider. Stops when dropped.
pub struct TestIdp {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The `sub` of a user name: opaque and stable, as real providers make it.
pub fn subject_of(name: &str) -> String {
    let h = Sha256::digest(name.as_bytes());
    format!("00u{}", &hex::encode(h)[..17])
}

impl TestIdp {
    /// Starts on `127.0.0.1` and an unused port, with fresh keys, no users and no clients.
    pub async fn start() -> Result<TestIdp, IdpError> {
        Self::start_on("127.0.0.1:0".parse().expect("constant address")).await
    }

    /// Starts on `addr` (port 0 for any).
    pub async fn start_on(addr: SocketAddr) -> Result<TestIdp, IdpError> {
        let listener = TcpListener::bind(addr).await.map_err(IdpError::Bind)?;
        let addr = listener.local_addr().map_err(IdpError::Bind)?;
        let issuer = format!("http://{addr}");
        let keys = tokio::task::spawn_blocking(|| -> Result<Vec<SigningKey>, IdpError> {
            Ok(vec![rsa_key("rsa-1".into())?, ec_key("ec-1".into())?])
        })
        .await
        .map_err(|e| IdpError::Key(format!("generation: {e}")))??;
        let shared = Arc::new(Shared {
            issuer,
            inner: Mutex::new(Inner {
                keys,
                generation: 1,
                users: BTreeMap::new(),
                clients: HashMap::new(),
                auth_requests: HashMap::new(),
                codes: HashMap::new(),
                devices: HashMap::new(),
                refresh_tokens: HashMap::new(),
                api_audience: "latch".into(),
                token_lifetime: Duration::from_secs(3600),
                device_interval: 1,
            }),
            jwks_fetches: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/authorize", get(authorize).post(sign_in))
            .route("/token", axum::routing::post(token))
            .route(
                "/device_authorization",
                axum::routing::post(device_authorization),
            )
            .route("/device", get(device_page).post(device_decision))
            .with_state(shared.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(TestIdp {
            addr,
            shared,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// The issuer URL (`http://127.0.0.1:PORT`).
    pub fn issuer(&self) -> &str {
        &self.shared.issuer
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Registers (or replaces) a user, with a verified address.
    pub fn add_user(&self, name: &str, email: &str, groups: &[&str]) {
        self.shared.lock().users.insert(
            name.to_string(),
            User {
                name: name.to_string(),
                email: email.to_string(),
                email_verified: true,
                groups: groups.iter().map(|g| g.to_string()).collect(),
            },
        );
    }

    /// Sets what the `email_verified` claim of `name`'s tokens from now on says.
    pub fn set_email_verified(&self, name: &str, verified: bool) -> Result<(), IdpError> {
        let mut inner = self.shared.lock();
        let user = inner
            .users
            .get_mut(name)
            .ok_or_else(|| IdpError::UnknownUser(name.to_string()))?;
        user.email_verified = verified;
        Ok(())
    }

    /// The `sub` claim of `name`'s tokens.
    pub fn subject_of(&self, name: &str) -> String {
        subject_of(name)
    }

    /// Registers a client: public (`secret` None, PKCE only) or confidential, with the exact
    /// redirect URIs it may use.
    pub fn add_client(&self, client_id: &str, secret: Option<&str>, redirect_uris: &[&str]) {
        self.shared.lock().clients.insert(
            client_id.to_string(),
            Client {
                secret: secret.map(str::to_string),
                redirect_uris: redirect_uris.iter().map(|u| u.to_string()).collect(),
            },
        );
    }

    /// The audience of access tokens (default "latch").
    pub fn api_audience(&self) -> String {
        self.shared.lock().api_audience.clone()
    }

    /// Sets the audience of access tokens.
    pub fn set_api_audience(&self, audience: &str) {
        self.shared.lock().api_audience = audience.to_string();
    }

    /// Sets the lifetime of tokens issued from now on (default 1 hour).
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.shared.lock().token_lifetime = lifetime;
    }

    /// Sets the polling interval device logins are told to use (default 1 second).
    pub fn set_device_interval(&self, seconds: u64) {
        self.shared.lock().device_interval = seconds;
    }

    /// How many times the key set was fetched.
    pub fn jwks_fetches(&self) -> u64 {
        self.shared.jwks_fetches.load(Ordering::SeqCst)
    }

    /// The key ids published now.
    pub fn kids(&self) -> Vec<String> {
        self.shared
            .lock()
            .keys
            .iter()
            .map(|k| k.kid.clone())
            .collect()
    }

    /// Replaces both signing keys with new ones (new key ids); the old keys are no longer
    /// published and no longer sign.
    pub async fn rotate(&self) -> Result<(), IdpError> {
        let generation = self.shared.lock().generation + 1;
        let keys = tokio::task::spawn_blocking(move || -> Result<Vec<SigningKey>, IdpError> {
            Ok(vec![
                rsa_key(format!("rsa-{generation}"))?,
                ec_key(format!("ec-{generation}"))?,
            ])
        })
        .await
        .map_err(|e| IdpError::Key(format!("generation: {e}")))??;
        let mut inner = self.shared.lock();
        inner.keys = keys;
        inner.generation = generation;
        Ok(())
    }

    /// A valid RS256 access token for `user`.
    pub fn token(&self, user: &str) -> Result<String, IdpError> {
        self.mint(user, &Mint::default())
    }

    /// A valid ES256 access token for `user`.
    pub fn token_es256(&self, user: &str) -> Result<String, IdpError> {
        self.mint(
            user,
            &Mint {
                alg: Some(Alg::ES256),
                ..Default::default()
            },
        )
    }

    /// A token for `user` as `m` says.
    pub fn mint(&self, user: &str, m: &Mint) -> Result<String, IdpError> {
        let inner = self.shared.lock();
        let claims = claims_for(&self.shared.issuer, &inner, user, m)?;
        let key = inner.key(m.alg.unwrap_or(Alg::RS256));
        let mut header = Header::new(key.alg.jwt());
        header.kid = Some(m.kid.clone().unwrap_or_else(|| key.kid.clone()));
        Ok(jsonwebtoken::encode(&header, &claims, &key.encoding)?)
    }

    /// Expired an hour ago.
    pub fn expired_token(&self, user: &str) -> Result<String, IdpError> {
        self.mint(
            user,
            &Mint {
                issued_offset: -7200,
                lifetime: Some(Duration::from_secs(3600)),
                ..Default::default()
            },
        )
    }

    /// Valid only from an hour from now.
    pub fn not_yet_valid_token(&self, user: &str) -> Result<String, IdpError> {
        self.mint(
            user,
            &Mint {
                not_before_offset: 3600,
                lifetime: Some(Duration::from_secs(7200)),
                ..Default::default()
            },
        )
    }

    /// For another audience.
    pub fn wrong_audience_token(&self, user: &str) -> Result<String, IdpError> {
        self.mint(
            user,
            &Mint {
                audience: Some("some-other-service".into()),
                ..Default::default()
            },
        )
    }

    /// From another issuer (signed by this provider's key).
    pub fn wrong_issuer_token(&self, user: &str) -> Result<String, IdpError> {
        self.mint(
            user,
            &Mint {
                issuer: Some("https://idp.attacker.example".into()),
                ..Default::default()
            },
        )
    }

    /// `alg: none`, no signature, otherwise valid claims and a published key id.
    pub fn unsigned_token(&self, user: &str) -> Result<String, IdpError> {
        let inner = self.shared.lock();
        let claims = claims_for(&self.shared.issuer, &inner, user, &Mint::default())?;
        let header = json!({"alg": "none", "typ": "JWT", "kid": inner.key(Alg::RS256).kid});
        Ok(format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(Value::Object(claims).to_string())
        ))
    }

    /// HS256 "signed" with the published RSA public key (PEM bytes) as the HMAC secret, naming
    /// the RSA key's id: accepted by verifiers that take the algorithm from the token.
    pub fn hmac_with_public_key_token(&self, user: &str) -> Result<String, IdpError> {
        let inner = self.shared.lock();
        let claims = claims_for(&self.shared.issuer, &inner, user, &Mint::default())?;
        let key = inner.key(Alg::RS256);
        let pem = key.public_pem.as_deref().unwrap_or_default();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(key.kid.clone());
        Ok(jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_secret(pem.as_bytes()),
        )?)
    }

    /// Signed by a published key but naming a key id that is not published.
    pub fn unknown_kid_token(&self, user: &str) -> Result<String, IdpError> {
        self.mint(
            user,
            &Mint {
                kid: Some(format!("unknown-{}", random_token(6))),
                ..Default::default()
            },
        )
    }

    /// Signed by a key that was never published, naming the published RSA key's id.
    pub async fn foreign_key_token(&self, user: &str) -> Result<String, IdpError> {
        let foreign = tokio::task::spawn_blocking(|| rsa_key("foreign".into()))
            .await
            .map_err(|e| IdpError::Key(format!("generation: {e}")))??;
        let inner = self.shared.lock();
        let claims = claims_for(&self.shared.issuer, &inner, user, &Mint::default())?;
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(inner.key(Alg::RS256).kid.clone());
        Ok(jsonwebtoken::encode(&header, &claims, &foreign.encoding)?)
    }

    /// User codes of device logins waiting for a person.
    pub fn pending_user_codes(&self) -> Vec<String> {
        self.shared
            .lock()
            .devices
            .values()
            .filter(|d| d.state == DeviceState::Pending && d.created.elapsed() < CODE_LIFETIME)
            .map(|d| d.user_code.clone())
            .collect()
    }

    /// Approves the device login with `user_code` as `user` (what `/device` does).
    pub fn approve_device(&self, user_code: &str, user: &str) -> Result<(), IdpError> {
        decide_device(&self.shared, user_code, Some(user))
    }

    /// Denies the device login with `user_code`.
    pub fn deny_device(&self, user_code: &str) -> Result<(), IdpError> {
        decide_device(&self.shared, user_code, None)
    }

    /// Stops serving.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for TestIdp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn normalize_user_code(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

fn decide_device(shared: &Shared, user_code: &str, user: Option<&str>) -> Result<(), IdpError> {
    let mut inner = shared.lock();
    if let Some(u) = user {
        if !inner.users.contains_key(u) {
            return Err(IdpError::UnknownUser(u.to_string()));
        }
    }
    let wanted = normalize_user_code(user_code);
    let device = inner
        .devices
        .values_mut()
        .find(|d| {
            normalize_user_code(&d.user_code) == wanted
                && d.state == DeviceState::Pending
                && d.created.elapsed() < CODE_LIFETIME
        })
        .ok_or_else(|| IdpError::UnknownUserCode(user_code.to_string()))?;
    device.state = match user {
        Some(u) => DeviceState::Approved(u.to_string()),
        None => DeviceState::Denied,
    };
    Ok(())
}

fn claims_for(
    issuer: &str,
    inner: &Inner,
    user: &str,
    m: &Mint,
) -> Result<serde_json::Map<String, Value>, IdpError> {
    let u = inner
        .users
        .get(user)
        .ok_or_else(|| IdpError::UnknownUser(user.to_string()))?;
    let iat = now_secs() + m.issued_offset;
    let lifetime = m.lifetime.unwrap_or(inner.token_lifetime).as_secs() as i64;
    let mut c = serde_json::Map::new();
    c.insert("iss".into(), json!(m.issuer.as_deref().unwrap_or(issuer)));
    c.insert("sub".into(), json!(subject_of(&u.name)));
    c.insert(
        "aud".into(),
        json!(m
            .audience
            .clone()
            .unwrap_or_else(|| inner.api_audience.clone())),
    );
    c.insert("iat".into(), json!(iat));
    c.insert("nbf".into(), json!(iat + m.not_before_offset));
    c.insert("exp".into(), json!(iat + lifetime));
    c.insert("email".into(), json!(u.email));
    c.insert("email_verified".into(), json!(u.email_verified));
    c.insert("preferred_username".into(), json!(u.name));
    c.insert("groups".into(), json!(u.groups));
    if let Some(n) = &m.nonce {
        c.insert("nonce".into(), json!(n));
    }
    for (k, v) in &m.claims {
        c.insert(k.clone(), v.clone());
    }
    Ok(c)
}

async fn discovery(State(s): State<Arc<Shared>>) -> Json<Value> {
    let i = &s.issuer;
    Json(json!({
        "issuer": i,
        "authorization_endpoint": format!("{i}/authorize"),
        "token_endpoint": format!("{i}/token"),
        "device_authorization_endpoint": format!("{i}/device_authorization"),
        "jwks_uri": format!("{i}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        "scopes_supported": ["openid", "email", "profile", "groups", "offline_access"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
        "grant_types_supported": ["authorization_code", "refresh_token", DEVICE_CODE_GRANT],
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nbf", "email", "email_verified", "preferred_username", "groups", "nonce"],
    }))
}

async fn jwks(State(s): State<Arc<Shared>>) -> Json<Value> {
    s.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    let inner = s.lock();
    let keys: Vec<&Jwk> = inner.keys.iter().map(|k| &k.jwk).collect();
    Json(json!({ "keys": keys }))
}

fn page(title: &str, body: &str) -> Html<String> {
    // Only constant text and values this provider generated (alphanumeric ids) reach the page.
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body><main><h1>{title}</h1>{body}</main></body></html>"
    ))
}

fn login_form(request_id: &str, error: Option<&str>) -> Html<String> {
    let error = error
        .map(|e| format!("<p role=\"alert\" class=\"error\">{e}</p>"))
        .unwrap_or_default();
    page(
        "Sign in",
        &format!(
            "{error}<form method=\"post\" action=\"/authorize\">\
             <input type=\"hidden\" name=\"request\" value=\"{request_id}\">\
             <label for=\"username\">Username</label> \
             <input id=\"username\" name=\"username\" autocomplete=\"username\" autofocus required>\
             <button type=\"submit\">Sign in</button></form>"
        ),
    )
}

fn bad_request(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        page("Sign-in error", &format!("<p>{message}</p>")),
    )
        .into_response()
}

fn redirect_with(redirect_uri: &str, params: &[(&str, &str)]) -> Response {
    match url::Url::parse(redirect_uri) {
        Ok(mut url) => {
            url.query_pairs_mut().extend_pairs(params);
            Redirect::to(url.as_str()).into_response()
        }
        Err(_) => bad_request("The redirect_uri is not a URL."),
    }
}

#[derive(Deserialize)]
struct AuthorizeParams {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    scope: Option<String>,
    state: Option<String>,
    nonce: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
}

async fn authorize(State(s): State<Arc<Shared>>, Query(p): Query<AuthorizeParams>) -> Response {
    let mut inner = s.lock();
    let (Some(client_id), Some(redirect_uri)) = (&p.client_id, &p.redirect_uri) else {
        return bad_request("client_id and redirect_uri are required.");
    };
    let Some(client) = inner.clients.get(client_id) else {
        return bad_request("Unknown client.");
    };
    // A redirect URI that is not registered gets no redirect: that is how codes leak.
    if !client.redirect_uris.iter().any(|u| u == redirect_uri) {
        return bad_request("The redirect_uri is not registered for this client.");
    }
    let state = p.state.as_deref().unwrap_or("");
    let fail = |error: &str, description: &str| {
        let mut params = vec![("error", error), ("error_description", description)];
        if !state.is_empty() {
            params.push(("state", state));
        }
        redirect_with(redirect_uri, &params)
    };
    if p.response_type.as_deref() != Some("code") {
        return fail(
            "unsupported_response_type",
            "only response_type=code is supported",
        );
    }
    let Some(challenge) = p.code_challenge.clone().filter(|c| !c.is_empty()) else {
        return fail("invalid_request", "PKCE is required (code_challenge)");
    };
    if p.code_challenge_method.as_deref() != Some("S256") {
        return fail("invalid_request", "code_challenge_method must be S256");
    }
    let id = random_token(18);
    inner
        .auth_requests
        .retain(|_, r| r.created.elapsed() < CODE_LIFETIME);
    inner.auth_requests.insert(
        id.clone(),
        AuthRequest {
            client_id: client_id.clone(),
            redirect_uri: redirect_uri.clone(),
            state: p.state.clone(),
            nonce: p.nonce.clone(),
            code_challenge: challenge,
            scope: p.scope.clone().unwrap_or_default(),
            created: Instant::now(),
        },
    );
    login_form(&id, None).into_response()
}

#[derive(Deserialize)]
struct SignInForm {
    request: String,
    username: String,
}

async fn sign_in(State(s): State<Arc<Shared>>, Form(f): Form<SignInForm>) -> Response {
    let mut inner = s.lock();
    let fresh = inner
        .auth_requests
        .get(&f.request)
        .is_some_and(|r| r.created.elapsed() < CODE_LIFETIME);
    if !fresh {
        return bad_request("This sign-in has expired; start again from the application.");
    }
    if !inner.users.contains_key(f.username.trim()) {
        return (
            StatusCode::UNAUTHORIZED,
            login_form(&f.request, Some("No such user.")),
        )
            .into_response();
    }
    let Some(req) = inner.auth_requests.remove(&f.request) else {
        return bad_request("This sign-in has expired; start again from the application.");
    };
    let code = random_token(24);
    inner
        .codes
        .retain(|_, c| c.created.elapsed() < CODE_LIFETIME);
    inner.codes.insert(
        code.clone(),
        Code {
            client_id: req.client_id,
            redirect_uri: req.redirect_uri.clone(),
            nonce: req.nonce,
            code_challenge: req.code_challenge,
            scope: req.scope,
            user: f.username.trim().to_string(),
            created: Instant::now(),
        },
    );
    let mut params = vec![("code", code.as_str()), ("iss", s.issuer.as_str())];
    if let Some(st) = &req.state {
        params.push(("state", st.as_str()));
    }
    redirect_with(&req.redirect_uri, &params)
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

#[derive(Deserialize)]
struct TokenForm {
    grant_type: String,
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    refresh_token: Option<String>,
    device_code: Option<String>,
}

fn percent_decode(v: &str) -> String {
    percent_encoding::percent_decode_str(v)
        .decode_utf8_lossy()
        .into_owned()
}

/// The client making a token request: `client_secret_basic`, `client_secret_post`, or a public
/// client naming itself.
fn token_client(headers: &HeaderMap, f: &TokenForm) -> Option<(String, Option<String>)> {
    if let Some(basic) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (id, secret) = text.split_once(':')?;
        return Some((percent_decode(id), Some(percent_decode(secret))));
    }
    Some((f.client_id.clone()?, f.client_secret.clone()))
}

fn tokens(
    s: &Shared,
    inner: &mut Inner,
    client_id: &str,
    user: &str,
    scope: &str,
    nonce: Option<String>,
) -> Result<Value, IdpError> {
    let lifetime = inner.token_lifetime;
    let access = {
        let claims = claims_for(
            &s.issuer,
            inner,
            user,
            &Mint {
                claims: [("client_id".to_string(), json!(client_id))]
                    .into_iter()
                    .collect(),
                ..Default::default()
            },
        )?;
        let key = inner.key(Alg::RS256);
        let mut header = Header::new(key.alg.jwt());
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, &claims, &key.encoding)?
    };
    let mut body = json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": lifetime.as_secs(),
        "scope": scope,
    });
    if scope.split_whitespace().any(|s| s == "openid") {
        let claims = claims_for(
            &s.issuer,
            inner,
            user,
            &Mint {
                audience: Some(client_id.to_string()),
                nonce,
                claims: [("azp".to_string(), json!(client_id))]
                    .into_iter()
                    .collect(),
                ..Default::default()
            },
        )?;
        let key = inner.key(Alg::RS256);
        let mut header = Header::new(key.alg.jwt());
        header.kid = Some(key.kid.clone());
        body["id_token"] = json!(jsonwebtoken::encode(&header, &claims, &key.encoding)?);
    }
    let refresh = random_token(24);
    inner.refresh_tokens.insert(
        refresh.clone(),
        Refresh {
            client_id: client_id.to_string(),
            user: user.to_string(),
            scope: scope.to_string(),
        },
    );
    body["refresh_token"] = json!(refresh);
    Ok(body)
}

fn token_response(r: Result<Value, IdpError>) -> Response {
    match r {
        Ok(v) => (
            StatusCode::OK,
            [(header::CACHE_CONTROL, "no-store")],
            Json(v),
        )
            .into_response(),
        Err(e) => oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", &e.to_string()),
    }
}

async fn token(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Form(f): Form<TokenForm>,
) -> Response {
    let Some((client_id, secret)) = token_client(&headers, &f) else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "no client authentication",
        );
    };
    let mut inner = s.lock();
    let Some(client) = inner.clients.get(&client_id).cloned() else {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "unknown client");
    };
    if client.secret.is_some() && client.secret != secret {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        );
    }
    match f.grant_type.as_str() {
        "authorization_code" => {
            let Some(code) = f.code.as_deref().and_then(|c| inner.codes.remove(c)) else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "unknown or used code",
                );
            };
            if code.created.elapsed() >= CODE_LIFETIME {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "code expired");
            }
            if code.client_id != client_id {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "code was issued to another client",
                );
            }
            if f.redirect_uri.as_deref() != Some(code.redirect_uri.as_str()) {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "redirect_uri does not match",
                );
            }
            let Some(verifier) = f.code_verifier.as_deref() else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "code_verifier is required",
                );
            };
            if !(43..=128).contains(&verifier.len())
                || URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
                    != code.code_challenge
            {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "code_verifier does not match the code_challenge",
                );
            }
            let r = tokens(
                &s,
                &mut inner,
                &client_id,
                &code.user,
                &code.scope,
                code.nonce,
            );
            token_response(r)
        }
        "refresh_token" => {
            let Some(rt) = f
                .refresh_token
                .as_deref()
                .and_then(|t| inner.refresh_tokens.remove(t))
            else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "unknown refresh token",
                );
            };
            if rt.client_id != client_id {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "refresh token was issued to another client",
                );
            }
            let r = tokens(&s, &mut inner, &client_id, &rt.user, &rt.scope, None);
            token_response(r)
        }
        DEVICE_CODE_GRANT => {
            let Some(dc) = f.device_code.clone() else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "device_code is required",
                );
            };
            let Some(d) = inner.devices.get(&dc) else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "unknown device code",
                );
            };
            if d.client_id != client_id {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "device code was issued to another client",
                );
            }
            if d.created.elapsed() >= CODE_LIFETIME {
                inner.devices.remove(&dc);
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "expired_token",
                    "the device code expired",
                );
            }
            match d.state.clone() {
                DeviceState::Pending => oauth_error(
                    StatusCode::BAD_REQUEST,
                    "authorization_pending",
                    "waiting for the user",
                ),
                DeviceState::Denied => {
                    inner.devices.remove(&dc);
                    oauth_error(
                        StatusCode::BAD_REQUEST,
                        "access_denied",
                        "the user denied the login",
                    )
                }
                DeviceState::Approved(user) => {
                    let scope = d.scope.clone();
                    inner.devices.remove(&dc);
                    let r = tokens(&s, &mut inner, &client_id, &user, &scope, None);
                    token_response(r)
                }
            }
        }
        other => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            &format!("grant_type {other} is not supported"),
        ),
    }
}

#[derive(Deserialize)]
struct DeviceAuthorizationForm {
    client_id: Option<String>,
    scope: Option<String>,
}

fn user_code() -> String {
    // No vowels and no look-alike digits: nothing to misread, no words.
    const ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";
    let mut rng = rand::rng();
    let mut code = String::with_capacity(9);
    for i in 0..8 {
        if i == 4 {
            code.push('-');
        }
        code.push(ALPHABET[rng.random_range(0..ALPHABET.len())] as char);
    }
    code
}

async fn device_authorization(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Form(f): Form<DeviceAuthorizationForm>,
) -> Response {
    let basic = token_client(
        &headers,
        &TokenForm {
            grant_type: String::new(),
            code: None,
            redirect_uri: None,
            code_verifier: None,
            client_id: f.client_id.clone(),
            client_secret: None,
            refresh_token: None,
            device_code: None,
        },
    );
    let Some((client_id, _)) = basic else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client_id is required",
        );
    };
    let mut inner = s.lock();
    if !inner.clients.contains_key(&client_id) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "unknown client");
    }
    inner
        .devices
        .retain(|_, d| d.created.elapsed() < CODE_LIFETIME);
    let device_code = random_token(24);
    let code = user_code();
    inner.devices.insert(
        device_code.clone(),
        Device {
            client_id,
            user_code: code.clone(),
            scope: f.scope.unwrap_or_default(),
            state: DeviceState::Pending,
            created: Instant::now(),
        },
    );
    let uri = format!("{}/device", s.issuer);
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({
            "device_code": device_code,
            "user_code": code,
            "verification_uri": uri,
            "verification_uri_complete": format!("{uri}?user_code={code}"),
            "expires_in": CODE_LIFETIME.as_secs(),
            "interval": inner.device_interval,
        })),
    )
        .into_response()
}

#[derive(Deserialize)]
struct DevicePageParams {
    user_code: Option<String>,
}

fn device_form(user_code: &str, error: Option<&str>) -> Html<String> {
    let error = error
        .map(|e| format!("<p role=\"alert\" class=\"error\">{e}</p>"))
        .unwrap_or_default();
    page(
        "Device login",
        &format!(
            "{error}<form method=\"post\" action=\"/device\">\
             <label for=\"user_code\">Code</label> \
             <input id=\"user_code\" name=\"user_code\" value=\"{user_code}\" required> \
             <label for=\"username\">Username</label> \
             <input id=\"username\" name=\"username\" autocomplete=\"username\" required> \
             <button type=\"submit\" name=\"action\" value=\"approve\">Approve</button> \
             <button type=\"submit\" name=\"action\" value=\"deny\">Deny</button></form>"
        ),
    )
}

async fn device_page(Query(p): Query<DevicePageParams>) -> Html<String> {
    // Only a code in this provider's alphabet is put back into the page.
    let code = p
        .user_code
        .map(|c| normalize_user_code(&c))
        .filter(|c| c.len() == 8)
        .map(|c| format!("{}-{}", &c[..4], &c[4..]))
        .unwrap_or_default();
    device_form(&code, None)
}

#[derive(Deserialize)]
struct DeviceDecisionForm {
    user_code: String,
    username: String,
    action: String,
}

async fn device_decision(
    State(s): State<Arc<Shared>>,
    Form(f): Form<DeviceDecisionForm>,
) -> Response {
    let approve = f.action == "approve";
    let user = f.username.trim();
    if !s.lock().users.contains_key(user) {
        return (
            StatusCode::UNAUTHORIZED,
            device_form("", Some("No such user.")),
        )
            .into_response();
    }
    match decide_device(&s, &f.user_code, approve.then_some(user)) {
        Ok(()) if approve => page(
            "Device approved",
            "<p>You are signed in. Return to your terminal.</p>",
        )
        .into_response(),
        Ok(()) => page("Device login denied", "<p>The login was denied.</p>").into_response(),
        Err(_) => (
            StatusCode::NOT_FOUND,
            device_form("", Some("That code is unknown or has expired.")),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_codes_normalise() {
        assert_eq!(normalize_user_code("bcdf-ghjk"), "BCDFGHJK");
        assert_eq!(normalize_user_code(" BCDF GHJK "), "BCDFGHJK");
        let c = user_code();
        assert_eq!(c.len(), 9);
        assert_eq!(&c[4..5], "-");
    }

    #[test]
    fn subjects_are_opaque_and_stable() {
        assert_eq!(subject_of("alice"), subject_of("alice"));
        assert_ne!(subject_of("alice"), subject_of("bob"));
        assert!(!subject_of("alice").contains("alice"));
    }
}
