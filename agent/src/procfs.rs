//! Parsers of the `/proc` files the agent reads about a process (`stat`, `status`, `cgroup`).
//!
//! Owns: turning that text into numbers and paths. Must not: open files or decide anything;
//! callers read the files and cope with processes that are gone.

/// The process id from `/proc/PID/status` (`Tgid:`).
pub fn parse_tgid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))?
        .trim()
        .parse()
        .ok()
}

/// The cgroup v2 path from `/proc/PID/cgroup` (the `0::` line).
pub fn parse_unified_cgroup(cgroup: &str) -> Option<&str> {
    cgroup.lines().find_map(|l| l.strip_prefix("0::"))
}

/// Parent pid from `/proc/PID/stat` (the comm field may contain spaces and parentheses).
pub fn parse_ppid(stat: &str) -> Option<u32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Process state letter from `/proc/PID/stat` (`T` when stopped).
pub fn parse_state(stat: &str) -> Option<char> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().next()?.chars().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_threads_process_and_cgroup_from_proc() {
        let status = "Name:\tpython\nUmask:\t0022\nState:\tS\nTgid:\t901\nNgid:\t0\nPid:\t903\n";
        assert_eq!(parse_tgid(status), Some(901));
        assert_eq!(parse_tgid("Name:\tx\nTgid:\tnot-a-number\n"), None);
        assert_eq!(parse_tgid(""), None);
        let hybrid = "12:pids:/user.slice\n1:name=systemd:/user.slice\n0::/batch/escape\n";
        assert_eq!(parse_unified_cgroup(hybrid), Some("/batch/escape"));
        assert_eq!(parse_unified_cgroup("0::/\n"), Some("/"));
        assert_eq!(parse_unified_cgroup("3:cpu:/a\n"), None);
    }

    #[test]
    fn parses_proc_stat_with_awkward_comm() {
        let stat = "4242 (my (odd) prog) T 17 4242 4242 0 -1 4194304";
        assert_eq!(parse_ppid(stat), Some(17));
        assert_eq!(parse_state(stat), Some('T'));
        assert_eq!(parse_ppid("garbage"), None);
    }
}
