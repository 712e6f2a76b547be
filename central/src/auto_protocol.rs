//! The automatic reviewer's wire format: central posts a [`ReviewRequest`] as JSON to the
//! reviewer's URL and takes a [`ReviewAnswer`] as JSON back. Both bodies are signed with the
//! secret the two share: `X-Latch-Timestamp` is the Unix time in seconds, `X-Latch-Signature`
//! is `v1=` and the lower-case hex HMAC-SHA256 of `v1:<timestamp>:<body>`. A body whose
//! signature does not verify, or whose timestamp is more than five minutes off, is refused; an
//! answer must name the request it answers.
//!
//! Also [`Recommendation`]: what central keeps of an answer, as the request's record shows it.
//!
//! Pure: central's engine (`crate::auto`), its channel (`crate::autoreview`) and the reference
//! reviewer use it.

use hmac::{Hmac, Mac};
use latch_proto::v1::AutoRecommendation;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The timestamp header.
pub const TIMESTAMP_HEADER: &str = "x-latch-timestamp";
/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-latch-signature";
/// How far a signed timestamp may be from the receiver's clock, in seconds.
pub const MAX_SKEW_S: i64 = 300;
/// Shortest shared secret, in bytes.
pub const MIN_SECRET: usize = 32;
/// Longest rationale an answer may carry, in bytes.
pub const MAX_RATIONALE: usize = 2000;
/// Largest answer body central reads, in bytes.
pub const MAX_ANSWER: usize = 16 * 1024;

/// What a reviewer may answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Approve once.
    Approve,
    /// Deny.
    Deny,
    /// Leave it to people.
    Escalate,
}

impl Verdict {
    /// As written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Approve => "approve",
            Verdict::Deny => "deny",
            Verdict::Escalate => "escalate",
        }
    }
}

/// What central posts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReviewRequest {
    /// Protocol version: 1.
    pub version: u32,
    /// Central's id of the request; the answer must name it.
    pub approval_id: String,
    /// The reviewer's name in central's configuration.
    pub reviewer: String,
    /// The host.
    pub host_id: String,
    /// The rule that holds it.
    pub rule: String,
    /// The workload.
    pub workload: String,
    /// When people's time runs out.
    pub deadline_unix_ms: i64,
    /// The request as reviewers see it (masked by the agent): process, tree, destination or
    /// program, environment variables, trace context.
    pub request: serde_json::Value,
    /// What the workload said it needs this for, when it said so (untrusted text).
    pub justification: String,
}

/// What a reviewer answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewAnswer {
    /// The request it answers.
    pub approval_id: String,
    /// The reviewer the request was posted to (`ReviewRequest::reviewer`).
    pub reviewer: String,
    /// Its verdict.
    pub verdict: Verdict,
    /// Why, in words people read.
    #[serde(default)]
    pub rationale: String,
    /// 0 to 1.
    #[serde(default)]
    pub confidence: f64,
}

/// Why a signed body is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A header is missing.
    #[error("the {0} header is missing")]
    Missing(&'static str),
    /// The timestamp is not a number.
    #[error("the timestamp '{0}' is not a Unix time in seconds")]
    BadTimestamp(String),
    /// The timestamp is too far from now.
    #[error("the timestamp is {0} s from this clock; at most {MAX_SKEW_S}")]
    Skewed(i64),
    /// The signature does not verify.
    #[error("the signature does not match the body")]
    Mismatch,
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length (the configuration refuses short secrets).
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .expect("HMAC-SHA256 takes a key of any length");
    mac.update(format!("v1:{timestamp}:").as_bytes());
    mac.update(body);
    mac
}

/// The signature header's value for `body` signed at `timestamp`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!(
        "v1={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

/// Checks a body's signature headers against `secret` at `now_s` (constant-time comparison).
pub fn verify(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_s: i64,
) -> Result<(), SignatureError> {
    let ts = timestamp.ok_or(SignatureError::Missing(TIMESTAMP_HEADER))?;
    let sig = signature.ok_or(SignatureError::Missing(SIGNATURE_HEADER))?;
    let t: i64 = ts
        .trim()
        .parse()
        .map_err(|_| SignatureError::BadTimestamp(ts.chars().take(40).collect()))?;
    let skew = now_s.saturating_sub(t);
    if skew.abs() > MAX_SKEW_S {
        return Err(SignatureError::Skewed(skew));
    }
    let given = sig
        .trim()
        .strip_prefix("v1=")
        .and_then(|h| hex::decode(h).ok())
        .ok_or(SignatureError::Mismatch)?;
    mac(secret, t, body)
        .verify_slice(&given)
        .map_err(|_| SignatureError::Mismatch)
}

