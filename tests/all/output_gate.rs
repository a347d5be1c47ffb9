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

/// A host serving the hostile party, a client in `room` that has had its
/// first answer, and the storage thread's test hooks.
async fn started_room(
    dir: &tempfile::TempDir,
    room: &str,
    extra: &str,
) -> Result<(TestHost, Client, std::sync::Arc<partyhost::storage::CommitHooks>)> {
    let host = TestHost::start(dir.path(), &manifest(&[("main", HOSTILE)], extra)).await?;
    let mut client = Client::connect(&host.ws_url(&format!("/parties/main/{room}"))).await?;
    client.send_text("ping").await?;
    assert_eq!(client.recv_text().await?, "echo ping starts=1");
    let hooks = host.local_rooms().commit_hooks().clone();
    Ok((host, client, hooks))
}

/// With commits held: three appends (the first one's commit in flight, the
/// other two gathered behind it), then a call that writes, broadcasts and
/// traps; nothing may be heard yet.
async fn appends_then_a_trap(client: &mut Client) -> Result<()> {
    client.send_text("append:1").await?;
    // Its mailbox empty, the room sends this commit (held) before the others
    // arrive; sent together, they would gather into one batch.
    tokio::time::sleep(QUIET / 3).await;
    for n in 2..=3 {
        client.send_text(&format!("append:{n}")).await?;
    }
    client.send_text("write-broadcast-trap:").await?;
    assert!(hears_nothing(client).await, "a frame left before its commit");
    Ok(())
}

/// The `append` keys stored in `room`, read from the file.
fn stored_appends(dir: &tempfile::TempDir, room: &str) -> Result<Vec<String>> {
    let db = rusqlite::Connection::open(dir.path().join("data/storage.sqlite"))?;
    let keys = db
        .prepare("SELECT key FROM kv WHERE room = ?1 AND key LIKE 'a:%' ORDER BY key")?
        .query_map([room], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(keys)
}

/// Calls that finish while their room's commit is in flight share the next
/// commit; a call that then traps must not take their writes with it (the
/// room reloads its storage after a trap, and their replies are already
/// promised to leave once those writes are durable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_gathered_behind_a_commit_survive_a_trap_that_follows_them() -> Result<()> {
    let dir = temp_dir();
    let (host, mut client, hooks) = started_room(&dir, "batched", "").await?;
    hooks.hold();
    appends_then_a_trap(&mut client).await?;
    hooks.release();
    for n in 1..=3 {
        assert_eq!(client.recv_text().await?, format!("acked {n}"));
    }
    client.send_text("ping").await?;
    assert_eq!(client.recv_text().await?, "echo ping starts=2", "the trapped call's frame leaked");
    // On disk and in the restarted room: the three appends, not the
    // trapped call's write.
    assert_eq!(stored_appends(&dir, "batched")?, ["a:0000000001", "a:0000000002", "a:0000000003"]);
    let (status, body) = host.http("GET", "/parties/main/batched/appends", "").await?;
    assert_eq!((status, body.as_str()), (200, "appends 3"));
    let (status, body) = host.http("GET", "/parties/main/batched/doomed", "").await?;
    assert_eq!((status, body.as_str()), (200, "None"));
    host.stop().await
}

/// A trap while one commit is in flight and later writes wait behind it:
/// if that commit fails, the later writes must not land without it (the
/// file would hold a state the room never had), and none of their replies
/// may leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_takes_the_writes_gathered_behind_it_even_after_a_trap() -> Result<()> {
    let dir = temp_dir();
    let (host, mut client, hooks) = started_room(&dir, "torn", "").await?;
    hooks.hold();
    appends_then_a_trap(&mut client).await?;
    hooks.fail_next();
    hooks.release();
    client.send_text("ping").await?;
    assert_eq!(client.recv_text().await?, "echo ping starts=2", "a reply of a failed commit leaked");
    let stored = stored_appends(&dir, "torn")?;
    assert!(stored.is_empty(), "writes stored without the failed commit before them: {stored:?}");
    let (status, body) = host.http("GET", "/parties/main/torn/appends", "").await?;
    assert_eq!((status, body.as_str()), (200, "appends 0"));
    host.stop().await
}

