//! Routing, connection ids and bad input at the protocol level.

use anyhow::Result;
use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{Client, TestHost, eventually, manifest, temp_dir};
use crate::guests::{HOSTILE, REACTIONS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_party_is_404_with_a_clear_message() -> Result<()> {
    let dir = temp_dir();
    let host = TestHost::start(dir.path(), &manifest(&[("reactions", REACTIONS)], "")).await?;
    let (status, body) = host.http("GET", "/parties/nosuch/room", "").await?;
    assert_eq!((status, body.as_str()), (404, "no party named `nosuch` is deployed on this host"));
    // No `main` party in this manifest: the legacy path has nothing to serve.
    let (status, body) = host.http("GET", "/party/room", "").await?;
    assert_eq!((status, body.as_str()), (404, "no party named `main` is deployed on this host"));
    let (status, body) = host.http("GET", "/elsewhere", "").await?;
    assert_eq!(status, 404);
    assert!(body.contains("/parties/<party>/<room>"), "{body}");
    assert!(
        Client::connect(&host.ws_url("/parties/nosuch/room")).await.is_err(),
        "no upgrade for unknown parties"
    );
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_closes_only_that_connection() -> Result<()> {
    let dir = temp_dir();
    let host =
        TestHost::start(dir.path(), &manifest(&[("reactions", REACTIONS)], "[limits]\nmessage_kib = 4"))
            .await?;
    let url = host.ws_url("/parties/reactions/big");
    let mut big = Client::connect(&url).await?;
    let mut other = Client::connect(&url).await?;
    big.recv_json().await?;
    other.recv_json().await?;
    big.send(Message::text("x".repeat(8 << 10))).await?;
    assert_eq!(big.recv_close().await?.0, 1009, "message too big");
    other.send_json(json!({ "type": "reaction", "kind": "clap" })).await?;
    assert_eq!(other.recv_json().await?["reactions"]["clap"], 1);
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_id_comes_from_pk_and_a_reconnect_replaces_the_old_socket() -> Result<()> {
    let dir = temp_dir();
    let host = TestHost::start(dir.path(), &manifest(&[("hostile", HOSTILE)], "")).await?;
    let mut first = Client::connect(&host.ws_url("/parties/hostile/ids?_pk=alice%20b")).await?;
    first.send_text("hi").await?;
    assert_eq!(first.recv_text().await?, "echo hi starts=1");
    let mut second = Client::connect(&host.ws_url("/parties/hostile/ids?_pk=alice%20b")).await?;
    let (code, reason) = first.recv_close().await?;
    assert_eq!((code, reason.as_str()), (1000, "replaced by a newer connection with the same id"));
    second.send_text("again").await?;
    assert_eq!(second.recv_text().await?, "echo again starts=1");
    let (status, body) = host.http("GET", "/parties/hostile/ids?_pk=%01", "").await?;
    assert_eq!(status, 200, "plain HTTP ignores _pk: {body}");
    host.stop().await
}

/// As in PartyKit's `onClose`, the closed connection's state is still
/// readable while the room hears of the close, though the connection is no
/// longer among the room's connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_close_can_read_the_closed_connections_state() -> Result<()> {
    let dir = temp_dir();
    let host = TestHost::start(dir.path(), &manifest(&[("hostile", HOSTILE)], "")).await?;
    let mut stays = Client::connect(&host.ws_url("/parties/hostile/farewell")).await?;
    let mut leaves = Client::connect(&host.ws_url("/parties/hostile/farewell?_pk=leaver")).await?;
    leaves.send_text("remember:see you").await?;
    assert_eq!(leaves.recv_text().await?, "remembered see you");
    leaves.send(Message::Close(None)).await?;
    assert_eq!(stays.recv_text().await?, "closed leaver with state see you");
    stays.send_text("tagged:leaver").await?;
    assert_eq!(stays.recv_text().await?, "tagged leaver = 0", "gone from the room's connections");
    host.stop().await
}

/// The room hears of a connection when its upgrade request arrives (it
/// runs `on-connect` while the handshake completes, as PartyKit does before
/// its 101); a client that vanishes during or right after the handshake
/// leaves no connection behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_abandoned_midway_leaves_no_connection_behind() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    let dir = temp_dir();
    let host = TestHost::start(dir.path(), &manifest(&[("hostile", HOSTILE)], "")).await?;
    let url = host.ws_url("");
    let addr = url.trim_start_matches("ws://").to_owned();
    let request = format!(
        "GET /parties/hostile/ghosts?tag=ghost HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    // A raw client; with `answered`, it returns once the 101 has arrived.
    let open = async |answered: bool| -> Result<TcpStream> {
        let mut stream = TcpStream::connect(&addr).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut head = Vec::new();
        while answered && !head.ends_with(b"\r\n\r\n") {
            head.push(stream.read_u8().await?);
        }
        assert!(!answered || head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
        Ok(stream)
    };
    let mut watcher = Client::connect(&host.ws_url("/parties/hostile/ghosts")).await?;
    let lingering = open(true).await?;
    watcher.send_text("tagged:ghost").await?;
    assert_eq!(watcher.recv_text().await?, "tagged ghost = 1", "a raw client joins like any other");

    for i in 0..40 {
        let stream = open(i % 2 == 0).await?;
        if i % 2 == 1 {
            // Vanish at different points of the handshake (a blocking
            // sleep: tokio's timer would round these up to 1 ms).
            std::thread::sleep(Duration::from_micros(i * 25));
        }
        stream.set_zero_linger()?;
        drop(stream);
    }
    lingering.set_zero_linger()?;
    drop(lingering);
    eventually("the abandoned connections are gone", async || {
        watcher.send_text("tagged:ghost").await?;
        Ok(watcher.recv_text().await? == "tagged ghost = 0")
    })
    .await?;
    host.stop().await
}
