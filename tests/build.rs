//! `LATCH_SKIP_PRIVILEGED=1` marks the privileged tests (kernel programs, the agent as root) as
//! ignored at build time, so an opted-out run reports them as "ignored", never as passed.

fn main() {
    println!("cargo::rerun-if-env-changed=LATCH_SKIP_PRIVILEGED");
    println!("cargo::rustc-check-cfg=cfg(latch_skip_privileged)");
    if std::env::var("LATCH_SKIP_PRIVILEGED").as_deref() == Ok("1") {
        println!("cargo::rustc-cfg=latch_skip_privileged");
    }
}
