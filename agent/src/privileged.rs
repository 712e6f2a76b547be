//! Watched processes that can undo what Latch enforces: capabilities in the host's user
//! namespace that reach the BPF objects, the network stack below the socket hooks, or other
//! processes. Latch cannot contain such a process; it finds and reports it (status, metric,
//! log) so that an operator knows which guarantees do not hold for it.
//!
//! Owns: reading `/proc/PID/status` and the user namespace. Must not: act on a process.

use std::path::Path;

use serde::Serialize;

/// Capabilities that defeat a guarantee, with what each can undo.
pub const DANGEROUS: &[(u32, &str, &str)] = &[
    (
        21,
        "CAP_SYS_ADMIN",
        "bpf(), mounts, cgroup moves: can detach hooks and write the maps",
    ),
    (39, "CAP_BPF", "bpf(): can write the pinned maps"),
    (
        13,
        "CAP_NET_RAW",
        "AF_PACKET sockets send below the egress backstop",
    ),
    (
        12,
        "CAP_NET_ADMIN",
        "can change routes, addresses and filters the rules assume",
    ),
    (
        19,
        "CAP_SYS_PTRACE",
        "can trace and inject into other watched processes",
    ),
    (16, "CAP_SYS_MODULE", "can load kernel code"),
    (
        24,
        "CAP_SYS_RESOURCE",
        "prctl(PR_SET_MM_EXE_FILE): can name another file as its image, past the check on executable mappings",
    ),
];

/// A watched process with dangerous capabilities.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Privileged {
    /// Process id.
    pub pid: u32,
    /// Its command name.
    pub comm: String,
    /// The watched cgroup it was found in, relative to the cgroup root.
    pub cgroup: String,
    /// Names of its dangerous effective capabilities.
    pub caps: Vec<&'static str>,
}

/// `CapEff` from the text of `/proc/PID/status`.
pub fn cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line["CapEff:".len()..].trim(), 16).ok()
}

/// The dangerous capabilities in an effective set.
pub fn dangerous(eff: u64) -> Vec<&'static str> {
    DANGEROUS
        .iter()
        .filter(|(bit, _, _)| *bit < 64 && eff & (1u64 << bit) != 0)
        .map(|(_, name, _)| *name)
        .collect()
}

/// The process `pid` if it holds dangerous capabilities in the agent's user namespace (a
/// capability in a user namespace of its own reaches only what that namespace owns). Where
/// the namespaces cannot be compared, the process counts as in the agent's: a report too many
/// rather than one too few.
pub fn check(proc_root: &Path, pid: u32, cgroup: &str) -> Option<Privileged> {
    let dir = proc_root.join(pid.to_string());
    let own = std::fs::read_link(proc_root.join("self/ns/user")).ok();
    let theirs = std::fs::read_link(dir.join("ns/user")).ok();
    if let (Some(own), Some(theirs)) = (own, theirs) {
        if own != theirs {
            return None;
        }
    }
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    let caps = dangerous(cap_eff(&status)?);
    if caps.is_empty() {
        return None;
    }
    let comm = std::fs::read_to_string(dir.join("comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    Some(Privileged {
        pid,
        comm,
        cgroup: cgroup.to_string(),
        caps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_capabilities_are_read_and_named() {
        let table = [
            ("Name:\tx\nCapEff:\t0000000000000000\n", Some(0), vec![]),
            (
                "CapEff:\t000001ffffffffff\n",
                Some(0x1ff_ffff_ffff),
                vec![
                    "CAP_SYS_ADMIN",
                    "CAP_BPF",
                    "CAP_NET_RAW",
                    "CAP_NET_ADMIN",
                    "CAP_SYS_PTRACE",
                    "CAP_SYS_MODULE",
                    "CAP_SYS_RESOURCE",
                ],
            ),
            (
                "CapEff:\t0000000000002000\n",
                Some(1 << 13),
                vec!["CAP_NET_RAW"],
            ),
            ("CapEff:\tzz\n", None, vec![]),
            ("no such line\n", None, vec![]),
        ];
        for (text, want, names) in table {
            let eff = cap_eff(text);
            assert_eq!(eff, want, "{text:?}");
            assert_eq!(dangerous(eff.unwrap_or(0)), names, "{text:?}");
        }
    }

    #[test]
    fn this_process_is_checked_against_the_host_namespace() {
        let me = std::process::id();
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        let eff = cap_eff(&status).expect("CapEff");
        let found = check(Path::new("/proc"), me, "/x");
        assert_eq!(found.is_some(), !dangerous(eff).is_empty(), "{found:?}");
    }
}
