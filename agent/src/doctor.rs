//! `latch-agent doctor`: what this host's kernel lets Latch guarantee, asked of the kernel
//! itself (the programs are really loaded and attached, in a pin directory of their own that
//! no cgroup is watched through, then removed), with a verdict per guarantee.
//!
//! It owns the report and the verdicts; it must not change the running agent's state (its
//! pins, maps or hooks).

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::kernel::{probe, Backend, Engine, EngineOptions};

/// How well one guarantee holds here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Holds as documented.
    Enforced,
    /// Holds, with a weaker mechanism (the reason says how).
    Degraded,
    /// Does not hold on this host.
    Unsupported,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Enforced => "enforced",
            Verdict::Degraded => "degraded",
            Verdict::Unsupported => "unsupported",
        })
    }
}

/// One guarantee and how it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Guarantee {
    /// Short name.
    pub name: &'static str,
    /// How it holds.
    pub verdict: Verdict,
    /// Why, in a sentence.
    pub why: String,
}

/// What was found about the host.
#[derive(Clone, Debug, Serialize)]
pub struct Facts {
    /// `uname -r`.
    pub kernel: String,
    /// Machine architecture.
    pub arch: String,
    /// Where cgroup v2 is mounted, if it is.
    pub cgroup2: Option<PathBuf>,
    /// Whether the kernel publishes BTF.
    pub btf: bool,
    /// The active LSM list.
    pub lsm_list: Option<String>,
    /// The LSM probe's findings.
    pub lsm: probe::LsmProbe,
    /// Whether the programs loaded and attached (the error when not); `"ok"` or the error in
    /// the report.
    #[serde(serialize_with = "ok_or_error")]
    pub load: Result<(), String>,
    /// The exec backend chosen.
    pub backend: Option<Backend>,
    /// Whether links could be pinned.
    pub links_pinned: bool,
    /// Hooks attached, by pin name.
    pub hooks: Vec<String>,
    /// Whether the programs can read the identity (device, inode) of an executed file; `"ok"`
    /// or why not in the report.
    #[serde(serialize_with = "ok_or_error")]
    pub file_identity: Result<(), String>,
    /// Whether the programs can tell a 32-bit system call from a 64-bit one (the tracepoint
    /// backend needs it); `"ok"` or why not in the report.
    #[serde(serialize_with = "ok_or_error")]
    pub syscall32: Result<(), String>,
    /// Whether a move is decided by the destination cgroup's ancestors (a move below a watched
    /// cgroup gives a lineage); `"ok"` or why not in the report.
    #[serde(serialize_with = "ok_or_error")]
    pub ancestry: Result<(), String>,
}

impl Default for Facts {
    fn default() -> Self {
        Facts {
            kernel: String::new(),
            arch: String::new(),
            cgroup2: None,
            btf: false,
            lsm_list: None,
            lsm: probe::LsmProbe::default(),
            load: Err("not loaded yet".into()),
            backend: None,
            links_pinned: false,
            hooks: Vec::new(),
            file_identity: Err("not loaded yet".into()),
            syscall32: Err("not loaded yet".into()),
            ancestry: Err("not loaded yet".into()),
        }
    }
}

fn ok_or_error<S: serde::Serializer>(r: &Result<(), String>, s: S) -> Result<S::Ok, S::Error> {
    match r {
        Ok(()) => s.serialize_str("ok"),
        Err(e) => s.serialize_str(e),
    }
}

/// The whole report: the facts, and what follows from them.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// What was found.
    #[serde(flatten)]
    pub facts: Facts,
    /// How a held network call is stopped.
    pub hold: &'static str,
    /// Verdict per guarantee.
    pub guarantees: Vec<Guarantee>,
    /// The worst verdict.
    pub verdict: Verdict,
}

impl Report {
    /// The exit code for scripts: 0 all enforced, 1 something degraded, 3 something unsupported.
    pub fn exit_code(&self) -> u8 {
        match self.verdict {
            Verdict::Enforced => 0,
            Verdict::Degraded => 1,
            Verdict::Unsupported => 3,
        }
    }

    /// A one-line summary for central's host list: the verdict and what is not enforced.
    pub fn summary(&self) -> String {
        let weak: Vec<String> = self
            .guarantees
            .iter()
            .filter(|g| g.verdict != Verdict::Enforced)
            .map(|g| format!("{} {}", g.name, g.verdict))
            .collect();
        if weak.is_empty() {
            self.verdict.to_string()
        } else {
            format!("{}: {}", self.verdict, weak.join(", "))
        }
    }
}

