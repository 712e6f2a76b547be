//! The reviewers' web console, served by central on its own listener (`[web]`).
//!
//! It owns the HTTP routes, the server-rendered pages ([`views`], maud templates that escape
//! every value), the small script and style sheet under `/static` (no build step), browser
//! sessions and their CSRF tokens ([`session`]), sign-in with a static access token or at the
//! identity provider (authorization code with PKCE, [`login`], the login in progress kept by the
//! browser in a signed cookie, [`pending`]), and the live pending queue
//! (Server-Sent Events fed by the same watcher hub as gRPC `WatchRequests`, [`live`]).
//!
//! It must not decide anything itself: every action goes through the same [`Central`] methods
//! as the gRPC API (`Central::decide`, `Central::revoke_grant`, ...), so roles, approver groups,
//! N-of-M and the refusal of self-approval hold here exactly as there. Buttons a reviewer's role
//! cannot use are hidden, and the engine refuses them anyway. It does not verify identity tokens
//! (that is [`crate::oidc`] through [`crate::auth`]).
//!
//! Every response carries a strict Content-Security-Policy (scripts only from `/static`, no
//! inline script or style), `frame-ancestors 'none'`, `X-Frame-Options: DENY`,
//! `Referrer-Policy: no-referrer` and `X-Content-Type-Options: nosniff`.

