//! `partyhost-bench cluster`: the same load against one node on SQLite,
//! one node on PostgreSQL, and three nodes on PostgreSQL behind HAProxy
//! (`scripts/cluster.sh`), in one run: what the cluster's storage and its
//! proxy cost. The PostgreSQL setups start their own database and proxy
//! through the script, in a scratch folder, on loopback.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::host::ChildHost;
use crate::load::accepted_reactions_per_second;
use crate::scenarios::{closed_loop, fan_out_on, round_trip_on};
use crate::stats::Percentiles;

/// A deployment under test.
#[derive(Clone, Copy)]
enum Setup {
    Sqlite,
    OnePostgres,
    ThreeBehindProxy,
}

impl Setup {
    const ALL: [Setup; 3] = [Setup::Sqlite, Setup::OnePostgres, Setup::ThreeBehindProxy];

    fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "1 node, SQLite",
            Self::OnePostgres => "1 node, PostgreSQL",
            Self::ThreeBehindProxy => "3 nodes + HAProxy",
        }
    }
}

/// The reactions party with its limiter off (`ChildHost` adds the edge
/// caps for one node; the cluster's manifest adds them itself).
fn manifest() -> anyhow::Result<String> {
    let wasm = crate::host::reactions_wasm()?;
    Ok(format!(
        "name = \"bench\"\n[rooms]\nmax_live_instances = 100000\n\
         [limits]\nmessages_per_second = 1000000\n\
         [parties.reactions]\nwasm = {:?}\n[parties.reactions.vars]\nRATE_LIMIT_MS = \"0\"\n",
        wasm.display().to_string()
    ))
}

/// A cluster started by `scripts/cluster.sh`; stopped (and its folder
/// removed) when dropped.
struct ScriptCluster {
    env: Vec<(&'static str, String)>,
    _dir: tempfile::TempDir,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

impl ScriptCluster {
    async fn up(nodes: usize, proxy: u16) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let manifest_file = dir.path().join("partykit.toml");
        // All load comes from one address (the proxy's, or the benchmark's).
        let toml = format!(
            "data_dir = {:?}\n{}[edge]\nmax_connections = 1000000\nmax_connections_per_ip = 1000000\n",
            dir.path().join("data"),
            manifest()?
        );
        std::fs::write(&manifest_file, toml)?;
        let env = vec![
            ("PARTYHOST_CLUSTER_DIR", dir.path().join("cluster").display().to_string()),
            ("PARTYHOST_CLUSTER_PORT", proxy.to_string()),
            ("PARTYHOST_CLUSTER_MANIFEST", manifest_file.display().to_string()),
            ("PARTYHOST_BIN", repo().join("target/release/partyhost").display().to_string()),
        ];
        let cluster = Self { env, _dir: dir };
        let out = cluster.script(&["up", &nodes.to_string()]).output().await?;
        anyhow::ensure!(
            out.status.success(),
            "cluster.sh up failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(cluster)
    }

    fn script(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new("bash");
        command.arg(repo().join("scripts/cluster.sh")).args(args).envs(self.env.iter().cloned());
        command
    }
}

impl Drop for ScriptCluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(repo().join("scripts/cluster.sh"))
            .args(["down", "--clean"])
            .envs(self.env.iter().cloned())
            .output();
    }
}

/// What one setup did.
struct Measured {
    round_trip: Percentiles,
    /// One room, 32 reactions in flight: where a room's commits queue
    /// behind each other.
    throughput: f64,
    cold: Percentiles,
    cold_rate: f64,
    deliveries: f64,
    fan_out: Percentiles,
}

async fn measure(setup: Setup, args: &Args) -> anyhow::Result<Measured> {
    // The proxy's port; node 1 listens on it + 101 (scripts/cluster.sh).
    let proxy = 26_000;
    let (host, _cluster) = match setup {
        Setup::Sqlite => (ChildHost::start(&manifest()?).await?, None),
        Setup::OnePostgres => {
            let cluster = ScriptCluster::up(1, proxy).await?;
            (ChildHost::external(proxy + 101)?, Some(cluster))
        }
        Setup::ThreeBehindProxy => {
            let cluster = ScriptCluster::up(3, proxy).await?;
            (ChildHost::external(proxy)?, Some(cluster))
        }
    };
    let host = Arc::new(host);
    let round_trip = round_trip_on(&host, args.round_trips).await?;
    let throughput = accepted_reactions_per_second(&host, 32, args.seconds).await?;
    let started = Instant::now();
    let mut cold = closed_loop(&host, args.new_rooms, 16).await?;
    let cold_rate = args.new_rooms as f64 / started.elapsed().as_secs_f64();
    let fan = fan_out_on(&host, args.rooms, args.per_room, args.seconds).await?;
    Ok(Measured {
        round_trip,
        throughput,
        cold: Percentiles::of(&mut cold),
        cold_rate,
        deliveries: fan.deliveries_per_second,
        fan_out: fan.latency,
    })
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// How one row of the table reads a setup's figures.
type Cell = Box<dyn Fn(&Measured) -> String>;

/// The benchmark's sizes.
pub struct Args {
    pub rooms: usize,
    pub per_room: usize,
    pub seconds: u64,
    pub new_rooms: usize,
    pub round_trips: usize,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut results = Vec::new();
    for setup in Setup::ALL {
        eprintln!("measuring {}", setup.name());
        results.push(measure(setup, &args).await?);
    }
    let rows: [(&str, Cell); 8] = [
        ("round trip, one reaction at a time, p50 (a commit each)", Box::new(|m| us(m.round_trip.p50))),
        ("round trip p99", Box::new(|m| us(m.round_trip.p99))),
        ("one room, 32 reactions in flight: accepted/s", Box::new(|m| format!("{:.0}", m.throughput))),
        ("new room: connect -> first message p50 (16 at once)", Box::new(|m| us(m.cold.p50))),
        ("new room p99", Box::new(|m| us(m.cold.p99))),
        ("new rooms/s", Box::new(|m| format!("{:.0}", m.cold_rate))),
        ("fan-out deliveries/s", Box::new(|m| format!("{:.0}", m.deliveries))),
        (
            "fan-out send -> update p50 / p99",
            Box::new(|m| format!("{} / {}", us(m.fan_out.p50), us(m.fan_out.p99))),
        ),
    ];
    let Args { rooms, per_room, seconds, new_rooms, round_trips } = args;
    println!(
        "\n### Cluster: {round_trips} round trips, {new_rooms} new rooms, fan-out {rooms} room(s) x {per_room} clients for {seconds} s\n"
    );
    let names: Vec<&str> = Setup::ALL.iter().map(|s| s.name()).collect();
    println!("| measure | {} |", names.join(" | "));
    println!("|---|---|---|---|");
    for (measure, value) in rows {
        let values: Vec<String> = results.iter().map(value.as_ref()).collect();
        println!("| {measure} | {} |", values.join(" | "));
    }
    Ok(())
}
