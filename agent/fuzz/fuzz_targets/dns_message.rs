//! DNS messages as the resolver proxy reads them, from a workload (a query) and from a server
//! (an answer to a query): read or refused with a reason, never a panic, and an answer's
//! addresses are only those of the names its chain of aliases reaches.
//!
//! Run by `cargo xtask test` and `cargo xtask fuzz`.

#![no_main]

use latch_agent::dns::message::{read_answer, read_query};
use libfuzzer_sys::fuzz_target;

/// A query for `db.test. A`, id 0x1234: the first 4 bytes of the input become the answer's
/// id and flags when they make it look like one.
const QUERY: &[u8] = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x02db\x04test\x00\x00\x01\x00\x01";

fuzz_target!(|data: &[u8]| {
    if let Err(e) = read_query(data) {
        assert!(!e.to_string().is_empty());
    }
    let Ok(q) = read_query(QUERY) else {
        panic!("the fixed query must read");
    };
    match read_answer(&q, data) {
        Ok(a) => {
            assert!(a.names.len() <= 17, "chain of {} names", a.names.len());
            if let Some(first) = a.names.first() {
                assert_eq!(first, "db.test");
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
