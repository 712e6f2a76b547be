//! The agent's durable local journal.
//!
//! Every event and decision on a host is appended here before anything else happens to it, and
//! shipped to central at least once: central deduplicates by [`Record::id`]. Records get a
//! sequence number that is gap-free and monotonic per host, across restarts.
//!
//! On disk, a journal is a directory of segments:
//!
//! - one *active* segment, `<first seq>.log`, of plain framed records (length, crc32, JSON), so
//!   a tail torn by a crash is detected and cut off on [`Journal::open`], never misread;
//! - *sealed* segments, `<first seq>-<last seq>.zst`, the same bytes zstd-compressed, written
//!   when the active segment reaches [`JournalConfig::segment_bytes`] (synced, then renamed
//!   into place, so a sealed file is either whole or absent);
//! - `state.json`, what central has acknowledged, replaced atomically (write, sync, rename).
//!
//! Acknowledged sealed segments are deleted. A full disk makes [`Journal::append`] fail with
//! [`JournalError::DiskFull`] and leaves everything already written intact.
//!
//! This crate owns the journal's files and their format. It must not know about transport,
//! central or the kernel: callers decide what a record says and where it goes.

mod disk;
pub mod frame;

use std::{
    fs::{self, File},
    io::{self, BufReader, Read, Write},
    path::{Path, PathBuf},
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

pub use disk::{Disk, DiskFile, OsDisk};
use frame::{Damage, FrameReader, ReadError, HEADER_LEN, MAX_RECORD_BYTES};

/// A record's position in a host's journal: 1, 2, 3, … with no gaps.
pub type Seq = u64;

/// One journal entry as stored and shipped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: Seq,
    /// Unique across hosts: `<host id>:<seq>`.
    pub id: String,
    pub time_unix_ms: u64,
    pub kind: String,
    pub payload: serde_json::Value,
}

/// What a caller appends; the journal assigns `seq` and `id`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRecord {
    pub kind: String,
    pub payload: serde_json::Value,
    /// When it happened; `None` means now.
    pub time_unix_ms: Option<u64>,
}

