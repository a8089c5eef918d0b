//! `portcullis check` reports every configuration error with file, line and key path.

use crate::support::*;
use std::process::Command;

fn check(config: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, config).unwrap();
    let out = run_check(&path);
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn reports_wrong_pool_unknown_component_and_failing_check_config() {
    let config = format!(
        r#"[[listeners]]
name = "public"
address = "127.0.0.1:0"

[policies.router]
component = "builtin:router"

[policies.missing]
component = "no/such/policy.wasm"

[policies.picky]
component = "{TEST_POLICY}"
settings = {{ mode = "fail-check" }}

[[pools]]
name = "real"
targets = ["127.0.0.1:9"]

[[routes]]
name = "a"
path = "/a"
pools = ["nope"]
chain = ["picky"]
"#
    );
    let (ok, _out, err) = check(&config);
    assert!(!ok, "check must fail");
    eprintln!("{err}");
    assert!(err.contains("bad.toml:22:10: routes[0].pools[0]: unknown pool \"nope\" (pools: real)"), "{err}");
    assert!(err.contains("bad.toml:9:13: policies.missing.component: cannot read"), "{err}");
    assert!(err.contains("policies.picky: check-config refused the settings: setting \"mode\": fail-check always fails its check"), "{err}");
}

#[test]
fn reports_type_errors_with_key_path_and_unknown_keys() {
    let (ok, _, err) = check("[[listeners]]\nname = \"p\"\naddress = \"127.0.0.1:0\"\n[[pools]]\nname = \"x\"\ntargets = [\"127.0.0.1:1\"]\nconnect_timeout_ms = \"soon\"\n");
    assert!(!ok);
    assert!(err.contains("bad.toml:7:22: pools[0].connect_timeout_ms: invalid type: string \"soon\", expected u64"), "{err}");

    let (ok, _, err) = check("[[listeners]]\nname = \"p\"\naddress = \"127.0.0.1:0\"\nlisten_backlog = 5\n");
    assert!(!ok);
    assert!(err.contains("bad.toml:4:1: listeners[0].listen_backlog: unknown field `listen_backlog`"), "{err}");
}

#[test]
fn a_good_config_checks_ok_and_serve_refuses_a_bad_one() {
    let (ok, out, err) = check(&format!("{}\n[[pools]]\nname = \"p\"\ntargets = [\"127.0.0.1:9\"]\n[[routes]]\nname = \"r\"\npath = \"/\"\npools = [\"p\"]\n", config_head()));
    assert!(ok, "{err}");
    assert!(out.contains("ok (1 routes, 1 policies, 1 pools"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, format!("{}\n[[routes]]\nname = \"r\"\npath = \"/\"\npools = [\"ghost\"]\n", config_head())).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis")).args(["serve", "--config"]).arg(&path).env("PORTCULLIS_CACHE_DIR", cache_dir()).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown pool \"ghost\""));
}

/// Every gateway config in `policies/` (the demo's and the four platforms')
/// passes `portcullis check`. A TOML file there without listeners is a
/// residency regions file, and some config must name it.
#[test]
fn the_embedded_dev_config_and_every_platform_config_check_ok() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let mut configs = Vec::new();
    let mut regions_files = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let table: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if table.contains_key("listeners") { configs.push((name, table)) } else { regions_files.push(name) }
    }
    configs.sort_by(|a, b| a.0.cmp(&b.0));
    let names: Vec<&str> = configs.iter().map(|(n, _)| n.as_str()).collect();
    for expected in ["dev.toml", "healthcare-backend.toml", "nutri.toml", "prescripcare.toml", "procare.toml"] {
        assert!(names.contains(&expected), "policies/{expected} is missing (found {names:?})");
    }
    for (name, _) in &configs {
        let out = run_check(&dir.join(name));
        assert!(out.status.success(), "policies/{name}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("ok ("), "policies/{name}: {}", String::from_utf8_lossy(&out.stdout));
    }
    for regions in &regions_files {
        let named = configs.iter().any(|(_, t)| t.get("residency").and_then(|r| r.get("regions")).and_then(|v| v.as_str()) == Some(regions.as_str()));
        assert!(named, "policies/{regions} has no [[listeners]] and no config names it as [residency] regions");
    }
}

/// Every file in tests/configs/bad is refused with exactly the errors in its `.err` file.
#[test]
fn bad_configs_give_their_exact_errors() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/configs/bad");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let expected = std::fs::read_to_string(path.with_extension("err")).unwrap_or_else(|_| panic!("{name} has no .err file"));
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis")).current_dir(&dir).args(["check", "--config", &name]).env("PORTCULLIS_CACHE_DIR", cache_dir()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} was accepted");
        for line in expected.lines().filter(|l| !l.trim().is_empty()) {
            assert!(stderr.lines().any(|l| l == line), "{name}: expected the line\n  {line}\nin\n{stderr}");
        }
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} bad configs found");
}

#[test]
fn serve_names_the_file_and_key_of_a_listener_that_cannot_bind() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let config = format!(
        "[[listeners]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n[[listeners]]\nname = \"second\"\naddress = \"{addr}\"\n[policies.router]\ncomponent = \"builtin:router\"\n[[pools]]\nname = \"p\"\ntargets = [\"127.0.0.1:9\"]\n[[routes]]\nname = \"all\"\npath = \"/\"\npools = [\"p\"]\n"
    );
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis")).args(["serve", "--config"]).arg(&path).env("PORTCULLIS_CACHE_DIR", cache_dir()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let want = format!("{}: listeners[1].address: cannot bind {addr} (listener \"second\")", path.display());
    assert!(err.contains(&want), "no `{want}` in:\n{err}");
}
