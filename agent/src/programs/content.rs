//! Programs by content: the file a held exec runs, opened through the held task's own view of
//! the file system, checked to be the file the kernel held, and hashed with SHA-256; what its
//! content gets from a workload's rules (`sha256`, `copies`, `unknown_programs`).
//!
//! Owns: finding and hashing a held exec's file, the digests of the files `copies` rules name,
//! and the pure content verdict. Must not: touch the kernel maps (the engine task writes the
//! verdict it is given), or run on the engine task: hashing a large program takes a while and
//! runs on a blocking thread.
//!
//! The hash is of the file the kernel holds, not of a name: the file is opened by the path the
//! exec used, seen from the held task (`/proc/PID/task/TID/{root,cwd,fd}`), or, once the new
//! image is in place, through `/proc/PID/exe`; its device and inode must be the ones the kernel
//! read, or nothing is decided from it. A file whose change time is less than [`SETTLE`] old is
//! hashed only once it has settled: a write in the same clock tick as the last one would not
//! move the change time the kernel compares.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use agent_common::ExecFileKey;
use policy::{Action, Matcher, PathPattern, RuleSet, Sha256};
use sha2::Digest;

use super::mountinfo;
use crate::events::KernelEvent;

/// How old a file's change time must be before its content is trusted to match it.
pub const SETTLE: Duration = Duration::from_millis(100);

/// Attempts at hashing a file that keeps changing.
const TRIES: usize = 5;

/// Largest file hashed; a bigger one is refused rather than keep a thread reading it.
pub const MAX_BYTES: u64 = 2 << 30;

pub use crate::events::Program;

/// Why a held exec's file could not be hashed; the exec is then refused.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    /// The kernel could not read the file's identity.
    #[error("the kernel gave no identity for the file of held exec {0}")]
    NoIdentity(String),
    /// The path could not be opened.
    #[error("cannot open {path} (held exec of pid {tgid}): {reason}")]
    Open {
        /// Path tried.
        path: String,
        /// Process.
        tgid: u32,
        /// Why.
        reason: String,
    },
    /// The path names another file than the one the kernel held (replaced meanwhile).
    #[error(
        "{path} is not the file the kernel held (kernel {want_dev}:{want_ino}, found {dev}:{ino})"
    )]
    NotTheFile {
        /// Path opened.
        path: String,
        /// Device the kernel read.
        want_dev: u32,
        /// Inode the kernel read.
        want_ino: u64,
        /// Device found.
        dev: u32,
        /// Inode found.
        ino: u64,
    },
    /// Reading failed.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// Path.
        path: String,
        /// Why.
        reason: String,
    },
    /// The file changed every time it was hashed.
    #[error("{0} kept changing while it was hashed")]
    Unsettled(String),
    /// What the path names now is not a regular file (a FIFO, a device, a directory).
    #[error("{0} is not a regular file")]
    NotRegular(String),
    /// Bigger than [`MAX_BYTES`].
    #[error("{path} is {bytes} bytes; files over {MAX_BYTES} bytes are not hashed")]
    TooLarge {
        /// Path.
        path: String,
        /// Its size.
        bytes: u64,
    },
}

/// The path that reaches the file of a held exec, seen from the held task.
pub fn held_path(ev: &KernelEvent) -> PathBuf {
    if !ev.before_exec {
        // The new image is in place and stopped.
        return PathBuf::from(format!("/proc/{}/exe", ev.tgid));
    }
    let task = format!("/proc/{}/task/{}", ev.tgid, ev.pid);
    let path = ev.path.as_deref().unwrap_or("");
    // `fexecve` and `execveat` with a descriptor name the file `/dev/fd/N[/rest]`.
    if let Some(rest) = path.strip_prefix("/dev/fd/") {
        return PathBuf::from(format!("{task}/fd/{rest}"));
    }
    // The exec's own `/proc/self` is the held task's, not the agent's.
    for own in ["/proc/self/", "/proc/thread-self/"] {
        if let Some(rest) = path.strip_prefix(own) {
            return PathBuf::from(format!("/proc/{}/{rest}", ev.tgid));
        }
    }
    match path.strip_prefix('/') {
        Some(abs) => PathBuf::from(format!("{task}/root/{abs}")),
        None => PathBuf::from(format!("{task}/cwd/{path}")),
    }
}

