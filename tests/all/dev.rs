//! `partyhost dev`: a changed component, build or manifest is swapped in
//! while sockets stay open; anything broken leaves the old version serving
//! until it is fixed.

use anyhow::Result;
use serde_json::json;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::common::{Client, TestHost, partyhost_binary, quiet_machine, repo_root, temp_dir, within_for};
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

/// How long a cargo build of a new party crate may take (cold: the SDK and
/// the new crate; its registry dependencies are already built into the
/// shared `target/guests`).
const CARGO_BUILD: Duration = Duration::from_secs(300);

/// `partyhost new` in a copy of this workspace, as the README's "Developing
/// a party" runs it: the generated crate builds with the real
/// `scripts/build-guests.sh` and serves; under `partyhost dev` a burst of
/// saves runs its `[parties.x.build]` (cargo) once and swaps the new code in
/// under an open socket, and a file written under a `target` folder below a
/// watched path runs no build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_rust_party_builds_with_cargo_and_rebuilds_once_per_burst_of_saves() -> Result<()> {
    // Alone with respect to other builds and timed tests: cargo takes both
    // cores, and the saves below are timed.
    let _quiet = quiet_machine();
    let workspace = temp_dir();
    let root = workspace.path();
    copy_sources(&repo_root(), root)?;
    // The build lands in this checkout's target/guests, where the SDK's
    // registry dependencies are built already.
    std::os::unix::fs::symlink(std::path::absolute(repo_root().join("target"))?, root.join("target"))?;
    // The README's three steps, in the workspace's root.
    let run = async |program: &Path, args: &[&str]| -> Result<()> {
        let what = format!("{} {}", program.display(), args.join(" "));
        let output = within_for(
            CARGO_BUILD,
            &what,
            tokio::process::Command::new(program).args(args).current_dir(root).kill_on_drop(true).output(),
        )
        .await?;
        anyhow::ensure!(output.status.success(), "{what}: {}", String::from_utf8_lossy(&output.stderr));
        Ok(())
    };
    run(&partyhost_binary(), &["new", "hello-room"]).await?;
    run(Path::new("scripts/build-guests.sh"), &["hello-room"]).await?;
    // `partyhost dev` with the manifest `new` extended (there is no
    // partykit.toml, so it was the example's).
    let manifest = std::fs::read_to_string(root.join("partykit.toml.example"))?;
    assert!(manifest.contains("[parties.hello-room.build]"), "{manifest}");
    let host = TestHost::start_dev(root, &manifest).await?;
    let mut ann = Client::connect(&host.ws_url("/parties/hello-room/lobby?_pk=ann")).await?;
    assert_eq!(ann.recv_text().await?, "welcome to lobby: 0 messages so far");
    ann.send_text("hi").await?;
    assert_eq!(ann.recv_text().await?, "#1 from ann: hi");

    // Under a watched folder, but below a `target` folder: not a source.
    let src = root.join("guests/hello-room/src");
    std::fs::create_dir(src.join("target"))?;
    std::fs::write(src.join("target/stray.rs"), "// written by a tool")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // One save, as editors make it: several writes a few milliseconds
    // apart (closer than the reloader's 30 ms of quiet).
    let lib = std::fs::read_to_string(src.join("lib.rs"))?;
    let edited = lib.replace("welcome to {}", "hello again, {}");
    assert_ne!(lib, edited, "the generated greeting changed: update this test");
    for _ in 0..3 {
        std::fs::write(src.join("lib.rs"), &edited)?;
        std::thread::sleep(Duration::from_millis(5));
    }
    host.wait_for_reloads_within(CARGO_BUILD, 1, 0).await;
    ann.send_text("still here").await?;
    assert_eq!(ann.recv_text().await?, "#2 from ann: still here", "the same socket, the new code");
    let mut bob = Client::connect(&host.ws_url("/parties/hello-room/lobby?_pk=bob")).await?;
    assert_eq!(bob.recv_text().await?, "hello again, lobby: 2 messages so far");

    // A write the burst missed would start a build within milliseconds.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let builds = host.reloads.as_ref().map(|stats| stats.builds.load(Ordering::Relaxed));
    assert_eq!(builds, Some(1), "one build for the burst, none for target/");
    host.stop().await
}

/// Copies the workspace's sources (no `target`, `.git`, `node_modules` or
/// build output), enough for cargo to load the workspace.
fn copy_sources(from: &Path, to: &Path) -> Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if [".git", "target", "node_modules", ".partyhost"].iter().any(|skip| name == *skip) {
            continue;
        }
        let (source, dest) = (entry.path(), to.join(&name));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            std::fs::create_dir(&dest)?;
            copy_sources(&source, &dest)?;
        } else if kind.is_file() {
            std::fs::copy(&source, &dest)?;
        }
    }
    Ok(())
}
