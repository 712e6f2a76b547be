//! The host's fingerprint key, read wherever a target is fingerprinted.

use agent_common::FingerprintKey;

use crate::counters::{bump, Counter};
use crate::maps::FP_KEY;

/// The key the agent drew. The one-entry array always has its entry; were it missing, the
/// zero key gives fingerprints that match no grant the agent wrote (held, not let through).
#[inline(always)]
pub fn get() -> FingerprintKey {
    match FP_KEY.get(0) {
        Some(k) => *k,
        None => {
            bump(Counter::FpKeyMissing);
            FingerprintKey::default()
        }
    }
}
