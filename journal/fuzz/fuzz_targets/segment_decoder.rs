//! The segment decoder on arbitrary bytes: no panic, the intact prefix it reports reads back
//! the same records without damage, and re-encoding those records reads back identically.
//!
//! Run by `cargo xtask test` and `cargo xtask fuzz`.

#![no_main]

use journal::frame::{encode_frame, encode_header, scan_segment};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let scan = scan_segment(data);
    let valid_len = usize::try_from(scan.valid_len).expect("fits in memory");
    assert!(
        valid_len <= data.len(),
        "intact prefix longer than the input"
    );
    assert_eq!(
        scan.damage.is_none(),
        valid_len == data.len() && scan.first_seq.is_some()
    );

    let Some(first_seq) = scan.first_seq else {
        assert!(scan.records.is_empty());
        return;
    };
    let prefix = scan_segment(&data[..valid_len]);
    assert_eq!(prefix.records, scan.records);
    assert!(
        prefix.damage.is_none(),
        "the intact prefix is damaged: {:?}",
        prefix.damage
    );

    let mut reencoded = encode_header(first_seq).to_vec();
    for record in &scan.records {
        reencoded.extend(encode_frame(record).expect("a decoded record encodes"));
    }
    let again = scan_segment(&reencoded);
    assert_eq!(again.records, scan.records);
    assert!(again.damage.is_none());
});
