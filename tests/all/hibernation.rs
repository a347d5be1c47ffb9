//! Idle instances are evicted while their sockets stay open, and come back
//! (running `on-start` again) at the next event; empty rooms stop; alarms
//! revive evicted and stopped rooms; a cap bounds live instances.

use anyhow::Result;
use std::time::Duration;

use crate::common::{Client, TestHost, eventually, manifest, temp_dir};
use crate::guests::HOSTILE;

/// The hostile test party, hibernating or not, with a short idle time.
fn hostile_manifest(hibernate: bool, rooms: &str) -> String {
    let mut toml = manifest(&[("hostile", HOSTILE)], &format!("[rooms]\n{rooms}\n"));
    toml.push_str(&format!("hibernate = {hibernate}\n"));
    toml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hibernating_room_is_evicted_and_revived_with_sockets_open() -> Result<()> {
    let dir = temp_dir();
    let host = TestHost::start(dir.path(), &hostile_manifest(true, "idle_timeout_ms = 100")).await?;
    let mut alice = Client::connect(&host.ws_url("/parties/hostile/den?tag=red&tag=blue")).await?;
    let mut bob = Client::connect(&host.ws_url("/parties/hostile/den?tag=red")).await?;
    alice.send_text("remember:alice's state").await?;
    assert_eq!(alice.recv_text().await?, "remembered alice's state");
    assert_eq!(host.stats().instances, 1);

    host.wait_for_stats("eviction", |s| s.instances == 0 && s.rooms == 1).await;

    // The next event revives the room: on-start ran again (starts=2) ...
    bob.send_text("broadcast:hello").await?;
    for client in [&mut alice, &mut bob] {
        assert_eq!(client.recv_text().await?, "broadcast hello starts=2", "both sockets survived");
    }
    // ... and the host kept each connection's tags and state.
    alice.send_text("tagged:red").await?;
    assert_eq!(alice.recv_text().await?, "tagged red = 2");
    alice.send_text("tagged:blue").await?;
    assert_eq!(alice.recv_text().await?, "tagged blue = 1");
    alice.send_text("recall:").await?;
    assert_eq!(alice.recv_text().await?, "recall alice's state");

    // Evicted again, then revived by a close: on-close runs on a new instance.
    host.wait_for_stats("second eviction", |s| s.instances == 0).await;
    drop(bob);
    // Bob's close travels on his socket, so ask until the room has seen it.
    eventually("bob's close to reach the room", async || {
        alice.send_text("tagged:red").await?;
        Ok(alice.recv_text().await? == "tagged red = 1")
    })
    .await?;
    alice.send_text("hi").await?;
    assert_eq!(alice.recv_text().await?, "echo hi starts=3");
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_without_hibernation_keeps_its_instance_until_its_last_socket_leaves() -> Result<()> {
    let dir = temp_dir();
    let host = TestHost::start(dir.path(), &hostile_manifest(false, "idle_timeout_ms = 50")).await?;
    let mut client = Client::connect(&host.ws_url("/parties/hostile/awake")).await?;
    client.send_text("hi").await?;
    assert_eq!(client.recv_text().await?, "echo hi starts=1");
    // Several idle periods pass; the instance stays, since a socket is open.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!((host.stats().rooms, host.stats().instances), (1, 1));
    client.send_text("still").await?;
    assert_eq!(client.recv_text().await?, "echo still starts=1");

    // Once the last socket is gone and the idle time passes, the room stops.
    drop(client);
    host.wait_for_stats("the room to stop", |s| s.rooms == 0 && s.instances == 0).await;
    let mut client = Client::connect(&host.ws_url("/parties/hostile/awake")).await?;
    client.send_text("back").await?;
    assert_eq!(client.recv_text().await?, "echo back starts=2", "a new run, state from storage");
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_revive_evicted_and_stopped_rooms() -> Result<()> {
    let dir = temp_dir();
    let host = TestHost::start(dir.path(), &hostile_manifest(true, "idle_timeout_ms = 50")).await?;
    // An evicted room with a socket open. The alarm is far enough past the
    // 50 ms idle time that eviction comes first even on loaded cores.
    let mut client = Client::connect(&host.ws_url("/parties/hostile/sleeper")).await?;
    client.send_text("alarm:1500").await?;
    assert_eq!(client.recv_text().await?, "alarm set starts=1");
    host.wait_for_stats("eviction", |s| s.instances == 0).await;
    assert_eq!(client.recv_text().await?, "alarm fired starts=2");

    // A room with no sockets: it stops, and its alarm still fires.
    let mut setter = Client::connect(&host.ws_url("/parties/hostile/empty")).await?;
    setter.send_text("alarm:1500").await?;
    assert_eq!(setter.recv_text().await?, "alarm set starts=1");
    drop(setter);
    host.wait_for_stats("the empty room to stop", |s| s.rooms == 1).await;
    eventually("the stopped room's alarm to fire", async || {
        Ok(host.http("GET", "/parties/hostile/empty/alarms-fired", "").await?.1 == "alarms fired 1")
    })
    .await?;
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_instance_cap_evicts_the_least_recently_used() -> Result<()> {
    let dir = temp_dir();
    let rooms = "idle_timeout_ms = 60000\nmax_live_instances = 2";
    let host = TestHost::start(dir.path(), &hostile_manifest(false, rooms)).await?;
    let mut clients = Vec::new();
    for room in ["r1", "r2", "r3", "r4", "r5"] {
        let mut client = Client::connect(&host.ws_url(&format!("/parties/hostile/{room}"))).await?;
        client.send_text("hi").await?;
        assert_eq!(client.recv_text().await?, "echo hi starts=1");
        clients.push(client);
    }
    host.wait_for_stats("at most two instances", |s| s.instances <= 2 && s.rooms == 5).await;
    // Every room still answers: evicted ones come back from storage.
    for client in &mut clients {
        client.send_text("again").await?;
        let reply = client.recv_text().await?;
        assert!(reply == "echo again starts=1" || reply == "echo again starts=2", "{reply}");
    }
    host.wait_for_stats("still at most two instances", |s| s.instances <= 2).await;
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_beyond_the_room_quota_is_refused() -> Result<()> {
    let dir = temp_dir();
    let toml = manifest(&[("hostile", HOSTILE)], "[limits]\nstorage_mib = 1");
    let host = TestHost::start(dir.path(), &toml).await?;
    let mut client = Client::connect(&host.ws_url("/parties/hostile/full")).await?;
    // Keys over 2 KiB and values over 128 KiB are refused, as in PartyKit.
    client.send_text("put-key:2048").await?;
    assert_eq!(client.recv_text().await?, "stored 2048 bytes");
    client.send_text("put-key:2049").await?;
    assert_eq!(client.recv_text().await?, "refused: too large: storage key is over 2048 bytes");
    // PostgreSQL's text cannot hold NUL, so no backend takes it.
    client.send_text("put-named:a\u{1}b").await?;
    assert_eq!(client.recv_text().await?, r#"stored "a\u{1}b""#);
    client.send_text("put-named:a\0b").await?;
    assert_eq!(
        client.recv_text().await?,
        "refused: invalid: a storage key may not contain the NUL character"
    );
    client.send_text("put-value:131072").await?;
    assert_eq!(client.recv_text().await?, "stored 131072 bytes");
    client.send_text("put-value:131073").await?;
    assert_eq!(client.recv_text().await?, r#"refused: too large: value of key "v" is over 131072 bytes"#);
    client.send_text("put-value:0").await?;
    assert_eq!(client.recv_text().await?, "stored 0 bytes");
    client.send_text("fill:512").await?;
    assert_eq!(client.recv_text().await?, "filled 512 KiB");
    client.send_text("fill:4096").await?;
    // Chunks 0-7 overwrite the first fill; 15 chunks of 64 KiB fit in 1 MiB
    // next to the 2 KiB key and the `starts` key; the 16th does not.
    assert_eq!(
        client.recv_text().await?,
        "filled 15 chunks, then quota exceeded: room storage would exceed 1048576 bytes"
    );
    client.send_text("hi").await?;
    assert_eq!(client.recv_text().await?, "echo hi starts=1", "the room goes on");
    host.stop().await
}
