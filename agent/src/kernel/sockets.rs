//! Closing live connections by socket cookie, through the kernel's socket diagnostics
//! (`NETLINK_SOCK_DIAG`): the TCP and UDP sockets of the agent's network namespace are listed, the
//! ones whose cookie is asked for are destroyed with `SOCK_DESTROY` (the kernel needs
//! `CONFIG_INET_DIAG_DESTROY`). A destroyed TCP socket sends a reset to its peer, and its owner's
//! next read or write fails with `ECONNABORTED`.
//!
//! This module only speaks netlink; which sockets to close (those a revoked grant let through) is
//! the engine's business. Workloads in another network namespace are out of its reach.

use std::collections::HashSet;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
    SockDiagDestroy, SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

/// Socket diagnostics failed as a whole (single sockets that cannot be closed are reported in
/// [`Closed::failed`] instead).
#[derive(Debug, thiserror::Error)]
#[error("socket diagnostics ({step}): {reason}")]
pub struct SocketError {
    /// What was being done.
    pub step: String,
    /// Why it failed.
    pub reason: String,
}

/// What [`destroy`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Closed {
    /// Sockets destroyed.
    pub closed: usize,
    /// Cookies asked for that are no longer open (the connection ended meanwhile).
    pub gone: usize,
    /// Sockets the kernel refused to destroy, with its reason.
    pub failed: Vec<(u64, String)>,
}

/// One socket found by cookie.
struct Found {
    family: u8,
    protocol: u8,
    id: SocketId,
}

/// The cookie of a socket as `inet_diag` reports it (two host-order 32-bit halves, low first).
fn cookie_of(id: &SocketId) -> u64 {
    let c = id.cookie;
    let lo = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
    let hi = u32::from_ne_bytes([c[4], c[5], c[6], c[7]]);
    u64::from(lo) | (u64::from(hi) << 32)
}

struct Diag {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Diag {
    fn open() -> Result<Self, SocketError> {
        let err = |step: &str, e: std::io::Error| SocketError {
            step: step.into(),
            reason: e.to_string(),
        };
        let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(|e| err("socket", e))?;
        socket.bind_auto().map_err(|e| err("bind", e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| err("connect", e))?;
        Ok(Self {
            socket,
            seq: 0,
            buf: vec![0; 64 << 10],
        })
    }

    fn send<T>(&mut self, flags: u16, payload: T, step: &str) -> Result<u32, SocketError>
    where
        T: netlink_packet_core::NetlinkSerializable + std::fmt::Debug,
        NetlinkPayload<T>: From<T>,
    {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(payload));
        msg.finalize();
        let mut bytes = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut bytes);
        self.socket.send(&bytes, 0).map_err(|e| SocketError {
            step: step.into(),
            reason: e.to_string(),
        })?;
        Ok(self.seq)
    }

