//! Durability under SIGKILL: the built host serves many clients sending
//! reactions, is killed at a random moment, and restarts. Every count a
//! client saw in a broadcast must be in the restored counts, since the host
//! releases a broadcast only after its writes are committed.

use futures_util::{SinkExt, StreamExt};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const BINARY: &str = env!("CARGO_BIN_EXE_partyhost");
const KINDS: [&str; 4] = ["clap", "heart", "thumbsup", "party"];
const CLIENTS: usize = 8;
const ROUNDS: usize = 4;

type Counts = BTreeMap<String, u64>;

fn start_host(manifest: &Path) -> anyhow::Result<tokio::process::Child> {
    Ok(tokio::process::Command::new(BINARY)
        .arg("--manifest")
        .arg(manifest)
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?)
}

/// Waits until the room answers, not just the port: the host listens
/// before it has compiled its parties, and a kill in between would find no
/// load to interrupt.
async fn wait_until_serving(port: u16) -> anyhow::Result<()> {
    let started = Instant::now();
    while restored_counts(port).await.is_err() {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(10), "the host did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

async fn restored_counts(port: u16) -> anyhow::Result<Counts> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let request = "GET /parties/reactions/crash HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut response)).await??;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    let update: serde_json::Value = serde_json::from_str(body)?;
    Ok(serde_json::from_value(update["reactions"].clone())?)
}

/// Sends reactions one after another, recording the highest count of each
/// kind it sees acknowledged, until the connection dies.
async fn client(port: u16, kind: &'static str, seen: Arc<Mutex<Counts>>) {
    let url = format!("ws://127.0.0.1:{port}/parties/reactions/crash");
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await else { return };
    let reaction = format!(r#"{{"type":"reaction","kind":"{kind}"}}"#);
    loop {
        if ws.send(Message::text(reaction.clone())).await.is_err() {
            return;
        }
        let update = match ws.next().await {
            Some(Ok(Message::Text(text))) => serde_json::from_str::<serde_json::Value>(&text),
            _ => return,
        };
        let Ok(counts) = update.map(|u| serde_json::from_value::<Counts>(u["reactions"].clone())) else {
            return;
        };
        let Ok(counts) = counts else { continue };
        let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        for (kind, count) in counts {
            let best = seen.entry(kind).or_default();
            *best = (*best).max(count);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_reactions_survive_sigkill() -> anyhow::Result<()> {
    let reactions: PathBuf =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guests/wasm32-wasip2/guest/reactions.wasm");
    anyhow::ensure!(reactions.exists(), "run scripts/build-guests.sh first");
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let manifest = dir.path().join("partykit.toml");
    std::fs::write(
        &manifest,
        format!(
            "name = \"crash\"\nlisten = \"127.0.0.1:{port}\"\n[parties.reactions]\nwasm = {:?}\n\
             [parties.reactions.vars]\nRATE_LIMIT_MS = \"0\"\n",
            reactions.display().to_string()
        ),
    )?;

    let mut host = start_host(&manifest)?;
    wait_until_serving(port).await?;
    let mut previous_total = 0;
    for round in 0..ROUNDS {
        let seen = Arc::new(Mutex::new(Counts::new()));
        let clients: Vec<_> =
            (0..CLIENTS).map(|i| tokio::spawn(client(port, KINDS[i % KINDS.len()], seen.clone()))).collect();
        // Kill at a moment between 150 and 650 ms into the load.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos();
        tokio::time::sleep(Duration::from_millis(150 + u64::from(nanos % 500))).await;
        host.start_kill()?;
        host.wait().await?;
        for client in clients {
            tokio::time::timeout(Duration::from_secs(10), client).await??;
        }

        host = start_host(&manifest)?;
        wait_until_serving(port).await?;
        let restored = restored_counts(port).await?;
        let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (kind, acknowledged) in &seen {
            let kept = restored.get(kind).copied().unwrap_or(0);
            assert!(
                kept >= *acknowledged,
                "round {round}: {kind} was acknowledged at {acknowledged}, restored {kept}"
            );
        }
        // Shown with --nocapture, and on failure.
        eprintln!("round {round}: acknowledged {seen:?}, restored {restored:?}");
        let total: u64 = restored.values().sum();
        assert!(total > previous_total, "round {round}: no reactions were counted under load");
        previous_total = total;
    }
    host.start_kill()?;
    Ok(())
}
