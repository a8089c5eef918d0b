//! Checking the evidence log (`portcullis audit verify`), and proofs
//! (`portcullis audit prove`, checked offline by `audit verify --proof`).
//!
//! Verification reads every segment in order and stops at the **first**
//! problem, naming its seq, segment and line: a line that is not a record, a
//! seq out of place (deleted, inserted, reordered records), a record that is
//! not what its successor's `prev` committed to (an edit), a segment that does
//! not end with its seal (truncated), a torn last line, a checkpoint whose
//! root is not the Merkle root of the records before it, that does not chain
//! to the previous checkpoint, or whose signature does not verify.
//! `checkpoint.latest` (kept beside the segments, and exported) catches a
//! log whose tail was cut off together with its last checkpoints.

use super::format::{self, Checkpoint, Head, ZERO_HASH};
use super::merkle::{self, Frontier, Hash};
use base64::Engine;
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Public keys by key id.
#[derive(Debug, Default, Clone)]
pub struct Keys(pub HashMap<String, VerifyingKey>);

impl Keys {
    /// Keys from files (PEM or raw).
    pub fn from_files(paths: &[PathBuf]) -> Result<Keys, String> {
        let mut keys = Keys::default();
        for p in paths {
            let k = format::read_public_key(p)?;
            keys.0.insert(format::key_id(&k), k);
        }
        Ok(keys)
    }

    /// The keys the writer left in `DIR/keys/` (proves consistency, not
    /// authorship: whoever can rewrite the directory can replace them).
    pub fn from_dir(dir: &Path) -> Result<Keys, String> {
        let mut paths: Vec<PathBuf> = match std::fs::read_dir(dir.join("keys")) {
            Ok(rd) => rd.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "pub")).collect(),
            Err(e) => return Err(format!("{}: {e}", dir.join("keys").display())),
        };
        paths.sort();
        Keys::from_files(&paths)
    }
}

/// The first thing wrong with a log.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// The first seq that cannot be trusted (or is missing).
    pub seq: Option<u64>,
    /// Segment file name.
    pub segment: String,
    /// 1-based line in the segment.
    pub line: Option<usize>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.seq {
            Some(s) => write!(f, "seq {s}")?,
            None => write!(f, "log")?,
        }
        write!(f, " (segment {}", if self.segment.is_empty() { "-" } else { &self.segment })?;
        if let Some(l) = self.line {
            write!(f, ", line {l}")?;
        }
        write!(f, "): {}", self.reason)
    }
}

/// What a log that verified holds.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Lines (records, events, checkpoints).
    pub records: u64,
    /// Segment files.
    pub segments: usize,
    /// Sealed segments.
    pub sealed: usize,
    /// Checkpoints verified.
    pub checkpoints: u64,
    /// The newest checkpoint in the log.
    pub latest: Option<Checkpoint>,
    /// Lines after the newest checkpoint (not yet covered by a signature).
    pub uncovered: u64,
    /// Things an auditor should know that are not failures (crash recoveries, drops).
    pub notes: Vec<String>,
}

struct Pos {
    segment: String,
    line: usize,
}

