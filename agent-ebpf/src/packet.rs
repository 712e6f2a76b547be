//! The packet-level backstop: cgroup `skb` egress at the cgroup v2 root. The socket hooks decide
//! `connect` and UDP `sendmsg`; everything else that carries IP from a watched workload (ping
//! sockets, raw sockets, protocols without socket hooks) is decided here, per packet, against
//! the same destination rules. A packet cannot be held: `approve` drops it, as `deny` does.
//!
//! A packet's watch is its socket's cgroup's; a socket made by a thread that had left its
//! watched cgroup (watched by lineage alone) is found in `SOCK_LINEAGE`, which `sock_new` fills
//! when such a socket is made.
//!
//! Cost: a packet of a TCP or UDP socket returns after reading the socket's type; only other
//! packets look up the cgroup and the rules.

use agent_common::{event_flags, family, proto, Action, Op, Outcome, Watch, MAX_CGROUP_DEPTH};
use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{
        bpf_get_socket_cookie, bpf_sk_fullsock, bpf_skb_ancestor_cgroup_id, bpf_skb_cgroup_id,
    },
    programs::SkBuffContext,
};

use crate::counters::{bump, Counter};
use crate::maps::{PKT_REPORTED, SOCK_LINEAGE, WATCHED};
use crate::{dns, net, report, scope, scratch};

const PASS: i32 = 1;
const DROP: i32 = 0;

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
const IPPROTO_UDPLITE: u32 = 136;
const IPPROTO_MPTCP: u32 = 262;
const IPPROTO_DCCP: u8 = 33;
const IPPROTO_SCTP: u8 = 132;

/// One event per socket per second at most.
const REPORT_EVERY_NS: u64 = 1_000_000_000;

pub fn egress(ctx: &SkBuffContext) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: the context the kernel passed; `sk` is readable in cgroup skb programs.
    let sk = unsafe { (*skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return PASS;
    }
    // SAFETY: helper on the socket pointer the context gave.
    let full = unsafe { bpf_sk_fullsock(sk) };
    if full.is_null() {
        // Request and time-wait sockets: TCP, decided at connect.
        return PASS;
    }
    // SAFETY: a full socket from the helper; `type` and `protocol` are readable.
    let (ty, protocol) = unsafe { ((*full).type_, (*full).protocol) };
    if socket_hooks_decide(ty, protocol) {
        if ty == SOCK_STREAM {
            dns::note_peer(ctx, full, proto::TCP);
        } else if protocol == IPPROTO_UDP {
            dns::note_peer(ctx, full, proto::UDP);
        }
        return PASS;
    }
    let Some((cgroup, watch)) = watched(skb).or_else(|| by_lineage(skb)) else {
        return PASS;
    };
    let ver = match ctx.load::<u8>(0) {
        Ok(b) => b >> 4,
        Err(_) => {
            bump(Counter::AddrUnreadable);
            return DROP;
        }
    };
    let mut addr = [0u8; 16];
    let (fam, ip_proto, l4) = if ver == 4 {
        // A fixed-size load: the verifier refuses a length that may be zero.
        let Ok(hdr) = ctx.load::<[u8; 20]>(0) else {
            bump(Counter::AddrUnreadable);
            return DROP;
        };
        addr[..4].copy_from_slice(&hdr[16..20]);
        (family::INET, hdr[9], ((hdr[0] & 0x0f) as usize) * 4)
    } else if ver == 6 {
        let Ok(hdr) = ctx.load::<[u8; 40]>(0) else {
            bump(Counter::AddrUnreadable);
            return DROP;
        };
        addr.copy_from_slice(&hdr[24..40]);
        // Extension headers (hop-by-hop, routing, fragment, destination options) come between
        // the fixed header and the one that carries the port: walk a few, as the kernel does.
        let mut next = hdr[6];
        let mut off = 40usize;
        let mut i = 0;
        while i < 4 {
            if next != 0 && next != 43 && next != 44 && next != 60 {
                break;
            }
            let Ok(ext) = ctx.load::<[u8; 2]>(off) else {
                bump(Counter::AddrUnreadable);
                return DROP;
            };
            off += if next == 44 {
                8
            } else {
                (ext[1] as usize + 1) * 8
            };
            next = ext[0];
            i += 1;
        }
        if next == 0 || next == 43 || next == 44 || next == 60 {
            // More than this program follows: refuse rather than guess the port.
            bump(Counter::AddrUnreadable);
            return DROP;
        }
        (family::INET6, next, off)
    } else {
        return PASS;
    };
    let port = if ip_proto == IPPROTO_UDP as u8
        || ip_proto == IPPROTO_UDPLITE as u8
        || ip_proto == IPPROTO_TCP as u8
        || ip_proto == IPPROTO_SCTP
        || ip_proto == IPPROTO_DCCP
    {
        match ctx.load::<u16>(l4 + 2) {
            Ok(p) => u16::from_be(p),
            Err(_) => 0,
        }
    } else {
        0
    };
    // A rule's protocol covers its variants.
    let rule_proto = if ip_proto == IPPROTO_UDPLITE as u8 {
        proto::UDP
    } else {
        ip_proto
    };
    let hit = net::unpack(dns::destination(
        &watch, fam, &addr, port, rule_proto, false,
    ));
    let (rule_id, action) = hit.unwrap_or((0, watch.default_action));
    if action == Action::Allow as u8 {
        return PASS;
    }
    let dest = Destination {
        fam,
        ip_proto,
        addr,
        port,
    };
    if action == Action::Audit as u8 {
        bump(Counter::Audited);
        report_packet(
            skb,
            cgroup,
            &watch,
            &dest,
            Outcome::Audited,
            action,
            rule_id,
        );
        return PASS;
    }
    if action == Action::Approve as u8 {
        // Nobody can be asked about a packet; with the agent gone the fail mode decides.
        if let Some(agent_common::FailMode::AllowAndRecord) = scope::stale(scope::now()) {
            report_packet(
                skb,
                cgroup,
                &watch,
                &dest,
                Outcome::FailOpen,
                action,
                rule_id,
            );
            return PASS;
        }
    }
    bump(Counter::PacketDropped);
    report_packet(skb, cgroup, &watch, &dest, Outcome::Denied, action, rule_id);
    DROP
}

