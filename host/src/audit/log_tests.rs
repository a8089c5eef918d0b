//! The writer, verify and proofs together: 100,000 records through the
//! writer library, then every kind of tampering, each named by seq.

use super::format::{self, Checkpoint};
use super::merkle;
use super::verify::{self, Failure, Keys};
use super::writer::{LogOptions, LogWriter};
use ed25519_dalek::SigningKey;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

fn options(dir: &Path) -> LogOptions {
    LogOptions {
        dir: dir.to_path_buf(),
        segment_max_bytes: 256 * 1024,
        segment_max_age: Duration::from_secs(3600),
        checkpoint_interval: Duration::from_millis(20),
        async_flush: Duration::from_millis(20),
        key: key(),
    }
}

fn record(i: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "time": "2026-11-30T12:00:00.000Z", "id": format!("req-{i}"), "method": "GET", "host": "api.procare.health",
        "path": "/api/clinical/vitals", "route": "clinical", "status": 200, "source": "upstream",
        "verdicts": [["router", "proceed"]], "bytes_in": 0, "bytes_out": 1234, "duration_us": 812, "outcome": "ok"
    }))
    .unwrap()
}

/// Write `n` records (every 5000th durable, which also drains the queue).
fn write_log(dir: &Path, n: u64) {
    let w = LogWriter::open(options(dir)).unwrap();
    for i in 0..n {
        if i % 5000 == 4999 {
            w.append_durable(record(i)).blocking_recv().unwrap().unwrap();
        } else {
            assert!(w.append(record(i)));
        }
    }
    w.close();
}

fn keys() -> Keys {
    let k = key().verifying_key();
    Keys([(format::key_id(&k), k)].into_iter().collect())
}

fn verify(dir: &Path) -> Result<verify::Report, Failure> {
    verify::verify_dir(dir, &keys())
}

/// All lines of the log: (segment path, line index, bytes).
fn lines(dir: &Path) -> Vec<(PathBuf, usize, Vec<u8>)> {
    let mut out = Vec::new();
    for (_, p) in format::list_segments(dir).unwrap() {
        let bytes = std::fs::read(&p).unwrap();
        for (i, l) in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()).enumerate() {
            out.push((p.clone(), i, l.to_vec()));
        }
    }
    out
}

fn rewrite(path: &Path, f: impl FnOnce(&mut Vec<Vec<u8>>)) {
    let bytes = std::fs::read(path).unwrap();
    let mut ls: Vec<Vec<u8>> = bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec).collect();
    f(&mut ls);
    let mut out = Vec::new();
    for l in ls {
        out.extend_from_slice(&l);
        out.push(b'\n');
    }
    std::fs::write(path, out).unwrap();
}

fn copy_dir(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    copy_into(from, to.path());
    to
}

