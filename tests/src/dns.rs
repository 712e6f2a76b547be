//! A real DNS server for the name rules' tests: Debian's dnsmasq, answering on loopback port 53
//! (the port the kernel turns to the agent's resolver proxy) with the records a test gives.

use std::{
    net::{Ipv4Addr, UdpSocket},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use crate::patience;

/// The address dnsmasq listens on. (On another loopback address than an interface's own,
/// dnsmasq answers UDP but drops TCP connections.)
pub const SERVER: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// One server at a time: they share the address and port.
static ONE: Mutex<()> = Mutex::new(());

/// A running dnsmasq and a `resolv.conf` naming it. Stopped on drop.
pub struct DnsServer {
    child: Child,
    _one: MutexGuard<'static, ()>,
    /// A `resolv.conf` whose only server is this one.
    pub resolv_conf: PathBuf,
    /// The same, with `options use-vc`: the C library asks over TCP.
    pub resolv_conf_tcp: PathBuf,
    dir: PathBuf,
}

impl DnsServer {
    /// Starts dnsmasq with these `--host-record` (`name,address,ttl`) and `--cname`
    /// (`alias,target`) values, and waits until it answers. A name given several records has
    /// all their addresses.
    pub fn start(host_records: &[&str], cnames: &[&str]) -> DnsServer {
        let one = ONE.lock().unwrap_or_else(|p| p.into_inner());
        let dir = std::env::temp_dir().join(format!("latch-dns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dns test directory");
        let resolv_conf = dir.join("resolv.conf");
        std::fs::write(
            &resolv_conf,
            format!("nameserver {SERVER}\noptions timeout:2 attempts:2\n"),
        )
        .expect("write resolv.conf");
        let resolv_conf_tcp = dir.join("resolv-tcp.conf");
        std::fs::write(
            &resolv_conf_tcp,
            format!("nameserver {SERVER}\noptions timeout:2 attempts:2 use-vc\n"),
        )
        .expect("write resolv.conf");
        let mut cmd = Command::new("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--port=53",
            "--bind-interfaces",
            "--local-ttl=300",
            "--pid-file=",
            "--log-facility=-",
        ])
        .arg(format!("--listen-address={SERVER}"));
        for r in host_records {
            cmd.arg(format!("--host-record={r}"));
        }
        for c in cnames {
            cmd.arg(format!("--cname={c}"));
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start dnsmasq ({e}): the name rules' tests need it \
                     (Debian package dnsmasq-base; `cargo xtask test` installs it)"
                )
            });
        let server = DnsServer {
            child,
            _one: one,
            resolv_conf,
            resolv_conf_tcp,
            dir,
        };
        server.wait_answering();
        server
    }

    /// dnsmasq answers a query for the root's NS records once it listens.
    fn wait_answering(&self) {
        let deadline = Instant::now() + patience();
        // id 1, recursion desired, one question: ". NS IN".
        let query = [0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1];
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut buf = [0u8; 512];
        while Instant::now() < deadline {
            if sock.send_to(&query, (SERVER, 53)).is_ok() && sock.recv_from(&mut buf).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "dnsmasq did not answer on {SERVER}:53 within {:?}",
            patience()
        );
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A DNS server that answers every query for an IPv4 address twice over UDP: first with a
/// forged answer (another id) carrying `forged`, then with the real one carrying `real`, as an
/// attacker racing the server would. Stopped on drop.
pub struct ForgingServer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// A `resolv.conf` whose only server is this one.
    pub resolv_conf: PathBuf,
}

impl ForgingServer {
    /// Listens on `at` port 53.
    pub fn start(at: Ipv4Addr, forged: Ipv4Addr, real: Ipv4Addr) -> ForgingServer {
        use hickory_proto::{
            op::{Message, MessageType},
            rr::{rdata::A, RData, Record},
        };
        let sock = UdpSocket::bind((at, 53)).expect("bind the forging server");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let resolv_conf =
            std::env::temp_dir().join(format!("latch-forging-{}.conf", std::process::id()));
        std::fs::write(
            &resolv_conf,
            format!("nameserver {at}\noptions timeout:2 attempts:1\n"),
        )
        .expect("write resolv.conf");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(q) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let answer = |id: u16, ip: Ipv4Addr| {
                    let mut m = Message::new();
                    m.set_id(id)
                        .set_message_type(MessageType::Response)
                        .set_op_code(q.op_code())
                        .set_recursion_desired(true)
                        .set_recursion_available(true);
                    m.add_queries(q.queries().to_vec());
                    if let Some(question) = q.queries().first() {
                        if question.query_type() == hickory_proto::rr::RecordType::A {
                            m.add_answer(Record::from_rdata(
                                question.name().clone(),
                                300,
                                RData::A(A(ip)),
                            ));
                        }
                    }
                    m.to_vec().unwrap_or_default()
                };
                let _ = sock.send_to(&answer(q.id() ^ 0x5555, forged), from);
                let _ = sock.send_to(&answer(q.id(), real), from);
            }
        });
        ForgingServer {
            stop,
            thread: Some(thread),
            resolv_conf,
        }
    }
}

impl Drop for ForgingServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.resolv_conf);
    }
}
