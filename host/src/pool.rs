//! Upstream pools: targets, balancing, passive and active health.
//!
//! A target is left out while it is *ejected* (passive: it failed
//! `max_failures` times in a row; it comes back after `eject_ms`) or *down*
//! (active: `unhealthy_after` failed probes; up after `healthy_after` good
//! ones). Each pool has its own hyper client, so its timeouts are its own and
//! connections to its targets are pooled and reused.

use crate::body::ProxyBody;
use crate::config::{self, Balance, Source};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// The client of a pool: plain HTTP, or TLS when the pool has `[pools.tls]`.
/// Host names are resolved by the system resolver on every new connection
/// (never cached here), so a container redeployed under the same name is
/// found at its new address.
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, ProxyBody>;

/// One upstream server.
#[derive(Debug)]
pub struct Target {
    /// `host:port`.
    pub address: String,
    in_flight: AtomicU32,
    consecutive_failures: AtomicU32,
    ejected_until_ms: AtomicU64,
    down: AtomicBool,
    probe_failures: AtomicU32,
    probe_successes: AtomicU32,
}

impl Target {
    fn new(address: String) -> Target {
        Target {
            address,
            in_flight: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            down: AtomicBool::new(false),
            probe_failures: AtomicU32::new(0),
            probe_successes: AtomicU32::new(0),
        }
    }

    fn available(&self, now_ms: u64) -> bool {
        !self.down.load(Ordering::Relaxed) && self.ejected_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    /// Requests to this target not yet answered.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// A group of interchangeable targets in one region.
pub struct Pool {
    /// Name routes use.
    pub name: String,
    /// Region of every target in the pool.
    pub region: Option<String>,
    /// The servers.
    pub targets: Vec<Arc<Target>>,
    balance: Balance,
    next: AtomicUsize,
    passive: config::Passive,
    health: Option<config::HealthCheck>,
    /// Budget for the upstream's response head.
    pub response_timeout: Duration,
    /// The pool's HTTP client (keep-alive connections per target).
    pub client: UpstreamClient,
    /// `https` when the pool speaks TLS to its targets, else `http`.
    pub scheme: &'static str,
    /// Retries: how many, and the budget they come from.
    pub retries: RetryBudget,
    /// Digest of the TLS files the client was built from (`None`: plain HTTP).
    pub tls_digest: Option<String>,
    /// The configuration it was built from (a reload reuses an unchanged pool).
    pub config: config::Pool,
    health_started: AtomicBool,
}

/// Milliseconds since the process started; the clock ejections are kept in.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

impl Pool {
    /// A pool from its configuration; fails only when its TLS files cannot be used.
    pub fn new(cfg: &config::Pool, source: &Source) -> Result<Pool, crate::tls::TlsFileError> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_millis(cfg.connect_timeout_ms)));
        connector.set_nodelay(true);
        connector.enforce_http(false);
        let (tls, scheme) = match &cfg.tls {
            Some(t) => (Some(crate::tls::upstream::build(source, t)?), "https"),
            None => (None, "http"),
        };
        let connector = match tls {
            Some(tls) => {
                let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls.config).https_only();
                match tls.server_name {
                    Some(name) => builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name)).enable_http1().wrap_connector(connector),
                    None => builder.enable_http1().wrap_connector(connector),
                }
            }
            // A plain pool never starts TLS: an `https://` URI cannot occur (the scheme is the pool's).
            None => hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(rustls::ClientConfig::builder_with_provider(crate::tls::provider()).with_safe_default_protocol_versions().expect("ring supports TLS 1.2/1.3").with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth())
                .https_or_http()
                .enable_http1()
                .wrap_connector(connector),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_millis(cfg.idle_timeout_ms))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Ok(Pool {
            name: cfg.name.get_ref().clone(),
            region: cfg.region.as_ref().map(|r| r.get_ref().clone()),
            targets: cfg.targets.iter().map(|t| Arc::new(Target::new(t.get_ref().clone()))).collect(),
            balance: cfg.balance,
            next: AtomicUsize::new(0),
            passive: cfg.passive.clone(),
            health: cfg.health.clone(),
            response_timeout: Duration::from_millis(cfg.response_timeout_ms),
            client,
            scheme,
            retries: RetryBudget::new(&cfg.retries),
            tls_digest: cfg.tls.as_ref().map(|t| crate::tls::upstream::digest(source, t)),
            config: cfg.clone(),
            health_started: AtomicBool::new(false),
        })
    }

    /// Pick an available target other than those in `tried` (a retry goes elsewhere).
    pub fn pick_except(&self, tried: &[Arc<Target>]) -> Option<Lease> {
        let now = now_ms();
        let n = self.targets.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let chosen = (0..n).map(|i| &self.targets[(start + i) % n]).filter(|t| t.available(now) && !tried.iter().any(|x| Arc::ptr_eq(x, t))).min_by_key(|t| match self.balance {
            Balance::RoundRobin => 0,
            Balance::LeastConnections => t.in_flight(),
        })?;
        chosen.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Lease { target: chosen.clone() })
    }

    /// Pick an available target, or `None` when every target is ejected or down.
    pub fn pick(&self) -> Option<Lease> {
        let now = now_ms();
        let n = self.targets.len();
        let chosen = match self.balance {
            Balance::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|i| &self.targets[(start + i) % n]).find(|t| t.available(now))
            }
            Balance::LeastConnections => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                // Ties go round robin so equal targets share the load.
                (0..n).map(|i| &self.targets[(start + i) % n]).filter(|t| t.available(now)).min_by_key(|t| t.in_flight())
            }
        }?;
        chosen.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Lease { target: chosen.clone() })
    }

    /// Record the outcome of an exchange with a target (passive health).
    pub fn report(&self, target: &Target, ok: bool) {
        if ok {
            target.consecutive_failures.store(0, Ordering::Relaxed);
            return;
        }
        let failures = target.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.passive.max_failures {
            target.ejected_until_ms.store(now_ms() + self.passive.eject_ms, Ordering::Relaxed);
            target.consecutive_failures.store(0, Ordering::Relaxed);
            tracing::warn!(pool = %self.name, target = %target.address, failures, eject_ms = self.passive.eject_ms, "target ejected");
        }
    }

    /// Start the active health checks of this pool; they stop when the pool is dropped.
    pub fn spawn_health_checks(self: &Arc<Self>) {
        let Some(check) = self.health.clone() else { return };
        if self.health_started.swap(true, Ordering::SeqCst) {
            return; // a pool kept across a reload is already being checked
        }
        let weak: Weak<Pool> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_millis(check.interval_ms));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let Some(pool) = weak.upgrade() else { return };
                for target in pool.targets.clone() {
                    let ok = probe(&pool, &target, &check).await;
                    pool.record_probe(&target, ok, &check);
                }
            }
        });
    }

    fn record_probe(&self, target: &Target, ok: bool, check: &config::HealthCheck) {
        if ok {
            target.probe_failures.store(0, Ordering::Relaxed);
            let good = target.probe_successes.fetch_add(1, Ordering::Relaxed) + 1;
            if good >= check.healthy_after && target.down.swap(false, Ordering::Relaxed) {
                tracing::info!(pool = %self.name, target = %target.address, "target up (active health check)");
            }
        } else {
            target.probe_successes.store(0, Ordering::Relaxed);
            let bad = target.probe_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if bad >= check.unhealthy_after && !target.down.swap(true, Ordering::Relaxed) {
                tracing::warn!(pool = %self.name, target = %target.address, "target down (active health check)");
            }
        }
    }
}

