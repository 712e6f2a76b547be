//! Holding an operation until a decision arrives, and everything around it: grants, the fail
//! mode, re-entry after a resume, and clean-up when the task exits.

use agent_common::{
    pending_flags, pending_state, scope, Action, Event, FailMode, GrantKey, Op, Outcome, Pending,
    Watch,
};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_send_signal_thread},
};
use aya_log_ebpf::error;

use crate::counters::{bump, Counter};
use crate::maps::{GRANTS, GRANT_CONNS, PENDING};
use crate::{report, scope as who};

const SIGKILL: u32 = 9;
pub const SIGSTOP: u32 = 19;
const UNLIMITED: u32 = u32::MAX;

/// How a hook holds an operation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Stop the task from this program and tell the agent now. Program types that may send
    /// signals on every supported kernel (tracepoints, LSM). `restarts`: the held system call
    /// fails with `-ERESTARTNOINTR` and runs again after the decision (LSM exec), rather than
    /// having already happened (an exec seen at `sched_process_exec`). `first_level`: an exec
    /// held at the file its caller named, not at an interpreter (see
    /// [`FIRST_LEVEL`](agent_common::pending_flags::FIRST_LEVEL)).
    StopNow { restarts: bool, first_level: bool },
    /// Only record the entry and ask for a restart; the system call's exit stops the task and
    /// tells the agent. Cgroup socket hooks, which may not send signals before Linux 6.13.
    AtSyscallExit,
}

/// What the calling hook must do with the operation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
    /// The task has been told to stop; a network hook must also ask for a restart.
    Held,
}

/// Everything a decision needs to know about the calling task.
pub struct Subject {
    pub cgroup: u64,
    pub watch: Watch,
    pub tid: u32,
    pub tgid: u32,
    pub now: u64,
}

impl Subject {
    #[inline(always)]
    pub fn current(cgroup: u64, watch: Watch) -> Self {
        let pid_tgid = bpf_get_current_pid_tgid();
        Self {
            cgroup,
            watch,
            tid: pid_tgid as u32,
            tgid: (pid_tgid >> 32) as u32,
            now: who::now(),
        }
    }

    #[inline(always)]
    pub fn report(&self, ev: &mut Event, outcome: Outcome, action: u8, rule_id: u32) {
        report::stamp(ev, self.cgroup, self.watch.workload, self.now);
        report::send(ev, outcome, action, rule_id);
    }
}

/// Reports a refusal of the current task's operation that holds nothing (a mapping, a socket,
/// a debugger): a cleared event, filled in by `fill`, with `action` and `rule_id`.
#[inline(always)]
pub fn report_refusal(
    cgroup: u64,
    watch: Watch,
    action: u8,
    rule_id: u32,
    fill: impl FnOnce(&mut Event),
) {
    let Some(s) = crate::scratch::get() else {
        return;
    };
    let ev: &mut Event = &mut s.event;
    report::clear(ev);
    fill(ev);
    Subject::current(cgroup, watch).report(ev, Outcome::Denied, action, rule_id);
}

/// Sends a signal to the calling thread; `false` if the kernel refused.
#[inline(always)]
pub fn signal(sig: u32) -> bool {
    // SAFETY: helper with a plain integer argument.
    unsafe { bpf_send_signal_thread(sig) >= 0 }
}

#[inline(always)]
pub fn kill_current() {
    if !signal(SIGKILL) {
        bump(Counter::SignalFailed);
    }
}

