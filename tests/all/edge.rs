//! The edge: what an anonymous client can hold of the host. Half-sent
//! headers and slow bodies time out; connections are capped in all and per
//! client address, with a 503 that names the cap before any upgrade; a
//! socket that answers no ping is dropped; a client that stops reading is
//! closed 1013 without pinning more than its queue, and a write that stays
//! blocked ends at the write deadline; a room's mailbox holds a bounded
//! number of bytes; guests cannot set connection headers; TLS is the
//! host's own.

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{Client, TestHost, eventually, manifest, raw_http, temp_dir, within};
use crate::guests::HOSTILE;

/// The hostile party, with `extra` TOML (`[edge]`, `[limits]`, ...).
fn hostile(extra: &str) -> String {
    manifest(&[("hostile", HOSTILE)], extra)
}

/// Reads until the host closes the connection (EOF or a reset).
async fn until_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_headers_and_idle_connections_are_closed_at_the_header_timeout() -> Result<()> {
    let dir = temp_dir();
    let host = TestHost::start(dir.path(), &hostile("[edge]\nheader_timeout_ms = 500")).await?;
    // Slowloris: a request line and one header, then nothing.
    let mut attackers = Vec::new();
    for _ in 0..200 {
        let mut stream = TcpStream::connect(host.addr).await?;
        stream.write_all(b"GET /parties/hostile/x HTTP/1.1\r\nHost: a\r\n").await?;
        attackers.push(stream);
    }
    // A keep-alive connection that made one request and went quiet.
    let mut idle = TcpStream::connect(host.addr).await?;
    idle.write_all(b"GET /parties/hostile/x/pong HTTP/1.1\r\nHost: a\r\n\r\n").await?;
    let mut answer = vec![0u8; 4096];
    let n = within("the keep-alive answer", idle.read(&mut answer)).await?;
    assert!(String::from_utf8_lossy(&answer[..n]).ends_with("pong"));
    // Clients that behave are served meanwhile.
    assert_eq!(host.http("GET", "/parties/hostile/x/pong", "").await?.1, "pong");

    let started = Instant::now();
    within("the host closing every connection at its header timeout", async {
        for stream in attackers.iter_mut().chain([&mut idle]) {
            until_closed(stream).await;
        }
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(3), "closed after {:?}", started.elapsed());
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_too_slowly_gets_408_at_the_request_timeout() -> Result<()> {
    let dir = temp_dir();
    let host = TestHost::start(dir.path(), &hostile("[edge]\nrequest_timeout_ms = 500")).await?;
    let mut stream = TcpStream::connect(host.addr).await?;
    stream
        .write_all(
            b"POST /parties/hostile/x/pong HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\nonly a part",
        )
        .await?;
    let started = Instant::now();
    let mut response = Vec::new();
    within("the 408", stream.read_to_end(&mut response)).await?;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("longer than this host allows (0.5 s)"), "{response}");
    assert!(started.elapsed() < Duration::from_secs(3));
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_per_address_cap_get_a_503_before_the_upgrade() -> Result<()> {
    let dir = temp_dir();
    let host = TestHost::start(dir.path(), &hostile("[edge]\nmax_connections_per_ip = 4")).await?;
    let url = host.ws_url("/parties/hostile/capped");
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut client = Client::connect(&url).await?;
        client.send_text("hello").await?;
        assert!(client.recv_text().await?.starts_with("echo hello"));
        open.push(client);
    }
    // The fifth WebSocket: refused with a 503 that names the cap.
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned();
            assert!(body.contains("max_connections_per_ip"), "{body}");
        }
        other => panic!("expected a 503, got {:?}", other.map(|_| ())),
    }
    // Plain HTTP too, and the refusal says when to come back.
    let refused = raw_http(host.addr, "GET", "/parties/hostile/capped/pong", &[], "").await?;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.header("retry-after"), Some("5"));

    // A closed socket gives its slot back.
    drop(open.pop());
    eventually("a slot to come free", async || {
        Ok(raw_http(host.addr, "GET", "/parties/hostile/capped/pong", &[], "").await?.body == "pong")
    })
    .await?;
    drop(open);
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_host_cap_get_a_503() -> Result<()> {
    let dir = temp_dir();
    let host = TestHost::start(dir.path(), &hostile("[edge]\nmax_connections = 3")).await?;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(host.addr).await?);
    }
    // The host counts a connection from its accept, before any byte.
    eventually("the cap to be reached", async || {
        Ok(raw_http(host.addr, "GET", "/parties/hostile/x/pong", &[], "").await?.status == 503)
    })
    .await?;
    let refused = raw_http(host.addr, "GET", "/parties/hostile/x/pong", &[], "").await?;
    assert!(refused.body.contains("[edge] max_connections"), "{}", refused.body);
    held.clear();
    eventually("the held connections to be counted out", async || {
        Ok(raw_http(host.addr, "GET", "/parties/hostile/x/pong", &[], "").await?.body == "pong")
    })
    .await?;
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_answers_no_ping_is_dropped() -> Result<()> {
    let dir = temp_dir();
    let edge = "[edge]\nping_interval_ms = 100\nsocket_idle_timeout_ms = 400";
    let host = TestHost::start(dir.path(), &hostile(edge)).await?;
    let mut lively = Client::connect(&host.ws_url("/parties/hostile/pings?_pk=lively")).await?;
    let mut silent = Client::connect(&host.ws_url("/parties/hostile/pings?_pk=silent")).await?;
    silent.send_text("remember:silent").await?;
    assert_eq!(silent.recv_text().await?, "remembered silent");
    // `silent` is never read again, so it answers no ping; `lively` is
    // read all along (its client answers pings) and hears of the drop.
    let started = Instant::now();
    let heard = within("hearing of the drop", lively.recv_text()).await?;
    assert_eq!(heard, "closed silent with state silent");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(300) && waited < Duration::from_secs(3), "after {waited:?}");
    // Well past the idle timeout, the lively socket, read all along, works.
    let quiet = tokio::time::timeout(Duration::from_millis(600), lively.recv_text()).await;
    assert!(quiet.is_err(), "nothing but pings meanwhile: {quiet:?}");
    lively.send_text("still here").await?;
    assert!(lively.recv_text().await?.starts_with("echo still here"));
    drop(silent);
    host.stop().await
}

