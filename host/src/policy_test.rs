//! `portcullis policy test CASES...`: run a policy component against a table
//! of cases and check its verdicts, the way `opa test` checks Rego.
//!
//! A case file is TOML. The policy under test is either a component with
//! settings, or a policy as a gateway config configures it (its settings,
//! each route's overrides, and for the router the route table):
//!
//! ```toml
//! component = "../../target/components/wasm32-wasip2/release/test_policy.wasm"  # or builtin:router
//! name = "stamp"             # the policy's name in a config (its fact namespace); default "policy"
//! settings = { mode = "header", name = "x-stamp", value = "v1" }
//! # or:
//! # config = "../../policies/dev.toml"
//! # policy = "router"
//!
//! [[case]]
//! name = "stamps the request"
//! route = "clinical"          # optional: sets head.route and applies that route's overrides (config form)
//! settings = { value = "v2" } # optional: per-case settings on top
//! request = { method = "GET", authority = "api.procare.health", path = "/api/clinical/x", headers = { accept = "application/json" }, facts = { "route.name" = "clinical" } }
//! expect = { verdict = "proceed", set_headers = { x-test-policy = "v2" }, response_headers = { x-stamp = "v2" } }
//! ```
//!
//! `expect` checks only what it names: `verdict` (`proceed`/`respond`),
//! `status`, `headers` (of a reply), `body_contains`, `set_headers`,
//! `remove_headers`, `facts`, `response_headers`, `audit` (fields passed to
//! `host.audit`, by any hook). A failing case prints each field that differs.
//!
//! The later hooks run when a case gives what they take: `response = {
//! status = 200, headers = { server = "nginx" }, source = "upstream" }` runs
//! `on-response` (on the head with this policy's facts added) and
//! `expect.on_response = { set_headers = {...}, remove_headers = [...],
//! not_set = [...] }` checks its edits; `completion = { status = 200,
//! bytes_out = 12, outcome = "ok" }` runs `on-complete`, whose audit fields
//! join `expect.audit`. Each needs the policy to declare the hook.
//!
//! Host answers can be mocked, for the whole file (`[host]`) or one case
//! (`[case.host]`, which wins key by key):
//!
//! ```toml
//! [case.host]
//! now_ms = 1767225600000                 # host.now-ms
//! token_cached = true                    # host.verified-token-cached (puts ignored)
//! limits = { per-user = "1000;w=60", gone = false }   # host.limit-policy (false: no such limit)
//! rate.per-user = { allowed = false, limit = 1000, remaining = 0, reset_ms = 60000, retry_after_ms = 1200, policy = "1000;w=60", source = "shared" }
//! rate.notify = { error = "unavailable", detail = "redis down" }      # or "unknown-limit"
//! jwks."https://auth.example/realms/x" = '{"keys":[...]}'             # io.jwks
//! jwks."https://other.example" = { error = "unknown-issuer" }         # or "unavailable"
//! ```
//!
//! A call no mock names is answered by the host state the cases run on: a
//! config's `[[limits]]` (config form), otherwise an unconfigured gateway's
//! (no limits, no issuers, the real clock).

use crate::config::{self, Source};
use crate::runtime::bindings::types;
use crate::runtime::mocks::HostMocks;
use crate::runtime::settings::flatten;
use crate::runtime::{ComponentCache, PolicyModule, PolicyState, Runtime, RuntimeLimits, Services, Settings, hooks};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    component: Option<String>,
    /// The policy's configured name (its fact namespace) in component form.
    #[serde(default = "policy_name")]
    name: String,
    #[serde(default)]
    settings: toml::Table,
    config: Option<String>,
    policy: Option<String>,
    #[serde(default)]
    host: HostTable,
    #[serde(default)]
    case: Vec<Case>,
}