/// The standing decision for this operation and the grant that gave it, if a grant covers it.
/// Narrow scopes are looked at first; an expired or used-up grant is removed and ignored.
#[inline(always)]
fn granted(s: &Subject, rule_id: u32, target: u64) -> Option<(u8, GrantKey)> {
    let subjects = [
        (scope::PROCESS, s.tgid as u64),
        (scope::WORKLOAD, s.watch.workload as u64),
        (scope::HOST, 0u64),
    ];
    let mut i = 0;
    while i < subjects.len() {
        let (sc, subject) = subjects[i];
        i += 1;
        let key = GrantKey {
            scope: sc,
            _pad: [0; 3],
            rule_id,
            subject,
            target,
        };
        let Some(g) = GRANTS.get_ptr_mut(&key) else {
            continue;
        };
        // SAFETY: map value pointer from lookup; fields are plain integers.
        let (action, expires) = unsafe { ((*g).action, (*g).expires_ns) };
        if expires != 0 && s.now >= expires {
            let _ = GRANTS.remove(&key);
            bump(Counter::GrantExpired);
            continue;
        }
        // SAFETY: as above; the field is 4-byte aligned inside the map value.
        if unsafe { take_use(core::ptr::addr_of_mut!((*g).uses_left)) } {
            return Some((action, key));
        }
        let _ = GRANTS.remove(&key);
    }
    None
}

/// The allowing grant that covers this operation, looked up without taking a use: the grant a
/// reviewer wrote together with the verdict of a held operation.
#[inline(always)]
fn covering_grant(s: &Subject, rule_id: u32, target: u64) -> Option<GrantKey> {
    let subjects = [
        (scope::PROCESS, s.tgid as u64),
        (scope::WORKLOAD, s.watch.workload as u64),
        (scope::HOST, 0u64),
    ];
    let mut i = 0;
    while i < subjects.len() {
        let (sc, subject) = subjects[i];
        i += 1;
        let key = GrantKey {
            scope: sc,
            _pad: [0; 3],
            rule_id,
            subject,
            target,
        };
        if let Some(g) = GRANTS.get_ptr(&key) {
            // SAFETY: map value pointer from lookup; plain integer field.
            if unsafe { (*g).action } == Action::Allow as u8 {
                return Some(key);
            }
        }
    }
    None
}

/// Records that the socket `cookie` was let through by the grant `key`, so that revoking the
/// grant can close it.
#[inline(always)]
pub fn record_conn(cookie: u64, key: &GrantKey) {
    if GRANT_CONNS.insert(&cookie, key, 0).is_err() {
        bump(Counter::ConnUntracked);
    }
}

/// Takes one use of a counted grant; `false` when none is left. The compare-and-swap keeps two
/// CPUs from spending the same last use.
///
/// The BPF target offers no `AtomicU32` (its spec has no compare-and-swap), but the kernel does
/// (BPF_CMPXCHG, cpu v3), so the intrinsic is used directly.
///
/// # Safety
/// `uses` points into a live map value.
#[inline(always)]
unsafe fn take_use(uses: *mut u32) -> bool {
    use core::intrinsics::{atomic_cxchg, AtomicOrdering::Relaxed};
    let mut tries = 0;
    while tries < 8 {
        // SAFETY: caller's contract; a racing writer is what the compare-and-swap resolves.
        let cur = unsafe { core::ptr::read_volatile(uses) };
        if cur == UNLIMITED {
            return true;
        }
        if cur == 0 {
            return false;
        }
        // SAFETY: as above.
        let (_, swapped) =
            unsafe { atomic_cxchg::<u32, { Relaxed }, { Relaxed }>(uses, cur, cur - 1) };
        if swapped {
            return true;
        }
        tries += 1;
    }
    // Heavy contention on the same grant: refusing this use is the safe answer.
    false
}

/// The fail-mode verdict, recorded.
#[inline(always)]
pub fn fail(s: &Subject, ev: &mut Event, mode: FailMode, action: u8, rule_id: u32) -> Verdict {
    // An exec held for its arguments where a rule denies some: only the agent could tell them
    // apart, so with nobody to decide it is refused, whatever the fail mode.
    let mode = if rule_id == agent_common::ARGS_DENY_RULE {
        FailMode::Deny
    } else {
        mode
    };
    match mode {
        FailMode::AllowAndRecord => {
            s.report(ev, Outcome::FailOpen, action, rule_id);
            Verdict::Allow
        }
        FailMode::Deny => {
            s.report(ev, Outcome::FailClosed, action, rule_id);
            Verdict::Deny
        }
    }
}

