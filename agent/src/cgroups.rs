//! From workload cgroup globs to the cgroup ids the kernel watches, and following the cgroup tree
//! as cgroups come and go.
//!
//! A workload names cgroups by path below the cgroup v2 root (`/ai.slice/*`). The kernel knows a
//! task's cgroup by id (the directory's inode number) and checks the task's ancestors too, so a
//! glob only needs to match the top of each subtree; cgroups created later below a watched one
//! are covered without any work here. New top-level matches are found through inotify on every
//! directory that could still hold one ([`TreeWatch`]); a full scan backs it up (at start, on an
//! inotify queue overflow, and on the agent's slow periodic rescan).
//!
//! This module reads the cgroup tree only; it never touches the kernel maps.

use std::{
    collections::HashMap,
    ffi::OsString,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use globset::{Glob, GlobMatcher};
use inotify::{EventMask, EventStream, Inotify, WatchMask, Watches};
use tokio_stream::StreamExt;

/// A glob that does not compile.
#[derive(Debug, thiserror::Error)]
#[error("workload '{workload}': cgroup pattern '{pattern}': {reason}")]
pub struct PatternError {
    /// Workload name.
    pub workload: String,
    /// The pattern.
    pub pattern: String,
    /// Why.
    pub reason: String,
}

/// One workload's compiled globs.
#[derive(Clone, Debug)]
pub struct WorkloadGlobs {
    /// Workload id.
    pub workload: u32,
    /// Workload name.
    pub name: String,
    /// Default action.
    pub default_action: agent_common::Action,
    /// [`agent_common::watch_flags`] of its cgroups.
    pub flags: u8,
    /// Action for unresolved destinations (`unresolved:`); `None`: the default action.
    pub unresolved: Option<agent_common::Action>,
    matchers: Vec<GlobMatcher>,
}

impl WorkloadGlobs {
    /// Compiles a workload's patterns. `*` does not cross `/`. `flags` are the
    /// [`agent_common::watch_flags`] its rules call for.
    pub fn new(w: &policy::Workload, flags: u8) -> Result<Self, PatternError> {
        let matchers = w
            .cgroups
            .iter()
            .map(|p| {
                globset::GlobBuilder::new(p)
                    .literal_separator(true)
                    .build()
                    .map(|g: Glob| g.compile_matcher())
                    .map_err(|e| PatternError {
                        workload: w.name.clone(),
                        pattern: p.clone(),
                        reason: e.kind().to_string(),
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            workload: w.id,
            name: w.name.clone(),
            default_action: crate::rules::kernel_action(w.default_action),
            flags,
            unresolved: w.unresolved.map(crate::rules::kernel_action),
            matchers,
        })
    }

    /// Whether a cgroup path (relative to the root, starting with `/`) matches.
    pub fn matches(&self, rel: &str) -> bool {
        self.matchers.iter().any(|m| m.is_match(rel))
    }
}

/// A cgroup to watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Match {
    /// Cgroup id (inode number of its directory).
    pub id: u64,
    /// Path relative to the cgroup v2 root.
    pub path: String,
    /// Workload id.
    pub workload: u32,
    /// Default action.
    pub default_action: agent_common::Action,
    /// [`agent_common::watch_flags`].
    pub flags: u8,
    /// Action for unresolved destinations; `None`: the default action.
    pub unresolved: Option<agent_common::Action>,
}

impl Match {
    /// The kernel's watch entry for this cgroup.
    pub fn watch(&self) -> agent_common::Watch {
        agent_common::Watch {
            workload: self.workload,
            default_action: self.default_action as u8,
            flags: self.flags,
            unresolved: self.unresolved.map_or(0, |a| a as u8),
            _pad: 0,
        }
    }
}

/// Thread ids in the cgroup at `dir` and in every cgroup below it (to [`MAX_SCAN_DEPTH`]),
/// from their `cgroup.threads` files. Unreadable files count as empty: a cgroup can go away
/// while it is read.
pub fn threads_under(dir: &Path) -> Vec<u32> {
    ids_under(dir, "cgroup.threads")
}

/// Process ids in the cgroup at `dir` and below, from `cgroup.procs`.
pub fn procs_under(dir: &Path) -> Vec<u32> {
    ids_under(dir, "cgroup.procs")
}

fn ids_under(dir: &Path, file: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![(dir.to_path_buf(), 0usize)];
    while let Some((d, depth)) = todo.pop() {
        if let Ok(text) = std::fs::read_to_string(d.join(file)) {
            out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if depth >= MAX_SCAN_DEPTH {
            continue;
        }
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    todo.push((e.path(), depth + 1));
                }
            }
        }
    }
    out
}

