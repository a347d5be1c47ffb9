//! Totals: what all rooms of a project, and of the host, may hold at once,
//! and one memory limit for all of an instance's memories. Each test goes
//! one step past a cap and checks the refusal a client sees, the hit
//! counted, and that giving back (rooms retiring) makes room again.

use anyhow::Result;
use std::path::Path;
use std::time::Duration;

use crate::common::{Client, TestHost, manifest, temp_dir};
use crate::guests::{HOSTILE, REACTIONS};

fn hits(host: &TestHost) -> serde_json::Value {
    serde_json::json!(host.local_rooms().limit_hits().snapshot())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_rooms_stop_at_the_total_and_make_room_when_they_retire() -> Result<()> {
    let dir = temp_dir();
    let toml = manifest(&[("main", REACTIONS)], "[rooms]\nidle_timeout_ms = 200\n[totals]\nrooms = 5");
    let host = TestHost::start(dir.path(), &toml).await?;
    for room in 0..5 {
        let (status, _) = host.http("GET", &format!("/parties/main/r{room}"), "").await?;
        assert_eq!(status, 200);
    }
    let (status, body) = host.http("GET", "/parties/main/one-too-many", "").await?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("is at its cap of 5 running rooms ([totals] rooms)"), "{body}");
    assert_eq!(hits(&host)["totals"], 1);
    // A running room is still served past the cap.
    assert_eq!(host.http("GET", "/parties/main/r0", "").await?.0, 200);
    // Idle rooms retire and give their places back.
    host.wait_for_stats("rooms retired", |s| s.rooms == 0).await;
    assert_eq!(host.http("GET", "/parties/main/one-too-many", "").await?.0, 200);
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_memory_stops_at_the_total_across_instances() -> Result<()> {
    let dir = temp_dir();
    // Room for a few reactions instances, not for twenty.
    let toml = manifest(&[("main", REACTIONS)], "[totals]\nmemory_mib = 8");
    let host = TestHost::start(dir.path(), &toml).await?;
    let mut refused = None;
    for room in 0..20 {
        let (status, body) = host.http("GET", &format!("/parties/main/m{room}"), "").await?;
        if status != 200 {
            refused = Some((room, status, body));
            break;
        }
    }
    let (room, status, body) = refused.expect("20 instances fit in an 8 MiB total");
    assert!(room >= 1, "not even one instance fit");
    // A cap, said as one: not "the room could not start", as for a party
    // that fails.
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("the room cannot start: "), "{body}");
    assert!(body.contains("([totals] memory_mib)"), "{body}");
    assert!(hits(&host)["totals"].as_u64() >= Some(1) || hits(&host)["memory"].as_u64() >= Some(1));
    // A WebSocket is told to come back later (1013), as at the instances'
    // cap, not that the room failed (1011).
    let mut socket = Client::connect(&host.ws_url("/parties/main/one-more")).await?;
    let (code, reason) = socket.recv_close().await?;
    assert_eq!(code, 1013, "{reason}");
    assert!(reason.contains("[totals] memory_mib"), "{reason}");
    let (used, cap) = host.local_rooms().totals().host.usage(partyhost::budget::Resource::Memory);
    assert!(used <= cap, "{used} of {cap}");
    host.stop().await
}

/// A component for our world whose core module declares `extra` memories of
/// `pages` 64 KiB pages each, besides its own: wit-component's dummy module
/// (every export traps) with the memories added to its text.
fn component_with_memories(extra: usize, pages: u32) -> Result<Vec<u8>> {
    use wit_component::{ComponentEncoder, StringEncoding, dummy_module, embed_component_metadata};
    use wit_parser::{ManglingAndAbi, Resolve};
    let mut resolve = Resolve::default();
    let (package, _) = resolve.push_path(crate::common::repo_root().join("wit"))?;
    let world = resolve.select_world(&[package], Some("party"))?;
    let module = dummy_module(&resolve, world, ManglingAndAbi::Standard32);
    let mut text = wasmprinter::print_bytes(&module)?;
    let at = text.rfind(')').ok_or_else(|| anyhow::anyhow!("no closing paren"))?;
    let memories: String = (0..extra).map(|i| format!("  (memory $extra{i} {pages})\n")).collect();
    text.insert_str(at, &memories);
    let mut module = wat::parse_str(&text)?;
    embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8)?;
    ComponentEncoder::default().module(&module)?.validate(true).encode()
}

