//! Certificate reload without restart: watch the directories of a
//! listener's certificate and key files (certbot renews by replacing the
//! `live/<domain>/*.pem` symlinks; an editor by rename), and after a quiet
//! moment re-read them. A bad new pair keeps the old certificates serving;
//! either outcome is reported to `on_outcome` (logged and audited by the
//! listener).

use super::{CertStore, TlsFileError};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Quiet time after the last event before the files are re-read: a renewal
/// replaces the chain and the key one after the other.
const DEBOUNCE: Duration = Duration::from_millis(250);

/// Stops the watch when dropped (the listener stopped).
pub struct WatchGuard {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watch `store`'s files; call `on_outcome` after every re-read that
/// changed something or failed. `None` when the platform cannot watch
/// (the certificates then change only with a restart; logged).
pub fn watch(store: Arc<CertStore>, on_outcome: impl Fn(Result<(), TlsFileError>) + Send + 'static) -> Option<WatchGuard> {
    use notify::{RecursiveMode, Watcher};
    let files = store.spec().files();
    let names: Vec<std::ffi::OsString> = files.iter().filter_map(|f| f.file_name().map(|n| n.to_os_string())).collect();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(e) = event
            && !matches!(e.kind, notify::EventKind::Access(_))
            && e.paths.iter().any(|p| p.file_name().is_some_and(|n| names.iter().any(|w| w == n)))
        {
            let _ = tx.send(());
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!("cannot watch the certificate files; renewed certificates apply at the next restart: {e}");
            return None;
        }
    };
    let mut dirs: Vec<PathBuf> = files.iter().filter_map(|f| f.parent().map(PathBuf::from)).collect();
    dirs.sort();
    dirs.dedup();
    for d in &dirs {
        if let Err(e) = watcher.watch(d, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %d.display(), "cannot watch a certificate directory: {e}");
        }
    }
    let task = tokio::spawn(async move {
        let _watcher = watcher; // lives as long as the task
        while rx.recv().await.is_some() {
            loop {
                match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            match store.reload() {
                Ok(true) => on_outcome(Ok(())),
                Ok(false) => {}
                Err(e) => on_outcome(Err(e)),
            }
        }
    });
    Some(WatchGuard { task })
}