fn copy_into(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_into(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// A request record (not an event) in the middle of a middle segment.
fn victim(dir: &Path) -> (PathBuf, usize, u64) {
    let all = lines(dir);
    let segs = format::list_segments(dir).unwrap();
    let middle = &segs[segs.len() / 2].1;
    let in_seg: Vec<_> = all.iter().filter(|(p, _, _)| p == middle).collect();
    let (p, i, l) = in_seg[in_seg.len() / 2];
    let v: serde_json::Value = serde_json::from_slice(l).unwrap();
    assert!(v.get("event").is_none());
    (p.clone(), *i, v["seq"].as_u64().unwrap())
}

#[test]
fn a_hundred_thousand_records_verify_and_every_tampering_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 100_000);
    let report = verify(dir.path()).unwrap_or_else(|f| panic!("{f}"));
    assert!(report.records > 100_000, "records plus events and checkpoints: {}", report.records);
    assert!(report.segments > 10, "rotated by size: {} segments", report.segments);
    assert_eq!(report.sealed, report.segments, "closed cleanly: every segment sealed");
    assert!(report.checkpoints >= report.segments as u64);
    assert_eq!(report.uncovered, 0, "the seal at close is the last line");

    // Edit one byte of a record: that record is named.
    let d = copy_dir(dir.path());
    let (seg, idx, seq) = victim(d.path());
    rewrite(&seg, |ls| {
        let l = &mut ls[idx];
        let at = l.windows(16).position(|w| w == b"\"bytes_out\":1234").unwrap();
        l[at + 12] = b'9';
    });
    let f = verify(d.path()).unwrap_err();
    assert_eq!(f.seq, Some(seq), "{f}");
    assert!(f.reason.contains("edited"), "{f}");
    assert_eq!(f.segment, seg.file_name().unwrap().to_str().unwrap());
    assert_eq!(f.line, Some(idx + 1));

    // Delete one line.
    let d = copy_dir(dir.path());
    let (seg, idx, seq) = victim(d.path());
    rewrite(&seg, |ls| {
        ls.remove(idx);
    });
    let f = verify(d.path()).unwrap_err();
    assert_eq!(f.seq, Some(seq), "{f}");
    assert!(f.reason.contains("missing"), "{f}");

    // Swap two lines.
    let d = copy_dir(dir.path());
    let (seg, idx, seq) = victim(d.path());
    rewrite(&seg, |ls| ls.swap(idx, idx + 1));
    let f = verify(d.path()).unwrap_err();
    assert_eq!(f.seq, Some(seq), "{f}");
    assert!(f.reason.contains("out of order"), "{f}");

    // Insert a line (a forged record with a plausible seq).
    let d = copy_dir(dir.path());
    let (seg, idx, seq) = victim(d.path());
    rewrite(&seg, |ls| {
        let forged = ls[idx].clone();
        ls.insert(idx + 1, forged);
    });
    let f = verify(d.path()).unwrap_err();
    assert_eq!(f.seq, Some(seq + 1), "{f}");

    // Truncate a middle segment by whole lines: the first cut record is named.
    let d = copy_dir(dir.path());
    let (seg, idx, seq) = victim(d.path());
    rewrite(&seg, |ls| ls.truncate(idx));
    let f = verify(d.path()).unwrap_err();
    assert_eq!(f.seq, Some(seq), "{f}");
    assert!(f.reason.contains("truncated"), "{f}");

    // Truncate a middle segment mid-line.
    let d = copy_dir(dir.path());
    let (seg, idx, seq) = victim(d.path());
    let bytes = std::fs::read(&seg).unwrap();
    let offset: usize = bytes.split(|&b| b == b'\n').take(idx).map(|l| l.len() + 1).sum::<usize>() + 10;
    std::fs::write(&seg, &bytes[..offset]).unwrap();
    let f = verify(d.path()).unwrap_err();
    assert_eq!(f.seq, Some(seq), "{f}");
    assert!(f.reason.contains("truncated"), "{f}");

    // Cut the tail of the last segment (with its checkpoints): checkpoint.latest names the first missing record.
    let d = copy_dir(dir.path());
    let (_, last) = format::list_segments(d.path()).unwrap().into_iter().rev().find(|(_, p)| std::fs::metadata(p).unwrap().len() > 0).unwrap();
    let all = lines(d.path());
    let total = all.len() as u64;
    let in_last = all.iter().filter(|(p, _, _)| *p == last).count();
    rewrite(&last, |ls| ls.truncate(in_last - 5));
    let f = verify(d.path()).unwrap_err();
    assert_eq!(f.seq, Some(total - 5), "{f}");
    assert!(f.reason.contains("cut off") || f.reason.contains("truncated"), "{f}");

    // Forge a checkpoint: another root, same key id; the checkpoint itself is named.
    let d = copy_dir(dir.path());
    let (cp_seg, cp_idx, cp_seq) = lines(d.path())
        .into_iter()
        .find(|(_, _, l)| serde_json::from_slice::<serde_json::Value>(l).unwrap()["event"] == "checkpoint" && serde_json::from_slice::<serde_json::Value>(l).unwrap()["seq"].as_u64().unwrap() > 50_000)
        .map(|(p, i, l)| (p, i, serde_json::from_slice::<serde_json::Value>(&l).unwrap()["seq"].as_u64().unwrap()))
        .unwrap();
    rewrite(&cp_seg, |ls| {
        let mut v: serde_json::Value = serde_json::from_slice(&ls[cp_idx]).unwrap();
        v["root"] = "ab".repeat(32).into();
        ls[cp_idx] = serde_json::to_vec(&v).unwrap();
    });
    let f = verify(d.path()).unwrap_err();
    assert_eq!(f.seq, Some(cp_seq), "{f}");
    assert!(f.reason.contains("Merkle root"), "{f}");

    // Rewrite history consistently (edit, re-chain, recompute every root)
    // without the signing key: the first checkpoint after the edit is named.
    let d = copy_dir(dir.path());
    let (_, _, seq) = victim(d.path());
    let f = rewrite_history(d.path(), seq, &SigningKey::from_bytes(&[66; 32]));
    assert!(f.seq.unwrap() > seq, "{f}");
    assert!(f.reason.contains("signature does not verify"), "{f}");

    // Verifying with the wrong public key: the first checkpoint is refused.
    let other = SigningKey::from_bytes(&[9; 32]).verifying_key();
    let f = verify::verify_dir(dir.path(), &Keys([(format::key_id(&other), other)].into_iter().collect())).unwrap_err();
    assert!(f.reason.contains("unknown key"), "{f}");
}