/// One step past the gate's bound: while its commit is held, a room runs
/// 256 calls' worth of output and then stops taking events, so a stalled
/// disk pushes back on clients instead of growing the room's memory; once
/// the commit lands, every call runs and is answered in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_stops_taking_events_when_too_much_output_waits_for_a_stalled_commit() -> Result<()> {
    let dir = temp_dir();
    // Past the default message rate, which would stop the client first.
    let (host, mut client, hooks) =
        started_room(&dir, "stalled", "[limits]\nmessages_per_second = 100000").await?;
    let calls = async || -> Result<f64> {
        let metrics = host.http("GET", "/_partyhost/metrics", "").await?.1;
        let name =
            "partyhost_guest_call_seconds_count{project=\"test\",party=\"main\",handler=\"on-message\"}";
        Ok(metrics.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(-1.0))
    };

    hooks.hold();
    for n in 1..=300 {
        client.send_text(&format!("append:{n}")).await?;
    }
    tokio::time::sleep(QUIET).await;
    // The ping, the first append (its commit held) and 256 more held behind it.
    assert_eq!(calls().await?, 258.0, "calls ran past the bound on held output");
    hooks.release();
    for n in 1..=300 {
        assert_eq!(client.recv_text().await?, format!("acked {n}"));
    }
    assert_eq!(calls().await?, 301.0);
    host.stop().await
}

/// With nothing held, a room commits on its own thread (the connection is
/// free); a commit that fails there must keep the gate's promise as the
/// storage thread's does: the call's reply never leaves and the room
/// restarts from disk. The failure is SQLite's own, from a trigger put in
/// the file by another connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_fails_on_the_rooms_own_thread_releases_nothing() -> Result<()> {
    let dir = temp_dir();
    let (host, mut client, hooks) = started_room(&dir, "inline", "").await?;
    client.send_text("append:1").await?;
    assert_eq!(client.recv_text().await?, "acked 1");
    let tried = hooks.made_by_rooms();

    let db = rusqlite::Connection::open(dir.path().join("data/storage.sqlite"))?;
    db.execute_batch(
        "CREATE TRIGGER refuse_appends BEFORE INSERT ON kv WHEN NEW.key = 'a:0000000002'
         BEGIN SELECT RAISE(ABORT, 'the disk said no'); END;",
    )?;
    client.send_text("append:2").await?;
    assert!(hears_nothing(&mut client).await, "the reply left although its commit failed");
    assert_eq!(hooks.made_by_rooms(), tried + 1, "the commit did not run on the room's thread");
    client.send_text("ping").await?;
    assert_eq!(client.recv_text().await?, "echo ping starts=2", "the room did not restart from disk");

    db.execute_batch("DROP TRIGGER refuse_appends")?;
    client.send_text("append:3").await?;
    assert_eq!(client.recv_text().await?, "acked 3");
    assert_eq!(stored_appends(&dir, "inline")?, ["a:0000000001", "a:0000000003"]);
    host.stop().await
}

/// A commit fails while its room's party is being removed (`partyhost dev`,
/// the manifest edited): the room hears of the removal only at its next
/// event, here the failed commit's outcome, which must be taken first. Were
/// the removal followed first, the room would stop and flush its held
/// output as if the commit had been durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_fails_as_its_party_is_removed_releases_nothing() -> Result<()> {
    let dir = temp_dir();
    let party = |name: &str, wasm: &str| format!("[parties.{name}]\nwasm = {wasm:?}\n");
    let kept = format!("name = \"dev\"\n{}", party("kept", crate::guests::REACTIONS));
    let host = TestHost::start_dev(dir.path(), &format!("{kept}{}", party("main", HOSTILE))).await?;
    let mut client = Client::connect(&host.ws_url("/parties/main/removed")).await?;
    client.send_text("ping").await?;
    assert_eq!(client.recv_text().await?, "echo ping starts=1");
    let hooks = host.local_rooms().commit_hooks().clone();

    hooks.hold();
    client.send_text("append:1").await?;
    assert!(hears_nothing(&mut client).await, "a frame left before its commit");
    std::fs::write(dir.path().join("partykit.toml"), &kept)?;
    host.wait_for_reloads(1, 0).await;
    hooks.fail_next();
    hooks.release();
    assert!(hears_nothing(&mut client).await, "the reply of a failed commit left as the room stopped");
    // The next event finds the party gone: the room closes its sockets.
    client.send_text("ping").await?;
    let (code, _) = client.recv_close().await?;
    assert_eq!(code, 1001);
    host.stop().await
}
