//! DNS of workloads whose rules name hosts ([`watch_flags::NAMES`]).
//!
//! Their queries (UDP and TCP to port 53), once the server's own address is allowed, are turned
//! by the socket hooks to the agent's resolver proxy on loopback, and where the query went is
//! kept by socket cookie. The proxy forwards the query to that server, fills [`LEARNED`] with
//! the addresses of the answer and the rules of its names, and only then answers; `recvmsg`
//! shows the answer as coming from the server asked. A connection is decided first by what the
//! workload learned ([`destination`]).

use agent_common::{
    family, proto, watch_flags, DnsOrigin, DnsPeerKey, LearnedKey, PortRules, Watch,
};
use aya_ebpf::{
    bindings::{bpf_sock, bpf_sock_addr},
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::{SkBuffContext, SockAddrContext},
};

use crate::counters::{bump, Counter};
use crate::maps::{DNS_ORIG, DNS_PEERS, LEARNED};
use crate::{kconf, net, scope};

const DNS_PORT: u16 = 53;
const LOOPBACK4: [u8; 4] = [127, 0, 0, 1];

/// The proxy's port (0: no proxy, queries go where they were sent).
#[inline(always)]
fn proxy_port() -> u16 {
    kconf::dns_proxy_port()
}

/// Whether a call is a DNS query that goes to the proxy once allowed: a workload with name
/// rules, port 53, plain UDP or TCP (not UDP-Lite or MPTCP, which the proxy does not speak), a
/// proxy for the family, the agent there to answer (heartbeat), and the agent's own network
/// namespace (a container's loopback is its own, where no proxy listens: its names are not
/// learned, and its destinations are unresolved). Such a query is not subject to `unresolved`;
/// any other call to port 53 is.
#[inline(always)]
pub fn is_query<const V6: bool>(
    ctx: &SockAddrContext,
    watch: &Watch,
    port: u16,
    raw_proto: u32,
    mapped: bool,
) -> bool {
    if watch.flags & watch_flags::NAMES == 0
        || port != DNS_PORT
        || (raw_proto != proto::UDP as u32 && raw_proto != proto::TCP as u32)
        || proxy_port() == 0
        || (V6 && !mapped && !kconf::dns_proxy_v6())
    {
        return false;
    }
    let netns = kconf::agent_netns();
    // SAFETY: helper on the context the kernel passed (sock_addr programs may call it).
    if netns != 0 && unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) } != netns {
        return false;
    }
    scope::stale(scope::now()).is_none()
}

/// Sends an allowed DNS query to the proxy: rewrites the call's destination to loopback at the
/// proxy's port and records where it was going. `fam`/`addr` are the server as decided;
/// `mapped` says the call is on an IPv6 socket to a v4-mapped address. The agent being gone
/// (stale heartbeat) leaves the query where it was going: no proxy would answer it.
#[inline(always)]
pub fn redirect<const SENDMSG: bool, const V6: bool>(
    ctx: &SockAddrContext,
    watch: &Watch,
    fam: u8,
    addr: &[u8; 16],
    port: u16,
    protocol: u8,
    mapped: bool,
) {
    let sa = ctx.sock_addr;
    let mut user = [0u8; 16];
    if V6 {
        let mut i = 0;
        while i < 4 {
            // SAFETY: the context the kernel passed; 4-byte reads of user_ip6.
            let w = unsafe { (*sa).user_ip6[i] };
            user[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            i += 1;
        }
    } else {
        // SAFETY: as above.
        let ip = unsafe { (*sa).user_ip4 };
        user[..4].copy_from_slice(&ip.to_ne_bytes());
    }
    // Written as the unspecified address: the answer is shown as coming from the address the
    // call went to.
    if net::is_unspecified6(&user)
        || (mapped && user[12] == 0 && user[13] == 0 && user[14] == 0 && user[15] == 0)
    {
        if V6 && !mapped {
            user = *addr;
        } else if V6 {
            user[12..16].copy_from_slice(&addr[..4]);
        } else {
            user[..4].copy_from_slice(&addr[..4]);
        }
    }
    let mut origin = DnsOrigin {
        user,
        addr: *addr,
        workload: watch.workload,
        port,
        family: fam,
        proto: protocol,
        peer_port: 0,
        _pad: [0; 6],
    };
    let over = if V6 && !mapped {
        family::INET6
    } else {
        family::INET
    };
    if SENDMSG {
        // `sendmsg` binds the socket before the hook runs, so its port is known now; a
        // connected socket's is noted at its first packet (`note_peer`).
        // SAFETY: the socket of the call, which sock_addr hooks may read.
        let sk = unsafe { (*sa).__bindgen_anon_1.sk };
        if !sk.is_null() {
            // SAFETY: as above; `src_port` is in host order.
            origin.peer_port = unsafe { (*sk).src_port } as u16;
            let key = DnsPeerKey {
                port: origin.peer_port,
                proto: protocol,
                family: over,
            };
            if DNS_PEERS.insert(&key, &origin, 0).is_err() {
                bump(Counter::DnsUnrecorded);
                return;
            }
        }
    }
    // SAFETY: helper on the context the kernel passed.
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    if DNS_ORIG.insert(&cookie, &origin, 0).is_err() {
        bump(Counter::DnsUnrecorded);
        return;
    }
    set_dest::<V6>(sa, over == family::INET6, mapped);
    bump(Counter::DnsRedirected);
}

#[inline(always)]
fn set_dest<const V6: bool>(sa: *mut bpf_sock_addr, six: bool, mapped: bool) {
    let port_be = (proxy_port().to_be()) as u32;
    // SAFETY: the context the kernel passed; the destination is writable in connect and
    // sendmsg hooks, with 4-byte stores.
    unsafe {
        if V6 {
            if six {
                (*sa).user_ip6 = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];
            } else if mapped {
                (*sa).user_ip6 = [
                    0,
                    0,
                    u32::from_ne_bytes([0, 0, 0xff, 0xff]),
                    u32::from_ne_bytes(LOOPBACK4),
                ];
            }
        } else {
            (*sa).user_ip4 = u32::from_ne_bytes(LOOPBACK4);
        }
        (*sa).user_port = port_be;
    }
}

