//! The audit chain: the canonical encoding and hash of a record, signed checkpoints, the export
//! formats (JSON Lines, CSV) and a streaming verifier.
//!
//! Every audit record is hashed together with the hash of the record before it:
//! `hash(n) = SHA-256("latch.audit.v1\0" ‖ hash(n-1) ‖ encode(record n))`, with `hash(0)` all
//! zeros. `encode` is the big-endian `seq`, `time_unix_ms` and `host_seq`, then every text field
//! as a big-endian `u64` byte length followed by its UTF-8 bytes, in the order of [`Record`]'s
//! fields (the derived `time` text is not hashed). Central signs checkpoints (sequence number,
//! chain hash, time, kind) with Ed25519; whoever holds the public key can check a log or an
//! export without trusting the database or its administrator.
//!
//! This module is pure: no storage, no network. Central uses it when it appends and signs;
//! `latchctl` uses it to verify a running central's log and exports offline. It must not learn
//! about SQL or gRPC.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    fmt,
    io::{BufRead, Write},
    path::Path,
};

use ed25519_dalek::{
    pkcs8::EncodePublicKey,
    pkcs8::{spki::der::pem::LineEnding, DecodePrivateKey, DecodePublicKey, EncodePrivateKey},
    Signature, Signer, SigningKey, Verifier as _, VerifyingKey,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A chain hash.
pub type Hash = [u8; 32];

/// The hash before the first record.
pub const GENESIS: Hash = [0; 32];

/// The format name in an export's header line.
pub const EXPORT_FORMAT: &str = "latch-audit-export/1";

/// Checkpoint kinds.
pub mod kind {
    /// Signed on a schedule.
    pub const PERIODIC: &str = "periodic";
    /// Signed at a retention boundary before older records are deleted; a verifier starts there.
    pub const RETENTION: &str = "retention";
    /// Signed at the end of an export, sealing it.
    pub const EXPORT: &str = "export";
    /// Signed on request (`latchctl audit checkpoint`, online verification).
    pub const MANUAL: &str = "manual";
}

/// Serde of a [`Hash`] as lowercase hex.
mod hex_hash {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(h: &super::Hash, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(h))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<super::Hash, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_hash(&s).map_err(serde::de::Error::custom)
    }
}

/// Parses a hex chain hash.
pub fn parse_hash(s: &str) -> Result<Hash, String> {
    let v = hex::decode(s).map_err(|e| format!("hash '{}' is not hex: {e}", s.escape_debug()))?;
    v.try_into()
        .map_err(|v: Vec<u8>| format!("hash has {} bytes; expected 32", v.len()))
}

/// One audit record as hashed, stored and exported.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the chain, from 1, without gaps.
    pub seq: i64,
    /// When (Unix milliseconds).
    pub time_unix_ms: i64,
    /// RFC 3339 form of `time_unix_ms`, for people; not hashed.
    #[serde(default)]
    pub time: String,
    /// Dotted kind (`request.approved`, `agent.exec`, ...).
    pub kind: String,
    /// Who caused it.
    pub actor: String,
    /// Host concerned.
    pub host_id: String,
    /// The agent journal's own sequence number (agent records; 0 otherwise).
    #[serde(default)]
    pub host_seq: i64,
    /// Central's request id.
    pub request_id: String,
    /// Grant.
    pub grant_id: String,
    /// Rule.
    pub rule_name: String,
    /// Workload.
    pub workload: String,
    /// Outcome or action: `allow`, `deny`, `audit`, `refused`, ...
    pub action: String,
    /// The agent's record id (agent records; empty otherwise).
    pub record_id: String,
    /// Everything else, as JSON text exactly as stored.
    pub payload_json: String,
    /// Chain hash of this record.
    #[serde(with = "hex_hash")]
    pub hash: Hash,
}

impl Record {
    /// The chain hash of this record after `prev`.
    pub fn link(&self, prev: &Hash) -> Hash {
        self.link_at(prev, self.seq)
    }

    /// The chain hash of this record's content at position `seq` after `prev`.
    pub fn link_at(&self, prev: &Hash, seq: i64) -> Hash {
        let mut h = Sha256::new();
        h.update(b"latch.audit.v1\0");
        h.update(prev);
        h.update(seq.to_be_bytes());
        h.update(self.time_unix_ms.to_be_bytes());
        h.update(self.host_seq.to_be_bytes());
        for s in [
            &self.kind,
            &self.actor,
            &self.host_id,
            &self.request_id,
            &self.grant_id,
            &self.rule_name,
            &self.workload,
            &self.action,
            &self.record_id,
            &self.payload_json,
        ] {
            h.update((s.len() as u64).to_be_bytes());
            h.update(s.as_bytes());
        }
        h.finalize().into()
    }
}

