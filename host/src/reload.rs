//! Hot reload: read, validate, compile (or load from the cache), check and
//! smoke-test a new chain off the request path, then swap it in atomically.
//! Requests in flight finish on the snapshot they started with; a rejected
//! reload leaves the old chain serving and says exactly why.
//!
//! Triggers: a change under the watched files (debounced), SIGHUP, and
//! `POST /admin/reload`. Reloads are serialised.

use crate::config::Source;
use crate::proxy::{Gateway, listen};
use crate::runtime::bindings::types;
use crate::runtime::hooks;
use crate::snapshot::{ListenerSpec, Snapshot};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Quiet time after the last file event before a watch-triggered reload.
const DEBOUNCE: Duration = Duration::from_millis(250);

/// What started a reload (for logs and the audit record).
#[derive(Debug, Clone, Copy)]
pub enum Trigger {
    /// A watched file changed.
    Watch,
    /// SIGHUP.
    Signal,
    /// `POST /admin/reload`.
    Admin,
}

/// A reload that took effect.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Reloaded {
    /// The new chain version.
    pub version: String,
    /// The version it replaced.
    pub previous: String,
    /// Read + validate + load + check + smoke + swap, milliseconds.
    pub duration_ms: f64,
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct ReloadStats {
    /// Reloads that took effect.
    pub ok: AtomicU64,
    /// Reloads rejected.
    pub failed: AtomicU64,
}

struct Running {
    spec: ListenerSpec,
    task: JoinHandle<()>,
}

/// Owns the listeners and performs reloads.
pub struct Reloader {
    gateway: Arc<Gateway>,
    config_path: Option<PathBuf>,
    lock: tokio::sync::Mutex<HashMap<String, Running>>,
    /// Outcome counters.
    pub stats: ReloadStats,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Reloader {
    /// A reloader for `gateway`, whose configuration is read from `config_path`
    /// (`None`: the embedded demo configuration, which never changes).
    pub fn new(gateway: Arc<Gateway>, config_path: Option<PathBuf>) -> Arc<Reloader> {
        Arc::new(Reloader { gateway, config_path, lock: tokio::sync::Mutex::new(HashMap::new()), stats: ReloadStats::default(), stop: tokio::sync::watch::channel(false).0 })
    }

    /// The gateway this reloader swaps snapshots of.
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// Bind and start the listeners of the current snapshot (at start-up).
    pub async fn start_listeners(&self) -> std::io::Result<()> {
        let snap = self.gateway.snapshot.load_full();
        let mut running = self.lock.lock().await;
        self.apply_listeners(&snap, &mut running).await
    }

    /// Bind listeners new in `snap`, stop those it no longer has. An
    /// unchanged listener keeps its socket (and its connections).
    async fn apply_listeners(&self, snap: &Snapshot, running: &mut HashMap<String, Running>) -> std::io::Result<()> {
        let wanted: HashMap<&str, &ListenerSpec> = snap.listeners.iter().map(|l| (l.name.as_str(), l)).collect();
        // Stop removed or changed listeners first, so a changed one can rebind its address.
        let stale: Vec<String> = running.iter().filter(|(name, r)| wanted.get(name.as_str()).is_none_or(|w| !same_listener(w, &r.spec))).map(|(n, _)| n.clone()).collect();
        for name in stale {
            if let Some(r) = running.remove(&name) {
                r.task.abort(); // stops accepting; open connections finish on their own tasks
                tracing::info!(listener = %name, "listener stopped");
            }
        }
        let new: Vec<ListenerSpec> = snap.listeners.iter().filter(|l| !running.contains_key(&l.name)).cloned().collect();
        // Certificates are read before anything binds: a listener that cannot serve TLS does not start.
        // Errors name the key of the listener (`listeners[i]...`), as configuration errors do.
        let key = |name: &str| snap.listeners.iter().position(|l| l.name == name).map_or_else(|| format!("listener {name:?}"), |i| format!("listeners[{i}]"));
        let mut stores = HashMap::new();
        for spec in &new {
            if let Some(tls) = &spec.tls {
                let store = crate::tls::CertStore::load(tls).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}.tls: {e}", key(&spec.name))))?;
                stores.insert(spec.name.clone(), Arc::new(store));
            }
        }
        let bound = listen::bind(&new).await.map_err(|(name, e)| std::io::Error::new(e.kind(), format!("{}.address: {e}", key(&name))))?;
        for (spec, listener) in bound {
            let addr = listener.local_addr()?;
            println!("listening {} {addr}", spec.name);
            let tls = stores.remove(&spec.name);
            let task = tokio::spawn(listen::serve(self.gateway.clone(), spec.clone(), listener, tls, self.stop.subscribe()));
            running.insert(spec.name.clone(), Running { spec, task });
        }
        Ok(())
    }

