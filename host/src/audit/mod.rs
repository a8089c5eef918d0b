//! The audit log.
//!
//! Two sinks share one record shape ([`Record`], never holding tokens,
//! cookies, bodies or query values):
//!
//! - the **evidence log** (`[audit] dir`): append-only segments of JSON lines,
//!   hash-chained, one RFC 9162 Merkle tree over the whole log, Ed25519-signed
//!   checkpoints, per-route durability (`async` / `durable` with group commit),
//!   `portcullis audit verify|prove|export`. See [`format`] for the layout,
//!   [`writer`] for how it is written, [`verify`] and [`export`];
//! - the **plain file** (`gateway.audit_log`): one JSON line per request,
//!   unchained; for development.

pub mod cli;
pub mod collector;
pub mod export;
pub mod format;
pub mod merkle;
pub mod verify;
pub mod writer;
mod config;
#[cfg(test)]
mod log_tests;

pub use collector::CollectorConfig;
pub use config::{AuditConfig, Durability, ExportConfig, validate};
pub use writer::{LogOptions, LogStats, LogWriter};

use crate::config::Source;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Records waiting for the plain file's writer; past this the request path
/// drops records and counts them rather than grow without bound.
const QUEUE: usize = 65_536;

/// One request's record. Never holds tokens, cookies, bodies or query values.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Record {
    /// RFC 3339 time the request head arrived.
    pub time: String,
    /// Request id (`x-request-id`).
    pub id: String,
    /// Version of the chain snapshot that decided it.
    pub chain: String,
    /// Listener name.
    pub listener: String,
    /// Client address (trusted-proxy aware).
    pub client_ip: String,
    /// Method.
    pub method: String,
    /// Host.
    pub host: String,
    /// Path without the query.
    pub path: String,
    /// Route chosen, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Status sent.
    pub status: u16,
    /// Who answered: `upstream`, `policy:<name>`, `gateway`.
    pub source: String,
    /// Each policy's verdict, in chain order.
    pub verdicts: Vec<(String, String)>,
    /// Fields policies added through `host.audit`, by policy.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub policies: BTreeMap<String, BTreeMap<String, String>>,
    /// `pool/host:port` of the upstream, if one was used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Region of the upstream pool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Why the gateway itself answered (problem type), if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Response body bytes.
    pub bytes_out: u64,
    /// Head to end of response body, µs.
    pub duration_us: u64,
    /// `ok`, `client-abort`, `upstream-error` ...; `pending` in a decision record.
    pub outcome: String,
    /// On `durable` routes: `decision` (written and fsynced before the
    /// response head is released) or `complete` (after the body ended).
    /// Absent on `async` routes, which write one record at completion.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Where the request was decided when not on this node: `edge` for a
    /// record an edge node sent to the collector ([`collector`]). Absent on
    /// the node's own records, so their lines are unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// A line of the audit log: a request's record, or a gateway event (reload ...).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Line {
    /// One request.
    Request(Box<Record>),
    /// Something the gateway did (`{"event": "reload", ...}`).
    Event(serde_json::Value),
}

/// Where records go.
#[derive(Clone)]
pub struct AuditSink {
    inner: Arc<Sink>,
}

enum Sink {
    Disabled,
    File { tx: mpsc::Sender<FileMessage>, path: PathBuf },
    Log { writer: Arc<LogWriter>, default: Durability },
}

