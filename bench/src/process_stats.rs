//! What a running process costs, read from `/proc`: resident memory and CPU time.
//!
//! It reads only; it never signals or changes the processes it looks at.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// Resident memory of a process (from `/proc/PID/status`).
#[derive(Serialize, Clone, Copy, Debug, Default)]
pub struct Memory {
    /// `VmRSS`: resident now, in KiB.
    pub rss_kib: u64,
    /// `VmHWM`: the most it was ever resident, in KiB.
    pub peak_rss_kib: u64,
    /// Threads.
    pub threads: u64,
    /// `RssAnon`: resident memory of the process's own (heap, stacks), in KiB.
    pub anon_kib: u64,
    /// Resident pages of BPF maps mapped into the process (a ring buffer's pages are mapped
    /// twice, so that a record that wraps reads contiguously), in KiB: kernel memory that the
    /// mapping shows, not allocated by the process.
    pub bpf_maps_kib: u64,
    /// The rest of `RssFile`: pages of the program's and its libraries' files (page cache,
    /// shared and reclaimable), in KiB.
    pub files_kib: u64,
}

impl Memory {
    /// Resident memory in MiB.
    pub fn rss_mib(&self) -> f64 {
        self.rss_kib as f64 / 1024.0
    }
}

/// Reads a process's memory figures.
pub fn memory(pid: u32) -> Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> Result<u64> {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("{path} has no {name}"))?;
        line[name.len()..]
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{path}: cannot read '{line}'"))
    };
    let bpf_maps_kib = bpf_map_rss_kib(pid)?;
    Ok(Memory {
        rss_kib: field("VmRSS:")?,
        peak_rss_kib: field("VmHWM:")?,
        threads: field("Threads:")?,
        anon_kib: field("RssAnon:")?,
        bpf_maps_kib,
        files_kib: field("RssFile:")?.saturating_sub(bpf_maps_kib),
    })
}

/// The resident size of the process's mappings of BPF maps, from `/proc/PID/smaps`.
fn bpf_map_rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/smaps");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    bpf_map_rss_in(&text).with_context(|| format!("{path}: an Rss line that is not a number"))
}

/// The sum of `Rss:` of the mappings in `smaps` text whose name is a BPF map's.
fn bpf_map_rss_in(smaps: &str) -> Option<u64> {
    let mut in_map = false;
    let mut kib = 0;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: range, permissions, offset, device, inode, name.
            in_map = words
                .nth(4)
                .is_some_and(|name| name.starts_with("anon_inode:bpf"));
        } else if in_map && first == "Rss:" {
            kib += words.next()?.parse::<u64>().ok()?;
        }
    }
    Some(kib)
}

/// CPU time of every thread of a process so far: the sum of the threads' run time in
/// `/proc/PID/task/TID/schedstat` (nanoseconds), or, where the kernel has no schedstat,
/// `utime + stime` of `/proc/PID/stat` (clock ticks, usually 10 ms).
pub fn cpu_time(pid: u32) -> Result<Duration> {
    match schedstat_time(pid) {
        Some(t) => Ok(t),
        None => stat_time(pid),
    }
}

fn schedstat_time(pid: u32) -> Option<Duration> {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let text = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        ns += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(ns))
}

/// CPU time of a process so far from `/proc/PID/stat` (`utime + stime`, in clock ticks): it
/// keeps the time of threads that have ended, which a sum over the living threads loses.
pub fn stat_time(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("{path}: no command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12 here.
    let tick = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{path}: field {} is not a number", i + 3))
    };
    let ticks = tick(11)? + tick(12)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        bail!("sysconf(_SC_CLK_TCK) failed");
    }
    Ok(Duration::from_secs_f64(ticks as f64 / hz as f64))
}

/// CPU a process used over a quiet interval, as a percentage of one core.
#[derive(Serialize, Clone, Copy, Debug)]
pub struct IdleCpu {
    /// Length of the interval, in seconds.
    pub interval_s: f64,
    /// CPU time used in it (user + system), in milliseconds.
    pub cpu_ms: f64,
    /// `cpu_ms` over the interval, in % of one core.
    pub percent_of_core: f64,
}

/// Measures the CPU use of several processes over the same quiet interval.
pub fn idle_cpu(pids: &[u32], interval: Duration) -> Result<Vec<IdleCpu>> {
    let before: Vec<Duration> = pids.iter().map(|&p| cpu_time(p)).collect::<Result<_>>()?;
    let started = Instant::now();
    std::thread::sleep(interval);
    let after: Vec<Duration> = pids.iter().map(|&p| cpu_time(p)).collect::<Result<_>>()?;
    let took = started.elapsed().as_secs_f64();
    Ok(before
        .iter()
        .zip(&after)
        .map(|(b, a)| {
            let used = a.saturating_sub(*b).as_secs_f64();
            IdleCpu {
                interval_s: took,
                cpu_ms: used * 1000.0,
                percent_of_core: used / took * 100.0,
            }
        })
        .collect())
}

/// Raises this process's open-file limit towards `want` (soft limit; the hard limit too where
/// allowed), so that it and the children it starts afterwards (which inherit it) can hold that
/// many connections. Returns the soft limit now in force, which may be below `want` when the
/// hard limit cannot be raised (no `CAP_SYS_RESOURCE`).
pub fn raise_nofile(want: u64) -> Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid pointer to a local rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        bail!(
            "getrlimit(RLIMIT_NOFILE): {}",
            std::io::Error::last_os_error()
        );
    }
    if lim.rlim_cur >= want {
        return Ok(lim.rlim_cur);
    }
    let raised = libc::rlimit {
        rlim_cur: want,
        rlim_max: lim.rlim_max.max(want),
    };
    // SAFETY: a valid pointer to a local rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return Ok(want);
    }
    let within = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: a valid pointer to a local rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &within) } != 0 {
        bail!(
            "setrlimit(RLIMIT_NOFILE, {}): {}",
            lim.rlim_max,
            std::io::Error::last_os_error()
        );
    }
    Ok(lim.rlim_max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bpf_map_mappings_are_summed() {
        let smaps = "\
55d0c0a00000-55d0c0b00000 r-xp 00000000 08:01 1234   /usr/bin/latch-agent
Size:               1024 kB
Rss:                 900 kB
7f0000000000-7f0001001000 rw-s 00000000 00:0e 77     anon_inode:bpf-map
Size:              16388 kB
Rss:               16388 kB
7f0002000000-7f0002001000 r--s 00000000 00:0e 77     anon_inode:bpf-map
Rss:                   4 kB
7f0003000000-7f0003100000 rw-p 00000000 00:00 0
Rss:                 200 kB
VmFlags: rd wr mr mw me ac
";
        assert_eq!(bpf_map_rss_in(smaps), Some(16392));
        assert_eq!(
            bpf_map_rss_in("7f-8f rw-s 0 00:0e 77 anon_inode:bpf-map\nRss: x kB\n"),
            None
        );
        assert_eq!(bpf_map_rss_in(""), Some(0));
    }
}
