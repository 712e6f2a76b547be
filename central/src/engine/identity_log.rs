//! Per-replica memory of which learned identities were written when, so that a busy reviewer
//! does not cost a database write per call.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::auth::Identity;

/// A remembered identity is written again after this long even when nothing changed, so
/// `last_seen_ms` stays roughly current without a write per call.
pub const WRITE_EVERY: Duration = Duration::from_secs(5 * 60);

/// Per-replica memory of when each learned identity was last written, so that a busy reviewer
/// does not cost a database write per call.
#[derive(Debug, Default)]
pub struct IdentityLog {
    written: Mutex<HashMap<(String, String), Written>>,
}

/// When an identity was last written, as written, and whether its address was verified.
type Written = (Instant, Identity, bool);

impl IdentityLog {
    /// Whether `identity` from `issuer`, its address verified or not, needs writing now; marks
    /// it written when it does.
    pub(crate) fn due(&self, issuer: &str, identity: &Identity, email_verified: bool) -> bool {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        let key = (issuer.to_string(), identity.subject.clone());
        match written.get(&key) {
            Some((at, last, verified))
                if last == identity
                    && *verified == email_verified
                    && at.elapsed() < WRITE_EVERY =>
            {
                false
            }
            _ => {
                written.insert(key, (Instant::now(), identity.clone(), email_verified));
                true
            }
        }
    }

    /// Forgets a write that failed, so the next call tries again.
    pub(crate) fn forget(&self, issuer: &str, subject: &str) {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        written.remove(&(issuer.to_string(), subject.to_string()));
    }
}
