//! The programs a host knows: the files its package manager installed (dpkg's file lists on
//! Debian and its derivatives), by path. `unknown_programs` decides the rest.
//!
//! Owns: reading dpkg's lists and keeping them current (read again when dpkg's status file
//! changes). Must not: decide anything; [`content::verdict`](super::content::verdict) does.
//!
//! The path is the real path of the file the agent opened for the held exec (the file the
//! kernel holds, checked by device and inode), so a listed path means the file now at that
//! place in a directory only root can write; a copy elsewhere, a `memfd` or a deleted file is
//! not listed. Reading the lists stats nothing: on a host with a hundred thousand listed paths it
//! is a few file reads, not a hundred thousand system calls.

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Where dpkg keeps its state.
pub const DPKG_DIR: &str = "/var/lib/dpkg";

/// The listed paths, kept as keyed hashes (a path nobody can choose to collide with: the key
/// is random per process), and the host's symlinked top-level directories, so that a path dpkg
/// lists under `/bin` matches the real path under `/usr/bin`.
#[derive(Debug, Default)]
pub struct KnownSet {
    hasher: std::collections::hash_map::RandomState,
    paths: HashSet<u64>,
    links: Vec<(String, String)>,
}

impl KnownSet {
    /// A set of these paths, with `links` as (link, real directory) pairs.
    pub fn new<'a>(paths: impl IntoIterator<Item = &'a str>, links: Vec<(String, String)>) -> Self {
        let mut s = KnownSet {
            links,
            ..Default::default()
        };
        for p in paths {
            let h = s.hasher.hash_one(p);
            s.paths.insert(h);
        }
        s
    }

    /// Paths listed.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Whether nothing is listed.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Whether a real path is listed, as it is or under a symlinked directory that leads to it.
    pub fn contains(&self, real: &str) -> bool {
        if self.paths.contains(&self.hasher.hash_one(real)) {
            return true;
        }
        self.links.iter().any(|(link, target)| {
            real.strip_prefix(target.as_str())
                .filter(|rest| rest.starts_with('/'))
                .is_some_and(|rest| {
                    let alias = format!("{link}{rest}");
                    self.paths.contains(&self.hasher.hash_one(alias.as_str()))
                })
        })
    }
}

/// The paths a dpkg `.list` file names: one absolute path per line; `/.` (the root of every
/// package) and anything not absolute are skipped.
pub fn list_paths(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| l.starts_with('/') && *l != "/." && !l.contains('\0'))
}

/// Top-level directories of `root` that are symlinks to directories (`/bin` → `/usr/bin` on a
/// merged-`/usr` host), as (link, real directory).
fn top_level_links(root: &Path) -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_symlink()) {
            continue;
        }
        let link = e.path();
        if let Ok(real) = std::fs::canonicalize(&link) {
            if real.is_dir() {
                out.push((
                    link.to_string_lossy().into_owned(),
                    real.to_string_lossy().into_owned(),
                ));
            }
        }
    }
    out
}

/// Reads every `.list` file under `info_dir`.
pub fn load(info_dir: &Path) -> KnownSet {
    let mut texts = Vec::new();
    if let Ok(entries) = std::fs::read_dir(info_dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().ends_with(".list") {
                if let Ok(t) = std::fs::read_to_string(e.path()) {
                    texts.push(t);
                }
            }
        }
    }
    KnownSet::new(
        texts.iter().flat_map(|t| list_paths(t)),
        top_level_links(Path::new("/")),
    )
}

/// The known set, read on first use and again whenever dpkg's status file changes.
pub struct Known {
    dir: PathBuf,
    state: Mutex<Option<(Option<SystemTime>, Arc<KnownSet>)>>,
}

impl Known {
    /// For the dpkg state under `dir` (normally [`DPKG_DIR`]).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Known {
            dir: dir.into(),
            state: Mutex::new(None),
        }
    }

    /// The set as it is now, and whether it was (re)read by this call (so that verdicts cached
    /// from the previous set can be dropped). Reads files: call it from a blocking thread.
    pub fn get(&self) -> (Arc<KnownSet>, bool) {
        let stamp = std::fs::metadata(self.dir.join("status"))
            .and_then(|m| m.modified())
            .ok();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((seen, set)) = state.as_ref() {
            if *seen == stamp {
                return (set.clone(), false);
            }
        }
        let set = Arc::new(load(&self.dir.join("info")));
        tracing::info!(
            paths = set.len(),
            dir = %self.dir.display(),
            "known programs read from the package manager's lists"
        );
        *state = Some((stamp, set.clone()));
        (set, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_lines_are_absolute_paths_only() {
        let text = "/.\n/usr\n/usr/bin/tool\r\nrelative\n\n/usr/share/doc/x\n";
        let got: Vec<&str> = list_paths(text).collect();
        assert_eq!(got, ["/usr", "/usr/bin/tool", "/usr/share/doc/x"]);
    }

    #[test]
    fn listed_paths_are_known_under_their_linked_directories_too() {
        let set = KnownSet::new(
            ["/bin/dash", "/usr/bin/curl"],
            vec![("/bin".into(), "/usr/bin".into())],
        );
        let table = [
            ("/usr/bin/curl", true, "listed as it is"),
            ("/usr/bin/dash", true, "listed under the /bin link"),
            ("/bin/dash", true, "the link's own path"),
            ("/usr/bin/dashboard", false, "a longer name is another file"),
            ("/tmp/curl", false, "a copy elsewhere"),
            ("/memfd:curl (deleted)", false, "a memfd"),
            ("/usr/bin/curl (deleted)", false, "a deleted file"),
        ];
        for (path, want, why) in table {
            assert_eq!(set.contains(path), want, "{why}: {path}");
        }
    }

    #[test]
    fn the_lists_are_read_again_when_the_status_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::create_dir(d.join("info")).expect("mkdir");
        std::fs::write(d.join("info/a.list"), "/.\n/opt/a/tool\n").expect("write");
        std::fs::write(d.join("info/a.md5sums"), "x  opt/b/other\n").expect("write");
        std::fs::write(d.join("status"), b"1").expect("write");
        let known = Known::new(d);
        let (set, loaded) = known.get();
        assert!(loaded);
        assert!(set.contains("/opt/a/tool"));
        assert!(!set.contains("/opt/b/other"), "only .list files are read");
        let (_, again) = known.get();
        assert!(!again, "unchanged status: the same set");
        std::fs::write(d.join("info/b.list"), "/opt/b/other\n").expect("write");
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(d.join("status"))
            .and_then(|f| f.set_modified(later))
            .expect("touch");
        let (set, reloaded) = known.get();
        assert!(reloaded);
        assert!(
            set.contains("/opt/b/other"),
            "a package installed since is known"
        );
    }
}
