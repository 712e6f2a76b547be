//! `[oidc]`: which identity provider reviewers log in with, and the checks on it that the schema
//! cannot make. Only the settings: talking to the provider is [`crate::oidc`].

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::role::Role;

/// Default claim holding the user's groups.
pub const DEFAULT_GROUPS_CLAIM: &str = "groups";
/// Default claim holding the user's login name.
pub const DEFAULT_USERNAME_CLAIM: &str = "preferred_username";
/// Default clock leeway for `exp` and `nbf`.
pub const DEFAULT_LEEWAY: &str = "60s";
/// Default shortest time between two JWKS fetches caused by unknown key ids.
pub const DEFAULT_JWKS_REFETCH_INTERVAL: &str = "30s";

/// `[oidc]`: the identity provider reviewers log in with.
///
/// ```toml
/// [oidc]
/// issuer = "https://login.example.com/oauth2/default"
/// audiences = ["latch"]                  # accepted `aud` values (API audience, CLI client id)
/// groups_claim = "groups"                # default
/// username_claim = "preferred_username"  # default; `user:<name>` is this person's workload identity
/// leeway = "60s"                         # default; clock skew allowed on exp and nbf
/// jwks_refetch_interval = "30s"          # default; unknown key ids refetch the JWKS at most this often
/// console_client_id = "latch-console"    # the web console's client (authorization code + PKCE)
/// console_client_secret_file = "/etc/latch/console-client-secret"  # confidential clients only
///
/// [oidc.roles]                           # provider group -> role; a token with none is refused
/// "latch-admins" = "admin"
/// "sre-oncall" = "approver"
/// "engineering" = "viewer"
/// ```
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// Issuer URL, exactly as the provider writes it in `iss` (https, or http on loopback).
    pub issuer: String,
    /// Accepted audiences (`aud`).
    pub audiences: Vec<String>,
    /// Claim with the user's groups (default [`DEFAULT_GROUPS_CLAIM`]).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Claim with the user's login name (default [`DEFAULT_USERNAME_CLAIM`]).
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
    /// Clock leeway for `exp` and `nbf` (default [`DEFAULT_LEEWAY`], at most 5 minutes).
    #[serde(default)]
    pub leeway: Option<String>,
    /// Shortest time between JWKS fetches caused by unknown key ids (default
    /// [`DEFAULT_JWKS_REFETCH_INTERVAL`]).
    #[serde(default)]
    pub jwks_refetch_interval: Option<String>,
    /// Provider group name to role.
    #[serde(default)]
    pub roles: BTreeMap<String, Role>,
    /// The web console's OAuth client id.
    #[serde(default)]
    pub console_client_id: Option<String>,
    /// File holding the web console's client secret (confidential clients).
    #[serde(default)]
    pub console_client_secret_file: Option<PathBuf>,
}

fn default_groups_claim() -> String {
    DEFAULT_GROUPS_CLAIM.into()
}
fn default_username_claim() -> String {
    DEFAULT_USERNAME_CLAIM.into()
}

fn parse_duration(key: &str, v: &Option<String>, default: &str) -> Result<Duration, String> {
    let text = v.as_deref().unwrap_or(default);
    humantime::parse_duration(text).map_err(|e| format!("oidc.{key} '{text}': {e}"))
}

/// Whether `url` may be fetched without TLS: only on this machine.
fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        None => false,
    }
}

/// Checks a URL the provider or the configuration gives: https, or http on loopback. `key`
/// names it in the message.
pub fn check_url(key: &str, text: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(text).map_err(|e| format!("{key} '{text}': {e}"))?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        _ => {
            return Err(format!(
                "{key} '{text}' must be an https:// URL (http:// only on loopback)"
            ))
        }
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{key} '{text}' must not have a query or fragment"));
    }
    Ok(url)
}

impl OidcConfig {
    /// Clock leeway.
    pub fn leeway(&self) -> Result<Duration, String> {
        parse_duration("leeway", &self.leeway, DEFAULT_LEEWAY)
    }

    /// Shortest time between unknown-kid refetches.
    pub fn jwks_refetch_interval(&self) -> Result<Duration, String> {
        parse_duration(
            "jwks_refetch_interval",
            &self.jwks_refetch_interval,
            DEFAULT_JWKS_REFETCH_INTERVAL,
        )
    }

    /// Checks what the schema cannot; messages name the key.
    pub fn validate(&self) -> Result<(), String> {
        check_url("oidc.issuer", &self.issuer)?;
        if self.audiences.is_empty() {
            return Err(
                "oidc.audiences is empty: name the audience(s) tokens are issued for".into(),
            );
        }
        if let Some(i) = self.audiences.iter().position(|a| a.trim().is_empty()) {
            return Err(format!("oidc.audiences[{i}] is empty"));
        }
        if self.groups_claim.trim().is_empty() {
            return Err("oidc.groups_claim is empty".into());
        }
        if self.username_claim.trim().is_empty() {
            return Err("oidc.username_claim is empty".into());
        }
        let leeway = self.leeway()?;
        if leeway > Duration::from_secs(300) {
            return Err(format!(
                "oidc.leeway '{}' is longer than 5 minutes",
                self.leeway.as_deref().unwrap_or_default()
            ));
        }
        self.jwks_refetch_interval()?;
        if self.roles.is_empty() {
            return Err(
                "oidc.roles is empty: map at least one provider group to viewer, approver or admin"
                    .into(),
            );
        }
        if self.roles.keys().any(|g| g.trim().is_empty()) {
            return Err("oidc.roles has an empty group name".into());
        }
        match (&self.console_client_id, &self.console_client_secret_file) {
            (Some(id), _) if id.trim().is_empty() => {
                return Err("oidc.console_client_id is empty".into())
            }
            (None, Some(_)) => {
                return Err(
                    "oidc.console_client_secret_file is set without oidc.console_client_id".into(),
                )
            }
            _ => {}
        }
        Ok(())
    }
}