    /// Graceful shutdown: stop accepting on every listener, let open
    /// connections finish their requests, and return when they have (true)
    /// or when `grace` runs out (false). No reload runs meanwhile.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        let mut running = self.lock.lock().await;
        let _ = self.stop.send(true);
        let tasks: Vec<JoinHandle<()>> = running.drain().map(|(_, r)| r.task).collect();
        let all = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        tokio::time::timeout(grace, all).await.is_ok()
    }

    /// Reload from the configuration file. On error the old chain keeps serving.
    pub async fn reload(&self, trigger: Trigger) -> Result<Reloaded, String> {
        let mut running = self.lock.lock().await;
        let started = Instant::now();
        let result = self.try_reload(&mut running, started).await;
        match &result {
            Ok(r) => {
                self.stats.ok.fetch_add(1, Ordering::Relaxed);
                tracing::info!(?trigger, version = %r.version, previous = %r.previous, duration_ms = r.duration_ms, "chain reloaded");
                self.gateway.audit.write_event(serde_json::json!({"event": "reload", "trigger": format!("{trigger:?}"), "result": "ok", "version": r.version, "previous": r.previous, "duration_ms": r.duration_ms}));
            }
            Err(why) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(?trigger, "reload rejected, the previous chain keeps serving:\n{why}");
                self.gateway.audit.write_event(serde_json::json!({"event": "reload", "trigger": format!("{trigger:?}"), "result": "rejected", "reason": why}));
            }
        }
        result
    }

    async fn try_reload(&self, running: &mut HashMap<String, Running>, started: Instant) -> Result<Reloaded, String> {
        let Some(path) = &self.config_path else {
            return Err("the embedded demo configuration cannot be reloaded; serve a file with --config".into());
        };
        let old = self.gateway.snapshot.load_full();
        let source = Source::read(path).map_err(|e| e.to_string())?;
        // Host state for the new snapshot: URL issuers whose entry is
        // unchanged keep their keys, limits whose definition is unchanged
        // keep their counts; it serves only if the whole reload succeeds.
        let parsed = crate::config::parse(&source).map_err(|e| e.to_string())?;
        let jwks = crate::jwks::JwksCache::load(&source, &parsed.jwks, Some(&old.services.jwks_cache())).map_err(|e| e.to_string())?;
        let limits = crate::ratelimit::Limits::build(&parsed, Some(old.services.limits())).map_err(|e| match crate::config::validate(&source, &parsed) {
            Err(errors) => errors.to_string(),
            Ok(()) => e.to_string(),
        })?;
        let services = Arc::new(old.services.successor(jwks, limits));
        let snap = Snapshot::build(&source, old.runtime.clone(), services, Some(&old)).await.map_err(|e| e.to_string())?;
        smoke(&snap).await?;
        if snap.runtime_config != old.runtime_config {
            tracing::warn!("[runtime] changed: its limits apply at the next restart");
        }
        if snap.audit_log != old.audit_log {
            tracing::warn!("gateway.audit_log changed: the new path applies at the next restart");
        }
        self.apply_listeners(&snap, running).await.map_err(|e| e.to_string())?;
        snap.start();
        let version = snap.version.clone();
        self.gateway.snapshot.store(Arc::new(snap));
        Ok(Reloaded { version, previous: old.version.clone(), duration_ms: started.elapsed().as_secs_f64() * 1e3 })
    }

    /// Reload on SIGHUP, forever.
    pub fn spawn_sighup(self: &Arc<Self>) {
        let this = self.clone();
        tokio::spawn(async move {
            let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
            while hup.recv().await.is_some() {
                let _ = this.reload(Trigger::Signal).await;
            }
        });
    }

    /// Start watching the files now (events are queued from here on), so
    /// that an edit made between start-up and the first reload loop is not
    /// lost; [`FileWatch::spawn`] then reloads on them, forever. Call it
    /// before the listeners announce themselves.
    pub fn watch_files(self: &Arc<Self>) -> Option<FileWatch> {
        if self.config_path.is_none() || !self.gateway.snapshot.load().watch {
            return None;
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
        // File names we care about, checked on notify's own thread, so that
        // other files in the same directories (the audit log, written on
        // every request) never wake the request runtime.
        let names = Arc::new(std::sync::Mutex::new(file_names(&self.gateway.snapshot.load().watch_paths)));
        let names_in_callback = names.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(e) = event
                && !matches!(e.kind, notify::EventKind::Access(_))
            {
                let wanted = names_in_callback.lock().unwrap_or_else(|p| p.into_inner());
                for p in e.paths {
                    if p.file_name().is_some_and(|n| wanted.iter().any(|w| w == n)) {
                        let _ = tx.send(p);
                    }
                }
            }
        });
        let mut watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!("cannot watch the configuration for changes: {e}");
                return None;
            }
        };
        let watched = watch_dirs(&mut watcher, &[], &self.gateway.snapshot.load().watch_paths);
        Some(FileWatch { reloader: self.clone(), watcher, watched, names, rx })
    }
}

