//! Once watched, always watched: a thread that was in a watched cgroup keeps its watch, with its
//! descendants, wherever it moves (another cgroup's `cgroup.procs`, `clone3(CLONE_INTO_CGROUP)`).
//! Kept by thread id in the pinned `LINEAGE` map: added at fork (from a watched parent) and when
//! a thread moves into a watched cgroup, removed when the thread exits. The agent seeds it with
//! the threads already in watched cgroups when it starts watching them.

use agent_common::{Action, Event, Lineage, Op, Outcome, Watch};
use aya_ebpf::{helpers::bpf_get_current_pid_tgid, programs::TracePointContext};

use crate::counters::{bump, Counter};
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
    let Some((cgroup, watch)) = scope::watched() else {
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

/// `cgroup_attach_task`: a thread moves to another cgroup (of any hierarchy). Into a watched
/// cgroup of the unified hierarchy, it gains a lineage; out of watched cgroups, it keeps the one
/// it has, and the move is counted.
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
    let tid = pid as u32;
    if let Some(w) = WATCHED.get_ptr(&dst) {
        // SAFETY: map value pointer from lookup.
        let w = unsafe { *w };
        remember(tid, dst, w);
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

/// `sched_process_exit`: the thread's lineage goes with it.
#[inline(always)]
pub fn on_exit() {
    let tid = bpf_get_current_pid_tgid() as u32;
    let _ = LINEAGE.remove(&tid);
}
