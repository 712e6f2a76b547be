//! Latch's kernel programs.
//!
//! They own the decision made in the kernel for one operation of a watched task: match it
//! against the rules in the maps, apply a grant, hold it (pending entry, event, SIGSTOP and a
//! system-call restart) or apply the fail mode when the agent is gone. They must not allocate,
//! loop without a bound, or panic, and they keep no policy of their own: everything they know
//! comes from maps the agent fills.
//!
//! Programs:
//! - `exec`: `sched:sched_process_exec`, the new image of a watched task, before its first
//!   instruction.
//! - `connect4`, `connect6`, `sendmsg4`, `sendmsg6`: cgroup `sock_addr` hooks attached at the
//!   cgroup v2 root; everything outside a watched cgroup returns at once.
//! - `gate`: raw `sys_enter`; stops again a held exec whose task was resumed by someone other
//!   than the agent.
//! - `exit`: `sched:sched_process_exit`; drops the pending entry of a task that went away.
//! - `probe_lsm`: never attached; loaded once at start-up to learn whether BPF LSM works here.
#![no_std]
#![no_main]
// Compare-and-swap for counted grants; see `pause::take_use`.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod counters;
mod exec;
mod maps;
mod net;
mod pause;
mod report;
mod scope;
mod scratch;

use aya_ebpf::{
    macros::{cgroup_sock_addr, lsm, raw_tracepoint, tracepoint},
    programs::{LsmContext, RawTracePointContext, SockAddrContext, TracePointContext},
};

use agent_common::family;

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn exec(ctx: TracePointContext) -> u32 {
    exec::on_exec(&ctx);
    0
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn gate(_ctx: RawTracePointContext) -> i32 {
    exec::on_syscall();
    0
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn exit(_ctx: TracePointContext) -> u32 {
    pause::on_exit();
    0
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    net::check(&ctx, agent_common::Op::Connect, family::INET)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    net::check(&ctx, agent_common::Op::Connect, family::INET6)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    net::check(&ctx, agent_common::Op::Sendmsg, family::INET)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    net::check(&ctx, agent_common::Op::Sendmsg, family::INET6)
}

/// Start-up probe only: the agent loads it to learn whether this kernel accepts BPF LSM
/// programs, then unloads it. It is never attached.
#[lsm(hook = "bprm_check_security")]
pub fn probe_lsm(_ctx: LsmContext) -> i32 {
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program in which this is reachable, so no loaded program panics.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