/// Mocked host answers (see the module docs).
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct HostTable {
    now_ms: Option<u64>,
    token_cached: Option<bool>,
    #[serde(default)]
    limits: BTreeMap<String, LimitMock>,
    #[serde(default)]
    rate: BTreeMap<String, RateMock>,
    #[serde(default)]
    jwks: BTreeMap<String, JwksMock>,
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum LimitMock {
    Policy(String),
    Present(bool),
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum RateMock {
    Error {
        error: RateErrorKind,
        #[serde(default)]
        detail: String,
    },
    Outcome {
        allowed: bool,
        #[serde(default)]
        limit: u64,
        #[serde(default)]
        remaining: u64,
        #[serde(default)]
        reset_ms: u64,
        #[serde(default)]
        retry_after_ms: u64,
        #[serde(default)]
        policy: String,
        #[serde(default = "local")]
        source: String,
    },
}

fn local() -> String {
    "local".into()
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum RateErrorKind {
    UnknownLimit,
    Unavailable,
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum JwksMock {
    Keys(String),
    Error {
        error: JwksErrorKind,
        #[serde(default)]
        detail: String,
    },
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum JwksErrorKind {
    UnknownIssuer,
    Unavailable,
}

impl HostTable {
    /// `self` with `case`'s answers on top, as the runtime's mocks.
    fn merged(&self, case: &HostTable) -> HostMocks {
        let mut m = HostMocks { now_ms: case.now_ms.or(self.now_ms), token_cached: case.token_cached.or(self.token_cached), ..HostMocks::default() };
        for (name, l) in self.limits.iter().chain(&case.limits) {
            // `true`: the limit is as the host state has it (no mock).
            match l {
                LimitMock::Policy(p) => m.limit_policy.insert(name.clone(), Some(p.clone())),
                LimitMock::Present(false) => m.limit_policy.insert(name.clone(), None),
                LimitMock::Present(true) => m.limit_policy.remove(name),
            };
        }
        for (name, r) in self.rate.iter().chain(&case.rate) {
            let answer = match r.clone() {
                RateMock::Error { error: RateErrorKind::UnknownLimit, detail } => Err(types::RateError::UnknownLimit(detail)),
                RateMock::Error { error: RateErrorKind::Unavailable, detail } => Err(types::RateError::Unavailable(detail)),
                RateMock::Outcome { allowed, limit, remaining, reset_ms, retry_after_ms, policy, source } => Ok(types::RateOutcome { allowed, limit, remaining, reset_ms, retry_after_ms, policy, source }),
            };
            m.rate.insert(name.clone(), answer);
        }
        for (issuer, j) in self.jwks.iter().chain(&case.jwks) {
            let answer = match j.clone() {
                JwksMock::Keys(k) => Ok(k),
                JwksMock::Error { error: JwksErrorKind::UnknownIssuer, detail } => Err(types::JwksError::UnknownIssuer(detail)),
                JwksMock::Error { error: JwksErrorKind::Unavailable, detail } => Err(types::JwksError::Unavailable(detail)),
            };
            m.jwks.insert(issuer.clone(), answer);
        }
        m
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    route: Option<String>,
    #[serde(default)]
    settings: toml::Table,
    #[serde(default)]
    host: HostTable,
    request: Request,
    /// A response head to run `on-response` on (after `on-request`).
    response: Option<ResponseCase>,
    /// A completion to run `on-complete` on (its audit fields join `expect.audit`).
    completion: Option<CompletionCase>,
    expect: Expect,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResponseCase {
    #[serde(default = "ok_status")]
    status: u16,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default = "upstream")]
    source: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompletionCase {
    #[serde(default = "ok_status")]
    status: u16,
    #[serde(default)]
    bytes_in: u64,
    #[serde(default)]
    bytes_out: u64,
    #[serde(default)]
    duration_us: u64,
    upstream: Option<String>,
    region: Option<String>,
    #[serde(default = "ok_outcome")]
    outcome: String,
}

fn ok_status() -> u16 {
    200
}
fn upstream() -> String {
    "upstream".into()
}
fn ok_outcome() -> String {
    "ok".into()
}

/// What `on-response` should have done.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ExpectResponse {
    #[serde(default)]
    set_headers: BTreeMap<String, String>,
    #[serde(default)]
    remove_headers: Vec<String>,
    /// Header names that must not be set.
    #[serde(default)]
    not_set: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    #[serde(default = "get")]
    method: String,
    #[serde(default = "https")]
    scheme: String,
    #[serde(default)]
    authority: String,
    #[serde(default = "slash")]
    path: String,
    query: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    facts: BTreeMap<String, String>,
    #[serde(default = "client")]
    client_ip: String,
}

fn policy_name() -> String {
    "policy".into()
}
fn get() -> String {
    "GET".into()
}
fn https() -> String {
    "https".into()
}
fn slash() -> String {
    "/".into()
}
fn client() -> String {
    "203.0.113.7".into()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Expect {
    verdict: Option<String>,
    status: Option<u16>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body_contains: Option<String>,
    #[serde(default)]
    set_headers: BTreeMap<String, String>,
    #[serde(default)]
    remove_headers: Vec<String>,
    #[serde(default)]
    facts: BTreeMap<String, String>,
    #[serde(default)]
    response_headers: BTreeMap<String, String>,
    #[serde(default)]
    audit: BTreeMap<String, String>,
    /// Edits `on-response` made (needs `response` in the case).
    on_response: Option<ExpectResponse>,
}

/// Run every case file; prints a line per case and a summary. Returns (passed, failed).
pub async fn run(files: &[std::path::PathBuf]) -> anyhow::Result<(usize, usize)> {
    let limits = RuntimeLimits { deadline: std::time::Duration::from_millis(1000), memory_cap: 16 << 20, max_instances: 16 };
    let cache = ComponentCache::new(std::env::var_os("PORTCULLIS_CACHE_DIR").map(Into::into).or_else(ComponentCache::default_dir));
    let runtime = Runtime::new(&limits, cache)?;
    let services = Arc::new(Services::new(Some(b"portcullis policy test".to_vec())));
    let (mut passed, mut failed) = (0, 0);
    for file in files {
        let (p, f) = run_file(file, &runtime, &services).await?;
        passed += p;
        failed += f;
    }
    println!("{passed} passed, {failed} failed");
    Ok((passed, failed))
}

/// The policy under test: module, base settings, per-route overrides.
struct UnderTest {
    name: Arc<str>,
    module: Arc<PolicyModuleRef>,
    settings: BTreeMap<String, String>,
    overrides: BTreeMap<String, Settings>,
    /// The host state the cases run against: the config's (its `[[limits]]`
    /// answer `rate-acquire` for real) or the plain one.
    services: Arc<Services>,
}

enum PolicyModuleRef {
    Owned(PolicyModule),
    Snapshot(Arc<crate::snapshot::Snapshot>, String),
}

impl PolicyModuleRef {
    fn get(&self) -> &PolicyModule {
        match self {
            PolicyModuleRef::Owned(m) => m,
            PolicyModuleRef::Snapshot(s, name) => &s.policies[name].module,
        }
    }
}

async fn load(file: &Path, cf: &CaseFile, runtime: &Arc<Runtime>, services: &Arc<Services>) -> anyhow::Result<UnderTest> {
    let base = file.parent().unwrap_or(Path::new("."));
    match (&cf.component, &cf.config) {
        (Some(component), None) => {
            let bytes: Vec<u8> = if component == "builtin:router" {
                crate::snapshot::BUILTIN_ROUTER.to_vec()
            } else {
                let path = base.join(component);
                std::fs::read(&path).map_err(|e| anyhow::anyhow!("{}: component: cannot read {}: {e}", file.display(), path.display()))?
            };
            let module = runtime.load(component, &bytes).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            Ok(UnderTest { name: cf.name.as_str().into(), module: Arc::new(PolicyModuleRef::Owned(module)), settings: flatten(&cf.settings), overrides: BTreeMap::new(), services: services.clone() })
        }
        (None, Some(config_path)) => {
            let policy = cf.policy.clone().ok_or_else(|| anyhow::anyhow!("{}: `config` needs `policy` (which policy of it to test)", file.display()))?;
            let source = Source::read(&base.join(config_path))?;
            let parsed = config::parse(&source)?;
            let limits = crate::ratelimit::Limits::build(&parsed, None)?;
            let services = Arc::new(Services::new(Some(b"portcullis policy test".to_vec())).with_limits(limits));
            let snap = crate::snapshot::Snapshot::build(&source, runtime.clone(), services.clone(), None).await?;
            let loaded = snap.policies.get(&policy).ok_or_else(|| anyhow::anyhow!("{}: the config has no policy {policy:?}", file.display()))?;
            let mut settings: BTreeMap<String, String> = (*loaded.settings).clone();
            settings.extend(flatten(&cf.settings));
            let overrides = snap
                .routes
                .values()
                .filter_map(|r| r.chain.iter().find(|l| *l.policy.name == *policy).and_then(|l| l.overrides.clone()).map(|o| (r.name.clone(), o)))
                .collect();
            let name = loaded.name.clone();
            Ok(UnderTest { name, module: Arc::new(PolicyModuleRef::Snapshot(Arc::new(snap), policy)), settings, overrides, services })
        }
        _ => anyhow::bail!("{}: give exactly one of `component` or `config`", file.display()),
    }
}

async fn run_file(file: &Path, runtime: &Arc<Runtime>, services: &Arc<Services>) -> anyhow::Result<(usize, usize)> {
    let text = std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let cf: CaseFile = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    if cf.case.is_empty() {
        anyhow::bail!("{}: no [[case]]", file.display());
    }
    let ut = load(file, &cf, runtime, services).await?;
    let (mut passed, mut failed) = (0, 0);
    for case in &cf.case {
        let mut settings = ut.settings.clone();
        settings.extend(flatten(&case.settings));
        let overrides = case.route.as_ref().and_then(|r| ut.overrides.get(r).cloned());
        let head = types::RequestHead {
            id: "policy-test".into(),
            method: case.request.method.clone(),
            scheme: case.request.scheme.clone(),
            authority: case.request.authority.clone(),
            path: case.request.path.clone(),
            query: case.request.query.clone(),
            headers: case.request.headers.iter().map(|(k, v)| types::Header { name: k.to_ascii_lowercase(), value: v.as_bytes().to_vec() }).collect(),
            client_ip: case.request.client_ip.clone(),
            listener: "policy-test".into(),
            route: case.route.clone(),
            facts: case.request.facts.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        };
        let mocks = Arc::new(cf.host.merged(&case.host));
        let state_for = |mocks: &Arc<HostMocks>| {
            let mut st = PolicyState::new(ut.name.clone(), "policy-test".into(), Arc::new(settings.clone()), overrides.clone(), runtime.memory_cap(), ut.services.clone());
            st.mocks = Some(mocks.clone());
            st
        };
        let (verdict, mut audit) = hooks::on_request(runtime, ut.module.get(), state_for(&mocks), &head).await;
        let mut diffs = match &verdict {
            Ok(v) => compare(&case.expect, v),
            Err(f) => vec![format!("the policy failed ({}): {}", f.class, f.detail)],
        };
        // Later hooks see the head as the chain left it: this policy's facts added.
        let mut later = head.clone();
        if let Ok(types::Verdict::Proceed(edits)) = &verdict {
            later.facts.extend(edits.facts.iter().cloned());
        }
        if case.response.is_some() || case.completion.is_some() {
            let declared = hooks::hooks(runtime, ut.module.get(), state_for(&mocks)).await.unwrap_or(types::HookSet::empty());
            if let Some(r) = &case.response {
                if !declared.contains(types::HookSet::ON_RESPONSE) {
                    diffs.push("on_response: the policy declares no on-response hook (with these settings)".into());
                } else {
                    let resp = types::ResponseHead {
                        status: r.status,
                        headers: r.headers.iter().map(|(k, v)| types::Header { name: k.to_ascii_lowercase(), value: v.as_bytes().to_vec() }).collect(),
                        source: r.source.clone(),
                    };
                    let (edits, more) = hooks::on_response_in(runtime, ut.module.get(), state_for(&mocks), &later, &resp, None).await;
                    audit.extend(more);
                    match edits {
                        Ok(e) => compare_response(&mut diffs, case.expect.on_response.as_ref(), &e),
                        Err(f) => diffs.push(format!("on_response failed ({}): {}", f.class, f.detail)),
                    }
                }
            } else if case.expect.on_response.is_some() {
                diffs.push("on_response: expected edits, but the case gives no `response`".into());
            }
            if let Some(c) = &case.completion {
                if declared.contains(types::HookSet::ON_COMPLETE) {
                    let done = types::Completion {
                        status: c.status,
                        bytes_in: c.bytes_in,
                        bytes_out: c.bytes_out,
                        duration_us: c.duration_us,
                        upstream: c.upstream.clone(),
                        region: c.region.clone(),
                        outcome: c.outcome.clone(),
                        verdicts: vec![(ut.name.to_string(), if matches!(verdict, Ok(types::Verdict::Proceed(_))) { "proceed".into() } else { "respond".into() })],
                        facts: later.facts.clone(),
                    };
                    let (r, more) = hooks::on_complete(runtime, ut.module.get(), state_for(&mocks), &later, &done).await;
                    audit.extend(more);
                    if let Err(f) = r {
                        diffs.push(format!("on_complete failed ({}): {}", f.class, f.detail));
                    }
                } else {
                    diffs.push("on_complete: the policy declares no on-complete hook (with these settings)".into());
                }
            }
        } else if case.expect.on_response.is_some() {
            diffs.push("on_response: expected edits, but the case gives no `response`".into());
        }
        check_map(&mut diffs, "audit", &case.expect.audit, |k| audit.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()));
        if diffs.is_empty() {
            passed += 1;
            println!("ok   {}: {}", file.display(), case.name);
        } else {
            failed += 1;
            println!("FAIL {}: {}", file.display(), case.name);
            for d in diffs {
                println!("     - {d}");
            }
        }
    }
    Ok((passed, failed))
}

fn find<'a>(headers: &'a [types::Header], name: &str) -> Option<String> {
    headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| String::from_utf8_lossy(&h.value).into_owned())
}

fn check_map(diffs: &mut Vec<String>, what: &str, expected: &BTreeMap<String, String>, actual: impl Fn(&str) -> Option<String>) {
    for (k, want) in expected {
        match actual(k) {
            Some(got) if got == *want => {}
            Some(got) => diffs.push(format!("{what}.{k}: expected {want:?}, got {got:?}")),
            None => diffs.push(format!("{what}.{k}: expected {want:?}, got nothing")),
        }
    }
}

/// The on-request verdict against `expect` (audit fields are checked after every hook ran).
fn compare(expect: &Expect, verdict: &types::Verdict) -> Vec<String> {
    let mut diffs = Vec::new();
    let kind = match verdict {
        types::Verdict::Proceed(_) => "proceed",
        types::Verdict::Respond(_) => "respond",
    };
    if let Some(v) = &expect.verdict
        && v != kind
    {
        diffs.push(format!("verdict: expected {v:?}, got {kind:?}"));
    }
    match verdict {
        types::Verdict::Respond(reply) => {
            if let Some(s) = expect.status
                && s != reply.status
            {
                diffs.push(format!("status: expected {s}, got {}", reply.status));
            }
            check_map(&mut diffs, "headers", &expect.headers, |k| find(&reply.headers, k));
            if let Some(needle) = &expect.body_contains {
                let body = String::from_utf8_lossy(&reply.body);
                if !body.contains(needle.as_str()) {
                    diffs.push(format!("body: expected it to contain {needle:?}, got {body:?}"));
                }
            }
        }
        types::Verdict::Proceed(edits) => {
            if expect.status.is_some() {
                diffs.push("status: expected a reply, the policy proceeded".into());
            }
            check_map(&mut diffs, "set_headers", &expect.set_headers, |k| find(&edits.set_headers, k));
            check_map(&mut diffs, "response_headers", &expect.response_headers, |k| find(&edits.response_headers, k));
            check_map(&mut diffs, "facts", &expect.facts, |k| edits.facts.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()));
            for name in &expect.remove_headers {
                if !edits.remove_headers.iter().any(|h| h.eq_ignore_ascii_case(name)) {
                    diffs.push(format!("remove_headers: expected {name:?} to be removed"));
                }
            }
        }
    }
    diffs
}

fn compare_response(diffs: &mut Vec<String>, expect: Option<&ExpectResponse>, edits: &types::ResponseEdits) {
    let Some(expect) = expect else { return };
    check_map(diffs, "on_response.set_headers", &expect.set_headers, |k| find(&edits.set_headers, k));
    for name in &expect.remove_headers {
        if !edits.remove_headers.iter().any(|h| h.eq_ignore_ascii_case(name)) {
            diffs.push(format!("on_response.remove_headers: expected {name:?} to be removed"));
        }
    }
    for name in &expect.not_set {
        if let Some(v) = find(&edits.set_headers, name) {
            diffs.push(format!("on_response.not_set: expected no {name:?}, got {v:?}"));
        }
    }
}
