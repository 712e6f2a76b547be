//! What each guest did, read back from the files it left, and the matrix as a table and as JSON.

use std::{path::Path, time::Duration};

use anyhow::{Context, Result};
use serde::Serialize;

use super::relative;
use crate::root;

/// How one suite ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Failed,
    /// The guest's `timeout` stopped it.
    TimedOut,
    /// It exited without libtest's summary (a panic before the tests, a signal).
    Crashed,
    /// The guest stopped before it ran.
    NotRun,
}

/// One suite in one guest.
#[derive(Debug, Clone, Serialize)]
pub struct SuiteResult {
    pub suite: String,
    pub status: Status,
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    pub filtered_out: u64,
    /// Exit code in the guest.
    pub exit_code: Option<i32>,
    /// Wall time in the guest.
    pub seconds: Option<f64>,
    pub failures: Vec<String>,
    /// Full output, relative to the workspace.
    pub log: String,
}

/// libtest's counts, summed over every `test result:` line of an output.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    pub filtered_out: u64,
    /// Whether any summary line was seen.
    pub summarised: bool,
    /// Names of the tests that failed.
    pub failures: Vec<String>,
}

/// Reads libtest's output: `test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 2
/// filtered out; finished in 1.2s` and the `test NAME ... FAILED` lines.
pub fn parse_libtest(output: &str) -> Counts {
    let mut c = Counts::default();
    for line in output.lines() {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("test result: ") {
            c.summarised = true;
            let Some((_, counts)) = rest.split_once(". ") else {
                continue;
            };
            for part in counts.split(';') {
                let mut words = part.split_whitespace();
                let (Some(n), Some(what)) = (words.next(), words.next()) else {
                    continue;
                };
                let Ok(n) = n.parse::<u64>() else { continue };
                match what {
                    "passed" => c.passed += n,
                    "failed" => c.failed += n,
                    "ignored" => c.ignored += n,
                    "filtered" => c.filtered_out += n,
                    _ => {}
                }
            }
        } else if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|l| l.strip_suffix(" ... FAILED"))
        {
            c.failures.push(name.to_string());
        }
    }
    c
}

/// The last `n` lines of a text.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What `latch-agent doctor --json` said, when it exists and answered.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Doctor {
    pub backend: Option<String>,
    pub links_pinned: Option<bool>,
    /// Its exit code: it reports a degraded host (no BPF LSM) with a failure code and still
    /// prints its JSON.
    pub exit_code: Option<i32>,
}

impl Doctor {
    /// Reads `doctor.json` and `doctor.rc` in `dir`; what is missing stays unknown.
    pub fn read(dir: &Path) -> Doctor {
        let exit_code = std::fs::read_to_string(dir.join("doctor.rc"))
            .ok()
            .and_then(|t| t.trim().parse().ok());
        let Some(v) = std::fs::read_to_string(dir.join("doctor.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        else {
            return Doctor {
                exit_code,
                ..Doctor::default()
            };
        };
        Doctor {
            exit_code,
            backend: v
                .get("backend")
                .and_then(|b| b.as_str())
                .map(str::to_string),
            links_pinned: v.get("links_pinned").and_then(|b| b.as_bool()),
        }
    }
}

/// What a guest reported, whichever kind of guest it was.
#[derive(Debug, Default)]
pub struct GuestReport {
    pub uname: Option<String>,
    pub lsm: Option<String>,
    pub bpffs: Option<bool>,
    pub doctor: Doctor,
    pub suites: Vec<SuiteResult>,
    /// Set when the guest started but stopped before the end of its script.
    pub incomplete: Option<String>,
}

/// One boot of the matrix.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub kernel: String,
    pub arch: &'static str,
    pub package: String,
    /// Whether `package` is the pinned one (not the newest of its series instead).
    pub package_pinned: bool,
    /// `on` or `off`: what was asked for.
    pub lsm_mode: &'static str,
    /// `/sys/kernel/security/lsm` in the guest.
    pub lsm_list: Option<String>,
    /// `uname -r` in the guest.
    pub uname: Option<String>,
    /// Host seconds from starting the VM to the guest running its script.
    pub boot_seconds: Option<f64>,
    pub boot_attempts: u32,
    /// Why the guest did not do what it was asked, if it did not.
    pub boot_error: Option<String>,
    pub doctor: Doctor,
    /// Whether bpffs mounted at /sys/fs/bpf.
    pub bpffs: Option<bool>,
    pub suites: Vec<SuiteResult>,
    /// The run's directory, relative to the workspace.
    pub dir: String,
}

