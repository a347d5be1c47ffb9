//! `partyhost-bench`: benchmarks that run each scenario against partyhost
//! and its baseline in one invocation, because these machines are noisy.
//!
//! The host runs as a child process (this binary, re-run as `host`), so
//! memory read from `/proc` is the host's alone.

mod host;
mod reload;
mod revive;
mod stats;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(about = "Benchmarks of partyhost, side by side with their baseline")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Revive latency of hibernated rooms against live ones, and memory per
    /// live and per hibernated room.
    Revive {
        /// Rooms, one client each.
        #[arg(long, default_value_t = 500)]
        rooms: usize,
    },
    /// `partyhost dev`: from a `.wasm` written, and from a source saved, to
    /// the first event served by the new code.
    Reload {
        #[arg(long, default_value_t = 20)]
        rounds: usize,
        /// Source edits to time (each runs cargo); 0 skips them.
        #[arg(long, default_value_t = 5)]
        source_rounds: usize,
    },
    /// Internal: serve a manifest (the benchmarks' child process).
    #[command(hide = true)]
    Host {
        manifest: PathBuf,
        /// Watch and reload, as `partyhost dev`.
        #[arg(long)]
        dev: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Revive { rooms } => revive::run(rooms).await,
            Command::Reload { rounds, source_rounds } => reload::run(rounds, source_rounds).await,
            Command::Host { manifest, dev } => host::serve(&manifest, dev).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
