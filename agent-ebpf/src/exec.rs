//! Exec decisions, on two backends, and the gate that keeps a held exec stopped.
//!
//! - LSM backend (`bprm_check_security`): decided before the new image replaces the old. A deny
//!   is a clean `EPERM` from `execve`; a held exec stops inside `execve` and runs again after the
//!   decision.
//! - Tracepoint backend (`sched_process_exec`): decided after the new image is in place, before
//!   its first instruction. A deny ends it (SIGKILL); a held one is stopped, stopped again when
//!   anyone but the agent resumes it (`restop`), and ended at its first system call if it got
//!   past that (the raw `sys_enter` gate).
//! - Arguments (rules with `args`, both backends): the arguments are in the new image's memory
//!   only once the exec is past its point of no return, so such an exec is held at
//!   `sched_process_exec` as on the tracepoint backend; the LSM check lets it on with a mark in
//!   `ARGS_DUE`.

use agent_common::{
    event_flags, fingerprint, pending_flags, pending_state, watch_flags, Action, ExecFileKey, Op,
    RuleRef, Watch, PATH_CAP, RESOLVE_RULE,
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes},
    programs::{LsmContext, TracePointContext},
    EbpfContext,
};

use crate::counters::{bump, Counter};
use crate::identity::{self, FileId};
use crate::maps::{ARGS_DUE, CONTENT, EXEC_EXACT, EXEC_FILES, EXEC_PREFIX, PENDING};
use crate::pause::{self, Hold, Subject, Verdict};
use crate::scratch::Scratch;
use crate::{fp_key, kconf, report, scope, scratch};

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
    let (len, truncated) = exec_filename(ctx, s);
    let subject = Subject::current(cgroup, watch);
    // The image now in place: for a script, its (last) interpreter.
    let file = identity::of_current_image();
    let (rule_id, action, content) = lookup(s, watch, len, truncated, file);
    if action == Action::Allow as u8 {
        return;
    }
    start_event(s, truncated, 0, file);
    if content != Content::Known {
        bump(Counter::ContentHeld);
        s.event.flags |= event_flags::CONTENT;
    }
    // An exec held for its arguments (`ARGS_RULE`) is held here like any other; not counted
    // apart: one more branch before the hold takes the 6.1 verifier past its limit.
    hold_after_exec(&subject, s, rule_id, action);
}

/// `sched_process_exec` (every backend; only the LSM backend marks execs): an exec whose
/// arguments decide it is held now that they are in the new image's memory, before its first
/// instruction. Resumed by anyone but the agent, it meets `restop` and the gate as any exec
/// held after the fact.
pub fn args_after_exec(ctx: &TracePointContext, old_tid: u32) {
    let Some(due) = ARGS_DUE.get_ptr(&old_tid) else {
        return;
    };
    // SAFETY: map value pointer from lookup.
    let rule_id = unsafe { *due };
    let _ = ARGS_DUE.remove(&old_tid);
    let (Some((cgroup, watch)), Some(s)) = (scope::watched(), scratch::get()) else {
        // Watched a moment ago at the check; nothing can be decided without scratch space.
        pause::kill_current();
        return;
    };
    let (_, truncated) = exec_filename(ctx, s);
    let subject = Subject::current(cgroup, watch);
    let file = identity::of_current_image();
    start_event(s, truncated, 0, file);
    bump(Counter::ArgsHeld);
    hold_after_exec(&subject, s, rule_id, Action::Approve as u8);
}

/// An exec's mark in `ARGS_DUE` is spent when its execve returns or its thread exits.
#[inline(always)]
pub fn args_done() {
    let tid = bpf_get_current_pid_tgid() as u32;
    let _ = ARGS_DUE.remove(&tid);
}

/// Holds (or ends) an exec that has already happened.
#[inline(always)]
fn hold_after_exec(subject: &Subject, s: &mut Scratch, rule_id: u32, action: u8) {
    let how = Hold::StopNow {
        restarts: false,
        first_level: true,
    };
    if by_rule(subject, s, rule_id, action, how) == Verdict::Deny {
        // The exec has already happened: the new image dies before its first instruction.
        pause::kill_current();
    }
}

/// The exec's file name from the `sched_process_exec` record, into the scratch key: (length,
/// whether it was cut).
#[inline(always)]
fn exec_filename(ctx: &TracePointContext, s: &mut Scratch) -> (usize, bool) {
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
    (read_path(s, src), truncated)
}