impl RunResult {
    pub fn ok(&self) -> bool {
        self.boot_error.is_none()
            && self.bpffs == Some(true)
            && self.suites.iter().all(|s| s.status == Status::Ok)
    }
}

fn cell(s: Option<&SuiteResult>) -> String {
    let Some(s) = s else {
        return "-".into();
    };
    let total = s.passed + s.failed;
    match s.status {
        Status::Ok if total == 0 => "ok".into(),
        Status::Ok => format!("{}/{} ok", s.passed, total),
        Status::Failed => format!("{}/{} FAIL", s.passed, total),
        Status::TimedOut => "TIMEOUT".into(),
        Status::Crashed => format!(
            "CRASH({})",
            s.exit_code.map_or("?".into(), |c| c.to_string())
        ),
        Status::NotRun => "not run".into(),
    }
}

fn seconds(s: Option<f64>) -> String {
    s.map_or("?".into(), |s| format!("{s:.0}s"))
}

/// The matrix as a text table, one row per boot.
pub fn table(runs: &[RunResult], suites: &[&str]) -> String {
    let mut head: Vec<String> = ["guest kernel", "lsm", "bpffs", "boot"]
        .map(String::from)
        .to_vec();
    head.extend(suites.iter().map(|s| s.to_string()));
    head.extend(["backend", "links pinned", "result"].map(String::from));
    let mut rows = vec![head];
    for r in runs {
        let lsm = match (&r.lsm_list, r.lsm_mode) {
            (Some(list), mode) => {
                let has = list.split(',').any(|l| l.trim() == "bpf");
                format!("{mode} ({})", if has { "bpf listed" } else { "no bpf" })
            }
            (None, mode) => format!("{mode} (?)"),
        };
        let mut row = vec![
            format!(
                "{} {}{}",
                r.kernel,
                r.uname.as_deref().unwrap_or("?"),
                if r.package_pinned {
                    ""
                } else {
                    " (newer than pinned)"
                }
            ),
            lsm,
            match r.bpffs {
                Some(true) => "ok".into(),
                Some(false) => "FAIL".into(),
                None => "?".into(),
            },
            if r.boot_attempts > 1 {
                format!("{} (try {})", seconds(r.boot_seconds), r.boot_attempts)
            } else {
                seconds(r.boot_seconds)
            },
        ];
        for name in suites {
            let s = r.suites.iter().find(|s| s.suite == *name);
            row.push(match s {
                Some(s) => format!("{} {}", cell(Some(s)), seconds(s.seconds)),
                None => cell(None),
            });
        }
        row.push(r.doctor.backend.clone().unwrap_or_else(|| "?".into()));
        row.push(r.doctor.links_pinned.map_or("?".into(), |p| p.to_string()));
        row.push(match (&r.boot_error, r.ok()) {
            (Some(e), _) => format!("BOOT FAILED: {e}"),
            (None, true) => "ok".into(),
            (None, false) => "FAILED".into(),
        });
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (n, row) in rows.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join(" | ").trim_end());
        out.push('\n');
        if n == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&rule.join("-+-"));
            out.push('\n');
        }
    }
    out
}

/// One line about a boot, printed as soon as it is done.
pub fn summary(r: &RunResult) -> String {
    let mut parts = Vec::new();
    if let Some(e) = &r.boot_error {
        parts.push(format!("boot failed: {e}"));
    }
    for s in &r.suites {
        parts.push(format!(
            "{} {:?} ({} passed, {} failed)",
            s.suite, s.status, s.passed, s.failed
        ));
    }
    if parts.is_empty() {
        parts.push("ok".into());
    }
    parts.join("; ")
}