/// The verdicts that follow from the facts. A pure function, so every combination is tested.
pub fn judge(f: Facts) -> Report {
    let mut g = Vec::new();
    let loaded = f.load.is_ok();
    let hooked = |h: &str| f.hooks.iter().any(|x| x == h);
    let not_loaded = |why: &str| match &f.load {
        Err(e) => format!("the programs do not load: {e}"),
        Ok(()) => why.to_string(),
    };
    let net = |name| Guarantee {
        name,
        verdict: if loaded {
            Verdict::Enforced
        } else {
            Verdict::Unsupported
        },
        why: not_loaded("cgroup socket hooks at the cgroup v2 root"),
    };
    g.push(net("connect-deny"));
    g.push(Guarantee {
        why: not_loaded(
            "held in the socket hook, stopped at the system call's exit, restarted after the decision",
        ),
        ..net("connect-hold")
    });
    match (loaded, f.backend) {
        (true, Some(Backend::Lsm)) => {
            g.push(Guarantee {
                name: "exec-deny",
                verdict: Verdict::Enforced,
                why: "BPF LSM bprm_check_security: execve fails with EPERM".into(),
            });
            g.push(Guarantee {
                name: "exec-hold",
                verdict: Verdict::Enforced,
                why: "BPF LSM: held inside execve, before the new image exists".into(),
            });
        }
        (true, _) => {
            let why_not = f
                .lsm
                .reason
                .clone()
                .unwrap_or_else(|| "BPF LSM not chosen".into());
            g.push(Guarantee {
                name: "exec-deny",
                verdict: Verdict::Degraded,
                why: format!(
                    "tracepoint backend ({why_not}): the new image is killed before its first \
                     instruction; the caller sees a killed child, not EPERM"
                ),
            });
            g.push(if hooked("restop") {
                Guarantee {
                    name: "exec-hold",
                    verdict: Verdict::Enforced,
                    why: "tracepoint backend: held after the exec, before the new image's first \
                          instruction; stopped again at every return from signal handling \
                          (fexit get_signal), and ended at its first system call if it got past \
                          that (a sys_enter gate that runs on every system call of the host)"
                        .into(),
                }
            } else {
                Guarantee {
                    name: "exec-hold",
                    verdict: Verdict::Degraded,
                    why: "tracepoint backend: held after the exec; a task resumed without a \
                          decision is killed at its first system call by a sys_enter gate that \
                          runs on every system call of the host"
                        .into(),
                }
            });
        }
        (false, _) => {
            for name in ["exec-deny", "exec-hold"] {
                g.push(Guarantee {
                    name,
                    verdict: Verdict::Unsupported,
                    why: not_loaded(""),
                });
            }
        }
    }
    g.push(Guarantee {
        name: "exec-identity",
        verdict: match (loaded, &f.file_identity) {
            (false, _) => Verdict::Unsupported,
            (true, Ok(())) => Verdict::Enforced,
            (true, Err(_)) => Verdict::Degraded,
        },
        why: match &f.file_identity {
            Ok(()) => not_loaded(
                "exec rules follow the file (device and inode from this kernel's BTF): every \
                 link, mount and descriptor of a program is the same program",
            ),
            Err(e) => not_loaded(&format!(
                "exec rules match the path given to execve only ({e}): another name of the \
                 same file is another program"
            )),
        },
    });
    g.push(match (loaded, f.backend, &f.syscall32) {
        (false, _, _) => Guarantee {
            name: "syscall32",
            verdict: Verdict::Unsupported,
            why: not_loaded(""),
        },
        (true, Some(Backend::Lsm), _) => Guarantee {
            name: "syscall32",
            verdict: Verdict::Enforced,
            why: match crate::kernel::COMPAT_EXITS
                .iter()
                .all(|&(_, _, pin)| hooked(pin))
            {
                true => "BPF LSM: the hooks decide on the kernel's objects, whatever system-call \
                         table (32- or 64-bit) a call came through; a held 32-bit connect or \
                         send waits for its decision like a 64-bit one"
                    .into(),
                false => "BPF LSM: the hooks decide on the kernel's objects, whatever \
                          system-call table (32- or 64-bit) a call came through; a 32-bit \
                          connect or send that a rule holds fails instead of waiting (no x86 \
                          32-bit system-call wrappers here to stop it at)"
                    .into(),
            },
        },
        (true, _, Ok(())) => Guarantee {
            name: "syscall32",
            verdict: Verdict::Enforced,
            why: "tracepoint backend: a watched task is ended at the entry of its first 32-bit \
                  system call (int 0x80, x32, a 32-bit program); the call runs, the task does \
                  not return from it"
                .into(),
        },
        (true, _, Err(e)) => Guarantee {
            name: "syscall32",
            verdict: Verdict::Degraded,
            why: format!(
                "tracepoint backend: 32-bit system calls cannot be told apart here ({e}); they \
                 get past the checks made at the 64-bit system-call tracepoints (ptrace, \
                 process_vm_writev, mmap, socket)"
            ),
        },
    });
    g.push(match (loaded, f.backend) {
        (false, _) => Guarantee {
            name: "debugging",
            verdict: Verdict::Unsupported,
            why: not_loaded(""),
        },
        (true, Some(Backend::Lsm)) => Guarantee {
            name: "debugging",
            verdict: Verdict::Enforced,
            why: "BPF LSM: a watched task's every access that needs the right to attach to \
                  another process (ptrace, /proc/PID/mem, process_vm_readv/writev, \
                  pidfd_getfd) is refused"
                .into(),
        },
        (true, _) if hooked("debug-kp") && hooked("fork-share") => Guarantee {
            name: "debugging",
            verdict: Verdict::Degraded,
            why: "tracepoint backend: a watched task is ended when it asks to attach to another \
                  process (ptrace, /proc/PID/mem, process_vm_readv/writev, pidfd_getfd: a \
                  kprobe on ptrace_may_access); the call completes and the task does not \
                  return from it, and it cannot have made a process that shares its \
                  descriptor table (one that shared it before the task was watched keeps a \
                  descriptor the call made)"
                .into(),
        },
        (true, _) if hooked("debug-kp") => Guarantee {
            name: "debugging",
            verdict: Verdict::Degraded,
            why: "tracepoint backend: a watched task is ended when it asks to attach to another \
                  process (ptrace, /proc/PID/mem, process_vm_readv/writev, pidfd_getfd: a \
                  kprobe on ptrace_may_access); the call completes and the task does not \
                  return from it, but a process sharing its descriptor table (CLONE_FILES) \
                  keeps a descriptor the call made"
                .into(),
        },
        (true, _) if hooked("getfd-tp") => Guarantee {
            name: "debugging",
            verdict: Verdict::Degraded,
            why: "tracepoint backend without a kprobe on ptrace_may_access: ptrace and 64-bit \
                  process_vm_readv/writev on another process end a watched task, and so does \
                  every 64-bit pidfd_getfd (also of its own process: the pidfd's process is \
                  not read); /proc/PID/mem is not seen"
                .into(),
        },
        (true, _) => Guarantee {
            name: "debugging",
            verdict: Verdict::Degraded,
            why: "tracepoint backend without a kprobe on ptrace_may_access: ptrace and 64-bit \
                  process_vm_readv/writev end a watched task; /proc/PID/mem and pidfd_getfd \
                  are not seen"
                .into(),
        },
    });
    g.push(match (loaded, f.backend) {
        (false, _) => Guarantee {
            name: "received-sockets",
            verdict: Verdict::Unsupported,
            why: not_loaded(""),
        },
        (true, Some(Backend::Lsm)) if hooked("receive-lsm") => Guarantee {
            name: "received-sockets",
            verdict: Verdict::Enforced,
            why: "BPF LSM: an IP or link-layer socket made outside the cgroups of a watched \
                  task's workload and passed to it (SCM_RIGHTS) is refused"
                .into(),
        },
        (true, _) if hooked("receive-kp") => Guarantee {
            name: "received-sockets",
            verdict: Verdict::Degraded,
            why: format!(
                "tracepoint backend: a watched task passed an IP or link-layer socket made \
                 outside the cgroups of its workload (SCM_RIGHTS) is ended (a kprobe on \
                 security_file_receive); the descriptor is installed {}",
                if hooked("fork-share") {
                    "and the task does not return to use it, nor can it have made a process \
                     that shares its descriptor table"
                } else {
                    "and a process sharing its descriptor table (CLONE_FILES) keeps it"
                }
            ),
        },
        (true, _) => Guarantee {
            name: "received-sockets",
            verdict: Verdict::Degraded,
            why: "a socket made outside a watched task's workload and passed to it is \
                  not seen here (no BPF LSM, no kprobe on security_file_receive, or this \
                  kernel's BTF does not tell where a socket was made): its connection and \
                  packets are not decided"
                .into(),
        },
    });
    g.push(match (loaded, f.backend) {
        (false, _) => Guarantee {
            name: "mappings",
            verdict: Verdict::Unsupported,
            why: not_loaded(""),
        },
        (true, Some(Backend::Lsm)) => Guarantee {
            name: "mappings",
            verdict: Verdict::Enforced,
            why: "BPF LSM: a watched task may not map a program that a rule refuses or holds \
                  for execution (mmap, or mprotect of a readable mapping), so the dynamic \
                  loader or a loader of its own cannot run it"
                .into(),
        },
        (true, _) if hooked("map-kp") && hooked("mprotect-kp") => Guarantee {
            name: "mappings",
            verdict: Verdict::Degraded,
            why: "tracepoint backend: a watched task that maps a program a rule refuses or \
                  holds for execution (mmap, or mprotect of a readable mapping: kprobes on \
                  security_mmap_file and security_file_mprotect, which see the file the kernel \
                  maps) is ended; the call completes and the task does not return from it, but \
                  a vfork child's mapping stays in the memory its parent's other threads run"
                .into(),
        },
        (true, _) if hooked("map-kp") => Guarantee {
            name: "mappings",
            verdict: Verdict::Degraded,
            why: "tracepoint backend: mmap of a program a rule refuses or holds ends a watched \
                  task (a kprobe on security_mmap_file), but security_file_mprotect could not \
                  be probed: a readable mapping made executable by mprotect is not seen"
                .into(),
        },
        (true, _) => Guarantee {
            name: "mappings",
            verdict: Verdict::Degraded,
            why: "tracepoint backend without kprobes: mmap of a program a rule refuses or holds \
                  ends a watched task at the system call's entry, by the descriptor it names \
                  (another thread may replace that descriptor before the kernel maps it), and \
                  a readable mapping made executable by mprotect is not seen"
                .into(),
        },
    });
    g.push(match (loaded, f.backend) {
        (false, _) => Guarantee {
            name: "packet-sockets",
            verdict: Verdict::Unsupported,
            why: not_loaded(""),
        },
        (true, Some(Backend::Lsm)) => Guarantee {
            name: "packet-sockets",
            verdict: Verdict::Enforced,
            why: "BPF LSM: a watched task may not create an AF_PACKET socket (which writes \
                  frames below every socket hook and the egress backstop), whether by socket() \
                  or through io_uring"
                .into(),
        },
        (true, _) if hooked("uring-tp") && hooked("fork-share") => Guarantee {
            name: "packet-sockets",
            verdict: Verdict::Degraded,
            why: "tracepoint backend: a watched task that asks for an AF_PACKET socket, by \
                  socket() or through io_uring, is ended before it can use it, and it cannot \
                  have made a process that shares its descriptor table; a socket io_uring \
                  makes into the ring's own table (a direct descriptor) stays there for any \
                  process that holds the ring"
                .into(),
        },
        (true, _) if hooked("uring-tp") => Guarantee {
            name: "packet-sockets",
            verdict: Verdict::Degraded,
            why: "tracepoint backend: a watched task that asks for an AF_PACKET socket, by \
                  socket() or through io_uring, is ended before it can use it, but a process \
                  sharing its descriptor table (CLONE_FILES) keeps the descriptor"
                .into(),
        },
        (true, _) => Guarantee {
            name: "packet-sockets",
            verdict: Verdict::Degraded,
            why: "tracepoint backend without io_uring's submission event: a watched task \
                  that calls socket() for an AF_PACKET socket is ended; one that submits the \
                  request to io_uring is not seen"
                .into(),
        },
    });
    g.push(Guarantee {
        name: "lineage",
        verdict: match (loaded, &f.ancestry) {
            (false, _) => Verdict::Unsupported,
            (true, Ok(())) => Verdict::Enforced,
            (true, Err(_)) => Verdict::Degraded,
        },
        why: match &f.ancestry {
            Ok(()) => not_loaded(
                "a thread that was in a watched cgroup, or below one, keeps its watch wherever \
                 it moves, with its descendants",
            ),
            Err(e) => not_loaded(&format!(
                "a thread that forks or moves into a watched cgroup keeps its watch wherever it \
                 moves; one moved by another process into a cgroup below a watched one does \
                 not, since the cgroup's ancestors cannot be read here ({e})"
            )),
        },
    });
    g.push(Guarantee {
        name: "hooks-outlive-agent",
        verdict: match (loaded, f.links_pinned) {
            (false, _) => Verdict::Unsupported,
            (true, true) => Verdict::Enforced,
            (true, false) => Verdict::Degraded,
        },
        why: if f.links_pinned {
            "links pinned in bpffs: a killed agent leaves every hook attached".into()
        } else {
            not_loaded(
                "this kernel refuses to pin links: hooks detach when the agent exits, and held \
                 operations are released by the fail mode",
            )
        },
    });
    let verdict = g
        .iter()
        .map(|x| x.verdict)
        .max()
        .unwrap_or(Verdict::Unsupported);
    Report {
        facts: f,
        hold: "socket hook records, system-call exit stops (SIGSTOP), call restarts",
        guarantees: g,
        verdict,
    }
}