/// Whether the socket hooks decide this socket's destinations (TCP, MPTCP, UDP, UDP-Lite), so
/// that its packets need no look here.
#[inline(always)]
pub fn socket_hooks_decide(ty: u32, protocol: u32) -> bool {
    let stream = ty == SOCK_STREAM && (protocol == IPPROTO_TCP || protocol == IPPROTO_MPTCP);
    let dgram = ty == SOCK_DGRAM && (protocol == IPPROTO_UDP || protocol == IPPROTO_UDPLITE);
    stream || dgram
}

/// The watch of a socket made by a thread that had left its watched cgroup (its own cgroup is
/// not watched): the lineage recorded when it was made.
#[inline(always)]
fn by_lineage(skb: *mut __sk_buff) -> Option<(u64, Watch)> {
    // SAFETY: helper on the context the kernel passed.
    let cookie = unsafe { bpf_get_socket_cookie(skb.cast()) };
    let l = SOCK_LINEAGE.get_ptr(&cookie)?;
    // SAFETY: map value pointer from lookup; plain data.
    Some(scope::lineage_watch(unsafe { *l }))
}

/// The packet's cgroup and workload, if it or an ancestor is watched (the deepest wins).
#[inline(always)]
fn watched(skb: *mut __sk_buff) -> Option<(u64, Watch)> {
    // SAFETY: helpers on the context the kernel passed.
    let cgroup = unsafe { bpf_skb_cgroup_id(skb) };
    if let Some(w) = WATCHED.get_ptr(&cgroup) {
        // SAFETY: a map value pointer returned by lookup.
        return Some((cgroup, unsafe { *w }));
    }
    let mut found = None;
    let mut level = 1;
    while level < MAX_CGROUP_DEPTH {
        // SAFETY: as above.
        let id = unsafe { bpf_skb_ancestor_cgroup_id(skb, level as i32) };
        if id == 0 || id == cgroup {
            break;
        }
        if let Some(w) = WATCHED.get_ptr(&id) {
            // SAFETY: as above.
            found = Some(unsafe { *w });
        }
        level += 1;
    }
    found.map(|w| (cgroup, w))
}

/// Where a packet goes, as the rules saw it.
struct Destination {
    fam: u8,
    ip_proto: u8,
    addr: [u8; 16],
    port: u16,
}

/// An event for a packet, at most one per socket per second.
#[inline(always)]
fn report_packet(
    skb: *mut __sk_buff,
    cgroup: u64,
    watch: &Watch,
    dest: &Destination,
    outcome: Outcome,
    action: u8,
    rule_id: u32,
) {
    let now = scope::now();
    // SAFETY: helper on the context the kernel passed.
    let cookie = unsafe { bpf_get_socket_cookie(skb.cast()) };
    if let Some(last) = PKT_REPORTED.get_ptr(&cookie) {
        // SAFETY: map value pointer from lookup.
        if now.saturating_sub(unsafe { *last }) < REPORT_EVERY_NS {
            return;
        }
    }
    let _ = PKT_REPORTED.insert(&cookie, &now, 0);
    let Some(s) = scratch::get() else {
        return;
    };
    let ev = &mut s.event;
    report::clear(ev);
    ev.op = Op::Sendmsg as u8;
    ev.flags = event_flags::PACKET;
    ev.family = dest.fam;
    ev.proto = dest.ip_proto;
    ev.addr = dest.addr;
    ev.port = dest.port;
    ev.ts_ns = now;
    ev.cgroup_id = cgroup;
    ev.workload = watch.workload;
    report::send(ev, outcome, action, rule_id);
}
