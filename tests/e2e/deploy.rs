//! The deployment files: no Docker engine runs here, so the Dockerfile is
//! parsed by its grammar (`dockerfile-parser`) and `deploy/docker-compose.yml`
//! as YAML (`yaml-rust2`), and their structure is checked against the
//! repository and the platform configs they ship.

use dockerfile_parser::{Dockerfile, Instruction};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use yaml_rust2::{Yaml, YamlLoader};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every gateway config in `policies/` but the demo's: what the image serves.
fn platform_configs() -> Vec<(String, toml::Table)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root().join("policies")).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
        if path.extension().is_some_and(|e| e == "toml") && stem != "dev" {
            let table: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
            if table.contains_key("listeners") {
                out.push((stem, table));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(out.len() >= 4, "{:?}", out.iter().map(|c| &c.0).collect::<Vec<_>>());
    out
}

fn admin_port(config: &toml::Table) -> String {
    let address = config["admin"]["address"].as_str().expect("a platform config has [admin]");
    assert!(address.starts_with("127.0.0.1:"), "the admin listener stays on loopback: {address}");
    address.rsplit_once(':').unwrap().1.to_string()
}

fn text(i: &Instruction) -> String {
    match i {
        Instruction::Run(r) => r.expr.as_shell().map(|s| s.to_string()).unwrap_or_else(|| r.expr.as_exec().unwrap().as_str_vec().join(" ")),
        Instruction::Misc(m) => m.arguments.to_string(),
        Instruction::Cmd(c) => c.expr.as_exec().map(|a| a.as_str_vec().join(" ")).unwrap_or_default(),
        Instruction::Entrypoint(e) => e.expr.as_exec().map(|a| a.as_str_vec().join(" ")).unwrap_or_default(),
        _ => String::new(),
    }
}

fn misc<'a>(instructions: &[&'a Instruction], name: &str) -> Vec<&'a Instruction> {
    instructions.iter().copied().filter(|i| i.as_misc().is_some_and(|m| m.instruction.content.eq_ignore_ascii_case(name))).collect()
}

