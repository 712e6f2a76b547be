//! Processes that share a watched task's descriptor table or memory. On the tracepoint backend a
//! refused call is not refused: its task is ended at the call's entry, and the call completes
//! (an `AF_PACKET` socket is made, a program is mapped, a descriptor is taken from another
//! process with `pidfd_getfd`). Threads die with the task; but a process made by `clone` with
//! `CLONE_FILES`, or with `CLONE_VM`, and without `CLONE_THREAD` is another process, which would
//! outlive it and find the socket or the mapping where the task left it. So on that backend a
//! watched task may not make one: it is ended once the kernel has made the new process and
//! before that process first runs (`task:task_newtask`, which carries the flags as the kernel
//! copied them, whether they came by `clone`, `clone3` or a 32-bit call). The process left
//! behind shares its table or memory with one that never returns to user space, so whatever it
//! makes is used by no one but itself.
//!
//! `vfork` (`CLONE_VM | CLONE_VFORK`, as `posix_spawn` does) is let through: its parent waits
//! until the child execs or exits, and is ended on its way back if the child was ended for a
//! mapping (`mapped::on_clone_exit`). Its other threads do not wait: a mapping the child makes
//! before it is ended stays in memory they share until then (see the README).
//!
//! The LSM backend refuses such calls instead of ending their task, so it attaches none of this.

use agent_common::{clone_shares, Op};
use aya_ebpf::{helpers::bpf_probe_read_kernel, programs::RawTracePointContext};

use crate::counters::{bump, Counter};
use crate::{kconf, pause, scope};

/// `task:task_newtask` as a raw tracepoint (`task`, `clone_flags`), in the parent, after the
/// new task is made and before it is woken.
pub fn on_new_task(ctx: &RawTracePointContext) {
    if !clone_shares(ctx.arg::<u64>(1)) {
        return;
    }
    let Some((cgroup, watch)) = scope::watched() else {
        return;
    };
    let child = ctx.arg::<u64>(0) as *const u8;
    // Only for the event: 0 where it cannot be read.
    let child_tgid = match kconf::file_offsets() {
        // SAFETY: the helper checks the address; the offset comes from this kernel's BTF.
        Some(o) => unsafe { bpf_probe_read_kernel(child.wrapping_add(o.task_tgid) as *const u32) }
            .unwrap_or_else(|_| {
                bump(Counter::FieldUnreadable);
                0
            }),
        None => 0,
    };
    bump(Counter::ShareKilled);
    pause::report_refusal(cgroup, watch, 0, 0, |ev| {
        ev.op = Op::Shared as u8;
        ev.target = child_tgid as u64;
    });
    pause::kill_current();
}
