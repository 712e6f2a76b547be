//! Masking of personal data and secrets.
//!
//! Argv, environment excerpts and any other free text that an agent sends off its host goes
//! through a [`Redactor`] first. It finds e-mail addresses, phone numbers, payment cards (Luhn),
//! US social security numbers, IBANs (mod 97), optionally IP addresses, cloud and SaaS
//! credentials (AWS, GCP, Azure, GitHub, Slack, model providers), bearer tokens, JWTs, PEM
//! private keys, credentials in URLs and the values of `password=`-style pairs, plus any
//! patterns the operator configures, and replaces each with a token such as `[EMAIL]`.
//!
//! This crate owns what counts as sensitive and how it is masked. It must not log, store or
//! send anything: it returns the masked text and where the findings were (kinds and byte spans
//! in the original text, never the values themselves).
//!
//! ```
//! use redact::{RedactConfig, Redactor};
//!
//! let redactor = Redactor::new(&RedactConfig::default())?;
//! let out = redactor.redact("mail alice@example.com, password=hunter2");
//! assert_eq!(out.text, "mail [EMAIL], password=[SECRET]");
//! assert_eq!(out.findings.len(), 2);
//! # Ok::<(), redact::RedactError>(())
//! ```
//!
//! Overlapping findings are merged: the merged span covers all of them, so no fragment of a
//! masked value is left, and the most specific kind (then the longest) names it. Redaction is
//! idempotent: redacting redacted text changes nothing. Input beyond
//! [`RedactConfig::max_input_bytes`] is cut off and marked, so the cost stays bounded.

mod args;
mod checks;
mod detectors;

use std::fmt;

use regex::{CaptureLocations, Regex, RegexBuilder, RegexSet, RegexSetBuilder};
use serde::{Deserialize, Serialize};

/// Default cap on the text examined; the rest is dropped and replaced by a marker.
pub const DEFAULT_MAX_INPUT_BYTES: usize = 64 * 1024;

/// Compiled-size cap for operator-supplied patterns, so one pattern cannot eat the agent's memory.
const EXTRA_PATTERN_SIZE_LIMIT: usize = 1 << 20;

/// Matches longer than this that fail validation are skipped as a whole rather than retried
/// one character later; this keeps the worst case linear in the input.
const RETRY_INSIDE_MAX_MATCH: usize = 64;

/// Redaction runs again over its own output until nothing new is found (a mask can turn a
/// neighbour into a match, e.g. a phone number glued to an e-mail address); this bounds it.
/// Text still turning up new matches after as many passes is withheld whole.
const MAX_PASSES: usize = 16;

/// What to mask beyond the built-in detectors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedactConfig {
    /// Mask IPv4 and IPv6 addresses in free text (off by default: destinations are usually
    /// what a reviewer needs to see).
    pub mask_ip: bool,
    /// Operator-defined patterns.
    pub extra: Vec<ExtraPattern>,
    /// Text beyond this many bytes is dropped and replaced by a marker.
    pub max_input_bytes: usize,
    /// More command-line flags whose value is a secret (`--vault-key`), besides the built-in
    /// `--password`, `--token`, `--secret`, `--api-key` and their relatives.
    pub secret_flags: Vec<String>,
}

impl Default for RedactConfig {
    fn default() -> Self {
        Self {
            mask_ip: false,
            extra: Vec::new(),
            max_input_bytes: DEFAULT_MAX_INPUT_BYTES,
            secret_flags: Vec::new(),
        }
    }
}

/// An operator-defined pattern: every match of `regex` is replaced by `replacement`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraPattern {
    pub name: String,
    pub regex: String,
    pub replacement: String,
}

