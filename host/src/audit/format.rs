//! The on-disk format of the evidence log, shared by the writer, `audit
//! verify`, `audit prove` and the exporter.
//!
//! ```text
//! DIR/segment-00000000000000000000.jsonl   records 0.. (named by the first seq)
//! DIR/segment-00000000000000004711.jsonl   the next segment, and so on
//! DIR/checkpoint.latest                    the newest signed checkpoint (JSON)
//! DIR/keys/<key id>.pub                    public keys that signed checkpoints (PEM)
//! DIR/exported/<segment>.json              export receipts (the exporter's state)
//! ```
//!
//! Each line of a segment is one JSON object whose first two members are
//! `"seq"` (0, 1, 2, … across segments) and `"prev"` (hex SHA-256 of the
//! previous line's bytes, without its newline; 64 zeros for seq 0). The
//! line's bytes are also leaf `seq` of the Merkle tree. A checkpoint is a line
//! too (`"event":"checkpoint"`): it signs the tree of every line before it
//! (`tree_size` = its own seq), so it is chained and covered by the next
//! checkpoint like any record. A segment is **sealed** when its last line is a
//! checkpoint with `"sealed":true`; only sealed segments are exported.

use super::merkle::Hash;
use base64::Engine;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// `prev` of the first record.
pub const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// File name of the segment whose first record is `first_seq`.
pub fn segment_name(first_seq: u64) -> String {
    format!("segment-{first_seq:020}.jsonl")
}

/// The first seq a segment file name promises, if it is one.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("segment-")?.strip_suffix(".jsonl")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok()).flatten()
}

/// Segments of a log directory, in order of their first seq.
pub fn list_segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(first) = entry.file_name().to_str().and_then(parse_segment_name) {
            out.push((first, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// SHA-256 of a line (what the next record's `prev` holds).
pub fn line_hash(line: &[u8]) -> Hash {
    Sha256::digest(line).into()
}

/// Make a line: `{"seq":N,"prev":"…",` followed by the members of `body`
/// (a serialized JSON object), without the newline.
pub fn encode_line(out: &mut Vec<u8>, seq: u64, prev: &Hash, body: &[u8]) {
    out.extend_from_slice(b"{\"seq\":");
    out.extend_from_slice(seq.to_string().as_bytes());
    out.extend_from_slice(b",\"prev\":\"");
    let mut hexbuf = [0u8; 64];
    hex::encode_to_slice(prev, &mut hexbuf).expect("64 hex digits");
    out.extend_from_slice(&hexbuf);
    out.push(b'"');
    let inner = body.strip_prefix(b"{").unwrap_or(body);
    if inner != b"}" {
        out.push(b',');
    }
    out.extend_from_slice(inner);
}

/// The chain members of a line.
#[derive(Debug, Deserialize)]
pub struct Head {
    /// Sequence number.
    pub seq: u64,
    /// Hex SHA-256 of the previous line.
    pub prev: String,
    /// `checkpoint`, `reload`, … for gateway events; absent on request records.
    #[serde(default)]
    pub event: Option<String>,
}

/// A signed tree head.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Checkpoint {
    /// Leaves the tree covers (every line before the checkpoint's own).
    pub tree_size: u64,
    /// Hex Merkle root of those leaves.
    pub root: String,
    /// Hex SHA-256 of the previous checkpoint's signed text (zeros for the first).
    pub prev_checkpoint: String,
    /// RFC 3339 time it was made.
    pub time: String,
    /// Id of the signing key (hex of the first 8 bytes of SHA-256 of the raw public key).
    pub key: String,
    /// Written when its segment was closed.
    #[serde(default)]
    pub sealed: bool,
    /// Base64 Ed25519 signature of [`Checkpoint::signed_text`].
    #[serde(default)]
    pub signature: String,
}

impl Checkpoint {
    /// The exact bytes signed: one field a line, so any tool can rebuild them.
    pub fn signed_text(&self) -> String {
        format!(
            "portcullis-audit checkpoint v1\ntree_size {}\nroot {}\nprev_checkpoint {}\ntime {}\nkey {}\n",
            self.tree_size, self.root, self.prev_checkpoint, self.time, self.key
        )
    }

    /// What the next checkpoint's `prev_checkpoint` holds.
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.signed_text().as_bytes()))
    }

    /// Sign (sets `signature`).
    pub fn sign(&mut self, key: &SigningKey) {
        let sig = key.sign(self.signed_text().as_bytes());
        self.signature = base64::engine::general_purpose::STANDARD.encode(sig.to_bytes());
    }

    /// Check the signature with `key`.
    pub fn verify(&self, key: &VerifyingKey) -> bool {
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&self.signature) else { return false };
        let Ok(sig) = Signature::from_slice(&bytes) else { return false };
        key.verify(self.signed_text().as_bytes(), &sig).is_ok()
    }

    /// The JSON body of the checkpoint's line (before `seq`/`prev` are added).
    pub fn line_body(&self) -> Vec<u8> {
        let mut v = serde_json::to_value(self).expect("serializable");
        let map = v.as_object_mut().expect("an object");
        let mut out = serde_json::Map::new();
        out.insert("event".into(), "checkpoint".into());
        out.append(map);
        serde_json::to_vec(&out).expect("serializable")
    }
}