/// The root of the held task and the path below it, for an exec made before the new image is
/// in place: the name the kernel resolved in that root. A name relative to the working
/// directory is put below the directory's place in the root; where that place cannot be
/// established (a directory deleted, or reached from outside the root, or a name that is not
/// UTF-8), `None` keeps the plain open through `cwd`.
fn in_task_root(ev: &KernelEvent) -> Option<(String, String)> {
    let path = ev.path.as_deref()?;
    // Names through `/proc` are magic links (a descriptor, another process's root), which a
    // lookup confined to a root does not follow: they keep the plain open of `held_path`.
    if !ev.before_exec || path.starts_with("/dev/fd/") || path.starts_with("/proc/") {
        return None;
    }
    let task = format!("/proc/{}/task/{}", ev.tgid, ev.pid);
    let root = format!("{task}/root");
    let rest = match path.strip_prefix('/') {
        Some(abs) => abs.to_string(),
        None => cwd_in_root(&root, &format!("{task}/cwd"), path)?,
    };
    Some((root, rest))
}

/// `name`, relative to the working directory `cwd`, as a path below `root` (both the held
/// task's links in `/proc`). The links' text says where the directory is; it is used only once
/// the directory it names in the root is the working directory itself (same device and inode),
/// so a name that reads differently from what it is (`x (deleted)`) decides nothing.
fn cwd_in_root(root: &str, cwd: &str, name: &str) -> Option<String> {
    let inside = below(
        &std::fs::read_link(root).ok()?,
        &std::fs::read_link(cwd).ok()?,
    )?;
    let dir = open_in_root(root, if inside.is_empty() { "." } else { &inside }).ok()?;
    let (got, want) = (dir.metadata().ok()?, std::fs::metadata(cwd).ok()?);
    if (got.dev(), got.ino()) != (want.dev(), want.ino()) {
        return None;
    }
    Some(if inside.is_empty() {
        name.to_string()
    } else {
        format!("{inside}/{name}")
    })
}

/// Where `dir` is below `root`, compared by whole components: `""` for the root itself, `None`
/// for a directory outside it (or a name that is not UTF-8).
fn below(root: &std::path::Path, dir: &std::path::Path) -> Option<String> {
    let rest = dir.strip_prefix(root).ok()?;
    Some(rest.to_str()?.to_string())
}

/// `struct open_how` of `openat2(2)`.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Opens `rest` below `root` as a process whose root that is would: `..` stops at it and an
/// absolute symlink on the way (`/usr/bin/editor` → `/etc/alternatives/editor`, common in a
/// container's image) resolves in it, not in the agent's root. Magic links (`/proc/PID/...`)
/// are not followed. Opened neither blocking (a FIFO) nor as a controlling terminal.
pub fn open_in_root(root: &str, rest: &str) -> std::io::Result<File> {
    use std::os::fd::FromRawFd;
    const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
    const RESOLVE_IN_ROOT: u64 = 0x10;
    // A rename or mount anywhere during a lookup that went through `..` fails it with EAGAIN,
    // to be tried again; a host that mounts all the time gets a few tries.
    const TRIES: usize = 8;
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(root)?;
    let name = std::ffi::CString::new(rest)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let how = OpenHow {
        flags: (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    };
    let mut tries = 0;
    loop {
        // SAFETY: a valid directory descriptor, a NUL-terminated name and an `open_how` of the
        // size passed, all alive for the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                name.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if fd >= 0 {
            // SAFETY: a descriptor the kernel just returned, owned by nothing else.
            return Ok(unsafe { File::from_raw_fd(fd as i32) });
        }
        let e = std::io::Error::last_os_error();
        tries += 1;
        if e.raw_os_error() != Some(libc::EAGAIN) || tries == TRIES {
            return Err(e);
        }
    }
}