/// A signed statement "the chain's record `seq` has hash `hash`".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The last record covered.
    pub seq: i64,
    /// Its chain hash.
    #[serde(with = "hex_hash")]
    pub hash: Hash,
    /// When it was signed.
    pub time_unix_ms: i64,
    /// One of [`kind`].
    pub kind: String,
    /// [`key_id`] of the signing key.
    pub key_id: String,
    /// Ed25519 signature of [`Checkpoint::message`], hex.
    pub signature: String,
}

impl Checkpoint {
    /// The signed bytes.
    pub fn message(seq: i64, hash: &Hash, time_unix_ms: i64, kind: &str) -> Vec<u8> {
        format!(
            "latch audit checkpoint v1\nseq {seq}\nhash {}\ntime {time_unix_ms}\nkind {kind}\n",
            hex::encode(hash)
        )
        .into_bytes()
    }

    /// Signs a checkpoint.
    pub fn sign(key: &SigningKey, seq: i64, hash: Hash, time_unix_ms: i64, kind: &str) -> Self {
        let sig = key.sign(&Checkpoint::message(seq, &hash, time_unix_ms, kind));
        Checkpoint {
            seq,
            hash,
            time_unix_ms,
            kind: kind.to_string(),
            key_id: key_id(&key.verifying_key()),
            signature: hex::encode(sig.to_bytes()),
        }
    }

    /// Checks the signature against trusted keys.
    pub fn check(&self, keys: &[VerifyingKey]) -> Result<(), String> {
        let Some(key) = keys.iter().find(|k| key_id(k) == self.key_id) else {
            return Err(format!(
                "signed by key {} which is not a trusted key ({})",
                self.key_id.escape_debug(),
                keys.iter().map(key_id).collect::<Vec<_>>().join(", ")
            ));
        };
        let bytes =
            hex::decode(&self.signature).map_err(|_| "its signature is not hex".to_string())?;
        let sig = Signature::from_slice(&bytes)
            .map_err(|_| format!("its signature has {} bytes; expected 64", bytes.len()))?;
        key.verify(
            &Checkpoint::message(self.seq, &self.hash, self.time_unix_ms, &self.kind),
            &sig,
        )
        .map_err(|_| "its signature does not verify (forged, or altered after signing)".into())
    }
}

/// Short id of a public key: the first 16 hex digits of the SHA-256 of its 32 bytes.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))[..16].to_string()
}

/// A signing or public key file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not a key of the expected kind.
    #[error("{path}: not an Ed25519 {what} in PEM form: {message}")]
    Format {
        /// File.
        path: String,
        /// "private key (PKCS#8)" or "public key (SubjectPublicKeyInfo)".
        what: &'static str,
        /// Cause.
        message: String,
    },
    /// No randomness.
    #[error("cannot generate a key for {path}: {message}")]
    Random {
        /// File.
        path: String,
        /// Cause.
        message: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The public key file written next to a signing key: `<key>.pub`.
pub fn public_key_path(key: &Path) -> std::path::PathBuf {
    let mut p = key.as_os_str().to_owned();
    p.push(".pub");
    p.into()
}

/// Loads the signing key at `path`, or generates one there (mode 0600, with `<path>.pub`) when
/// the file does not exist. Replicas starting together with a shared path agree on one key.
pub fn load_or_create_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::read_to_string(path) {
        Ok(text) => return parse_signing_key(path, &text),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(path)(e)),
        Err(_) => {}
    }
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
    }
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| KeyError::Random {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let key = SigningKey::from_bytes(&seed);
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| KeyError::Format {
            path: path.display().to_string(),
            what: "private key (PKCS#8)",
            message: e.to_string(),
        })?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        f.write_all(pem.as_bytes()).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    // A hard link fails if another replica created the key meanwhile: then use theirs.
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let text = std::fs::read_to_string(path).map_err(io_err(path))?;
            return parse_signing_key(path, &text);
        }
        Err(e) => return Err(io_err(path)(e)),
    }
    let pub_path = public_key_path(path);
    std::fs::write(&pub_path, public_key_pem(&key.verifying_key())).map_err(io_err(&pub_path))?;
    Ok(key)
}

