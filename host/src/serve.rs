//! Start-up: configuration → runtime → snapshot → listeners. Used by
//! `portcullis serve`, `check` and `demo`.

use crate::config::{self, ConfigErrors, Source};
use crate::admin;
use crate::proxy::Gateway;
use crate::reload::Reloader;
use crate::runtime::{ComponentCache, Runtime, RuntimeLimits, Services};
use crate::snapshot::Snapshot;
use std::sync::Arc;
use std::time::Duration;

/// At shutdown, how long the completion records of finished requests may
/// take to be queued (their on-complete hooks run first).
const COMPLETION_WAIT: Duration = Duration::from_secs(2);

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is wrong (every problem listed).
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// Something outside the configuration failed.
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

/// Build the runtime and a checked snapshot from a configuration source.
pub async fn load(source: &Source) -> Result<Snapshot, StartError> {
    let config = config::parse(source)?;
    let cache_dir = std::env::var_os("PORTCULLIS_CACHE_DIR")
        .map(Into::into)
        .or_else(|| config.gateway.cache_dir.as_deref().map(|d| source.resolve(d)))
        .or_else(ComponentCache::default_dir);
    let limits = RuntimeLimits {
        deadline: Duration::from_millis(config.runtime.policy_deadline_ms.max(1)),
        memory_cap: config.runtime.policy_memory.0 as usize,
        max_instances: config.runtime.max_instances,
    };
    let runtime = Runtime::new(&limits, ComponentCache::new(cache_dir))?;
    let key = match &config.gateway.pseudonym_key_file {
        Some(path) => {
            let path = source.resolve(path);
            Some(std::fs::read(&path).map_err(|e| anyhow::anyhow!("{}: gateway.pseudonym_key_file: cannot read {}: {e}", source.file.display(), path.display()))?)
        }
        None => None,
    };
    let jwks = crate::jwks::JwksCache::load(source, &config.jwks, None)?;
    // The limits are host state built before the snapshot; if they cannot
    // be built the file is wrong: report it as `file:line:col` when the
    // checks can say where.
    let limits = match crate::ratelimit::Limits::build(&config, None) {
        Ok(limits) => limits,
        Err(e) => {
            config::validate(source, &config)?;
            return Err(e.into());
        }
    };
    Ok(Snapshot::build(source, runtime, Arc::new(Services::new(key).with_jwks(jwks).with_limits(limits)), None).await?)
}

/// Serve until SIGINT or SIGTERM. Prints one `listening <name> <addr>` line
/// per listener (and `admin <addr>`) on stdout once it accepts connections.
/// `reloadable`: the configuration is a file that reloads may re-read.
pub async fn serve(source: &Source, reloadable: bool) -> Result<(), StartError> {
    let snapshot = load(source).await?;
    let audit = crate::audit::open_configured(source, snapshot.audit_log.clone()).await?;
    let admin = snapshot.admin.clone();
    let admin_token = match admin.as_ref().and_then(|a| a.token_file.as_deref()) {
        Some(file) => {
            let path = source.resolve(file);
            let text = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: admin.token_file: cannot read {}: {e}", source.file.display(), path.display()))?;
            Some(text.trim().to_string()).filter(|t| !t.is_empty())
        }
        None => std::env::var("PORTCULLIS_ADMIN_TOKEN").ok().filter(|t| !t.is_empty()),
    };
    // Read once at start-up (a new token takes a restart), after the checks
    // that already refused a missing or short one.
    let collector = match config::parse(source)?.audit.and_then(|a| a.collector) {
        Some(c) => Some(Arc::new(crate::audit::collector::Collector::new(crate::audit::collector::load_token(source, &c).map_err(|e| ConfigErrors(vec![e]))?))),
        None => None,
    };
    snapshot.start();
    tracing::info!(version = %snapshot.version, routes = snapshot.routes.len(), policies = snapshot.policies.len(), "chain loaded");
    let gateway = Arc::new(Gateway { snapshot: arc_swap::ArcSwap::from_pointee(snapshot), audit });
    let reloader = Reloader::new(gateway.clone(), reloadable.then(|| source.file.clone()));
    // Watch before the listeners announce themselves: an edit made as soon
    // as the gateway is up is queued, not missed.
    let file_watch = reloader.watch_files();
    reloader.start_listeners().await.map_err(|e| anyhow::anyhow!("{}: {e}", source.file.display()))?;
    if let Some(admin) = admin {
        let address = admin.address.parse().map_err(|_| anyhow::anyhow!("{}: admin.address: expected ip:port, got {:?}", source.file.display(), admin.address))?;
        let bound = admin::start(reloader.clone(), address, admin_token, collector).await.map_err(anyhow::Error::from)?;
        println!("admin {bound}");
    }
    reloader.spawn_sighup();
    if let Some(w) = file_watch {
        w.spawn();
    }
    shutdown_signal().await;
    // Graceful: stop accepting, let requests in flight finish (a rolling
    // deploy loses none), then let their completion records reach the log.
    let grace = gateway.snapshot.load().shutdown_grace;
    tracing::info!(grace_ms = grace.as_millis() as u64, "shutting down: no new connections; finishing requests in flight");
    if reloader.shutdown(grace).await {
        tracing::info!("all connections finished");
    } else {
        tracing::warn!("grace period over with connections still open; exiting anyway");
    }
    // Completion records of the last requests are written by tasks spawned
    // as their bodies end: wait (bounded) until every request is counted
    // out — each is counted out after its record is queued — then seal the
    // audit log with a signed checkpoint and fsync it before exiting.
    let in_flight = &crate::metrics::global().in_flight;
    let deadline = tokio::time::Instant::now() + COMPLETION_WAIT;
    while in_flight.get() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if in_flight.get() > 0 {
        tracing::warn!(requests = in_flight.get(), "requests still unfinished at exit: their completion records are missing");
    }
    gateway.audit.close().await;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