/// Deepest level scanned below the root.
pub const MAX_SCAN_DEPTH: usize = 12;

/// Walks the cgroup tree and returns every cgroup a workload's globs match. A cgroup matching
/// several workloads goes to the first in rule-file order. Subtrees below a match are not
/// descended into for the same workload (the kernel covers them through ancestry).
pub fn scan(root: &Path, workloads: &[WorkloadGlobs]) -> Vec<Match> {
    let mut out = Vec::new();
    walk(
        root,
        root.to_path_buf(),
        0,
        workloads,
        &mut out,
        &mut |_| {},
    );
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// The path of `path` relative to `root`, as globs see it (`/a/b`).
fn relative(root: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?;
    Some(format!("/{}", rel.to_string_lossy()))
}

/// The match for one directory, if a workload's globs name it.
fn matched(root: &Path, path: &Path, workloads: &[WorkloadGlobs]) -> Option<Match> {
    let rel = relative(root, path)?;
    let w = workloads.iter().find(|w| w.matches(&rel))?;
    let md = std::fs::metadata(path).ok()?;
    Some(Match {
        id: md.ino(),
        path: rel,
        workload: w.workload,
        default_action: w.default_action,
        flags: w.flags,
        unresolved: w.unresolved,
    })
}

/// Reads `start` (at `depth` levels below the root) and every directory below it that no glob
/// matches, collecting matches. `on_dir` sees each directory before it is read, so a watch added
/// there misses nothing created while the directory is being read.
fn walk(
    root: &Path,
    start: PathBuf,
    depth: usize,
    workloads: &[WorkloadGlobs],
    out: &mut Vec<Match>,
    on_dir: &mut dyn FnMut(&Path),
) {
    let mut stack: Vec<(PathBuf, usize)> = vec![(start, depth)];
    while let Some((dir, depth)) = stack.pop() {
        on_dir(&dir);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(ft) = entry.file_type() else { continue };
            if !ft.is_dir() {
                continue;
            }
            let path = entry.path();
            match matched(root, &path, workloads) {
                Some(m) => out.push(m),
                None if depth + 1 < MAX_SCAN_DEPTH => stack.push((path, depth + 1)),
                None => {}
            }
        }
    }
}

/// A change in the cgroup tree that may change what is watched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TreeChange {
    /// A directory appeared (path relative to the root).
    Created(String),
    /// A directory went away (path relative to the root).
    Removed(String),
    /// Events were lost or a directory moved: only a full scan tells what is there now.
    Rescan,
}

/// Why the cgroup tree cannot be followed through inotify.
#[derive(Debug, thiserror::Error)]
#[error("cannot follow the cgroup tree at {}: {reason}", root.display())]
pub struct TreeWatchError {
    /// The cgroup v2 root.
    pub root: PathBuf,
    /// Why.
    pub reason: String,
}

/// Events that matter here: directories appearing, going away or moving. `ONLYDIR` refuses a
/// watch on anything but a directory.
fn tree_mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::ONLYDIR
}

/// Follows the cgroup tree through inotify: one watch on the root and on every directory a scan
/// read (those that could still hold a match), none below a match.
pub struct TreeWatch {
    root: PathBuf,
    watches: Watches,
    stream: EventStream<Vec<u8>>,
    /// Watch descriptor id → directory path relative to the root (`/` for the root).
    dirs: HashMap<i32, String>,
}

