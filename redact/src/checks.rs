//! Validators that turn a pattern match into a finding, or reject it.
//!
//! Each validator sees the whole text and the span the pattern matched, and answers with the
//! span to mask (possibly narrower than the match) or `None` when the match is not what the
//! pattern is after (a number failing Luhn, a date that looks like a phone number, ...).

use std::net::{Ipv4Addr, Ipv6Addr};

use base64::Engine as _;

/// A validator: `(text, start, end) -> span to mask`.
pub(crate) type Check = fn(&str, usize, usize) -> Option<(usize, usize)>;

pub(crate) fn accept(_text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    Some((start, end))
}

fn char_before(text: &str, at: usize) -> Option<char> {
    text[..at].chars().next_back()
}

fn char_after(text: &str, at: usize) -> Option<char> {
    text[at..].chars().next()
}

/// The character after the one at `at` (used to look past a separator).
fn second_char_after(text: &str, at: usize) -> Option<char> {
    let mut chars = text[at..].chars();
    chars.next();
    chars.next()
}

/// A number-like value must not be glued to letters, digits or the separators that make it
/// part of a longer token (`v1.2.3`, `host:5551234`, `2024-01-15T10:30:00`, hex ids, paths).
fn isolated_number(text: &str, start: usize, end: usize) -> bool {
    let before_ok = match char_before(text, start) {
        None => true,
        Some(c) => !(c.is_alphanumeric() || matches!(c, '_' | '.' | '-' | '/' | '+' | '#' | '\\')),
    };
    let before_ok = before_ok
        && !(char_before(text, start) == Some(':')
            && text[..start.saturating_sub(1)]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_digit()));
    let after_ok = match char_after(text, end) {
        None => true,
        Some(c) if c.is_alphanumeric() || matches!(c, '_' | '/' | '\\') => false,
        Some('.' | '-' | ':' | ',') => {
            !second_char_after(text, end).is_some_and(|c| c.is_ascii_digit())
        }
        Some(_) => true,
    };
    before_ok && after_ok
}

fn digits_of(s: &str) -> Vec<u8> {
    s.bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .collect()
}

