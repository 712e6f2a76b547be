//! Properties that hold for any input: no panic, findings are well-formed spans of the
//! original, masked values do not survive, and redaction is idempotent.

use std::sync::LazyLock;

use proptest::prelude::*;
use redact::{RedactConfig, Redacted, Redactor};

/// Values the detectors are after, and near misses, to glue together in random ways.
const FRAGMENTS: &[&str] = &[
    "alice@example.com",
    "+44 20 7946 0958",
    "555-123-4567",
    "4111 1111 1111 1111",
    "4111111111111111",
    "4111 1111 1111 1112",
    "123-45-6789",
    "DE89 3704 0044 0532 0130 00",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8",
    "xoxb-123456789012-AbCdEfGhIj",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln",
    "password=",
    "token: ",
    "Authorization: Bearer ",
    "https://u:p@",
    "-----BEGIN PRIVATE KEY-----",
    "-----END PRIVATE KEY-----",
    "10.0.0.1",
    "::1",
    "[EMAIL]",
    "[SECRET]",
    "\"",
    "'",
    "=",
    ":",
    "@",
    ".",
    "-",
    " ",
    "\n",
    "é",
    "日本",
];

/// Built once: compiling the detectors costs far more than one redaction.
static REDACTORS: LazyLock<[Redactor; 2]> = LazyLock::new(|| {
    let build = |mask_ip| match Redactor::new(&RedactConfig {
        mask_ip,
        ..RedactConfig::default()
    }) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    [build(false), build(true)]
});

fn redactors() -> &'static [Redactor; 2] {
    &REDACTORS
}

fn text_strategy() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        3 => proptest::sample::select(FRAGMENTS).prop_map(str::to_owned),
        1 => "[0-9 .:-]{0,12}",
        1 => "[a-zA-Z0-9_=@/+]{0,12}",
        1 => any::<String>().prop_map(|s| s.chars().take(8).collect::<String>()),
    ];
    proptest::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat())
}

fn assert_well_formed(input: &str, out: &Redacted) {
    let mut previous_end = 0;
    for finding in &out.findings {
        assert!(finding.start < finding.end, "empty finding {finding:?}");
        assert!(
            finding.start >= previous_end,
            "overlapping or unsorted findings {:?}",
            out.findings
        );
        assert!(
            finding.end <= input.len(),
            "finding {finding:?} beyond input of {} bytes",
            input.len()
        );
        assert!(input.is_char_boundary(finding.start) && input.is_char_boundary(finding.end));
        previous_end = finding.end;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn redaction_is_idempotent_and_well_formed(input in text_strategy()) {
        for redactor in redactors() {
            let once = redactor.redact(&input);
            assert_well_formed(&input, &once);
            let twice = redactor.redact(&once.text);
            prop_assert_eq!(&twice.text, &once.text, "input {:?}", input);
        }
    }

    #[test]
    fn arbitrary_strings_never_panic(input in any::<String>()) {
        for redactor in redactors() {
            let out = redactor.redact(&input);
            assert_well_formed(&input, &out);
        }
    }

    #[test]
    fn a_masked_card_leaves_no_digits_of_it(prefix in "[a-z ]{0,8}", suffix in "[a-z ]{0,8}") {
        let input = format!("{prefix} 4111 1111 1111 1111 {suffix}");
        let out = redactors()[0].redact(&input);
        prop_assert!(out.text.contains("[CARD]"));
        prop_assert!(!out.text.contains('1'), "{}", out.text);
    }

    #[test]
    fn argv_redaction_never_panics_and_is_idempotent(args in proptest::collection::vec(text_strategy(), 0..6)) {
        let redactor = &redactors()[0];
        let once = redactor.redact_args(&args);
        prop_assert_eq!(once.len(), args.len());
        prop_assert_eq!(redactor.redact_args(&once), once);
    }
}
