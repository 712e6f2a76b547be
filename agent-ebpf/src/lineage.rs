//! Once watched, always watched: a thread that was in a watched cgroup keeps its watch, with its
//! descendants, wherever it moves (another cgroup's `cgroup.procs`, `clone3(CLONE_INTO_CGROUP)`).
//! Kept by thread id in the pinned `LINEAGE` map: added at fork (from a watched parent) and when
//! a thread moves into a watched cgroup, removed when the thread exits (a leader's when the last
//! thread of its process exits). The agent seeds it with the threads already in watched cgroups
//! when it starts watching them.

use agent_common::{Action, Event, Lineage, Op, Outcome, Watch, MAX_CGROUP_DEPTH};
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_probe_read_kernel,
    },
    programs::{RawTracePointContext, TracePointContext},
};

use crate::counters::{bump, Counter};
use crate::identity::ptr_at;
use crate::kconf;
use crate::maps::{LINEAGE, WATCHED};
use crate::{report, scope};

#[inline(always)]
fn remember(tid: u32, cgroup: u64, watch: Watch) {
    let entry = Lineage {
        cgroup_id: cgroup,
        watch,
    };
    if LINEAGE.insert(&tid, &entry, 0).is_err() {
        bump(Counter::LineageFull);
    }
}

/// `sched_process_fork` (runs in the parent): a child of a watched thread is watched.
pub fn on_fork(ctx: &TracePointContext) {
    let Some((cgroup, watch)) = scope::origin() else {
        return;
    };
    // SAFETY: reading the record at the offset the agent found in this kernel's format file.
    let child: i32 = match unsafe { ctx.read_at(kconf::fork_child_offset()) } {
        Ok(v) => v,
        Err(_) => {
            bump(Counter::FieldUnreadable);
            return;
        }
    };
    remember(child as u32, cgroup, watch);
}

/// `sched_process_fork` as a raw tracepoint (`parent`, `child`), where BTF gives a cgroup's
/// ancestors: as [`on_fork`], and a child that starts in another cgroup than its parent's
/// (`clone3(CLONE_INTO_CGROUP)`) is decided as a move there: under a watched cgroup it takes
/// that cgroup's lineage (also when an unwatched supervisor started it there), elsewhere it
/// keeps its parent's, and its start there is counted and told as a move.
pub fn on_fork_raw(ctx: &RawTracePointContext) {
    let Some(o) = kconf::ancestry() else {
        return;
    };
    let child = ctx.arg::<u64>(1) as *const u8;
    let cgrp = ptr_at(ptr_at(child, o.task_cgroups), o.css_set_dfl);
    // SAFETY: the helper checks the address; offsets come from this kernel's BTF.
    let dst = unsafe {
        bpf_probe_read_kernel(ptr_at(cgrp, o.cgrp_kn).wrapping_add(o.kn_id) as *const u64)
    };
    // SAFETY: helper without arguments.
    let here = unsafe { bpf_get_current_cgroup_id() };
    let elsewhere = !matches!(dst, Ok(id) if id == here);
    let parent = scope::origin();
    if parent.is_none() && !elsewhere {
        // The common case on a host: an unwatched process forks where it is.
        return;
    }
    // SAFETY: as above.
    let Ok(pid) = (unsafe { bpf_probe_read_kernel(child.wrapping_add(o.task_pid) as *const i32) })
    else {
        bump(Counter::FieldUnreadable);
        return;
    };
    let tid = pid as u32;
    if let Some((cgroup, watch)) = parent {
        remember(tid, cgroup, watch);
    }
    if !elsewhere {
        return;
    }
    match walk(cgrp, &o) {
        Some((dst, under)) => moved(tid, dst, under),
        None => bump(Counter::FieldUnreadable),
    }
}