/// A WebSocket whose client takes at most `rcvbuf` bytes into its kernel
/// buffer, so a client that stops reading is felt by the host at once.
async fn small_window_socket(host: &TestHost, path: &str) -> Result<WebSocketStream<TcpStream>> {
    let socket = TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(16 << 10)?;
    let stream = socket.connect(host.addr).await?;
    let (ws, _) = tokio_tungstenite::client_async(host.ws_url(path), stream).await?;
    Ok(ws)
}

/// Rounds of [`flood_once`] that overfill a small-window client: 8 MiB,
/// more than its kernel buffers plus a 1 MiB queue.
const FLOOD_ROUNDS: usize = 32;

/// The driver has 256 KiB broadcast to everyone in its room, and reads its
/// own copy (it keeps up).
async fn flood_once(driver: &mut Client) -> Result<()> {
    driver.send_text("flood:64:4").await?;
    while !driver.recv_text().await?.starts_with("flooded") {}
    Ok(())
}

async fn flood(driver: &mut Client) -> Result<()> {
    for _ in 0..FLOOD_ROUNDS {
        flood_once(driver).await?;
    }
    Ok(())
}

/// `ws` sends `text`; returns the first text frame it then reads that starts with `starts`.
async fn ask(ws: &mut WebSocketStream<TcpStream>, text: &str, starts: &str) -> Result<String> {
    ws.send(Message::text(text)).await?;
    loop {
        match within("an answer", ws.next()).await.context("socket closed")?? {
            Message::Text(reply) if reply.starts_with(starts) => return Ok(reply.to_string()),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_1013_and_pins_no_more_than_its_queue() -> Result<()> {
    let dir = temp_dir();
    let extra = "[limits]\nqueue_kib = 1024\n[edge]\nwrite_timeout_ms = 10000";
    let host = TestHost::start(dir.path(), &hostile(extra)).await?;
    let mut slow = small_window_socket(&host, "/parties/hostile/slow?_pk=slow").await?;
    ask(&mut slow, "remember:slow", "remembered").await?;
    let mut driver = Client::connect(&host.ws_url("/parties/hostile/slow?_pk=driver")).await?;

    // 32 rounds of 256 KiB to everyone: 8 MiB, more than the slow client's
    // kernel buffers plus its 1 MiB queue. The driver keeps up.
    let mut most_queued = 0;
    for _ in 0..FLOOD_ROUNDS {
        flood_once(&mut driver).await?;
        most_queued = most_queued.max(host.stats().queued_bytes);
    }
    // Two sockets' queues at most, plus one frame each that always fits.
    assert!(most_queued <= 2 * (1 << 20) + 2 * (64 << 10), "{most_queued} bytes queued at once");

    // The slow client reads again: what the host had written, then 1013.
    let close = within("the 1013", async {
        loop {
            match slow.next().await {
                Some(Ok(Message::Close(Some(frame)))) => return Ok::<_, anyhow::Error>(frame),
                Some(Ok(_)) => {}
                other => anyhow::bail!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await?;
    assert_eq!((u16::from(close.code), close.reason.as_str()), (1013, "too slow: outgoing queue full"));
    eventually("the slow socket's queue to be given back", async || Ok(host.stats().queued_bytes == 0))
        .await?;
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_blocked_past_the_write_deadline_drops_the_client() -> Result<()> {
    let dir = temp_dir();
    // A queue large enough that the room never finds the client too slow:
    // only the write deadline can end this.
    let extra = "[limits]\nqueue_kib = 65536\n[edge]\nwrite_timeout_ms = 500";
    let host = TestHost::start(dir.path(), &hostile(extra)).await?;
    let mut stuck = small_window_socket(&host, "/parties/hostile/stuck?_pk=stuck&tag=stuck").await?;
    ask(&mut stuck, "hello", "echo").await?;
    let mut driver = Client::connect(&host.ws_url("/parties/hostile/stuck?_pk=driver")).await?;
    flood(&mut driver).await?;
    // The room lets go of the connection once its socket task gave up.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        driver.send_text("tagged:stuck").await?;
        let mut answer = driver.recv_text().await?;
        while !answer.starts_with("tagged") {
            answer = driver.recv_text().await?;
        }
        if answer == "tagged stuck = 0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(started.elapsed() < Duration::from_secs(5), "dropped after {:?}", started.elapsed());
    drop(stuck);
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_mailbox_holds_a_bounded_number_of_bytes() -> Result<()> {
    let dir = temp_dir();
    let extra = "[limits]\nwall_ms = 10000\nmessages_per_second = 100000\n[rooms]\nmailbox_kib = 256";
    let host = TestHost::start(dir.path(), &hostile(extra)).await?;
    // The room sleeps for 3 s; meanwhile a client sends 64 KiB messages.
    let mut sleeper = Client::connect(&host.ws_url("/parties/hostile/busy?_pk=sleeper")).await?;
    sleeper.send_text("sleep:3000").await?;
    let socket = TcpSocket::new_v4()?;
    socket.set_send_buffer_size(16 << 10)?;
    let stream = socket.connect(host.addr).await?;
    let (mut writer, _) =
        tokio_tungstenite::client_async(host.ws_url("/parties/hostile/busy?_pk=writer"), stream).await?;
    let message = "m".repeat(64 << 10);
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut sent = 0usize;
    while Instant::now() < deadline && sent < 32 << 20 {
        match tokio::time::timeout_at(deadline.into(), writer.send(Message::text(message.as_str()))).await {
            Ok(result) => result?,
            Err(_) => break,
        }
        sent += message.len();
    }
    // A mailbox bounded by count alone took all 32 MiB (1,024 messages of
    // 64 KiB fit); bounded in bytes, only the mailbox and the socket
    // buffers fill, and the writer's sends block.
    assert!(sent < 16 << 20, "the writer got {} MiB into a sleeping room", sent >> 20);
    assert_eq!(sleeper.recv_text().await?, "slept starts=1");
    drop(writer);
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_cannot_set_connection_or_framing_headers() -> Result<()> {
    let dir = temp_dir();
    let host = TestHost::start(dir.path(), &hostile("")).await?;
    let response = raw_http(host.addr, "GET", "/parties/hostile/x/evil-headers", &[], "").await?;
    assert_eq!((response.status, response.body.as_str()), (200, "the whole body"));
    assert_eq!(response.header("content-length"), Some("14"));
    for name in ["transfer-encoding", "keep-alive", "upgrade", "trailer"] {
        assert_eq!(response.header(name), None, "{name} passed: {response:?}");
    }
    assert!(!response.header("connection").unwrap_or_default().contains("x-smuggled"), "{response:?}");
    assert_eq!(response.header("x-party"), Some("ok"));
    // On the host's own project a party may set cookies.
    assert_eq!(response.header("set-cookie"), Some("session=tenant; Path=/"));

    // Two requests on one connection: each response is framed by the host.
    let mut stream = TcpStream::connect(host.addr).await?;
    let request = "GET /parties/hostile/x/evil-headers HTTP/1.1\r\nHost: a\r\n\r\n";
    stream.write_all(format!("{request}{request}").as_bytes()).await?;
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while seen.matches("the whole body").count() < 2 {
        let n = within("both responses", stream.read(&mut buf)).await?;
        anyhow::ensure!(n > 0, "connection closed after: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert_eq!(seen.matches("HTTP/1.1 200").count(), 2, "{seen}");
    host.stop().await
}

/// A self-signed certificate for `localhost`, as PEM files in `dir`.
fn self_signed(dir: &std::path::Path) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem())?;
    std::fs::write(&key, certified.signing_key.serialize_pem())?;
    Ok((cert, key))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_serves_tls_and_deploys_go_over_https() -> Result<()> {
    use crate::common::Tenant;
    let dir = temp_dir();
    let (cert, key) = self_signed(dir.path())?;
    let alice = Tenant::new(dir.path(), "alice", &[("hostile", HOSTILE)], "")?;
    let options = partyhost::Options {
        tls: Some(partyhost::edge::server_config(&cert, &key)?),
        tenants: Some(partyhost::manifest::Tenants::parse(&alice.entry)?),
        ..partyhost::Options::default()
    };
    let host = TestHost::start_with(dir.path(), &hostile(""), options).await?;
    let url = format!("https://localhost:{}", host.addr.port());

    // `partyhost deploy` over https, trusting the host's certificate.
    let target = partyhost::client::Target {
        url: &url,
        project: &alice.name,
        token: &alice.token,
        ca_cert: Some(&cert),
    };
    let deployed = partyhost::client::deploy(&target, &alice.dir.join("partykit.toml")).await?;
    assert_eq!(deployed["version"], 1);
    // Without the certificate the client refuses the host.
    let untrusted = partyhost::client::Target { ca_cert: None, ..target };
    let refused = partyhost::client::deploy(&untrusted, &alice.dir.join("partykit.toml")).await;
    assert!(format!("{:#}", refused.err().context("an untrusted host was accepted")?).contains("TLS"));

    // wss:// to the deployed project.
    let config = partyhost::edge::client_config(Some(&cert))?;
    let tcp = TcpStream::connect(host.addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
    let wss = format!("wss://localhost:{}/p/alice/parties/hostile/secure", host.addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(wss, tls).await?;
    ws.send(Message::text("over tls")).await?;
    let reply = within("a reply over wss", ws.next()).await.context("closed")??;
    assert!(reply.to_text()?.starts_with("echo over tls"), "{reply:?}");

    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = TcpStream::connect(host.addr).await?;
    plain.write_all(b"GET /parties/hostile/x/pong HTTP/1.1\r\nHost: a\r\n\r\n").await?;
    let mut answer = Vec::new();
    let _ = within("the plain connection to end", plain.read_to_end(&mut answer)).await;
    assert!(!String::from_utf8_lossy(&answer).contains("pong"));
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_delays_shutdown_past_its_deadline() -> Result<()> {
    let dir = temp_dir();
    // A deadline far off: the host must not need it.
    let extra = "[rooms]\nshutdown_deadline_ms = 30000\n[limits]\nqueue_kib = 65536\n\
                 [edge]\nheader_timeout_ms = 60000\nrequest_timeout_ms = 60000\nwrite_timeout_ms = 60000";
    let host = TestHost::start(dir.path(), &hostile(extra)).await?;
    // Half a header, half a body, and a socket that reads nothing while
    // the host has megabytes to write to it.
    let mut half_header = TcpStream::connect(host.addr).await?;
    half_header.write_all(b"GET /parties/hostile/x HTTP/1.1\r\nHost: a\r\n").await?;
    let mut half_body = TcpStream::connect(host.addr).await?;
    half_body
        .write_all(b"POST /parties/hostile/x/pong HTTP/1.1\r\nHost: a\r\nContent-Length: 99\r\n\r\nx")
        .await?;
    let mut stuck = small_window_socket(&host, "/parties/hostile/shut?_pk=stuck").await?;
    ask(&mut stuck, "hello", "echo").await?;
    let mut driver = Client::connect(&host.ws_url("/parties/hostile/shut?_pk=driver")).await?;
    flood(&mut driver).await?;
    let started = Instant::now();
    host.stop().await?;
    assert!(started.elapsed() < Duration::from_secs(5), "shutdown took {:?}", started.elapsed());
    drop((half_header, half_body, stuck));
    Ok(())
}
