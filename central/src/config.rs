//! The configuration file (TOML).
//!
//! ```toml
//! listen = "127.0.0.1:7443"                        # default
//! database = "sqlite:///var/lib/latch-central/central.db"  # default; or "postgres://user:pw@host/db"
//!
//! [oidc]                                  # reviewers log in here (see crate::oidc::OidcConfig)
//! issuer = "https://login.example.com/oauth2/default"
//! audiences = ["latch"]
//! [oidc.roles]
//! "sre-oncall" = "approver"
//!
//! [break_glass]
//! enabled = false             # default; an admin deciding alone, loudly audited
//! min_reason_chars = 20       # default
//!
//! [[reviewers]]               # static tokens: for a first start only, announced loudly
//! token = "change-me"
//! subject = "alice"
//! email = "alice@example.com"
//! groups = ["dba-oncall"]
//! role = "approver"          # viewer | approver | admin
//! aliases = ["user:alice"]   # workload identities that are this person (never approve them)
//!
//! [[agents]]
//! host_id = "web-1"
//! token = "per-host-secret"
//!
//! [tls]                                   # required for a non-loopback `listen`
//! cert_file = "/etc/latch/tls/central.pem"  # PEM chain, leaf first
//! key_file = "/etc/latch/tls/central.key"   # PEM private key
//! client_ca_file = "/etc/latch/tls/agents-ca.pem"  # agents' client certificates (mTLS)
//!
//! [web]                                   # the web console; served only when this table is present
//! listen = "127.0.0.1:7480"               # default
//! public_url = "https://latch.example.com" # links and OIDC redirects; default http://<listen>
//! session_lifetime = "12h"                # longest session (an OIDC session ends with its ID token)
//!
//! [slack]                                 # needs [web]: clicks arrive at /slack/actions
//! bot_token_file = "/etc/latch/slack-bot-token"
//! signing_secret_file = "/etc/latch/slack-signing-secret"
//! default_channel = "#latch-approvals"    # for rules without `notify.slack`
//! api_base_url = "https://slack.com/api"  # default
//! replay_window = "5m"                    # default
//!
//! [teams]                                 # needs web.public_url (cards link to the console)
//! webhook_url_file = "/etc/latch/teams-webhook-url"
//!
//! [audit]
//! signing_key = "/var/lib/latch-central/audit-signing-key.pem"  # generated when absent
//! checkpoint_every = 10000                              # records
//! checkpoint_interval = "5m"
//! retention = "forever"                                 # or e.g. "400days"
//! prune_interval = "1h"
//! ```

use std::{
    collections::HashSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

pub mod console;
pub mod oidc;

pub use oidc::OidcConfig;

use crate::role::Role;

/// Default listen address: loopback, so a fresh install is not reachable from the network.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7443";
/// Default database: one SQLite file, created on first start.
pub const DEFAULT_DATABASE: &str = "sqlite:///var/lib/latch-central/central.db";
/// The configuration file `latch-central` reads when none is named.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/latch/central.toml";
/// Where a root process started without a configuration file keeps its state (the directory
/// of [`DEFAULT_DATABASE`]).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/latch-central";
/// The SQLite file in the state directory.
pub const STATE_DATABASE_FILE: &str = "central.db";

/// A refused configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("{path}: {source}")]
    Parse {
        /// File.
        path: String,
        /// Cause (with line and column).
        source: toml::de::Error,
    },
    /// The file parses but says something impossible.
    #[error("{path}: {message}")]
    Invalid {
        /// File.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Started without a configuration file, and no directory for the database is known.
    #[error(
        "no configuration file and no state directory for the database: set STATE_DIRECTORY \
         (or XDG_STATE_HOME, or HOME) to an absolute path, or start with --config FILE \
         (HOME is '{home}')"
    )]
    NoStateDir {
        /// `HOME`, the last variable looked at (empty when unset).
        home: String,
    },
}

/// The directory where `latch-central` keeps its database when started without a
/// configuration file: `$STATE_DIRECTORY` (what systemd's `StateDirectory=` sets), else
/// [`DEFAULT_STATE_DIR`] for root, else `$XDG_STATE_HOME/latch`, else `~/.local/state/latch`.
/// `var` reads the environment; relative values are ignored, as the XDG specification says.
pub fn first_start_state_dir(
    var: impl Fn(&str) -> Option<std::ffi::OsString>,
    is_root: bool,
) -> Result<PathBuf, ConfigError> {
    let absolute = |name: &str| var(name).map(PathBuf::from).filter(|p| p.is_absolute());
    // systemd may list several directories, separated by colons; the first is this unit's own.
    if let Some(dir) = var("STATE_DIRECTORY").and_then(|v| {
        v.to_str()
            .and_then(|s| s.split(':').next())
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    }) {
        return Ok(dir);
    }
    if is_root {
        return Ok(PathBuf::from(DEFAULT_STATE_DIR));
    }
    if let Some(dir) = absolute("XDG_STATE_HOME") {
        return Ok(dir.join("latch"));
    }
    if let Some(home) = absolute("HOME") {
        return Ok(home.join(".local/state/latch"));
    }
    Err(ConfigError::NoStateDir {
        home: var("HOME")
            .map(|v| v.to_string_lossy().into_owned())
            .unwrap_or_default(),
    })
}

/// `latch-central`'s configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the gRPC server listens on (default [`DEFAULT_LISTEN`]).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Database URL: `sqlite://PATH` (created when missing) or `postgres://...`
    /// (default [`DEFAULT_DATABASE`]).
    #[serde(default = "default_database")]
    pub database: String,
    /// Address `/metrics` (Prometheus) is served on; not served when absent.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Database connections per replica (default 8; SQLite always uses one writer connection).
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Name of this replica in logs and audit (default: hostname and process id).
    #[serde(default)]
    pub replica_id: Option<String>,
    /// Reviewer and admin tokens.
    #[serde(default)]
    pub reviewers: Vec<ReviewerToken>,
    /// Per-host agent tokens.
    #[serde(default)]
    pub agents: Vec<AgentToken>,
    /// The audit trail.
    #[serde(default)]
    pub audit: AuditConfig,
    /// TLS for the gRPC listener (see [`crate::tls`]).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Serve plaintext on a non-loopback `listen` (default false). Without TLS every bearer
    /// token crosses the network readable by anyone on the path, so this is refused unless
    /// said explicitly, e.g. behind a TLS-terminating proxy or inside an encrypted mesh.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// The web console (see [`crate::web`]); not served when absent.
    #[serde(default)]
    pub web: Option<WebConfig>,
    /// Slack approvals (see [`crate::notify::slack`]); off when absent.
    #[serde(default)]
    pub slack: Option<SlackConfig>,
    /// Microsoft Teams cards (see [`crate::notify::teams`]); off when absent.
    #[serde(default)]
    pub teams: Option<TeamsConfig>,
    /// The identity provider reviewers log in with (see [`crate::oidc`]).
    #[serde(default)]
    pub oidc: Option<OidcConfig>,
    /// The break-glass decision path (off by default).
    #[serde(default)]
    pub break_glass: BreakGlassConfig,
    /// `[[auto_reviewers]]`: automatic reviewer services that rules' `auto` steps name.
    #[serde(default)]
    pub auto_reviewers: Vec<AutoReviewerConfig>,
}

