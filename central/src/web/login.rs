//! Signing in to the console and out again.
//!
//! Two ways in, both ending in a server-side session ([`super::session`]):
//! - at the identity provider: the authorization code flow with PKCE (S256), `state` bound to
//!   the browser that started it, and a `nonce` the ID token must carry; the login in progress
//!   lives in a signed cookie of that browser ([`super::pending`]), not on the server;
//! - with a static access token from `[[reviewers]]` (first-start mode), offered only when such
//!   tokens are configured.
//!
//! The token form's CSRF value is a random value kept in a short-lived cookie of its own.

use std::time::Duration;

use axum::{
    extract::{Query, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Redirect, Response},
    Form,
};
use cookie::{Cookie, SameSite};
use serde::Deserialize;

use crate::{auth::Identity, clock::now_ms, store::AuditFact};

use super::{
    cookie,
    pending::{PendingLogin, Refused},
    session::{random_secret, same_secret, LOGIN_WINDOW, VIA_OIDC, VIA_TOKEN},
    views::{login_page, segment, Banner, LoginOptions},
    Console, Signed, WebError,
};

/// Name of the session cookie (with `__Host-` in front over https).
pub const SESSION_COOKIE: &str = "latch-session";
/// Name of the login cookie: the token form's CSRF value.
pub const LOGIN_COOKIE: &str = "latch-login";
/// Name of the cookie that carries a login at the identity provider in progress.
pub const PENDING_COOKIE: &str = "latch-oidc";
/// Where the identity provider sends the browser back.
pub const CALLBACK_PATH: &str = "/auth/callback";

/// The console's login page, returning to `next` afterwards.
pub fn login_href(next: &str) -> String {
    format!("/login?next={}", segment(next))
}

/// `next` when it is a path of this console, else the request queue: a login must never send
/// the browser to another site.
pub fn safe_next(next: &str) -> String {
    let ok = next.starts_with('/')
        && !next.starts_with("//")
        && !next.starts_with("/\\")
        && !next.chars().any(|c| c.is_control() || c == '\\')
        && next.len() <= 2048
        && !next.starts_with("/login")
        && !next.starts_with(CALLBACK_PATH);
    if ok {
        next.to_string()
    } else {
        "/requests".to_string()
    }
}

fn set_cookie(res: &mut Response, c: Cookie<'_>) {
    if let Ok(v) = HeaderValue::from_str(&c.to_string()) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn cookie_for(state: &Console, base: &str, value: String, max_age: Duration) -> Cookie<'static> {
    Cookie::build((state.central.web.cookie_name(base), value))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(state.central.web.secure_cookies)
        .max_age(cookie::time::Duration::seconds(max_age.as_secs() as i64))
        .build()
}

fn removal(state: &Console, base: &str) -> Cookie<'static> {
    cookie_for(state, base, String::new(), Duration::ZERO)
}

/// The login cookie's value, and a `Set-Cookie` when the browser has none yet.
fn login_binding(
    state: &Console,
    headers: &HeaderMap,
) -> Result<(String, Option<Cookie<'static>>), WebError> {
    let name = state.central.web.cookie_name(LOGIN_COOKIE);
    if let Some(v) = cookie(headers, &name).filter(|v| v.len() >= 32) {
        return Ok((v, None));
    }
    let v = random_secret()?;
    let c = cookie_for(state, LOGIN_COOKIE, v.clone(), LOGIN_WINDOW);
    Ok((v, Some(c)))
}

/// Why a sign-in did not work; shown on the login page by code, so that nothing a link carries
/// is shown as text.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// The identity provider login took too long or came from another browser.
    Stale,
    /// The browser's login cookie was altered or not made by this console.
    Forged,
    /// The identity provider refused or the answer did not verify.
    Provider,
    /// The identity provider signed the person in, but none of their groups has a role.
    NoRole,
    /// Signed out.
    SignedOut,
}

