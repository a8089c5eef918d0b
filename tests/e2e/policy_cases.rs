//! `portcullis policy test`: every component's case table passes, and a wrong
//! expectation fails with a diff that names the field.

use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn policy_test(files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis")).args(["policy", "test"]).args(files).env("PORTCULLIS_CACHE_DIR", cache_dir()).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn every_component_case_table_passes() {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(root().join("components")).unwrap() {
        let cases = entry.unwrap().path().join("cases.toml");
        if cases.exists() {
            files.push(cases);
        }
    }
    assert!(files.len() >= 3, "case tables found: {files:?}");
    let (ok, out) = policy_test(&files);
    assert!(ok, "{out}");
    assert!(out.contains(" passed, 0 failed"), "{out}");
}

#[test]
fn a_wrong_expectation_fails_with_a_diff_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wrong.toml");
    std::fs::write(
        &file,
        format!(
            "component = \"{TEST_POLICY}\"\nsettings = {{ mode = \"header\", name = \"x-stamp\", value = \"v1\" }}\n\
             [[case]]\nname = \"expects the wrong stamp\"\nrequest = {{ path = \"/x\" }}\nexpect = {{ verdict = \"proceed\", response_headers = {{ x-stamp = \"v2\" }} }}\n"
        ),
    )
    .unwrap();
    let (ok, out) = policy_test(&[file]);
    assert!(!ok, "{out}");
    assert!(out.contains("FAIL"), "{out}");
    assert!(out.contains("response_headers.x-stamp: expected \"v2\", got \"v1\""), "{out}");
    assert!(out.contains("0 passed, 1 failed"), "{out}");
}

#[test]
fn on_response_edits_are_checked_and_a_wrong_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wrong-response.toml");
    let headers = env!("PORTCULLIS_SECURITY_HEADERS_WASM");
    std::fs::write(
        &file,
        format!(
            "component = \"{headers}\"\nname = \"security-headers\"\nsettings = {{ allow-origins = [\"https://doctor.procare.health\"] }}\n\
             [[case]]\nname = \"right\"\nrequest = {{ scheme = \"https\", headers = {{ origin = \"https://doctor.procare.health\" }} }}\nresponse = {{ headers = {{ server = \"nginx\" }} }}\n\
             expect = {{ on_response = {{ set_headers = {{ access-control-allow-origin = \"https://doctor.procare.health\" }}, remove_headers = [\"server\"] }} }}\n\
             [[case]]\nname = \"wrong\"\nrequest = {{ scheme = \"http\", headers = {{ origin = \"https://doctor.procare.health\" }} }}\nresponse = {{ status = 502, source = \"gateway\" }}\n\
             expect = {{ on_response = {{ set_headers = {{ strict-transport-security = \"max-age=63072000; includeSubDomains\" }} }} }}\n"
        ),
    )
    .unwrap();
    let (ok, out) = policy_test(&[file]);
    assert!(!ok, "{out}");
    assert!(out.contains("ok   ") && out.contains(": right"), "{out}");
    assert!(out.contains("on_response.set_headers.strict-transport-security: expected \"max-age=63072000; includeSubDomains\", got nothing"), "{out}");
    assert!(out.contains("1 passed, 1 failed"), "{out}");
}
