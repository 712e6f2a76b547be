//! `agent.toml` text: accepted with checked values, or refused naming the problem.
//!
//! Run by `cargo xtask test` and `cargo xtask fuzz`.

#![no_main]

use latch_agent::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Config::parse("fuzz.toml", &text) {
        // The heartbeat is refreshed well within its own timeout, whatever the rescan period.
        Ok(s) => assert!(s.tick < s.heartbeat_timeout),
        Err(e) => assert!(e.to_string().contains("fuzz.toml")),
    }
});