/// Verify the log in `dir` with `keys`.
pub fn verify_dir(dir: &Path, keys: &Keys) -> Result<Report, Failure> {
    let fail = |seq: Option<u64>, segment: &str, line: Option<usize>, reason: String| Failure { seq, segment: segment.to_string(), line, reason };
    let segments = format::list_segments(dir).map_err(|e| fail(None, "", None, format!("cannot read {}: {e}", dir.display())))?;
    if segments.is_empty() {
        return Err(fail(Some(0), "", None, format!("no segments in {}", dir.display())));
    }
    let mut expected = 0u64;
    let mut prev: Hash = [0; 32];
    let mut prev_pos: Option<Pos> = None;
    let mut frontier = Frontier::default();
    let mut last_cp: Option<Checkpoint> = None;
    let mut cp_roots: HashMap<u64, String> = HashMap::new();
    let mut report = Report { records: 0, segments: segments.len(), sealed: 0, checkpoints: 0, latest: None, uncovered: 0, notes: Vec::new() };
    let mut prev_sealed = true;
    let mut prev_name = String::new();
    for (i, (first, path)) in segments.iter().enumerate() {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        let is_last = i + 1 == segments.len();
        if *first != expected {
            let reason = if *first > expected {
                if i == 0 {
                    format!("the log starts at seq {first}: records {expected}..{} are missing", first - 1)
                } else if prev_sealed {
                    format!("records {expected}..{} are missing: {prev_name} ends at seq {} and {name} starts at seq {first}", first - 1, expected - 1)
                } else {
                    format!("{prev_name} was truncated: it ends at seq {} without its sealing checkpoint, and {name} starts at seq {first}", expected.saturating_sub(1))
                }
            } else {
                format!("{name} starts at seq {first}, but the log already reached seq {} (duplicated or reordered segments)", expected - 1)
            };
            return Err(fail(Some(expected), if *first > expected && i > 0 { &prev_name } else { &name }, None, reason));
        }
        if !prev_sealed {
            return Err(fail(Some(expected), &prev_name, None, format!("{prev_name} ends at seq {} without its sealing checkpoint (truncated)", expected.saturating_sub(1))));
        }
        let bytes = std::fs::read(path).map_err(|e| fail(Some(expected), &name, None, format!("cannot read: {e}")))?;
        let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
        let torn = lines.pop().filter(|l| !l.is_empty());
        let mut last_line: Option<&[u8]> = None;
        for (idx, line) in lines.iter().enumerate() {
            let lno = idx + 1;
            let head: Head = serde_json::from_slice(line).map_err(|e| fail(Some(expected), &name, Some(lno), format!("not a JSON record ({e}): edited or corrupted")))?;
            if head.seq != expected {
                let later = lines[idx + 1..].iter().take(100_000).position(|l| serde_json::from_slice::<Head>(l).is_ok_and(|h| h.seq == expected));
                let reason = match later {
                    Some(k) => format!("out of order: seq {expected} comes {} line(s) later, after seq {}", k + 1, head.seq),
                    None if head.seq > expected => {
                        let gone = if head.seq - expected == 1 { format!("record {expected} deleted") } else { format!("records {expected}..{} deleted", head.seq - 1) };
                        format!("missing: seq {} follows seq {} ({gone})", head.seq, expected as i64 - 1)
                    }
                    None => format!("seq {} appears again after seq {} (duplicated or reordered)", head.seq, expected - 1),
                };
                return Err(fail(Some(expected), &name, Some(lno), reason));
            }
            let want_prev = if expected == 0 { ZERO_HASH.to_string() } else { hex::encode(prev) };
            if head.prev != want_prev {
                return Err(match &prev_pos {
                    Some(p) => fail(
                        Some(expected - 1),
                        &p.segment,
                        Some(p.line),
                        format!("edited: its SHA-256 is {want_prev}, but seq {expected} committed to {} (or seq {expected}'s link was edited)", head.prev),
                    ),
                    None => fail(Some(0), &name, Some(lno), format!("the first record's prev must be {ZERO_HASH}")),
                });
            }
            if head.event.as_deref() == Some("checkpoint") {
                let cp: Checkpoint = serde_json::from_slice(line).map_err(|e| fail(Some(expected), &name, Some(lno), format!("unreadable checkpoint: {e}")))?;
                check_checkpoint(&cp, expected, &frontier, last_cp.as_ref(), keys).map_err(|r| fail(Some(expected), &name, Some(lno), r))?;
                cp_roots.insert(cp.tree_size, cp.root.clone());
                last_cp = Some(cp);
                report.checkpoints += 1;
            } else if head.event.as_deref() == Some("recovered") || head.event.as_deref() == Some("dropped") {
                let v: serde_json::Value = serde_json::from_slice(line).unwrap_or_default();
                report.notes.push(match head.event.as_deref() {
                    Some("recovered") => format!(
                        "seq {expected}: recovered after a crash: {} torn byte(s) cut off the end of {} (kept as {})",
                        v["truncated_bytes"], v["segment"].as_str().unwrap_or("?"), v["kept_as"].as_str().unwrap_or("?")
                    ),
                    _ => format!("seq {expected}: {} async record(s) were dropped ({})", v["count"], v["reason"].as_str().unwrap_or("?")),
                });
            }
            frontier.push(merkle::leaf_hash(line));
            prev = format::line_hash(line);
            prev_pos = Some(Pos { segment: name.clone(), line: lno });
            last_line = Some(line);
            expected += 1;
        }
        if torn.is_some() {
            let reason = if is_last {
                "incomplete last line (a torn write, e.g. a crash mid-write; the gateway cuts it off at its next start and records that)".to_string()
            } else {
                format!("{name} was truncated mid-record")
            };
            return Err(fail(Some(expected), &name, Some(lines.len() + 1), reason));
        }
        prev_sealed = last_line.is_some_and(format::is_seal);
        if prev_sealed {
            report.sealed += 1;
        }
        prev_name = name;
    }
    report.records = expected;

    // The newest checkpoint kept outside the segments: a log cut short loses
    // its last checkpoints with its records, but not this one.
    let latest_path = dir.join("checkpoint.latest");
    if let Ok(text) = std::fs::read(&latest_path) {
        let cp: Checkpoint = serde_json::from_slice(&text).map_err(|e| fail(None, "checkpoint.latest", None, format!("unreadable: {e}")))?;
        let key = keys.0.get(&cp.key).ok_or_else(|| fail(None, "checkpoint.latest", None, format!("signed by unknown key {} (pass its --pubkey)", cp.key)))?;
        if !cp.verify(key) {
            return Err(fail(None, "checkpoint.latest", None, "signature does not verify (forged)".into()));
        }
        if cp.tree_size > expected {
            return Err(fail(
                Some(expected),
                &prev_name,
                None,
                format!("missing: the log ends at seq {} but checkpoint.latest (signed) covers {} records: records {expected}..{} were cut off", expected as i64 - 1, cp.tree_size, cp.tree_size - 1),
            ));
        }
        match cp_roots.get(&cp.tree_size) {
            Some(root) if *root == cp.root => {}
            Some(_) => return Err(fail(Some(cp.tree_size), "checkpoint.latest", None, "its root differs from the log's checkpoint of the same size (forked log)".into())),
            None => return Err(fail(Some(cp.tree_size), "checkpoint.latest", None, "no checkpoint of that size in the log".into())),
        }
    } else {
        report.notes.push("no checkpoint.latest beside the segments: a cut-off tail would not be noticed".into());
    }

    report.uncovered = match &last_cp {
        Some(cp) => expected - cp.tree_size - 1,
        None => expected,
    };
    report.latest = last_cp;
    Ok(report)
}

