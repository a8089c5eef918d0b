//! The gateway's configuration: what operators write in `policies/*.toml`.
//!
//! Loading is two steps, both before any request is served: [`parse`] turns
//! the text into typed structs (with the key path and line of any type error),
//! then [`validate`] checks what types cannot: references between pools,
//! routes and policies, addresses, sizes. Every error names the file, line,
//! key path and reason; all of them are reported at once.

mod size;
pub mod validate;

pub use size::ByteSize;
pub use validate::{valid_name, validate};

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// The configuration text embedded in the binary for `portcullis demo`.
pub const DEV_TOML: &str = include_str!("../../../policies/dev.toml");

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the error is in.
    pub file: PathBuf,
    /// 1-based line and column, when known.
    pub line_col: Option<(usize, usize)>,
    /// Dotted key path, e.g. `routes[2].pools[0]`.
    pub key: String,
    /// Why it is wrong.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, col)) = self.line_col {
            write!(f, ":{line}:{col}")?;
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.reason)
        } else {
            write!(f, ": {}: {}", self.key, self.reason)
        }
    }
}

/// All the problems found in one configuration, in file order.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A configuration file as written: the text (for line numbers) and its parse.
#[derive(Debug, Clone)]
pub struct Source {
    /// Where it was read from (`<embedded dev.toml>` for the demo).
    pub file: PathBuf,
    /// Directory relative paths in the file are resolved against.
    pub base_dir: PathBuf,
    /// The raw text.
    pub text: String,
}

impl Source {
    /// Read a configuration file.
    pub fn read(path: &Path) -> Result<Source, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line_col: None,
                key: String::new(),
                reason: format!("cannot read: {e}"),
            }])
        })?;
        let base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(Source { file: path.to_path_buf(), base_dir, text })
    }

    /// The embedded development configuration.
    pub fn embedded_dev() -> Source {
        Source {
            file: PathBuf::from("<embedded policies/dev.toml>"),
            base_dir: PathBuf::from("."),
            text: DEV_TOML.to_string(),
        }
    }

    /// 1-based line and column of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let upto = &self.text[..offset.min(self.text.len())];
        let line = upto.matches('\n').count() + 1;
        let col = upto.rfind('\n').map_or(upto.len(), |nl| upto.len() - nl - 1) + 1;
        (line, col)
    }

    /// An error at a spanned value.
    pub fn error_at<T>(&self, at: &Spanned<T>, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line_col: Some(self.line_col(at.span().start)),
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// An error with no position (e.g. something missing from the file).
    pub fn error(&self, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError { file: self.file.clone(), line_col: None, key: key.into(), reason: reason.into() }
    }

    /// Resolve a path written in the file.
    pub fn resolve(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        if p.is_absolute() { p.to_path_buf() } else { self.base_dir.join(p) }
    }
}

/// Parse the text into typed configuration (types and unknown keys only).
pub fn parse(source: &Source) -> Result<Config, ConfigErrors> {
    parse_as(source)
}

/// Parse any TOML file of the configuration (the gateway file, or one it
/// names, such as the residency regions file) into `T`, with the line,
/// column and key path of the first type error.
pub fn parse_as<T: serde::de::DeserializeOwned>(source: &Source) -> Result<T, ConfigErrors> {
    let de = toml::de::Deserializer::parse(&source.text).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: source.file.clone(),
            line_col: e.span().map(|s| source.line_col(s.start)),
            key: String::new(),
            reason: e.message().trim().to_string(),
        }])
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        ConfigErrors(vec![ConfigError {
            file: source.file.clone(),
            line_col: inner.span().map(|s| source.line_col(s.start)),
            key: if key == "." { String::new() } else { key },
            reason: inner.message().trim().to_string(),
        }])
    })
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Settings of the gateway process itself.
    #[serde(default)]
    pub gateway: Gateway,
    /// Limits applied to every policy instance.
    #[serde(default)]
    pub runtime: Runtime,
    /// Where clients connect.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Groups of upstream targets.
    #[serde(default)]
    pub pools: Vec<Pool>,
    /// The admin listener (reload, loaded policies, health); none when absent.
    #[serde(default)]
    pub admin: Option<Admin>,
    /// Policy components by name; the name is also the policy's fact namespace.
    #[serde(default)]
    pub policies: BTreeMap<String, PolicyDef>,
    /// Routes, matched by the router policy.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// JWKS sources per token issuer, for `io.jwks` (see `crate::jwks`).
    #[serde(default)]
    pub jwks: Vec<crate::jwks::JwksConfig>,
    /// The evidence log (see `crate::audit`); `gateway.audit_log` is the plain alternative.
    #[serde(default)]
    pub audit: Option<crate::audit::AuditConfig>,
    /// Rate limits for `io.rate-acquire` (see `crate::ratelimit`).
    #[serde(default)]
    pub limits: Vec<crate::ratelimit::LimitConfig>,
    /// The Redis behind shared limits.
    #[serde(default)]
    pub shared_limits: Option<crate::ratelimit::SharedLimitsConfig>,
    /// Data residency (see `crate::residency`): off when absent.
    #[serde(default)]
    pub residency: Option<crate::residency::ResidencyConfig>,
}

