//! Sockets below IP. An `AF_PACKET` socket (it needs `CAP_NET_RAW`) writes whole frames to a
//! device, under every socket hook and under the cgroup `skb` backstop, so no destination rule
//! can see what it sends. A watched task may not create one: `EPERM` from `socket()` on the LSM
//! backend (`socket_create`); on the tracepoint backend (`syscalls:sys_enter_socket`, which
//! cannot refuse) the task is ended before the call returns.

use agent_common::{event_flags, family, Op};

use crate::counters::{bump, Counter};
use crate::pause;
use crate::scope;

const AF_PACKET: i32 = 17;

/// Whether a socket of `family` is refused to the current task (and reported). `kern`: the
/// kernel makes the socket for itself, which is never refused.
#[inline(always)]
pub fn refused(family: i32, kern: i32) -> bool {
    if family != AF_PACKET || kern != 0 {
        return false;
    }
    let Some((cgroup, watch)) = scope::watched() else {
        return false;
    };
    bump(Counter::PacketSocketRefused);
    pause::report_refusal(cgroup, watch, 0, 0, |ev| {
        ev.op = Op::Sendmsg as u8;
        ev.family = family::PACKET;
        ev.flags = event_flags::PACKET_SOCKET;
    });
    true
}

/// Offset of `family` in the `syscalls:sys_enter_socket` record (the first argument, after the
/// common header and the system call number).
const SOCKET_FAMILY: usize = 16;

/// `syscalls:sys_enter_socket` (tracepoint backend).
pub fn on_socket_enter(ctx: &aya_ebpf::programs::TracePointContext) {
    // SAFETY: reading the record the kernel passed, at the system call ABI's fixed offset.
    let Ok(fam) = (unsafe { ctx.read_at::<i64>(SOCKET_FAMILY) }) else {
        return;
    };
    if refused(fam as i32, 0) {
        pause::kill_current();
    }
}
