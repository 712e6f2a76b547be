//! Matching an exec's arguments: `args: { any: [...], all: [...] }` on an exec rule.
//!
//! An entry is one or more words separated by spaces; it matches when those words appear one
//! after another among the arguments the program received (`argv[1..]`, as the program sees
//! them: no shell is involved). A word is literal except for `*` (any run of bytes, also none)
//! and `?` (one byte). `any` matches when one of its entries does, `all` when every one does;
//! a rule with both needs both.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Most entries in one of `any` or `all`.
pub const MAX_ENTRIES: usize = 64;
/// Most words in one entry.
pub const MAX_WORDS: usize = 16;
/// Longest word pattern, in bytes.
pub const MAX_WORD_LEN: usize = 256;

/// What an exec rule asks of the arguments.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArgsMatch {
    /// At least one of these appears.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub any: Vec<ArgSeq>,
    /// Every one of these appears.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub all: Vec<ArgSeq>,
}

impl ArgsMatch {
    /// Whether the arguments (`argv` without `argv[0]`) satisfy the rule.
    pub fn matches<A: AsRef<[u8]>>(&self, args: &[A]) -> bool {
        (self.any.is_empty() || self.any.iter().any(|s| s.found_in(args)))
            && self.all.iter().all(|s| s.found_in(args))
    }
}

/// Words that must appear one after another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ArgSeq(Vec<String>);

impl ArgSeq {
    /// Whether the words appear, in order and adjacent, somewhere in `args`.
    pub fn found_in<A: AsRef<[u8]>>(&self, args: &[A]) -> bool {
        let n = self.0.len();
        if n == 0 || n > args.len() {
            return false;
        }
        args.windows(n).any(|w| {
            w.iter()
                .zip(&self.0)
                .all(|(a, p)| glob(p.as_bytes(), a.as_ref()))
        })
    }

    /// The words.
    pub fn words(&self) -> &[String] {
        &self.0
    }
}

impl TryFrom<String> for ArgSeq {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<ArgSeq> for String {
    fn from(s: ArgSeq) -> String {
        s.to_string()
    }
}

impl fmt::Display for ArgSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(" "))
    }
}

impl std::str::FromStr for ArgSeq {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let words: Vec<String> = s.split_whitespace().map(str::to_owned).collect();
        if words.is_empty() {
            return Err("is empty: an entry names one or more words".into());
        }
        if words.len() > MAX_WORDS {
            return Err(format!(
                "'{s}' has {} words; at most {MAX_WORDS}",
                words.len()
            ));
        }
        if let Some(w) = words.iter().find(|w| w.len() > MAX_WORD_LEN) {
            return Err(format!(
                "the word '{}…' is longer than {MAX_WORD_LEN} bytes",
                w.chars().take(16).collect::<String>()
            ));
        }
        if let Some(w) = words.iter().find(|w| w.bytes().all(|b| b == b'*')) {
            return Err(format!(
                "the word '{w}' matches every argument; leave it out, or drop `args` to match \
                 every invocation"
            ));
        }
        Ok(Self(words))
    }
}

/// Glob over bytes: `*` any run (also empty), `?` one byte, anything else itself. Iterative with
/// one backtrack point, so a hostile argument cannot make it exponential.
fn glob(pat: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pat.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(s: &str) -> ArgSeq {
        s.parse().expect("valid entry")
    }

    #[test]
    fn words_glob_over_bytes() {
        let cases: &[(&str, &str, bool)] = &[
            ("delete", "delete", true),
            ("delete", "deleted", false),
            ("delete", "Delete", false),
            ("del*", "delete", true),
            ("del*", "del", true),
            ("*prod*", "--context=prod-eu", true),
            ("*prod*", "--context=staging", false),
            ("--namespace=prod", "--namespace=prod", true),
            ("--namespace=prod", "--namespace=prod2", false),
            ("s?", "s3", true),
            ("s?", "s", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("*.yaml", "x.yaml.bak", false),
        ];
        for &(p, t, want) in cases {
            assert_eq!(glob(p.as_bytes(), t.as_bytes()), want, "{p:?} ~ {t:?}");
        }
        // Not exponential: a long run of stars against a long near-miss returns.
        let pat = "*a".repeat(100);
        assert!(!glob(pat.as_bytes(), "a".repeat(99).as_bytes()));
        assert!(glob(pat.as_bytes(), "a".repeat(100).as_bytes()));
    }

    #[test]
    fn sequences_are_adjacent_and_ordered() {
        let args = ["--profile", "x", "s3", "cp", "a", "s3://b"];
        let cases: &[(&str, bool)] = &[
            ("s3 cp", true),
            ("cp s3", false),
            ("s3 a", false),
            ("s3://*", true),
            ("--profile x s3 cp a s3://b", true),
            ("--profile x s3 cp a s3://b extra", false),
            ("iam", false),
        ];
        for &(s, want) in cases {
            assert_eq!(seq(s).found_in(&args), want, "{s:?}");
        }
        assert!(!seq("x").found_in::<&str>(&[]));
    }

    #[test]
    fn any_and_all_combine() {
        let m = ArgsMatch {
            any: vec![seq("delete"), seq("drain"), seq("scale")],
            all: vec![seq("--context=prod*")],
        };
        let cases: &[(&[&str], bool)] = &[
            (&["delete", "pod", "x", "--context=prod-eu"], true),
            (&["--context=prod", "drain", "node1"], true),
            (&["get", "pods", "--context=prod"], false),
            (&["delete", "pod", "x", "--context=dev"], false),
            (&["delete", "pod", "x"], false),
        ];
        for &(args, want) in cases {
            assert_eq!(m.matches(args), want, "{args:?}");
        }
        let only_all = ArgsMatch {
            any: vec![],
            all: vec![seq("s3"), seq("cp")],
        };
        assert!(only_all.matches(&["s3", "--x", "cp"]));
        assert!(!only_all.matches(&["s3", "ls"]));
    }

    #[test]
    fn bad_entries_are_refused_with_a_reason() {
        let cases: &[(&str, &str)] = &[
            ("", "is empty"),
            ("   ", "is empty"),
            ("*", "matches every argument"),
            ("get **", "matches every argument"),
            (&"a ".repeat(17), "has 17 words; at most 16"),
        ];
        for &(s, needle) in cases {
            let e = s.parse::<ArgSeq>().expect_err(s);
            assert!(e.contains(needle), "{needle:?} not in {e:?}");
        }
        let long = "x".repeat(MAX_WORD_LEN + 1);
        assert!(long
            .parse::<ArgSeq>()
            .expect_err("long")
            .contains("longer than"));
        // Round trip through the text form.
        let s = seq("s3   cp");
        assert_eq!(s.to_string(), "s3 cp");
        assert_eq!(s.words(), ["s3", "cp"]);
    }
}