/// `[gateway]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gateway {
    /// The policy that runs first and picks the route (`router`).
    pub router: Spanned<String>,
    /// JSON-lines audit file; relative to the config file.
    pub audit_log: Option<String>,
    /// Directory for compiled components; default `$XDG_CACHE_HOME/portcullis`.
    pub cache_dir: Option<String>,
    /// Peers whose `X-Forwarded-For` / `X-Forwarded-Proto` are believed (CIDRs).
    pub trusted_proxies: Vec<Spanned<String>>,
    /// Largest request head accepted (431 above it).
    pub max_request_head: ByteSize,
    /// Default largest request body per route (413 above it).
    pub max_request_body: ByteSize,
    /// File holding the key for `host.pseudonym` (HMAC); a random per-process key when absent.
    pub pseudonym_key_file: Option<String>,
    /// Reload when the config file or a component file changes (debounced).
    pub watch: bool,
    /// On SIGTERM/SIGINT: how long open connections may take to finish.
    pub shutdown_grace_ms: u64,
}

impl Default for Gateway {
    fn default() -> Self {
        Gateway {
            router: Spanned::new(0..0, "router".to_string()),
            audit_log: None,
            cache_dir: None,
            trusted_proxies: Vec::new(),
            max_request_head: ByteSize(64 * 1024),
            max_request_body: ByteSize(16 * 1024 * 1024),
            pseudonym_key_file: None,
            watch: true,
            shutdown_grace_ms: 30_000,
        }
    }
}

/// `[admin]`: the operator's endpoints, on their own listener.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// `ip:port`; loopback by default.
    #[serde(default = "default_admin_address")]
    pub address: String,
    /// File holding the bearer token for `/admin/*` (or env `PORTCULLIS_ADMIN_TOKEN`).
    #[serde(default)]
    pub token_file: Option<String>,
}

fn default_admin_address() -> String {
    "127.0.0.1:9901".into()
}

/// `[runtime]`: limits of each policy instance.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Runtime {
    /// Wall-clock budget of one policy call, milliseconds.
    pub policy_deadline_ms: u64,
    /// Largest linear memory of one instance.
    pub policy_memory: ByteSize,
    /// Policy instances alive at once (the pooling allocator's size).
    pub max_instances: u32,
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime { policy_deadline_ms: 100, policy_memory: ByteSize(4 * 1024 * 1024), max_instances: 256 }
    }
}

/// `[[listeners]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Name shown to policies and in the audit log.
    pub name: String,
    /// `ip:port` to bind.
    pub address: Spanned<String>,
    /// Milliseconds a client may take to send a request head (and a keep-alive connection may sit idle).
    #[serde(default = "default_header_timeout")]
    pub header_timeout_ms: Spanned<u64>,
    /// Every connection starts with a PROXY protocol header (v1 or v2, as
    /// Hetzner's load balancer sends it); the peer must be a trusted proxy.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Terminate TLS (see `crate::tls`); plain HTTP when absent.
    #[serde(default)]
    pub tls: Option<crate::tls::ListenerTls>,
    /// Longest pause while a request body is being read (408 after it).
    #[serde(default = "default_body_idle_timeout")]
    pub body_idle_timeout_ms: Spanned<u64>,
    /// Longest a write to a client may wait (one that stops reading its response); the connection is closed after it.
    #[serde(default = "default_write_timeout")]
    pub write_timeout_ms: Spanned<u64>,
    /// Open connections on this listener; more are answered 503 and closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: Spanned<usize>,
    /// Requests answered at once on this listener (until their response body ends); more get 503.
    #[serde(default = "default_max_requests_in_flight")]
    pub max_requests_in_flight: Spanned<usize>,
    /// HTTP/2 streams one client may open at once.
    #[serde(default = "default_h2_max_concurrent_streams")]
    pub h2_max_concurrent_streams: Spanned<u32>,
    /// HTTP/2 streams a client may reset before they are accepted (rapid reset, CVE-2023-44487); GOAWAY past it.
    #[serde(default = "default_h2_max_pending_accept_reset_streams")]
    pub h2_max_pending_accept_reset_streams: Spanned<usize>,
    /// HTTP/2 streams the gateway may reset for a client's protocol errors on one connection; GOAWAY past it.
    #[serde(default = "default_h2_max_local_error_reset_streams")]
    pub h2_max_local_error_reset_streams: Spanned<usize>,
}

