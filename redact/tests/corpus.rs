//! The redaction corpus: positives must be masked with the right token, negatives left alone.

use std::path::Path;

use redact::{FindingKind, RedactConfig, Redactor};

fn redactor(config: &RedactConfig) -> Redactor {
    match Redactor::new(config) {
        Ok(r) => r,
        Err(e) => panic!("configuration must compile: {e}"),
    }
}

fn corpus_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => panic!("cannot read {}: {e}", path.display()),
    }
}

fn content_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
}

/// `in:` / `out:` pairs with their line numbers.
fn pairs(name: &str, text: &str) -> Vec<(usize, String, String)> {
    let mut cases = Vec::new();
    let mut lines = content_lines(text);
    while let Some((line, input)) = lines.next() {
        let Some(input) = input.strip_prefix("in:  ") else {
            panic!("{name}:{line}: expected an `in:  ` line");
        };
        let Some((_, output)) = lines.next() else {
            panic!("{name}:{line}: `in:` without `out:`");
        };
        let Some(output) = output.strip_prefix("out: ") else {
            panic!("{name}:{}: expected an `out: ` line", line + 1);
        };
        cases.push((line, input.to_owned(), output.to_owned()));
    }
    cases
}

fn check_pairs(name: &str, config: &RedactConfig) -> usize {
    let redactor = redactor(config);
    let text = corpus_file(name);
    let cases = pairs(name, &text);
    let mut failures = Vec::new();
    for (line, input, expected) in &cases {
        let out = redactor.redact(input);
        if &out.text != expected {
            failures.push(format!(
                "{name}:{line}\n   input: {input}\n     got: {}\n    want: {expected}",
                out.text
            ));
        }
        if expected != input && out.findings.is_empty() {
            failures.push(format!(
                "{name}:{line}: masked text but reported no finding"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    cases.len()
}

#[test]
fn positives_are_masked_with_the_right_token() {
    let checked = check_pairs("positives.txt", &RedactConfig::default());
    assert!(checked >= 60, "corpus shrank to {checked} cases");
}

#[test]
fn ip_addresses_are_masked_only_when_configured() {
    let config = RedactConfig {
        mask_ip: true,
        ..RedactConfig::default()
    };
    check_pairs("ip.txt", &config);
    let default = redactor(&RedactConfig::default());
    assert_eq!(
        default.redact("dst 2001:db8::1 and 10.0.0.1").text,
        "dst 2001:db8::1 and 10.0.0.1"
    );
}

#[test]
fn negatives_are_left_alone() {
    let redactor = redactor(&RedactConfig::default());
    let text = corpus_file("negatives.txt");
    let mut failures = Vec::new();
    let mut checked = 0;
    for (line, input) in content_lines(&text) {
        checked += 1;
        let out = redactor.redact(input);
        if out.text != input || !out.findings.is_empty() {
            failures.push(format!(
                "negatives.txt:{line}\n   input: {input}\n     got: {}",
                out.text
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} negatives were changed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked >= 40, "corpus shrank to {checked} cases");
}

#[test]
fn findings_name_kinds_and_original_spans_without_values() {
    let redactor = redactor(&RedactConfig::default());
    let text = "mail alice@example.com key AKIAIOSFODNN7EXAMPLE";
    let out = redactor.redact(text);
    let found: Vec<(FindingKind, &str)> = out
        .findings
        .iter()
        .map(|f| (f.kind.clone(), &text[f.start..f.end]))
        .collect();
    assert_eq!(
        found,
        vec![
            (FindingKind::Email, "alice@example.com"),
            (FindingKind::AwsAccessKey, "AKIAIOSFODNN7EXAMPLE")
        ]
    );
    let serialized = serde_json::to_string(&out.findings).unwrap_or_default();
    assert!(
        !serialized.contains("alice") && !serialized.contains("AKIA"),
        "{serialized}"
    );
}

const PEM_RSA: &str = "-----BEGIN RSA PRIVATE KEY-----\n\
MIIEowIBAAKCAQEA7bq0gVnqRzVdZQ5cC3PD2U0ZlTHhqO7vYn0wJ0o1nGtqZzqB\n\
Yd0l9gk0rWgq+f5Vf0lz4eQ8Hj5E9VnJq2aQYkQ1yHk3dcv0gB2h8u7t5p1oYw==\n\
-----END RSA PRIVATE KEY-----";

#[test]
fn pem_private_key_blocks_are_masked_whole() {
    let redactor = redactor(&RedactConfig::default());
    let text = format!("key file:\n{PEM_RSA}\ndone");
    let out = redactor.redact(&text);
    assert_eq!(out.text, "key file:\n[PRIVATE_KEY]\ndone");

    let openssh = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----";
    assert_eq!(redactor.redact(openssh).text, "[PRIVATE_KEY]");

    // A public key or a certificate is not a secret.
    let public = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----";
    assert_eq!(redactor.redact(public).text, public);
}

#[test]
fn a_private_key_cut_off_before_its_end_line_is_masked_to_the_end() {
    let redactor = redactor(&RedactConfig::default());
    let cut = &PEM_RSA[..PEM_RSA.len() - 40];
    let out = redactor.redact(&format!("dump: {cut}"));
    assert_eq!(out.text, "dump: [PRIVATE_KEY]");
}

#[test]
fn environment_excerpts_keep_names_and_lose_values() {
    let redactor = redactor(&RedactConfig::default());
    let env = "HOME=/root\nGITHUB_TOKEN=ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8\nDATABASE_URL=postgres://app:pw@db/app\nMYSQL_PWD=x1";
    assert_eq!(
        redactor.redact(env).text,
        "HOME=/root\nGITHUB_TOKEN=[GITHUB_TOKEN]\nDATABASE_URL=postgres://[URL_CREDENTIALS]@db/app\nMYSQL_PWD=[SECRET]"
    );
}

#[test]
fn operator_patterns_take_part_in_overlap_resolution() {
    let config = RedactConfig {
        extra: vec![redact::ExtraPattern {
            name: "ticket".into(),
            regex: r"TICKET-[0-9]{4}".into(),
            replacement: "[TICKET]".into(),
        }],
        ..RedactConfig::default()
    };
    let redactor = redactor(&config);
    let out = redactor.redact("see TICKET-1234 from carol@example.com");
    assert_eq!(out.text, "see [TICKET] from [EMAIL]");
    assert_eq!(out.findings[0].kind, FindingKind::Extra("ticket".into()));
}
