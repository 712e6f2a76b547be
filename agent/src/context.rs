//! What a reviewer needs to know about a held process, read from `/proc` while it is stopped:
//! executable, arguments, ancestors, user and group names, cgroup path, systemd unit or
//! container, and the workload identity that may never approve its own request.
//!
//! Everything here is untrusted text chosen by the workload. Arguments pass through the
//! [`Masker`] before they leave this module; nothing else here is free text.

use std::path::Path;

use nix::unistd::{Gid, Group, Uid, User};
use serde::Serialize;

/// Most ancestors reported.
pub const MAX_ANCESTORS: usize = 8;
/// Most arguments reported per process.
pub const MAX_ARGS: usize = 64;
/// Longest argument reported (longer ones are cut).
pub const MAX_ARG_LEN: usize = 512;

/// Masks personal data and secrets in argument lists before they leave the host.
pub trait Masker: Send + Sync {
    /// Returns the arguments with every secret and personal datum replaced by a marker.
    fn mask_args(&self, args: &[String]) -> Vec<String>;
    /// Returns free text (a workload's justification) with the same replaced.
    fn mask_text(&self, text: &str) -> String;
}

impl Masker for redact::Redactor {
    fn mask_args(&self, args: &[String]) -> Vec<String> {
        self.redact_args(args)
    }

    fn mask_text(&self, text: &str) -> String {
        self.redact(text).text
    }
}

/// One ancestor process.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Ancestor {
    /// Process id.
    pub pid: u32,
    /// Executable path.
    pub exe: String,
    /// Masked arguments.
    pub argv: Vec<String>,
}

/// The held process and its surroundings.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ProcessContext {
    /// Executable path.
    pub exe: String,
    /// Masked arguments.
    pub argv: Vec<String>,
    /// Parent process id.
    pub ppid: u32,
    /// User name (or the uid as text when it has none).
    pub user: String,
    /// Group name (or the gid as text).
    pub group: String,
    /// cgroup v2 path.
    pub cgroup_path: String,
    /// systemd unit or container id, when the cgroup path shows one.
    pub unit: String,
    /// The workload identity: `unit:NAME`, `container:ID` or `user:NAME`.
    pub requester: String,
    /// Nearest ancestors first.
    pub ancestors: Vec<Ancestor>,
    /// The workload's `context_env` variables of the process, masked, in the listed order.
    pub env: Vec<(String, String)>,
    /// Its OpenTelemetry trace context (`TRACEPARENT`), when it has a valid one.
    pub trace: Option<crate::tracecontext::TraceParent>,
}

/// Longest environment value carried, in characters.
const MAX_ENV_VALUE: usize = 256;

