//! Ways a workload might run a program that a rule names without the rule seeing it, tried as a
//! hostile workload would. Each technique runs first in a cgroup nobody watches (it works on
//! this host) and then in a watched one (refused or held). The evidence is a file that only the
//! program creates when it runs, never the probe's own word.

use std::{
    os::unix::fs::PermissionsExt,
    path::Path,
    time::{Duration, Instant},
};

use agent_common::{Counter, Op, Outcome};
use latch_agent::cgroups;
use latch_agent::events::KernelEvent;
use latch_agent::kernel::{Backend, Decision};
use latch_tests::packets::{Arrivals, Sysctl};
use latch_tests::program::{Fs, ProgramCopy};
use latch_tests::{
    outcome, privileged, probe, sigcont_loop, spawn_in, Harness, Resumed, TestCgroup,
};

const EPERM: i64 = 1;

fn rules(body: &str) -> String {
    format!("workloads:\n  - name: test\n    cgroups: [\"{{CG}}\"]\nrules:\n{body}")
}

/// A private copy of `touch` (the program the rules name) in a directory of its own, so that
/// its identity belongs to this test alone.
type Program = ProgramCopy;

fn new_program() -> Program {
    ProgramCopy::touch("latch-integrity-")
}

/// A harness whose one rule, `name`, names the program with `action`.
fn rule_on(p: &Program, name: &str, action: &str) -> Harness {
    Harness::new(&rules(&format!(
        "  - {{name: {name}, workload: test, on: exec, paths: [{}], action: {action}}}\n",
        p.path().display()
    )))
}