/// Luhn checksum over digits given most significant first.
pub(crate) fn luhn_valid(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 {
                    doubled - 9
                } else {
                    doubled
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Issuer prefixes of the card networks, for digit runs without separators (where epoch
/// timestamps and other long numbers would otherwise pass Luhn one time in ten).
fn plausible_issuer(digits: &[u8]) -> bool {
    let prefix = |n: usize| {
        digits
            .iter()
            .take(n)
            .fold(0u32, |acc, &d| acc * 10 + u32::from(d))
    };
    match digits.first() {
        Some(4) => true,
        Some(5) => (51..=55).contains(&prefix(2)),
        Some(2) => (2221..=2720).contains(&prefix(4)),
        Some(3) => matches!(prefix(2), 30 | 34 | 35 | 36 | 37 | 38 | 39),
        Some(6) => true,
        _ => false,
    }
}

/// Payment card numbers: 13–19 digits, Luhn-valid. A run of separated groups that fails as a
/// whole is retried without its trailing groups, so a card followed by another number is found.
pub(crate) fn card(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    if !isolated_number(text, start, end) {
        return None;
    }
    let candidate = &text[start..end];
    let separated = candidate.contains([' ', '-']);
    let mut end_at = end;
    loop {
        let digits = digits_of(&text[start..end_at]);
        let length_ok = (13..=19).contains(&digits.len());
        if length_ok
            && digits.iter().any(|&d| d != 0)
            && luhn_valid(&digits)
            && (separated || plausible_issuer(&digits))
        {
            return Some((start, end_at));
        }
        if !separated {
            return None;
        }
        // Drop the last group (and its separator) and try again.
        let last_separator = text[start..end_at].rfind([' ', '-'])?;
        end_at = start + last_separator;
        if digits_of(&text[start..end_at]).len() < 13 {
            return None;
        }
    }
}

/// US social security numbers `AAA-GG-SSSS` outside the ranges never issued.
pub(crate) fn ssn(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    if !isolated_number(text, start, end) {
        return None;
    }
    let mut parts = text[start..end].split('-');
    let area: u32 = parts.next()?.parse().ok()?;
    let group: u32 = parts.next()?.parse().ok()?;
    let serial: u32 = parts.next()?.parse().ok()?;
    let valid = area != 0 && area != 666 && area < 900 && group != 0 && serial != 0;
    valid.then_some((start, end))
}

/// IBAN lengths by country (ISO 13616 registry).
fn iban_length(country: &str) -> Option<usize> {
    Some(match country {
        "NO" => 15,
        "BE" => 16,
        "DK" | "FI" | "FK" | "FO" | "GL" | "NL" | "SD" => 18,
        "MK" | "SI" => 19,
        "AT" | "BA" | "EE" | "KZ" | "LT" | "LU" | "MN" | "XK" => 20,
        "CH" | "HR" | "LI" | "LV" => 21,
        "BG" | "BH" | "CR" | "DE" | "GB" | "GE" | "IE" | "ME" | "RS" | "VA" => 22,
        "AE" | "GI" | "IL" | "IQ" | "OM" | "SO" | "TL" => 23,
        "AD" | "CZ" | "ES" | "MD" | "PK" | "RO" | "SA" | "SE" | "SK" | "TN" | "VG" => 24,
        "LY" | "PT" | "ST" => 25,
        "IS" | "TR" => 26,
        "BI" | "DJ" | "FR" | "GR" | "IT" | "MC" | "MR" | "SM" => 27,
        "AL" | "AZ" | "BY" | "CY" | "DO" | "GT" | "HU" | "LB" | "NI" | "PL" | "SV" => 28,
        "BR" | "EG" | "PS" | "QA" | "UA" => 29,
        "JO" | "KW" | "MU" | "YE" => 30,
        "MT" | "SC" => 31,
        "LC" => 32,
        "RU" => 33,
        _ => return None,
    })
}

/// ISO 7064 mod-97-10 over an IBAN given without spaces.
pub(crate) fn iban_checksum_valid(iban: &str) -> bool {
    if iban.len() < 5 || !iban.is_ascii() {
        return false;
    }
    let (head, tail) = iban.split_at(4);
    let mut remainder: u32 = 0;
    for c in tail.chars().chain(head.chars()) {
        let value = match c {
            '0'..='9' => c as u32 - '0' as u32,
            'A'..='Z' => c as u32 - 'A' as u32 + 10,
            _ => return false,
        };
        remainder = if value >= 10 {
            (remainder * 100 + value) % 97
        } else {
            (remainder * 10 + value) % 97
        };
    }
    remainder == 1
}

/// IBANs: the match only anchors the start; the country's length decides where it ends.
pub(crate) fn iban(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    if char_before(text, start).is_some_and(|c| c.is_alphanumeric()) {
        return None;
    }
    let candidate = &text[start..end];
    let expected = iban_length(candidate.get(..2)?)?;
    let mut compact = String::with_capacity(expected);
    let mut cut = None;
    for (offset, c) in candidate.char_indices() {
        if c == ' ' {
            continue;
        }
        compact.push(c);
        if compact.len() == expected {
            cut = Some(start + offset + c.len_utf8());
            break;
        }
    }
    let cut = cut?;
    if char_after(text, cut).is_some_and(|c| c.is_alphanumeric()) {
        return None;
    }
    iban_checksum_valid(&compact).then_some((start, cut))
}

/// Phone numbers: E.164 and a few common national layouts, with plausible digit counts.
pub(crate) fn phone(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    let candidate = &text[start..end];
    let digits = digits_of(candidate);
    let international = candidate.starts_with('+');
    let count_ok = if international {
        (8..=15).contains(&digits.len())
    } else if candidate.starts_with('0') {
        (9..=11).contains(&digits.len())
    } else {
        // North American layouts: optional leading 1, area code not starting with 0 or 1.
        let national = if digits.len() == 11 && digits[0] == 1 {
            &digits[1..]
        } else {
            &digits[..]
        };
        national.len() == 10 && national[0] >= 2
    };
    if !count_ok {
        return None;
    }
    let before = char_before(text, start);
    if international {
        // `tel:+1...` and `phone=+1...` are fine; `a+1...` or `1+1...` are not.
        if before.is_some_and(|c| c.is_alphanumeric() || matches!(c, '+' | '_' | '.' | '-')) {
            return None;
        }
        let after_ok = match char_after(text, end) {
            None => true,
            Some(c) if c.is_alphanumeric() || c == '_' => false,
            Some('.' | '-' | ':') => {
                !second_char_after(text, end).is_some_and(|c| c.is_ascii_digit())
            }
            Some(_) => true,
        };
        return after_ok.then_some((start, end));
    }
    isolated_number(text, start, end).then_some((start, end))
}

/// E-mail addresses, except the `pass@host` tail of a URL's `user:pass@host` (a credential,
/// found by its own pattern).
pub(crate) fn email(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    let local = text[start..end].split('@').next()?;
    if local.starts_with('.') || local.ends_with('.') {
        return None;
    }
    // Inside `scheme://user:pass@host` (before the path starts), the part before `@` is a
    // password, not the local part of an address.
    // Whitespace can be several bytes long (U+00A0): step over the whole character.
    let token_start = text[..start]
        .char_indices()
        .rev()
        .find(|(_, c)| c.is_whitespace())
        .map_or(0, |(i, c)| i + c.len_utf8());
    let before = &text[token_start..start];
    if let Some(scheme_end) = before.rfind("://") {
        let authority_so_far = &before[scheme_end + 3..];
        if authority_so_far.contains(':') && !authority_so_far.contains('/') {
            return None;
        }
    }
    Some((start, end))
}

/// JWTs: the header must decode to a JSON object naming an algorithm.
pub(crate) fn jwt(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    if char_after(text, end).is_some_and(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.')) {
        return None;
    }
    let header = text[start..end].split('.').next()?;
    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()?;
    let value: serde_json::Value = serde_json::from_slice(&decoded).ok()?;
    value.get("alg")?;
    Some((start, end))
}

/// Tokens whose alphabet includes `-` and `_` must end where that alphabet ends.
pub(crate) fn token_end(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    if char_after(text, end).is_some_and(|c| c.is_alphanumeric() || matches!(c, '_' | '-')) {
        return None;
    }
    Some((start, end))
}

/// Model-provider API keys (`sk-…`, `hf_…`): a token of letters and digits, not a word.
pub(crate) fn ai_key(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    token_end(text, start, end)?;
    let body = &text[start..end];
    let has_digit = body.bytes().any(|b| b.is_ascii_digit());
    let has_upper = body.bytes().any(|b| b.is_ascii_uppercase());
    (has_digit && has_upper).then_some((start, end))
}

/// A 40-character AWS secret must not be the start of a longer base64 run.
pub(crate) fn aws_secret(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    if char_after(text, end)
        .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '+' | '='))
    {
        return None;
    }
    Some((start, end))
}

/// Values of `password=`-style pairs, except references to other variables (`$DB_PASS`).
pub(crate) fn secret_value(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    let value = &text[start..end];
    let variable_reference = value.starts_with('$')
        && value[1..]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '{' | '}'));
    (!variable_reference).then_some((start, end))
}

