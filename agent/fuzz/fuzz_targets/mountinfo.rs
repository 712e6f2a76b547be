//! `/proc/self/mountinfo` as a broken or hostile mount table could present it: parsed or
//! skipped, never a panic.
//!
//! Run by `cargo xtask test` and `cargo xtask fuzz`.

#![no_main]

use latch_agent::programs::mountinfo::{mount_of, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mounts = parse(&text);
    let _ = mount_of(&mounts, "/usr/bin/curl");
    let _ = mount_of(&mounts, &text);
});
