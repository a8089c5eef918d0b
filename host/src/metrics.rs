//! The gateway's own metrics, served as Prometheus text by the admin
//! listener's `GET /metrics` (the `prometheus` crate: typed metrics in one
//! registry, its text encoder; no hand-written exposition).
//!
//! | metric | type | labels | moved by |
//! |---|---|---|---|
//! | `http_request_duration_seconds` | histogram | `route`, `method`, `status_code` | every request, when its response body ended (head to end of body) |
//! | `http_requests_in_flight` | gauge | | requests whose response body has not ended |
//! | `portcullis_request_outcomes_total` | counter | `outcome` | `ok`, `client-abort`, `upstream-error` |
//! | `portcullis_gateway_errors_total` | counter | `error` | the gateway's own answers (problem type: `upstream-unreachable`, `policy-trap`, ...) |
//! | `portcullis_policy_verdicts_total` | counter | `policy`, `verdict` | each policy's verdict per request: `proceed`, `respond:<status>` (a 401, 429, 451 ...), `failed:<class>`, `skipped` |
//! | `portcullis_policy_failures_total` | counter | `policy`, `class` | `trap`, `deadline`, `memory-limit`, `contract`, `capacity` |
//! | `portcullis_upstream_in_flight` | gauge | `pool`, `target` | requests at each upstream target, read at scrape time |
//! | `portcullis_upstream_retries_total` | counter | `pool`, `outcome` (`retried`, `budget-exhausted`) | an idempotent request whose connection failed, sent again to another target, or not because the pool's retry budget was spent |
//! | `portcullis_reloads_total` | counter | `result` (`ok`, `rejected`) | reloads, read from the reloader at scrape time |
//! | `portcullis_chain_info` | gauge | `version` | 1 for the chain serving now |
//! | `portcullis_rate_limit_decisions_total` | counter | `limit`, `source`, `outcome` | each `rate-acquire`: source `local`, `shared`, `local-fallback`; outcome `allowed`, `limited`, `unavailable` |
//! | `portcullis_rate_limit_redis_errors_total` | counter | | shared-limit calls Redis did not answer (error or timeout) |
//! | `portcullis_rate_limit_redis_up` | gauge | | 1 when the last shared-limit call reached Redis, 0 when not (absent without `[shared_limits]`), read at scrape time |
//! | `portcullis_rate_limit_keys` | gauge | `limit` | keys held by each limit's local store, read at scrape time |
//! | `portcullis_token_cache_lookups_total` | counter | `policy`, `result` (`hit`, `miss`) | each `host.verified-token-cached` of a policy with a cache (`crate::token_cache`) |
//! | `portcullis_token_cache_entries` | gauge | `policy` | entries in each policy's verified-token cache |
//! | `portcullis_policy_instances_kept` | gauge | | policy instances held from a request's `on-request` for its `on-response` (`runtime::Kept`), read at scrape time |
//! | `portcullis_collector_records_total` | counter | `outcome` (`appended`, `unauthorized`, `malformed`, `too-large`, `unsupported-media-type`, `method-not-allowed`, `unavailable`) | each request to the audit collector (`crate::audit::collector`) |
//! | `portcullis_connections_refused_total` | counter | `listener`, `reason` (`max-connections`) | connections refused before any request was read (no request, so no audit record) |
//!
//! The audit log's own counters (`portcullis_audit_*`: records written,
//! fsynced, dropped) are appended by the admin listener from `crate::audit`.
//!
//! Label values are bounded: routes and policies come from the config, an
//! unrecognised method is counted as `other`, statuses are three digits.
//!
//! One registry per process (`global()`): the gateway is one per process.

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use std::sync::{LazyLock, Mutex};

