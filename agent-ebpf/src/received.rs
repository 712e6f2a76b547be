//! Sockets passed in. The socket hooks decide a connection when it is made, by the task that
//! makes it, and the egress backstop decides a packet by the cgroup its socket was made in. A
//! socket that a process outside every watched cgroup made (and connected, to anywhere) and then
//! passed to a watched task (`SCM_RIGHTS` over a UNIX socket, `pidfd_getfd`) would carry the
//! watched task's data past both: a send on a connected socket names no destination, and its
//! packets carry the maker's cgroup. So a watched task may not receive an IP or link-layer
//! socket made outside its own workload's cgroups (another workload's rules are not its own).
//! Sockets made in its workload's cgroups (passed between its processes) and UNIX sockets are
//! received as before. A socket's cgroup is the one it was made in, for good: a connection
//! accepted on a listener made outside is outside too.
//!
//! The kernel asks `security_file_receive` before a passed descriptor is installed. LSM
//! backend: `file_receive` refuses (`EPERM`; `recvmsg` reports the control message truncated,
//! `pidfd_getfd` fails). Tracepoint backend: a kprobe on `security_file_receive` ends the task;
//! the descriptor is installed and the task never returns to user space to use it.

use agent_common::Op;
use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    programs::{LsmContext, ProbeContext},
};

use crate::counters::{bump, Counter};
use crate::identity::ptr_at;
use crate::{kconf, lineage, pause, scope};

const EPERM: i32 = -1;
const S_IFMT: u16 = 0o170_000;
const S_IFSOCK: u16 = 0o140_000;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const AF_PACKET: u16 = 17;
const AF_XDP: u16 = 44;

/// Whether the current task may not receive `file`; if so, reports it.
#[inline(always)]
fn refused(file: *const u8) -> bool {
    let Some((cgroup, watch)) = scope::watched() else {
        return false;
    };
    let (Some(o), Some(a)) = (kconf::received(), kconf::ancestry()) else {
        return false;
    };
    let family = match made_outside(file, watch.workload, &o, &a) {
        Some(Some(family)) => family,
        Some(None) => return false,
        // A socket that cannot be read is refused: nothing unread is let in.
        None => {
            bump(Counter::FieldUnreadable);
            0
        }
    };
    bump(Counter::ReceiveRefused);
    pause::report_refusal(cgroup, watch, 0, 0, |ev| {
        ev.op = Op::Received as u8;
        ev.target = u64::from(family);
    });
    true
}

/// `Some(Some(family))` when `file` is an IP or link-layer socket made outside the cgroups of
/// `workload`, `Some(None)` when it is anything else, `None` when it cannot be read.
#[inline(always)]
fn made_outside(
    file: *const u8,
    workload: u32,
    o: &kconf::Received,
    a: &kconf::Ancestry,
) -> Option<Option<u16>> {
    let inode = ptr_at(file, o.file_inode);
    if inode.is_null() {
        return None;
    }
    // SAFETY: the helper checks the address; offsets come from this kernel's BTF.
    let mode =
        unsafe { bpf_probe_read_kernel(inode.wrapping_add(o.inode_mode) as *const u16) }.ok()?;
    if mode & S_IFMT != S_IFSOCK {
        return Some(None);
    }
    // A file opened with `O_PATH` on a socket's name has the socket's inode and no socket.
    let sock = ptr_at(file, o.file_private);
    if sock.is_null() {
        return Some(None);
    }
    let sk = ptr_at(sock, o.socket_sk);
    if sk.is_null() {
        return None;
    }
    // SAFETY: as above.
    let family =
        unsafe { bpf_probe_read_kernel(sk.wrapping_add(o.sk_family) as *const u16) }.ok()?;
    if !matches!(family, AF_INET | AF_INET6 | AF_PACKET | AF_XDP) {
        return Some(None);
    }
    let cgrp = ptr_at(sk, o.sk_cgroup);
    if cgrp.is_null() {
        return None;
    }
    match lineage::walk(cgrp, a)? {
        (_, Some((_, w))) if w.workload == workload => Some(None),
        _ => Some(Some(family)),
    }
}

/// `file_receive(file)` (LSM backend): 0, or `-EPERM` to refuse.
#[inline(always)]
pub fn lsm_receive(ctx: &LsmContext) -> i32 {
    // The hook's first argument is the `struct file *` being passed.
    let file: *const u8 = ctx.arg(0);
    if refused(file) {
        EPERM
    } else {
        0
    }
}

/// `security_file_receive(file)` entry (tracepoint backend, kprobe): the task is ended; the
/// descriptor is still installed, and the task never returns to user space from the call.
pub fn on_receive(ctx: &ProbeContext) {
    let Some(file) = ctx.arg::<u64>(0) else {
        return;
    };
    if refused(file as *const u8) {
        pause::kill_current();
    }
}