/// Gathers the facts by loading and attaching the programs in a scratch pin directory beside
/// `pin_dir` (no cgroup is watched through it, so it changes nothing for any process), then
/// removes them.
pub fn gather(pin_dir: &Path, cgroup_root: Option<PathBuf>) -> Facts {
    let mut f = host_facts();
    let scratch = pin_dir
        .parent()
        .unwrap_or(Path::new("/sys/fs/bpf"))
        .join(format!("latch-doctor-{}", std::process::id()));
    match Engine::load(EngineOptions {
        dns_proxy_port: 0,
        dns_proxy_v6: false,
        pin_dir: scratch.clone(),
        cgroup_root,
        stale_after: std::time::Duration::from_secs(60),
        fail_mode: agent_common::FailMode::Deny,
        exec_backend: None,
    }) {
        Ok(e) => {
            engine_facts(&mut f, &e);
            let _ = e.uninstall();
        }
        Err(e) => {
            f.load = Err(e.to_string());
            let _ = std::fs::remove_dir_all(&scratch);
        }
    }
    f
}

/// The facts of a loaded engine (the running agent's own report to central).
pub fn engine_facts(f: &mut Facts, e: &Engine) {
    f.load = Ok(());
    f.lsm = e.lsm_probe().clone();
    f.backend = Some(e.backend());
    f.links_pinned = e.links_pinned();
    f.hooks = e.hooks().iter().map(|h| h.to_string()).collect();
    f.file_identity = present(e.file_identity_missing());
    f.syscall32 = present(e.syscall32_missing());
    f.ancestry = present(e.ancestry_missing());
}