impl TreeWatch {
    /// Starts following the tree below `root` (nothing is watched until the first scan). Needs a
    /// Tokio runtime (the events are read through its reactor).
    pub fn new(root: &Path) -> Result<Self, TreeWatchError> {
        let err = |e: std::io::Error| TreeWatchError {
            root: root.to_path_buf(),
            reason: e.to_string(),
        };
        let inotify = Inotify::init().map_err(err)?;
        // Room for a burst of creations: each event is 16 bytes plus a name.
        let stream = inotify
            .into_event_stream(vec![0u8; 64 << 10])
            .map_err(err)?;
        let watches = stream.watches();
        Ok(Self {
            root: root.to_path_buf(),
            watches,
            stream,
            dirs: HashMap::new(),
        })
    }

    /// Number of directories followed.
    pub fn followed(&self) -> usize {
        self.dirs.len()
    }

    fn follow(&mut self, dir: &Path) {
        let Some(rel) = relative(&self.root, dir) else {
            return;
        };
        match self.watches.add(dir, tree_mask()) {
            Ok(wd) => {
                self.dirs.insert(wd.get_watch_descriptor_id(), rel);
            }
            // Gone already (its removal event follows), or out of inotify watches: the
            // periodic rescan still finds what a missing watch would have reported.
            Err(e) => tracing::debug!(dir = %dir.display(), "cannot follow: {e}"),
        }
    }

