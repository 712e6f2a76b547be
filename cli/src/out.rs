//! Output for people (aligned tables, colour only on a terminal) and for scripts (JSON). Every
//! cell goes through [`term_safe`]: argv, paths and names the workload chose cannot reach the
//! terminal as control sequences.

use std::io::{IsTerminal, Write};

use latch_central::text::{json_term_safe, term_safe};
use serde_json::Value;

/// How to print.
#[derive(Clone, Copy, Debug)]
pub struct Out {
    /// JSON for scripts.
    pub json: bool,
    /// ANSI colour (stdout is a terminal and `NO_COLOR` is unset).
    pub colour: bool,
}

impl Out {
    /// From the `--json` flag and the environment.
    pub fn new(json: bool) -> Out {
        Out {
            json,
            colour: !json
                && std::io::stdout().is_terminal()
                && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    /// Prints a JSON value on one line, terminal-safe.
    pub fn json_line(&self, v: &Value) {
        println!("{}", json_term_safe(&v.to_string()));
    }

    /// Prints a JSON value, indented, terminal-safe.
    pub fn json_pretty(&self, v: &Value) {
        let text = serde_json::to_string_pretty(v).unwrap_or_default();
        println!("{}", json_term_safe(&text));
    }

    /// `s` in a colour (an SGR code) when colour is on.
    pub fn paint(&self, code: &str, s: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }

    /// A request or grant state, coloured.
    pub fn state(&self, s: &str) -> String {
        let code = match s {
            "pending" => "33",
            "approved" | "active" | "allow" => "32",
            "denied" | "revoked" | "deny" => "31",
            _ => "2",
        };
        self.paint(code, s)
    }

    /// Prints an aligned table. Cells are escaped here; `painted` columns hold cells already
    /// escaped and coloured (their width is measured without the colour).
    pub fn table(&self, headers: &[&str], rows: &[Vec<String>], painted: &[usize]) {
        let cells: Vec<Vec<(String, usize)>> = rows
            .iter()
            .map(|r| {
                r.iter()
                    .enumerate()
                    .map(|(i, c)| {
                        if painted.contains(&i) {
                            let plain = strip_sgr(c);
                            (c.clone(), plain.chars().count())
                        } else {
                            let s = term_safe(c);
                            let w = s.chars().count();
                            (s, w)
                        }
                    })
                    .collect()
            })
            .collect();
        let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
        for r in &cells {
            for (i, (_, w)) in r.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(*w);
                }
            }
        }
        let mut out = std::io::stdout().lock();
        let head: Vec<String> = headers
            .iter()
            .enumerate()
            .map(|(i, h)| pad(h, h.len(), widths[i], i + 1 == headers.len()))
            .collect();
        let _ = writeln!(out, "{}", self.paint("1", head.join("  ").trim_end()));
        for r in &cells {
            let line: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(i, (s, w))| {
                    pad(s, *w, widths.get(i).copied().unwrap_or(0), i + 1 == r.len())
                })
                .collect();
            let _ = writeln!(out, "{}", line.join("  ").trim_end());
        }
    }
}

fn pad(s: &str, w: usize, width: usize, last: bool) -> String {
    if last {
        s.to_string()
    } else {
        format!("{s}{}", " ".repeat(width.saturating_sub(w)))
    }
}

fn strip_sgr(s: &str) -> String {
    let mut out = String::new();
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\x1b' && it.peek() == Some(&'[') {
            for d in it.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Unix ms as RFC 3339 (seconds), or "-".
pub fn time(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// "in 5m 3s" / "2m ago" relative to now.
pub fn relative(ms: i64) -> String {
    let now = latch_central::clock::now_ms();
    let d = std::time::Duration::from_secs(((ms - now).unsigned_abs()) / 1000);
    let text = humantime::format_duration(d).to_string();
    if ms >= now {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn colour_is_measured_without_codes() {
        assert_eq!(super::strip_sgr("\x1b[32mok\x1b[0m"), "ok");
    }
}
