//! Admin socket request lines: parsed or refused with a message, never a panic.
//!
//! Run by `cargo xtask test` and `cargo xtask fuzz`.

#![no_main]

use latch_agent::admin::parse_request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    if let Err(e) = parse_request(&line) {
        assert!(!e.to_string().is_empty());
    }
});
