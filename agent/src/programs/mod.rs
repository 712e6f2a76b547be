//! The program files exec rules name, resolved to their identity (device and inode), so that the
//! kernel recognises a program by every name it has: symlinks, hard links, `.`/`..` and doubled
//! slashes, `/proc/self/fd/N`, `execveat` with a descriptor, bind mounts, and a script whose
//! interpreter it is.
//!
//! Owns: turning rule paths into the `EXEC_FILES` entries, and keeping them current when files
//! are replaced (the engine task calls [`resolve`] again on a timer and applies the difference).
//! Must not: touch the kernel maps itself or decide what a rule means; the rule that applies to
//! a file is the one the path maps give its real path ([`rules::match_exec`]).
//!
//! A copy of a program is another file: it is not recognised here, but by its content
//! ([`content`]). Paths are resolved in the agent's own mount namespace.

pub mod argv;
pub mod content;
pub mod known;
pub mod mountinfo;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;

use agent_common::{rule_flags, ExecFileKey, RuleRef};
use policy::{Matcher, PathPattern, RuleSet};

use crate::rules::{self, Compiled};

/// At most this many files are taken from one path prefix (`/usr/bin/ssh*`, `/opt/tools/`).
pub const PREFIX_FILES_MAX: usize = 4096;

/// A file's real path and identities.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identified {
    /// Canonical path (symlinks resolved).
    pub real: String,
    /// (device in the kernel's `dev_t` encoding, inode): what `stat` reports first, then, where
    /// it differs, with the device of the file's mount (the super block's, which the kernel
    /// sees; overlayfs and btrfs report others to `stat`), and on an overlay the file of the
    /// layer below that a mapping of it holds (`mprotect` is decided by that file).
    pub ids: Vec<(u32, u64)>,
}

/// What the resolver needs from a file system.
pub trait ProgramFiles {
    /// The real path and identity of an existing regular file, following symlinks.
    fn identify(&self, path: &str) -> Option<Identified>;
    /// Paths of the regular files a path prefix covers: entries of the prefix's directory whose
    /// names start with its last component, and for a prefix that ends with `/`, every file
    /// below it; at most `limit`.
    fn under(&self, prefix: &str, limit: usize) -> Vec<String>;
}

/// The host's file system, with its mount table as it was when this was made.
pub struct HostFiles {
    mounts: Vec<mountinfo::Mount>,
}

impl HostFiles {
    /// Reads the mount table now.
    pub fn now() -> Self {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        HostFiles {
            mounts: mountinfo::parse(&text),
        }
    }
}

fn regular_file_id(path: &str) -> Option<(u32, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    meta.is_file()
        .then(|| (ExecFileKey::kernel_dev(meta.dev()), meta.ino()))
}

impl ProgramFiles for HostFiles {
    fn identify(&self, path: &str) -> Option<Identified> {
        let real = std::fs::canonicalize(path).ok()?;
        let real = real.to_string_lossy().into_owned();
        let (dev, ino) = regular_file_id(&real)?;
        let mut ids = vec![(dev, ino)];
        if let Some(m) = mountinfo::mount_of(&self.mounts, &real) {
            if m.dev != dev {
                ids.push((m.dev, ino));
            }
            // The first layer that has the file holds its data (a copied-up file is in the
            // upper one). Overlays with `metacopy` keep data lower still: not followed.
            let below = mountinfo::in_layers(m, &real)
                .into_iter()
                .find_map(|p| regular_file_id(&p).map(|id| (p, id)));
            if let Some((p, (ldev, lino))) = below {
                let mut more = vec![(ldev, lino)];
                if let Some(lm) = mountinfo::mount_of(&self.mounts, &p) {
                    more.push((lm.dev, lino));
                }
                for id in more {
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
            }
        }
        Some(Identified { real, ids })
    }

    fn under(&self, prefix: &str, limit: usize) -> Vec<String> {
        let Some(cut) = prefix.rfind('/') else {
            return Vec::new();
        };
        let (dir, start) = (&prefix[..=cut], &prefix[cut + 1..]);
        let mut out = Vec::new();
        let mut dirs = vec![(dir.to_string(), start.to_string())];
        let whole_tree = start.is_empty();
        while let Some((dir, start)) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            // Sorted, so that a directory with more files than the limit gives the same ones
            // every time (and the rules are not rewritten at every refresh).
            let mut entries: Vec<_> = entries.flatten().collect();
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                if out.len() >= limit {
                    return out;
                }
                let name = e.file_name().to_string_lossy().into_owned();
                if !name.starts_with(&start) {
                    continue;
                }
                let path = format!("{dir}{name}");
                match e.file_type() {
                    Ok(t) if t.is_dir() && whole_tree => {
                        dirs.push((format!("{path}/"), String::new()))
                    }
                    Ok(t) if t.is_file() || t.is_symlink() => out.push(path),
                    _ => {}
                }
            }
        }
        out
    }
}

