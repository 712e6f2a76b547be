//! Raw `bpf()` objects for tests, made without Latch's loader.
//!
//! Another tool's program at Latch's hooks: a minimal cgroup `connect4` program, loaded and
//! attached through the raw `bpf()` system call with the multi-program flag, the way other
//! agents (socket load balancers, other security tools) attach theirs. It refuses one port and
//! lets everything else through, so a test can see that both it and Latch keep working.

use std::{fs::File, os::fd::AsRawFd, path::Path};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
const BPF_CGROUP_INET4_CONNECT: u32 = 10;
const BPF_F_ALLOW_MULTI: u32 = 2;
/// `offsetof(struct bpf_sock_addr, user_port)`.
const USER_PORT: i16 = 24;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    (code as u64)
        | (((dst & 0xf) | ((src & 0xf) << 4)) as u64) << 8
        | ((off as u16) as u64) << 16
        | ((imm as u32) as u64) << 32
}

fn bpf(cmd: libc::c_long, attr: &mut [u8]) -> std::io::Result<i32> {
    // SAFETY: `attr` is a zero-initialised buffer the size of the attribute union's prefix the
    // command reads.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as i32)
    }
}

/// The program, attached at a cgroup; detached (and unloaded) on drop.
pub struct Neighbour {
    prog_fd: i32,
    cgroup: File,
}

impl Neighbour {
    /// Attaches a `connect4` program that refuses `port` at `cgroup` (multi mode).
    pub fn refusing_port(cgroup: &Path, port: u16) -> std::io::Result<Neighbour> {
        // user_port holds the port in network order in its low 16 bits.
        let port_word = u16::from_ne_bytes(port.to_be_bytes()) as i32;
        let code = [
            insn(0x61, 2, 1, USER_PORT, 0), // r2 = ctx->user_port
            insn(0xb7, 0, 0, 0, 1),         // r0 = 1 (allow)
            insn(0x55, 2, 0, 1, port_word), // if r2 != port goto +1
            insn(0xb7, 0, 0, 0, 0),         // r0 = 0 (refuse)
            insn(0x95, 0, 0, 0, 0),         // exit
        ];
        let license = b"GPL\0";
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&BPF_PROG_TYPE_CGROUP_SOCK_ADDR.to_ne_bytes());
        attr[4..8].copy_from_slice(&(code.len() as u32).to_ne_bytes());
        attr[8..16].copy_from_slice(&(code.as_ptr() as u64).to_ne_bytes());
        attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
        attr[48..57].copy_from_slice(b"neighbour");
        attr[68..72].copy_from_slice(&BPF_CGROUP_INET4_CONNECT.to_ne_bytes());
        let prog_fd = bpf(BPF_PROG_LOAD, &mut attr)?;
        let cgroup = File::open(cgroup)?;
        let n = Neighbour { prog_fd, cgroup };
        let mut attr = n.attach_attr();
        attr[12..16].copy_from_slice(&BPF_F_ALLOW_MULTI.to_ne_bytes());
        bpf(BPF_PROG_ATTACH, &mut attr)?;
        Ok(n)
    }

    fn attach_attr(&self) -> [u8; 32] {
        let mut attr = [0u8; 32];
        attr[0..4].copy_from_slice(&(self.cgroup.as_raw_fd() as u32).to_ne_bytes());
        attr[4..8].copy_from_slice(&(self.prog_fd as u32).to_ne_bytes());
        attr[8..12].copy_from_slice(&BPF_CGROUP_INET4_CONNECT.to_ne_bytes());
        attr
    }
}

impl Drop for Neighbour {
    fn drop(&mut self) {
        let mut attr = self.attach_attr();
        let _ = bpf(BPF_PROG_DETACH, &mut attr);
        // SAFETY: our own descriptor, closed once.
        unsafe { libc::close(self.prog_fd) };
    }
}

/// Creates a hash map with the given key and value sizes and pins it at `path`, as an older
/// build would have left it.
pub fn pin_hash_map(path: &Path, key: u32, value: u32, entries: u32) -> std::io::Result<()> {
    const BPF_MAP_TYPE_HASH: u32 = 1;
    let mut attr = [0u8; 72];
    attr[0..4].copy_from_slice(&BPF_MAP_TYPE_HASH.to_ne_bytes());
    attr[4..8].copy_from_slice(&key.to_ne_bytes());
    attr[8..12].copy_from_slice(&value.to_ne_bytes());
    attr[12..16].copy_from_slice(&entries.to_ne_bytes());
    let fd = bpf(BPF_MAP_CREATE, &mut attr)?;
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut attr = [0u8; 16];
    attr[0..8].copy_from_slice(&(c_path.as_ptr() as u64).to_ne_bytes());
    attr[8..12].copy_from_slice(&(fd as u32).to_ne_bytes());
    let r = bpf(BPF_OBJ_PIN, &mut attr);
    // SAFETY: our own descriptor; the pin keeps the map.
    unsafe { libc::close(fd) };
    r.map(drop)
}
