//! A chain snapshot: everything one request needs from the configuration,
//! built and validated off the request path, then used immutably. A request
//! keeps the snapshot it started with to its end (reload swaps the pointer).
//!
//! Building one is the `check` lifecycle: parse → validate references → load
//! each component (compile or cache) → `check-config` with the policy's
//! settings and with every route's overrides → `hooks`.

use crate::config::{self, Config, ConfigError, ConfigErrors, Source};
use crate::pool::Pool;
use crate::runtime::bindings::types::HookSet as Hooks;
use crate::runtime::settings::{self, encode_list, flatten};
use crate::runtime::{PolicyModule, PolicyState, Runtime, Services, Settings, hooks};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

/// The router component built into the binary (`builtin:router`).
pub const BUILTIN_ROUTER: &[u8] = include_bytes!(env!("PORTCULLIS_ROUTER_WASM"));

/// A loaded policy with its own settings.
pub struct LoadedPolicy {
    /// Configured name.
    pub name: Arc<str>,
    /// Where facts it writes must live (`route` for the router, else its name).
    pub namespace: String,
    /// `builtin:router` or the component path.
    pub source: String,
    /// The compiled component.
    pub module: PolicyModule,
    /// Flattened settings.
    pub settings: Settings,
    /// Largest linear memory of one instance (`memory`, else `[runtime] policy_memory`).
    pub memory_cap: usize,
    /// Budget of one call (`deadline_ms`, else `[runtime] policy_deadline_ms`).
    pub deadline: std::time::Duration,
}

impl LoadedPolicy {
    /// State for one call of this policy, under its own limits.
    pub fn state(&self, request_id: Arc<str>, overrides: Option<Settings>, services: Arc<crate::runtime::Services>) -> PolicyState {
        let mut state = PolicyState::new(self.name.clone(), request_id, self.settings.clone(), overrides, self.memory_cap, services);
        state.deadline = Some(self.deadline);
        state
    }
}

/// A policy as it runs on one route: the route's overrides and declared hooks.
pub struct Link {
    /// The policy.
    pub policy: Arc<LoadedPolicy>,
    /// The route's settings overrides for it.
    pub overrides: Option<Settings>,
    /// Hooks it declared with these settings.
    pub hooks: Hooks,
    /// Its verified-token cache scope, but for the key generation.
    pub token_scope: crate::token_cache::ScopeBase,
}

impl Link {
    /// A link of `policy` with a route's `overrides`.
    pub fn new(policy: Arc<LoadedPolicy>, overrides: Option<Settings>, hooks: Hooks) -> Link {
        let token_scope = crate::token_cache::ScopeBase::new(&policy.name, &policy.module.fingerprint(), &policy.settings, overrides.as_ref());
        Link { policy, overrides, hooks, token_scope }
    }

    /// Store data for one hook call of this link, under the policy's own limits.
    pub fn state(&self, request_id: &str, snap: &Snapshot) -> crate::runtime::PolicyState {
        let mut state = self.policy.state(request_id.into(), self.overrides.clone(), snap.services.clone());
        state.token_scope_base = Some(self.token_scope);
        state
    }
}

/// A route as the host needs it after the router named it.
pub struct RouteEntry {
    /// Route name.
    pub name: String,
    /// Policies after the router, in order.
    pub chain: Vec<Link>,
    /// Pools the route may use, in order of preference.
    pub pools: Vec<String>,
    /// Largest request body.
    pub body_limit: u64,
    /// Whether `Upgrade` requests pass.
    pub websocket: bool,
    /// When its audit record must be on disk (`durable` / `async`).
    pub audit: crate::audit::Durability,
    /// The policy that must narrow this route's pools (`<name>.pools`)
    /// before anything is forwarded: the residency policy, when
    /// `[residency]` is configured. Without that fact the request fails
    /// closed, so a policy that forgot to decide cannot let data through.
    pub narrowed_by: Option<String>,
    /// The body's HMAC for the route's policies (`[routes.body_hmac]`).
    pub body_hmac: Option<Arc<crate::proxy::digest::BodyHmac>>,
    /// Budget for the upstream's response head on this route (`timeout_ms`), overriding the pool's.
    pub timeout: Option<std::time::Duration>,
}

/// One listener to bind.
#[derive(Debug, Clone)]
pub struct ListenerSpec {
    /// Name.
    pub name: String,
    /// Address.
    pub address: SocketAddr,
    /// Timeouts and limits of the listener's clients.
    pub limits: crate::proxy::limits::Limits,
    /// Connections start with a PROXY protocol header.
    pub proxy_protocol: bool,
    /// TLS termination, when configured.
    pub tls: Option<crate::tls::TlsSpec>,
}

