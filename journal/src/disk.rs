//! Where the journal's writes go. The operating system's files in production; a test can wrap
//! them to make writes fail the way a full disk does.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    path::Path,
};

/// Opens files for writing. Every byte the journal writes goes through one of these.
pub trait Disk: Send + Sync {
    /// Creates `path`, or truncates it if it exists.
    fn create(&self, path: &Path) -> io::Result<Box<dyn DiskFile>>;
    /// Opens an existing `path`; writes go to its end.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn DiskFile>>;
}

/// A file open for writing.
pub trait DiskFile: Write + Send {
    /// Makes what was written durable (`fdatasync`).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Cuts the file to `len` bytes (used to take back a write that failed half-way).
    fn set_len(&mut self, len: u64) -> io::Result<()>;
}

/// The operating system's files.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsDisk;

impl Disk for OsDisk {
    fn create(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        Ok(Box::new(File::create(path)?))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        Ok(Box::new(OpenOptions::new().append(true).open(path)?))
    }
}

impl DiskFile for File {
    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
}

/// Makes directory entries (creations, renames, removals) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
