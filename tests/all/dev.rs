//! `partyhost dev`: a changed component, build or manifest is swapped in
//! while sockets stay open; anything broken leaves the old version serving
//! until it is fixed.

use anyhow::Result;
use serde_json::json;
use std::path::Path;

use crate::common::{Client, TestHost, temp_dir};
use crate::guests::{HOSTILE, PRESENCE, REACTIONS};

/// Reads until a reactions update arrives (hostile's echoes come first).
async fn next_update(client: &mut Client) -> Result<serde_json::Value> {
    loop {
        let text = client.recv_text().await?;
        if text.starts_with(r#"{"type":"update""#) {
            return Ok(serde_json::from_str(&text)?);
        }
    }
}

fn party(name: &str, wasm: &Path) -> String {
    format!("[parties.{name}]\nwasm = {:?}\n", wasm.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_component_serves_the_same_socket_and_a_broken_one_changes_nothing() -> Result<()> {
    let dir = temp_dir();
    let wasm = dir.path().join("x.wasm");
    std::fs::copy(HOSTILE, &wasm)?;
    // No limiter: the test sends reactions faster than its 100 ms cooldown.
    let vars = "[parties.x.vars]\nRATE_LIMIT_MS = \"0\"\n";
    let host =
        TestHost::start_dev(dir.path(), &format!("name = \"dev\"\n{}{vars}", party("x", &wasm))).await?;
    let mut client = Client::connect(&host.ws_url("/parties/x/room")).await?;
    client.send_text("hi").await?;
    assert_eq!(client.recv_text().await?, "echo hi starts=1");

    std::fs::copy(REACTIONS, &wasm)?;
    host.wait_for_reloads(1, 0).await;
    client.send_json(json!({ "type": "reaction", "kind": "clap" })).await?;
    assert_eq!(next_update(&mut client).await?, json!({ "type": "update", "reactions": { "clap": 1 } }));

    // Not a component: refused, and the reactions code keeps serving.
    std::fs::write(&wasm, b"\0asm\x01\0\0\0")?;
    host.wait_for_reloads(1, 1).await;
    client.send_json(json!({ "type": "reaction", "kind": "clap" })).await?;
    assert_eq!(next_update(&mut client).await?, json!({ "type": "update", "reactions": { "clap": 2 } }));

    // Fixing the file recovers without a restart; still the same socket.
    std::fs::copy(HOSTILE, &wasm)?;
    host.wait_for_reloads(2, 1).await;
    client.send_text("back").await?;
    assert_eq!(client.recv_text().await?, "echo back starts=2");
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_edit_adds_a_party_and_a_bad_one_is_refused() -> Result<()> {
    let dir = temp_dir();
    let manifest = dir.path().join("partykit.toml");
    let reactions = format!("name = \"dev\"\n{}", party("reactions", Path::new(REACTIONS)));
    let host = TestHost::start_dev(dir.path(), &reactions).await?;
    assert_eq!(host.http("GET", "/parties/presence/r/presence", "").await?.0, 404);

    std::fs::write(&manifest, format!("{reactions}{}", party("presence", Path::new(PRESENCE))))?;
    host.wait_for_reloads(1, 0).await;
    assert_eq!(
        host.http("GET", "/parties/presence/r/presence", "").await?,
        (200, r#"{"users":[]}"#.to_owned())
    );

    std::fs::write(&manifest, "name = \"dev\"\n[parties.presence\n")?;
    host.wait_for_reloads(1, 1).await;
    assert_eq!(host.http("GET", "/parties/presence/r/presence", "").await?.0, 200, "still served");

    std::fs::write(&manifest, &reactions)?;
    host.wait_for_reloads(2, 1).await;
    assert_eq!(host.http("GET", "/parties/presence/r/presence", "").await?.0, 404, "removed");
    assert_eq!(host.http("GET", "/parties/reactions/r", "").await?.0, 200);
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_build_keeps_the_old_version_until_the_source_is_fixed() -> Result<()> {
    let dir = temp_dir();
    let (wasm, src) = (dir.path().join("z.wasm"), dir.path().join("src"));
    std::fs::copy(HOSTILE, &wasm)?;
    std::fs::create_dir(&src)?;
    std::fs::write(src.join("lib.txt"), "ok")?;
    // A "compiler": refuses sources saying `broken`, else emits reactions.
    let build = format!(
        "echo compiling; if grep -q broken src/lib.txt; then echo 'error: broken source' >&2; exit 1; fi; cp {REACTIONS:?} z.wasm"
    );
    let toml = format!(
        "name = \"dev\"\n{}[parties.z.build]\ncommand = {build:?}\nwatch = [\"src\"]\n",
        party("z", &wasm)
    );
    let host = TestHost::start_dev(dir.path(), &toml).await?;
    let mut client = Client::connect(&host.ws_url("/parties/z/room")).await?;

    std::fs::write(src.join("lib.txt"), "broken")?;
    host.wait_for_reloads(0, 1).await;
    client.send_text("hi").await?;
    assert_eq!(client.recv_text().await?, "echo hi starts=1", "the old version serves");

    std::fs::write(src.join("lib.txt"), "fixed")?;
    host.wait_for_reloads(1, 1).await;
    client.send_json(json!({ "type": "reaction", "kind": "party" })).await?;
    assert_eq!(next_update(&mut client).await?["reactions"], json!({ "party": 1 }));
    host.stop().await
}
