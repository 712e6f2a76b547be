//! The resolver proxy: where the kernel sends the DNS queries of workloads whose rules name
//! hosts. Each query is forwarded to the server the workload asked (UDP, or TCP for a TCP
//! query), the answer is checked against the query, its addresses are learned (in the kernel
//! before the workload sees them), and the server's answer is passed back unchanged.
//!
//! Nothing here decides: a query the proxy cannot place (no record of whose it is), a message
//! that is not a query, an answer that does not match its query, are dropped and counted; the
//! workload then gets no answer, as from a lost packet, and nothing is learned.

use std::{
    future::Future,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use agent_common::{family, proto, DnsOrigin, DnsPeerKey};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::timeout,
};

use super::message::{self, Answer, MessageError};
use crate::metrics::Metrics;

/// How long the server has to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a TCP client may stay idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// UDP queries handled at once; more are dropped (the client asks again).
const IN_FLIGHT: usize = 512;
/// TCP connections served at once; more are closed.
const TCP_CONNECTIONS: usize = 256;
/// Largest UDP message read.
const UDP_MAX: usize = 65_535;

/// What the proxy needs from the engine: whose a query is, and to learn an answer.
pub trait Learner: Clone + Send + Sync + 'static {
    /// Where the query from this socket was going, and whose it is.
    fn origin(&self, key: DnsPeerKey) -> impl Future<Output = Option<DnsOrigin>> + Send;
    /// Records the answer's addresses for `workload`; `true` once the kernel has them.
    fn learn(&self, workload: u32, answer: Answer) -> impl Future<Output = bool> + Send;
}

/// The proxy's sockets, bound before the kernel programs load (they carry its port).
pub struct Proxy {
    port: u16,
    udp: Vec<(u8, std::net::UdpSocket)>,
    tcp: Vec<(u8, std::net::TcpListener)>,
}

impl Proxy {
    /// Binds UDP and TCP on 127.0.0.1 and, where the host has IPv6 loopback, ::1, all on one
    /// port the kernel chose.
    pub fn bind() -> io::Result<Proxy> {
        let mut last = None;
        for _ in 0..16 {
            match Self::try_bind() {
                Ok(p) => return Ok(p),
                // The port the kernel gave for UDP was taken for TCP or on ::1: another.
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no free port")))
    }

    fn try_bind() -> io::Result<Proxy> {
        let udp4 = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = udp4.local_addr()?.port();
        let tcp4 = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))?;
        let mut udp = vec![(family::INET, udp4)];
        let mut tcp = vec![(family::INET, tcp4)];
        match std::net::UdpSocket::bind((Ipv6Addr::LOCALHOST, port)) {
            Ok(u) => {
                udp.push((family::INET6, u));
                tcp.push((
                    family::INET6,
                    std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, port))?,
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => return Err(e),
            // No IPv6 loopback here: queries to IPv6 servers are not turned to the proxy, and
            // their answers are not learned.
            Err(e) => tracing::info!("resolver proxy on IPv4 only: cannot bind [::1]:{port}: {e}"),
        }
        for (_, s) in &udp {
            s.set_nonblocking(true)?;
        }
        for (_, s) in &tcp {
            s.set_nonblocking(true)?;
        }
        Ok(Proxy { port, udp, tcp })
    }

    /// The port, for the kernel programs.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether it also listens on `::1`.
    pub fn has_v6(&self) -> bool {
        self.udp.iter().any(|(f, _)| *f == family::INET6)
    }

    /// Serves until the runtime stops.
    pub fn spawn<L: Learner>(self, learner: L, stats: Metrics) -> io::Result<()> {
        let udp_limit = Arc::new(Semaphore::new(IN_FLIGHT));
        let tcp_limit = Arc::new(Semaphore::new(TCP_CONNECTIONS));
        for (fam, s) in self.udp {
            let sock = Arc::new(UdpSocket::from_std(s)?);
            let (l, m, lim) = (learner.clone(), stats.clone(), udp_limit.clone());
            tokio::spawn(serve_udp(fam, sock, l, m, lim));
        }
        for (fam, s) in self.tcp {
            let listener = TcpListener::from_std(s)?;
            let (l, m, lim) = (learner.clone(), stats.clone(), tcp_limit.clone());
            tokio::spawn(serve_tcp(fam, listener, l, m, lim));
        }
        Ok(())
    }
}

async fn serve_udp<L: Learner>(
    fam: u8,
    sock: Arc<UdpSocket>,
    learner: L,
    stats: Metrics,
    limit: Arc<Semaphore>,
) {
    let mut buf = vec![0u8; UDP_MAX];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("resolver proxy: receive failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(permit) = admit(from, &limit, &stats) else {
            continue;
        };
        let bytes = buf[..n].to_vec();
        let (sock, learner, stats) = (sock.clone(), learner.clone(), stats.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let key = DnsPeerKey {
                port: from.port(),
                proto: proto::UDP,
                family: fam,
            };
            if let Some(reply) = handle(&learner, &stats, key, &bytes, Upstream::Udp).await {
                if let Err(e) = sock.send_to(&reply, from).await {
                    tracing::debug!("resolver proxy: answer to {from} not sent: {e}");
                }
            }
        });
    }
}

