//! The real `partysocket` npm client (tests/node) against a real host.

use anyhow::{Context, Result};
use std::process::Stdio;

use crate::common::{STEP, TestHost, manifest, repo_root, temp_dir};
use crate::guests::REACTIONS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partysocket_clients_see_every_reaction() -> Result<()> {
    let dir = temp_dir();
    let host = TestHost::start(
        dir.path(),
        &manifest(&[("reactions", REACTIONS)], "main = \"reactions\""),
    )
    .await?;
    let script = repo_root().join("tests/node/reactions.mjs");
    let child = tokio::process::Command::new("node")
        .arg(&script)
        .arg(host.addr.to_string())
        .arg("from-node")
        .arg("6")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("running node (scripts/setup.sh installs tests/node)")?;
    let output = tokio::time::timeout(STEP * 2, child.wait_with_output())
        .await
        .context("node timed out")??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "node failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim())?;
    let expected = serde_json::json!({ "clap": 2, "heart": 2, "thumbsup": 1, "party": 1 });
    for seen in report["seen"].as_array().context("no seen")? {
        assert_eq!(seen, &expected, "every client saw every reaction");
    }
    assert_eq!(
        report["http"],
        serde_json::json!({ "type": "update", "reactions": expected })
    );
    host.stop().await
}