/// A path an exec rule names exactly, as its author wrote it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NamedProgram {
    /// The rule's name.
    pub rule: String,
    /// The path.
    pub path: String,
}

/// The exact paths exec rules name, in the rules' order (a `*` prefix names no one file).
/// Given the rules as written, before the agent adds its own aliases of a path.
pub fn named_exactly(rules: &RuleSet) -> Vec<NamedProgram> {
    let mut out = Vec::new();
    for r in &rules.rules {
        let Matcher::Exec { paths, .. } = &r.matcher else {
            continue;
        };
        for p in paths {
            if let PathPattern::Exact(path) = p {
                out.push(NamedProgram {
                    rule: r.name.clone(),
                    path: path.clone(),
                });
            }
        }
    }
    out
}

/// Those of `named` that are no regular file in the agent's view now. The kernel can know such
/// a program only by the path string an exec gives, so its other names (a symlink, a
/// descriptor, a bind mount) are not it until the file exists and is resolved again.
pub fn missing(named: &[NamedProgram], fs: &dyn ProgramFiles) -> Vec<NamedProgram> {
    named
        .iter()
        .filter(|n| fs.identify(&n.path).is_none())
        .cloned()
        .collect()
}

/// The `EXEC_FILES` entries for a compiled rule set: every file an exec rule names (directly or
/// through a prefix) that exists now, with the rule the path maps give its real path. Two names
/// of one file that get different rules keep the stricter.
pub fn resolve(
    rules: &RuleSet,
    compiled: &Compiled,
    fs: &dyn ProgramFiles,
) -> Vec<(ExecFileKey, RuleRef)> {
    resolve_with_paths(rules, compiled, fs).0
}

