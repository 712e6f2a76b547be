//! The exec hook (`sched_process_exec`) and the gate that keeps a held exec stopped.

use agent_common::{
    event_flags, fingerprint, pending_state, Action, Op, RuleRef, PATH_CAP, RESOLVE_RULE,
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel_str_bytes},
    programs::TracePointContext,
    EbpfContext,
};

use crate::counters::{bump, Counter};
use crate::maps::{EXEC_EXACT, EXEC_PREFIX, PENDING};
use crate::pause::{self, Subject, Verdict};
use crate::{scope, scratch};

/// Offset of `__data_loc char[] filename` in the `sched_process_exec` record (stable ABI of the
/// tracepoint format since it was added).
const FILENAME_LOC: usize = 8;

pub fn on_exec(ctx: &TracePointContext) {
    let Some((cgroup, watch)) = scope::watched() else {
        return;
    };
    let Some(s) = scratch::get() else {
        return;
    };
    let subject = Subject::current(cgroup, watch);

    // SAFETY: reading the tracepoint record the kernel passed us.
    let loc: u32 = match unsafe { ctx.read_at(FILENAME_LOC) } {
        Ok(v) => v,
        Err(_) => {
            bump(Counter::PathUnreadable);
            0
        }
    };
    // `__data_loc`: offset in the low 16 bits, length with the NUL in the high 16 bits.
    let full_len = (loc >> 16) as usize;
    let truncated = full_len > PATH_CAP;
    // SAFETY: scratch memory is ours for this run; zeroing it makes the key's tail well defined.
    unsafe { core::ptr::write_bytes(s.exact.path.as_mut_ptr(), 0, PATH_CAP) };
    let mut len = 0usize;
    if loc != 0 {
        // SAFETY: `ctx + offset` is inside the record the kernel built for this tracepoint.
        let src = unsafe { (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize) };
        // SAFETY: reads at most PATH_CAP bytes into our buffer.
        match unsafe { bpf_probe_read_kernel_str_bytes(src, &mut s.exact.path) } {
            Ok(b) => len = b.len(),
            Err(_) => bump(Counter::PathUnreadable),
        }
    }
    if len >= PATH_CAP {
        len = PATH_CAP - 1;
    }
    s.exact.workload = watch.workload;
    s.exact.len = len as u32;

    // A relative path (`./curl`) names a program only together with the working directory;
    // the agent resolves it while the task is held.
    let relative = len > 0 && s.exact.path[0] != b'/';
    let mut hit: Option<RuleRef> = None;
    if relative {
        hit = Some(RuleRef {
            rule_id: RESOLVE_RULE,
            action: Action::Approve as u8,
            _pad: [0; 3],
        });
    }
    if hit.is_none() && !truncated {
        if let Some(r) = EXEC_EXACT.get_ptr(&s.exact) {
            // SAFETY: map value pointer from lookup.
            hit = Some(unsafe { *r });
        }
    }
    if hit.is_none() {
        s.prefix.prefix_len = ((4 + len) * 8) as u32;
        s.prefix.data.workload_be = watch.workload.to_be_bytes();
        s.prefix.data.path = s.exact.path;
        if let Some(r) = EXEC_PREFIX.get(&s.prefix) {
            hit = Some(*r);
        }
    }
    let (rule_id, action) = match hit {
        Some(r) => (r.rule_id, r.action),
        None => (0, watch.default_action),
    };
    if action == Action::Allow as u8 {
        return;
    }

    let ev = &mut s.event;
    pause::clear(ev);
    ev.op = Op::Exec as u8;
    ev.path = s.exact.path;
    if truncated {
        ev.flags |= event_flags::PATH_TRUNCATED;
    }
    let target = fingerprint::path(&s.exact.path, len);
    ev.target = target;

    let verdict = if action == Action::Audit as u8 {
        bump(Counter::Audited);
        subject.report(ev, agent_common::Outcome::Audited, action, rule_id);
        Verdict::Allow
    } else if action == Action::Approve as u8 {
        pause::request(&subject, ev, Op::Exec, rule_id, target, &mut None)
    } else {
        bump(Counter::Denied);
        subject.report(ev, agent_common::Outcome::Denied, action, rule_id);
        Verdict::Deny
    };
    if verdict == Verdict::Deny {
        // Without the LSM hook the exec has already happened: the new image dies before its
        // first instruction.
        pause::kill_current();
    }
}

/// Raw `sys_enter`: a task whose exec is still waiting got resumed by someone other than the
/// agent (the agent removes the entry before it sends SIGCONT). Stop it again before this system
/// call returns to user space, or apply the fail mode if the agent is gone.
pub fn on_syscall() {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(p) = PENDING.get_ptr(&tid) else {
        return;
    };
    // SAFETY: map value pointer from lookup.
    let p = unsafe { *p };
    if p.op != Op::Exec as u8 || p.state != pending_state::WAITING {
        return;
    }
    let Some(s) = scratch::get() else {
        return;
    };
    let watch = agent_common::Watch {
        workload: p.workload,
        default_action: Action::Approve as u8,
        _pad: [0; 3],
    };
    let subject = Subject::current(p.cgroup_id, watch);
    let ev = &mut s.event;
    pause::clear(ev);
    ev.op = Op::Exec as u8;
    ev.target = p.target;
    ev.created_ns = p.created_ns;
    if pause::hold_again(&subject, ev, p.rule_id) == Verdict::Deny {
        pause::kill_current();
    }
}