impl Failure {
    fn message(self) -> Banner<'static> {
        match self {
            Failure::Stale => Banner::Error(
                "That sign-in expired or was started in another browser; sign in again.",
            ),
            Failure::Forged => Banner::Error(
                "That sign-in was refused: its cookie was altered or not issued by this console. Sign in again.",
            ),
            Failure::Provider => Banner::Error(
                "The identity provider did not sign you in (details are in central's log).",
            ),
            Failure::NoRole => Banner::Error(
                "You signed in, but none of your groups has a role in Latch; ask an administrator.",
            ),
            Failure::SignedOut => Banner::Notice("Signed out."),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct LoginQuery {
    next: String,
    failed: Option<Failure>,
}

fn render_login(
    state: &Console,
    headers: &HeaderMap,
    next: &str,
    banner: Option<&Banner>,
    status: StatusCode,
) -> Result<Response, WebError> {
    let (binding, set) = login_binding(state, headers)?;
    let issuer = oidc_issuer(state);
    let page = login_page(
        &LoginOptions {
            oidc_issuer: issuer.as_deref(),
            token: token_login_offered(state),
            csrf: &binding,
            next,
        },
        banner,
    );
    let mut res = (status, page).into_response();
    if let Some(c) = set {
        set_cookie(&mut res, c);
    }
    Ok(res)
}

fn token_login_offered(state: &Console) -> bool {
    !state.central.reviewers.configured().is_empty()
}

/// `GET /login`.
pub(crate) async fn page(
    State(state): State<Console>,
    signed: Option<Signed>,
    headers: HeaderMap,
    Query(q): Query<LoginQuery>,
) -> Result<Response, WebError> {
    let next = safe_next(&q.next);
    if signed.is_some() && q.failed.is_none() {
        return Ok(Redirect::to(&next).into_response());
    }
    let banner = q.failed.map(Failure::message);
    render_login(&state, &headers, &next, banner.as_ref(), StatusCode::OK)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct TokenForm {
    csrf: String,
    token: String,
    next: String,
}

/// `POST /login/token`.
pub(crate) async fn with_token(
    State(state): State<Console>,
    headers: HeaderMap,
    Form(f): Form<TokenForm>,
) -> Result<Response, WebError> {
    let next = safe_next(&f.next);
    let name = state.central.web.cookie_name(LOGIN_COOKIE);
    let Some(binding) = cookie(&headers, &name) else {
        return Err(WebError::Csrf);
    };
    if f.csrf.is_empty() || !same_secret(&f.csrf, &binding) {
        return Err(WebError::Csrf);
    }
    if !token_login_offered(&state) {
        return Err(WebError::BadInput(
            "signing in with an access token is not enabled here".into(),
        ));
    }
    let refused = |why: &str| {
        render_login(
            &state,
            &headers,
            &next,
            Some(&Banner::Error(why)),
            StatusCode::UNAUTHORIZED,
        )
    };
    let login = match state.central.reviewers.login(f.token.trim()).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "console sign-in with an access token refused");
            return refused("That access token is not valid.");
        }
    };
    if login.issuer.is_some() {
        // Such a session could outlive the token; the provider's own sign-in ties them.
        return refused(
            "That is a token from the identity provider: use the identity provider's sign-in.",
        );
    }
    let expires = now_ms() + state.central.web.session_lifetime.as_millis() as i64;
    start_session(&state, &login.identity, VIA_TOKEN, expires, &next).await
}

/// Opens a session and sends the browser on with its cookie.
async fn start_session(
    state: &Console,
    identity: &Identity,
    via: &str,
    expires_at_ms: i64,
    next: &str,
) -> Result<Response, WebError> {
    let id = state
        .central
        .open_session(identity, via, expires_at_ms)
        .await?;
    state
        .central
        .store
        .audit(&AuditFact {
            kind: "reviewer.login".into(),
            actor: identity.subject.clone(),
            payload: serde_json::json!({"channel": "web", "via": via, "email": identity.email,
                "groups": identity.groups, "role": super::session::role_label(identity),
                "session_expires_at_unix_ms": expires_at_ms}),
            ..Default::default()
        })
        .await
        .map_err(crate::error::Error::from)?;
    tracing::info!(subject = %identity.subject, via, "console sign-in");
    let left = Duration::from_millis((expires_at_ms - now_ms()).max(0) as u64);
    let mut res = Redirect::to(next).into_response();
    set_cookie(&mut res, cookie_for(state, SESSION_COOKIE, id, left));
    set_cookie(&mut res, removal(state, LOGIN_COOKIE));
    set_cookie(&mut res, removal(state, PENDING_COOKIE));
    Ok(res)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct LogoutForm {
    csrf: String,
}

/// `POST /logout`.
pub(crate) async fn logout(
    State(state): State<Console>,
    signed: Signed,
    Form(f): Form<LogoutForm>,
) -> Result<Response, WebError> {
    signed.check_csrf(&f.csrf)?;
    state.central.close_session(&signed.id).await?;
    // No stream may be listening: nobody to tell.
    let _ = state.closed.send(signed.session.id_hash.clone());
    state
        .central
        .store
        .audit(&AuditFact {
            kind: "reviewer.logout".into(),
            actor: signed.identity().subject.clone(),
            payload: serde_json::json!({"channel": "web"}),
            ..Default::default()
        })
        .await
        .map_err(crate::error::Error::from)?;
    let mut res = Redirect::to("/login?failed=signed_out").into_response();
    set_cookie(&mut res, removal(&state, SESSION_COOKIE));
    Ok(res)
}

// ---------------------------------------------------------------------------------------------
// The identity provider
// ---------------------------------------------------------------------------------------------

fn oidc_issuer(state: &Console) -> Option<String> {
    let oidc = state.central.oidc()?;
    oidc.console_client()?;
    Some(oidc.issuer().to_string())
}

/// The ID token in the token endpoint's answer.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
struct IdTokenField {
    id_token: String,
}

impl oauth2::ExtraTokenFields for IdTokenField {}

/// An OAuth client for the console's login: authorization and token endpoints known.
type CodeClient = oauth2::Client<
    oauth2::basic::BasicErrorResponse,
    oauth2::StandardTokenResponse<IdTokenField, oauth2::basic::BasicTokenType>,
    oauth2::basic::BasicTokenIntrospectionResponse,
    oauth2::StandardRevocableToken,
    oauth2::basic::BasicRevocationErrorResponse,
    oauth2::EndpointSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
>;

/// Why a login at the identity provider failed (logged; the browser sees a code).
#[derive(Debug, thiserror::Error)]
enum ProviderLogin {
    #[error("the identity provider is not configured for the console (oidc.console_client_id)")]
    NotConfigured,
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error("the identity provider's {what} '{url}' is unusable: {message}")]
    Endpoint {
        what: &'static str,
        url: String,
        message: String,
    },
    #[error("the provider answered for issuer '{got}', not '{want}'")]
    Issuer { got: String, want: String },
    #[error("exchanging the code at the token endpoint failed: {0}")]
    Exchange(String),
}