fn parse_signing_key(path: &Path, text: &str) -> Result<SigningKey, KeyError> {
    SigningKey::from_pkcs8_pem(text).map_err(|e| KeyError::Format {
        path: path.display().to_string(),
        what: "private key (PKCS#8)",
        message: e.to_string(),
    })
}

/// A public key in PEM (SubjectPublicKeyInfo), as `openssl pkey -pubin` reads it.
pub fn public_key_pem(key: &VerifyingKey) -> String {
    key.to_public_key_pem(LineEnding::LF)
        .unwrap_or_else(|_| String::new())
}

/// Parses a PEM public key; `name` names its source in errors.
pub fn parse_public_key(name: &str, text: &str) -> Result<VerifyingKey, KeyError> {
    VerifyingKey::from_public_key_pem(text.trim()).map_err(|e| KeyError::Format {
        path: name.to_string(),
        what: "public key (SubjectPublicKeyInfo)",
        message: e.to_string(),
    })
}

/// Reads a PEM public key file.
pub fn read_public_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    parse_public_key(&path.display().to_string(), &text)
}

/// What the verifier found wrong. Every variant names the records concerned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Finding {
    /// The record's content no longer matches its recorded hash; the next record still links
    /// to that hash.
    Edited {
        /// The record.
        seq: i64,
    },
    /// The record matches neither its recorded hash nor the chain around it.
    Mismatch {
        /// The record.
        seq: i64,
    },
    /// Records are missing.
    Deleted {
        /// First missing.
        from: i64,
        /// Last missing.
        to: i64,
    },
    /// A record that is not part of the chain, the records after it renumbered.
    Inserted {
        /// Its position.
        seq: i64,
    },
    /// Two genuine records in each other's place.
    Reordered {
        /// Where the first was found.
        seq: i64,
        /// Where the second was found.
        with: i64,
    },
    /// A record appears again, or out of order.
    Duplicate {
        /// The record.
        seq: i64,
    },
    /// The log ends before a record that a signed checkpoint (or central's head) covers.
    Truncated {
        /// Last record present.
        last: i64,
        /// Last record that must exist.
        expected: i64,
        /// What says so.
        evidence: String,
    },
    /// The chain at a checkpoint's record differs from the signed hash: records up to it were
    /// changed and their hashes recomputed.
    CheckpointMismatch {
        /// The checkpoint's record.
        seq: i64,
        /// Its kind.
        kind: String,
        /// When it was signed.
        time_unix_ms: i64,
    },
    /// A checkpoint whose signature or key is wrong.
    CheckpointForged {
        /// The record it claims to cover.
        seq: i64,
        /// Its kind.
        kind: String,
        /// What is wrong.
        reason: String,
    },
    /// An export without a signed checkpoint at its last record.
    Unsealed {
        /// Its last record.
        last: i64,
    },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Edited { seq } => write!(
                f,
                "seq {seq}: edited: its content no longer matches its recorded hash"
            ),
            Finding::Mismatch { seq } => write!(
                f,
                "seq {seq}: does not match its recorded hash nor link to the chain (edited, forged or inserted)"
            ),
            Finding::Deleted { from, to } if from == to => {
                write!(f, "seq {from}: deleted: the record is missing")
            }
            Finding::Deleted { from, to } => {
                write!(f, "seq {from}..{to}: deleted: {} records are missing", to - from + 1)
            }
            Finding::Inserted { seq } => write!(
                f,
                "seq {seq}: inserted: the record is not part of the chain (the records after it were renumbered)"
            ),
            Finding::Reordered { seq, with } => write!(
                f,
                "seq {seq} and {with}: reordered: the records are in each other's place"
            ),
            Finding::Duplicate { seq } => {
                write!(f, "seq {seq}: duplicate or out of order")
            }
            Finding::Truncated {
                last,
                expected,
                evidence,
            } => write!(
                f,
                "truncated: the log ends at seq {last} but {evidence} covers seq {expected} (seq {}..{expected} missing)",
                last + 1
            ),
            Finding::CheckpointMismatch {
                seq,
                kind,
                time_unix_ms,
            } => write!(
                f,
                "seq {seq}: the chain differs from the {kind} checkpoint signed at {}: records up to seq {seq} were changed and their hashes recomputed",
                crate::clock::rfc3339(*time_unix_ms)
            ),
            Finding::CheckpointForged { seq, kind, reason } => {
                write!(f, "checkpoint at seq {seq} ({kind}): {reason}")
            }
            Finding::Unsealed { last } => write!(
                f,
                "unsealed: no signed checkpoint covers the last record (seq {last}); records after it may have been cut off"
            ),
        }
    }
}

