//! `Redactor::redact` on arbitrary text: no panic, well-formed findings, idempotent output;
//! `redact_args` on the same bytes split at NULs.
//!
//! Run by `cargo xtask test` and `cargo xtask fuzz`.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use redact::{RedactConfig, Redactor};

static REDACTOR: LazyLock<Redactor> = LazyLock::new(|| {
    let config = RedactConfig {
        mask_ip: true,
        ..RedactConfig::default()
    };
    Redactor::new(&config).expect("the built-in detectors compile")
});

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let out = REDACTOR.redact(&text);

    let mut previous_end = 0;
    for finding in &out.findings {
        assert!(finding.start < finding.end, "empty finding {finding:?}");
        assert!(
            finding.start >= previous_end,
            "findings overlap or are unsorted"
        );
        assert!(
            finding.end <= text.len(),
            "finding past the end of the input"
        );
        assert!(text.is_char_boundary(finding.start) && text.is_char_boundary(finding.end));
        previous_end = finding.end;
    }
    if out.truncated_bytes == 0 && out.text.len() <= RedactConfig::default().max_input_bytes {
        assert_eq!(
            REDACTOR.redact(&out.text).text,
            out.text,
            "redaction is not idempotent"
        );
    }

    let args: Vec<String> = text.split('\0').map(str::to_owned).collect();
    assert_eq!(REDACTOR.redact_args(&args).len(), args.len());
});
