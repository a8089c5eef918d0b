//! The evidence log's writer: one OS thread owns the files, the hash chain and
//! the Merkle frontier, so appends need no lock beyond the queue's.
//!
//! Request tasks serialize their record and push it on a queue (a mutex and a
//! condition variable). The thread takes **everything queued** as one batch,
//! chains and hashes it, writes it with one `write`, and — if any record in
//! the batch is `durable` — calls `fdatasync` once before acknowledging every
//! durable record of the batch. Requests that arrive while that fsync runs
//! form the next batch: that is the group commit (many concurrent durable
//! requests, one fsync). `async` records are written at once (to the page
//! cache) and fsynced within `async_flush` at the latest.
//!
//! Segments rotate when they reach `segment_max_bytes` (checked after each
//! batch) or `segment_max_age`; a rotation appends a sealing checkpoint, and a
//! checkpoint is also appended every `checkpoint_interval` while the log grows.
//! Opening an existing log recovers it: a torn last line (a crash mid-write)
//! is cut off and kept beside the segment as `<segment>.torn-<ms>`, a
//! `recovered` event records it, the last segment is sealed, and the chain
//! continues in a new segment.

use super::format::{self, Checkpoint, ZERO_HASH};
use super::merkle::{self, Frontier, Hash};
use super::rfc3339;
use ed25519_dalek::SigningKey;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::oneshot;

/// Async records waiting for the writer; past this they are dropped (and
/// the drop is itself recorded). Durable records are never dropped here:
/// they are bounded by the requests in flight.
const QUEUE: usize = 65_536;

/// How the log is kept.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// The directory of segments.
    pub dir: PathBuf,
    /// Rotate when a segment reaches this size.
    pub segment_max_bytes: u64,
    /// Rotate a non-empty segment this long after it was opened.
    pub segment_max_age: Duration,
    /// Checkpoint this often while the log grows.
    pub checkpoint_interval: Duration,
    /// Async records are fsynced within this bound.
    pub async_flush: Duration,
    /// Signs checkpoints.
    pub key: SigningKey,
}

/// Counters (exposed on the admin `/metrics`).
#[derive(Debug, Default)]
pub struct LogStats {
    /// Lines appended (records, events, checkpoints).
    pub records: AtomicU64,
    /// Records appended with `durable` acknowledgement.
    pub durable_records: AtomicU64,
    /// Batches written.
    pub batches: AtomicU64,
    /// fsyncs of segments that acknowledged durable records (group commits).
    pub commit_fsyncs: AtomicU64,
    /// Every fsync of a segment (commits, the async bound, checkpoints, rotations).
    pub fsyncs: AtomicU64,
    /// Checkpoints signed.
    pub checkpoints: AtomicU64,
    /// Segments opened.
    pub segments: AtomicU64,
    /// Async records lost (queue full, or a write that failed).
    pub dropped: AtomicU64,
    /// Writes or fsyncs that failed.
    pub write_errors: AtomicU64,
}

/// Why a durable record was not acknowledged.
pub type AckError = String;

struct Item {
    body: Vec<u8>,
    ack: Option<oneshot::Sender<Result<u64, AckError>>>,
}

#[derive(Default)]
struct Queue {
    items: Vec<Item>,
    closing: bool,
    closed: bool,
    abandon: bool,
    dropped: u64,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    stats: LogStats,
}

/// The running writer.
pub struct LogWriter {
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    dir: PathBuf,
}