/// Opens the file of a held exec and checks it is the one the kernel held.
pub fn open_held(
    ev: &KernelEvent,
    mounts: &[mountinfo::Mount],
) -> Result<(File, String), ContentError> {
    let id = ev
        .file
        .ok_or_else(|| ContentError::NoIdentity(ev.path.clone().unwrap_or_default()))?;
    let path = held_path(ev);
    let shown = path.display().to_string();
    // The workload may have put anything at that name since the hold: opening must neither
    // block (a FIFO) nor give the agent a controlling terminal (a pty).
    let opened = match in_task_root(ev) {
        Some((root, rest)) => open_in_root(&root, &rest),
        None => std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(&path),
    };
    let f = opened.map_err(|e| ContentError::Open {
        path: shown.clone(),
        tgid: ev.tgid,
        reason: e.to_string(),
    })?;
    let meta = f.metadata().map_err(|e| ContentError::Read {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    if !meta.is_file() {
        return Err(ContentError::NotRegular(shown));
    }
    if meta.len() > MAX_BYTES {
        return Err(ContentError::TooLarge {
            path: shown,
            bytes: meta.len(),
        });
    }
    let real = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| shown.clone());
    let dev = ExecFileKey::kernel_dev(meta.dev());
    let mount_dev = mountinfo::mount_of(mounts, &real).map(|m| m.dev);
    if meta.ino() != id.ino || (dev != id.dev && mount_dev != Some(id.dev)) {
        return Err(ContentError::NotTheFile {
            path: shown,
            want_dev: id.dev,
            want_ino: id.ino,
            dev,
            ino: meta.ino(),
        });
    }
    Ok((f, real))
}

fn ctime_ns(m: &std::fs::Metadata) -> i128 {
    m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128
}

/// SHA-256 of an open file's content, once its change time is [`SETTLE`] old and stays the
/// same across the read.
pub fn hash_settled(f: &File, shown: &str) -> Result<Sha256, ContentError> {
    let read_err = |e: std::io::Error| ContentError::Read {
        path: shown.to_string(),
        reason: e.to_string(),
    };
    for _ in 0..TRIES {
        let before = f.metadata().map_err(read_err)?;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        let age = now - ctime_ns(&before);
        if age < SETTLE.as_nanos() as i128 {
            let wait = (SETTLE.as_nanos() as i128 - age.max(0)).min(SETTLE.as_nanos() as i128);
            std::thread::sleep(Duration::from_nanos(wait as u64));
            continue;
        }
        let digest = hash_file(f).map_err(read_err)?;
        let after = f.metadata().map_err(read_err)?;
        if ctime_ns(&after) == ctime_ns(&before) && after.len() == before.len() {
            return Ok(digest);
        }
    }
    Err(ContentError::Unsettled(shown.to_string()))
}

/// SHA-256 of a file from its start, through its own descriptor.
fn hash_file(f: &File) -> std::io::Result<Sha256> {
    use std::os::unix::fs::FileExt;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut off = 0u64;
    loop {
        let n = f.read_at(&mut buf, off)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(Sha256(h.finalize().into()))
}

/// SHA-256 of the file at `path` (for `copies` rules, which name files on the host).
pub fn hash_path(path: &str) -> std::io::Result<Sha256> {
    hash_file(&File::open(path)?)
}

/// What the agent found hashing the file of a held exec (off the engine task).
#[derive(Clone, Debug)]
pub struct Inspected {
    /// Its content.
    pub digest: Sha256,
    /// Its real path, as opened.
    pub real: String,
    /// `real` names this very file in the agent's own mount namespace too (it does not for a
    /// file in a workload's private mount namespace or container): only then can a path say
    /// whether it is known.
    pub real_here: bool,
    /// Installed by the package manager (looked up only for a workload with
    /// `unknown_programs`).
    pub packaged: bool,
    /// The package manager's list was (re)loaded for this: verdicts cached from the previous
    /// one may be wrong now.
    pub known_reloaded: bool,
}

/// Opens, checks and hashes the file of a held exec, and, where the workload has
/// `unknown_programs` (`known` given), looks it up in the known set. Blocks.
pub fn inspect(
    ev: &KernelEvent,
    known: Option<&super::known::Known>,
) -> Result<Inspected, ContentError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mounts = mountinfo::parse(&text);
    let (f, real) = open_held(ev, &mounts)?;
    let digest = hash_settled(&f, &real)?;
    let real_here = match (f.metadata(), std::fs::metadata(&real)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    let (packaged, known_reloaded) = match known {
        Some(k) => {
            let (set, reloaded) = k.get();
            (real_here && set.contains(&real), reloaded)
        }
        None => (false, false),
    };
    Ok(Inspected {
        digest,
        real,
        real_here,
        packaged,
        known_reloaded,
    })
}

/// One rule that names programs by content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentRule {
    /// Rule id.
    pub rule_id: u32,
    /// Its action.
    pub action: Action,
    /// The contents it names: its `sha256` list and, with `copies`, the digests of the files
    /// its paths name now.
    pub digests: BTreeSet<Sha256>,
}

/// What one workload decides by content.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkloadContent {
    /// Content rules, in file order.
    pub rules: Vec<ContentRule>,
    /// `unknown_programs`.
    pub unknown: Option<Action>,
    /// `known_programs`.
    pub known_paths: Vec<PathPattern>,
}

