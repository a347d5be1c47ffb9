//! The ceiling: a plain native Rust server speaking the reactions protocol,
//! with no sandbox and no storage. Rooms by URL path; counts in memory; the
//! update is serialised once per reaction and shared by every receiver;
//! the same 100 ms limiter as example-reactions unless `--no-limiter`.

use futures_util::{SinkExt, StreamExt};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[derive(Default)]
struct Room {
    counts: BTreeMap<String, u64>,
    clients: HashMap<u64, mpsc::UnboundedSender<Message>>,
}

type Rooms = Arc<Mutex<HashMap<String, Room>>>;

pub async fn serve(port: u16, limiter: bool) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let rooms: Rooms = Arc::default();
    let mut next_id = 0;
    loop {
        let (stream, _) = listener.accept().await?;
        next_id += 1;
        tokio::spawn(client(stream, next_id, rooms.clone(), limiter));
    }
}

fn update(counts: &BTreeMap<String, u64>) -> Message {
    let json = serde_json::json!({ "type": "update", "reactions": counts });
    Message::text(json.to_string())
}

// tungstenite's callback signature fixes the error type.
#[allow(clippy::result_large_err)]
async fn client(stream: tokio::net::TcpStream, id: u64, rooms: Rooms, limiter: bool) {
    let mut path = String::new();
    // The same socket buffers as partyhost (see its http/routes.rs).
    let config = WebSocketConfig::default().read_buffer_size(1 << 10).write_buffer_size(16 << 10);
    let Ok(ws) = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        |req: &Request, res: Response| {
            path = req.uri().path().to_owned();
            Ok(res)
        },
        Some(config),
    )
    .await
    else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let first = {
        let mut rooms = rooms.lock().unwrap_or_else(|p| p.into_inner());
        let room = rooms.entry(path.clone()).or_default();
        room.clients.insert(id, tx);
        update(&room.counts)
    };
    if sink.send(first).await.is_err() {
        return;
    }
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if sink.send(msg).await.is_err() {
                break;
            }
        }
    });
    let (mut next_allowed, mut violations) = (Instant::now(), 0);
    while let Some(Ok(Message::Text(text))) = stream.next().await {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
        let Some(kind) = msg["kind"].as_str().filter(|_| msg["type"] == "reaction") else { continue };
        let mut rooms = rooms.lock().unwrap_or_else(|p| p.into_inner());
        let Some(room) = rooms.get_mut(&path) else { break };
        if limiter {
            let now = Instant::now();
            // example-reactions' limiter: `slowdown`, and at the 10th
            // violation in a row `goaway` and a close.
            if next_allowed > now {
                next_allowed += Duration::from_millis(100);
                violations += 1;
                if let Some(me) = room.clients.get(&id) {
                    if violations < 10 {
                        let _ = me.send(Message::text("slowdown"));
                    } else {
                        let _ = me.send(Message::text("goaway"));
                        let _ = me.send(Message::Close(None));
                    }
                }
                continue;
            }
            next_allowed = now + Duration::from_millis(100);
            violations = 0;
        }
        *room.counts.entry(kind.to_owned()).or_default() += 1;
        let message = update(&room.counts);
        for client in room.clients.values() {
            let _ = client.send(message.clone());
        }
    }
    if let Some(room) = rooms.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&path) {
        room.clients.remove(&id);
    }
    writer.abort();
}
