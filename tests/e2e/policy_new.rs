//! `portcullis policy new`: the generated crate builds for wasm32-wasip2,
//! passes its generated case table with `policy test`, and loads and
//! decides in the real gateway — one test, as a platform team would use it.

use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The components' target dir (where the gateway's build put the guests):
/// building the new policy there reuses the SDK's compiled dependencies.
fn components_target() -> PathBuf {
    Path::new(env!("PORTCULLIS_ROUTER_WASM")).ancestors().nth(3).unwrap().to_path_buf()
}

fn portcullis(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis")).args(args).current_dir(dir).env("PORTCULLIS_CACHE_DIR", cache_dir()).env("PORTCULLIS_LOG", "warn").output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test]
async fn a_new_policy_builds_passes_its_cases_and_loads_in_the_gateway() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, out) = portcullis(&["policy", "new", "tenant-check", "--dir", "."], tmp.path());
    assert!(ok, "{out}");
    let project = tmp.path().join("tenant-check");
    for f in ["Cargo.toml", "src/lib.rs", "cases.toml", ".cargo/config.toml"] {
        assert!(project.join(f).exists(), "{f} generated");
    }
    // Refused: the same name again, a bad name, a reserved one.
    for (name, why) in [("tenant-check", "already exists"), ("Tenant", "not a policy name"), ("body", "reserved")] {
        let (ok, out) = portcullis(&["policy", "new", name, "--dir", "."], tmp.path());
        assert!(!ok && out.contains(why), "{name}: {out}");
    }

    // Build it as its README says (`cargo build --release`), with the outer
    // build's variables removed (they are for the host, not the guest).
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo.args(["build", "--release"]).current_dir(&project).env("CARGO_TARGET_DIR", components_target());
    for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_RUSTFLAGS", "CARGO_BUILD_TARGET", "RUSTC_WORKSPACE_WRAPPER", "CARGO_MAKEFLAGS"] {
        cargo.env_remove(var);
    }
    let built = cargo.output().unwrap();
    assert!(built.status.success(), "cargo build: {}", String::from_utf8_lossy(&built.stderr));
    // Where the generated cases expect it (the project's own target dir).
    let wasm = project.join("target/wasm32-wasip2/release/tenant_check.wasm");
    std::fs::create_dir_all(wasm.parent().unwrap()).unwrap();
    std::fs::copy(components_target().join("wasm32-wasip2/release/tenant_check.wasm"), &wasm).unwrap();

    let (ok, out) = portcullis(&["policy", "test", "cases.toml"], &project);
    assert!(ok && out.contains("3 passed, 0 failed"), "{out}");

    // And in the gateway: check accepts it, requests get its verdicts.
    let up = Upstream::start("tenants").await;
    let mut config = config_head();
    config.push_str(&format!(
        "\n[policies.tenant-check]\ncomponent = \"{}\"\nsettings = {{ header = \"x-tenant\" }}\n\n[[pools]]\nname = \"up\"\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"api\"\npath = \"/\"\npools = [\"up\"]\nchain = [\"tenant-check\"]\n",
        wasm.display(),
        up.addr
    ));
    let gw = Gateway::start(&config);
    let a = get(&gw.url("/records"), &[]).await;
    let p = assert_problem(&a, 400);
    assert!(p["detail"].as_str().unwrap().contains("x-tenant"), "{p}");
    let a = get(&gw.url("/records"), &[("x-tenant", "procare")]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["service"], "tenants");

    // A bad setting is refused by check with the key named.
    let bad = config.replace("settings = { header = \"x-tenant\" }", "settings = { header = \"x-tenant\", status = 200 }");
    let path = tmp.path().join("bad.toml");
    std::fs::write(&path, bad).unwrap();
    let out = run_check(&path);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains("setting \"status\""), "{text}");
}
