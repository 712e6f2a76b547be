//! `cargo xtask fuzz`, and the fuzzing step of `cargo xtask test`: every fuzz target of every
//! crate (`*/fuzz`, cargo-fuzz layout) is built with coverage instrumentation and run by
//! libFuzzer for a bounded time. A panic, or an input that takes longer or more memory than the
//! limits, fails the step, naming the target and the input libFuzzer kept.
//!
//! The fuzz crates build with the machine's stable toolchain: without a sanitizer
//! (`--sanitizer none`, since sanitizers need a nightly toolchain) cargo-fuzz passes only
//! stable codegen options. Panics, which is what a parser of outside input must never do,
//! abort the run all the same.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::{root, setup};

/// cargo-fuzz release installed into the tools cache.
const CARGO_FUZZ_VERSION: &str = "0.13.1";

/// One crate's fuzz targets.
#[derive(Debug, PartialEq, Eq)]
pub struct Crate {
    /// The crate's directory, relative to the workspace (`policy`).
    pub dir: String,
    /// Its targets, by name (`rules`).
    pub targets: Vec<String>,
}

/// Every crate of the workspace with a `fuzz/` directory, and the targets each one declares
/// (`[[bin]]` of `fuzz/Cargo.toml`), in name order.
pub fn crates(root: &Path) -> Result<Vec<Crate>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root).with_context(|| format!("listing {}", root.display()))? {
        let dir = entry?.path();
        let manifest = dir.join("fuzz/Cargo.toml");
        if !manifest.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&manifest)
            .with_context(|| format!("reading {}", manifest.display()))?;
        let targets = targets(&text).with_context(|| format!("in {}", manifest.display()))?;
        if targets.is_empty() {
            bail!("{} declares no fuzz target", manifest.display());
        }
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .context("a crate directory that is not UTF-8")?
            .to_string();
        out.push(Crate { dir: name, targets });
    }
    out.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(out)
}

/// The `[[bin]]` names of a fuzz crate's manifest.
fn targets(manifest: &str) -> Result<Vec<String>> {
    let doc: toml::Table = manifest.parse().context("not a TOML manifest")?;
    let Some(bins) = doc.get("bin") else {
        return Ok(Vec::new());
    };
    let bins = bins.as_array().context("`bin` is not an array of tables")?;
    let mut names = bins
        .iter()
        .map(|b| {
            b.get("name")
                .and_then(|n| n.as_str())
                .map(str::to_string)
                .context("a `[[bin]]` without a name")
        })
        .collect::<Result<Vec<_>>>()?;
    names.sort();
    Ok(names)
}

fn cargo_fuzz_dir() -> PathBuf {
    setup::tools_root().join(format!("cargo-fuzz-{CARGO_FUZZ_VERSION}"))
}

/// Installs cargo-fuzz into the tools cache, unless it is there.
fn install_cargo_fuzz() -> Result<PathBuf> {
    let dir = cargo_fuzz_dir();
    let bin = dir.join("bin/cargo-fuzz");
    if !setup::reports_version(&bin, CARGO_FUZZ_VERSION) {
        eprintln!(
            "fuzz: installing cargo-fuzz {CARGO_FUZZ_VERSION} into {}",
            dir.display()
        );
        setup::run(
            Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args([
                    "install",
                    "cargo-fuzz",
                    "--locked",
                    "--version",
                    CARGO_FUZZ_VERSION,
                    "--root",
                ])
                .arg(&dir),
        )
        .context("installing cargo-fuzz")?;
    }
    Ok(bin)
}

/// The kernel object for the agent's fuzz crate: the one given in `LATCH_EBPF_OBJECT`, else the
/// one the main build made. Its build script would otherwise build the kernel programs again
/// with the fuzzing flags, which they cannot take.
fn ebpf_object(root: &Path) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("LATCH_EBPF_OBJECT") {
        return Ok(PathBuf::from(p));
    }
    let p = root.join("target/ebpf/bpfel-unknown-none/release/agent-ebpf");
    if !p.is_file() {
        bail!(
            "{} is missing: the workspace must be built before it is fuzzed",
            p.display()
        );
    }
    Ok(p)
}