fn check_checkpoint(cp: &Checkpoint, seq: u64, frontier: &Frontier, last: Option<&Checkpoint>, keys: &Keys) -> Result<(), String> {
    if cp.tree_size != seq {
        return Err(format!("checkpoint at seq {seq} claims tree_size {} (forged or moved)", cp.tree_size));
    }
    let root = hex::encode(frontier.root());
    if cp.root != root {
        return Err(format!("checkpoint root {} is not the Merkle root {root} of records 0..{} (forged)", cp.root, seq as i64 - 1));
    }
    let want = last.map_or_else(|| ZERO_HASH.to_string(), Checkpoint::hash);
    if cp.prev_checkpoint != want {
        return Err(format!("checkpoint does not chain to the previous checkpoint (prev_checkpoint {}, expected {want})", cp.prev_checkpoint));
    }
    let key = keys.0.get(&cp.key).ok_or_else(|| format!("checkpoint signed by unknown key {} (pass its --pubkey)", cp.key))?;
    if !cp.verify(key) {
        return Err(format!("checkpoint signature does not verify with key {} (forged)", cp.key));
    }
    Ok(())
}

/// An inclusion proof of one record, or a consistency proof between two
/// checkpoints: self-contained JSON, checkable offline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Proof {
    /// `portcullis-audit-proof/v1`.
    pub format: String,
    /// `inclusion` or `consistency`.
    pub kind: String,
    /// Inclusion: the record's seq (its leaf index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Inclusion: the record's line, exactly as stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    /// Inclusion: hex SHA-256(0x00 || record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaf_hash: Option<String>,
    /// Consistency: the older checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Checkpoint>,
    /// The checkpoint proved against (the newest).
    pub checkpoint: Checkpoint,
    /// Hex hashes, leaf to root (RFC 9162 §2.1.3 / §2.1.4).
    pub path: Vec<String>,
    /// Base64 raw Ed25519 public key that signed the checkpoint(s), for convenience; check it against yours.
    pub public_key: Option<String>,
}