impl NewRecord {
    pub fn new(kind: impl Into<String>, payload: serde_json::Value) -> Self {
        Self {
            kind: kind.into(),
            payload,
            time_unix_ms: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalConfig {
    /// Names this host in record ids; must not be empty or contain whitespace.
    pub host_id: String,
    /// The active segment is sealed once appending would take it past this size.
    pub segment_bytes: u64,
    /// Appends fail with [`JournalError::QuotaExceeded`] rather than grow the directory past
    /// this (after deleting what central has acknowledged).
    pub max_total_bytes: u64,
    /// zstd level for sealed segments.
    pub compression_level: i32,
}

impl JournalConfig {
    pub fn new(host_id: impl Into<String>) -> Self {
        Self {
            host_id: host_id.into(),
            segment_bytes: 8 * 1024 * 1024,
            max_total_bytes: 512 * 1024 * 1024,
            compression_level: 3,
        }
    }

    fn validate(&self) -> Result<(), JournalError> {
        let invalid = |reason: String| Err(JournalError::InvalidConfig { reason });
        if self.host_id.is_empty() || self.host_id.chars().any(char::is_whitespace) {
            return invalid(format!(
                "host_id {:?} must be non-empty and without whitespace",
                self.host_id
            ));
        }
        if self.segment_bytes < 4096 {
            return invalid(format!(
                "segment_bytes is {}; at least 4096",
                self.segment_bytes
            ));
        }
        if self.max_total_bytes < 2 * self.segment_bytes {
            return invalid(format!(
                "max_total_bytes ({}) must be at least twice segment_bytes ({})",
                self.max_total_bytes, self.segment_bytes
            ));
        }
        if !zstd::compression_level_range().contains(&self.compression_level) {
            return invalid(format!(
                "compression_level {} is outside zstd's range",
                self.compression_level
            ));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("invalid journal configuration: {reason}")]
    InvalidConfig { reason: String },
    #[error("journal directory {} is in use by another process", dir.display())]
    Locked { dir: PathBuf },
    /// ENOSPC (or a quota): nothing was written, nothing already written was damaged.
    #[error("disk full while writing {}", path.display())]
    DiskFull {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("journal would grow past its limit of {max_total_bytes} bytes ({used_bytes} in use, none of it acknowledged)")]
    QuotaExceeded {
        used_bytes: u64,
        max_total_bytes: u64,
    },
    #[error(
        "record of kind {kind:?} is {bytes} bytes; a record may have at most {MAX_RECORD_BYTES}"
    )]
    RecordTooLarge { kind: String, bytes: usize },
    #[error("record of kind {kind:?} cannot be encoded: {source}")]
    Encode {
        kind: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot acknowledge seq {requested}: the journal's last record is {last:?}")]
    AckBeyondEnd { requested: Seq, last: Option<Seq> },
    #[error("{} is damaged at offset {offset}: {damage}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        damage: Damage,
    },
    #[error("{} holds records from {found} but {expected} was expected next: records are missing", path.display())]
    Discontinuous {
        path: PathBuf,
        expected: Seq,
        found: Seq,
    },
    #[error("journal state file {} is unreadable: {reason}", path.display())]
    BadState { path: PathBuf, reason: String },
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl JournalError {
    /// True when the failure is the disk (or a quota on it) running out of space.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Self::DiskFull { .. })
    }
}

fn is_out_of_space(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// Wraps an I/O error with the file it concerns; out-of-space becomes [`JournalError::DiskFull`].
fn io_error(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| {
        if is_out_of_space(&source) {
            JournalError::DiskFull {
                path: path.to_owned(),
                source,
            }
        } else {
            JournalError::Io {
                path: path.to_owned(),
                source,
            }
        }
    }
}

/// A damaged tail cut off when the journal was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailRepair {
    pub path: PathBuf,
    /// Where the intact prefix ends; the file was truncated here.
    pub offset: u64,
    pub dropped_bytes: u64,
    pub damage: Damage,
}

impl std::fmt::Display for TailRepair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: damaged tail at offset {} cut off ({} bytes dropped): {}",
            self.path.display(),
            self.offset,
            self.dropped_bytes,
            self.damage
        )
    }
}

/// A sealed segment, as named on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSegment {
    pub first: Seq,
    pub last: Seq,
    pub path: PathBuf,
    pub bytes: u64,
}

struct ActiveSegment {
    first: Seq,
    path: PathBuf,
    file: Box<dyn DiskFile>,
    /// Bytes known to be good: the header plus whole frames.
    len: u64,
    /// A failed write may have left bytes past `len`; cut them before the next write.
    needs_cut: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AckState {
    acked_through: Seq,
    /// The next seq at the time of the last acknowledgement: a floor for `next_seq` should every
    /// segment be gone.
    next_seq: Seq,
}

const STATE_FILE: &str = "state.json";
const LOCK_FILE: &str = "lock";

fn active_name(first: Seq) -> String {
    format!("{first:020}.log")
}

fn sealed_name(first: Seq, last: Seq) -> String {
    format!("{first:020}-{last:020}.zst")
}

enum SegmentName {
    Active(Seq),
    Sealed(Seq, Seq),
    Temporary,
}

fn parse_name(name: &str) -> Option<SegmentName> {
    if name.ends_with(".tmp") {
        return Some(SegmentName::Temporary);
    }
    let digits = |s: &str| {
        (s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<Seq>().ok())
            .flatten()
    };
    if let Some(stem) = name.strip_suffix(".log") {
        return digits(stem).map(SegmentName::Active);
    }
    let stem = name.strip_suffix(".zst")?;
    let (first, last) = stem.split_once('-')?;
    Some(SegmentName::Sealed(digits(first)?, digits(last)?))
}

/// The journal of one host. One process owns a journal directory at a time.
pub struct Journal {
    dir: PathBuf,
    config: JournalConfig,
    disk: Arc<dyn Disk>,
    _lock: File,
    sealed: Vec<SealedSegment>,
    active: ActiveSegment,
    next_seq: Seq,
    /// The last seq made durable by a sync.
    synced_through: Seq,
    acked_through: Seq,
    repairs: Vec<TailRepair>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.dir)
            .field("next_seq", &self.next_seq)
            .field("acked_through", &self.acked_through)
            .field("sealed_segments", &self.sealed.len())
            .finish_non_exhaustive()
    }
}