#[test]
fn the_dockerfile_builds_in_stages_and_runs_non_root_with_a_healthcheck() {
    let source = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let dockerfile = Dockerfile::parse(&source).unwrap_or_else(|e| panic!("Dockerfile does not parse: {e}"));
    let stages: Vec<_> = dockerfile.iter_stages().collect();
    assert!(stages.len() >= 2, "a multi-stage build");
    let ignored: Vec<String> = std::fs::read_to_string(root().join(".dockerignore")).unwrap().lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect();
    let configs = platform_configs();

    // The build stage: Rust 1.95, the wasm target, the release build, and
    // `check` on every platform config into the component cache.
    let build = &stages[0];
    let from = build.instructions[0].as_from().unwrap();
    assert!(from.image.content.starts_with("rust:1.95"), "{}", from.image.content);
    let runs: Vec<String> = build.instructions.iter().filter(|i| i.as_run().is_some()).map(|i| text(i)).collect();
    assert!(runs.iter().any(|r| r.contains("rustup target add wasm32-wasip2")), "{runs:?}");
    assert!(runs.iter().any(|r| r.contains("cargo build --release") && r.contains("-p portcullis")), "{runs:?}");
    let precompile = runs.iter().find(|r| r.contains("portcullis check") && r.contains("PORTCULLIS_CACHE_DIR")).expect("a RUN that fills the component cache with `portcullis check`");
    for (name, _) in &configs {
        assert!(precompile.split(|c: char| c.is_whitespace() || c == ';').any(|w| w == name), "policies/{name}.toml is not precompiled: {precompile}");
    }

    // Every COPY from the context names files that exist and that
    // .dockerignore does not leave out; every COPY --from names an earlier stage.
    let mut stage_names = BTreeSet::new();
    for stage in &stages {
        for i in &stage.instructions {
            let Some(copy) = i.as_copy() else { continue };
            match copy.flags.iter().find(|f| f.name.content == "from") {
                Some(f) => assert!(stage_names.contains(&f.value.content), "COPY --from={} names no earlier stage", f.value.content),
                None => {
                    for s in &copy.sources {
                        let path = s.content.trim_start_matches("./").trim_end_matches('/');
                        assert!(root().join(path).exists(), "COPY {path}: no such file in the repository");
                        let first = path.split('/').next().unwrap();
                        assert!(!ignored.iter().any(|g| g.trim_end_matches('/') == first || g.trim_end_matches('/') == path), "COPY {path} is excluded by .dockerignore");
                    }
                }
            }
        }
        stage_names.extend(stage.name.clone());
    }

    // The run stage: slim Debian, non-root, the components where the
    // configs' relative paths point, the cache where they say, a HEALTHCHECK
    // on the admin listener, SIGTERM.
    let run = stages.last().unwrap();
    let from = run.instructions[0].as_from().unwrap();
    assert!(from.image.content.starts_with("debian:") && from.image.content.ends_with("-slim"), "{}", from.image.content);
    let users = misc(&run.instructions, "USER");
    let user = text(users.last().expect("the run stage sets USER")).trim().to_string();
    assert!(!["root", "0", "root:root", "0:0"].contains(&user.as_str()), "runs as {user}");
    let last_user = run.instructions.iter().rposition(|i| misc(&[*i], "USER").len() == 1).unwrap();
    assert!(run.instructions[last_user..].iter().all(|i| i.as_run().is_none()), "nothing runs as root after USER");

    let copies: Vec<_> = run.instructions.iter().filter_map(|i| i.as_copy()).collect();
    let destination_of = |needle: &str| copies.iter().find(|c| c.sources.iter().any(|s| s.content.contains(needle))).map(|c| c.destination.content.clone());
    assert_eq!(destination_of("target/release/portcullis").as_deref(), Some("/usr/local/bin/portcullis"));
    let policies_at = destination_of("policies").expect("the run stage copies policies/");
    let components = copies.iter().find(|c| c.sources.iter().any(|s| s.content.ends_with(".wasm"))).expect("the run stage copies the components");
    let cache = destination_of("/out/cache").expect("the run stage copies the component cache");
    for (name, config) in &configs {
        assert_eq!(config["gateway"]["cache_dir"].as_str(), Some(cache.as_str()), "{name}: gateway.cache_dir is where the image puts the cache");
        for (policy, def) in config["policies"].as_table().unwrap() {
            let component = def["component"].as_str().unwrap();
            if component.starts_with("builtin:") {
                continue;
            }
            // Resolved against policies/ as the gateway does, in the image's layout.
            let in_image = normalize(&Path::new(&policies_at).join(component));
            let file = Path::new(component).file_name().unwrap().to_str().unwrap();
            assert!(components.sources.iter().any(|s| s.content.ends_with(&format!("/{file}"))), "{name}: policies.{policy}: {file} is not copied");
            assert_eq!(normalize(&Path::new(&components.destination.content).join(file)), in_image, "{name}: policies.{policy}.component does not resolve in the image");
        }
    }

    let health = misc(&run.instructions, "HEALTHCHECK");
    let health = text(health.first().expect("a HEALTHCHECK"));
    for (name, config) in &configs {
        assert!(health.contains(&format!("127.0.0.1:{}/healthz", admin_port(config))), "{name}: the HEALTHCHECK does not ask its admin listener: {health}");
    }
    let stop = misc(&run.instructions, "STOPSIGNAL");
    assert_eq!(stop.first().map(|i| text(i).trim().to_string()).as_deref(), Some("SIGTERM"));
    let cmd = run.instructions.iter().find(|i| matches!(i, Instruction::Cmd(_))).map(|i| text(i)).expect("a CMD");
    let config = cmd.split_whitespace().skip_while(|w| *w != "--config").nth(1).expect("CMD names --config");
    let relative = config.strip_prefix(&format!("{}/", policies_at.trim_end_matches('/'))).expect("the CMD's config is under the copied policies/");
    assert!(root().join("policies").join(relative).exists(), "{config}");
}

/// `a/b/../c` → `a/c` (paths in the image do not exist here to canonicalize).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn seconds(duration: &str) -> u64 {
    let d = duration.trim();
    if let Some(m) = d.strip_suffix("ms") {
        return m.parse::<u64>().unwrap() / 1000;
    }
    if let Some(m) = d.strip_suffix('m') {
        return m.parse::<u64>().unwrap() * 60;
    }
    d.trim_end_matches('s').parse().unwrap_or_else(|_| panic!("duration {duration:?}"))
}

fn strings(y: &Yaml) -> Vec<String> {
    match y {
        Yaml::Array(a) => a.iter().filter_map(|v| v.as_str().map(String::from).or_else(|| v.as_i64().map(|n| n.to_string()))).collect(),
        Yaml::String(s) => vec![s.clone()],
        _ => Vec::new(),
    }
}

