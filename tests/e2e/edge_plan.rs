//! `portcullis edge plan` and `portcullis edge manifest`, run as the real
//! binary on the real configs of `policies/`: what the edge component
//! (issue 10) is given, and the `spin.toml` committed at the repository root.

use crate::support::*;
use base64::Engine;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use toml::{Table, Value as Toml};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `portcullis ARGS` with `envs`: (exit 0, stdout, stderr).
fn run(args: &[&str], envs: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis")).args(args).envs(envs.iter().copied()).env("PORTCULLIS_CACHE_DIR", cache_dir()).env("PORTCULLIS_LOG", "error").output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn plan(config: &Path, envs: &[(&str, &str)]) -> serde_json::Value {
    let (ok, out, err) = run(&["edge", "plan", "--config", config.to_str().unwrap()], envs);
    assert!(ok, "edge plan failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// The chain version `check` prints for a config.
fn check_version(config: &Path, envs: &[(&str, &str)]) -> String {
    let (ok, out, err) = run(&["check", "--config", config.to_str().unwrap()], envs);
    assert!(ok, "check failed: {err}");
    out.trim().rsplit(' ').next().unwrap().trim_end_matches(')').to_string()
}

#[test]
fn the_plan_of_dev_toml_carries_its_routes_pools_and_router_table() {
    let config = root().join("policies/dev.toml");
    let p = plan(&config, &[]);
    assert_eq!(p["format"], "portcullis-edge/1");
    // Exactly the contract's members.
    let keys: Vec<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["chain", "format", "issuers", "limits", "max_request_head", "policies", "pools", "router", "routes", "trusted_proxies"]);
    assert_eq!(p["chain"], check_version(&config, &[]));
    assert_eq!(p["router"], "router");
    assert_eq!(p["policies"].as_object().unwrap().len(), 1);
    let router = &p["policies"]["router"];
    assert_eq!(router["crate"], "router");
    assert_eq!(router["namespace"], "route");
    let table = router["settings"]["table"].as_str().unwrap();
    assert!(table.contains("clinical\t\tprefix\t/api/clinical\tGET,POST\tclinical-monitor\t"), "{table}");
    let routes = p["routes"].as_object().unwrap();
    assert_eq!(routes.keys().collect::<Vec<_>>(), ["care", "clinical", "doctor", "engagement", "insights", "library", "lifestyle"]);
    assert_eq!(
        p["routes"]["library"],
        json!({"chain": [], "pools": ["learning-library"], "narrowed_by": null, "body_limit": 16777216, "websocket": false, "timeout_ms": null, "body_hmac": null})
    );
    assert_eq!(p["pools"].as_object().unwrap().len(), 7);
    assert_eq!(p["pools"]["clinical-monitor"], json!({"region": "fsn1", "scheme": "http", "targets": ["127.0.0.1:7102"], "connect_timeout_ms": 2000, "response_timeout_ms": 30000}));
    assert_eq!(p["limits"], json!({}));
    assert_eq!(p["issuers"], json!({}));
    assert_eq!(p["trusted_proxies"], json!([]));
    assert_eq!(p["max_request_head"], 65536);
    // The same configuration gives the same bytes (sorted maps, no clock, no randomness).
    let once = run(&["edge", "plan", "--config", config.to_str().unwrap()], &[]).1;
    let twice = run(&["edge", "plan", "--config", config.to_str().unwrap()], &[]).1;
    assert_eq!(once, twice);
    assert_eq!(once.lines().count(), 1, "one line of JSON");
}

/// policies/procare.toml with its component paths pointed at this build's
/// components, its regions file by absolute path, its JWKS URL on a closed
/// loopback port (nothing leaves the machine), plus a body HMAC on the
/// webhook route (key from the environment) and an HS256 issuer from a
/// secret file, so the plan's `body_hmac` and `{"jwks": ...}` show.
fn procare(dir: &Path) -> PathBuf {
    let policies = root().join("policies");
    let mut config: Table = std::fs::read_to_string(policies.join("procare.toml")).unwrap().parse().unwrap();
    for (_, def) in config["policies"].as_table_mut().unwrap().iter_mut() {
        let def = def.as_table_mut().unwrap();
        let component = def["component"].as_str().unwrap().to_string();
        if let Some(file) = component.strip_prefix("../target/components/wasm32-wasip2/release/") {
            let built = PathBuf::from(env!("PORTCULLIS_TEST_POLICY_WASM")).with_file_name(file);
            def.insert("component".into(), built.to_str().unwrap().into());
        }
    }
    let residency = config["residency"].as_table_mut().unwrap();
    residency.insert("regions".into(), policies.join("regions.toml").to_str().unwrap().into());
    let mut jwks = config["jwks"].as_array().unwrap().clone();
    jwks[0].as_table_mut().unwrap().insert("url".into(), "http://127.0.0.1:9/realms/procare/certs".into());
    let mut hs = Table::new();
    hs.insert("issuer".into(), "hs-test".into());
    hs.insert("secret_file".into(), "hs.key".into());
    hs.insert("kid".into(), "k1".into());
    jwks.push(Toml::Table(hs));
    config.insert("jwks".into(), Toml::Array(jwks));
    for route in config["routes"].as_array_mut().unwrap() {
        let route = route.as_table_mut().unwrap();
        if route["name"].as_str() == Some("whatsapp-webhook") {
            let mut hmac = Table::new();
            hmac.insert("secret_env".into(), "PORTCULLIS_TEST_WEBHOOK_KEY".into());
            route.insert("body_hmac".into(), Toml::Table(hmac));
        }
    }
    std::fs::write(dir.join("hs.key"), HS_SECRET).unwrap();
    let path = dir.join("procare.toml");
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    path
}

const WEBHOOK_KEY: &str = "whatsapp-webhook-hmac-key-of-forty-bytes!";
const HS_SECRET: &str = "an-hs256-shared-secret-of-32-bytes-or-more";

#[test]
fn the_plan_of_procare_carries_crates_overrides_limits_issuers_and_the_body_hmac() {
    let dir = tempfile::tempdir().unwrap();
    let config = procare(dir.path());
    let envs = [("PORTCULLIS_TEST_WEBHOOK_KEY", WEBHOOK_KEY)];
    let p = plan(&config, &envs);
    assert_eq!(p["chain"], check_version(&config, &envs));

    let crates: Vec<(String, String)> = p["policies"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v["crate"].as_str().unwrap().to_string())).collect();
    let expected = [
        ("ip-limit", "rate-limit"),
        ("jwt", "jwt-auth"),
        ("residency", "residency"),
        ("router", "router"),
        ("security-headers", "security-headers"),
        ("user-limit", "rate-limit"),
        ("whatsapp-webhook", "webhook-signature"),
    ];
    assert_eq!(crates, expected.map(|(a, b)| (a.to_string(), b.to_string())));
    assert_eq!(p["policies"]["jwt"]["namespace"], "jwt");
    assert_eq!(p["policies"]["jwt"]["settings"]["issuers.procare.algorithms"], "RS256,ES256");
    assert_eq!(p["policies"]["ip-limit"]["settings"]["rules.per-ip.key"], "ip");
    // Residency's derived settings, as the node hands them to the policy.
    let residency = &p["policies"]["residency"]["settings"];
    assert_eq!(residency["namespace"], "residency");
    assert!(residency["pools"].as_str().unwrap().contains("clinical-monitor-ash=ash"), "{residency}");
    assert!(residency["rules"].as_str().unwrap().contains('\t'), "{residency}");

    let clinical = &p["routes"]["clinical"];
    let chain: Vec<&str> = clinical["chain"].as_array().unwrap().iter().map(|l| l["policy"].as_str().unwrap()).collect();
    assert_eq!(chain, ["security-headers", "ip-limit", "jwt", "user-limit", "residency"]);
    assert_eq!(clinical["pools"], json!(["clinical-monitor", "clinical-monitor-ash"]));
    assert_eq!(clinical["narrowed_by"], "residency");
    assert_eq!(clinical["body_limit"], 2 * 1024 * 1024);
    assert_eq!(clinical["chain"][0]["overrides"], json!(null));
    assert_eq!(p["routes"]["notifications"]["chain"][3], json!({"policy": "user-limit", "overrides": {"rules.notify-daily.enabled": "true"}}));
    assert_eq!(p["routes"]["library"]["chain"][0]["overrides"], json!({"allow-origins": "", "content-security-policy": "", "frame-options": "SAMEORIGIN"}));
    assert_eq!(p["routes"]["engagement-events"]["websocket"], true);
    assert_eq!(p["routes"]["whatsapp-webhook"]["body_hmac"], json!({"key_hex": hex::encode(WEBHOOK_KEY), "max_bytes": 1024 * 1024}));
    assert_eq!(p["routes"]["clinical"]["body_hmac"], json!(null));

    assert_eq!(p["pools"]["clinical-monitor-ash"], json!({"region": "ash", "scheme": "http", "targets": ["10.8.1.21:8000", "10.8.1.22:8000"], "connect_timeout_ms": 2000, "response_timeout_ms": 10000}));
    assert_eq!(p["limits"]["per-ip"], json!({"interval_ns": 100_000_000u64, "burst": 20, "quota": 10, "policy": "\"per-ip\";q=10;w=1;burst=20"}));
    assert_eq!(p["limits"]["per-user"], json!({"interval_ns": 60_000_000u64, "burst": 1000, "quota": 1000, "policy": "\"per-user\";q=1000;w=60"}));
    assert_eq!(p["limits"]["notify-daily"], json!({"interval_ns": 17_280_000_000_000u64, "burst": 5, "quota": 5, "policy": "\"notify-daily\";q=5;w=86400"}));

    assert_eq!(p["issuers"]["https://auth.procare.health/realms/procare"], json!({"url": "http://127.0.0.1:9/realms/procare/certs"}));
    let hs: serde_json::Value = serde_json::from_str(p["issuers"]["hs-test"]["jwks"].as_str().unwrap()).unwrap();
    assert_eq!(hs, json!({"keys": [{"kty": "oct", "kid": "k1", "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(HS_SECRET)}]}));
    assert_eq!(p["trusted_proxies"], json!(["10.0.0.0/16"]));
    assert_eq!(p["max_request_head"], 32 * 1024);

    // Its manifest lets the edge reach every pool target and the JWKS origin, and nothing with a path.
    let (ok, out, err) = run(&["edge", "manifest", "--config", config.to_str().unwrap()], &envs);
    assert!(ok, "{err}");
    let manifest: Table = out.parse().unwrap();
    let hosts = allowed_hosts(&manifest);
    for target in ["http://engagement-engine:8000", "http://10.8.1.21:8000", "http://10.8.1.22:8000", "http://10.0.3.71:8000", "http://127.0.0.1:9"] {
        assert!(hosts.iter().any(|h| h == target), "{target} not in {hosts:?}");
    }
    spin_rules(&manifest, &p);
}

#[test]
fn a_policy_the_edge_has_not_compiled_in_is_refused_by_name_and_check_errors_are_checks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let config = format!(
        "{}\n[policies.probe]\ncomponent = \"{}\"\nsettings = {{ mode = \"header\", name = \"x-stamp\", value = \"v1\" }}\n[[pools]]\nname = \"p\"\ntargets = [\"127.0.0.1:9\"]\n[[routes]]\nname = \"r\"\npath = \"/\"\npools = [\"p\"]\nchain = [\"probe\"]\n",
        config_head(),
        TEST_POLICY
    );
    std::fs::write(&path, &config).unwrap();
    let line = config.lines().position(|l| l.starts_with("component = \"/")).unwrap() + 1;
    for command in ["plan", "manifest"] {
        let (ok, out, err) = run(&["edge", command, "--config", path.to_str().unwrap()], &[]);
        assert!(!ok && out.is_empty(), "{command}: {out}");
        let expected = format!(
            "{}:{line}:13: policies.probe.component: policy \"probe\" runs component \"{TEST_POLICY}\", which is not compiled into the edge (edge crates: router, security-headers, rate-limit, jwt-auth, residency, webhook-signature)",
            path.display()
        );
        assert_eq!(err.trim(), expected, "{command}");
    }

    // A configuration `check` refuses: the same errors, the same exit status.
    std::fs::write(&path, format!("{}\n[[routes]]\nname = \"r\"\npath = \"/\"\npools = [\"ghost\"]\n", config_head())).unwrap();
    let (check_ok, _, check_err) = run(&["check", "--config", path.to_str().unwrap()], &[]);
    let (plan_ok, plan_out, plan_err) = run(&["edge", "plan", "--config", path.to_str().unwrap()], &[]);
    assert!(!check_ok && !plan_ok && plan_out.is_empty());
    assert!(plan_err.contains("unknown pool \"ghost\""), "{plan_err}");
    assert_eq!(plan_err, check_err);
}

#[test]
fn the_committed_spin_toml_is_the_manifest_of_dev_toml() {
    let (ok, out, err) = run(&["edge", "manifest", "--config", root().join("policies/dev.toml").to_str().unwrap()], &[]);
    assert!(ok, "{err}");
    let committed = std::fs::read_to_string(root().join("spin.toml")).unwrap();
    assert!(committed == out, "spin.toml is stale: run `portcullis edge manifest --config policies/dev.toml > spin.toml`\n--- generated:\n{out}");
}

#[test]
fn the_committed_spin_toml_keeps_spins_rules() {
    let manifest: Table = std::fs::read_to_string(root().join("spin.toml")).unwrap().parse().unwrap();
    let p = plan(&root().join("policies/dev.toml"), &[]);
    spin_rules(&manifest, &p);
    let component = &manifest["component"]["portcullis-edge"];
    assert_eq!(component["source"].as_str(), Some("target/edge/wasm32-wasip2/release/portcullis_edge.wasm"));
    assert_eq!(component["key_value_stores"], Toml::Array(vec!["default".into()]));
    assert_eq!(component["build"]["command"].as_str(), Some("cargo build --manifest-path edge/Cargo.toml --target wasm32-wasip2 --release --target-dir target/edge"));
    assert_eq!(manifest["trigger"]["http"][0]["route"].as_str(), Some("/..."));
    assert_eq!(manifest["trigger"]["http"][0]["component"].as_str(), Some("portcullis-edge"));
    let vars = manifest["variables"].as_table().unwrap();
    for secret in ["portcullis_config", "pseudonym_key", "collector_token"] {
        assert_eq!(vars[secret]["secret"].as_bool(), Some(true), "{secret}");
    }
    assert_eq!(vars["portcullis_config"]["required"].as_bool(), Some(true));
    assert_eq!(vars["pseudonym_key"]["required"].as_bool(), Some(true));
    assert_eq!(vars["audit_collector"]["default"].as_str(), Some(""));
    assert_eq!(vars["collector_token"]["default"].as_str(), Some(""));
    // The --wasm argument names another artifact.
    let (ok, out, _) = run(&["edge", "manifest", "--config", root().join("policies/dev.toml").to_str().unwrap(), "--wasm", "dist/edge.wasm"], &[]);
    assert!(ok);
    let other: Table = out.parse().unwrap();
    assert_eq!(other["component"]["portcullis-edge"]["source"].as_str(), Some("dist/edge.wasm"));
}

fn allowed_hosts(manifest: &Table) -> Vec<String> {
    manifest["component"]["portcullis-edge"]["allowed_outbound_hosts"].as_array().unwrap().iter().map(|h| h.as_str().unwrap().to_string()).collect()
}

/// The rules of Spin's manifest the spike found (docs/edge-on-spin-spike.md §4).
fn spin_rules(manifest: &Table, plan: &serde_json::Value) {
    assert_eq!(manifest["spin_manifest_version"].as_integer(), Some(2));
    let lower_snake = |s: &str| !s.is_empty() && s.split('_').all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())) && s.as_bytes()[0].is_ascii_lowercase();
    let kebab = |s: &str| !s.is_empty() && s.split('-').all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    let app_vars = manifest["variables"].as_table().unwrap();
    for name in app_vars.keys() {
        assert!(lower_snake(name), "variable {name:?} is not lower snake case");
        let v = app_vars[name].as_table().unwrap();
        assert!(!(v.contains_key("required") && v.contains_key("default")), "variable {name} is both required and defaulted");
    }
    for (id, component) in manifest["component"].as_table().unwrap() {
        assert!(kebab(id), "component id {id:?} is not kebab case");
        for (name, value) in component["variables"].as_table().unwrap() {
            assert!(lower_snake(name), "component variable {name:?}");
            let template = value.as_str().unwrap();
            let used = template.trim_start_matches("{{").trim_end_matches("}}").trim();
            assert!(app_vars.contains_key(used), "{template} names no application variable");
        }
    }
    assert!(manifest["component"].as_table().unwrap().contains_key(manifest["trigger"]["http"][0]["component"].as_str().unwrap()));
    let hosts = allowed_hosts(manifest);
    for host in &hosts {
        if host.starts_with("{{") {
            let var = host.trim_start_matches("{{").trim_end_matches("}}").trim();
            assert!(app_vars.contains_key(var), "{host}");
            continue;
        }
        let (scheme, rest) = host.split_once("://").unwrap_or_else(|| panic!("{host}: no scheme"));
        assert!(["http", "https"].contains(&scheme), "{host}");
        assert!(!rest.is_empty() && !rest.contains('/'), "{host}: a host and port, no path");
        if let Some((_, port)) = rest.rsplit_once(':') {
            assert!(port.parse::<u16>().is_ok() || port == "*", "{host}: bad port");
        }
    }
    assert!(hosts.iter().any(|h| h == "{{ audit_collector }}"), "{hosts:?}");
    for (name, pool) in plan["pools"].as_object().unwrap() {
        for target in pool["targets"].as_array().unwrap() {
            let want = format!("{}://{}", pool["scheme"].as_str().unwrap(), target.as_str().unwrap());
            assert!(hosts.contains(&want), "pool {name}: {want} is not an allowed outbound host");
        }
    }
}
