//! The minimal audit sink: one JSON line per request, appended by a single
//! writer task so request tasks never wait on the disk. (The audit issue turns
//! this into hash-chained, signed evidence; the record's shape stays.)

use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Records waiting for the writer; past this the request path drops records
/// and counts them rather than grow without bound.
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
    /// `ok`, `client-abort`, `upstream-error` ...
    pub outcome: String,
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
    tx: Option<mpsc::Sender<Line>>,
}

impl AuditSink {
    /// A sink that appends to `path`, creating it and its directory.
    pub async fn open(path: PathBuf) -> std::io::Result<AuditSink> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await?;
        }
        let file = tokio::fs::OpenOptions::new().create(true).append(true).open(&path).await?;
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_loop(file, rx, path));
        Ok(AuditSink { tx: Some(tx) })
    }

    /// A sink that only logs at debug level (no `audit_log` configured).
    pub fn disabled() -> AuditSink {
        AuditSink { tx: None }
    }

    /// Queue a request's record; never waits.
    pub fn write(&self, record: Record) {
        self.send(Line::Request(Box::new(record)));
    }

    /// Queue a gateway event (with a `time` added); never waits.
    pub fn write_event(&self, mut event: serde_json::Value) {
        if let Some(map) = event.as_object_mut() {
            map.insert("time".into(), rfc3339(std::time::SystemTime::now()).into());
        }
        self.send(Line::Event(event));
    }

    fn send(&self, line: Line) {
        let Some(tx) = &self.tx else {
            tracing::debug!(target: "audit", "audit line (no audit_log configured): {}", serde_json::to_string(&line).unwrap_or_default());
            return;
        };
        if tx.try_send(line).is_err() {
            tracing::error!(target: "audit", "audit queue full or closed: record dropped");
        }
    }
}

async fn write_loop(file: tokio::fs::File, mut rx: mpsc::Receiver<Line>, path: PathBuf) {
    let mut out = tokio::io::BufWriter::with_capacity(64 * 1024, file);
    let mut line = Vec::with_capacity(1024);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        // Write everything queued, then flush once: one write per burst.
        while let Some(record) = next {
            line.clear();
            if serde_json::to_writer(&mut line, &record).is_ok() {
                line.push(b'\n');
                if let Err(e) = out.write_all(&line).await {
                    tracing::error!(target: "audit", path = %path.display(), "cannot write audit record: {e}");
                }
            }
            next = rx.try_recv().ok();
        }
        if let Err(e) = out.flush().await {
            tracing::error!(target: "audit", path = %path.display(), "cannot flush audit log: {e}");
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