/// Change record `seq`, then fix every later `prev`, checkpoint root and
/// checkpoint chain, re-signing with `forger` under the real key's id.
fn rewrite_history(dir: &Path, seq: u64, forger: &SigningKey) -> Failure {
    let mut prev = [0u8; 32];
    let mut frontier = merkle::Frontier::default();
    let mut last_cp: Option<Checkpoint> = None;
    let mut n = 0u64;
    for (_, path) in format::list_segments(dir).unwrap() {
        rewrite(&path, |ls| {
            for l in ls.iter_mut() {
                let mut v: serde_json::Value = serde_json::from_slice(l).unwrap();
                if n < seq {
                    // Before the edit: untouched.
                    if v["event"] == "checkpoint" {
                        last_cp = Some(serde_json::from_value(v).unwrap());
                    }
                    prev = format::line_hash(l);
                    frontier.push(merkle::leaf_hash(l));
                    n += 1;
                    continue;
                }
                if n == seq {
                    v["status"] = 403.into();
                }
                if n > seq {
                    v["prev"] = hex::encode(prev).into();
                    if v["event"] == "checkpoint" {
                        let mut cp: Checkpoint = serde_json::from_value(v.clone()).unwrap();
                        cp.root = hex::encode(frontier.root());
                        cp.prev_checkpoint = last_cp.as_ref().map_or_else(|| format::ZERO_HASH.into(), Checkpoint::hash);
                        cp.sign(forger);
                        v["root"] = cp.root.clone().into();
                        v["prev_checkpoint"] = cp.prev_checkpoint.clone().into();
                        v["signature"] = cp.signature.clone().into();
                    }
                }
                if v["event"] == "checkpoint" {
                    last_cp = Some(serde_json::from_value(v.clone()).unwrap());
                }
                let mut body = v.clone();
                let obj = body.as_object_mut().unwrap();
                obj.remove("seq");
                obj.remove("prev");
                let mut line = Vec::new();
                format::encode_line(&mut line, n, &prev, &serde_json::to_vec(&body).unwrap());
                prev = format::line_hash(&line);
                frontier.push(merkle::leaf_hash(&line));
                *l = line;
                n += 1;
            }
        });
    }
    std::fs::remove_file(dir.join("checkpoint.latest")).unwrap();
    verify(dir).unwrap_err()
}

