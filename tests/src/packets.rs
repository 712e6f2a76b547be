//! What the packet tests look at: every packet that arrives on a raw socket of the test's own,
//! and kernel settings held for the length of a test.

use std::time::{Duration, Instant};

/// Everything that arrives on a raw socket of `protocol` (the test's own, outside any watched
/// cgroup): the evidence that a packet reached its destination.
pub struct Arrivals {
    fd: std::os::fd::OwnedFd,
    seen: Vec<Vec<u8>>,
}

impl Arrivals {
    /// A socket of `kind` and `protocol`, bound to `bind_to` where given.
    pub fn new(kind: i32, protocol: i32, bind_to: Option<std::net::SocketAddrV4>) -> Self {
        use std::os::fd::FromRawFd;
        // SAFETY: a new socket, owned at once.
        let fd = unsafe { libc::socket(libc::AF_INET, kind | libc::SOCK_NONBLOCK, protocol) };
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` is a new descriptor nobody else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        if let Some(a) = bind_to {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            use std::os::fd::AsRawFd;
            // SAFETY: binding our socket to a local address.
            let r = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&sin as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
        }
        Arrivals {
            fd,
            seen: Vec::new(),
        }
    }

    /// The port it is bound to.
    pub fn port(&self) -> u16 {
        use std::os::fd::AsRawFd;
        // SAFETY: getsockname into a local of the right size.
        unsafe {
            let mut sin: libc::sockaddr_in = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            libc::getsockname(
                self.fd.as_raw_fd(),
                (&mut sin as *mut libc::sockaddr_in).cast(),
                &mut len,
            );
            u16::from_be(sin.sin_port)
        }
    }

    /// Takes in everything that arrived.
    pub fn drain(&mut self) {
        use std::os::fd::AsRawFd;
        let mut buf = [0u8; 2048];
        loop {
            // SAFETY: reads into a local buffer.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                return;
            }
            self.seen.push(buf[..n as usize].to_vec());
        }
    }

    /// Forgets what arrived so far.
    pub fn forget(&mut self) {
        self.drain();
        self.seen.clear();
    }

    /// Whether a packet carrying `needle` arrived.
    pub fn has(&mut self, needle: &[u8]) -> bool {
        self.drain();
        self.seen
            .iter()
            .any(|p| p.windows(needle.len()).any(|w| w == needle))
    }

    /// Waits (boundedly) for a packet carrying `needle`.
    pub fn wait_for(&mut self, needle: &[u8]) -> bool {
        let deadline = Instant::now() + crate::patience();
        while Instant::now() < deadline {
            if self.has(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }
}

/// A sysctl set for the length of a test, and put back after it.
pub struct Sysctl {
    path: &'static str,
}

/// The settings tests hold: each one's value before the first holder set it, and how many hold
/// it. Tests run in parallel; the value goes back only when the last holder is done, or one
/// test's end would undo what another still relies on.
static SYSCTLS: std::sync::Mutex<Vec<(&'static str, String, usize)>> =
    std::sync::Mutex::new(Vec::new());

impl Sysctl {
    /// Sets the sysctl file `path` to `value` until dropped.
    pub fn set(path: &'static str, value: &str) -> Self {
        let mut held = SYSCTLS.lock().unwrap_or_else(|e| e.into_inner());
        let old = match held.iter().any(|(p, ..)| *p == path) {
            true => None,
            false => {
                Some(std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}")))
            }
        };
        // Counted only once written: a failed write leaves nothing to restore.
        std::fs::write(path, value).unwrap_or_else(|e| panic!("write {path}: {e}"));
        match old {
            Some(old) => held.push((path, old, 1)),
            None => {
                if let Some((_, _, n)) = held.iter_mut().find(|(p, ..)| *p == path) {
                    *n += 1;
                }
            }
        }
        Sysctl { path }
    }

    /// Lets root make unprivileged ping sockets (`net.ipv4.ping_group_range`), until dropped:
    /// the ICMP that no socket hook sees.
    pub fn ping_sockets_for_root() -> Self {
        Sysctl::set("/proc/sys/net/ipv4/ping_group_range", "0 0")
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let mut held = SYSCTLS.lock().unwrap_or_else(|e| e.into_inner());
        let Some(i) = held.iter().position(|(p, ..)| *p == self.path) else {
            return;
        };
        held[i].2 -= 1;
        if held[i].2 == 0 {
            let (path, old, _) = held.remove(i);
            let _ = std::fs::write(path, old.trim());
        }
    }
}
