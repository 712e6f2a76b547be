//! The shipped agent unit (`systemd/latch-agent.service`) and configuration
//! (`systemd/agent.toml`), started by a real systemd.
//!
//! Central's unit is not started here: with systemd as a PID namespace's init, systemd 252 leaves
//! a `LoadCredential=` directory empty and root's alone, and central's unit reads its
//! configuration as a credential.
//!
//! systemd runs as the init of a PID namespace of its own (as in a container), with the units,
//! the binaries and the configuration installed where the units name them. That writes to
//! `/etc`, `/usr/local` and `/var/lib`, and systemd takes over the cgroup tree, so this runs in
//! a throwaway VM guest only: `cargo xtask vmtest` sets `LATCH_SYSTEMD_GUEST=1` there.
//! Elsewhere it fails, unless `LATCH_SKIP_SYSTEMD=1` says to skip it (`cargo xtask test`'s
//! native run does, as its VM matrix runs it).

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use latch_tests::{binary, patience, privileged, status_watching};

/// Whether this runs here: in a VM guest, or skipped by name.
fn wanted() -> bool {
    if std::env::var("LATCH_SKIP_SYSTEMD").as_deref() == Ok("1") {
        eprintln!("SKIPPED: LATCH_SKIP_SYSTEMD=1 (the units under systemd run in the VM matrix)");
        return false;
    }
    if !privileged() {
        return false;
    }
    assert_eq!(
        std::env::var("LATCH_SYSTEMD_GUEST").as_deref(),
        Ok("1"),
        "this suite installs the units into /etc and /usr/local and starts systemd over the \
         cgroup tree: it runs in a VM guest of `cargo xtask vmtest` (which sets \
         LATCH_SYSTEMD_GUEST=1); set LATCH_SKIP_SYSTEMD=1 to skip it explicitly"
    );
    true
}

/// systemd as the init of a new PID namespace, stopped (with everything it started) on drop.
struct Systemd {
    unshare: Child,
    pid: u32,
}

/// The unit systemd starts at boot: the journal and the early boot (`basic.target`), as a
/// service's default dependencies expect it.
const BOOT_TARGET: &str = "latch-vmtest.target";

/// Debian's rule that empties `/tmp` at boot, masked: in the guest, `/tmp` is the host's, with
/// the checkout and its test binaries when the checkout lies there.
const TMP_RULE: &str = "/etc/tmpfiles.d/tmp.conf";

impl Systemd {
    fn boot() -> Systemd {
        std::fs::create_dir_all("/etc/tmpfiles.d").expect("mkdir /etc/tmpfiles.d");
        let _ = std::fs::remove_file(TMP_RULE);
        std::os::unix::fs::symlink("/dev/null", TMP_RULE).expect("mask tmp.conf");
        let survivor = Path::new("/tmp/latch-vmtest-boot-survivor");
        write(survivor, "", 0o644);
        write(
            Path::new("/etc/systemd/system").join(BOOT_TARGET),
            "[Unit]\nDescription=Latch unit tests\nWants=systemd-journald.socket basic.target\n\
             After=basic.target\n",
            0o644,
        );
        let unshare = Command::new("unshare")
            .args([
                "--pid",
                "--fork",
                "--kill-child",
                "--mount-proc",
                "--propagation",
                "private",
                "--",
                "/lib/systemd/systemd",
                "--system",
            ])
            .arg(format!("--unit={BOOT_TARGET}"))
            // Tells systemd it is a container's init: units meant for a machine's own init
            // (`ConditionVirtualization=!container`) stay off.
            .env("container", "latch-vmtest")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start unshare");
        let deadline = Instant::now() + patience() * 3;
        let children = format!("/proc/{0}/task/{0}/children", unshare.id());
        // Made first, so that a failure below still stops what was started.
        let mut sd = Systemd { unshare, pid: 0 };
        sd.pid = loop {
            let text = std::fs::read_to_string(&children).unwrap_or_default();
            if let Some(pid) = text.split_whitespace().next().and_then(|p| p.parse().ok()) {
                break pid;
            }
            assert!(Instant::now() < deadline, "systemd never started");
            std::thread::sleep(Duration::from_millis(50));
        };
        loop {
            let state = sd.ctl(&["is-system-running"]);
            let state = String::from_utf8_lossy(&state.stdout).trim().to_string();
            if state == "running" || state == "degraded" {
                break;
            }
            if Instant::now() >= deadline {
                let jobs = sd.ctl(&["list-jobs", "--no-pager"]);
                panic!(
                    "systemd never finished starting: {state}; jobs:\n{}",
                    String::from_utf8_lossy(&jobs.stdout)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(
            sd.at(&survivor.to_string_lossy()).exists(),
            "systemd's boot emptied /tmp, and with it any checkout there"
        );
        sd
    }

    /// `path` as systemd's services see it: in its mount namespace, a private copy of this one
    /// that systemd mounts in.
    fn at(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{path}", self.pid))
    }

    /// `systemctl ARGS` against this systemd.
    fn ctl(&self, args: &[&str]) -> Output {
        self.inside("systemctl", args)
    }

    /// Runs `program` in systemd's namespaces.
    fn inside(&self, program: &str, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.pid.to_string(), "-a", program])
            .args(args)
            .output()
            .expect("run nsenter")
    }

    /// `systemctl ARGS`, which must succeed.
    fn must(&self, args: &[&str]) {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "systemctl {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.journal()
        );
    }