/// io_uring workers (`iou-wrk-*`) and SQPOLL threads (`iou-sqp-*`) run system calls on behalf of
/// a process and cannot be stopped and restarted the way a user task can.
#[inline(always)]
fn unpausable(comm: &[u8; 16]) -> bool {
    comm[0] == b'i' && comm[1] == b'o' && comm[2] == b'u' && comm[3] == b'-'
}

/// What a rule's action (or the workload's default) makes of an operation: let through,
/// recorded, refused, or handed to [`request`] for approval. The one place every hook turns an
/// action into a verdict.
#[inline(always)]
pub fn by_rule(
    s: &Subject,
    ev: &mut Event,
    op: Op,
    rule_id: u32,
    action: u8,
    allowed_by: &mut Option<GrantKey>,
    how: Hold,
) -> Verdict {
    if action == Action::Allow as u8 {
        Verdict::Allow
    } else if action == Action::Audit as u8 {
        bump(Counter::Audited);
        s.report(ev, Outcome::Audited, action, rule_id);
        Verdict::Allow
    } else if action == Action::Approve as u8 {
        let target = ev.target;
        request(s, ev, op, rule_id, target, allowed_by, how)
    } else {
        bump(Counter::Denied);
        s.report(ev, Outcome::Denied, action, rule_id);
        Verdict::Deny
    }
}

/// An operation that needs approval: a grant, the fail mode, or a pause. `allowed_by` receives
/// the grant that let it through, if one did.
#[inline(always)]
pub fn request(
    s: &Subject,
    ev: &mut Event,
    op: Op,
    rule_id: u32,
    target: u64,
    allowed_by: &mut Option<GrantKey>,
    how: Hold,
) -> Verdict {
    let approve = Action::Approve as u8;
    ev.target = target;
    if let Some((action, key)) = granted(s, rule_id, target) {
        bump(Counter::Granted);
        if action == Action::Allow as u8 {
            *allowed_by = Some(key);
            s.report(ev, Outcome::Granted, approve, rule_id);
            return Verdict::Allow;
        }
        s.report(ev, Outcome::GrantDenied, approve, rule_id);
        return Verdict::Deny;
    }
    if let Some(mode) = who::stale(s.now) {
        return fail(s, ev, mode, approve, rule_id);
    }
    report::stamp(ev, s.cgroup, s.watch.workload, s.now);
    if unpausable(&ev.comm) {
        bump(Counter::Unpausable);
        report::send(ev, Outcome::Unpausable, approve, rule_id);
        return Verdict::Deny;
    }
    let flags = match how {
        Hold::StopNow {
            restarts,
            first_level,
        } => {
            let mut f = pending_flags::ANNOUNCED;
            if restarts {
                f |= pending_flags::RESTARTS;
            }
            if first_level {
                f |= pending_flags::FIRST_LEVEL;
            }
            f
        }
        Hold::AtSyscallExit => pending_flags::RESTARTS,
    };
    let entry = Pending {
        created_ns: s.now,
        target,
        cgroup_id: s.cgroup,
        tgid: s.tgid,
        rule_id,
        workload: s.watch.workload,
        state: pending_state::WAITING,
        op: op as u8,
        flags,
        _pad: 0,
        addr: ev.addr,
        port: ev.port,
        family: ev.family,
        proto: ev.proto,
        file_dev: ev.file_dev,
    };
    if PENDING.insert(&s.tid, &entry, BPF_NOEXIST as u64).is_err() {
        bump(Counter::PendingFull);
        let mode = who::fail_mode();
        return fail(s, ev, mode, approve, rule_id);
    }
    if let Hold::AtSyscallExit = how {
        // The stop and the event come from the system call's exit (`stop::on_syscall_exit`).
        return Verdict::Held;
    }
    if !signal(SIGSTOP) {
        let _ = PENDING.remove(&s.tid);
        bump(Counter::SignalFailed);
        report::send(ev, Outcome::Unpausable, approve, rule_id);
        return Verdict::Deny;
    }
    bump(Counter::Paused);
    ev.created_ns = s.now;
    report::send(ev, Outcome::Paused, approve, rule_id);
    Verdict::Held
}

