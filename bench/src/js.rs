//! The TypeScript reactions party (guests-ts) against the Rust one, side by
//! side in one run: build and compile time, a new room's first answer, one
//! room's throughput, and memory per live and per hibernated room. Both
//! are served by the same partyhost binary; only the component differs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::host::ChildHost;
use crate::load::{accepted_reactions_per_second, connect, next_text};
use crate::stats::{Percentiles, rss_bytes};

/// The TypeScript examples' manifest.
fn ts_manifest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../guests-ts/partykit.toml")
}

fn host_toml(wasm: &Path, hibernate: bool) -> String {
    let idle = if hibernate { "idle_timeout_ms = 200\n" } else { "" };
    format!(
        "name = \"bench\"\n[rooms]\nmax_live_instances = 100000\n{idle}\
         [limits]\nmessages_per_second = 1000000\n[parties.reactions]\nwasm = {:?}\nhibernate = {hibernate}\n\
         [parties.reactions.vars]\nRATE_LIMIT_MS = \"0\"\n",
        wasm.display().to_string()
    )
}

/// One language's figures.
struct Figures {
    compile: Duration,
    first_answer: Percentiles,
    throughput: f64,
    live_kib: f64,
    hibernated_kib: f64,
}

pub async fn run(rooms: usize, seconds: u64) -> anyhow::Result<()> {
    // A cold build: its own cache folder, so the bundle is componentized.
    let deployment = partyhost::manifest::Deployment::load(&ts_manifest())?;
    let built = deployment.parties.keys().find(|p| p.as_str() == "reactions").cloned();
    let built = built.ok_or_else(|| anyhow::anyhow!("guests-ts has no reactions party"))?;
    let ts_wasm = deployment.parties[&built].wasm.clone();
    let cache = ts_wasm.with_file_name("cache");
    let _ = std::fs::remove_dir_all(&cache);
    let started = Instant::now();
    partyhost::js::build(&deployment, &[&built])?;
    let build = started.elapsed();

    let rust_wasm = crate::host::reactions_wasm()?;
    let rust = measure(&rust_wasm, rooms, seconds).await?;
    let ts = measure(&ts_wasm, rooms, seconds).await?;

    let size = |path: &Path| std::fs::metadata(path).map_or(0.0, |m| m.len() as f64 / f64::from(1 << 20));
    println!("\n### Reactions in TypeScript (componentize-js) against Rust, one partyhost binary\n");
    println!("| measure | Rust | TypeScript | TypeScript / Rust |");
    println!("|---|---|---|---|");
    let row = |measure: &str, rust: f64, ts: f64, unit: &str| {
        println!("| {measure} | {rust:.2} {unit} | {ts:.2} {unit} | {:.2}x |", ts / rust);
    };
    println!("| build (bundle + componentize, cold) | cargo | {:.1} s | |", build.as_secs_f64());
    row("component size", size(&rust_wasm), size(&ts_wasm), "MiB");
    row("compile at start (empty cache)", rust.compile.as_secs_f64(), ts.compile.as_secs_f64(), "s");
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    row("new room's first answer, p50", us(rust.first_answer.p50), us(ts.first_answer.p50), "µs");
    row("new room's first answer, p99", us(rust.first_answer.p99), us(ts.first_answer.p99), "µs");
    row("accepted reactions/s, one room", rust.throughput, ts.throughput, "");
    row("memory per live room", rust.live_kib, ts.live_kib, "KiB");
    row("memory per hibernated room", rust.hibernated_kib, ts.hibernated_kib, "KiB");
    Ok(())
}

async fn measure(wasm: &Path, rooms: usize, seconds: u64) -> anyhow::Result<Figures> {
    // Compile: a fresh host (empty compile cache) until it is ready.
    let started = Instant::now();
    let host = ChildHost::start(&host_toml(wasm, false)).await?;
    let compile = started.elapsed();

    // A new room's first answer, one room after another.
    let mut times = Vec::with_capacity(200);
    for i in 0..200 {
        let t = Instant::now();
        let mut socket = connect(&host, &format!("first-{i}")).await?;
        next_text(&mut socket).await?;
        times.push(t.elapsed());
    }
    let first_answer = Percentiles::of(&mut times);

    // One room, 64 reactions in flight, for `seconds`.
    let throughput = accepted_reactions_per_second(&host, 64, seconds).await?;
    drop(host);

    let live_kib = per_room(wasm, rooms, false).await?;
    let hibernated_kib = per_room(wasm, rooms, true).await?;
    Ok(Figures { compile, first_answer, throughput, live_kib, hibernated_kib })
}

/// Server RSS growth per room with one socket in each of `rooms` rooms.
async fn per_room(wasm: &Path, rooms: usize, hibernate: bool) -> anyhow::Result<f64> {
    let host = ChildHost::start(&host_toml(wasm, hibernate)).await?;
    let pid = host.pid()?;
    // One room first: the measure is a room, not the host's first instance.
    let mut warm = connect(&host, "warm").await?;
    next_text(&mut warm).await?;
    let base = rss_bytes(pid)?;
    let mut sockets = Vec::with_capacity(rooms);
    for i in 0..rooms {
        let mut socket = connect(&host, &format!("idle-{i}")).await?;
        next_text(&mut socket).await?;
        sockets.push(socket);
    }
    // Long enough for hibernating rooms to pass their idle timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    Ok(rss_bytes(pid)?.saturating_sub(base) as f64 / rooms as f64 / 1024.0)
}