mod assets;
mod live;
pub mod login;
mod pages;
pub mod pending;
pub mod session;
pub mod views;

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use axum::{
    extract::{FromRequestParts, OptionalFromRequestParts},
    http::{header, request::Parts, HeaderMap, HeaderValue, Method, StatusCode},
    middleware,
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
    Router,
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

use crate::{
    auth::{Identity, Role},
    config::Config,
    engine::Central,
    error::Error,
};

use self::{
    session::Session,
    views::{error_page, Me},
};

/// The Content-Security-Policy of every response: nothing but this origin's own script, style,
/// images and event stream; forms post only here; no framing, no `<base>`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
    frame-ancestors 'none'; base-uri 'none'";

pub use crate::config::console::Settings;

impl Central {
    /// The console's public URL (no trailing slash), when the console is served: for links in
    /// notifications.
    pub fn console_url(&self) -> Option<&str> {
        (!self.web.public_url.is_empty()).then_some(self.web.public_url.as_str())
    }

    /// The console's page for a request, when the console is served.
    pub fn console_request_url(&self, approval_id: &str) -> Option<String> {
        self.console_url()
            .map(|u| format!("{u}{}", views::request_href(approval_id)))
    }
}

/// Timeout of one request to the identity provider's token endpoint.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);

/// Sessions closed on this replica that open event streams have not heard of yet, at most.
const CLOSED_BACKLOG: usize = 256;

/// The console's shared state.
#[derive(Clone)]
pub(crate) struct Console {
    central: Arc<Central>,
    http: Arc<OnceLock<reqwest::Client>>,
    login_key: Arc<pending::LoginKey>,
    /// The id hashes of sessions closed here, so that their event streams end at once.
    closed: tokio::sync::broadcast::Sender<String>,
}

impl Console {
    /// The HTTP client for the identity provider's token endpoint, made on first use. It follows
    /// no redirects: a token endpoint that redirects is misconfigured or hostile.
    fn http(&self) -> Result<reqwest::Client, Error> {
        if let Some(c) = self.http.get() {
            return Ok(c.clone());
        }
        let c = reqwest::Client::builder()
            .timeout(PROVIDER_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Unavailable(format!("building an HTTP client: {e}")))?;
        Ok(self.http.get_or_init(|| c).clone())
    }
}

/// The console's routes, with `others` (routes of other channels served on the same listener,
/// given by the wiring: Slack's callbacks) under the same response headers.
pub fn router(central: Arc<Central>, others: Router) -> Router {
    let console = Router::new()
        .route("/", get(|| async { Redirect::to("/requests") }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/requests", get(pages::requests))
        .route("/requests/{id}", get(pages::request))
        .route("/requests/{id}/decide", post(pages::decide))
        .route("/grants", get(pages::grants))
        .route("/grants/{id}/revoke", post(pages::revoke))
        .route("/hosts", get(pages::hosts))
        .route("/audit", get(pages::audit))
        .route("/events/requests", get(live::requests))
        .route("/login", get(login::page))
        .route("/login/token", post(login::with_token))
        .route("/login/oidc", get(login::start_oidc))
        .route(login::CALLBACK_PATH, get(login::oidc_callback))
        .route("/logout", post(login::logout))
        .route("/static/console.js", get(assets::script))
        .route("/static/console.css", get(assets::style))
        .fallback(not_found)
        .with_state(Console {
            login_key: Arc::new(pending::LoginKey::derive(&central.signing)),
            central: central.clone(),
            http: Arc::default(),
            closed: tokio::sync::broadcast::channel(CLOSED_BACKLOG).0,
        });
    console
        .merge(others)
        .layer(middleware::map_response(security_headers))
}

async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    // Pages show live security decisions and personal data: never from a cache.
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    res
}

async fn not_found() -> Response {
    WebError::NotFound.into_response()
}

/// Why a console request failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WebError {
    /// No live session: sign in first.
    #[error("sign in first")]
    SignIn {
        /// The page to return to.
        next: String,
        /// Whether the browser can be sent to the login page (a page load, not a form post or
        /// the event stream).
        redirect: bool,
    },
    /// A form without this session's CSRF token.
    #[error("this form is stale or did not come from this console; reload the page and try again")]
    Csrf,
    /// The signed-in identity has no role at all.
    #[error("'{0}' has no Latch role (viewer, approver or admin)")]
    NoRole(String),
    /// A form field or query parameter is malformed.
    #[error("{0}")]
    BadInput(String),
    /// No such page.
    #[error("there is no such page")]
    NotFound,
    /// The engine refused or failed.
    #[error(transparent)]
    Central(#[from] Error),
}

/// The HTTP status of an engine error: the same meaning as its gRPC code.
pub(crate) fn status_of(e: &Error) -> StatusCode {
    match e {
        Error::InvalidArgument(_) | Error::Rules(_) => StatusCode::BAD_REQUEST,
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::FailedPrecondition(_) => StatusCode::CONFLICT,
        Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        Error::PermissionDenied(_) => StatusCode::FORBIDDEN,
        Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::Store(s) if s.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
        Error::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// What a person may read of an engine error: storage internals stay in the log.
pub(crate) fn message_of(e: &Error) -> String {
    match e {
        Error::Store(s) => {
            tracing::warn!(error = %s, "console request failed in storage");
            crate::error::STORE_FAILED.into()
        }
        e => e.to_string(),
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let (status, title) = match &self {
            WebError::SignIn { next, redirect } => {
                if *redirect {
                    return Redirect::to(&login::login_href(next)).into_response();
                }
                (StatusCode::UNAUTHORIZED, "Signed out")
            }
            WebError::Csrf => (StatusCode::FORBIDDEN, "Refused"),
            WebError::NoRole(_) => (StatusCode::FORBIDDEN, "No access"),
            WebError::BadInput(_) => (StatusCode::BAD_REQUEST, "Bad request"),
            WebError::NotFound => (StatusCode::NOT_FOUND, "Not found"),
            WebError::Central(e) => (status_of(e), "Refused"),
        };
        let message = match &self {
            WebError::Central(e) => message_of(e),
            other => other.to_string(),
        };
        (status, error_page(None, title, &message)).into_response()
    }
}

/// The value of cookie `name`, if the request carries it.
pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(|c| c.ok())
        .find(|c| c.name() == name)
        .map(|c| c.value().to_string())
}

/// A signed-in reviewer with a role.
pub(crate) struct Signed {
    session: Session,
    id: String,
}

impl Signed {
    pub(crate) fn identity(&self) -> &Identity {
        &self.session.identity
    }

    /// When the session ends (Unix ms).
    pub(crate) fn expires_at_ms(&self) -> i64 {
        self.session.expires_at_ms
    }

    pub(crate) fn me(&self) -> Me<'_> {
        Me {
            identity: &self.session.identity,
            csrf: &self.session.csrf,
        }
    }

    /// Refuses a form that does not carry this session's CSRF token.
    pub(crate) fn check_csrf(&self, token: &str) -> Result<(), WebError> {
        if token.is_empty() || !session::same_secret(token, &self.session.csrf) {
            tracing::warn!(subject = %self.session.identity.subject, "console form refused: CSRF token missing or wrong");
            return Err(WebError::Csrf);
        }
        Ok(())
    }
}

impl FromRequestParts<Console> for Signed {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, state: &Console) -> Result<Self, WebError> {
        let redirect = parts.method == Method::GET || parts.method == Method::HEAD;
        let next = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let sign_in = || WebError::SignIn {
            next: next.clone(),
            redirect,
        };
        let name = state.central.web.cookie_name(login::SESSION_COOKIE);
        let Some(id) = cookie(&parts.headers, &name) else {
            return Err(sign_in());
        };
        let Some(session) = state.central.session(&id).await? else {
            return Err(sign_in());
        };
        if !session.identity.has(Role::Viewer) {
            return Err(WebError::NoRole(session.identity.subject.clone()));
        }
        Ok(Signed { session, id })
    }
}

impl OptionalFromRequestParts<Console> for Signed {
    type Rejection = WebError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Console,
    ) -> Result<Option<Self>, WebError> {
        match <Signed as FromRequestParts<Console>>::from_request_parts(parts, state).await {
            Ok(s) => Ok(Some(s)),
            Err(WebError::SignIn { .. } | WebError::NoRole(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Why the console could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebSetupError {
    /// Its listen address.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The `[web]` table.
    #[error("{0}")]
    Settings(String),
}

/// The console's listener, bound before the service starts so that its address is known.
pub(crate) struct Bound {
    listener: TcpListener,
    settings: Settings,
}

/// Binds `[web] listen` when the console is configured.
pub(crate) async fn bind(config: &Config) -> Result<Option<Bound>, WebSetupError> {
    let Some(web) = &config.web else {
        return Ok(None);
    };
    let listener = TcpListener::bind(web.listen)
        .await
        .map_err(|source| WebSetupError::Bind {
            addr: web.listen,
            source,
        })?;
    let bound = listener
        .local_addr()
        .map_err(|source| WebSetupError::Bind {
            addr: web.listen,
            source,
        })?;
    let public_url = web.public_url(bound).map_err(WebSetupError::Settings)?;
    let settings = Settings {
        secure_cookies: public_url.starts_with("https://"),
        public_url,
        session_lifetime: web.session_lifetime().map_err(WebSetupError::Settings)?,
        login_scopes: web.login_scopes(),
    };
    Ok(Some(Bound { listener, settings }))
}

impl Bound {
    /// The settings pages need.
    pub(crate) fn settings(&self) -> Settings {
        self.settings.clone()
    }

    /// Starts serving.
    pub(crate) fn serve(
        self,
        central: Arc<Central>,
        others: Router,
    ) -> Result<WebServer, WebSetupError> {
        let addr = self
            .listener
            .local_addr()
            .map_err(|source| WebSetupError::Bind {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                source,
            })?;
        let (tx, rx) = oneshot::channel::<()>();
        let app = router(central, others);
        let task = tokio::spawn(async move {
            let served = axum::serve(self.listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the web console stopped serving");
            }
        });
        tracing::info!(%addr, public_url = %self.settings.public_url, "web console serving");
        Ok(WebServer {
            addr,
            task,
            shutdown: tx,
        })
    }
}

/// The running console.
pub struct WebServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
    shutdown: oneshot::Sender<()>,
}

/// Longest a stopping console waits for responses in progress.
const DRAIN: Duration = Duration::from_secs(5);

impl WebServer {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets responses in progress finish (event streams end when the service
    /// says it is stopping), and gives up on stragglers after a few seconds.
    pub(crate) async fn stop(self) {
        let _ = self.shutdown.send(());
        let mut task = self.task;
        if tokio::time::timeout(DRAIN, &mut task).await.is_err() {
            task.abort();
            let _ = task.await;
        }
    }
}
