//! Sockets below IP. An `AF_PACKET` socket (it needs `CAP_NET_RAW`) writes whole frames to a
//! device, under every socket hook and under the cgroup `skb` backstop, so no destination rule
//! can see what it sends. A watched task may not create one: `EPERM` from `socket()` on the LSM
//! backend (`socket_create`, which also sees sockets that io_uring makes); on the tracepoint
//! backend (`syscalls:sys_enter_socket`, and `io_uring:io_uring_submit_req` (`_sqe` before 6.4)
//! for a socket request
//! submitted to io_uring, which no system-call tracepoint sees; neither can refuse) the task is
//! ended before the call returns.

use agent_common::{event_flags, family, Op};

use aya_ebpf::helpers::bpf_probe_read_kernel;

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

/// Offsets in the `io_uring:io_uring_submit_req` record (`io_uring_submit_sqe` before Linux 6.4,
/// laid out alike up to the opcode since socket requests came in 5.19): the request
/// (`struct io_kiocb *`) after the common header and the ring, and its opcode after the
/// request's user data.
const URING_REQ: usize = 16;
const URING_OPCODE: usize = 32;
/// `IORING_OP_SOCKET` (uapi).
const IORING_OP_SOCKET: u8 = 45;
/// Offset of the family in a socket request: its `struct io_socket` overlays the request's
/// first bytes, and the family follows the `struct file *` that every such overlay starts with.
const URING_SOCKET_FAMILY: usize = 8;

/// `io_uring:io_uring_submit_req` or `_sqe` (tracepoint backend): a request taken from a ring, prepared
/// (its arguments copied from the submission queue) and about to be issued, in the context of
/// the task that submitted it (the ring's poll thread, of the same process, under `SQPOLL`).
pub fn on_uring_submit(ctx: &aya_ebpf::programs::TracePointContext) {
    // SAFETY: reading the record the kernel passed, at the event's fixed offsets.
    let Ok(op) = (unsafe { ctx.read_at::<u8>(URING_OPCODE) }) else {
        bump(Counter::FieldUnreadable);
        return;
    };
    if op != IORING_OP_SOCKET {
        return;
    }
    // SAFETY: as above.
    // An unreadable pointer is read as 0, whose family read below then fails (closed).
    let req = unsafe { ctx.read_at::<u64>(URING_REQ) }.unwrap_or(0);
    // SAFETY: a read of kernel memory through the helper, which checks it.
    let fam = match unsafe {
        bpf_probe_read_kernel((req as usize).wrapping_add(URING_SOCKET_FAMILY) as *const i32)
    } {
        Ok(f) => f,
        Err(_) => {
            // Whatever family it was, a watched task does not get it unread.
            if scope::watched().is_some() {
                bump(Counter::FieldUnreadable);
                pause::kill_current();
            }
            return;
        }
    };
    if refused(fam, 0) {
        pause::kill_current();
    }
}
