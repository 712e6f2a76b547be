//! `RuleSet::parse` on arbitrary text: it accepts or refuses, never panics; a refusal always
//! names at least one problem, and every accepted rule has a usable id and timeout.
//!
//! Run by `cargo xtask test` and `cargo xtask fuzz`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use policy::RuleSet;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match RuleSet::parse("fuzz.yaml", &text) {
        Ok(rs) => {
            for r in &rs.rules {
                assert_ne!(r.id, 0);
                assert!(
                    r.timeout >= policy::TIMEOUT_RANGE.0 && r.timeout <= policy::TIMEOUT_RANGE.1
                );
                assert!(rs.workloads.iter().any(|w| w.name == r.workload));
            }
        }
        Err(e) => {
            assert!(!e.problems.is_empty());
            let _ = e.to_string();
        }
    }
});