    /// A full scan of the tree, following every directory it reads.
    pub fn scan(&mut self, workloads: &[WorkloadGlobs]) -> Vec<Match> {
        let mut out = Vec::new();
        let root = self.root.clone();
        walk(&root, root.clone(), 0, workloads, &mut out, &mut |d| {
            self.follow(d)
        });
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    /// The matches at and below a directory that just appeared, following the directories read.
    pub fn scan_created(&mut self, rel: &str, workloads: &[WorkloadGlobs]) -> Vec<Match> {
        let path = self.root.join(rel.trim_start_matches('/'));
        if let Some(m) = matched(&self.root, &path, workloads) {
            return vec![m];
        }
        let depth = Path::new(rel).components().count().saturating_sub(1);
        if depth >= MAX_SCAN_DEPTH {
            return Vec::new();
        }
        let mut out = Vec::new();
        let root = self.root.clone();
        walk(&root, path, depth, workloads, &mut out, &mut |d| {
            self.follow(d)
        });
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    /// The next change in the tree. Cancel-safe: an event is only taken from the stream when it
    /// is returned or does not matter. `None` when inotify failed and the tree can no longer be
    /// followed (the periodic rescan is then all there is).
    pub async fn next(&mut self) -> Option<TreeChange> {
        loop {
            let ev = match self.stream.next().await? {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::error!(root = %self.root.display(), "cgroup tree events failed: {e}");
                    return None;
                }
            };
            if ev.mask.contains(EventMask::Q_OVERFLOW) {
                tracing::warn!("cgroup tree events overflowed; rescanning");
                return Some(TreeChange::Rescan);
            }
            let id = ev.wd.get_watch_descriptor_id();
            if ev.mask.contains(EventMask::IGNORED) {
                self.dirs.remove(&id);
                continue;
            }
            if !ev.mask.contains(EventMask::ISDIR) {
                continue;
            }
            if ev
                .mask
                .intersects(EventMask::MOVED_FROM | EventMask::MOVED_TO)
            {
                // A renamed directory takes its subtree (and its watches' paths) with it.
                return Some(TreeChange::Rescan);
            }
            let (Some(parent), Some(name)) = (self.dirs.get(&id), ev.name) else {
                continue;
            };
            let rel = child_path(parent, &name);
            if ev.mask.contains(EventMask::CREATE) {
                return Some(TreeChange::Created(rel));
            }
            if ev.mask.contains(EventMask::DELETE) {
                return Some(TreeChange::Removed(rel));
            }
        }
    }
}

fn child_path(parent: &str, name: &OsString) -> String {
    let name = name.to_string_lossy();
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// The id of one cgroup directory.
pub fn id_of(path: &Path) -> std::io::Result<u64> {
    Ok(std::fs::metadata(path)?.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(globs: &[&str]) -> WorkloadGlobs {
        WorkloadGlobs::new(
            &policy::Workload {
                id: 7,
                name: "w".into(),
                cgroups: globs.iter().map(|s| s.to_string()).collect(),
                default_action: policy::Action::Allow,
                unknown_programs: None,
                known_programs: Vec::new(),
                context_env: Vec::new(),
                unresolved: None,
            },
            0,
        )
        .expect("valid globs")
    }

    #[test]
    fn star_stays_within_one_level() {
        let w = workload(&["/ai.slice/*"]);
        assert!(w.matches("/ai.slice/job-1.scope"));
        assert!(!w.matches("/ai.slice/job-1.scope/inner"));
        assert!(!w.matches("/other.slice/x"));
    }

    #[test]
    fn scan_finds_matching_directories_and_stops_below_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        for p in ["ai.slice/a", "ai.slice/b/deeper", "other/x"] {
            std::fs::create_dir_all(dir.path().join(p)).expect("mkdir");
        }
        let found = scan(dir.path(), &[workload(&["/ai.slice/*", "/other"])]);
        let paths: Vec<&str> = found.iter().map(|m| m.path.as_str()).collect();
        assert_eq!(paths, ["/ai.slice/a", "/ai.slice/b", "/other"]);
        assert!(found.iter().all(|m| m.workload == 7 && m.id != 0));
    }

    #[tokio::test]
    async fn tree_watch_reports_new_and_removed_directories_at_any_depth() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("ai.slice")).expect("mkdir");
        let globs = [workload(&["/ai.slice/job-*", "/ai.slice/*/deep-*"])];
        let mut tree = TreeWatch::new(dir.path()).expect("inotify");
        assert!(tree.scan(&globs).is_empty());
        assert_eq!(tree.followed(), 2, "the root and /ai.slice");

        std::fs::create_dir(dir.path().join("ai.slice/job-1")).expect("mkdir");
        assert_eq!(
            tree.next().await,
            Some(TreeChange::Created("/ai.slice/job-1".into()))
        );
        let found = tree.scan_created("/ai.slice/job-1", &globs);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].path, "/ai.slice/job-1");
        assert_eq!(tree.followed(), 2, "nothing below a match is followed");

        // A directory that does not match is followed, so a match created inside it is seen.
        std::fs::create_dir(dir.path().join("ai.slice/team")).expect("mkdir");
        let change = tree.next().await;
        assert_eq!(change, Some(TreeChange::Created("/ai.slice/team".into())));
        assert!(tree.scan_created("/ai.slice/team", &globs).is_empty());
        std::fs::create_dir(dir.path().join("ai.slice/team/deep-1")).expect("mkdir");
        assert_eq!(
            tree.next().await,
            Some(TreeChange::Created("/ai.slice/team/deep-1".into()))
        );
        assert_eq!(
            tree.scan_created("/ai.slice/team/deep-1", &globs)[0].path,
            "/ai.slice/team/deep-1"
        );

        std::fs::remove_dir(dir.path().join("ai.slice/job-1")).expect("rmdir");
        assert_eq!(
            tree.next().await,
            Some(TreeChange::Removed("/ai.slice/job-1".into()))
        );

        // A rename moves a subtree: only a full scan knows where things are now.
        std::fs::rename(
            dir.path().join("ai.slice/team"),
            dir.path().join("ai.slice/crew"),
        )
        .expect("rename");
        assert_eq!(tree.next().await, Some(TreeChange::Rescan));
    }

    #[tokio::test]
    async fn created_directory_inside_a_tree_is_scanned_with_what_it_already_holds() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("a/b/job-9")).expect("mkdir");
        let globs = [workload(&["/a/*/job-*"])];
        let mut tree = TreeWatch::new(dir.path()).expect("inotify");
        // `a` appeared with its subtree already in place (created before its watch).
        let found = tree.scan_created("/a", &globs);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].path, "/a/b/job-9");
    }
}
