//! The network hooks: `connect()` and `sendmsg()` with an explicit destination, IPv4 and IPv6.

use agent_common::{
    family, fingerprint, proto, Net4Data, Net6Data, Op, PortRules, ERESTARTNOINTR, PORT_RULES_CAP,
};
use aya_ebpf::{
    helpers::{bpf_get_socket_cookie, bpf_set_retval},
    maps::lpm_trie::Key,
    programs::SockAddrContext,
};

use crate::maps::{NET4_RULES, NET6_RULES};
use crate::pause::{self, Hold, Subject, Verdict};
use crate::{dns, fp_key, report, scope, scratch};

const IPPROTO_UDPLITE: u32 = 136;
const IPPROTO_MPTCP: u32 = 262;

const ALLOW: i32 = 1;
const DENY: i32 = 0;

/// `SENDMSG`: the `sendmsg` hooks (UDP with an explicit address), whose IPv4 context also
/// carries the source address the caller chose (`IP_PKTINFO`); other hooks may not read it.
/// `V6`: the IPv6 hooks. Both are constants so that each program holds only the context reads
/// the verifier allows for its type.
#[inline(always)]
pub fn check<const SENDMSG: bool, const V6: bool>(ctx: &SockAddrContext) -> i32 {
    let op = if SENDMSG { Op::Sendmsg } else { Op::Connect };
    let fam = if V6 { family::INET6 } else { family::INET };
    let Some((cgroup, watch)) = scope::watched() else {
        return ALLOW;
    };
    let sa = ctx.sock_addr;
    // SAFETY: the context the kernel passed; these fields are readable in every sock_addr hook.
    let (raw_proto, port) = unsafe { ((*sa).protocol, u16::from_be((*sa).user_port as u16)) };
    // A rule's protocol covers its variants: UDP-Lite is UDP, MPTCP is TCP.
    let protocol = match raw_proto {
        IPPROTO_UDPLITE => proto::UDP,
        IPPROTO_MPTCP => proto::TCP,
        p => p as u8,
    };
    let mut addr = [0u8; 16];
    let mut fam = fam;
    let mut mapped = false;
    if fam == family::INET {
        // SAFETY: as above.
        let ip = unsafe { (*sa).user_ip4 };
        addr[..4].copy_from_slice(&ip.to_ne_bytes());
    } else {
        let mut i = 0;
        while i < 4 {
            // SAFETY: as above; the verifier wants 4-byte reads of user_ip6.
            let word = unsafe { (*sa).user_ip6[i] };
            addr[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
            i += 1;
        }
        // A v4-mapped address (::ffff:a.b.c.d) on a dual-stack socket reaches an IPv4 host: it
        // must meet the IPv4 rules, or they could be walked around.
        if is_v4_mapped(&addr) {
            mapped = true;
            fam = family::INET;
            let v4 = [addr[12], addr[13], addr[14], addr[15]];
            addr = [0; 16];
            addr[..4].copy_from_slice(&v4);
        }
    }
    // The unspecified address is not where the call goes: the kernel sends it to the source
    // address (chosen with IP_PKTINFO, or bound), else to loopback (IPv4, and v4-mapped); `::`
    // means loopback. Decided as the destination the kernel will use, or a rule on a local
    // address could be walked around by writing 0.0.0.0.
    if fam == family::INET && addr[0] == 0 && addr[1] == 0 && addr[2] == 0 && addr[3] == 0 {
        let mut src: u32 = 0;
        if SENDMSG && !V6 {
            // SAFETY: readable in the IPv4 sendmsg hook (and only read there).
            src = unsafe { (*sa).msg_src_ip4 };
        }
        if src == 0 {
            // SAFETY: the socket of the call, which every sock_addr hook may read.
            let sk = unsafe { (*sa).__bindgen_anon_1.sk };
            if !sk.is_null() {
                // SAFETY: as above; `src_ip4` is the bound address (network order).
                src = unsafe { (*sk).src_ip4 };
            }
        }
        let v4 = if src != 0 {
            src.to_ne_bytes()
        } else {
            [127, 0, 0, 1]
        };
        addr[..4].copy_from_slice(&v4);
    } else if fam == family::INET6 && is_unspecified6(&addr) {
        // `::` is loopback: `::1`, or 127.0.0.1 on a dual-stack socket bound to a v4-mapped
        // address, where the call goes out over IPv4.
        // SAFETY: the socket of the call, which every sock_addr hook may read.
        let sk = unsafe { (*sa).__bindgen_anon_1.sk };
        if !sk.is_null() {
            // SAFETY: as above; 4-byte reads of `src_ip6`, as the verifier wants.
            let (w0, w1, w2) = unsafe { ((*sk).src_ip6[0], (*sk).src_ip6[1], (*sk).src_ip6[2]) };
            mapped = w0 == 0 && w1 == 0 && w2 == u32::from_ne_bytes([0, 0, 0xff, 0xff]);
        }
        if mapped {
            fam = family::INET;
            addr = [0; 16];
            addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        } else {
            addr[15] = 1;
        }
    }
    let target = fingerprint::network(&fp_key::get(), fam, protocol, &addr, port);
    let subject = Subject::current(cgroup, watch);
    let Some(s) = scratch::get() else {
        return DENY;
    };
    let ev = &mut s.event;
    report::clear(ev);
    ev.op = op as u8;
    ev.family = fam;
    ev.proto = protocol;
    ev.port = port;
    ev.addr = addr;
    ev.target = target;

    // A DNS query that will go to the resolver proxy (decided first as a call to its server).
    let query = dns::is_query::<V6>(ctx, &watch, port, raw_proto, mapped);
    let mut allowed_by = None;
    if let Some(v) = pause::resume(
        &subject,
        ev,
        op,
        target,
        &mut allowed_by,
        Hold::AtSyscallExit,
    ) {
        // An approved query goes to the proxy like any allowed one, or its answer is not
        // learned.
        if query && v == Verdict::Allow {
            dns::redirect::<SENDMSG, V6>(ctx, &watch, fam, &addr, port, protocol, mapped);
        }
        return finish_granted(ctx, op, v, allowed_by);
    }

    let hit = unpack(dns::destination(&watch, fam, &addr, port, protocol, query));
    let (rule_id, action) = hit.unwrap_or((0, watch.default_action));
    let v = pause::by_rule(
        &subject,
        ev,
        op,
        rule_id,
        action,
        &mut allowed_by,
        Hold::AtSyscallExit,
    );
    if query && v == Verdict::Allow {
        dns::redirect::<SENDMSG, V6>(ctx, &watch, fam, &addr, port, protocol, mapped);
    }
    finish_granted(ctx, op, v, allowed_by)
}

/// As [`finish`], and a connection a grant let through is recorded against that grant, so that
/// revoking it can close the connection. (`sendmsg` on an unconnected socket opens none.)
#[inline(always)]
fn finish_granted(
    ctx: &SockAddrContext,
    op: Op,
    v: Verdict,
    allowed_by: Option<agent_common::GrantKey>,
) -> i32 {
    if let (Verdict::Allow, Op::Connect, Some(key)) = (v, op, allowed_by) {
        // SAFETY: helper on the context the kernel passed to this sock_addr program.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
        pause::record_conn(cookie, &key);
    }
    finish(v)
}

#[inline(always)]
fn finish(v: Verdict) -> i32 {
    match v {
        Verdict::Allow => ALLOW,
        Verdict::Deny => DENY,
        Verdict::Held => {
            // Returning 0 alone would fail the call with EPERM; this return value instead makes
            // the kernel run the same system call again once the task is resumed. The stop
            // itself comes at the system call's exit (`stop`): socket hooks may not send signals
            // on the kernels most hosts run.
            // SAFETY: helper with a plain integer argument.
            unsafe { bpf_set_retval(ERESTARTNOINTR) };
            DENY
        }
    }
}

#[inline(always)]
pub fn is_unspecified6(a: &[u8; 16]) -> bool {
    let mut i = 0;
    while i < 16 {
        if a[i] != 0 {
            return false;
        }
        i += 1;
    }
    true
}

#[inline(always)]
fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[0] == 0
        && a[1] == 0
        && a[2] == 0
        && a[3] == 0
        && a[4] == 0
        && a[5] == 0
        && a[6] == 0
        && a[7] == 0
        && a[8] == 0
        && a[9] == 0
        && a[10] == 0xff
        && a[11] == 0xff
}

