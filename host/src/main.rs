//! The `portcullis` command line.

use clap::{Parser, Subcommand};
use portcullis::config::{self, Source};
use portcullis::{demo, serve};
use std::path::PathBuf;
use std::process::ExitCode;

/// Portcullis: an edge gateway whose policies are WebAssembly components.
///
/// Every decision on a request (route, headers, rate limits, tokens, data
/// residency, audit) is made by a policy component run in a fresh wasmtime
/// instance; every request leaves a record in an audit log that proves its
/// own integrity. Start with `portcullis check --config FILE`, then
/// `portcullis serve --config FILE`.
#[derive(Parser)]
#[command(
    version,
    about,
    long_about,
    after_long_help = "\
Environment:
  PORTCULLIS_LOG           log filter for stderr (tracing syntax), default \"info\"; e.g. \"warn,portcullis::proxy=debug\"
  PORTCULLIS_CACHE_DIR     where compiled components are cached (overrides gateway.cache_dir; default $XDG_CACHE_HOME/portcullis)
  PORTCULLIS_ADMIN_TOKEN   bearer token for the admin listener's /admin/* endpoints when admin.token_file is not set

Exit status: 0 on success (and after a graceful shutdown), 1 on any error;
configuration errors are printed one per line as `file:line:col: key.path: reason`.

