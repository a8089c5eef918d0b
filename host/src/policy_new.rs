//! `portcullis policy new NAME`: a new policy crate that builds, passes its
//! own case table, and loads in the gateway, from templates in
//! `host/templates/policy`.
//!
//! Two shapes, decided by where it is created:
//!
//! * inside the components workspace (`--dir components`): a member of it
//!   (added to `members`), so `cargo build` of the gateway builds it into
//!   `target/components` with the others;
//! * anywhere else: a workspace of its own, with the release profile and
//!   linker flags the gateway's guests use (`.cargo/config.toml`), and the
//!   SDK by path.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};

const LIB_RS: &str = include_str!("../templates/policy/lib.rs");
const CARGO_TOML: &str = include_str!("../templates/policy/Cargo.toml");
const CASES_TOML: &str = include_str!("../templates/policy/cases.toml");

/// The profile and linker flags of the components workspace, for a policy
/// built on its own: small, no unwinding, a 16 KiB shadow stack (the guest's
/// live data then stays in the first, resident page of its memory).
const STANDALONE_PROFILE: &str = r#"
# A workspace of its own, built like the gateway's components.
[workspace]

[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = true
panic = "abort"

[profile.dev]
panic = "abort"
"#;

const CARGO_CONFIG: &str = r#"[build]
target = "wasm32-wasip2"

[target.wasm32-wasip2]
# A small shadow stack keeps a guest's live data in its first 64 KiB page,
# which the gateway's pooling allocator keeps resident and resets cheaply.
rustflags = ["-C", "link-arg=-zstack-size=16384"]
"#;

/// Names the host keeps for its own facts, and the SDK's crate name.
const RESERVED: &[&str] = &["route", "gateway", "body", "sdk", "portcullis-sdk"];

/// What was created.
pub struct Created {
    /// The crate's directory.
    pub dir: PathBuf,
    /// The command that builds it.
    pub build: String,
    /// Its case table.
    pub cases: PathBuf,
}

/// Create policy `name` under `parent`. `sdk`: the SDK crate's directory
/// (for a policy outside the components workspace).
pub fn create(name: &str, parent: &Path, sdk: Option<&Path>) -> anyhow::Result<Created> {
    check_name(name)?;
    let dir = parent.join(name);
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    let workspace = parent.join("Cargo.toml");
    let member = std::fs::read_to_string(&workspace).ok().filter(|t| t.contains("[workspace]") && t.contains("portcullis-sdk"));
    let crate_name = name.replace('-', "_");
    let type_name: String = name.split('-').map(|w| w[..1].to_ascii_uppercase() + &w[1..]).collect();

    let (sdk_dependency, standalone, wasm, build) = if member.is_some() {
        ("portcullis-sdk.workspace = true".to_string(), String::new(), format!("../../target/components/wasm32-wasip2/release/{crate_name}.wasm"), "cargo build   # from the repository root: the gateway's build compiles every component".to_string())
    } else {
        let sdk = match sdk {
            Some(p) => p.to_path_buf(),
            None => default_sdk().context("no --sdk given, and the SDK is not where this binary was built from; pass --sdk PATH/TO/components/sdk")?,
        };
        let sdk = std::fs::canonicalize(&sdk).with_context(|| format!("--sdk {}", sdk.display()))?;
        if !sdk.join("Cargo.toml").exists() {
            bail!("{} is not the SDK crate (no Cargo.toml)", sdk.display());
        }
        let dep = format!("portcullis-sdk = {{ path = {:?} }}", sdk.display().to_string());
        (dep, STANDALONE_PROFILE.to_string(), format!("target/wasm32-wasip2/release/{crate_name}.wasm"), "cargo build --release".to_string())
    };
    let fill = |t: &str| {
        t.replace("{{name}}", name)
            .replace("{{type}}", &type_name)
            .replace("{{sdk_dependency}}", &sdk_dependency)
            .replace("{{standalone}}", &standalone)
            .replace("{{wasm}}", &wasm)
            .replace("{{build}}", &build)
            .replace("{{cases_path}}", "cases.toml")
    };
    std::fs::create_dir_all(dir.join("src")).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("Cargo.toml"), fill(CARGO_TOML))?;
    std::fs::write(dir.join("src/lib.rs"), fill(LIB_RS))?;
    std::fs::write(dir.join("cases.toml"), fill(CASES_TOML))?;
    if let Some(text) = member {
        std::fs::write(&workspace, add_member(&text, name).with_context(|| format!("{}: cannot find the members list", workspace.display()))?)?;
    } else {
        std::fs::create_dir_all(dir.join(".cargo"))?;
        std::fs::write(dir.join(".cargo/config.toml"), CARGO_CONFIG)?;
    }
    Ok(Created { cases: dir.join("cases.toml"), dir, build })
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.ends_with('-')
        && !name.contains("--");
    if !ok {
        bail!("{name:?} is not a policy name: lower-case letters, digits and single '-', starting with a letter");
    }
    if RESERVED.contains(&name) {
        bail!("{name:?} is reserved");
    }
    Ok(())
}

/// The SDK next to the sources this binary was built from, if still there.
fn default_sdk() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../components/sdk");
    p.join("Cargo.toml").exists().then_some(p)
}

/// `text` with `name` appended to its `members = [...]`.
fn add_member(text: &str, name: &str) -> Option<String> {
    let start = text.find("members")?;
    let open = start + text[start..].find('[')?;
    let close = open + text[open..].find(']')?;
    let inside = text[open + 1..close].trim_end();
    let sep = if inside.trim().is_empty() { "" } else if inside.ends_with(',') { " " } else { ", " };
    Some(format!("{}{}{sep}\"{name}\"{}", &text[..open + 1], inside, &text[close..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for bad in ["", "Upper", "9lives", "a_b", "a--b", "trailing-", "route", "body"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        check_name("tenant-check2").unwrap();
    }

    #[test]
    fn members_are_appended() {
        assert_eq!(add_member("[workspace]\nmembers = [\"sdk\", \"router\"]\n", "x").unwrap(), "[workspace]\nmembers = [\"sdk\", \"router\", \"x\"]\n");
        assert_eq!(add_member("members = [\n  \"sdk\",\n]", "x").unwrap(), "members = [\n  \"sdk\", \"x\"]");
        assert_eq!(add_member("members = []", "x").unwrap(), "members = [\"x\"]");
    }
}