async fn probe(pool: &Pool, target: &Target, check: &config::HealthCheck) -> bool {
    let Ok(req) = http::Request::get(format!("{}://{}{}", pool.scheme, target.address, check.path))
        .header(http::header::USER_AGENT, "portcullis-health")
        .body(Empty::<Bytes>::new().map_err(|e| match e {}).boxed())
    else {
        return false;
    };
    let answer = tokio::time::timeout(Duration::from_millis(check.timeout_ms), async {
        let resp = pool.client.request(req).await.ok()?;
        let ok = resp.status().is_success();
        // Drain so the connection goes back to the pool.
        resp.into_body().collect().await.ok()?;
        Some(ok)
    });
    matches!(answer.await, Ok(Some(true)))
}

/// Retries of one pool and their budget: over a sliding window of 10
/// one-second slots, retries may be at most `budget_ratio` × requests
/// plus `min_per_second` × 10 (linkerd's retry budget, without its decay).
pub struct RetryBudget {
    /// Further tries of one request.
    pub attempts: u32,
    ratio: f64,
    min_per_window: u64,
    slots: Mutex<[(u64, u64, u64); WINDOW_SLOTS]>, // (second, requests, retries)
}

const WINDOW_SLOTS: usize = 10;

impl RetryBudget {
    fn new(cfg: &config::Retries) -> RetryBudget {
        RetryBudget { attempts: cfg.attempts, ratio: cfg.budget_ratio, min_per_window: u64::from(cfg.min_per_second) * WINDOW_SLOTS as u64, slots: Mutex::new([(0, 0, 0); WINDOW_SLOTS]) }
    }

