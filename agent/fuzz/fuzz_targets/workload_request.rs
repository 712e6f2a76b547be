//! Workload socket request lines (written by untrusted workloads): parsed or refused with a
//! message, never a panic, and a parsed wait is always within its bounds.
//!
//! Run by `cargo xtask test` and `cargo xtask fuzz`.

#![no_main]

use latch_agent::workload::{parse_request, WorkloadRequest, MAX_WAIT_S};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    match parse_request(&line) {
        Ok(WorkloadRequest::Wait { timeout_s, .. }) => {
            assert!((1..=MAX_WAIT_S).contains(&timeout_s))
        }
        Ok(_) => {}
        Err(e) => assert!(!e.is_empty()),
    }
});
