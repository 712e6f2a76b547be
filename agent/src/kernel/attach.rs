//! Attaching the programs, and keeping them attached across agents.
//!
//! Every hook's link is pinned under `<pin_dir>/links/<name>` where the kernel allows it, so the
//! hooks outlive the agent: `deny` keeps denying and the heartbeat's fail mode applies while no
//! agent runs. A new agent (a restart, or a new build) attaches its own programs first, pins
//! each link under a temporary name and renames it over the old pin, which drops the old link:
//! at every moment at least one program is attached to every hook. Pins of hooks this agent no
//! longer uses (another backend) are removed last.
//!
//! Cgroup socket hooks attach through links, which the kernel always attaches in multi mode, so
//! programs of other tools at the same hooks keep working beside Latch's (and all must allow a
//! call for it to go through).

use std::{fs::File, path::Path};

use aya::{
    programs::{
        links::FdLink, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock,
        CgroupSockAddr, FExit, KProbe, Lsm, RawTracePoint, TracePoint,
    },
    Btf, Ebpf,
};

use super::{
    error_chain,
    probe::{read_kernel_btf, KernelBtf},
    program_error_text, Backend, EngineError,
};

/// The socket hooks, at the cgroup v2 root.
pub const SOCK_ADDR: &[&str] = &[
    "connect4", "connect6", "sendmsg4", "sendmsg6", "recvmsg4", "recvmsg6",
];
/// System-call exits where a held network call stops (program `held`), by pin name.
pub const SYSCALL_EXITS: &[(&str, &str)] = &[
    ("held-connect", "sys_exit_connect"),
    ("held-sendto", "sys_exit_sendto"),
    ("held-sendmsg", "sys_exit_sendmsg"),
    ("held-sendmmsg", "sys_exit_sendmmsg"),
];

/// The fexit programs that stop a held 32-bit network call (LSM backend), by program, the x86
/// system-call wrapper each is loaded for, and pin name.
pub const COMPAT_EXITS: &[(&str, &str, &str)] = &[
    ("held32_connect", "__ia32_sys_connect", "held32-connect"),
    ("held32_sendto", "__ia32_sys_sendto", "held32-sendto"),
    (
        "held32_sendmsg",
        "__ia32_compat_sys_sendmsg",
        "held32-sendmsg",
    ),
    (
        "held32_sendmmsg",
        "__ia32_compat_sys_sendmmsg",
        "held32-sendmmsg",
    ),
    (
        "held32_sockcall",
        "__ia32_compat_sys_socketcall",
        "held32-sockcall",
    ),
];

/// What is attached.
pub struct Attached {
    /// The links this process holds (pinned or not).
    pub links: Vec<FdLink>,
    /// Whether they are pinned.
    pub pinned: bool,
    /// Pin names of the hooks, in attach order.
    pub hooks: Vec<&'static str>,
    /// Why `restop` could not attach, where the `sys_enter` gate stands in for it.
    pub restop_refused: Option<String>,
}

fn prog_err(name: &'static str) -> impl Fn(aya::programs::ProgramError) -> EngineError {
    move |e| EngineError::Program {
        name,
        reason: program_error_text(&e),
    }
}

fn link_err(name: &'static str) -> impl Fn(aya::programs::links::LinkError) -> EngineError {
    move |e| EngineError::Program {
        name,
        reason: e.to_string(),
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, EngineError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| EngineError::Program {
            name,
            reason: "missing from the object".into(),
        })?
        .try_into()
        .map_err(prog_err(name))
}

struct Pinner<'a> {
    dir: &'a Path,
    can_pin: bool,
    out: Attached,
}

impl<'a> Pinner<'a> {
    fn new(dir: &'a Path, can_pin: bool) -> Self {
        Pinner {
            dir,
            can_pin,
            out: Attached {
                links: Vec::new(),
                pinned: can_pin,
                hooks: Vec::new(),
                restop_refused: None,
            },
        }
    }