Configuration reference: the README's \"Configuration reference\" section, and the examples in policies/."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Tokio worker threads (default: one per core).
    #[arg(long, global = true, value_name = "N")]
    workers: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a configuration file.
    ///
    /// Refuses to start on any configuration error (every one is printed as
    /// `file:line:col: key.path: reason`). Once listening it prints one
    /// `listening <name> <address>` line per listener, and `admin <address>`
    /// for the admin listener, on stdout.
    ///
    /// Signals: SIGHUP reloads the configuration (as does a change to a
    /// watched file, or `POST /admin/reload`); a rejected reload leaves the
    /// running chain serving. SIGTERM or SIGINT shut down gracefully: stop
    /// accepting, let requests in flight finish within
    /// `gateway.shutdown_grace_ms`, seal and fsync the audit log, exit 0.
    /// TLS certificate files are watched and reloaded without a restart.
    Serve {
        /// The configuration file (e.g. policies/gateway.toml); relative paths in it are relative to its directory.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a configuration: parse, references, files, components, every policy's check-config.
    ///
    /// Checks everything `serve` would check before serving, without
    /// binding any socket: types and unknown keys, references between
    /// routes, pools and policies, TLS certificates and keys (readable, the
    /// key fits, the names are covered), rate limits, residency rules, and
    /// each policy's `check-config` with its settings and every route's
    /// overrides. Prints every error as `file:line:col: key.path: reason`
    /// and exits 1 if there is any; prints a one-line summary and exits 0
    /// otherwise.
    Check {
        /// The configuration file to check.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Serve the embedded policies/dev.toml with loopback stand-ins for the ProCare services.
    ///
    /// Listens on 127.0.0.1:8080 and starts one stand-in per pool target of
    /// the embedded configuration; each answers with its name and echoes
    /// what it received. The README's "The demo, with curl" lists requests
    /// to try.
    Demo,
    /// Work with policy components.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Check, prove and export the audit log (the `[audit]` evidence log).
    ///
    /// These commands read the log's directory directly; they do not need
    /// a running gateway and can run on a copy of the log (e.g. one
    /// downloaded from the S3 export).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Prepare the edge (the same policies on Spin): its plan and its spin.toml.
    ///
    /// Both build the configuration exactly as `check` does (the same
    /// errors, exit 1 on any) and then refuse any policy whose component is
    /// not one of the crates compiled into the edge component (router,
    /// security-headers, rate-limit, jwt-auth, residency, webhook-signature).
    Edge {
        #[command(subcommand)]
        command: EdgeCommand,
    },
}

#[derive(Subcommand)]
enum EdgeCommand {
    /// Print the edge plan (JSON, format portcullis-edge/1): the Spin variable `portcullis_config`.
    ///
    /// The node's resolved configuration in one document: each policy's
    /// crate, namespace and flattened settings, each route's chain with its
    /// overrides, pools, body limit and body HMAC, the pools' targets, the
    /// limits' GCRA definitions, the issuers' key sources, trusted proxies.
    /// It may hold secrets (an HS256 key set, a body HMAC key): pass it as a
    /// secret variable, e.g. `SPIN_VARIABLE_PORTCULLIS_CONFIG="$(portcullis
    /// edge plan --config FILE)"`.
    Plan {
        /// The gateway configuration.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print a spin.toml (manifest version 2) for the edge component of this configuration.
    ///
    /// Its `allowed_outbound_hosts` lists every pool target and every JWKS
    /// URL origin of the configuration, and the `audit_collector`
    /// variable. The repository's spin.toml is this command's output for
    /// policies/dev.toml.
    Manifest {
        /// The gateway configuration.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The component's path in the manifest (relative to spin.toml).
        #[arg(long, value_name = "PATH", default_value = portcullis::edge::manifest::DEFAULT_WASM)]
        wasm: String,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check a log (every chain link, Merkle root and checkpoint signature), or a proof offline.
    ///
    /// Prints `ok: …` and exits 0 when every record links to the one
    /// before, every checkpoint's Merkle root matches the records and its
    /// signature verifies; otherwise prints one `FAIL seq N (segment, line):
    /// reason` per problem (edited, missing, out of order, truncated) and
    /// exits 1.
    Verify {
        /// The log directory (`[audit] dir`).
        #[arg(long, conflicts_with = "proof")]
        dir: Option<PathBuf>,
        /// A proof printed by `audit prove`.
        #[arg(long)]
        proof: Option<PathBuf>,
        /// Ed25519 public key(s) that may sign checkpoints (PEM); default: DIR/keys/*.pub.
        #[arg(long = "pubkey")]
        pubkeys: Vec<PathBuf>,
    },
    /// Print an inclusion proof of record SEQ (or a consistency proof) against the newest checkpoint.
    ///
    /// The proof is JSON on stdout; `portcullis audit verify --proof FILE`
    /// checks it without the log, with only the public key.
    Prove {
        /// The log directory.
        #[arg(long)]
        dir: PathBuf,
        /// The record's seq.
        #[arg(long, conflicts_with = "from_size")]
        seq: Option<u64>,
        /// Instead: prove the checkpoint of this tree size is a prefix of the newest.
        #[arg(long)]
        from_size: Option<u64>,
    },
    /// Upload sealed segments and checkpoints to S3-compatible storage (`[audit.export]`), once.
    ///
    /// Objects already in the store are not uploaded again. A running
    /// gateway with `[audit.export] interval_ms` does the same in the
    /// background; this command is for a one-off or a cron job.
    Export {
        /// The gateway configuration (its `[audit]` and `[audit.export]` sections are used).
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Run components against case tables (TOML) and check their verdicts.
    ///
    /// Each case gives a request head (and facts, a route, settings) and
    /// the verdict expected; only what `expect` names is checked. Prints
    /// each failing case with the fields that differ, and exits 1 if any
    /// case failed.
    Test {
        /// Case files, e.g. components/*/cases.toml.
        #[arg(required = true)]
        cases: Vec<PathBuf>,
    },
    /// Create a policy crate that builds, passes its own cases and loads in the gateway.
    New {
        /// The policy's name: lower-case letters, digits and '-' (also its fact namespace).
        name: String,
        /// Where to create it; inside the components workspace (`components`) it becomes a member.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The SDK crate (components/sdk), for a policy outside the components workspace;
        /// default: the one next to the sources this binary was built from.
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cli.workers {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.enable_all().build().expect("tokio runtime");
    rt.block_on(async move {
        match cli.command {
            Command::Serve { config } => match Source::read(&config) {
                Ok(source) => report(serve::serve(&source, true).await),
                Err(e) => report(Err(e.into())),
            },
            Command::Check { config } => {
                let source = match Source::read(&config) {
                    Ok(s) => s,
                    Err(e) => return report(Err(e.into())),
                };
                match serve::load(&source).await {
                    Ok(snap) => {
                        println!(
                            "{}: ok ({} routes, {} policies, {} pools; chain version {})",
                            config.display(),
                            snap.routes.len(),
                            snap.policies.len(),
                            snap.pools.len(),
                            snap.version
                        );
                        ExitCode::SUCCESS
                    }
                    Err(e) => report(Err(e)),
                }
            }
            Command::Policy { command: PolicyCommand::Test { cases } } => match portcullis::policy_test::run(&cases).await {
                Ok((_, 0)) => ExitCode::SUCCESS,
                Ok(_) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("{e:#}");
                    ExitCode::FAILURE
                }
            },
            Command::Policy { command: PolicyCommand::New { name, dir, sdk } } => match portcullis::policy_new::create(&name, &dir, sdk.as_deref()) {
                Ok(created) => {
                    println!("created {}", created.dir.display());
                    println!("next: cd {} && {}", created.dir.display(), created.build);
                    println!("then: portcullis policy test {}", created.cases.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("policy new: {e:#}");
                    ExitCode::FAILURE
                }
            },
            Command::Audit { command } => match command {
                AuditCommand::Verify { dir, proof, pubkeys } => portcullis::audit::cli::verify(dir.as_deref(), proof.as_deref(), &pubkeys),
                AuditCommand::Prove { dir, seq, from_size } => portcullis::audit::cli::prove(&dir, seq, from_size),
                AuditCommand::Export { config } => portcullis::audit::cli::export(&config).await,
            },
            Command::Edge { command } => {
                let (config, wasm) = match &command {
                    EdgeCommand::Plan { config } => (config, None),
                    EdgeCommand::Manifest { config, wasm } => (config, Some(wasm)),
                };
                let source = match Source::read(config) {
                    Ok(s) => s,
                    Err(e) => return report(Err(e.into())),
                };
                match portcullis::edge::plan::build(&source).await {
                    Ok(plan) => {
                        match wasm {
                            None => println!("{}", serde_json::to_string(&plan).expect("the plan serializes")),
                            Some(wasm) => print!("{}", portcullis::edge::manifest::render(&plan, wasm)),
                        }
                        ExitCode::SUCCESS
                    }
                    Err(e) => report(Err(e)),
                }
            }
            Command::Demo => {
                let source = Source::embedded_dev();
                let parsed = match config::parse(&source) {
                    Ok(c) => c,
                    Err(e) => return report(Err(e.into())),
                };
                for pool in &parsed.pools {
                    for target in &pool.targets {
                        let Ok(addr) = target.get_ref().parse() else { continue };
                        if let Err(e) = demo::start_stand_in(pool.name.get_ref().clone(), addr).await {
                            eprintln!("portcullis demo: {e}");
                            return ExitCode::FAILURE;
                        }
                    }
                }
                eprintln!("portcullis demo: {} stand-in services on loopback; try: curl -s localhost:8080/api/clinical/vitals", parsed.pools.len());
                report(serve::serve(&source, false).await)
            }
        }
    })
}

fn report(result: Result<(), serve::StartError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent_and_every_argument_is_documented() {
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        fn walk(cmd: &clap::Command, path: &str) {
            if cmd.get_name() != "help" {
                assert!(cmd.get_about().is_some(), "{path}: no about");
            }
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                assert!(builtin || arg.get_help().is_some(), "{path} --{}: no help", arg.get_id());
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()));
            }
        }
        walk(&cmd, "portcullis");
    }
}
