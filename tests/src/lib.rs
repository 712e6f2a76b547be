//! The kernel test harness: "trigger the action, expect the outcome and the event".
//!
//! Each [`Harness`] loads its own copy of the kernel programs (own pin directory, own maps), makes
//! its own cgroup below the cgroup v2 root, watches it with the rules it was given, and removes
//! everything on drop. Workloads are real processes moved into the cgroup before they exec.
//!
//! These tests need root and a BPF-capable kernel. Without them they fail loudly; set
//! `LATCH_SKIP_PRIVILEGED=1` to skip them on purpose.
//!
//! [`stack`] runs the real `latch-central` and `latch-agent` binaries linked to each other around
//! a test cgroup; [`browser`] drives a real headless Chromium for the web console.

use std::{
    ffi::CString,
    io::Read,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use agent_common::FailMode;
use latch_agent::{
    cgroups,
    events::{self, KernelEvent},
    kernel::{Engine, EngineOptions, PendingOp},
    rules,
};

pub mod browser;
pub mod daemon;
pub mod dns;
pub mod fdpass;
pub mod neighbour;
pub mod packets;
pub mod program;
pub mod stack;

/// Longest a test waits for something the kernel should do at once: 20 s, or
/// `LATCH_TEST_PATIENCE_SECS` (the VM kernel matrix sets more, as its kernels run emulated). Not a
/// performance bound: only a guard so that a broken build fails instead of hanging.
pub fn patience() -> Duration {
    static P: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *P.get_or_init(|| {
        std::env::var("LATCH_TEST_PATIENCE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(20))
    })
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Whether privileged tests run here. Panics (a loud failure) when they cannot and nobody said
/// to skip them.
pub fn privileged() -> bool {
    if std::env::var("LATCH_SKIP_PRIVILEGED").as_deref() == Ok("1") {
        eprintln!("SKIPPED: LATCH_SKIP_PRIVILEGED=1 (kernel tests not run)");
        return false;
    }
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "kernel tests need root and a BPF-capable kernel; run them as root \
             (cargo xtask test does) or set LATCH_SKIP_PRIVILEGED=1 to skip them explicitly"
        );
    }
    true
}

/// A loaded engine watching one fresh cgroup.
pub struct Harness {
    /// The engine (public so tests can drive it directly).
    pub engine: Option<Engine>,
    /// The test cgroup (removed, with everything in it, after the engine on drop).
    pub cgroup: TestCgroup,
    /// Its id.
    pub cgroup_id: u64,
    /// Pin directory.
    pub pin_dir: PathBuf,
    /// The rules in force.
    pub rules: policy::RuleSet,
    /// The compiled rules in force.
    pub compiled: rules::Compiled,
    ring: Option<aya::maps::RingBuf<aya::maps::MapData>>,
    /// Events read so far.
    pub seen: Vec<KernelEvent>,
    children: Vec<u32>,
}

/// A loopback destination for a held `connect()`: a listener whose `accept` does not wait
/// (so a test sees at once whether anything arrived) and its `127.0.0.1:port`.
pub fn destination() -> (std::net::TcpListener, String) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.set_nonblocking(true).expect("nonblocking");
    let target = format!("127.0.0.1:{}", l.local_addr().expect("addr").port());
    (l, target)
}

/// Accepts every connection queued at `l` now, without waiting, and says whether there was one.
/// For what a hook refused: a refused connection never left, so there is nothing to wait for.
pub fn accept_now(l: &std::net::TcpListener) -> bool {
    l.set_nonblocking(true).expect("nonblocking");
    let mut any = false;
    while l.accept().is_ok() {
        any = true;
    }
    any
}

