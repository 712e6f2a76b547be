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

/// Start time from `/proc/PID/stat` (field 22, clock ticks after boot): with the pid, it names
/// one process, where the pid alone may name a later one that reused it.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is the first after the comm; the start time is field 22.
    after.split_whitespace().nth(19)?.parse().ok()
}

/// The values of `names` in `/proc/PID/environ` (NUL-separated `NAME=value`), in the order of
/// `names`; where a name appears twice the first counts, as `getenv` reads it. Values that are not
/// UTF-8 are read lossily.
pub fn parse_environ(environ: &[u8], names: &[String]) -> Vec<(String, String)> {
    names
        .iter()
        .filter_map(|name| {
            environ.split(|b| *b == 0).find_map(|entry| {
                let value = entry
                    .strip_prefix(name.as_bytes())
                    .and_then(|rest| rest.strip_prefix(b"="))?;
                Some((name.clone(), String::from_utf8_lossy(value).into_owned()))
            })
        })
        .collect()
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
    fn reads_named_variables_from_environ() {
        let env = b"PATH=/bin\0AGENT_SESSION_ID=s-42\0TOOL=a=b\0AGENT_SESSION_ID=later\0EMPTY=\0BIN=\xff\x01\0NOEQ\0";
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // The names asked for, and what is found.
        type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);
        let cases: &[Case] = &[
            (&["AGENT_SESSION_ID"], &[("AGENT_SESSION_ID", "s-42")]),
            (&["TOOL", "PATH"], &[("TOOL", "a=b"), ("PATH", "/bin")]),
            (&["EMPTY"], &[("EMPTY", "")]),
            (&["BIN"], &[("BIN", "\u{fffd}\u{1}")]),
            (&["NOEQ", "MISSING", "AGENT"], &[]),
        ];
        for (want_names, want) in cases {
            let got = parse_environ(env, &names(want_names));
            let want: Vec<(String, String)> = want
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
            assert_eq!(got, want, "{want_names:?}");
        }
        assert!(parse_environ(b"", &names(&["PATH"])).is_empty());
    }

    #[test]
    fn parses_proc_stat_with_awkward_comm() {
        let stat = "4242 (my (odd) prog) T 17 4242 4242 0 -1 4194304";
        assert_eq!(parse_ppid(stat), Some(17));
        assert_eq!(parse_state(stat), Some('T'));
        assert_eq!(parse_ppid("garbage"), None);
        let full = "4242 (a) b) S 17 4242 4242 0 -1 4194560 120 0 0 0 1 2 0 0 20 0 1 0 987654 1 2";
        assert_eq!(parse_start_time(full), Some(987654));
        assert_eq!(parse_ppid(full), Some(17));
        assert_eq!(parse_start_time(stat), None, "a cut line has no start time");
    }
}