/// A configuration the redactor refuses, naming the offending pattern or setting.
#[derive(Debug, thiserror::Error)]
pub enum RedactError {
    #[error("redaction pattern #{index} has an empty name")]
    EmptyPatternName { index: usize },
    #[error("redaction pattern '{name}' is defined twice")]
    DuplicatePattern { name: String },
    #[error("redaction pattern '{name}' has an invalid regex: {source}")]
    InvalidPattern {
        name: String,
        #[source]
        source: regex::Error,
    },
    #[error("redaction pattern '{name}' matches the empty string, so it would match everywhere")]
    MatchesEmpty { name: String },
    #[error("redaction pattern '{name}' has an empty replacement")]
    EmptyReplacement { name: String },
    #[error("redaction pattern '{name}' matches the replacement token {token:?}, so masked text would be masked again")]
    MatchesReplacement { name: String, token: String },
    #[error("max_input_bytes must be at least 1024, not {value}")]
    InputLimitTooSmall { value: usize },
    #[error("secret flag {flag:?} must start with '-'")]
    InvalidSecretFlag { flag: String },
    #[error("the redaction patterns together exceed the compiled-size limit: {source}")]
    PatternSetTooLarge {
        #[source]
        source: regex::Error,
    },
    #[error("built-in redaction pattern for {kind} does not compile: {source}")]
    Builtin {
        kind: FindingKind,
        #[source]
        source: regex::Error,
    },
}

/// What a finding is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    Email,
    Phone,
    Card,
    Ssn,
    Iban,
    IpAddress,
    AwsAccessKey,
    AwsSecret,
    GcpKey,
    AzureKey,
    GithubToken,
    SlackToken,
    /// API keys of model providers (`sk-…`, `hf_…`).
    AiApiKey,
    Bearer,
    Jwt,
    PrivateKey,
    /// The value of a `password=`/`token=`/`secret=`/`api_key=` pair or of a secret flag.
    Secret,
    UrlCredentials,
    /// An operator-defined pattern, by name.
    Extra(String),
}

impl FindingKind {
    /// The token that replaces a built-in finding; `None` for operator-defined patterns,
    /// which bring their own.
    pub fn builtin_token(&self) -> Option<&'static str> {
        Some(match self {
            Self::Email => "[EMAIL]",
            Self::Phone => "[PHONE]",
            Self::Card => "[CARD]",
            Self::Ssn => "[SSN]",
            Self::Iban => "[IBAN]",
            Self::IpAddress => "[IP]",
            Self::AwsAccessKey => "[AWS_KEY]",
            Self::AwsSecret => "[AWS_SECRET]",
            Self::GcpKey => "[GCP_KEY]",
            Self::AzureKey => "[AZURE_KEY]",
            Self::GithubToken => "[GITHUB_TOKEN]",
            Self::SlackToken => "[SLACK_TOKEN]",
            Self::AiApiKey => "[AI_API_KEY]",
            Self::Bearer => "[BEARER]",
            Self::Jwt => "[JWT]",
            Self::PrivateKey => "[PRIVATE_KEY]",
            Self::Secret => "[SECRET]",
            Self::UrlCredentials => "[URL_CREDENTIALS]",
            Self::Extra(_) => return None,
        })
    }

    const ALL_BUILTIN: [FindingKind; 18] = [
        Self::Email,
        Self::Phone,
        Self::Card,
        Self::Ssn,
        Self::Iban,
        Self::IpAddress,
        Self::AwsAccessKey,
        Self::AwsSecret,
        Self::GcpKey,
        Self::AzureKey,
        Self::GithubToken,
        Self::SlackToken,
        Self::AiApiKey,
        Self::Bearer,
        Self::Jwt,
        Self::PrivateKey,
        Self::Secret,
        Self::UrlCredentials,
    ];
}

impl fmt::Display for FindingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Extra(name) => write!(f, "pattern '{name}'"),
            other => f.write_str(
                other
                    .builtin_token()
                    .unwrap_or_default()
                    .trim_matches(['[', ']']),
            ),
        }
    }
}

/// One masked value: its kind and its byte span `[start, end)` in the original text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub kind: FindingKind,
    pub start: usize,
    pub end: usize,
}

/// The masked text and what was masked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redacted {
    pub text: String,
    /// Sorted by `start`, never overlapping.
    pub findings: Vec<Finding>,
    /// Bytes dropped from the end of an input longer than the configured limit.
    pub truncated_bytes: usize,
}

struct Detector {
    kind: FindingKind,
    priority: u8,
    regex: Regex,
    /// Capture group indices holding the value; empty means the whole match.
    groups: Vec<usize>,
    check: checks::Check,
}

