//! Builds the kernel programs (`agent-ebpf`) for `bpfel-unknown-none` and leaves the object in
//! `OUT_DIR` for `include_bytes!`, so that the agent binary carries its kernel side with it.
//!
//! The eBPF crate needs a compiler with a `core` for the BPF target. Two set-ups are recognised,
//! in this order: Debian's `rustc-web` with `libstd-rust-web-dev-bpf` (a prebuilt `core`), and
//! rustup nightly with `rust-src` (`-Z build-std=core`). `cargo xtask setup` installs the first on
//! Debian/Ubuntu. `LATCH_EBPF_OBJECT=path` skips the build and embeds a prebuilt object.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const LINKER_VERSION: &str = "0.13.0";

fn main() {
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest
        .parent()
        .expect("agent/ lives in the workspace")
        .to_path_buf();
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let dest = out.join("latch.bpf.o");

    println!("cargo:rerun-if-env-changed=LATCH_EBPF_OBJECT");
    for p in [
        "agent-ebpf/src",
        "agent-ebpf/Cargo.toml",
        "agent-ebpf/Cargo.lock",
        "agent-common/src",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }

    if let Some(prebuilt) = env::var_os("LATCH_EBPF_OBJECT") {
        std::fs::copy(&prebuilt, &dest).unwrap_or_else(|e| {
            fail(&format!(
                "LATCH_EBPF_OBJECT={}: cannot copy: {e}",
                Path::new(&prebuilt).display()
            ))
        });
        return;
    }

    let linker_dir = find_linker().unwrap_or_else(|| {
        fail(&format!(
            "bpf-linker {LINKER_VERSION} was not found on PATH nor in {}; run `cargo xtask setup`",
            tools_dir().display()
        ))
    });
    let target_dir = root.join("target").join("ebpf");
    let mut cmd = match toolchain() {
        Some(Toolchain::Debian) => {
            let mut c = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            c.env("RUSTC", "/usr/bin/rustc").env("RUSTC_BOOTSTRAP", "1");
            c.args(["build", "--release"]);
            c
        }
        Some(Toolchain::RustupNightly) => {
            let mut c = Command::new("rustup");
            c.args(["run", "nightly", "cargo", "build", "--release", "-Z", "build-std=core"]);
            c.env_remove("RUSTC");
            c
        }
        None => fail(
            "no compiler for bpfel-unknown-none: install Debian's rustc-web and \
             libstd-rust-web-dev-bpf, or rustup nightly with rust-src (`cargo xtask setup` does this)",
        ),
    };
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTUP_TOOLCHAIN",
        "CARGO_MAKEFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let path = env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![linker_dir];
    paths.extend(env::split_paths(&path));
    cmd.env(
        "PATH",
        env::join_paths(paths).expect("PATH entries are valid"),
    )
    .env("CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS", "fallback")
    // cpu v3: 32-bit sub-registers, bounded loops and compare-and-swap, all in Linux >= 5.12.
    .env(
        "CARGO_ENCODED_RUSTFLAGS",
        "-Ctarget-cpu=v3\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf",
    )
    .args(["--target", "bpfel-unknown-none", "--target-dir"])
    .arg(&target_dir)
    .arg("--manifest-path")
    .arg(root.join("agent-ebpf/Cargo.toml"))
    .current_dir(root.join("agent-ebpf"));
    let status = cmd
        .status()
        .unwrap_or_else(|e| fail(&format!("cannot run the eBPF build: {e}")));
    if !status.success() {
        fail(&format!(
            "the eBPF build failed ({status}); see the errors above"
        ));
    }
    let built = target_dir.join("bpfel-unknown-none/release/agent-ebpf");
    std::fs::copy(&built, &dest)
        .unwrap_or_else(|e| fail(&format!("cannot copy {}: {e}", built.display())));
}

enum Toolchain {
    Debian,
    RustupNightly,
}

fn toolchain() -> Option<Toolchain> {
    if Path::new("/usr/bin/rustc").exists()
        && Path::new("/usr/lib/rustlib/bpfel-unknown-none").exists()
    {
        return Some(Toolchain::Debian);
    }
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .ok()?;
    if !sysroot.status.success() {
        return None;
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    sysroot
        .join("lib/rustlib/src/rust/library/core")
        .exists()
        .then_some(Toolchain::RustupNightly)
}

fn tools_dir() -> PathBuf {
    let cache = env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    cache
        .join("latch/tools")
        .join(format!("bpf-linker-{LINKER_VERSION}/bin"))
}

fn find_linker() -> Option<PathBuf> {
    let ours = tools_dir();
    if ours.join("bpf-linker").exists() {
        return Some(ours);
    }
    env::split_paths(&env::var_os("PATH")?).find(|d| d.join("bpf-linker").exists())
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    println!("cargo:warning={msg}");
    std::process::exit(1);
}
