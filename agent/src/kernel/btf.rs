//! Where fields of kernel structures sit in the running kernel, read from its BTF
//! (`/sys/kernel/btf/vmlinux`).
//!
//! The kernel programs carry no compiled-in layout of kernel structures: the agent finds the
//! offsets here and hands them to the programs as read-only globals before they are loaded. Only
//! what that needs is parsed: the type section's records (to step over them and to find
//! structures and unions by name) and the string section.

use std::path::Path;

/// Where the kernel publishes its own type information.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const HEADER_MIN: usize = 24;

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;
const KIND_MAX: u32 = 19;

/// What can be wrong with BTF, or with what is looked up in it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    /// The file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// Which file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The data is not BTF, or is cut short, at the given byte.
    #[error("malformed BTF at byte {at}: {what}")]
    Malformed {
        /// Byte offset in the blob.
        at: usize,
        /// What was wrong there.
        what: &'static str,
    },
    /// No structure or union of that name.
    #[error("no struct or union named '{0}' in the kernel's BTF")]
    NoType(String),
    /// The structure has no such member (directly or in an anonymous member).
    #[error("'{ty}' has no member '{member}' in the kernel's BTF")]
    NoMember {
        /// The structure.
        ty: String,
        /// The member.
        member: String,
    },
    /// The member is a bit field, which the programs do not read.
    #[error("'{ty}.{member}' is a bit field")]
    BitField {
        /// The structure.
        ty: String,
        /// The member.
        member: String,
    },
}

/// A parsed BTF blob: the byte offset of every type record, by type id.
pub struct Btf {
    data: Vec<u8>,
    strings: (usize, usize),
    // Index = type id; id 0 is `void` and has no record.
    records: Vec<usize>,
}

fn u32_at(d: &[u8], at: usize) -> Result<u32, BtfError> {
    d.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_ne_bytes)
        .ok_or(BtfError::Malformed {
            at,
            what: "truncated",
        })
}

