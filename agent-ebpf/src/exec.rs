//! Exec decisions, on two backends, and the gate that keeps a held exec stopped.
//!
//! - LSM backend (`bprm_check_security`): decided before the new image replaces the old. A deny
//!   is a clean `EPERM` from `execve`; a held exec stops inside `execve` and runs again after the
//!   decision.
//! - Tracepoint backend (`sched_process_exec`): decided after the new image is in place, before
//!   its first instruction. A deny ends it (SIGKILL); a held one is stopped, and the raw
//!   `sys_enter` gate stops it again if anyone but the agent resumes it.

use agent_common::{
    event_flags, fingerprint, pending_state, Action, ExecFileKey, Op, RuleRef, PATH_CAP,
    RESOLVE_RULE,
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes},
    programs::{LsmContext, TracePointContext},
    EbpfContext,
};

use crate::counters::{bump, Counter};
use crate::identity::{self, FileId};
use crate::maps::{EXEC_EXACT, EXEC_FILES, EXEC_PREFIX, PENDING};
use crate::pause::{self, Hold, Subject, Verdict};
use crate::scratch::Scratch;
use crate::{kconf, scope, scratch};

/// Offset of `__data_loc char[] filename` in the `sched_process_exec` record (stable ABI of the
/// tracepoint format since it was added).
const FILENAME_LOC: usize = 8;

const EPERM: i32 = -1;

/// `sched_process_exec` (tracepoint backend).
pub fn on_exec(ctx: &TracePointContext) {
    let Some((cgroup, watch)) = scope::watched() else {
        return;
    };
    let Some(s) = scratch::get() else {
        return;
    };
    // SAFETY: reading the tracepoint record the kernel passed us.
    let loc: u32 = match unsafe { ctx.read_at(FILENAME_LOC) } {
        Ok(v) => v,
        Err(_) => {
            bump(Counter::PathUnreadable);
            0
        }
    };
    // `__data_loc`: offset in the low 16 bits, length with the NUL in the high 16 bits.
    let truncated = (loc >> 16) as usize > PATH_CAP;
    let src = if loc == 0 {
        core::ptr::null()
    } else {
        // SAFETY: `ctx + offset` is inside the record the kernel built for this tracepoint.
        unsafe { (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize) }
    };
    let len = read_path(s, src);
    let subject = Subject::current(cgroup, watch);
    // The image now in place: for a script, its (last) interpreter.
    let file = identity::of_current_image();
    let (rule_id, action) = lookup(
        s,
        watch.workload,
        watch.default_action,
        len,
        truncated,
        file,
    );
    if action == Action::Allow as u8 {
        return;
    }
    start_event(s, len, truncated, 0, file);
    let how = Hold::StopNow { restarts: false };
    let verdict = pause::by_rule(
        &subject,
        &mut s.event,
        Op::Exec,
        rule_id,
        action,
        &mut None,
        how,
    );
    if verdict == Verdict::Deny {
        // The exec has already happened: the new image dies before its first instruction.
        pause::kill_current();
    }
}

/// `bprm_check_security` (LSM backend). Returns 0 to let the exec go on, `-EPERM` to refuse it,
/// or `-ERESTARTNOINTR` with the task stopped to hold it.
pub fn on_bprm_check(ctx: &LsmContext) -> i32 {
    let Some((cgroup, watch)) = scope::watched() else {
        return 0;
    };
    let Some(s) = scratch::get() else {
        return EPERM;
    };
    let bprm: *const u8 = ctx.arg(0);
    // SAFETY: `bprm` is the hook's `struct linux_binprm *`; the offset of its `filename` field
    // comes from this kernel's BTF, and the read is checked by the helper.
    let name: *const u8 = match unsafe {
        bpf_probe_read_kernel(bprm.add(kconf::bprm_filename_offset()) as *const *const u8)
    } {
        Ok(p) => p,
        Err(_) => {
            bump(Counter::FieldUnreadable);
            core::ptr::null()
        }
    };
    let len = read_path(s, name);
    // The helper stops at PATH_CAP - 1 bytes: a path that long may have been cut.
    let truncated = len >= PATH_CAP - 1;
    let subject = Subject::current(cgroup, watch);
    // This hook runs once per level of the exec: for a script, once for the script and once for
    // each interpreter, with `bprm->file` the file of that level (the name stays the script's).
    let file = identity::of_bprm(bprm);
    let asked = start_event(s, len, truncated, event_flags::BEFORE_EXEC, file);
    let how = Hold::StopNow { restarts: true };
    let ev = &mut s.event;
    // An exec held earlier runs again after the decision: consume it at the level that was held.
    if let Some(v) = pause::resume(&subject, ev, Op::Exec, asked, &mut None, how) {
        return lsm_verdict(v);
    }
    let (rule_id, action) = lookup(
        s,
        watch.workload,
        watch.default_action,
        len,
        truncated,
        file,
    );
    if action == Action::Deny as u8 {
        bump(Counter::ExecRefused);
    }
    let verdict = pause::by_rule(
        &subject,
        &mut s.event,
        Op::Exec,
        rule_id,
        action,
        &mut None,
        how,
    );
    lsm_verdict(verdict)
}

#[inline(always)]
fn lsm_verdict(v: Verdict) -> i32 {
    match v {
        Verdict::Allow => 0,
        Verdict::Deny => EPERM,
        Verdict::Held => agent_common::ERESTARTNOINTR,
    }
}