/// A compiled set of detectors. Cheap to clone and safe to share between threads.
#[derive(Clone)]
pub struct Redactor {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    detectors: Vec<Detector>,
    /// Finds in one pass which detectors have anything to say about a text.
    prefilter: RegexSet,
    /// Every replacement token; a match that is exactly one of them is already masked.
    tokens: Vec<String>,
    /// Replacement of each operator-defined pattern, by name.
    extra_tokens: Vec<(String, String)>,
    max_input_bytes: usize,
    secret_flags: Vec<String>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor")
            .field("detectors", &self.inner.detectors.len())
            .field("max_input_bytes", &self.inner.max_input_bytes)
            .finish_non_exhaustive()
    }
}

/// A candidate or a merged finding, in the coordinates of the text it was found in.
#[derive(Debug, Clone)]
struct Span {
    start: usize,
    end: usize,
    kind: FindingKind,
    priority: u8,
}

impl Span {
    fn outranks(&self, other: &Span) -> bool {
        (self.priority, self.end - self.start) > (other.priority, other.end - other.start)
    }
}

/// Where a masked region of the rendered text came from in the original.
struct Region {
    rendered_start: usize,
    rendered_end: usize,
    original_start: usize,
    original_end: usize,
}

impl Redactor {
    /// Compiles the built-in detectors and the configured extras; refuses a bad extra by name.
    pub fn new(config: &RedactConfig) -> Result<Self, RedactError> {
        if config.max_input_bytes < 1024 {
            return Err(RedactError::InputLimitTooSmall {
                value: config.max_input_bytes,
            });
        }
        if let Some(flag) = config
            .secret_flags
            .iter()
            .find(|f| !f.starts_with('-') || f.len() < 2)
        {
            return Err(RedactError::InvalidSecretFlag { flag: flag.clone() });
        }

        let mut tokens: Vec<String> = FindingKind::ALL_BUILTIN
            .iter()
            .filter_map(|k| k.builtin_token().map(str::to_owned))
            .collect();
        for (index, extra) in config.extra.iter().enumerate() {
            if extra.name.trim().is_empty() {
                return Err(RedactError::EmptyPatternName { index });
            }
            if config.extra[..index].iter().any(|e| e.name == extra.name) {
                return Err(RedactError::DuplicatePattern {
                    name: extra.name.clone(),
                });
            }
            if extra.replacement.is_empty() {
                return Err(RedactError::EmptyReplacement {
                    name: extra.name.clone(),
                });
            }
            tokens.push(extra.replacement.clone());
        }

        let mut detectors = Vec::new();
        for spec in detectors::builtin() {
            if spec.ip_address && !config.mask_ip {
                continue;
            }
            let regex = Regex::new(spec.pattern).map_err(|source| RedactError::Builtin {
                kind: spec.kind.clone(),
                source,
            })?;
            let groups = spec
                .groups
                .iter()
                .filter_map(|name| regex.capture_names().position(|n| n == Some(*name)))
                .collect();
            detectors.push(Detector {
                kind: spec.kind,
                priority: spec.priority,
                regex,
                groups,
                check: spec.check,
            });
        }
        for extra in &config.extra {
            let regex = RegexBuilder::new(&extra.regex)
                .size_limit(EXTRA_PATTERN_SIZE_LIMIT)
                .dfa_size_limit(EXTRA_PATTERN_SIZE_LIMIT)
                .build()
                .map_err(|source| RedactError::InvalidPattern {
                    name: extra.name.clone(),
                    source,
                })?;
            if regex.is_match("") {
                return Err(RedactError::MatchesEmpty {
                    name: extra.name.clone(),
                });
            }
            if let Some(token) = tokens.iter().find(|t| regex.is_match(t)) {
                return Err(RedactError::MatchesReplacement {
                    name: extra.name.clone(),
                    token: token.clone(),
                });
            }
            detectors.push(Detector {
                kind: FindingKind::Extra(extra.name.clone()),
                priority: detectors::PRIORITY_EXTRA,
                regex,
                groups: Vec::new(),
                check: checks::accept,
            });
        }

        let prefilter = RegexSetBuilder::new(detectors.iter().map(|d| d.regex.as_str()))
            .size_limit(EXTRA_PATTERN_SIZE_LIMIT * 16)
            .build()
            .map_err(|source| RedactError::PatternSetTooLarge { source })?;

        Ok(Self {
            inner: std::sync::Arc::new(Inner {
                detectors,
                prefilter,
                tokens,
                extra_tokens: config
                    .extra
                    .iter()
                    .map(|e| (e.name.clone(), e.replacement.clone()))
                    .collect(),
                max_input_bytes: config.max_input_bytes,
                secret_flags: config.secret_flags.clone(),
            }),
        })
    }

