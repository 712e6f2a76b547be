//! A login at the identity provider in progress, carried by the browser that started it.
//!
//! Central keeps nothing about a login until it completes: starting one needs no
//! authentication, so anything stored per start could be filled by anyone, and a bound on it
//! would refuse everyone's sign-in once a stranger reached it. Instead the browser gets a cookie
//! with the login's `state`, the console path to return to and an expiry, signed with
//! HMAC-SHA256 under a key derived from central's audit signing key (which every replica shares).
//! The cookie is signed, not encrypted, so it holds nothing secret: the OIDC `nonce` and the
//! PKCE code verifier are derived from the same key and the `state` rather than carried, and the
//! verifier, which only central's token request shows, never reaches the browser.
//!
//! The callback accepts the provider's answer only with a cookie that carries central's
//! signature, has not expired, and names the `state` the answer carries; so an answer reaches a
//! session only in the browser that started the login. A browser has one login in progress: a
//! new start replaces the one before.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::session::{random_secret, same_secret, LOGIN_WINDOW};
use crate::error::Result;

/// Prefix of every cookie value; a new format gets a new one.
const VERSION: &str = "v1";

/// Longest part of a refused cookie value that goes into a message.
const SHOWN: usize = 64;

/// The key that signs login cookies and derives their secrets.
#[derive(Clone)]
pub struct LoginKey([u8; 32]);

impl std::fmt::Debug for LoginKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoginKey(..)")
    }
}

fn hmac(key: &[u8]) -> Hmac<Sha256> {
    <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
}

impl LoginKey {
    /// The key for `signing` (the audit signing key): its own, so that nothing signed for logins
    /// can pass for anything else.
    pub fn derive(signing: &ed25519_dalek::SigningKey) -> LoginKey {
        let mut m = hmac(signing.as_bytes());
        m.update(b"latch.console.login.v1");
        LoginKey(m.finalize().into_bytes().into())
    }

    fn tag(&self, label: &str, data: &str) -> Hmac<Sha256> {
        let mut m = hmac(&self.0);
        m.update(label.as_bytes());
        m.update(&[0]);
        m.update(data.as_bytes());
        m
    }

    fn derived(&self, label: &str, state: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.tag(label, state).finalize().into_bytes())
    }
}

/// Why a login cookie was refused. Each carries (the start of) the value refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    /// The browser sent no login cookie.
    #[error("no sign-in is in progress in this browser (no login cookie)")]
    Missing,
    /// Not a value central makes.
    #[error("the login cookie '{value}' is not one this console issued: {why}")]
    Malformed {
        /// The value (shortened).
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The signature does not match: the value was altered or made elsewhere.
    #[error(
        "the login cookie '{value}' does not carry this console's signature (altered or forged)"
    )]
    Forged {
        /// The value (shortened).
        value: String,
    },
    /// The login took longer than [`LOGIN_WINDOW`].
    #[error("the sign-in with state '{state}' expired at {expired} (Unix ms {expires_at_ms})")]
    Expired {
        /// The login's state.
        state: String,
        /// When it expired.
        expires_at_ms: i64,
        /// The same, readable.
        expired: String,
    },
    /// The provider's answer is for another login than this browser's.
    #[error("the answer's state '{got}' is not the state of this browser's sign-in")]
    OtherState {
        /// The answer's state (shortened).
        got: String,
    },
}

impl Refused {
    /// Whether the cookie was altered or not made here (rather than missing, old or for
    /// another login).
    pub fn is_forgery(&self) -> bool {
        matches!(self, Refused::Malformed { .. } | Refused::Forged { .. })
    }
}

fn shown(v: &str) -> String {
    let mut s: String = v.chars().take(SHOWN).collect();
    if s.len() < v.len() {
        s.push('…');
    }
    s.escape_debug().to_string()
}

/// A login in progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingLogin {
    /// The OAuth `state` sent to the provider.
    pub state: String,
    /// The console path to return to.
    #[serde(rename = "next")]
    pub return_to: String,
    /// When the login must have come back (Unix ms).
    #[serde(rename = "exp")]
    pub expires_at_ms: i64,
}

impl PendingLogin {
    /// A new login at `now_ms`, returning to `return_to`.
    pub fn start(return_to: &str, now_ms: i64) -> Result<PendingLogin> {
        Ok(PendingLogin {
            state: random_secret()?,
            return_to: return_to.to_string(),
            expires_at_ms: now_ms + LOGIN_WINDOW.as_millis() as i64,
        })
    }

    /// The OIDC `nonce` of this login.
    pub fn nonce(&self, key: &LoginKey) -> String {
        key.derived("nonce", &self.state)
    }

    /// The PKCE code verifier of this login (43 characters of base64url, as RFC 7636 allows).
    pub fn verifier(&self, key: &LoginKey) -> String {
        key.derived("pkce", &self.state)
    }

    /// The cookie value.
    pub fn seal(&self, key: &LoginKey) -> String {
        // Serialising a struct of strings and an integer cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        let body = format!("{VERSION}.{}", URL_SAFE_NO_PAD.encode(json));
        let tag = URL_SAFE_NO_PAD.encode(key.tag("cookie", &body).finalize().into_bytes());
        format!("{body}.{tag}")
    }