/// Copies a kernel string into the scratch key (zeroed first, so the key's tail is defined) and
/// returns its length.
#[inline(always)]
fn read_path(s: &mut Scratch, src: *const u8) -> usize {
    // SAFETY: scratch memory is ours for this run.
    unsafe { core::ptr::write_bytes(s.exact.path.as_mut_ptr(), 0, PATH_CAP) };
    let mut len = 0usize;
    if !src.is_null() {
        // SAFETY: reads at most PATH_CAP bytes into our buffer; the helper checks the source.
        match unsafe { bpf_probe_read_kernel_str_bytes(src, &mut s.exact.path) } {
            Ok(b) => len = b.len(),
            Err(_) => bump(Counter::PathUnreadable),
        }
    } else {
        bump(Counter::PathUnreadable);
    }
    if len >= PATH_CAP {
        len = PATH_CAP - 1;
    }
    len
}

/// The rule for the exec: the file's identity first (every name of a program the rules name),
/// then, for a file the rules do not name, its path: a relative path is held for the agent to
/// resolve, then the exact map, then the longest prefix, then the workload's default.
#[inline(always)]
fn lookup(
    s: &mut Scratch,
    workload: u32,
    default: u8,
    len: usize,
    truncated: bool,
    file: FileId,
) -> (u32, u8) {
    let (dev, ino) = file;
    if ino != 0 {
        let key = ExecFileKey { workload, dev, ino };
        if let Some(r) = EXEC_FILES.get_ptr(&key) {
            // SAFETY: map value pointer from lookup.
            let r = unsafe { *r };
            return (r.rule_id, r.action);
        }
    }
    s.exact.workload = workload;
    s.exact.len = len as u32;
    // A relative path (`./curl`) names a program only together with the working directory;
    // the agent resolves it while the task is held.
    if len > 0 && s.exact.path[0] != b'/' {
        return (RESOLVE_RULE, Action::Approve as u8);
    }
    let mut hit: Option<RuleRef> = None;
    if !truncated {
        if let Some(r) = EXEC_EXACT.get_ptr(&s.exact) {
            // SAFETY: map value pointer from lookup.
            hit = Some(unsafe { *r });
        }
    }
    if hit.is_none() {
        s.prefix.prefix_len = ((4 + len) * 8) as u32;
        s.prefix.data.workload_be = workload.to_be_bytes();
        s.prefix.data.path = s.exact.path;
        if let Some(r) = EXEC_PREFIX.get(&s.prefix) {
            hit = Some(*r);
        }
    }
    match hit {
        Some(r) => (r.rule_id, r.action),
        None => (0, default),
    }
}

/// Starts the exec event from the scratch path; returns what this level of the exec asks for
/// (the path's fingerprint with the file's identity folded in).
#[inline(always)]
fn start_event(s: &mut Scratch, len: usize, truncated: bool, flags: u8, file: FileId) -> u64 {
    let ev = &mut s.event;
    pause::clear(ev);
    ev.op = Op::Exec as u8;
    ev.path = s.exact.path;
    ev.flags = flags;
    if truncated {
        ev.flags |= event_flags::PATH_TRUNCATED;
    }
    let target = fingerprint::path(&s.exact.path, len);
    ev.target = target;
    let asked = if file.1 != 0 {
        fingerprint::file(target, file.0, file.1)
    } else {
        target
    };
    // What was asked, kept in the entry: a held exec that restarts is recognised by it even
    // after the agent pointed the entry at the program a relative path resolved to.
    ev.addr[..8].copy_from_slice(&asked.to_ne_bytes());
    ev.addr[8..].copy_from_slice(&file.1.to_ne_bytes());
    ev.file_dev = file.0;
    asked
}

/// A held exec of the current task that is running without its decision (tracepoint backend):
/// its entry, and the event to report with, or `None` when the task has nothing waiting.
/// Without scratch space to report with, the task is ended: it must not go on.
#[inline(always)]
fn resumed_exec() -> Option<(u32, Subject, &'static mut agent_common::Event)> {
    let tid = bpf_get_current_pid_tgid() as u32;
    let p = PENDING.get_ptr(&tid)?;
    // SAFETY: map value pointer from lookup.
    let p = unsafe { *p };
    if p.op != Op::Exec as u8
        || p.state != pending_state::WAITING
        || p.flags & agent_common::pending_flags::RESTARTS != 0
    {
        return None;
    }
    let Some(s) = scratch::get() else {
        pause::kill_current();
        return None;
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
    Some((p.rule_id, subject, ev))
}

/// fexit of `get_signal` (tracepoint backend): the task is about to return to user space. If its
/// exec is still waiting, someone other than the agent resumed it (the agent removes the entry
/// before it sends SIGCONT), or a tracer swallowed the stop: a new SIGSTOP is pending before
/// the return, so the task stops again without running an instruction. If the agent is gone,
/// the fail mode decides.
pub fn on_signal_return() {
    let Some((rule_id, subject, ev)) = resumed_exec() else {
        return;
    };
    let how = Hold::StopNow { restarts: false };
    if pause::hold_again(&subject, ev, rule_id, how) == Verdict::Deny {
        pause::kill_current();
    }
}

/// Raw `sys_enter` (tracepoint backend, where `restop` cannot attach): the same case. Stopping
/// the task again here would come too late for this system call, which runs before any signal
/// is delivered, so it is ended instead and that is recorded; if the agent is gone, the fail
/// mode decides.
pub fn on_syscall() {
    let Some((rule_id, subject, ev)) = resumed_exec() else {
        return;
    };
    if pause::resumed_without_decision(&subject, ev, rule_id) == Verdict::Deny {
        pause::kill_current();
    }
}