/// An automatic reviewer service: central posts each request of a rule whose chain has `auto`
/// naming it, signed with the shared secret, and takes its signed answer (see `crate::auto`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoReviewerConfig {
    /// The name rules give in `auto.reviewer`.
    pub name: String,
    /// Where requests are posted (`https://`, or `http://` on loopback).
    pub url: String,
    /// File holding the shared secret (at least 32 bytes) that signs both ways.
    pub secret_file: PathBuf,
    /// How long an answer may take before the request escalates (default 5s, at most 60s).
    #[serde(default)]
    pub timeout: Option<String>,
    /// The circuit breaker's window: how many of the latest verdicts it looks at (default 20).
    #[serde(default = "default_breaker_window")]
    pub breaker_window: usize,
    /// The largest share of approvals in a full window before the reviewer is switched to
    /// escalate-only (default 0.9).
    #[serde(default = "default_breaker_max_approve_share")]
    pub breaker_max_approve_share: f64,
    /// Failures in a row (timeouts, errors, bad answers) that switch it to escalate-only
    /// (default 3).
    #[serde(default = "default_breaker_max_failures")]
    pub breaker_max_failures: u32,
    /// How long it stays escalate-only (default 10m).
    #[serde(default)]
    pub breaker_cooldown: Option<String>,
}

fn default_breaker_window() -> usize {
    20
}

fn default_breaker_max_approve_share() -> f64 {
    0.9
}

fn default_breaker_max_failures() -> u32 {
    3
}

impl AutoReviewerConfig {
    /// How long an answer may take.
    pub fn timeout(&self) -> Result<Duration, String> {
        let text = self.timeout.as_deref().unwrap_or("5s");
        let d = humantime::parse_duration(text)
            .map_err(|e| format!("auto_reviewers '{}'.timeout '{text}': {e}", self.name))?;
        if d < Duration::from_millis(100) || d > Duration::from_secs(60) {
            return Err(format!(
                "auto_reviewers '{}'.timeout '{text}' is out of range: 100ms to 60s",
                self.name
            ));
        }
        Ok(d)
    }

    /// How long the breaker stays open.
    pub fn breaker_cooldown(&self) -> Result<Duration, String> {
        let text = self.breaker_cooldown.as_deref().unwrap_or("10m");
        let d = humantime::parse_duration(text).map_err(|e| {
            format!(
                "auto_reviewers '{}'.breaker_cooldown '{text}': {e}",
                self.name
            )
        })?;
        if d < Duration::from_secs(1) || d > Duration::from_secs(24 * 3600) {
            return Err(format!(
                "auto_reviewers '{}'.breaker_cooldown '{text}' is out of range: 1s to 24h",
                self.name
            ));
        }
        Ok(d)
    }

    fn validate(&self) -> Result<(), String> {
        let n = &self.name;
        if !policy::is_plain_name(n) {
            return Err(format!(
                "auto_reviewers: name '{n}' is not a reviewer name (1 to {} letters, digits, `-` or `_`)",
                policy::MAX_NAME_LEN
            ));
        }
        check_webhook_url(&format!("auto_reviewers '{n}'.url"), &self.url)?;
        self.timeout()?;
        self.breaker_cooldown()?;
        if !(2..=1000).contains(&self.breaker_window) {
            return Err(format!(
                "auto_reviewers '{n}'.breaker_window {} is out of range: 2 to 1000",
                self.breaker_window
            ));
        }
        if !(0.0..=1.0).contains(&self.breaker_max_approve_share) {
            return Err(format!(
                "auto_reviewers '{n}'.breaker_max_approve_share {} is out of range: 0 to 1",
                self.breaker_max_approve_share
            ));
        }
        if !(1..=100).contains(&self.breaker_max_failures) {
            return Err(format!(
                "auto_reviewers '{n}'.breaker_max_failures {} is out of range: 1 to 100",
                self.breaker_max_failures
            ));
        }
        Ok(())
    }
}

/// Shortest break-glass reason by default.
pub const DEFAULT_BREAK_GLASS_MIN_REASON: usize = 20;

/// `[break_glass]`: lets an admin decide a request alone, even their own, with a written reason.
/// Every use is audited as `decision.break_glass` and logged at error level.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakGlassConfig {
    /// Whether the path exists at all (default false).
    #[serde(default)]
    pub enabled: bool,
    /// Shortest reason accepted, in characters (default [`DEFAULT_BREAK_GLASS_MIN_REASON`]).
    #[serde(default = "default_break_glass_min_reason")]
    pub min_reason_chars: usize,
}

fn default_break_glass_min_reason() -> usize {
    DEFAULT_BREAK_GLASS_MIN_REASON
}

impl Default for BreakGlassConfig {
    fn default() -> Self {
        BreakGlassConfig {
            enabled: false,
            min_reason_chars: DEFAULT_BREAK_GLASS_MIN_REASON,
        }
    }
}

/// Default address of the web console: loopback, like the gRPC listener.
pub const DEFAULT_WEB_LISTEN: &str = "127.0.0.1:7480";
/// Default longest web session.
pub const DEFAULT_SESSION_LIFETIME: &str = "12h";

/// `[web]`: the reviewers' web console.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// Address the console listens on (default [`DEFAULT_WEB_LISTEN`]).
    #[serde(default = "default_web_listen")]
    pub listen: SocketAddr,
    /// The URL reviewers open (scheme, host and port only), used for links in notifications
    /// and for the OIDC redirect URI; session cookies are `Secure` when it is `https`.
    /// Default: `http://` and the address listened on.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Longest a console session lasts (default [`DEFAULT_SESSION_LIFETIME`]); a session from an
    /// identity-provider login also ends when its ID token expires.
    #[serde(default)]
    pub session_lifetime: Option<String>,
    /// Scopes the console asks the identity provider for (default [`DEFAULT_LOGIN_SCOPES`]);
    /// add the one that puts groups in the ID token when the provider needs it (Okta: `groups`).
    #[serde(default)]
    pub login_scopes: Option<Vec<String>>,
}

/// Default scopes of a console login at the identity provider.
pub const DEFAULT_LOGIN_SCOPES: &[&str] = &["openid", "profile", "email"];

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            listen: default_web_listen(),
            public_url: None,
            session_lifetime: None,
            login_scopes: None,
        }
    }
}

