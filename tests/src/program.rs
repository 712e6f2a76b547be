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
}

impl ProgramCopy {
    /// A new directory (named from `prefix`) with the copy in it.
    pub fn touch(prefix: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("tempdir");
        let p = ProgramCopy { dir };
        p.copy_of("/usr/bin/touch", "prog");
        p
    }

    /// The copy.
    pub fn path(&self) -> PathBuf {
        self.at("prog")
    }

    /// A path in the directory.
    pub fn at(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
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