/// A clause found: its rule id and action packed as `rule_id << 8 | action` (actions are never
/// 0, so 0 is "none"). One integer, not an `Option` of a pair: the verifier follows a scalar
/// through the branches of the lookups where it lost track of the pair's halves.
pub type Hit = u64;

#[inline(always)]
pub fn unpack(hit: Hit) -> Option<(u32, u8)> {
    if hit == 0 {
        None
    } else {
        Some(((hit >> 8) as u32, hit as u8))
    }
}

#[inline(always)]
pub fn lookup4(workload: u32, addr: &[u8; 16], port: u16, protocol: u8) -> Hit {
    let key = Key::new(
        64,
        Net4Data {
            workload_be: workload.to_be_bytes(),
            addr: [addr[0], addr[1], addr[2], addr[3]],
        },
    );
    match NET4_RULES.get(&key) {
        Some(r) => first_match(r, port, protocol),
        None => 0,
    }
}

#[inline(always)]
pub fn lookup6(workload: u32, addr: &[u8; 16], port: u16, protocol: u8) -> Hit {
    let key = Key::new(
        160,
        Net6Data {
            workload_be: workload.to_be_bytes(),
            addr: *addr,
        },
    );
    match NET6_RULES.get(&key) {
        Some(r) => first_match(r, port, protocol),
        None => 0,
    }
}

/// The first clause whose port range and protocol match; the agent sorted them most specific
/// first.
#[inline(always)]
pub fn first_match(rules: &PortRules, port: u16, protocol: u8) -> Hit {
    let n = rules.len as usize;
    let mut i = 0;
    while i < PORT_RULES_CAP {
        if i >= n {
            break;
        }
        if let Some(r) = rules.rules.get(i) {
            if (r.proto == proto::ANY || r.proto == protocol)
                && port >= r.port_lo
                && port <= r.port_hi
            {
                return ((r.rule_id as u64) << 8) | r.action as u64;
            }
        }
        i += 1;
    }
    0
}