fn fuzz_command(bin: &Path, root: &Path, krate: &Crate) -> Result<Command> {
    let mut c = Command::new(bin);
    // cargo-fuzz finds `fuzz/` below the directory it runs in.
    c.current_dir(root.join(&krate.dir))
        .env("CARGO_TARGET_DIR", root.join("target/fuzz"))
        .env("CARGO_INCREMENTAL", "0");
    // cargo-fuzz runs `cargo` from PATH: the one running xtask comes first.
    if let Some(dir) = std::env::var_os("CARGO")
        .map(PathBuf::from)
        .and_then(|c| c.parent().map(Path::to_path_buf))
    {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let joined = std::env::join_paths(std::iter::once(dir).chain(std::env::split_paths(&path)))
            .context("PATH with cargo's directory")?;
        c.env("PATH", joined);
    }
    if krate.dir == "agent" {
        c.env("LATCH_EBPF_OBJECT", ebpf_object(root)?);
    }
    Ok(c)
}

/// The build profile for runs of `seconds` a target. An optimised build of the agent's targets
/// takes minutes longer (3 more on these machines) for about ten times the inputs a second: worth
/// it for a campaign, not for the short run of the test command.
fn profile_for(seconds: u64) -> &'static str {
    if seconds <= 60 {
        "--dev"
    } else {
        "--release"
    }
}

