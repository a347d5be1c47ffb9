//! The real `partysocket` npm client (tests/node) against a real host.

use anyhow::{Context, Result};

use crate::common::{TestHost, manifest, run_node, temp_dir};
use crate::guests::{COUNTER, PAGE, PRESENCE, REACTIONS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partysocket_clients_see_every_reaction() -> Result<()> {
    let dir = temp_dir();
    let host =
        TestHost::start(dir.path(), &manifest(&[("reactions", REACTIONS)], "main = \"reactions\"")).await?;
    let report = run_node("reactions.mjs", &[host.addr.to_string(), "from-node".into(), "6".into()]).await?;
    let expected = serde_json::json!({ "clap": 2, "heart": 2, "thumbsup": 1, "party": 1 });
    for seen in report["seen"].as_array().context("no seen")? {
        assert_eq!(seen, &expected, "every client saw every reaction");
    }
    assert_eq!(report["http"], serde_json::json!({ "type": "update", "reactions": expected }));
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partysocket_drives_presence_page_and_counter() -> Result<()> {
    let dir = temp_dir();
    let parties = [("presence", PRESENCE), ("page", PAGE), ("counter", COUNTER)];
    let host = TestHost::start(dir.path(), &manifest(&parties, "")).await?;
    let report = run_node("parties.mjs", &[host.addr.to_string()]).await?;
    assert_eq!(
        report["report"],
        serde_json::json!({
            "presence": ["ann", "bob"],
            "presenceAfterClose": ["ann"],
            "aFirst": { "node-b": 0 },
            "bFirst": { "node-a": 1, "node-b": 1 },
            "aSeesB": { "node-b": 1 },
        })
    );
    host.stop().await
}
