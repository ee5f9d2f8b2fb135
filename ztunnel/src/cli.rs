//! Command-line entry point.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ztunnel", version, about = "Per-node ambient mesh data plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node daemon.
    Run {
        /// Configuration file (YAML); see examples/ztunnel.yaml.
        #[arg(long)]
        config: PathBuf,
        /// This node's name: the workloads whose `node` matches are served here.
        #[arg(long)]
        node: String,
        /// Tokio worker threads (default: one per core).
        #[arg(long, env = "ZTUNNEL_WORKERS")]
        workers: Option<usize>,
    },
    /// Remove capture left by a fail-closed ztunnel (pinned eBPF state, pods' nftables rules).
    UninstallCapture {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        node: String,
    },
    /// Validate a configuration file and print every error found.
    Check {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value = "check")]
        node: String,
    },
}

/// The command line, shared by the `ztunnel` binary and the end-to-end tests' copy of it.
pub fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run {
            config,
            node,
            workers,
        } => {
            // A parent that blocked these (shells, supervisors, test harnesses) must not stop
            // the drain: tokio's handlers only see signals that are not blocked.
            let mut term = nix::sys::signal::SigSet::empty();
            term.add(nix::sys::signal::Signal::SIGTERM);
            term.add(nix::sys::signal::Signal::SIGINT);
            term.thread_unblock()?;
            crate::memory::configure();
            let mut rt = tokio::runtime::Builder::new_multi_thread();
            rt.enable_all().thread_name("ztunnel-worker");
            if let Some(n) = workers {
                rt.worker_threads(n);
            }
            let result = rt.build()?.block_on(crate::app::run(&config, &node));
            crate::telemetry::flush();
            result
        }
        Command::UninstallCapture { config, node } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(crate::app::uninstall_capture(&config, &node)),
        Command::Check { config, node } => match crate::app::check(&config, &node) {
            Ok(_) => {
                println!("{}: valid", config.display());
                Ok(())
            }
            Err(e) => {
                eprintln!("{}: {e}", config.display());
                std::process::exit(1)
            }
        },
    }
}
