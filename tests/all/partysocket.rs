//! The real `partysocket` npm client (tests/node) against a real host.

use anyhow::{Context, Result};

use crate::common::{Examples, TestHost, manifest, run_node, temp_dir};

async fn partysocket_clients_see_every_reaction(parties: &Examples) -> Result<()> {
    let dir = temp_dir();
    let host =
        TestHost::start(dir.path(), &manifest(&[("reactions", parties.reactions)], "main = \"reactions\""))
            .await?;
    let report = run_node("reactions.mjs", &[host.addr.to_string(), "from-node".into(), "6".into()]).await?;
    let expected = serde_json::json!({ "clap": 2, "heart": 2, "thumbsup": 1, "party": 1 });
    for seen in report["seen"].as_array().context("no seen")? {
        assert_eq!(seen, &expected, "every client saw every reaction");
    }
    assert_eq!(report["http"], serde_json::json!({ "type": "update", "reactions": expected }));
    host.stop().await
}

async fn partysocket_drives_presence_page_and_counter(parties: &Examples) -> Result<()> {
    let dir = temp_dir();
    let parties = [("presence", parties.presence), ("page", parties.page), ("counter", parties.counter)];
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

/// A tenant's page keeps its PartySocket through a host restart: the
/// `prefix` form reaches `/p/<project>/parties`, binary frames go both ways,
/// and after the 1001 it reconnects by itself with the same id to the same
/// room, its data intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partysocket_reconnects_after_a_restart_through_a_prefix_with_binary_frames() -> Result<()> {
    use crate::common::{Tenant, local_project, tenants_toml};
    let dir = temp_dir();
    let vars = "[parties.parity.vars]\nTOKEN = \"good\"\n";
    let alice = Tenant::new(dir.path(), "alice", &[("parity", crate::guests::PARITY)], vars)?;
    let tenants = || -> Result<partyhost::Options> {
        let tenants = partyhost::manifest::Tenants::parse(&tenants_toml(&[&alice], ""))?;
        Ok(partyhost::Options { tenants: Some(tenants), ..partyhost::Options::default() })
    };
    let host = TestHost::start_with(dir.path(), &local_project(), tenants()?).await?;
    host.deploy(&alice).await?;
    let addr = host.addr;

    let script = crate::common::repo_root().join("tests/node/resilience.mjs");
    let mut node = tokio::process::Command::new("node")
        .arg(&script)
        .args([addr.to_string().as_str(), "p/alice/parties", "parity", "tab"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("running node (scripts/setup.sh installs tests/node)")?;
    let stdout = node.stdout.take().context("no stdout")?;
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let first =
        crate::common::within("the client to connect", lines.next_line()).await?.context("node ended")?;
    assert_eq!(first, r#"{"phase":"connected"}"#);

    host.stop().await?;
    let host = TestHost::start_at(addr, dir.path(), &local_project(), tenants()?).await?;
    let last =
        crate::common::within("the client to come back", lines.next_line()).await?.context("node ended")?;
    let report: serde_json::Value = serde_json::from_str(&last)?;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["binary"], serde_json::json!([250, 3, 2, 1]), "binary both ways");
    assert_eq!(report["afterRestart"], "k=before", "the same room, its storage intact");
    assert_eq!(report["closes"][0], 1001, "the restart said going away: {report}");
    let hellos = report["hellos"].as_array().context("no hellos")?;
    assert_eq!(hellos.len(), 2, "{report}");
    for hello in hellos {
        let hello = hello.as_str().unwrap_or_default();
        assert!(hello.contains("/p/alice/parties/parity/tab?") && hello.contains("_pk=resilient"), "{hello}");
    }
    host.stop().await
}

for_both_languages!(partysocket_clients_see_every_reaction, partysocket_drives_presence_page_and_counter);
