//! `partyhost-bench`: benchmarks that run each scenario against partyhost
//! and its baseline in one invocation, because these machines are noisy.
//!
//! The host runs as a child process (this binary, re-run as `host`), so
//! memory read from `/proc` is the host's alone.

mod cluster;
mod deploy;
mod host;
mod js;
mod load;
mod metrics_cost;
mod native;
mod reload;
mod revive;
mod scenarios;
mod stats;
mod yjs;

use clap::{Parser, Subcommand};
use scenarios::Arrivals;
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
    /// Every side-by-side scenario against partyhost and the native server.
    All {
        /// Seconds per timed run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// Fan-out: rooms x clients, each reacting as fast as the limiter allows.
    FanOut {
        #[arg(long, default_value_t = 1)]
        rooms: usize,
        #[arg(long, default_value_t = 500)]
        per_room: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// Accepted reactions/s into one room with the limiter off.
    Throughput {
        #[arg(long, default_value_t = 32)]
        window: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// Connecting to never-seen rooms.
    ColdStart {
        #[arg(long, default_value_t = 1000)]
        rooms: usize,
        /// Clients connecting at once (closed loop: capacity).
        #[arg(long, default_value_t = 16, conflicts_with = "rate")]
        workers: usize,
        /// New rooms per second instead (open loop: latency at that load).
        #[arg(long)]
        rate: Option<u32>,
        /// Rounds, the servers alternating; the median round is shown.
        #[arg(long, default_value_t = 1)]
        rounds: usize,
    },
    /// Server memory per idle connection.
    Connections {
        #[arg(long, default_value_t = 15000)]
        connections: usize,
        #[arg(long, default_value_t = 1000)]
        rooms: usize,
    },
    /// One reaction at a time through each server.
    RoundTrip {
        #[arg(long, default_value_t = 2000)]
        count: usize,
    },
    /// Internal: the native baseline server.
    #[command(hide = true)]
    Native {
        port: u16,
        #[arg(long)]
        no_limiter: bool,
    },
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
    /// What metrics cost: a saturated fan-out through partyhost with
    /// metrics on and with --no-metrics, alternating rounds.
    MetricsCost {
        #[arg(long, default_value_t = 20)]
        clients: usize,
        #[arg(long, default_value_t = 4)]
        seconds: u64,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Internal: serve a manifest (the benchmarks' child process).
    #[command(hide = true)]
    Host {
        manifest: PathBuf,
        /// Count nothing, as `partyhost serve --no-metrics`.
        #[arg(long)]
        no_metrics: bool,
        /// Watch and reload, as `partyhost dev`.
        #[arg(long)]
        dev: bool,
        /// Take deployments, as `partyhost serve --tenants`.
        #[arg(long)]
        tenants: Option<PathBuf>,
    },
    /// The TypeScript reactions party (guests-ts) against the Rust one:
    /// build, compile, first answer, throughput, memory per room.
    Js {
        /// Rooms for the memory measures.
        #[arg(long, default_value_t = 200)]
        rooms: usize,
        /// Seconds of the throughput measure.
        #[arg(long, default_value_t = 4)]
        seconds: u64,
    },
    /// The yjs party against a native yrs server: updates/s into one
    /// document, loading a 2 MB document into a room not running, memory per
    /// open document.
    Yjs {
        /// Clients connected to the typed-into document.
        #[arg(long, default_value_t = 50)]
        clients: usize,
        /// Updates each of the 10 typing clients sends.
        #[arg(long, default_value_t = 200)]
        updates: usize,
        /// Loads of the 2 MB document.
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// Open documents for the memory measure.
        #[arg(long, default_value_t = 100)]
        rooms: usize,
    },
    /// Internal: the native yrs baseline server.
    #[command(hide = true)]
    NativeYjs { port: u16 },
    /// One node on SQLite, one on PostgreSQL, three on PostgreSQL behind
    /// HAProxy (scripts/cluster.sh): round trips (a commit each), new
    /// rooms, fan-out.
    Cluster {
        #[arg(long, default_value_t = 10)]
        rooms: usize,
        #[arg(long, default_value_t = 50)]
        per_room: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 1000)]
        new_rooms: usize,
        #[arg(long, default_value_t = 2000)]
        round_trips: usize,
    },
    /// What deploying costs the rooms already serving: one client's round
    /// trips while nothing else happens, and while a tenant deploys (each
    /// deployment compiled anew), in alternating phases.
    DeployImpact {
        /// Seconds per phase.
        #[arg(long, default_value_t = 4)]
        seconds: u64,
        /// Quiet/deploying phase pairs.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
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
            Command::All { seconds } => all(seconds).await,
            Command::FanOut { rooms, per_room, seconds } => {
                scenarios::fan_out(rooms, per_room, seconds).await
            }
            Command::Throughput { window, seconds } => scenarios::throughput(window, seconds).await,
            Command::ColdStart { rooms, workers, rate, rounds } => {
                let arrivals = rate.map_or(Arrivals::Clients(workers), Arrivals::Rate);
                scenarios::cold_start(rooms, arrivals, rounds).await
            }
            Command::Connections { connections, rooms } => scenarios::connections(connections, rooms).await,
            Command::RoundTrip { count } => scenarios::round_trip(count).await,
            Command::Native { port, no_limiter } => native::serve(port, !no_limiter).await,
            Command::Revive { rooms } => revive::run(rooms).await,
            Command::Reload { rounds, source_rounds } => reload::run(rounds, source_rounds).await,
            Command::Host { manifest, dev, tenants, no_metrics } => {
                host::serve(&manifest, dev, tenants, no_metrics).await
            }
            Command::MetricsCost { clients, seconds, rounds } => {
                metrics_cost::run(clients, seconds, rounds).await
            }
            Command::DeployImpact { seconds, rounds } => deploy::impact(seconds, rounds).await,
            Command::Js { rooms, seconds } => js::run(rooms, seconds).await,
            Command::Yjs { clients, updates, rounds, rooms } => {
                yjs::run(clients, updates, rounds, rooms).await
            }
            Command::NativeYjs { port } => yjs::serve(port).await,
            Command::Cluster { rooms, per_room, seconds, new_rooms, round_trips } => {
                cluster::run(cluster::Args { rooms, per_room, seconds, new_rooms, round_trips }).await
            }
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

/// The scenarios of docs/benchmarks.md, in order.
async fn all(seconds: u64) -> anyhow::Result<()> {
    scenarios::fan_out(1, 500, seconds).await?;
    scenarios::fan_out(50, 10, seconds).await?;
    scenarios::throughput(32, seconds).await?;
    scenarios::cold_start(1000, Arrivals::Clients(16), 1).await?;
    scenarios::cold_start(3000, Arrivals::Rate(1000), 1).await?;
    revive::run(1000).await?;
    scenarios::connections(15000, 1000).await?;
    scenarios::round_trip(2000).await
}