/// Key id: hex of the first 8 bytes of SHA-256 of the raw 32-byte public key.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// Read an Ed25519 signing key: PKCS#8 PEM (`openssl genpkey -algorithm
/// ed25519`), or the raw 32-byte seed, or that seed in hex or base64.
pub fn read_signing_key(path: &Path) -> Result<SigningKey, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    if text.contains("-----BEGIN") {
        return SigningKey::from_pkcs8_pem(&text).map_err(|e| format!("{}: not an Ed25519 PKCS#8 PEM private key: {e}", path.display()));
    }
    seed(&bytes).map(|s| SigningKey::from_bytes(&s)).ok_or_else(|| format!("{}: expected a PKCS#8 PEM Ed25519 key, or a 32-byte seed (raw, hex or base64)", path.display()))
}

/// Read an Ed25519 public key: SPKI PEM (`openssl pkey -pubout`), or raw 32
/// bytes, or those in hex or base64.
pub fn read_public_key(path: &Path) -> Result<VerifyingKey, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    if text.contains("-----BEGIN") {
        return VerifyingKey::from_public_key_pem(&text).map_err(|e| format!("{}: not an Ed25519 public key PEM: {e}", path.display()));
    }
    seed(&bytes)
        .and_then(|s| VerifyingKey::from_bytes(&s).ok())
        .ok_or_else(|| format!("{}: expected an Ed25519 public key (PEM, or 32 bytes raw, hex or base64)", path.display()))
}

fn seed(bytes: &[u8]) -> Option<[u8; 32]> {
    if bytes.len() == 32 {
        return bytes.try_into().ok();
    }
    let t = String::from_utf8_lossy(bytes);
    let t = t.trim();
    hex::decode(t)
        .ok()
        .or_else(|| base64::engine::general_purpose::STANDARD.decode(t).ok())
        .and_then(|v| v.try_into().ok())
}

/// PEM (SPKI) of a public key, as written to `DIR/keys/<id>.pub`.
pub fn public_key_pem(key: &VerifyingKey) -> String {
    key.to_public_key_pem(Default::default()).expect("encodable")
}

/// Does this line end a segment (a sealing checkpoint)?
pub fn is_seal(line: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Seal {
        #[serde(default)]
        event: Option<String>,
        #[serde(default)]
        sealed: bool,
    }
    serde_json::from_slice::<Seal>(line).is_ok_and(|s| s.event.as_deref() == Some("checkpoint") && s.sealed)
}

/// The last complete line of a file (reads only its tail), if any.
pub fn last_line(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let mut window = 4096u64;
    loop {
        let start = len.saturating_sub(window);
        f.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::with_capacity((len - start) as usize);
        f.read_to_end(&mut buf)?;
        let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
            if start == 0 {
                return Ok(None);
            }
            window *= 4;
            continue;
        };
        let body = &buf[..end];
        match body.iter().rposition(|&b| b == b'\n') {
            Some(p) => return Ok(Some(body[p + 1..].to_vec())),
            None if start == 0 => return Ok(Some(body.to_vec())),
            None => window *= 4,
        }
    }
}

/// Is the segment at `path` sealed?
pub fn is_sealed(path: &Path) -> std::io::Result<bool> {
    Ok(last_line(path)?.is_some_and(|l| is_seal(&l)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_put_seq_and_prev_first() {
        let mut out = Vec::new();
        encode_line(&mut out, 7, &[0xab; 32], br#"{"a":1}"#);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, format!("{{\"seq\":7,\"prev\":\"{}\",\"a\":1}}", "ab".repeat(32)));
        let mut out = Vec::new();
        encode_line(&mut out, 0, &[0; 32], b"{}");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["prev"], ZERO_HASH);
    }

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(segment_name(4711), "segment-00000000000000004711.jsonl");
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_segment_name("segment-1.jsonl"), None);
        assert_eq!(parse_segment_name("segment-00000000000000004711.jsonl.torn"), None);
    }

    #[test]
    fn checkpoints_sign_and_refuse_edits() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let mut c = Checkpoint { tree_size: 3, root: "aa".repeat(32), prev_checkpoint: ZERO_HASH.into(), time: "2026-11-30T12:00:00.000Z".into(), key: key_id(&key.verifying_key()), sealed: false, signature: String::new() };
        c.sign(&key);
        assert!(c.verify(&key.verifying_key()));
        let mut forged = c.clone();
        forged.tree_size = 4;
        assert!(!forged.verify(&key.verifying_key()));
        assert!(!c.verify(&SigningKey::from_bytes(&[8; 32]).verifying_key()));
        let body: serde_json::Value = serde_json::from_slice(&c.line_body()).unwrap();
        assert_eq!(body["event"], "checkpoint");
        assert_eq!(body["tree_size"], 3);
    }
}