/// A capability the engine reports by why it is missing, as the report's `Ok` or reason.
fn present(missing: Option<&str>) -> Result<(), String> {
    missing.map_or(Ok(()), |why| Err(why.to_string()))
}

/// What is known about the host without loading anything.
pub fn host_facts() -> Facts {
    let uts = nix::sys::utsname::uname().ok();
    Facts {
        kernel: uts
            .as_ref()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        arch: uts
            .as_ref()
            .map(|u| u.machine().to_string_lossy().into_owned())
            .unwrap_or_default(),
        cgroup2: crate::kernel::cgroup2_root().ok(),
        btf: Path::new(crate::kernel::btf::VMLINUX).exists(),
        lsm_list: probe::lsm_list(),
        ..Facts::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(load: Result<(), String>, backend: Option<Backend>, pinned: bool) -> Facts {
        // The hooks a host where everything works attaches beside the exec and network ones,
        // which no verdict looks up by name.
        let hooks = match (&load, backend) {
            (Ok(()), Some(Backend::Lsm)) => vec!["receive-lsm".to_string()],
            _ => Vec::new(),
        };
        Facts {
            hooks,
            file_identity: load.clone(),
            syscall32: load.clone(),
            ancestry: load.clone(),
            load,
            backend,
            links_pinned: pinned,
            ..Facts::default()
        }
    }

    fn verdict_of(r: &Report, name: &str) -> Verdict {
        r.guarantees
            .iter()
            .find(|g| g.name == name)
            .map(|g| g.verdict)
            .unwrap_or_else(|| panic!("no guarantee {name}"))
    }

    #[test]
    fn verdicts_follow_the_facts() {
        use Verdict::*;
        // (load, backend, pinned) → (exec-deny, hooks-outlive-agent, overall, exit code)
        let table = [
            (
                Ok(()),
                Some(Backend::Lsm),
                true,
                Enforced,
                Enforced,
                Enforced,
                0,
            ),
            (
                Ok(()),
                Some(Backend::Lsm),
                false,
                Enforced,
                Degraded,
                Degraded,
                1,
            ),
            (
                Ok(()),
                Some(Backend::Tracepoint),
                true,
                Degraded,
                Enforced,
                Degraded,
                1,
            ),
            (
                Err("verifier".to_string()),
                None,
                false,
                Unsupported,
                Unsupported,
                Unsupported,
                3,
            ),
        ];
        for (load, backend, pinned, exec, hooks, overall, code) in table {
            let r = judge(facts(load.clone(), backend, pinned));
            assert_eq!(
                verdict_of(&r, "exec-deny"),
                exec,
                "{load:?} {backend:?} {pinned}"
            );
            assert_eq!(verdict_of(&r, "exec-hold"), exec, "no restop hook");
            assert_eq!(verdict_of(&r, "hooks-outlive-agent"), hooks);
            assert_eq!(r.verdict, overall);
            assert_eq!(r.exit_code(), code);
            let net = if load.is_ok() { Enforced } else { Unsupported };
            assert_eq!(verdict_of(&r, "connect-hold"), net);
        }
    }

    #[test]
    fn a_tracepoint_hold_renewed_at_signal_return_is_enforced() {
        let mut f = facts(Ok(()), Some(Backend::Tracepoint), true);
        f.hooks = vec!["exec".into(), "restop".into()];
        let r = judge(f);
        assert_eq!(verdict_of(&r, "exec-hold"), Verdict::Enforced);
        assert_eq!(
            verdict_of(&r, "exec-deny"),
            Verdict::Degraded,
            "a killed child, not EPERM"
        );
        let mut f = facts(Ok(()), Some(Backend::Tracepoint), true);
        f.hooks = vec!["exec".into(), "gate".into()];
        assert_eq!(verdict_of(&judge(f), "exec-hold"), Verdict::Degraded);
    }

    #[test]
    fn exec_rules_on_paths_only_are_degraded_and_say_why() {
        let mut f = facts(Ok(()), Some(Backend::Lsm), true);
        f.file_identity = Err("mm_struct.exe_file: no such member".into());
        let r = judge(f);
        assert_eq!(verdict_of(&r, "exec-identity"), Verdict::Degraded);
        assert_eq!(r.exit_code(), 1);
        assert!(
            r.summary().contains("exec-identity degraded"),
            "{}",
            r.summary()
        );
        let g = r.guarantees.iter().find(|g| g.name == "exec-identity");
        assert!(g.is_some_and(|g| g.why.contains("mm_struct.exe_file")));
        let ok = judge(facts(Ok(()), Some(Backend::Lsm), true));
        assert_eq!(verdict_of(&ok, "exec-identity"), Verdict::Enforced);
    }

    #[test]
    fn thirty_two_bit_calls_are_degraded_only_where_the_tracepoint_backend_cannot_tell_them() {
        use Verdict::*;
        let missing = || Err("thread_info.status: no such member".to_string());
        let stops: Vec<String> = crate::kernel::COMPAT_EXITS
            .iter()
            .map(|&(_, _, pin)| pin.to_string())
            .collect();
        // (backend, can tell 32-bit calls apart, the 32-bit stops attached) → verdict, and
        // whether a held 32-bit call is said to wait
        let table = [
            (Backend::Lsm, Ok(()), true, Enforced, true),
            (Backend::Lsm, missing(), true, Enforced, true),
            (Backend::Lsm, Ok(()), false, Enforced, false),
            (Backend::Tracepoint, Ok(()), false, Enforced, false),
            (Backend::Tracepoint, missing(), false, Degraded, false),
        ];
        for (backend, syscall32, stopped, want, waits) in table {
            let mut f = facts(Ok(()), Some(backend), true);
            f.syscall32 = syscall32.clone();
            if stopped {
                f.hooks = stops.clone();
            }
            let r = judge(f);
            assert_eq!(
                verdict_of(&r, "syscall32"),
                want,
                "{backend:?} {syscall32:?}"
            );
            let g = r.guarantees.iter().find(|g| g.name == "syscall32");
            if want == Degraded {
                assert!(g.is_some_and(|g| g.why.contains("thread_info.status")));
            }
            if backend == Backend::Lsm {
                assert_eq!(
                    g.is_some_and(|g| g.why.contains("waits for its decision")),
                    waits,
                    "{backend:?} stops attached: {stopped}"
                );
            }
        }
        // One stop missing is as none.
        let mut f = facts(Ok(()), Some(Backend::Lsm), true);
        f.hooks = stops[1..].to_vec();
        let r = judge(f);
        let g = r.guarantees.iter().find(|g| g.name == "syscall32");
        assert!(g.is_some_and(|g| g.why.contains("fails instead of waiting")));
        let r = judge(facts(Err("no BTF".into()), None, false));
        assert_eq!(verdict_of(&r, "syscall32"), Unsupported);
    }

    #[test]
    fn debugging_is_degraded_on_the_tracepoint_backend_without_its_kprobe() {
        use Verdict::*;
        // (backend, hooks) → verdict
        let table = [
            (Backend::Lsm, vec![], Enforced),
            (Backend::Tracepoint, vec!["ptrace-tp", "debug-kp"], Degraded),
            (
                Backend::Tracepoint,
                vec!["ptrace-tp", "debug-kp", "fork-share"],
                Degraded,
            ),
            (
                Backend::Tracepoint,
                vec!["ptrace-tp", "vm-read-tp"],
                Degraded,
            ),
            (
                Backend::Tracepoint,
                vec!["ptrace-tp", "vm-read-tp", "getfd-tp"],
                Degraded,
            ),
        ];
        for (backend, hooks, want) in table {
            let mut f = facts(Ok(()), Some(backend), true);
            f.hooks = hooks.iter().map(|h| h.to_string()).collect();
            let r = judge(f);
            assert_eq!(verdict_of(&r, "debugging"), want, "{backend:?} {hooks:?}");
            let g = r.guarantees.iter().find(|g| g.name == "debugging");
            // The caveat is said where it applies: the kprobe ends the task, and a process
            // sharing its descriptor table could have been made.
            let caveat = hooks.contains(&"debug-kp") && !hooks.contains(&"fork-share");
            assert!(
                g.is_some_and(|g| g.why.contains("CLONE_FILES") == caveat),
                "{backend:?} {hooks:?}: {g:?}"
            );
            // pidfd_getfd is said to be unseen exactly where neither the kprobe nor its
            // system-call check is attached.
            let getfd_unseen = backend == Backend::Tracepoint
                && !hooks.contains(&"debug-kp")
                && !hooks.contains(&"getfd-tp");
            assert!(
                g.is_some_and(|g| g.why.contains("pidfd_getfd are not seen") == getfd_unseen),
                "{backend:?} {hooks:?}: {g:?}"
            );
        }
        let r = judge(facts(Err("no BTF".into()), None, false));
        assert_eq!(verdict_of(&r, "debugging"), Unsupported);
    }

    #[test]
    fn received_sockets_are_enforced_only_where_a_hook_checks_them() {
        use Verdict::*;
        // (backend, hooks) → verdict, a word the reason must carry
        let table = [
            (Backend::Lsm, vec!["receive-lsm"], Enforced, "refused"),
            // LSM without the offsets: the hook is not attached.
            (Backend::Lsm, vec![], Degraded, "not seen"),
            (
                Backend::Tracepoint,
                vec!["receive-kp", "fork-share"],
                Degraded,
                "ended",
            ),
            (
                Backend::Tracepoint,
                vec!["receive-kp"],
                Degraded,
                "CLONE_FILES",
            ),
            (Backend::Tracepoint, vec![], Degraded, "not seen"),
        ];
        for (backend, hooks, want, word) in table {
            let mut f = facts(Ok(()), Some(backend), true);
            f.hooks = hooks.iter().map(|h| h.to_string()).collect();
            let r = judge(f);
            assert_eq!(
                verdict_of(&r, "received-sockets"),
                want,
                "{backend:?} {hooks:?}"
            );
            let g = r.guarantees.iter().find(|g| g.name == "received-sockets");
            assert!(
                g.is_some_and(|g| g.why.contains(word)),
                "{backend:?} {hooks:?}: {g:?}"
            );
        }
        let r = judge(facts(Err("no BTF".into()), None, false));
        assert_eq!(verdict_of(&r, "received-sockets"), Unsupported);
    }

    #[test]
    fn mappings_are_degraded_on_the_tracepoint_backend_and_say_what_is_not_seen() {
        use Verdict::*;
        // (backend, hooks, verdict, a word the reason must carry)
        let table = [
            (Backend::Lsm, vec![], Enforced, "BPF LSM"),
            (
                Backend::Tracepoint,
                vec!["map-kp", "mprotect-kp"],
                Degraded,
                "vfork",
            ),
            (Backend::Tracepoint, vec!["map-kp"], Degraded, "not seen"),
            (Backend::Tracepoint, vec!["map-tp"], Degraded, "descriptor"),
            (
                Backend::Tracepoint,
                vec!["mprotect-kp"],
                Degraded,
                "descriptor",
            ),
        ];
        for (backend, hooks, want, word) in table {
            let mut f = facts(Ok(()), Some(backend), true);
            f.hooks = hooks.iter().map(|h| h.to_string()).collect();
            let r = judge(f);
            assert_eq!(verdict_of(&r, "mappings"), want, "{backend:?} {hooks:?}");
            let g = r.guarantees.iter().find(|g| g.name == "mappings");
            assert!(
                g.is_some_and(|g| g.why.contains(word)),
                "{backend:?} {hooks:?}: {g:?}"
            );
        }
        let r = judge(facts(Err("no BTF".into()), None, false));
        assert_eq!(verdict_of(&r, "mappings"), Unsupported);
    }

    #[test]
    fn packet_sockets_are_degraded_on_the_tracepoint_backend_without_the_io_uring_event() {
        use Verdict::*;
        // (backend, hooks) → verdict
        let table = [
            (Backend::Lsm, vec![], Enforced),
            // A ring's own table holds what io_uring makes into it.
            (
                Backend::Tracepoint,
                vec!["socket-tp", "uring-tp", "fork-share"],
                Degraded,
            ),
            // A process sharing the descriptor table would keep the socket.
            (Backend::Tracepoint, vec!["socket-tp", "uring-tp"], Degraded),
            (Backend::Tracepoint, vec!["socket-tp"], Degraded),
        ];
        for (backend, hooks, want) in table {
            let mut f = facts(Ok(()), Some(backend), true);
            f.hooks = hooks.iter().map(|h| h.to_string()).collect();
            let r = judge(f);
            assert_eq!(
                verdict_of(&r, "packet-sockets"),
                want,
                "{backend:?} {hooks:?}"
            );
        }
        let r = judge(facts(Err("no BTF".into()), None, false));
        assert_eq!(verdict_of(&r, "packet-sockets"), Unsupported);
    }

    #[test]
    fn lineage_is_degraded_where_a_cgroup_s_ancestors_cannot_be_read() {
        let mut f = facts(Ok(()), Some(Backend::Tracepoint), true);
        assert_eq!(verdict_of(&judge(f.clone()), "lineage"), Verdict::Enforced);
        f.ancestry = Err("kernfs_node.__parent: no such member".into());
        let r = judge(f);
        assert_eq!(verdict_of(&r, "lineage"), Verdict::Degraded);
        let g = r.guarantees.iter().find(|g| g.name == "lineage");
        assert!(g.is_some_and(|g| g.why.contains("kernfs_node.__parent")));
        let r = judge(facts(Err("no BTF".into()), None, false));
        assert_eq!(verdict_of(&r, "lineage"), Verdict::Unsupported);
    }

    #[test]
    fn a_load_failure_says_why_in_every_guarantee_and_the_summary_names_them() {
        let r = judge(facts(Err("unknown func #117".into()), None, false));
        assert!(r
            .guarantees
            .iter()
            .all(|g| g.why.contains("unknown func #117")));
        assert!(r
            .summary()
            .starts_with("unsupported: connect-deny unsupported"));
        let ok = judge(facts(Ok(()), Some(Backend::Lsm), true));
        assert_eq!(ok.summary(), "enforced");
    }
}
