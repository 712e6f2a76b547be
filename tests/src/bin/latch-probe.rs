//! A stand-in workload for the kernel tests: performs one action and prints its outcome as one
//! JSON line, so a test can tell "the call failed with EPERM" from "the call succeeded".
//!
//! ```text
//! latch-probe connect 127.0.0.1:8080     TCP connect()
//! latch-probe udp-send [::1]:5353        sendto() on an unconnected UDP socket
//! latch-probe hold 127.0.0.1:8080        TCP connect(), print a line, then wait for one read
//! latch-probe exec PROGRAM [ARG...]      run PROGRAM as a child; report how it ended
//! latch-probe connect-loop 127.0.0.1:80  connect() again and again until killed
//! latch-probe connect-from 127.0.0.2 0.0.0.0:8080
//!                                        bind to a source address, then TCP connect()
//! latch-probe icmp raw|ping ADDR TAG      one ICMP echo request to an IPv4 address carrying TAG,
//!                                        from a raw socket or an unprivileged ping socket
//! latch-probe udplite-send ADDR:PORT     sendto() on a UDP-Lite socket
//! latch-probe mptcp-connect ADDR:PORT    connect() on an MPTCP socket (IPPROTO_MPTCP)
//! latch-probe packet-udp-shared PORT TAG clone(CLONE_FILES) a second process, then make an
//!                                        AF_PACKET socket, on which the second one sends a UDP
//!                                        datagram carrying TAG to 127.0.0.1:PORT
//! latch-probe bpf-map                    create a small BPF array map with bpf()
//! latch-probe net32 CALL IPV4:PORT     a TCP connect() or a UDP datagram of "latch" made
//!                                        through the 32-bit system-call table (int 0x80), CALL
//!                                        one of connect, socketcall (SYS_CONNECT), sendto,
//!                                        socketcall-sendto (SYS_SENDTO), sendmsg, sendmmsg
//! latch-probe escape CGROUP ADDR:PORT    move this process into the cgroup directory CGROUP
//!                                        (its cgroup.procs), then TCP connect()
//! latch-probe moved CGROUP MODE [ARG...] move this process into CGROUP, then exec
//!                                        `latch-probe MODE ARG...` (reports as that mode)
//! latch-probe escape-thread-exec CGROUP ADDR:PORT
//!                                        move into CGROUP, then exec `latch-probe connect ADDR`
//!                                        from a thread other than the leader (the kernel gives
//!                                        the new image the leader's id)
//! latch-probe map-rie FILE                 map FILE readable only under the READ_IMPLIES_EXEC
//!                                        personality; report the mapping's permissions
//! latch-probe map-mprotect FILE          map FILE readable only, then mprotect it to
//!                                        PROT_READ|PROT_EXEC; report the mapping's permissions
//! latch-probe map-vfork FILE             a vfork child maps FILE executable at an address its
//!                                        parent reserved; the parent reports what is there
//! latch-probe leader-gone GO_FILE CGROUP ADDR:PORT
//!                                        start a second thread; once GO_FILE exists, move into
//!                                        CGROUP and end the leader alone; the other thread
//!                                        connects once the leader is gone
//! latch-probe escape-clone CGROUP ADDR:PORT
//!                                        clone3(CLONE_INTO_CGROUP) a child into CGROUP, which
//!                                        does the TCP connect()
//! latch-probe exec-via HOW PROGRAM [ARG...]
//!     run PROGRAM as a child in another way than by its name:
//!       fd       execveat(open(PROGRAM), "", AT_EMPTY_PATH)   (fexecve)
//!       procfd   execve("/proc/self/fd/N") of an open descriptor
//!       dirfd    execveat(open(dirname), basename, 0)
//!       memfd    a copy of PROGRAM in a memfd, run with execveat(memfd, "", AT_EMPTY_PATH)
//!       traced   PTRACE_TRACEME, then execve; the probe is the tracer and resumes every stop
//!                without its signal, as a debugger that swallows stops would (a refused
//!                PTRACE_TRACEME is reported as a failed exec, with its errno)
//! latch-probe victim FILE                a process another may debug: prints the address of
//!                                        two words, then waits until the first is not 0 and
//!                                        writes both, in decimal, to FILE
//! latch-probe recv-fd UNIX_SOCKET_PATH  receive a descriptor over that UNIX socket
//!                                        (SCM_RIGHTS) and send "passed" on it; a refused
//!                                        descriptor is `{"ok":false,"passed":false,...}`
//! latch-probe pass-udp ADDR:PORT UNIX_SOCKET_PATH COUNT
//!                                        connect a UDP socket to ADDR:PORT, listen at that
//!                                        UNIX socket path, and pass the UDP socket
//!                                        (SCM_RIGHTS) to each of COUNT connections
//! latch-probe poke ptrace|vm|mem PID ADDR WORD
//!                                        write the 8-byte WORD at ADDR in process PID, as a
//!                                        debugger: PTRACE_ATTACH and PTRACE_POKEDATA,
//!                                        process_vm_writev, or a write to /proc/PID/mem
//! ```
//!
//! `exec` reports `{"ok":true,"exit":N|null,"signal":N|null,"stdout":"..."}` once the child has
//! ended, or `{"ok":false,"errno":N}` when `execve` itself failed (a refused exec).
//!
//! `hold` keeps a long-lived connection: after connecting it prints `{"ok":true,"connected":true}`
//! and blocks in `read()`, then prints what the read gave (text, end of stream, or the error, as
//! when the connection is cut off under it).

#[path = "../fdpass.rs"]
mod fdpass;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
};

fn report(result: std::io::Result<()>) {
    match result {
        Ok(()) => println!("{{\"ok\":true}}"),
        Err(e) => println!(
            "{{\"ok\":false,\"errno\":{},\"error\":{:?}}}",
            e.raw_os_error().unwrap_or(-1),
            e.to_string()
        ),
    }
}

/// As [`report`], with `extra` (JSON members) in the same object.
fn report_with(extra: &str, result: std::io::Result<()>) {
    match result {
        Ok(()) => println!("{{{extra},\"ok\":true}}"),
        Err(e) => println!(
            "{{{extra},\"ok\":false,\"errno\":{},\"error\":{:?}}}",
            e.raw_os_error().unwrap_or(-1),
            e.to_string()
        ),
    }
}

fn hold(addr: SocketAddr) {
    let mut stream = match TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) => return report(Err(e)),
    };
    println!("{{\"ok\":true,\"connected\":true}}");
    let _ = std::io::stdout().flush();
    let mut buf = [0u8; 256];
    match stream.read(&mut buf) {
        Ok(0) => println!("{{\"ok\":true,\"eof\":true}}"),
        Ok(n) => println!(
            "{{\"ok\":true,\"read\":{:?}}}",
            String::from_utf8_lossy(&buf[..n]).trim()
        ),
        Err(e) => report(Err(e)),
    }
}

fn exec(program: &str, args: &[String]) {
    use std::os::unix::process::ExitStatusExt;
    match std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
    {
        Ok(out) => println!(
            "{{\"ok\":true,\"exit\":{},\"signal\":{},\"stdout\":{:?}}}",
            out.status.code().map_or("null".into(), |c| c.to_string()),
            out.status.signal().map_or("null".into(), |c| c.to_string()),
            String::from_utf8_lossy(&out.stdout)
        ),
        Err(e) => report(Err(e)),
    }
}

/// Ends the child after a failed exec, telling the parent the errno through `pipe`.
fn child_failed(pipe: i32) -> ! {
    let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(-1);
    // SAFETY: writes 4 bytes from a local; `_exit` does not return.
    unsafe {
        libc::write(pipe, (&e as *const i32).cast(), 4);
        libc::_exit(127)
    }
}

