//! From workload cgroup globs to the cgroup ids the kernel watches.
//!
//! A workload names cgroups by path below the cgroup v2 root (`/ai.slice/*`). The kernel knows a
//! task's cgroup by id (the directory's inode number) and checks the task's ancestors too, so a
//! glob only needs to match the top of each subtree; cgroups created later below a watched one
//! are covered without any work here. New top-level matches are found by rescanning.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use globset::{Glob, GlobMatcher};

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
    matchers: Vec<GlobMatcher>,
}

impl WorkloadGlobs {
    /// Compiles a workload's patterns. `*` does not cross `/`.
    pub fn new(w: &policy::Workload) -> Result<Self, PatternError> {
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
}

/// Deepest level scanned below the root.
pub const MAX_SCAN_DEPTH: usize = 12;

/// Walks the cgroup tree and returns every cgroup a workload's globs match. A cgroup matching
/// several workloads goes to the first in rule-file order. Subtrees below a match are not
/// descended into for the same workload (the kernel covers them through ancestry).
pub fn scan(root: &Path, workloads: &[WorkloadGlobs]) -> Vec<Match> {
    let mut out = Vec::new();
    let mut stack: Vec<(PathBuf, usize)> = vec![(root.to_path_buf(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(ft) = entry.file_type() else { continue };
            if !ft.is_dir() {
                continue;
            }
            let path = entry.path();
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            let rel = format!("/{}", rel.to_string_lossy());
            let hit = workloads.iter().find(|w| w.matches(&rel));
            match hit {
                Some(w) => {
                    if let Ok(md) = entry.metadata() {
                        out.push(Match {
                            id: md.ino(),
                            path: rel,
                            workload: w.workload,
                            default_action: w.default_action,
                        });
                    }
                }
                None if depth + 1 < MAX_SCAN_DEPTH => stack.push((path, depth + 1)),
                None => {}
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// The id of one cgroup directory.
pub fn id_of(path: &Path) -> std::io::Result<u64> {
    Ok(std::fs::metadata(path)?.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(globs: &[&str]) -> WorkloadGlobs {
        WorkloadGlobs::new(&policy::Workload {
            id: 7,
            name: "w".into(),
            cgroups: globs.iter().map(|s| s.to_string()).collect(),
            default_action: policy::Action::Allow,
        })
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
}