/// Everything a request needs, immutable once built.
pub struct Snapshot {
    /// Short hash of the config text and every component: names the chain version in audit records.
    pub version: String,
    /// The router, run first on every request.
    pub router: Link,
    /// Routes by name.
    pub routes: HashMap<String, RouteEntry>,
    /// Pools by name.
    pub pools: HashMap<String, Arc<Pool>>,
    /// Every loaded policy (for `GET /admin/policies` and logs).
    pub policies: BTreeMap<String, Arc<LoadedPolicy>>,
    /// Listeners.
    pub listeners: Vec<ListenerSpec>,
    /// Peers whose forwarding headers are believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Largest request head, bytes.
    pub max_request_head: u64,
    /// The runtime that runs the policies.
    pub runtime: Arc<Runtime>,
    /// Host state shared by policies.
    pub services: Arc<Services>,
    /// Audit log path, if any.
    pub audit_log: Option<std::path::PathBuf>,
    /// `[runtime]` as loaded (changes apply at restart).
    pub runtime_config: config::Runtime,
    /// `[admin]` as loaded.
    pub admin: Option<config::Admin>,
    /// Files whose change triggers a reload: the config and every component file.
    pub watch_paths: Vec<std::path::PathBuf>,
    /// Whether to watch them.
    pub watch: bool,
    /// Grace period for open connections at shutdown.
    pub shutdown_grace: std::time::Duration,
    /// When this snapshot was built.
    pub loaded_at: std::time::SystemTime,
}