/// `recvmsg` on a socket whose query went to the proxy: the answer comes from the proxy, and is
/// shown as coming from the server the workload asked.
#[inline(always)]
pub fn answer<const V6: bool>(ctx: &SockAddrContext) -> i32 {
    let proxy = proxy_port();
    if proxy == 0 {
        return 1;
    }
    let sa = ctx.sock_addr;
    // SAFETY: the context the kernel passed; readable in recvmsg hooks.
    let port = unsafe { u16::from_be((*sa).user_port as u16) };
    if port != proxy {
        return 1;
    }
    // From the proxy, on loopback: a datagram from anywhere else with that source port is
    // shown as it is.
    let from_proxy = if V6 {
        // SAFETY: as above; 4-byte reads of user_ip6, one word at a time.
        let w = unsafe {
            [
                (*sa).user_ip6[0],
                (*sa).user_ip6[1],
                (*sa).user_ip6[2],
                (*sa).user_ip6[3],
            ]
        };
        let one = u32::from_ne_bytes([0, 0, 0, 1]);
        let ffff = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
        w[0] == 0
            && w[1] == 0
            && ((w[2] == 0 && w[3] == one)
                || (w[2] == ffff && w[3] == u32::from_ne_bytes(LOOPBACK4)))
    } else {
        // SAFETY: as above.
        let ip = unsafe { (*sa).user_ip4 };
        ip == u32::from_ne_bytes(LOOPBACK4)
    };
    if !from_proxy {
        return 1;
    }
    // SAFETY: helper on the context the kernel passed.
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    let Some(o) = DNS_ORIG.get_ptr(&cookie) else {
        return 1;
    };
    // SAFETY: map value pointer from lookup; plain data.
    let o = unsafe { *o };
    let u = &o.user;
    // SAFETY: as above; the source is writable in recvmsg hooks, with 4-byte stores.
    unsafe {
        if V6 {
            (*sa).user_ip6 = [
                u32::from_ne_bytes([u[0], u[1], u[2], u[3]]),
                u32::from_ne_bytes([u[4], u[5], u[6], u[7]]),
                u32::from_ne_bytes([u[8], u[9], u[10], u[11]]),
                u32::from_ne_bytes([u[12], u[13], u[14], u[15]]),
            ];
        } else {
            (*sa).user_ip4 = u32::from_ne_bytes([u[0], u[1], u[2], u[3]]);
        }
        (*sa).user_port = (o.port.to_be()) as u32;
    }
    1
}

