//! Debugging another process. A process that may debug another (`ptrace`, `process_vm_writev`,
//! `/proc/PID/mem`) can make it do anything: a process outside every watched cgroup run what
//! the rules refuse, a held program's arguments rewritten after the agent read them, a stop
//! swallowed. A watched task may therefore not debug any other process, and may not ask to be
//! debugged (`PTRACE_TRACEME`). Tasks outside the watched cgroups (an administrator's debugger)
//! are not limited here.
//!
//! LSM backend: `ptrace_access_check` refuses (`EPERM`) every access that needs the right to
//! attach (`PTRACE_MODE_ATTACH`: `ptrace` attach and seize, `/proc/PID/mem`,
//! `process_vm_readv`/`writev`, `pidfd_getfd`), and `ptrace_traceme` refuses the request to be
//! traced; read-only views (`/proc/PID/environ`, `kcmp`) stay open. A task's access to its own
//! threads never reaches the hook. Tracepoint backend (which cannot refuse): a watched task is
//! ended at the entry of `ptrace` attach, seize or `PTRACE_TRACEME`, and when it asks the kernel
//! for the right to attach to another process (a kprobe on `ptrace_may_access`, which
//! `/proc/PID/mem`, `process_vm_readv`/`writev` and `pidfd_getfd` ask, by whatever system-call
//! table); where that kprobe cannot attach, at the entry of the 64-bit `process_vm_readv` or
//! `process_vm_writev` on another process, and of the 64-bit `pidfd_getfd` on any process.

use agent_common::Op;
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    programs::{ProbeContext, TracePointContext},
};

use crate::counters::{bump, Counter};
use crate::pause;
use crate::{kconf, scope};

const EPERM: i32 = -1;
/// `PTRACE_MODE_ATTACH` in the mode `ptrace_access_check` is given.
const MODE_ATTACH: u32 = 0x02;
const PTRACE_TRACEME: i64 = 0;
const PTRACE_ATTACH: i64 = 16;
const PTRACE_SEIZE: i64 = 0x4206;

/// Whether the current task is refused debugging the process `target` (its tgid; 0 when not
/// known), and if so, reports it.
#[inline(always)]
fn refused(target: u32) -> bool {
    let Some((cgroup, watch)) = scope::watched() else {
        return false;
    };
    bump(Counter::DebugRefused);
    pause::report_refusal(cgroup, watch, 0, 0, |ev| {
        ev.op = Op::Debug as u8;
        ev.target = target as u64;
    });
    true
}

/// The tgid of a `struct task_struct *`; 0 when unreadable.
#[inline(always)]
fn tgid_of(task: *const u8) -> u32 {
    let Some(o) = kconf::file_offsets() else {
        return 0;
    };
    if task.is_null() {
        return 0;
    }
    // SAFETY: the helper checks the address; the offset comes from this kernel's BTF.
    unsafe { bpf_probe_read_kernel(task.wrapping_add(o.task_tgid) as *const u32) }.unwrap_or(0)
}

/// `ptrace_access_check(child, mode)` (LSM backend): 0, or `-EPERM` to refuse.
#[inline(always)]
pub fn lsm_access(child: *const u8, mode: u32) -> i32 {
    if mode & MODE_ATTACH != 0 && refused(tgid_of(child)) {
        EPERM
    } else {
        0
    }
}

/// `ptrace_traceme(parent)` (LSM backend): 0, or `-EPERM` to refuse.
#[inline(always)]
pub fn lsm_traceme(parent: *const u8) -> i32 {
    if refused(tgid_of(parent)) {
        EPERM
    } else {
        0
    }
}

/// Offsets of the first two arguments in a `syscalls:sys_enter_*` record (after the common
/// header and the system call number, 8 bytes each).
const ARG0: usize = 16;
const ARG1: usize = 24;

/// `syscalls:sys_enter_ptrace` (tracepoint backend): `ptrace(request, pid, ...)`. Only the
/// requests that make a tracer are looked at; every other needs one already.
pub fn on_ptrace_enter(ctx: &TracePointContext) {
    // SAFETY: reading the record the kernel passed, at the system call ABI's fixed offsets.
    let (request, pid) = match unsafe { (ctx.read_at::<i64>(ARG0), ctx.read_at::<i64>(ARG1)) } {
        (Ok(r), Ok(p)) => (r, p),
        _ => return,
    };
    let target = match request {
        PTRACE_TRACEME => 0,
        PTRACE_ATTACH | PTRACE_SEIZE => pid as u32,
        _ => return,
    };
    if refused(target) {
        pause::kill_current();
    }
}

/// `syscalls:sys_enter_process_vm_readv` and `_writev` (tracepoint backend): `(pid, ...)`. A
/// process may read and write its own memory this way.
pub fn on_vm_enter(ctx: &TracePointContext) {
    // SAFETY: as above.
    let Ok(pid) = (unsafe { ctx.read_at::<i64>(ARG0) }) else {
        return;
    };
    if pid as u32 == (bpf_get_current_pid_tgid() >> 32) as u32 {
        return;
    }
    if refused(pid as u32) {
        pause::kill_current();
    }
}

/// `syscalls:sys_enter_pidfd_getfd` (tracepoint backend, where `debug_kp` cannot attach):
/// `pidfd_getfd(pidfd, fd, flags)` takes a descriptor of the process `pidfd` names, which lets
/// a watched task use a socket made and connected outside (no socket hook sees a send on it).
/// Which process the pidfd names is not read here (that is the fd table's file, then its
/// `struct pid`): every call ends the task, also one naming its own process, which `dup` does
/// without asking. The call goes on and the task never returns to user space from it.
pub fn on_getfd_enter() {
    if refused(0) {
        pause::kill_current();
    }
}

/// `ptrace_may_access(task, mode)` entry (tracepoint backend, kprobe): the kernel asks whether
/// the current task may attach to `task`, for `/proc/PID/mem`, `process_vm_readv`/`writev`,
/// `pidfd_getfd` and other views that need the right to attach. A watched task that asks it of
/// another process is ended: the call goes on (a kprobe cannot refuse it) and the task never
/// returns to user space from it. A task asking of its own process is not looked at.
pub fn on_may_access(ctx: &ProbeContext) {
    let Some(mode) = ctx.arg::<u64>(1) else {
        return;
    };
    if mode as u32 & MODE_ATTACH == 0 {
        return;
    }
    let Some(task) = ctx.arg::<u64>(0) else {
        return;
    };
    let target = tgid_of(task as *const u8);
    if target == (bpf_get_current_pid_tgid() >> 32) as u32 {
        return;
    }
    if refused(target) {
        pause::kill_current();
    }
}
