//! The output gate, made deterministic: the storage thread's commits are
//! held by a test hook, and nothing a call produced (a frame, an HTTP
//! response, an outgoing fetch) may leave its room until its writes are
//! durable; a commit that fails releases none of it.

use anyhow::Result;
use std::time::Duration;

use crate::common::{Client, TestHost, manifest, raw_http, temp_dir, within};
use crate::guests::HOSTILE;

/// Long enough for anything released early to arrive.
const QUIET: Duration = Duration::from_millis(300);

/// Whether `client` receives any frame within [`QUIET`].
async fn hears_nothing(client: &mut Client) -> bool {
    tokio::time::timeout(QUIET, client.recv_text()).await.is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_leaves_before_its_commit_and_a_failed_commit_releases_nothing() -> Result<()> {
    let dir = temp_dir();
    let host = TestHost::start(dir.path(), &manifest(&[("main", HOSTILE)], "")).await?;
    let mut client = Client::connect(&host.ws_url("/parties/main/gated")).await?;
    client.send_text("ping").await?;
    assert_eq!(client.recv_text().await?, "echo ping starts=1");
    let rooms = host.local_rooms();
    let hooks = rooms.commit_hooks().clone();

    hooks.hold();
    // A write and its reply; then a fetch and an HTTP response queued
    // behind it in the same room.
    client.send_text("alarm:600000").await?;
    client.send_text("fetch-loop:1").await?;
    assert!(hears_nothing(&mut client).await, "a frame left before its commit");
    // Sent once the messages above have surely reached the room.
    let http = tokio::spawn(get(host.addr, "/parties/main/gated/pong"));
    tokio::time::sleep(QUIET).await;
    assert!(!http.is_finished(), "an HTTP response left before the commit ahead of it");
    assert_eq!(host.stats().rooms, 1, "a fetch reached its target before the commit");

    let released = std::time::Instant::now();
    hooks.release();
    assert!(client.recv_text().await?.starts_with("alarm set"));
    assert!(client.recv_text().await?.starts_with("fetched 1 of 1"));
    let (status, body, answered) = within("http", http).await??;
    assert_eq!((status, body.as_str()), (200, "pong"));
    assert!(answered >= released);

    // A commit that fails: the reply, the fetch and the HTTP response
    // queued behind it are never released; the room restarts from disk.
    hooks.hold();
    client.send_text("alarm:700000").await?;
    client.send_text("fetch-loop:1").await?;
    assert!(hears_nothing(&mut client).await);
    let http = tokio::spawn(get(host.addr, "/parties/main/gated/pong"));
    tokio::time::sleep(QUIET).await;
    assert!(!http.is_finished());
    hooks.fail_next();
    hooks.release();
    let (status, body, _) = within("http", http).await??;
    assert_eq!((status, body.as_str()), (500, "the room restarted after an error"));
    client.send_text("ping").await?;
    assert_eq!(client.recv_text().await?, "echo ping starts=2", "the reply of the failed call leaked");
    // On disk: the first alarm, not the failed call's.
    let stored: i64 = rusqlite::Connection::open(dir.path().join("data/storage.sqlite"))?.query_row(
        "SELECT time_ms FROM alarms WHERE room = 'gated'",
        [],
        |row| row.get(0),
    )?;
    let in_ms = stored - i64::try_from(partyhost::rooms::now_ms())?;
    assert!((0..650_000).contains(&in_ms), "the failed call's alarm was stored: {in_ms} ms ahead");
    host.stop().await
}

/// A GET from a task of its own: status, body, and when it was answered.
async fn get(addr: std::net::SocketAddr, path: &'static str) -> Result<(u16, String, std::time::Instant)> {
    let response = raw_http(addr, "GET", path, &[], "").await?;
    Ok((response.status, response.body, std::time::Instant::now()))
}

/// Calls that finish while their room's commit is in flight share the next
/// commit; a call that then traps must not take their writes with it (the
/// room reloads its storage after a trap, and their replies are already
/// promised to leave once those writes are durable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_gathered_behind_a_commit_survive_a_trap_that_follows_them() -> Result<()> {
    let dir = temp_dir();
    let host = TestHost::start(dir.path(), &manifest(&[("main", HOSTILE)], "")).await?;
    let mut client = Client::connect(&host.ws_url("/parties/main/batched")).await?;
    client.send_text("ping").await?;
    assert_eq!(client.recv_text().await?, "echo ping starts=1");
    let hooks = host.local_rooms().commit_hooks().clone();

    hooks.hold();
    // The first append's commit is held; the next two wait for it in the
    // room's next batch; then a call writes, broadcasts and traps.
    for n in 1..=3 {
        client.send_text(&format!("append:{n}")).await?;
    }
    client.send_text("write-broadcast-trap:").await?;
    assert!(hears_nothing(&mut client).await, "a frame left before its commit");
    hooks.release();
    for n in 1..=3 {
        assert_eq!(client.recv_text().await?, format!("acked {n}"));
    }
    client.send_text("ping").await?;
    assert_eq!(client.recv_text().await?, "echo ping starts=2", "the trapped call's frame leaked");
    // On disk and in the restarted room: the three appends, not the
    // trapped call's write.
    let db = rusqlite::Connection::open(dir.path().join("data/storage.sqlite"))?;
    let stored: Vec<String> = db
        .prepare("SELECT key FROM kv WHERE room = 'batched' AND key != 'starts' ORDER BY key")?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    assert_eq!(stored, ["a:0000000001", "a:0000000002", "a:0000000003"]);
    let (status, body) = host.http("GET", "/parties/main/batched/appends", "").await?;
    assert_eq!((status, body.as_str()), (200, "appends 3"));
    host.stop().await
}