    /// Reads the messages answering `seq`, handing each to `each`, until the answer is complete
    /// (`Done` for a dump, the acknowledgement for a request). Returns the acknowledgement's
    /// error code (0 for success).
    fn answers(
        &mut self,
        seq: u32,
        step: &str,
        mut each: impl FnMut(&SocketId),
    ) -> Result<i32, SocketError> {
        loop {
            let n = self
                .socket
                .recv(&mut &mut self.buf[..], 0)
                .map_err(|e| SocketError {
                    step: step.into(),
                    reason: e.to_string(),
                })?;
            let mut offset = 0;
            while offset < n {
                let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&self.buf[offset..n])
                    .map_err(|e| SocketError {
                        step: step.into(),
                        reason: e.to_string(),
                    })?;
                let len = msg.header.length as usize;
                if len == 0 {
                    break;
                }
                offset += len;
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                        each(&r.header.socket_id)
                    }
                    NetlinkPayload::Done(_) => return Ok(0),
                    NetlinkPayload::Error(e) => return Ok(e.raw_code()),
                    _ => {}
                }
            }
        }
    }

    /// Every socket of one family and protocol whose cookie is in `wanted`.
    fn find(
        &mut self,
        family: u8,
        protocol: u8,
        wanted: &HashSet<u64>,
        out: &mut Vec<Found>,
    ) -> Result<(), SocketError> {
        let step = format!("listing {} sockets", proto_name(family, protocol));
        let request = SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id: if family == AF_INET {
                SocketId::new_v4()
            } else {
                SocketId::new_v6()
            },
        });
        let seq = self.send(NLM_F_REQUEST | NLM_F_DUMP, request, &step)?;
        let code = self.answers(seq, &step, |id| {
            if wanted.contains(&cookie_of(id)) {
                out.push(Found {
                    family,
                    protocol,
                    id: id.clone(),
                });
            }
        })?;
        if code != 0 {
            return Err(SocketError {
                step,
                reason: std::io::Error::from_raw_os_error(-code).to_string(),
            });
        }
        Ok(())
    }

    /// `Ok(false)` when the socket no longer exists.
    fn destroy(&mut self, f: &Found) -> Result<bool, String> {
        let step = format!("destroying a {} socket", proto_name(f.family, f.protocol));
        let request = SockDiagDestroy::new(SockDiagMessage::InetRequest(InetRequest {
            family: f.family,
            protocol: f.protocol,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id: f.id.clone(),
        }));
        let seq = self
            .send(NLM_F_REQUEST | NLM_F_ACK, request, &step)
            .map_err(|e| e.to_string())?;
        match self.answers(seq, &step, |_| {}) {
            Ok(0) => Ok(true),
            Ok(code) if -code == libc::ENOENT => Ok(false),
            Ok(code) => Err(describe_errno(-code)),
            Err(e) => Err(e.to_string()),
        }
    }
}

fn describe_errno(errno: i32) -> String {
    let base = std::io::Error::from_raw_os_error(errno).to_string();
    if errno == libc::EOPNOTSUPP {
        format!("{base} (the kernel lacks CONFIG_INET_DIAG_DESTROY)")
    } else {
        base
    }
}

fn proto_name(family: u8, protocol: u8) -> &'static str {
    match (family == AF_INET6, protocol == IPPROTO_UDP) {
        (false, false) => "TCP/IPv4",
        (true, false) => "TCP/IPv6",
        (false, true) => "UDP/IPv4",
        (true, true) => "UDP/IPv6",
    }
}

/// Destroys every open TCP or UDP socket whose cookie is in `cookies`. Blocking (a few netlink
/// round trips); run it off the async runtime.
pub fn destroy(cookies: &HashSet<u64>) -> Result<Closed, SocketError> {
    if cookies.is_empty() {
        return Ok(Closed::default());
    }
    let mut diag = Diag::open()?;
    let mut found = Vec::new();
    for family in [AF_INET, AF_INET6] {
        for protocol in [IPPROTO_TCP, IPPROTO_UDP] {
            diag.find(family, protocol, cookies, &mut found)?;
        }
    }
    let mut report = Closed::default();
    let mut seen = HashSet::new();
    for f in &found {
        let cookie = cookie_of(&f.id);
        if !seen.insert(cookie) {
            continue;
        }
        match diag.destroy(f) {
            Ok(true) => report.closed += 1,
            // Closed between the listing and now.
            Ok(false) => report.gone += 1,
            Err(e) => report.failed.push((cookie, e)),
        }
    }
    report.gone += cookies.len() - seen.len();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_halves_are_read_low_first_in_host_order() {
        let mut id = SocketId::new_v4();
        let want: u64 = 0x0000_0012_3456_789a;
        id.cookie[..4].copy_from_slice(&(want as u32).to_ne_bytes());
        id.cookie[4..].copy_from_slice(&((want >> 32) as u32).to_ne_bytes());
        assert_eq!(cookie_of(&id), want);
    }

    #[test]
    fn nothing_asked_nothing_done() {
        assert_eq!(destroy(&HashSet::new()).expect("no-op"), Closed::default());
    }
}
