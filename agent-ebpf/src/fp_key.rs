//! The host's fingerprint key, read wherever a target is fingerprinted.

use agent_common::FingerprintKey;

use crate::kconf;

/// The key the agent drew, from read-only globals the loader set: no map lookup, so no branch
/// for the verifier to follow twice through the exec program.
#[inline(always)]
pub fn get() -> FingerprintKey {
    FingerprintKey {
        k0: kconf::fp_key_lo(),
        k1: kconf::fp_key_hi(),
    }
}
