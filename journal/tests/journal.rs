//! The journal's promises: gap-free seqs across restarts, torn tails cut and reported, sealed
//! segments read back identically, compaction of acknowledged segments only, at-least-once
//! shipping, and a full disk reported as such without damage.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use journal::{
    frame, Disk, DiskFile, Journal, JournalConfig, JournalError, NewRecord, Record, Seq,
};
use serde_json::json;

fn config() -> JournalConfig {
    JournalConfig::new("host-a")
}

/// Small segments, so that a few dozen records make several of them.
fn small_segments() -> JournalConfig {
    JournalConfig {
        segment_bytes: 4096,
        max_total_bytes: 1024 * 1024,
        ..config()
    }
}

fn open(dir: &Path, config: JournalConfig) -> Journal {
    match Journal::open(dir, config) {
        Ok(j) => j,
        Err(e) => panic!("open {}: {e}", dir.display()),
    }
}

fn temp_dir() -> tempfile::TempDir {
    match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    }
}

fn event(n: u64) -> NewRecord {
    NewRecord {
        time_unix_ms: Some(1_700_000_000_000 + n),
        ..NewRecord::new(
            "exec.held",
            json!({ "n": n, "argv": ["curl", "https://example.com"], "pad": "x".repeat(150) }),
        )
    }
}

fn append_n(journal: &mut Journal, range: std::ops::Range<u64>) -> Vec<Seq> {
    range
        .map(|n| match journal.append(&event(n)) {
            Ok(seq) => seq,
            Err(e) => panic!("append {n}: {e}"),
        })
        .collect()
}

fn read_all(journal: &Journal, from: Seq) -> Vec<Record> {
    journal
        .read_from(from)
        .map(|r| match r {
            Ok(record) => record,
            Err(e) => panic!("read: {e}"),
        })
        .collect()
}

fn seqs(records: &[Record]) -> Vec<Seq> {
    records.iter().map(|r| r.seq).collect()
}

fn files_with_suffix(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().ends_with(suffix))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

fn active_segment(dir: &Path) -> PathBuf {
    match files_with_suffix(dir, ".log").as_slice() {
        [one] => one.clone(),
        other => panic!("expected one active segment, found {other:?}"),
    }
}

#[test]
fn seq_stays_gap_free_and_monotonic_across_restarts() {
    let dir = temp_dir();
    {
        let mut journal = open(dir.path(), config());
        assert_eq!(append_n(&mut journal, 0..10), (1..=10).collect::<Vec<_>>());
    }
    let mut journal = open(dir.path(), config());
    assert_eq!(journal.next_seq(), 11);
    assert_eq!(
        append_n(&mut journal, 10..15),
        (11..=15).collect::<Vec<_>>()
    );
    let records = read_all(&journal, 1);
    assert_eq!(seqs(&records), (1..=15).collect::<Vec<_>>());
    assert_eq!(records[14].id, "host-a:15");
    assert_eq!(records[14].payload["n"], 14);
    assert!(journal.repairs().is_empty());
}

#[test]
fn seq_continues_across_segment_rotation_and_restart() {
    let dir = temp_dir();
    {
        let mut journal = open(dir.path(), small_segments());
        append_n(&mut journal, 0..60);
        assert!(
            journal.sealed_segments().len() >= 2,
            "{:?}",
            journal.sealed_segments()
        );
    }
    let mut journal = open(dir.path(), small_segments());
    append_n(&mut journal, 60..70);
    assert_eq!(seqs(&read_all(&journal, 1)), (1..=70).collect::<Vec<_>>());
    assert_eq!(seqs(&read_all(&journal, 33)), (33..=70).collect::<Vec<_>>());
}

/// Offsets of each frame in a plain segment file.
fn frame_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut at = frame::HEADER_LEN;
    while at + frame::FRAME_OVERHEAD <= bytes.len() {
        offsets.push(at);
        let len =
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        at += frame::FRAME_OVERHEAD + len;
    }
    offsets
}