    /// Masks everything sensitive in `text`.
    pub fn redact(&self, text: &str) -> Redacted {
        self.redact_within(text, MAX_PASSES)
    }

    /// [`Self::redact`] with at most `passes` passes.
    fn redact_within(&self, text: &str, passes: usize) -> Redacted {
        let (kept, truncated_bytes) = self.cut_to_limit(text);
        let mut merged: Vec<Span> = Vec::new();
        let mut rendered = kept.to_owned();
        let mut regions: Vec<Region> = Vec::new();
        let mut settled = false;
        for _ in 0..passes {
            let found = self.scan(&rendered);
            let mut added = Vec::new();
            for span in found {
                let start = to_original_start(&regions, span.start);
                let end = to_original_end(&regions, span.end);
                // `merged` is sorted and disjoint: only the last span starting at or before
                // `start` can cover this one.
                let before = merged.partition_point(|m| m.start <= start);
                let already_covered = before > 0 && merged[before - 1].end >= end;
                if !already_covered {
                    added.push(Span { start, end, ..span });
                }
            }
            let grew = !added.is_empty();
            merged.extend(added);
            if !grew {
                settled = true;
                break;
            }
            merged = merge_overlapping(merged);
            (rendered, regions) = self.render(kept, &merged);
        }
        if !settled && !kept.is_empty() {
            // Every pass unmasked another match next to a mask, and the next might too: what
            // is left may still hold something a detector would find. Withheld whole, rather
            // than shown half-masked.
            merged = vec![Span {
                start: 0,
                end: kept.len(),
                kind: FindingKind::Secret,
                priority: 0,
            }];
            (rendered, _) = self.render(kept, &merged);
        }
        if truncated_bytes > 0 {
            rendered.push_str(&format!("[TRUNCATED {truncated_bytes} BYTES]"));
        }
        Redacted {
            text: rendered,
            findings: merged
                .into_iter()
                .map(|s| Finding {
                    kind: s.kind,
                    start: s.start,
                    end: s.end,
                })
                .collect(),
            truncated_bytes,
        }
    }

    /// Masks an argv: each argument as free text, plus the values of secret flags, whether
    /// given as `--password VALUE` (two entries), `--token=VALUE`, or tool-specific short
    /// flags such as `sshpass -p VALUE` and `mysql -pVALUE`.
    pub fn redact_args(&self, args: &[String]) -> Vec<String> {
        args::redact_args(self, args)
    }

    fn token_for(&self, kind: &FindingKind) -> &str {
        match kind {
            FindingKind::Extra(name) => self
                .inner
                .extra_tokens
                .iter()
                .find(|(n, _)| n == name)
                .map_or("[REDACTED]", |(_, token)| token.as_str()),
            builtin => builtin.builtin_token().unwrap_or("[REDACTED]"),
        }
    }