/// A gap in one host's journal sequence numbers: records the agent wrote but central never got.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostGap {
    /// Host.
    pub host_id: String,
    /// First missing journal sequence number.
    pub from: i64,
    /// Last missing.
    pub to: i64,
}

impl fmt::Display for HostGap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "host {}: journal records {}..{} never arrived",
            crate::text::term_safe(&self.host_id),
            self.from,
            self.to
        )
    }
}

/// The verdict on a log or an export.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Records read.
    pub records: u64,
    /// First record's seq.
    pub first_seq: i64,
    /// Last record's seq.
    pub last_seq: i64,
    /// Chain hash at the last record (hex).
    pub head_hash: String,
    /// The retention checkpoint the chain starts from (0: it starts at seq 1).
    pub anchored_at: i64,
    /// Signed checkpoints compared with the chain.
    pub checkpoints_checked: u64,
    /// The newest valid checkpoint.
    pub latest_checkpoint: Option<Checkpoint>,
    /// What is wrong; empty when the log is intact.
    pub findings: Vec<Finding>,
    /// Agents' journal gaps (not tampering of central's log, but lost records).
    pub host_gaps: Vec<HostGap>,
}

impl Report {
    /// Whether nothing is wrong with the log.
    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }
}

/// Sequence numbers seen for one host, as disjoint inclusive ranges.
#[derive(Default)]
struct Ranges(BTreeMap<i64, i64>);

impl Ranges {
    /// Adds `n`; false when it was there already.
    fn insert(&mut self, n: i64) -> bool {
        if let Some((&s, &e)) = self.0.range(..=n).next_back() {
            if n <= e {
                return false;
            }
            if e + 1 == n {
                let mut end = n;
                if let Some(&e2) = self.0.get(&(n + 1)) {
                    self.0.remove(&(n + 1));
                    end = e2;
                }
                self.0.insert(s, end);
                return true;
            }
        }
        let end = match self.0.remove(&(n + 1)) {
            Some(e2) => e2,
            None => n,
        };
        self.0.insert(n, end);
        true
    }

    fn gaps(&self) -> Vec<(i64, i64)> {
        let mut out = Vec::new();
        let mut next = 1;
        for (&s, &e) in &self.0 {
            if s > next {
                out.push((next, s - 1));
            }
            next = e + 1;
        }
        out
    }
}

/// Options of a [`Verifier`].
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// Require a signed checkpoint at the last record (exports are sealed when written).
    pub require_seal: bool,
    /// The last seq central says it has (online verification), for truncation.
    pub expected_head: Option<i64>,
}

/// Checks a chain record by record, in seq order, keeping O(1) state (plus one entry per
/// checkpoint and per journal gap).
pub struct Verifier {
    keys: Vec<VerifyingKey>,
    opts: VerifyOptions,
    checkpoints: BTreeMap<i64, Vec<Checkpoint>>,
    started: bool,
    prev: Hash,
    /// Next expected position (in the chain's original numbering).
    next_seq: i64,
    /// Stored seq minus original position, after an insertion renumbered records.
    shift: i64,
    lookahead: VecDeque<Record>,
    hosts: HashMap<String, Ranges>,
    report: Report,
}

impl Verifier {
    /// A verifier trusting `keys` for checkpoints.
    pub fn new(keys: Vec<VerifyingKey>, opts: VerifyOptions) -> Verifier {
        Verifier {
            keys,
            opts,
            checkpoints: BTreeMap::new(),
            started: false,
            prev: GENESIS,
            next_seq: 1,
            shift: 0,
            lookahead: VecDeque::new(),
            hosts: HashMap::new(),
            report: Report::default(),
        }
    }

    /// Adds a checkpoint (before the records it covers); a bad one becomes a finding.
    pub fn add_checkpoint(&mut self, cp: Checkpoint) {
        match cp.check(&self.keys) {
            Ok(()) => {
                let newer = self
                    .report
                    .latest_checkpoint
                    .as_ref()
                    .map(|l| (cp.seq, cp.time_unix_ms) > (l.seq, l.time_unix_ms))
                    .unwrap_or(true);
                if newer {
                    self.report.latest_checkpoint = Some(cp.clone());
                }
                self.checkpoints.entry(cp.seq).or_default().push(cp);
            }
            Err(reason) => self.report.findings.push(Finding::CheckpointForged {
                seq: cp.seq,
                kind: cp.kind.clone(),
                reason,
            }),
        }
    }

