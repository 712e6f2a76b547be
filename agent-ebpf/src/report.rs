//! Writing events to the ring buffer.

use agent_common::{Event, Outcome};
use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid};

use crate::counters::{bump, Counter};
use crate::maps::EVENTS;

/// Zeroes an event in place (it lives in per-CPU scratch and holds the previous run's bytes).
#[inline(always)]
pub fn clear(ev: &mut Event) {
    // SAFETY: `Event` is plain data; all-zero is a valid value.
    unsafe { core::ptr::write_bytes(ev as *mut Event, 0, 1) };
}

/// Fills the parts of an event that every event has; the caller set the operation's own fields.
#[inline(always)]
pub fn stamp(ev: &mut Event, cgroup: u64, workload: u32, now: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    ev.ts_ns = now;
    ev.cgroup_id = cgroup;
    ev.pid = pid_tgid as u32;
    ev.tgid = (pid_tgid >> 32) as u32;
    ev.ppid = 0;
    ev.uid = uid_gid as u32;
    ev.gid = (uid_gid >> 32) as u32;
    ev.workload = workload;
    ev.comm = bpf_get_current_comm().unwrap_or([0; 16]);
}

#[inline(always)]
pub fn send(ev: &mut Event, outcome: Outcome, action: u8, rule_id: u32) {
    ev.outcome = outcome as u8;
    ev.action = action;
    ev.rule_id = rule_id;
    if EVENTS.output::<Event>(&*ev, 0).is_err() {
        bump(Counter::RingbufFull);
    }
}