/// What the calling thread's pending entry says about this level of its exec: (one of the
/// kinds below, the entry's state, whether the entry was made at the first level). Plain bytes,
/// not an enum with data: every byte of it is defined on every path, as the verifier wants.
type Chain = (u8, u8, bool);
/// Nothing pending for this execve (an entry for anything else was abandoned and removed).
const NO_CHAIN: u8 = 0;
/// This level was held.
const THIS_LEVEL: u8 = 1;
/// Another level of the same execve was held.
const OTHER_LEVEL: u8 = 2;

/// The thread's pending entry for this execve: the same path asked for (`asked`) is the same
/// execve; the same file, met at the same kind of level (first, or interpreter), is the same
/// level.
#[inline(always)]
fn chain(subject: &Subject, asked: u64, file: FileId, first_level: bool) -> Chain {
    let Some(p) = PENDING.get_ptr(&subject.tid) else {
        return (NO_CHAIN, 0, false);
    };
    // SAFETY: map value pointer from lookup; `Pending` is plain data.
    let p = unsafe { *p };
    let a = &p.addr;
    let held_path = u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]);
    let held_ino = u64::from_ne_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]);
    if p.op != Op::Exec as u8 || held_path != asked {
        // The held operation was abandoned (the thread is doing something else now); the agent
        // sees the entry go and cancels its request.
        bump(Counter::TargetMismatch);
        let _ = PENDING.remove(&subject.tid);
        return (NO_CHAIN, 0, false);
    }
    let first = p.flags & pending_flags::FIRST_LEVEL != 0;
    if held_ino == file.1 && p.file_dev == file.0 && first == first_level {
        (THIS_LEVEL, p.state, first)
    } else {
        (OTHER_LEVEL, p.state, first)
    }
}

/// An execve has returned (`sys_exit_execve`, `sys_exit_execveat`; or `sched_process_exec`
/// with the thread id it had before the exec): an approval that covered its interpreter chain
/// is spent, whether the exec succeeded or failed.
#[inline(always)]
pub fn chain_done(tid: u32) {
    let Some(p) = PENDING.get_ptr(&tid) else {
        return;
    };
    // SAFETY: map value pointer from lookup.
    let p = unsafe { *p };
    if p.op == Op::Exec as u8
        && p.state == pending_state::ALLOW
        && p.flags & pending_flags::RESTARTS != 0
    {
        let _ = PENDING.remove(&tid);
    }
}

