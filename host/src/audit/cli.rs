//! `portcullis audit verify | prove | export`.

use super::export::{self, S3};
use super::verify::{self, Keys, Proof};
use crate::config::{self, Source};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `audit verify --dir DIR [--pubkey K]...` or `audit verify --proof FILE [--pubkey K]...`.
/// Exit 0 only when everything holds; otherwise the first problem on stderr.
pub fn verify(dir: Option<&Path>, proof: Option<&Path>, pubkeys: &[PathBuf]) -> ExitCode {
    let keys = match Keys::from_files(pubkeys) {
        Ok(k) => k,
        Err(e) => return fail(&e),
    };
    match (dir, proof) {
        (Some(dir), None) => {
            let keys = if keys.0.is_empty() {
                match Keys::from_dir(dir) {
                    Ok(k) => {
                        eprintln!("note: checkpoint signatures checked with the keys in {}/keys (pass --pubkey to check who signed)", dir.display());
                        k
                    }
                    Err(e) => return fail(&format!("no --pubkey and no keys in the log directory: {e}")),
                }
            } else {
                keys
            };
            match verify::verify_dir(dir, &keys) {
                Ok(r) => {
                    for n in &r.notes {
                        println!("note: {n}");
                    }
                    match &r.latest {
                        Some(cp) => println!(
                            "ok: {} records in {} segments ({} sealed), {} checkpoints verified; latest: tree_size {} root {} at {} (key {}); {} record(s) after it not yet signed",
                            r.records, r.segments, r.sealed, r.checkpoints, cp.tree_size, cp.root, cp.time, cp.key, r.uncovered
                        ),
                        None => println!("ok: {} records in {} segments; no checkpoint yet (nothing signed)", r.records, r.segments),
                    }
                    ExitCode::SUCCESS
                }
                Err(f) => {
                    eprintln!("FAIL {f}");
                    ExitCode::FAILURE
                }
            }
        }
        (None, Some(path)) => {
            let proof: Proof = match std::fs::read(path).map_err(|e| e.to_string()).and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string())) {
                Ok(p) => p,
                Err(e) => return fail(&format!("{}: {e}", path.display())),
            };
            match verify::verify_proof(&proof, &keys) {
                Ok(msg) => {
                    println!("{msg}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("FAIL {e}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => fail("give either --dir DIR (a log) or --proof FILE (a proof from `audit prove`)"),
    }
}

/// `audit prove --dir DIR --seq N` (inclusion) or `--from-size N` (consistency): JSON on stdout.
pub fn prove(dir: &Path, seq: Option<u64>, from_size: Option<u64>) -> ExitCode {
    let proof = match (seq, from_size) {
        (Some(seq), None) => verify::prove_inclusion(dir, seq),
        (None, Some(n)) => verify::prove_consistency(dir, n),
        _ => Err("give either --seq N (inclusion of a record) or --from-size N (consistency of an older checkpoint with the newest)".into()),
    };
    match proof {
        Ok(p) => {
            println!("{}", serde_json::to_string_pretty(&p).expect("json"));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// `audit export --config FILE`: ship sealed segments once.
pub async fn export(config_path: &Path) -> ExitCode {
    let source = match Source::read(config_path) {
        Ok(s) => s,
        Err(e) => return fail(&e.to_string()),
    };
    let config = match config::parse(&source) {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string()),
    };
    let Some(audit) = &config.audit else { return fail(&format!("{}: no [audit] section", config_path.display())) };
    let Some(e) = &audit.export else { return fail(&format!("{}: no [audit.export] section", config_path.display())) };
    let s3 = match S3::from_config(e, |p| source.resolve(p)) {
        Ok(s) => s,
        Err(why) => return fail(&format!("{}: audit.export: {why}", config_path.display())),
    };
    let dir = source.resolve(audit.dir.get_ref());
    match export::export_once(&dir, &s3, &e.prefix, e.object_lock_days).await {
        Ok(r) => {
            println!(
                "exported {} segment(s) now, {} found already in the store, {} exported before, {} still open; {} checkpoint(s) uploaded",
                r.uploaded.len(),
                r.found.len(),
                r.already,
                r.open,
                r.checkpoints
            );
            for s in &r.uploaded {
                println!("uploaded {s}");
            }
            ExitCode::SUCCESS
        }
        Err(err) => fail(&err.to_string()),
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("portcullis audit: {msg}");
    ExitCode::FAILURE
}
