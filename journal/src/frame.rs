//! The on-disk layout of a segment, shared by the active (plain) and sealed (zstd) files.
//!
//! ```text
//! header: b"LATCHJ01" | first_seq: u64 LE            (16 bytes)
//! frame:  length: u32 LE | crc32(body): u32 LE | body (a JSON record, `length` bytes)
//! ```
//!
//! A reader stops at the first frame that is cut short, fails its checksum, does not parse,
//! or breaks the sequence (each record's `seq` is one more than the previous, starting at the
//! header's `first_seq`). Whatever precedes that point is intact.

use std::io::{self, Read};

use crate::{Record, Seq};

pub const MAGIC: &[u8; 8] = b"LATCHJ01";
pub const HEADER_LEN: usize = 16;
pub const FRAME_OVERHEAD: usize = 8;
/// A frame claiming more than this is damage, not a record.
pub const MAX_RECORD_BYTES: usize = 4 * 1024 * 1024;

pub fn encode_header(first_seq: Seq) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..8].copy_from_slice(MAGIC);
    header[8..].copy_from_slice(&first_seq.to_le_bytes());
    header
}

/// The frame for one record: length, checksum, JSON body.
pub fn encode_frame(record: &Record) -> Result<Vec<u8>, serde_json::Error> {
    let body = serde_json::to_vec(record)?;
    let mut frame = Vec::with_capacity(FRAME_OVERHEAD + body.len());
    // Callers check the size against MAX_RECORD_BYTES before writing; u32 holds it.
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Why reading a segment stopped before its end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    #[error("segment header is {available} bytes, {HEADER_LEN} expected")]
    ShortHeader { available: usize },
    #[error("segment header does not start with the journal magic")]
    BadMagic,
    #[error("frame header cut short ({available} of {FRAME_OVERHEAD} bytes)")]
    ShortFrameHeader { available: usize },
    #[error("frame claims {claimed} bytes, more than the {MAX_RECORD_BYTES} a record may have")]
    Oversized { claimed: usize },
    #[error("frame claims {claimed} bytes but only {available} follow")]
    ShortBody { claimed: usize, available: usize },
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("record does not parse: {reason}")]
    Unparsable { reason: String },
    #[error("record has seq {found}, {expected} expected")]
    OutOfSequence { expected: Seq, found: Seq },
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The bytes at `offset` are not a valid frame.
    #[error("at offset {offset}: {damage}")]
    Damaged { offset: u64, damage: Damage },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads records from a segment's bytes, checking everything a torn or damaged file could get wrong.
pub struct FrameReader<R> {
    inner: R,
    /// Offset of the next frame in the (decompressed) segment.
    offset: u64,
    first_seq: Seq,
    next_seq: Seq,
}

/// Reads as many bytes as are available up to `buf.len()`; fewer only at end of input.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl<R: Read> FrameReader<R> {
    /// Reads and checks the segment header.
    pub fn new(mut inner: R) -> Result<Self, ReadError> {
        let mut header = [0u8; HEADER_LEN];
        let available = read_up_to(&mut inner, &mut header)?;
        if available < HEADER_LEN {
            return Err(ReadError::Damaged {
                offset: 0,
                damage: Damage::ShortHeader { available },
            });
        }
        if &header[..8] != MAGIC {
            return Err(ReadError::Damaged {
                offset: 0,
                damage: Damage::BadMagic,
            });
        }
        let mut first = [0u8; 8];
        first.copy_from_slice(&header[8..]);
        let first_seq = Seq::from_le_bytes(first);
        Ok(Self {
            inner,
            offset: HEADER_LEN as u64,
            first_seq,
            next_seq: first_seq,
        })
    }

    pub fn first_seq(&self) -> Seq {
        self.first_seq
    }

    /// Offset just past the last record read (the length of the intact prefix).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next record; `Ok(None)` at a clean end of the segment.
    pub fn next_record(&mut self) -> Result<Option<Record>, ReadError> {
        let damaged = |damage| ReadError::Damaged {
            offset: self.offset,
            damage,
        };
        let mut frame_header = [0u8; FRAME_OVERHEAD];
        let available = read_up_to(&mut self.inner, &mut frame_header)?;
        if available == 0 {
            return Ok(None);
        }
        if available < FRAME_OVERHEAD {
            return Err(damaged(Damage::ShortFrameHeader { available }));
        }
        let claimed = u32::from_le_bytes([
            frame_header[0],
            frame_header[1],
            frame_header[2],
            frame_header[3],
        ]) as usize;
        let stored = u32::from_le_bytes([
            frame_header[4],
            frame_header[5],
            frame_header[6],
            frame_header[7],
        ]);
        if claimed > MAX_RECORD_BYTES {
            return Err(damaged(Damage::Oversized { claimed }));
        }
        let mut body = vec![0u8; claimed];
        let available = read_up_to(&mut self.inner, &mut body)?;
        if available < claimed {
            return Err(damaged(Damage::ShortBody { claimed, available }));
        }
        let computed = crc32fast::hash(&body);
        if computed != stored {
            return Err(damaged(Damage::Checksum { stored, computed }));
        }
        let record: Record = serde_json::from_slice(&body).map_err(|e| {
            damaged(Damage::Unparsable {
                reason: e.to_string(),
            })
        })?;
        if record.seq != self.next_seq {
            return Err(damaged(Damage::OutOfSequence {
                expected: self.next_seq,
                found: record.seq,
            }));
        }
        self.next_seq = self.next_seq.saturating_add(1);
        self.offset += (FRAME_OVERHEAD + claimed) as u64;
        Ok(Some(record))
    }
}