impl WorkloadContent {
    /// Whether a real path is under the workload's `known_programs`.
    pub fn known_by_path(&self, real: &str) -> bool {
        self.known_paths.iter().any(|p| match p {
            PathPattern::Exact(s) => s == real,
            PathPattern::Prefix(s) => real.starts_with(s.as_str()),
        })
    }
}

/// Content decisions by workload id.
pub type ContentTable = HashMap<u32, WorkloadContent>;

/// Digests of files, by (device, inode, change time), so that a `copies` rule's files are
/// hashed again only when they change.
pub type DigestCache = HashMap<(u64, u64, i128), Sha256>;

/// The content table of a rule set. Files `copies` rules name are hashed (through `cache`); a
/// file that cannot be read adds no digest and is logged.
pub fn table(rules: &RuleSet, cache: &mut DigestCache) -> ContentTable {
    let mut out: ContentTable = HashMap::new();
    for w in &rules.workloads {
        if rules.decides_content(w.id) {
            out.insert(
                w.id,
                WorkloadContent {
                    rules: Vec::new(),
                    unknown: w.unknown_programs,
                    known_paths: w.known_programs.clone(),
                },
            );
        }
    }
    for r in &rules.rules {
        let Matcher::Exec {
            paths,
            sha256,
            copies,
            ..
        } = &r.matcher
        else {
            continue;
        };
        if sha256.is_empty() && !copies {
            continue;
        }
        let mut digests: BTreeSet<Sha256> = sha256.iter().copied().collect();
        if *copies {
            for p in paths {
                let PathPattern::Exact(path) = p else {
                    continue;
                };
                match cached_hash(path, cache) {
                    Ok(d) => {
                        digests.insert(d);
                    }
                    Err(e) => tracing::warn!(
                        rule = %r.name, path = %path,
                        "cannot hash a program a `copies` rule names; its copies are not recognised: {e}"
                    ),
                }
            }
        }
        if let Some(w) = out.get_mut(&r.workload_id) {
            w.rules.push(ContentRule {
                rule_id: r.id,
                action: r.action,
                digests,
            });
        }
    }
    out
}

fn cached_hash(path: &str, cache: &mut DigestCache) -> std::io::Result<Sha256> {
    let m = std::fs::metadata(path)?;
    let key = (m.dev(), m.ino(), ctime_ns(&m));
    if let Some(d) = cache.get(&key) {
        return Ok(*d);
    }
    let d = hash_path(path)?;
    cache.insert(key, d);
    Ok(d)
}