    /// The login a cookie value carries, if central signed it and it has not expired at
    /// `now_ms`.
    pub fn open(key: &LoginKey, value: &str, now_ms: i64) -> Result<PendingLogin, Refused> {
        let malformed = |why| Refused::Malformed {
            value: shown(value),
            why,
        };
        let (body, tag) = value
            .rsplit_once('.')
            .ok_or_else(|| malformed("no signature"))?;
        let (version, payload) = body
            .split_once('.')
            .ok_or_else(|| malformed("no version"))?;
        if version != VERSION {
            return Err(malformed("unknown version"));
        }
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| malformed("the signature is not base64url"))?;
        key.tag("cookie", body)
            .verify_slice(&tag)
            .map_err(|_| Refused::Forged {
                value: shown(value),
            })?;
        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| malformed("the content is not base64url"))?;
        let login: PendingLogin =
            serde_json::from_slice(&json).map_err(|_| malformed("the content is not a login"))?;
        if login.expires_at_ms <= now_ms {
            return Err(Refused::Expired {
                expired: crate::clock::rfc3339(login.expires_at_ms),
                state: shown(&login.state),
                expires_at_ms: login.expires_at_ms,
            });
        }
        Ok(login)
    }

    /// Refuses an answer whose `state` is not this login's.
    pub fn check_state(&self, state: &str) -> Result<(), Refused> {
        if state.is_empty() || !same_secret(state, &self.state) {
            return Err(Refused::OtherState { got: shown(state) });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn key(seed: u8) -> LoginKey {
        LoginKey::derive(&ed25519_dalek::SigningKey::from_bytes(&[seed; 32]))
    }

    fn login() -> PendingLogin {
        PendingLogin::start("/requests/abc?x=1", NOW).expect("random")
    }

    #[test]
    fn a_sealed_login_opens_with_the_same_key_until_it_expires() {
        let (k, l) = (key(1), login());
        let sealed = l.seal(&k);
        assert_eq!(PendingLogin::open(&k, &sealed, NOW), Ok(l.clone()));
        let last = l.expires_at_ms - 1;
        assert_eq!(PendingLogin::open(&k, &sealed, last), Ok(l.clone()));
        assert!(matches!(
            PendingLogin::open(&k, &sealed, l.expires_at_ms),
            Err(Refused::Expired { expires_at_ms, .. }) if expires_at_ms == l.expires_at_ms
        ));
        assert_eq!(
            l.expires_at_ms - NOW,
            LOGIN_WINDOW.as_millis() as i64,
            "the window starts at the start"
        );
    }

    #[test]
    fn altered_forged_and_malformed_cookies_are_refused() {
        let (k, l) = (key(1), login());
        let sealed = l.seal(&k);
        let (body, tag) = sealed.rsplit_once('.').expect("signed");
        // A later expiry, re-encoded, with the old signature.
        let longer = PendingLogin {
            expires_at_ms: l.expires_at_ms + 86_400_000,
            ..l.clone()
        };
        let (longer_body, _) = longer
            .seal(&k)
            .rsplit_once('.')
            .map(|(b, t)| (b.to_string(), t.to_string()))
            .expect("signed");
        let mut flipped = tag.to_string().into_bytes();
        flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).expect("ascii");
        for (what, value) in [
            ("content changed", format!("{longer_body}.{tag}")),
            ("signature changed", format!("{body}.{flipped}")),
            ("signed with another key", l.seal(&key(2))),
        ] {
            let e = PendingLogin::open(&k, &value, NOW).expect_err(what);
            assert!(matches!(e, Refused::Forged { .. }), "{what}: {e:?}");
            assert!(e.is_forgery());
            assert!(
                e.to_string().contains(&value[..20]),
                "{what}: names the value: {e}"
            );
        }
        for (what, value) in [
            ("empty", String::new()),
            ("no signature", "v1".to_string()),
            ("no version", "abc.def".to_string()),
            ("another version", sealed.replacen("v1.", "v0.", 1)),
            ("signature not base64", format!("{body}.!!")),
        ] {
            let e = PendingLogin::open(&k, &value, NOW).expect_err(what);
            assert!(matches!(e, Refused::Malformed { .. }), "{what}: {e:?}");
            assert!(e.is_forgery());
        }
        // Messages show only the start of what was sent, escaped.
        let long = format!("v1.\u{1b}[2J{}", "x".repeat(5000));
        let e = PendingLogin::open(&k, &long, NOW).expect_err("no signature");
        assert!(e.to_string().len() < 300, "{e}");
        assert!(!e.to_string().contains('\u{1b}'), "{e}");
    }

    #[test]
    fn secrets_are_derived_per_login_and_key_and_never_sealed() {
        let (k, a, b) = (key(1), login(), login());
        assert_ne!(a.state, b.state);
        assert_eq!(a.nonce(&k), a.nonce(&k));
        assert_ne!(a.nonce(&k), b.nonce(&k));
        assert_ne!(a.nonce(&k), a.verifier(&k));
        assert_ne!(a.verifier(&k), a.verifier(&key(2)));
        assert_eq!(a.verifier(&k).len(), 43);
        let sealed = a.seal(&k);
        let (_, payload) = sealed
            .rsplit_once('.')
            .and_then(|(b, _)| b.split_once('.'))
            .expect("format");
        let json = String::from_utf8(URL_SAFE_NO_PAD.decode(payload).expect("b64")).expect("utf8");
        assert!(json.contains(&a.state) && json.contains("/requests/abc?x=1"));
        for secret in [a.nonce(&k), a.verifier(&k)] {
            assert!(!json.contains(&secret) && !sealed.contains(&secret));
        }
    }

    #[test]
    fn the_answer_must_carry_this_logins_state() {
        let l = login();
        assert_eq!(l.check_state(&l.state), Ok(()));
        for other in ["", "x", &format!("x{}", l.state), &login().state] {
            assert!(matches!(
                l.check_state(other),
                Err(Refused::OtherState { .. })
            ));
        }
    }
}