/// Checks an answer to the request `approval_id` posted to `reviewer`: the same request and
/// reviewer, a bounded rationale without control characters but newline and tab, a confidence
/// between 0 and 1.
pub fn check_answer(
    answer: &ReviewAnswer,
    approval_id: &str,
    reviewer: &str,
) -> Result<(), String> {
    let shown = |s: &str| {
        s.chars()
            .take(80)
            .collect::<String>()
            .escape_debug()
            .to_string()
    };
    if answer.approval_id != approval_id {
        return Err(format!(
            "the answer is for request '{}', not '{approval_id}'",
            shown(&answer.approval_id)
        ));
    }
    if answer.reviewer != reviewer {
        return Err(format!(
            "the answer is from reviewer '{}', not '{reviewer}'",
            shown(&answer.reviewer)
        ));
    }
    if answer.rationale.len() > MAX_RATIONALE {
        return Err(format!(
            "the rationale is {} bytes; at most {MAX_RATIONALE}",
            answer.rationale.len()
        ));
    }
    if let Some((at, c)) = answer
        .rationale
        .char_indices()
        .find(|(_, c)| c.is_control() && *c != '\n' && *c != '\t')
    {
        return Err(format!(
            "the rationale has a control character ({}) at byte {at}",
            c.escape_unicode()
        ));
    }
    if !(0.0..=1.0).contains(&answer.confidence) {
        return Err(format!(
            "the confidence {} is not between 0 and 1",
            answer.confidence
        ));
    }
    Ok(())
}

/// What the request's record shows of the reviewer's answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    /// The reviewer's name.
    pub reviewer: String,
    /// `approve`, `deny`, `escalate` or `failed`.
    pub verdict: String,
    /// Its words, or why the answer was not usable.
    pub rationale: String,
    /// 0 to 1.
    pub confidence: f64,
    /// Whether it decided the request.
    pub decided: bool,
    /// Why it did not decide, when it did not.
    pub note: String,
    /// When central took it.
    pub at_ms: i64,
}

impl Recommendation {
    /// As the gRPC API shows it.
    pub fn to_proto(&self) -> AutoRecommendation {
        AutoRecommendation {
            reviewer: self.reviewer.clone(),
            verdict: self.verdict.clone(),
            rationale: self.rationale.clone(),
            confidence: self.confidence,
            decided: self.decided,
            note: self.note.clone(),
            at_unix_ms: self.at_ms,
        }
    }
}