impl Btf {
    /// Reads the running kernel's BTF.
    pub fn from_kernel() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX))
    }

    /// Reads BTF from a file.
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|e| BtfError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(data)
    }

    /// Parses a BTF blob in this machine's byte order.
    pub fn parse(data: Vec<u8>) -> Result<Self, BtfError> {
        let bad = |at, what| BtfError::Malformed { at, what };
        if data.len() < HEADER_MIN {
            return Err(bad(0, "shorter than the header"));
        }
        if u16::from_ne_bytes([data[0], data[1]]) != MAGIC {
            return Err(bad(0, "bad magic (not BTF, or the other byte order)"));
        }
        let hdr_len = u32_at(&data, 4)? as usize;
        let type_off = u32_at(&data, 8)? as usize;
        let type_len = u32_at(&data, 12)? as usize;
        let str_off = u32_at(&data, 16)? as usize;
        let str_len = u32_at(&data, 20)? as usize;
        let span = |off: usize, len: usize, what| {
            let start = hdr_len.checked_add(off).ok_or(bad(4, what))?;
            let end = start.checked_add(len).ok_or(bad(4, what))?;
            if hdr_len < HEADER_MIN || end > data.len() {
                return Err(bad(4, what));
            }
            Ok((start, end))
        };
        let (types_start, types_end) = span(type_off, type_len, "type section out of bounds")?;
        let strings = span(str_off, str_len, "string section out of bounds")?;
        let mut records = vec![0usize];
        let mut at = types_start;
        while at < types_end {
            if at + 12 > types_end {
                return Err(bad(at, "type record cut short"));
            }
            let info = u32_at(&data, at + 4)?;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            if kind == 0 || kind > KIND_MAX {
                return Err(bad(at, "unknown type kind"));
            }
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                _ => 0,
            };
            records.push(at);
            at += 12 + extra;
        }
        if at != types_end {
            return Err(bad(
                types_end,
                "last type record runs past the type section",
            ));
        }
        Ok(Btf {
            data,
            strings,
            records,
        })
    }

    fn name(&self, off: u32) -> &[u8] {
        let (start, end) = self.strings;
        let Some(from) = start.checked_add(off as usize).filter(|&f| f < end) else {
            return b"";
        };
        let s = &self.data[from..end];
        &s[..s.iter().position(|&b| b == 0).unwrap_or(s.len())]
    }

    /// (kind, name offset, vlen, kind_flag, record offset) of a type id.
    fn record(&self, id: u32) -> Option<(u32, u32, usize, bool, usize)> {
        let at = *self.records.get(id as usize).filter(|&&a| a != 0)?;
        let name = u32_at(&self.data, at).ok()?;
        let info = u32_at(&self.data, at + 4).ok()?;
        Some((
            (info >> 24) & 0x1f,
            name,
            (info & 0xffff) as usize,
            info >> 31 == 1,
            at,
        ))
    }

    /// Byte offset of `member` in the structure or union `ty`, looking inside anonymous members.
    pub fn member_offset(&self, ty: &str, member: &str) -> Result<u32, BtfError> {
        let id = (1..self.records.len() as u32)
            .find(|&id| {
                matches!(self.record(id), Some((k, n, ..))
                    if (k == KIND_STRUCT || k == KIND_UNION) && self.name(n) == ty.as_bytes())
            })
            .ok_or_else(|| BtfError::NoType(ty.to_string()))?;
        let no_member = || BtfError::NoMember {
            ty: ty.to_string(),
            member: member.to_string(),
        };
        // Bounds the walk: anonymous members can name each other in a crafted file.
        let mut budget = 1u32 << 16;
        match self.find_member(id, member.as_bytes(), 0, &mut budget)? {
            Some(bits) if bits % 8 == 0 => Ok(bits / 8),
            Some(_) => Err(BtfError::BitField {
                ty: ty.to_string(),
                member: member.to_string(),
            }),
            None => Err(no_member()),
        }
    }

    /// Bit offset of `member` below type `id`; `depth` and `budget` (members looked at) bound
    /// the walk into anonymous members.
    fn find_member(
        &self,
        id: u32,
        member: &[u8],
        depth: u32,
        budget: &mut u32,
    ) -> Result<Option<u32>, BtfError> {
        let Some((kind, _, vlen, kind_flag, at)) = self.record(id) else {
            return Ok(None);
        };
        if (kind != KIND_STRUCT && kind != KIND_UNION) || depth > 8 {
            return Ok(None);
        }
        for i in 0..vlen {
            if *budget == 0 {
                return Ok(None);
            }
            *budget -= 1;
            let m = at + 12 + 12 * i;
            let name = u32_at(&self.data, m)?;
            let ty = u32_at(&self.data, m + 4)?;
            let raw = u32_at(&self.data, m + 8)?;
            // With kind_flag set, the top 8 bits give a bit field's size.
            let (bits, bitfield) = if kind_flag {
                (raw & 0x00ff_ffff, raw >> 24 != 0)
            } else {
                (raw, false)
            };
            let n = self.name(name);
            if n == member {
                return Ok(Some(if bitfield { bits | 1 } else { bits }));
            }
            if n.is_empty() {
                if let Some(inner) = self.find_member(ty, member, depth + 1, budget)? {
                    return Ok(Some(bits.saturating_add(inner)));
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blob with `struct outer { int a; union { int pad; char *b; }; int c:3; }`.
    fn blob() -> Vec<u8> {
        let strings = b"\0outer\0a\0pad\0b\0c\0int\0".to_vec();
        let s = |name: &str| -> u32 {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .map(|p| p as u32 + 1)
                .expect("name in table")
        };
        let mut types: Vec<u32> = Vec::new();
        // 1: int
        types.extend([s("int"), KIND_INT << 24, 4, 32]);
        // 2: union { int pad; char *b; } (anonymous), b at 0
        types.extend([0, (KIND_UNION << 24) | 2, 8]);
        types.extend([s("pad"), 1, 0, s("b"), 1, 0]);
        // 3: struct outer, kind_flag set: a at 0, the union at 64 bits, c:3 at 128 bits
        types.extend([s("outer"), (1 << 31) | (KIND_STRUCT << 24) | 3, 24]);
        types.extend([s("a"), 1, 0, 0, 2, 64, s("c"), 1, (3 << 24) | 128]);
        assemble(&types, &strings)
    }

    /// A BTF blob: the header, then the type records (as 32-bit words), then the strings.
    fn assemble(types: &[u32], strings: &[u8]) -> Vec<u8> {
        let types: Vec<u8> = types.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let mut out = Vec::new();
        out.extend(MAGIC.to_ne_bytes());
        out.extend([1u8, 0]);
        for w in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            out.extend(w.to_ne_bytes());
        }
        out.extend(types);
        out.extend(strings);
        out
    }

    #[test]
    fn finds_direct_and_anonymous_members() {
        let btf = Btf::parse(blob()).expect("parses");
        assert_eq!(btf.member_offset("outer", "a"), Ok(0));
        assert_eq!(btf.member_offset("outer", "b"), Ok(8));
    }

    #[test]
    fn names_what_is_missing() {
        let btf = Btf::parse(blob()).expect("parses");
        assert_eq!(
            btf.member_offset("nope", "a"),
            Err(BtfError::NoType("nope".into()))
        );
        assert!(matches!(
            btf.member_offset("outer", "zz"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member_offset("outer", "c"),
            Err(BtfError::BitField { .. })
        ));
    }

    #[test]
    fn refuses_malformed_blobs_with_the_place() {
        let good = blob();
        assert!(matches!(
            Btf::parse(good[..10].to_vec()),
            Err(BtfError::Malformed { at: 0, .. })
        ));
        let mut magic = good.clone();
        magic[0] ^= 0xff;
        assert!(matches!(
            Btf::parse(magic),
            Err(BtfError::Malformed { at: 0, .. })
        ));
        // Type section longer than the file.
        let mut long = good.clone();
        long[12..16].copy_from_slice(&10_000u32.to_ne_bytes());
        assert!(matches!(
            Btf::parse(long),
            Err(BtfError::Malformed { at: 4, .. })
        ));
        // A record cut in the middle: shorten the type section by 4 bytes.
        let mut cut = good.clone();
        let tl = u32::from_ne_bytes(cut[12..16].try_into().expect("4 bytes")) - 4;
        cut[12..16].copy_from_slice(&tl.to_ne_bytes());
        assert!(matches!(Btf::parse(cut), Err(BtfError::Malformed { .. })));
        // Every prefix of a good blob is refused or parsed, never a panic.
        for n in 0..good.len() {
            let _ = Btf::parse(good[..n].to_vec());
        }
    }

    #[test]
    fn anonymous_members_that_name_each_other_end() {
        // struct loop { <anon> of type 1, repeated }: every member is the struct itself.
        let strings = b"\0loop\0".to_vec();
        let n = 2000u32;
        let mut types: Vec<u32> = vec![1, (KIND_STRUCT << 24) | n, 8];
        for _ in 0..n {
            types.extend([0, 1, 0]);
        }
        let btf = Btf::parse(assemble(&types, &strings)).expect("parses");
        assert!(matches!(
            btf.member_offset("loop", "x"),
            Err(BtfError::NoMember { .. })
        ));
    }

    #[test]
    fn the_running_kernel_has_the_fields_the_programs_read() {
        let btf = Btf::from_kernel().expect("kernel BTF parses");
        let off = btf
            .member_offset("linux_binprm", "filename")
            .expect("linux_binprm.filename");
        assert!(off > 0 && off < 4096, "offset {off}");
        let bprm = super::super::probe::bprm_offsets_in(&btf).expect("linux_binprm offsets");
        assert_eq!(bprm.len(), 2);
        assert_ne!(bprm[0].1, bprm[1].1, "filename and interp are two fields");
        let (sec, nsec) = super::super::probe::ctime_offsets_in(&btf).expect("inode change time");
        assert!(sec != nsec && sec < 16_384 && nsec < 16_384, "{sec} {nsec}");
        let files = super::super::probe::file_offsets_in(&btf).expect("file identity offsets");
        assert_eq!(files.0.len(), 16);
        // Every field lies inside its structure, and no two of one structure coincide.
        assert!(files.0.iter().all(|(_, o)| *o < 16_384), "{files:?}");
        let ino = files.0.iter().find(|(g, _)| *g == "INODE_INO_OFF");
        let sb = files.0.iter().find(|(g, _)| *g == "INODE_SB_OFF");
        assert_ne!(ino.map(|x| x.1), sb.map(|x| x.1));
        // A cgroup's id and parent, and a task's id: `pid` lies just before `tgid`.
        let ancestry =
            super::super::probe::ancestry_offsets_in(&btf).expect("cgroup ancestry offsets");
        let at = |g: &str| ancestry.iter().find(|(n, _)| *n == g).map(|x| x.1);
        let tgid = files
            .0
            .iter()
            .find(|(g, _)| *g == "TASK_TGID_OFF")
            .map(|x| x.1);
        assert_eq!(at("TASK_PID_OFF").map(|o| o + 4), tgid, "{ancestry:?}");
        assert_ne!(at("KN_ID_OFF"), at("KN_PARENT_OFF"), "{ancestry:?}");
        assert_ne!(at("CGRP_KN_OFF"), at("CGRP_ROOT_OFF"), "{ancestry:?}");
        // The personality and the signal structure are fields of the task apart from its ids.
        let personality = files
            .0
            .iter()
            .find(|(g, _)| *g == "TASK_PERSONALITY_OFF")
            .map(|x| x.1);
        assert!(personality.is_some() && personality != tgid, "{files:?}");
        assert!(
            at("TASK_SIGNAL_OFF").is_some() && at("TASK_SIGNAL_OFF") != tgid,
            "{ancestry:?}"
        );
        assert!(at("SIGNAL_LIVE_OFF").is_some(), "{ancestry:?}");
        // A socket's family, cgroup and the socket behind a file: fields apart from each other.
        let received =
            super::super::probe::received_offsets_in(&btf).expect("received socket offsets");
        let at = |g: &str| received.iter().find(|(n, _)| *n == g).map(|x| x.1);
        assert!(received.iter().all(|(_, o)| *o < 16_384), "{received:?}");
        assert_ne!(at("SK_FAMILY_OFF"), at("SK_CGROUP_OFF"), "{received:?}");
        // `skc_family` lies in the common part at the start of every socket.
        assert!(at("SK_FAMILY_OFF").is_some_and(|o| o < 64), "{received:?}");
        // x86 marks a 32-bit system call in `thread_info.status`, at the start of the task.
        let compat = super::super::probe::compat_status_offset_in(&btf);
        if cfg!(target_arch = "x86_64") {
            assert!(compat.as_ref().is_ok_and(|o| *o < 64), "{compat:?}");
        } else {
            assert!(compat.is_err(), "{compat:?}");
        }
    }
}