    /// One property of a unit (`systemctl show -P`).
    fn property(&self, unit: &str, name: &str) -> String {
        let out = self.ctl(&["show", "-P", name, unit]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Waits until `unit` is `want` (`active`, `inactive`, `failed`).
    fn wait_state(&self, unit: &str, want: &str) {
        let deadline = Instant::now() + patience() * 3;
        loop {
            let now = self.property(unit, "ActiveState");
            if now == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{unit} is {now}, never {want}\n{}",
                self.journal()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `unit`'s journal has a line with `text`.
    fn wait_journal(&self, unit: &str, text: &str) {
        let deadline = Instant::now() + patience() * 3;
        loop {
            let journal = self.journal_of(unit);
            if journal.contains(text) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{unit} never logged {text:?}\n{journal}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The agent's journal, for failure messages.
    fn journal(&self) -> String {
        self.journal_of("latch-agent.service")
    }

    /// A unit's journal, for failure messages.
    fn journal_of(&self, unit: &str) -> String {
        let out = self.inside(
            "journalctl",
            &["--no-pager", "-o", "short-monotonic", "-u", unit],
        );
        format!(
            "journal:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        // The init of a PID namespace takes everything in it along when it dies.
        if self.pid != 0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

fn write(path: impl AsRef<Path>, text: &str, mode: u32) {
    let path = path.as_ref();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn install(from: &Path, to: impl AsRef<Path>, mode: u32) {
    let to = to.as_ref();
    std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../systemd")
        .join(name)
}

/// A oneshot service in `slice` that runs `command`.
fn oneshot(sd: &Systemd, name: &str, slice: &str, command: &str) -> String {
    let unit = format!("{name}.service");
    write(
        Path::new("/etc/systemd/system").join(&unit),
        &format!("[Service]\nType=oneshot\nSlice={slice}\nExecStart={command}\n"),
        0o644,
    );
    sd.must(&["daemon-reload"]);
    // A oneshot's start returns once it has run; its result is read after.
    let _ = sd.ctl(&["start", &unit]);
    unit
}

#[test]
fn the_shipped_agent_unit_enforces_its_rules_under_systemd() {
    if !wanted() {
        return;
    }
    let sd = Systemd::boot();
    install(&binary("latch-agent"), "/usr/local/bin/latch-agent", 0o755);
    install(
        &shipped("latch-agent.service"),
        "/etc/systemd/system/latch-agent.service",
        0o644,
    );

    // The agent, with the shipped configuration: its rules name a program in /tmp by path.
    let tool = "/tmp/latch-unit-tool";
    let link = "/tmp/latch-unit-link";
    let _ = std::fs::remove_file(sd.at(link));
    install(Path::new("/usr/bin/touch"), sd.at(tool), 0o755);
    std::os::unix::fs::symlink(tool, sd.at(link)).expect("symlink");
    install(&shipped("agent.toml"), "/etc/latch/agent.toml", 0o644);
    write(
        "/etc/latch/rules.yaml",
        &format!(
            "workloads:\n  - name: units\n    cgroups: [\"/latchwl.slice\"]\nrules:\n  - {{name: \
             no-tool, workload: units, on: exec, paths: [{tool}], action: deny}}\n"
        ),
        0o644,
    );
    write(
        "/etc/systemd/system/latchwl.slice",
        "[Unit]\nDescription=watched\n",
        0o644,
    );
    write(
        "/etc/systemd/system/latchfree.slice",
        "[Unit]\nDescription=not watched\n",
        0o644,
    );
    write(
        "/etc/systemd/system/latch-wl-idle.service",
        "[Service]\nSlice=latchwl.slice\nExecStart=/bin/sleep infinity\n",
        0o644,
    );
    sd.must(&["daemon-reload"]);
    // The slice's cgroup exists once something runs in it.
    sd.must(&["start", "latch-wl-idle.service"]);
    sd.must(&["start", "latch-agent.service"]);
    // A reload as soon as the agent says it is starting, while it loads its programs (seconds,
    // more in an emulated guest): the unit is active, and so reloadable, from its start. The
    // reload waits for the agent to be ready, and is done then.
    sd.wait_journal("latch-agent.service", "latch-agent starting");
    sd.must(&["reload", "latch-agent.service"]);
    wait_watching(&sd);
    sd.wait_journal("latch-agent.service", "reloading rules");
    sd.wait_state("latch-agent.service", "active");

    // Unwatched, the program runs by its other name; watched, it does not.
    let free_marker = "/tmp/latch-unit-ran-unwatched";
    let watched_marker = "/tmp/latch-unit-ran-watched";
    for m in [free_marker, watched_marker] {
        let _ = std::fs::remove_file(sd.at(m));
    }
    let free = oneshot(
        &sd,
        "latch-free-run",
        "latchfree.slice",
        &format!("{link} {free_marker}"),
    );
    assert!(
        sd.at(free_marker).exists(),
        "the program did not run from an unwatched slice ({}: {})\n{}",
        free,
        sd.property(&free, "Result"),
        sd.journal_of(&free)
    );
    let watched = oneshot(
        &sd,
        "latch-watched-run",
        "latchwl.slice",
        &format!("{link} {watched_marker}"),
    );
    assert!(
        !sd.at(watched_marker).exists(),
        "a program a rule denies ran under another name in a watched slice\n{}",
        sd.journal()
    );
    // Refused, not failed for another reason: `execve` refused (the LSM backend; systemd's
    // status for a command it could not run), or the task ended before its first instruction
    // (the tracepoint backend).
    let outcome = (
        sd.property(&watched, "Result"),
        sd.property(&watched, "ExecMainStatus"),
    );
    assert!(
        matches!(
            (outcome.0.as_str(), outcome.1.as_str()),
            ("exit-code", "203") | ("signal", "9")
        ),
        "the watched service ended with {outcome:?}, not refused\n{}",
        sd.journal_of(&watched)
    );

    // Stopped as an operator does: the stop releases, and the unit ends clean.
    sd.must(&["stop", "latch-agent.service"]);
    sd.wait_state("latch-agent.service", "inactive");
    assert_eq!(
        sd.property("latch-agent.service", "Result"),
        "success",
        "the agent's stop\n{}",
        sd.journal()
    );
}

/// Waits until the agent reports a watched cgroup, through its default admin socket.
fn wait_watching(sd: &Systemd) {
    let deadline = Instant::now() + patience() * 3;
    loop {
        // In systemd's namespaces, where the unit made the socket.
        let out = sd.inside(
            "/usr/local/bin/latch-agent",
            &["--config", "/etc/latch/agent.toml", "status", "--json"],
        );
        if status_watching(&out) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never watched the slice: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            sd.journal()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