/// The provider, its console client and an OAuth client for this console's redirect URI.
async fn code_client(
    state: &Console,
) -> Result<(std::sync::Arc<crate::oidc::Oidc>, CodeClient), ProviderLogin> {
    let oidc = state.central.oidc().ok_or(ProviderLogin::NotConfigured)?;
    let client = oidc
        .console_client()
        .ok_or(ProviderLogin::NotConfigured)?
        .clone();
    let endpoints = oidc.endpoints().await?;
    let url = |what: &'static str, v: Option<String>| {
        let v = v.ok_or_else(|| ProviderLogin::Endpoint {
            what,
            url: String::new(),
            message: "missing from the discovery document".into(),
        })?;
        Ok::<_, ProviderLogin>(v)
    };
    let auth = url("authorization_endpoint", endpoints.authorization_endpoint)?;
    let token = url("token_endpoint", endpoints.token_endpoint)?;
    let redirect = format!("{}{CALLBACK_PATH}", state.central.web.public_url);
    let bad = |what: &'static str, url: &str| {
        let url = url.to_string();
        move |e: url::ParseError| ProviderLogin::Endpoint {
            what,
            url,
            message: e.to_string(),
        }
    };
    let mut c = oauth2::Client::new(oauth2::ClientId::new(client.client_id.clone()))
        .set_auth_uri(
            oauth2::AuthUrl::new(auth.clone()).map_err(bad("authorization_endpoint", &auth))?,
        )
        .set_token_uri(oauth2::TokenUrl::new(token.clone()).map_err(bad("token_endpoint", &token))?)
        .set_redirect_uri(
            oauth2::RedirectUrl::new(redirect.clone()).map_err(bad("redirect URI", &redirect))?,
        );
    if let Some(secret) = &client.client_secret {
        c = c.set_client_secret(oauth2::ClientSecret::new(secret.clone()));
    }
    Ok((oidc, c))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct StartQuery {
    next: String,
}

fn to_login_page(failure: &str) -> Response {
    Redirect::to(&format!("/login?failed={failure}")).into_response()
}

