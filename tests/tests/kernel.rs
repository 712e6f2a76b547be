//! The kernel engine against the real kernel: real programs, real processes in a real cgroup.
//! Each test triggers an action, then checks its outcome and the event the kernel wrote.

use std::{
    net::{TcpListener, UdpSocket},
    time::Duration,
};

use agent_common::{family, fingerprint, proto, FailMode, FingerprintKey, Op, Outcome};
use latch_agent::kernel::{Backend, Decision, EngineError, Scope};
use latch_tests::{outcome, privileged, probe, state, wait_state, Harness, Resumed};

const EPERM: i64 = 1;

fn listener() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    (l, port)
}

/// Every connection to the loopback address needs approval.
const ASK_LOOPBACK: &str =
    "  - {name: ask, workload: test, on: connect, to: [127.0.0.1/32], action: approve}\n";

fn rules(body: &str) -> String {
    format!("workloads:\n  - name: test\n    cgroups: [\"{{CG}}\"]\nrules:\n{body}")
}

fn ok(v: &serde_json::Value) -> bool {
    v["ok"] == serde_json::Value::Bool(true)
}

fn errno(v: &serde_json::Value) -> i64 {
    v["errno"].as_i64().unwrap_or(0)
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn connect_allowed_by_rule_and_denied_by_rule() {
    if !privileged() {
        return;
    }
    let (_a, open_port) = listener();
    let (_b, closed_port) = listener();
    let mut h = Harness::new(&rules(&format!(
        "  - {{name: loopback-off, workload: test, on: connect, to: [127.0.0.0/8], action: deny}}\n\
         \x20 - {{name: one-port-on, workload: test, on: connect, to: [127.0.0.1/32], ports: [{open_port}], action: allow}}\n"
    )));
    let allowed = h.probe(&["connect", &format!("127.0.0.1:{open_port}")]);
    assert!(
        ok(&allowed),
        "the more specific allow rule applies: {allowed}"
    );
    let denied = h.probe(&["connect", &format!("127.0.0.1:{closed_port}")]);
    assert_eq!(errno(&denied), EPERM, "{denied}");
    let rule = h.rule("loopback-off");
    let ev = h.expect_event("denied connect", |e| {
        e.outcome == Outcome::Denied && e.op == Op::Connect
    });
    assert_eq!(ev.rule_id, rule);
    assert_eq!(
        ev.destination,
        Some(format!("127.0.0.1:{closed_port}").parse().expect("addr"))
    );
    assert_eq!(ev.cgroup_id, h.cgroup_id);
    assert_eq!(ev.comm, "latch-probe");
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn paused_connect_is_approved_and_its_one_call_succeeds() {
    if !privileged() {
        return;
    }
    let (_l, port) = listener();
    let mut h = Harness::new(&rules(&format!(
        "  - {{name: ask, workload: test, on: connect, to: [127.0.0.1], ports: [{port}], action: approve}}\n"
    )));
    let child = h.spawn(&probe(), &["connect", &format!("127.0.0.1:{port}")]);
    let pid = child.id();
    let p = h.wait_pending(pid);
    wait_state(pid, 'T');
    assert_eq!(p.op, "connect");
    assert_eq!(p.rule_id, h.rule("ask"));
    let ev = h.expect_event("paused", |e| e.outcome == Outcome::Paused && e.tgid == pid);
    assert_eq!(ev.request, Some(p.id));
    h.engine().decide(p.id, Decision::Allow).expect("decide");
    let out = outcome(child);
    assert!(
        ok(&out),
        "the held connect() completed after approval: {out}"
    );
    assert!(
        h.engine().pending().expect("pending").is_empty(),
        "the decision was consumed"
    );
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn paused_connect_then_denied_fails_with_eperm() {
    if !privileged() {
        return;
    }
    let (_l, port) = listener();
    let mut h = Harness::new(&rules(ASK_LOOPBACK));
    let child = h.spawn(&probe(), &["connect", &format!("127.0.0.1:{port}")]);
    let p = h.wait_pending(child.id());
    h.engine().decide(p.id, Decision::Deny).expect("decide");
    let out = outcome(child);
    assert_eq!(errno(&out), EPERM, "{out}");
    // A decision on a request that is gone is refused by name.
    match h.engine().decide(p.id, Decision::Allow) {
        Err(EngineError::NotPending(id)) => assert_eq!(id, p.id),
        other => panic!("expected NotPending, got {other:?}"),
    }
}

/// A file that only the program under test creates: the evidence that it ran.
fn marker(h: &Harness, name: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("{}-{name}", h.cgroup.rel.trim_start_matches('/')));
    let _ = std::fs::remove_file(&p);
    p
}

/// How a refused exec looks to its caller on each backend: the LSM hook fails `execve` with
/// `EPERM`; the tracepoint backend ends the new image (SIGKILL) before its first instruction.
fn assert_exec_refused(backend: Backend, out: &serde_json::Value) {
    match backend {
        Backend::Lsm => assert_eq!(errno(out), EPERM, "execve failed cleanly: {out}"),
        Backend::Tracepoint => assert_eq!(out["signal"], 9, "killed before it ran: {out}"),
    }
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn exec_paused_then_allowed_runs_only_after_approval() {
    if !privileged() {
        return;
    }
    let mut h = Harness::new(&rules(
        "  - {name: touch-needs-ok, workload: test, on: exec, paths: [/usr/bin/touch], action: approve}
",
    ));
    let made = marker(&h, "approved");
    let m = made.to_string_lossy().into_owned();
    let child = h.spawn(&probe(), &["exec", "/usr/bin/touch", &m]);
    let p = h.wait_pending_where("the exec of touch", |p| p.op == "exec");
    wait_state(p.tgid, 'T');
    let ev = h.expect_event("paused exec", |e| {
        e.outcome == Outcome::Paused && e.op == Op::Exec
    });
    assert_eq!(ev.path.as_deref(), Some("/usr/bin/touch"));
    assert_eq!(ev.before_exec, h.engine().backend() == Backend::Lsm);
    assert!(!made.exists(), "touch did not run before approval");
    h.engine().decide(p.id, Decision::Allow).expect("decide");
    let out = outcome(child);
    assert_eq!(out["exit"], 0, "{out}");
    assert!(made.exists(), "touch ran after approval");
    let _ = std::fs::remove_file(&made);
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn exec_denied_by_rule_and_by_reviewer_never_runs() {
    if !privileged() {
        return;
    }
    let mut h = Harness::new(&rules(
        "  - {name: no-touch, workload: test, on: exec, paths: [/usr/bin/touch], action: deny}\n\
         \x20 - {name: ask-mk, workload: test, on: exec, paths: ['/usr/bin/mkd*'], action: approve}\n",
    ));
    let backend = h.engine().backend();
    let made = marker(&h, "denied");
    let m = made.to_string_lossy().into_owned();
    let out = h.probe(&["exec", "/usr/bin/touch", &m]);
    assert_exec_refused(backend, &out);
    assert!(!made.exists(), "touch never ran");
    h.expect_event("denied exec", |e| {
        e.outcome == Outcome::Denied && e.path.as_deref() == Some("/usr/bin/touch")
    });

    let child = h.spawn(&probe(), &["exec", "/usr/bin/mkdir", &m]);
    let p = h.wait_pending_where("the exec of mkdir", |p| p.op == "exec");
    assert_eq!(p.rule_id, h.rule("ask-mk"), "prefix rule matched");
    h.engine().decide(p.id, Decision::Deny).expect("decide");
    assert_exec_refused(backend, &outcome(child));
    assert!(!made.exists(), "mkdir never ran");
    // The process (or its exec) is gone with its entry: deciding again names the request, and
    // revoking a grant that is not there is not an error.
    match h.engine().decide(p.id, Decision::Deny) {
        Err(EngineError::NotPending(id)) => assert_eq!(id, p.id),
        other => panic!("expected NotPending, got {other:?}"),
    }
    let absent = agent_common::GrantKey {
        scope: agent_common::scope::HOST,
        _pad: [0; 3],
        rule_id: p.rule_id,
        subject: 0,
        target: p.target,
    };
    assert!(!h
        .engine()
        .revoke(&absent)
        .expect("revoke of a missing grant"));
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn unwatched_cgroup_is_untouched_and_child_cgroup_is_watched() {
    if !privileged() {
        return;
    }
    let (_l, port) = listener();
    let target = format!("127.0.0.1:{port}");
    let mut h = Harness::new(&rules(
        "  - {name: all-off, workload: test, on: connect, to: [0.0.0.0/0], action: deny}\n",
    ));
    // A sibling cgroup the rules do not name.
    let root = h.cgroup.path.parent().expect("root").to_path_buf();
    let sibling = root.join(format!(
        "{}-sibling",
        h.cgroup
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("name")
    ));
    std::fs::create_dir(&sibling).expect("mkdir sibling");
    let out = outcome(h.spawn_in(&sibling, &probe(), &["connect", &target]));
    std::fs::remove_dir(&sibling).expect("rmdir sibling");
    assert!(ok(&out), "unwatched cgroup untouched: {out}");

    let nested = h.child_cgroup("job-1");
    let out = outcome(h.spawn_in(&nested, &probe(), &["connect", &target]));
    assert_eq!(
        errno(&out),
        EPERM,
        "a child cgroup of a watched one is watched: {out}"
    );
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn foreign_sigcont_never_releases_a_held_operation() {
    if !privileged() {
        return;
    }
    let (_l, port) = listener();
    let mut h = Harness::new(&rules("  - {name: ask, workload: test, on: connect, to: [127.0.0.1/32], action: approve}\n\
                                     \x20 - {name: ask-touch, workload: test, on: exec, paths: [/usr/bin/touch], action: approve}\n"));
    let child = h.spawn(&probe(), &["connect", &format!("127.0.0.1:{port}")]);
    let pid = child.id();
    let p = h.wait_pending(pid);
    wait_state(pid, 'T');
    let before = repaused(&mut h);
    foreign_sigcont(pid);
    // It runs the connect() again, finds it still waiting, and stops again.
    wait_repaused(&mut h, before + 1);
    wait_state(pid, 'T');
    assert_eq!(
        h.wait_pending(pid).id,
        p.id,
        "the same request is still the one pending"
    );
    h.engine().decide(p.id, Decision::Allow).expect("decide");
    assert!(ok(&outcome(child)));

    // Exec. LSM: the restarted execve stops again; tracepoint backend: the image is stopped
    // again on its way back from the signal, or ended at its first system call.
    let made = marker(&h, "too-early");
    let m = made.to_string_lossy().into_owned();
    let mut child = h.spawn(&probe(), &["exec", "/usr/bin/touch", &m]);
    let p = h.wait_pending_where("the exec of touch", |p| p.op == "exec");
    wait_state(p.tgid, 'T');
    let before = repaused(&mut h);
    foreign_sigcont(p.tgid);
    match h.after_foreign_resume(&mut child, p.tgid, before, true) {
        Resumed::StoppedAgain => {
            assert!(!made.exists(), "touch did not run while still pending");
            h.engine().decide(p.id, Decision::Allow).expect("decide");
            assert_eq!(outcome(child)["exit"], 0);
            assert!(made.exists(), "touch ran after approval");
            let _ = std::fs::remove_file(&made);
        }
        Resumed::Ended => {
            let out = outcome(child);
            assert_eq!(out["signal"], 9, "{out}");
            assert!(!made.exists(), "touch did not run while still pending");
        }
    }
}

fn repaused(h: &mut Harness) -> u64 {
    h.engine()
        .counter(agent_common::Counter::Repaused)
        .expect("counter")
}

/// A SIGCONT that does not come from the engine.
fn foreign_sigcont(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGCONT,
    )
    .expect("SIGCONT");
}

fn wait_repaused(h: &mut Harness, at_least: u64) {
    let deadline = std::time::Instant::now() + latch_tests::patience();
    while repaused(h) < at_least {
        assert!(std::time::Instant::now() < deadline, "never paused again");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn killed_paused_process_leaves_no_pending_entry() {
    if !privileged() {
        return;
    }
    let (_l, port) = listener();
    let mut h = Harness::new(&rules(ASK_LOOPBACK));
    let mut child = h.spawn(&probe(), &["connect", &format!("127.0.0.1:{port}")]);
    let pid = child.id();
    let p = h.wait_pending(pid);
    child.kill().expect("kill");
    child.wait().expect("reap");
    let ev = h.expect_event("cancelled", |e| {
        e.outcome == Outcome::Cancelled && e.request == Some(p.id)
    });
    assert_eq!(ev.tgid, pid);
    assert!(h
        .engine()
        .pending()
        .expect("pending")
        .iter()
        .all(|q| q.tgid != pid));
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn restarted_engine_finds_and_resolves_a_paused_process() {
    if !privileged() {
        return;
    }
    let (_l, port) = listener();
    let mut h = Harness::new(&rules(ASK_LOOPBACK));
    let child = h.spawn(&probe(), &["connect", &format!("127.0.0.1:{port}")]);
    let pid = child.id();
    let p = h.wait_pending(pid);
    h.restart_engine();
    assert_eq!(state(pid), Some('T'), "still held across the restart");
    let again = h.wait_pending(pid);
    assert_eq!(
        again.id, p.id,
        "the new engine sees the same request in the pinned map"
    );
    h.engine()
        .decide(again.id, Decision::Allow)
        .expect("decide");
    assert!(ok(&outcome(child)));
    // The reloaded programs still enforce the pinned rules.
    let child = h.spawn(&probe(), &["connect", &format!("127.0.0.1:{port}")]);
    h.wait_pending(child.id());
    let n = h.engine().release_all(FailMode::Deny).expect("release");
    assert_eq!(n, 1);
    assert_eq!(errno(&outcome(child)), EPERM);
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn stale_heartbeat_applies_the_fail_mode() {
    if !privileged() {
        return;
    }
    let (_l, port) = listener();
    let target = format!("127.0.0.1:{port}");
    let body = ASK_LOOPBACK;
    let mut h = Harness::with(&rules(body), FailMode::Deny);
    h.engine().flatline().expect("flatline");
    let out = h.probe(&["connect", &target]);
    assert_eq!(errno(&out), EPERM, "fail closed: {out}");
    h.expect_event("fail-closed", |e| e.outcome == Outcome::FailClosed);
    assert!(
        h.engine().pending().expect("pending").is_empty(),
        "nothing was paused"
    );

    let mut h = Harness::with(&rules(body), FailMode::AllowAndRecord);
    h.engine().flatline().expect("flatline");
    let out = h.probe(&["connect", &target]);
    assert!(ok(&out), "fail open: {out}");
    h.expect_event("fail-open", |e| e.outcome == Outcome::FailOpen);

    // A fresh beat brings pausing back.
    h.engine().beat().expect("beat");
    let child = h.spawn(&probe(), &["connect", &target]);
    let p = h.wait_pending(child.id());
    h.engine().decide(p.id, Decision::Deny).expect("decide");
    assert_eq!(errno(&outcome(child)), EPERM);
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn ipv6_connect_and_udp_sendmsg_are_checked() {
    if !privileged() {
        return;
    }
    let l6 = TcpListener::bind("[::1]:0").expect("bind ::1");
    let p6 = l6.local_addr().expect("addr").port();
    let udp = UdpSocket::bind("127.0.0.1:0").expect("udp bind");
    let pu = udp.local_addr().expect("addr").port();
    let mut h = Harness::new(&rules(
        "  - {name: v6-off, workload: test, on: connect, to: ['::1/128'], action: deny}\n\
         \x20 - {name: udp-ask, workload: test, on: connect, to: [127.0.0.1/32], protocol: udp, action: approve}\n\
         \x20 - {name: mapped, workload: test, on: connect, to: [127.0.0.2/32], action: deny}\n",
    ));
    let out = h.probe(&["connect", &format!("[::1]:{p6}")]);
    assert_eq!(errno(&out), EPERM, "{out}");
    let ev = h.expect_event("v6 deny", |e| {
        e.outcome == Outcome::Denied && e.destination.is_some_and(|d| d.is_ipv6())
    });
    assert_eq!(ev.rule_id, h.rule("v6-off"));

    // A v4-mapped IPv6 destination meets the IPv4 rules.
    let out = h.probe(&["udp-send", &format!("[::ffff:127.0.0.2]:{pu}")]);
    assert_eq!(errno(&out), EPERM, "{out}");

    let child = h.spawn(&probe(), &["udp-send", &format!("127.0.0.1:{pu}")]);
    let p = h.wait_pending(child.id());
    assert_eq!(p.op, "sendmsg");
    h.engine().decide(p.id, Decision::Allow).expect("decide");
    assert!(ok(&outcome(child)));
    let mut buf = [0u8; 16];
    let (n, _) = udp.recv_from(&mut buf).expect("datagram arrived");
    assert_eq!(&buf[..n], b"latch");
}

/// A copy of a grant (a grant on a host name reaching another address of the name) never
/// replaces another grant in force at its key, as where two names of one rule share an
/// address; so each grant's copies are its own, and a revocation finds those only.
#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn a_copy_of_a_grant_leaves_another_grant_in_force_alone() {
    if !privileged() {
        return;
    }
    let (_a, port_a) = listener();
    let (_b, port_b) = listener();
    let mut h = Harness::new(&rules(ASK_LOOPBACK));
    let mut granted = |port: u16, secs: u64| {
        let child = h.spawn(&probe(), &["connect", &format!("127.0.0.1:{port}")]);
        let p = h.wait_pending(child.id());
        let key = h
            .engine()
            .decide(
                p.id,
                Decision::Grant {
                    scope: Scope::Host,
                    ttl: Duration::from_secs(secs),
                    uses: None,
                },
            )
            .expect("grant")
            .expect("a grant written");
        assert!(ok(&outcome(child)));
        key
    };
    let a = granted(port_a, 600);
    let b = granted(port_b, 1200);
    let value = |h: &mut Harness, k: &agent_common::GrantKey| {
        h.engine()
            .grants()
            .expect("grants")
            .into_iter()
            .find(|(key, _)| key == k)
            .map(|(_, g)| g)
    };
    let b_before = value(&mut h, &b);
    // A copy of A onto B's address: B's grant stays B's.
    assert!(h
        .engine()
        .extend_grant(&a, b.target)
        .expect("extend")
        .is_some());
    assert_eq!(value(&mut h, &b), b_before, "B's grant was replaced");
    // A copy of B at a free key is written, and is B's alone.
    let copy = h
        .engine()
        .extend_grant(&b, 0x5eed)
        .expect("extend")
        .expect("B in force");
    assert_eq!(value(&mut h, &copy), b_before, "the copy carries B's grant");
    assert_eq!(h.engine().extensions(&a).expect("copies of A"), vec![]);
    assert_eq!(h.engine().extensions(&b).expect("copies of B"), vec![copy]);
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn grants_cover_their_scope_target_and_uses() {
    if !privileged() {
        return;
    }
    let (_a, port) = listener();
    let (_b, other) = listener();
    let mut h = Harness::new(&rules(ASK_LOOPBACK));
    let target = format!("127.0.0.1:{port}");
    let child = h.spawn(&probe(), &["connect", &target]);
    let p = h.wait_pending(child.id());
    h.engine()
        .decide(
            p.id,
            Decision::Grant {
                scope: Scope::Workload,
                ttl: Duration::from_secs(600),
                uses: Some(2),
            },
        )
        .expect("grant");
    assert!(ok(&outcome(child)));
    // Another process of the workload, same target: let through by the grant, twice.
    for _ in 0..2 {
        let out = h.probe(&["connect", &target]);
        assert!(ok(&out), "granted: {out}");
    }
    h.expect_event("granted", |e| e.outcome == Outcome::Granted);
    // Uses spent: held again.
    let child = h.spawn(&probe(), &["connect", &target]);
    let p = h.wait_pending(child.id());
    h.engine().decide(p.id, Decision::Deny).expect("decide");
    assert_eq!(errno(&outcome(child)), EPERM);
    // The grant never covered another port.
    let child = h.spawn(&probe(), &["connect", &format!("127.0.0.1:{other}")]);
    let p = h.wait_pending(child.id());
    h.engine().decide(p.id, Decision::Deny).expect("decide");
    assert_eq!(errno(&outcome(child)), EPERM);
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn grants_are_found_by_the_host_s_secret_key_which_outlives_the_agent() {
    if !privileged() {
        return;
    }
    let (_a, port) = listener();
    let mut h = Harness::new(&rules(ASK_LOOPBACK));
    let key = h.engine().fingerprint_key();
    assert!(!key.is_unset(), "a key was drawn");
    let target = format!("127.0.0.1:{port}");
    let child = h.spawn(&probe(), &["connect", &target]);
    let p = h.wait_pending(child.id());
    // The kernel fingerprinted the destination with the agent's key, not a known one: a
    // workload cannot compute which other destination (or program) would share it.
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    assert_eq!(
        p.target,
        fingerprint::network(&key, family::INET, proto::TCP, &addr, port)
    );
    assert_ne!(
        p.target,
        fingerprint::network(
            &FingerprintKey::default(),
            family::INET,
            proto::TCP,
            &addr,
            port
        )
    );
    h.engine()
        .decide(
            p.id,
            Decision::Grant {
                scope: Scope::Workload,
                ttl: Duration::from_secs(600),
                uses: None,
            },
        )
        .expect("grant");
    assert!(ok(&outcome(child)));
    // A replaced agent keeps the key, so the grant it did not write still covers its target.
    h.restart_engine();
    assert_eq!(h.engine().fingerprint_key(), key, "the key was kept");
    let out = h.probe(&["connect", &target]);
    assert!(ok(&out), "granted across the restart: {out}");
    h.expect_event("granted", |e| e.outcome == Outcome::Granted);
    // Another install draws its own key.
    let mut other = Harness::new(&rules(ASK_LOOPBACK));
    assert_ne!(other.engine().fingerprint_key(), key);
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn hundred_thousand_rules_load_and_decide() {
    if !privileged() {
        return;
    }
    let (_l, port) = listener();
    let mut body = String::from(
        "  - name: many\n    workload: test\n    on: connect\n    action: deny\n    to:\n",
    );
    for i in 0..100_000u32 {
        let a = 10 + (i >> 16);
        body.push_str(&format!(
            "      - 10.{a}.{}.{}\n",
            (i >> 8) & 0xff,
            i & 0xff
        ));
    }
    body.push_str(
        "  - {name: loop-off, workload: test, on: connect, to: [127.0.0.1/32], action: deny}\n",
    );
    let mut h = Harness::new(&rules(&body));
    assert!(h.compiled.net4.len() > 100_000);
    let out = h.probe(&["connect", &format!("127.0.0.1:{port}")]);
    assert_eq!(errno(&out), EPERM, "{out}");
    let ev = h.expect_event("deny among 100k", |e| e.outcome == Outcome::Denied);
    assert_eq!(ev.rule_id, h.rule("loop-off"));
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn a_rejected_rule_set_leaves_the_rules_in_force() {
    if !privileged() {
        return;
    }
    let (_l, port) = listener();
    let mut h = Harness::new(&rules(
        "  - {name: off, workload: test, on: connect, to: [127.0.0.1/32], action: deny}\n",
    ));
    let bad =
        rules("  - {name: off, workload: test, on: connect, to: [127.0.0.1/33], action: allow}\n")
            .replace("{CG}", &h.cgroup.rel.clone());
    let err = policy::RuleSet::parse("bad.yaml", &bad).expect_err("refused");
    assert!(
        err.to_string()
            .contains("rule 'off': `to[0]`: invalid CIDR"),
        "{err}"
    );
    // Nothing was applied: the deny still holds.
    let out = h.probe(&["connect", &format!("127.0.0.1:{port}")]);
    assert_eq!(errno(&out), EPERM);
    // A valid replacement takes over in place.
    let good =
        rules("  - {name: on, workload: test, on: connect, to: [127.0.0.1/32], action: allow}\n")
            .replace("{CG}", &h.cgroup.rel.clone());
    let rs = policy::RuleSet::parse("good.yaml", &good).expect("valid");
    let compiled = latch_agent::rules::compile(&rs).expect("compiles");
    let prev = h.compiled.clone();
    h.engine().apply(&compiled, Some(&prev)).expect("apply");
    assert!(ok(&h.probe(&["connect", &format!("127.0.0.1:{port}")])));
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn another_program_at_the_same_hooks_keeps_working_beside_latch() {
    if !privileged() {
        return;
    }
    use latch_tests::neighbour::Neighbour;
    let (open, open_port) = listener();
    let (latch_denied, latch_port) = listener();
    let (_n1, first_port) = listener();
    let (_n2, second_port) = listener();
    let root = latch_agent::kernel::cgroup2_root().expect("cgroup v2");
    // One attached before Latch's hooks, one after.
    let before = Neighbour::refusing_port(&root, first_port).expect("attach a program before");
    let mut h = Harness::new(&rules(&format!(
        "  - {{name: no-db, workload: test, on: connect, to: [127.0.0.1/32], ports: [{latch_port}], action: deny}}\n"
    )));
    let after = Neighbour::refusing_port(&root, second_port).expect("attach a program after");
    let to = |p: u16| format!("127.0.0.1:{p}");
    for round in ["as loaded", "after Latch re-attached its hooks"] {
        let out = h.probe(&["connect", &to(open_port)]);
        assert!(
            ok(&out) && latch_tests::arrives(&open),
            "{round}: allowed connect: {out}"
        );
        let out = h.probe(&["connect", &to(latch_port)]);
        assert_eq!(errno(&out), EPERM, "{round}: Latch's deny: {out}");
        assert!(
            !latch_tests::accept_now(&latch_denied),
            "{round}: reached Latch's denied port"
        );
        h.expect_event("Latch's denial", |e| {
            e.outcome == Outcome::Denied && e.destination.map(|d| d.port()) == Some(latch_port)
        });
        h.seen.clear();
        for p in [first_port, second_port] {
            let out = h.probe(&["connect", &to(p)]);
            assert_eq!(
                errno(&out),
                EPERM,
                "{round}: the other program's deny of {p}: {out}"
            );
        }
        h.restart_engine();
    }
    // Outside the watched cgroup only the other programs apply.
    let outside = latch_tests::TestCgroup::new();
    let out = outcome(latch_tests::spawn_in(
        &outside.path,
        &probe(),
        &["connect", &to(latch_port)],
    ));
    assert!(
        ok(&out) && latch_tests::arrives(&latch_denied),
        "unwatched: {out}"
    );
    let out = outcome(latch_tests::spawn_in(
        &outside.path,
        &probe(),
        &["connect", &to(first_port)],
    ));
    assert_eq!(errno(&out), EPERM, "unwatched, the other program: {out}");
    drop((before, after));
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn maps_pinned_by_a_build_with_another_layout_are_refused_with_what_to_do() {
    if !privileged() {
        return;
    }
    let pin_dir = std::path::PathBuf::from("/sys/fs/bpf")
        .join(format!("latch-test-layout-{}", std::process::id()));
    let maps = pin_dir.join("maps");
    std::fs::create_dir_all(&maps).expect("mkdir in bpffs");
    // PENDING as an older agent had it: 40-byte entries.
    let pin = maps.join("PENDING");
    latch_tests::neighbour::pin_hash_map(&pin, 4, 40, 16_384).expect("pin an old PENDING");
    let r = latch_agent::kernel::Engine::load(latch_agent::kernel::EngineOptions {
        pin_dir: pin_dir.clone(),
        cgroup_root: None,
        stale_after: Duration::from_secs(60),
        fail_mode: FailMode::Deny,
        exec_backend: None,
        dns_proxy_port: 0,
        dns_proxy_v6: false,
    });
    let _ = std::fs::remove_dir_all(&pin_dir);
    let e = match r {
        Err(e) => e.to_string(),
        Ok(_) => panic!("an engine loaded on a PENDING map of another layout"),
    };
    assert!(
        e.contains("PENDING") && e.contains("value 40 B") && e.contains("value 64 B"),
        "{e}"
    );
    assert!(
        e.contains("latch-agent release") && e.contains(&pin.display().to_string()),
        "{e}"
    );
}