/// The exit of `execve`/`execveat`: unless the call is being restarted for a hold, its
/// approval is spent.
pub fn on_execve_exit(ctx: &TracePointContext) {
    // A restarted execve runs the LSM check again, which marks it again.
    args_done();
    // SAFETY: reading the record at the offset of `ret` the agent read from the format file.
    let ret: i64 = match unsafe { ctx.read_at(kconf::sys_exit_ret_offset()) } {
        Ok(v) => v,
        Err(_) => return,
    };
    if ret == agent_common::ERESTARTNOINTR as i64 {
        return;
    }
    chain_done(bpf_get_current_pid_tgid() as u32);
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
    let name = kernel_ptr(bprm, kconf::bprm_filename_offset());
    let len = read_path(s, name);
    // The helper stops at PATH_CAP - 1 bytes: a path that long may have been cut.
    let truncated = len >= PATH_CAP - 1;
    let subject = Subject::current(cgroup, watch);
    // This hook runs once per level of the exec: for a script, once for the script and once for
    // each interpreter, with `bprm->file` the file of that level (the name stays the script's).
    let file = identity::of_bprm(bprm);
    // `interp` is `filename` itself at the first level, the interpreter's path below it. The
    // agent does not choose this backend where BTF does not give its offset.
    let interp = match kconf::bprm_interp_offset() {
        Some(off) => kernel_ptr(bprm, off),
        None => name,
    };
    let first_level = interp == name;
    let asked = start_event(s, truncated, event_flags::BEFORE_EXEC, file);
    let how = Hold::StopNow {
        restarts: true,
        first_level,
    };
    let (rule_id, action, content) = lookup(s, watch, len, truncated, file);
    let (rule_id, action) = if agent_common::is_args_rule(rule_id) {
        // Decided on its arguments once the new image holds them (`args_after_exec`); this
        // level goes on.
        if ARGS_DUE.insert(&subject.tid, &rule_id, 0).is_err() {
            bump(Counter::ArgsLost);
            return EPERM;
        }
        (0, Action::Allow as u8)
    } else {
        (rule_id, action)
    };
    let look = content != Content::Known;
    if !first_level {
        // What this level runs, for the agent to open and the reviewer to see; the request
        // stays keyed by the name asked for.
        show_interp(&mut s.event, interp);
    }
    // An exec held earlier runs again after the decision, or after a resume from elsewhere.
    let (kind, state, entry_first) = chain(&subject, asked, file, first_level);
    if kind == THIS_LEVEL {
        if state == pending_state::DENY {
            let _ = PENDING.remove(&subject.tid);
            bump(Counter::ExecRefused);
            return EPERM;
        }
        if state == pending_state::ALLOW {
            if content != Content::Changed {
                // Consumed for this level; the entry stays until the execve returns, so that
                // the interpreters this level runs under are covered by the same approval.
                return 0;
            }
            // Approved, but the file changed since its content was hashed: decided afresh.
            bump(Counter::ExecSwapped);
            let _ = PENDING.remove(&subject.tid);
        } else {
            let ev = &mut s.event;
            return lsm_verdict(pause::hold_again(&subject, ev, rule_id, how));
        }
    }
    if kind == OTHER_LEVEL {
        if state == pending_state::DENY {
            let _ = PENDING.remove(&subject.tid);
            bump(Counter::ExecRefused);
            return EPERM;
        }
        // An approval made where the caller named the program covers the interpreters it
        // runs under, which the same name asks for again. Nothing else: a level is decided by
        // its own rules, so a file put in place of the one approved is decided afresh.
        if state == pending_state::ALLOW
            && entry_first
            && !first_level
            && content != Content::Changed
            && action == Action::Approve as u8
        {
            return 0;
        }
        if !look && (action == Action::Allow as u8 || action == Action::Audit as u8) {
            // Let through by its own rule; the entry stays for the level it was made at.
            let verdict = by_rule(&subject, s, rule_id, action, how);
            return lsm_verdict(verdict);
        }
        if first_level && entry_first {
            bump(Counter::ExecSwapped);
        }
        let _ = PENDING.remove(&subject.tid);
    }
    if action == Action::Deny as u8 {
        bump(Counter::ExecRefused);
    }
    if look {
        bump(Counter::ContentHeld);
        s.event.flags |= event_flags::CONTENT;
    }
    let verdict = by_rule(&subject, s, rule_id, action, how);
    lsm_verdict(verdict)
}

/// A pointer-sized field of a kernel structure; null when unreadable (counted).
#[inline(always)]
fn kernel_ptr(base: *const u8, off: usize) -> *const u8 {
    // SAFETY: `base` is a kernel pointer the hook was given; the offset comes from this
    // kernel's BTF, and the read is checked by the helper.
    match unsafe { bpf_probe_read_kernel(base.wrapping_add(off) as *const *const u8) } {
        Ok(p) => p,
        Err(_) => {
            bump(Counter::FieldUnreadable);
            core::ptr::null()
        }
    }
}

/// Puts an interpreter level's own path in the event in place of the name asked for.
#[inline(always)]
fn show_interp(ev: &mut agent_common::Event, interp: *const u8) {
    // SAFETY: the event lives in our scratch memory.
    unsafe { core::ptr::write_bytes(ev.path.as_mut_ptr(), 0, PATH_CAP) };
    ev.flags |= event_flags::INTERP;
    if interp.is_null() {
        return;
    }
    // SAFETY: reads at most PATH_CAP bytes into the event; the helper checks the source.
    if unsafe { bpf_probe_read_kernel_str_bytes(interp, &mut ev.path) }.is_err() {
        bump(Counter::PathUnreadable);
    }
}

/// What the exec's rule makes of it (see [`pause::by_rule`]), reported with the scratch event.
#[inline(always)]
fn by_rule(subject: &Subject, s: &mut Scratch, rule_id: u32, action: u8, how: Hold) -> Verdict {
    pause::by_rule(
        subject,
        &mut s.event,
        Op::Exec,
        rule_id,
        action,
        &mut None,
        how,
    )
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
    s.path_fingerprint = fingerprint::path(&fp_key::get(), &s.exact.path, len);
    len
}