#[test]
fn a_tail_cut_mid_record_is_detected_and_truncated() {
    let dir = temp_dir();
    {
        let mut journal = open(dir.path(), config());
        append_n(&mut journal, 0..5);
    }
    let path = active_segment(dir.path());
    let bytes = fs::read(&path).unwrap_or_default();
    let fifth = frame_offsets(&bytes)[4];
    let cut_at = bytes.len() - 3;
    fs::write(&path, &bytes[..cut_at]).unwrap_or_else(|e| panic!("{e}"));

    let mut journal = open(dir.path(), config());
    let repairs = journal.repairs().to_vec();
    assert_eq!(repairs.len(), 1, "{repairs:?}");
    assert_eq!(repairs[0].path, path);
    assert_eq!(repairs[0].offset, fifth as u64);
    assert_eq!(repairs[0].dropped_bytes, (cut_at - fifth) as u64);
    let message = repairs[0].to_string();
    assert!(
        message.contains(&path.display().to_string())
            && message.contains(&format!("offset {fifth}")),
        "{message}"
    );

    assert_eq!(
        fs::metadata(&path).map(|m| m.len()).unwrap_or_default(),
        fifth as u64
    );
    assert_eq!(seqs(&read_all(&journal, 1)), vec![1, 2, 3, 4]);
    assert_eq!(append_n(&mut journal, 100..101), vec![5]);
    assert_eq!(read_all(&journal, 5)[0].payload["n"], 100);
}

#[test]
fn a_flipped_byte_is_detected_and_the_records_before_it_kept() {
    let dir = temp_dir();
    {
        let mut journal = open(dir.path(), config());
        append_n(&mut journal, 0..5);
    }
    let path = active_segment(dir.path());
    let mut bytes = fs::read(&path).unwrap_or_default();
    let third = frame_offsets(&bytes)[2];
    bytes[third + frame::FRAME_OVERHEAD + 10] ^= 0x20;
    fs::write(&path, &bytes).unwrap_or_else(|e| panic!("{e}"));

    let journal = open(dir.path(), config());
    let repairs = journal.repairs();
    assert_eq!(repairs.len(), 1);
    assert_eq!(
        (repairs[0].path.as_path(), repairs[0].offset),
        (path.as_path(), third as u64)
    );
    assert!(
        matches!(repairs[0].damage, frame::Damage::Checksum { .. }),
        "{:?}",
        repairs[0].damage
    );
    assert_eq!(seqs(&read_all(&journal, 1)), vec![1, 2]);
    assert_eq!(journal.next_seq(), 3);
}

#[test]
fn a_segment_torn_inside_its_header_starts_again() {
    let dir = temp_dir();
    {
        let mut journal = open(dir.path(), small_segments());
        append_n(&mut journal, 0..40);
    }
    let path = active_segment(dir.path());
    let bytes = fs::read(&path).unwrap_or_default();
    fs::write(&path, &bytes[..5]).unwrap_or_else(|e| panic!("{e}"));
    let mut journal = open(dir.path(), small_segments());
    assert_eq!(journal.repairs().len(), 1);
    let kept = read_all(&journal, 1);
    let next = journal.next_seq();
    assert_eq!(
        seqs(&kept),
        (1..next).collect::<Vec<_>>(),
        "sealed records are intact"
    );
    assert_eq!(append_n(&mut journal, 0..1), vec![next]);
}

#[test]
fn sealed_segments_decompress_and_read_back_identically() {
    let dir = temp_dir();
    let mut journal = open(dir.path(), small_segments());
    append_n(&mut journal, 0..80);
    let records = read_all(&journal, 1);
    assert_eq!(seqs(&records), (1..=80).collect::<Vec<_>>());
    for (n, record) in records.iter().enumerate() {
        assert_eq!(record.kind, "exec.held");
        assert_eq!(record.payload, event(n as u64).payload);
        assert_eq!(record.time_unix_ms, 1_700_000_000_000 + n as u64);
        assert_eq!(record.id, format!("host-a:{}", n + 1));
    }

    let sealed = journal.sealed_segments().to_vec();
    assert!(sealed.len() >= 3);
    let mut from_files = Vec::new();
    for segment in &sealed {
        let compressed = fs::read(&segment.path).unwrap_or_default();
        let plain = zstd::decode_all(compressed.as_slice())
            .unwrap_or_else(|e| panic!("{}: {e}", segment.path.display()));
        assert!(
            compressed.len() < plain.len(),
            "{} is not smaller compressed",
            segment.path.display()
        );
        let scan = frame::scan_segment(&plain);
        assert_eq!(scan.damage, None);
        assert_eq!(scan.first_seq, Some(segment.first));
        assert_eq!(scan.records.last().map(|r| r.seq), Some(segment.last));
        from_files.extend(scan.records);
    }
    assert_eq!(from_files, records[..from_files.len()].to_vec());
}