impl AuditSink {
    /// A sink that appends plain JSON lines to `path`, creating it and its directory.
    pub async fn open(path: PathBuf) -> std::io::Result<AuditSink> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let thread_path = path.clone();
        std::thread::Builder::new().name("audit-file".into()).spawn(move || write_loop(file, rx, thread_path))?;
        Ok(AuditSink { inner: Arc::new(Sink::File { tx, path }) })
    }

    /// The evidence log in `opts.dir` (recovered if it exists); `default`
    /// is the durability of requests that matched no route.
    pub async fn open_log(opts: LogOptions, default: Durability) -> std::io::Result<AuditSink> {
        let writer = tokio::task::spawn_blocking(move || LogWriter::open(opts)).await.map_err(std::io::Error::other)??;
        Ok(AuditSink { inner: Arc::new(Sink::Log { writer, default }) })
    }

    /// A sink that only logs at debug level (no audit log configured).
    pub fn disabled() -> AuditSink {
        AuditSink { inner: Arc::new(Sink::Disabled) }
    }

    /// Durability of requests that matched no route (`[audit] mode`).
    pub fn default_durability(&self) -> Durability {
        match &*self.inner {
            Sink::Log { default, .. } => *default,
            _ => Durability::Async,
        }
    }

    /// Whether `durable` can be honoured (an evidence log is open).
    pub fn is_evidence_log(&self) -> bool {
        matches!(&*self.inner, Sink::Log { .. })
    }

    /// The evidence log's counters, if one is open.
    pub fn log_stats(&self) -> Option<&LogStats> {
        match &*self.inner {
            Sink::Log { writer, .. } => Some(writer.stats()),
            _ => None,
        }
    }

    /// Queue a request's record (`async`); never waits.
    pub fn write(&self, record: Record) {
        self.send(Line::Request(Box::new(record)));
    }

    /// Append a record to the evidence log, honouring `durability`: `Ok`
    /// once it is queued (`async`) or fsynced (`durable`). Unlike
    /// [`AuditSink::write`] it says when the record did not make it (queue
    /// full, writer stopped, no evidence log), so a caller that answers for
    /// the record (the collector) can refuse instead of losing it silently.
    pub async fn append(&self, record: Record, durability: Durability) -> Result<(), String> {
        let Sink::Log { writer, .. } = &*self.inner else {
            return Err("no evidence log is open".into());
        };
        let body = serde_json::to_vec(&Line::Request(Box::new(record))).map_err(|e| e.to_string())?;
        match durability {
            Durability::Async => writer.append(body).then_some(()).ok_or_else(|| "the audit queue is full or closed".into()),
            Durability::Durable => match writer.append_durable(body).await {
                Ok(r) => r.map(drop),
                Err(_) => Err("the audit writer stopped".into()),
            },
        }
    }

    /// Write a request's record and return its seq once it is fsynced
    /// (`durable`). Without an evidence log it is queued like [`AuditSink::write`].
    pub async fn write_durable(&self, record: Record) -> Result<Option<u64>, String> {
        match &*self.inner {
            Sink::Log { writer, .. } => {
                let body = serde_json::to_vec(&Line::Request(Box::new(record))).map_err(|e| e.to_string())?;
                match writer.append_durable(body).await {
                    Ok(r) => r.map(Some),
                    Err(_) => Err("the audit writer stopped".into()),
                }
            }
            _ => {
                self.write(record);
                Ok(None)
            }
        }
    }

    /// Queue a gateway event (with a `time` added); never waits.
    pub fn write_event(&self, mut event: serde_json::Value) {
        if let Some(map) = event.as_object_mut() {
            map.insert("time".into(), rfc3339(std::time::SystemTime::now()).into());
        }
        self.send(Line::Event(event));
    }

    fn send(&self, line: Line) {
        match &*self.inner {
            Sink::Disabled => {
                tracing::debug!(target: "audit", "audit line (no audit log configured): {}", serde_json::to_string(&line).unwrap_or_default());
            }
            Sink::File { tx, .. } => {
                if tx.try_send(FileMessage::Line(line)).is_err() {
                    tracing::error!(target: "audit", "audit queue full or closed: record dropped");
                }
            }
            Sink::Log { writer, .. } => match serde_json::to_vec(&line) {
                Ok(body) => {
                    if !writer.append(body) {
                        tracing::error!(target: "audit", "audit queue full or closed: record dropped (counted in the log)");
                    }
                }
                Err(e) => tracing::error!(target: "audit", "audit record not serializable: {e}"),
            },
        }
    }

    /// Whether records can reach the disk (`/readyz`): `Err` says why not.
    /// The plain file must still be there (a deleted file would swallow
    /// records) and open for appending; the evidence log's directory must
    /// take a new file. No audit log configured: nothing to check.
    pub fn check_writable(&self) -> Result<(), String> {
        match &*self.inner {
            Sink::Disabled => Ok(()),
            Sink::File { tx, path } => {
                if tx.is_closed() {
                    return Err("the audit writer stopped".into());
                }
                std::fs::OpenOptions::new().append(true).open(path).map(drop).map_err(|e| format!("audit log {} is not writable: {e}", path.display()))
            }
            Sink::Log { writer, .. } => writer.check_writable(),
        }
    }

    /// At shutdown: write what is queued, seal the evidence log with a
    /// signed checkpoint, and fsync (the plain file too: every line queued
    /// before the call is written and on disk when it returns).
    pub async fn close(&self) {
        match &*self.inner {
            Sink::Log { writer, .. } => {
                let writer = writer.clone();
                let _ = tokio::task::spawn_blocking(move || writer.close()).await;
            }
            Sink::File { tx, path } => {
                let (done, synced) = tokio::sync::oneshot::channel();
                // Behind every line already queued; waits for room if the queue is full.
                if tx.send(FileMessage::Sync(done)).await.is_err() || synced.await.is_err() {
                    tracing::error!(target: "audit", path = %path.display(), "the audit writer stopped before the log could be synced");
                }
            }
            Sink::Disabled => {}
        }
    }
}

/// How `[audit]` asks for the log to be kept (the key read from its file).
pub fn log_options(source: &Source, a: &AuditConfig) -> Result<LogOptions, String> {
    let key = format::read_signing_key(&source.resolve(a.signing_key_file.get_ref())).map_err(|e| format!("audit.signing_key_file: {e}"))?;
    Ok(LogOptions {
        dir: source.resolve(a.dir.get_ref()),
        segment_max_bytes: a.segment_max_bytes.0,
        segment_max_age: Duration::from_millis(a.segment_max_age_ms.max(1)),
        checkpoint_interval: Duration::from_millis(a.checkpoint_interval_ms.max(1)),
        async_flush: Duration::from_millis(a.async_flush_ms.max(1)),
        key,
    })
}