async fn status_of(dir: &Path, wasm: &[u8]) -> Result<(u16, String, serde_json::Value)> {
    let file = dir.join("wide.wasm");
    std::fs::write(&file, wasm)?;
    let toml = manifest(&[("main", file.to_str().unwrap_or_default())], "[limits]\nmemory_mib = 64");
    let host = TestHost::start(dir, &toml).await?;
    let (status, body) = host.http("GET", "/parties/main/x", "").await?;
    let hits = hits(&host);
    host.stop().await?;
    Ok((status, body, hits))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_memories_share_one_limit() -> Result<()> {
    // Control: with one small extra memory the component instantiates,
    // and its dummy `gates` export traps (`unreachable`): whether it has a
    // gate is unknown, so the request does not pass, and that is counted
    // as a trap, not as memory.
    let dir = temp_dir();
    let (status, body, hits) = status_of(dir.path(), &component_with_memories(1, 1)?).await?;
    assert_eq!((status, body.as_str()), (500, "on-before-request failed (panic)"));
    assert_eq!((hits["trap"].as_u64(), hits["memory"].as_u64()), (Some(1), Some(0)), "{hits}");

    // Three memories of 40 MiB: each under the 64 MiB limit, together over,
    // so instantiation itself fails, on memory.
    let dir = temp_dir();
    let (status, _, hits) = status_of(dir.path(), &component_with_memories(3, 640)?).await?;
    assert_eq!(status, 503);
    assert_eq!((hits["trap"].as_u64(), hits["memory"].as_u64()), (Some(0), Some(1)), "{hits}");

    // Many tiny memories: past the count, whatever their size.
    let dir = temp_dir();
    let (status, _, hits) = status_of(dir.path(), &component_with_memories(12, 1)?).await?;
    assert_eq!(status, 503);
    assert_eq!((hits["trap"].as_u64(), hits["memory"].as_u64()), (Some(0), Some(1)), "{hits}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_cap_is_the_default_and_a_tenant_cannot_raise_it() -> Result<()> {
    let tenants = partyhost::manifest::Tenants::parse("domain = \"x.test\"\n")?;
    let mut deployment = partyhost::manifest::Deployment::parse(
        &manifest(&[("main", REACTIONS)], "[limits]\nfetch_timeout_ms = 86400000"),
        Path::new("."),
    )?;
    let refused = tenants.apply_caps(&mut deployment).expect_err("no cap means the default, not unlimited");
    assert!(refused.to_string().contains("fetch_timeout_ms"), "{refused}");
    // Unset limits take their defaults; wall_ms follows cpu_ms.
    let mut deployment = partyhost::manifest::Deployment::parse(
        &manifest(&[("main", REACTIONS)], "[limits]\ncpu_ms = 20"),
        Path::new("."),
    )?;
    tenants.apply_caps(&mut deployment)?;
    let limits =
        partyhost::sandbox::Limits::from(&deployment.parties.values().next().expect("a party").limits);
    assert_eq!(limits.wall_per_event, Duration::from_millis(80));
    assert_eq!(limits.fetch_timeout, Duration::from_secs(10));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_alarms_and_instances_stop_at_their_totals() -> Result<()> {
    let dir = temp_dir();
    let settings = "[rooms]\nidle_timeout_ms = 200\n[totals]\nstorage_mib = 1\nalarms = 2\ninstances = 3";
    let host = TestHost::start(dir.path(), &manifest(&[("main", HOSTILE)], settings)).await?;

    // Alarms: two rooms may have one; a third room's `set` fails its call,
    // which is counted, and the room restarts without it.
    let mut a = Client::connect(&host.ws_url("/parties/main/a")).await?;
    a.send_text("alarm:600000").await?;
    assert!(a.recv_text().await?.starts_with("alarm set"));
    let mut b = Client::connect(&host.ws_url("/parties/main/b")).await?;
    b.send_text("alarm:600000").await?;
    assert!(b.recv_text().await?.starts_with("alarm set"));
    let mut c = Client::connect(&host.ws_url("/parties/main/c")).await?;
    c.send_text("alarm:600000").await?;
    c.send_text("ping").await?;
    assert_eq!(c.recv_text().await?, "echo ping starts=2", "the call that set a third alarm failed");
    // Moving an alarm is not a new one.
    a.send_text("alarm:700000").await?;
    assert!(a.recv_text().await?.starts_with("alarm set"));

    // Instances: three rooms hold one each; a fourth cannot start, and
    // the client is told which cap refused it.
    let cap = "project `test` is at its cap of 3 live instances ([totals] instances)";
    let (status, body) = host.http("GET", "/parties/main/d", "").await?;
    assert_eq!((status, body), (503, format!("the room cannot start: {cap}")));
    let mut refused = Client::connect(&host.ws_url("/parties/main/e")).await?;
    assert_eq!(refused.recv_close().await?, (1013, cap.to_owned()));
    assert!(hits(&host)["totals"].as_u64() >= Some(2), "{}", hits(&host));
    // Giving one back makes room.
    drop(c);
    host.wait_for_stats("room c gone", |s| s.instances <= 2).await;
    assert_eq!(host.http("GET", "/parties/main/d", "").await?.0, 200);

    // Storage: one room alone may not pass the project's 1 MiB either
    // (its own quota is 16 MiB).
    a.send_text("fill:2048").await?;
    let filled = a.recv_text().await?;
    assert!(filled.ends_with("is at its cap of 1 MiB of storage ([totals] storage_mib)"), "{filled}");
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_counts_every_receiver_and_bodies_are_bounded() -> Result<()> {
    let dir = temp_dir();
    let limits = "[rooms]\nidle_timeout_ms = 100\n[limits]\nfanout_mib_per_event = 1\nbody_kib = 1024";
    let host = TestHost::start(dir.path(), &manifest(&[("main", HOSTILE)], limits)).await?;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut client = Client::connect(&host.ws_url("/parties/main/fan")).await?;
        client.send_text("ping").await?;
        client.recv_text().await?;
        clients.push(client);
    }
    // 400 KiB to three sockets is 1.2 MiB, over the budget, however many
    // ids that name no connection are left out.
    clients[0].send_text("broadcast-without:400:2").await?;
    clients[0].send_text("ping").await?;
    assert_eq!(clients[0].recv_text().await?, "echo ping starts=2", "the broadcast went out");
    assert_eq!(hits(&host)["fanout"], 1);
    // 300 KiB to three is within it.
    clients[0].send_text("broadcast-without:300:2").await?;
    assert_eq!(clients[1].recv_text().await?.len(), 300 << 10);

    let (status, body) = host.http("GET", "/parties/main/fan/big?kib=1024", "").await?;
    assert_eq!((status, body.len()), (200, 1 << 20));
    let (status, body) = host.http("GET", "/parties/main/fan/big?kib=1025", "").await?;
    assert_eq!((status, body.as_str()), (500, "the room's response body is over 1048576 bytes"));
    assert_eq!(hits(&host)["body"], 1);
    host.stop().await
}
