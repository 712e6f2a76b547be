//! A stand-in workload for the kernel tests: performs one action and prints its outcome as one
//! JSON line, so a test can tell "the call failed with EPERM" from "the call succeeded".
//!
//! ```text
//! latch-probe connect 127.0.0.1:8080     TCP connect()
//! latch-probe udp-send [::1]:5353        sendto() on an unconnected UDP socket
//! latch-probe hold 127.0.0.1:8080        TCP connect(), print a line, then wait for one read
//! latch-probe exec PROGRAM [ARG...]      run PROGRAM as a child; report how it ended
//! latch-probe connect-loop 127.0.0.1:80  connect() again and again until killed
//! ```
//!
//! `exec` reports `{"ok":true,"exit":N|null,"signal":N|null,"stdout":"..."}` once the child has
//! ended, or `{"ok":false,"errno":N}` when `execve` itself failed (a refused exec).
//!
//! `hold` keeps a long-lived connection: after connecting it prints `{"ok":true,"connected":true}`
//! and blocks in `read()`, then prints what the read gave (text, end of stream, or the error, as
//! when the connection is cut off under it).

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

fn main() {
    let args: Vec<String> = std::env::args().collect();
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