#[test]
fn ack_removes_only_fully_acknowledged_sealed_segments() {
    let dir = temp_dir();
    let mut journal = open(dir.path(), small_segments());
    append_n(&mut journal, 0..80);
    let sealed = journal.sealed_segments().to_vec();
    assert!(sealed.len() >= 3);

    // Half of the second segment: only the first goes.
    let midway = (sealed[1].first + sealed[1].last) / 2;
    assert_eq!(journal.ack(midway).ok(), Some(1));
    assert!(!sealed[0].path.exists());
    assert!(sealed[1..].iter().all(|s| s.path.exists()));
    assert_eq!(seqs(&read_all(&journal, 1)).first(), Some(&sealed[1].first));

    // All of it, including the active segment: every sealed one goes, the active one stays.
    let last = journal.last_seq().unwrap_or_default();
    assert_eq!(journal.ack(last).ok(), Some(sealed.len() - 1));
    assert!(files_with_suffix(dir.path(), ".zst").is_empty());
    assert_eq!(files_with_suffix(dir.path(), ".log").len(), 1);
    assert_eq!(journal.unacked().map(|r| r.count()).ok(), Some(0));

    // Acknowledging less than before changes nothing; beyond the end is refused.
    assert_eq!(journal.ack(1).ok(), Some(0));
    assert!(
        matches!(journal.ack(last + 1), Err(JournalError::AckBeyondEnd { requested, .. }) if requested == last + 1)
    );
}

#[test]
fn after_a_restart_unacked_returns_exactly_the_unacknowledged_records() {
    let dir = temp_dir();
    {
        let mut journal = open(dir.path(), small_segments());
        append_n(&mut journal, 0..50);
        if let Err(e) = journal.ack(17) {
            panic!("ack: {e}");
        }
    }
    let mut journal = open(dir.path(), small_segments());
    assert_eq!(journal.acked_through(), 17);
    let unacked: Vec<Seq> = match journal.unacked() {
        Ok(records) => records
            .map(|r| r.map(|r| r.seq).unwrap_or_default())
            .collect(),
        Err(e) => panic!("{e}"),
    };
    assert_eq!(unacked, (18..=50).collect::<Vec<_>>());
}

#[test]
fn seq_does_not_go_back_when_every_record_was_acknowledged_and_removed() {
    let dir = temp_dir();
    {
        let mut journal = open(dir.path(), small_segments());
        append_n(&mut journal, 0..40);
        let last = journal.last_seq().unwrap_or_default();
        assert!(journal.ack(last).is_ok());
    }
    // Lose the active segment as well: the state file still knows where seq stood.
    for log in files_with_suffix(dir.path(), ".log") {
        fs::remove_file(log).unwrap_or_else(|e| panic!("{e}"));
    }
    let mut journal = open(dir.path(), small_segments());
    assert_eq!(append_n(&mut journal, 0..1), vec![41]);
}

#[test]
fn a_second_process_cannot_open_the_same_journal() {
    let dir = temp_dir();
    let _first = open(dir.path(), config());
    assert!(matches!(
        Journal::open(dir.path(), config()),
        Err(JournalError::Locked { .. })
    ));
}