    /// Pins `link` as `name`, replacing an older agent's link of the same name in one rename.
    fn keep(&mut self, link: FdLink, name: &'static str) -> Result<(), EngineError> {
        self.out.hooks.push(name);
        if !self.can_pin {
            self.out.links.push(link);
            return Ok(());
        }
        let final_path = self.dir.join(name);
        // bpffs refuses names with a dot: the temporary name has none.
        let tmp = self.dir.join(format!("{name}-new"));
        let _ = std::fs::remove_file(&tmp);
        let pinned = link.pin(&tmp).map_err(|e| EngineError::Pin {
            path: tmp.clone(),
            reason: error_chain(&e),
        })?;
        // rename(2) over the old pin drops the old link in the same step.
        std::fs::rename(&tmp, &final_path).map_err(|e| EngineError::Pin {
            path: final_path,
            reason: e.to_string(),
        })?;
        self.out.links.push(pinned.into());
        Ok(())
    }
}

/// Attaches every hook the backend needs and pins the links where the kernel allows it.
pub fn attach_all(
    ebpf: &mut Ebpf,
    cgroup_root: &Path,
    link_dir: &Path,
    backend: Backend,
    ancestry: bool,
    kbtf: &KernelBtf,
) -> Result<Attached, EngineError> {
    let can_pin = probe_pinning(ebpf, link_dir);
    let mut p = Pinner::new(link_dir, can_pin);

    // The stop at the system call's exit goes in before the socket hooks that rely on it.
    for &(pin, tp) in SYSCALL_EXITS {
        p.keep(tracepoint(ebpf, "held", "syscalls", tp)?, pin)?;
    }
    // The kernel's BTF, read once for every program of the LSM backend loaded against it.
    let btf = match backend {
        Backend::Lsm => Some(kernel_btf("exec_lsm", kbtf)?),
        Backend::Tracepoint => None,
    };
    // The LSM backend's hooks decide 32-bit calls like any other, and a held one needs its
    // stop too. (The tracepoint backend ends a watched task at its first 32-bit call.)
    if let Some(btf) = &btf {
        compat_exits(ebpf, &mut p, btf)?;
    }

    let root = File::open(cgroup_root).map_err(|e| EngineError::Cgroup {
        path: cgroup_root.to_path_buf(),
        reason: e.to_string(),
    })?;
    // Links always attach in multi mode; `Single` only keeps aya from asking for the legacy
    // override flags on kernels without links.
    for &name in SOCK_ADDR {
        let prog: &mut CgroupSockAddr = program(ebpf, name)?;
        if prog.fd().is_err() {
            prog.load().map_err(prog_err(name))?;
        }
        let id = prog
            .attach(&root, CgroupAttachMode::Single)
            .map_err(prog_err(name))?;
        let link = prog.take_link(id).map_err(prog_err(name))?;
        p.keep(link.try_into().map_err(link_err(name))?, name)?;
    }

    // The packet backstop, for what the socket hooks do not see.
    let name = "egress";
    let prog: &mut CgroupSkb = program(ebpf, name)?;
    prog.load().map_err(prog_err(name))?;
    let id = prog
        .attach(&root, CgroupSkbAttachType::Egress, CgroupAttachMode::Single)
        .map_err(prog_err(name))?;
    let link = prog.take_link(id).map_err(prog_err(name))?;
    p.keep(link.try_into().map_err(link_err(name))?, name)?;
    // The sockets of threads that left their watched cgroup, which `egress` then finds.
    for (name, pin) in [("sock_new", "sock-new"), ("sock_gone", "sock-gone")] {
        let prog: &mut CgroupSock = program(ebpf, name)?;
        prog.load().map_err(prog_err(name))?;
        let id = prog
            .attach(&root, CgroupAttachMode::Single)
            .map_err(prog_err(name))?;
        let link = prog.take_link(id).map_err(prog_err(name))?;
        p.keep(link.try_into().map_err(link_err(name))?, pin)?;
    }

    // A socket passed in is judged by where it was made, which needs this kernel's layout;
    // without it the receiving hooks would refuse nothing, so they are left out, and doctor
    // says so.
    let receives = super::probe::layout().receives();
    if let Err(e) = &receives {
        tracing::warn!(
            "sockets passed to a watched task are not checked: where a socket was made cannot \
             be read here ({e})"
        );
    }

    // `btf` is there exactly on the LSM backend.
    match &btf {
        Some(btf) => {
            // (program, hook, pin), in the order they are attached.
            let mut hooks = vec![
                ("exec_lsm", "bprm_check_security", "exec-lsm"),
                ("map_lsm", "mmap_file", "map-lsm"),
                ("mprotect_lsm", "file_mprotect", "mprotect-lsm"),
                ("socket_lsm", "socket_create", "socket-lsm"),
                ("debug_lsm", "ptrace_access_check", "debug-lsm"),
                ("traceme_lsm", "ptrace_traceme", "traceme-lsm"),
            ];
            if receives.is_ok() {
                hooks.push(("receive_lsm", "file_receive", "receive-lsm"));
            }
            hooks.push(("bpf_guard", "bpf", "bpf-guard"));
            for (name, hook, pin) in hooks {
                let prog: &mut Lsm = program(ebpf, name)?;
                prog.load(hook, btf).map_err(prog_err(name))?;
                let id = prog.attach().map_err(prog_err(name))?;
                let link: FdLink = prog.take_link(id).map_err(prog_err(name))?.into();
                p.keep(link, pin)?;
            }
        }
        None => {
            let link = tracepoint(ebpf, "exec", "sched", "sched_process_exec")?;
            p.keep(link, "exec")?;
            guards(ebpf, &mut p, backend, kbtf)?;
            // Neither a tracepoint nor a kprobe can refuse a mapping; they end the task that
            // makes it. Where kprobes work, the kernel's own entry points give the file it
            // maps (whatever became of the descriptor meanwhile) and see `mprotect`; the
            // system call's entry is the fallback, which sees neither.
            match kprobe(ebpf, "map_kp", "security_mmap_file")? {
                Ok(link) => {
                    p.keep(link, "map-kp")?;
                    match kprobe(ebpf, "mprotect_kp", "security_file_mprotect")? {
                        Ok(link) => p.keep(link, "mprotect-kp")?,
                        Err(e) => {
                            tracing::warn!("a mapping made executable by mprotect is not seen: {e}")
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        "mappings are checked at the entry of mmap, by the descriptor it names, and \
                         mprotect is not seen: {e}"
                    );
                    let link = tracepoint(ebpf, "map_tp", "syscalls", "sys_enter_mmap")?;
                    p.keep(link, "map-tp")?;
                }
            }
            // A socket passed in (SCM_RIGHTS) ends the task that receives it, where the
            // kernel asks before installing it.
            if receives.is_ok() {
                match kprobe(ebpf, "receive_kp", "security_file_receive")? {
                    Ok(link) => p.keep(link, "receive-kp")?,
                    Err(e) => tracing::warn!("sockets passed to a watched task are not seen: {e}"),
                }
            }
            let link = tracepoint(ebpf, "socket_tp", "syscalls", "sys_enter_socket")?;
            p.keep(link, "socket-tp")?;
            // What a call completes for a task ended at its entry must not be left to another
            // process that shares its descriptor table or memory.
            p.keep(
                raw_tracepoint(ebpf, "fork_share", "task_newtask")?,
                "fork-share",
            )?;
            // A vfork child's mapping stays in the memory its parent wakes up in.
            for (pin, tp) in [
                ("clone-exit", "sys_exit_clone"),
                ("clone3-exit", "sys_exit_clone3"),
            ] {
                p.keep(tracepoint(ebpf, "clone_exit", "syscalls", tp)?, pin)?;
            }
            // Not every architecture has a vfork system call (arm64 has not).
            if let Ok(link) = optional_tracepoint(ebpf, "clone_exit", "syscalls", "sys_exit_vfork")?
            {
                p.keep(link, "vfork-exit")?;
            }
            // io_uring makes sockets without the socket() system call. The event is
            // `io_uring_submit_sqe` before Linux 6.4, with the same fields where the program
            // reads them. A kernel without either (no io_uring) keeps the check above.
            let uring =
                match optional_tracepoint(ebpf, "uring_tp", "io_uring", "io_uring_submit_req")? {
                    Ok(link) => Ok(link),
                    Err(_) => {
                        optional_tracepoint(ebpf, "uring_tp", "io_uring", "io_uring_submit_sqe")?
                    }
                };
            match uring {
                Ok(link) => p.keep(link, "uring-tp")?,
                Err(e) => tracing::warn!(
                    "AF_PACKET sockets submitted to io_uring are not seen, only those made by \
                     socket(): {e}"
                ),
            }
            let link = tracepoint(ebpf, "ptrace_tp", "syscalls", "sys_enter_ptrace")?;
            p.keep(link, "ptrace-tp")?;
            // Where the kernel asks for the right to attach: every way to another process's
            // memory or descriptors, whatever system-call table it came through.
            // A program the verifier refuses is a bug, and an error like any other's; a
            // kernel that cannot attach it (no kprobes, or no such function to probe) keeps
            // the system-call checks below, and doctor says so.
            match kprobe(ebpf, "debug_kp", "ptrace_may_access")? {
                Ok(link) => p.keep(link, "debug-kp")?,
                Err(e) => {
                    tracing::warn!(
                        "/proc/PID/mem is not seen: {e}; process_vm_readv, process_vm_writev \
                         and pidfd_getfd are checked at their 64-bit entry"
                    );
                    for (pin, tp) in [
                        ("vm-read-tp", "sys_enter_process_vm_readv"),
                        ("vm-write-tp", "sys_enter_process_vm_writev"),
                    ] {
                        p.keep(tracepoint(ebpf, "vm_tp", "syscalls", tp)?, pin)?;
                    }
                    // Linux 5.6 brought the call; a kernel without it has nothing to check.
                    match optional_tracepoint(
                        ebpf,
                        "getfd_tp",
                        "syscalls",
                        "sys_enter_pidfd_getfd",
                    )? {
                        Ok(link) => p.keep(link, "getfd-tp")?,
                        Err(e) => tracing::warn!("pidfd_getfd is not seen: {e}"),
                    }
                }
            }
        }
    }

    // Finished execs (every backend): lineage moves and spent approvals.
    let link = tracepoint(ebpf, "execd", "sched", "sched_process_exec")?;
    p.keep(link, "execd")?;
    for (pin, tp) in [
        ("exec-exit", "sys_exit_execve"),
        ("exec-exit-at", "sys_exit_execveat"),
    ] {
        p.keep(tracepoint(ebpf, "exec_exit", "syscalls", tp)?, pin)?;
    }

    // The lineage: forks and cgroup moves, then exits (which also drop held entries).
    let link = if ancestry {
        raw_tracepoint(ebpf, "fork_raw", "sched_process_fork")?
    } else {
        tracepoint(ebpf, "fork", "sched", "sched_process_fork")?
    };
    p.keep(link, "fork")?;
    // Where BTF gives a cgroup's ancestors, a move below a watched cgroup gives a lineage too.
    let link = if ancestry {
        raw_tracepoint(ebpf, "moved_raw", "cgroup_attach_task")?
    } else {
        tracepoint(ebpf, "moved", "cgroup", "cgroup_attach_task")?
    };
    p.keep(link, "moved")?;
    let link = tracepoint(ebpf, "exit", "sched", "sched_process_exit")?;
    p.keep(link, "exit")?;

    if can_pin {
        let mut keep = p.out.hooks.clone();
        if backend == Backend::Lsm {
            // Attached on the LSM backend only while rules with `args` are in force: an earlier
            // agent's stay until this one's rules say whether they are needed
            // ([`remove_guard_pins`]), so that an exec it held stays guarded meanwhile.
            keep.extend_from_slice(GUARDS);
        }
        remove_unused_pins(link_dir, &keep);
    }
    Ok(p.out)
}

/// Pin names of the resume guards.
pub const GUARDS: &[&str] = &["restop", "gate"];

/// What keeps an exec held after the fact from running without its decision: the stop renewed
/// on every return from signal handling (`restop`), and behind it a gate on every system call
/// that ends a task that got past it (a SIGCONT racing the renewed stop can flush it).
/// On the tracepoint backend the gate is `gate32`, which also ends a watched task at its first
/// 32-bit system call (the LSM backend's hooks see those calls as any other).
fn guards(
    ebpf: &mut Ebpf,
    p: &mut Pinner<'_>,
    backend: Backend,
    kbtf: &KernelBtf,
) -> Result<(), EngineError> {
    match restop(ebpf, kbtf) {
        Ok(link) => p.keep(link, "restop")?,
        Err(e) => {
            tracing::warn!(
                "a held exec resumed without a decision is ended at its first system \
                 call instead of being stopped again: {e}"
            );
            p.out.restop_refused = Some(e.to_string());
        }
    }
    let name = match backend {
        Backend::Tracepoint => "gate32",
        Backend::Lsm => "gate",
    };
    let prog: &mut RawTracePoint = program(ebpf, name)?;
    if prog.fd().is_err() {
        prog.load().map_err(prog_err(name))?;
    }
    let id = prog.attach("sys_enter").map_err(prog_err(name))?;
    let link: FdLink = prog.take_link(id).map_err(prog_err(name))?.into();
    p.keep(link, "gate")
}

/// The resume guards, attached after start (LSM backend, when rules with `args` come into
/// force: such an exec is held after the fact, as on the tracepoint backend).
pub fn attach_guards(
    ebpf: &mut Ebpf,
    link_dir: &Path,
    can_pin: bool,
) -> Result<Attached, EngineError> {
    let mut p = Pinner::new(link_dir, can_pin);
    guards(ebpf, &mut p, Backend::Lsm, &read_kernel_btf())?;
    Ok(p.out)
}

/// Detaches resume guards an earlier agent left pinned, where this agent's rules do not need
/// them.
pub fn remove_guard_pins(link_dir: &Path) {
    for name in GUARDS {
        let path = link_dir.join(name);
        if path.exists() {
            tracing::info!(pin = %path.display(), "detaching a guard no rule in force needs");
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The fexit of `get_signal` that stops a held exec's task again (needs BTF and trampolines).
fn restop(ebpf: &mut Ebpf, kbtf: &KernelBtf) -> Result<FdLink, EngineError> {
    fexit(ebpf, "restop", "get_signal", kernel_btf("restop", kbtf)?)
}

/// The running kernel's BTF; `name` is the program that needs it, for the error.
fn kernel_btf<'a>(name: &'static str, kbtf: &'a KernelBtf) -> Result<&'a Btf, EngineError> {
    kbtf.as_ref().map_err(|e| EngineError::Program {
        name,
        reason: format!("no kernel BTF: {e}"),
    })
}

/// Loads the fexit program `name` for the kernel function `function` and attaches it.
fn fexit(
    ebpf: &mut Ebpf,
    name: &'static str,
    function: &str,
    btf: &Btf,
) -> Result<FdLink, EngineError> {
    let prog: &mut FExit = program(ebpf, name)?;
    if prog.fd().is_err() {
        prog.load(function, btf).map_err(prog_err(name))?;
    }
    let id = prog.attach().map_err(prog_err(name))?;
    Ok(prog.take_link(id).map_err(prog_err(name))?.into())
}

/// The stops of held 32-bit network calls. A kernel without the x86 32-bit wrappers (another
/// architecture, or no 32-bit emulation) has none to attach: a held 32-bit call there fails
/// instead of waiting, and `latch-agent doctor` says so under `syscall32`.
/// A program that does not load or attach where its function exists is an error like any other.
fn compat_exits(ebpf: &mut Ebpf, p: &mut Pinner<'_>, btf: &Btf) -> Result<(), EngineError> {
    let missing: Vec<&str> = COMPAT_EXITS
        .iter()
        .map(|&(_, function, _)| function)
        .filter(|f| {
            btf.id_by_type_name_kind(f, aya_obj::btf::BtfKind::Func)
                .is_err()
        })
        .collect();
    if !missing.is_empty() {
        tracing::warn!(
            missing = ?missing,
            "a held 32-bit network call fails instead of waiting for its decision: x86 32-bit \
             system-call wrappers to stop it at are missing from this kernel"
        );
        return Ok(());
    }
    for &(name, function, pin) in COMPAT_EXITS {
        p.keep(fexit(ebpf, name, function, btf)?, pin)?;
    }
    Ok(())
}

/// Attaches the tracepoint program `name` (loaded on first use; one program may serve several
/// tracepoints) to `category:tp`.
fn tracepoint(
    ebpf: &mut Ebpf,
    name: &'static str,
    category: &str,
    tp: &str,
) -> Result<FdLink, EngineError> {
    let prog: &mut TracePoint = program(ebpf, name)?;
    if prog.fd().is_err() {
        prog.load().map_err(prog_err(name))?;
    }
    let id = prog.attach(category, tp).map_err(prog_err(name))?;
    prog.take_link(id)
        .map_err(prog_err(name))?
        .try_into()
        .map_err(link_err(name))
}

/// Loads the tracepoint program `name` (an error if it does not load) and attaches it to
/// `category:tp` (the inner error if that fails: a kernel without the event).
fn optional_tracepoint(
    ebpf: &mut Ebpf,
    name: &'static str,
    category: &str,
    tp: &str,
) -> Result<Result<FdLink, EngineError>, EngineError> {
    let prog: &mut TracePoint = program(ebpf, name)?;
    if prog.fd().is_err() {
        prog.load().map_err(prog_err(name))?;
    }
    Ok(prog
        .attach(category, tp)
        .map_err(prog_err(name))
        .and_then(|id| prog.take_link(id).map_err(prog_err(name)))
        .and_then(|l| l.try_into().map_err(link_err(name))))
}

/// Whether this kernel has kprobes (their perf event source is registered).
pub fn kprobes_supported() -> bool {
    Path::new("/sys/bus/event_source/devices/kprobe").exists()
}

/// Loads the kprobe program `name` (an error if it does not load) and attaches it to the entry
/// of the kernel function `function` (the inner error if that fails).
fn kprobe(
    ebpf: &mut Ebpf,
    name: &'static str,
    function: &str,
) -> Result<Result<FdLink, EngineError>, EngineError> {
    let prog: &mut KProbe = program(ebpf, name)?;
    if prog.fd().is_err() {
        prog.load().map_err(prog_err(name))?;
    }
    Ok(prog
        .attach(function, 0)
        .map_err(prog_err(name))
        .and_then(|id| prog.take_link(id).map_err(prog_err(name)))
        .and_then(|l| l.try_into().map_err(link_err(name))))
}

/// Attaches the raw tracepoint program `name` to `tp`.
fn raw_tracepoint(ebpf: &mut Ebpf, name: &'static str, tp: &str) -> Result<FdLink, EngineError> {
    let prog: &mut RawTracePoint = program(ebpf, name)?;
    if prog.fd().is_err() {
        prog.load().map_err(prog_err(name))?;
    }
    let id = prog.attach(tp).map_err(prog_err(name))?;
    Ok(prog.take_link(id).map_err(prog_err(name))?.into())
}

/// Removes pins of hooks the new agent does not use (the other exec backend's), which detaches
/// them, now that everything it does use is attached.
fn remove_unused_pins(link_dir: &Path, keep: &[&str]) {
    let Ok(rd) = std::fs::read_dir(link_dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !keep.iter().any(|k| *k == name) {
            tracing::info!(pin = %e.path().display(), "detaching a hook this agent does not use");
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Whether this kernel lets us pin BPF programs and links. Some kernels (and sandboxes) refuse
/// while still pinning maps; the links then live as long as this process.
fn probe_pinning(ebpf: &mut Ebpf, dir: &Path) -> bool {
    // bpffs refuses names with a dot.
    let probe = dir.join("pin-probe");
    let _ = std::fs::remove_file(&probe);
    // Any loaded program will do; a socket-address one loads everywhere we run.
    let prog: &mut CgroupSockAddr = match program(ebpf, "connect4") {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("cannot probe pinning: {e}");
            return false;
        }
    };
    if prog.fd().is_err() {
        if let Err(e) = prog.load() {
            tracing::warn!("cannot load connect4 to probe pinning: {}", error_chain(&e));
            return false;
        }
    }
    match prog.pin(&probe) {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            true
        }
        Err(e) => {
            tracing::warn!(
                "this kernel refuses to pin BPF programs and links ({}); hooks are held by the \
                 agent process and detach when it exits",
                error_chain(&e)
            );
            false
        }
    }
}
