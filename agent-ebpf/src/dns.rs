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
    helpers::bpf_get_socket_cookie,
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

/// Whether a call to this destination is a DNS query the proxy should see.
#[inline(always)]
pub fn is_query(watch: &Watch, port: u16, protocol: u8) -> bool {
    watch.flags & watch_flags::NAMES != 0
        && port == DNS_PORT
        && (protocol == proto::UDP || protocol == proto::TCP)
        && proxy_port() != 0
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
    if V6 && !mapped && !kconf::dns_proxy_v6() {
        return;
    }
    if scope::stale(scope::now()).is_some() {
        return;
    }
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
    let origin = DnsOrigin {
        user,
        addr: *addr,
        workload: watch.workload,
        port,
        family: fam,
        proto: protocol,
    };
    // SAFETY: helper on the context the kernel passed.
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    if DNS_ORIG.insert(&cookie, &origin, 0).is_err() {
        bump(Counter::DnsUnrecorded);
        return;
    }
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
            let sport = unsafe { (*sk).src_port } as u16;
            let key = DnsPeerKey {
                port: sport,
                proto: protocol,
                family: over,
            };
            if DNS_PEERS.insert(&key, &origin, 0).is_err() {
                bump(Counter::DnsUnrecorded);
                return;
            }
        }
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
    let Some(o) = DNS_ORIG.get_ptr(&cookie) else {
        return;
    };
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

/// The rule a destination falls under for this workload, and what it says ([`net::Hit`]): the
/// clauses of the names the workload resolved to this address (while their TTL lasts), else the
/// network rules, else, for an address it never resolved, its `unresolved` action. 0: the
/// workload's default. `query`: the call is a DNS query itself, which `unresolved` does not
/// cover (the workload must reach its resolver to resolve anything).
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
    if watch.flags & watch_flags::NAMES != 0 {
        if let Some(rules) = learned(watch.workload, fam, addr) {
            resolved = true;
            let hit = net::first_match(rules, port, protocol);
            if hit != 0 {
                return hit;
            }
        }
    }
    let hit = if fam == family::INET {
        net::lookup4(watch.workload, addr, port, protocol)
    } else {
        net::lookup6(watch.workload, addr, port, protocol)
    };
    if hit != 0 {
        return hit;
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