    fn slot(slots: &mut [(u64, u64, u64); WINDOW_SLOTS], now_s: u64) -> &mut (u64, u64, u64) {
        let slot = &mut slots[(now_s % WINDOW_SLOTS as u64) as usize];
        if slot.0 != now_s {
            *slot = (now_s, 0, 0);
        }
        slot
    }

    /// Count a first try.
    pub fn request(&self) {
        self.request_at(now_ms() / 1000);
    }

    /// Take a retry from the budget; false when it is spent.
    pub fn try_retry(&self) -> bool {
        self.try_retry_at(now_ms() / 1000)
    }

    fn request_at(&self, now_s: u64) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        Self::slot(&mut slots, now_s).1 += 1;
    }

    fn try_retry_at(&self, now_s: u64) -> bool {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let live = |s: &(u64, u64, u64)| s.0 + WINDOW_SLOTS as u64 > now_s;
        let (requests, retries) = slots.iter().filter(|s| live(s)).fold((0u64, 0u64), |(a, b), s| (a + s.1, b + s.2));
        let allowed = self.min_per_window as f64 + self.ratio * requests as f64;
        if (retries as f64) < allowed {
            Self::slot(&mut slots, now_s).2 += 1;
            true
        } else {
            false
        }
    }
}

/// A target chosen for one request; counts as in flight until dropped.
pub struct Lease {
    /// The chosen target.
    pub target: Arc<Target>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.target.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(balance: &str, max_failures: u32) -> Pool {
        let cfg: config::Pool = toml::from_str(&format!(
            "name = \"p\"\ntargets = [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"]\nbalance = \"{balance}\"\npassive = {{ max_failures = {max_failures}, eject_ms = 60000 }}\n"
        ))
        .unwrap();
        Pool::new(&cfg, &Source::embedded_dev()).unwrap()
    }

    #[test]
    fn round_robin_visits_every_target_in_turn() {
        let p = pool("round-robin", 3);
        let picked: Vec<String> = (0..6).map(|_| p.pick().unwrap().target.address.clone()).collect();
        assert_eq!(picked[..3], picked[3..]);
        let mut first = picked[..3].to_vec();
        first.sort();
        assert_eq!(first, ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
    }

    #[test]
    fn least_connections_avoids_busy_targets() {
        let p = pool("least-connections", 3);
        let a = p.pick().unwrap();
        let b = p.pick().unwrap();
        assert_ne!(a.target.address, b.target.address);
        let c = p.pick().unwrap();
        let busy = [a.target.address.clone(), b.target.address.clone()];
        assert!(!busy.contains(&c.target.address), "the idle target is chosen while two are busy");
        drop(a);
        let d = p.pick().unwrap();
        assert_eq!(d.target.in_flight(), 1, "a freed target (in flight 0) is preferred");
    }

    #[test]
    fn passive_ejection_after_consecutive_failures() {
        let p = pool("round-robin", 2);
        let bad = p.targets[0].clone();
        p.report(&bad, false);
        assert!(bad.available(now_ms()), "one failure does not eject");
        p.report(&bad, true);
        p.report(&bad, false);
        assert!(bad.available(now_ms()), "a success resets the count");
        p.report(&bad, false);
        assert!(!bad.available(now_ms()), "two consecutive failures eject");
        for _ in 0..10 {
            assert_ne!(p.pick().unwrap().target.address, bad.address);
        }
    }

    #[test]
    fn retry_budget_is_a_share_of_requests_plus_a_floor() {
        let budget = RetryBudget::new(&config::Retries { attempts: 1, budget_ratio: 0.2, min_per_second: 1 });
        // Floor: 1/s over a 10 s window = 10 retries with no traffic at all.
        for _ in 0..10 {
            assert!(budget.try_retry_at(100));
        }
        assert!(!budget.try_retry_at(100), "the floor is spent");
        // 50 requests earn 10 more.
        for _ in 0..50 {
            budget.request_at(101);
        }
        for _ in 0..10 {
            assert!(budget.try_retry_at(101));
        }
        assert!(!budget.try_retry_at(101), "20% of 50 plus the floor, no more");
        // Once the window has moved past them, old retries no longer count.
        assert!(budget.try_retry_at(111));
    }

    #[test]
    fn a_retry_picks_another_target() {
        let p = pool("round-robin", 3);
        let first = p.pick().unwrap();
        let tried = vec![first.target.clone()];
        for _ in 0..6 {
            assert_ne!(p.pick_except(&tried).unwrap().target.address, first.target.address);
        }
        let all: Vec<_> = p.targets.clone();
        assert!(p.pick_except(&all).is_none(), "no target left to try");
    }
}