/// A thread that already has a pending entry came back to a network hook: a decision is there
/// to consume, or it must stop again. `None` when the thread has nothing pending for this
/// target. (A held exec comes back through `exec::on_bprm_check`, which knows its levels.)
/// An allowed operation's grant, when the reviewer granted one with the verdict, goes to
/// `allowed_by`.
#[inline(always)]
pub fn resume(
    s: &Subject,
    ev: &mut Event,
    op: Op,
    target: u64,
    allowed_by: &mut Option<GrantKey>,
    how: Hold,
) -> Option<Verdict> {
    let p = PENDING.get_ptr(&s.tid)?;
    // SAFETY: map value pointer from lookup; `Pending` is plain data.
    let p = unsafe { *p };
    if p.op != op as u8 || p.target != target {
        // The held operation was abandoned (the thread is doing something else now); the agent
        // sees the entry go and cancels its request.
        bump(Counter::TargetMismatch);
        let _ = PENDING.remove(&s.tid);
        return None;
    }
    match p.state {
        pending_state::ALLOW => {
            let _ = PENDING.remove(&s.tid);
            *allowed_by = covering_grant(s, p.rule_id, p.target);
            Some(Verdict::Allow)
        }
        pending_state::DENY => {
            let _ = PENDING.remove(&s.tid);
            Some(Verdict::Deny)
        }
        _ => Some(hold_again(s, ev, p.rule_id, how)),
    }
}

/// A still-waiting operation ran again (somebody else sent SIGCONT): stop it again, unless the
/// agent is gone, in which case the fail mode decides.
#[inline(always)]
pub fn hold_again(s: &Subject, ev: &mut Event, rule_id: u32, how: Hold) -> Verdict {
    if let Some(mode) = who::stale(s.now) {
        let _ = PENDING.remove(&s.tid);
        ev.flags |= agent_common::event_flags::REENTERED;
        return fail(s, ev, mode, Action::Approve as u8, rule_id);
    }
    if let Hold::AtSyscallExit = how {
        // Stopped again at the system call's exit.
        return Verdict::Held;
    }
    if signal(SIGSTOP) {
        bump(Counter::Repaused);
        Verdict::Held
    } else {
        let _ = PENDING.remove(&s.tid);
        bump(Counter::SignalFailed);
        error!(&(), "latch: cannot stop tid {} again", s.tid);
        Verdict::Deny
    }
}

/// A held operation ran on without its decision and cannot be stopped before its system call
/// takes effect (a held exec's new image, resumed by someone other than the agent). With the
/// agent gone, the fail mode decides; otherwise it is refused, counted and recorded, and its
/// entry stays for the exit hook to report the request cancelled.
#[inline(always)]
pub fn resumed_without_decision(s: &Subject, ev: &mut Event, rule_id: u32) -> Verdict {
    ev.flags |= agent_common::event_flags::REENTERED;
    if let Some(mode) = who::stale(s.now) {
        let _ = PENDING.remove(&s.tid);
        return fail(s, ev, mode, Action::Approve as u8, rule_id);
    }
    bump(Counter::ResumeKilled);
    s.report(ev, Outcome::FailClosed, Action::Approve as u8, rule_id);
    Verdict::Deny
}

/// `sched_process_exit`: a thread that goes away takes its pending entry with it.
#[inline(always)]
pub fn on_exit() {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(p) = PENDING.get_ptr(&tid) else {
        return;
    };
    // SAFETY: map value pointer from lookup.
    let p = unsafe { *p };
    let _ = PENDING.remove(&tid);
    bump(Counter::CancelledOnExit);
    let Some(sc) = crate::scratch::get() else {
        return;
    };
    let ev = &mut sc.event;
    report::clear(ev);
    ev.op = p.op;
    ev.target = p.target;
    ev.created_ns = p.created_ns;
    report::stamp(ev, p.cgroup_id, p.workload, who::now());
    report::send(ev, Outcome::Cancelled, Action::Approve as u8, p.rule_id);
}