    fn cut_to_limit<'t>(&self, text: &'t str) -> (&'t str, usize) {
        let limit = self.inner.max_input_bytes;
        if text.len() <= limit {
            return (text, 0);
        }
        let mut cut = limit;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        // Do not leave the head of a cut-off token behind: back off to the last whitespace
        // if there is one near the cut.
        let window_start = cut.saturating_sub(1024);
        let window_start = (window_start..=cut)
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(cut);
        if let Some(space) = text[window_start..cut].rfind(char::is_whitespace) {
            cut = window_start + space;
        }
        (&text[..cut], text.len() - cut)
    }

    /// One pass: candidates from every detector whose pattern occurs, validated, merged.
    fn scan(&self, text: &str) -> Vec<Span> {
        let mut candidates = Vec::new();
        for index in self.inner.prefilter.matches(text).iter() {
            let detector = &self.inner.detectors[index];
            let mut locations = detector.regex.capture_locations();
            let mut at = 0;
            while at <= text.len() {
                let Some(whole) = detector.regex.captures_read_at(&mut locations, text, at) else {
                    break;
                };
                let (match_start, match_end) = (whole.start(), whole.end());
                let value = value_span(&detector.groups, &locations, match_start, match_end);
                let accepted = (detector.check)(text, value.0, value.1)
                    .filter(|&(s, e)| s < e && !self.is_token(&text[s..e]));
                match accepted {
                    Some((start, end)) => {
                        candidates.push(Span {
                            start,
                            end,
                            kind: detector.kind.clone(),
                            priority: detector.priority,
                        });
                        at = match_end.max(end).max(at + 1);
                    }
                    None if match_end - match_start <= RETRY_INSIDE_MAX_MATCH => {
                        at = next_char_boundary(text, match_start);
                    }
                    None => at = match_end.max(at + 1),
                }
                if at > text.len() {
                    break;
                }
                while !text.is_char_boundary(at) {
                    at += 1;
                }
            }
        }
        merge_overlapping(candidates)
    }

    fn is_token(&self, value: &str) -> bool {
        self.inner.tokens.iter().any(|t| t == value)
    }

    fn render(&self, original: &str, merged: &[Span]) -> (String, Vec<Region>) {
        let mut out = String::with_capacity(original.len());
        let mut regions = Vec::with_capacity(merged.len());
        let mut copied_to = 0;
        for span in merged {
            out.push_str(&original[copied_to..span.start]);
            let rendered_start = out.len();
            out.push_str(self.token_for(&span.kind));
            regions.push(Region {
                rendered_start,
                rendered_end: out.len(),
                original_start: span.start,
                original_end: span.end,
            });
            copied_to = span.end;
        }
        out.push_str(&original[copied_to..]);
        (out, regions)
    }
}

fn next_char_boundary(text: &str, from: usize) -> usize {
    let mut next = from + 1;
    while next < text.len() && !text.is_char_boundary(next) {
        next += 1;
    }
    next
}

fn value_span(
    groups: &[usize],
    locations: &CaptureLocations,
    start: usize,
    end: usize,
) -> (usize, usize) {
    groups
        .iter()
        .find_map(|&g| locations.get(g))
        .unwrap_or((start, end))
}

/// Unions overlapping spans; the union takes the kind of its highest-priority (then longest)
/// member. The result is sorted and disjoint.
fn merge_overlapping(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort_by_key(|s| (s.start, std::cmp::Reverse(s.end)));
    let mut merged: Vec<Span> = Vec::with_capacity(spans.len());
    // The member that names each merged span.
    let mut leaders: Vec<Span> = Vec::with_capacity(spans.len());
    for span in spans {
        match merged.last_mut() {
            Some(last) if span.start < last.end => {
                last.end = last.end.max(span.end);
                if let Some(leader) = leaders.last_mut() {
                    if span.outranks(leader) {
                        *leader = span;
                    }
                }
            }
            _ => {
                merged.push(span.clone());
                leaders.push(span);
            }
        }
    }
    merged
        .into_iter()
        .zip(leaders)
        .map(|(m, leader)| Span {
            kind: leader.kind,
            priority: leader.priority,
            ..m
        })
        .collect()
}

/// Maps a start offset in rendered text back to the original: inside a token, the token's
/// original start.
fn to_original_start(regions: &[Region], at: usize) -> usize {
    let preceding = regions.partition_point(|r| r.rendered_start <= at);
    match preceding.checked_sub(1).map(|i| &regions[i]) {
        None => at,
        Some(r) if at < r.rendered_end => r.original_start,
        Some(r) => r.original_end + (at - r.rendered_end),
    }
}