async fn serve_tcp<L: Learner>(
    fam: u8,
    listener: TcpListener,
    learner: L,
    stats: Metrics,
    limit: Arc<Semaphore>,
) {
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("resolver proxy: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(permit) = admit(from, &limit, &stats) else {
            continue;
        };
        let (learner, stats) = (learner.clone(), stats.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let key = DnsPeerKey {
                port: from.port(),
                proto: proto::TCP,
                family: fam,
            };
            // A connection of no recorded socket is closed at once.
            if learner.origin(key).await.is_none() {
                stats.dns("unplaced");
                return;
            }
            let mut stream = stream;
            while let Ok(Ok(Some(q))) = timeout(TCP_IDLE, read_framed(&mut stream)).await {
                let Some(reply) = handle(&learner, &stats, key, &q, Upstream::Tcp).await else {
                    break;
                };
                // A client that does not read its answers does not keep the connection.
                let written = timeout(UPSTREAM_TIMEOUT, write_framed(&mut stream, &reply)).await;
                if !matches!(written, Ok(Ok(()))) {
                    break;
                }
            }
        });
    }
}

#[derive(Clone, Copy)]
enum Upstream {
    Udp,
    Tcp,
}

/// One query: placed, checked, forwarded, its answer checked and learned. `None`: dropped.
async fn handle<L: Learner>(
    learner: &L,
    stats: &Metrics,
    key: DnsPeerKey,
    bytes: &[u8],
    how: Upstream,
) -> Option<Vec<u8>> {
    let Some(origin) = learner.origin(key).await else {
        stats.dns("unplaced");
        tracing::debug!(
            "resolver proxy: a query from port {} of no recorded socket",
            key.port
        );
        return None;
    };
    let query = match message::read_query(bytes) {
        Ok(q) => q,
        Err(e) => {
            stats.dns("malformed");
            tracing::debug!("resolver proxy: query dropped: {e}");
            return None;
        }
    };
    let server = server_addr(&origin)?;
    let exchanged = match how {
        Upstream::Udp => timeout(UPSTREAM_TIMEOUT, ask_udp(server, bytes, &query, stats)).await,
        Upstream::Tcp => timeout(UPSTREAM_TIMEOUT, ask_tcp(server, bytes, &query, stats)).await,
    };
    let (reply, answer) = match exchanged {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            stats.dns("upstream_failed");
            tracing::debug!("resolver proxy: {server}: {e}");
            return None;
        }
        Err(_) => {
            stats.dns("upstream_failed");
            tracing::debug!("resolver proxy: {server} did not answer in time");
            return None;
        }
    };
    if !learner.learn(origin.workload, answer).await {
        stats.dns("unlearned");
        return None;
    }
    stats.dns("answered");
    Some(reply)
}

/// Whether a datagram or connection from `from` is served, with the slot it takes. The kernel
/// sends a workload's query from 127.0.0.1 or ::1 (where it turned it): any other source is
/// not a workload's socket, whatever its port. Beyond the limit, it is dropped.
fn admit(
    from: SocketAddr,
    limit: &Arc<Semaphore>,
    stats: &Metrics,
) -> Option<OwnedSemaphorePermit> {
    if !from_loopback(from) {
        stats.dns("unplaced");
        return None;
    }
    match limit.clone().try_acquire_owned() {
        Ok(p) => Some(p),
        Err(_) => {
            stats.dns("overloaded");
            None
        }
    }
}

fn from_loopback(from: SocketAddr) -> bool {
    match from.ip() {
        IpAddr::V4(a) => a == Ipv4Addr::LOCALHOST,
        IpAddr::V6(a) => {
            a == Ipv6Addr::LOCALHOST || a.to_ipv4_mapped() == Some(Ipv4Addr::LOCALHOST)
        }
    }
}

fn server_addr(o: &DnsOrigin) -> Option<SocketAddr> {
    let ip = match o.family {
        family::INET => IpAddr::V4(Ipv4Addr::new(o.addr[0], o.addr[1], o.addr[2], o.addr[3])),
        family::INET6 => IpAddr::V6(Ipv6Addr::from(o.addr)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, o.port))
}

#[derive(Debug, thiserror::Error)]
enum AskError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("answer longer than a DNS message may be")]
    TooLong,
}

async fn ask_udp(
    server: SocketAddr,
    bytes: &[u8],
    query: &message::Query,
    stats: &Metrics,
) -> Result<(Vec<u8>, Answer), AskError> {
    let local: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(local).await?;
    sock.connect(server).await?;
    sock.send(bytes).await?;
    let mut buf = vec![0u8; UDP_MAX];
    loop {
        let n = sock.recv(&mut buf).await?;
        match message::read_answer(query, &buf[..n]) {
            Ok(a) => return Ok((buf[..n].to_vec(), a)),
            // A forged or stray answer: keep waiting for the real one until the time is up.
            Err(e) => note_bad_answer(stats, server, &e),
        }
    }
}

async fn ask_tcp(
    server: SocketAddr,
    bytes: &[u8],
    query: &message::Query,
    stats: &Metrics,
) -> Result<(Vec<u8>, Answer), AskError> {
    let mut s = TcpStream::connect(server).await?;
    write_framed(&mut s, bytes).await?;
    loop {
        let Some(reply) = read_framed(&mut s).await? else {
            return Err(AskError::Io(io::ErrorKind::UnexpectedEof.into()));
        };
        match message::read_answer(query, &reply) {
            Ok(a) => return Ok((reply, a)),
            Err(e) => note_bad_answer(stats, server, &e),
        }
    }
}

fn note_bad_answer(stats: &Metrics, server: SocketAddr, e: &MessageError) {
    stats.dns("mismatched");
    tracing::debug!("resolver proxy: answer from {server} dropped: {e}");
}

/// One message of a DNS-over-TCP stream (two bytes of length first); `None` at a clean end.
async fn read_framed(s: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match s.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut msg).await?;
    Ok(Some(msg))
}

async fn write_framed(s: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, AskError::TooLong.to_string()))?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    s.write_all(&out).await
}