impl LogWriter {
    /// Open (or create) the log in `opts.dir`, recover it, and start the writer thread.
    pub fn open(opts: LogOptions) -> std::io::Result<Arc<LogWriter>> {
        let dir = opts.dir.clone();
        let state = State::open(opts)?;
        let shared = Arc::new(Shared { queue: Mutex::new(Queue::default()), wake: Condvar::new(), stats: LogStats::default() });
        shared.stats.segments.store(1, Ordering::Relaxed);
        let s = shared.clone();
        let thread = std::thread::Builder::new().name("audit-writer".into()).spawn(move || run(state, &s))?;
        Ok(Arc::new(LogWriter { shared, thread: Mutex::new(Some(thread)), dir }))
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Append a serialized JSON object, fsynced within the async bound. Never
    /// waits; false when it was dropped (queue full or log closed).
    pub fn append(&self, body: Vec<u8>) -> bool {
        let mut q = self.shared.queue.lock().expect("audit queue");
        if q.closed || q.items.len() >= QUEUE {
            q.dropped += 1;
            self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let first = q.items.is_empty();
        q.items.push(Item { body, ack: None });
        drop(q);
        if first {
            self.shared.wake.notify_one();
        }
        true
    }

    /// Append and get its seq once it is on disk (fsynced). Err when the
    /// write or fsync failed or the log is closed: the caller must not
    /// release what the record describes.
    pub fn append_durable(&self, body: Vec<u8>) -> oneshot::Receiver<Result<u64, AckError>> {
        let (tx, rx) = oneshot::channel();
        let mut q = self.shared.queue.lock().expect("audit queue");
        if q.closed {
            let _ = tx.send(Err("the audit log is closed".into()));
            return rx;
        }
        q.items.push(Item { body, ack: Some(tx) });
        drop(q);
        self.shared.wake.notify_one();
        rx
    }

    /// Whether records can still reach the disk (readiness): the writer
    /// runs, and a file can be created in the log directory (not removed,
    /// not read-only, not full of inodes). Cheap enough for a probe every
    /// few seconds; the probe file is removed at once.
    pub fn check_writable(&self) -> Result<(), String> {
        if self.shared.queue.lock().expect("audit queue").closed {
            return Err("the audit log is closed".into());
        }
        if self.thread.lock().expect("writer handle").as_ref().is_none_or(|t| t.is_finished()) {
            return Err("the audit writer thread stopped".into());
        }
        let probe = self.dir.join(".readyz-probe");
        let written = std::fs::OpenOptions::new().create(true).write(true).truncate(true).open(&probe).and_then(|mut f| std::io::Write::write_all(&mut f, b"ok"));
        let _ = std::fs::remove_file(&probe);
        written.map_err(|e| format!("audit log directory {} is not writable: {e}", self.dir.display()))
    }

    /// Records waiting for the writer thread.
    pub fn queued(&self) -> usize {
        self.shared.queue.lock().expect("audit queue").items.len()
    }

    /// Counters.
    pub fn stats(&self) -> &LogStats {
        &self.shared.stats
    }

    /// Stop the thread at once, writing nothing more (what a crash leaves;
    /// for tests of recovery).
    pub fn abandon(&self) {
        {
            let mut q = self.shared.queue.lock().expect("audit queue");
            q.closing = true;
            q.abandon = true;
            q.closed = true;
        }
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.lock().expect("writer handle").take() {
            let _ = t.join();
        }
    }

    /// Write what is queued, seal the segment with a checkpoint, fsync, and
    /// stop the thread (blocks until done). Later appends are refused.
    pub fn close(&self) {
        {
            let mut q = self.shared.queue.lock().expect("audit queue");
            q.closing = true;
        }
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.lock().expect("writer handle").take() {
            let _ = t.join();
        }
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.close();
    }
}

fn run(mut st: State, shared: &Shared) {
    let mut batch: Vec<Item> = Vec::new();
    loop {
        let (closing, dropped) = {
            let mut q = shared.queue.lock().expect("audit queue");
            loop {
                if !q.items.is_empty() || q.closing {
                    break;
                }
                let now = Instant::now();
                match st.next_deadline() {
                    Some(d) if d <= now => break,
                    Some(d) => q = shared.wake.wait_timeout(q, d - now).expect("audit queue").0,
                    None => q = shared.wake.wait(q).expect("audit queue"),
                }
            }
            if q.abandon {
                return;
            }
            std::mem::swap(&mut batch, &mut q.items);
            let closing = q.closing && batch.is_empty();
            if closing {
                q.closed = true;
            }
            (closing, std::mem::take(&mut q.dropped))
        };
        if dropped > 0 {
            let event = serde_json::json!({"event": "dropped", "count": dropped, "reason": "audit queue full or a write failed", "time": rfc3339(SystemTime::now())});
            batch.insert(0, Item { body: serde_json::to_vec(&event).expect("json"), ack: None });
        }
        if !batch.is_empty() {
            st.append(&mut batch, &shared.stats);
        }
        st.timers(&shared.stats);
        if closing {
            if let Err(e) = st.seal_if_grown(&shared.stats) {
                tracing::error!(target: "audit", "cannot seal the audit log at shutdown: {e}");
            }
            return;
        }
    }
}

struct State {
    opts: LogOptions,
    key_id: String,
    file: File,
    seg_path: PathBuf,
    seg_first: u64,
    seg_bytes: u64,
    seg_opened: Instant,
    next_seq: u64,
    prev: Hash,
    frontier: Frontier,
    last_cp: Option<Checkpoint>,
    last_cp_at: Instant,
    unsynced_since: Option<Instant>,
    buf: Vec<u8>,
}

impl State {
    fn open(opts: LogOptions) -> std::io::Result<State> {
        std::fs::create_dir_all(opts.dir.join("keys"))?;
        let public = opts.key.verifying_key();
        let key_id = format::key_id(&public);
        let key_path = opts.dir.join("keys").join(format!("{key_id}.pub"));
        if !key_path.exists() {
            std::fs::write(&key_path, format::public_key_pem(&public))?;
        }
        let segments = format::list_segments(&opts.dir)?;
        let mut frontier = Frontier::default();
        let mut prev: Hash = [0; 32];
        let mut next_seq = 0u64;
        let mut last_cp = None;
        let mut recovered = None;
        let mut sealed = true;
        for (i, (_, path)) in segments.iter().enumerate() {
            let last = i + 1 == segments.len();
            let mut good_len = 0u64;
            let mut reader = std::io::BufReader::with_capacity(1 << 20, File::open(path)?);
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = reader.read_until(b'\n', &mut line)?;
                if n == 0 {
                    break;
                }
                let complete = line.last() == Some(&b'\n');
                let body = if complete { &line[..n - 1] } else { &line[..] };
                let head = serde_json::from_slice::<format::Head>(body).ok();
                if last && (!complete || head.is_none()) {
                    // A torn write: everything from here on is cut off.
                    break;
                }
                good_len += n as u64;
                frontier.push(merkle::leaf_hash(body));
                prev = format::line_hash(body);
                if let Some(h) = &head {
                    next_seq = h.seq + 1;
                    if h.event.as_deref() == Some("checkpoint")
                        && let Ok(cp) = serde_json::from_slice::<Checkpoint>(body)
                    {
                        last_cp = Some(cp);
                    }
                } else {
                    next_seq += 1;
                }
                if last {
                    sealed = format::is_seal(body);
                }
            }
            if last {
                let len = std::fs::metadata(path)?.len();
                if len > good_len {
                    let torn = std::fs::read(path)?[good_len as usize..].to_vec();
                    let ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis();
                    let keep = path.with_file_name(format!("{}.torn-{ms}", path.file_name().and_then(|n| n.to_str()).unwrap_or("segment")));
                    std::fs::write(&keep, &torn)?;
                    let f = OpenOptions::new().write(true).open(path)?;
                    f.set_len(good_len)?;
                    f.sync_all()?;
                    tracing::warn!(target: "audit", segment = %path.display(), bytes = torn.len(), kept = %keep.display(), "audit log: torn last record cut off (a crash mid-write)");
                    recovered = Some((path.clone(), good_len, torn.len(), keep));
                }
            }
        }
        if frontier.size() != next_seq {
            tracing::error!(target: "audit", "audit log: {} lines but the last seq is {}; run `portcullis audit verify`", frontier.size(), next_seq.saturating_sub(1));
        }
        let (seg_first, seg_path) = match segments.last() {
            Some((first, path)) => (*first, path.clone()),
            None => (0, opts.dir.join(format::segment_name(0))),
        };
        let file = OpenOptions::new().create(true).append(true).open(&seg_path)?;
        let seg_bytes = file.metadata()?.len();
        if segments.is_empty() {
            sync_dir(&opts.dir)?;
        }
        let now = Instant::now();
        let mut st = State {
            opts,
            key_id,
            file,
            seg_path,
            seg_first,
            seg_bytes,
            seg_opened: now,
            next_seq,
            prev,
            frontier,
            last_cp,
            last_cp_at: now,
            unsynced_since: None,
            buf: Vec::with_capacity(1 << 16),
        };
        let stats = LogStats::default();
        let err = |what: &str, e: std::io::Error| std::io::Error::new(e.kind(), format!("{what}: {e}"));
        if let Some((path, offset, bytes, kept)) = recovered {
            let event = serde_json::json!({
                "event": "recovered",
                "segment": path.file_name().and_then(|n| n.to_str()),
                "offset": offset,
                "truncated_bytes": bytes,
                "kept_as": kept.file_name().and_then(|n| n.to_str()),
                "time": rfc3339(SystemTime::now()),
            });
            st.write_lines(std::iter::once(serde_json::to_vec(&event).expect("json").as_slice()), false, &stats).map_err(|e| err("cannot record the recovery", e))?;
        }
        // Start every run in a fresh segment: the previous one is sealed
        // (if the last run could not), so exports never wait for it.
        if st.seg_bytes > 0 {
            if !sealed {
                st.checkpoint(true, &stats)?;
            }
            st.open_segment()?;
        }
        let event = serde_json::json!({"event": "start", "pid": std::process::id(), "version": env!("CARGO_PKG_VERSION"), "key": st.key_id, "time": rfc3339(SystemTime::now())});
        st.write_lines(std::iter::once(serde_json::to_vec(&event).expect("json").as_slice()), true, &stats).map_err(|e| err("cannot append to the audit log", e))?;
        Ok(st)
    }

    /// The next moment a timer needs the thread, if any.
    fn next_deadline(&self) -> Option<Instant> {
        let mut d: Option<Instant> = None;
        let mut at = |t: Instant| d = Some(d.map_or(t, |d| d.min(t)));
        if let Some(t) = self.unsynced_since {
            at(t + self.opts.async_flush);
        }
        if self.grown_since_checkpoint() {
            at(self.last_cp_at + self.opts.checkpoint_interval);
        }
        if self.next_seq > self.seg_first {
            at(self.seg_opened + self.opts.segment_max_age);
        }
        d
    }

    fn grown_since_checkpoint(&self) -> bool {
        match &self.last_cp {
            Some(cp) => self.next_seq > cp.tree_size + 1,
            None => self.next_seq > 0,
        }
    }

    /// Chain, hash and write lines with one `write`, then fsync if `sync`.
    /// On failure the file and the chain go back to before the batch.
    fn write_lines<'a>(&mut self, bodies: impl Iterator<Item = &'a [u8]>, sync: bool, stats: &LogStats) -> std::io::Result<u64> {
        let saved = (self.next_seq, self.prev, self.frontier.clone());
        let first = self.next_seq;
        self.buf.clear();
        for body in bodies {
            let start = self.buf.len();
            format::encode_line(&mut self.buf, self.next_seq, &self.prev, body);
            let line = &self.buf[start..];
            self.prev = format::line_hash(line);
            self.frontier.push(merkle::leaf_hash(line));
            self.buf.push(b'\n');
            self.next_seq += 1;
        }
        stats.batches.fetch_add(1, Ordering::Relaxed);
        match self.file.write_all(&self.buf).and_then(|()| if sync { self.file.sync_data() } else { Ok(()) }) {
            Ok(()) => {
                self.seg_bytes += self.buf.len() as u64;
                stats.records.fetch_add(self.next_seq - first, Ordering::Relaxed);
                if sync {
                    stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                    self.unsynced_since = None;
                } else {
                    self.unsynced_since.get_or_insert_with(Instant::now);
                }
                Ok(first)
            }
            Err(e) => {
                (self.next_seq, self.prev, self.frontier) = saved;
                let _ = self.file.set_len(self.seg_bytes);
                stats.write_errors.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Append a batch of queued items; one fsync if any of them is durable,
    /// then acknowledge each durable one with its seq.
    fn append(&mut self, items: &mut Vec<Item>, stats: &LogStats) {
        let durable = items.iter().any(|i| i.ack.is_some());
        match self.write_lines(items.iter().map(|i| i.body.as_slice()), durable, stats) {
            Ok(first) => {
                if durable {
                    stats.commit_fsyncs.fetch_add(1, Ordering::Relaxed);
                }
                for (i, item) in items.drain(..).enumerate() {
                    if let Some(ack) = item.ack {
                        stats.durable_records.fetch_add(1, Ordering::Relaxed);
                        let _ = ack.send(Ok(first + i as u64));
                    }
                }
                if self.seg_bytes >= self.opts.segment_max_bytes
                    && let Err(e) = self.rotate(stats)
                {
                    stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(target: "audit", segment = %self.seg_path.display(), "cannot rotate the audit log: {e}");
                }
            }
            Err(e) => {
                tracing::error!(target: "audit", segment = %self.seg_path.display(), records = items.len(), "cannot write the audit log: {e}");
                let why = format!("audit log write failed: {e}");
                let mut lost = 0;
                for item in items.drain(..) {
                    match item.ack {
                        Some(ack) => {
                            let _ = ack.send(Err(why.clone()));
                        }
                        None => lost += 1,
                    }
                }
                stats.dropped.fetch_add(lost, Ordering::Relaxed);
            }
        }
    }

    fn timers(&mut self, stats: &LogStats) {
        let now = Instant::now();
        if self.next_seq > self.seg_first && now >= self.seg_opened + self.opts.segment_max_age {
            if let Err(e) = self.rotate(stats) {
                stats.write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(target: "audit", "cannot rotate the audit log: {e}");
            }
            return;
        }
        if self.grown_since_checkpoint() && now >= self.last_cp_at + self.opts.checkpoint_interval {
            if let Err(e) = self.checkpoint(false, stats) {
                stats.write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(target: "audit", "cannot checkpoint the audit log: {e}");
            }
            return;
        }
        if let Some(t) = self.unsynced_since
            && now >= t + self.opts.async_flush
        {
            match self.file.sync_data() {
                Ok(()) => {
                    stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                    self.unsynced_since = None;
                }
                Err(e) => {
                    stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(target: "audit", "cannot fsync the audit log: {e}");
                }
            }
        }
    }

    /// Sign the tree of every line so far and append the checkpoint (fsynced).
    fn checkpoint(&mut self, sealed: bool, stats: &LogStats) -> std::io::Result<()> {
        let mut cp = Checkpoint {
            tree_size: self.next_seq,
            root: hex::encode(self.frontier.root()),
            prev_checkpoint: self.last_cp.as_ref().map_or_else(|| ZERO_HASH.to_string(), Checkpoint::hash),
            time: rfc3339(SystemTime::now()),
            key: self.key_id.clone(),
            sealed,
            signature: String::new(),
        };
        cp.sign(&self.opts.key);
        self.write_lines(std::iter::once(cp.line_body().as_slice()), true, stats)?;
        stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        let latest = self.opts.dir.join("checkpoint.latest");
        let tmp = self.opts.dir.join("checkpoint.latest.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(&cp).expect("json"))?;
        f.sync_all()?;
        std::fs::rename(&tmp, &latest)?;
        self.last_cp = Some(cp);
        self.last_cp_at = Instant::now();
        Ok(())
    }

    /// At close: seal the segment (a final checkpoint), or remove it if it is empty.
    fn seal_if_grown(&mut self, stats: &LogStats) -> std::io::Result<()> {
        if self.next_seq > self.seg_first {
            self.checkpoint(true, stats)
        } else {
            // Nothing since the last rotation: no empty segment left behind.
            std::fs::remove_file(&self.seg_path)?;
            sync_dir(&self.opts.dir)
        }
    }

    /// Seal this segment and open the next.
    fn rotate(&mut self, stats: &LogStats) -> std::io::Result<()> {
        self.checkpoint(true, stats)?;
        self.open_segment()?;
        stats.segments.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn open_segment(&mut self) -> std::io::Result<()> {
        let path = self.opts.dir.join(format::segment_name(self.next_seq));
        let file = OpenOptions::new().create_new(true).append(true).open(&path)?;
        sync_dir(&self.opts.dir)?;
        self.file = file;
        self.seg_path = path;
        self.seg_first = self.next_seq;
        self.seg_bytes = 0;
        self.seg_opened = Instant::now();
        self.unsynced_since = None;
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}
