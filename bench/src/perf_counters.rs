//! Hardware performance counters through `perf stat`, where the machine has them: instructions
//! and cycles per call of a worker, as a figure that does not depend on the scheduler's mood.
//!
//! Virtual machines often expose no PMU; then this says so and the benchmark relies on wall
//! clock and the kernel's BPF run-time statistics. It runs `perf` and parses its CSV output; it
//! loads nothing itself.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use serde::Serialize;

const EVENTS: &str = "instructions,cycles";

/// Counts per call for one benchmark and scenario.
#[derive(Serialize, Clone, Debug)]
pub struct PerCall {
    /// connect or exec.
    pub benchmark: String,
    /// Scenario name.
    pub scenario: String,
    /// Counter name to count per call.
    pub per_call: BTreeMap<String, f64>,
}

/// Whether counters could be used, and what they measured.
#[derive(Serialize, Debug, Default)]
pub struct Availability {
    /// `perf stat -e instructions` counts on this machine.
    pub available: bool,
    /// Why not, when not.
    pub reason: String,
    /// Measurements.
    pub measured: Vec<PerCall>,
    /// Measurements that failed.
    pub errors: Vec<String>,
}

fn perf_binary() -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join("perf"))
        .find(|p| p.exists())
}

/// `event -> count` from `perf stat -x,` output; `None` for events the machine cannot count.
fn parse(stderr: &str) -> BTreeMap<String, Option<f64>> {
    let mut out = BTreeMap::new();
    for line in stderr.lines() {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 3 {
            continue;
        }
        let event = f[2].split(':').next().unwrap_or(f[2]).to_string();
        out.insert(event, f[0].trim().parse::<f64>().ok());
    }
    out
}

impl Availability {
    /// Finds out whether `perf stat -e instructions` counts here.
    pub fn probe() -> Availability {
        let Some(perf) = perf_binary() else {
            return Availability {
                reason:
                    "perf is not installed (Debian: linux-perf; `cargo xtask bench` installs it)"
                        .into(),
                ..Default::default()
            };
        };
        let out = match Command::new(perf)
            .args(["stat", "-x", ",", "-e", "instructions", "--", "true"])
            .output()
        {
            Ok(o) => o,
            Err(e) => {
                return Availability {
                    reason: format!("perf cannot run: {e}"),
                    ..Default::default()
                }
            }
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        match parse(&stderr).get("instructions") {
            Some(Some(_)) => Availability {
                available: true,
                ..Default::default()
            },
            _ => Availability {
                reason: format!(
                    "no hardware counters on this machine (perf stat -e instructions: {})",
                    stderr
                        .lines()
                        .find(|l| l.contains("instructions"))
                        .unwrap_or("no output")
                        .trim()
                ),
                ..Default::default()
            },
        }
    }

    /// Whether counters can be measured.
    pub fn usable(&self) -> bool {
        self.available
    }

    /// Adds a measurement.
    pub fn record(&mut self, benchmark: &str, scenario: &str, per_call: BTreeMap<String, f64>) {
        self.measured.push(PerCall {
            benchmark: benchmark.into(),
            scenario: scenario.into(),
            per_call,
        });
    }

    /// Adds a failure.
    pub fn fail(&mut self, why: String) {
        self.errors.push(why);
    }
}

impl fmt::Display for Availability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.available {
            return write!(f, "hardware counters: not used ({})", self.reason);
        }
        writeln!(f, "hardware counters (perf stat), per call:")?;
        for m in &self.measured {
            let counts: Vec<String> = m
                .per_call
                .iter()
                .map(|(k, v)| format!("{v:.0} {k}"))
                .collect();
            writeln!(
                f,
                "  {:<8} {:<28} {}",
                m.benchmark,
                m.scenario,
                counts.join(", ")
            )?;
        }
        for e in &self.errors {
            writeln!(f, "  failed: {e}")?;
        }
        Ok(())
    }
}

fn counts(cg: &Path, exe: &Path, args: &[&str]) -> Result<BTreeMap<String, f64>> {
    let perf = perf_binary().context("perf is not installed")?;
    let mut full: Vec<&str> = vec!["stat", "-x", ",", "-e", EVENTS, "--"];
    let exe = exe.to_string_lossy();
    full.push(&exe);
    full.extend_from_slice(args);
    let out = latch_tests::spawn_in(cg, &perf, &full)
        .wait_with_output()
        .context("perf stat")?;
    if !out.status.success() {
        bail!(
            "perf stat failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let parsed = parse(&String::from_utf8_lossy(&out.stderr));
    Ok(parsed
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect())
}

/// Counts per call of a worker, free of its start-up: the difference between a run with
/// `args_long` and one with `args_short`, divided by the `extra_calls` the long run makes.
pub fn per_call(
    cg: &Path,
    exe: &Path,
    args_short: &[&str],
    args_long: &[&str],
    extra_calls: usize,
) -> Result<BTreeMap<String, f64>> {
    let short = counts(cg, exe, args_short)?;
    let long = counts(cg, exe, args_long)?;
    Ok(long
        .iter()
        .filter_map(|(k, l)| {
            short
                .get(k)
                .map(|s| (k.clone(), (l - s) / extra_calls as f64))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_counts_and_unsupported_events() {
        let out = "12345,,instructions:u,100.00,,\n<not supported>,,cycles,0,100.00,,\n";
        let p = super::parse(out);
        assert_eq!(p["instructions"], Some(12345.0));
        assert_eq!(p["cycles"], None);
    }
}