#[test]
fn the_compose_file_has_images_healthchecks_limits_and_private_agents() {
    let path = root().join("deploy/docker-compose.yml");
    let docs = YamlLoader::load_from_str(&std::fs::read_to_string(&path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(docs.len(), 1);
    let compose = &docs[0];
    let services = compose["services"].as_hash().expect("services");
    let declared = |key: &str| compose[key].as_hash().map(|h| h.keys().filter_map(|k| k.as_str().map(String::from)).collect::<BTreeSet<_>>()).unwrap_or_default();
    let (networks, volumes) = (declared("networks"), declared("volumes"));

    for (name, s) in services {
        let name = name.as_str().unwrap();
        assert!(s["image"].as_str().is_some() || !s["build"].is_badvalue(), "{name}: neither image nor build");
        let test = strings(&s["healthcheck"]["test"]);
        assert!(test.len() >= 2 && ["CMD", "CMD-SHELL"].contains(&test[0].as_str()), "{name}: healthcheck.test {test:?}");
        let limits = &s["deploy"]["resources"]["limits"];
        assert!((limits["memory"].as_str().is_some() && limits["cpus"].as_str().is_some()) || s["mem_limit"].as_str().is_some(), "{name}: no resource limits");
        for n in strings(&s["networks"]) {
            assert!(networks.contains(&n), "{name}: network {n} is not declared");
        }
        for v in strings(&s["volumes"]) {
            let source = v.split(':').next().unwrap();
            if !source.starts_with(['.', '/']) {
                assert!(volumes.contains(source), "{name}: volume {source} is not declared");
            }
        }
        if name != "portcullis" {
            assert!(s["ports"].is_badvalue(), "{name} publishes ports: only the gateway may");
        }
    }

    // The gateway: built from this repository, serving a config that
    // exists, probed on its admin listener, given its grace period.
    let gw = &services[&Yaml::String("portcullis".into())];
    let context = path.parent().unwrap().join(gw["build"]["context"].as_str().unwrap());
    assert!(context.join(gw["build"]["dockerfile"].as_str().unwrap()).exists());
    let command = strings(&gw["command"]);
    let config_path = command.iter().skip_while(|w| *w != "--config").nth(1).expect("portcullis's command names --config");
    let file = root().join("policies").join(Path::new(config_path).file_name().unwrap());
    assert!(config_path.starts_with("/opt/portcullis/policies/") && file.exists(), "{config_path}");
    let config: toml::Table = std::fs::read_to_string(&file).unwrap().parse().unwrap();
    let health = strings(&gw["healthcheck"]["test"]).join(" ");
    assert!(health.contains(&format!("127.0.0.1:{}/healthz", admin_port(&config))), "{health}");
    let grace_ms = config["gateway"].get("shutdown_grace_ms").and_then(|v| v.as_integer()).unwrap_or(30_000) as u64;
    assert!(seconds(gw["stop_grace_period"].as_str().expect("stop_grace_period")) * 1000 > grace_ms, "the container is killed before the gateway's grace period ends");
    assert_eq!(gw["stop_signal"].as_str(), Some("SIGTERM"));

    // Volumes for the audit log (where the config writes it) and the
    // Let's Encrypt certificates (read-only).
    let mounts = strings(&gw["volumes"]);
    let audit_dir = Path::new(config["gateway"]["audit_log"].as_str().unwrap()).parent().unwrap().to_str().unwrap().to_string();
    assert!(mounts.iter().any(|m| m.split(':').nth(1) == Some(audit_dir.as_str())), "no volume at {audit_dir}: {mounts:?}");
    assert!(mounts.iter().any(|m| m.split(':').nth(1) == Some("/etc/letsencrypt") && m.ends_with(":ro")), "{mounts:?}");

    // Every pool target named by a container name is a service on a network
    // the gateway shares, exposing that port; Redis and an S3 store are there.
    let gw_networks: BTreeSet<String> = strings(&gw["networks"]).into_iter().collect();
    for pool in config["pools"].as_array().unwrap() {
        for target in pool["targets"].as_array().unwrap() {
            let (host, port) = target.as_str().unwrap().rsplit_once(':').unwrap();
            if host.parse::<std::net::IpAddr>().is_ok() {
                continue; // another node, over Hetzner's private network
            }
            let s = &services[&Yaml::String(host.into())];
            assert!(!s.is_badvalue(), "pool target {host} is not a compose service");
            assert!(strings(&s["networks"]).iter().any(|n| gw_networks.contains(n)), "{host} shares no network with portcullis");
            assert!(strings(&s["expose"]).iter().any(|p| p == port), "{host} does not expose {port}");
        }
    }
    let images: Vec<&str> = services.values().filter_map(|s| s["image"].as_str()).collect();
    assert!(images.iter().any(|i| i.starts_with("redis:")), "{images:?}");
    assert!(images.iter().any(|i| i.starts_with("minio/minio")), "{images:?}");
}
