//! OpenMetrics text, as `prometheus-client` encodes it, rewritten as the Prometheus text format
//! (0.0.4) that every scraper and `promtool check metrics` read.
//!
//! Owns: that one rewrite, for the agent's and central's `/metrics`. Must not: know any metric,
//! register or encode anything, or serve HTTP; each binary keeps its own registry and listener.

/// The content type of the text this crate produces.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// OpenMetrics text as the Prometheus text format: a counter's family is named after its samples
/// (`x_total`, where OpenMetrics names it `x`), and there is no `# EOF`. Every other line passes
/// through unchanged.
pub fn from_openmetrics(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE ", "# UNIT "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// For the tests of the binaries that serve this text.
#[cfg(feature = "testing")]
pub mod testing {
    use std::path::PathBuf;

    /// Runs `promtool check metrics` on `text`, as Prometheus would read it. Missing promtool is a
    /// failure (`cargo xtask setup` installs it) unless `LATCH_SKIP_PROMTOOL=1` says to skip.
    pub fn promtool_check(text: &str) {
        use std::io::Write as _;
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(|| PathBuf::from("/var/cache"));
        let candidates = [
            std::env::var_os("LATCH_PROMTOOL").map(PathBuf::from),
            Some(PathBuf::from("promtool")),
            Some(cache.join("latch/tools/promtool/promtool")),
        ];
        let found = candidates.into_iter().flatten().find(|p| {
            std::process::Command::new(p)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
        let Some(promtool) = found else {
            if std::env::var("LATCH_SKIP_PROMTOOL").as_deref() == Ok("1") {
                eprintln!("SKIPPED: promtool not found and LATCH_SKIP_PROMTOOL=1");
                return;
            }
            panic!(
                "promtool not found (LATCH_PROMTOOL, PATH, {}): run `cargo xtask setup`, or set \
                 LATCH_SKIP_PROMTOOL=1 to skip this check explicitly",
                cache.join("latch/tools/promtool/promtool").display()
            );
        };
        let mut child = std::process::Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run promtool");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write to promtool");
        let out = child.wait_with_output().expect("promtool");
        assert!(
            out.status.success(),
            "promtool check metrics: {}\n{}{}\n--- metrics ---\n{text}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_what_the_two_formats_spell_differently_and_nothing_else() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "a counter's family takes its samples' name",
                "# HELP x_events Events.\n# TYPE x_events counter\nx_events_total{k=\"a\"} 2\n# EOF\n",
                "# HELP x_events_total Events.\n# TYPE x_events_total counter\nx_events_total{k=\"a\"} 2\n",
            ),
            (
                "a gauge is left alone",
                "# HELP x_up Up.\n# TYPE x_up gauge\nx_up 1\n# EOF\n",
                "# HELP x_up Up.\n# TYPE x_up gauge\nx_up 1\n",
            ),
            (
                "a histogram is left alone",
                "# TYPE x_s histogram\nx_s_bucket{le=\"+Inf\"} 1\nx_s_sum 0.5\nx_s_count 1\n# EOF\n",
                "# TYPE x_s histogram\nx_s_bucket{le=\"+Inf\"} 1\nx_s_sum 0.5\nx_s_count 1\n",
            ),
            (
                "a help text naming a counter is not renamed inside",
                "# HELP x_events Counts x_events.\n# TYPE x_events counter\nx_events_total 0\n",
                "# HELP x_events_total Counts x_events.\n# TYPE x_events_total counter\nx_events_total 0\n",
            ),
            (
                "a gauge whose name starts like a counter's keeps its name",
                "# TYPE x counter\nx_total 1\n# TYPE x_more gauge\nx_more 2\n",
                "# TYPE x_total counter\nx_total 1\n# TYPE x_more gauge\nx_more 2\n",
            ),
            ("nothing stays nothing", "# EOF\n", ""),
        ];
        for (why, input, want) in cases {
            assert_eq!(from_openmetrics(input), *want, "{why}");
        }
    }
}