    /// Feeds the next record (in stored order).
    pub fn push(&mut self, r: Record) {
        self.report.records += 1;
        if self.report.records == 1 {
            self.report.first_seq = r.seq;
        }
        self.report.last_seq = self.report.last_seq.max(r.seq);
        if r.host_seq > 0 && !r.host_id.is_empty() {
            match self.hosts.get_mut(&r.host_id) {
                Some(seen) => {
                    seen.insert(r.host_seq);
                }
                None => {
                    let mut seen = Ranges::default();
                    seen.insert(r.host_seq);
                    self.hosts.insert(r.host_id.clone(), seen);
                }
            }
        }
        self.lookahead.push_back(r);
        if self.lookahead.len() >= 2 {
            self.step();
        }
    }

    /// Ends the stream and returns the verdict.
    pub fn finish(mut self) -> Report {
        while !self.lookahead.is_empty() {
            self.step();
        }
        let last = self.next_seq - 1;
        let truncated = self.report.findings.len();
        if let Some((&cp_seq, cps)) = self.checkpoints.range((last + 1)..).next_back() {
            let cp = &cps[0];
            self.report.findings.push(Finding::Truncated {
                last,
                expected: cp_seq,
                evidence: format!(
                    "the {} checkpoint signed at {}",
                    cp.kind,
                    crate::clock::rfc3339(cp.time_unix_ms)
                ),
            });
        } else if let Some(head) = self.opts.expected_head {
            if head > last {
                self.report.findings.push(Finding::Truncated {
                    last,
                    expected: head,
                    evidence: "central's chain head".into(),
                });
            }
        }
        let truncated = self.report.findings.len() > truncated;
        if self.opts.require_seal
            && !truncated
            && self.report.records > 0
            && !self.checkpoints.contains_key(&last)
        {
            self.report.findings.push(Finding::Unsealed { last });
        }
        self.report.head_hash = hex::encode(self.prev);
        let mut gaps: Vec<HostGap> = self
            .hosts
            .iter()
            .flat_map(|(h, r)| {
                r.gaps().into_iter().map(|(from, to)| HostGap {
                    host_id: h.clone(),
                    from,
                    to,
                })
            })
            .collect();
        gaps.sort_by(|a, b| (&a.host_id, a.from).cmp(&(&b.host_id, b.from)));
        self.report.host_gaps = gaps;
        self.report
    }

    fn accept(&mut self, pos: i64, hash: Hash) {
        self.prev = hash;
        self.next_seq = pos + 1;
        if let Some(cps) = self.checkpoints.get(&pos) {
            for cp in cps {
                self.report.checkpoints_checked += 1;
                if cp.hash != hash {
                    self.report.findings.push(Finding::CheckpointMismatch {
                        seq: pos,
                        kind: cp.kind.clone(),
                        time_unix_ms: cp.time_unix_ms,
                    });
                }
            }
        }
    }

    fn start(&mut self, pos: i64) {
        self.started = true;
        if pos <= 1 {
            return;
        }
        // The newest retention checkpoint before the first record anchors the chain.
        let anchor = self.checkpoints.range(..pos).rev().find_map(|(s, cps)| {
            cps.iter()
                .find(|c| c.kind == kind::RETENTION)
                .map(|c| (*s, c.hash))
        });
        if let Some((s, h)) = anchor {
            self.report.anchored_at = s;
            self.prev = h;
            self.next_seq = s + 1;
        }
    }