/// `fexecve`: `execveat(fd, "", AT_EMPTY_PATH)`; returns only if it failed.
///
/// # Safety
/// `argv` and `envp` are null-terminated arrays of C strings that outlive the call.
unsafe fn exec_fd(fd: i32, argv: &[*const libc::c_char], envp: &[*const libc::c_char]) {
    // SAFETY: the caller's contract; the kernel reads the arrays.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd,
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        );
    }
}

fn exec_via(how: &str, program: &str, args: &[String]) {
    use std::ffi::CString;
    let c = |s: &str| CString::new(s).unwrap_or_else(|_| CString::from(c"?"));
    let prog = c(program);
    let mut argv: Vec<CString> = vec![prog.clone()];
    argv.extend(args.iter().map(|a| c(a)));
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let (dir, base) = match program.rfind('/') {
        Some(i) => (c(&program[..i.max(1)]), c(&program[i + 1..])),
        None => (c("."), prog.clone()),
    };
    // Read before the fork: the child only makes system calls.
    let copy: Vec<u8> = if how == "memfd" {
        std::fs::read(program).unwrap_or_default()
    } else {
        Vec::new()
    };
    let mut fds = [0i32; 2];
    // SAFETY: plain system calls on locals; between fork and exec the child only makes system
    // calls (no allocation), as fork in a single-threaded program allows anyway.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return report(Err(std::io::Error::last_os_error()));
        }
        let pid = libc::fork();
        if pid < 0 {
            return report(Err(std::io::Error::last_os_error()));
        }
        if pid == 0 {
            libc::close(fds[0]);
            match how {
                "fd" => {
                    let fd = libc::open(prog.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                    exec_fd(fd, &argv_p, &envp);
                }
                "procfd" => {
                    let fd = libc::open(prog.as_ptr(), libc::O_RDONLY);
                    let path = CString::new(format!("/proc/self/fd/{fd}")).unwrap_or_default();
                    libc::execve(path.as_ptr(), argv_p.as_ptr(), envp.as_ptr());
                }
                "dirfd" => {
                    let fd = libc::open(dir.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
                    libc::syscall(
                        libc::SYS_execveat,
                        fd,
                        base.as_ptr(),
                        argv_p.as_ptr(),
                        envp.as_ptr(),
                        0,
                    );
                }
                "memfd" => {
                    let fd = libc::memfd_create(c"copy".as_ptr(), libc::MFD_CLOEXEC);
                    let mut off = 0usize;
                    while off < copy.len() {
                        let n = libc::write(fd, copy.as_ptr().add(off).cast(), copy.len() - off);
                        if n <= 0 {
                            break;
                        }
                        off += n as usize;
                    }
                    exec_fd(fd, &argv_p, &envp);
                }
                "traced" => {
                    if libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) != 0 {
                        child_failed(fds[1]);
                    }
                    libc::execve(prog.as_ptr(), argv_p.as_ptr(), envp.as_ptr());
                }
                _ => libc::_exit(126),
            }
            child_failed(fds[1]);
        }
        libc::close(fds[1]);
        let mut status = 0;
        if how == "traced" {
            // Resume every stop without delivering its signal (SIGSTOP, SIGTRAP after exec).
            loop {
                if libc::waitpid(pid, &mut status, 0) < 0 {
                    break;
                }
                if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                    break;
                }
                libc::ptrace(libc::PTRACE_CONT, pid, 0, 0);
            }
        } else {
            libc::waitpid(pid, &mut status, 0);
        }
        let mut e = 0i32;
        if libc::read(fds[0], (&mut e as *mut i32).cast(), 4) == 4 {
            println!("{{\"ok\":false,\"errno\":{e}}}");
            return;
        }
        let exit = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status).to_string()
        } else {
            "null".into()
        };
        let signal = if libc::WIFSIGNALED(status) {
            libc::WTERMSIG(status).to_string()
        } else {
            "null".into()
        };
        println!("{{\"ok\":true,\"exit\":{exit},\"signal\":{signal}}}");
    }
}