/// What a `.log` file held once its damaged tail (if any) was cut off.
struct RecoveredLog {
    first: Seq,
    last: Option<Seq>,
    len: u64,
}

impl Journal {
    /// Opens (or creates) the journal in `dir`, cutting off a torn tail of the active segment.
    pub fn open(dir: impl AsRef<Path>, config: JournalConfig) -> Result<Self, JournalError> {
        Self::open_with_disk(dir, config, Arc::new(OsDisk))
    }

    /// As [`Journal::open`], writing through `disk`.
    pub fn open_with_disk(
        dir: impl AsRef<Path>,
        config: JournalConfig,
        disk: Arc<dyn Disk>,
    ) -> Result<Self, JournalError> {
        config.validate()?;
        let dir = dir.as_ref().to_owned();
        fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(JournalError::Locked { dir }),
            Err(fs::TryLockError::Error(e)) => return Err(io_error(&lock_path)(e)),
        }
        let state = read_state(&dir)?;

        let mut logs: Vec<Seq> = Vec::new();
        let mut sealed: Vec<SealedSegment> = Vec::new();
        let entries = fs::read_dir(&dir).map_err(io_error(&dir))?;
        for entry in entries {
            let entry = entry.map_err(io_error(&dir))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == LOCK_FILE || name == STATE_FILE {
                continue;
            }
            match parse_name(&name) {
                Some(SegmentName::Active(first)) => logs.push(first),
                Some(SegmentName::Sealed(first, last)) => {
                    let bytes = entry.metadata().map_err(io_error(&path))?.len();
                    sealed.push(SealedSegment {
                        first,
                        last,
                        path,
                        bytes,
                    });
                }
                Some(SegmentName::Temporary) => {
                    // An unfinished seal or state update; the original is still in place.
                    fs::remove_file(&path).map_err(io_error(&path))?;
                }
                None => {
                    tracing::warn!(path = %path.display(), "ignoring unexpected file in journal directory")
                }
            }
        }
        logs.sort_unstable();
        sealed.sort_by_key(|s| s.first);

        let mut journal_repairs = Vec::new();
        let mut recovered: Vec<RecoveredLog> = Vec::new();
        for first in logs {
            let path = dir.join(active_name(first));
            let (log, repair) = recover_log(&*disk, &path, first)?;
            journal_repairs.extend(repair);
            // A crash between sealing and removing the log leaves both; keep the longer.
            if let Some(index) = sealed.iter().position(|s| s.first == first) {
                if log.last.is_none_or(|last| last <= sealed[index].last) {
                    fs::remove_file(&path).map_err(io_error(&path))?;
                    continue;
                }
                let stale = sealed.remove(index);
                fs::remove_file(&stale.path).map_err(io_error(&stale.path))?;
            }
            recovered.push(log);
        }
        disk::sync_dir(&dir).map_err(io_error(&dir))?;

        let active_log = recovered.pop();
        let mut journal_sealed = sealed;
        // Logs other than the newest are complete segments whose seal was interrupted.
        let mut to_seal = Vec::new();
        for log in recovered {
            if log.last.is_some() {
                to_seal.push(log);
            } else {
                let path = dir.join(active_name(log.first));
                fs::remove_file(&path).map_err(io_error(&path))?;
            }
        }

        let floor = state.next_seq.max(state.acked_through + 1).max(1);
        let (active, next_seq) = match active_log {
            Some(log) if log.last.is_some() || log.first >= floor => {
                let path = dir.join(active_name(log.first));
                let file = disk.open_append(&path).map_err(io_error(&path))?;
                let next = log.last.map_or(log.first, |last| last + 1);
                (
                    ActiveSegment {
                        first: log.first,
                        path,
                        file,
                        len: log.len,
                        needs_cut: false,
                    },
                    next,
                )
            }
            stale_empty => {
                if let Some(log) = stale_empty {
                    let path = dir.join(active_name(log.first));
                    fs::remove_file(&path).map_err(io_error(&path))?;
                }
                let last_sealed = journal_sealed.last().map(|s| s.last + 1).unwrap_or(1);
                let last_unsealed = to_seal.last().and_then(|l| l.last).map_or(1, |l| l + 1);
                let first = floor.max(last_sealed).max(last_unsealed);
                (create_active(&*disk, &dir, first)?, first)
            }
        };