/// The id of cgroup `cgrp` (v2) and the deepest watched cgroup at or above it, if any; `None`
/// when unreadable.
#[inline(always)]
pub fn walk(cgrp: *const u8, o: &kconf::Ancestry) -> Option<(u64, Option<(u64, Watch)>)> {
    let mut kn = ptr_at(cgrp, o.cgrp_kn);
    let mut dst = 0u64;
    let mut level = 0;
    while level < MAX_CGROUP_DEPTH && !kn.is_null() {
        // SAFETY: the helper checks the address; offsets come from this kernel's BTF.
        let id = unsafe { bpf_probe_read_kernel(kn.wrapping_add(o.kn_id) as *const u64) }.ok()?;
        if level == 0 {
            dst = id;
        }
        if let Some(w) = WATCHED.get_ptr(&id) {
            // SAFETY: map value pointer from lookup. The first found is the deepest.
            return Some((dst, Some((id, unsafe { *w }))));
        }
        kn = ptr_at(kn, o.kn_parent);
        level += 1;
    }
    if dst == 0 {
        return None;
    }
    Some((dst, None))
}

/// `cgroup_attach_task`: a thread moves to another cgroup (of any hierarchy). Into a watched
/// cgroup of the unified hierarchy, it gains a lineage; out of watched cgroups, it keeps the one
/// it has, and the move is counted. The tracepoint's record names the destination only, so a
/// cgroup below a watched one is "out" here: [`on_attach_raw`] replaces this program where the
/// kernel's BTF lets it walk the destination's ancestors.
pub fn on_attach(ctx: &TracePointContext) {
    // SAFETY: reading the record at offsets the agent found in this kernel's format file.
    let (root, dst, pid): (i32, u64, i32) = match unsafe {
        (
            ctx.read_at::<i32>(kconf::attach_root_offset()),
            ctx.read_at::<u64>(kconf::attach_dst_offset()),
            ctx.read_at::<i32>(kconf::attach_pid_offset()),
        )
    } {
        (Ok(r), Ok(d), Ok(p)) => (r, d, p),
        _ => {
            bump(Counter::FieldUnreadable);
            return;
        }
    };
    // Hierarchy 0 is cgroup v2, whose ids the watch map holds; v1 ids are another space.
    if root != 0 {
        return;
    }
    let watch = WATCHED.get_ptr(&dst).map(|w| {
        // SAFETY: map value pointer from lookup.
        (dst, unsafe { *w })
    });
    moved(pid as u32, dst, watch);
}

/// `cgroup_attach_task` as a raw tracepoint (`dst_cgrp`, `path`, `task`, `threadgroup`): the
/// destination's ancestors are read from the cgroup itself, so a thread moved into a cgroup
/// below a watched one (a supervisor placing a process it started outside into a child of a
/// watched slice) gains the lineage of the deepest watched ancestor, as a thread forked there
/// does, and keeps it when it moves out again.
pub fn on_attach_raw(ctx: &RawTracePointContext) {
    let Some(o) = kconf::ancestry() else {
        return;
    };
    let cgrp = ctx.arg::<u64>(0) as *const u8;
    let task = ctx.arg::<u64>(2) as *const u8;
    let root = ptr_at(cgrp, o.cgrp_root);
    // SAFETY: the helper checks the addresses; offsets come from this kernel's BTF.
    let (hierarchy, pid) = match unsafe {
        (
            bpf_probe_read_kernel(root.wrapping_add(o.root_hierarchy) as *const i32),
            bpf_probe_read_kernel(task.wrapping_add(o.task_pid) as *const i32),
        )
    } {
        (Ok(h), Ok(p)) if !root.is_null() => (h, p),
        _ => {
            bump(Counter::FieldUnreadable);
            return;
        }
    };
    if hierarchy != 0 {
        return;
    }
    let Some((dst, watch)) = walk(cgrp, &o) else {
        bump(Counter::FieldUnreadable);
        return;
    };
    moved(pid as u32, dst, watch);
}