/// Every line's leaf hash, the lines themselves on request, and the newest checkpoint.
struct Loaded {
    leaves: Vec<Hash>,
    wanted: Option<Vec<u8>>,
    checkpoints: Vec<Checkpoint>,
}

fn load(dir: &Path, want_seq: Option<u64>) -> Result<Loaded, String> {
    let mut out = Loaded { leaves: Vec::new(), wanted: None, checkpoints: Vec::new() };
    for (_, path) in format::list_segments(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let seq = out.leaves.len() as u64;
            if want_seq == Some(seq) {
                out.wanted = Some(line.to_vec());
            }
            if memchr_checkpoint(line)
                && let Ok(cp) = serde_json::from_slice::<Checkpoint>(line)
            {
                out.checkpoints.push(cp);
            }
            out.leaves.push(merkle::leaf_hash(line));
        }
    }
    Ok(out)
}

fn memchr_checkpoint(line: &[u8]) -> bool {
    line.windows(20).any(|w| w == b"\"event\":\"checkpoint\"")
}

fn public_key_b64(dir: &Path, key_id: &str) -> Option<String> {
    let k = format::read_public_key(&dir.join("keys").join(format!("{key_id}.pub"))).ok()?;
    Some(base64::engine::general_purpose::STANDARD.encode(k.as_bytes()))
}

/// Inclusion proof of record `seq` against the newest checkpoint that covers it.
pub fn prove_inclusion(dir: &Path, seq: u64) -> Result<Proof, String> {
    let l = load(dir, Some(seq))?;
    let record = l.wanted.ok_or_else(|| format!("no record with seq {seq} (the log has {} lines)", l.leaves.len()))?;
    let cp = l.checkpoints.last().filter(|c| c.tree_size > seq).cloned().ok_or_else(|| {
        format!("seq {seq} is not covered by a checkpoint yet (the newest covers {} records); try again after the next checkpoint", l.checkpoints.last().map_or(0, |c| c.tree_size))
    })?;
    let n = cp.tree_size as usize;
    if hex::encode(merkle::root(&l.leaves[..n])) != cp.root {
        return Err("the log does not match its newest checkpoint; run `portcullis audit verify`".into());
    }
    let path = merkle::inclusion_proof(&l.leaves[..n], seq as usize);
    Ok(Proof {
        format: "portcullis-audit-proof/v1".into(),
        kind: "inclusion".into(),
        seq: Some(seq),
        record: Some(String::from_utf8_lossy(&record).into_owned()),
        leaf_hash: Some(hex::encode(merkle::leaf_hash(&record))),
        from: None,
        public_key: public_key_b64(dir, &cp.key),
        checkpoint: cp,
        path: path.iter().map(hex::encode).collect(),
    })
}

/// Consistency proof from the checkpoint of `tree_size` to the newest.
pub fn prove_consistency(dir: &Path, tree_size: u64) -> Result<Proof, String> {
    let l = load(dir, None)?;
    let from = l.checkpoints.iter().find(|c| c.tree_size == tree_size).cloned().ok_or_else(|| format!("no checkpoint of tree_size {tree_size} in the log"))?;
    let to = l.checkpoints.last().cloned().expect("found one above");
    let n = to.tree_size as usize;
    if hex::encode(merkle::root(&l.leaves[..n])) != to.root {
        return Err("the log does not match its newest checkpoint; run `portcullis audit verify`".into());
    }
    let path = if tree_size == 0 { Vec::new() } else { merkle::consistency_proof(&l.leaves[..n], tree_size as usize) };
    Ok(Proof {
        format: "portcullis-audit-proof/v1".into(),
        kind: "consistency".into(),
        seq: None,
        record: None,
        leaf_hash: None,
        from: Some(from),
        public_key: public_key_b64(dir, &to.key),
        checkpoint: to,
        path: path.iter().map(hex::encode).collect(),
    })
}

