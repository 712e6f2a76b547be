//! The privileged test suites that run inside the guests, as cargo builds them.

use std::{collections::BTreeMap, path::PathBuf, process::Stdio};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::{cargo, setup::run};

/// An integration test binary of the `latch-tests` package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Suite {
    /// The kernel programs driven directly (`tests/tests/kernel.rs`).
    Kernel,
    /// Ways around a rule, tried as a hostile workload would (`tests/tests/integrity.rs`).
    Integrity,
    /// The `latch-agent` daemon as a person runs it (`tests/tests/daemon.rs`).
    Daemon,
    /// Programs by content through the whole agent (`tests/tests/content.rs`).
    Content,
    /// Rules on a program's arguments through the whole agent (`tests/tests/args.rs`).
    Args,
    /// Destinations by name through the whole agent and a real DNS server
    /// (`tests/tests/names.rs`).
    Names,
    /// The agent and central together (`tests/tests/central.rs`).
    Central,
    /// The shipped units and agent configuration under a real systemd
    /// (`tests/tests/systemd.rs`); in guests only, as it installs them and starts systemd.
    /// The last variant: a boot runs its suites in this order, and this one leaves things
    /// behind.
    Systemd,
}

impl Suite {
    /// The test target's name, which is also what the table calls it.
    pub fn name(self) -> &'static str {
        match self {
            Suite::Kernel => "kernel",
            Suite::Integrity => "integrity",
            Suite::Daemon => "daemon",
            Suite::Content => "content",
            Suite::Args => "args",
            Suite::Names => "names",
            Suite::Central => "central",
            Suite::Systemd => "systemd",
        }
    }
}

#[derive(Deserialize)]
struct Message {
    reason: String,
    #[serde(default)]
    package_id: String,
    target: Option<Target>,
    executable: Option<PathBuf>,
}

#[derive(Deserialize)]
struct Target {
    name: String,
    kind: Vec<String>,
}

/// Whether a cargo package id names the `latch-tests` package, in the old
/// (`latch-tests 0.1.0 (path+file://…)`) and the new (`path+file://…#latch-tests@0.1.0`) form.
fn is_tests_package(id: &str) -> bool {
    id.starts_with("latch-tests ") || id.contains("#latch-tests@")
}

/// Builds the workspace's binaries (the suites run them as processes) and the test binaries, and
/// returns the executables of `wanted`.
pub fn build(wanted: &[Suite]) -> Result<BTreeMap<Suite, PathBuf>> {
    run(cargo().args(["build", "--workspace", "--bins"]))?;
    // The whole workspace, as the native run builds it: the same feature set, so nothing is
    // rebuilt when both run.
    let out = cargo()
        .args([
            "test",
            "--workspace",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("cannot start cargo")?;
    if !out.status.success() {
        bail!("building the test binaries failed ({})", out.status);
    }
    let mut found = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<Message>(line) else {
            continue;
        };
        if msg.reason != "compiler-artifact" || !is_tests_package(&msg.package_id) {
            continue;
        }
        let (Some(target), Some(exe)) = (msg.target, msg.executable) else {
            continue;
        };
        if !target.kind.iter().any(|k| k == "test") {
            continue;
        }
        if let Some(&suite) = wanted.iter().find(|s| s.name() == target.name) {
            found.insert(suite, exe);
        }
    }
    for suite in wanted {
        if !found.contains_key(suite) {
            bail!(
                "cargo built no `{}` test of latch-tests (tests/tests/{}.rs)",
                suite.name(),
                suite.name()
            );
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_ids_of_both_cargo_formats() {
        assert!(is_tests_package("path+file:///w/tests#latch-tests@0.1.0"));
        assert!(is_tests_package("latch-tests 0.1.0 (path+file:///w/tests)"));
        assert!(!is_tests_package("path+file:///w/agent#latch-agent@0.1.0"));
        assert!(!is_tests_package(
            "path+file:///w/x#latch-tests-extra@0.1.0"
        ));
    }
}