impl WebConfig {
    /// The longest session.
    pub fn session_lifetime(&self) -> Result<Duration, String> {
        let text = self
            .session_lifetime
            .as_deref()
            .unwrap_or(DEFAULT_SESSION_LIFETIME);
        let d = humantime::parse_duration(text)
            .map_err(|e| format!("web.session_lifetime '{text}': {e}"))?;
        if d < Duration::from_secs(60) || d > Duration::from_secs(30 * 24 * 3600) {
            return Err(format!(
                "web.session_lifetime '{text}' must be between 1 minute and 30 days"
            ));
        }
        Ok(d)
    }

    /// The public URL without a trailing slash: `public_url`, else `http://` and `bound` (the
    /// address actually listened on, which differs from `listen` for port 0).
    pub fn public_url(&self, bound: SocketAddr) -> Result<String, String> {
        match &self.public_url {
            Some(u) => parse_public_url(u),
            None => Ok(format!("http://{bound}")),
        }
    }

    /// Scopes of a console login.
    pub fn login_scopes(&self) -> Vec<String> {
        match &self.login_scopes {
            Some(s) => s.clone(),
            None => DEFAULT_LOGIN_SCOPES.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn validate(&self, allow_plaintext: bool) -> Result<(), String> {
        self.session_lifetime()?;
        let scopes = self.login_scopes();
        if !scopes.iter().any(|s| s == "openid") {
            return Err("web.login_scopes must include \"openid\"".into());
        }
        if let Some(s) = scopes
            .iter()
            .find(|s| s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(format!(
                "web.login_scopes: '{}' is not a scope",
                s.escape_debug()
            ));
        }
        let url = self.public_url(self.listen)?;
        if !self.listen.ip().is_loopback() && !allow_plaintext {
            return Err(format!(
                "web.listen {} is not a loopback address: the console serves plain HTTP, so put \
                 a TLS-terminating proxy in front (public_url = \"https://...\") and set \
                 allow_plaintext = true to say so",
                self.listen
            ));
        }
        if !self.listen.ip().is_loopback() && !url.starts_with("https://") {
            return Err(format!(
                "web.public_url '{url}' must be https:// when web.listen {} is not a loopback address",
                self.listen
            ));
        }
        Ok(())
    }
}

/// Checks a `public_url` and returns it without a trailing slash.
fn parse_public_url(text: &str) -> Result<String, String> {
    let bad = |why: &str| format!("web.public_url '{text}': {why}");
    let u = url::Url::parse(text).map_err(|e| bad(&e.to_string()))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(bad("there is no host"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(bad("credentials do not belong in it"));
    }
    if u.path() != "/" || u.query().is_some() || u.fragment().is_some() {
        return Err(bad(
            "only scheme, host and port are allowed (the console is served at the root)",
        ));
    }
    Ok(u.as_str().trim_end_matches('/').to_string())
}

/// Default Slack Web API base URL.
pub const DEFAULT_SLACK_API: &str = "https://slack.com/api";
/// Default window within which a Slack callback's timestamp must lie (Slack's own advice).
pub const DEFAULT_SLACK_REPLAY_WINDOW: &str = "5m";
/// Default of `slack.remind_before`.
pub const DEFAULT_SLACK_REMIND_BEFORE: &str = "5m";

/// `[slack]`: an interactive message per request, with Approve and Deny buttons whose clicks
/// Slack posts to `{web.public_url}/slack/actions`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// File holding the bot token (`xoxb-...`; scopes `chat:write`, `users:read`,
    /// `users:read.email`).
    pub bot_token_file: PathBuf,
    /// File holding the app's signing secret, which authenticates callbacks.
    pub signing_secret_file: PathBuf,
    /// Web API base URL (default [`DEFAULT_SLACK_API`]).
    #[serde(default)]
    pub api_base_url: Option<String>,
    /// Channel (`#name` or an id) for requests whose rule names none in `notify.slack`. When
    /// absent, only requests of rules that name a channel are posted.
    #[serde(default)]
    pub default_channel: Option<String>,
    /// How far a callback's timestamp may be from now (default
    /// [`DEFAULT_SLACK_REPLAY_WINDOW`], between 30s and 15m).
    #[serde(default)]
    pub replay_window: Option<String>,
    /// How long before a pending request's deadline a reminder is posted in its message's
    /// thread (default [`DEFAULT_SLACK_REMIND_BEFORE`]; `"0s"`: never). Only for requests that
    /// wait at least twice as long in all.
    #[serde(default)]
    pub remind_before: Option<String>,
}

impl SlackConfig {
    /// How long before a deadline to remind; `None` when reminders are off.
    pub fn remind_before(&self) -> Result<Option<Duration>, String> {
        let text = self
            .remind_before
            .as_deref()
            .unwrap_or(DEFAULT_SLACK_REMIND_BEFORE);
        let d = humantime::parse_duration(text)
            .map_err(|e| format!("slack.remind_before '{text}': {e}"))?;
        if d.is_zero() {
            return Ok(None);
        }
        if d < Duration::from_secs(1) || d > Duration::from_secs(24 * 3600) {
            return Err(format!(
                "slack.remind_before '{text}' must be 0s (no reminders) or between 1s and 24h"
            ));
        }
        Ok(Some(d))
    }

    /// The Web API base URL without a trailing slash.
    pub fn api_base_url(&self) -> Result<String, String> {
        let text = self.api_base_url.as_deref().unwrap_or(DEFAULT_SLACK_API);
        let u = url::Url::parse(text).map_err(|e| format!("slack.api_base_url '{text}': {e}"))?;
        // Every call carries the bot token.
        check_tls_off_loopback("slack.api_base_url", text, &u, "the bot token")?;
        if u.query().is_some() || u.fragment().is_some() || !u.username().is_empty() {
            return Err(format!(
                "slack.api_base_url '{text}' may not carry credentials, a query or a fragment"
            ));
        }
        Ok(text.trim_end_matches('/').to_string())
    }

    /// The replay window.
    pub fn replay_window(&self) -> Result<Duration, String> {
        let text = self
            .replay_window
            .as_deref()
            .unwrap_or(DEFAULT_SLACK_REPLAY_WINDOW);
        let d = humantime::parse_duration(text)
            .map_err(|e| format!("slack.replay_window '{text}': {e}"))?;
        if d < Duration::from_secs(30) || d > Duration::from_secs(15 * 60) {
            return Err(format!(
                "slack.replay_window '{text}' must be between 30s and 15m"
            ));
        }
        Ok(d)
    }

    fn validate(&self, web: Option<&WebConfig>) -> Result<(), String> {
        self.api_base_url()?;
        self.replay_window()?;
        self.remind_before()?;
        if let Some(ch) = &self.default_channel {
            policy::check_slack_channel(ch).map_err(|m| format!("slack.default_channel {m}"))?;
        }
        for (key, path) in [
            ("slack.bot_token_file", &self.bot_token_file),
            ("slack.signing_secret_file", &self.signing_secret_file),
        ] {
            if path.as_os_str().is_empty() {
                return Err(format!("{key} is empty"));
            }
        }
        if web.is_none() {
            return Err(
                "slack: a [web] table is required: Slack posts button clicks to \
                 {web.public_url}/slack/actions"
                    .into(),
            );
        }
        Ok(())
    }
}

/// `[teams]`: an Adaptive Card per request to a Teams incoming webhook, linking to the request
/// in the console (deciding needs the reviewer's console login).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamsConfig {
    /// File holding the webhook URL (it is a credential: whoever has it may post).
    #[serde(default)]
    pub webhook_url_file: Option<PathBuf>,
    /// The webhook URL itself, when keeping it in this file is acceptable.
    #[serde(default)]
    pub webhook_url: Option<String>,
}

impl TeamsConfig {
    fn validate(&self, web: Option<&WebConfig>) -> Result<(), String> {
        match (&self.webhook_url_file, &self.webhook_url) {
            (Some(_), Some(_)) => {
                return Err("teams: set one of webhook_url_file and webhook_url, not both".into())
            }
            (None, None) => {
                return Err("teams: webhook_url_file (or webhook_url) is required".into())
            }
            (None, Some(u)) => check_webhook_url("teams.webhook_url", u)?,
            (Some(_), None) => {}
        }
        if web.and_then(|w| w.public_url.as_ref()).is_none() {
            return Err(
                "teams: web.public_url is required: cards link to the request in the console"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Checks a Teams webhook URL; `key` names where it came from. The URL is a credential (its
/// path, and for Workflows webhooks its query, let anyone post), so messages show only its
/// scheme, host and port.
pub fn check_webhook_url(key: &str, text: &str) -> Result<(), String> {
    let u = url::Url::parse(text.trim()).map_err(|e| format!("{key}: not a URL: {e}"))?;
    let shown = match (u.host_str(), u.port()) {
        (Some(h), Some(p)) => format!("{}://{h}:{p}/…", u.scheme()),
        (Some(h), None) => format!("{}://{h}/…", u.scheme()),
        (None, _) => format!("{}:…", u.scheme()),
    };
    check_tls_off_loopback(key, &shown, &u, "the webhook's secret")
}

/// Whether `url` names this machine, where plain HTTP does not cross the network: the same
/// rule as for `oidc.issuer` (see [`crate::oidc::check_url`]).
fn is_loopback_url(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        None => false,
    }
}

/// Refuses a URL that would send `what` over the network without TLS: `https://` anywhere,
/// `http://` only to a loopback host, nothing else. `key` and `shown` (the value as it may be
/// printed) name it in the message.
fn check_tls_off_loopback(
    key: &str,
    shown: &str,
    url: &url::Url,
    what: &str,
) -> Result<(), String> {
    match url.scheme() {
        "https" | "http" if url.host_str().is_none_or(str::is_empty) => {
            Err(format!("{key} '{shown}' has no host"))
        }
        "https" => Ok(()),
        "http" if is_loopback_url(url) => Ok(()),
        "http" => Err(format!(
            "{key} '{shown}' must be an https:// URL: over http:// {what} would cross the \
             network readable (http:// is accepted only on loopback)"
        )),
        _ => Err(format!(
            "{key} '{shown}' must be an https:// URL (http:// only on loopback)"
        )),
    }
}

/// `[tls]`: the gRPC listener's certificate and the CA that issues agents' client certificates.
/// The files are re-read when they change (see [`crate::tls`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Server certificate chain (PEM, leaf first).
    pub cert_file: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA certificates (PEM) that agents' client certificates must chain to. When set, agents
    /// authenticate with their certificate only (its DNS name, or its CN when it has none, is
    /// the host id); when unset, with their per-host token.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

/// `[audit]`: checkpoint signing and retention.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Ed25519 signing key (PEM, PKCS#8); generated when absent. Default: `audit-signing-key.pem`
    /// next to a SQLite database, else [`DEFAULT_SIGNING_KEY`].
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
    /// Sign a checkpoint after this many new records (default 10000).
    #[serde(default)]
    pub checkpoint_every: Option<u64>,
    /// ... or this long after the last checkpoint (default "5m").
    #[serde(default)]
    pub checkpoint_interval: Option<String>,
    /// Keep records this long (default "forever").
    #[serde(default)]
    pub retention: Option<String>,
    /// How often to prune (default "1h").
    #[serde(default)]
    pub prune_interval: Option<String>,
}

/// Default signing key path when the database is not a SQLite file.
pub const DEFAULT_SIGNING_KEY: &str = "/var/lib/latch-central/audit-signing-key.pem";

fn duration(field: &str, v: &Option<String>, default: &str) -> Result<Duration, String> {
    let text = v.as_deref().unwrap_or(default);
    humantime::parse_duration(text).map_err(|e| format!("audit.{field} '{text}': {e}"))
}

impl AuditConfig {
    /// Records between checkpoints.
    pub fn checkpoint_every(&self) -> u64 {
        self.checkpoint_every.unwrap_or(10_000)
    }

    /// Time between checkpoints.
    pub fn checkpoint_interval(&self) -> Result<Duration, String> {
        duration("checkpoint_interval", &self.checkpoint_interval, "5m")
    }

    /// How long records are kept (`None`: for ever).
    pub fn retention(&self) -> Result<Option<Duration>, String> {
        match self.retention.as_deref() {
            None | Some("forever") => Ok(None),
            Some(_) => duration("retention", &self.retention, "").map(Some),
        }
    }

    /// Time between prunes.
    pub fn prune_interval(&self) -> Result<Duration, String> {
        duration("prune_interval", &self.prune_interval, "1h")
    }

    fn validate(&self) -> Result<(), String> {
        if self.checkpoint_every() == 0 {
            return Err("audit.checkpoint_every must be at least 1".into());
        }
        if self.checkpoint_interval()?.is_zero() || self.prune_interval()?.is_zero() {
            return Err(
                "audit.checkpoint_interval and audit.prune_interval must be above 0".into(),
            );
        }
        if let Some(r) = self.retention()? {
            if r < Duration::from_secs(24 * 3600) {
                return Err(format!(
                    "audit.retention '{}' is shorter than a day",
                    self.retention.as_deref().unwrap_or_default()
                ));
            }
        }
        Ok(())
    }
}

/// A static reviewer token and the identity it stands for.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewerToken {
    /// The bearer token.
    pub token: String,
    /// Stable subject (user name).
    pub subject: String,
    /// E-mail address.
    #[serde(default)]
    pub email: String,
    /// Groups, for rules that name approver groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Role.
    pub role: Role,
    /// Workload identities (requester strings such as `user:alice`) that are this person.
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// A per-host agent token.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentToken {
    /// The host the token belongs to.
    pub host_id: String,
    /// The bearer token.
    pub token: String,
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN.parse().expect("constant address")
}
fn default_web_listen() -> SocketAddr {
    DEFAULT_WEB_LISTEN.parse().expect("constant address")
}
fn default_database() -> String {
    DEFAULT_DATABASE.to_string()
}
fn default_max_connections() -> u32 {
    8
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: default_listen(),
            database: default_database(),
            metrics_listen: None,
            max_connections: default_max_connections(),
            replica_id: None,
            reviewers: Vec::new(),
            agents: Vec::new(),
            audit: AuditConfig::default(),
            tls: None,
            allow_plaintext: false,
            web: None,
            slack: None,
            teams: None,
            oidc: None,
            break_glass: BreakGlassConfig::default(),
            auto_reviewers: Vec::new(),
        }
    }
}

impl Config {
    /// The configuration of a start without a configuration file: every default, with the
    /// SQLite database (and the audit signing key beside it) in `state_dir`.
    pub fn first_start(state_dir: &Path) -> Config {
        Config {
            database: format!("sqlite://{}", state_dir.join(STATE_DATABASE_FILE).display()),
            ..Config::default()
        }
    }

