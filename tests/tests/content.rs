//! Programs by content, through the whole agent: a rule that names a program by its content
//! (`sha256`, `copies`) follows it into copies under any name, a memfd copy included, and
//! `unknown_programs` decides a program the host did not install. Each technique runs first
//! where nothing watches (it works on this host), then where the agent watches. The evidence is
//! a file only the program creates, and what the agent's CLI lists.

use std::{os::unix::fs::PermissionsExt, path::Path, process::Output};

use latch_agent::programs::content::hash_path;
use latch_tests::daemon::{text, Daemon};
use latch_tests::program::ProgramCopy;
use latch_tests::{finish, privileged, probe, spawn_in, TestCgroup};

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn rules(workload_extra: &str, body: &str) -> String {
    format!("workloads:\n  - name: test\n    cgroups: [\"{{CG}}\"]\n{workload_extra}rules:\n{body}")
}

/// Rules under which a program the host did not install needs approval, and nothing else does.
fn unknown_programs_approve() -> String {
    rules(
        "    unknown_programs: approve\n",
        "  - {name: nothing, workload: test, on: exec, paths: [/nonexistent], action: deny}\n",
    )
}

/// Runs `program marker` from a shell in `cgroup` (the shell is an installed program).
fn run(cgroup: &Path, program: &Path, marker: &Path) -> Output {
    finish(spawn_in(
        cgroup,
        Path::new("/bin/sh"),
        &[
            "-c",
            &format!("exec {} {}", program.display(), marker.display()),
        ],
    ))
}

/// Runs a memfd copy of `program` with `marker`, through the probe.
fn run_memfd(cgroup: &Path, program: &Path, marker: &Path) -> Output {
    finish(spawn_in(
        cgroup,
        &probe(),
        &["exec-via", "memfd", &s(program), &s(marker)],
    ))
}

