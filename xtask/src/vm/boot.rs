//! Running one VM with two deadlines, and retrying a boot that never got going.
//!
//! Under emulation about one boot in twenty hangs before the guest runs anything, with no output.
//! Such a boot is retried once; a guest that got as far as running its script is never retried,
//! so a failing or hanging test shows as what it is.

use std::{
    fs::File,
    path::Path,
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

/// How long a VM may take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From start until the guest says it is running its script.
    pub boot: Duration,
    /// From start until the VM is gone.
    pub total: Duration,
}

/// How one attempt went.
#[derive(Debug)]
pub struct Attempt {
    /// When the guest said it started, after the VM was started.
    pub started_after: Option<Duration>,
    /// The exit status, when the VM exited by itself within the total limit.
    pub status: Option<ExitStatus>,
    /// Which limit stopped it, if one did.
    pub stopped_by: Option<&'static str>,
}

/// The attempts of one boot, the last one deciding.
#[derive(Debug)]
pub struct Outcome {
    pub last: Attempt,
    pub attempts: u32,
}

impl Outcome {
    /// Why the VM failed as a VM (not as a test run), if it did.
    pub fn error(&self) -> Option<String> {
        let a = &self.last;
        match (a.started_after, a.stopped_by, a.status) {
            (None, Some(limit), _) => Some(format!("no start within the {limit} limit")),
            (None, None, Some(s)) => Some(format!("exited ({s}) before the guest started")),
            (None, None, None) => Some("no start".into()),
            (Some(_), Some(limit), _) => Some(format!("stopped by the {limit} limit")),
            (Some(_), None, _) => None,
        }
    }
}

/// Runs `cmd` under coreutils' `timeout` (so that qemu, a grandchild, goes with it) with its
/// output in `log`, and `started` polled to see when the guest runs its script.
fn attempt(
    cmd: &Command,
    log: &Path,
    started: &dyn Fn() -> bool,
    limits: Limits,
) -> Result<Attempt> {
    let mut wrapped = Command::new("timeout");
    wrapped
        .args(["-k", "10", &format!("{}", limits.total.as_secs())])
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .stdin(Stdio::null());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let mut child = wrapped
        .stdout(out)
        .stderr(err)
        .spawn()
        .context("cannot start timeout(1)")?;
    let t0 = Instant::now();
    let mut started_after = None;
    let mut stopped_by = None;
    loop {
        if let Some(status) = child.try_wait()? {
            if started_after.is_none() && started() {
                started_after = Some(t0.elapsed());
            }
            // `timeout` exits 124 when the total limit ran out.
            if status.code() == Some(124) && stopped_by.is_none() {
                stopped_by = Some("total");
            }
            let status = stopped_by.is_none().then_some(status);
            return Ok(Attempt {
                started_after,
                status,
                stopped_by,
            });
        }
        if started_after.is_none() {
            if started() {
                started_after = Some(t0.elapsed());
            } else if t0.elapsed() > limits.boot && stopped_by.is_none() {
                stopped_by = Some("boot");
                // `timeout` passes the signal on to the whole VM.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Boots, and (with `retry`) boots once more when the first VM never reached its script. `reset`
/// runs before each attempt to clear what a previous one left.
pub fn run(
    name: &str,
    cmd: &Command,
    log: &Path,
    started: &dyn Fn() -> bool,
    reset: &dyn Fn() -> Result<()>,
    limits: Limits,
    retry: bool,
) -> Result<Outcome> {
    reset()?;
    let first = attempt(cmd, log, started, limits)?;
    if first.started_after.is_some() || !retry {
        return Ok(Outcome {
            last: first,
            attempts: 1,
        });
    }
    let failed = Outcome {
        last: first,
        attempts: 1,
    };
    eprintln!(
        "vmtest: {name}: {}; booting once more (log of the first try: {}.1)",
        failed.error().unwrap_or_default(),
        log.display()
    );
    let kept = log.with_extension(format!(
        "{}.1",
        log.extension().and_then(|e| e.to_str()).unwrap_or("log")
    ));
    let first_log = std::fs::read(log).unwrap_or_default();
    reset()?;
    let _ = std::fs::write(&kept, first_log);
    let second = attempt(cmd, log, started, limits)?;
    Ok(Outcome {
        last: second,
        attempts: 2,
    })
}