        let mut journal = Self {
            dir,
            config,
            disk,
            _lock: lock,
            sealed: Vec::new(),
            active,
            next_seq,
            synced_through: next_seq - 1,
            acked_through: state.acked_through,
            repairs: journal_repairs,
        };
        for log in to_seal {
            if let Some(last) = log.last {
                let path = journal.dir.join(active_name(log.first));
                let segment = journal.compress_segment(&path, log.first, last)?;
                fs::remove_file(&path).map_err(io_error(&path))?;
                journal_sealed.push(segment);
            }
        }
        journal_sealed.sort_by_key(|s| s.first);
        journal.sealed = journal_sealed;
        journal.check_continuity()?;
        // A process that died may have left records in the page cache only; they count as
        // durable (and may be shipped) from here on.
        journal
            .active
            .file
            .sync_data()
            .map_err(io_error(&journal.active.path))?;
        for repair in &journal.repairs {
            tracing::warn!(%repair, "journal tail repaired");
        }
        Ok(journal)
    }

    /// Appends a record and returns its seq. The bytes reach the operating system before this
    /// returns, so they survive the process dying; [`Journal::append_durable`] or
    /// [`Journal::sync`] make them survive the host dying too.
    pub fn append(&mut self, new: &NewRecord) -> Result<Seq, JournalError> {
        if self.active.needs_cut {
            self.active
                .file
                .set_len(self.active.len)
                .map_err(io_error(&self.active.path))?;
            self.active.needs_cut = false;
        }
        let seq = self.next_seq;
        let record = Record {
            seq,
            id: format!("{}:{seq}", self.config.host_id),
            time_unix_ms: new.time_unix_ms.unwrap_or_else(now_unix_ms),
            kind: new.kind.clone(),
            payload: new.payload.clone(),
        };
        let frame = frame::encode_frame(&record).map_err(|source| JournalError::Encode {
            kind: new.kind.clone(),
            source,
        })?;
        let body_len = frame.len() - frame::FRAME_OVERHEAD;
        if body_len > MAX_RECORD_BYTES {
            return Err(JournalError::RecordTooLarge {
                kind: new.kind.clone(),
                bytes: body_len,
            });
        }
        let frame_len = frame.len() as u64;
        let active_has_records = self.next_seq > self.active.first;
        if active_has_records && self.active.len + frame_len > self.config.segment_bytes {
            self.seal_active()?;
        }
        if self.disk_usage_bytes() + frame_len > self.config.max_total_bytes {
            self.remove_acknowledged_segments()?;
            let used_bytes = self.disk_usage_bytes();
            if used_bytes + frame_len > self.config.max_total_bytes {
                return Err(JournalError::QuotaExceeded {
                    used_bytes,
                    max_total_bytes: self.config.max_total_bytes,
                });
            }
        }
        if let Err(e) = self.active.file.write_all(&frame) {
            // Take back whatever part of the frame made it to the file.
            self.active.needs_cut = self.active.file.set_len(self.active.len).is_err();
            return Err(io_error(&self.active.path)(e));
        }
        self.active.len += frame_len;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Appends a record and makes it durable before returning (for decisions).
    pub fn append_durable(&mut self, new: &NewRecord) -> Result<Seq, JournalError> {
        let seq = self.append(new)?;
        self.sync()?;
        Ok(seq)
    }

    /// Makes every appended record durable.
    pub fn sync(&mut self) -> Result<(), JournalError> {
        let last = self.next_seq - 1;
        if self.synced_through < last {
            self.active
                .file
                .sync_data()
                .map_err(io_error(&self.active.path))?;
            self.synced_through = last;
        }
        Ok(())
    }

    /// Records, in order, from `from` (or from the oldest still kept, if that is later) to the
    /// last one appended.
    pub fn read_from(&self, from: Seq) -> Records<'_> {
        let mut sources: Vec<Source> = self
            .sealed
            .iter()
            .filter(|s| s.last >= from)
            .map(|s| Source::Sealed(s.path.clone()))
            .collect();
        if self.next_seq > self.active.first && self.next_seq > from {
            sources.push(Source::Active {
                path: self.active.path.clone(),
                len: self.active.len,
            });
        }
        sources.reverse();
        Records {
            _journal: self,
            from,
            sources,
            current: None,
            failed: false,
        }
    }

    /// What central has not acknowledged yet, made durable first so that nothing shipped can be
    /// lost in a crash and its id reused.
    pub fn unacked(&mut self) -> Result<Records<'_>, JournalError> {
        self.sync()?;
        Ok(self.read_from(self.acked_through + 1))
    }

    /// Records that central has everything up to and including `through`, and deletes sealed
    /// segments that hold nothing else. Returns how many segments were deleted.
    pub fn ack(&mut self, through: Seq) -> Result<usize, JournalError> {
        let last = self.last_seq();
        if last.is_none_or(|last| through > last) {
            return Err(JournalError::AckBeyondEnd {
                requested: through,
                last,
            });
        }
        if through <= self.acked_through {
            return Ok(0);
        }
        self.sync()?;
        write_state(
            &*self.disk,
            &self.dir,
            &AckState {
                acked_through: through,
                next_seq: self.next_seq,
            },
        )?;
        self.acked_through = through;
        self.remove_acknowledged_segments()
    }

    pub fn next_seq(&self) -> Seq {
        self.next_seq
    }

    /// The last seq appended (in this run or before), if any record was ever kept.
    pub fn last_seq(&self) -> Option<Seq> {
        (self.next_seq > 1).then(|| self.next_seq - 1)
    }

    pub fn acked_through(&self) -> Seq {
        self.acked_through
    }

    /// Damaged tails cut off when this journal was opened.
    pub fn repairs(&self) -> &[TailRepair] {
        &self.repairs
    }

    pub fn sealed_segments(&self) -> &[SealedSegment] {
        &self.sealed
    }

    /// Bytes the journal's segments take on disk.
    pub fn disk_usage_bytes(&self) -> u64 {
        self.sealed.iter().map(|s| s.bytes).sum::<u64>() + self.active.len
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn check_continuity(&self) -> Result<(), JournalError> {
        let mut expected: Option<Seq> = None;
        for segment in &self.sealed {
            if let Some(expected) = expected {
                if segment.first != expected {
                    return Err(JournalError::Discontinuous {
                        path: segment.path.clone(),
                        expected,
                        found: segment.first,
                    });
                }
            }
            expected = Some(segment.last + 1);
        }
        match expected {
            Some(expected) if self.active.first != expected => Err(JournalError::Discontinuous {
                path: self.active.path.clone(),
                expected,
                found: self.active.first,
            }),
            _ => Ok(()),
        }
    }

    /// Compresses the active segment into a sealed one and starts a new active segment.
    /// On failure the active segment stays as it was.
    fn seal_active(&mut self) -> Result<(), JournalError> {
        self.active
            .file
            .sync_data()
            .map_err(io_error(&self.active.path))?;
        self.synced_through = self.next_seq - 1;
        let last = self.next_seq - 1;
        let old_path = self.active.path.clone();
        let segment = self.compress_segment(&old_path, self.active.first, last)?;
        let new_active = match create_active(&*self.disk, &self.dir, self.next_seq) {
            Ok(active) => active,
            Err(e) => {
                // Without a new active segment, keep writing to the old one; the sealed copy
                // would go stale, so it goes.
                if let Err(remove) = fs::remove_file(&segment.path) {
                    tracing::warn!(path = %segment.path.display(), error = %remove, "cannot remove sealed copy after failed rotation");
                }
                return Err(e);
            }
        };
        self.active = new_active;
        self.sealed.push(segment);
        fs::remove_file(&old_path).map_err(io_error(&old_path))?;
        disk::sync_dir(&self.dir).map_err(io_error(&self.dir))?;
        Ok(())
    }

    /// Writes `<first>-<last>.zst` from a `.log` file: to a temporary name, synced, renamed.
    fn compress_segment(
        &self,
        log_path: &Path,
        first: Seq,
        last: Seq,
    ) -> Result<SealedSegment, JournalError> {
        let final_path = self.dir.join(sealed_name(first, last));
        let temp_path = self.dir.join(format!("{}.tmp", sealed_name(first, last)));
        let result = (|| {
            let plain = fs::read(log_path).map_err(io_error(log_path))?;
            let file = self.disk.create(&temp_path).map_err(io_error(&temp_path))?;
            let mut encoder = zstd::stream::Encoder::new(file, self.config.compression_level)
                .map_err(io_error(&temp_path))?;
            encoder
                .include_checksum(true)
                .map_err(io_error(&temp_path))?;
            encoder.write_all(&plain).map_err(io_error(&temp_path))?;
            let mut file = encoder.finish().map_err(io_error(&temp_path))?;
            file.sync_data().map_err(io_error(&temp_path))?;
            drop(file);
            fs::rename(&temp_path, &final_path).map_err(io_error(&final_path))?;
            disk::sync_dir(&self.dir).map_err(io_error(&self.dir))?;
            let bytes = fs::metadata(&final_path)
                .map_err(io_error(&final_path))?
                .len();
            Ok(SealedSegment {
                first,
                last,
                path: final_path.clone(),
                bytes,
            })
        })();
        if result.is_err() && temp_path.exists() {
            if let Err(e) = fs::remove_file(&temp_path) {
                tracing::warn!(path = %temp_path.display(), error = %e, "cannot remove unfinished sealed segment");
            }
        }
        result
    }

    fn remove_acknowledged_segments(&mut self) -> Result<usize, JournalError> {
        let mut removed = 0;
        while let Some(oldest) = self.sealed.first() {
            if oldest.last > self.acked_through {
                break;
            }
            fs::remove_file(&oldest.path).map_err(io_error(&oldest.path))?;
            self.sealed.remove(0);
            removed += 1;
        }
        if removed > 0 {
            disk::sync_dir(&self.dir).map_err(io_error(&self.dir))?;
        }
        Ok(removed)
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        if let Err(e) = self.sync() {
            tracing::warn!(dir = %self.dir.display(), error = %e, "journal not synced on close");
        }
    }
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn create_active(disk: &dyn Disk, dir: &Path, first: Seq) -> Result<ActiveSegment, JournalError> {
    let path = dir.join(active_name(first));
    let result = (|| {
        let mut file = disk.create(&path)?;
        file.write_all(&frame::encode_header(first))?;
        file.sync_data()?;
        disk::sync_dir(dir)?;
        drop(file);
        // Appends must land at the end even after a failed write was cut back.
        disk.open_append(&path)
    })();
    match result {
        Ok(file) => Ok(ActiveSegment {
            first,
            path,
            file,
            len: HEADER_LEN as u64,
            needs_cut: false,
        }),
        Err(e) => {
            if path.exists() {
                if let Err(remove) = fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %remove, "cannot remove unfinished segment");
                }
            }
            Err(io_error(&path)(e))
        }
    }
}