    fn step(&mut self) {
        let Some(r) = self.lookahead.pop_front() else {
            return;
        };
        let pos = r.seq - self.shift;
        if !self.started {
            self.start(pos);
        }
        let next = self.lookahead.front();
        if pos < self.next_seq {
            self.report.findings.push(Finding::Duplicate { seq: r.seq });
            return;
        }
        if pos > self.next_seq {
            // Two records in each other's place (an export's lines swapped)?
            if let Some(n) = next {
                if n.seq - self.shift == self.next_seq
                    && n.link_at(&self.prev, self.next_seq) == n.hash
                    && r.link_at(&n.hash, self.next_seq + 1) == r.hash
                    && pos == self.next_seq + 1
                {
                    self.report.findings.push(Finding::Reordered {
                        seq: r.seq,
                        with: n.seq,
                    });
                    let (nh, p) = (n.hash, self.next_seq);
                    self.lookahead.pop_front();
                    self.accept(p, nh);
                    self.accept(p + 1, r.hash);
                    return;
                }
            }
            self.report.findings.push(Finding::Deleted {
                from: self.next_seq + self.shift,
                to: r.seq - 1,
            });
            // The missing records' hashes are unknown: continue from this record's.
            self.accept(pos, r.hash);
            return;
        }
        if r.link_at(&self.prev, pos) == r.hash {
            self.accept(pos, r.hash);
            return;
        }
        let Some(n) = next else {
            self.report.findings.push(Finding::Mismatch { seq: r.seq });
            self.accept(pos, r.hash);
            return;
        };
        let npos = n.seq - self.shift;
        if npos == pos + 1 && n.link_at(&self.prev, pos) == n.hash {
            if r.link_at(&n.hash, pos + 1) == r.hash {
                self.report.findings.push(Finding::Reordered {
                    seq: r.seq,
                    with: n.seq,
                });
                let nh = n.hash;
                self.lookahead.pop_front();
                self.accept(pos, nh);
                self.accept(pos + 1, r.hash);
            } else {
                // `n` is the genuine record at this position, renumbered.
                self.report.findings.push(Finding::Inserted { seq: r.seq });
                self.shift += 1;
            }
            return;
        }
        if npos == pos + 1 && n.link_at(&r.hash, npos) == n.hash {
            self.report.findings.push(Finding::Edited { seq: r.seq });
        } else {
            self.report.findings.push(Finding::Mismatch { seq: r.seq });
        }
        self.accept(pos, r.hash);
    }
}

/// The first line of a JSON Lines export.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportHeader {
    /// [`EXPORT_FORMAT`].
    pub format: String,
    /// When.
    pub exported_at_unix_ms: i64,
    /// False when filters left records out (such an export cannot be verified as a chain).
    pub complete: bool,
    /// The filters, for people.
    #[serde(default)]
    pub filters: BTreeMap<String, String>,
    /// Central's signing key, as central says (a verifier uses the key it trusts instead).
    #[serde(default)]
    pub key_id: String,
}

/// One line of a JSON Lines export: the header, then every checkpoint, then the records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExportLine {
    /// First line.
    Header(ExportHeader),
    /// A signed checkpoint.
    Checkpoint(Checkpoint),
    /// A record.
    Record(Record),
}

/// A line of an export that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading failed.
    #[error("{file}: {source}")]
    Io {
        /// File.
        file: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A line is not a record of this format.
    #[error("{file}:{line}: {message}")]
    Line {
        /// File.
        file: String,
        /// Line number (from 1).
        line: u64,
        /// What is wrong.
        message: String,
    },
}

/// Writes one JSON Lines line.
pub fn write_jsonl(out: &mut impl Write, line: &ExportLine) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, line)?;
    out.write_all(b"\n")
}

/// Reads a JSON Lines export line by line.
pub fn read_jsonl<R: BufRead>(
    file: &str,
    input: R,
) -> impl Iterator<Item = Result<ExportLine, ExportError>> {
    let file = file.to_string();
    input.lines().enumerate().filter_map(move |(i, l)| {
        let line = i as u64 + 1;
        match l {
            Err(source) => Some(Err(ExportError::Io {
                file: file.clone(),
                source,
            })),
            Ok(l) if l.trim().is_empty() => None,
            Ok(l) => Some(serde_json::from_str(&l).map_err(|e| ExportError::Line {
                file: file.clone(),
                line,
                message: e.to_string(),
            })),
        }
    })
}

/// The CSV columns, in order.
pub const CSV_COLUMNS: &[&str] = &[
    "seq",
    "time_unix_ms",
    "time",
    "kind",
    "actor",
    "host_id",
    "host_seq",
    "request_id",
    "grant_id",
    "rule_name",
    "workload",
    "action",
    "record_id",
    "payload_json",
    "hash",
];

/// A CSV export: a header row of [`CSV_COLUMNS`], then one row per record.
pub struct CsvWriter<W: Write>(csv::Writer<W>);

impl<W: Write> CsvWriter<W> {
    /// Starts a CSV export (writes the header on the first record).
    pub fn new(out: W) -> Self {
        CsvWriter(csv::Writer::from_writer(out))
    }

    /// Writes one record.
    pub fn write(&mut self, r: &Record) -> Result<(), csv::Error> {
        self.0.serialize(r)
    }