/// Request latency buckets, seconds: a gateway's answers are mostly sub-millisecond to seconds.
const BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Every metric of the gateway.
pub struct Metrics {
    registry: Registry,
    /// `http_request_duration_seconds{route,method,status_code}`.
    pub request_duration: HistogramVec,
    /// `http_requests_in_flight`.
    pub in_flight: IntGauge,
    /// `portcullis_request_outcomes_total{outcome}`.
    pub outcomes: IntCounterVec,
    /// `portcullis_gateway_errors_total{error}`.
    pub gateway_errors: IntCounterVec,
    /// `portcullis_policy_verdicts_total{policy,verdict}`.
    pub verdicts: IntCounterVec,
    /// `portcullis_policy_failures_total{policy,class}`.
    pub policy_failures: IntCounterVec,
    /// `portcullis_token_cache_lookups_total{policy,result}`.
    pub token_cache_lookups: IntCounterVec,
    /// `portcullis_token_cache_entries{policy}`.
    pub token_cache_entries: IntGaugeVec,
    upstream_in_flight: IntGaugeVec,
    /// `portcullis_upstream_retries_total{pool,outcome}`.
    pub upstream_retries: IntCounterVec,
    /// `portcullis_connections_refused_total{listener,reason}`.
    pub connections_refused: IntCounterVec,
    /// `portcullis_collector_records_total{outcome}`.
    pub collector_records: IntCounterVec,
    reloads: IntCounterVec,
    chain_info: IntGaugeVec,
    /// `portcullis_rate_limit_decisions_total{limit,source,outcome}`.
    pub rate_limit_decisions: IntCounterVec,
    /// `portcullis_rate_limit_redis_errors_total`.
    pub rate_limit_redis_errors: prometheus::IntCounter,
    rate_limit_redis_up: IntGaugeVec,
    rate_limit_keys: IntGaugeVec,
    policy_instances_kept: IntGaugeVec,
    /// Serialises scrapes (the scrape-time metrics are reset and refilled).
    scrape: Mutex<()>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn global() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("registered once");
            c
        };
        let request_duration = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "Requests by route, method and status: time from the request head to the end of the response body.").buckets(BUCKETS.to_vec()),
            &["route", "method", "status_code"],
        )
        .expect("valid metric");
        registry.register(Box::new(request_duration.clone())).expect("registered once");
        let in_flight = IntGauge::new("http_requests_in_flight", "Requests whose response body has not ended yet.").expect("valid metric");
        registry.register(Box::new(in_flight.clone())).expect("registered once");
        let upstream_in_flight = IntGaugeVec::new(Opts::new("portcullis_upstream_in_flight", "Requests at each upstream target now."), &["pool", "target"]).expect("valid metric");
        registry.register(Box::new(upstream_in_flight.clone())).expect("registered once");
        let chain_info = IntGaugeVec::new(Opts::new("portcullis_chain_info", "The version of the chain serving now (value 1)."), &["version"]).expect("valid metric");
        registry.register(Box::new(chain_info.clone())).expect("registered once");
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("registered once");
            g
        };
        let rate_limit_redis_errors = prometheus::IntCounter::new("portcullis_rate_limit_redis_errors_total", "Shared-limit calls Redis did not answer (error or timeout).").expect("valid metric");
        registry.register(Box::new(rate_limit_redis_errors.clone())).expect("registered once");
        let token_cache_entries = IntGaugeVec::new(Opts::new("portcullis_token_cache_entries", "Entries in each policy's verified-token cache."), &["policy"]).expect("valid metric");
        registry.register(Box::new(token_cache_entries.clone())).expect("registered once");
        Metrics {
            collector_records: counter(
                "portcullis_collector_records_total",
                "Requests to the audit collector by outcome: appended, unauthorized, malformed, too-large, unsupported-media-type, method-not-allowed, unavailable.",
                &["outcome"],
            ),
            connections_refused: counter(
                "portcullis_connections_refused_total",
                "Connections a listener refused before reading a request (reason max-connections: answered a fixed 503 and closed).",
                &["listener", "reason"],
            ),
            rate_limit_decisions: counter("portcullis_rate_limit_decisions_total", "Rate acquisitions by limit, source (local, shared, local-fallback) and outcome (allowed, limited, unavailable).", &["limit", "source", "outcome"]),
            rate_limit_redis_errors,
            rate_limit_redis_up: gauge("portcullis_rate_limit_redis_up", "1 when the last shared-limit call reached Redis, else 0.", &[]),
            rate_limit_keys: gauge("portcullis_rate_limit_keys", "Keys held by each limit's local store.", &["limit"]),
            policy_instances_kept: gauge(
                "portcullis_policy_instances_kept",
                "Policy instances held from a request's on-request for its on-response (at most half the instance pool).",
                &[],
            ),
            outcomes: counter("portcullis_request_outcomes_total", "Requests by how their response ended: ok, client-abort, upstream-error.", &["outcome"]),
            gateway_errors: counter("portcullis_gateway_errors_total", "Answers the gateway itself gave, by problem type.", &["error"]),
            verdicts: counter("portcullis_policy_verdicts_total", "Each policy's verdict per request: proceed, respond:<status>, failed:<class>, skipped.", &["policy", "verdict"]),
            policy_failures: counter("portcullis_policy_failures_total", "Policy calls that failed closed, by class: trap, deadline, memory-limit, contract, capacity.", &["policy", "class"]),
            upstream_retries: counter("portcullis_upstream_retries_total", "Requests sent again to another target after their connection failed (retried), or not because the retry budget was spent (budget-exhausted).", &["pool", "outcome"]),
            reloads: counter("portcullis_reloads_total", "Reloads by result.", &["result"]),
            token_cache_lookups: counter("portcullis_token_cache_lookups_total", "Verified-token cache lookups by policy and result: hit, miss.", &["policy", "result"]),
            token_cache_entries,
            request_duration,
            in_flight,
            upstream_in_flight,
            chain_info,
            registry,
            scrape: Mutex::new(()),
        }
    }

    /// Count one finished request: its latency, outcome, error and every policy's verdict.
    #[allow(clippy::too_many_arguments)]
    pub fn request_done(&self, route: Option<&str>, method: &str, status: u16, duration_us: u64, outcome: &str, error: Option<&str>, verdicts: &[(String, String)]) {
        let code = itoa3(status);
        let status_code = std::str::from_utf8(&code).unwrap_or("000");
        self.request_duration.with_label_values(&[route.unwrap_or(""), method_label(method), status_code]).observe(duration_us as f64 / 1e6);
        self.outcomes.with_label_values(&[outcome]).inc();
        if let Some(e) = error {
            self.gateway_errors.with_label_values(&[e]).inc();
        }
        for (policy, verdict) in verdicts {
            self.verdicts.with_label_values(&[policy.as_str(), verdict.as_str()]).inc();
            if let Some(class) = verdict.strip_prefix("failed:") {
                self.policy_failures.with_label_values(&[policy.as_str(), class]).inc();
            }
        }
    }

    /// The Prometheus text exposition. The scrape-time metrics (reloads,
    /// chain version, upstream targets) are refreshed from their sources first.
    pub fn render(&self, reloads_ok: u64, reloads_rejected: u64, snapshot: &crate::snapshot::Snapshot) -> String {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        for (result, total) in [("ok", reloads_ok), ("rejected", reloads_rejected)] {
            let c = self.reloads.with_label_values(&[result]);
            c.inc_by(total.saturating_sub(c.get()));
        }
        self.chain_info.reset();
        self.chain_info.with_label_values(&[snapshot.version.as_str()]).set(1);
        self.upstream_in_flight.reset();
        for pool in snapshot.pools.values() {
            for target in &pool.targets {
                self.upstream_in_flight.with_label_values(&[pool.name.as_str(), target.address.as_str()]).set(i64::from(target.in_flight()));
            }
        }
        let limits = snapshot.services.limits();
        self.rate_limit_redis_up.reset();
        if let Some(up) = limits.redis_up() {
            self.rate_limit_redis_up.with_label_values(&[] as &[&str]).set(i64::from(up));
        }
        self.rate_limit_keys.reset();
        for limit in limits.iter() {
            self.rate_limit_keys.with_label_values(&[limit.name.as_str()]).set(limit.keys() as i64);
        }
        self.policy_instances_kept.with_label_values(&[] as &[&str]).set(i64::from(snapshot.runtime.kept_now()));
        let mut out = Vec::with_capacity(8 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!("cannot encode metrics: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Methods as label values: the standard ones, everything else `other`
/// (a client chooses the method; labels must stay few).
fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => "other",
    }
}

/// A status as three ASCII digits, without allocating.
fn itoa3(status: u16) -> [u8; 3] {
    let s = status.min(999);
    [b'0' + (s / 100) as u8, b'0' + (s / 10 % 10) as u8, b'0' + (s % 10) as u8]
}

/// Counts a request in flight from its head until its response body ended.
/// `complete` takes over once the response is handed to hyper
/// ([`InFlight::hand_over`]); if the request is dropped before that (the
/// client went away while a policy ran), dropping the guard counts it out.
pub struct InFlight(bool);

impl InFlight {
    /// A request has arrived.
    pub fn start() -> InFlight {
        global().in_flight.inc();
        InFlight(true)
    }

    /// The response is built: its body's end (`complete`) counts it out.
    pub fn hand_over(mut self) {
        self.0 = false;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0 {
            global().in_flight.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_stay_bounded() {
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("BREW"), "other");
        assert_eq!(&itoa3(200), b"200");
        assert_eq!(&itoa3(5), b"005");
        assert_eq!(&itoa3(1234), b"999");
    }

    #[test]
    fn counts_a_request_and_its_verdicts() {
        let m = Metrics::new();
        let verdicts = vec![("router".to_string(), "proceed".to_string()), ("jwt".to_string(), "respond:401".to_string()), ("later".to_string(), "failed:trap".to_string())];
        m.request_done(Some("clinical"), "GET", 401, 1500, "ok", None, &verdicts);
        m.request_done(None, "BREW", 404, 200, "ok", Some("unknown-route"), &[]);
        assert_eq!(m.request_duration.with_label_values(&["clinical", "GET", "401"]).get_sample_count(), 1);
        assert_eq!(m.request_duration.with_label_values(&["", "other", "404"]).get_sample_count(), 1);
        assert_eq!(m.verdicts.with_label_values(&["jwt", "respond:401"]).get(), 1);
        assert_eq!(m.policy_failures.with_label_values(&["later", "trap"]).get(), 1);
        assert_eq!(m.gateway_errors.with_label_values(&["unknown-route"]).get(), 1);
        assert_eq!(m.outcomes.with_label_values(&["ok"]).get(), 2);
        let mut out = Vec::new();
        TextEncoder::new().encode(&m.registry.gather(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("http_request_duration_seconds_bucket{method=\"GET\",route=\"clinical\",status_code=\"401\",le=\"0.0025\"} 1"), "{text}");
    }
}