/// Maps an end offset in rendered text back to the original: inside a token, the token's
/// original end.
fn to_original_end(regions: &[Region], at: usize) -> usize {
    let preceding = regions.partition_point(|r| r.rendered_start < at);
    match preceding.checked_sub(1).map(|i| &regions[i]) {
        None => at,
        Some(r) if at <= r.rendered_end => r.original_end,
        Some(r) => r.original_end + (at - r.rendered_end),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing: IP addresses and phone numbers glued into a chain, where each mask
    /// turns the next neighbour into a match (7 passes or more).
    const CHAIN: &[u8] = b"\x00\xa5\xb2\xb2\xb2\xb2\x90\xb4\xb42\xc12::B\x00%:A:\xfe049+5:%A\x00\xfeB::049+5050041005+11055101::049+505001055101::049+50500105541005+1\xb2\xba\xb2\xb2\xb2\xb2\xb2\xff\xff\xff\xff\xff\xff\xff\xb2\x08c::";

    #[test]
    fn a_chain_of_matches_is_masked_to_the_end_or_withheld() {
        let r = Redactor::new(&RedactConfig {
            mask_ip: true,
            ..RedactConfig::default()
        })
        .expect("compiles");
        let text = String::from_utf8_lossy(CHAIN);
        // Followed to the end: what a redaction shows, redacted again, is the same.
        let out = r.redact(&text);
        assert_eq!(r.redact(&out.text).text, out.text);
        assert!(out.findings.len() > 8, "{:?}", out.findings);
        // Cut short: not shown half-masked.
        let cut = r.redact_within(&text, 2);
        assert_eq!(cut.text, "[SECRET]");
        assert_eq!(r.redact(&cut.text).text, cut.text);
        assert_eq!(
            cut.findings,
            [Finding {
                kind: FindingKind::Secret,
                start: 0,
                end: text.len()
            }]
        );
    }

    fn redactor() -> Redactor {
        match Redactor::new(&RedactConfig::default()) {
            Ok(r) => r,
            Err(e) => panic!("default configuration must compile: {e}"),
        }
    }

    #[test]
    fn findings_point_into_the_original_text() {
        let text = "to bob@example.org and +44 20 7946 0958";
        let out = redactor().redact(text);
        let spans: Vec<_> = out
            .findings
            .iter()
            .map(|f| (&text[f.start..f.end], f.kind.clone()))
            .collect();
        assert_eq!(
            spans,
            vec![
                ("bob@example.org", FindingKind::Email),
                ("+44 20 7946 0958", FindingKind::Phone)
            ]
        );
    }

    #[test]
    fn overlapping_findings_merge_under_the_most_specific_kind() {
        let out = redactor().redact("password=alice@example.com");
        assert_eq!(out.text, "password=[SECRET]");
        assert_eq!(out.findings.len(), 1);
        assert_eq!(out.findings[0].kind, FindingKind::Secret);
    }

    #[test]
    fn a_mask_that_exposes_a_neighbour_is_followed_by_a_second_pass() {
        // The phone number is glued to the address; once the address is masked it stands alone.
        let text = "x@ex.co555-123-4567";
        let out = redactor().redact(text);
        assert!(!out.text.contains("4567"), "{}", out.text);
        let again = redactor().redact(&out.text);
        assert_eq!(again.text, out.text);
    }

    #[test]
    fn long_input_is_cut_at_whitespace_and_marked() {
        let config = RedactConfig {
            max_input_bytes: 1024,
            ..RedactConfig::default()
        };
        let redactor = match Redactor::new(&config) {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        };
        let text = format!("{} ghp_{}", "a".repeat(1000), "x".repeat(40));
        let out = redactor.redact(&text);
        assert_eq!(out.truncated_bytes, text.len() - 1000);
        assert!(
            out.text.ends_with("[TRUNCATED 45 BYTES]"),
            "{}",
            &out.text[990..]
        );
        assert!(!out.text.contains("ghp_"));
    }

    #[test]
    fn extra_patterns_are_validated_by_name() {
        let with = |name: &str, regex: &str, replacement: &str| RedactConfig {
            extra: vec![ExtraPattern {
                name: name.into(),
                regex: regex.into(),
                replacement: replacement.into(),
            }],
            ..RedactConfig::default()
        };
        let err = |c: RedactConfig| {
            Redactor::new(&c)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(err(with("employee", "EMP-(", "[EMP]")).contains("'employee' has an invalid regex"));
        assert!(err(with("anything", "x*", "[X]")).contains("'anything' matches the empty string"));
        assert!(err(with("loop", r"\[EMP\]", "[EMP]")).contains("'loop' matches the replacement"));
        assert!(err(with("", "EMP-[0-9]+", "[EMP]")).contains("#0 has an empty name"));
        let ok = Redactor::new(&with("employee", "EMP-[0-9]{6}", "[EMPLOYEE_ID]"));
        let out = ok
            .map(|r| r.redact("badge EMP-123456 issued"))
            .map(|r| r.text);
        assert_eq!(out.ok().as_deref(), Some("badge [EMPLOYEE_ID] issued"));
    }
}
