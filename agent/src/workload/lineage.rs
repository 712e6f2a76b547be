//! Who a process is, and whose descendant: pid and start time, walked up `/proc`.

use crate::procfs;

/// Most ancestors followed up from a held process.
const MAX_DEPTH: usize = 128;

/// One process, named so that a later process that reuses the pid is not taken for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Stamp {
    /// Process id.
    pub pid: u32,
    /// Start time (clock ticks after boot, `/proc/PID/stat` field 22).
    pub start: u64,
}

/// The stamp and parent of a live process; `None` once it is gone.
fn read(pid: u32) -> Option<(Stamp, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let start = procfs::parse_start_time(&stat)?;
    let ppid = procfs::parse_ppid(&stat)?;
    Some((Stamp { pid, start }, ppid))
}

/// A live process's stamp and its parent's pid.
pub fn stamp(pid: u32) -> Option<(Stamp, u32)> {
    read(pid)
}

/// The process, then its ancestors up to the first process of its pid namespace. Empty when
/// the process is gone. A parent read after its child was reparented is the new parent: the
/// tree as it is now, which is what the caller's relation to the process is judged on.
pub fn lineage(pid: u32) -> Vec<Stamp> {
    let mut out = Vec::new();
    let mut next = pid;
    while next != 0 && out.len() < MAX_DEPTH {
        let Some((s, ppid)) = read(next) else { break };
        out.push(s);
        next = ppid;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_descends_from_its_parent_and_a_gone_pid_has_no_lineage() {
        let me = std::process::id();
        let l = lineage(me);
        assert_eq!(l.first().map(|s| s.pid), Some(me));
        let parent = std::os::unix::process::parent_id();
        assert_eq!(l.get(1).map(|s| s.pid), Some(parent), "{l:?}");
        assert_eq!(stamp(me).map(|(s, _)| s), l.first().copied());
        // Pids above the kernel's limit (4194304 at most) never name a process.
        assert!(lineage(u32::MAX - 1).is_empty());
    }
}