/// The exec was refused: the program did not run and its caller saw it fail (EPERM from the
/// LSM backend, the new image killed by the tracepoint backend).
fn refused(out: &Output, marker: &Path) -> bool {
    // The probe reports its child's end as JSON and exits 0 itself.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let reported = stdout.contains("\"signal\":9") || stdout.contains("\"ok\":false");
    !marker.exists() && (!out.status.success() || reported)
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn a_program_named_by_content_is_refused_in_every_copy() {
    if !privileged() {
        return;
    }
    let f = ProgramCopy::touch("latch-content-");
    let prog = f.at("prog");
    let plain = f.copy_of(&s(&prog), "elsewhere/copy");
    let renamed = f.copy_of(&s(&prog), "elsewhere/innocent-name");
    let cg = TestCgroup::new();
    let free = TestCgroup::new();
    // The probe (not installed) runs the memfd technique: only the rule names anything.
    let d = Daemon::start(
        &cg,
        &rules(
            "",
            &format!(
                "  - {{name: no-prog, workload: test, on: exec, paths: [{}], copies: true, action: deny}}\n",
                prog.display()
            ),
        ),
        "deny",
    );
    type Way = fn(&Path, &Path, &Path) -> Output;
    let ways: [(&str, &Path, Way); 4] = [
        ("its own path", &prog, run),
        ("a plain copy", &plain, run),
        ("a renamed copy", &renamed, run),
        ("a memfd copy", &prog, run_memfd),
    ];
    let mut through = Vec::new();
    for (name, program, how) in ways {
        let m = f.marker("free");
        let out = how(&free.path, program, &m);
        assert!(
            m.exists(),
            "{name}: does not work where nothing watches: {}",
            text(&out)
        );
        let m = f.marker("watched");
        let out = how(&cg.path, program, &m);
        if !refused(&out, &m) {
            through.push(format!("{name}: {:?} {}", out.status, text(&out)));
        }
    }
    let log = d.stop();
    assert!(
        through.is_empty(),
        "a copy of the denied program ran:\n{}\nagent log:\n{log}",
        through.join("\n")
    );
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn a_digest_rule_holds_a_copy_for_a_reviewer_who_sees_its_digest() {
    if !privileged() {
        return;
    }
    let f = ProgramCopy::touch("latch-content-");
    let digest = hash_path(&s(&f.at("prog"))).expect("hash").to_string();
    let copy = f.copy_of(&s(&f.at("prog")), "downloads/tool");
    let cg = TestCgroup::new();
    let d = Daemon::start(
        &cg,
        &rules(
            "",
            &format!(
                "  - {{name: ask-tool, workload: test, on: exec, sha256: [\"{digest}\"], action: approve}}\n"
            ),
        ),
        "deny",
    );
    for (decision, runs) in [("deny", false), ("allow", true)] {
        let m = f.marker(decision);
        let child = spawn_in(
            &cg.path,
            Path::new("/bin/sh"),
            &["-c", &format!("exec {} {}", copy.display(), m.display())],
        );
        let pid = child.id();
        let id = d.wait_request(pid);
        assert!(!m.exists(), "ran before any decision");
        let listed = text(&d.cli(&["pending", "--json"]));
        assert!(
            listed.contains(&digest),
            "the request shows the program's digest: {listed}"
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
    d.stop();
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn unknown_programs_are_refused_and_installed_or_listed_ones_run() {
    if !privileged() {
        return;
    }
    let f = ProgramCopy::touch("latch-content-");
    let listed_dir = f.at("tools");
    let new_binary = f.copy_of("/usr/bin/touch", "downloads/new-tool");
    let listed = f.copy_of("/usr/bin/touch", "tools/ours");
    let cg = TestCgroup::new();
    let free = TestCgroup::new();
    let d = Daemon::start(
        &cg,
        &rules(
            &format!(
                "    unknown_programs: deny\n    known_programs: [\"{}/*\"]\n",
                listed_dir.display()
            ),
            "  - {name: nothing, workload: test, on: exec, paths: [/nonexistent], action: deny}\n",
        ),
        "deny",
    );
    // A program the package manager installed runs.
    let out = finish(spawn_in(
        &cg.path,
        Path::new("/bin/sh"),
        &["-c", "exec /usr/bin/printf installed"],
    ));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "installed",
        "{}",
        text(&out)
    );
    // A new file, though its content is an installed program's: unknown, refused.
    let m = f.marker("free");
    run(&free.path, &new_binary, &m);
    assert!(m.exists(), "the new binary runs where nothing watches");
    let m = f.marker("new");
    let out = run(&cg.path, &new_binary, &m);
    assert!(
        refused(&out, &m),
        "an unknown program ran: {:?} {}",
        out.status,
        text(&out)
    );
    // Under `known_programs`: runs.
    let m = f.marker("listed");
    let out = run(&cg.path, &listed, &m);
    assert!(
        m.exists(),
        "a listed program was refused: {:?} {}",
        out.status,
        text(&out)
    );
    let log = d.stop();
    assert!(
        log.contains("known programs read"),
        "the agent read the package manager's lists: {log}"
    );
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn a_program_rewritten_in_place_is_hashed_again() {
    if !privileged() {
        return;
    }
    let f = ProgramCopy::touch("latch-content-");
    let digest = hash_path(&s(&f.at("prog"))).expect("hash").to_string();
    // Starts as `true` (allowed, and cached as allowed), becomes the denied content in place:
    // the same inode, another content.
    let target = f.copy_of("/usr/bin/true", "work/tool");
    let cg = TestCgroup::new();
    let d = Daemon::start(
        &cg,
        &rules(
            "",
            &format!(
                "  - {{name: no-touch, workload: test, on: exec, sha256: [\"{digest}\"], action: deny}}\n"
            ),
        ),
        "deny",
    );
    let m = f.marker("before");
    for _ in 0..2 {
        let out = run(&cg.path, &target, &m);
        assert!(
            out.status.success(),
            "allowed content: {:?} {}",
            out.status,
            text(&out)
        );
    }
    let ino = std::fs::metadata(&target).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    std::fs::write(&target, std::fs::read(f.at("prog")).expect("read")).expect("rewrite");
    assert_eq!(
        std::fs::metadata(&target)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .ok(),
        ino.ok(),
        "rewritten in place"
    );
    let m = f.marker("after");
    let out = run(&cg.path, &target, &m);
    let log = d.stop();
    assert!(
        refused(&out, &m),
        "the rewritten program ran on the old verdict: {:?} {}\n{log}",
        out.status,
        text(&out)
    );
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn an_unknown_script_is_asked_about_once() {
    if !privileged() {
        return;
    }
    let f = ProgramCopy::touch("latch-content-");
    let script = f.at("downloads/job.sh");
    std::fs::create_dir_all(f.at("downloads")).expect("mkdir");
    std::fs::write(&script, "#!/bin/sh\nexec /usr/bin/touch \"$1\"\n").expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let cg = TestCgroup::new();
    let d = Daemon::start(&cg, &unknown_programs_approve(), "deny");
    let backend = d.wait_status("its exec backend", |v| v["backend"].is_string())["backend"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let m = f.marker("script");
    let child = spawn_in(
        &cg.path,
        Path::new("/bin/sh"),
        &["-c", &format!("exec {} {}", script.display(), m.display())],
    );
    if backend == "lsm" {
        // Held at the script (the interpreter, /bin/sh, is installed): one request, and after
        // its approval the interpreter runs it without another.
        let pid = child.id();
        let id = d.wait_request(pid);
        assert!(!m.exists(), "ran before any decision");
        d.decide(&id, &["allow"]);
    }
    // On the tracepoint backend the image is the interpreter, which is installed: the script's
    // own content is not checked (see the README).
    let out = finish(child);
    let log = d.stop();
    assert!(
        m.exists(),
        "the script did not run ({backend}): {:?} {}\n{log}",
        out.status,
        text(&out)
    );
    let asked = log.matches("needs approval").count();
    assert_eq!(
        asked,
        usize::from(backend == "lsm"),
        "requests made ({backend}):\n{log}"
    );
}

/// Whether `child` ends on its own within the test's patience (killed if not): nothing is asked
/// of a reviewer, so one still running was held.
fn ends_unasked(mut child: std::process::Child) -> bool {
    let deadline = std::time::Instant::now() + latch_tests::patience();
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    true
}

/// A reviewer's grant on a program held for its content covers that content for its length, by
/// any name (the same file again, a renamed copy), and nothing else under the same rule
/// (another new program is asked about).
#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn a_grant_covers_a_program_held_for_its_content_by_any_name() {
    if !privileged() {
        return;
    }
    let f = ProgramCopy::touch("latch-content-");
    let tool = f.copy_of(&s(&f.at("prog")), "downloads/tool");
    let renamed = f.copy_of(&s(&f.at("prog")), "elsewhere/renamed");
    let other = f.copy_of("/usr/bin/mkdir", "downloads/other");
    let cg = TestCgroup::new();
    let free = TestCgroup::new();
    let d = Daemon::start(&cg, &unknown_programs_approve(), "deny");
    let start = |cgroup: &Path, program: &Path, marker: &Path| {
        spawn_in(
            cgroup,
            Path::new("/bin/sh"),
            &[
                "-c",
                &format!("exec {} {}", program.display(), marker.display()),
            ],
        )
    };
    for program in [&tool, &renamed, &other] {
        let m = f.marker("free");
        let out = finish(start(&free.path, program, &m));
        assert!(m.exists(), "{}: {}", program.display(), text(&out));
    }

    let m = f.marker("first");
    let child = start(&cg.path, &tool, &m);
    let id = d.wait_request(child.id());
    assert!(!m.exists(), "ran before any decision");
    d.decide(&id, &["grant", "--scope", "workload", "--for", "10m"]);
    let out = finish(child);
    assert!(m.exists(), "granted: {}", text(&out));

    // Covered by the grant: no request, so they end on their own.
    for (name, program) in [("again", &tool), ("renamed", &renamed)] {
        let m = f.marker(name);
        if !ends_unasked(start(&cg.path, program, &m)) {
            panic!("{name}: held again despite the grant\n{}", d.stop());
        }
        assert!(m.exists(), "{name}: did not run");
    }

    // Another new program under the same verdict: asked about, and refused here.
    let m = f.marker("other");
    let child = start(&cg.path, &other, &m);
    let id = d.wait_request(child.id());
    d.decide(&id, &["deny"]);
    let out = finish(child);
    assert!(
        !m.exists(),
        "another program ran under the grant: {}",
        text(&out)
    );
    let log = d.stop();
    assert_eq!(
        log.matches("allowed by a grant").count(),
        2,
        "the grant let both through:\n{log}"
    );

    // A `copies` rule held at its own path (the path and the content ask alike): the grant is
    // for the content, so it covers a renamed copy too.
    let prog = f.at("prog");
    let d = Daemon::start(
        &cg,
        &rules(
            "",
            &format!(
                "  - {{name: ask-prog, workload: test, on: exec, paths: [{}], copies: true, action: approve}}\n",
                prog.display()
            ),
        ),
        "deny",
    );
    let m = f.marker("copies-first");
    let child = start(&cg.path, &prog, &m);
    let id = d.wait_request(child.id());
    d.decide(&id, &["grant", "--scope", "workload", "--for", "10m"]);
    let out = finish(child);
    assert!(m.exists(), "granted: {}", text(&out));
    let m = f.marker("copies-renamed");
    if !ends_unasked(start(&cg.path, &renamed, &m)) {
        panic!(
            "a renamed copy was held again despite the grant\n{}",
            d.stop()
        );
    }
    assert!(m.exists(), "the renamed copy did not run");
    d.stop();
}

/// A root of its own for a workload, as a container's: `/usr` bound from the host (so the
/// copied program finds its libraries), the usual links to it, and the program at `/opt/prog`
/// reached through an absolute symlink, `/opt/link`, which in the host's root names nothing.
fn container_root(f: &ProgramCopy) -> std::path::PathBuf {
    let root = f.at("root");
    for d in ["usr", "opt", "tmp"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    for l in ["bin", "lib", "lib64", "sbin"] {
        std::os::unix::fs::symlink(format!("usr/{l}"), root.join(l)).expect("symlink");
    }
    std::fs::copy(f.path(), root.join("opt/prog")).expect("copy");
    std::fs::set_permissions(
        root.join("opt/prog"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    std::os::unix::fs::symlink("/opt/prog", root.join("opt/link")).expect("symlink");
    root
}

/// Runs `/opt/link /tmp/ran-NAME` in `root` (chroot, in a mount namespace of its own where the
/// host's `/usr` is bound into it) from `cgroup`, or with `relative`, `./link` from `/opt`;
/// every program on the way is installed, and the process started is the one that runs the
/// program (`unshare`, `sh` and `chroot` each exec the next; `mount` is a child of `sh`).
fn start_in_root(cgroup: &Path, root: &Path, name: &str, relative: bool) -> std::process::Child {
    let root = s(root);
    let run = if relative {
        format!("/bin/sh -c 'cd /opt && exec ./link /tmp/ran-{name}'")
    } else {
        format!("/opt/link /tmp/ran-{name}")
    };
    spawn_in(
        cgroup,
        Path::new("/usr/bin/unshare"),
        &[
            "-m",
            "/bin/sh",
            "-c",
            &format!("mount --bind /usr {root}/usr && exec chroot {root} {run}"),
        ],
    )
}

#[test]
#[cfg_attr(latch_skip_privileged, ignore = "LATCH_SKIP_PRIVILEGED=1")]
fn a_program_in_a_root_of_its_own_is_found_through_its_absolute_symlinks() {
    if !privileged() {
        return;
    }
    let f = ProgramCopy::touch("latch-content-");
    let root = container_root(&f);
    let free = TestCgroup::new();
    for relative in [false, true] {
        let name = format!("free-{relative}");
        let out = finish(start_in_root(&free.path, &root, &name, relative));
        assert!(
            root.join(format!("tmp/ran-{name}")).exists(),
            "does not run in its root unwatched (relative name: {relative}): {}",
            text(&out)
        );
    }
    let cg = TestCgroup::new();
    let d = Daemon::start(&cg, &unknown_programs_approve(), "deny");
    // A new program: held for a reviewer, who is asked about the file the name reaches in the
    // workload's root (the agent opening it in its own root finds nothing there, and refuses),
    // by an absolute name and by one relative to a working directory in that root. The LSM
    // backend holds the exec by its name; the tracepoint backend holds the image in place and
    // reads it through /proc/PID/exe, so there the name is not looked up at all.
    for relative in [false, true] {
        let name = format!("watched-{relative}");
        let child = start_in_root(&cg.path, &root, &name, relative);
        let id = d.wait_request(child.id());
        assert!(
            !root.join(format!("tmp/ran-{name}")).exists(),
            "ran before any decision (relative name: {relative})"
        );
        d.decide(&id, &["allow"]);
        let out = finish(child);
        assert!(
            root.join(format!("tmp/ran-{name}")).exists(),
            "approved, and did not run (relative name: {relative}): {}",
            text(&out)
        );
    }
    d.stop();
}