/// The outcome of a move of `tid` to `dst`: under the watched cgroup `watch` names, a lineage of
/// that cgroup; elsewhere, the lineage it has (if any) is kept, and the move counted and told.
#[inline(always)]
fn moved(tid: u32, dst: u64, watch: Option<(u64, Watch)>) {
    if let Some((cgroup, w)) = watch {
        remember(tid, cgroup, w);
        return;
    }
    let Some(l) = LINEAGE.get_ptr(&tid) else {
        return;
    };
    // SAFETY: map value pointer from lookup; plain data.
    let l = unsafe { *l };
    bump(Counter::LeftWatched);
    report_move(tid, dst, l);
}

/// The move as an event, so that it reaches the journal and central's audit trail. The task
/// running this is the one that wrote the thread into the other cgroup, often not the thread.
#[inline(always)]
fn report_move(tid: u32, dst: u64, l: Lineage) {
    let Some(s) = crate::scratch::get() else {
        return;
    };
    let ev: &mut Event = &mut s.event;
    report::clear(ev);
    ev.op = Op::Move as u8;
    ev.target = dst;
    report::stamp(ev, l.cgroup_id, l.watch.workload, scope::now());
    if ev.pid != tid {
        ev.comm = [0; 16];
    }
    ev.pid = tid;
    ev.tgid = tid;
    report::send(ev, Outcome::Audited, Action::Audit as u8, 0);
}

/// `sched_process_exec`: a thread other than the leader that execs takes over the leader's id
/// (the leader's exit has just removed that id's entry); its lineage moves with it.
pub fn on_exec(ctx: &TracePointContext) -> Option<u32> {
    // SAFETY: reading the record at offsets the agent found in this kernel's format file.
    let (pid, old): (i32, i32) = match unsafe {
        (
            ctx.read_at::<i32>(kconf::exec_pid_offset()),
            ctx.read_at::<i32>(kconf::exec_old_pid_offset()),
        )
    } {
        (Ok(p), Ok(o)) => (p, o),
        _ => {
            bump(Counter::FieldUnreadable);
            return None;
        }
    };
    let (pid, old) = (pid as u32, old as u32);
    if pid != old {
        if let Some(l) = LINEAGE.get_ptr(&old) {
            // SAFETY: map value pointer from lookup.
            let l = unsafe { *l };
            if LINEAGE.insert(&pid, &l, 0).is_err() {
                bump(Counter::LineageFull);
            }
            let _ = LINEAGE.remove(&old);
        }
    }
    Some(old)
}

/// `sched_process_exit`: the thread's lineage goes with it, except a leader's while other
/// threads of its process live: a move records the leader alone, so its entry is theirs too
/// (a leader may end by itself, `pthread_exit`). The last thread out takes the leader's.
#[inline(always)]
pub fn on_exit() {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tid, tgid) = (pid_tgid as u32, (pid_tgid >> 32) as u32);
    match threads_running() {
        Some(n) if n > 0 && tid == tgid => return,
        Some(0) if tid != tgid => {
            let _ = LINEAGE.remove(&tgid);
        }
        _ => {}
    }
    let _ = LINEAGE.remove(&tid);
}

/// The threads of the current process not yet exiting (`signal_struct.live`, which the kernel
/// decrements before this tracepoint), or `None` where BTF did not give the offsets.
#[inline(always)]
fn threads_running() -> Option<i32> {
    let o = kconf::ancestry()?;
    // SAFETY: the current task is valid while its program runs.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let signal = ptr_at(task, o.task_signal);
    if signal.is_null() {
        bump(Counter::FieldUnreadable);
        return None;
    }
    // SAFETY: the helper checks the address; offsets come from this kernel's BTF.
    match unsafe { bpf_probe_read_kernel(signal.wrapping_add(o.signal_live) as *const i32) } {
        Ok(n) => Some(n),
        Err(_) => {
            bump(Counter::FieldUnreadable);
            None
        }
    }
}
