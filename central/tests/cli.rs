//! The binary's subcommands.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_latch-central");

#[test]
fn validate_accepts_the_example() {
    let out = Command::new(BIN)
        .args(["validate", "--config"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/central.example.toml"))
        .output()
        .expect("run latch-central");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(": ok"), "{stdout}");
}

#[test]
fn validate_refuses_a_bad_file_with_its_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:7443\"\ndatabse = \"sqlite:///x\"\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .expect("run latch-central");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.toml") && stderr.contains("databse") && stderr.contains("line 2"),
        "{stderr}"
    );
}

#[test]
fn validate_reports_a_missing_file() {
    let out = Command::new(BIN)
        .args(["validate", "--config", "/nonexistent/central.toml"])
        .output()
        .expect("run latch-central");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/central.toml"));
}