fn default_header_timeout() -> Spanned<u64> {
    Spanned::new(0..0, 30_000)
}
fn default_body_idle_timeout() -> Spanned<u64> {
    Spanned::new(0..0, 30_000)
}
fn default_write_timeout() -> Spanned<u64> {
    Spanned::new(0..0, 30_000)
}
fn default_max_connections() -> Spanned<usize> {
    Spanned::new(0..0, 10_000)
}
fn default_max_requests_in_flight() -> Spanned<usize> {
    Spanned::new(0..0, 4_096)
}
fn default_h2_max_concurrent_streams() -> Spanned<u32> {
    Spanned::new(0..0, 100)
}
fn default_h2_max_pending_accept_reset_streams() -> Spanned<usize> {
    Spanned::new(0..0, 20)
}
fn default_h2_max_local_error_reset_streams() -> Spanned<usize> {
    Spanned::new(0..0, 1_024)
}

/// How a pool picks a target.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Each target in turn.
    #[default]
    RoundRobin,
    /// The target with the fewest requests in flight.
    LeastConnections,
}

/// `[[pools]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// Name routes refer to.
    pub name: Spanned<String>,
    /// Where the servers are (e.g. `fsn1`); used by the residency policy.
    /// Required when `[residency]` is configured.
    #[serde(default)]
    pub region: Option<Spanned<String>>,
    /// `host:port` of each server.
    pub targets: Vec<Spanned<String>>,
    /// Balancing strategy.
    #[serde(default)]
    pub balance: Balance,
    /// TCP connect budget.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// Budget from sending the request to the upstream's response head (504 after).
    #[serde(default = "default_response_timeout")]
    pub response_timeout_ms: u64,
    /// How long an idle upstream connection is kept for reuse.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_ms: u64,
    /// Passive health: eject a target after consecutive failures.
    #[serde(default)]
    pub passive: Passive,
    /// Active health checks; none when absent.
    #[serde(default)]
    pub health: Option<HealthCheck>,
    /// Reached only by other services on the private network, never from
    /// outside: routes are served on every listener, so `check` refuses any
    /// route that names an internal pool (Nutri's ML service).
    #[serde(default)]
    pub internal: bool,
    /// TLS (and optionally mTLS) to the targets; plain HTTP when absent.
    #[serde(default)]
    pub tls: Option<crate::tls::upstream::PoolTls>,
    /// Retries of idempotent requests whose connection failed, with a budget.
    #[serde(default)]
    pub retries: Retries,
}

/// `[pools.retries]`: a request is retried on another target only when it
/// never reached an upstream (the connection failed), only for idempotent
/// methods (GET, HEAD, OPTIONS, PUT, DELETE, TRACE), and only if its body
/// was not sent. Retries stay within a budget, as linkerd's: at most
/// `budget_ratio` of the pool's requests over the last 10 s, plus
/// `min_per_second`, so a failing pool is not hammered by retries.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Retries {
    /// Further tries of one request (0: never retry).
    pub attempts: u32,
    /// Retries allowed as a share of requests over the window.
    pub budget_ratio: f64,
    /// Retries allowed per second whatever the traffic (a quiet pool may still retry).
    pub min_per_second: u32,
}

impl Default for Retries {
    fn default() -> Self {
        Retries { attempts: 1, budget_ratio: 0.2, min_per_second: 10 }
    }
}

fn default_connect_timeout() -> u64 {
    2_000
}
fn default_response_timeout() -> u64 {
    30_000
}
fn default_idle_timeout() -> u64 {
    60_000
}

/// `[pools.passive]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Passive {
    /// Consecutive failures (connect errors, timeouts) before ejection.
    pub max_failures: u32,
    /// How long an ejected target is left out.
    pub eject_ms: u64,
}

impl Default for Passive {
    fn default() -> Self {
        Passive { max_failures: 3, eject_ms: 30_000 }
    }
}

/// `[pools.health]`: the platforms' defaults are 30 s, 3 s, 3 failures.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheck {
    /// Path probed with GET; any 2xx is healthy.
    pub path: String,
    /// Time between probes.
    pub interval_ms: u64,
    /// Budget of one probe.
    pub timeout_ms: u64,
    /// Consecutive failed probes before a target is down.
    pub unhealthy_after: u32,
    /// Consecutive good probes before a down target is up again.
    pub healthy_after: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck { path: "/health".into(), interval_ms: 30_000, timeout_ms: 3_000, unhealthy_after: 3, healthy_after: 1 }
    }
}

