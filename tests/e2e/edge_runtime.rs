//! A wasi:http runtime for Spin HTTP components, for the edge tests: the
//! project's own wasmtime 48 with `wasmtime-wasi-http` (no Spin CLI can be
//! installed here, and no second wasmtime may enter the build).
//!
//! It does what `spin up` does for one `[component]` of a spin.toml, as far as
//! an HTTP component can tell:
//! - one fresh `Store` and instance per request (the component is compiled and
//!   pre-linked once, `ProxyPre`);
//! - WASI p2 with nothing in it: no preopens, no environment, no arguments, no
//!   sockets; stdout discarded, stderr kept for the test ([`EdgeRuntime::stderr`]);
//! - outgoing `wasi:http` only to `allowed_outbound_hosts` (Spin's
//!   `scheme://host[:port]` entries), anything else refused with
//!   `HTTP-request-denied` as Spin does;
//! - `fermyon:spin/variables@2.0.0` from [`EdgeOptions::variables`];
//! - `fermyon:spin/key-value@2.0.0` with the stores in
//!   [`EdgeOptions::key_value_stores`] (`access-denied` for any other label);
//!   their data lives outside the per-request Store, shared by all requests,
//!   like Spin's default store.
//!
//! The Spin interfaces are bound from the WIT files spin-sdk 5.2.0 ships,
//! vendored under `tests/e2e/edge/wit/` (a test below keeps them identical).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

/// Spin's key-value and variables interfaces (the only `bindgen!` of the edge tests).
mod spin {
    wasmtime::component::bindgen!({
        path: "../tests/e2e/edge/wit",
        world: "portcullis:edge-runtime/spin-capabilities",
        with: { "fermyon:spin/key-value.store": super::KvHandle },
    });
}
use spin::fermyon::spin::{key_value, variables};

/// Where the vendored Spin WIT lives (relative to this crate's manifest).
const VENDORED_WIT: &str = "../tests/e2e/edge/wit/deps/spin@2.0.0";

/// How much guest stderr is kept; a guest writing more traps, which a test sees as a 500.
const STDERR_CAPACITY: usize = 1 << 20;

/// What a spin.toml says about one component, as far as this runtime honours it.
#[derive(Clone, Debug, Default)]
pub struct EdgeOptions {
    /// `[component.x.variables]`, already resolved (name → value).
    pub variables: Vec<(String, String)>,
    /// `key_value_stores`, e.g. `["default"]`.
    pub key_value_stores: Vec<String>,
    /// `allowed_outbound_hosts`, e.g. `["http://127.0.0.1:8081"]`.
    pub allowed_outbound_hosts: Vec<String>,
}

/// What loading the component cost.
#[derive(Clone, Copy, Debug)]
pub struct ColdStart {
    /// `Component::from_file`: reading and compiling the component with Cranelift.
    pub compile: Duration,
    /// The first request's `instantiate_async` (None until a request arrived).
    pub first_instantiate: Option<Duration>,
    /// The first request from a fresh Store to the guest's response head
    /// (instantiation, the guest's work and its outbound calls included).
    pub first_response: Option<Duration>,
    /// Size of the `.wasm` file.
    pub component_bytes: u64,
}

