//! Rules on a program's arguments, through the whole agent: only the invocations a rule's
//! `args` name are refused or held, by every name of the program, and a held invocation makes
//! no progress before its decision. Each technique runs first where nothing watches (it works
//! on this host), then where the agent watches. The evidence is a file only the program
//! creates: a private copy of `touch`, whose argument is the file it makes, so the words a rule
//! matches are in the path of that file.

use std::{path::Path, process::Output, time::Duration};

use agent_common::{FailMode, Op, Outcome};
use latch_tests::daemon::{text, Daemon};
use latch_tests::program::ProgramCopy;
use latch_tests::{finish, privileged, sigcont_loop, spawn_in, Harness, TestCgroup};

fn program() -> ProgramCopy {
    ProgramCopy::touch("latch-args-")
}

/// Starts `prog marker` from a shell in `cgroup` (the shell is an installed program).
fn start(cgroup: &Path, prog: &Path, marker: &Path) -> std::process::Child {
    spawn_in(
        cgroup,
        Path::new("/bin/sh"),
        &[
            "-c",
            &format!("exec {} {}", prog.display(), marker.display()),
        ],
    )
}

/// Waits for `child` to end without anyone deciding anything; fails with `why` and what is
/// pending if it is still held after the test's patience.
fn ends_undecided(d: &Daemon, mut child: std::process::Child, why: &str) -> Output {
    let deadline = std::time::Instant::now() + latch_tests::patience();
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let listed = text(&d.cli(&["pending", "--json"]));
            let _ = child.kill();
            panic!("{why}; pending: {listed}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    finish(child)
}

fn rules(prog: &Path, words: &str, action: &str) -> String {
    format!(
        "workloads:\n  - name: test\n    cgroups: [\"{{CG}}\"]\nrules:\n  - {{name: by-args, \
         workload: test, on: exec, paths: [{}], args: {{any: [{words}]}}, action: {action}}}\n",
        prog.display()
    )
}

/// Runs `program args…` from a shell in `cgroup` (the shell is an installed program).
fn run(cgroup: &Path, program: &Path, args: &[&str]) -> Output {
    finish(spawn_in(
        cgroup,
        Path::new("/bin/sh"),
        &[
            "-c",
            &format!("exec {} {}", program.display(), args.join(" ")),
        ],
    ))
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn only_the_invocations_an_argument_rule_names_are_refused_by_any_name() {
    if !privileged() {
        return;
    }
    let f = program();
    let prog = f.path();
    let link = f.dir.path().join("link");
    std::os::unix::fs::symlink(&prog, &link).expect("symlink");
    let hard = f.dir.path().join("hard");
    std::fs::hard_link(&prog, &hard).expect("hard link");
    let cg = TestCgroup::new();
    let free = TestCgroup::new();
    let d = Daemon::start(&cg, &rules(&prog, "\"*forbidden*\"", "deny"), "deny");

    // Other arguments: the program runs, and no request is made.
    let m = f.marker("plain");
    let out = run(&cg.path, &prog, &[&m.to_string_lossy()]);
    assert!(
        m.exists(),
        "an invocation no rule names was refused: {}",
        text(&out)
    );

    let ways: [(&str, &Path, &[&str]); 4] = [
        ("its path", &prog, &[]),
        ("a symlink", &link, &[]),
        ("a hard link", &hard, &[]),
        ("an option before the word", &prog, &["-m"]),
    ];
    let mut through = Vec::new();
    for (name, program, before) in ways {
        let m = f.marker("forbidden-free");
        let mut args: Vec<String> = before.iter().map(|s| s.to_string()).collect();
        args.push(m.to_string_lossy().into_owned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&free.path, program, &args);
        assert!(
            m.exists(),
            "{name}: does not work where nothing watches: {}",
            text(&out)
        );
        let m = f.marker("forbidden-watched");
        let mut args: Vec<String> = before.iter().map(|s| s.to_string()).collect();
        args.push(m.to_string_lossy().into_owned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&cg.path, program, &args);
        if m.exists() || out.status.success() {
            through.push(format!("{name}: {:?} {}", out.status, text(&out)));
        }
    }
    let log = d.stop();
    assert!(
        through.is_empty(),
        "a refused invocation ran:\n{}\nagent log:\n{log}",
        through.join("\n")
    );
    // The plain invocation and the four refused ones were each held and decided by the agent
    // on their arguments.
    let decided = log.matches("held exec resolved").count();
    assert!(
        decided >= 5,
        "{decided} execs decided on their arguments:\n{log}"
    );
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn an_invocation_an_argument_rule_names_waits_for_a_reviewer_or_a_grant() {
    if !privileged() {
        return;
    }
    let f = program();
    let prog = f.path();
    let cg = TestCgroup::new();
    let d = Daemon::start(&cg, &rules(&prog, "\"*ask*\"", "approve"), "deny");
    for (decision, runs) in [("deny", false), ("allow", true)] {
        let m = f.marker(&format!("ask-{decision}"));
        let child = start(&cg.path, &prog, &m);
        let pid = child.id();
        let id = d.wait_request(pid);
        assert!(!m.exists(), "ran before any decision");
        let listed = text(&d.cli(&["pending", "--json"]));
        assert!(
            listed.contains("\"by-args\""),
            "the request names the argument rule: {listed}"
        );
        d.decide(&id, &[decision]);
        let out = finish(child);
        assert_eq!(
            m.exists(),
            runs,
            "after {decision}: {:?} {}",
            out.status,
            text(&out)
        );
    }

    // A grant for the workload, good for one more use: the next matching invocation runs
    // without a request, and the one after it is asked about again.
    let ask = |name: &str| {
        let m = f.marker(name);
        let child = start(&cg.path, &prog, &m);
        (m, child)
    };
    let (m, child) = ask("ask-granted");
    let id = d.wait_request(child.id());
    d.decide(&id, &["grant", "--scope", "workload", "--uses", "1"]);
    finish(child);
    assert!(m.exists(), "the granted invocation ran");
    let (m, child) = ask("ask-under-grant");
    ends_undecided(&d, child, "the grant did not cover the next invocation");
    assert!(m.exists(), "ran under the grant");
    let (m, child) = ask("ask-after-grant");
    let id = d.wait_request(child.id());
    assert!(!m.exists(), "ran although the grant's use was spent");
    d.decide(&id, &["deny"]);
    finish(child);
    assert!(!m.exists());
    d.stop();
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn a_held_invocation_makes_no_progress_under_a_sigcont_loop() {
    if !privileged() {
        return;
    }
    let f = program();
    let prog = f.path();
    let cg = TestCgroup::new();
    let d = Daemon::start(&cg, &rules(&prog, "\"*ask*\"", "approve"), "deny");
    let m = f.marker("ask-sigcont");
    let child = start(&cg.path, &prog, &m);
    let pid = child.id();
    let id = d.wait_request(pid);
    let sent = sigcont_loop(pid, Duration::from_secs(1));
    // Either the stop was renewed at every resume (still the same request), or a SIGCONT raced
    // the renewed stop and the gate ended the image at its first system call. Which one, only
    // once the last SIGCONT has settled: stopped again, or ended.
    let deadline = std::time::Instant::now() + latch_tests::patience();
    while !matches!(latch_tests::state(pid), Some('T' | 't' | 'Z') | None) {
        assert!(
            std::time::Instant::now() < deadline,
            "neither stopped again nor ended after the last SIGCONT"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!m.exists(), "the held program ran under {sent} SIGCONTs");
    let listed = text(&d.cli(&["pending", "--json"]));
    if listed.contains(&id) {
        d.decide(&id, &["allow"]);
        let out = finish(child);
        assert!(
            m.exists(),
            "ran after approval: {:?} {}",
            out.status,
            text(&out)
        );
    } else {
        let out = finish(child);
        assert!(!m.exists());
        assert!(
            !out.status.success(),
            "ended without a decision: {:?}",
            out.status
        );
        let log = d.stop();
        assert!(
            log.contains("fail-closed") || log.contains("resumed without a decision"),
            "the agent recorded the end: {log}"
        );
        return;
    }
    d.stop();
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn a_name_that_needs_approval_does_not_hide_the_argument_rule_of_the_file() {
    if !privileged() {
        return;
    }
    let f = program();
    let prog = f.path();
    let link = f.at("link");
    std::os::unix::fs::symlink(&prog, &link).expect("symlink");
    let cg = TestCgroup::new();
    // The link's name gets a loose rule that holds for approval; the file, a rule that denies
    // some of its invocations. A reviewer must not be asked about an invocation a rule denies.
    let yaml = format!(
        "{}  - {{name: dir-ask, workload: test, on: exec, paths: [\"{}/*\"], action: approve}}\n",
        rules(&prog, "\"*forbidden*\"", "deny"),
        f.dir.path().display()
    );
    let d = Daemon::start(&cg, &yaml, "deny");
    let m = f.marker("forbidden-by-link");
    let child = start(&cg.path, &link, &m);
    let out = ends_undecided(&d, child, "held for a reviewer instead of refused");
    assert!(!m.exists(), "the denied invocation ran: {:?}", out.status);
    assert!(!out.status.success(), "{:?}", out.status);
    d.stop();
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn while_nobody_can_decide_a_program_whose_arguments_a_rule_denies_is_refused_whatever_the_fail_mode(
) {
    if !privileged() {
        return;
    }
    // Fail open, with the heartbeat stale: an exec held only for its arguments runs, but where a
    // rule denies some invocations only the agent could tell this one apart, so it is refused.
    let p = program();
    let free = TestCgroup::new();
    let m = p.marker("free");
    let out = run(&free.path, &p.path(), &[&m.to_string_lossy()]);
    assert!(
        m.exists(),
        "the program runs where nothing watches: {out:?}"
    );
    for (action, runs, outcome) in [
        ("approve", true, Outcome::FailOpen),
        ("deny", false, Outcome::FailClosed),
    ] {
        let mut h = Harness::with(
            &rules(&p.path(), "secret", action),
            FailMode::AllowAndRecord,
        );
        h.engine().flatline().expect("flatline");
        let m = p.marker(action);
        let out = run(&h.cgroup.path, &p.path(), &[&m.to_string_lossy()]);
        assert_eq!(
            m.exists(),
            runs,
            "an invocation no `{action}` rule's arguments name, with nobody to decide: {out:?}"
        );
        h.expect_event("the fail mode's verdict", |e| {
            e.op == Op::Exec && e.outcome == outcome && e.rule_id == args_rule_id(action)
        });
    }
}

/// The kernel's rule id for a path whose `args` rules include one with `action`.
fn args_rule_id(action: &str) -> u32 {
    match action {
        "deny" => agent_common::ARGS_DENY_RULE,
        _ => agent_common::ARGS_RULE,
    }
}