impl Pool {
    /// Same servers and behaviour (spans ignored): a reload keeps such a
    /// pool, with its connections and health state, instead of rebuilding it.
    pub fn same_as(&self, other: &Pool) -> bool {
        let targets = |p: &Pool| p.targets.iter().map(|t| t.get_ref().clone()).collect::<Vec<_>>();
        self.name.get_ref() == other.name.get_ref()
            && self.region.as_ref().map(Spanned::get_ref) == other.region.as_ref().map(Spanned::get_ref)
            && targets(self) == targets(other)
            && self.balance == other.balance
            && self.connect_timeout_ms == other.connect_timeout_ms
            && self.response_timeout_ms == other.response_timeout_ms
            && self.idle_timeout_ms == other.idle_timeout_ms
            && self.passive == other.passive
            && self.health == other.health
            && self.internal == other.internal
            && self.tls == other.tls
            && self.retries == other.retries
    }
}

/// `[policies.<name>]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDef {
    /// A `.wasm` component path (relative to the config file) or `builtin:<name>`.
    pub component: Spanned<String>,
    /// The policy's settings, packed into every call (`packed-settings`).
    #[serde(default)]
    pub settings: toml::Table,
    /// Largest linear memory of one instance of this policy (`[runtime] policy_memory` when absent; at most that).
    #[serde(default)]
    pub memory: Option<Spanned<ByteSize>>,
    /// Wall-clock budget of one call of this policy (`[runtime] policy_deadline_ms` when absent).
    #[serde(default)]
    pub deadline_ms: Option<Spanned<u64>>,
}

/// How a route's path is compared.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PathMatch {
    /// At a segment boundary (`/api` matches `/api/x`, not `/apix`).
    #[default]
    Prefix,
    /// The whole path.
    Exact,
}

/// `[[routes]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Name in facts (`route.name`), the audit log and metrics.
    pub name: Spanned<String>,
    /// Hosts served (`api.example.org`, `*.example.org`); any when empty.
    #[serde(default)]
    pub hosts: Vec<Spanned<String>>,
    /// Path to match.
    pub path: Spanned<String>,
    /// How `path` is compared.
    #[serde(default, rename = "match")]
    pub path_match: PathMatch,
    /// Methods allowed; any when empty (405 for others).
    #[serde(default)]
    pub methods: Vec<Spanned<String>>,
    /// Candidate pools, in order of preference.
    pub pools: Vec<Spanned<String>>,
    /// Policies run after the router, in this order.
    #[serde(default)]
    pub chain: Vec<Spanned<String>>,
    /// Largest request body (413 above it); the gateway default when absent.
    #[serde(default)]
    pub body_limit: Option<ByteSize>,
    /// Pass `Upgrade` (WebSocket) requests through.
    #[serde(default)]
    pub websocket: bool,
    /// Extra facts the router attaches (`route.<key>`), e.g. `roles`, `residency-class`.
    #[serde(default)]
    pub facts: BTreeMap<String, toml::Value>,
    /// Per-policy settings overriding the policy's own for this route.
    #[serde(default)]
    pub settings: BTreeMap<String, toml::Table>,
    /// `"durable"` or `"async"`: when this route's audit record must be on disk (default `[audit] mode`).
    #[serde(default)]
    pub audit: Option<crate::audit::Durability>,
    /// Budget from sending the request to the upstream's response head
    /// (504 after), overriding the pool's `response_timeout_ms`.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Have the host read the body (bounded) and give the route's policies
    /// its HMAC-SHA256 as fact `body.hmac-sha256` (webhook signatures).
    #[serde(default)]
    pub body_hmac: Option<BodyHmac>,
}

/// `[routes.body_hmac]`: the body's HMAC-SHA256, computed by the host before
/// the route's policies run. Policies see request heads only; this is how a
/// policy checks a signature over the body without ever seeing the body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodyHmac {
    /// File holding the HMAC key (its bytes; one trailing newline ignored).
    pub secret_file: Option<Spanned<String>>,
    /// Environment variable holding the HMAC key.
    pub secret_env: Option<Spanned<String>>,
    /// Largest body read (413 above it); it is held in memory until forwarded.
    #[serde(default = "default_hmac_max_bytes")]
    pub max_bytes: ByteSize,
    /// How long the whole body may take to arrive (408 after it).
    #[serde(default = "default_hmac_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_hmac_max_bytes() -> ByteSize {
    ByteSize(1 << 20)
}

fn default_hmac_timeout_ms() -> u64 {
    10_000
}