impl Snapshot {
    /// Parse, validate and load `source`. Every error found is returned.
    /// `previous` is the snapshot being replaced: unchanged pools are kept
    /// (connections, passive and active health state).
    pub async fn build(source: &Source, runtime: Arc<Runtime>, services: Arc<Services>, previous: Option<&Snapshot>) -> Result<Snapshot, ConfigErrors> {
        let config = config::parse(source)?;
        // Reference errors do not stop the components from being loaded and
        // checked: an operator sees every problem of the file in one run.
        let mut errors = config::validate(source, &config).err().map(|e| e.0).unwrap_or_default();
        let residency = crate::residency::load(source, &config).unwrap_or_else(|mut e| {
            errors.append(&mut e);
            None
        });
        // Without a valid regions file the residency policy has no derived
        // settings; its check-config would only repeat the errors above.
        let unchecked = |name: &str| residency.is_none() && config.residency.as_ref().is_some_and(|r| r.policy.get_ref() == name);

        let mut policies = BTreeMap::new();
        let mut digests = Vec::new();
        let router_name = config.gateway.router.get_ref().clone();
        for (name, def) in &config.policies {
            let mut flat = flatten(&def.settings);
            if *name == router_name {
                flat.insert("table".into(), render_route_table(&config));
            }
            if let Some(r) = residency.as_ref().filter(|r| r.policy == *name) {
                flat.extend(r.policy_settings(&config.pools));
            }
            match load_component(source, &runtime, name, def) {
                Ok(module) => {
                    digests.push(module.digest.clone());
                    let namespace = if *name == router_name { "route".to_string() } else { name.clone() };
                    policies.insert(
                        name.clone(),
                        Arc::new(LoadedPolicy {
                            name: name.as_str().into(),
                            namespace,
                            source: def.component.get_ref().clone(),
                            module,
                            settings: Arc::new(flat),
                            // Capped by the runtime's slot size, which a reload cannot change.
                            memory_cap: def.memory.as_ref().map_or(runtime.memory_cap(), |m| (m.get_ref().0 as usize).min(runtime.memory_cap())),
                            deadline: def.deadline_ms.as_ref().map_or(std::time::Duration::from_millis(config.runtime.policy_deadline_ms), |d| std::time::Duration::from_millis(*d.get_ref())),
                        }),
                    );
                }
                Err(e) => errors.push(e),
            }
        }

        // check-config and hooks, for the policy's own settings and for every route override.
        let mut checked: HashMap<String, Hooks> = HashMap::new();
        for (name, p) in &policies {
            if unchecked(name) {
                continue;
            }
            match check(&runtime, &services, p, None).await {
                Ok(hooks) => {
                    checked.insert(name.clone(), hooks);
                }
                Err(reason) => errors.push(source.error_at(&config.policies[name].component, format!("policies.{name}"), reason)),
            }
        }
        let mut routes = HashMap::new();
        let (mut secret_files, mut key_fingerprints) = (Vec::new(), Vec::new());
        for (i, r) in config.routes.iter().enumerate() {
            let mut chain = Vec::new();
            for c in &r.chain {
                let Some(policy) = policies.get(c.get_ref()) else { continue };
                let overrides = r.settings.get(c.get_ref()).map(|t| Arc::new(flatten(t)));
                let hooks = match &overrides {
                    _ if unchecked(c.get_ref()) => None,
                    None => checked.get(c.get_ref()).copied(),
                    Some(o) => match check(&runtime, &services, policy, Some(o.clone())).await {
                        Ok(h) => Some(h),
                        Err(reason) => {
                            errors.push(source.error_at(&r.name, format!("routes[{i}].settings.{}", c.get_ref()), reason));
                            None
                        }
                    },
                };
                if let Some(hooks) = hooks {
                    chain.push(Link::new(policy.clone(), overrides, hooks));
                }
            }
            let body_limit = r.body_limit.unwrap_or(config.gateway.max_request_body).0;
            let body_hmac = match &r.body_hmac {
                None => None,
                Some(spec) => match crate::proxy::digest::BodyHmac::load(source, spec, i, body_limit) {
                    Ok(h) => {
                        if let Some(f) = &spec.secret_file {
                            secret_files.push(source.resolve(f.get_ref()));
                        }
                        key_fingerprints.push(h.key_fingerprint);
                        Some(Arc::new(h))
                    }
                    Err(e) => {
                        errors.push(e);
                        None
                    }
                },
            };
            routes.insert(
                r.name.get_ref().clone(),
                RouteEntry {
                    name: r.name.get_ref().clone(),
                    chain,
                    pools: r.pools.iter().map(|p| p.get_ref().clone()).collect(),
                    body_limit,
                    websocket: r.websocket,
                    audit: r.audit.or(config.audit.as_ref().map(|a| a.mode)).unwrap_or_default(),
                    narrowed_by: residency.as_ref().map(|r| r.policy.clone()),
                    body_hmac,
                    timeout: r.timeout_ms.map(std::time::Duration::from_millis),
                },
            );
        }
        // Pools: an unchanged one is kept (connections, health state); a
        // new one builds its client (TLS files are read here).
        let mut pools = HashMap::new();
        for (i, p) in config.pools.iter().enumerate() {
            let digest = p.tls.as_ref().map(|t| crate::tls::upstream::digest(source, t));
            let kept = previous.and_then(|prev| prev.pools.get(p.name.get_ref())).filter(|old| old.config.same_as(p) && old.tls_digest == digest).cloned();
            match kept.map(Ok).unwrap_or_else(|| Pool::new(p, source).map(Arc::new)) {
                Ok(pool) => {
                    pools.insert(p.name.get_ref().clone(), pool);
                }
                Err(e) if errors.is_empty() => errors.push(source.error_at(&p.name, format!("pools[{i}].tls"), e.to_string())),
                Err(_) => {} // already reported by the checks
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let router_policy = policies[&router_name].clone();
        let router = Link::new(router_policy, None, checked[&router_name]);

        let mut hasher = Sha256::new();
        hasher.update(source.text.as_bytes());
        if let Some(r) = &residency {
            hasher.update(r.text.as_bytes());
        }
        for d in &digests {
            hasher.update(d.as_bytes());
        }
        for k in &key_fingerprints {
            hasher.update(k);
        }
        let version = hex::encode(&hasher.finalize()[..6]);

        Ok(Snapshot {
            version,
            router,
            routes,
            pools,
            policies,
            listeners: listeners(source, &config),
            trusted_proxies: config
                .gateway
                .trusted_proxies
                .iter()
                .filter_map(|p| p.get_ref().parse::<ipnet::IpNet>().ok().or_else(|| p.get_ref().parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from)))
                .collect(),
            max_request_head: config.gateway.max_request_head.0,
            runtime,
            services,
            audit_log: config.gateway.audit_log.as_deref().map(|p| source.resolve(p)),
            runtime_config: config.runtime.clone(),
            admin: config.admin.clone(),
            watch_paths: std::iter::once(source.file.clone())
                .chain(config.policies.values().filter(|d| !d.component.get_ref().starts_with("builtin:")).map(|d| source.resolve(d.component.get_ref())))
                .chain(residency.as_ref().map(|r| r.file.clone()))
                .chain(secret_files)
                .chain(config.pools.iter().filter_map(|p| p.tls.as_ref()).flat_map(|t| crate::tls::upstream::files(source, t)))
                .collect(),
            watch: config.gateway.watch,
            shutdown_grace: std::time::Duration::from_millis(config.gateway.shutdown_grace_ms),
            loaded_at: std::time::SystemTime::now(),
        })
    }

    /// Start background work of the snapshot (active health checks) and
    /// size the verified-token caches for its policies: called once the
    /// snapshot is about to serve (at start-up, and when a reload commits).
    pub fn start(&self) {
        for pool in self.pools.values() {
            pool.spawn_health_checks();
        }
        self.services.token_cache().configure(self.policies.values().map(|p| (p.name.clone(), crate::token_cache::entries_setting(&p.settings))));
    }
}

fn listeners(source: &Source, config: &Config) -> Vec<ListenerSpec> {
    config
        .listeners
        .iter()
        .filter_map(|l| {
            Some(ListenerSpec {
                name: l.name.clone(),
                address: l.address.get_ref().parse().ok()?,
                limits: crate::proxy::limits::Limits {
                    header_timeout: std::time::Duration::from_millis(*l.header_timeout_ms.get_ref()),
                    body_idle_timeout: std::time::Duration::from_millis(*l.body_idle_timeout_ms.get_ref()),
                    write_timeout: std::time::Duration::from_millis(*l.write_timeout_ms.get_ref()),
                    max_connections: *l.max_connections.get_ref(),
                    max_requests_in_flight: *l.max_requests_in_flight.get_ref(),
                    h2_max_concurrent_streams: *l.h2_max_concurrent_streams.get_ref(),
                    h2_max_pending_accept_reset_streams: *l.h2_max_pending_accept_reset_streams.get_ref(),
                    h2_max_local_error_reset_streams: *l.h2_max_local_error_reset_streams.get_ref(),
                },
                proxy_protocol: l.proxy_protocol,
                tls: match &l.tls {
                    Some(tls) => Some(crate::tls::spec(source, tls)?),
                    None => None,
                },
            })
        })
        .collect()
}

fn load_component(source: &Source, runtime: &Runtime, name: &str, def: &config::PolicyDef) -> Result<PolicyModule, ConfigError> {
    let spec = def.component.get_ref();
    let key = format!("policies.{name}.component");
    let bytes: std::borrow::Cow<[u8]> = match spec.strip_prefix("builtin:") {
        Some("router") => BUILTIN_ROUTER.into(),
        Some(other) => return Err(source.error_at(&def.component, key, format!("unknown builtin component {other:?} (builtins: router)"))),
        None => {
            let path = source.resolve(spec);
            std::fs::read(&path).map_err(|e| source.error_at(&def.component, &key, format!("cannot read {}: {e}", path.display())))?.into()
        }
    };
    runtime.load(spec, &bytes).map_err(|e| source.error_at(&def.component, key, e.to_string()))
}

async fn check(runtime: &Runtime, services: &Arc<Services>, p: &LoadedPolicy, overrides: Option<Settings>) -> Result<Hooks, String> {
    let state = || p.state("check".into(), overrides.clone(), services.clone());
    match hooks::check_config(runtime, &p.module, state()).await {
        Ok(Ok(())) => {}
        Ok(Err(reason)) => return Err(format!("check-config refused the settings: {reason}")),
        Err(failure) => return Err(format!("check-config failed ({}): {}", failure.class, failure.detail)),
    }
    hooks::hooks(runtime, &p.module, state()).await.map_err(|f| format!("hooks() failed ({}): {}", f.class, f.detail))
}

/// The router's `table` setting: one route per line, tab-separated fields
/// (name, hosts, match, path, methods, pools, facts), each percent-encoded
/// for `%`, tab and newline; list fields use the contract's list encoding.
pub fn render_route_table(config: &Config) -> String {
    let field = |s: &str| s.replace('%', "%25").replace('\t', "%09").replace('\n', "%0A");
    let list = |items: &[toml::Spanned<String>]| encode_list(items.iter().map(|s| s.get_ref().as_str()));
    let mut out = String::new();
    for r in &config.routes {
        let facts: Vec<String> = r.facts.iter().map(|(k, v)| format!("{k}={}", settings::scalar(v))).collect();
        let cols = [
            r.name.get_ref().clone(),
            list(&r.hosts),
            match r.path_match {
                config::PathMatch::Prefix => "prefix".into(),
                config::PathMatch::Exact => "exact".into(),
            },
            r.path.get_ref().clone(),
            list(&r.methods),
            list(&r.pools),
            encode_list(facts.iter().map(String::as_str)),
        ];
        let cols: Vec<String> = cols.iter().map(|c| field(c)).collect();
        out.push_str(&cols.join("\t"));
        out.push('\n');
    }
    out
}
