//! io_uring rings that a watched process uses but whose submission thread works for a process
//! outside every watched cgroup.
//!
//! A ring made with `IORING_SETUP_SQPOLL` has a kernel thread of its maker's process that takes
//! requests off the ring and runs them as that process: a socket it makes belongs to the
//! maker's cgroup. A process forked from the maker inherits the ring's descriptor; moved into a
//! watched cgroup it keeps it, and what it submits runs outside, past the socket hooks and the
//! egress backstop. The maker's own thread moves with the maker, so a ring whose maker was
//! itself moved in is not one of these. Latch cannot stop such a ring from working; it finds
//! and reports it (status, log, journal).
//!
//! Owns: reading `/proc` for rings and their submission threads. Must not: act on a process.

use std::path::Path;

use serde::Serialize;

use crate::procfs;

/// What `/proc/PID/fd/N` reads for an io_uring ring.
const RING: &str = "anon_inode:[io_uring]";

/// A watched process's ring whose submission thread belongs to a process outside every
/// watched cgroup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ForeignRing {
    /// The watched process.
    pub pid: u32,
    /// Its command name.
    pub comm: String,
    /// The watched cgroup it was found in, relative to the cgroup root.
    pub cgroup: String,
    /// The ring's descriptor in it.
    pub fd: u32,
    /// The process whose thread submits the ring's requests.
    pub owner: u32,
    /// That process's cgroup, relative to the cgroup root.
    pub owner_cgroup: String,
}

/// The submission thread of a ring, from its `/proc/PID/fdinfo/N` (`SqThread:`; -1 or absent
/// where the ring has none).
pub fn sq_thread(fdinfo: &str) -> Option<u32> {
    let v: i64 = fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("SqThread:"))?
        .trim()
        .parse()
        .ok()?;
    u32::try_from(v).ok().filter(|&t| t > 0)
}

/// The rings of process `pid` (found in the watched cgroup `cgroup`) whose submission thread
/// belongs to another process in a cgroup `watched` says is not watched. A process that is gone
/// meanwhile, or a descriptor closed meanwhile, is no finding.
pub fn foreign(
    proc_root: &Path,
    pid: u32,
    cgroup: &str,
    watched: impl Fn(&str) -> bool,
) -> Vec<ForeignRing> {
    let dir = proc_root.join(pid.to_string());
    let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in fds.flatten() {
        let is_ring = std::fs::read_link(e.path()).is_ok_and(|t| t.as_os_str() == RING);
        let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if !is_ring {
            continue;
        }
        let Some(thread) = std::fs::read_to_string(dir.join("fdinfo").join(fd.to_string()))
            .ok()
            .as_deref()
            .and_then(sq_thread)
        else {
            continue;
        };
        let tdir = proc_root.join(thread.to_string());
        let Some(owner) = std::fs::read_to_string(tdir.join("status"))
            .ok()
            .as_deref()
            .and_then(procfs::parse_tgid)
        else {
            continue;
        };
        if owner == pid {
            continue;
        }
        let Some(owner_cgroup) = std::fs::read_to_string(tdir.join("cgroup"))
            .ok()
            .as_deref()
            .and_then(procfs::parse_unified_cgroup)
            .map(str::to_string)
        else {
            continue;
        };
        if watched(&owner_cgroup) {
            continue;
        }
        let comm = std::fs::read_to_string(dir.join("comm"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        out.push(ForeignRing {
            pid,
            comm,
            cgroup: cgroup.to_string(),
            fd,
            owner,
            owner_cgroup,
        });
    }
    out.sort_by_key(|r| r.fd);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_submission_thread_is_read_from_fdinfo() {
        let table = [
            ("pos:\t0\nSqThread:\t30954\nSqThreadCpu:\t1\n", Some(30954)),
            ("SqThread:\t-1\nSqThreadCpu:\t-1\n", None),
            ("SqThread:\t0\n", None),
            ("pos:\t0\nflags:\t02000002\n", None),
            ("SqThread:\tmany\n", None),
            ("SqThread:\t99999999999\n", None),
        ];
        for (text, want) in table {
            assert_eq!(sq_thread(text), want, "{text:?}");
        }
    }

    /// A `/proc` of its own: a watched process 10 holding rings submitted by its own thread
    /// (fd 3), by process 20 outside (fd 4), by process 30 in a watched cgroup (fd 5), a ring
    /// without a thread (fd 6), and a file that is no ring (fd 7).
    #[test]
    fn only_rings_worked_by_a_process_outside_are_found() {
        let root = tempfile::tempdir().expect("tempdir");
        let p = root.path();
        let proc_dir = |pid: u32, tgid: u32, cgroup: &str| {
            let d = p.join(pid.to_string());
            std::fs::create_dir_all(d.join("fd")).expect("mkdir");
            std::fs::create_dir_all(d.join("fdinfo")).expect("mkdir");
            std::fs::write(d.join("status"), format!("Name:\tx\nTgid:\t{tgid}\n")).expect("status");
            std::fs::write(d.join("cgroup"), format!("0::{cgroup}\n")).expect("cgroup");
            std::fs::write(d.join("comm"), "worker\n").expect("comm");
            d
        };
        let me = proc_dir(10, 10, "/ai/job");
        proc_dir(11, 10, "/ai/job");
        proc_dir(21, 20, "/launcher");
        proc_dir(31, 30, "/ai/other");
        for (fd, target, thread) in [
            (3, RING, "11"),
            (4, RING, "21"),
            (5, RING, "31"),
            (6, RING, "-1"),
            (7, "/usr/lib/libc.so.6", "21"),
        ] {
            std::os::unix::fs::symlink(target, me.join("fd").join(fd.to_string()))
                .expect("symlink");
            std::fs::write(
                me.join("fdinfo").join(fd.to_string()),
                format!("pos:\t0\nSqThread:\t{thread}\n"),
            )
            .expect("fdinfo");
        }
        let watched = |c: &str| c == "/ai" || c.starts_with("/ai/");
        let found = foreign(p, 10, "/ai/job", watched);
        assert_eq!(
            found,
            vec![ForeignRing {
                pid: 10,
                comm: "worker".into(),
                cgroup: "/ai/job".into(),
                fd: 4,
                owner: 20,
                owner_cgroup: "/launcher".into(),
            }]
        );
        // Everything watched: nothing found; a process that is gone: nothing found.
        assert!(foreign(p, 10, "/ai/job", |_| true).is_empty());
        assert!(foreign(p, 99, "/ai/job", watched).is_empty());
    }
}