/// Whether a connection arrives at `l`, waiting for it up to [`patience`], then accepting every
/// one queued. For what should arrive: a connection made over loopback can reach the listener's
/// queue after the client's `connect` returned, when softirqs run late on a loaded machine.
pub fn arrives(l: &std::net::TcpListener) -> bool {
    let deadline = Instant::now() + patience();
    while Instant::now() < deadline {
        if accept_now(l) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// Whether an agent's `status --json` says it watches a cgroup, i.e. enforces rules.
pub fn status_watching(status: &std::process::Output) -> bool {
    status.status.success()
        && serde_json::from_slice::<serde_json::Value>(&status.stdout)
            .ok()
            .and_then(|v| v["watched_cgroups"].as_array().map(|a| !a.is_empty()))
            .unwrap_or(false)
}

/// Path of the probe workload binary.
pub fn probe() -> PathBuf {
    binary("latch-probe")
}

/// Path of a workspace binary built next to the tests (`cargo build --workspace --bins`).
pub fn binary(name: &str) -> PathBuf {
    // Test binaries live in target/<profile>/deps, the workspace's binaries one level up, beside
    // a workspace binary that uses these fixtures (the benchmarks).
    let exe = std::env::current_exe().expect("test binary path");
    let own = exe.parent().expect("target/<profile>");
    let dir = if own.ends_with("deps") {
        own.parent().expect("target/<profile>")
    } else {
        own
    };
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing; build the workspace's binaries first (cargo xtask test does)",
        p.display()
    );
    p
}

/// A cgroup made for one test, removed (with everything in it killed) on drop.
pub struct TestCgroup {
    /// Its directory.
    pub path: PathBuf,
    /// Its path relative to the cgroup v2 root.
    pub rel: String,
}

impl TestCgroup {
    /// Makes a fresh cgroup below the root.
    pub fn new() -> Self {
        let name = format!(
            "latch-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let root = latch_agent::kernel::cgroup2_root().expect("cgroup v2 is mounted");
        let path = root.join(&name);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        TestCgroup {
            path,
            rel: format!("/{name}"),
        }
    }
}

impl Default for TestCgroup {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        remove_cgroup(&self.path);
    }
}

/// Kills everything in a cgroup subtree and removes it.
pub fn remove_cgroup(path: &Path) {
    let _ = std::fs::write(path.join("cgroup.kill"), "1");
    let deadline = Instant::now() + patience();
    loop {
        let mut dirs: Vec<PathBuf> = Vec::new();
        collect_dirs(path, &mut dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        let mut all = true;
        for d in &dirs {
            if std::fs::remove_dir(d).is_err() && d.exists() {
                all = false;
            }
        }
        if all || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A shell script that waits until the file `go` exists, moves itself (its own pid, by the
/// builtin `echo`) into the cgroup `to`, and becomes the probe connecting to 127.0.0.1:`port`:
/// a process that leaves its cgroup when the test says so.
pub fn leave_then_connect(go: &Path, to: &Path, port: u16) -> String {
    format!(
        "while [ ! -e {go} ]; do sleep 0.02; done; echo 0 > {to}/cgroup.procs && exec {probe} connect 127.0.0.1:{port}",
        go = go.display(),
        to = to.display(),
        probe = probe().display(),
    )
}

/// Starts `program args` inside `cgroup` (moved there before it execs).
pub fn spawn_in(cgroup: &Path, program: &Path, args: &[&str]) -> Child {
    let procs = CString::new(cgroup.join("cgroup.procs").to_string_lossy().as_bytes())
        .expect("path has no NUL");
    let mut cmd = Command::new(program);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls (open, write, close) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let r = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if r != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()))
}

impl Harness {
    /// Loads the programs and watches a new cgroup with `rules_yaml`, in which `{CG}` stands for
    /// the new cgroup's path relative to the root.
    pub fn new(rules_yaml: &str) -> Self {
        Self::with(rules_yaml, FailMode::Deny)
    }

    /// As [`Harness::new`], with a fail mode.
    pub fn with(rules_yaml: &str, fail_mode: FailMode) -> Self {
        let cgroup = TestCgroup::new();
        let root = latch_agent::kernel::cgroup2_root().expect("cgroup v2 is mounted");
        let cgroup_id = cgroups::id_of(&cgroup.path).expect("stat cgroup");
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(cgroup.rel.trim_start_matches('/'));
        let text = rules_yaml.replace("{CG}", &cgroup.rel);
        // The agent's own path from rules text to map entries (aliases, file identities).
        let policy = latch_agent::engine_task::Policy::from_text("test-rules.yaml", &text)
            .unwrap_or_else(|e| panic!("{e}"));
        let latch_agent::engine_task::Policy {
            rules,
            compiled,
            globs,
            ..
        } = policy;
        let mut engine = Engine::load(EngineOptions {
            pin_dir: pin_dir.clone(),
            cgroup_root: Some(root.clone()),
            stale_after: Duration::from_secs(3600),
            fail_mode,
            exec_backend: None,
            dns_proxy_port: 0,
            dns_proxy_v6: false,
        })
        .unwrap_or_else(|e| panic!("{e}"));
        engine
            .apply(&compiled, None)
            .unwrap_or_else(|e| panic!("{e}"));
        for m in cgroups::scan(&root, &globs) {
            engine.watch(m.id, m.watch()).expect("watch");
        }
        let ring = engine.take_events();
        Harness {
            engine: Some(engine),
            cgroup,
            cgroup_id,
            pin_dir,
            rules,
            compiled,
            ring,
            seen: Vec::new(),
            children: Vec::new(),
        }
    }

    /// The engine.
    pub fn engine(&mut self) -> &mut Engine {
        self.engine.as_mut().expect("engine loaded")
    }

    /// Rule id by name.
    pub fn rule(&self, name: &str) -> u32 {
        self.rules
            .rules
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no rule {name}"))
            .id
    }

    /// Starts `program args` inside `cgroup` (moved there before it execs).
    pub fn spawn_in(&mut self, cgroup: &Path, program: &Path, args: &[&str]) -> Child {
        let child = spawn_in(cgroup, program, args);
        self.children.push(child.id());
        child
    }

    /// Starts `program args` in the test cgroup.
    pub fn spawn(&mut self, program: &Path, args: &[&str]) -> Child {
        let cg = self.cgroup.path.clone();
        self.spawn_in(&cg, program, args)
    }

    /// Runs the probe to completion in the test cgroup and returns its JSON outcome.
    pub fn probe(&mut self, args: &[&str]) -> serde_json::Value {
        let child = self.spawn(&probe(), args);
        outcome(child)
    }

    /// Waits until the kernel holds an operation of process `pid`.
    pub fn wait_pending(&mut self, pid: u32) -> PendingOp {
        self.wait_pending_where(&format!("process {pid}"), |p| p.tgid == pid)
    }

    /// Waits until the kernel holds an operation that satisfies `pred` (for a process the test
    /// did not start itself, such as the probe's child).
    pub fn wait_pending_where(
        &mut self,
        what: &str,
        pred: impl Fn(&PendingOp) -> bool,
    ) -> PendingOp {
        let deadline = Instant::now() + patience();
        loop {
            let found = self
                .engine()
                .pending()
                .expect("pending")
                .into_iter()
                .find(|p| pred(p));
            if let Some(p) = found {
                return p;
            }
            assert!(Instant::now() < deadline, "{what} was never held");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Reads events until one satisfies `pred`; returns it.
    pub fn expect_event(&mut self, what: &str, pred: impl Fn(&KernelEvent) -> bool) -> KernelEvent {
        self.expect_event_since(0, what, pred)
    }

    /// As [`Harness::expect_event`], among the events after the first `since` read (the length
    /// of [`Harness::events`] before the trigger), so that an earlier trigger's event cannot
    /// answer for this one.
    pub fn expect_event_since(
        &mut self,
        since: usize,
        what: &str,
        pred: impl Fn(&KernelEvent) -> bool,
    ) -> KernelEvent {
        let deadline = Instant::now() + patience();
        loop {
            if let Some(e) = self.seen.iter().skip(since).find(|e| pred(e)) {
                return e.clone();
            }
            let mut malformed = 0;
            let ring = self.ring.as_mut().expect("ring buffer");
            events::drain(ring, &mut self.seen, &mut malformed);
            assert_eq!(malformed, 0, "kernel wrote undecodable events");
            assert!(
                Instant::now() < deadline,
                "no event {what}; saw {:#?}",
                self.seen
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Every event read so far plus what is in the ring now.
    pub fn events(&mut self) -> &[KernelEvent] {
        let mut malformed = 0;
        if let Some(ring) = self.ring.as_mut() {
            events::drain(ring, &mut self.seen, &mut malformed);
        }
        &self.seen
    }

    /// Makes a child cgroup of the test cgroup.
    pub fn child_cgroup(&self, name: &str) -> PathBuf {
        let p = self.cgroup.path.join(name);
        std::fs::create_dir(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        p
    }

    /// Drops the engine without uninstalling (as a crashed agent would) and loads a new one on
    /// the same pins.
    pub fn restart_engine(&mut self) {
        let old = self.engine.take().expect("engine loaded");
        let opts = EngineOptions {
            pin_dir: self.pin_dir.clone(),
            cgroup_root: Some(old.cgroup_root().to_path_buf()),
            stale_after: Duration::from_secs(3600),
            fail_mode: FailMode::Deny,
            exec_backend: None,
            dns_proxy_port: 0,
            dns_proxy_v6: false,
        };
        drop(self.ring.take());
        drop(old);
        let mut engine = Engine::load(opts).unwrap_or_else(|e| panic!("{e}"));
        self.ring = engine.take_events();
        self.engine = Some(engine);
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // cgroup.kill ends every process left in the subtree, paused ones included.
        let _ = std::fs::write(self.cgroup.path.join("cgroup.kill"), "1");
        for pid in &self.children {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        drop(self.ring.take());
        if let Some(e) = self.engine.take() {
            let _ = e.uninstall();
        }
        // The `cgroup` field's own drop removes the cgroup, after this.
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

/// Waits for a probe and parses its JSON line. A probe that has not ended within [`patience`]
/// is killed and the test fails, rather than hanging the run.
pub fn outcome(mut child: Child) -> serde_json::Value {
    let deadline = Instant::now() + patience();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let pid = child.id();
                let st = state(pid);
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "probe {pid} did not end within {:?} (state {st:?})",
                    patience()
                );
            }
            Err(e) => panic!("wait for probe: {e}"),
        }
    }
    let out = child.wait_with_output().expect("collect probe output");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "probe printed {text:?} (status {}, stderr {:?}): {e}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// What became of a held exec whose task someone other than the agent resumed.
#[derive(Debug, PartialEq, Eq)]
pub enum Resumed {
    /// Held again: the kernel stopped it again (counted as a re-pause).
    StoppedAgain,
    /// The probe ended: the held image was ended before it could run (the tracepoint backend's
    /// `sys_enter` gate).
    Ended,
}

impl Harness {
    /// Waits (boundedly) until a held exec that was resumed from elsewhere is either stopped
    /// again (the re-pause counter passes `repaused_before` and, with `stopped`, the task
    /// `held` shows state `T`) or its probe `child` has ended.
    pub fn after_foreign_resume(
        &mut self,
        child: &mut Child,
        held: u32,
        repaused_before: u64,
        stopped: bool,
    ) -> Resumed {
        let deadline = Instant::now() + patience();
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return Resumed::Ended;
            }
            let again = self
                .engine()
                .counter(agent_common::Counter::Repaused)
                .unwrap_or(0)
                > repaused_before;
            if again && (!stopped || state(held) == Some('T')) {
                return Resumed::StoppedAgain;
            }
            assert!(
                Instant::now() < deadline,
                "held exec {held}: neither stopped again nor ended within {:?}",
                patience()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A child's whole output, waiting at most [`patience`] for it to end.
pub fn finish(mut child: Child) -> std::process::Output {
    let deadline = Instant::now() + patience();
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let pid = child.id();
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {pid} did not end within {:?}", patience());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.wait_with_output().expect("collect output")
}

/// The process state letter (`T` = stopped).
pub fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    latch_agent::procfs::parse_state(&stat)
}

/// Waits until process `pid` is in state `want`.
pub fn wait_state(pid: u32, want: char) {
    let deadline = Instant::now() + patience();
    while state(pid) != Some(want) {
        assert!(
            Instant::now() < deadline,
            "process {pid} never reached state {want} (is {:?})",
            state(pid)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whatever the child has written to stdout so far, without blocking.
pub fn read_available(child: &mut Child) -> String {
    let Some(out) = child.stdout.as_mut() else {
        return String::new();
    };
    let fd = std::os::fd::AsRawFd::as_raw_fd(out);
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    let mut buf = [0u8; 4096];
    match out.read(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(_) => String::new(),
    }
}

/// Sends SIGCONT to `pid` every millisecond for `how_long`, as a workload that wants its held
/// program to run would; returns how many were sent (it stops when the process is gone).
pub fn sigcont_loop(pid: u32, how_long: Duration) -> usize {
    let end = Instant::now() + how_long;
    let mut sent = 0;
    while Instant::now() < end {
        if nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGCONT,
        )
        .is_err()
        {
            break;
        }
        sent += 1;
        std::thread::sleep(Duration::from_millis(1));
    }
    sent
}