#[test]
fn bad_configuration_is_refused_with_the_reason() {
    let dir = temp_dir();
    let refused = |c: JournalConfig| {
        Journal::open(dir.path(), c)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(refused(JournalConfig::new("")).contains("host_id"));
    assert!(refused(JournalConfig {
        segment_bytes: 10,
        ..config()
    })
    .contains("segment_bytes is 10"));
    assert!(refused(JournalConfig {
        max_total_bytes: 5000,
        segment_bytes: 4096,
        ..config()
    })
    .contains("max_total_bytes (5000)"));
}

#[test]
fn a_crash_between_sealing_and_removing_the_log_is_resolved_on_open() {
    let dir = temp_dir();
    let mut journal = open(dir.path(), small_segments());
    // Fill the first segment, keep a copy of its plain file, then let it be sealed.
    let first_log = active_segment(dir.path());
    let mut copy = Vec::new();
    while journal.sealed_segments().is_empty() {
        copy = fs::read(&first_log).unwrap_or_default();
        append_n(&mut journal, 0..1);
    }
    let expected = seqs(&read_all(&journal, 1));
    drop(journal);
    fs::write(&first_log, &copy).unwrap_or_else(|e| panic!("{e}"));

    let journal = open(dir.path(), small_segments());
    assert!(
        !first_log.exists(),
        "the plain copy of a sealed segment is removed"
    );
    assert_eq!(seqs(&read_all(&journal, 1)), expected);
}

#[test]
fn the_journal_refuses_to_grow_past_its_quota_until_acknowledged() {
    let dir = temp_dir();
    let limits = JournalConfig {
        segment_bytes: 4096,
        max_total_bytes: 8192,
        ..config()
    };
    let mut journal = open(dir.path(), limits.clone());
    let mut appended = 0u64;
    let refusal = loop {
        match journal.append(&event(appended)) {
            Ok(_) => appended += 1,
            Err(e) => break e,
        }
        assert!(appended < 10_000, "quota never reached");
    };
    assert!(
        matches!(
            refusal,
            JournalError::QuotaExceeded {
                max_total_bytes: 8192,
                ..
            }
        ),
        "{refusal}"
    );
    assert!(journal.disk_usage_bytes() <= 8192);
    let last = journal.last_seq().unwrap_or_default();
    assert!(journal.ack(last).is_ok());
    assert_eq!(journal.append(&event(0)).ok(), Some(last + 1));
}

// --- full disk -------------------------------------------------------------------------------

/// A disk with a byte budget: once spent, writes fail with ENOSPC, after writing what fits
/// (a short write, as a real full disk does).
#[derive(Clone)]
struct BudgetDisk {
    remaining: Arc<AtomicU64>,
}

impl BudgetDisk {
    fn unlimited() -> Self {
        Self {
            remaining: Arc::new(AtomicU64::new(u64::MAX)),
        }
    }

    fn leave(&self, bytes: u64) {
        self.remaining.store(bytes, Ordering::SeqCst);
    }
}

struct BudgetFile {
    file: File,
    remaining: Arc<AtomicU64>,
}

const ENOSPC: i32 = 28;

impl Write for BudgetFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let remaining = self.remaining.load(Ordering::SeqCst);
        if remaining == 0 && !buf.is_empty() {
            return Err(io::Error::from_raw_os_error(ENOSPC));
        }
        let allowed = buf
            .len()
            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
        let written = self.file.write(&buf[..allowed])?;
        self.remaining.fetch_sub(written as u64, Ordering::SeqCst);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl DiskFile for BudgetFile {
    fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
}

impl Disk for BudgetDisk {
    fn create(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        Ok(Box::new(BudgetFile {
            file: File::create(path)?,
            remaining: self.remaining.clone(),
        }))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn DiskFile>> {
        Ok(Box::new(BudgetFile {
            file: OpenOptions::new().append(true).open(path)?,
            remaining: self.remaining.clone(),
        }))
    }
}

fn open_on(dir: &Path, config: JournalConfig, disk: &BudgetDisk) -> Journal {
    match Journal::open_with_disk(dir, config, Arc::new(disk.clone())) {
        Ok(j) => j,
        Err(e) => panic!("open: {e}"),
    }
}

#[test]
fn a_full_disk_is_reported_as_such_and_damages_nothing() {
    let dir = temp_dir();
    let disk = BudgetDisk::unlimited();
    let mut journal = open_on(dir.path(), config(), &disk);
    append_n(&mut journal, 0..5);
    let path = active_segment(dir.path());
    let length_before = fs::metadata(&path).map(|m| m.len()).unwrap_or_default();

    // Room for part of the next frame only.
    disk.leave(20);
    let error = journal.append(&event(5)).err();
    match &error {
        Some(JournalError::DiskFull { path: failed, .. }) => assert_eq!(failed, &path),
        other => panic!("expected DiskFull, got {other:?}"),
    }
    assert!(error.as_ref().is_some_and(JournalError::is_disk_full));
    assert_eq!(
        fs::metadata(&path).map(|m| m.len()).unwrap_or_default(),
        length_before,
        "the partial frame was taken back"
    );
    assert!(journal
        .append_durable(&event(6))
        .is_err_and(|e| e.is_disk_full()));

    // Space comes back: the next record takes the seq the failed ones did not use.
    disk.leave(u64::MAX);
    assert_eq!(journal.append_durable(&event(7)).ok(), Some(6));
    drop(journal);

    let journal = open(dir.path(), config());
    assert!(journal.repairs().is_empty(), "{:?}", journal.repairs());
    let records = read_all(&journal, 1);
    assert_eq!(seqs(&records), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(records[5].payload["n"], 7);
}

#[test]
fn a_full_disk_while_sealing_keeps_the_active_segment_whole() {
    let dir = temp_dir();
    let disk = BudgetDisk::unlimited();
    let mut journal = open_on(dir.path(), small_segments(), &disk);
    // Fill the active segment right up to the point where the next append seals it.
    let frame_len = |journal: &Journal, n: u64| {
        let seq = journal.next_seq();
        let record = Record {
            seq,
            id: format!("host-a:{seq}"),
            time_unix_ms: 1_700_000_000_000 + n,
            kind: "exec.held".into(),
            payload: event(n).payload,
        };
        frame::encode_frame(&record)
            .map(|f| f.len() as u64)
            .unwrap_or_default()
    };
    let mut appended = 0;
    while journal.disk_usage_bytes() + frame_len(&journal, appended) <= 4096 {
        append_n(&mut journal, appended..appended + 1);
        appended += 1;
    }
    assert!(journal.sealed_segments().is_empty());
    assert!(appended > 5);
    disk.leave(0);
    let refused = journal.append(&event(appended));
    assert!(
        refused.as_ref().is_err_and(JournalError::is_disk_full),
        "{refused:?}"
    );
    assert!(files_with_suffix(dir.path(), ".tmp").is_empty());
    assert!(files_with_suffix(dir.path(), ".zst").is_empty());
    drop(journal);

    let journal = open(dir.path(), small_segments());
    assert!(journal.repairs().is_empty());
    assert_eq!(
        seqs(&read_all(&journal, 1)),
        (1..=appended).collect::<Vec<_>>()
    );
}

#[test]
fn a_full_disk_while_acknowledging_keeps_the_previous_state() {
    let dir = temp_dir();
    let disk = BudgetDisk::unlimited();
    {
        let mut journal = open_on(dir.path(), config(), &disk);
        append_n(&mut journal, 0..10);
        assert!(journal.ack(3).is_ok());
        disk.leave(0);
        assert!(journal.ack(8).is_err_and(|e| e.is_disk_full()));
        assert_eq!(journal.acked_through(), 3);
    }
    let mut journal = open(dir.path(), config());
    assert_eq!(journal.acked_through(), 3);
    assert_eq!(journal.unacked().map(|r| r.count()).ok(), Some(7));
}

#[test]
fn records_can_be_shipped_from_a_disk_that_is_full() {
    let dir = temp_dir();
    let disk = BudgetDisk::unlimited();
    let mut journal = open_on(dir.path(), config(), &disk);
    append_n(&mut journal, 0..4);
    disk.leave(0);
    let shipped: Vec<Seq> = match journal.unacked() {
        Ok(records) => records.filter_map(Result::ok).map(|r| r.seq).collect(),
        Err(e) => panic!("{e}"),
    };
    assert_eq!(shipped, vec![1, 2, 3, 4]);
}

#[test]
fn a_damaged_sealed_segment_is_reported_by_path_when_read() {
    let dir = temp_dir();
    let mut journal = open(dir.path(), small_segments());
    append_n(&mut journal, 0..40);
    let sealed = journal.sealed_segments()[0].path.clone();
    let mut bytes = fs::read(&sealed).unwrap_or_default();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(&sealed, &bytes).unwrap_or_else(|e| panic!("{e}"));

    let results: Vec<_> = journal.read_from(1).collect();
    let errors: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "reading stops at the first error: {errors:?}"
    );
    assert!(
        errors[0].contains(&sealed.display().to_string()),
        "{}",
        errors[0]
    );
    assert!(
        results.last().is_some_and(Result::is_err),
        "nothing is read past the damage"
    );
}

#[test]
fn a_journal_can_move_to_another_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<Journal>();
    let dir = temp_dir();
    let mut journal = open(dir.path(), config());
    let handle = std::thread::spawn(move || journal.append_durable(&event(1)).ok());
    assert_eq!(handle.join().ok().flatten(), Some(1));
}

#[test]
fn an_older_segment_whose_seal_never_happened_is_sealed_on_open() {
    let dir = temp_dir();
    let expected = {
        let mut journal = open(dir.path(), small_segments());
        append_n(&mut journal, 0..30);
        seqs(&read_all(&journal, 1))
    };
    // Turn the first sealed segment back into the plain file it was made from.
    let zst = files_with_suffix(dir.path(), ".zst").remove(0);
    let plain = zstd::decode_all(fs::read(&zst).unwrap_or_default().as_slice())
        .unwrap_or_else(|e| panic!("{e}"));
    let first = frame::scan_segment(&plain).first_seq.unwrap_or_default();
    let log = dir.path().join(format!("{first:020}.log"));
    fs::write(&log, &plain).unwrap_or_else(|e| panic!("{e}"));
    fs::remove_file(&zst).unwrap_or_else(|e| panic!("{e}"));

    let journal = open(dir.path(), small_segments());
    assert!(!log.exists());
    assert!(zst.exists(), "sealed again under the same name");
    assert_eq!(files_with_suffix(dir.path(), ".log").len(), 1);
    assert_eq!(seqs(&read_all(&journal, 1)), expected);
}