/// A Spin HTTP component served on 127.0.0.1 (HTTP/1.1) until dropped.
pub struct EdgeRuntime {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    compile: Duration,
    component_bytes: u64,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EdgeRuntime {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// State of the whole application (outlives every request).
struct Shared {
    pre: ProxyPre<RequestState>,
    capabilities: Arc<Capabilities>,
    allowed: Arc<AllowedHosts>,
    stderr: MemoryOutputPipe,
    instances: AtomicU64,
    first_instantiate: OnceLock<Duration>,
    first_response: OnceLock<Duration>,
    /// Outgoing requests refused, as `scheme://authority`.
    denied: Arc<Mutex<Vec<String>>>,
    /// Requests the runtime itself answered 500 because the guest failed (trap, no response).
    failures: Mutex<Vec<String>>,
}

/// The Spin capabilities a request's instance is given.
struct Capabilities {
    variables: HashMap<String, String>,
    /// label → (key → value); only granted labels have an entry.
    kv: Mutex<HashMap<String, BTreeMap<String, Vec<u8>>>>,
}

impl EdgeRuntime {
    /// Compile `wasm`, link it and serve it; panics on any load error (a test fixture).
    pub async fn start(wasm: &Path, opts: EdgeOptions) -> EdgeRuntime {
        match EdgeRuntime::try_start(wasm, opts).await {
            Ok(rt) => rt,
            Err(e) => panic!("edge runtime: {}: {e:?}", wasm.display()),
        }
    }

    /// As [`EdgeRuntime::start`], but the load error is returned.
    pub async fn try_start(wasm: &Path, opts: EdgeOptions) -> wasmtime::Result<EdgeRuntime> {
        // Load-time checks first, as Spin does at `spin up`: a bad entry is an
        // error now, never a surprise on some request.
        let allowed = Arc::new(AllowedHosts::parse(&opts.allowed_outbound_hosts)?);
        let mut variables = HashMap::new();
        for (name, value) in opts.variables {
            if let Err(reason) = check_variable_name(&name) {
                wasmtime::bail!("variables: {name:?}: {reason}");
            }
            variables.insert(name, value);
        }
        let kv = opts.key_value_stores.into_iter().map(|label| (label, BTreeMap::new())).collect();
        let capabilities = Arc::new(Capabilities { variables, kv: Mutex::new(kv) });

        let component_bytes = std::fs::metadata(wasm).map_err(|e| wasmtime::format_err!("cannot read the component: {e}"))?.len();
        let engine = Engine::new(&Config::new())?;
        let path = wasm.to_path_buf();
        let compile_engine = engine.clone();
        // Compilation is seconds of CPU: keep it off the test's runtime thread.
        let (component, compile) = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            Component::from_file(&compile_engine, &path).map(|c| (c, started.elapsed()))
        })
        .await??;

        let mut linker: Linker<RequestState> = Linker::new(&engine);
        // The full WASI p2 set, not only the proxy world's: a spin-sdk guest
        // imports wasi:cli/environment, exit, terminal-* and insecure-seed.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        spin::SpinCapabilities::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
        // The guest exports wasi:http/incoming-handler@0.2.0 and wasmtime-wasi-http
        // 48 speaks 0.2.12: ProxyPre finds it by semver (0.2.x).
        let pre = ProxyPre::new(linker.instantiate_pre(&component)?)?;

        let shared = Arc::new(Shared {
            pre,
            capabilities,
            allowed,
            stderr: MemoryOutputPipe::new(STDERR_CAPACITY),
            instances: AtomicU64::new(0),
            first_instantiate: OnceLock::new(),
            first_response: OnceLock::new(),
            denied: Arc::default(),
            failures: Mutex::default(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(serve(listener, shared.clone()));
        Ok(EdgeRuntime { addr, shared, compile, component_bytes, task })
    }

    /// `http://127.0.0.1:port{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Compile time, first instantiation and component size.
    pub fn cold_start(&self) -> ColdStart {
        ColdStart {
            compile: self.compile,
            first_instantiate: self.shared.first_instantiate.get().copied(),
            first_response: self.shared.first_response.get().copied(),
            component_bytes: self.component_bytes,
        }
    }

    /// Everything the guest wrote to stderr so far, all requests together.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.shared.stderr.contents()).into_owned()
    }

    /// Instances created so far (one per request).
    pub fn instances(&self) -> u64 {
        self.shared.instances.load(Ordering::SeqCst)
    }

    /// Outgoing requests refused by `allowed_outbound_hosts`, as `scheme://authority`.
    pub fn denied(&self) -> Vec<String> {
        self.shared.denied.lock().unwrap().clone()
    }

    /// Requests that failed in the guest (trap, or no response set), with the error.
    pub fn failures(&self) -> Vec<String> {
        self.shared.failures.lock().unwrap().clone()
    }

    /// A value in a key-value store, as the next request would read it.
    pub fn kv_get(&self, label: &str, key: &str) -> Option<Vec<u8>> {
        self.shared.capabilities.kv.lock().unwrap().get(label)?.get(key).cloned()
    }

    /// The keys of a key-value store.
    pub fn kv_keys(&self, label: &str) -> Vec<String> {
        self.shared.capabilities.kv.lock().unwrap().get(label).map(|m| m.keys().cloned().collect()).unwrap_or_default()
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else { continue };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                let shared = shared.clone();
                // What Spin's HTTP trigger adds: the client's address, and the
                // full URL (a client's own values are replaced, never believed).
                req.headers_mut().insert("spin-client-addr", http::HeaderValue::from_str(&peer.to_string()).expect("an address is a valid header"));
                if let Some(host) = req.headers().get("host").and_then(|h| h.to_str().ok()).map(str::to_string) {
                    let full = format!("http://{host}{}", req.uri().path_and_query().map_or("/", |p| p.as_str()));
                    if let Ok(v) = http::HeaderValue::from_str(&full) {
                        req.headers_mut().insert("spin-full-url", v);
                    }
                }
                async move { Ok::<_, std::convert::Infallible>(shared.handle(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

impl Shared {
    /// One request: a fresh Store and instance, the guest's `handle`, its
    /// response; a guest that fails gets a 500, as Spin gives.
    async fn handle(self: Arc<Self>, req: hyper::Request<Incoming>) -> hyper::Response<HyperOutgoingBody> {
        match self.clone().run_guest(req).await {
            Ok(resp) => resp,
            Err(e) => {
                if e.downcast_ref::<GuestFailed>().is_none() {
                    self.failures.lock().unwrap().push(format!("{e:?}"));
                }
                let body = Full::new(Bytes::from_static(b"the component failed")).map_err(|never| match never {}).boxed_unsync();
                hyper::Response::builder().status(500).body(body).expect("a static response")
            }
        }
    }

    async fn run_guest(self: Arc<Self>, req: hyper::Request<Incoming>) -> wasmtime::Result<hyper::Response<HyperOutgoingBody>> {
        let state = RequestState {
            wasi: WasiCtx::builder()
                .stderr(self.stderr.clone())
                .allow_tcp(false)
                .allow_udp(false)
                .allow_ip_name_lookup(false)
                .build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: OutboundHooks { allowed: self.allowed.clone(), denied: self.denied.clone() },
            capabilities: self.capabilities.clone(),
        };
        let started = Instant::now();
        let mut store = Store::new(self.pre.engine(), state);
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let req = store.data_mut().http().new_incoming_request(Scheme::Http, req)?;
        let out = store.data_mut().http().new_response_outparam(sender)?;
        let shared = self.clone();
        // The guest runs in its own task: it may keep writing the body after
        // it has set the response head.
        let task = tokio::spawn(async move {
            let instantiating = Instant::now();
            let proxy = shared.pre.instantiate_async(&mut store).await?;
            let took = instantiating.elapsed();
            shared.instances.fetch_add(1, Ordering::SeqCst);
            let _ = shared.first_instantiate.set(took);
            let handled = proxy.wasi_http_incoming_handler().call_handle(&mut store, req, out).await;
            // Recorded here, so that a guest failing after its response head
            // (while streaming the body) is seen too.
            if let Err(e) = &handled {
                shared.failures.lock().unwrap().push(format!("the guest failed: {e:?}"));
            }
            handled
        });
        match receiver.await {
            Ok(Ok(resp)) => {
                let _ = self.first_response.set(started.elapsed());
                Ok(resp)
            }
            Ok(Err(code)) => Err(wasmtime::format_err!("the guest answered with an error code: {code:?}")),
            Err(_) => match task.await {
                Ok(Ok(())) => wasmtime::bail!("the guest returned without setting a response"),
                Ok(Err(_)) => Err(GuestFailed.into()),
                Err(e) => Err(e.into()),
            },
        }
    }
}

/// The guest failed before setting a response; its error is already in `failures`.
#[derive(Debug, thiserror::Error)]
#[error("the guest failed before setting a response")]
struct GuestFailed;

/// What a Store holds: one request's WASI, wasi:http and Spin state.
struct RequestState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: OutboundHooks,
    capabilities: Arc<Capabilities>,
}

impl WasiView for RequestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for RequestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

/// `allowed_outbound_hosts` on the way out, then wasmtime-wasi-http's own client.
struct OutboundHooks {
    allowed: Arc<AllowedHosts>,
    denied: Arc<Mutex<Vec<String>>>,
}

type HttpResult<T> = Result<T, wasmtime_wasi_http::Error>;
type IoFuture = Box<dyn Future<Output = HttpResult<()>> + Send>;

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: IoFuture,
    ) -> Box<dyn Future<Output = HttpResult<(http::Response<WasiBody>, IoFuture)>> + Send> {
        if !self.allowed.allows(request.uri()) {
            let uri = request.uri();
            let origin = format!("{}://{}", uri.scheme_str().unwrap_or(""), uri.authority().map(|a| a.as_str()).unwrap_or(""));
            self.denied.lock().unwrap().push(origin);
            // What Spin answers (factor-outbound-http): the guest sees
            // error-code HTTP-request-denied, nothing is sent.
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        wasmtime_wasi_http::default_hooks().send_request(request, options, fut)
    }
}

impl variables::Host for RequestState {
    fn get(&mut self, name: String) -> Result<String, variables::Error> {
        if let Err(reason) = check_variable_name(&name) {
            return Err(variables::Error::InvalidName(format!("{name:?}: {reason}")));
        }
        self.capabilities.variables.get(&name).cloned().ok_or(variables::Error::Undefined(format!("no variable for {name:?}")))
    }
}

/// An open `store` resource: only its label, the data is in [`Capabilities::kv`].
pub struct KvHandle(String);

impl RequestState {
    fn kv<R>(&mut self, store: &Resource<KvHandle>, f: impl FnOnce(&mut BTreeMap<String, Vec<u8>>) -> R) -> Result<R, key_value::Error> {
        let label = &self.table.get(store).map_err(|e| key_value::Error::Other(e.to_string()))?.0;
        let mut stores = self.capabilities.kv.lock().unwrap();
        let data = stores.get_mut(label).ok_or(key_value::Error::NoSuchStore)?;
        Ok(f(data))
    }
}

impl key_value::Host for RequestState {}

impl key_value::HostStore for RequestState {
    fn open(&mut self, label: String) -> Result<Resource<KvHandle>, key_value::Error> {
        if !self.capabilities.kv.lock().unwrap().contains_key(&label) {
            // Spin: a label not in the component's key_value_stores.
            return Err(key_value::Error::AccessDenied);
        }
        self.table.push(KvHandle(label)).map_err(|_| key_value::Error::StoreTableFull)
    }

    fn get(&mut self, store: Resource<KvHandle>, key: String) -> Result<Option<Vec<u8>>, key_value::Error> {
        self.kv(&store, |data| data.get(&key).cloned())
    }

    fn set(&mut self, store: Resource<KvHandle>, key: String, value: Vec<u8>) -> Result<(), key_value::Error> {
        self.kv(&store, |data| {
            data.insert(key, value);
        })
    }

    fn delete(&mut self, store: Resource<KvHandle>, key: String) -> Result<(), key_value::Error> {
        self.kv(&store, |data| {
            data.remove(&key);
        })
    }

    fn exists(&mut self, store: Resource<KvHandle>, key: String) -> Result<bool, key_value::Error> {
        self.kv(&store, |data| data.contains_key(&key))
    }

    fn get_keys(&mut self, store: Resource<KvHandle>) -> Result<Vec<String>, key_value::Error> {
        self.kv(&store, |data| data.keys().cloned().collect())
    }

    fn drop(&mut self, store: Resource<KvHandle>) -> wasmtime::Result<()> {
        self.table.delete(store)?;
        Ok(())
    }
}

/// Spin's rule for variable names (`spin_expressions::Key`): lower snake case,
/// a letter first, no `__`, no trailing `_`.
fn check_variable_name(name: &str) -> Result<(), &'static str> {
    let first = name.chars().next().ok_or("must not be empty")?;
    if !first.is_ascii_lowercase() {
        return Err("must start with a lowercase letter");
    }
    if !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return Err("may contain only lowercase letters, digits and '_'");
    }
    if name.contains("__") || name.ends_with('_') {
        return Err("'_' must separate words");
    }
    Ok(())
}

/// `allowed_outbound_hosts`, parsed at load as Spin does.
#[derive(Debug)]
pub struct AllowedHosts(Vec<AllowedHost>);

#[derive(Debug, PartialEq)]
struct AllowedHost {
    /// None: `*`.
    scheme: Option<String>,
    host: HostRule,
    /// None: `*`; else an inclusive range.
    ports: Option<(u16, u16)>,
}

#[derive(Debug, PartialEq)]
enum HostRule {
    Any,
    /// `*.example.com`: the suffix `.example.com`.
    Subdomain(String),
    Exact(String),
}

impl AllowedHosts {
    /// Parse every entry; the first bad one is an error naming it.
    pub fn parse(entries: &[String]) -> wasmtime::Result<AllowedHosts> {
        let mut rules = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            match AllowedHost::parse(entry) {
                Ok(rule) => rules.push(rule),
                Err(reason) => wasmtime::bail!("allowed_outbound_hosts[{i}]: {entry:?}: {reason}"),
            }
        }
        Ok(AllowedHosts(rules))
    }

    /// Whether an absolute request URI may be sent.
    pub fn allows(&self, uri: &http::Uri) -> bool {
        let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else { return false };
        let Some(port) = uri.port_u16().or_else(|| well_known_port(scheme)) else { return false };
        self.0.iter().any(|rule| rule.allows(scheme, host, port))
    }
}

impl AllowedHost {
    fn parse(entry: &str) -> Result<AllowedHost, String> {
        let entry = entry.trim();
        let (scheme, rest) = entry.split_once("://").ok_or("has no scheme; the form is <scheme>://<host>[:<port>]")?;
        let scheme = match scheme {
            "*" => None,
            s if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphabetic()) => Some(s.to_ascii_lowercase()),
            s => return Err(format!("scheme {s:?} is not '*' or a word")),
        };
        let rest = match rest.split_once('/') {
            Some((_, path)) if !path.is_empty() => return Err("has a path but is not allowed to".into()),
            Some((authority, _)) => authority,
            None => rest,
        };
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        };
        let host = match host {
            "" => return Err("has no host".into()),
            "*" => HostRule::Any,
            h if h.starts_with("*.") && !h[2..].contains('*') => HostRule::Subdomain(h[1..].to_ascii_lowercase()),
            h if h.contains('*') => return Err("'*' is allowed only as the whole host or a '*.' prefix".into()),
            "self" | "self.alt" => return Err("'self' (service chaining) is not supported by the test runtime".into()),
            h => HostRule::Exact(h.to_ascii_lowercase()),
        };
        let ports = match port {
            Some("*") => None,
            Some(p) => Some(parse_ports(p)?),
            None => {
                let s = scheme.as_deref().ok_or("'*://' needs a port")?;
                let p = well_known_port(s).ok_or_else(|| format!("no port, and {s:?} has no default port"))?;
                Some((p, p))
            }
        };
        Ok(AllowedHost { scheme, host, ports })
    }

    fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let host = host.to_ascii_lowercase();
        self.scheme.as_deref().is_none_or(|s| s.eq_ignore_ascii_case(scheme))
            && match &self.host {
                HostRule::Any => true,
                HostRule::Subdomain(suffix) => host.ends_with(suffix.as_str()),
                HostRule::Exact(h) => *h == host,
            }
            && self.ports.is_none_or(|(lo, hi)| (lo..=hi).contains(&port))
    }
}

/// `8080` or Spin's half-open range `8000..8100`.
fn parse_ports(text: &str) -> Result<(u16, u16), String> {
    let number = |s: &str| s.parse::<u16>().map_err(|_| format!("port {text:?} is not a number or a range"));
    match text.split_once("..") {
        Some((lo, hi)) => {
            let (lo, hi) = (number(lo)?, number(hi)?);
            if lo >= hi {
                return Err(format!("port range {text:?} is empty"));
            }
            Ok((lo, hi - 1))
        }
        None => number(text).map(|p| (p, p)),
    }
}

fn well_known_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// The spin-sdk 5.2.0 crate in cargo's registry (`$CARGO_HOME`, else `~/.cargo`).
fn registry_spin_sdk() -> Option<PathBuf> {
    let home = std::env::var_os("CARGO_HOME").map(PathBuf::from).or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    let src = home.join("registry/src");
    std::fs::read_dir(src).ok()?.filter_map(Result::ok).map(|index| index.path().join("spin-sdk-5.2.0")).find(|p| p.is_dir())
}

