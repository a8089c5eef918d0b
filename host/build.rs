//! Builds the policy components (the `components/` workspace) for
//! wasm32-wasip2, so `cargo build` and `cargo test` are the whole story:
//! the router is embedded in the binary (`builtin:router`), and test
//! guests are found through `PORTCULLIS_<NAME>_WASM` variables.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Guests that link std (built in a cargo run of their own, see `main`).
/// Every other member of the components workspace but the SDK is a no_std
/// guest: the workspace's `members` list is the one list of guests.
const STD_GUESTS: &[&str] = &["jwt-auth"];
/// Members of the components workspace that are not guests.
const NOT_GUESTS: &[&str] = &["sdk"];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    let components = root.join("components");
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target")).join("components");

    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    rerun_if_changed(&components);

    // Two cargo runs, so that cargo features do not unify across them: the
    // no_std guests use the SDK's `allocator` feature (bump allocator, panic
    // handler, cabi_realloc); std guests must not get it (std provides those).
    let members = workspace_members(&components.join("Cargo.toml"));
    let guests: Vec<&str> = members.iter().map(String::as_str).filter(|m| !NOT_GUESTS.contains(m) && !STD_GUESTS.contains(m)).collect();
    build_guests(&components, &target_dir, &guests, 16 * 1024);
    // jsonwebtoken's guests parse JSON recursively (serde_json: up to 128
    // levels) and keep big numbers on the stack: a 16 KiB stack overflows
    // (a trap, so a 500) on a token with deeply nested claims.
    build_guests(&components, &target_dir, STD_GUESTS, 256 * 1024);
    for p in guests.iter().chain(STD_GUESTS) {
        let file = target_dir.join("wasm32-wasip2/release").join(format!("{}.wasm", p.replace('-', "_")));
        assert!(file.exists(), "missing {}", file.display());
        let var = format!("PORTCULLIS_{}_WASM", p.replace('-', "_").to_ascii_uppercase());
        println!("cargo:rustc-env={var}={}", file.display());
    }
    rerun_if_changed(&root.join("edge"));
    let target_root = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let edge = build_edge(&root, &target_root.join("edge"));
    assert!(edge.exists(), "missing {}", edge.display());
    println!("cargo:rustc-env=PORTCULLIS_EDGE_WASM={}", edge.display());
}

/// The `members` of the components workspace (`members = ["sdk", ...]` on
/// one or more lines of components/Cargo.toml).
fn workspace_members(manifest: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(manifest).expect("read components/Cargo.toml");
    let start = text.find("members").and_then(|i| text[i..].find('[').map(|j| i + j + 1)).expect("components/Cargo.toml has no members list");
    let end = start + text[start..].find(']').expect("components/Cargo.toml: unterminated members list");
    text[start..end].split(',').map(|m| m.trim().trim_matches('"').to_string()).filter(|m| !m.is_empty()).collect()
}

fn build_guests(components: &Path, target_dir: &Path, guests: &[&str], stack_size: usize) {
    // One `cargo rustc` per guest: the policy crates are rlibs (so the edge
    // can compile them in) and become components only here, with
    // `--crate-type cdylib`. The target dir is shared, so common
    // dependencies build once.
    for p in guests {
        let mut cmd = cargo(components);
        cmd.args(["rustc", "--release", "--target", "wasm32-wasip2", "--crate-type", "cdylib", "-p", p, "--target-dir"])
            .arg(target_dir);
        // A small shadow stack keeps a guest's live data in its first 64 KiB page,
        // which is what the pooling allocator keeps resident and resets cheaply.
        cmd.env("CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS", format!("-C link-arg=-zstack-size={stack_size}"));
        let status = cmd.status().expect("run cargo for the policy components");
        if !status.success() {
            panic!("building policy component {p} for wasm32-wasip2 failed (is the target installed? `rustup target add wasm32-wasip2`)");
        }
    }
}

/// The edge component (`edge/`, its own workspace: it compiles the policy
/// crates in with the SDK's `embedded` feature, which must never unify
/// with the components workspace's builds).
fn build_edge(root: &Path, target_dir: &Path) -> PathBuf {
    let mut cmd = cargo(&root.join("edge"));
    cmd.args(["build", "--release", "--target", "wasm32-wasip2", "--target-dir"]).arg(target_dir);
    let status = cmd.status().expect("run cargo for the edge component");
    if !status.success() {
        panic!("building the edge component (edge/) for wasm32-wasip2 failed");
    }
    target_dir.join("wasm32-wasip2/release/portcullis_edge.wasm")
}

/// A cargo command for a nested build, without the outer build's flags
/// (they are for the host, not the guests).
fn cargo(dir: &Path) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(dir);
    for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_RUSTFLAGS", "CARGO_TARGET_DIR", "CARGO_BUILD_TARGET", "RUSTC_WORKSPACE_WRAPPER", "CARGO_PROFILE_RELEASE_LTO", "CARGO_MAKEFLAGS"] {
        cmd.env_remove(var);
    }
    cmd
}

fn rerun_if_changed(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name();
        if name == "target" {
            continue;
        }
        if path.is_dir() {
            rerun_if_changed(&path);
        } else {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}
