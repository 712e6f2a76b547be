//! Host names in connect rules: what a rule may write (`api.openai.com`, `*.s3.amazonaws.com`)
//! and which names a pattern covers. The agent learns the addresses of names from a workload's
//! own DNS answers; this module only says whether a name is one a rule names.

use std::{cmp::Reverse, fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest host name, in bytes, as DNS allows (without the trailing dot).
pub const MAX_HOST_LEN: usize = 253;
/// Longest label of a host name.
const MAX_LABEL_LEN: usize = 63;

/// A host name a connect rule names.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    /// This name exactly (`api.openai.com`).
    Exact(String),
    /// Every name strictly below this domain (`*.s3.amazonaws.com` is kept as
    /// `s3.amazonaws.com`): `a.s3.amazonaws.com` and `a.b.s3.amazonaws.com`, not
    /// `s3.amazonaws.com` itself, nor `xs3.amazonaws.com`.
    Below(String),
}

impl HostPattern {
    /// Whether `name` (as [`normalize`] returns it) is one this pattern names.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            HostPattern::Exact(n) => name == n,
            HostPattern::Below(d) => name
                .strip_suffix(d.as_str())
                .and_then(|head| head.strip_suffix('.'))
                .is_some_and(|head| !head.is_empty()),
        }
    }

    /// Orders patterns most specific first: an exact name before any wildcard, a wildcard
    /// with a longer domain before a shorter one. A narrower rule (`allow
    /// ours.s3.amazonaws.com`) then wins over a broader one (`deny *.s3.amazonaws.com`).
    pub fn specificity(&self) -> impl Ord {
        match self {
            HostPattern::Exact(n) => (0u8, Reverse(n.len())),
            HostPattern::Below(d) => (1u8, Reverse(d.len())),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(n) => f.write_str(n),
            HostPattern::Below(d) => write!(f, "*.{d}"),
        }
    }
}

impl FromStr for HostPattern {
    type Err = String;

    /// A host name, or `*.` and a domain of at least two labels. Case does not matter; a
    /// trailing dot is taken off.
    fn from_str(s: &str) -> Result<HostPattern, String> {
        let (wild, rest) = match s.strip_prefix("*.") {
            Some(r) => (true, r),
            None => (false, s),
        };
        if rest.contains('*') {
            return Err(format!(
                "'{s}' is not a host name: `*` may only start a name, as `*.example.com`"
            ));
        }
        let name = normalize(rest).map_err(|why| format!("'{s}' is not a host name: {why}"))?;
        if wild {
            if !name.contains('.') {
                return Err(format!(
                    "'{s}' covers a whole top-level domain; name a domain below one, as \
                     `*.example.com`"
                ));
            }
            Ok(HostPattern::Below(name))
        } else {
            Ok(HostPattern::Exact(name))
        }
    }
}

impl Serialize for HostPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HostPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<HostPattern, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A host name as rules compare it: lower case, without the trailing dot. Refused: empty
/// labels, labels over 63 bytes, names over 253, characters other than ASCII letters, digits,
/// `-` and `_` (which DNS allows and some services use), a label starting or ending with `-`,
/// and a name whose last label is all digits (an address, not a name).
pub fn normalize(name: &str) -> Result<String, &'static str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > MAX_HOST_LEN {
        return Err("it is longer than 253 bytes");
    }
    let mut last = "";
    for label in name.split('.') {
        if label.is_empty() {
            return Err("it has an empty label");
        }
        if label.len() > MAX_LABEL_LEN {
            return Err("a label is longer than 63 bytes");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("only letters, digits, '-', '_' and '.' may be used");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label starts or ends with '-'");
        }
        last = label;
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err("its last label is a number");
    }
    Ok(name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_cover_what_they_say() {
        let cases: &[(&str, &str, bool)] = &[
            ("api.openai.com", "api.openai.com", true),
            ("api.openai.com", "x.api.openai.com", false),
            ("API.OpenAI.com.", "api.openai.com", true),
            ("*.s3.amazonaws.com", "b.s3.amazonaws.com", true),
            ("*.s3.amazonaws.com", "a.b.s3.amazonaws.com", true),
            ("*.s3.amazonaws.com", "s3.amazonaws.com", false),
            ("*.s3.amazonaws.com", "xs3.amazonaws.com", false),
            ("*.s3.amazonaws.com", "s3.amazonaws.com.evil.com", false),
            ("*.corp.test", "a.corp.test", true),
        ];
        for (pat, name, want) in cases {
            let p: HostPattern = pat.parse().unwrap();
            let n = normalize(name).unwrap();
            assert_eq!(p.matches(&n), *want, "{pat} vs {name}");
        }
    }

    #[test]
    fn bad_names_are_refused_with_the_reason() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("a..b", "empty label"),
            ("exa mple.com", "only letters"),
            ("-a.com", "starts or ends"),
            ("a.com*", "`*` may only start"),
            ("*", "`*` may only start"),
            ("*.com", "top-level"),
            ("1.2.3.4", "number"),
            ("10.0.0.0/8x", "only letters"),
        ];
        for (s, want) in cases {
            let e = s.parse::<HostPattern>().unwrap_err();
            assert!(e.contains(want), "{s}: {e}");
        }
        let long = format!("{}.com", "a".repeat(64));
        assert!(long.parse::<HostPattern>().unwrap_err().contains("63"));
        let huge = format!("{}com", "abcdefghi.".repeat(26));
        assert!(huge.parse::<HostPattern>().unwrap_err().contains("253"));
    }

    #[test]
    fn exact_names_are_more_specific_than_wildcards() {
        let mut v: Vec<HostPattern> = [
            "*.amazonaws.com",
            "*.s3.amazonaws.com",
            "b.s3.amazonaws.com",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        v.sort_by_key(|p| p.specificity());
        let shown: Vec<String> = v.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            shown,
            [
                "b.s3.amazonaws.com",
                "*.s3.amazonaws.com",
                "*.amazonaws.com"
            ]
        );
    }
}