/// At egress, a packet of a connected socket to the proxy's port: the query of a socket the
/// hooks turned there (at `connect`, before it had a port), noted by the port the proxy will
/// hear it from. Runs before the packet reaches the proxy.
#[inline(always)]
pub fn note_peer(ctx: &SkBuffContext, full: *mut bpf_sock, protocol: u8) {
    let proxy = proxy_port();
    if proxy == 0 {
        return;
    }
    // SAFETY: a full socket from `bpf_sk_fullsock`; these fields are readable.
    let (dport, sport) = unsafe { (u16::from_be((*full).dst_port), (*full).src_port as u16) };
    if dport != proxy {
        return;
    }
    // SAFETY: helper on the context the kernel passed.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
    let Some(o) = DNS_ORIG.get_ptr_mut(&cookie) else {
        return;
    };
    // SAFETY: map value pointer from lookup; plain data. Kept in the cookie's record, so that
    // the release of the socket finds this entry.
    unsafe { (*o).peer_port = sport };
    let over = match ctx.load::<u8>(0) {
        Ok(b) if b >> 4 == 6 => family::INET6,
        _ => family::INET,
    };
    let key = DnsPeerKey {
        port: sport,
        proto: protocol,
        family: over,
    };
    // SAFETY: map value pointer from lookup; plain data.
    if DNS_PEERS.insert(&key, unsafe { &*o }, 0).is_err() {
        bump(Counter::DnsUnrecorded);
    }
}

/// A socket whose query went to the proxy is released: its records go with it, so that a
/// later socket on the same port (of another workload, or of no watched one) is not taken for
/// it by the proxy.
#[inline(always)]
pub fn forget(sk: *mut bpf_sock) {
    // SAFETY: helper on the socket the kernel passed.
    let cookie = unsafe { bpf_get_socket_cookie(sk.cast()) };
    let Some(o) = DNS_ORIG.get_ptr(&cookie) else {
        return;
    };
    // SAFETY: map value pointer from lookup; plain data.
    let (protocol, port) = unsafe { ((*o).proto, (*o).peer_port) };
    for fam in [family::INET, family::INET6] {
        let key = DnsPeerKey {
            port,
            proto: protocol,
            family: fam,
        };
        let _ = DNS_PEERS.remove(&key);
    }
    let _ = DNS_ORIG.remove(&cookie);
}

/// The rule a destination falls under for this workload, and what it says ([`net::Hit`]): the
/// clauses of the names the workload resolved to this address (while their TTL lasts) and the
/// network rules, the stricter where both say something, else, for an address it never
/// resolved, its `unresolved` action; 0: the workload's default. `query`: the call is a DNS
/// query that goes to the proxy, which `unresolved` does not cover (the workload must reach
/// its resolver to resolve anything).
#[inline(always)]
pub fn destination(
    watch: &Watch,
    fam: u8,
    addr: &[u8; 16],
    port: u16,
    protocol: u8,
    query: bool,
) -> net::Hit {
    let mut resolved = false;
    let mut by_name: net::Hit = 0;
    if watch.flags & watch_flags::NAMES != 0 {
        if let Some(rules) = learned(watch.workload, fam, addr) {
            resolved = true;
            by_name = net::first_match(rules, port, protocol);
        }
    }
    let by_net = if fam == family::INET {
        net::lookup4(watch.workload, addr, port, protocol)
    } else {
        net::lookup6(watch.workload, addr, port, protocol)
    };
    // Both say something: the stricter wins (actions are ordered by strictness), so that a
    // name the workload's own server gives any address cannot loosen a rule on that address.
    if by_name != 0 && by_net != 0 {
        return if (by_net as u8) > (by_name as u8) {
            by_net
        } else {
            by_name
        };
    }
    if by_name != 0 {
        return by_name;
    }
    if by_net != 0 {
        return by_net;
    }
    if !resolved && !query && watch.unresolved != 0 {
        return watch.unresolved as u64;
    }
    0
}

#[inline(always)]
fn learned(workload: u32, fam: u8, addr: &[u8; 16]) -> Option<&'static PortRules> {
    let mut key = LearnedKey {
        workload,
        family: fam,
        _pad: [0; 3],
        addr: [0; 16],
    };
    if fam == family::INET {
        key.addr[..4].copy_from_slice(&addr[..4]);
    } else {
        key.addr = *addr;
    }
    let l = LEARNED.get_ptr(&key)?;
    // SAFETY: map value pointer from lookup; the map outlives the program run.
    let l = unsafe { &*l };
    if l.expires_ns <= scope::now() {
        return None;
    }
    Some(&l.rules)
}