/// TCP connect() from a socket bound to `src` (an IPv4 or IPv6 address; port 0).
fn connect_from(src: &str, dst: &str) {
    let (Ok(src), Ok(dst)) = (src.parse::<std::net::IpAddr>(), dst.parse::<SocketAddr>()) else {
        eprintln!("latch-probe: connect-from wants an address and an address:port");
        std::process::exit(2);
    };
    let sin6 = |ip: std::net::Ipv6Addr, port: u16| libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: port.to_be(),
        sin6_flowinfo: 0,
        sin6_addr: libc::in6_addr {
            s6_addr: ip.octets(),
        },
        sin6_scope_id: 0,
    };
    // SAFETY: plain system calls on a socket this function owns and on local addresses.
    unsafe {
        let family = if src.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        let fd = libc::socket(family, libc::SOCK_STREAM, 0);
        if fd < 0 {
            return report(Err(std::io::Error::last_os_error()));
        }
        let bound = match src {
            std::net::IpAddr::V4(ip) => {
                let a = sockaddr4(ip, 0);
                libc::bind(
                    fd,
                    (&a as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
            std::net::IpAddr::V6(ip) => {
                let a = sin6(ip, 0);
                libc::bind(
                    fd,
                    (&a as *const libc::sockaddr_in6).cast(),
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        };
        if bound != 0 {
            return report(Err(std::io::Error::last_os_error()));
        }
        let r = match dst {
            SocketAddr::V4(d) => {
                let b = sockaddr4(*d.ip(), d.port());
                libc::connect(
                    fd,
                    (&b as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
            SocketAddr::V6(d) => {
                let b = sin6(*d.ip(), d.port());
                libc::connect(
                    fd,
                    (&b as *const libc::sockaddr_in6).cast(),
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        };
        close_and_report(fd, r)
    }
}

/// Reports the outcome of a call that returned `r` on `fd` (0: success, else `errno`), then
/// closes `fd`.
///
/// # Safety
/// `fd` is an open descriptor the caller owns, closed here once; `errno` is the call's.
unsafe fn close_and_report(fd: i32, r: i32) {
    let res = if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    };
    // SAFETY: the caller's descriptor, closed once.
    unsafe { libc::close(fd) };
    report(res)
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += word as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn sockaddr4(ip: std::net::Ipv4Addr, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    }
}

/// Sends `payload` on a new socket of the given type and protocol to `to`.
fn send_on(kind: i32, protocol: i32, to: libc::sockaddr_in, payload: &[u8]) {
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain system calls on a socket this function owns, with local buffers.
    unsafe {
        let fd = libc::socket(libc::AF_INET, kind, protocol);
        if fd < 0 {
            return report(Err(std::io::Error::last_os_error()));
        }
        send_and_close(fd, payload, (&to as *const libc::sockaddr_in).cast(), len)
    }
}

/// Sends `payload` on `fd` to `to`, closes `fd` and reports the result.
///
/// # Safety
/// `fd` is an open socket the caller owns; `to` points to `len` bytes of a socket address.
unsafe fn send_and_close(fd: i32, payload: &[u8], to: *const libc::sockaddr, len: u32) {
    // SAFETY: the caller's contract; the payload is a live local buffer.
    let r = unsafe { libc::sendto(fd, payload.as_ptr().cast(), payload.len(), 0, to, len) };
    let res = if r >= 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    };
    // SAFETY: the caller's descriptor, closed once.
    unsafe { libc::close(fd) };
    report(res)
}

fn icmp(how: &str, addr: &str, tag: &str) {
    let Ok(ip) = addr.parse::<std::net::Ipv4Addr>() else {
        eprintln!("latch-probe: icmp wants an IPv4 address, not '{addr}'");
        std::process::exit(2);
    };
    // Echo request: type 8, code 0, checksum, identifier, sequence, then the tag.
    let mut msg = vec![8u8, 0, 0, 0, 0x4c, 0x54, 0, 1];
    msg.extend_from_slice(format!("latch-{tag}").as_bytes());
    let sum = checksum(&msg);
    msg[2..4].copy_from_slice(&sum.to_be_bytes());
    let kind = match how {
        "raw" => libc::SOCK_RAW,
        "ping" => libc::SOCK_DGRAM,
        other => {
            eprintln!("latch-probe: icmp raw|ping, not '{other}'");
            std::process::exit(2);
        }
    };
    send_on(kind, libc::IPPROTO_ICMP, sockaddr4(ip, 0), &msg)
}

fn udplite_send(addr: &str) {
    let Ok(to) = addr.parse::<std::net::SocketAddrV4>() else {
        eprintln!("latch-probe: udplite-send wants an IPv4 address:port, not '{addr}'");
        std::process::exit(2);
    };
    send_on(
        libc::SOCK_DGRAM,
        libc::IPPROTO_UDPLITE,
        sockaddr4(*to.ip(), to.port()),
        b"latch",
    )
}

/// `connect()` on an IPv4 MPTCP socket; a plain TCP listener takes it as TCP.
fn mptcp_connect(addr: &str) {
    const IPPROTO_MPTCP: i32 = 262;
    let Ok(to) = addr.parse::<std::net::SocketAddrV4>() else {
        eprintln!("latch-probe: mptcp-connect wants an IPv4 address:port, not '{addr}'");
        std::process::exit(2);
    };
    let sa = sockaddr4(*to.ip(), to.port());
    // SAFETY: plain system calls on a socket this function owns, with a local address.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, IPPROTO_MPTCP);
        if fd < 0 {
            return report(Err(std::io::Error::last_os_error()));
        }
        let r = libc::connect(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        close_and_report(fd, r)
    }
}

/// A UDP datagram to 127.0.0.1:`port`, built by hand (IPv4 and UDP headers) and sent on an
/// `AF_PACKET` socket through the loopback device: below IP, where no socket hook and no
/// cgroup `skb` program runs.
fn packet_udp(port: u16, tag: &str, via: SocketCall) {
    let pkt = udp_frame(port, tag);
    // SAFETY: plain system calls on a socket this function owns, with local buffers.
    unsafe {
        let (family, kind, proto) = (libc::AF_PACKET, libc::SOCK_DGRAM, ETH_P_IP.to_be() as i32);
        let fd = match via {
            SocketCall::Plain => libc::socket(family, kind, proto),
            SocketCall::Bits32 => socket32(family, kind, proto),
            SocketCall::Uring { poll_thread } => {
                match socket_uring(family, kind, proto, poll_thread) {
                    Ok(fd) => fd,
                    Err(e) => return report(Err(e)),
                }
            }
        };
        if fd < 0 {
            return report(Err(std::io::Error::last_os_error()));
        }
        let to = loopback_ll();
        send_and_close(
            fd,
            &pkt,
            (&to as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    }
}

const ETH_P_IP: u16 = 0x0800;

/// The loopback device as an `AF_PACKET` destination for IPv4.
fn loopback_ll() -> libc::sockaddr_ll {
    // SAFETY: a plain C struct, all zeroes valid.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = ETH_P_IP.to_be();
    // SAFETY: a constant C string.
    to.sll_ifindex = unsafe { libc::if_nametoindex(c"lo".as_ptr()) } as i32;
    to.sll_halen = 6;
    to
}

/// The AF_PACKET attack through a process that shares the descriptor table: this process makes
/// a second one with `clone(CLONE_FILES)` (not a thread) and then makes the `AF_PACKET` socket;
/// the second one waits for that socket to appear in the table they share and sends the frame
/// on it. Where the first is ended at its `socket()` call (which still completes), the second
/// would be left with the socket. Reports the first's socket call and how the second ended.
fn packet_udp_shared(port: u16, tag: &str) {
    let pkt = udp_frame(port, tag);
    let to = loopback_ll();
    // SAFETY: a new process with its own copy of this one's memory (no CLONE_VM) and this
    // one's descriptor table; it makes only system calls and ends with `_exit`.
    let child = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::CLONE_FILES | libc::SIGCHLD,
            0,
            0,
            0,
            0,
        )
    };
    if child < 0 {
        return report(Err(std::io::Error::last_os_error()));
    }
    if child == 0 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while std::time::Instant::now() < deadline {
            for fd in 3..256 {
                let mut domain: libc::c_int = 0;
                let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                // SAFETY: reads an int option into a local of that size.
                let r = unsafe {
                    libc::getsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        libc::SO_DOMAIN,
                        (&mut domain as *mut libc::c_int).cast(),
                        &mut len,
                    )
                };
                if r == 0 && domain == libc::AF_PACKET {
                    // SAFETY: a local buffer and address, on a descriptor of the shared table.
                    let sent = unsafe {
                        libc::sendto(
                            fd,
                            pkt.as_ptr().cast(),
                            pkt.len(),
                            0,
                            (&to as *const libc::sockaddr_ll).cast(),
                            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                        )
                    };
                    // SAFETY: ends this process without running the parent's exit handlers.
                    unsafe { libc::_exit(if sent >= 0 { 0 } else { 1 }) };
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        // SAFETY: as above.
        unsafe { libc::_exit(3) };
    }
    // SAFETY: a plain system call; the descriptor lands in the table both processes share.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, ETH_P_IP.to_be() as i32) };
    let made = if fd < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    };
    let mut status = 0;
    // SAFETY: waits for the child made above.
    unsafe { libc::waitpid(child as i32, &mut status, 0) };
    match made {
        Ok(()) => println!(
            "{{\"ok\":true,\"child_exit\":{}}}",
            libc::WEXITSTATUS(status)
        ),
        Err(e) => report(Err(e)),
    }
}

/// A UDP datagram to 127.0.0.1:`port` carrying `latch-TAG`, with its IPv4 header.
fn udp_frame(port: u16, tag: &str) -> Vec<u8> {
    let data = format!("latch-{tag}");
    let udp_len = 8 + data.len();
    let total = 20 + udp_len;
    let mut pkt = Vec::with_capacity(total);
    pkt.extend_from_slice(&[0x45, 0]);
    pkt.extend_from_slice(&(total as u16).to_be_bytes());
    pkt.extend_from_slice(&[0x4c, 0x54, 0x40, 0, 64, libc::IPPROTO_UDP as u8, 0, 0]);
    pkt.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 1]);
    let sum = checksum(&pkt);
    pkt[10..12].copy_from_slice(&sum.to_be_bytes());
    // UDP: source port, destination port, length, no checksum (allowed over IPv4).
    pkt.extend_from_slice(&9u16.to_be_bytes());
    pkt.extend_from_slice(&port.to_be_bytes());
    pkt.extend_from_slice(&(udp_len as u16).to_be_bytes());
    pkt.extend_from_slice(&[0, 0]);
    pkt.extend_from_slice(data.as_bytes());
    pkt
}

/// How a socket is asked for.
#[derive(Clone, Copy)]
enum SocketCall {
    /// `socket(2)`.
    Plain,
    /// `socket(2)` by the 32-bit system-call table.
    Bits32,
    /// An `IORING_OP_SOCKET` request to io_uring: no socket system call at all. With
    /// `poll_thread`, the ring's own kernel thread takes it from the queue (`SQPOLL`).
    Uring { poll_thread: bool },
}

/// Makes an io_uring ring with a submission thread (`SQPOLL`) and forks a child that inherits
/// it: the child prints `{"child": PID, "maker": PID, "ring": FD}` and waits for a signal; the
/// maker waits for the child. What the child would submit runs on the maker's thread, in the
/// maker's cgroup.
fn ring_fork() {
    use std::os::fd::AsRawFd;
    let ring: io_uring::IoUring = match io_uring::IoUring::builder().setup_sqpoll(1000).build(2) {
        Ok(r) => r,
        Err(e) => {
            report(Err(e));
            std::process::exit(1);
        }
    };
    // SAFETY: the only thread of this process that runs user code is this one (the ring's poll
    // thread is the kernel's); the child only writes and waits.
    match unsafe { libc::fork() } {
        0 => {
            println!(
                "{{\"child\":{},\"maker\":{},\"ring\":{}}}",
                std::process::id(),
                // SAFETY: a plain system call.
                unsafe { libc::getppid() },
                ring.as_raw_fd()
            );
            let _ = std::io::stdout().flush();
            loop {
                // SAFETY: waits for a signal.
                unsafe { libc::pause() };
            }
        }
        -1 => {
            report(Err(std::io::Error::last_os_error()));
            std::process::exit(1);
        }
        child => {
            // SAFETY: waits for our own child.
            unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
            drop(ring);
        }
    }
}

/// A socket made by io_uring (`IORING_OP_SOCKET`, Linux 5.19 and later) instead of by the
/// `socket` system call: what a system-call tracepoint does not see.
fn socket_uring(family: i32, kind: i32, proto: i32, poll_thread: bool) -> std::io::Result<i32> {
    let mut ring = if poll_thread {
        io_uring::IoUring::builder().setup_sqpoll(1000).build(2)?
    } else {
        io_uring::IoUring::new(2)?
    };
    let sqe = io_uring::opcode::Socket::new(family, kind, proto).build();
    // SAFETY: the request carries plain integers and no buffer that could outlive the ring.
    unsafe { ring.submission().push(&sqe) }
        .map_err(|e| std::io::Error::other(format!("io_uring submission queue: {e}")))?;
    ring.submit_and_wait(1)?;
    let cqe = ring
        .completion()
        .next()
        .ok_or_else(|| std::io::Error::other("io_uring: no completion"))?;
    match cqe.result() {
        fd if fd >= 0 => Ok(fd),
        err => Err(std::io::Error::from_raw_os_error(-err)),
    }
}

/// `socket(2)` made as a 32-bit system call (`int 0x80`, i386 call 359) from this 64-bit
/// process: the call goes through the 32-bit table, which the 64-bit system-call tracepoints
/// do not see. Sets `errno` as libc would.
#[cfg(target_arch = "x86_64")]
unsafe fn socket32(domain: i32, ty: i32, proto: i32) -> i32 {
    const NR_SOCKET_I386: i32 = 359;
    // SAFETY: the three arguments are plain integers, no pointers.
    unsafe {
        int80(
            NR_SOCKET_I386,
            [domain as u32, ty as u32, proto as u32, 0, 0, 0],
        )
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn socket32(_domain: i32, _ty: i32, _proto: i32) -> i32 {
    // SAFETY: errno is this thread's.
    unsafe { *libc::__errno_location() = libc::ENOSYS };
    -1
}

/// A system call of up to six integer arguments made through the 32-bit table (`int 0x80`)
/// from this 64-bit process. Sets `errno` as libc would. A pointer argument must point below
/// 4 GiB: the 32-bit table sees the low half of each register.
#[cfg(target_arch = "x86_64")]
unsafe fn int80(nr: i32, args: [u32; 6]) -> i32 {
    let ret: i32;
    // SAFETY: the caller vouches for what the arguments point to; `int 0x80` preserves every
    // register but eax, and r8-r11 are declared clobbered for good measure. A call the kernel
    // restarts runs again from the same registers.
    unsafe {
        // rbx and rbp belong to LLVM: the first argument is swapped into rbx and the sixth put
        // in rbp around the call, and both are given back. (Either operand may be given one of
        // them; the sequence holds whichever it is.)
        std::arch::asm!(
            "xchg rbx, {a}",
            "push rbp",
            "mov ebp, {f:e}",
            "int 0x80",
            "pop rbp",
            "xchg rbx, {a}",
            a = inout(reg) args[0] as u64 => _,
            f = in(reg) args[5],
            inlateout("eax") nr => ret,
            in("ecx") args[1],
            in("edx") args[2],
            in("esi") args[3],
            in("edi") args[4],
            out("r8") _, out("r9") _, out("r10") _, out("r11") _,
        );
    }
    if ret < 0 {
        // SAFETY: errno is this thread's.
        unsafe { *libc::__errno_location() = -ret };
        return -1;
    }
    ret
}

/// A TCP `connect` or a UDP datagram ("latch") to `addr`, made through the 32-bit system-call
/// table by each of its calls that can name a destination: `connect` (i386 call 362),
/// `socketcall` (`SYS_CONNECT`), `sendto` (369, six arguments), `socketcall-sendto`
/// (`SYS_SENDTO`), `sendmsg` (370) and `sendmmsg` (345), the last two with the 32-bit layouts of
/// `msghdr`, `iovec` and `mmsghdr`. The socket itself is made by the 64-bit call.
#[cfg(target_arch = "x86_64")]
fn net32(how: &str, addr: std::net::SocketAddrV4) {
    const NR_SOCKETCALL: i32 = 102;
    const NR_CONNECT: i32 = 362;
    const NR_SENDTO: i32 = 369;
    const NR_SENDMSG: i32 = 370;
    const NR_SENDMMSG: i32 = 345;
    const SYS_CONNECT: u32 = 3;
    const SYS_SENDTO: u32 = 11;
    let kind = match how {
        "connect" | "socketcall" => libc::SOCK_STREAM,
        "sendto" | "socketcall-sendto" | "sendmsg" | "sendmmsg" => libc::SOCK_DGRAM,
        other => {
            eprintln!("latch-probe: net32: unknown call '{other}'");
            std::process::exit(2);
        }
    };
    // SAFETY: a fresh anonymous mapping, asked below 2 GiB where 32-bit calls can point.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
            -1,
            0,
        )
    };
    if page == libc::MAP_FAILED {
        return report(Err(std::io::Error::last_os_error()));
    }
    // The page's layout: the address, the socketcall arguments, the payload, one iovec, one
    // msghdr (an mmsghdr is a msghdr and a length).
    let base = page as usize;
    let (sa, args, payload, iov, msg) = (base, base + 64, base + 128, base + 192, base + 256);
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: socket(2) with integer arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, kind, 0) };
    if fd < 0 {
        return report(Err(std::io::Error::last_os_error()));
    }
    let (fd, len) = (fd as u32, std::mem::size_of::<libc::sockaddr_in>() as u32);
    // SAFETY: the page is ours, writable and large enough for each of these at its offset; the
    // kernel reads them during the call, which ends before the page does (it is never unmapped).
    let ret = unsafe {
        std::ptr::write(sa as *mut libc::sockaddr_in, sin);
        std::ptr::copy_nonoverlapping(b"latch".as_ptr(), payload as *mut u8, 5);
        // struct compat_iovec { base, len }
        std::ptr::write(iov as *mut [u32; 2], [payload as u32, 5]);
        // struct compat_msghdr { name, namelen, iov, iovlen, control, controllen, flags },
        // then the mmsghdr's msg_len.
        std::ptr::write(
            msg as *mut [u32; 8],
            [sa as u32, len, iov as u32, 1, 0, 0, 0, 0],
        );
        match how {
            "connect" => int80(NR_CONNECT, [fd, sa as u32, len, 0, 0, 0]),
            "socketcall" => {
                std::ptr::write(args as *mut [u32; 3], [fd, sa as u32, len]);
                int80(NR_SOCKETCALL, [SYS_CONNECT, args as u32, 0, 0, 0, 0])
            }
            "sendto" => int80(NR_SENDTO, [fd, payload as u32, 5, 0, sa as u32, len]),
            "socketcall-sendto" => {
                let a = [fd, payload as u32, 5, 0, sa as u32, len];
                std::ptr::write(args as *mut [u32; 6], a);
                int80(NR_SOCKETCALL, [SYS_SENDTO, args as u32, 0, 0, 0, 0])
            }
            "sendmsg" => int80(NR_SENDMSG, [fd, msg as u32, 0, 0, 0, 0]),
            // One message sent counts as success.
            _ => match int80(NR_SENDMMSG, [fd, msg as u32, 1, 0, 0, 0]) {
                1 => 0,
                -1 => -1,
                n => {
                    *libc::__errno_location() = libc::EIO;
                    eprintln!("latch-probe: sendmmsg sent {n} messages");
                    -1
                }
            },
        }
    };
    report(match ret {
        -1 => Err(std::io::Error::last_os_error()),
        _ => Ok(()),
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn net32(_how: &str, _addr: std::net::SocketAddrV4) {
    report(Err(std::io::Error::from_raw_os_error(libc::ENOSYS)))
}

/// `bpf(BPF_MAP_CREATE)` of a one-entry array: whether this process may use `bpf()`.
fn bpf_map() {
    // map_type, key_size, value_size, max_entries, then zeros (the kernel checks the tail).
    let mut attr = [0u32; 30];
    attr[0] = 2; // BPF_MAP_TYPE_ARRAY
    attr[1] = 4;
    attr[2] = 4;
    attr[3] = 1;
    // SAFETY: BPF_MAP_CREATE (0) reads `size` bytes of the local, zero-padded attribute block.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0,
            attr.as_ptr(),
            std::mem::size_of_val(&attr) as u32,
        )
    };
    if fd < 0 {
        return report(Err(std::io::Error::last_os_error()));
    }
    // SAFETY: closing the descriptor just made.
    unsafe { libc::close(fd as i32) };
    report(Ok(()))
}

fn escape(cgroup: &str, addr: SocketAddr) {
    if let Err(e) = std::fs::write(format!("{cgroup}/cgroup.procs"), "0") {
        return report(Err(e));
    }
    report(TcpStream::connect(addr).map(drop))
}

/// `struct clone_args` of clone3(2), up to `cgroup`.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

fn escape_clone(cgroup: &str, addr: SocketAddr) {
    clone_into(cgroup, None, addr)
}

/// Starts a child in `cgroup` with `clone3(CLONE_INTO_CGROUP)`; the child moves on to `then`
/// (if given) and connects to `addr`; waits for it.
fn clone_into(cgroup: &str, then: Option<&str>, addr: SocketAddr) {
    use std::os::fd::AsRawFd;
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    let dir = match std::fs::File::open(cgroup) {
        Ok(d) => d,
        Err(e) => return report(Err(e)),
    };
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: dir.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    let _ = std::io::stdout().flush();
    // SAFETY: clone3 without a new stack behaves as fork: the child continues here with a copy
    // of this single-threaded process and only connects, prints and exits.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid < 0 {
        return report(Err(std::io::Error::last_os_error()));
    }
    if pid == 0 {
        if let Some(then) = then {
            if let Err(e) = std::fs::write(format!("{then}/cgroup.procs"), "0") {
                report(Err(e));
                let _ = std::io::stdout().flush();
                // SAFETY: as below.
                unsafe { libc::_exit(0) };
            }
        }
        report(TcpStream::connect(addr).map(drop));
        let _ = std::io::stdout().flush();
        // SAFETY: ends the child without running the parent's exit handlers twice.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just made.
    unsafe { libc::waitpid(pid as i32, &mut status, 0) };
}

/// Leaves for `cgroup`, then becomes `latch-probe MODE ARG...` there.
fn moved(cgroup: &str, rest: &[String]) {
    if let Err(e) = std::fs::write(format!("{cgroup}/cgroup.procs"), "0") {
        return report(Err(e));
    }
    let me = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return report(Err(e)),
    };
    let err = std::os::unix::process::CommandExt::exec(std::process::Command::new(me).args(rest));
    report(Err(err));
}

/// A second thread is started at once (before anyone moves the process); once `go` exists, the
/// leader moves the process to `cgroup` and ends by itself (`exit`, not `exit_group`), and the
/// other thread connects when the leader is gone.
fn leader_gone(go: &str, cgroup: &str, addr: SocketAddr) {
    let leader = std::process::id();
    let worker = std::thread::spawn(move || {
        let stat = format!("/proc/self/task/{leader}/stat");
        let gone = || {
            std::fs::read_to_string(&stat)
                .map(|t| {
                    t.rsplit(") ")
                        .next()
                        .is_some_and(|r| r.starts_with(['Z', 'X']))
                })
                .unwrap_or(true)
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !gone() {
            if std::time::Instant::now() > deadline {
                report(Err(std::io::Error::other("the leader did not end")));
                std::process::exit(1);
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        report(TcpStream::connect(addr).map(drop));
        std::process::exit(0);
    });
    while !std::path::Path::new(go).exists() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    if let Err(e) = std::fs::write(format!("{cgroup}/cgroup.procs"), "0") {
        report(Err(e));
        std::process::exit(1);
    }
    // SAFETY: ends this thread alone; the worker owns everything it uses.
    unsafe { libc::syscall(libc::SYS_exit, 0) };
    let _ = worker.join();
}

/// How a loader of the workload's own makes a readable mapping of a file executable without
/// asking `mmap` for `PROT_EXEC`.
#[derive(Clone, Copy, PartialEq)]
enum MapThen {
    /// The `READ_IMPLIES_EXEC` personality, set before the mapping.
    ReadImpliesExec,
    /// `mprotect(PROT_READ | PROT_EXEC)` after it.
    Mprotect,
}

/// Maps the first page of `file` readable only, makes it executable as `how` says, and reports
/// the permissions the kernel gave the mapping (`/proc/self/maps`).
fn map_then(file: &str, how: MapThen) {
    use std::os::fd::AsRawFd;
    const READ_IMPLIES_EXEC: libc::c_ulong = 0x0400000;
    // SAFETY: sets this process's personality flags only.
    if how == MapThen::ReadImpliesExec && unsafe { libc::personality(READ_IMPLIES_EXEC) } == -1 {
        return report(Err(std::io::Error::last_os_error()));
    }
    let f = match std::fs::File::open(file) {
        Ok(f) => f,
        Err(e) => return report(Err(e)),
    };
    // SAFETY: a new private mapping of an open file; nothing else refers to the address.
    let at = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            f.as_raw_fd(),
            0,
        )
    };
    if at == libc::MAP_FAILED {
        return report(Err(std::io::Error::last_os_error()));
    }
    // SAFETY: changes the protection of the page mapped above, which nothing else uses.
    if how == MapThen::Mprotect
        && unsafe { libc::mprotect(at, 4096, libc::PROT_READ | libc::PROT_EXEC) } != 0
    {
        return report(Err(std::io::Error::last_os_error()));
    }
    let line = maps_line(at);
    let perms = line.split_whitespace().nth(1).unwrap_or("?");
    println!("{{\"ok\":true,\"perms\":{perms:?}}}");
}

/// The line of `/proc/self/maps` for the mapping that starts at `at`, or an empty one.
fn maps_line(at: *mut libc::c_void) -> String {
    let start = format!("{:x}-", at as usize);
    std::fs::read_to_string("/proc/self/maps")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(&start))
        .unwrap_or("")
        .to_string()
}

/// A `vfork` child that maps the first page of `file` executable at an address agreed with its
/// parent (`MAP_FIXED` over a page the parent reserved), then ends; the parent, which shares
/// its memory and waits for it, reports what is mapped at that address when it wakes
/// (`/proc/self/maps`: permissions, and whether it is the file).
fn map_in_vfork_child(file: &str) {
    use std::os::fd::AsRawFd;
    let f = match std::fs::File::open(file) {
        Ok(f) => f,
        Err(e) => return report(Err(e)),
    };
    // SAFETY: a new anonymous reservation; the child maps over it, nothing else uses it.
    let at = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if at == libc::MAP_FAILED {
        return report(Err(std::io::Error::last_os_error()));
    }
    struct Job {
        at: *mut libc::c_void,
        fd: i32,
    }
    extern "C" fn child(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: the parent's `Job`, alive while the parent waits (vfork).
        let job = unsafe { &*(arg as *const Job) };
        // SAFETY: maps over the reserved page; only system calls, then `_exit`.
        unsafe {
            let m = libc::mmap(
                job.at,
                4096,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_FIXED,
                job.fd,
                0,
            );
            libc::_exit(if m == libc::MAP_FAILED { 1 } else { 0 })
        }
    }
    let mut job = Job {
        at,
        fd: f.as_raw_fd(),
    };
    let mut stack = vec![0u8; 64 * 1024];
    // SAFETY: the child runs `child` on its own stack (the top of `stack`, which outlives it
    // since the parent waits), with the job above.
    let pid = unsafe {
        libc::clone(
            child,
            stack.as_mut_ptr().add(stack.len()).cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&mut job as *mut Job).cast(),
        )
    };
    if pid < 0 {
        return report(Err(std::io::Error::last_os_error()));
    }
    let mut status = 0;
    // SAFETY: waits for the child made above.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let line = maps_line(at);
    let perms = line.split_whitespace().nth(1).unwrap_or("?");
    let name = std::path::Path::new(file)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    println!(
        "{{\"ok\":true,\"perms\":{perms:?},\"file\":{},\"child_exit\":{}}}",
        !name.is_empty() && line.ends_with(&format!("/{name}")),
        libc::WEXITSTATUS(status)
    );
}

fn escape_thread_exec(cgroup: &str, addr: SocketAddr) {
    if let Err(e) = std::fs::write(format!("{cgroup}/cgroup.procs"), "0") {
        return report(Err(e));
    }
    let me = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return report(Err(e)),
    };
    let to = addr.to_string();
    let worker = std::thread::spawn(move || {
        let err = std::os::unix::process::CommandExt::exec(
            std::process::Command::new(me).args(["connect", &to]),
        );
        report(Err(err));
    });
    let _ = worker.join();
}

/// The victim's two words: `[0]` tells it to report, `[1]` is where a debugger writes.
static SLOTS: [std::sync::atomic::AtomicU64; 2] = [
    std::sync::atomic::AtomicU64::new(0),
    std::sync::atomic::AtomicU64::new(0),
];

fn victim(file: &str) {
    use std::sync::atomic::Ordering;
    println!("{{\"ok\":true,\"addr\":{}}}", SLOTS.as_ptr() as usize);
    let _ = std::io::stdout().flush();
    // Bounded, so that a victim nobody signals does not outlive its test for long.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while SLOTS[0].load(Ordering::SeqCst) == 0 {
        if std::time::Instant::now() > deadline {
            std::process::exit(3);
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let words = format!(
        "{} {}",
        SLOTS[0].load(Ordering::SeqCst),
        SLOTS[1].load(Ordering::SeqCst)
    );
    report(std::fs::write(file, words));
}

fn poke(how: &str, pid: i32, addr: u64, word: u64) {
    let last = std::io::Error::last_os_error;
    // SAFETY: plain system calls on locals; the remote address is the other process's concern
    // (the kernel checks it).
    unsafe {
        match how {
            "ptrace" => {
                if libc::ptrace(libc::PTRACE_ATTACH, pid, 0, 0) != 0 {
                    return report(Err(last()));
                }
                let mut status = 0;
                libc::waitpid(pid, &mut status, libc::__WALL);
                let poked = libc::ptrace(libc::PTRACE_POKEDATA, pid, addr, word);
                let err = last();
                libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0);
                report(if poked == 0 { Ok(()) } else { Err(err) })
            }
            "vm" => {
                let local = libc::iovec {
                    iov_base: (&word as *const u64).cast_mut().cast(),
                    iov_len: 8,
                };
                let remote = libc::iovec {
                    iov_base: addr as *mut libc::c_void,
                    iov_len: 8,
                };
                match libc::process_vm_writev(pid, &local, 1, &remote, 1, 0) {
                    8 => report(Ok(())),
                    _ => report(Err(last())),
                }
            }
            "mem" => report(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(format!("/proc/{pid}/mem"))
                    .and_then(|f| {
                        std::os::unix::fs::FileExt::write_all_at(&f, &word.to_ne_bytes(), addr)
                    }),
            ),
            other => {
                eprintln!("latch-probe: unknown way to poke '{other}'");
                std::process::exit(2);
            }
        }
    }
}

/// Seizes process `pid` as a debugger from elsewhere would, and for `ms` milliseconds resumes
/// it at every stop without the signal that stopped it (a hold's SIGSTOP swallowed); then
/// exits, which detaches it. Reports how many stops it resumed.
fn trace_resume(pid: i32, ms: u64) {
    let last = std::io::Error::last_os_error;
    let end = std::time::Instant::now() + std::time::Duration::from_millis(ms);
    let mut resumed = 0u64;
    // SAFETY: plain system calls on integers and a local status word.
    unsafe {
        if libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0) != 0 {
            return report(Err(last()));
        }
        // Out of a stop it was already in (a held task is stopped before it is seized).
        libc::ptrace(libc::PTRACE_INTERRUPT, pid, 0, 0);
        while std::time::Instant::now() < end {
            let mut status = 0;
            let got = libc::waitpid(pid, &mut status, libc::__WALL | libc::WNOHANG);
            if got < 0 || (got == pid && !libc::WIFSTOPPED(status)) {
                // Gone.
                break;
            }
            if got == pid {
                libc::ptrace(libc::PTRACE_CONT, pid, 0, 0);
                resumed += 1;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    println!("{{\"ok\":true,\"resumed\":{resumed}}}");
}

/// Takes descriptor `fd` of process `pid` with `pidfd_getfd` (a connected socket, whose sends
/// no socket hook looks at again) and sends on it.
fn steal_fd(pid: i32, fd: i32) {
    let last = std::io::Error::last_os_error;
    // SAFETY: plain system calls on integers and a local buffer.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
        if pidfd < 0 {
            return report(Err(last()));
        }
        let stolen = libc::syscall(libc::SYS_pidfd_getfd, pidfd as i32, fd, 0);
        if stolen < 0 {
            return report(Err(last()));
        }
        let msg = b"stolen";
        let sent = libc::send(stolen as i32, msg.as_ptr().cast(), msg.len(), 0);
        report(if sent == msg.len() as isize {
            Ok(())
        } else {
            Err(last())
        })
    }
}

/// Receives one descriptor over the UNIX socket at `path` (`SCM_RIGHTS`) and sends a datagram
/// on it. Where the kernel refuses the descriptor, `recvmsg` still returns, with the control
/// message truncated: reported as `"passed":false`.
fn recv_fd(path: &str) {
    use std::os::fd::AsRawFd;
    let last = std::io::Error::last_os_error;
    let stream = match std::os::unix::net::UnixStream::connect(path) {
        Ok(s) => s,
        Err(e) => return report(Err(e)),
    };
    let mut byte = [0u8; 1];
    // Room for one descriptor's control message, aligned as `cmsghdr` needs.
    let mut control = [0u64; 8];
    // SAFETY: `recvmsg` into local buffers whose sizes are given; the control message is read
    // through the libc macros, within the buffer.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: byte.len(),
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        if libc::recvmsg(stream.as_raw_fd(), &mut msg, 0) < 0 {
            return report(Err(last()));
        }
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        let passed = !cmsg.is_null()
            && (*cmsg).cmsg_level == libc::SOL_SOCKET
            && (*cmsg).cmsg_type == libc::SCM_RIGHTS;
        if !passed {
            let truncated = msg.msg_flags & libc::MSG_CTRUNC != 0;
            return println!("{{\"ok\":false,\"passed\":false,\"truncated\":{truncated}}}");
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const i32);
        let msg = b"passed";
        let sent = libc::send(fd, msg.as_ptr().cast(), msg.len(), 0);
        report_with(
            "\"passed\":true",
            if sent == msg.len() as isize {
                Ok(())
            } else {
                Err(last())
            },
        )
    }
}

/// Connects a UDP socket to `addr` (made in this process's cgroup, which the socket keeps),
/// listens at `path`, and passes the socket to each of `count` connections.
fn pass_udp(addr: SocketAddr, path: &str, count: usize) {
    use std::os::fd::AsRawFd;
    let result = (|| {
        let any: SocketAddr = if addr.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()
        .map_err(std::io::Error::other)?;
        let udp = UdpSocket::bind(any)?;
        udp.connect(addr)?;
        // Listening before the name appears: a connection that finds the name is never
        // refused for coming between the bind and the listen.
        let bound = format!("{path}.binding");
        let listener = std::os::unix::net::UnixListener::bind(&bound)?;
        std::fs::rename(&bound, path)?;
        for _ in 0..count {
            let (stream, _) = listener.accept()?;
            fdpass::send_fd(&stream, udp.as_raw_fd())?;
        }
        Ok(())
    })();
    report(result)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("pass-udp") {
        let (Some(Ok(addr)), Some(path), Some(Ok(count))) = (
            args.get(2).map(|a| a.parse()),
            args.get(3),
            args.get(4).map(|c| c.parse()),
        ) else {
            eprintln!("usage: latch-probe pass-udp ADDR:PORT UNIX_SOCKET_PATH COUNT");
            std::process::exit(2);
        };
        return pass_udp(addr, path, count);
    }
    if args.get(1).map(String::as_str) == Some("recv-fd") {
        let Some(path) = args.get(2) else {
            eprintln!("usage: latch-probe recv-fd UNIX_SOCKET_PATH");
            std::process::exit(2);
        };
        return recv_fd(path);
    }
    if args.get(1).map(String::as_str) == Some("ring-fork") {
        return ring_fork();
    }
    if args.get(1).map(String::as_str) == Some("victim") {
        let Some(file) = args.get(2) else {
            eprintln!("usage: latch-probe victim FILE");
            std::process::exit(2);
        };
        return victim(file);
    }
    if args.get(1).map(String::as_str) == Some("poke") {
        let parsed = (
            args.get(2),
            args.get(3).and_then(|a| a.parse().ok()),
            args.get(4).and_then(|a| a.parse().ok()),
            args.get(5).and_then(|a| a.parse().ok()),
        );
        let (Some(how), Some(pid), Some(addr), Some(word)) = parsed else {
            eprintln!("usage: latch-probe poke ptrace|vm|mem PID ADDR WORD");
            std::process::exit(2);
        };
        return poke(how, pid, addr, word);
    }
    if let Some(cmd @ ("escape" | "escape-clone" | "escape-thread-exec")) =
        args.get(1).map(String::as_str)
    {
        let (Some(cg), Some(Ok(addr))) = (args.get(2), args.get(3).map(|a| a.parse())) else {
            eprintln!("usage: latch-probe {cmd} CGROUP ADDR:PORT");
            std::process::exit(2);
        };
        return match cmd {
            "escape" => escape(cg, addr),
            "escape-thread-exec" => escape_thread_exec(cg, addr),
            _ => escape_clone(cg, addr),
        };
    }
    if args.get(1).map(String::as_str) == Some("trace-resume") {
        let (Some(pid), Some(ms)) = (
            args.get(2).and_then(|a| a.parse().ok()),
            args.get(3).and_then(|a| a.parse().ok()),
        ) else {
            eprintln!("usage: latch-probe trace-resume PID MILLIS");
            std::process::exit(2);
        };
        return trace_resume(pid, ms);
    }
    if args.get(1).map(String::as_str) == Some("steal-fd") {
        let (Some(pid), Some(fd)) = (
            args.get(2).and_then(|a| a.parse().ok()),
            args.get(3).and_then(|a| a.parse().ok()),
        ) else {
            eprintln!("usage: latch-probe steal-fd PID FD");
            std::process::exit(2);
        };
        return steal_fd(pid, fd);
    }
    if args.get(1).map(String::as_str) == Some("clone-into") {
        let (Some(cg), Some(then), Some(Ok(addr))) =
            (args.get(2), args.get(3), args.get(4).map(|a| a.parse()))
        else {
            eprintln!("usage: latch-probe clone-into CGROUP THEN ADDR:PORT");
            std::process::exit(2);
        };
        return clone_into(cg, Some(then), addr);
    }
    if args.get(1).map(String::as_str) == Some("bpf-map") {
        return bpf_map();
    }
    if args.get(1).map(String::as_str) == Some("icmp") {
        let (Some(how), Some(addr), Some(tag)) = (args.get(2), args.get(3), args.get(4)) else {
            eprintln!("usage: latch-probe icmp raw|ping ADDR TAG");
            std::process::exit(2);
        };
        return icmp(how, addr, tag);
    }
    if args.get(1).map(String::as_str) == Some("packet-udp-shared") {
        let (Some(Ok(port)), Some(tag)) = (args.get(2).map(|p| p.parse()), args.get(3)) else {
            eprintln!("usage: latch-probe packet-udp-shared PORT TAG");
            std::process::exit(2);
        };
        return packet_udp_shared(port, tag);
    }
    if let Some(how @ ("packet-udp" | "packet-udp-32" | "packet-udp-uring" | "packet-udp-sqpoll")) =
        args.get(1).map(String::as_str)
    {
        let (Some(Ok(port)), Some(tag)) = (args.get(2).map(|p| p.parse::<u16>()), args.get(3))
        else {
            eprintln!("usage: latch-probe packet-udp[-32|-uring|-sqpoll] PORT TAG");
            std::process::exit(2);
        };
        let via = match how {
            "packet-udp-32" => SocketCall::Bits32,
            "packet-udp-uring" => SocketCall::Uring { poll_thread: false },
            "packet-udp-sqpoll" => SocketCall::Uring { poll_thread: true },
            _ => SocketCall::Plain,
        };
        return packet_udp(port, tag, via);
    }
    if args.get(1).map(String::as_str) == Some("net32") {
        let (Some(how), Some(Ok(addr))) = (args.get(2), args.get(3).map(|a| a.parse())) else {
            eprintln!(
                "usage: latch-probe net32 connect|socketcall|sendto|socketcall-sendto|sendmsg|sendmmsg IPV4:PORT"
            );
            std::process::exit(2);
        };
        return net32(how, addr);
    }
    if args.get(1).map(String::as_str) == Some("udplite-send") {
        let Some(addr) = args.get(2) else {
            eprintln!("usage: latch-probe udplite-send ADDR:PORT");
            std::process::exit(2);
        };
        return udplite_send(addr);
    }
    if args.get(1).map(String::as_str) == Some("mptcp-connect") {
        let Some(addr) = args.get(2) else {
            eprintln!("usage: latch-probe mptcp-connect ADDR:PORT");
            std::process::exit(2);
        };
        return mptcp_connect(addr);
    }
    if args.get(1).map(String::as_str) == Some("connect-from") {
        let (Some(src), Some(dst)) = (args.get(2), args.get(3)) else {
            eprintln!("usage: latch-probe connect-from SRC DST:PORT");
            std::process::exit(2);
        };
        return connect_from(src, dst);
    }
    if args.get(1).map(String::as_str) == Some("exec-via") {
        let (Some(how), Some(program)) = (args.get(2), args.get(3)) else {
            eprintln!("usage: latch-probe exec-via fd|procfd|dirfd|memfd|traced PROGRAM [ARG...]");
            std::process::exit(2);
        };
        return exec_via(how, program, &args[4..]);
    }
    if args.get(1).map(String::as_str) == Some("moved") {
        let (Some(cgroup), Some(_)) = (args.get(2), args.get(3)) else {
            eprintln!("usage: latch-probe moved CGROUP MODE [ARG...]");
            std::process::exit(2);
        };
        return moved(cgroup, &args[3..]);
    }
    if args.get(1).map(String::as_str) == Some("map-vfork") {
        let Some(file) = args.get(2) else {
            eprintln!("usage: latch-probe map-vfork FILE");
            std::process::exit(2);
        };
        return map_in_vfork_child(file);
    }
    for (mode, how) in [
        ("map-rie", MapThen::ReadImpliesExec),
        ("map-mprotect", MapThen::Mprotect),
    ] {
        if args.get(1).map(String::as_str) == Some(mode) {
            let Some(file) = args.get(2) else {
                eprintln!("usage: latch-probe {mode} FILE");
                std::process::exit(2);
            };
            return map_then(file, how);
        }
    }
    if args.get(1).map(String::as_str) == Some("leader-gone") {
        let (Some(go), Some(cgroup), Some(Ok(addr))) =
            (args.get(2), args.get(3), args.get(4).map(|a| a.parse()))
        else {
            eprintln!("usage: latch-probe leader-gone GO_FILE CGROUP ADDR:PORT");
            std::process::exit(2);
        };
        return leader_gone(go, cgroup, addr);
    }
    if args.get(1).map(String::as_str) == Some("resolve") {
        let (Some(conf), Some(name), Some(Ok(port))) = (
            args.get(2),
            args.get(3),
            args.get(4).map(|p| p.parse::<u16>()),
        ) else {
            eprintln!("usage: latch-probe resolve RESOLV_CONF NAME PORT [inet6]");
            std::process::exit(2);
        };
        let inet6 = args.get(5).map(String::as_str) == Some("inet6");
        return resolve_and_connect(conf, name, port, inet6);
    }
    if args.get(1).map(String::as_str) == Some("dns-query") {
        let (Some(Ok(server)), Some(name), Some(Ok(port))) = (
            args.get(2).map(|a| a.parse::<SocketAddr>()),
            args.get(3),
            args.get(4).map(|p| p.parse::<u16>()),
        ) else {
            eprintln!("usage: latch-probe dns-query SERVER:PORT NAME PORT [FROM_PORT]");
            std::process::exit(2);
        };
        let from = args.get(5).and_then(|p| p.parse::<u16>().ok()).unwrap_or(0);
        return dns_query_and_connect(server, name, port, from);
    }
    if args.get(1).map(String::as_str) == Some("exec") {
        let Some(program) = args.get(2) else {
            eprintln!("usage: latch-probe exec PROGRAM [ARG...]");
            std::process::exit(2);
        };
        return exec(program, &args[3..]);
    }
    let (Some(cmd), Some(addr)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: latch-probe connect|udp-send|hold ADDR:PORT | exec PROGRAM [ARG...]");
        std::process::exit(2);
    };
    let addr: SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("latch-probe: '{addr}' is not an address: {e}");
            std::process::exit(2);
        }
    };
    match cmd.as_str() {
        "connect" => report(TcpStream::connect(addr).map(drop)),
        "hold" => hold(addr),
        "connect-loop" => loop {
            let _ = TcpStream::connect(addr);
        },
        "udp-send" => {
            let bind: SocketAddr = if addr.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            }
            .parse()
            .expect("constant address");
            report(UdpSocket::bind(bind).and_then(|s| s.send_to(b"latch", addr).map(drop)))
        }
        other => {
            eprintln!("latch-probe: unknown command '{other}'");
            std::process::exit(2);
        }
    }
}