#[test]
fn inclusion_and_consistency_proofs_verify_offline() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 3000);
    let report = verify(dir.path()).unwrap();
    let size = report.latest.as_ref().unwrap().tree_size;
    // A pseudo-random record.
    let seq = (size * 7919 / 10007) % size;
    let proof = verify::prove_inclusion(dir.path(), seq).unwrap();
    let text = serde_json::to_string(&proof).unwrap();
    let back: verify::Proof = serde_json::from_str(&text).unwrap();
    verify::verify_proof(&back, &keys()).unwrap();
    verify::verify_proof(&back, &Keys::default()).unwrap();
    // A record changed inside the proof does not verify.
    let mut bad = back.clone();
    bad.record = Some(bad.record.unwrap().replace("\"status\":200", "\"status\":201"));
    bad.leaf_hash = None;
    assert!(verify::verify_proof(&bad, &keys()).unwrap_err().contains("NOT included"));
    // Nor a checkpoint with another root.
    let mut bad = back.clone();
    bad.checkpoint.root = "00".repeat(32);
    assert!(verify::verify_proof(&bad, &keys()).unwrap_err().contains("signature"));

    // Consistency from every earlier checkpoint to the newest.
    let cps: Vec<Checkpoint> = lines(dir.path()).iter().filter_map(|(_, _, l)| serde_json::from_slice::<Checkpoint>(l).ok().filter(|_| l.windows(20).any(|w| w == b"\"event\":\"checkpoint\""))).collect();
    assert!(cps.len() > 2);
    for cp in &cps[..cps.len() - 1] {
        let p = verify::prove_consistency(dir.path(), cp.tree_size).unwrap();
        verify::verify_proof(&p, &keys()).unwrap_or_else(|e| panic!("from {}: {e}", cp.tree_size));
    }
}

#[test]
fn a_torn_last_line_is_cut_off_at_restart_and_the_chain_continues() {
    let dir = tempfile::tempdir().unwrap();
    let w = LogWriter::open(options(dir.path())).unwrap();
    for i in 0..100 {
        w.append(record(i));
    }
    w.append_durable(record(100)).blocking_recv().unwrap().unwrap();
    // A crash: no seal, and half a record at the end.
    w.abandon();
    let (_, last) = format::list_segments(dir.path()).unwrap().pop().unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(&last).unwrap();
    let torn = b"{\"seq\":999,\"prev\":\"00";
    std::io::Write::write_all(&mut f, torn).unwrap();
    drop(f);
    let fail = verify(dir.path()).unwrap_err();
    assert!(fail.reason.contains("torn write"), "{fail}");

    let w = LogWriter::open(options(dir.path())).unwrap();
    w.append_durable(record(101)).blocking_recv().unwrap().unwrap();
    w.close();
    let report = verify(dir.path()).unwrap_or_else(|f| panic!("{f}"));
    assert!(report.notes.iter().any(|n| n.contains("recovered after a crash") && n.contains(&format!("{} torn byte(s)", torn.len()))), "{:?}", report.notes);
    let kept: Vec<_> = std::fs::read_dir(dir.path()).unwrap().filter_map(Result::ok).filter(|e| e.file_name().to_string_lossy().contains(".torn-")).collect();
    assert_eq!(kept.len(), 1, "the torn bytes are kept as evidence");
}

#[test]
fn group_commit_shares_fsyncs_between_concurrent_durable_records() {
    let dir = tempfile::tempdir().unwrap();
    let w = LogWriter::open(options(dir.path())).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let n = 400u64;
    rt.block_on(async {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let w = w.clone();
                tokio::spawn(async move { w.append_durable(record(i)).await.unwrap().unwrap() })
            })
            .collect();
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(t.await.unwrap());
        }
        seqs.sort();
        seqs.dedup();
        assert_eq!(seqs.len() as u64, n, "every record acknowledged with its own seq");
    });
    let commits = w.stats().commit_fsyncs.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(w.stats().durable_records.load(std::sync::atomic::Ordering::Relaxed), n);
    assert!(commits < n, "{n} durable records took {commits} fsyncs");
    w.close();
    verify(dir.path()).unwrap();
}

#[test]
fn rotation_by_age_seals_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path());
    o.segment_max_age = Duration::from_millis(50);
    let w = LogWriter::open(o).unwrap();
    for i in 0..5 {
        // Wait until the writer has taken each record, so a loaded machine
        // cannot batch two of them into one segment.
        w.append_durable(record(i)).blocking_recv().unwrap().unwrap();
        std::thread::sleep(Duration::from_millis(80));
    }
    w.close();
    let r = verify(dir.path()).unwrap();
    assert!(r.segments >= 4, "{} segments", r.segments);
    for (_, p) in format::list_segments(dir.path()).unwrap() {
        assert!(format::is_sealed(&p).unwrap(), "{} sealed", p.display());
    }
}