/// An automatic reviewer's answer in one line, as people read it beside the request: its
/// verdict, confidence, words, and why it did not decide when it did not.
pub fn summary(a: &AutoRecommendation) -> String {
    let mut line = format!(
        "{}: {} (confidence {:.2})",
        a.reviewer, a.verdict, a.confidence
    );
    if !a.rationale.is_empty() {
        line.push_str(&format!(" \"{}\"", a.rationale));
    }
    if !a.note.is_empty() {
        line.push_str(&format!(" — {}", a.note));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_recommendation_reads_as_one_line() {
        let a = AutoRecommendation {
            reviewer: "risk-bot".into(),
            verdict: "approve".into(),
            rationale: "port 443 is on the list".into(),
            confidence: 0.8,
            decided: false,
            note: "advisory: the rule lets it recommend, not decide".into(),
            at_unix_ms: 1,
        };
        assert_eq!(
            summary(&a),
            "risk-bot: approve (confidence 0.80) \"port 443 is on the list\" — advisory: the rule lets it recommend, not decide"
        );
        let bare = AutoRecommendation {
            rationale: String::new(),
            note: String::new(),
            ..a
        };
        assert_eq!(summary(&bare), "risk-bot: approve (confidence 0.80)");
    }

    #[test]
    fn a_signature_verifies_only_for_its_body_secret_and_time() {
        let body = br#"{"approval_id":"a"}"#;
        let sig = sign(SECRET, 1000, body);
        let ok = |ts: Option<&str>, sig: Option<&str>, body: &[u8], secret: &[u8], now: i64| {
            verify(secret, ts, sig, body, now)
        };
        // Timestamp and signature headers, body, secret, the receiver's clock, the verdict.
        type Case<'a> = (
            Option<&'a str>,
            Option<&'a str>,
            &'a [u8],
            &'a [u8],
            i64,
            Result<(), SignatureError>,
        );
        let cases: &[Case] = &[
            (Some("1000"), Some(&sig), body, SECRET, 1000, Ok(())),
            (Some("1000"), Some(&sig), body, SECRET, 1300, Ok(())),
            (
                Some("1000"),
                Some(&sig),
                body,
                SECRET,
                1301,
                Err(SignatureError::Skewed(301)),
            ),
            (
                Some("1000"),
                Some(&sig),
                body,
                SECRET,
                699,
                Err(SignatureError::Skewed(-301)),
            ),
            (
                Some("1000"),
                Some(&sig),
                br#"{"approval_id":"b"}"#,
                SECRET,
                1000,
                Err(SignatureError::Mismatch),
            ),
            (
                Some("1000"),
                Some(&sig),
                body,
                b"another secret of the same size!",
                1000,
                Err(SignatureError::Mismatch),
            ),
            (
                Some("1001"),
                Some(&sig),
                body,
                SECRET,
                1000,
                Err(SignatureError::Mismatch),
            ),
            (
                Some("1000"),
                Some("v1=zz"),
                body,
                SECRET,
                1000,
                Err(SignatureError::Mismatch),
            ),
            (
                Some("1000"),
                Some(&sig[3..]),
                body,
                SECRET,
                1000,
                Err(SignatureError::Mismatch),
            ),
            (
                Some("soon"),
                Some(&sig),
                body,
                SECRET,
                1000,
                Err(SignatureError::BadTimestamp("soon".into())),
            ),
            (
                None,
                Some(&sig),
                body,
                SECRET,
                1000,
                Err(SignatureError::Missing(TIMESTAMP_HEADER)),
            ),
            (
                Some("1000"),
                None,
                body,
                SECRET,
                1000,
                Err(SignatureError::Missing(SIGNATURE_HEADER)),
            ),
        ];
        for (ts, s, b, k, now, want) in cases {
            assert_eq!(&ok(*ts, *s, b, k, *now), want, "{ts:?} {s:?} {now}");
        }
    }

    #[test]
    fn an_answer_must_be_for_its_request_and_well_formed() {
        let good = ReviewAnswer {
            approval_id: "a".into(),
            reviewer: "bot".into(),
            verdict: Verdict::Approve,
            rationale: "read-only query\non the replica".into(),
            confidence: 0.9,
        };
        assert_eq!(check_answer(&good, "a", "bot"), Ok(()));
        let cases = [
            (
                ReviewAnswer {
                    approval_id: "b".into(),
                    ..good.clone()
                },
                "is for request 'b', not 'a'",
            ),
            (
                ReviewAnswer {
                    approval_id: "b\u{1b}[2J".into(),
                    ..good.clone()
                },
                "is for request 'b\\u{1b}[2J'",
            ),
            (
                ReviewAnswer {
                    reviewer: "lenient".into(),
                    ..good.clone()
                },
                "is from reviewer 'lenient', not 'bot'",
            ),
            (
                ReviewAnswer {
                    rationale: "x".repeat(2001),
                    ..good.clone()
                },
                "2001 bytes",
            ),
            (
                ReviewAnswer {
                    rationale: "ok\u{1b}[2J".into(),
                    ..good.clone()
                },
                "control character (\\u{1b}) at byte 2",
            ),
            (
                ReviewAnswer {
                    confidence: 1.5,
                    ..good.clone()
                },
                "confidence 1.5",
            ),
            (
                ReviewAnswer {
                    confidence: f64::NAN,
                    ..good.clone()
                },
                "confidence NaN",
            ),
        ];
        for (answer, want) in cases {
            let e = check_answer(&answer, "a", "bot").expect_err(want);
            assert!(e.contains(want), "{want:?} not in {e:?}");
        }
        for garbage in [
            r#"{"approval_id":"a","reviewer":"bot","verdict":"maybe"}"#,
            r#"{"approval_id":"a","reviewer":"bot"}"#,
            r#"{"approval_id":"a","verdict":"approve"}"#,
            r#"{"approval_id":"a","reviewer":"bot","verdict":"approve","extra":1}"#,
            "not json",
        ] {
            assert!(
                serde_json::from_str::<ReviewAnswer>(garbage).is_err(),
                "{garbage}"
            );
        }
    }
}
