//! Checks that types cannot express: names that must exist, be unique, parse.
//! Every problem is collected, so an operator fixes a file in one pass.

use super::{Config, ConfigError, ConfigErrors, Source};
use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;

/// Names a policy may not take: their fact namespaces belong to the host and router.
const RESERVED_POLICY_NAMES: &[&str] = &["route", "gateway", "body"];

/// Longest per-policy deadline: a policy call holds a request and an instance slot.
const MAX_POLICY_DEADLINE_MS: u64 = 60_000;

/// Validate references and values of a parsed configuration.
pub fn validate(source: &Source, config: &Config) -> Result<(), ConfigErrors> {
    let mut errors: Vec<ConfigError> = Vec::new();

    if config.listeners.is_empty() {
        errors.push(source.error("listeners", "at least one [[listeners]] is required"));
    }
    let mut listener_names = HashSet::new();
    for (i, l) in config.listeners.iter().enumerate() {
        if !listener_names.insert(l.name.as_str()) {
            errors.push(source.error_at(&l.address, format!("listeners[{i}].name"), format!("duplicate listener name {:?}", l.name)));
        }
        if l.address.get_ref().parse::<SocketAddr>().is_err() {
            errors.push(source.error_at(&l.address, format!("listeners[{i}].address"), format!("expected ip:port, got {:?}", l.address.get_ref())));
        }
        if let Some(tls) = &l.tls {
            errors.extend(crate::tls::check(source, i, tls, &l.address));
        }
        let mut positive: [(&str, u64, std::ops::Range<usize>); 8] = [
            ("header_timeout_ms", *l.header_timeout_ms.get_ref(), l.header_timeout_ms.span()),
            ("body_idle_timeout_ms", *l.body_idle_timeout_ms.get_ref(), l.body_idle_timeout_ms.span()),
            ("write_timeout_ms", *l.write_timeout_ms.get_ref(), l.write_timeout_ms.span()),
            ("max_connections", *l.max_connections.get_ref() as u64, l.max_connections.span()),
            ("max_requests_in_flight", *l.max_requests_in_flight.get_ref() as u64, l.max_requests_in_flight.span()),
            ("h2_max_concurrent_streams", u64::from(*l.h2_max_concurrent_streams.get_ref()), l.h2_max_concurrent_streams.span()),
            ("h2_max_pending_accept_reset_streams", *l.h2_max_pending_accept_reset_streams.get_ref() as u64, l.h2_max_pending_accept_reset_streams.span()),
            ("h2_max_local_error_reset_streams", *l.h2_max_local_error_reset_streams.get_ref() as u64, l.h2_max_local_error_reset_streams.span()),
        ];
        positive.sort_by_key(|(_, _, span)| span.start); // file order
        for (key, value, span) in positive {
            let at = toml::Spanned::new(span, ());
            if value == 0 {
                errors.push(source.error_at(&at, format!("listeners[{i}].{key}"), "must be positive (0 would refuse everything or never time out)"));
            }
            // Tokio's semaphores hold at most usize::MAX >> 3 places; far above any real limit.
            if key.starts_with("max_") && value > 1 << 24 {
                errors.push(source.error_at(&at, format!("listeners[{i}].{key}"), format!("{value} is above the largest supported ({})", 1 << 24)));
            }
        }
    }

    for (i, p) in config.trusted_proxies_iter() {
        let text = p.get_ref();
        if text.parse::<ipnet::IpNet>().is_err() && text.parse::<std::net::IpAddr>().is_err() {
            errors.push(source.error_at(p, format!("gateway.trusted_proxies[{i}]"), format!("expected an IP address or CIDR, got {text:?}")));
        }
    }

    let mut pool_names = BTreeSet::new();
    for (i, pool) in config.pools.iter().enumerate() {
        let name = pool.name.get_ref();
        if !valid_name(name) {
            errors.push(source.error_at(&pool.name, format!("pools[{i}].name"), format!("{name:?} is not a valid name (letters, digits, '-', '_')")));
        }
        if !pool_names.insert(name.as_str()) {
            errors.push(source.error_at(&pool.name, format!("pools[{i}].name"), format!("duplicate pool name {name:?}")));
        }
        if pool.targets.is_empty() {
            errors.push(source.error_at(&pool.name, format!("pools[{i}].targets"), "a pool needs at least one target"));
        }
        for (j, t) in pool.targets.iter().enumerate() {
            if let Err(reason) = check_target(t.get_ref()) {
                errors.push(source.error_at(t, format!("pools[{i}].targets[{j}]"), reason));
            }
        }
        if let Some(tls) = &pool.tls {
            errors.extend(crate::tls::upstream::check(source, i, tls));
        }
        let r = &pool.retries;
        if !(0.0..=1.0).contains(&r.budget_ratio) {
            errors.push(source.error_at(&pool.name, format!("pools[{i}].retries.budget_ratio"), format!("expected a share between 0 and 1, got {}", r.budget_ratio)));
        }
        if r.attempts > 5 {
            errors.push(source.error_at(&pool.name, format!("pools[{i}].retries.attempts"), format!("at most 5 further tries, got {}", r.attempts)));
        }
        if let Some(h) = &pool.health {
            if !h.path.starts_with('/') {
                errors.push(source.error(format!("pools[{i}].health.path"), "must start with '/'"));
            }
            if h.interval_ms == 0 || h.timeout_ms == 0 || h.unhealthy_after == 0 || h.healthy_after == 0 {
                errors.push(source.error(format!("pools[{i}].health"), "interval_ms, timeout_ms, unhealthy_after and healthy_after must be positive"));
            }
        }
        if pool.passive.max_failures == 0 {
            errors.push(source.error(format!("pools[{i}].passive.max_failures"), "must be at least 1"));
        }
    }

    for (name, def) in &config.policies {
        if RESERVED_POLICY_NAMES.contains(&name.as_str()) {
            errors.push(source.error_at(&def.component, format!("policies.{name}"), format!("{name:?} is reserved for the host's own facts")));
        }
        if !valid_name(name) {
            errors.push(source.error_at(&def.component, format!("policies.{name}"), "a policy name is letters, digits, '-' and '_'"));
        }
        if let Some(m) = &def.memory {
            let (bytes, ceiling) = (m.get_ref().0, config.runtime.policy_memory.0);
            if bytes < 64 * 1024 {
                errors.push(source.error_at(m, format!("policies.{name}.memory"), format!("{bytes} bytes is less than one WebAssembly page (64KiB)")));
            } else if bytes > ceiling {
                errors.push(source.error_at(m, format!("policies.{name}.memory"), format!("{bytes} bytes is above [runtime] policy_memory ({ceiling} bytes), the size of every instance slot; raise that instead")));
            }
        }
        if let Some(d) = &def.deadline_ms
            && !(1..=MAX_POLICY_DEADLINE_MS).contains(d.get_ref())
        {
            errors.push(source.error_at(d, format!("policies.{name}.deadline_ms"), format!("expected 1..={MAX_POLICY_DEADLINE_MS} milliseconds, got {}", d.get_ref())));
        }
        if def.component.get_ref().trim().is_empty() {
            errors.push(source.error_at(&def.component, format!("policies.{name}.component"), "empty component path"));
        }
    }
    let router = config.gateway.router.get_ref();
    if !config.policies.contains_key(router) {
        let err = if config.gateway.router.span().is_empty() {
            source.error(format!("policies.{router}"), format!("the router policy {router:?} is not defined (add [policies.{router}] with component = \"builtin:router\")"))
        } else {
            source.error_at(&config.gateway.router, "gateway.router", format!("no policy named {router:?}"))
        };
        errors.push(err);
    }

    if config.routes.is_empty() {
        errors.push(source.error("routes", "at least one [[routes]] is required"));
    }
    let mut route_names = HashSet::new();
    for (i, r) in config.routes.iter().enumerate() {
        let name = r.name.get_ref();
        if !valid_name(name) {
            errors.push(source.error_at(&r.name, format!("routes[{i}].name"), format!("{name:?} is not a valid name (letters, digits, '-', '_')")));
        }
        if !route_names.insert(name.as_str()) {
            errors.push(source.error_at(&r.name, format!("routes[{i}].name"), format!("duplicate route name {name:?}")));
        }
        if !r.path.get_ref().starts_with('/') {
            errors.push(source.error_at(&r.path, format!("routes[{i}].path"), "must start with '/'"));
        }
        for (j, h) in r.hosts.iter().enumerate() {
            let host = h.get_ref();
            let bare = host.strip_prefix("*.").unwrap_or(host);
            if bare.is_empty() || host != &host.to_ascii_lowercase() || bare.contains(['*', ':', '/', ' ']) {
                errors.push(source.error_at(h, format!("routes[{i}].hosts[{j}]"), format!("expected a lower-case host name or *.domain, got {host:?}")));
            }
        }
        for (j, m) in r.methods.iter().enumerate() {
            let method = m.get_ref();
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                errors.push(source.error_at(m, format!("routes[{i}].methods[{j}]"), format!("expected an upper-case method such as GET, got {method:?}")));
            }
        }
        if r.timeout_ms == Some(0) {
            errors.push(source.error_at(&r.name, format!("routes[{i}].timeout_ms"), "must be positive (leave it out to use the pool's response_timeout_ms)"));
        }
        if r.pools.is_empty() {
            errors.push(source.error_at(&r.name, format!("routes[{i}].pools"), "a route needs at least one pool"));
        }
        for (j, p) in r.pools.iter().enumerate() {
            if !pool_names.contains(p.get_ref().as_str()) {
                errors.push(source.error_at(p, format!("routes[{i}].pools[{j}]"), format!("unknown pool {:?} (pools: {})", p.get_ref(), list(pool_names.iter().copied()))));
            } else if let Some(k) = config.pools.iter().position(|pool| pool.internal && pool.name.get_ref() == p.get_ref()) {
                // Every listener serves every route, so a route to an internal
                // pool would make it reachable from outside.
                errors.push(source.error_at(
                    p,
                    format!("routes[{i}].pools[{j}]"),
                    format!("pool {:?} is internal (pools[{k}].internal = true): routes are served on every listener, so no route may reach it", p.get_ref()),
                ));
            }
        }
        let mut seen = HashSet::new();
        for (j, c) in r.chain.iter().enumerate() {
            let policy = c.get_ref();
            if policy == router {
                errors.push(source.error_at(c, format!("routes[{i}].chain[{j}]"), format!("{policy:?} is the router; it always runs first and is not listed in a chain")));
            } else if !config.policies.contains_key(policy) {
                errors.push(source.error_at(c, format!("routes[{i}].chain[{j}]"), format!("unknown policy {policy:?} (policies: {})", list(config.policies.keys().map(String::as_str)))));
            } else if !seen.insert(policy.as_str()) {
                errors.push(source.error_at(c, format!("routes[{i}].chain[{j}]"), format!("policy {policy:?} appears twice in this chain")));
            }
        }
        for policy in r.settings.keys() {
            if !r.chain.iter().any(|c| c.get_ref() == policy) && policy != router {
                errors.push(source.error_at(&r.name, format!("routes[{i}].settings.{policy}"), format!("settings for policy {policy:?}, which is not in this route's chain")));
            }
        }
        for (key, value) in &r.facts {
            if !valid_fact_key(key) {
                errors.push(source.error_at(&r.name, format!("routes[{i}].facts.{key}"), "a fact key is lower-case letters, digits, '-', '_' and '.'"));
            }
            if matches!(key.as_str(), "name" | "pools") {
                errors.push(source.error_at(&r.name, format!("routes[{i}].facts.{key}"), format!("route.{key} is set by the router itself")));
            }
            if matches!(value, toml::Value::Table(_) | toml::Value::Datetime(_)) {
                errors.push(source.error_at(&r.name, format!("routes[{i}].facts.{key}"), "a fact is a string, number, boolean or list of those"));
            }
        }
    }

    crate::jwks::validate(source, config, &mut errors);
    crate::ratelimit::validate(source, config, &mut errors);
    crate::audit::validate(source, config, &mut errors);

    if errors.is_empty() { Ok(()) } else { Err(ConfigErrors(errors)) }
}

impl Config {
    fn trusted_proxies_iter(&self) -> impl Iterator<Item = (usize, &toml::Spanned<String>)> {
        self.gateway.trusted_proxies.iter().enumerate()
    }
}

fn list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let v: Vec<&str> = names.into_iter().collect();
    if v.is_empty() { "none defined".into() } else { v.join(", ") }
}

/// Names of pools, routes, policies: what can appear in facts and metrics.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn valid_fact_key(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

fn check_target(target: &str) -> Result<(), String> {
    let (host, port) = target.rsplit_once(':').ok_or_else(|| format!("expected host:port, got {target:?}"))?;
    if host.is_empty() || host.contains('/') {
        return Err(format!("expected host:port, got {target:?}"));
    }
    port.parse::<u16>().map_err(|_| format!("bad port in {target:?}"))?;
    Ok(())
}