/// Builds and runs every target for about `seconds` each.
pub fn run(seconds: u64) -> Result<()> {
    if std::env::var("LATCH_SKIP_FUZZ").as_deref() == Ok("1") {
        eprintln!("fuzz: SKIPPED: LATCH_SKIP_FUZZ=1 is set; no fuzz target ran");
        return Ok(());
    }
    let root = root();
    let bin = install_cargo_fuzz()?;
    let crates = crates(&root)?;
    let profile = profile_for(seconds);
    let mut failed = Vec::new();
    let mut ran = 0;
    for krate in &crates {
        // The crate's dependencies at the versions the workspace has: a fuzz crate resolved on
        // its own would take whatever is newest that day. Copied again when the workspace's
        // changed since, and only then: the packages only fuzzing uses (libFuzzer's) keep the
        // versions they were first resolved to.
        let lock = root.join(&krate.dir).join("fuzz/Cargo.lock");
        let workspace_lock = root.join("Cargo.lock");
        if newer(&workspace_lock, &lock) {
            std::fs::copy(&workspace_lock, &lock).with_context(|| {
                format!("copying the workspace's Cargo.lock to {}", lock.display())
            })?;
        }
        eprintln!("fuzz: building {}'s targets", krate.dir);
        let built = fuzz_command(&bin, &root, krate)?
            .args([
                "build",
                "--sanitizer",
                "none",
                "--debug-assertions",
                profile,
            ])
            .status()
            .with_context(|| format!("running {}", bin.display()))?;
        if !built.success() {
            failed.push(format!("{}: the fuzz targets do not build", krate.dir));
            continue;
        }
        for target in &krate.targets {
            let corpus = made(
                root.join("target/fuzz-corpus")
                    .join(&krate.dir)
                    .join(target),
            )?;
            let artifacts = made(
                root.join("target/fuzz-artifacts")
                    .join(&krate.dir)
                    .join(target),
            )?;
            let started = Instant::now();
            let out = fuzz_command(&bin, &root, krate)?
                .args([
                    "run",
                    "--sanitizer",
                    "none",
                    "--debug-assertions",
                    profile,
                    target,
                ])
                .arg(&corpus)
                .arg("--")
                .arg(format!("-max_total_time={seconds}"))
                .arg(format!("-artifact_prefix={}/", artifacts.display()))
                // A slow or hungry input is a finding too.
                .args(["-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"])
                .output()
                .with_context(|| format!("running {}", bin.display()))?;
            ran += 1;
            let stderr = String::from_utf8_lossy(&out.stderr);
            let runs = stats(&stderr, "stat::number_of_executed_units:");
            if out.status.success() {
                eprintln!(
                    "fuzz: {}/{target}: {} inputs in {:.0} s, no failure",
                    krate.dir,
                    runs.map_or("?".to_string(), |n| n.to_string()),
                    started.elapsed().as_secs_f64()
                );
            } else {
                let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
                eprintln!(
                    "fuzz: {}/{target} FAILED ({}); what libFuzzer kept is in {}\n{}",
                    krate.dir,
                    out.status,
                    artifacts.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
                failed.push(format!("{}/{target}", krate.dir));
            }
        }
    }
    if !failed.is_empty() {
        bail!("fuzzing failed: {}", failed.join(", "));
    }
    eprintln!("fuzz: {ran} targets ran, none failed");
    Ok(())
}

/// Whether `a` was changed after `b`, or `b` is missing.
fn newer(a: &Path, b: &Path) -> bool {
    let changed = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (changed(a), changed(b)) {
        (Some(a), Some(b)) => a > b,
        (_, None) => true,
        (None, Some(_)) => false,
    }
}

/// `dir`, made if missing.
fn made(dir: PathBuf) -> Result<PathBuf> {
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// A number libFuzzer's final statistics give (`-print_final_stats=1`).
fn stats(stderr: &str, key: &str) -> Option<u64> {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_runs_build_unoptimised_and_campaigns_optimised() {
        for (seconds, profile) in [(1, "--dev"), (7, "--dev"), (60, "--dev"), (61, "--release")] {
            assert_eq!(profile_for(seconds), profile, "{seconds} s");
        }
    }

    #[test]
    fn targets_are_the_manifest_bins_in_name_order() {
        let m = "[package]\nname = \"x\"\n\n[[bin]]\nname = \"zeta\"\npath = \"a.rs\"\n\n[[bin]]\nname = \"alpha\"\npath = \"b.rs\"\n";
        assert_eq!(targets(m).expect("parses"), ["alpha", "zeta"]);
        assert!(targets("[package]\nname = \"x\"\n")
            .expect("parses")
            .is_empty());
        let e = targets("[[bin]]\npath = \"a.rs\"\n").expect_err("a bin without a name");
        assert!(e.to_string().contains("without a name"), "{e}");
        assert!(targets("not toml [").is_err());
    }

    #[test]
    fn every_crate_with_a_fuzz_directory_is_found() {
        let found = crates(&root()).expect("the workspace's fuzz crates");
        let dirs: Vec<&str> = found.iter().map(|c| c.dir.as_str()).collect();
        // The parsers of outside input each have a crate here; one that lost its fuzz
        // directory, or a manifest that declares nothing, shows up as a difference.
        assert_eq!(dirs, ["agent", "journal", "policy", "redact"]);
        assert!(found.iter().all(|c| !c.targets.is_empty()));
    }

    #[test]
    fn a_lock_is_copied_when_missing_or_older() {
        let dir = std::env::temp_dir().join(format!("xtask-newer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::write(&a, "x").expect("write");
        let _ = std::fs::remove_file(&b);
        assert!(newer(&a, &b), "missing");
        std::fs::write(&b, "y").expect("write");
        let set = |p: &Path, t: std::time::SystemTime| {
            std::fs::File::options()
                .write(true)
                .open(p)
                .and_then(|f| f.set_modified(t))
                .expect("set the time");
        };
        let now = std::time::SystemTime::now();
        set(&a, now - std::time::Duration::from_secs(60));
        set(&b, now);
        assert!(!newer(&a, &b), "older");
        set(&b, now - std::time::Duration::from_secs(120));
        assert!(newer(&a, &b), "newer");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn final_stats_are_read_by_key() {
        let err = "INFO: ...\nstat::number_of_executed_units: 12345\nstat::peak_rss_mb: 40\n";
        assert_eq!(stats(err, "stat::number_of_executed_units:"), Some(12345));
        assert_eq!(stats(err, "stat::missing:"), None);
    }
}