/// One way to run the program: the command to start (in the cgroup), given the program and the
/// marker it must create.
struct Technique {
    name: &'static str,
    command: fn(&Program, &Path) -> Vec<String>,
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn probe_args(args: &[&str]) -> Vec<String> {
    std::iter::once(s(&probe()))
        .chain(args.iter().map(|a| a.to_string()))
        .collect()
}

/// Prepares the names the techniques use (links, a script) next to the program.
fn prepare(p: &Program) {
    let prog = p.path();
    std::os::unix::fs::symlink(&prog, p.at("symlink")).expect("symlink");
    std::os::unix::fs::symlink(p.dir.path(), p.at("dirlink")).expect("dir symlink");
    std::fs::hard_link(&prog, p.at("hardlink")).expect("hard link");
    std::fs::write(p.at("script"), format!("#!{}\n", prog.display())).expect("script");
    std::fs::set_permissions(p.at("script"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    std::fs::create_dir(p.at("mnt")).expect("mount point");
    std::fs::write(p.at("mnt/prog"), b"").expect("bind target");
}

const TECHNIQUES: &[Technique] = &[
    Technique {
        name: "its own path",
        command: |p, m| probe_args(&["exec", &s(&p.path()), &s(m)]),
    },
    Technique {
        name: "a symlink to it",
        command: |p, m| probe_args(&["exec", &s(&p.at("symlink")), &s(m)]),
    },
    Technique {
        name: "a symlink to its directory",
        command: |p, m| probe_args(&["exec", &s(&p.at("dirlink/prog")), &s(m)]),
    },
    Technique {
        name: "a hard link",
        command: |p, m| probe_args(&["exec", &s(&p.at("hardlink")), &s(m)]),
    },
    Technique {
        name: "dot, dot-dot and doubled slashes",
        command: |p, m| {
            let d = p.dir.path().display().to_string();
            let name = d.rsplit('/').next().unwrap_or_default().to_string();
            let odd = format!("{d}/./..//{name}//prog");
            probe_args(&["exec", &odd, &s(m)])
        },
    },
    Technique {
        name: "/proc/self/root",
        command: |p, m| {
            let via = format!("/proc/self/root{}", p.path().display());
            probe_args(&["exec", &via, &s(m)])
        },
    },
    Technique {
        name: "fexecve (execveat with AT_EMPTY_PATH)",
        command: |p, m| probe_args(&["exec-via", "fd", &s(&p.path()), &s(m)]),
    },
    Technique {
        name: "/proc/self/fd/N",
        command: |p, m| probe_args(&["exec-via", "procfd", &s(&p.path()), &s(m)]),
    },
    Technique {
        name: "execveat relative to a directory descriptor",
        command: |p, m| probe_args(&["exec-via", "dirfd", &s(&p.path()), &s(m)]),
    },
    Technique {
        name: "a #! script whose interpreter it is",
        command: |p, m| probe_args(&["exec", &s(&p.at("script")), &s(m)]),
    },
    Technique {
        name: "a bind mount in a private mount namespace",
        command: |p, m| {
            let sh = format!(
                "mount --bind {prog} {mnt} && exec {probe} exec {mnt} {m}",
                prog = p.path().display(),
                mnt = p.at("mnt/prog").display(),
                probe = probe().display(),
                m = m.display()
            );
            vec![
                "/usr/bin/unshare".into(),
                "--mount".into(),
                "--propagation".into(),
                "private".into(),
                "/bin/sh".into(),
                "-c".into(),
                sh,
            ]
        },
    },
];

fn run_in(cgroup: &Path, cmd: &[String]) -> serde_json::Value {
    let args: Vec<&str> = cmd[1..].iter().map(String::as_str).collect();
    outcome(spawn_in(cgroup, Path::new(&cmd[0]), &args))
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn every_name_of_a_denied_program_is_refused() {
    if !privileged() {
        return;
    }
    let p = new_program();
    prepare(&p);
    let mut h = rule_on(&p, "no-prog", "deny");
    if let Some(why) = h.engine().file_identity_missing() {
        panic!("this kernel cannot give the identity of executed files: {why}");
    }
    let free = TestCgroup::new();
    let backend = h.engine().backend();
    let watched = h.cgroup.path.clone();
    let mut through = Vec::new();
    for t in TECHNIQUES {
        let m = p.marker("free");
        let out = run_in(&free.path, &(t.command)(&p, &m));
        assert!(
            m.exists(),
            "{}: the technique does not even work where nothing watches: {out}",
            t.name
        );
        let m = p.marker("watched");
        let out = run_in(&watched, &(t.command)(&p, &m));
        if m.exists() {
            through.push(format!("{}: {out}", t.name));
            continue;
        }
        let refused = match backend {
            Backend::Lsm => {
                out["errno"].as_i64() == Some(EPERM) || out["exit"].as_i64().is_some_and(|c| c != 0)
            }
            Backend::Tracepoint => {
                out["signal"] == 9 || out["exit"].as_i64().is_some_and(|c| c != 0)
            }
        };
        assert!(
            refused,
            "{}: not run, but not refused either: {out}",
            t.name
        );
    }
    assert!(
        through.is_empty(),
        "the denied program ran by another name:\n{}",
        through.join("\n")
    );
    let rule = h.rule("no-prog");
    let denied = h
        .events()
        .iter()
        .filter(|e| e.outcome == Outcome::Denied && e.rule_id == rule)
        .count();
    assert!(
        denied >= TECHNIQUES.len(),
        "one denial event per technique: {denied} for {}",
        TECHNIQUES.len()
    );
}

/// The dynamic loader of this host's programs (the `PT_INTERP` of `/usr/bin/touch`).
fn loader() -> &'static str {
    ["/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("no dynamic loader at the usual paths")
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn the_dynamic_loader_cannot_run_a_refused_or_held_program() {
    if !privileged() {
        return;
    }
    let p = new_program();
    let free = TestCgroup::new();
    let via_loader = |m: &Path| probe_args(&["exec", loader(), &s(&p.path()), &s(m)]);
    let m = p.marker("free");
    let out = run_in(&free.path, &via_loader(&m));
    assert!(
        m.exists(),
        "the loader runs the program where nothing watches: {out}"
    );
    for action in ["deny", "approve"] {
        let mut h = rule_on(&p, "no-prog", action);
        let watched = h.cgroup.path.clone();
        // Other programs still run through the loader, and by exec as ever.
        let out = run_in(
            &watched,
            &probe_args(&["exec", loader(), "/usr/bin/printf", "ok"]),
        );
        assert_eq!(
            out["stdout"], "ok",
            "{action}: the loader runs other programs: {out}"
        );
        let m = p.marker("watched");
        let out = run_in(&watched, &via_loader(&m));
        assert!(!m.exists(), "{action}: the loader ran the program: {out}");
        let refused = match h.engine().backend() {
            // The loader's mapping of the program fails; it reports that and exits.
            Backend::Lsm => out["exit"].as_i64().is_some_and(|c| c != 0),
            // The kprobe cannot refuse: the task is ended before it runs any of the program.
            Backend::Tracepoint => out["signal"] == 9,
        };
        assert!(refused, "{action}: not run, but not refused either: {out}");
        let rule = h.rule("no-prog");
        h.expect_event("the refused mapping", |e| {
            e.mapped && e.outcome == Outcome::Denied && e.rule_id == rule
        });
        assert!(counter(&mut h, Counter::MapRefused) > 0);
    }
}

/// The report of the probe that an outer probe ran (`exec PROBE MODE ...`): its one line of
/// output, or null where it printed none (it was ended first).
fn inner(out: &serde_json::Value) -> serde_json::Value {
    serde_json::from_str(out["stdout"].as_str().unwrap_or("").trim())
        .unwrap_or(serde_json::Value::Null)
}

/// A loader of the workload's own need not ask `mmap` for `PROT_EXEC`, and the kernel still makes
/// a readable mapping of the program executable: under the `READ_IMPLIES_EXEC` personality
/// (`map-rie`), which any process may set for itself, or by `mprotect` after the mapping
/// (`map-mprotect`). `seen` says whether this kernel's backend sees that way at all.
fn a_mapping_made_executable(mode: &str, fs: Fs, seen: fn(&mut Harness) -> bool) {
    let p = ProgramCopy::touch_on("latch-integrity-", fs);
    let free = TestCgroup::new();
    // Run by an outer probe, which reports how the inner one ended (the tracepoint backend
    // ends it at the mapping, before it can say anything).
    let mapping = probe_args(&["exec", &s(&probe()), mode, &s(&p.path())]);
    let executable = |out: &serde_json::Value| {
        inner(out)["perms"]
            .as_str()
            .is_some_and(|p| p.contains('x'))
    };
    let out = run_in(&free.path, &mapping);
    assert!(
        executable(&out),
        "{mode}: where nothing watches, the readable mapping of the program becomes executable: \
         {out}"
    );
    let mut h = rule_on(&p, "no-prog", "deny");
    let seen = seen(&mut h);
    let out = run_in(&h.cgroup.path.clone(), &mapping);
    if !seen {
        // Said by doctor and the README: this backend does not see this way here.
        assert!(
            executable(&out),
            "{mode}: unseen, yet not executable: {out}"
        );
        return;
    }
    let why = format!(
        "{mode} on {fs:?}: {out}; counters: map_refused {}, file_unreadable {}, field_unreadable {}; \
         hooks {:?}",
        counter(&mut h, Counter::MapRefused),
        counter(&mut h, Counter::FileUnreadable),
        counter(&mut h, Counter::FieldUnreadable),
        h.engine().hooks()
    );
    match h.engine().backend() {
        Backend::Lsm => assert_eq!(inner(&out)["errno"].as_i64(), Some(EPERM), "{why}"),
        Backend::Tracepoint => assert_eq!(out["signal"], 9, "{why}"),
    }
    let rule = h.rule("no-prog");
    h.expect_event("the refused mapping", |e| {
        e.mapped && e.outcome == Outcome::Denied && e.rule_id == rule
    });
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn a_program_mapped_readable_under_read_implies_exec_is_refused() {
    if !privileged() {
        return;
    }
    a_mapping_made_executable("map-rie", Fs::Tmpfs, |_| true);
}

/// Seen by the LSM backend, and by the tracepoint backend's kprobe on `security_file_mprotect`;
/// a kernel without kprobes (this project's host) is the only one where it is not. On an
/// overlay (a container's file system) the mapping holds the file of the layer below, which
/// the rule's file is also known by.
#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn a_readable_mapping_made_executable_by_mprotect_is_refused() {
    if !privileged() {
        return;
    }
    for fs in [Fs::Tmpfs, Fs::Overlay, Fs::OverlayLower] {
        a_mapping_made_executable("map-mprotect", fs, |h| {
            h.engine().backend() == Backend::Lsm || kprobed(h, "mprotect-kp")
        });
    }
}

/// A `vfork` child shares its parent's memory, and its parent wakes when it ends. On the
/// tracepoint backend the child is ended for a mapping the kernel still makes, so the parent
/// would wake to find the program mapped executable at an address they agreed on: it is ended
/// on its way back from the call. The LSM backend refuses the child's mapping.
#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn a_vfork_parent_does_not_wake_to_a_mapping_its_child_was_ended_for() {
    if !privileged() {
        return;
    }
    let p = ProgramCopy::touch_on("latch-integrity-", Fs::Tmpfs);
    let free = TestCgroup::new();
    let mapping = probe_args(&["exec", &s(&probe()), "map-vfork", &s(&p.path())]);
    let out = run_in(&free.path, &mapping);
    let i = inner(&out);
    assert!(
        i["file"] == true && i["perms"].as_str().is_some_and(|p| p.contains('x')),
        "where nothing watches, the parent finds the program mapped executable: {out}"
    );
    let mut h = rule_on(&p, "no-prog", "deny");
    let out = run_in(&h.cgroup.path.clone(), &mapping);
    match h.engine().backend() {
        Backend::Lsm => {
            let i = inner(&out);
            assert_eq!(i["child_exit"], 1, "the child's mapping is refused: {out}");
            assert_eq!(i["file"], false, "{out}");
        }
        // Ended on its way back from clone(), before it could look.
        Backend::Tracepoint => assert_eq!(out["signal"], 9, "{out}"),
    }
    let rule = h.rule("no-prog");
    h.expect_event("the refused mapping", |e| {
        e.mapped && e.outcome == Outcome::Denied && e.rule_id == rule
    });
}

/// Waits for the exec the kernel holds for the program, decides it, and returns the probe's
/// outcome.
fn held_then(h: &mut Harness, child: std::process::Child, decision: Decision) -> serde_json::Value {
    let p = h.wait_pending_where("the held exec", |p| p.op == "exec");
    h.engine().decide(p.id, decision).expect("decide");
    outcome(child)
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn every_name_of_a_program_that_needs_approval_is_held() {
    if !privileged() {
        return;
    }
    let p = new_program();
    prepare(&p);
    let mut h = rule_on(&p, "ask", "approve");
    let watched = h.cgroup.path.clone();
    let rule = h.rule("ask");
    for t in TECHNIQUES {
        let m = p.marker("held");
        let cmd = (t.command)(&p, &m);
        let args: Vec<&str> = cmd[1..].iter().map(String::as_str).collect();
        let child = spawn_in(&watched, Path::new(&cmd[0]), &args);
        let pending = h.wait_pending_where(t.name, |q| q.op == "exec");
        assert_eq!(pending.rule_id, rule, "{}", t.name);
        assert!(!m.exists(), "{}: ran before any decision", t.name);
        h.engine()
            .decide(pending.id, Decision::Allow)
            .expect("decide");
        let out = outcome(child);
        assert!(m.exists(), "{}: ran after approval: {out}", t.name);
    }
    // And a reviewer's deny holds for another name too.
    let m = p.marker("denied");
    let cmd = probe_args(&["exec-via", "fd", &s(&p.path()), &s(&m)]);
    let child = spawn_in(
        &watched,
        Path::new(&cmd[0]),
        &cmd[1..].iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let out = held_then(&mut h, child, Decision::Deny);
    assert!(!m.exists(), "denied by the reviewer, yet it ran: {out}");
}

fn counter(h: &mut Harness, c: Counter) -> u64 {
    h.engine().counter(c).expect("counter")
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn a_held_exec_makes_no_progress_under_a_sigcont_loop() {
    if !privileged() {
        return;
    }
    let p = new_program();
    let mut h = rule_on(&p, "ask", "approve");
    restop_refused_only_by_the_kernel(&mut h);
    let m = p.marker("sigcont");
    let child = h.spawn(&probe(), &["exec", &s(&p.path()), &s(&m)]);
    let pending = h.wait_pending_where("the held exec", |q| q.op == "exec");
    let (repaused, killed) = (
        counter(&mut h, Counter::Repaused),
        counter(&mut h, Counter::ResumeKilled),
    );
    let sent = sigcont_loop(pending.tgid, Duration::from_secs(2));
    assert!(sent > 0);
    assert!(!m.exists(), "the held program ran under {sent} SIGCONTs");
    settle_foreign_resume(
        &mut h,
        child,
        &m,
        (pending.id, pending.tgid),
        (repaused, killed, true),
        Decision::Allow,
    );
}

/// A debugger outside every watched cgroup (here, of the same user) seizes a held exec and
/// resumes it at every stop without the stopping signal, for two seconds: the program does not
/// run before its decision, as under a SIGCONT loop.
#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn a_held_exec_makes_no_progress_under_a_tracer_from_outside() {
    if !privileged() {
        return;
    }
    let p = new_program();
    let mut h = rule_on(&p, "ask", "approve");
    restop_refused_only_by_the_kernel(&mut h);
    let free = TestCgroup::new();
    let tracer = |pid: u32| {
        run_in(
            &free.path,
            &probe_args(&["trace-resume", &pid.to_string(), "2000"]),
        )
    };
    let resumed = |out: &serde_json::Value| out["resumed"].as_u64().unwrap_or(0);

    // Where nothing watches, the tracer resumes a stopped process, which then runs.
    let m = p.marker("traced-free");
    let script = format!("kill -STOP $$; exec {} {}", p.path().display(), m.display());
    let child = spawn_in(&free.path, Path::new("/bin/sh"), &["-c", &script]);
    let deadline = Instant::now() + latch_tests::patience();
    while latch_tests::state(child.id()) != Some('T') {
        assert!(Instant::now() < deadline, "the shell never stopped");
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = tracer(child.id());
    assert!(resumed(&out) > 0, "{out}");
    let _ = latch_tests::finish(child);
    assert!(
        m.exists(),
        "a tracer does not resume a stopped process here: {out}"
    );

    // Held: the tracer's resumes do not run it.
    let m = p.marker("traced");
    let child = h.spawn(&probe(), &["exec", &s(&p.path()), &s(&m)]);
    let pending = h.wait_pending_where("the held exec", |q| q.op == "exec");
    let (repaused, killed) = (
        counter(&mut h, Counter::Repaused),
        counter(&mut h, Counter::ResumeKilled),
    );
    let out = tracer(pending.tgid);
    assert!(resumed(&out) > 0, "the tracer resumed nothing: {out}");
    assert!(!m.exists(), "the held program ran under a tracer: {out}");
    settle_foreign_resume(
        &mut h,
        child,
        &m,
        (pending.id, pending.tgid),
        (repaused, killed, false),
        Decision::Deny,
    );
}

/// What became of a held exec that someone other than the agent resumed (its request `id`, its
/// process `tgid`; the re-pause and resume-kill counters before, and whether to wait for its
/// stop too), checked from its marker `m`: held again as the same request, then decided
/// `decision` and run only if allowed (LSM: execve restarts and stops again; tracepoint
/// backend: stopped again on the way back from the signal); or, on the tracepoint backend only
/// (a resume raced the renewed stop, or there is no `restop`), ended by the gate at its first
/// system call, and recorded.
fn settle_foreign_resume(
    h: &mut Harness,
    mut child: std::process::Child,
    m: &Path,
    (id, tgid): (latch_agent::kernel::RequestId, u32),
    (repaused, killed, stopped): (u64, u64, bool),
    decision: Decision,
) {
    match h.after_foreign_resume(&mut child, tgid, repaused, stopped) {
        Resumed::StoppedAgain => {
            let again = h.wait_pending_where("still held", |q| q.op == "exec");
            assert_eq!(again.id, id);
            h.engine().decide(id, decision).expect("decide");
            let out = outcome(child);
            let allowed = matches!(decision, Decision::Allow);
            assert_eq!(
                m.exists(),
                allowed,
                "ran only if allowed ({decision:?}): {out}"
            );
        }
        Resumed::Ended => {
            let out = outcome(child);
            assert_ne!(
                h.engine().backend(),
                Backend::Lsm,
                "LSM never lets it go: {out}"
            );
            assert_eq!(out["signal"], 9, "ended at its first system call: {out}");
            assert!(!m.exists());
            assert!(counter(h, Counter::ResumeKilled) > killed);
            h.expect_event("resumed without a decision", |e| {
                e.outcome == Outcome::FailClosed && e.reentered
            });
        }
    }
}

/// Where the tracepoint backend could not attach `restop`, only the kernel may be to blame:
/// a verifier rejection is a bug, which the gate behind it must not hide.
fn restop_refused_only_by_the_kernel(h: &mut Harness) {
    if let Some(why) = h.engine().restop_refused() {
        assert!(
            why.contains("os error 1)") || why.contains("os error 95)") || why.contains("BTF"),
            "restop did not attach for another reason than the kernel refusing it: {why}"
        );
    }
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn a_watched_process_may_not_ask_to_be_traced() {
    if !privileged() {
        return;
    }
    let p = new_program();
    let mut h = rule_on(&p, "ask", "approve");
    // Unwatched, the traced exec runs: the tracer resumes every stop without its signal, as a
    // debugger that swallows a hold's SIGSTOP would.
    let free = TestCgroup::new();
    let m = p.marker("traced-free");
    let out = outcome(spawn_in(
        &free.path,
        &probe(),
        &["exec-via", "traced", &s(&p.path()), &s(&m)],
    ));
    assert!(
        m.exists(),
        "a traced exec works where nothing watches: {out}"
    );

    // Watched, `PTRACE_TRACEME` itself is refused, before any exec is held.
    let m = p.marker("traced");
    let out = h.probe(&["exec-via", "traced", &s(&p.path()), &s(&m)]);
    assert!(!m.exists(), "a traced exec ran unasked: {out}");
    match h.engine().backend() {
        Backend::Lsm => assert_eq!(out["errno"].as_i64(), Some(EPERM), "{out}"),
        // The tracepoint cannot refuse the call: the task is ended before it returns.
        Backend::Tracepoint => assert_eq!(out["signal"], 9, "{out}"),
    }
    assert!(
        h.engine().pending().expect("pending").is_empty(),
        "nothing was held: the exec never happened"
    );
    h.expect_event("the refused tracee", |e| {
        e.op == Op::Debug && e.outcome == Outcome::Denied
    });
}

/// A process another may debug, started in a cgroup: where its words are and where it writes
/// them when told to.
struct Victim {
    child: std::process::Child,
    addr: u64,
    report: std::path::PathBuf,
}

impl Victim {
    fn start(cgroup: &Path, report: std::path::PathBuf) -> Self {
        use std::io::BufRead;
        let mut child = spawn_in(cgroup, &probe(), &["victim", &s(&report)]);
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().expect("victim's stdout"))
            .read_line(&mut line)
            .expect("the victim's first line");
        let v: serde_json::Value = serde_json::from_str(&line).expect("the victim's JSON");
        let addr = v["addr"].as_u64().expect("the victim's address");
        Self {
            child,
            addr,
            report,
        }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Tells the victim to report (this process, which nothing watches, writes its first word)
    /// and returns its second word, where a debugger writes.
    fn second_word(self) -> u64 {
        let pid = self.child.id() as i32;
        // A debugger ended between its attach and its detach leaves the attach's SIGSTOP.
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(pid, libc::SIGCONT) };
        let mem = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/{pid}/mem"))
            .expect("the victim's memory");
        std::os::unix::fs::FileExt::write_all_at(&mem, &1u64.to_ne_bytes(), self.addr)
            .expect("write the victim's first word");
        let out = outcome(self.child);
        assert_eq!(out["ok"], true, "the victim did not report: {out}");
        let words = std::fs::read_to_string(&self.report).expect("the victim's report");
        words
            .split_whitespace()
            .nth(1)
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("the victim's report is not two words: {words:?}"))
    }
}

/// Whether the tracepoint backend's kprobe pinned as `hook` is attached; where it is not, only a
/// kernel without kprobes may be the reason (the matrix's kernels have them).
fn kprobed(h: &mut Harness, hook: &str) -> bool {
    let on = h.engine().hooks().contains(&hook);
    if !on && h.engine().backend() == Backend::Tracepoint {
        assert!(
            !latch_agent::kernel::kprobes_supported(),
            "this kernel has kprobes, yet {hook} is not attached"
        );
    }
    on
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn a_watched_process_may_not_write_another_process() {
    if !privileged() {
        return;
    }
    // Whoever may write a process's memory can make it do anything, outside every watched
    // cgroup; the victim here stands for any such process of the same user.
    let mut h = Harness::new(&rules(
        "  - {name: none, workload: test, on: exec, paths: [/nonexistent], action: deny}\n",
    ));
    let free = TestCgroup::new();
    let watched = h.cgroup.path.clone();
    let dir = tempfile::tempdir().expect("temporary directory");
    const WORD: u64 = 0x6c61_7463_6877_6f72;
    let backend = h.engine().backend();
    let kprobed = kprobed(&mut h, "debug-kp");
    let mut victims = Vec::new();
    for how in ["ptrace", "vm", "mem"] {
        // Through a second probe, whose end the first reports: on the tracepoint backend the
        // task that tries is ended.
        let poke = |cg: &Path, v: &Victim| {
            let inner = s(&probe());
            let addr = (v.addr + 8).to_string();
            let cmd = [
                "exec",
                &inner,
                "poke",
                how,
                &v.pid(),
                &addr,
                &WORD.to_string(),
            ];
            run_in(cg, &probe_args(&cmd))
        };
        let v = Victim::start(&free.path, dir.path().join(format!("{how}-free")));
        let out = poke(&free.path, &v);
        assert_eq!(
            v.second_word(),
            WORD,
            "writing another process by {how} does not work where nothing watches: {out}"
        );

        let v = Victim::start(&free.path, dir.path().join(format!("{how}-watched")));
        victims.push(v.child.id());
        let out = poke(&watched, &v);
        let word = v.second_word();
        if how == "mem" && backend == Backend::Tracepoint && !kprobed {
            // Without the kprobe (a kernel built without kprobes) nothing sees the open of
            // `/proc/PID/mem` (doctor and the README say so); this fails the day something does.
            assert_eq!(word, WORD, "{out}");
            continue;
        }
        assert_eq!(word, 0, "a watched process wrote another by {how}: {out}");
        match backend {
            Backend::Lsm => {
                // The kernel reports a refused open of `/proc/PID/mem` as EACCES.
                let errno = if how == "mem" { 13 } else { EPERM };
                let inner = out["stdout"].as_str().unwrap_or_default();
                assert!(
                    inner.contains(&format!("\"errno\":{errno},")),
                    "{how}: {out}"
                );
            }
            Backend::Tracepoint => assert_eq!(out["signal"], 9, "{how}: {out}"),
        }
    }
    let e = h.expect_event("the refused debugger", |e| {
        e.op == Op::Debug && e.outcome == Outcome::Denied
    });
    assert!(
        e.debugged.is_some_and(|p| victims.contains(&p)),
        "the event names the process to be debugged: {e:?} (victims {victims:?})"
    );
    assert!(counter(&mut h, Counter::DebugRefused) > 0);
}

/// A UDP listener a rule denies to the workload, a UDP socket this test process (outside every
/// watched cgroup) connected to it, and the harness.
fn connected_outside() -> (std::net::UdpSocket, std::net::UdpSocket, Harness) {
    let dest = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = dest.local_addr().expect("addr");
    let h = Harness::new(&rules(&format!(
        "  - {{name: off, workload: test, on: connect, to: [127.0.0.1/32], ports: [{}], action: deny}}\n",
        addr.port()
    )));
    let connected = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    connected.connect(addr).expect("connect");
    (dest, connected, h)
}

/// A socket connected by a process outside every watched cgroup to a destination a rule denies,
/// taken with `pidfd_getfd` by a watched process: a send on a connected socket meets no socket
/// hook, so the taking is what must be refused. The victim is this test process.
#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn a_watched_process_may_not_take_another_process_s_socket() {
    if !privileged() {
        return;
    }
    use std::os::fd::AsRawFd;
    let (dest, connected, mut h) = connected_outside();
    let kprobed = kprobed(&mut h, "debug-kp");
    let backend = h.engine().backend();
    let me = std::process::id().to_string();
    let fd = connected.as_raw_fd().to_string();
    let free = TestCgroup::new();
    // Through a second probe, whose end the first reports: on the tracepoint backend the task
    // that tries is ended.
    let inner = s(&probe());
    let steal = probe_args(&["exec", &inner, "steal-fd", &me, &fd]);
    let stole = |out: &serde_json::Value| {
        out["stdout"]
            .as_str()
            .is_some_and(|o| o.contains("\"ok\":true"))
    };

    let out = run_in(&free.path, &steal);
    assert!(stole(&out), "unwatched: {out}");
    assert!(
        eventually(|| received(&dest)),
        "nothing arrived unwatched: {out}"
    );

    // Without the kprobe, the tracepoint backend ends a watched task at the entry of every
    // 64-bit `pidfd_getfd`, without reading which process its pidfd names.
    let at_entry = backend == Backend::Tracepoint && !kprobed;
    assert!(
        !at_entry || h.engine().hooks().contains(&"getfd-tp"),
        "neither debug-kp nor getfd-tp is attached"
    );
    let out = run_in(&h.cgroup.path.clone(), &steal);
    assert!(
        !received(&dest),
        "a datagram arrived through the taken socket: {out}"
    );
    match backend {
        Backend::Lsm => assert!(
            out["stdout"]
                .as_str()
                .is_some_and(|o| o.contains(&format!("\"errno\":{EPERM},"))),
            "{out}"
        ),
        Backend::Tracepoint => assert_eq!(out["signal"], 9, "{out}"),
    }
    let named = if at_entry { 0 } else { std::process::id() };
    h.expect_event("the refused taking", |e| {
        e.op == Op::Debug && e.outcome == Outcome::Denied && e.debugged == Some(named)
    });
}

/// Sends `fd` over `stream`, which must succeed.
fn pass_fd(stream: &std::os::unix::net::UnixStream, fd: std::os::fd::RawFd) {
    latch_tests::fdpass::send_fd(stream, fd).expect("sendmsg");
}

/// Whether a `recv-fd` probe (run through `exec`) received a socket and its send went out.
fn sent(out: &serde_json::Value) -> bool {
    out["stdout"]
        .as_str()
        .is_some_and(|o| o.contains("\"passed\":true") && o.contains("\"ok\":true"))
}

/// Runs `recv` (a `recv-fd` probe run through `exec`, so that its end is reported) first in
/// `free`, then in the watched cgroup. The caller's passer hands each of those two connections,
/// in that order, a UDP socket connected to `dest`: from `free` its datagram arrives; from the
/// watched cgroup nothing may arrive, the probe getting no descriptor on the LSM backend and
/// being ended on the tracepoint backend. Without kprobes the tracepoint backend does not see
/// it (doctor and the README say so), and the datagram must still arrive, so that this fails
/// the day something does. Returns the refusal's event.
fn refused_when_passed(
    h: &mut Harness,
    kprobed: bool,
    free: &Path,
    recv: &[String],
    dest: &std::net::UdpSocket,
    what: &str,
) -> Option<KernelEvent> {
    let out = run_in(free, recv);
    assert!(sent(&out), "{what}, unwatched: {out}");
    assert!(
        eventually(|| received(dest)),
        "{what}: nothing arrived unwatched: {out}"
    );
    let backend = h.engine().backend();
    let out = run_in(&h.cgroup.path.clone(), recv);
    if backend == Backend::Tracepoint && !kprobed {
        assert!(sent(&out), "{what}: {out}");
        assert!(eventually(|| received(dest)), "{what}: {out}");
        return None;
    }
    assert!(
        !received(dest),
        "{what}: a datagram arrived through the passed socket: {out}"
    );
    match backend {
        // No descriptor, and the kernel says the control message was cut short.
        Backend::Lsm => {
            assert!(
                out["stdout"].as_str().is_some_and(
                    |o| o.contains("\"passed\":false") && o.contains("\"truncated\":true")
                ),
                "{what}: {out}"
            )
        }
        Backend::Tracepoint => assert_eq!(out["signal"], 9, "{what}: {out}"),
    }
    Some(h.expect_event(what, |e| {
        e.op == Op::Received && e.outcome == Outcome::Denied
    }))
}

/// A socket connected by a process outside every watched cgroup to a destination a rule denies,
/// passed to a watched process over a UNIX socket (`SCM_RIGHTS`): a send on a connected socket
/// meets no socket hook, so the passing is what must be refused. This test process is the one
/// outside, and passes the same kinds of socket to the probe in an unwatched cgroup (it
/// delivers) and in the watched one (nothing arrives); a UNIX socket it passes the same way is
/// received there (sockets of other kinds are not refused).
#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn a_watched_process_may_not_be_passed_a_socket_made_outside() {
    if !privileged() {
        return;
    }
    use std::os::fd::AsRawFd;
    use std::os::unix::net::{UnixDatagram, UnixListener};
    let (dest, connected, mut h) = connected_outside();
    let kprobed = kprobed(&mut h, "receive-kp");
    let dir = tempfile::tempdir().expect("tempdir");
    // A UNIX datagram pair: the probe's send on the passed end arrives at `unix_dest`.
    let unix_dest_path = dir.path().join("dest");
    let unix_dest = UnixDatagram::bind(&unix_dest_path).expect("bind unix");
    let unix_end = UnixDatagram::unbound().expect("unix socket");
    unix_end.connect(&unix_dest_path).expect("connect unix");
    let path = dir.path().join("pass");
    let listener = UnixListener::bind(&path).expect("listen");
    let (ip_fd, unix_fd) = (connected.as_raw_fd(), unix_end.as_raw_fd());
    // One descriptor per connection, in the order the probes below connect.
    let passer = std::thread::spawn(move || {
        for fd in [ip_fd, ip_fd, unix_fd] {
            let (stream, _) = listener.accept().expect("accept");
            pass_fd(&stream, fd);
        }
    });
    let free = TestCgroup::new();
    // Through a second probe, whose end the first reports: on the tracepoint backend the task
    // that receives it is ended.
    let inner = s(&probe());
    let recv = probe_args(&["exec", &inner, "recv-fd", &s(&path)]);
    if let Some(e) = refused_when_passed(
        &mut h,
        kprobed,
        &free.path,
        &recv,
        &dest,
        "a socket made outside",
    ) {
        assert_eq!(e.received_family, Some(2), "an IPv4 socket: {e:?}");
        assert!(counter(&mut h, Counter::ReceiveRefused) > 0);
    }

    // A UNIX socket made outside is received, and what is sent on it arrives.
    let out = run_in(&h.cgroup.path.clone(), &recv);
    assert!(sent(&out), "a UNIX socket, watched: {out}");
    unix_dest.set_nonblocking(true).expect("nonblocking");
    assert!(
        eventually(|| unix_dest.recv(&mut [0u8; 16]).is_ok()),
        "nothing arrived through the passed UNIX socket: {out}"
    );
    passer.join().expect("the passer");
}

/// Waits until `path` exists (a UNIX socket another process binds).
fn bound(path: &Path) -> bool {
    eventually(|| path.exists())
}

/// A socket made by a process of another watched workload is not this workload's either: the
/// other workload may reach what this one's rules deny. A process of workload `other` connects a
/// UDP socket to a port only this workload's rule denies and passes it on: it delivers from a
/// probe in an unwatched cgroup, not from one of this workload. A socket made by a process in
/// another cgroup of this workload, connected to a port only the other workload's rule denies,
/// is received by a process of this workload and delivers.
#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn a_watched_process_may_not_be_passed_a_socket_made_by_another_workload() {
    if !privileged() {
        return;
    }
    let dest = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let own_dest = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let (dest_addr, own_addr) = (
        dest.local_addr().expect("addr"),
        own_dest.local_addr().expect("addr"),
    );
    let (other, second) = (TestCgroup::new(), TestCgroup::new());
    let mut h = Harness::new(&format!(
        "workloads:\n  - name: test\n    cgroups: [\"{{CG}}\", \"{second}\"]\n  - name: other\n    cgroups: [\"{other}\"]\n\
         rules:\n  - {{name: off, workload: test, on: connect, to: [127.0.0.1/32], ports: [{dest}], action: deny}}\n  \
         - {{name: other-off, workload: other, on: connect, to: [127.0.0.1/32], ports: [{own}], action: deny}}\n",
        other = other.rel,
        second = second.rel,
        dest = dest_addr.port(),
        own = own_addr.port(),
    ));
    let kprobed = kprobed(&mut h, "receive-kp");
    let dir = tempfile::tempdir().expect("tempdir");
    let free = TestCgroup::new();
    let inner = s(&probe());
    let recv_from = |path: &Path| probe_args(&["exec", &inner, "recv-fd", &s(path)]);

    // The other workload's socket: to a probe in an unwatched cgroup, then to one of this
    // workload.
    let path = dir.path().join("other");
    let pass = s(&path);
    let passer = h.spawn_in(
        &other.path,
        &probe(),
        &["pass-udp", &dest_addr.to_string(), &pass, "2"],
    );
    assert!(bound(&path), "the other workload's probe never listened");
    if let Some(e) = refused_when_passed(
        &mut h,
        kprobed,
        &free.path,
        &recv_from(&path),
        &dest,
        "the other workload's socket",
    ) {
        assert_eq!(e.received_family, Some(2), "an IPv4 socket: {e:?}");
        assert!(counter(&mut h, Counter::ReceiveRefused) > 0);
    }
    let passed = outcome(passer);
    assert_eq!(passed["ok"], true, "the other workload's probe: {passed}");

    // This workload's own socket, made in one of its cgroups and passed to a process in another.
    let path = dir.path().join("own");
    let pass = s(&path);
    let cg = h.cgroup.path.clone();
    let passer = h.spawn_in(
        &second.path,
        &probe(),
        &["pass-udp", &own_addr.to_string(), &pass, "1"],
    );
    assert!(bound(&path), "the workload's probe never listened");
    let out = run_in(&cg, &recv_from(&path));
    assert!(sent(&out), "a socket of the workload's own: {out}");
    assert!(
        eventually(|| received(&own_dest)),
        "nothing arrived through the workload's own socket: {out}"
    );
    let passed = outcome(passer);
    assert_eq!(passed["ok"], true, "the workload's passing probe: {passed}");
}

/// An io_uring ring is not a socket, and a ring made outside every watched cgroup with a poll
/// thread (`SQPOLL`) would submit as its maker. The kernel refuses to pass a ring over a UNIX
/// socket at all (on the matrix's kernels and this host's); Latch relies on that, so this
/// fails on a kernel that passes one. (`pidfd_getfd` from a watched task is refused as
/// debugging, for a ring as for anything else.)
#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn the_kernel_refuses_to_pass_an_io_uring_ring() {
    if !privileged() {
        return;
    }
    use std::os::fd::AsRawFd;
    let ring: io_uring::IoUring = io_uring::IoUring::builder()
        .setup_sqpoll(1000)
        .build(2)
        .expect("an io_uring ring with a poll thread");
    let (a, _b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    let refused = latch_tests::fdpass::send_fd(&a, ring.as_raw_fd())
        .expect_err("the kernel passed an io_uring ring over a UNIX socket");
    assert_eq!(refused.raw_os_error(), Some(libc::EINVAL), "{refused}");
    // An ordinary file passes over the same socket: it is the ring that is refused.
    let file = tempfile::tempfile().expect("a file");
    pass_fd(&a, file.as_raw_fd());
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn a_replaced_program_is_recognised_by_its_new_identity() {
    if !privileged() {
        return;
    }
    let p = new_program();
    prepare(&p);
    let text = rules(&format!(
        "  - {{name: no-prog, workload: test, on: exec, paths: [{}], action: deny}}\n",
        p.path().display()
    ));
    let mut h = Harness::new(&text);
    // A package upgrade: a new file renamed over the old one.
    let new = p.at("prog.new");
    std::fs::copy("/usr/bin/touch", &new).expect("copy");
    std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::rename(&new, p.path()).expect("rename");
    // What the agent does on its timer: the rules' files again, and the difference applied.
    let policy = latch_agent::engine_task::Policy::from_text(
        "t.yaml",
        &text.replace("{CG}", &h.cgroup.rel.clone()),
    )
    .expect("valid");
    assert_ne!(
        policy.compiled.exec_files, h.compiled.exec_files,
        "the new file has another identity"
    );
    let prev = h.compiled.clone();
    h.engine()
        .apply(&policy.compiled, Some(&prev))
        .expect("apply");
    let m = p.marker("replaced");
    let watched = h.cgroup.path.clone();
    let out = run_in(
        &watched,
        &probe_args(&["exec", &s(&p.at("symlink")), &s(&m)]),
    );
    assert!(
        !m.exists(),
        "the replaced program ran through a symlink: {out}"
    );
}

/// Whether a listener has a connection waiting (a refused connect leaves none; an accepted one
/// is queued before `connect()` returns).
fn accepted(l: &std::net::TcpListener) -> bool {
    l.set_nonblocking(true).expect("nonblocking");
    l.accept().is_ok()
}

/// Waits (boundedly) until `arrived` holds: a connection or datagram sent over loopback can be
/// delivered after the sender's call returns when softirqs run late on a loaded machine. Only
/// for what should arrive: what a hook refused never left.
fn eventually(arrived: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + latch_tests::patience();
    while Instant::now() < deadline {
        if arrived() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// What a test of leaving the watched cgroup starts from: a harness whose rules deny a
/// listener, a cgroup to start in, one to leave to and an unwatched one to compare with, and a
/// file whose creation tells a waiting process to go on.
struct Departure {
    l: std::net::TcpListener,
    port: u16,
    h: Harness,
    free: TestCgroup,
    elsewhere: TestCgroup,
    unwatched: TestCgroup,
    go: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn departure() -> Departure {
    let (l, port, h) = harness_denying_a_listener();
    let dir = tempfile::tempdir().expect("temporary directory");
    Departure {
        l,
        port,
        h,
        free: TestCgroup::new(),
        elsewhere: TestCgroup::new(),
        unwatched: TestCgroup::new(),
        go: dir.path().join("go"),
        _dir: dir,
    }
}

/// The probe's connection worked and reached the listener.
fn assert_arrived(l: &std::net::TcpListener, out: &serde_json::Value, what: &str) {
    assert_eq!(out["ok"], true, "{what}: {out}");
    assert!(
        eventually(|| accepted(l)),
        "{what}: no connection arrived: {out}"
    );
}

/// The probe's connection was refused (`EPERM`) and nothing reached the listener.
fn assert_refused(l: &std::net::TcpListener, out: &serde_json::Value, what: &str) {
    assert_eq!(out["errno"].as_i64(), Some(EPERM), "{what}: {out}");
    assert!(!accepted(l), "{what}: the connection arrived");
}

fn received(u: &std::net::UdpSocket) -> bool {
    u.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 16];
    u.recv(&mut buf).is_ok()
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn the_unspecified_address_is_decided_as_the_address_it_becomes() {
    if !privileged() {
        return;
    }
    use std::net::{TcpListener, UdpSocket};
    let lo = TcpListener::bind("127.0.0.1:0").expect("bind");
    let lo_port = lo.local_addr().expect("addr").port();
    let lo2 = TcpListener::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    let lo2_port = lo2.local_addr().expect("addr").port();
    let lo6 = TcpListener::bind("[::1]:0").expect("bind ::1");
    let lo6_port = lo6.local_addr().expect("addr").port();
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    let udp_port = udp.local_addr().expect("addr").port();
    let h = Harness::new(&rules(&format!(
        "  - {{name: lo, workload: test, on: connect, to: [127.0.0.1/32], ports: [{lo_port}], action: deny}}\n\
         \x20 - {{name: lo2, workload: test, on: connect, to: [127.0.0.2/32], ports: [{lo2_port}], action: deny}}\n\
         \x20 - {{name: lo6, workload: test, on: connect, to: [\"::1/128\"], ports: [{lo6_port}], action: deny}}\n\
         \x20 - {{name: udp, workload: test, on: connect, to: [127.0.0.1/32], ports: [{udp_port}], protocol: udp, action: deny}}\n"
    )));
    let free = TestCgroup::new();
    let watched = h.cgroup.path.clone();
    type Reached<'a> = Box<dyn Fn() -> bool + 'a>;
    let cases: Vec<(&str, Vec<String>, Reached)> = vec![
        (
            "TCP to 0.0.0.0 (loopback)",
            probe_args(&["connect", &format!("0.0.0.0:{lo_port}")]),
            Box::new(|| accepted(&lo)),
        ),
        (
            "TCP to 0.0.0.0 from a socket bound to 127.0.0.2 (its own address)",
            probe_args(&["connect-from", "127.0.0.2", &format!("0.0.0.0:{lo2_port}")]),
            Box::new(|| accepted(&lo2)),
        ),
        (
            "TCP to :: (::1)",
            probe_args(&["connect", &format!("[::]:{lo6_port}")]),
            Box::new(|| accepted(&lo6)),
        ),
        (
            "TCP to :: from a dual-stack socket bound to a v4-mapped address (127.0.0.1)",
            probe_args(&["connect-from", "::ffff:0.0.0.0", &format!("[::]:{lo_port}")]),
            Box::new(|| accepted(&lo)),
        ),
        (
            "TCP to ::ffff:0.0.0.0 on a dual-stack socket",
            probe_args(&["connect", &format!("[::ffff:0.0.0.0]:{lo_port}")]),
            Box::new(|| accepted(&lo)),
        ),
        (
            "UDP sendto 0.0.0.0",
            probe_args(&["udp-send", &format!("0.0.0.0:{udp_port}")]),
            Box::new(|| received(&udp)),
        ),
    ];
    for (name, cmd, reached) in &cases {
        let out = run_in(&free.path, cmd);
        assert!(
            eventually(reached),
            "{name}: does not reach the destination unwatched: {out}"
        );
        let out = run_in(&watched, cmd);
        assert!(!reached(), "{name}: reached the denied destination: {out}");
        assert_eq!(out["errno"].as_i64(), Some(EPERM), "{name}: {out}");
    }
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn packets_that_no_socket_hook_sees_are_dropped_on_the_way_out() {
    if !privileged() {
        return;
    }
    let _ping = Sysctl::ping_sockets_for_root();
    let mut icmp = Arrivals::new(libc::SOCK_RAW, libc::IPPROTO_ICMP, None);
    let mut lite = Arrivals::new(
        libc::SOCK_DGRAM,
        libc::IPPROTO_UDPLITE,
        Some("127.0.0.1:0".parse().expect("addr")),
    );
    let lite_port = lite.port();
    let (mptcp, mptcp_to) = latch_tests::destination();
    let mptcp_port = mptcp.local_addr().expect("addr").port();
    let h = Harness::new(&rules(&format!(
        "  - {{name: no-3, workload: test, on: connect, to: [127.0.0.3/32], action: deny}}\n\
         \x20 - {{name: ask-4, workload: test, on: connect, to: [127.0.0.4/32], action: approve}}\n\
         \x20 - {{name: no-udp, workload: test, on: connect, to: [127.0.0.1/32], ports: [{lite_port}], protocol: udp, action: deny}}\n\
         \x20 - {{name: no-tcp, workload: test, on: connect, to: [127.0.0.1/32], ports: [{mptcp_port}], protocol: tcp, action: deny}}\n"
    )));
    let free = TestCgroup::new();
    let watched = h.cgroup.path.clone();
    let cases: [(&str, &str, &str); 3] = [
        ("raw ICMP socket", "raw", "127.0.0.3"),
        ("unprivileged ping socket", "ping", "127.0.0.3"),
        (
            "raw ICMP to a destination that needs approval",
            "raw",
            "127.0.0.4",
        ),
    ];
    let id = std::process::id();
    for (i, (name, how, to)) in cases.iter().enumerate() {
        let free_tag = format!("{id}-{i}-free");
        let out = run_in(&free.path, &probe_args(&["icmp", how, to, &free_tag]));
        assert!(
            icmp.wait_for(format!("latch-{free_tag}").as_bytes()),
            "{name}: does not arrive unwatched: {out}"
        );
        let tag = format!("{id}-{i}-watched");
        let out = run_in(&watched, &probe_args(&["icmp", how, to, &tag]));
        // A later packet from outside, seen arriving: the earlier one would be there by now.
        let after = format!("{id}-{i}-after");
        run_in(&free.path, &probe_args(&["icmp", how, to, &after]));
        assert!(icmp.wait_for(format!("latch-{after}").as_bytes()));
        assert!(
            !icmp.has(format!("latch-{tag}").as_bytes()),
            "{name}: reached a denied destination: {out}"
        );
        assert_eq!(out["errno"].as_i64(), Some(EPERM), "{name}: {out}");
    }
    // A socket made after leaving the watched cgroup: its packets carry the cgroup it was made
    // in, which nobody watches; the backstop knows it by its maker's lineage.
    let elsewhere = TestCgroup::new();
    let dest = s(&elsewhere.path);
    for how in ["raw", "ping"] {
        let free_tag = format!("{id}-{how}-moved-free");
        let out = run_in(
            &free.path,
            &probe_args(&["moved", &dest, "icmp", how, "127.0.0.3", &free_tag]),
        );
        assert!(
            icmp.wait_for(format!("latch-{free_tag}").as_bytes()),
            "{how} after a move: does not arrive unwatched: {out}"
        );
        let tag = format!("{id}-{how}-moved-watched");
        let out = run_in(
            &watched,
            &probe_args(&["moved", &dest, "icmp", how, "127.0.0.3", &tag]),
        );
        let after = format!("{id}-{how}-moved-after");
        run_in(&free.path, &probe_args(&["icmp", how, "127.0.0.3", &after]));
        assert!(icmp.wait_for(format!("latch-{after}").as_bytes()));
        assert!(
            !icmp.has(format!("latch-{tag}").as_bytes()),
            "{how}: a socket made after leaving the watched cgroup reached a denied destination: {out}"
        );
        assert_eq!(
            out["errno"].as_i64(),
            Some(EPERM),
            "{how} after a move: {out}"
        );
    }
    // UDP-Lite under a `protocol: udp` rule.
    let to = format!("127.0.0.1:{lite_port}");
    let out = run_in(&free.path, &probe_args(&["udplite-send", &to]));
    assert!(
        lite.wait_for(b"latch"),
        "UDP-Lite does not arrive unwatched: {out}"
    );
    lite.forget();
    let out = run_in(&watched, &probe_args(&["udplite-send", &to]));
    assert_eq!(out["errno"].as_i64(), Some(EPERM), "UDP-Lite: {out}");
    assert!(
        !lite.has(b"latch"),
        "UDP-Lite reached a destination a udp rule denies"
    );
    // MPTCP under a `protocol: tcp` rule (a plain TCP listener takes an MPTCP connection as
    // TCP; the kernels of the matrix and this host enable MPTCP by default).
    let out = run_in(&free.path, &probe_args(&["mptcp-connect", &mptcp_to]));
    assert_eq!(out["ok"].as_bool(), Some(true), "MPTCP unwatched: {out}");
    assert!(
        eventually(|| accepted(&mptcp)),
        "MPTCP does not arrive unwatched: {out}"
    );
    let out = run_in(&watched, &probe_args(&["mptcp-connect", &mptcp_to]));
    assert_eq!(out["errno"].as_i64(), Some(EPERM), "MPTCP: {out}");
    assert!(
        !accepted(&mptcp),
        "MPTCP reached a destination a tcp rule denies"
    );
}

/// A UDP receiver on loopback and a harness whose one rule denies its port, for datagrams
/// built by hand and written to the loopback device on an `AF_PACKET` socket: below every
/// socket hook and the cgroup skb backstop. Arriving without a route attached, a datagram from
/// 127.0.0.1 to 127.0.0.1 is routed as input, which takes `route_localnet` (a loopback
/// destination) and `accept_local` (a local source) on `lo`: held in `_settings`.
struct BelowIp {
    udp: Arrivals,
    port: String,
    h: Harness,
    _settings: [Sysctl; 2],
}

fn below_ip() -> BelowIp {
    let _settings = [
        Sysctl::set("/proc/sys/net/ipv4/conf/lo/route_localnet", "1"),
        Sysctl::set("/proc/sys/net/ipv4/conf/lo/accept_local", "1"),
    ];
    let udp = Arrivals::new(
        libc::SOCK_DGRAM,
        libc::IPPROTO_UDP,
        Some("127.0.0.1:0".parse().expect("addr")),
    );
    let port = udp.port().to_string();
    let h = Harness::new(&rules(&format!(
        "  - {{name: no-port, workload: test, on: connect, to: [127.0.0.1/32], ports: [{port}], protocol: udp, action: deny}}\n"
    )));
    BelowIp {
        udp,
        port,
        h,
        _settings,
    }
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn a_link_layer_socket_is_refused_to_a_watched_task() {
    if !privileged() {
        return;
    }
    let BelowIp {
        mut udp,
        port,
        mut h,
        _settings,
    } = below_ip();
    if h.engine().backend() == Backend::Tracepoint {
        assert!(
            h.engine().hooks().contains(&"uring-tp"),
            "io_uring's submission event is not attached: {:?}",
            h.engine().hooks()
        );
    }
    let free = TestCgroup::new();
    let watched = h.cgroup.path.clone();
    let id = std::process::id();
    // The socket made by the 64-bit call, by an io_uring request (no socket system call at
    // all; taken from the ring by the caller, or by the ring's poll thread), and (x86_64) by
    // the 32-bit call: all but the first are what the 64-bit system-call tracepoints do not see.
    let hows: &[&str] = if cfg!(target_arch = "x86_64") {
        &[
            "packet-udp",
            "packet-udp-uring",
            "packet-udp-sqpoll",
            "packet-udp-32",
        ]
    } else {
        &["packet-udp", "packet-udp-uring", "packet-udp-sqpoll"]
    };
    for how in hows {
        // Through a second probe, whose end the first reports: on the tracepoint backend the
        // task that makes the socket is ended.
        let send = |cg: &Path, tag: &str| {
            let inner = s(&probe());
            run_in(cg, &probe_args(&["exec", &inner, how, &port, tag]))
        };
        let out = send(&free.path, &format!("{id}-{how}-free"));
        assert!(
            udp.wait_for(format!("latch-{id}-{how}-free").as_bytes()),
            "{how}: a frame from an AF_PACKET socket does not arrive unwatched: {out}"
        );
        let since = h.events().len();
        let refused_before = counter(&mut h, Counter::PacketSocketRefused);
        let out = send(&watched, &format!("{id}-{how}-watched"));
        // A later frame from outside, seen arriving: the earlier one would be there by now.
        send(&free.path, &format!("{id}-{how}-after"));
        assert!(udp.wait_for(format!("latch-{id}-{how}-after").as_bytes()));
        assert!(
            !udp.has(format!("latch-{id}-{how}-watched").as_bytes()),
            "{how}: a watched task sent below IP: {out}"
        );
        match h.engine().backend() {
            Backend::Lsm => {
                let inner = out["stdout"].as_str().unwrap_or_default();
                assert!(inner.contains("\"errno\":1,"), "{how}: {out}");
            }
            // The tracepoint cannot refuse the call: the task is ended before it returns.
            Backend::Tracepoint => assert_eq!(out["signal"], 9, "{how}: {out}"),
        }
        match (*how, h.engine().backend()) {
            // Ended at the 32-bit call's entry, whatever the call.
            ("packet-udp-32", Backend::Tracepoint) => {
                h.expect_event_since(since, "the ended 32-bit call", |e| {
                    e.op == Op::Syscall32 && e.syscall32 == Some(359)
                });
                assert!(counter(&mut h, Counter::CompatKilled) > 0);
            }
            _ => {
                h.expect_event_since(since, "the refused socket", |e| {
                    e.packet_socket && e.outcome == Outcome::Denied
                });
                assert!(counter(&mut h, Counter::PacketSocketRefused) > refused_before);
            }
        }
    }
}

/// A connect or send made through the 32-bit system-call table, which the 64-bit system-call
/// tracepoints where a held call stops do not see: held like a 64-bit one on the LSM backend
/// (nothing arrives before the decision, and the decision is what happens), ended at its entry
/// on the tracepoint backend.
#[cfg(target_arch = "x86_64")]
#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn a_held_32_bit_network_call_waits_for_its_decision() {
    if !privileged() {
        return;
    }
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let tcp_port = tcp.local_addr().expect("addr").port();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    let udp_port = udp.local_addr().expect("addr").port();
    let mut h = Harness::new(&rules(&format!(
        "  - {{name: ask-tcp, workload: test, on: connect, to: [127.0.0.1/32], ports: [{tcp_port}], action: approve}}\n\
         \x20 - {{name: ask-udp, workload: test, on: connect, to: [127.0.0.1/32], ports: [{udp_port}], protocol: udp, action: approve}}\n"
    )));
    let free = TestCgroup::new();
    let watched = h.cgroup.path.clone();
    let tcp_to = format!("127.0.0.1:{tcp_port}");
    let udp_to = format!("127.0.0.1:{udp_port}");
    type Reached<'a> = &'a dyn Fn() -> bool;
    let tcp_in: Reached = &|| accepted(&tcp);
    let udp_in: Reached = &|| received(&udp);
    // Every 32-bit call that can name a destination, each stopped at its own wrapper's return;
    // a denial through each kind of socket.
    let cases: [(&str, &str, Reached, Decision); 6] = [
        ("connect", &tcp_to, tcp_in, Decision::Allow),
        ("socketcall", &tcp_to, tcp_in, Decision::Deny),
        ("sendto", &udp_to, udp_in, Decision::Allow),
        ("socketcall-sendto", &udp_to, udp_in, Decision::Allow),
        ("sendmsg", &udp_to, udp_in, Decision::Deny),
        ("sendmmsg", &udp_to, udp_in, Decision::Allow),
    ];
    for (how, to, reached, decision) in cases {
        // Through a second probe, whose end the first reports: on the tracepoint backend the
        // task that makes the call is ended.
        let cmd = |cg: &Path| {
            let args = probe_args(&["exec", &s(&probe()), "net32", how, to]);
            let rest: Vec<&str> = args[1..].iter().map(String::as_str).collect();
            spawn_in(cg, Path::new(&args[0]), &rest)
        };
        let out = outcome(cmd(&free.path));
        assert_eq!(inner(&out)["ok"], true, "{how}: fails unwatched: {out}");
        assert!(
            eventually(reached),
            "{how}: nothing arrives unwatched: {out}"
        );
        let since = h.events().len();
        let child = cmd(&watched);
        match h.engine().backend() {
            Backend::Lsm => {
                let op = if to == tcp_to { "connect" } else { "sendmsg" };
                let p = h.wait_pending_where(how, |q| q.op == op);
                latch_tests::wait_state(p.tgid, 'T');
                assert!(!reached(), "{how}: arrived before its decision");
                h.engine().decide(p.id, decision).expect("decide");
                let out = outcome(child);
                let i = inner(&out);
                match decision {
                    Decision::Allow => {
                        assert_eq!(i["ok"], true, "{how}: approved: {out}");
                        assert!(
                            eventually(reached),
                            "{how}: approved, nothing arrived: {out}"
                        );
                    }
                    _ => {
                        assert_eq!(i["errno"].as_i64(), Some(EPERM), "{how}: denied: {out}");
                        assert!(!reached(), "{how}: denied, and it arrived: {out}");
                    }
                }
                h.expect_event_since(since, "the paused call", |e| {
                    e.outcome == Outcome::Paused && e.tgid == p.tgid
                });
            }
            Backend::Tracepoint => {
                let out = outcome(child);
                assert_eq!(out["signal"], 9, "{how}: {out}");
                assert!(
                    !reached(),
                    "{how}: a 32-bit call of an ended task arrived: {out}"
                );
                h.expect_event_since(since, "the ended 32-bit call", |e| e.op == Op::Syscall32);
            }
        }
    }
}

/// Waits until no process is left in the cgroup at `path`.
fn drained(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let procs = std::fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default();
        if procs.trim().is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "processes still in {}: {procs}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// On the tracepoint backend a task is ended at the entry of the call that makes an `AF_PACKET`
/// socket, and the call completes. A second process that shares its descriptor table
/// (`clone(CLONE_FILES)`, not a thread) would find the socket there and send on it: so a
/// watched task may not make one, and is ended when it does. The LSM backend refuses the
/// socket itself.
#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn a_process_sharing_the_descriptor_table_is_not_left_a_link_layer_socket() {
    if !privileged() {
        return;
    }
    let BelowIp {
        mut udp,
        port,
        mut h,
        _settings,
    } = below_ip();
    let free = TestCgroup::new();
    let watched = h.cgroup.path.clone();
    let id = std::process::id();
    let send = |cg: &Path, tag: &str| {
        let inner = s(&probe());
        run_in(
            cg,
            &probe_args(&["exec", &inner, "packet-udp-shared", &port, tag]),
        )
    };
    let out = send(&free.path, &format!("{id}-shared-free"));
    assert!(
        udp.wait_for(format!("latch-{id}-shared-free").as_bytes()),
        "the second process does not send on the shared socket unwatched: {out}"
    );
    assert_eq!(inner(&out)["child_exit"], 0, "{out}");
    let since = h.events().len();
    let out = send(&watched, &format!("{id}-shared-watched"));
    // The second process gives up after a few seconds of finding no socket: once it is gone,
    // anything it sent has arrived before the frame sent next.
    drained(&watched);
    send(&free.path, &format!("{id}-shared-after"));
    assert!(udp.wait_for(format!("latch-{id}-shared-after").as_bytes()));
    assert!(
        !udp.has(format!("latch-{id}-shared-watched").as_bytes()),
        "a process sharing a watched task's descriptor table sent below IP: {out}"
    );
    match h.engine().backend() {
        Backend::Lsm => assert_eq!(inner(&out)["errno"].as_i64(), Some(EPERM), "{out}"),
        Backend::Tracepoint => {
            // Ended when it made the second process, before its socket() call.
            assert_eq!(out["signal"], 9, "{out}");
            h.expect_event_since(since, "the ended clone", |e| {
                e.op == Op::Shared && e.shared_with.is_some_and(|p| p != 0)
            });
            assert!(counter(&mut h, Counter::ShareKilled) > 0);
            assert_eq!(
                counter(&mut h, Counter::PacketSocketRefused),
                0,
                "the ended task went on to its socket() call"
            );
        }
    }
}

/// The file system a path is on, for messages.
fn fs_of(p: &Path) -> String {
    std::process::Command::new("findmnt")
        .args(["-no", "FSTYPE,SOURCE,TARGET", "-T"])
        .arg(p)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn the_kernel_and_the_agent_name_a_file_alike() {
    if !privileged() {
        return;
    }
    let p = new_program();
    let mut h = rule_on(&p, "seen", "audit");
    let m = p.marker("audited");
    let out = h.probe(&["exec", &s(&p.path()), &s(&m)]);
    assert!(m.exists(), "audit lets it run: {out}");
    let ev = h.expect_event("audited exec", |e| e.outcome == Outcome::Audited);
    let kernel = ev
        .file
        .expect("the kernel read the executed file's identity");
    let agent: Vec<(u32, u64)> = h
        .compiled
        .exec_files
        .iter()
        .map(|(k, _)| (k.dev, k.ino))
        .collect();
    assert!(
        agent.contains(&(kernel.dev, kernel.ino)),
        "the agent keys {agent:?}, the kernel executed {kernel:?}: {} ({})",
        p.path().display(),
        fs_of(&p.path())
    );
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn a_watched_task_may_not_use_bpf_on_the_lsm_backend() {
    if !privileged() {
        return;
    }
    let mut h = Harness::new(&rules(
        "  - {name: none, workload: test, on: exec, paths: [/nonexistent], action: deny}\n",
    ));
    let free = TestCgroup::new();
    let out = run_in(&free.path, &probe_args(&["bpf-map"]));
    assert_eq!(
        out["ok"], true,
        "root may use bpf() where nothing watches: {out}"
    );
    let out = h.probe(&["bpf-map"]);
    match h.engine().backend() {
        Backend::Lsm => {
            assert_eq!(out["errno"].as_i64(), Some(EPERM), "{out}");
            assert!(counter(&mut h, Counter::BpfRefused) > 0);
        }
        // Without BPF LSM nothing can refuse it: a watched root task can touch the maps (the
        // README says so, and `latch-agent doctor` reports it).
        Backend::Tracepoint => assert_eq!(out["ok"], true, "{out}"),
    }
}

/// A TCP listener on loopback, and a harness whose one rule denies connections to it.
fn harness_denying_a_listener() -> (std::net::TcpListener, u16, Harness) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let h = Harness::new(&rules(&format!(
        "  - {{name: off, workload: test, on: connect, to: [127.0.0.1/32], ports: [{port}], action: deny}}\n"
    )));
    (l, port, h)
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn leaving_the_watched_cgroup_does_not_leave_the_rules() {
    if !privileged() {
        return;
    }
    let (l, port, mut h) = harness_denying_a_listener();
    let free = TestCgroup::new();
    let elsewhere = TestCgroup::new();
    let to = format!("127.0.0.1:{port}");
    let dest = s(&elsewhere.path);
    let watched_id = cgroups::id_of(&h.cgroup.path).expect("watched cgroup id");
    let elsewhere_id = cgroups::id_of(&elsewhere.path).expect("cgroup id");
    // Where BTF gives a task's cgroup, a child started elsewhere is told as a move too.
    let ancestry = h.engine().ancestry_missing().is_none();
    // Processes that moved from one unwatched cgroup to another: none of them is reported.
    let mut unwatched_pids = Vec::new();
    for how in ["escape", "escape-clone", "escape-thread-exec"] {
        // Where nothing watches, the move works and the connection arrives.
        let child = spawn_in(&free.path, &probe(), &[how, &dest, &to]);
        unwatched_pids.push(child.id());
        let out = outcome(child);
        assert_eq!(out["ok"], true, "{how} unwatched: {out}");
        assert!(
            eventually(|| accepted(&l)),
            "{how}: no connection arrived unwatched: {out}"
        );
        // From the watched cgroup, the process (or its clone) left it, and is still refused.
        let before = counter(&mut h, Counter::LeftWatched);
        let since = h.events().len();
        let child = spawn_in(&h.cgroup.path.clone(), &probe(), &[how, &dest, &to]);
        let pid = child.id();
        let out = outcome(child);
        assert_eq!(
            out["errno"].as_i64(),
            Some(EPERM),
            "{how} from the watched cgroup: {out}"
        );
        assert!(!accepted(&l), "{how}: the connection arrived");
        if how != "escape-clone" || ancestry {
            assert!(
                counter(&mut h, Counter::LeftWatched) > before,
                "the move was counted"
            );
            // And reported, for this process (a clone started elsewhere: its child): the
            // watched cgroup whose rules it keeps, where it went, and the workload whose rule
            // refused its connection.
            let moved = h.expect_event_since(
                since,
                "this process's move out of the watched cgroup",
                |e| e.op == Op::Move && (how == "escape-clone" || e.pid == pid),
            );
            let pid = moved.pid;
            assert_eq!(moved.cgroup_id, watched_id, "{moved:?}");
            assert_eq!(
                moved.moved_to.as_ref().map(|m| m.cgroup_id),
                Some(elsewhere_id),
                "{moved:?}"
            );
            let refused = h.expect_event("this process's refused connection", |e| {
                e.op == Op::Connect && e.outcome == Outcome::Denied && e.tgid == pid
            });
            assert_eq!(moved.workload, refused.workload, "{moved:?}");
        }
    }
    assert!(
        !h.events()
            .iter()
            .any(|e| e.op == Op::Move && unwatched_pids.contains(&e.pid)),
        "a move between unwatched cgroups was reported: {:#?}",
        h.events()
    );
}

/// A supervisor (here, the test) that starts a process outside every watched cgroup and then
/// writes it into a cgroup below a watched one (as systemd puts a service into a slice) puts it
/// under the watched cgroup's rules; the process then moves itself out and connects. The move
/// is made by another process, so the kernel must take the moved thread from the hook's
/// arguments, not the task running it. The same for a child an unwatched supervisor starts
/// there directly (`clone3(CLONE_INTO_CGROUP)`), where no move happens at all.
#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn a_process_put_below_the_watched_cgroup_keeps_its_rules_when_it_leaves() {
    if !privileged() {
        return;
    }
    let Departure {
        l,
        port,
        mut h,
        free,
        elsewhere,
        unwatched,
        go,
        _dir,
    } = departure();
    // Waits until it has been put below, then leaves and connects.
    let script = latch_tests::leave_then_connect(&go, &elsewhere.path, port);
    let sh = Path::new("/bin/sh");
    let watched_id = cgroups::id_of(&h.cgroup.path).expect("watched cgroup id");
    let elsewhere_id = cgroups::id_of(&elsewhere.path).expect("cgroup id");
    for (parent, watched) in [
        (unwatched.path.clone(), false),
        (h.cgroup.path.clone(), true),
    ] {
        let below = parent.join("below");
        std::fs::create_dir(&below).expect("mkdir below");
        let child = spawn_in(&free.path, sh, &["-c", &script]);
        let pid = child.id();
        std::fs::write(below.join("cgroup.procs"), pid.to_string()).expect("put it below");
        std::fs::write(&go, "").expect("go");
        let out = outcome(child);
        std::fs::remove_file(&go).expect("rm go");
        // Started there by a supervisor outside (`clone3(CLONE_INTO_CGROUP)`), then leaving.
        let to = format!("127.0.0.1:{port}");
        let started = run_in(
            &free.path,
            &probe_args(&["clone-into", &s(&below), &s(&elsewhere.path), &to]),
        );
        if !watched {
            assert_arrived(&l, &out, "below an unwatched cgroup");
            assert_arrived(&l, &started, "started below an unwatched cgroup");
            continue;
        }
        assert_refused(&l, &started, "started below the watched cgroup, then left");
        assert_refused(&l, &out, "left from below the watched cgroup");
        // Its departure is told, with the watched cgroup whose rules it keeps.
        let moved = h.expect_event("the move out from below the watched cgroup", |e| {
            e.op == Op::Move && e.pid == pid
        });
        assert_eq!(moved.cgroup_id, watched_id, "{moved:?}");
        assert_eq!(
            moved.moved_to.as_ref().map(|m| m.cgroup_id),
            Some(elsewhere_id),
            "{moved:?}"
        );
        // A child forked below keeps the watched cgroup's rules too, not those of the cgroup
        // below it (which no rule names): its departure names the watched cgroup.
        let since = h.events().len();
        let forked = format!("{} escape {} {to}; :", s(&probe()), s(&elsewhere.path));
        let out = outcome(spawn_in(&below, sh, &["-c", &forked]));
        assert_refused(
            &l,
            &out,
            "a child forked below the watched cgroup, then gone",
        );
        let moved = h.expect_event_since(since, "the forked child's move out", |e| {
            e.op == Op::Move && e.moved_to.as_ref().map(|m| m.cgroup_id) == Some(elsewhere_id)
        });
        assert_eq!(moved.cgroup_id, watched_id, "{moved:?}");
    }
}

/// A move records the thread-group leader alone, so the threads a process had before a
/// supervisor put it into a watched cgroup are watched, once it leaves, through the leader's
/// lineage. The leader may end by itself (`pthread_exit`) while they run on: they keep it.
#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn the_threads_of_a_process_that_left_keep_its_rules_when_the_leader_ends() {
    if !privileged() {
        return;
    }
    let Departure {
        l,
        port,
        mut h,
        free,
        elsewhere,
        unwatched,
        go,
        _dir,
    } = departure();
    let to = format!("127.0.0.1:{port}");
    for (into, watched) in [
        (unwatched.path.clone(), false),
        (h.cgroup.path.clone(), true),
    ] {
        let child = spawn_in(
            &free.path,
            &probe(),
            &["leader-gone", &s(&go), &s(&elsewhere.path), &to],
        );
        let pid = child.id();
        // Its second thread exists before the process is put into the cgroup.
        assert!(
            eventually(|| std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(|d| d.count() == 2)
                .unwrap_or(false)),
            "the probe started its second thread"
        );
        std::fs::write(into.join("cgroup.procs"), pid.to_string()).expect("put it there");
        std::fs::write(&go, "").expect("go");
        let out = outcome(child);
        std::fs::remove_file(&go).expect("rm go");
        if !watched {
            assert_arrived(&l, &out, "from an unwatched cgroup");
            continue;
        }
        assert_refused(
            &l,
            &out,
            "a thread of a process that left the watched cgroup, its leader gone",
        );
        let refused = h.expect_event("the thread's refused connection", |e| {
            e.op == Op::Connect && e.outcome == Outcome::Denied && e.tgid == pid
        });
        assert_ne!(refused.pid, pid, "refused in the thread, not the leader");
        // The last thread out took the leader's lineage with it.
        assert_eq!(
            h.engine().lineage_of(pid).expect("lineage map"),
            None,
            "the process is gone, its lineage is not"
        );
    }
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn a_script_held_once_runs_after_one_approval_unless_its_interpreter_is_denied() {
    if !privileged() {
        return;
    }
    let p = new_program();
    prepare(&p);
    let script = s(&p.at("script"));
    // The script and its interpreter both need approval: one request, and one approval runs it.
    let mut h = Harness::new(&rules(&format!(
        "  - {{name: ask-script, workload: test, on: exec, paths: ['{script}'], action: approve}}\n\
         \x20 - {{name: ask-prog, workload: test, on: exec, paths: ['{}'], action: approve}}\n",
        p.path().display()
    )));
    let m = p.marker("chain");
    let child = h.spawn(&probe(), &["exec", &script, &s(&m)]);
    let first = h.wait_pending_where("the held script", |q| q.op == "exec");
    h.engine()
        .decide(first.id, Decision::Allow)
        .expect("decide");
    let out = outcome(child);
    assert!(
        m.exists(),
        "one approval ran the script and its interpreter: {out}"
    );
    let paused = h
        .events()
        .iter()
        .filter(|e| e.outcome == Outcome::Paused)
        .count();
    assert_eq!(paused, 1, "asked once, not once per level");
    drop(h);

    // The script needs approval, its interpreter is denied: approving the script does not run it.
    let mut h = Harness::new(&rules(&format!(
        "  - {{name: ask-script, workload: test, on: exec, paths: ['{script}'], action: approve}}\n\
         \x20 - {{name: no-prog, workload: test, on: exec, paths: ['{}'], action: deny}}\n",
        p.path().display()
    )));
    let m = p.marker("chain-denied");
    let child = h.spawn(&probe(), &["exec", &script, &s(&m)]);
    match h.engine().backend() {
        Backend::Lsm => {
            let q = h.wait_pending_where("the held script", |q| q.op == "exec");
            h.engine().decide(q.id, Decision::Allow).expect("decide");
            let out = outcome(child);
            assert_eq!(out["errno"].as_i64(), Some(EPERM), "{out}");
        }
        // The image in place is the interpreter, denied: killed before any request.
        Backend::Tracepoint => assert_eq!(outcome(child)["signal"], 9),
    }
    assert!(!m.exists(), "the denied interpreter ran");
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn an_approval_is_not_lent_to_a_file_swapped_in_under_its_name() {
    if !privileged() {
        return;
    }
    let p = new_program();
    let other = p.at("other");
    std::fs::copy("/usr/bin/touch", &other).expect("copy touch");
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let name = p.at("name");
    std::os::unix::fs::symlink(p.path(), &name).expect("symlink");
    let mut h = Harness::new(&rules(&format!(
        "  - {{name: ask-prog, workload: test, on: exec, paths: [{}], action: approve}}\n\
         \x20 - {{name: ask-other, workload: test, on: exec, paths: [{}], action: approve}}\n",
        p.path().display(),
        other.display()
    )));
    let watched = h.cgroup.path.clone();
    let m = p.marker("swapped");
    let child = spawn_in(&watched, &probe(), &["exec", &s(&name), &s(&m)]);
    let first = h.wait_pending_where("the hold of the file the name named", |q| q.op == "exec");
    assert_eq!(first.rule_id, h.rule("ask-prog"));
    // The workload puts another gated program under the same name, then the reviewer approves
    // what was asked for.
    std::fs::remove_file(&name).expect("rm");
    std::os::unix::fs::symlink(&other, &name).expect("symlink");
    h.engine()
        .decide(first.id, Decision::Allow)
        .expect("decide");
    match h.engine().backend() {
        Backend::Lsm => {
            // The exec runs again and finds another file: asked about on its own.
            let second = h.wait_pending_where("a hold of the file swapped in", |q| {
                q.op == "exec" && q.id != first.id
            });
            assert_eq!(second.rule_id, h.rule("ask-other"));
            assert!(
                !m.exists(),
                "the swapped-in program ran on the first approval"
            );
            assert!(counter(&mut h, Counter::ExecSwapped) >= 1);
            h.engine()
                .decide(second.id, Decision::Deny)
                .expect("decide");
            let out = outcome(child);
            assert!(!m.exists(), "denied, yet it ran: {out}");
        }
        Backend::Tracepoint => {
            // Decided after the exec: the image held and approved is the first file, and a
            // name changed afterwards runs nothing.
            let out = outcome(child);
            assert!(m.exists(), "the approved program did not run: {out}");
        }
    }
}