/// Files being watched, their events queued until [`FileWatch::spawn`].
pub struct FileWatch {
    reloader: Arc<Reloader>,
    watcher: notify::RecommendedWatcher,
    watched: Vec<PathBuf>,
    names: Arc<std::sync::Mutex<Vec<std::ffi::OsString>>>,
    rx: tokio::sync::mpsc::UnboundedReceiver<PathBuf>,
}

impl FileWatch {
    /// Reload when a watched file changes (debounced), forever.
    pub fn spawn(self) {
        let FileWatch { reloader: this, mut watcher, mut watched, names, mut rx } = self;
        tokio::spawn(async move {
            loop {
                let files = this.gateway.snapshot.load().watch_paths.clone();
                *names.lock().unwrap_or_else(|p| p.into_inner()) = file_names(&files);
                watched = watch_dirs(&mut watcher, &watched, &files);
                // Wait for an event about one of our files, then for quiet.
                let relevant = |p: &PathBuf| files.iter().any(|f| same_file_name(f, p));
                loop {
                    match rx.recv().await {
                        None => return,
                        Some(p) if relevant(&p) => break,
                        Some(_) => {}
                    }
                }
                // Quiet means no event about our files (the audit log may sit in
                // the same directory and change on every request).
                let mut quiet_until = tokio::time::Instant::now() + DEBOUNCE;
                loop {
                    match tokio::time::timeout_at(quiet_until, rx.recv()).await {
                        Ok(Some(p)) if relevant(&p) => quiet_until = tokio::time::Instant::now() + DEBOUNCE,
                        Ok(Some(_)) => {}
                        Ok(None) => return,
                        Err(_) => break,
                    }
                }
                // `watch = false` in the current config turns watching off without a restart.
                if this.gateway.snapshot.load().watch {
                    let _ = this.reload(Trigger::Watch).await;
                }
            }
        });
    }
}

/// Watch the directories of `files` (editors replace files by rename, so
/// the directory is what sees it), unwatching those no longer needed.
fn watch_dirs(watcher: &mut notify::RecommendedWatcher, watched: &[PathBuf], files: &[PathBuf]) -> Vec<PathBuf> {
    use notify::{RecursiveMode, Watcher};
    let mut dirs: Vec<PathBuf> = files.iter().filter_map(|f| f.parent().map(|d| if d.as_os_str().is_empty() { PathBuf::from(".") } else { d.to_path_buf() })).collect();
    dirs.sort();
    dirs.dedup();
    if dirs != watched {
        for d in watched {
            let _ = watcher.unwatch(d);
        }
        for d in &dirs {
            if let Err(e) = watcher.watch(d, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %d.display(), "cannot watch: {e}");
            }
        }
    }
    dirs
}

fn file_names(files: &[PathBuf]) -> Vec<std::ffi::OsString> {
    files.iter().filter_map(|f| f.file_name().map(|n| n.to_os_string())).collect()
}

fn same_file_name(watched: &std::path::Path, event: &std::path::Path) -> bool {
    let canon = |p: &std::path::Path| std::fs::canonicalize(p).ok();
    watched.file_name() == event.file_name() && (canon(watched) == canon(event) || canon(watched).is_none() || canon(event).is_none())
}

fn same_listener(a: &ListenerSpec, b: &ListenerSpec) -> bool {
    a.name == b.name && a.address == b.address && a.limits == b.limits && a.proxy_protocol == b.proxy_protocol && a.tls == b.tls
}

/// Run the new chain's router on a synthetic request: a chain whose router
/// traps is never swapped in.
async fn smoke(snap: &Snapshot) -> Result<(), String> {
    let link = &snap.router;
    let p = &link.policy;
    let state = p.state("reload-smoke".into(), None, snap.services.clone());
    let head = types::RequestHead {
        id: "reload-smoke".into(),
        method: "GET".into(),
        scheme: "http".into(),
        authority: "smoke.invalid".into(),
        path: "/".into(),
        query: None,
        headers: vec![types::Header { name: "host".into(), value: b"smoke.invalid".to_vec() }],
        client_ip: "127.0.0.1".into(),
        listener: "reload".into(),
        route: None,
        facts: Vec::new(),
    };
    let (result, _) = hooks::on_request(&snap.runtime, &p.module, state, &head).await;
    result.map(|_| ()).map_err(|f| format!("smoke request through the new router failed: {f}"))
}