/// Check a proof offline. With no `keys`, the key embedded in the proof is
/// used (and the answer says so).
pub fn verify_proof(proof: &Proof, keys: &Keys) -> Result<String, String> {
    if proof.format != "portcullis-audit-proof/v1" {
        return Err(format!("unknown proof format {:?}", proof.format));
    }
    let mut keys = keys.clone();
    let mut note = "";
    if keys.0.is_empty() {
        let b = proof.public_key.as_deref().ok_or("no --pubkey and no public_key in the proof")?;
        let raw: [u8; 32] = base64::engine::general_purpose::STANDARD.decode(b).ok().and_then(|v| v.try_into().ok()).ok_or("bad public_key")?;
        let k = VerifyingKey::from_bytes(&raw).map_err(|e| format!("bad public_key: {e}"))?;
        keys.0.insert(format::key_id(&k), k);
        note = " (with the key inside the proof: pass --pubkey to check who signed)";
    }
    let check_sig = |cp: &Checkpoint| -> Result<(), String> {
        let k = keys.0.get(&cp.key).ok_or_else(|| format!("checkpoint signed by unknown key {}", cp.key))?;
        if cp.verify(k) { Ok(()) } else { Err(format!("checkpoint of tree_size {} has an invalid signature", cp.tree_size)) }
    };
    let hash = |s: &String| -> Result<Hash, String> { hex::decode(s).ok().and_then(|v| v.try_into().ok()).ok_or_else(|| format!("bad hash {s:?}")) };
    check_sig(&proof.checkpoint)?;
    let root = hash(&proof.checkpoint.root)?;
    let path: Vec<Hash> = proof.path.iter().map(hash).collect::<Result<_, _>>()?;
    match proof.kind.as_str() {
        "inclusion" => {
            let seq = proof.seq.ok_or("inclusion proof without seq")?;
            let record = proof.record.as_deref().ok_or("inclusion proof without record")?;
            let head: Head = serde_json::from_str(record).map_err(|e| format!("record is not JSON: {e}"))?;
            if head.seq != seq {
                return Err(format!("the record says seq {}, the proof {seq}", head.seq));
            }
            let leaf = merkle::leaf_hash(record.as_bytes());
            if proof.leaf_hash.as_deref().is_some_and(|h| *h != hex::encode(leaf)) {
                return Err("leaf_hash is not SHA-256(0x00 || record)".into());
            }
            if !merkle::verify_inclusion(seq, proof.checkpoint.tree_size, &leaf, &path, &root) {
                return Err(format!("record seq {seq} is NOT included in the tree of checkpoint tree_size {}", proof.checkpoint.tree_size));
            }
            Ok(format!("ok: record seq {seq} is included in the log's tree of {} records, checkpoint signed by key {} at {}{note}", proof.checkpoint.tree_size, proof.checkpoint.key, proof.checkpoint.time))
        }
        "consistency" => {
            let from = proof.from.as_ref().ok_or("consistency proof without from")?;
            check_sig(from)?;
            let ok = from.tree_size == 0 || merkle::verify_consistency(from.tree_size, proof.checkpoint.tree_size, &hash(&from.root)?, &root, &path);
            if !ok {
                return Err(format!("the tree of {} records is NOT a prefix of the tree of {}", from.tree_size, proof.checkpoint.tree_size));
            }
            Ok(format!("ok: the log of {} records extends the log of {} records (append-only){note}", proof.checkpoint.tree_size, from.tree_size))
        }
        other => Err(format!("unknown proof kind {other:?}")),
    }
}
