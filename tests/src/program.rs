//! A private copy of a program in a directory of its own, so that its identity (device and
//! inode) and its path belong to one test alone, and marker paths that only the program
//! creates: the evidence that it ran.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

/// A directory holding `prog`, a copy of `/usr/bin/touch` (which creates the file its argument
/// names), and whatever a test puts beside it.
pub struct ProgramCopy {
    pub dir: tempfile::TempDir,
    /// Where the copy and what tests put beside it live: `dir`, or a mount below it.
    root: PathBuf,
    /// File systems mounted below `dir`, unmounted (last first) on drop.
    mounts: Vec<PathBuf>,
}

impl ProgramCopy {
    /// A new directory (named from `prefix`) with the copy in it.
    pub fn touch(prefix: &str) -> Self {
        Self::touch_on(prefix, Fs::AsIs)
    }

    /// As [`touch`](Self::touch), on a file system of the given kind mounted for it (root only
    /// unless `fs` is [`Fs::AsIs`]).
    pub fn touch_on(prefix: &str, fs: Fs) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("tempdir");
        let mut p = ProgramCopy {
            root: dir.path().to_path_buf(),
            dir,
            mounts: Vec::new(),
        };
        if fs != Fs::AsIs {
            // A tmpfs first: an overlay's upper layer cannot be another overlay (the VMs'
            // `/tmp` is one).
            let base = p.dir.path().to_path_buf();
            mount(&["-t", "tmpfs", "-o", "size=64m", "latch-test"], &base);
            p.mounts.push(base.clone());
            if fs == Fs::Overlay || fs == Fs::OverlayLower {
                for d in ["lower", "upper", "work", "merged"] {
                    std::fs::create_dir(base.join(d)).expect("mkdir");
                }
                if fs == Fs::OverlayLower {
                    // In the image's layer, as a container's programs are until written to.
                    let lower = base.join("lower").join("prog");
                    std::fs::copy("/usr/bin/touch", &lower).expect("copy");
                    std::fs::set_permissions(&lower, std::fs::Permissions::from_mode(0o755))
                        .expect("chmod");
                }
                let opts = format!(
                    "lowerdir={},upperdir={},workdir={}",
                    base.join("lower").display(),
                    base.join("upper").display(),
                    base.join("work").display()
                );
                let merged = base.join("merged");
                mount(&["-t", "overlay", "-o", &opts, "latch-test"], &merged);
                p.mounts.push(merged.clone());
                p.root = merged;
            }
        }
        if fs != Fs::OverlayLower {
            p.copy_of("/usr/bin/touch", "prog");
        }
        p
    }

    /// The copy.
    pub fn path(&self) -> PathBuf {
        self.at("prog")
    }

    /// A path in the directory.
    pub fn at(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// A new executable file with the content of `src` (another inode, another name).
    pub fn copy_of(&self, src: &str, name: &str) -> PathBuf {
        let p = self.at(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::copy(src, &p).expect("copy");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        p
    }

    /// A marker path only the program creates (removed if an earlier run left it).
    pub fn marker(&self, name: &str) -> PathBuf {
        let p = self.at(&format!("ran-{name}"));
        let _ = std::fs::remove_file(&p);
        p
    }
}

/// A path as text, for command lines.
pub fn text_of(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

impl Drop for ProgramCopy {
    fn drop(&mut self) {
        for m in self.mounts.iter().rev() {
            let unmounted = std::process::Command::new("umount")
                .arg(m)
                .status()
                .is_ok_and(|s| s.success());
            // Busy (a process of the test still in it): detached now, gone when it ends.
            if !unmounted {
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(m)
                    .status();
            }
        }
    }
}

/// The file system a [`ProgramCopy`] is made on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fs {
    /// The temporary directory's own.
    AsIs,
    /// A tmpfs of its own: a file system whose mappings hold the file itself.
    Tmpfs,
    /// An overlay (on a tmpfs) with the copy written through it, so in its upper layer: `stat`
    /// and an exec see the overlay's file, a mapping holds the upper layer's, as in a container.
    Overlay,
    /// As [`Fs::Overlay`], with the copy in its lower layer (a container image's).
    OverlayLower,
}

fn mount(args: &[&str], at: &Path) {
    let st = std::process::Command::new("mount")
        .args(args)
        .arg(at)
        .status()
        .expect("run mount");
    assert!(st.success(), "mount {args:?} on {}: {st}", at.display());
}
