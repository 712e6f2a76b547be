//! Who is inspected (watched cgroups) and whether anyone is there to decide (heartbeat).

use agent_common::{FailMode, Lineage, Watch, MAX_CGROUP_DEPTH};
use aya_ebpf::helpers::{
    bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_pid_tgid,
    bpf_ktime_get_ns,
};

use crate::counters::{bump, Counter};
use crate::maps::{HEARTBEAT, LINEAGE, WATCHED};

/// The calling task's cgroup id and its workload, if the cgroup or an ancestor is watched. The
/// deepest watched ancestor wins, so a child cgroup can belong to a narrower workload. A task
/// outside every watched cgroup that left one (or descends from one that did) keeps the watch
/// of the cgroup it came from.
#[inline(always)]
pub fn watched() -> Option<(u64, Watch)> {
    match by_cgroup() {
        Some(w) => Some(w),
        None => by_lineage(),
    }
}

/// The watch a thread carries from a watched cgroup it left, if any: its own entry, else its
/// process's (a move records only the thread-group leader, and threads that existed before the
/// move have no entry of their own).
#[inline(always)]
pub fn by_lineage() -> Option<(u64, Watch)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tid, tgid) = (pid_tgid as u32, (pid_tgid >> 32) as u32);
    let l = match LINEAGE.get_ptr(&tid) {
        Some(l) => l,
        None => LINEAGE.get_ptr(&tgid)?,
    };
    // SAFETY: map value pointer from lookup; plain data.
    Some(lineage_watch(unsafe { *l }))
}

/// A lineage's cgroup and its watch as it is now (rules reloaded since), or the copy taken when
/// the lineage was recorded if that cgroup is no longer watched (removed after the thread left).
#[inline(always)]
pub fn lineage_watch(l: Lineage) -> (u64, Watch) {
    let watch = match WATCHED.get_ptr(&l.cgroup_id) {
        // SAFETY: map value pointer from lookup.
        Some(w) => unsafe { *w },
        None => l.watch,
    };
    (l.cgroup_id, watch)
}

/// The calling task's cgroup id and its workload, if the cgroup or an ancestor is watched
/// (lineage not looked at).
#[inline(always)]
pub fn by_cgroup() -> Option<(u64, Watch)> {
    by_cgroup_from().map(|(cgroup, _, w)| (cgroup, w))
}

/// The watched cgroup whose rules the calling task is under (the deepest watched one at or
/// above its own, else the one its lineage came from) and its watch: what a child it starts,
/// or a move, keeps as a lineage. Naming the watched cgroup itself, not the task's own (which
/// may be a child cgroup of it), keeps the lineage current when rules are reloaded.
#[inline(always)]
pub fn origin() -> Option<(u64, Watch)> {
    match by_cgroup_from() {
        Some((_, from, w)) => Some((from, w)),
        None => by_lineage(),
    }
}

/// (the task's own cgroup, the deepest watched cgroup at or above it, its watch).
#[inline(always)]
fn by_cgroup_from() -> Option<(u64, u64, Watch)> {
    // SAFETY: helpers without pointer arguments.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    if let Some(w) = WATCHED.get_ptr(cgroup) {
        // SAFETY: a map value pointer returned by lookup.
        return Some((cgroup, cgroup, unsafe { *w }));
    }
    let mut found = None;
    let mut level = 1;
    while level < MAX_CGROUP_DEPTH {
        // SAFETY: as above.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if id == 0 || id == cgroup {
            break;
        }
        if let Some(w) = WATCHED.get_ptr(id) {
            // SAFETY: as above.
            found = Some((id, unsafe { *w }));
        }
        level += 1;
    }
    found.map(|(from, w)| (cgroup, from, w))
}

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// The configured fail mode (deny when the heartbeat entry is missing).
#[inline(always)]
pub fn fail_mode() -> FailMode {
    match HEARTBEAT.get(0) {
        Some(hb) if hb.fail_mode == FailMode::AllowAndRecord as u8 => FailMode::AllowAndRecord,
        _ => FailMode::Deny,
    }
}

/// `None` while the agent's heartbeat is fresh; otherwise the fail mode to apply.
#[inline(always)]
pub fn stale(now: u64) -> Option<FailMode> {
    let Some(hb) = HEARTBEAT.get(0) else {
        bump(Counter::HeartbeatMissing);
        return Some(FailMode::Deny);
    };
    let fresh = hb.beat_ns != 0 && now.saturating_sub(hb.beat_ns) <= hb.stale_after_ns;
    if fresh {
        return None;
    }
    bump(Counter::HeartbeatStale);
    Some(if hb.fail_mode == FailMode::AllowAndRecord as u8 {
        FailMode::AllowAndRecord
    } else {
        FailMode::Deny
    })
}
