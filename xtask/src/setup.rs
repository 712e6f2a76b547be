//! Installs what the build and the tests need, idempotently.
//!
//! The kernel programs need a Rust compiler with a `core` for `bpfel-unknown-none` and
//! bpf-linker. Two set-ups are supported:
//! - Debian/Ubuntu with Debian's `rustc-web` and its prebuilt BPF `core`
//!   (`libstd-rust-web-dev-bpf`), plus LLVM 22 for bpf-linker. Installed here with apt.
//! - rustup nightly with `rust-src` (`-Z build-std=core`), typical on laptops: nothing to
//!   install but bpf-linker.
//!
//! bpf-linker is installed into a per-user cache (`~/.cache/latch/tools`), where `agent/build.rs`
//! looks for it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

/// bpf-linker release that matches LLVM 22 and the aya versions in use.
pub const LINKER_VERSION: &str = "0.13.0";

/// Debian packages the build needs.
const BUILD_PACKAGES: &[&str] = &[
    "rustc-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "protobuf-compiler",
    "pkg-config",
];

/// Debian packages the tests need on top: a real PostgreSQL server for the storage tests, a
/// real browser with its WebDriver for the web console's test, a C++ compiler for libFuzzer,
/// which the fuzz targets link, and dnsmasq, the DNS server the name rules' tests run.
const TEST_PACKAGES: &[&str] = &[
    "postgresql",
    "iproute2",
    "procps",
    "chromium",
    "chromium-driver",
    "g++",
    "dnsmasq-base",
];

pub fn tools_root() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    cache.join("latch/tools")
}

/// Where bpf-linker goes.
pub fn tools_dir() -> PathBuf {
    tools_root().join(format!("bpf-linker-{LINKER_VERSION}"))
}

/// Where `promtool` goes; the metrics tests look for it there (and on `PATH`).
pub fn promtool_path() -> PathBuf {
    tools_root().join("promtool/promtool")
}

fn promtool_ok(p: &Path) -> bool {
    Command::new(p)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `promtool`, which checks that metrics parse as Prometheus reads them. Only that binary of
/// Debian's `prometheus` package is taken: installing the package would start a server.
fn install_promtool() -> Result<()> {
    let dest = promtool_path();
    if promtool_ok(&dest) {
        return Ok(());
    }
    let work = tools_root().join("promtool/download");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("mkdir {}", work.display()))?;
    eprintln!(
        "setup: fetching promtool (Debian's prometheus package) into {}",
        dest.display()
    );
    run(Command::new("apt-get")
        .args(["download", "-qq", "prometheus"])
        .current_dir(&work))
    .context("downloading Debian's prometheus package")?;
    let deb = std::fs::read_dir(&work)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download left no .deb")?;
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(work.join("x")))?;
    std::fs::copy(work.join("x/usr/bin/promtool"), &dest)
        .with_context(|| format!("installing {}", dest.display()))?;
    let _ = std::fs::remove_dir_all(&work);
    if !promtool_ok(&dest) {
        bail!("{} does not run", dest.display());
    }
    Ok(())
}

fn is_debian_like() -> bool {
    let Ok(text) = std::fs::read_to_string("/etc/os-release") else {
        return false;
    };
    text.lines().any(|l| {
        let l = l.replace('"', "");
        (l.starts_with("ID=") || l.starts_with("ID_LIKE="))
            && (l.contains("debian") || l.contains("ubuntu"))
    })
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn nightly_with_rust_src() -> bool {
    let Ok(out) = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
    else {
        return false;
    };
    out.status.success()
        && Path::new(String::from_utf8_lossy(&out.stdout).trim())
            .join("lib/rustlib/src/rust/library/core")
            .exists()
}

fn apt_install(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "missing Debian packages: {}\ninstall them as root: apt-get install -y {}",
            missing.join(" "),
            missing.join(" ")
        );
    }
    eprintln!("setup: installing {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Whether `bin --version` runs and names `version`: a tool in the cache is the one wanted.
pub fn reports_version(bin: &Path, version: &str) -> bool {
    Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(version))
        .unwrap_or(false)
}

fn linker_ok(dir: &Path) -> bool {
    reports_version(&dir.join("bin/bpf-linker"), LINKER_VERSION)
}

fn install_linker(llvm_prefix: Option<&str>) -> Result<()> {
    let dir = tools_dir();
    if linker_ok(&dir) {
        return Ok(());
    }
    eprintln!(
        "setup: building bpf-linker {LINKER_VERSION} into {}",
        dir.display()
    );
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args([
        "install",
        "bpf-linker",
        "--version",
        LINKER_VERSION,
        "--root",
    ])
    .arg(&dir);
    if let Some(prefix) = llvm_prefix {
        cmd.args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", prefix);
    }
    run(&mut cmd).context("installing bpf-linker")
}

/// Makes the machine able to build (and, with `for_tests`, to test) Latch.
pub fn setup(for_tests: bool) -> Result<()> {
    if is_debian_like() {
        apt_install(BUILD_PACKAGES)?;
        if for_tests {
            apt_install(TEST_PACKAGES)?;
            install_promtool()?;
        }
        install_linker(Some("/usr/lib/llvm-22"))?;
        return Ok(());
    }
    if nightly_with_rust_src() {
        install_linker(None)?;
        return Ok(());
    }
    bail!(
        "this system is neither Debian/Ubuntu nor has rustup nightly with rust-src.\n\
         Latch's kernel programs need one of:\n\
         - Debian/Ubuntu: `cargo xtask setup` installs rustc-web, libstd-rust-web-dev-bpf and LLVM 22;\n\
         - rustup: `rustup toolchain install nightly --component rust-src`, then `cargo xtask setup`."
    )
}

/// What `cargo xtask bench` uses on top of the build: `perf`, for hardware counters where the
/// machine has them (the benchmark says when it has none), and a PostgreSQL server for central's
/// figures on PostgreSQL.
pub fn bench_tools() -> Result<()> {
    if is_debian_like() {
        apt_install(&["linux-perf", "postgresql", "dnsmasq-base"])?;
    }
    Ok(())
}

/// Runs a command, failing with its name and status.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{:?} failed ({status})", cmd);
    }
    Ok(())
}
