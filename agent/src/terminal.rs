//! Text for a person's terminal: workload-controlled or reviewer-written text (paths, command
//! names, justifications, reasons) never reaches it raw, in tables or in `--json`.

/// Characters that move the cursor, reorder or hide text on a terminal: controls,
/// bidirectional overrides and invisible formatting.
pub fn deceptive(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

/// `s` with every deceptive character shown as `?`.
pub fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if deceptive(c) { '?' } else { c })
        .collect()
}

/// `s` cleaned and cut to `max` characters, with `…` where it was cut.
pub fn cut(s: &str, max: usize) -> String {
    let s = clean(s);
    if s.chars().count() <= max {
        return s;
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// JSON for scripts, with the characters a terminal would act on written as `\u` escapes
/// (still the same JSON).
pub fn safe_json(v: &serde_json::Value) -> String {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if deceptive(c) && c != '\n' {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_and_cuts() {
        for (input, max, want) in [
            ("plain", 10, "plain"),
            ("a\x1b[2Jb", 10, "a?[2Jb"),
            ("x\u{202e}y\u{200b}z", 10, "x?y?z"),
            ("abcdef", 4, "abc…"),
            ("ab\ncd", 4, "ab?…"),
        ] {
            assert_eq!(cut(input, max), want, "{input:?}");
        }
    }

    #[test]
    fn json_stays_json_and_inert() {
        let v = serde_json::json!({"t": "a\u{202e}b\u{1b}"});
        let text = safe_json(&v);
        assert!(!text.chars().any(|c| deceptive(c) && c != '\n'), "{text}");
        let back: serde_json::Value = serde_json::from_str(&text).expect("still JSON");
        assert_eq!(back, v);
    }
}
