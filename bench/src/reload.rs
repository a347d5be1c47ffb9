//! Reload: time from a party's `.wasm` being written, and from its source
//! being saved, to the first event served by the new code, in a host
//! running `partyhost dev`, over one WebSocket that stays open.

use futures_util::{SinkExt, StreamExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

use crate::host::ChildHost;
use crate::stats::Percentiles;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn run(rounds: usize, source_rounds: usize) -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let hostile = root.join("target/guests/wasm32-wasip2/guest/hostile.wasm");
    anyhow::ensure!(hostile.exists(), "{} is missing: run scripts/build-guests.sh", hostile.display());
    let original = std::fs::read(&hostile)?;

    // 1. `.wasm` written -> new code serving. Each round writes the same
    // party with a different custom section, so it must really be compiled
    // (the compile cache is keyed by content) and it restarts its rooms,
    // which the `starts` count in the replies shows.
    let scratch = tempfile::tempdir()?;
    let wasm = scratch.path().join("x.wasm");
    std::fs::write(&wasm, with_custom_section(&original, 0))?;
    let toml = format!("name = \"bench\"\n[parties.x]\nwasm = {:?}\n", wasm.display().to_string());
    let host = ChildHost::start_dev(&toml).await?;
    let mut wasm_times = time_swaps(&host, "x", rounds, |round| {
        Ok(std::fs::write(&wasm, with_custom_section(&original, round as u64))?)
    })
    .await?;
    println!("reload: {rounds} component swaps, {source_rounds} source edits, one socket kept open");
    println!();
    println!("| from | to first event on the new code p50 | p90 | p99 | max |");
    println!("|---|---|---|---|---|");
    println!("| `.wasm` written (compiled anew) | {} |", Percentiles::of(&mut wasm_times).row());

    // 2. Source saved -> build -> new code serving, with a party crate of
    // its own under target/ (built by cargo like any guest).
    if source_rounds > 0 {
        let mut source_times = source_edits(&root, source_rounds).await?;
        println!("| source saved (cargo build + swap) | {} |", Percentiles::of(&mut source_times).row());
    }
    Ok(())
}

/// Sends a message and returns the `starts=` count in the echo.
async fn ask(socket: &mut Socket) -> anyhow::Result<u64> {
    socket.send(Message::text("hi")).await?;
    loop {
        match tokio::time::timeout(Duration::from_secs(30), socket.next()).await? {
            Some(Ok(Message::Text(text))) => {
                let starts = text.rsplit("starts=").next().and_then(|n| n.trim().parse().ok());
                return starts.ok_or_else(|| anyhow::anyhow!("unexpected reply {text}"));
            }
            Some(Ok(_)) => {}
            other => anyhow::bail!("the socket closed: {other:?}"),
        }
    }
}

async fn wait_for_new_code(socket: &mut Socket, starts: u64) -> anyhow::Result<u64> {
    let started = Instant::now();
    loop {
        let now = ask(socket).await?;
        if now > starts {
            return Ok(now);
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "the new code never served");
    }
}

/// A component with an extra custom section (id 0) named `bench`.
pub fn with_custom_section(component: &[u8], nonce: u64) -> Vec<u8> {
    let name = b"bench";
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name);
    payload.extend_from_slice(&nonce.to_le_bytes());
    let mut bytes = component.to_vec();
    bytes.push(0);
    bytes.push(payload.len() as u8);
    bytes.extend_from_slice(&payload);
    bytes
}

/// Times `rounds` edits of a party crate's source, each to first event on
/// the rebuilt code.
async fn source_edits(root: &Path, rounds: usize) -> anyhow::Result<Vec<Duration>> {
    let crate_dir = root.join("target/bench-party");
    write_party_crate(&crate_dir, root, 0)?;
    let wasm = crate_dir.join("target/wasm32-wasip2/release/bench_party.wasm");
    let build = format!(
        "cd {:?} && cargo build --quiet --release --target wasm32-wasip2",
        crate_dir.display().to_string()
    );
    println!("  building the scratch party once (cold)...");
    anyhow::ensure!(
        std::process::Command::new("sh").arg("-c").arg(&build).status()?.success(),
        "build failed"
    );
    let toml = format!(
        "name = \"bench\"\n[parties.src]\nwasm = {:?}\n[parties.src.build]\ncommand = {build:?}\nwatch = [{:?}]\n",
        wasm.display().to_string(),
        crate_dir.join("src").display().to_string()
    );
    let host = ChildHost::start_dev(&toml).await?;
    time_swaps(&host, "src", rounds, |round| write_party_crate(&crate_dir, root, round)).await
}

/// Over one socket to `party`, runs `change(round)` for each round and
/// times it to the first reply from the new code (its `starts` count rises).
async fn time_swaps(
    host: &ChildHost,
    party: &str,
    rounds: usize,
    mut change: impl FnMut(usize) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<Duration>> {
    let (mut socket, _) =
        tokio_tungstenite::connect_async(host.url(&format!("/parties/{party}/room"))).await?;
    let mut starts = ask(&mut socket).await?;
    let mut times = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        let changed = Instant::now();
        change(round)?;
        starts = wait_for_new_code(&mut socket, starts).await?;
        times.push(changed.elapsed());
    }
    Ok(times)
}

/// A party that echoes with its version and a `starts` count.
fn write_party_crate(dir: &Path, root: &Path, version: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("src"))?;
    let sdk: PathBuf = std::path::absolute(root.join("guest-sdk"))?;
    let cargo = format!(
        "[package]\nname = \"bench-party\"\nversion = \"0.1.0\"\nedition = \"2024\"\n[lib]\ncrate-type = [\"cdylib\"]\n\
         [dependencies]\npartyhost-guest = {{ path = {:?} }}\n[workspace]\n[profile.release]\nopt-level = \"s\"\n",
        sdk.display().to_string()
    );
    std::fs::write(dir.join("Cargo.toml"), cargo)?;
    let lib = format!(
        r#"use partyhost_guest::{{Connection, Message, Party, Room, export_party}};
use std::cell::Cell;
struct Bench {{ room: Room, starts: Cell<u64> }}
impl Party for Bench {{
    fn new(room: Room) -> Self {{ Self {{ room, starts: Cell::new(0) }} }}
    async fn on_start(&self) {{
        let starts: u64 = self.room.storage().get("starts").unwrap_or(0) + 1;
        self.starts.set(starts);
        let _ = self.room.storage().put("starts", &starts);
    }}
    async fn on_message(&self, _message: Message, sender: Connection) {{
        sender.send(format!("version {version} starts={{}}", self.starts.get()));
    }}
}}
export_party!(Bench);
"#
    );
    std::fs::write(dir.join("src/lib.rs"), lib)?;
    Ok(())
}