/// Reads a `.log` file, cuts off a damaged tail, and says what it holds.
fn recover_log(
    disk: &dyn Disk,
    path: &Path,
    first: Seq,
) -> Result<(RecoveredLog, Option<TailRepair>), JournalError> {
    let bytes = fs::read(path).map_err(io_error(path))?;
    let scan = frame::scan_segment(&bytes);
    let file_len = bytes.len() as u64;
    match scan.first_seq {
        Some(found) if found != first => {
            return Err(JournalError::Corrupt {
                path: path.to_owned(),
                offset: 8,
                damage: Damage::OutOfSequence {
                    expected: first,
                    found,
                },
            })
        }
        None if !matches!(scan.damage, Some((_, Damage::ShortHeader { .. }))) => {
            let (offset, damage) = scan.damage.unwrap_or((0, Damage::BadMagic));
            return Err(JournalError::Corrupt {
                path: path.to_owned(),
                offset,
                damage,
            });
        }
        _ => {}
    }
    let mut repair = None;
    if let Some((offset, damage)) = scan.damage {
        let mut file = disk.open_append(path).map_err(io_error(path))?;
        if scan.first_seq.is_none() {
            // Torn while the header was being written: start the file again.
            file.set_len(0).map_err(io_error(path))?;
            file.write_all(&frame::encode_header(first))
                .map_err(io_error(path))?;
        } else {
            file.set_len(offset).map_err(io_error(path))?;
        }
        file.sync_data().map_err(io_error(path))?;
        repair = Some(TailRepair {
            path: path.to_owned(),
            offset,
            dropped_bytes: file_len - offset,
            damage,
        });
    }
    let last = scan.records.last().map(|r| r.seq);
    let len = if scan.first_seq.is_some() {
        scan.valid_len
    } else {
        HEADER_LEN as u64
    };
    Ok((RecoveredLog { first, last, len }, repair))
}

