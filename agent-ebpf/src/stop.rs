//! The exit of `connect`, `sendto`, `sendmsg` and `sendmmsg` (64- or 32-bit): where a network call that a socket
//! hook held is stopped and announced to the agent.
//!
//! Cgroup socket hooks may not call `bpf_send_signal_thread` before Linux 6.13, so they only
//! record the pending entry and fail the call with `-ERESTARTNOINTR`. Here, still inside the
//! system call, the thread stops itself with SIGSTOP; the kernel then restarts the call when the
//! thread is resumed, and the hook consumes the verdict. The event goes out only after the stop
//! is queued, so a decision's SIGCONT can never overtake it.

use agent_common::{pending_flags, Action, Op, Outcome, ERESTARTNOINTR};
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    programs::{FExitContext, TracePointContext},
};

use crate::counters::{bump, Counter};
use crate::maps::PENDING;
use crate::pause::{self, SIGSTOP};
use crate::{kconf, report, scope, scratch};

pub fn on_syscall_exit(ctx: &TracePointContext) {
    // SAFETY: reading the tracepoint record the kernel passed us, at the offset of `ret` that the
    // agent read from this kernel's format file.
    let ret: i64 = match unsafe { ctx.read_at(kconf::sys_exit_ret_offset()) } {
        Ok(v) => v,
        Err(_) => return,
    };
    on_call_return(ret);
}

/// The return of a 32-bit `connect`, `sendto`, `sendmsg`, `sendmmsg` or `socketcall` (fexit of
/// its x86 system-call wrapper): the system-call tracepoints never fire for calls that came
/// through the 32-bit table, so without this a held 32-bit call would return its restart code
/// to user space instead of waiting. The restart works the same way from either table.
pub fn on_compat_return(ctx: &FExitContext) {
    // The wrapper takes one argument (the saved registers); its return value comes after it.
    let ret: i64 = ctx.arg(1);
    on_call_return(ret);
}

#[inline(always)]
fn on_call_return(ret: i64) {
    // Every connect and send on the host passes here: leave at once unless this call was held.
    if ret != ERESTARTNOINTR as i64 {
        return;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(p) = PENDING.get_ptr_mut(&tid) else {
        return;
    };
    // SAFETY: map value pointer from lookup; `Pending` is plain data.
    let entry = unsafe { *p };
    if entry.op == Op::Exec as u8 {
        return;
    }
    if !pause::signal(SIGSTOP) {
        // The call returns to user space with the restart code it cannot act on: it fails, and
        // nothing was let through.
        let _ = PENDING.remove(&tid);
        bump(Counter::SignalFailed);
        return;
    }
    if entry.flags & pending_flags::ANNOUNCED != 0 {
        // Resumed by someone other than the agent, and stopped again.
        bump(Counter::Repaused);
        return;
    }
    // SAFETY: as above; only this thread's own system call writes its entry before it is
    // announced, and the agent does not touch an entry it has not been told about.
    unsafe { (*p).flags = entry.flags | pending_flags::ANNOUNCED };
    bump(Counter::Paused);
    let Some(s) = scratch::get() else {
        return;
    };
    let ev = &mut s.event;
    report::clear(ev);
    ev.op = entry.op;
    ev.family = entry.family;
    ev.proto = entry.proto;
    ev.port = entry.port;
    ev.addr = entry.addr;
    ev.target = entry.target;
    ev.created_ns = entry.created_ns;
    report::stamp(ev, entry.cgroup_id, entry.workload, scope::now());
    report::send(ev, Outcome::Paused, Action::Approve as u8, entry.rule_id);
}