/// What a file's content gets from a workload: the strictest content rule naming its digest;
/// else, for a program the host does not know, `unknown_programs`; else nothing to say (allow,
/// leaving the decision to the rules by path and identity). Rule id 0 is `unknown_programs`.
pub fn verdict(w: &WorkloadContent, digest: &Sha256, known: bool) -> (u32, Action) {
    let by_rule = w.rules.iter().filter(|r| r.digests.contains(digest)).fold(
        None,
        |best: Option<&ContentRule>, r| match best {
            Some(b) if b.action >= r.action => Some(b),
            _ => Some(r),
        },
    );
    match (by_rule, w.unknown) {
        (Some(r), _) => (r.rule_id, r.action),
        (None, Some(a)) if !known => (0, a),
        _ => (0, Action::Allow),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(b: u8) -> Sha256 {
        Sha256([b; 32])
    }

    fn rule(id: u32, action: Action, digests: &[u8]) -> ContentRule {
        ContentRule {
            rule_id: id,
            action,
            digests: digests.iter().map(|&b| d(b)).collect(),
        }
    }

    #[test]
    fn the_content_verdict_table() {
        let w = WorkloadContent {
            rules: vec![
                rule(1, Action::Approve, &[1, 2]),
                rule(2, Action::Deny, &[2]),
                rule(3, Action::Audit, &[3]),
            ],
            unknown: Some(Action::Approve),
            known_paths: Vec::new(),
        };
        let without_unknown = WorkloadContent {
            unknown: None,
            ..w.clone()
        };
        // (workload, digest byte, known, want, why)
        type Case<'a> = (&'a WorkloadContent, u8, bool, (u32, Action), &'a str);
        let table: &[Case] = &[
            (&w, 1, true, (1, Action::Approve), "a content rule names it"),
            (&w, 2, true, (2, Action::Deny), "the stricter of two rules"),
            (
                &w,
                3,
                false,
                (3, Action::Audit),
                "a rule beats unknown_programs",
            ),
            (
                &w,
                9,
                false,
                (0, Action::Approve),
                "unknown: unknown_programs",
            ),
            (
                &w,
                9,
                true,
                (0, Action::Allow),
                "known and unnamed: nothing to say",
            ),
            (
                &without_unknown,
                9,
                false,
                (0, Action::Allow),
                "no unknown_programs: allowed",
            ),
            (
                &without_unknown,
                2,
                false,
                (2, Action::Deny),
                "rules apply without it",
            ),
        ];
        for (w, digest, known, want, why) in table {
            assert_eq!(verdict(w, &d(*digest), *known), *want, "{why}");
        }
    }

    #[test]
    fn known_paths_match_exactly_or_by_prefix() {
        let w = WorkloadContent {
            known_paths: vec![
                PathPattern::Exact("/opt/app/run".into()),
                PathPattern::Prefix("/opt/tools/".into()),
            ],
            ..Default::default()
        };
        assert!(w.known_by_path("/opt/app/run"));
        assert!(w.known_by_path("/opt/tools/x/y"));
        assert!(!w.known_by_path("/opt/app/run2"));
        assert!(!w.known_by_path("/tmp/x"));
    }

    fn event(before_exec: bool, path: &str) -> KernelEvent {
        // SAFETY: `Event` is plain data; all-zero is a valid value.
        let mut e: agent_common::Event = unsafe { std::mem::zeroed() };
        e.op = agent_common::Op::Exec as u8;
        e.outcome = agent_common::Outcome::Paused as u8;
        e.pid = 12;
        e.tgid = 10;
        if before_exec {
            e.flags |= agent_common::event_flags::BEFORE_EXEC;
        }
        e.path[..path.len()].copy_from_slice(path.as_bytes());
        // SAFETY: as above; the bytes of a plain-data value.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&e as *const agent_common::Event).cast::<u8>(),
                std::mem::size_of::<agent_common::Event>(),
            )
        };
        KernelEvent::decode(bytes).expect("decodes")
    }

    #[test]
    fn the_held_file_is_reached_from_the_held_task() {
        let table = [
            (false, "/usr/bin/x", "/proc/10/exe"),
            (true, "/usr/bin/x", "/proc/10/task/12/root/usr/bin/x"),
            (true, "./x", "/proc/10/task/12/cwd/./x"),
            (true, "/dev/fd/3", "/proc/10/task/12/fd/3"),
            (true, "/dev/fd/3/curl", "/proc/10/task/12/fd/3/curl"),
            (true, "/proc/self/fd/4", "/proc/10/fd/4"),
        ];
        for (before, path, want) in table {
            assert_eq!(
                held_path(&event(before, path)),
                PathBuf::from(want),
                "{path}"
            );
        }
    }

    #[test]
    fn a_working_directory_is_placed_in_its_root_by_whole_components() {
        // (root, working directory, its place below the root)
        let table = [
            ("/", "/", Some("")),
            ("/", "/opt", Some("opt")),
            ("/srv/c/root", "/srv/c/root", Some("")),
            ("/srv/c/root", "/srv/c/root/opt/bin", Some("opt/bin")),
            // A sibling that shares the root's text is not below it.
            ("/srv/c/root", "/srv/c/rootfs/opt", None),
            ("/srv/c/root", "/srv/c", None),
            ("/srv/c/root", "/", None),
        ];
        for (root, dir, want) in table {
            assert_eq!(
                below(std::path::Path::new(root), std::path::Path::new(dir)).as_deref(),
                want,
                "{dir} in {root}"
            );
        }
    }

    #[test]
    fn a_relative_name_is_resolved_from_its_directory_in_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("opt")).expect("mkdir");
        std::fs::write(root.join("opt/prog"), b"inside").expect("write");
        std::os::unix::fs::symlink("/opt/prog", root.join("opt/link")).expect("symlink");
        // Links standing in for the held task's `/proc/PID/task/TID/{root,cwd}`.
        let links = dir.path().join("links");
        std::fs::create_dir(&links).expect("mkdir");
        let (r, c) = (links.join("root"), links.join("cwd"));
        std::os::unix::fs::symlink(&root, &r).expect("symlink");
        let (r, c_s) = (
            r.to_string_lossy().into_owned(),
            c.to_string_lossy().into_owned(),
        );
        let set_cwd = |to: &std::path::Path| {
            let _ = std::fs::remove_file(&c);
            std::os::unix::fs::symlink(to, &c).expect("symlink");
        };
        set_cwd(&root.join("opt"));
        let rest = cwd_in_root(&r, &c_s, "./link").expect("placed");
        assert_eq!(rest, "opt/./link");
        let mut text = String::new();
        std::io::Read::read_to_string(&mut open_in_root(&r, &rest).expect("opens"), &mut text)
            .expect("read");
        assert_eq!(text, "inside", "the absolute link resolved in the root");
        set_cwd(&root);
        assert_eq!(cwd_in_root(&r, &c_s, "x").as_deref(), Some("x"));
        // The link's text names `opt2` in the root, but the working directory is the host's
        // directory that `opt2`'s absolute link reaches outside the root; in the root the same
        // text reaches another directory. The text decides nothing.
        let host_dir = dir.path().join("elsewhere/opt");
        std::fs::create_dir_all(&host_dir).expect("mkdir");
        let in_root = root.join(host_dir.strip_prefix("/").expect("absolute"));
        std::fs::create_dir_all(&in_root).expect("mkdir");
        std::os::unix::fs::symlink(&host_dir, root.join("opt2")).expect("symlink");
        set_cwd(&root.join("opt2"));
        assert_eq!(cwd_in_root(&r, &c_s, "link"), None);
        // A working directory outside the root.
        set_cwd(dir.path());
        assert_eq!(cwd_in_root(&r, &c_s, "link"), None);
    }

    #[test]
    fn a_name_in_another_root_is_resolved_in_that_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("opt")).expect("mkdir");
        std::fs::write(root.join("opt/prog"), b"inside").expect("write");
        // Absolute, as a container's image has them: in the agent's root it names nothing.
        let target = format!("/opt/latch-{}/prog", std::process::id());
        std::os::unix::fs::symlink(&target, root.join("link")).expect("symlink");
        std::os::unix::fs::symlink(&target, root.join("opt/latch-link")).expect("symlink");
        std::fs::create_dir_all(
            root.join(target.trim_start_matches('/'))
                .parent()
                .expect("dir"),
        )
        .expect("mkdir");
        std::fs::write(root.join(target.trim_start_matches('/')), b"target").expect("write");
        let root_s = root.to_string_lossy().into_owned();
        let read = |rest: &str| -> String {
            let mut f = open_in_root(&root_s, rest).expect("opens");
            let mut text = String::new();
            std::io::Read::read_to_string(&mut f, &mut text).expect("read");
            text
        };
        // (path below the root, what is read)
        let table = [
            ("opt/prog", "inside"),
            ("link", "target"),
            ("opt/latch-link", "target"),
            // `..` stops at the root.
            ("../../../opt/prog", "inside"),
        ];
        for (rest, want) in table {
            assert_eq!(read(rest), want, "{rest}");
        }
        // The same names opened plainly leave the root.
        assert!(std::fs::read(root.join("link")).is_err());
        assert!(open_in_root(&root_s, "missing").is_err());
    }

    #[test]
    fn a_file_is_hashed_once_settled_and_a_replaced_one_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("prog");
        // Taken before the write: the file's change time is no earlier than this, less one
        // clock tick.
        let started = std::time::Instant::now();
        std::fs::write(&p, b"abc").expect("write");
        let f = File::open(&p).expect("open");
        let got = hash_settled(&f, "prog").expect("hashed");
        // SHA-256("abc")
        assert_eq!(
            got.to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(
            started.elapsed() >= SETTLE / 2,
            "a fresh file waits to settle"
        );
        let meta = std::fs::metadata(&p).expect("stat");
        let mut ev = event(true, &p.to_string_lossy());
        ev.pid = std::process::id();
        ev.tgid = std::process::id();
        ev.file = Some(crate::events::FileId {
            dev: ExecFileKey::kernel_dev(meta.dev()),
            ino: meta.ino(),
            ctime_ns: 0,
            inode: 0,
        });
        let mounts =
            mountinfo::parse(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default());
        let (_, real) = open_held(&ev, &mounts).expect("the same file");
        assert_eq!(real, p.to_string_lossy());
        std::fs::remove_file(&p).expect("rm");
        std::fs::write(&p, b"other").expect("write");
        match open_held(&ev, &mounts) {
            Err(ContentError::NotTheFile { .. }) => {}
            other => panic!("a replaced file must be refused, got {other:?}"),
        }
        // A FIFO put at the name neither blocks the agent nor is hashed.
        std::fs::remove_file(&p).expect("rm");
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
        match open_held(&ev, &mounts) {
            Err(ContentError::NotRegular(_)) => {}
            other => panic!("a FIFO must be refused, got {other:?}"),
        }
    }
}