fn read_state(dir: &Path) -> Result<AckState, JournalError> {
    let path = dir.join(STATE_FILE);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| JournalError::BadState {
            path,
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(AckState::default()),
        Err(e) => Err(io_error(&path)(e)),
    }
}

fn write_state(disk: &dyn Disk, dir: &Path, state: &AckState) -> Result<(), JournalError> {
    let path = dir.join(STATE_FILE);
    let temp = dir.join(format!("{STATE_FILE}.tmp"));
    let bytes = serde_json::to_vec(state).map_err(|e| JournalError::BadState {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let result = (|| {
        let mut file = disk.create(&temp).map_err(io_error(&temp))?;
        file.write_all(&bytes).map_err(io_error(&temp))?;
        file.sync_data().map_err(io_error(&temp))?;
        drop(file);
        fs::rename(&temp, &path).map_err(io_error(&path))?;
        disk::sync_dir(dir).map_err(io_error(dir))
    })();
    if result.is_err() && temp.exists() {
        if let Err(e) = fs::remove_file(&temp) {
            tracing::warn!(path = %temp.display(), error = %e, "cannot remove unfinished state file");
        }
    }
    result
}

enum Source {
    Sealed(PathBuf),
    Active { path: PathBuf, len: u64 },
}

/// Iterator over records in seq order; yields at most one error, then ends.
pub struct Records<'j> {
    _journal: &'j Journal,
    from: Seq,
    /// Still to read, last first.
    sources: Vec<Source>,
    current: Option<(PathBuf, FrameReader<Box<dyn Read + 'j>>)>,
    failed: bool,
}

impl Records<'_> {
    fn open_next(&mut self) -> Result<bool, JournalError> {
        let Some(source) = self.sources.pop() else {
            return Ok(false);
        };
        let (path, reader): (PathBuf, Box<dyn Read>) = match source {
            Source::Sealed(path) => {
                let file = File::open(&path).map_err(io_error(&path))?;
                let decoder = zstd::stream::read::Decoder::new(file).map_err(io_error(&path))?;
                (path, Box::new(decoder))
            }
            Source::Active { path, len } => {
                let file = File::open(&path).map_err(io_error(&path))?;
                (path, Box::new(BufReader::new(file).take(len)))
            }
        };
        let frames = FrameReader::new(reader).map_err(|e| read_error(&path, e))?;
        self.current = Some((path, frames));
        Ok(true)
    }
}

fn read_error(path: &Path, error: ReadError) -> JournalError {
    match error {
        ReadError::Damaged { offset, damage } => JournalError::Corrupt {
            path: path.to_owned(),
            offset,
            damage,
        },
        ReadError::Io(source) => io_error(path)(source),
    }
}

impl Iterator for Records<'_> {
    type Item = Result<Record, JournalError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            if self.current.is_none() {
                match self.open_next() {
                    Ok(true) => {}
                    Ok(false) => return None,
                    Err(e) => {
                        self.failed = true;
                        return Some(Err(e));
                    }
                }
            }
            let (path, frames) = self.current.as_mut()?;
            match frames.next_record() {
                Ok(Some(record)) if record.seq < self.from => {}
                Ok(Some(record)) => return Some(Ok(record)),
                Ok(None) => self.current = None,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(read_error(path, e)));
                }
            }
        }
    }
}
