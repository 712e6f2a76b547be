//! A dpkg `.list` file as a broken package database could present it: every line an absolute
//! path or skipped, never a panic.
//!
//! Run by `cargo xtask test` and `cargo xtask fuzz`.

#![no_main]

use latch_agent::programs::known::list_paths;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for p in list_paths(&text) {
        assert!(p.starts_with('/') && p != "/." && !p.contains('\0'));
    }
});