    /// Reads and validates a configuration file. Relative paths of secret files name systemd
    /// credentials where systemd gives the service some (`$CREDENTIALS_DIRECTORY`).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: p.clone(),
            source,
        })?;
        let mut config = Config::parse(&p, &text)?;
        let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        config.resolve_credentials(credentials.as_deref());
        Ok(config)
    }

    /// Points every relative path of a secret file (TLS key and certificates, Slack token and
    /// signing secret, Teams webhook, OIDC client secret) into `credentials`, the directory
    /// where systemd puts what the unit's `LoadCredential=` lines name: the secrets stay
    /// readable by root alone, and the service's dynamic user still reads them. Without a
    /// credentials directory, relative paths stay relative to the working directory.
    pub fn resolve_credentials(&mut self, credentials: Option<&Path>) {
        let Some(dir) = credentials.filter(|d| d.is_absolute()) else {
            return;
        };
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = dir.join(&*p);
            }
        };
        if let Some(tls) = &mut self.tls {
            resolve(&mut tls.cert_file);
            resolve(&mut tls.key_file);
            if let Some(ca) = &mut tls.client_ca_file {
                resolve(ca);
            }
        }
        if let Some(slack) = &mut self.slack {
            resolve(&mut slack.bot_token_file);
            resolve(&mut slack.signing_secret_file);
        }
        if let Some(url) = self
            .teams
            .as_mut()
            .and_then(|t| t.webhook_url_file.as_mut())
        {
            resolve(url);
        }
        if let Some(secret) = self
            .oidc
            .as_mut()
            .and_then(|o| o.console_client_secret_file.as_mut())
        {
            resolve(secret);
        }
        for a in &mut self.auto_reviewers {
            resolve(&mut a.secret_file);
        }
    }

    /// Parses and validates configuration text; `path` names it in messages.
    pub fn parse(path: &str, text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_string(),
            source,
        })?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_string(),
            message,
        })?;
        Ok(config)
    }

    /// The audit signing key's path.
    pub fn signing_key_path(&self) -> PathBuf {
        if let Some(p) = &self.audit.signing_key {
            return p.clone();
        }
        if let Some(rest) = self.database.strip_prefix("sqlite:") {
            let path = rest
                .trim_start_matches("//")
                .split('?')
                .next()
                .unwrap_or("");
            if let Some(dir) = Path::new(path).parent() {
                if !path.is_empty() && path != ":memory:" {
                    return dir.join("audit-signing-key.pem");
                }
            }
        }
        PathBuf::from(DEFAULT_SIGNING_KEY)
    }

    /// Checks what the schema cannot.
    pub fn validate(&self) -> Result<(), String> {
        self.audit.validate()?;
        if let Some(oidc) = &self.oidc {
            oidc.validate()?;
        }
        if self.break_glass.min_reason_chars < 10 {
            return Err(format!(
                "break_glass.min_reason_chars {} is below 10: a break-glass reason must say why",
                self.break_glass.min_reason_chars
            ));
        }
        if let Some(slack) = &self.slack {
            slack.validate(self.web.as_ref())?;
        }
        let mut names = std::collections::HashSet::new();
        for a in &self.auto_reviewers {
            a.validate()?;
            if !names.insert(a.name.as_str()) {
                return Err(format!(
                    "auto_reviewers: the name '{}' is used twice",
                    a.name
                ));
            }
        }
        if let Some(teams) = &self.teams {
            teams.validate(self.web.as_ref())?;
        }
        if let Some(web) = &self.web {
            web.validate(self.allow_plaintext)?;
        }
        if self.tls.is_none() && !self.allow_plaintext && !self.listen.ip().is_loopback() {
            return Err(format!(
                "listen {} is not a loopback address and there is no [tls]: agent and reviewer \
                 tokens would cross the network in clear text; configure [tls] (cert_file, \
                 key_file, client_ca_file) or, when something else encrypts the traffic, set \
                 allow_plaintext = true",
                self.listen
            ));
        }
        if !(self.database.starts_with("sqlite:")
            || self.database.starts_with("postgres://")
            || self.database.starts_with("postgresql://"))
        {
            return Err(format!(
                "database '{}' must start with sqlite:, postgres:// or postgresql://",
                crate::store::redact_url(&self.database)
            ));
        }
        if self.max_connections == 0 || self.max_connections > 1000 {
            return Err(format!(
                "max_connections {} must be between 1 and 1000",
                self.max_connections
            ));
        }
        let mut tokens = HashSet::new();
        for (i, r) in self.reviewers.iter().enumerate() {
            if r.token.len() < 8 {
                return Err(format!(
                    "reviewers[{i}] ('{}'): token must be at least 8 characters",
                    r.subject
                ));
            }
            if r.subject.trim().is_empty() {
                return Err(format!("reviewers[{i}]: subject is empty"));
            }
            if !tokens.insert(r.token.as_str()) {
                return Err(format!(
                    "reviewers[{i}] ('{}'): token is used twice",
                    r.subject
                ));
            }
        }
        let mut hosts = HashSet::new();
        for (i, a) in self.agents.iter().enumerate() {
            if a.token.len() < 8 {
                return Err(format!(
                    "agents[{i}] ('{}'): token must be at least 8 characters",
                    a.host_id
                ));
            }
            if a.host_id.trim().is_empty() {
                return Err(format!("agents[{i}]: host_id is empty"));
            }
            if !tokens.insert(a.token.as_str()) {
                return Err(format!(
                    "agents[{i}] ('{}'): token is used twice",
                    a.host_id
                ));
            }
            if !hosts.insert(a.host_id.as_str()) {
                return Err(format!("agents[{i}]: host '{}' is listed twice", a.host_id));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_on_one_host() {
        let c = Config::parse("c.toml", "").expect("empty config");
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.database, DEFAULT_DATABASE);
        assert!(c.listen.ip().is_loopback());
    }

    #[test]
    fn a_start_without_a_file_keeps_its_state_in_the_state_directory() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(name, _)| *name == k)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            }
        };
        for (vars, root, want) in [
            (
                &[
                    ("STATE_DIRECTORY", "/var/lib/latch-central:/var/lib/other"),
                    ("HOME", "/h"),
                ][..],
                false,
                "/var/lib/latch-central",
            ),
            (&[("STATE_DIRECTORY", "/srv/s")][..], true, "/srv/s"),
            (&[("HOME", "/root")][..], true, DEFAULT_STATE_DIR),
            (
                &[("STATE_DIRECTORY", "rel"), ("HOME", "/root")][..],
                true,
                DEFAULT_STATE_DIR,
            ),
            (
                &[("XDG_STATE_HOME", "/x/state"), ("HOME", "/h")][..],
                false,
                "/x/state/latch",
            ),
            (
                &[("XDG_STATE_HOME", "x/state"), ("HOME", "/h")][..],
                false,
                "/h/.local/state/latch",
            ),
            (
                &[("HOME", "/home/ann")][..],
                false,
                "/home/ann/.local/state/latch",
            ),
        ] {
            let dir = first_start_state_dir(env(vars), root).expect("a state directory");
            assert_eq!(dir, PathBuf::from(want), "{vars:?} root={root}");
        }
        for vars in [&[][..], &[("HOME", "home/ann")][..]] {
            let e = first_start_state_dir(env(vars), false).expect_err("nowhere");
            assert!(e.to_string().contains("STATE_DIRECTORY"), "{e}");
        }

        let c = Config::first_start(Path::new("/tmp/s"));
        c.validate().expect("the defaults are valid");
        assert_eq!(c.database, "sqlite:///tmp/s/central.db");
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(
            c.signing_key_path(),
            PathBuf::from("/tmp/s/audit-signing-key.pem")
        );
        assert_eq!(
            Config::first_start(Path::new(DEFAULT_STATE_DIR)).database,
            DEFAULT_DATABASE,
            "root's first start uses the documented default"
        );
    }

    #[test]
    fn web_console_is_served_only_when_configured() {
        let c = Config::parse("c.toml", "").expect("empty");
        assert!(c.web.is_none());
        let c = Config::parse("c.toml", "[web]").expect("defaults");
        let web = c.web.expect("[web]");
        assert_eq!(web.listen.to_string(), DEFAULT_WEB_LISTEN);
        assert_eq!(
            web.public_url(web.listen).as_deref(),
            Ok("http://127.0.0.1:7480")
        );
        assert_eq!(web.session_lifetime(), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(web.login_scopes(), ["openid", "profile", "email"]);
        let c = Config::parse(
            "c.toml",
            "[web]\npublic_url = \"https://latch.example.com/\"\nsession_lifetime = \"1h\"",
        )
        .expect("https");
        let web = c.web.expect("[web]");
        assert_eq!(
            web.public_url(web.listen).as_deref(),
            Ok("https://latch.example.com")
        );
        let c = Config::parse(
            "c.toml",
            "allow_plaintext = true\n[web]\nlisten = \"0.0.0.0:7480\"\npublic_url = \"https://latch.example.com\"",
        )
        .expect("behind a TLS proxy");
        assert!(c.web.is_some());
    }

    #[test]
    fn bad_web_settings_name_their_key() {
        for (text, needle) in [
            ("[web]\nlisen = \"x\"", "lisen"),
            (
                "[web]\npublic_url = \"latch.example.com\"",
                "web.public_url 'latch.example.com'",
            ),
            (
                "[web]\npublic_url = \"ftp://latch.example.com\"",
                "scheme must be http or https",
            ),
            (
                "[web]\npublic_url = \"https://latch.example.com/console\"",
                "only scheme, host and port",
            ),
            (
                "[web]\npublic_url = \"https://u:p@latch.example.com\"",
                "credentials",
            ),
            (
                "[web]\nsession_lifetime = \"forever\"",
                "web.session_lifetime 'forever'",
            ),
            (
                "[web]\nsession_lifetime = \"10s\"",
                "between 1 minute and 30 days",
            ),
            (
                "[web]\nlogin_scopes = [\"email\"]",
                "must include \"openid\"",
            ),
            (
                "[web]\nlogin_scopes = [\"openid\", \"a b\"]",
                "'a b' is not a scope",
            ),
            ("[web]\nlisten = \"0.0.0.0:7480\"", "not a loopback address"),
            (
                "allow_plaintext = true\n[web]\nlisten = \"0.0.0.0:7480\"",
                "must be https://",
            ),
        ] {
            let e = Config::parse("c.toml", text).expect_err(text);
            assert!(e.to_string().contains(needle), "{text}: {e}");
        }
    }

    /// The shipped unit's dynamic user can write only its `StateDirectory=`: the defaults and
    /// the example configuration must keep central's files there.
    #[test]
    fn the_unit_the_defaults_and_the_example_agree_on_the_state_directory() {
        let unit = include_str!("../../systemd/latch-central.service");
        let dirs: Vec<&str> = unit
            .lines()
            .filter_map(|l| l.strip_prefix("StateDirectory="))
            .collect();
        assert_eq!(dirs.len(), 1, "one StateDirectory= in the unit: {dirs:?}");
        let state = format!("/var/lib/{}", dirs[0].trim());
        assert_eq!(state, DEFAULT_STATE_DIR);
        assert_eq!(
            DEFAULT_DATABASE,
            format!("sqlite://{state}/{STATE_DATABASE_FILE}")
        );
        assert!(Path::new(DEFAULT_SIGNING_KEY).starts_with(&state));
        let example = Config::parse(
            "central.example.toml",
            include_str!("../central.example.toml"),
        )
        .expect("example");
        assert_eq!(example.database, DEFAULT_DATABASE);
        assert!(example.signing_key_path().starts_with(&state));
        // The configuration file holds tokens: it stays root's, and systemd hands a copy to the
        // dynamic user as a credential, which every command of the unit reads.
        assert!(
            unit.lines()
                .any(|l| l == format!("LoadCredential=central.toml:{DEFAULT_CONFIG_FILE}")),
            "the unit loads the default configuration file as a credential"
        );
        for command in ["ExecStartPre=", "ExecStart="] {
            let line = unit
                .lines()
                .find(|l| l.starts_with(command))
                .unwrap_or_else(|| panic!("{command} in the unit"));
            assert!(
                line.ends_with("--config %d/central.toml"),
                "{command} reads the credential: {line}"
            );
        }
        assert_eq!(DEFAULT_CONFIG_FILE, "/etc/latch/central.toml");
    }

    #[test]
    fn relative_secret_paths_name_systemd_credentials() {
        let text = "[tls]\ncert_file = \"central.pem\"\nkey_file = \"/etc/latch/central.key\"\n\
                    client_ca_file = \"agents-ca.pem\"\n\
                    [web]\npublic_url = \"https://latch.example.com\"\n\
                    [slack]\nbot_token_file = \"slack-bot-token\"\n\
                    signing_secret_file = \"sub/slack-signing-secret\"\n\
                    [teams]\nwebhook_url_file = \"teams-webhook-url\"\n";
        let parsed = Config::parse("c.toml", text).expect("valid");
        let mut c = parsed.clone();
        c.resolve_credentials(Some(Path::new("/run/credentials/latch-central.service")));
        let creds = |f: &str| PathBuf::from("/run/credentials/latch-central.service").join(f);
        let tls = c.tls.as_ref().expect("tls");
        let slack = c.slack.as_ref().expect("slack");
        let teams = c.teams.as_ref().expect("teams");
        for (field, got, want) in [
            ("tls.cert_file", &tls.cert_file, creds("central.pem")),
            // An absolute path is the file it names.
            (
                "tls.key_file",
                &tls.key_file,
                PathBuf::from("/etc/latch/central.key"),
            ),
            (
                "tls.client_ca_file",
                tls.client_ca_file.as_ref().expect("ca"),
                creds("agents-ca.pem"),
            ),
            (
                "slack.bot_token_file",
                &slack.bot_token_file,
                creds("slack-bot-token"),
            ),
            (
                "slack.signing_secret_file",
                &slack.signing_secret_file,
                creds("sub/slack-signing-secret"),
            ),
            (
                "teams.webhook_url_file",
                teams.webhook_url_file.as_ref().expect("url"),
                creds("teams-webhook-url"),
            ),
        ] {
            assert_eq!(got, &want, "{field}");
        }
        // No credentials directory (or a relative one, which systemd never sets): unchanged.
        for dir in [None, Some(Path::new("run/credentials"))] {
            let mut c = parsed.clone();
            c.resolve_credentials(dir);
            assert_eq!(
                c.slack.as_ref().map(|s| s.bot_token_file.clone()),
                Some(PathBuf::from("slack-bot-token")),
                "{dir:?}"
            );
        }
    }

    #[test]
    fn example_is_valid() {
        let text = include_str!("../central.example.toml");
        let c = Config::parse("central.example.toml", text).expect("example");
        assert!(
            c.reviewers.is_empty(),
            "the example must not enable static reviewer tokens"
        );
        let oidc = c.oidc.as_ref().expect("the example configures [oidc]");
        assert_eq!(oidc.roles.get("dba-oncall"), Some(&Role::Approver));
        assert!(!c.break_glass.enabled, "break-glass is off unless enabled");
        assert_eq!(c.agents[0].host_id, "web-1");
        assert_eq!(c.audit.retention(), Ok(None));
        assert_eq!(c.signing_key_path(), PathBuf::from(DEFAULT_SIGNING_KEY));
        assert_eq!(
            c.web.as_ref().map(|w| w.listen.to_string()).as_deref(),
            Some(DEFAULT_WEB_LISTEN),
            "the example serves the console on loopback"
        );
    }

    #[test]
    fn signing_key_defaults_next_to_sqlite() {
        let c = Config::parse("c.toml", "database = \"sqlite:///srv/latch/c.db\"").expect("c");
        assert_eq!(
            c.signing_key_path(),
            PathBuf::from("/srv/latch/audit-signing-key.pem")
        );
        let c = Config::parse("c.toml", "[audit]\nretention = \"400days\"").expect("c");
        assert_eq!(
            c.audit.retention(),
            Ok(Some(Duration::from_secs(400 * 86_400)))
        );
    }

    #[test]
    fn automatic_reviewers_are_checked() {
        let base = |extra: &str| {
            format!(
                "[[auto_reviewers]]\nname = \"risk-bot\"\nurl = \"https://bot.internal/review\"\nsecret_file = \"/etc/latch/bot.secret\"\n{extra}"
            )
        };
        let ok = Config::parse("c.toml", &base("")).expect("valid");
        let a = &ok.auto_reviewers[0];
        assert_eq!(a.timeout(), Ok(Duration::from_secs(5)));
        assert_eq!(a.breaker_cooldown(), Ok(Duration::from_secs(600)));
        assert_eq!((a.breaker_window, a.breaker_max_failures), (20, 3));
        let cases = [
            (base("timeout = \"2m\""), "timeout '2m' is out of range"),
            (base("timeout = \"soon\""), "timeout 'soon'"),
            (
                base("breaker_window = 1"),
                "breaker_window 1 is out of range",
            ),
            (
                base("breaker_max_approve_share = 1.5"),
                "breaker_max_approve_share 1.5 is out of range",
            ),
            (base("breaker_max_failures = 0"), "breaker_max_failures 0"),
            (base("breaker_cooldown = \"0s\""), "breaker_cooldown '0s'"),
            (base("model = \"x\""), "unknown field `model`"),
            (
                base("").replace("https://bot.internal", "http://bot.internal"),
                "auto_reviewers 'risk-bot'.url",
            ),
            (
                base("").replace("risk-bot", "risk bot"),
                "name 'risk bot' is not a reviewer name",
            ),
            (
                format!("{}\n{}", base(""), base("")),
                "the name 'risk-bot' is used twice",
            ),
        ];
        for (text, want) in cases {
            let e = Config::parse("c.toml", &text).expect_err(&text).to_string();
            assert!(e.contains(want), "{want:?} not in {e:?}");
        }
        // Plain HTTP is fine on loopback.
        Config::parse(
            "c.toml",
            &base("").replace("https://bot.internal", "http://127.0.0.1:7460"),
        )
        .expect("loopback");
    }

    #[test]
    fn unknown_fields_are_refused_with_their_place() {
        let e = Config::parse("c.toml", "listen = \"127.0.0.1:1\"\nlisen = 3\n").expect_err("typo");
        let m = e.to_string();
        assert!(m.starts_with("c.toml:") && m.contains("lisen"), "{m}");
        let e = Config::parse(
            "c.toml",
            "[[reviewers]]\ntoken = \"12345678\"\nsubject = \"a\"\nrole = \"boss\"\n",
        )
        .expect_err("role");
        assert!(e.to_string().contains("boss"), "{e}");
    }

    #[test]
    fn identity_settings_are_checked_with_their_key() {
        let oidc = "[oidc]\nissuer = \"https://idp.example.com\"\naudiences = [\"latch\"]\n";
        for (text, needle) in [
            (format!("{oidc}[oidc.roles]\nops = \"root\""), "root"),
            (format!("{oidc}audince = 1\n[oidc.roles]\nops = \"admin\""), "audince"),
            (oidc.to_string(), "oidc.roles is empty"),
            (
                "[oidc]\nissuer = \"http://idp.example.com\"\naudiences = [\"a\"]\n[oidc.roles]\nops = \"admin\"".into(),
                "oidc.issuer 'http://idp.example.com' must be an https:// URL",
            ),
            (format!("{oidc}leeway = \"1d\"\n[oidc.roles]\nops = \"admin\""), "oidc.leeway '1d'"),
            ("[break_glass]\nmin_reason_chars = 3".into(), "break_glass.min_reason_chars 3"),
            ("[break_glass]\nenable = true".into(), "enable"),
        ] {
            let e = Config::parse("c.toml", &text).expect_err(&text);
            let m = e.to_string();
            assert!(m.starts_with("c.toml:") && m.contains(needle), "{text}: {m}");
        }
        let c = Config::parse(
            "c.toml",
            &format!("{oidc}[oidc.roles]\nops = \"admin\"\n[break_glass]\nenabled = true"),
        )
        .expect("valid");
        assert!(c.break_glass.enabled);
        assert_eq!(
            c.break_glass.min_reason_chars,
            DEFAULT_BREAK_GLASS_MIN_REASON
        );
        assert!(!Config::default().break_glass.enabled);
    }

    #[test]
    fn impossible_settings_are_refused() {
        for (text, needle) in [
            ("database = \"mysql://x\"", "must start with"),
            ("[audit]\nretention = \"1h\"", "shorter than a day"),
            ("[audit]\nretention = \"soon\"", "audit.retention 'soon'"),
            ("[audit]\ncheckpoint_every = 0", "at least 1"),
            ("[[reviewers]]\ntoken = \"short\"\nsubject = \"a\"\nrole = \"viewer\"", "at least 8"),
            (
                "[[agents]]\nhost_id = \"h\"\ntoken = \"12345678\"\n[[agents]]\nhost_id = \"h\"\ntoken = \"abcdefgh\"",
                "listed twice",
            ),
            (
                "[[agents]]\nhost_id = \"h\"\ntoken = \"12345678\"\n[[reviewers]]\ntoken = \"12345678\"\nsubject = \"a\"\nrole = \"admin\"",
                "used twice",
            ),
        ] {
            let e = Config::parse("c.toml", text).expect_err(text);
            assert!(e.to_string().contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn slack_api_base_url_needs_tls_off_loopback() {
        let base = "[web]\n[slack]\nbot_token_file = \"/t\"\nsigning_secret_file = \"/s\"\n";
        for (url, refusal) in [
            ("https://slack.com/api", None),
            ("https://10.0.0.7:8443/api", None),
            ("http://127.0.0.1:9000/api", None),
            ("http://127.8.9.10/api", None),
            ("http://[::1]:9000/api", None),
            ("http://localhost:9000/api", None),
            ("http://LOCALHOST/api", None),
            (
                "http://slack.com/api",
                Some("would cross the network readable"),
            ),
            (
                "http://10.0.0.7:9000/api",
                Some("would cross the network readable"),
            ),
            (
                "http://[2001:db8::1]/api",
                Some("would cross the network readable"),
            ),
            (
                "http://localhost.example.com/api",
                Some("would cross the network readable"),
            ),
            (
                "http://0.0.0.0:9000/api",
                Some("would cross the network readable"),
            ),
            ("ftp://localhost/api", Some("must be an https:// URL")),
            ("ws://127.0.0.1/api", Some("must be an https:// URL")),
            ("file:///api", Some("must be an https:// URL")),
        ] {
            let text = format!("{base}api_base_url = \"{url}\"\n");
            match (Config::parse("c.toml", &text), refusal) {
                (Ok(c), None) => {
                    let slack = c.slack.expect("[slack]");
                    assert_eq!(slack.api_base_url().as_deref(), Ok(url), "{url}");
                }
                (Err(e), Some(needle)) => {
                    let m = e.to_string();
                    assert!(
                        m.contains(&format!("slack.api_base_url '{url}'")) && m.contains(needle),
                        "{url}: {m}"
                    );
                }
                (Ok(_), Some(_)) => panic!("{url} was accepted"),
                (Err(e), None) => panic!("{url} was refused: {e}"),
            }
        }
    }

    #[test]
    fn teams_webhook_needs_tls_off_loopback_and_stays_secret() {
        for (url, refusal) in [
            ("https://example.webhook.office.com/webhookb2/g@t/IncomingWebhook/SECRET/x", None),
            (
                "https://prod-1.westus.logic.azure.com:443/workflows/w/triggers/manual/paths/invoke?sig=SECRET",
                None,
            ),
            ("http://127.0.0.1:8080/webhookb2/SECRET", None),
            ("http://[::1]:8080/webhookb2/SECRET", None),
            ("http://localhost/webhookb2/SECRET", None),
            (
                "http://example.webhook.office.com/webhookb2/SECRET",
                Some("teams.webhook_url 'http://example.webhook.office.com/…'"),
            ),
            (
                "http://10.1.2.3:8080/webhookb2/SECRET",
                Some("teams.webhook_url 'http://10.1.2.3:8080/…'"),
            ),
            ("ftp://localhost/SECRET", Some("teams.webhook_url 'ftp://localhost/…'")),
        ] {
            match (check_webhook_url("teams.webhook_url", url), refusal) {
                (Ok(()), None) => {}
                (Err(m), Some(needle)) => {
                    assert!(m.contains(needle), "{url}: {m}");
                    assert!(m.contains("https://"), "{url}: {m}");
                    assert!(!m.contains("SECRET"), "the credential leaked: {m}");
                }
                (Ok(()), Some(_)) => panic!("{url} was accepted"),
                (Err(m), None) => panic!("{url} was refused: {m}"),
            }
        }
        let web = "[web]\npublic_url = \"https://latch.example.com\"\n";
        let e = Config::parse(
            "c.toml",
            &format!("{web}[teams]\nwebhook_url = \"http://teams.example/hook/SECRET\"\n"),
        )
        .expect_err("plain http to a remote host");
        let m = e.to_string();
        assert!(
            m.contains("teams.webhook_url 'http://teams.example/…'") && !m.contains("SECRET"),
            "{m}"
        );
    }

    #[test]
    fn plaintext_off_loopback_needs_tls_or_an_explicit_yes() {
        let e = Config::parse("c.toml", "listen = \"0.0.0.0:7443\"").expect_err("plaintext");
        let m = e.to_string();
        assert!(
            m.contains("listen 0.0.0.0:7443 is not a loopback address")
                && m.contains("allow_plaintext = true"),
            "{m}"
        );
        let c = Config::parse(
            "c.toml",
            "listen = \"0.0.0.0:7443\"\nallow_plaintext = true",
        )
        .expect("explicit");
        assert!(c.allow_plaintext && c.tls.is_none());
        let c = Config::parse(
            "c.toml",
            "listen = \"[::]:7443\"\n[tls]\ncert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\nclient_ca_file = \"/ca.pem\"",
        )
        .expect("tls");
        let tls = c.tls.expect("tls");
        assert_eq!(tls.client_ca_file, Some(PathBuf::from("/ca.pem")));
        Config::parse("c.toml", "listen = \"[::1]:7443\"").expect("loopback v6");
        let e = Config::parse("c.toml", "[tls]\ncert_file = \"/c.pem\"\n").expect_err("no key");
        assert!(e.to_string().contains("key_file"), "{e}");
        let e = Config::parse(
            "c.toml",
            "[tls]\ncert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\nca_file = \"/x\"\n",
        )
        .expect_err("typo");
        assert!(e.to_string().contains("ca_file"), "{e}");
    }
}
