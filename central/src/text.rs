//! Making text that workloads control safe for where it is shown: terminals and HTML.
//!
//! Argv, paths, unit and host names come from hosts where the workload may choose them. Before
//! they reach a terminal every control character (C0, DEL, C1) and every bidirectional override
//! is written as a visible escape, so no record can move the cursor, recolour, retitle or
//! reorder what a reviewer reads. Before they reach HTML, `& < > " '` are escaped.

use std::fmt::Write;

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

/// `s` with control characters and bidirectional controls written as `\n`, `\x1b`, `\u{202e}`.
pub fn term_safe(s: &str) -> String {
    if !s.chars().any(needs_escape) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !needs_escape(c) {
            out.push(c);
            continue;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
        }
    }
    out
}

/// JSON text (as `serde_json` writes it) with DEL, C1 and bidirectional controls inside strings
/// written as `\uXXXX`: still the same JSON value, and harmless on a terminal.
pub fn json_term_safe(json: &str) -> String {
    if !json.chars().any(needs_escape) {
        return json.to_string();
    }
    let mut out = String::with_capacity(json.len() + 8);
    for c in json.chars() {
        if needs_escape(c) && c != '\n' {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

/// `s` escaped for HTML text and attribute values.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if needs_escape(c) && c != '\n' && c != '\t' => {
                let _ = write!(out, "&#x{:x};", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_escapes() {
        assert_eq!(term_safe("/usr/bin/curl"), "/usr/bin/curl");
        assert_eq!(
            term_safe("a\x1b[31mred\x07\u{9b}2J\nb"),
            "a\\x1b[31mred\\x07\\x9b2J\\nb"
        );
        assert_eq!(term_safe("evil\u{202e}fdp.exe"), "evil\\u{202e}fdp.exe");
        assert!(!term_safe("\x7f").contains('\x7f'));
    }

    #[test]
    fn json_stays_json() {
        let v = serde_json::json!({"argv": ["\u{9b}31m", "\u{202e}x", "\x1b"]});
        let safe = json_term_safe(&v.to_string());
        assert!(!safe.chars().any(|c| c.is_control()), "{safe}");
        let back: serde_json::Value = serde_json::from_str(&safe).expect("json");
        assert_eq!(back, v);
    }

    #[test]
    fn html_escapes() {
        assert_eq!(
            html_escape("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
        assert_eq!(html_escape("a\x1bb"), "a&#x1b;b");
    }
}