pub(crate) fn ipv4(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    text[start..end].parse::<Ipv4Addr>().ok()?;
    if char_before(text, start).is_some_and(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return None;
    }
    let after_ok = match char_after(text, end) {
        None => true,
        Some(c) if c.is_alphanumeric() || c == '_' => false,
        Some('.') => !second_char_after(text, end).is_some_and(|c| c.is_ascii_digit()),
        Some(_) => true,
    };
    after_ok.then_some((start, end))
}

pub(crate) fn ipv6(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    let candidate = &text[start..end];
    if !candidate.bytes().any(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    candidate.parse::<Ipv6Addr>().ok()?;
    if char_before(text, start).is_some_and(|c| c.is_alphanumeric() || matches!(c, ':' | '.' | '_'))
    {
        return None;
    }
    if char_after(text, end).is_some_and(|c| c.is_alphanumeric() || matches!(c, ':' | '_')) {
        return None;
    }
    Some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_accepts_test_cards_and_rejects_a_changed_digit() {
        assert!(luhn_valid(&digits_of("4111111111111111")));
        assert!(luhn_valid(&digits_of("378282246310005")));
        assert!(!luhn_valid(&digits_of("4111111111111112")));
    }

    #[test]
    fn iban_checksum_accepts_registry_examples_and_rejects_a_changed_digit() {
        assert!(iban_checksum_valid("DE89370400440532013000"));
        assert!(iban_checksum_valid("GB82WEST12345698765432"));
        assert!(!iban_checksum_valid("DE89370400440532013001"));
    }

    #[test]
    fn iban_end_follows_the_country_length() {
        let text = "pay DE89 3704 0044 0532 0130 00 EUR";
        let start = 4;
        let end = start + "DE89 3704 0044 0532 0130 00".len();
        // The pattern may run on into the next group; the country length cuts it back.
        assert_eq!(iban(text, start, text.len()), Some((start, end)));
        assert_eq!(
            iban("DE89 3704 0044 0532 0130 0", 0, 26),
            None,
            "one character short"
        );
    }

    #[test]
    fn ssn_rejects_never_issued_ranges() {
        assert!(ssn("123-45-6789", 0, 11).is_some());
        for invalid in [
            "000-12-3456",
            "666-12-3456",
            "912-12-3456",
            "123-00-4567",
            "123-45-0000",
        ] {
            assert_eq!(ssn(invalid, 0, invalid.len()), None, "{invalid}");
        }
    }
}

#[cfg(test)]
mod multibyte_whitespace {
    use crate::{RedactConfig, Redactor};

    /// Found by the property test: a no-break space (two bytes) right before an address.
    #[test]
    fn address_after_a_no_break_space_is_masked_without_panicking() {
        let r = Redactor::new(&RedactConfig::default()).expect("default config");
        for text in [
            "\u{a0}alice@example.com",
            "x\u{2003}bob@example.org tail",
            "\u{3000}c@d.io",
        ] {
            let out = r.redact(text);
            assert!(!out.text.contains('@'), "{text:?} -> {:?}", out.text);
            assert!(out.text.contains("[EMAIL]"), "{text:?} -> {:?}", out.text);
        }
        let args = vec!["\u{a0}alice@example.com".to_string()];
        assert!(r.redact_args(&args)[0].contains("[EMAIL]"));
    }
}
