//! The yjs party with y-partykit's own client (`YPartyKitProvider` under
//! Node, tests/node/yjs.mjs): clients converge, awareness comes and goes,
//! the document outlives a restart and an eviction, is stored across keys,
//! read-only clients change nothing, and an oversized edit is refused; the
//! editor page in Chromium.

use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::browser::screenshot_dir;
use crate::common::{STEP, TestHost, repo_root, run_node, temp_dir, within_for};
use crate::guests::YJS;

fn yjs_manifest(extra: &str) -> String {
    format!(
        "name = \"test\"\n[parties.yjs]\nwasm = {YJS:?}\n{extra}\n[parties.yjs.limits]\ncpu_ms = 1000\nmemory_mib = 128\nqueue_kib = 16384\n"
    )
}

async fn yjs_step(host: &TestHost, step: &str, room: &str, extra: &[&str]) -> Result<Value> {
    let mut args = vec![host.addr.to_string(), step.to_owned(), room.to_owned()];
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    let output = run_node("yjs.mjs", &args).await?;
    anyhow::ensure!(output["ok"] == true, "{output}");
    Ok(output["report"].clone())
}

/// Stored keys of the room's document, from the host's SQLite file.
fn stored_keys(db: &std::path::Path, prefix: &str) -> Result<Vec<(String, usize)>> {
    let conn = rusqlite::Connection::open(db)?;
    let mut stmt =
        conn.prepare("SELECT key, length(value) FROM kv WHERE party = 'yjs' AND key LIKE ?1 ORDER BY key")?;
    let rows = stmt.query_map([format!("{prefix}%")], |row| Ok((row.get(0)?, row.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_converge_share_awareness_and_the_document_outlives_a_restart() -> Result<()> {
    let dir = temp_dir();
    let toml = yjs_manifest("");
    let host = TestHost::start(dir.path(), &toml).await?;
    let edit = yjs_step(&host, "edit", "notes", &[]).await?;
    let text = edit["text"].as_str().context("no text")?;
    assert!(
        ["Hello from Ann. Hello from Bob. ", "Hello from Bob. Hello from Ann. "].contains(&text),
        "{edit}"
    );
    assert_eq!(edit["bobSees"], json!(["Ann"]));
    assert_eq!(edit["bobSeesAfterAnnLeft"], json!([]));
    host.stop().await?;

    let host = TestHost::start(dir.path(), &toml).await?;
    let read = yjs_step(&host, "read", "notes", &[]).await?;
    assert_eq!(read["text"], text, "the whole document after a restart");
    let other = yjs_step(&host, "read", "other-notes", &[]).await?;
    assert_eq!(other["text"], "", "rooms are separate documents");
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_awareness_update_over_its_cap_reaches_nobody() -> Result<()> {
    let dir = temp_dir();
    let host = TestHost::start(dir.path(), &yjs_manifest("")).await?;
    let seen = yjs_step(&host, "bigawareness", "cursors", &[]).await?;
    assert_eq!(seen["bobSees"], json!(["Ann"]), "{seen}");
    assert_eq!(seen["blobsSeen"], json!([]), "the 20 KB state was sent on");
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_client_syncs_and_its_edits_reach_nobody() -> Result<()> {
    let dir = temp_dir();
    let host = TestHost::start(dir.path(), &yjs_manifest("")).await?;
    yjs_step(&host, "edit", "doc", &[]).await?;
    let seen = yjs_step(&host, "readonly", "doc", &[]).await?;
    let viewer_saw = seen["viewerSaw"].as_str().context("viewerSaw")?;
    assert_eq!(viewer_saw.len(), 32, "the viewer got the document: {seen}");
    assert_eq!(seen["stored"], format!("{viewer_saw} (writer)"), "only the writer's edit is stored");
    host.stop().await
}

/// With `YJS_WRITE_TOKEN` set, only clients with `?token=` (percent-encoded
/// by the provider) edit; the others read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_write_token_only_its_holders_edit() -> Result<()> {
    let dir = temp_dir();
    let token = "s3cret/+= token";
    let host = TestHost::start(
        dir.path(),
        &yjs_manifest(&format!("[parties.yjs.vars]\nYJS_WRITE_TOKEN = {token:?}")),
    )
    .await?;
    let seen = yjs_step(&host, "readonly", "guarded", &[token]).await?;
    assert_eq!(seen["viewerSaw"], "", "{seen}");
    assert_eq!(seen["stored"], " (writer)", "only the token holder's edit is stored");
    host.stop().await
}

/// Writes `bytes` of text with one client, lets the room's instance be
/// evicted while that client stays connected, and has a new client read the
/// document from the revived instance. Returns the keys stored while the
/// room was evicted (what the revival loaded).
async fn reload_after_eviction(bytes: usize) -> Result<Vec<(String, usize)>> {
    let dir = temp_dir();
    let toml = yjs_manifest("hibernate = true\n[rooms]\nidle_timeout_ms = 300");
    let host = TestHost::start(dir.path(), &toml).await?;
    let args = [host.addr.to_string(), "big".into(), "large".into(), bytes.to_string()];
    let mut node = tokio::process::Command::new("node")
        .arg(repo_root().join("tests/node/yjs.mjs"))
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("running node (scripts/setup.sh installs tests/node)")?;
    let mut lines = BufReader::new(node.stdout.take().context("stdout")?).lines();
    let written: Value = serde_json::from_str(
        &within_for(STEP * 6, "the writer's text at a second client", lines.next_line())
            .await?
            .context("node ended")?,
    )?;
    let written = written.get("written").cloned().with_context(|| format!("{written}"))?;
    assert_eq!(written["length"], bytes);

    host.wait_for_stats("the room's instance evicted", |stats| stats.instances == 0).await;
    assert_eq!(host.stats().rooms, 1, "evicted, not stopped: the writer is connected");
    let keys = stored_keys(&dir.path().join("data/storage.sqlite"), "yjs:")?;
    let mut stdin = node.stdin.take().context("stdin")?;
    stdin.write_all(b"go\n").await?;
    let report: Value = serde_json::from_str(
        &within_for(STEP * 6, "the document after eviction", lines.next_line())
            .await?
            .context("node ended")?,
    )?;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["report"]["reloaded"], written, "the same text after eviction");
    host.stop().await?;
    Ok(keys)
}

/// 2 MB of text: split by the client into `y-pk-batch` chunks, compacted
/// at once into a snapshot of 120 KiB values, read back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2_mb_document_is_stored_across_keys_and_reloads_after_eviction() -> Result<()> {
    let bytes = 2_000_000;
    let keys = reload_after_eviction(bytes).await?;
    assert!(keys.iter().all(|(key, len)| key.starts_with("yjs:s:") && *len <= 120 * 1024), "{keys:?}");
    assert!(keys.len() >= 16, "{} keys", keys.len());
    let total: usize = keys.iter().map(|(_, len)| len).sum();
    assert!(total >= bytes && total < bytes + 10_000, "{total} bytes stored");
    Ok(())
}

/// Edits not yet compacted are what a revived instance reads too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_not_yet_compacted_reload_after_eviction() -> Result<()> {
    let keys = reload_after_eviction(100_000).await?;
    assert!(!keys.is_empty() && keys.iter().all(|(key, _)| key.starts_with("yjs:u:")), "{keys:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_past_the_size_limit_is_refused_with_a_close_that_says_so() -> Result<()> {
    let dir = temp_dir();
    let toml = yjs_manifest("[parties.yjs.vars]\nYJS_MAX_BYTES = \"100000\"");
    let host = TestHost::start(dir.path(), &toml).await?;
    yjs_step(&host, "edit", "small", &[]).await?;
    let refused = yjs_step(&host, "toobig", "small", &["150000"]).await?;
    assert_eq!(
        refused["closed"],
        json!({ "code": 4413, "reason": "the document is over its size limit (100000 bytes)" })
    );
    let read = yjs_step(&host, "read", "small", &[]).await?;
    assert_eq!(read["length"], 32, "the refused edit changed nothing: {read}");
    host.stop().await
}

/// The editor page (web/public/editor.html: CodeMirror, y-codemirror.next
/// and y-partykit's provider) in two Chromium pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_type_into_the_editor_page_and_see_each_others_text_and_cursor() -> Result<()> {
    let public = repo_root().join("web/public");
    let bundle = public.join("build/editor.js");
    assert!(bundle.exists(), "{} is missing: scripts/setup.sh bundles web/", bundle.display());
    let dir = temp_dir();
    let host = TestHost::start(dir.path(), &yjs_manifest(&format!("[serve]\npath = {public:?}"))).await?;
    let shots = screenshot_dir();
    let report = run_node("editor.mjs", &[host.addr.to_string(), shots.display().to_string()]).await?;
    let both = "Ann was here. Bob too.";
    assert_eq!(report["text"], json!({ "ann": both, "bob": both }), "{report}");
    assert_eq!(report["carets"], json!({ "ann": ["Bob"], "bob": ["Ann"] }));
    assert_eq!(report["people"], json!(["Ann", "Bob"]));
    let shot = shots.join("editor.png");
    let size = std::fs::metadata(&shot).with_context(|| format!("no screenshot {}", shot.display()))?.len();
    assert!(size > 5_000, "{} is {size} bytes", shot.display());
    host.stop().await
}
