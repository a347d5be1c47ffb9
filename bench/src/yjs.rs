//! Yjs: the `yjs` party against a plain native yrs server doing the same
//! work, in the same run. The native server keeps one document per room in
//! a task of its own, appends each update to the room's file (as partyhost
//! commits each to SQLite), writes the document whole and drops it when the
//! last client leaves, and reads it back on the next connect. Both speak the
//! y-websocket protocol; the clients here are yrs documents too.
//!
//! Measured: updates/s into one document with 50 clients connected (10 of
//! them typing, every update sent to the 49 others), the time from connect
//! to the whole 2 MB document in a room that was not running (partyhost:
//! its instance revived from storage), and memory per open document.

use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use yrs::sync::{Message as YMessage, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, ReadTxn, StateVector, Text, Transact, Update};

use crate::host::ChildHost;
use crate::stats::{Percentiles, rss_bytes};

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const WRITERS: usize = 10;

pub async fn run(clients: usize, updates: usize, rounds: usize, rooms: usize) -> anyhow::Result<()> {
    let wasm = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guests/wasm32-wasip2/guest/yjs.wasm");
    anyhow::ensure!(wasm.exists(), "{} is missing: run scripts/build-guests.sh", wasm.display());
    let toml = format!(
        "name = \"bench\"\n[parties.yjs]\nwasm = {:?}\n[parties.yjs.limits]\ncpu_ms = 1000\nmemory_mib = 128\n\
         messages_per_second = 1000000\nqueue_kib = 16384\n[parties.yjs.vars]\nYJS_MAX_BYTES = \"8000000\"\n\
         [rooms]\nidle_timeout_ms = 200\n",
        wasm.display().to_string()
    );
    println!(
        "yjs: {clients} clients in one document, {WRITERS} typing {updates} updates each; a 2 MB document loaded {rounds} times; {rooms} open documents"
    );
    println!();
    println!("| measure | partyhost | native yrs | ratio |");
    println!("|---|---|---|---|");

    let partyhost = ChildHost::start(&toml).await?;
    let native = ChildHost::start_native_yjs().await?;
    let (ours, theirs) =
        (typing(&partyhost, clients, updates).await?, typing(&native, clients, updates).await?);
    println!(
        "| updates/s into one document ({clients} clients, {WRITERS} typing) | {ours:.0} | {theirs:.0} | {:.2}x |",
        ours / theirs
    );

    let (mut ours, mut theirs) = (loads(&partyhost, rounds).await?, loads(&native, rounds).await?);
    let (ours, theirs) = (Percentiles::of(&mut ours), Percentiles::of(&mut theirs));
    println!(
        "| connect to the whole 2 MB document, room not running, p50 / p90 | {} / {} | {} / {} | {:.2}x |",
        ms(ours.p50),
        ms(ours.p90),
        ms(theirs.p50),
        ms(theirs.p90),
        ours.p50.as_secs_f64() / theirs.p50.as_secs_f64()
    );
    drop((partyhost, native));

    let (ours, theirs) = (
        memory_per_document(&ChildHost::start(&toml).await?, rooms).await?,
        memory_per_document(&ChildHost::start_native_yjs().await?, rooms).await?,
    );
    println!(
        "| memory per open document (20 KB, one client) | {} KiB | {} KiB | {:.2}x |",
        ours / 1024,
        theirs / 1024,
        ours as f64 / theirs as f64
    );
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Connects to `room` and syncs: sends sync step 1 and reads until the
/// server's step 2, which it returns.
async fn join(host: &ChildHost, room: &str) -> anyhow::Result<(Socket, Vec<u8>)> {
    let (mut socket, _) = tokio_tungstenite::connect_async(host.url(&format!("/parties/yjs/{room}"))).await?;
    let hello = YMessage::Sync(SyncMessage::SyncStep1(StateVector::default())).encode_v1();
    socket.send(Message::binary(hello)).await?;
    loop {
        if let YMessage::Sync(SyncMessage::SyncStep2(state)) = next_message(&mut socket).await? {
            return Ok((socket, state));
        }
    }
}

async fn next_message(socket: &mut Socket) -> anyhow::Result<YMessage> {
    loop {
        match tokio::time::timeout(Duration::from_secs(60), socket.next()).await? {
            Some(Ok(Message::Binary(bytes))) => return Ok(YMessage::decode_v1(&bytes)?),
            Some(Ok(Message::Close(frame))) => anyhow::bail!("the server closed the socket: {frame:?}"),
            Some(Ok(_)) => {}
            other => anyhow::bail!("the socket ended: {other:?}"),
        }
    }
}

/// An edit of `doc` as the update a client sends.
fn type_into(doc: &Doc, what: &str) -> Vec<u8> {
    let text = doc.get_or_insert_text("codemirror");
    let mut txn = doc.transact_mut();
    let end = text.len(&txn);
    text.insert(&mut txn, end, what);
    YMessage::Sync(SyncMessage::Update(txn.encode_update_v1())).encode_v1()
}

/// `clients` join one document; `WRITERS` of them send `updates` edits
/// each, back to back. Returns updates/s: all of them, over the time until
/// every client has every update it did not send.
async fn typing(host: &ChildHost, clients: usize, updates: usize) -> anyhow::Result<f64> {
    let room = format!("typing-{}", std::process::id());
    let mut sockets = Vec::with_capacity(clients);
    for _ in 0..clients {
        sockets.push(join(host, &room).await?.0);
    }
    let started = Instant::now();
    let writers = WRITERS.min(clients);
    let mut tasks = Vec::new();
    for (i, socket) in sockets.into_iter().enumerate() {
        let writer = i < writers;
        let expected = if writer { (writers - 1) * updates } else { writers * updates };
        tasks.push(tokio::spawn(async move {
            let (mut sink, mut stream) = socket.split();
            let send = async {
                if writer {
                    let doc = Doc::new();
                    for _ in 0..updates {
                        sink.send(Message::binary(type_into(&doc, "a"))).await?;
                    }
                }
                anyhow::Ok(sink)
            };
            let receive = async {
                let mut seen = 0;
                while seen < expected {
                    match tokio::time::timeout(Duration::from_secs(60), stream.next()).await? {
                        Some(Ok(Message::Binary(bytes))) => {
                            if let Ok(YMessage::Sync(SyncMessage::Update(_))) = YMessage::decode_v1(&bytes) {
                                seen += 1;
                            }
                        }
                        Some(Ok(_)) => {}
                        other => anyhow::bail!("the socket ended after {seen} updates: {other:?}"),
                    }
                }
                anyhow::Ok(())
            };
            let (sink, received) = tokio::join!(send, receive);
            received?;
            let _ = sink?.reunite(stream).map(|mut socket| async move { socket.close(None).await });
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok((writers * updates) as f64 / started.elapsed().as_secs_f64())
}

/// Writes a 2 MB document of 1,000 edits, then `rounds` times: every client
/// gone, the room left to stop, and a new client timed from connect to
/// the whole document.
async fn loads(host: &ChildHost, rounds: usize) -> anyhow::Result<Vec<Duration>> {
    let room = format!("large-{}", std::process::id());
    let paragraph = format!("{}\n", "lorem ipsum dolor sit amet ".repeat(74));
    let (mut writer, _) = join(host, &room).await?;
    let doc = Doc::new();
    for _ in 0..1000 {
        writer.send(Message::binary(type_into(&doc, &paragraph))).await?;
    }
    let expected = doc.get_or_insert_text("codemirror").len(&doc.transact());
    // A second client, until it has it all: then the room has stored it all.
    let (mut reader, state) = join(host, &room).await?;
    let copy = Doc::new();
    let text = copy.get_or_insert_text("codemirror");
    copy.transact_mut().apply_update(Update::decode_v1(&state)?)?;
    while text.len(&copy.transact()) < expected {
        if let YMessage::Sync(SyncMessage::Update(update)) = next_message(&mut reader).await? {
            copy.transact_mut().apply_update(Update::decode_v1(&update)?)?;
        }
    }
    let mut times = Vec::with_capacity(rounds);
    let mut open = vec![writer, reader];
    for _ in 0..rounds {
        open.clear();
        // partyhost's rooms stop 200 ms after their last client leaves.
        tokio::time::sleep(Duration::from_millis(800)).await;
        let started = Instant::now();
        let (socket, state) = join(host, &room).await?;
        times.push(started.elapsed());
        anyhow::ensure!(document_length(&state)? == expected, "a reload lost part of the document");
        open.push(socket);
    }
    Ok(times)
}

fn document_length(state: &[u8]) -> anyhow::Result<u32> {
    let doc = Doc::new();
    let text = doc.get_or_insert_text("codemirror");
    doc.transact_mut().apply_update(Update::decode_v1(state)?)?;
    Ok(text.len(&doc.transact()))
}

/// Server memory per room holding a 20 KB document with one client.
async fn memory_per_document(host: &ChildHost, rooms: usize) -> anyhow::Result<u64> {
    let pid = host.pid()?;
    // One warm room first, so the measure is of rooms, not of the first.
    let (mut warm, _) = join(host, "warm").await?;
    warm.send(Message::binary(type_into(&Doc::new(), "warm"))).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_bytes(pid)?;
    let text = "x".repeat(20_000);
    let mut sockets = Vec::with_capacity(rooms);
    for i in 0..rooms {
        let (mut socket, _) = join(host, &format!("doc-{i}")).await?;
        socket.send(Message::binary(type_into(&Doc::new(), &text))).await?;
        sockets.push(socket);
    }
    // The last update is in once a new client of that room gets it.
    let (_check, state) = join(host, &format!("doc-{}", rooms - 1)).await?;
    anyhow::ensure!(document_length(&state)? == 20_000, "the last document is incomplete");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = rss_bytes(pid)?;
    Ok(after.saturating_sub(before) / rooms as u64)
}

// ---- The native baseline ----

enum RoomEvent {
    Join(u64, mpsc::UnboundedSender<Message>),
    Frame(u64, Vec<u8>),
    Leave(u64),
}

type Rooms = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<RoomEvent>>>>;

/// Serves the y-websocket protocol on `port`, one task per room.
pub async fn serve(port: u16) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let rooms: Rooms = Arc::default();
    let mut next_id = 0;
    loop {
        let (stream, _) = listener.accept().await?;
        next_id += 1;
        tokio::spawn(client(stream, next_id, rooms.clone(), dir.path().to_owned()));
    }
}

// tungstenite's callback signature fixes the error type.
#[allow(clippy::result_large_err)]
async fn client(stream: tokio::net::TcpStream, id: u64, rooms: Rooms, dir: PathBuf) {
    let mut path = String::new();
    let callback = |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                    res: tokio_tungstenite::tungstenite::handshake::server::Response| {
        path = req.uri().path().to_owned();
        Ok(res)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else { return };
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let room = {
        let mut rooms = rooms.lock().unwrap_or_else(|p| p.into_inner());
        let room = rooms.entry(path.clone()).or_insert_with(|| {
            let (room_tx, room_rx) = mpsc::unbounded_channel();
            let file = dir.join(path.replace('/', "_"));
            std::thread::spawn(move || run_room(room_rx, file));
            room_tx
        });
        room.clone()
    };
    let _ = room.send(RoomEvent::Join(id, tx));
    let writer = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            if sink.send(message).await.is_err() {
                break;
            }
        }
    });
    while let Some(Ok(message)) = stream.next().await {
        if let Message::Binary(bytes) = message {
            let _ = room.send(RoomEvent::Frame(id, bytes.to_vec()));
        }
    }
    let _ = room.send(RoomEvent::Leave(id));
    writer.abort();
}

/// One room: its document, its clients, its file. Loads the file when it
/// has no document; writes the document whole and drops it when the last
/// client leaves.
fn run_room(mut events: mpsc::UnboundedReceiver<RoomEvent>, file: PathBuf) {
    let mut doc: Option<Doc> = None;
    let mut log: Option<std::fs::File> = None;
    let mut clients: HashMap<u64, mpsc::UnboundedSender<Message>> = HashMap::new();
    while let Some(event) = events.blocking_recv() {
        match event {
            RoomEvent::Join(id, tx) => {
                let doc = doc.get_or_insert_with(|| load(&file));
                let state = doc.transact().state_vector();
                let _ = tx.send(Message::binary(YMessage::Sync(SyncMessage::SyncStep1(state)).encode_v1()));
                clients.insert(id, tx);
            }
            RoomEvent::Frame(id, bytes) => {
                let Some(doc) = doc.as_ref() else { continue };
                match YMessage::decode_v1(&bytes) {
                    Ok(YMessage::Sync(SyncMessage::SyncStep1(theirs))) => {
                        let missing = doc.transact().encode_state_as_update_v1(&theirs);
                        if let Some(tx) = clients.get(&id) {
                            let step2 = YMessage::Sync(SyncMessage::SyncStep2(missing)).encode_v1();
                            let _ = tx.send(Message::binary(step2));
                        }
                    }
                    Ok(YMessage::Sync(SyncMessage::SyncStep2(update) | SyncMessage::Update(update))) => {
                        let Ok(decoded) = Update::decode_v1(&update) else { continue };
                        if doc.transact_mut().apply_update(decoded).is_err() {
                            continue;
                        }
                        let log = log.get_or_insert_with(|| {
                            std::fs::OpenOptions::new()
                                .create(true)
                                .append(true)
                                .open(file.with_extension("log"))
                                .unwrap_or_else(|e| panic!("opening the room's log: {e}"))
                        });
                        let _ = log.write_all(&(update.len() as u32).to_le_bytes());
                        let _ = log.write_all(&update);
                        let frame = Message::binary(YMessage::Sync(SyncMessage::Update(update)).encode_v1());
                        for (other, tx) in &clients {
                            if *other != id {
                                let _ = tx.send(frame.clone());
                            }
                        }
                    }
                    Ok(YMessage::Awareness(_)) => {
                        let frame = Message::binary(bytes);
                        for tx in clients.values() {
                            let _ = tx.send(frame.clone());
                        }
                    }
                    _ => {}
                }
            }
            RoomEvent::Leave(id) => {
                clients.remove(&id);
                if clients.is_empty()
                    && let Some(gone) = doc.take()
                {
                    let state = gone.transact().encode_state_as_update_v1(&StateVector::default());
                    let _ = std::fs::write(&file, state);
                    let _ = std::fs::remove_file(file.with_extension("log"));
                    log = None;
                }
            }
        }
    }
}

fn load(file: &Path) -> Doc {
    let doc = Doc::new();
    if let Ok(state) = std::fs::read(file)
        && let Ok(update) = Update::decode_v1(&state)
    {
        let _ = doc.transact_mut().apply_update(update);
    }
    doc
}