/// `matrix.json`: the table's data.
pub fn write_json(out: &Path, accel: &'static str, results: &[RunResult]) -> Result<()> {
    #[derive(serde::Serialize)]
    struct Matrix<'a> {
        accel: &'static str,
        runs: &'a [RunResult],
    }
    let json = Matrix {
        accel,
        runs: results,
    };
    let path = out.join("matrix.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&json)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// Prints the failures, then the table; whether everything passed.
pub fn finish(results: &[RunResult], took: Duration) -> bool {
    for r in results.iter().filter(|r| !r.ok()) {
        eprintln!("\nvmtest: ==== {}-lsm-{} ====", r.kernel, r.lsm_mode);
        if let Some(e) = &r.boot_error {
            eprintln!("vmtest: boot failed: {e}");
            for log in ["vng.log", "console.log"] {
                let path = root().join(&r.dir).join(log);
                if let Ok(text) = std::fs::read_to_string(&path) {
                    eprintln!(
                        "vmtest: last lines of {}:\n{}",
                        relative(&path),
                        tail(&text, 30)
                    );
                }
            }
        }
        for s in r.suites.iter().filter(|s| s.status != Status::Ok) {
            eprintln!(
                "vmtest: suite {} {:?} (exit {}), full log {}",
                s.suite,
                s.status,
                s.exit_code.map_or("?".into(), |c| c.to_string()),
                s.log
            );
            for f in &s.failures {
                eprintln!("vmtest:   failed: {f}");
            }
            let text = std::fs::read_to_string(root().join(&s.log)).unwrap_or_default();
            let panics = panics(&text);
            if panics.is_empty() {
                eprintln!("{}", tail(&text, 40));
            } else {
                for p in panics {
                    eprintln!("vmtest:   {}", p.replace('\n', "\nvmtest:     "));
                }
            }
        }
    }
    let mut names: Vec<&str> = Vec::new();
    for r in results {
        for s in &r.suites {
            if !names.contains(&s.suite.as_str()) {
                names.push(&s.suite);
            }
        }
    }
    eprintln!(
        "\nvmtest: kernel matrix ({:.0} min; cells: passed/total and time in the guest; logs in target/vmtest/)",
        took.as_secs_f64() / 60.0
    );
    eprint!("{}", table(results, &names));
    let passed: u64 = results
        .iter()
        .flat_map(|r| &r.suites)
        .map(|s| s.passed)
        .sum();
    let failed: u64 = results
        .iter()
        .flat_map(|r| &r.suites)
        .map(|s| s.failed)
        .sum();
    eprintln!("vmtest: {passed} passed, {failed} failed");
    let bad = results.iter().filter(|r| !r.ok()).count();
    if bad > 0 {
        eprintln!("vmtest: {bad} of {} boots failed", results.len());
    }
    bad == 0
}

/// libtest's panic reports without their backtraces: the `panicked at` line and the message
/// that follows it.
pub fn panics(output: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = output.lines().peekable();
    while let Some(line) = lines.next() {
        if !line.contains(" panicked at ") {
            continue;
        }
        let mut report = line.trim().to_string();
        let mut taken = 0;
        while let Some(next) = lines.peek() {
            if taken == 8
                || next.is_empty()
                || next.starts_with("stack backtrace:")
                || next.starts_with("note: ")
                || next.contains(" panicked at ")
            {
                break;
            }
            report.push('\n');
            report.push_str(next.trim_end());
            taken += 1;
            lines.next();
        }
        out.push(report);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_summary_and_failures() {
        let out = "running 3 tests\n\
                   test a::one ... ok\n\
                   test a::two ... FAILED\n\
                   test a::three ... ignored\n\
                   \n\
                   test result: FAILED. 1 passed; 1 failed; 1 ignored; 0 measured; 4 filtered out; finished in 0.10s\n";
        let c = parse_libtest(out);
        assert_eq!(
            c,
            Counts {
                passed: 1,
                failed: 1,
                ignored: 1,
                filtered_out: 4,
                summarised: true,
                failures: vec!["a::two".into()],
            }
        );
    }

    #[test]
    fn no_summary_is_not_a_pass() {
        let c = parse_libtest("thread 'main' panicked at src/lib.rs:1:1\n");
        assert!(!c.summarised);
        assert_eq!(c.passed, 0);
    }

    #[test]
    fn panic_messages_without_backtraces() {
        let out = "test a ... FAILED\n\
                   thread 'a' (7) panicked at tests/x.rs:3:5:\n\
                   the agent never showed readiness\n\
                   stack backtrace:\n   0: main\n";
        assert_eq!(
            panics(out),
            vec!["thread 'a' (7) panicked at tests/x.rs:3:5:\nthe agent never showed readiness"]
        );
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