#[test]
fn vendored_spin_wit_is_spin_sdk_5_2_0s() {
    let sdk = registry_spin_sdk().expect("spin-sdk 5.2.0 is not in cargo's registry (CARGO_HOME or ~/.cargo): `cargo fetch` a crate depending on spin-sdk =5.2.0");
    let ours = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(VENDORED_WIT);
    for file in ["key-value.wit", "variables.wit"] {
        let theirs = std::fs::read(sdk.join("wit/deps/spin@2.0.0").join(file)).unwrap();
        let vendored = std::fs::read(ours.join(file)).unwrap();
        assert!(theirs == vendored, "{file} differs from {}", sdk.join("wit/deps/spin@2.0.0").join(file).display());
    }
    // The package header we wrote must name the same package as spin-sdk's world.wit.
    let world = std::fs::read_to_string(sdk.join("wit/deps/spin@2.0.0/world.wit")).unwrap();
    let header = world.lines().find(|l| l.starts_with("package ")).unwrap();
    let ours = std::fs::read_to_string(ours.join("package.wit")).unwrap();
    assert!(ours.lines().any(|l| l == header), "package.wit does not say {header:?}");
}

#[test]
fn allowed_outbound_hosts_follow_spins_rules() {
    let hosts = |entries: &[&str]| AllowedHosts::parse(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    let uri = |s: &str| s.parse::<http::Uri>().unwrap();

    let allowed = hosts(&["http://127.0.0.1:8081", "https://*.example.com", "http://api.test:*", "*://10.0.0.1:9000..9002"]).unwrap();
    assert!(allowed.allows(&uri("http://127.0.0.1:8081/x?y")));
    assert!(!allowed.allows(&uri("http://127.0.0.1:8082/")), "another port");
    assert!(!allowed.allows(&uri("https://127.0.0.1:8081/")), "another scheme");
    assert!(allowed.allows(&uri("https://idp.example.com/jwks")), "subdomain, default port 443");
    assert!(!allowed.allows(&uri("https://example.com/")), "'*.' needs a subdomain");
    assert!(!allowed.allows(&uri("https://idp.example.com:8443/")), "443 only");
    assert!(allowed.allows(&uri("http://api.test:1234/")));
    assert!(allowed.allows(&uri("https://10.0.0.1:9001/")) && !allowed.allows(&uri("https://10.0.0.1:9002/")), "a range excludes its end");
    assert!(!hosts(&[]).unwrap().allows(&uri("http://127.0.0.1:8081/")), "nothing is allowed by default");

    for (bad, reason) in [
        ("127.0.0.1:8081", "has no scheme"),
        ("http://127.0.0.1:8081/api", "has a path"),
        ("http://ex*ample.com", "'*' is allowed only"),
        ("http://h:port", "is not a number"),
        ("*://h", "needs a port"),
        ("redis://h", "no default port"),
    ] {
        let err = hosts(&["http://ok.test", bad]).unwrap_err().to_string();
        assert!(err.starts_with(&format!("allowed_outbound_hosts[1]: {bad:?}: ")) && err.contains(reason), "{bad}: {err}");
    }
}

#[test]
fn variable_names_follow_spins_rules() {
    for good in ["upstream_url", "a", "key2", "portcullis_config"] {
        assert_eq!(check_variable_name(good), Ok(()), "{good}");
    }
    for bad in ["", "Upstream", "upstream-url", "2key", "a__b", "a_", "_a", "a.b"] {
        assert!(check_variable_name(bad).is_err(), "{bad:?}");
    }
}