/// [`resolve`], and the real path each entry's rule came from (the agent decides an exec held
/// for its arguments by the rules of that path).
pub fn resolve_with_paths(
    rules: &RuleSet,
    compiled: &Compiled,
    fs: &dyn ProgramFiles,
) -> (Vec<(ExecFileKey, RuleRef)>, HashMap<ExecFileKey, String>) {
    let mut out: BTreeMap<ExecFileKey, (RuleRef, String)> = BTreeMap::new();
    for r in &rules.rules {
        let Matcher::Exec { paths, .. } = &r.matcher else {
            continue;
        };
        for p in paths {
            let names = match p {
                PathPattern::Exact(s) => vec![s.clone()],
                PathPattern::Prefix(s) => fs.under(s, PREFIX_FILES_MAX),
            };
            for name in names {
                let Some(id) = fs.identify(&name) else {
                    continue;
                };
                // Only the real path's rule: a link planted under a loose rule must not lend
                // that rule to the file it points to.
                let Some(mut rref) = rules::match_exec(compiled, r.workload_id, &id.real) else {
                    continue;
                };
                let exact = matches!(p, PathPattern::Exact(_));
                if exact {
                    rref.flags |= rule_flags::EXACT;
                }
                for &(dev, ino) in &id.ids {
                    let key = ExecFileKey {
                        workload: r.workload_id,
                        dev,
                        ino,
                    };
                    out.entry(key)
                        .and_modify(|cur| {
                            // A file any rule names exactly is a program, whichever rule wins.
                            let flags = cur.0.flags | rref.flags;
                            if rules::strictness(&rref) > rules::strictness(&cur.0) {
                                *cur = (rref, id.real.clone());
                            }
                            cur.0.flags = flags;
                        })
                        .or_insert_with(|| (rref, id.real.clone()));
                }
            }
        }
    }
    let paths = out.iter().map(|(k, (_, p))| (*k, p.clone())).collect();
    (out.into_iter().map(|(k, (r, _))| (k, r)).collect(), paths)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A file system made of (path → identity) and symlinks (path → target).
    #[derive(Default)]
    struct FakeFs {
        files: HashMap<String, (u32, u64)>,
        links: HashMap<String, String>,
    }

    impl ProgramFiles for FakeFs {
        fn identify(&self, path: &str) -> Option<Identified> {
            let real = self.links.get(path).cloned().unwrap_or(path.to_string());
            self.files.get(&real).map(|&(dev, ino)| Identified {
                real,
                ids: vec![(dev, ino)],
            })
        }
        fn under(&self, prefix: &str, limit: usize) -> Vec<String> {
            let mut v: Vec<String> = self
                .files
                .keys()
                .chain(self.links.keys())
                .filter(|p| p.starts_with(prefix))
                .cloned()
                .collect();
            v.sort();
            v.truncate(limit);
            v
        }
    }

    fn set(yaml_rules: &str) -> (RuleSet, Compiled) {
        let text = format!("workloads:\n  - name: w\n    cgroups: [\"/w\"]\nrules:\n{yaml_rules}");
        let rs = RuleSet::parse("t.yaml", &text).expect("valid");
        let c = rules::compile(&rs).expect("compiles");
        (rs, c)
    }

    #[test]
    fn exact_paths_that_name_no_file_are_reported_by_rule() {
        let mut fs = FakeFs::default();
        fs.files.insert("/usr/bin/curl".into(), (8, 10));
        fs.links
            .insert("/usr/local/bin/curl".into(), "/usr/bin/curl".into());
        fs.links
            .insert("/usr/local/bin/gone".into(), "/usr/bin/gone".into());
        let (rs, _) = set(
            "  - {name: a, workload: w, on: exec, paths: [/usr/bin/curl, /opt/tool], action: deny}\n\
             \x20 - {name: b, workload: w, on: exec, paths: ['/opt/tools/*', /usr/local/bin/curl], action: approve}\n\
             \x20 - {name: c, workload: w, on: exec, paths: [/usr/local/bin/gone], action: deny}\n\
             \x20 - {name: d, workload: w, on: connect, to: [10.0.0.0/8], action: deny}\n",
        );
        let named = named_exactly(&rs);
        let pairs = |v: &[NamedProgram]| -> Vec<(String, String)> {
            v.iter().map(|n| (n.rule.clone(), n.path.clone())).collect()
        };
        let owned = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(r, p)| (r.to_string(), p.to_string()))
                .collect()
        };
        // A prefix names no one file; a connect rule names none.
        assert_eq!(
            pairs(&named),
            owned(&[
                ("a", "/usr/bin/curl"),
                ("a", "/opt/tool"),
                ("b", "/usr/local/bin/curl"),
                ("c", "/usr/local/bin/gone"),
            ])
        );
        // (file system change, what is missing then)
        let table: [(&str, &[(&str, &str)]); 3] = [
            (
                "as made",
                &[("a", "/opt/tool"), ("c", "/usr/local/bin/gone")],
            ),
            ("the dangling link's file appears", &[("a", "/opt/tool")]),
            (
                "the first file is removed",
                &[
                    ("a", "/usr/bin/curl"),
                    ("a", "/opt/tool"),
                    ("b", "/usr/local/bin/curl"),
                ],
            ),
        ];
        for (change, want) in table {
            match change {
                "the dangling link's file appears" => {
                    fs.files.insert("/usr/bin/gone".into(), (8, 12));
                }
                "the first file is removed" => {
                    fs.files.remove("/usr/bin/curl");
                }
                _ => {}
            }
            assert_eq!(pairs(&missing(&named, &fs)), owned(want), "{change}");
        }
    }

    fn action_of(entries: &[(ExecFileKey, RuleRef)], ino: u64) -> Option<u8> {
        entries
            .iter()
            .find(|(k, _)| k.ino == ino)
            .map(|(_, v)| v.action)
    }

    #[test]
    fn files_get_the_rule_of_their_real_path() {
        let mut fs = FakeFs::default();
        fs.files.insert("/usr/bin/curl".into(), (8, 10));
        fs.files.insert("/usr/bin/ssh".into(), (8, 11));
        fs.files.insert("/usr/bin/ssh-add".into(), (8, 12));
        fs.files.insert("/usr/bin/scp".into(), (8, 13));
        fs.links
            .insert("/usr/local/bin/curl".into(), "/usr/bin/curl".into());
        let (rs, c) = set(
            "  - {name: no-curl, workload: w, on: exec, paths: [/usr/local/bin/curl, /usr/bin/curl], action: deny}\n\
             \x20 - {name: ssh, workload: w, on: exec, paths: ['/usr/bin/ssh*'], action: approve}\n\
             \x20 - {name: ssh-add-ok, workload: w, on: exec, paths: [/usr/bin/ssh-add], action: allow}\n",
        );
        let e = resolve(&rs, &c, &fs);
        let deny = agent_common::Action::Deny as u8;
        let approve = agent_common::Action::Approve as u8;
        let allow = agent_common::Action::Allow as u8;
        let table = [
            (
                10,
                Some(deny),
                "a rule on a symlink names the file it points to",
            ),
            (
                11,
                Some(approve),
                "a prefix names the files that exist under it",
            ),
            (
                12,
                Some(allow),
                "an exact path beats a prefix, as in the path maps",
            ),
            (13, None, "a file no rule names gets no entry"),
        ];
        for (ino, want, why) in table {
            assert_eq!(action_of(&e, ino), want, "{why}");
        }
        assert_eq!(e.len(), 3, "one entry per file: {e:?}");
        assert!(e
            .iter()
            .all(|(k, _)| k.dev == 8 && k.workload == rs.workloads[0].id));
    }

    #[test]
    fn missing_files_are_skipped_and_a_replaced_file_gets_its_new_identity() {
        let mut fs = FakeFs::default();
        let (rs, c) = set(
            "  - {name: no-tool, workload: w, on: exec, paths: [/opt/tool, /opt/absent], action: deny}\n",
        );
        fs.files.insert("/opt/tool".into(), (9, 100));
        assert_eq!(resolve(&rs, &c, &fs).len(), 1);
        fs.files.insert("/opt/tool".into(), (9, 200));
        let e = resolve(&rs, &c, &fs);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].0.ino, 200);
    }

    #[test]
    fn two_names_of_one_file_keep_the_stricter_rule() {
        let mut fs = FakeFs::default();
        fs.files.insert("/a/tool".into(), (1, 5));
        fs.links.insert("/b/tool".into(), "/a/tool".into());
        fs.files.insert("/b/other".into(), (1, 5)); // a hard link: same identity, another path
        let (rs, c) = set(
            "  - {name: ok, workload: w, on: exec, paths: [/a/tool], action: audit}\n\
             \x20 - {name: no, workload: w, on: exec, paths: [/b/other], action: deny}\n",
        );
        let e = resolve(&rs, &c, &fs);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].1.action, agent_common::Action::Deny as u8);
    }

    #[test]
    fn the_host_resolver_follows_links_and_walks_prefixes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::write(d.join("tool"), b"x").expect("write");
        std::fs::create_dir(d.join("sub")).expect("mkdir");
        std::fs::write(d.join("sub/deep"), b"y").expect("write");
        std::os::unix::fs::symlink(d.join("tool"), d.join("alias")).expect("symlink");
        let host = HostFiles::now();
        let tool = host
            .identify(&d.join("tool").to_string_lossy())
            .expect("identified");
        let alias = host
            .identify(&d.join("alias").to_string_lossy())
            .expect("identified");
        assert_eq!(tool, alias, "a symlink is the file it points to");
        let meta = std::fs::metadata(d.join("tool")).expect("stat");
        assert_eq!(tool.ids[0].1, meta.ino());
        assert!(
            host.identify(&d.to_string_lossy()).is_none(),
            "a directory is no program"
        );
        let prefix = format!("{}/", d.display());
        let mut all = host.under(&prefix, 10);
        all.sort();
        assert_eq!(all.len(), 3, "{all:?}");
        assert!(all.iter().any(|p| p.ends_with("sub/deep")));
        assert_eq!(host.under(&format!("{}/to", d.display()), 10).len(), 1);
        assert_eq!(host.under(&prefix, 2).len(), 2, "bounded");
    }
}