/// `GET /login/oidc`: sends the browser to the identity provider.
pub(crate) async fn start_oidc(
    State(state): State<Console>,
    Query(q): Query<StartQuery>,
) -> Result<Response, WebError> {
    let (_, client) = match code_client(&state).await {
        Ok(c) => c,
        Err(ProviderLogin::NotConfigured) => return Err(WebError::NotFound),
        Err(e) => {
            tracing::warn!(error = %e, "console sign-in at the identity provider cannot start");
            return Ok(to_login_page("provider"));
        }
    };
    let pending = PendingLogin::start(&safe_next(&q.next), now_ms())?;
    let key = &state.login_key;
    let verifier = oauth2::PkceCodeVerifier::new(pending.verifier(key));
    let challenge = oauth2::PkceCodeChallenge::from_code_verifier_sha256(&verifier);
    let csrf_state = pending.state.clone();
    let mut request = client
        .authorize_url(move || oauth2::CsrfToken::new(csrf_state))
        .set_pkce_challenge(challenge)
        .add_extra_param("nonce", pending.nonce(key));
    for scope in &state.central.web.login_scopes {
        request = request.add_scope(oauth2::Scope::new(scope.clone()));
    }
    let (url, _) = request.url();
    let mut res = Redirect::to(url.as_str()).into_response();
    set_cookie(
        &mut res,
        cookie_for(&state, PENDING_COOKIE, pending.seal(key), LOGIN_WINDOW),
    );
    Ok(res)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct CallbackQuery {
    code: String,
    state: String,
    iss: String,
    error: String,
    error_description: String,
}

/// `GET /auth/callback`: the identity provider's answer.
pub(crate) async fn oidc_callback(
    State(state): State<Console>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Result<Response, WebError> {
    // A login in progress is answered once: whatever the outcome, the browser's cookie goes.
    let mut res = oidc_answer(&state, &headers, &q).await?;
    set_cookie(&mut res, removal(&state, PENDING_COOKIE));
    Ok(res)
}

async fn oidc_answer(
    state: &Console,
    headers: &HeaderMap,
    q: &CallbackQuery,
) -> Result<Response, WebError> {
    let pending = cookie(headers, &state.central.web.cookie_name(PENDING_COOKIE))
        .ok_or(Refused::Missing)
        .and_then(|v| PendingLogin::open(&state.login_key, &v, now_ms()))
        .and_then(|p| p.check_state(&q.state).map(|()| p));
    if !q.error.is_empty() {
        tracing::warn!(error = %q.error.escape_debug(), description = %q.error_description.escape_debug(),
            "the identity provider refused a console sign-in");
        return Ok(to_login_page("provider"));
    }
    let pending = match pending {
        Ok(p) => p,
        Err(e) if e.is_forgery() => {
            tracing::warn!(error = %e, "console sign-in callback refused");
            return Ok(to_login_page("forged"));
        }
        Err(e) => {
            tracing::info!(error = %e, "console sign-in callback without a matching login in progress (stale, replayed or from another browser)");
            return Ok(to_login_page("stale"));
        }
    };
    match finish_oidc(state, q, &pending).await {
        Ok(verified) => {
            // Channels that know people by e-mail (chat) find this person from now on.
            state.central.record_provider_login(&verified).await;
            let issuer = state
                .central
                .oidc()
                .map(|o| o.issuer().to_string())
                .unwrap_or_default();
            let token_end = verified
                .expires_at
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            let longest = now_ms() + state.central.web.session_lifetime.as_millis() as i64;
            start_session(
                state,
                &verified.identity,
                &format!("{VIA_OIDC}{issuer}"),
                token_end.min(longest),
                &safe_next(&pending.return_to),
            )
            .await
        }
        Err(ProviderLogin::Auth(crate::auth::AuthError::NoRole {
            subject,
            groups,
            claim,
        })) => {
            tracing::warn!(subject, ?groups, claim, "console sign-in refused: no role");
            Ok(to_login_page("no_role"))
        }
        Err(e) => {
            tracing::warn!(error = %e, "console sign-in at the identity provider failed");
            Ok(to_login_page("provider"))
        }
    }
}

/// Exchanges the code (with the PKCE verifier) and verifies the ID token (with the nonce).
async fn finish_oidc(
    state: &Console,
    q: &CallbackQuery,
    pending: &PendingLogin,
) -> Result<crate::oidc::Verified, ProviderLogin> {
    let (oidc, client) = code_client(state).await?;
    // RFC 9207: an `iss` in the answer must be the provider this login went to.
    if !q.iss.is_empty() && q.iss != oidc.issuer() {
        return Err(ProviderLogin::Issuer {
            got: q.iss.clone(),
            want: oidc.issuer().to_string(),
        });
    }
    if q.code.is_empty() {
        return Err(ProviderLogin::Exchange("the answer has no code".into()));
    }
    let http = state
        .http()
        .map_err(|e| ProviderLogin::Exchange(e.to_string()))?;
    let token = client
        .exchange_code(oauth2::AuthorizationCode::new(q.code.clone()))
        .set_pkce_verifier(oauth2::PkceCodeVerifier::new(
            pending.verifier(&state.login_key),
        ))
        .request_async(&http)
        .await
        .map_err(|e| {
            ProviderLogin::Exchange(match e {
                oauth2::RequestTokenError::ServerResponse(r) => format!("{r}"),
                other => other.to_string(),
            })
        })?;
    let id_token = token.extra_fields().id_token.clone();
    Ok(oidc
        .verify_id_token(&id_token, &pending.nonce(&state.login_key))
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_this_console() {
        for (given, want) in [
            ("/requests/abc", "/requests/abc"),
            ("/audit?kind=request.", "/audit?kind=request."),
            ("//evil.example/x", "/requests"),
            ("/\\evil.example", "/requests"),
            ("https://evil.example/", "/requests"),
            ("javascript:alert(1)", "/requests"),
            ("", "/requests"),
            ("/login?next=/x", "/requests"),
            ("/a\nb", "/requests"),
        ] {
            assert_eq!(safe_next(given), want, "{given:?}");
        }
    }
}
