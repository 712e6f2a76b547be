//! The pseudo file systems the engine needs: bpffs for pins, tracefs for tracepoint ids and
//! formats, securityfs for the LSM list, and the cgroup v2 hierarchy the network hooks attach to. Any of them may be unmounted on a fresh
//! host (or mounted somewhere unusual), so they are found from `/proc/self/mountinfo` and
//! mounted when missing.

use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sys::statfs::{statfs, FsType};

use super::EngineError;

const BPF_FS_MAGIC: FsType = FsType(0xcafe_4a11);
const TRACEFS_MAGIC: FsType = FsType(0x7472_6163);
const DEBUGFS_MAGIC: FsType = FsType(0x6462_6720);

fn is_fs(path: &Path, magic: FsType) -> bool {
    statfs(path)
        .map(|s| s.filesystem_type() == magic)
        .unwrap_or(false)
}

/// Makes sure `dir` lives on a bpffs, mounting one at `/sys/fs/bpf` when needed.
pub fn ensure_bpffs(dir: &Path) -> Result<(), EngineError> {
    let root = Path::new("/sys/fs/bpf");
    let under_root = dir.starts_with(root);
    // Two agents (or test threads) starting together on a host without bpffs would otherwise both
    // mount it, the second on top of the first, hiding what the first pinned.
    let _lock = if under_root && !is_fs(root, BPF_FS_MAGIC) {
        mount_lock()
    } else {
        None
    };
    if under_root && !is_fs(root, BPF_FS_MAGIC) {
        std::fs::create_dir_all(root).map_err(|e| EngineError::Mount {
            what: "bpffs",
            path: root.into(),
            reason: e.to_string(),
        })?;
        mount(
            Some("bpf"),
            root,
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| EngineError::Mount {
            what: "bpffs",
            path: root.into(),
            reason: e.to_string(),
        })?;
    }
    std::fs::create_dir_all(dir).map_err(|e| EngineError::Mount {
        what: "bpffs",
        path: dir.into(),
        reason: e.to_string(),
    })?;
    if !is_fs(dir, BPF_FS_MAGIC) {
        return Err(EngineError::Mount {
            what: "bpffs",
            path: dir.into(),
            reason: "the pin directory is not on a BPF file system".into(),
        });
    }
    Ok(())
}

/// An exclusive lock held while checking and mounting a pseudo file system, across processes and
/// threads (every `open` is its own lock owner). `None` where no lock file can be made (a
/// read-only `/run` under a hardened unit): the mount is then attempted without it, as it is on
/// hosts whose pseudo file systems are mounted at boot anyway.
fn mount_lock() -> Option<nix::fcntl::Flock<std::fs::File>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/run/latch-mount.lock")
        .ok()?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).ok()
}

/// Makes sure tracefs is reachable where aya looks for tracepoint ids; returns where it is.
pub fn ensure_tracefs() -> Result<PathBuf, EngineError> {
    let tracing = Path::new("/sys/kernel/tracing");
    if is_fs(tracing, TRACEFS_MAGIC) {
        return Ok(tracing.into());
    }
    let debug_tracing = Path::new("/sys/kernel/debug/tracing");
    if is_fs(Path::new("/sys/kernel/debug"), DEBUGFS_MAGIC) && debug_tracing.join("events").exists()
    {
        return Ok(debug_tracing.into());
    }
    let _lock = mount_lock();
    if is_fs(tracing, TRACEFS_MAGIC) {
        return Ok(tracing.into());
    }
    mount(
        Some("tracefs"),
        tracing,
        Some("tracefs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| EngineError::Mount {
        what: "tracefs",
        path: tracing.into(),
        reason: e.to_string(),
    })?;
    Ok(tracing.into())
}

/// Mounts securityfs where it is missing, so the active LSM list can be read. Best effort: the
/// list is only reported, never relied on (the LSM probe is what decides).
pub fn ensure_securityfs() {
    let sec = Path::new("/sys/kernel/security");
    if sec.join("lsm").exists() {
        return;
    }
    let _lock = mount_lock();
    if sec.join("lsm").exists() {
        return;
    }
    let _ = mount(
        Some("securityfs"),
        sec,
        Some("securityfs"),
        MsFlags::empty(),
        None::<&str>,
    );
}

/// The mount point of the cgroup v2 hierarchy (`/sys/fs/cgroup` on most systemd hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2_root() -> Result<PathBuf, EngineError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| EngineError::Mount {
        what: "cgroup2",
        path: "/proc/self/mountinfo".into(),
        reason: e.to_string(),
    })?;
    parse_cgroup2_root(&info).ok_or_else(|| EngineError::Mount {
        what: "cgroup2",
        path: "/proc/self/mountinfo".into(),
        reason: "no cgroup2 file system is mounted; Latch needs the cgroup v2 hierarchy".into(),
    })
}

/// Finds the first cgroup2 mount point in mountinfo text.
pub fn parse_cgroup2_root(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // mount-id parent major:minor root mount-point options [optional...] - fstype source super
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        if fstype != "cgroup2" {
            return None;
        }
        let mount_point = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape(mount_point)))
    })
}

fn unescape(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_and_unified_layouts() {
        let hybrid = "30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_root(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified =
            "35 24 0:30 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            parse_cgroup2_root(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            parse_cgroup2_root("1 0 0:1 / / rw - ext4 /dev/vda rw\n"),
            None
        );
    }

    #[test]
    fn unescapes_octal_in_mount_points() {
        let line = "31 30 0:27 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(parse_cgroup2_root(line), Some(PathBuf::from("/mnt/my cg")));
    }
}
