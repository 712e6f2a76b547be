//! The `latch-agent` daemon as a person runs it: a rules file, the admin socket, the CLI.

use std::{
    net::TcpListener,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use latch_tests::daemon::{rules, text, Daemon};
use latch_tests::{
    binary, finish, outcome, patience, privileged, probe, spawn_in, wait_state, TestCgroup,
};

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn held_connect_is_listed_and_approved_from_the_cli() {
    if !privileged() {
        return;
    }
    let (_l, port) = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let p = l.local_addr().expect("addr").port();
        (l, p)
    };
    let cg = TestCgroup::new();
    let d = Daemon::start(
        &cg,
        &rules(
            "  - {name: db, workload: test, on: connect, to: [127.0.0.1/32], action: approve}\n",
        ),
        "deny",
    );
    let child = spawn_in(
        &cg.path,
        &probe(),
        &["connect", &format!("127.0.0.1:{port}")],
    );
    let pid = child.id();
    let id = d.wait_request(pid);
    wait_state(pid, 'T');
    let table = d.cli(&["pending"]);
    let shown = text(&table);
    assert!(
        shown.contains(&id)
            && shown.contains("latch-probe")
            && shown.contains(&format!("127.0.0.1:{port}"))
            && shown.contains("db"),
        "{shown}"
    );

    // The workload's side can read what it waits for.
    let cgroup_id =
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&cg.path).expect("stat cgroup"));
    let waiting = d
        .dir
        .join("waiting")
        .join(format!("cgroup-{cgroup_id}.json"));
    let deadline = Instant::now() + patience();
    let listed = loop {
        if let Ok(t) = std::fs::read_to_string(&waiting) {
            if t.contains(&id) {
                break t;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never listed {id}",
            waiting.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let v: serde_json::Value = serde_json::from_str(&listed).expect("json");
    assert_eq!(v["waiting"][0]["rule"], "db");
    assert!(v["waiting"][0]["deadline_unix_ms"]
        .as_i64()
        .is_some_and(|d| d > 0));

    d.decide(&id, &["allow"]);
    assert_eq!(outcome(child)["ok"], true);

    let metrics = d.metrics();
    promtext::testing::promtool_check(&metrics);
    assert!(
        metrics.contains("latch_decisions_total{outcome=\"allow\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("latch_kernel{counter=\"paused\"}"),
        "{metrics}"
    );
    let deadline = Instant::now() + patience();
    while waiting.exists() {
        assert!(
            Instant::now() < deadline,
            "the waiting list was never cleared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Deciding it again: exit code 3, the id named.
    let again = d.cli(&["decide", &id, "deny"]);
    assert_eq!(again.status.code(), Some(3), "{}", text(&again));
    assert!(text(&again).contains(&id));
    // A malformed id: exit code 2.
    let bad = d.cli(&["decide", "not-an-id", "allow"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad).contains("'not-an-id' is not a request id"));
    d.stop();
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn bad_rules_on_reload_leave_the_rules_in_force_and_stop_releases_by_fail_mode() {
    if !privileged() {
        return;
    }
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let target = format!("127.0.0.1:{port}");
    let cg = TestCgroup::new();
    let d = Daemon::start(
        &cg,
        &rules("  - {name: off, workload: test, on: connect, to: [127.0.0.1/32], action: deny}\n"),
        "deny",
    );
    assert_eq!(
        outcome(spawn_in(&cg.path, &probe(), &["connect", &target]))["errno"],
        1
    );

    // A broken rules file and SIGHUP: refused, the deny stays.
    std::fs::write(
        &d.rules,
        "rules: [ {name: off, workload: test, on: connect, to: [300.0.0.1], action: allow} ]\n",
    )
    .expect("write");
    let validate = d.cli(&["validate"]);
    assert_eq!(validate.status.code(), Some(2));
    assert!(
        text(&validate).contains("rule 'off'"),
        "{}",
        text(&validate)
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP");
    // Refused before the next signal: two signals pending at once are one reload.
    d.wait_log("rules not reloaded");
    assert_eq!(
        outcome(spawn_in(&cg.path, &probe(), &["connect", &target]))["errno"],
        1,
        "the rules in force stayed"
    );

    // A valid file that holds the call; stopping the agent releases it by the fail mode (deny).
    std::fs::write(
        &d.rules,
        rules(
            "  - {name: ask, workload: test, on: connect, to: [127.0.0.1/32], action: approve}\n",
        )
        .replace("{CG}", &cg.rel),
    )
    .expect("write");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP");
    let deadline = Instant::now() + patience();
    let child = loop {
        let mut child = spawn_in(&cg.path, &probe(), &["connect", &target]);
        let pid = child.id();
        // Until the reload lands the old deny answers at once; after it, the call is held. Which
        // one happened is known only once the probe has either ended or stopped.
        let held = loop {
            if latch_tests::state(pid) == Some('T') {
                break true;
            }
            if child.try_wait().ok().flatten().is_some() {
                break false;
            }
            assert!(
                Instant::now() < deadline,
                "probe {pid} neither ended nor stopped"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        if held {
            break child;
        }
        let _ = outcome(child);
        assert!(
            Instant::now() < deadline,
            "reloaded rules never took effect"
        );
    };
    let log = d.stop();
    let out = outcome(child);
    assert_eq!(
        out["ok"], false,
        "released by the deny fail mode: {out}\n{log}"
    );
    assert!(log.contains("rules not reloaded"), "{log}");
}

#[test]
fn validate_names_a_wrong_config_key() {
    let dir = std::env::temp_dir().join(format!("latch-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let config = dir.join("agent.toml");
    std::fs::write(&config, "heartbeat_timeot = \"5s\"\n").expect("write");
    let out = Command::new(binary("latch-agent"))
        .arg("--config")
        .arg(&config)
        .arg("validate")
        .output()
        .expect("run");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(2));
    let msg = text(&out);
    assert!(
        msg.contains("heartbeat_timeot") && msg.contains(&config.display().to_string()),
        "{msg}"
    );
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn other_names_of_a_denied_program_are_denied_too() {
    if !privileged() {
        return;
    }
    let cg = TestCgroup::new();
    let d = Daemon::start(
        &cg,
        &rules(
            "  - {name: no-echo, workload: test, on: exec, paths: [/usr/bin/echo], action: deny}\n",
        ),
        "deny",
    );
    let backend = d.wait_status("its exec backend", |v| v["backend"].is_string())["backend"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // Refused, and nothing printed: the LSM backend fails the shell's `exec` with EPERM (the
    // shell reports it and exits non-zero); the tracepoint backend kills the new image.
    let refused = |out: &Output| {
        out.stdout.is_empty()
            && match backend.as_str() {
                "lsm" => out.status.code().is_some_and(|c| c != 0),
                _ => std::os::unix::process::ExitStatusExt::signal(&out.status) == Some(9),
            }
    };
    let sh = std::path::Path::new("/bin/sh");
    // Through the /bin symlink (merged /usr), where the host has one.
    if std::fs::symlink_metadata("/bin")
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false)
    {
        let out = finish(spawn_in(&cg.path, sh, &["-c", "exec /bin/echo x"]));
        assert!(refused(&out), "/bin/echo ({backend}): {:?}", out.status);
    }
    // A relative path: held, resolved by the agent to /usr/bin/echo, refused.
    let out = finish(spawn_in(
        &cg.path,
        sh,
        &["-c", "cd /usr/bin && exec ./echo must-not-print"],
    ));
    assert!(
        refused(&out),
        "./echo ({backend}): {:?} {:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    // A relative path to a program no rule names: resolved and let through.
    let out = finish(spawn_in(
        &cg.path,
        sh,
        &["-c", "cd /usr/bin && exec ./printf ok"],
    ));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok");
    d.stop();
}

/// A rule may name a program before it is installed. Until the file exists the kernel knows it
/// only by its path string; the agent says so in its status, and once the file appears it is
/// known by every name.
#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn a_program_named_before_it_exists_is_refused_by_its_other_names_once_it_does() {
    if !privileged() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("latch-late-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let tool = dir.join("tool");
    let link = dir.join("link");
    std::os::unix::fs::symlink(&tool, &link).expect("symlink");
    // Installed the way a package manager does: written aside, renamed into place.
    let install = || {
        let part = dir.join("tool.part");
        std::fs::copy("/usr/bin/touch", &part).expect("copy touch");
        std::fs::rename(&part, &tool).expect("rename into place");
    };
    let sh = std::path::Path::new("/bin/sh");
    let run_link = |cg: &std::path::Path, mark: &str| {
        let mark = dir.join(mark);
        let out = finish(spawn_in(
            cg,
            sh,
            &["-c", &format!("exec {} {}", link.display(), mark.display())],
        ));
        (out, mark.exists())
    };

    // Where nothing watches, the program runs through the link.
    let free = TestCgroup::new();
    install();
    let (out, made) = run_link(&free.path, "unwatched");
    assert!(made, "the tool did not run unwatched: {out:?}");
    std::fs::remove_file(&tool).expect("uninstall");

    let cg = TestCgroup::new();
    let d = Daemon::start(
        &cg,
        &rules(&format!(
            "  - {{name: late, workload: test, on: exec, paths: [{}], action: deny}}\n",
            tool.display()
        )),
        "deny",
    );
    let want = serde_json::json!([{"rule": "late", "path": tool.display().to_string()}]);
    d.wait_status("the rule's path naming no file", |v| {
        v["missing_programs"] == want
    });
    install();
    d.wait_status("the rule's path as a file", |v| {
        v["missing_programs"] == serde_json::json!([])
    });
    let (out, made) = run_link(&cg.path, "watched");
    assert!(
        !made && !out.status.success(),
        "the program ran by another name once installed: {out:?}"
    );
    // And the file still runs where nothing watches.
    let (out, made) = run_link(&free.path, "unwatched-again");
    assert!(made, "{out:?}");
    // Central's audit trail learns both, from the journal.
    let mut d = d;
    d.terminate();
    let said: Vec<(String, serde_json::Value)> = d
        .journal()
        .into_iter()
        .filter(|r| r.kind.starts_with("program_"))
        .map(|r| (r.kind, r.payload["path"].clone()))
        .collect();
    let path = serde_json::json!(tool.display().to_string());
    assert_eq!(
        said,
        [
            ("program_missing".to_string(), path.clone()),
            ("program_found".to_string(), path)
        ],
        "the journal's records of the rule's path"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn cgroups_created_after_start_are_watched_without_a_rescan() {
    if !privileged() {
        return;
    }
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let target = format!("127.0.0.1:{}", l.local_addr().expect("addr").port());
    let cg = TestCgroup::new();
    // The periodic rescan never comes during the test: only inotify can find the new cgroups.
    let d = Daemon::launch(
        &cg,
        "workloads:\n  - name: test\n    cgroups: [\"{CG}/job-*\", \"{CG}/*/deep-*\"]\nrules:\n  \
         - {name: off, workload: test, on: connect, to: [127.0.0.1/32], action: deny}\n",
        "deny",
        "24h",
    );
    let started = d.wait_status("readiness", |v| v["followed_dirs"].as_u64() > Some(0));
    assert_eq!(started["watched_cgroups"], serde_json::json!([]));
    // The test cgroup itself matches no glob: not watched.
    assert_eq!(
        outcome(spawn_in(&cg.path, &probe(), &["connect", &target]))["ok"],
        true
    );
    let watched = |rel: String| {
        move |v: &serde_json::Value| {
            v["watched_cgroups"]
                .as_array()
                .is_some_and(|a| a.iter().any(|p| p == &serde_json::json!(rel)))
        }
    };

    let job = cg.path.join("job-1");
    std::fs::create_dir(&job).expect("mkdir job-1");
    d.wait_status("job-1 watched", watched(format!("{}/job-1", cg.rel)));
    assert_eq!(
        outcome(spawn_in(&job, &probe(), &["connect", &target]))["errno"],
        1,
        "refused by the rule in a cgroup made after start"
    );

    // Two levels at once: the intermediate directory is followed as it appears.
    let team = cg.path.join("team");
    std::fs::create_dir(&team).expect("mkdir team");
    let deep = team.join("deep-1");
    std::fs::create_dir(&deep).expect("mkdir deep-1");
    d.wait_status(
        "team/deep-1 watched",
        watched(format!("{}/team/deep-1", cg.rel)),
    );
    assert_eq!(
        outcome(spawn_in(&deep, &probe(), &["connect", &target]))["errno"],
        1
    );
    assert_eq!(
        outcome(spawn_in(&team, &probe(), &["connect", &target]))["ok"],
        true,
        "the intermediate cgroup matches no glob"
    );

    // A removed cgroup leaves the watch list.
    latch_tests::remove_cgroup(&job);
    let job_rel = format!("{}/job-1", cg.rel);
    d.wait_status("job-1 unwatched", move |v| {
        v["watched_cgroups"]
            .as_array()
            .is_some_and(|a| !a.iter().any(|p| p == &serde_json::json!(job_rel)))
    });
    d.stop();
}

/// Accepts on a listener, from its own side, and reports each peer's address in arrival order.
fn accepted_peers(listener: TcpListener) -> std::sync::mpsc::Receiver<std::net::SocketAddr> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            if let Ok(peer) = s.peer_addr() {
                if tx.send(peer).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// Counts the connections accepted so far, including every one still in the accept queue: the
/// test connects once itself and counts until that connection is accepted, since the queue is
/// FIFO. Without it, connections a reaped workload completed are counted in the next phase.
fn accepted_until_now(peers: &std::sync::mpsc::Receiver<std::net::SocketAddr>, port: u16) -> u64 {
    let marker = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect the marker");
    let me = marker.local_addr().expect("marker address");
    let mut n = 0;
    loop {
        let peer = peers
            .recv_timeout(patience())
            .expect("the listener never accepted the marker connection");
        if peer == me {
            return n;
        }
        n += 1;
    }
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn denied_operations_stay_denied_while_the_agent_is_killed_restarted_and_replaced() {
    if !privileged() {
        return;
    }
    // First without Latch: the same workloads reach the destination and run the program.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let accepted = accepted_peers(listener);
    let marks = std::env::temp_dir().join(format!("latch-marks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&marks);
    std::fs::create_dir_all(&marks).expect("mkdir");
    let exec_loop = format!(
        // A pause between attempts keeps an emulated two-CPU guest able to answer the status
        // polls; the loop still runs through every moment without an agent.
        "i=0; while :; do i=$((i+1)); /usr/bin/touch {}/m$i 2>/dev/null; sleep 0.01; done",
        marks.display()
    );
    let connect_loop = ["connect-loop", &format!("127.0.0.1:{port}")];
    let unwatched = TestCgroup::new();
    let probe_path = probe();
    let sh = std::path::Path::new("/bin/sh");
    let mut a = spawn_in(&unwatched.path, &probe_path, &connect_loop);
    let mut b = spawn_in(&unwatched.path, sh, &["-c", &exec_loop]);
    let deadline = Instant::now() + patience();
    let mut reached_unwatched = 0;
    loop {
        reached_unwatched += accepted.try_iter().count();
        if reached_unwatched > 0 && std::fs::read_dir(&marks).map(|d| d.count()).unwrap_or(0) > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the workloads never worked unwatched"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    for c in [&mut a, &mut b] {
        let _ = c.kill();
        let _ = c.wait();
    }
    drop(unwatched);
    std::fs::remove_dir_all(&marks).expect("clear marks");
    std::fs::create_dir_all(&marks).expect("mkdir");
    accepted_until_now(&accepted, port);

    // Now watched, with the agent killed, restarted and replaced under the running workloads.
    let cg = TestCgroup::new();
    let mut d = Daemon::start(
        &cg,
        &rules(&format!(
            "  - {{name: no-db, workload: test, on: connect, to: [127.0.0.1/32], ports: [{port}], action: deny}}\n\
             \x20 - {{name: no-touch, workload: test, on: exec, paths: [/usr/bin/touch], action: deny}}\n"
        )),
        "deny",
    );
    let mut a = spawn_in(&cg.path, &probe_path, &connect_loop);
    let mut b = spawn_in(&cg.path, sh, &["-c", &exec_loop]);
    // Denials as the kernel counts them, read from the pinned counters map: while no agent runs
    // (and while a new one starts) there is nobody to ask.
    let denied = |d: &Daemon| -> u64 {
        let pin = d.pin_dir.join("maps").join(agent_common::maps::COUNTERS);
        let Ok(data) = aya::maps::MapData::from_pin(&pin) else {
            return 0;
        };
        let Ok(counters) =
            aya::maps::PerCpuArray::<_, u64>::try_from(aya::maps::Map::PerCpuArray(data))
        else {
            return 0;
        };
        counters
            .get(&(agent_common::Counter::Denied as u32), 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    };
    let wait_more_denied = |d: &Daemon, than: u64| -> u64 {
        let deadline = Instant::now() + patience();
        loop {
            let n = denied(d);
            if n > than + 20 {
                return n;
            }
            assert!(
                Instant::now() < deadline,
                "no denials counted (stuck at {n})"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut n = wait_more_denied(&d, 0);
    d.kill9_and_restart();
    // While no agent runs, and after: the pinned hooks keep denying.
    std::thread::sleep(Duration::from_millis(300));
    n = wait_more_denied(&d, n);
    d.replace();
    wait_more_denied(&d, n);
    for c in [&mut a, &mut b] {
        let _ = c.kill();
        let _ = c.wait();
    }
    let made = std::fs::read_dir(&marks).map(|d| d.count()).unwrap_or(0);
    let _ = std::fs::remove_dir_all(&marks);
    assert!(reached_unwatched > 0);
    assert_eq!(
        accepted_until_now(&accepted, port),
        0,
        "connections reached the denied destination"
    );
    assert_eq!(made, 0, "the denied program ran {made} times");
    d.stop();
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn doctor_reports_what_this_kernel_enforces_and_leaves_nothing_behind() {
    if !privileged() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("latch-doctor-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let config = dir.join("agent.toml");
    std::fs::write(&config, "pin_dir = \"/sys/fs/bpf/latch-doctor-test\"\n").expect("write");
    let out = finish(
        Command::new(binary("latch-agent"))
            .arg("--config")
            .arg(&config)
            .args(["doctor", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run doctor"),
    );
    let _ = std::fs::remove_dir_all(&dir);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor printed no JSON ({e}): {}", text(&out)));
    assert_eq!(v["load"], "ok", "{v:#}");
    let code = out.status.code();
    match v["verdict"].as_str() {
        Some("enforced") => assert_eq!(code, Some(0)),
        Some("degraded") => assert_eq!(code, Some(1)),
        other => panic!("verdict {other:?}, exit {code:?}"),
    }
    let hooks: Vec<&str> = v["hooks"]
        .as_array()
        .expect("hooks")
        .iter()
        .filter_map(|h| h.as_str())
        .collect();
    for h in [
        "connect4",
        "sendmsg6",
        "held-connect",
        "held-sendmmsg",
        "egress",
        "sock-new",
        "sock-gone",
        "execd",
        "exec-exit",
        "fork",
        "moved",
        "exit",
    ] {
        assert!(hooks.contains(&h), "{h} not attached: {hooks:?}");
    }
    match v["backend"].as_str() {
        Some("lsm") => {
            assert!(
                hooks.contains(&"exec-lsm")
                    && hooks.contains(&"bpf-guard")
                    && !hooks.contains(&"gate"),
                "{hooks:?}"
            );
            assert_eq!(v["lsm"]["runs"], true);
        }
        Some("tracepoint") => {
            assert!(
                hooks.contains(&"exec") && hooks.contains(&"gate"),
                "{hooks:?}"
            );
            assert_eq!(v["lsm"]["runs"], false);
        }
        other => panic!("backend {other:?}"),
    }
    // Its scratch programs are gone: nothing named latch-doctor-* is left in bpffs.
    let left: Vec<String> = std::fs::read_dir("/sys/fs/bpf")
        .expect("bpffs")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("latch-doctor-") && n != "latch-doctor-test")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn a_watched_process_that_can_undo_enforcement_is_reported() {
    if !privileged() {
        return;
    }
    let cg = TestCgroup::new();
    // Before the agent, so that no rescan sees it between its move into the cgroup and its
    // exec (under the test's name): `spawn` returns once the exec is done.
    let sleep = std::path::Path::new("/bin/sleep");
    let mut root = spawn_in(&cg.path, sleep, &["300"]);
    let d = Daemon::launch(
        &cg,
        &rules("  - {name: off, workload: test, on: connect, to: [192.0.2.1/32], action: deny}\n"),
        "deny",
        "1s",
    );
    let mut nobody = spawn_in(
        &cg.path,
        std::path::Path::new("/usr/bin/setpriv"),
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "/bin/sleep",
            "300",
        ],
    );
    let (root_pid, nobody_pid) = (root.id() as u64, nobody.id() as u64);
    let listed = |v: &serde_json::Value, pid: u64| {
        v["privileged"]
            .as_array()
            .is_some_and(|a| a.iter().any(|p| p["pid"].as_u64() == Some(pid)))
    };
    // `setpriv` runs as root until it drops to nobody and execs `sleep`: wait for that, then for
    // a rescan that saw both as they are now.
    let deadline = Instant::now() + patience();
    loop {
        let status =
            std::fs::read_to_string(format!("/proc/{nobody_pid}/status")).unwrap_or_default();
        let dropped = status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains("65534"))
            && status.lines().any(|l| l == "Name:\tsleep");
        if dropped {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "setpriv never became nobody: {status}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let v = d.wait_status("the root process listed, the unprivileged one not", |v| {
        listed(v, root_pid) && !listed(v, nobody_pid)
    });
    let entry = v["privileged"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|p| p["pid"].as_u64() == Some(root_pid))
                .cloned()
        })
        .unwrap_or_default();
    assert_eq!(entry["comm"], "sleep", "{entry}");
    assert!(
        entry["caps"]
            .as_array()
            .is_some_and(|c| c.iter().any(|x| x == "CAP_SYS_ADMIN")),
        "{entry}"
    );
    assert!(
        !listed(&v, nobody_pid),
        "an unprivileged process is not listed: {v}"
    );
    let metrics = d.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("latch_privileged_watched_processes ") && !l.ends_with(" 0")),
        "{metrics}"
    );
    let shown = text(&d.cli(&["status"]));
    assert!(shown.contains("CAP_SYS_ADMIN"), "{shown}");
    let _ = root.kill();
    let _ = nobody.kill();
    let _ = root.wait();
    let _ = nobody.wait();
    // Recorded for central too, once per process found.
    let mut d = d;
    d.terminate();
    let found: Vec<_> = d
        .journal()
        .into_iter()
        .filter(|r| r.kind == "privileged")
        .collect();
    // (`setpriv` may have been seen while it was still root: the other process is not checked.)
    let about: Vec<_> = found
        .iter()
        .filter(|r| r.payload["pid"].as_u64() == Some(root_pid))
        .collect();
    assert_eq!(about.len(), 1, "{found:?}");
    assert_eq!(about[0].payload["comm"], "sleep", "{about:?}");
    assert!(
        about[0].payload["caps"]
            .as_array()
            .is_some_and(|c| c.iter().any(|x| x == "CAP_SYS_ADMIN")),
        "{about:?}"
    );
}

/// An io_uring ring with a submission thread (`SQPOLL`), made by a process outside every
/// watched cgroup and inherited by a child that is then moved into a watched one: what the
/// child submits runs on its maker's thread, outside, where no hook refuses it. The agent
/// cannot stop that; it reports the ring, until the maker is watched too (its thread moves with
/// it).
#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn a_ring_worked_by_a_process_outside_is_reported() {
    if !privileged() {
        return;
    }
    use std::io::BufRead;
    let cg = TestCgroup::new();
    let free = TestCgroup::new();
    let d = Daemon::launch(
        &cg,
        &rules("  - {name: off, workload: test, on: connect, to: [192.0.2.1/32], action: deny}\n"),
        "deny",
        "1s",
    );
    let mut maker = spawn_in(&free.path, &probe(), &["ring-fork"]);
    let mut line = String::new();
    std::io::BufReader::new(maker.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read the probe");
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("probe printed {line:?}: {e}"));
    let (Some(child), Some(fd)) = (v["child"].as_u64(), v["ring"].as_u64()) else {
        panic!("no ring made: {v}");
    };
    assert_eq!(v["maker"].as_u64(), Some(maker.id() as u64), "{v}");
    let found = |v: &serde_json::Value| v["foreign_rings"].as_array().cloned().unwrap_or_default();

    std::fs::write(cg.path.join("cgroup.procs"), child.to_string()).expect("move the child in");
    let v = d.wait_status("the child's ring", |v| !found(v).is_empty());
    assert_eq!(
        found(&v),
        vec![serde_json::json!({
            "pid": child,
            "comm": "latch-probe",
            "cgroup": cg.rel,
            "fd": fd,
            "owner": maker.id(),
            "owner_cgroup": free.rel,
        })],
        "{v}"
    );
    let shown = text(&d.cli(&["status"]));
    assert!(shown.contains("SUBMITTED BY"), "{shown}");

    // With its maker watched too, the ring's thread is in the watched cgroup.
    std::fs::write(cg.path.join("cgroup.procs"), maker.id().to_string())
        .expect("move the maker in");
    d.wait_status("no ring once its maker is watched", |v| found(v).is_empty());

    let mut d = d;
    d.terminate();
    let records: Vec<_> = d
        .journal()
        .into_iter()
        .filter(|r| r.kind == "foreign_ring")
        .map(|r| (r.payload["pid"].as_u64(), r.payload["owner"].as_u64()))
        .collect();
    assert_eq!(
        records,
        vec![(Some(child), Some(maker.id() as u64))],
        "journaled once"
    );
    let _ = maker.kill();
    let _ = maker.wait();
}

/// `latch_events_total`: events the agent has read from the kernel (and queued to its journal).
fn events_read(d: &Daemon) -> u64 {
    let metrics = d.metrics();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("latch_events_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no latch_events_total in:\n{metrics}"))
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn a_process_moved_out_of_its_watched_cgroup_is_journaled_and_one_moved_below_it_is_not() {
    if !privileged() {
        return;
    }
    let cg = TestCgroup::new();
    let elsewhere = TestCgroup::new();
    let d = Daemon::start(
        &cg,
        &rules("  - {name: off, workload: test, on: connect, to: [192.0.2.1/32], action: deny}\n"),
        "deny",
    );
    let mut sleeper = spawn_in(&cg.path, std::path::Path::new("/bin/sleep"), &["300"]);
    let pid = sleeper.id();
    // Moved by another task (this test), as a supervisor or a root workload would.
    let move_to = |to: &std::path::Path| {
        std::fs::write(to.join("cgroup.procs"), pid.to_string()).expect("move");
    };
    let moved = |to: &std::path::Path| {
        let before = events_read(&d);
        move_to(to);
        let deadline = Instant::now() + patience();
        while events_read(&d) == before {
            assert!(
                Instant::now() < deadline,
                "the agent read no event of the move"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // Into a child of the watched cgroup (not itself in the watch list): still inside. Where
    // the kernel reads the destination's ancestors this is no event at all; where it cannot, it
    // is one, which the agent does not journal. The move out comes after it in the same ring.
    let child = cg.path.join("leaf");
    std::fs::create_dir(&child).expect("mkdir leaf");
    move_to(&child);
    // Out of the watched tree.
    moved(&elsewhere.path);
    let mut d = d;
    d.terminate();
    let moves: Vec<_> = d
        .journal()
        .into_iter()
        .filter(|r| r.kind == "move")
        .collect();
    // One: the move into the child cgroup is no departure.
    assert_eq!(moves.len(), 1, "{moves:?}");
    let m = &moves[0].payload;
    assert_eq!(m["pid"].as_u64(), Some(u64::from(pid)), "{m}");
    assert_eq!(m["tgid"].as_u64(), Some(u64::from(pid)), "{m}");
    assert_eq!(m["comm"], "sleep", "{m}");
    assert_eq!(
        m["cgroup_id"].as_u64(),
        Some(latch_agent::cgroups::id_of(&cg.path).expect("id")),
        "{m}"
    );
    assert_eq!(
        m["moved_to"]["cgroup_id"].as_u64(),
        Some(latch_agent::cgroups::id_of(&elsewhere.path).expect("id")),
        "{m}"
    );
    assert_eq!(m["moved_to"]["path"], elsewhere.rel.as_str(), "{m}");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn a_process_in_the_cgroup_before_the_agent_watched_it_stays_watched_when_it_leaves() {
    if !privileged() {
        return;
    }
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.set_nonblocking(true).expect("nonblocking");
    let port = l.local_addr().expect("addr").port();
    // For what must not arrive: a while, in case a connection that got through arrives late.
    let accepted = || {
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if l.accept().is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    };
    let elsewhere = TestCgroup::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let go = dir.path().join("go");
    let script = latch_tests::leave_then_connect(&go, &elsewhere.path, port);
    let sh = std::path::Path::new("/bin/sh");

    // Where nothing watches, it connects.
    let free = TestCgroup::new();
    std::fs::write(&go, "").expect("go");
    let out = outcome(spawn_in(&free.path, sh, &["-c", &script]));
    assert_eq!(out["ok"], true, "{out}");
    assert!(latch_tests::arrives(&l), "no connection arrived unwatched");
    std::fs::remove_file(&go).expect("rm go");

    // Started in the cgroup before the agent watches it: recorded from `cgroup.threads` when
    // the watch begins, so leaving does not leave the rules.
    let cg = TestCgroup::new();
    let early = spawn_in(&cg.path, sh, &["-c", &script]);
    let d = Daemon::start(
        &cg,
        &rules(&format!(
            "  - {{name: off, workload: test, on: connect, to: [127.0.0.1/32], ports: [{port}], action: deny}}\n"
        )),
        "deny",
    );
    std::fs::write(&go, "").expect("go");
    let out = outcome(early);
    assert_eq!(out["errno"].as_i64(), Some(libc::EPERM as i64), "{out}");
    assert!(!accepted(), "the connection arrived");
    drop(d);
}