/// The sink `serve` writes to: the evidence log when `[audit]` is
/// configured (starting its background exporter when `[audit.export]` has
/// an interval), else the plain file `gateway.audit_log`, else none.
pub async fn open_configured(source: &Source, plain: Option<PathBuf>) -> anyhow::Result<AuditSink> {
    let config = crate::config::parse(source)?;
    let Some(a) = &config.audit else {
        return match plain {
            Some(path) => AuditSink::open(path.clone()).await.map_err(|e| anyhow::anyhow!("audit log {}: {e}", path.display())),
            None => Ok(AuditSink::disabled()),
        };
    };
    let opts = log_options(source, a).map_err(|e| anyhow::anyhow!("{}: {e}", source.file.display()))?;
    let dir = opts.dir.clone();
    let sink = AuditSink::open_log(opts, a.mode).await.map_err(|e| anyhow::anyhow!("audit log {}: {e}", dir.display()))?;
    if let Some(e) = &a.export
        && e.interval_ms > 0
    {
        let s3 = export::S3::from_config(e, |p| source.resolve(p)).map_err(|why| anyhow::anyhow!("{}: audit.export: {why}", source.file.display()))?;
        export::spawn_background(dir, s3, e.prefix.clone(), e.object_lock_days, Duration::from_millis(e.interval_ms));
    }
    Ok(sink)
}

/// Prometheus text of the evidence log's counters (admin `/metrics`).
pub fn metrics(stats: &LogStats) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let rows = [
        ("portcullis_audit_records_total", "lines appended (records, events, checkpoints)", stats.records.load(Relaxed)),
        ("portcullis_audit_durable_records_total", "records acknowledged after their fsync", stats.durable_records.load(Relaxed)),
        ("portcullis_audit_commit_fsyncs_total", "fsyncs that acknowledged durable records (group commits)", stats.commit_fsyncs.load(Relaxed)),
        ("portcullis_audit_fsyncs_total", "every fsync of a segment", stats.fsyncs.load(Relaxed)),
        ("portcullis_audit_batches_total", "writes (one per batch)", stats.batches.load(Relaxed)),
        ("portcullis_audit_checkpoints_total", "signed checkpoints", stats.checkpoints.load(Relaxed)),
        ("portcullis_audit_segments_total", "segments opened by this process", stats.segments.load(Relaxed)),
        ("portcullis_audit_dropped_total", "async records lost (queue full, failed write)", stats.dropped.load(Relaxed)),
        ("portcullis_audit_write_errors_total", "failed writes or fsyncs", stats.write_errors.load(Relaxed)),
    ];
    let mut out = String::new();
    for (name, help, v) in rows {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"));
    }
    out
}

/// What the plain file's writer task receives.
enum FileMessage {
    /// A line to append.
    Line(Line),
    /// Flush and fsync everything before it, then answer (shutdown).
    Sync(tokio::sync::oneshot::Sender<()>),
}

/// How long the plain log's writer lets records gather after a write. Its
/// own thread writes each batch with one `write` (a `tokio::fs` write per
/// record cost a round trip through tokio's blocking pool, ~4 futex calls
/// per request); while it sleeps, queuing a record wakes nobody. So a
/// record reaches the file within about this long; the evidence log
/// (`[audit]`) is the one with an fsync bound.
const FILE_BATCH: Duration = Duration::from_millis(10);

fn write_loop(file: std::fs::File, mut rx: mpsc::Receiver<FileMessage>, path: PathBuf) {
    use std::io::Write;
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, file);
    let mut line = Vec::with_capacity(1024);
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        let mut syncs = Vec::new();
        // Write everything queued, then flush once: one write per batch.
        while let Some(message) = next {
            match message {
                FileMessage::Line(record) => {
                    line.clear();
                    if serde_json::to_writer(&mut line, &record).is_ok() {
                        line.push(b'\n');
                        if let Err(e) = out.write_all(&line) {
                            tracing::error!(target: "audit", path = %path.display(), "cannot write audit record: {e}");
                        }
                    }
                }
                FileMessage::Sync(done) => syncs.push(done),
            }
            next = rx.try_recv().ok();
        }
        if let Err(e) = out.flush() {
            tracing::error!(target: "audit", path = %path.display(), "cannot flush audit log: {e}");
        }
        if syncs.is_empty() {
            std::thread::sleep(FILE_BATCH);
            continue;
        }
        if let Err(e) = out.get_ref().sync_all() {
            tracing::error!(target: "audit", path = %path.display(), "cannot fsync audit log: {e}");
        }
        for done in syncs {
            let _ = done.send(());
        }
    }
}

/// RFC 3339 UTC time with milliseconds, without a date-time crate.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::rfc3339;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn formats_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_millis(1_796_040_000_123)), "2026-11-30T12:00:00.123Z");
    }
}