/// What a whole segment held: the intact records, the length of the intact prefix, and why
/// reading stopped early, if it did.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentScan {
    pub first_seq: Option<Seq>,
    pub records: Vec<Record>,
    pub valid_len: u64,
    pub damage: Option<(u64, Damage)>,
}

/// Decodes a segment held in memory (an active file, or a sealed one after decompression).
pub fn scan_segment(bytes: &[u8]) -> SegmentScan {
    let mut reader = match FrameReader::new(bytes) {
        Ok(reader) => reader,
        Err(ReadError::Damaged { offset, damage }) => {
            return SegmentScan {
                first_seq: None,
                records: Vec::new(),
                valid_len: 0,
                damage: Some((offset, damage)),
            }
        }
        Err(ReadError::Io(e)) => {
            // Reading from a slice does not fail; keep the answer total all the same.
            return SegmentScan {
                first_seq: None,
                records: Vec::new(),
                valid_len: 0,
                damage: Some((
                    0,
                    Damage::Unparsable {
                        reason: e.to_string(),
                    },
                )),
            };
        }
    };
    let mut records = Vec::new();
    let damage = loop {
        match reader.next_record() {
            Ok(Some(record)) => records.push(record),
            Ok(None) => break None,
            Err(ReadError::Damaged { offset, damage }) => break Some((offset, damage)),
            Err(ReadError::Io(e)) => {
                break Some((
                    reader.offset(),
                    Damage::Unparsable {
                        reason: e.to_string(),
                    },
                ))
            }
        }
    };
    SegmentScan {
        first_seq: Some(reader.first_seq()),
        records,
        valid_len: reader.offset(),
        damage,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: Seq) -> Record {
        Record {
            seq,
            id: format!("h:{seq}"),
            time_unix_ms: 1,
            kind: "event".into(),
            payload: serde_json::json!({ "n": seq }),
        }
    }

    fn segment(first: Seq, count: u64) -> Vec<u8> {
        let mut bytes = encode_header(first).to_vec();
        for seq in first..first + count {
            bytes.extend(encode_frame(&record(seq)).unwrap_or_default());
        }
        bytes
    }

    #[test]
    fn a_segment_reads_back_whole() {
        let bytes = segment(5, 3);
        let scan = scan_segment(&bytes);
        assert_eq!(scan.damage, None);
        assert_eq!(scan.valid_len, bytes.len() as u64);
        assert_eq!(
            scan.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![5, 6, 7]
        );
    }

    #[test]
    fn every_cut_keeps_the_whole_records_before_it() {
        let bytes = segment(1, 3);
        let frame_len = encode_frame(&record(1))
            .map(|f| f.len())
            .unwrap_or_default();
        for cut in HEADER_LEN..bytes.len() {
            let scan = scan_segment(&bytes[..cut]);
            let whole = (cut - HEADER_LEN) / frame_len;
            assert_eq!(scan.records.len(), whole, "cut at {cut}");
            assert_eq!(scan.valid_len as usize, HEADER_LEN + whole * frame_len);
            assert_eq!(
                scan.damage.is_some(),
                !(cut - HEADER_LEN).is_multiple_of(frame_len),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn every_single_bit_flip_is_detected_and_earlier_records_kept() {
        let bytes = segment(1, 3);
        let frame_len = encode_frame(&record(1))
            .map(|f| f.len())
            .unwrap_or_default();
        for position in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[position] ^= 1 << bit;
                let scan = scan_segment(&damaged);
                assert!(
                    scan.damage.is_some(),
                    "flip of bit {bit} at {position} went unnoticed"
                );
                let intact = position.saturating_sub(HEADER_LEN) / frame_len;
                let expected = if position < HEADER_LEN { 0 } else { intact };
                assert_eq!(
                    scan.records.len(),
                    expected,
                    "flip of bit {bit} at {position}"
                );
                assert!(scan
                    .records
                    .iter()
                    .zip(1..)
                    .all(|(r, seq)| *r == record(seq)));
            }
        }
    }

    #[test]
    fn a_record_out_of_sequence_is_damage() {
        let mut bytes = encode_header(1).to_vec();
        bytes.extend(encode_frame(&record(1)).unwrap_or_default());
        let second_at = bytes.len() as u64;
        bytes.extend(encode_frame(&record(3)).unwrap_or_default());
        let scan = scan_segment(&bytes);
        assert_eq!(scan.records.len(), 1);
        assert_eq!(
            scan.damage,
            Some((
                second_at,
                Damage::OutOfSequence {
                    expected: 2,
                    found: 3
                }
            ))
        );
    }
}