/// Resolves NAME with the C library (`getaddrinfo`, as most programs do) against the servers
/// of RESOLV_CONF, bound over `/etc/resolv.conf` in a mount namespace of this process only,
/// then connects over TCP to the first IPv4 address (IPv6 with `inet6`). Prints
/// `"resolved":"ADDR"` and the connection's result, on one line.
fn resolve_and_connect(conf: &str, name: &str, port: u16, inet6: bool) {
    use std::net::ToSocketAddrs;
    // SAFETY: plain system call; this process has one thread here.
    let unshared = unsafe { libc::unshare(libc::CLONE_NEWNS) };
    let unshared = nix::errno::Errno::result(unshared).map(drop);
    let private = unshared.and_then(|()| {
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
            None::<&str>,
        )
    });
    let bound = private.and_then(|()| {
        nix::mount::mount(
            Some(conf),
            "/etc/resolv.conf",
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
    });
    if let Err(e) = bound {
        eprintln!("latch-probe: cannot use {conf} as /etc/resolv.conf: {e}");
        std::process::exit(2);
    }
    let addr = match (name, port).to_socket_addrs() {
        Ok(mut addrs) => addrs.find(|a| a.is_ipv6() == inet6),
        Err(e) => {
            println!(
                "{{\"ok\":false,\"errno\":-2,\"error\":{:?}}}",
                format!("resolve: {e}")
            );
            return;
        }
    };
    let Some(addr) = addr else {
        let family = if inet6 { "IPv6" } else { "IPv4" };
        println!("{{\"ok\":false,\"errno\":-2,\"error\":\"no {family} address\"}}");
        return;
    };
    report_with(
        &format!("\"resolved\":\"{}\"", addr.ip()),
        TcpStream::connect(addr).map(drop),
    );
}