/// An environment value as it may leave the host: masked whole and with its name
/// (`DB_PASSWORD=…` is a secret by its name), then cut, control characters shown as `?`. A
/// secret cut first could lose what makes it recognisable and leave its head.
fn env_value(name: &str, value: &str, masker: &dyn Masker) -> String {
    let pair = masker.mask_text(&format!("{name}={value}"));
    let masked = pair
        .strip_prefix(&format!("{name}="))
        .map(str::to_string)
        .unwrap_or(pair);
    masked
        .chars()
        .take(MAX_ENV_VALUE)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The named variables of a process's environment, made safe to show and masked; and its trace
/// context. The environment is the one the process's program was started with.
fn read_env(
    proc: &Path,
    names: &[String],
    masker: &dyn Masker,
) -> (
    Vec<(String, String)>,
    Option<crate::tracecontext::TraceParent>,
) {
    let Ok(environ) = std::fs::read(proc.join("environ")) else {
        return (Vec::new(), None);
    };
    let mut wanted = names.to_vec();
    let traceparent = "TRACEPARENT".to_string();
    if !wanted.contains(&traceparent) {
        wanted.push(traceparent.clone());
    }
    let mut trace = None;
    let mut env = Vec::new();
    for (name, value) in crate::procfs::parse_environ(&environ, &wanted) {
        if name == traceparent {
            trace = crate::tracecontext::parse(&value);
        }
        if !names.contains(&name) {
            continue;
        }
        let value = env_value(&name, &value, masker);
        env.push((name, value));
    }
    (env, trace)
}

fn read_exe(proc: &Path) -> String {
    std::fs::read_link(proc.join("exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn read_args(proc: &Path, masker: &dyn Masker) -> Vec<String> {
    let raw = std::fs::read(proc.join("cmdline")).unwrap_or_default();
    let args: Vec<String> = raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .take(MAX_ARGS)
        .map(|a| {
            let cut = &a[..a.len().min(MAX_ARG_LEN)];
            String::from_utf8_lossy(cut).into_owned()
        })
        .collect();
    masker.mask_args(&args)
}

fn read_ppid(proc: &Path) -> Option<u32> {
    let stat = std::fs::read_to_string(proc.join("stat")).ok()?;
    crate::procfs::parse_ppid(&stat)
}

/// The cgroup v2 path from `/proc/PID/cgroup` text (the `0::` line).
pub fn parse_cgroup(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// The systemd unit or container a cgroup path belongs to: the innermost `.service` or
/// `.scope` component, or a 64-hex container id (docker-…scope, cri-containerd-…, libpod-…).
pub fn unit_of(cgroup_path: &str) -> String {
    for part in cgroup_path.rsplit('/') {
        let stem = part.trim_end_matches(".scope");
        for prefix in ["docker-", "cri-containerd-", "crio-", "libpod-"] {
            if let Some(id) = stem.strip_prefix(prefix) {
                if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return format!("container:{id}");
                }
            }
        }
        if part.ends_with(".service") || part.ends_with(".scope") {
            return part.to_string();
        }
    }
    String::new()
}

/// Gathers the context of process `tgid` (uid/gid as the kernel reported them).
pub fn gather(
    tgid: u32,
    uid: u32,
    gid: u32,
    env_names: &[String],
    masker: &dyn Masker,
) -> ProcessContext {
    let proc = Path::new("/proc").join(tgid.to_string());
    let (env, trace) = read_env(&proc, env_names, masker);
    let user = User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string());
    let group = Group::from_gid(Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| g.name)
        .unwrap_or_else(|| gid.to_string());
    let cgroup_path = std::fs::read_to_string(proc.join("cgroup"))
        .ok()
        .and_then(|t| parse_cgroup(&t))
        .unwrap_or_default();
    let unit = unit_of(&cgroup_path);
    let requester = if unit.starts_with("container:") {
        unit.clone()
    } else if unit.ends_with(".service") {
        format!("unit:{unit}")
    } else {
        format!("user:{user}")
    };
    let ppid = read_ppid(&proc).unwrap_or(0);
    let mut ancestors = Vec::new();
    let mut next = ppid;
    while next > 1 && ancestors.len() < MAX_ANCESTORS {
        let p = Path::new("/proc").join(next.to_string());
        ancestors.push(Ancestor {
            pid: next,
            exe: read_exe(&p),
            argv: read_args(&p, masker),
        });
        next = read_ppid(&p).unwrap_or(0);
    }
    ProcessContext {
        exe: read_exe(&proc),
        argv: read_args(&proc, masker),
        ppid,
        user,
        group,
        cgroup_path,
        unit,
        requester,
        ancestors,
        env,
        trace,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_units_and_containers_in_cgroup_paths() {
        assert_eq!(
            unit_of("/system.slice/llm-runner.service"),
            "llm-runner.service"
        );
        assert_eq!(
            unit_of("/user.slice/user-1000.slice/session-3.scope"),
            "session-3.scope"
        );
        let id = "a".repeat(64);
        assert_eq!(
            unit_of(&format!("/system.slice/docker-{id}.scope")),
            format!("container:{id}")
        );
        assert_eq!(unit_of("/ai.slice/job-1"), "");
        assert_eq!(
            parse_cgroup("12:pids:/x\n0::/ai.slice/job-1\n"),
            Some("/ai.slice/job-1".into())
        );
    }

    struct Keep;
    impl Masker for Keep {
        fn mask_args(&self, args: &[String]) -> Vec<String> {
            args.to_vec()
        }

        fn mask_text(&self, text: &str) -> String {
            text.to_string()
        }
    }

    #[test]
    fn arguments_are_masked_by_the_redactor() {
        let r = redact::Redactor::new(&redact::RedactConfig::default()).expect("default config");
        let args: Vec<String> = [
            "psql",
            "--password",
            "hunter2",
            "postgres://bob:s3cret@db/prod",
            "mail=ann@example.com",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let masked = r.mask_args(&args);
        let joined = masked.join(" ");
        for secret in ["hunter2", "s3cret", "ann@example.com"] {
            assert!(!joined.contains(secret), "{secret} leaked: {joined}");
        }
        assert_eq!(masked[0], "psql");
    }

    #[test]
    fn environment_values_are_masked_by_their_name_and_whole_before_they_are_cut() {
        let r = redact::Redactor::new(&redact::RedactConfig::default()).expect("default config");
        let long_url = format!("postgres://app:s3cret@{}.internal/prod", "db".repeat(200));
        for (name, value, secret) in [
            ("DB_PASSWORD", "hunter2", "hunter2"),
            ("API_TOKEN", "tok-abcdef0123456789", "abcdef0123456789"),
            ("DB_URL", long_url.as_str(), "s3cret"),
        ] {
            let shown = env_value(name, value, &r);
            assert!(!shown.contains(secret), "{name}: {shown}");
            assert!(shown.chars().count() <= MAX_ENV_VALUE, "{name}: cut");
        }
        assert_eq!(env_value("SESSION", "s-42\u{1b}[2J", &Keep), "s-42?[2J");
        assert_eq!(
            env_value("SESSION", &"x".repeat(300), &Keep).len(),
            MAX_ENV_VALUE
        );
    }

    #[test]
    fn gathers_own_process() {
        let me = std::process::id();
        let names = ["PATH".to_string(), "LATCH_SURELY_UNSET_123".to_string()];
        let ctx = gather(
            me,
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
            &names,
            &Keep,
        );
        let want: Vec<(String, String)> = std::env::var("PATH")
            .ok()
            .map(|p| ("PATH".to_string(), p.chars().take(MAX_ENV_VALUE).collect()))
            .into_iter()
            .collect();
        assert_eq!(ctx.env, want, "listed and set only");
        assert!(!ctx.exe.is_empty());
        assert!(!ctx.argv.is_empty());
        assert_eq!(ctx.ppid, nix::unistd::getppid().as_raw() as u32);
        assert!(ctx.ancestors.len() <= MAX_ANCESTORS);
        assert!(!ctx.requester.is_empty());
    }
}
