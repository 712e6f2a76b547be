//! How the console is reached and how long its sessions last: resolved at start from `[web]`
//! and the address its listener was bound to.

use std::time::Duration;

/// How the console is reached and how long its sessions last.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// The URL reviewers open, without a trailing slash; empty when the console is not served.
    pub public_url: String,
    /// Cookies carry `Secure` (and the `__Host-` prefix): the public URL is https.
    pub secure_cookies: bool,
    /// Longest session.
    pub session_lifetime: Duration,
    /// Scopes a login at the identity provider asks for.
    pub login_scopes: Vec<String>,
}

impl Settings {
    pub(crate) fn cookie_name(&self, base: &str) -> String {
        if self.secure_cookies {
            format!("__Host-{base}")
        } else {
            base.to_string()
        }
    }
}
