//! 32-bit system calls. On x86_64 a 64-bit process can still make 32-bit system calls
//! (`int 0x80`), and a 32-bit program makes only those. They take another table, which the
//! 64-bit system-call tracepoints (`syscalls:sys_enter_ptrace`, `_mmap`, `_socket`, ...) do not
//! see, so on the tracepoint backend they would walk around every check made there. The raw
//! `sys_enter` tracepoint sees every call; the kernel marks a 32-bit one in the task's
//! `thread_info.status` (`TS_COMPAT`) from its entry until it returns to user space (an x32 call
//! carries `__X32_SYSCALL_BIT` in its number instead). A watched task is ended at its first such
//! call: the call still runs, but the task never returns from it to user space.
//!
//! Only the tracepoint backend attaches this (with `gate`); the LSM backend decides on the
//! kernel's own objects, whatever table a call came through. Where the running kernel's BTF has
//! no `thread_info.status` (other architectures), `COMPAT_ON` stays 0 and nothing is checked.

use agent_common::Op;
use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};

use crate::counters::{bump, Counter};
use crate::{kconf, pause, scope};

/// `TS_COMPAT` in x86's `thread_info.status`.
const TS_COMPAT: u32 = 0x0002;
/// `__X32_SYSCALL_BIT`: an x32 call (64-bit registers, 32-bit pointers) carries it in its number;
/// x32 calls do not set `TS_COMPAT`, and the 64-bit tracepoints do not see them either.
const X32_SYSCALL_BIT: u64 = 0x4000_0000;

/// At every system call's entry: ends a watched task whose call is a 32-bit (ia32 or x32) one.
#[inline(always)]
pub fn on_syscall(nr: u64) {
    let Some(off) = kconf::compat_status_offset() else {
        return;
    };
    if nr & X32_SYSCALL_BIT != 0 {
        refuse(nr);
        return;
    }
    // SAFETY: helper with no arguments.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    // SAFETY: the helper checks the address; the offset comes from this kernel's BTF.
    let status = match unsafe { bpf_probe_read_kernel(task.wrapping_add(off) as *const u32) } {
        Ok(v) => v,
        Err(_) => {
            bump(Counter::FieldUnreadable);
            return;
        }
    };
    if status & TS_COMPAT == 0 {
        return;
    }
    refuse(nr);
}

/// Ends the current task if it is watched. The call itself still runs (a tracepoint cannot
/// skip it); the SIGKILL lands before the task returns to user space.
#[inline(always)]
fn refuse(nr: u64) {
    let Some((cgroup, watch)) = scope::watched() else {
        return;
    };
    bump(Counter::CompatKilled);
    pause::report_refusal(cgroup, watch, 0, 0, |ev| {
        ev.op = Op::Syscall32 as u8;
        ev.target = nr;
    });
    pause::kill_current();
}
