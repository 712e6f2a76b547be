//! Sockets made by a thread watched by its lineage alone. The egress backstop knows a packet's
//! watch by its socket's cgroup, which is the cgroup the socket was made in: a thread that left
//! its watched cgroup and then made a raw or ping socket would send from an unwatched cgroup.
//! So at `sock_create` (cgroup v2 root) such a socket, of a kind the backstop decides, is
//! recorded by cookie with the lineage its maker carries, and removed at `sock_release`. A
//! socket that cannot be recorded (the map is full) is refused: nothing from a watched thread
//! leaves undecided.

use agent_common::Lineage;
use aya_ebpf::{helpers::bpf_get_socket_cookie, programs::SockContext};

use crate::counters::{bump, Counter};
use crate::maps::SOCK_LINEAGE;
use crate::{dns, packet, scope};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

/// `cgroup/sock_create`.
pub fn on_create(ctx: &SockContext) -> i32 {
    let sk = ctx.sock;
    // SAFETY: the socket the kernel passed; `type` and `protocol` are readable here.
    let (ty, protocol) = unsafe { ((*sk).type_, (*sk).protocol) };
    if packet::socket_hooks_decide(ty, protocol) {
        return ALLOW;
    }
    // Made in a watched cgroup: its packets carry that cgroup.
    if scope::by_cgroup().is_some() {
        return ALLOW;
    }
    let Some((cgroup_id, watch)) = scope::by_lineage() else {
        return ALLOW;
    };
    // SAFETY: helper on the socket the kernel passed.
    let cookie = unsafe { bpf_get_socket_cookie(sk.cast()) };
    if SOCK_LINEAGE
        .insert(&cookie, &Lineage { cgroup_id, watch }, 0)
        .is_err()
    {
        bump(Counter::SockLineageFull);
        return REFUSE;
    }
    ALLOW
}

/// `cgroup/sock_release`.
pub fn on_release(ctx: &SockContext) -> i32 {
    let sk = ctx.sock;
    // SAFETY: as in `on_create`.
    let (ty, protocol) = unsafe { ((*sk).type_, (*sk).protocol) };
    if packet::socket_hooks_decide(ty, protocol) {
        dns::forget(sk);
        return ALLOW;
    }
    // SAFETY: helper on the socket the kernel passed.
    let cookie = unsafe { bpf_get_socket_cookie(sk.cast()) };
    let _ = SOCK_LINEAGE.remove(&cookie);
    ALLOW
}
