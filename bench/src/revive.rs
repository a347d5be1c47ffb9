//! Revive: how long a message to a hibernated room takes to come back as a
//! broadcast (instance created, on-start, on-message, commit), next to the
//! same for rooms whose instance is live; and memory per room either way.

use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::host::{ChildHost, reactions_wasm};
use crate::stats::{Percentiles, rss_bytes};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

const IDLE_MS: u64 = 200;

pub async fn run(rooms: usize) -> anyhow::Result<()> {
    let wasm = reactions_wasm()?;
    println!("revive: {rooms} rooms of the reactions party, one client each");
    let mut live = Phase::measure(&wasm, rooms, false).await?;
    let mut hibernated = Phase::measure(&wasm, rooms, true).await?;
    println!();
    println!("| rooms | message -> own update p50 | p90 | p99 | max | memory per room |");
    println!("|---|---|---|---|---|---|");
    let per_room = |p: &Phase| format!("{:.1} KiB", p.memory_per_room as f64 / 1024.0);
    println!("| live instance | {} | {} |", Percentiles::of(&mut live.latencies).row(), per_room(&live));
    println!(
        "| hibernated (revive) | {} | {} |",
        Percentiles::of(&mut hibernated.latencies).row(),
        per_room(&hibernated)
    );
    Ok(())
}

struct Phase {
    latencies: Vec<Duration>,
    memory_per_room: u64,
}

impl Phase {
    /// A fresh host: connect `rooms` rooms (each sends one reaction, so its
    /// instance starts) and read memory, then time one message per room.
    ///
    /// For hibernated rooms the live-instance cap is 1, so each instance is
    /// evicted as the next room starts and its memory is reused: RSS grows
    /// only by what a hibernated room keeps (sockets, tags, state, storage
    /// cache). Evicting them all at the end instead would measure the
    /// allocator keeping freed memory, not the rooms.
    async fn measure(wasm: &std::path::Path, rooms: usize, hibernate: bool) -> anyhow::Result<Self> {
        let toml = format!(
            "name = \"bench\"\n[rooms]\nidle_timeout_ms = {IDLE_MS}\nmax_live_instances = {}\n\
             [parties.reactions]\nwasm = {:?}\nhibernate = {hibernate}\n[parties.reactions.vars]\nRATE_LIMIT_MS = \"0\"\n",
            if hibernate { 1 } else { rooms + 10 },
            wasm.display().to_string()
        );
        let host = ChildHost::start(&toml).await?;
        let pid = host.pid()?;
        // Warm-up room: compiled code loaded, first instance made.
        let mut warm = connect(&host, "warm").await?;
        round_trip(&mut warm).await?;
        let base = rss_bytes(pid)?;
        let mut sockets = Vec::with_capacity(rooms);
        for i in 0..rooms {
            let mut socket = connect(&host, &format!("room-{i}")).await?;
            round_trip(&mut socket).await?;
            sockets.push(socket);
        }
        if hibernate {
            // Every instance has been idle past its timeout.
            tokio::time::sleep(Duration::from_millis(IDLE_MS * 5)).await;
        }
        let memory_per_room = rss_bytes(pid)?.saturating_sub(base) / rooms as u64;
        let mut latencies = Vec::with_capacity(rooms);
        for socket in &mut sockets {
            latencies.push(round_trip(socket).await?);
        }
        let label = if hibernate { "hibernated" } else { "live" };
        println!("  {label}: memory per room {memory_per_room} B");
        Ok(Self { latencies, memory_per_room })
    }
}

async fn connect(host: &ChildHost, room: &str) -> anyhow::Result<Socket> {
    let (mut socket, _) =
        tokio_tungstenite::connect_async(host.url(&format!("/parties/reactions/{room}"))).await?;
    next_text(&mut socket).await?; // the counts sent on connect
    Ok(socket)
}

/// Sends one reaction and waits for the update it causes.
async fn round_trip(socket: &mut Socket) -> anyhow::Result<Duration> {
    let started = Instant::now();
    socket.send(Message::text(r#"{"type":"reaction","kind":"clap"}"#)).await?;
    next_text(socket).await?;
    Ok(started.elapsed())
}

async fn next_text(socket: &mut Socket) -> anyhow::Result<String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next()).await? {
            Some(Ok(Message::Text(text))) => return Ok(text.to_string()),
            Some(Ok(_)) => {}
            other => anyhow::bail!("expected an update, got {other:?}"),
        }
    }
}
