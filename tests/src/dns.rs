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

/// The loopback address dnsmasq listens on: not 127.0.0.1, so that it never meets a resolver
/// of the host's own.
pub const SERVER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 153);

/// One server at a time: they share the address and port.
static ONE: Mutex<()> = Mutex::new(());

/// A running dnsmasq and a `resolv.conf` naming it. Stopped on drop.
pub struct DnsServer {
    child: Child,
    _one: MutexGuard<'static, ()>,
    /// A `resolv.conf` whose only server is this one.
    pub resolv_conf: PathBuf,
    dir: PathBuf,
}

impl DnsServer {
    /// Starts dnsmasq with these `--host-record` (`name,address,ttl`) and `--cname`
    /// (`alias,target`) values, and waits until it answers.
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
        let mut cmd = Command::new("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--port=53",
            "--bind-dynamic",
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