/// Sends a query for NAME's IPv4 addresses from an unconnected UDP socket (`sendto`; bound to
/// FROM_PORT when given), reads the answer and whom it came from (`recvfrom`, 5 s at most), and
/// connects over TCP to the first address. Prints `"local":PORT,"from":"SERVER",
/// "resolved":"ADDR"` and the connection's result, on one line.
fn dns_query_and_connect(server: SocketAddr, name: &str, port: u16, from_port: u16) {
    use hickory_proto::{
        op::{Message, MessageType, OpCode, Query},
        rr::{Name, RData, RecordType},
    };
    use std::str::FromStr;
    let fail = |what: String| {
        println!("{{\"ok\":false,\"errno\":-2,\"error\":{what:?}}}");
    };
    let qname = match Name::from_str(name) {
        Ok(n) => n,
        Err(e) => return fail(format!("name: {e}")),
    };
    let mut m = Message::new();
    m.set_id(0x4c54)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true);
    m.add_query(Query::query(qname, RecordType::A));
    let bytes = match m.to_vec() {
        Ok(b) => b,
        Err(e) => return fail(format!("encode: {e}")),
    };
    let sock = match UdpSocket::bind(("0.0.0.0", from_port)) {
        Ok(s) => s,
        Err(e) => return report(Err(e)),
    };
    let local = sock.local_addr().map(|a| a.port()).unwrap_or(0);
    let _ = sock.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    if let Err(e) = sock.send_to(&bytes, server) {
        return report(Err(e));
    }
    let mut buf = [0u8; 4096];
    let (n, from) = match sock.recv_from(&mut buf) {
        Ok(x) => x,
        Err(e) => return report_with(&format!("\"local\":{local}"), Err(e)),
    };
    let answer = match Message::from_vec(&buf[..n]) {
        Ok(a) => a,
        Err(e) => return fail(format!("answer: {e}")),
    };
    let Some(ip) = answer.answers().iter().find_map(|r| match r.data() {
        RData::A(a) => Some(a.0),
        _ => None,
    }) else {
        return fail("no address in the answer".into());
    };
    report_with(
        &format!("\"local\":{local},\"from\":\"{from}\",\"resolved\":\"{ip}\""),
        TcpStream::connect((ip, port)).map(drop),
    );
}