/// The rule for the exec: the stricter of what the file's identity and what its path get, and,
/// where the workload decides programs by content, what the file's content got when the agent
/// hashed it. By path: a relative path is held for the agent to resolve, then the exact map,
/// then the longest prefix, then the workload's default. The last element says what the content
/// cache said ([`Content`]): unless something stricter refuses the exec, anything but
/// [`Content::Known`] is held for the agent to hash the file.
#[inline(always)]
fn lookup(
    s: &mut Scratch,
    watch: Watch,
    len: usize,
    truncated: bool,
    file: FileId,
) -> (u32, u8, Content) {
    // The file's identity and its path are both looked up and the stricter rule applies: the
    // identity catches every other name of a program a rule names, and never loosens what the
    // path says (on the tracepoint backend the image is a script's interpreter, while the path
    // is the script's).
    let workload = watch.workload;
    let (dev, ino, ctime, inode) = file;
    // Action 0 (no such action): no entry. Not an `Option`, whose undefined payload the
    // compiler may spill where the verifier sees it.
    let mut by_file = (0u32, 0u8);
    let key = ExecFileKey { workload, dev, ino };
    if ino != 0 {
        if let Some(r) = EXEC_FILES.get_ptr(&key) {
            // SAFETY: map value pointer from lookup.
            let r = unsafe { *r };
            by_file = (r.rule_id, r.action);
        }
    }
    let by_name = by_path(s, workload, watch.default_action, len, truncated);
    // On a tie the file's rule: a name no rule gives a stricter action to (the workload's
    // default, a loose prefix) must not hide what the file's own rules say (an exec held for
    // its arguments, whose rules may deny it).
    let mut best = if by_file.1 >= by_name.1 {
        by_file
    } else {
        by_name
    };
    let mut content = Content::Known;
    if watch.flags & watch_flags::CONTENT != 0 {
        content = Content::Changed;
        if ino != 0 && ctime != 0 {
            if let Some(v) = CONTENT.get_ptr(&key) {
                // SAFETY: map value pointer from lookup.
                let v = unsafe { *v };
                if v.ctime_ns == ctime && v.inode == inode {
                    if v.action == Action::Approve as u8 {
                        // Unchanged, but a reviewer must see what it is: the agent hashes it
                        // again for the request.
                        content = Content::Ask;
                    } else {
                        content = Content::Known;
                        if v.action > best.1 {
                            best = (v.rule_id, v.action);
                        }
                    }
                }
            }
        } else if ino != 0 {
            // Without a change time the kernel cannot tell an unchanged file: every exec is
            // hashed, and an approval is used as given.
            content = Content::Ask;
        }
    }
    if content != Content::Known && best.1 != Action::Deny as u8 {
        return (RESOLVE_RULE, Action::Approve as u8, content);
    }
    (best.0, best.1, Content::Known)
}

/// What the content cache says about an exec's file.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Content {
    /// Nothing to hash: the workload does not decide by content, or the cached verdict holds.
    Known,
    /// Unchanged since it was hashed, but its verdict asks a reviewer, who sees it hashed.
    Ask,
    /// Never hashed, evicted, or changed since it was hashed (or its identity is unknown).
    Changed,
}

/// The rule for the path alone.
#[inline(always)]
fn by_path(s: &mut Scratch, workload: u32, default: u8, len: usize, truncated: bool) -> (u32, u8) {
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

/// Starts the exec event from the scratch path; returns the path's fingerprint (taken when
/// [`read_path`] read it).
#[inline(always)]
fn start_event(s: &mut Scratch, truncated: bool, flags: u8, file: FileId) -> u64 {
    let ev = &mut s.event;
    report::clear(ev);
    ev.op = Op::Exec as u8;
    ev.path = s.exact.path;
    ev.flags = flags;
    if truncated {
        ev.flags |= event_flags::PATH_TRUNCATED;
    }
    let target = s.path_fingerprint;
    ev.target = target;
    // The path asked for and the file of this level, kept in the entry: a held exec that
    // restarts is recognised by them even after the agent pointed `target` at the program a
    // relative path resolved to.
    ev.addr[..8].copy_from_slice(&target.to_ne_bytes());
    ev.addr[8..].copy_from_slice(&file.1.to_ne_bytes());
    ev.file_dev = file.0;
    ev.file_ctime_ns = file.2;
    ev.file_inode = file.3;
    target
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
        || p.flags & pending_flags::RESTARTS != 0
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
        flags: 0,
        unresolved: 0,
        _pad: 0,
    };
    let subject = Subject::current(p.cgroup_id, watch);
    let ev = &mut s.event;
    report::clear(ev);
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
    let how = Hold::StopNow {
        restarts: false,
        first_level: true,
    };
    if pause::hold_again(&subject, ev, rule_id, how) == Verdict::Deny {
        pause::kill_current();
    }
}

/// Raw `sys_enter` (tracepoint backend, behind `restop`: a SIGCONT that lands between the
/// renewed stop being queued and taken flushes it): the same case. Stopping
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
