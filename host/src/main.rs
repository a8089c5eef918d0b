//! The `portcullis` command line.

use clap::{Parser, Subcommand};
use portcullis::config::{self, Source};
use portcullis::{demo, serve};
use std::path::PathBuf;
use std::process::ExitCode;

/// Portcullis: an edge gateway whose policies are WebAssembly components.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Tokio worker threads (default: one per core).
    #[arg(long, global = true)]
    workers: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a configuration file.
    Serve {
        /// The configuration (e.g. policies/gateway.toml).
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a configuration: parse, references, components, every policy's check-config.
    Check {
        /// The configuration to check.
        #[arg(long)]
        config: PathBuf,
    },
    /// Serve the embedded policies/dev.toml with loopback stand-ins for the ProCare services.
    Demo,
    /// Work with policy components.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Check, prove and export the audit log (the `[audit]` evidence log).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check a log (every chain link, Merkle root and checkpoint signature), or a proof offline.
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
    Export {
        /// The gateway configuration.
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Run components against case tables (TOML) and check their verdicts.
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