    /// Flushes.
    pub fn finish(mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Reads a CSV export.
pub fn read_csv<R: std::io::Read>(
    file: &str,
    input: R,
) -> impl Iterator<Item = Result<Record, ExportError>> {
    let file = file.to_string();
    csv::Reader::from_reader(input)
        .into_deserialize::<Record>()
        .map(move |r| {
            r.map_err(|e| ExportError::Line {
                file: file.clone(),
                line: e.position().map(|p| p.line()).unwrap_or(0),
                message: e.to_string(),
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    fn chain(n: i64) -> Vec<Record> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|seq| {
                let mut r = Record {
                    seq,
                    time_unix_ms: 1_000 + seq,
                    kind: "request.created".into(),
                    actor: "host:h1".into(),
                    host_id: "h1".into(),
                    host_seq: seq,
                    payload_json: format!("{{\"n\":{seq}}}"),
                    ..Default::default()
                };
                r.hash = r.link(&prev);
                prev = r.hash;
                r
            })
            .collect()
    }

    fn verify(records: &[Record], cps: &[Checkpoint], opts: VerifyOptions) -> Report {
        let mut v = Verifier::new(vec![key().verifying_key()], opts);
        for c in cps {
            v.add_checkpoint(c.clone());
        }
        for r in records {
            v.push(r.clone());
        }
        v.finish()
    }

    fn plain(records: &[Record]) -> Vec<Finding> {
        verify(records, &[], VerifyOptions::default()).findings
    }

    #[test]
    fn intact_chain_verifies() {
        let c = chain(10);
        let cp = Checkpoint::sign(&key(), 10, c[9].hash, 5, kind::EXPORT);
        let r = verify(
            &c,
            &[cp],
            VerifyOptions {
                require_seal: true,
                expected_head: Some(10),
            },
        );
        assert!(r.ok(), "{:?}", r.findings);
        assert_eq!((r.records, r.checkpoints_checked), (10, 1));
        assert!(r.host_gaps.is_empty());
    }

    #[test]
    fn each_tampering_is_named() {
        let c = chain(10);
        let mut edited = c.clone();
        edited[4].payload_json = "{\"n\":55}".into();
        assert_eq!(plain(&edited), vec![Finding::Edited { seq: 5 }]);

        let mut deleted = c.clone();
        deleted.remove(4);
        assert_eq!(plain(&deleted), vec![Finding::Deleted { from: 5, to: 5 }]);

        let mut swapped = c.clone();
        swapped.swap(3, 4);
        assert_eq!(
            plain(&swapped),
            vec![Finding::Reordered { seq: 5, with: 4 }]
        );
        // Seqs exchanged too (as a database row swap does).
        let mut renum = c.clone();
        renum.swap(3, 4);
        renum[3].seq = 4;
        renum[4].seq = 5;
        assert_eq!(plain(&renum), vec![Finding::Reordered { seq: 4, with: 5 }]);

        let mut inserted = c.clone();
        let mut fake = c[2].clone();
        fake.payload_json = "{}".into();
        inserted.insert(3, fake);
        for (i, r) in inserted.iter_mut().enumerate() {
            r.seq = i as i64 + 1;
        }
        assert_eq!(plain(&inserted), vec![Finding::Inserted { seq: 4 }]);

        let mut dup = c.clone();
        dup.insert(5, c[4].clone());
        assert_eq!(plain(&dup), vec![Finding::Duplicate { seq: 5 }]);
    }

    #[test]
    fn rewritten_hashes_and_truncation_meet_checkpoints() {
        let c = chain(10);
        let cp8 = Checkpoint::sign(&key(), 8, c[7].hash, 5, kind::PERIODIC);
        // Edit record 3 and recompute every hash after it.
        let mut forged = c.clone();
        forged[2].actor = "mallory".into();
        let mut prev = forged[1].hash;
        for r in forged.iter_mut().skip(2) {
            r.hash = r.link(&prev);
            prev = r.hash;
        }
        let f = verify(
            &forged,
            std::slice::from_ref(&cp8),
            VerifyOptions::default(),
        )
        .findings;
        assert!(
            matches!(f.as_slice(), [Finding::CheckpointMismatch { seq: 8, .. }]),
            "{f:?}"
        );
        let f = verify(
            &c[..6],
            std::slice::from_ref(&cp8),
            VerifyOptions::default(),
        )
        .findings;
        assert!(
            matches!(
                f.as_slice(),
                [Finding::Truncated {
                    last: 6,
                    expected: 8,
                    ..
                }]
            ),
            "{f:?}"
        );
        // A checkpoint altered after signing, or signed by another key.
        let mut moved = cp8.clone();
        moved.seq = 9;
        let other = Checkpoint::sign(
            &SigningKey::from_bytes(&[9; 32]),
            8,
            c[7].hash,
            5,
            kind::PERIODIC,
        );
        let f = verify(&c, &[moved, other], VerifyOptions::default()).findings;
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(
            f.iter()
                .all(|x| matches!(x, Finding::CheckpointForged { .. })),
            "{f:?}"
        );
        assert!(f[1].to_string().contains("not a trusted key"), "{}", f[1]);
        // Unsealed export.
        let f = verify(
            &c,
            &[cp8],
            VerifyOptions {
                require_seal: true,
                expected_head: None,
            },
        )
        .findings;
        assert_eq!(f, vec![Finding::Unsealed { last: 10 }]);
    }

    #[test]
    fn retention_anchor_and_missing_start() {
        let c = chain(10);
        let anchor = Checkpoint::sign(&key(), 4, c[3].hash, 5, kind::RETENTION);
        let r = verify(
            &c[4..],
            std::slice::from_ref(&anchor),
            VerifyOptions::default(),
        );
        assert!(r.ok(), "{:?}", r.findings);
        assert_eq!(r.anchored_at, 4);
        let f = plain(&c[4..]);
        assert_eq!(f, vec![Finding::Deleted { from: 1, to: 4 }]);
        let f = verify(&c[6..], &[anchor], VerifyOptions::default()).findings;
        assert_eq!(f, vec![Finding::Deleted { from: 5, to: 6 }]);
    }

    #[test]
    fn host_gaps_are_reported() {
        let mut c = chain(6);
        c[2].host_seq = 9; // journal records 3..8 missing, 9 present
        let r = verify(&c, &[], VerifyOptions::default());
        assert!(r.findings.len() == 1, "{:?}", r.findings); // the edit itself
        assert_eq!(
            r.host_gaps,
            vec![
                HostGap {
                    host_id: "h1".into(),
                    from: 3,
                    to: 3
                },
                HostGap {
                    host_id: "h1".into(),
                    from: 7,
                    to: 8
                },
            ]
        );
        let mut rs = Ranges::default();
        for n in [5, 1, 3, 2, 4] {
            assert!(rs.insert(n));
        }
        assert!(!rs.insert(3));
        assert!(rs.gaps().is_empty());
    }

    #[test]
    fn exports_round_trip() {
        let mut c = chain(3);
        c[1].payload_json = "{\"argv\":[\"a,b\",\"q\\\"uote\\nnl\"]}".into();
        let mut prev = c[0].hash;
        for r in c.iter_mut().skip(1) {
            r.hash = r.link(&prev);
            prev = r.hash;
        }
        let mut out = Vec::new();
        let cp = Checkpoint::sign(&key(), 3, c[2].hash, 5, kind::EXPORT);
        write_jsonl(&mut out, &ExportLine::Checkpoint(cp.clone())).expect("write");
        for r in &c {
            write_jsonl(&mut out, &ExportLine::Record(r.clone())).expect("write");
        }
        let back: Vec<ExportLine> = read_jsonl("x.jsonl", out.as_slice())
            .collect::<Result<_, _>>()
            .expect("read");
        assert_eq!(back[0], ExportLine::Checkpoint(cp));
        assert_eq!(
            back[1..],
            c.iter()
                .cloned()
                .map(ExportLine::Record)
                .collect::<Vec<_>>()[..]
        );
        let mut w = CsvWriter::new(Vec::new());
        for r in &c {
            w.write(r).expect("csv");
        }
        let bytes = w.0.into_inner().expect("csv bytes");
        let text = String::from_utf8(bytes.clone()).expect("utf8");
        assert!(text.starts_with(&CSV_COLUMNS.join(",")), "{text}");
        let back: Vec<Record> = read_csv("x.csv", bytes.as_slice())
            .collect::<Result<_, _>>()
            .expect("read csv");
        assert_eq!(back, c);
        let e = read_jsonl("bad.jsonl", "{\"type\":\"record\"}\n".as_bytes())
            .next()
            .expect("line")
            .expect_err("bad line");
        assert!(e.to_string().starts_with("bad.jsonl:1:"), "{e}");
    }

    #[test]
    fn keys_are_created_once_and_read_back() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("k").join("audit.pem");
        let a = load_or_create_signing_key(&path).expect("create");
        let b = load_or_create_signing_key(&path).expect("load");
        assert_eq!(a.to_bytes(), b.to_bytes());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        let pk = read_public_key(&public_key_path(&path)).expect("public");
        assert_eq!(pk, a.verifying_key());
        std::fs::write(dir.path().join("bad.pem"), "nope").expect("write");
        let e = read_public_key(&dir.path().join("bad.pem")).expect_err("bad key");
        assert!(e.to_string().contains("bad.pem"), "{e}");
    }
}
