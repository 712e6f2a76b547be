//! Ring-buffer records as the kernel (or a corrupted buffer) could hand them over: decoding
//! accepts or refuses, never panics, and an accepted event serialises.
//!
//! Run by `cargo xtask test` and `cargo xtask fuzz` (which give the build the kernel object the
//! workspace's build made).

#![no_main]

use latch_agent::events::KernelEvent;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ev) = KernelEvent::decode(data) {
        let _ = serde_json::to_string(&ev);
        if let Some(p) = &ev.path {
            assert!(!p.contains('\0'));
        }
    }
});
