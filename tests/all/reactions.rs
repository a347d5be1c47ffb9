//! The reactions party against a real host: PartyKit's example-reactions
//! behaviour on the wire.

use anyhow::Result;
use serde_json::json;

use crate::common::{Client, Examples, TestHost, manifest, temp_dir};

fn reactions_manifest(parties: &Examples, extra: &str) -> String {
    manifest(&[("reactions", parties.reactions)], &format!("main = \"reactions\"\n{extra}"))
}

fn update(reactions: serde_json::Value) -> serde_json::Value {
    json!({ "type": "update", "reactions": reactions })
}

async fn counts_are_broadcast_to_every_client_sender_included(parties: &Examples) -> Result<()> {
    let dir = temp_dir();
    let host = TestHost::start(dir.path(), &reactions_manifest(parties, "")).await?;
    let url = host.ws_url("/parties/reactions/lobby");
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut client = Client::connect(&url).await?;
        assert_eq!(client.recv_json().await?, update(json!({})), "first message is the current counts");
        clients.push(client);
    }
    clients[0].send_json(json!({ "type": "reaction", "kind": "clap" })).await?;
    for client in &mut clients {
        assert_eq!(client.recv_json().await?, update(json!({ "clap": 1 })));
    }
    clients[2].send_json(json!({ "type": "reaction", "kind": "heart" })).await?;
    for client in &mut clients {
        assert_eq!(client.recv_json().await?, update(json!({ "clap": 1, "heart": 1 })));
    }
    host.stop().await
}

async fn limiter_answers_slowdown_then_goaway_and_closes(parties: &Examples) -> Result<()> {
    let dir = temp_dir();
    let host = TestHost::start(dir.path(), &reactions_manifest(parties, "")).await?;
    let mut spammer = Client::connect(&host.ws_url("/parties/reactions/limited")).await?;
    let mut watcher = Client::connect(&host.ws_url("/parties/reactions/limited")).await?;
    spammer.recv_json().await?;
    watcher.recv_json().await?;
    // Eleven reactions at once: the first counts, the next nine are
    // violations 1-9 (`slowdown`), the eleventh is the tenth (`goaway`).
    for _ in 0..11 {
        spammer.send_json(json!({ "type": "reaction", "kind": "party" })).await?;
    }
    assert_eq!(spammer.recv_json().await?, update(json!({ "party": 1 })));
    for i in 1..=9 {
        assert_eq!(spammer.recv_text().await?, "slowdown", "violation {i}");
    }
    assert_eq!(spammer.recv_text().await?, "goaway");
    assert_eq!(spammer.recv_close().await?.0, 1000);
    // Only the first reaction counted.
    assert_eq!(watcher.recv_json().await?, update(json!({ "party": 1 })));
    let (_, body) = host.http("GET", "/parties/reactions/limited", "").await?;
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body)?, update(json!({ "party": 1 })));
    host.stop().await
}

async fn http_on_any_path_returns_the_counts_as_json(parties: &Examples) -> Result<()> {
    let dir = temp_dir();
    let host = TestHost::start(dir.path(), &reactions_manifest(parties, "")).await?;
    let mut client = Client::connect(&host.ws_url("/parties/reactions/http")).await?;
    client.recv_json().await?;
    client.send_json(json!({ "type": "reaction", "kind": "thumbsup" })).await?;
    client.recv_json().await?;
    for path in ["/parties/reactions/http", "/parties/reactions/http/any/sub/path?x=1", "/parties/main/http"]
    {
        let (status, body) = host.http("GET", path, "").await?;
        assert_eq!(status, 200, "{path}");
        assert_eq!(body, r#"{"type":"update","reactions":{"thumbsup":1}}"#, "{path}");
    }
    let (status, body) = host.http("POST", "/parties/reactions/http", "ignored").await?;
    assert_eq!((status, body.contains("thumbsup")), (200, true));
    host.stop().await
}

async fn counts_and_compiled_code_survive_a_host_restart(parties: &Examples) -> Result<()> {
    let dir = temp_dir();
    // The compile cache in the data dir, not the one tests share.
    let host = TestHost::start_with(dir.path(), &reactions_manifest(parties, ""), Default::default()).await?;
    let mut client = Client::connect(&host.ws_url("/parties/reactions/durable")).await?;
    client.recv_json().await?;
    client.send_json(json!({ "type": "reaction", "kind": "clap" })).await?;
    assert_eq!(client.recv_json().await?, update(json!({ "clap": 1 })));
    host.stop().await?;
    assert_eq!(client.recv_close().await?.0, 1001, "shutdown says going away");

    let compiled: Vec<_> = std::fs::read_dir(dir.path().join("data/compiled"))?.collect();
    assert_eq!(compiled.len(), 1, "the compiled component is cached on disk");

    let host = TestHost::start_with(dir.path(), &reactions_manifest(parties, ""), Default::default()).await?;
    let mut client = Client::connect(&host.ws_url("/parties/reactions/durable")).await?;
    assert_eq!(client.recv_json().await?, update(json!({ "clap": 1 })), "counts restored from SQLite");
    client.send_json(json!({ "type": "reaction", "kind": "clap" })).await?;
    assert_eq!(client.recv_json().await?, update(json!({ "clap": 2 })));
    host.stop().await
}

async fn invalid_messages_change_nothing(parties: &Examples) -> Result<()> {
    let dir = temp_dir();
    let host = TestHost::start(dir.path(), &reactions_manifest(parties, "")).await?;
    let mut client = Client::connect(&host.ws_url("/parties/reactions/garbage")).await?;
    client.recv_json().await?;
    for junk in [
        "not json",
        "{}",
        r#"{"type":"reaction"}"#,
        r#"{"type":"reaction","kind":"poop"}"#,
        r#"{"type":"reaction","kind":7}"#,
        r#"{"type":"update","reactions":{"clap":99}}"#,
        "[1,2,3]",
    ] {
        client.send_text(junk).await?;
    }
    client.send(tokio_tungstenite::tungstenite::Message::binary(vec![0xff, 0x00, 0x13])).await?;
    // The connection still works and nothing was counted.
    client.send_json(json!({ "type": "reaction", "kind": "heart" })).await?;
    assert_eq!(client.recv_json().await?, update(json!({ "heart": 1 })));
    host.stop().await
}

async fn legacy_party_path_reaches_the_main_party(parties: &Examples) -> Result<()> {
    let dir = temp_dir();
    let host = TestHost::start(dir.path(), &reactions_manifest(parties, "")).await?;
    let mut legacy = Client::connect(&host.ws_url("/party/shared")).await?;
    let mut alias = Client::connect(&host.ws_url("/parties/main/shared")).await?;
    let mut named = Client::connect(&host.ws_url("/parties/reactions/shared?_pk=me")).await?;
    for client in [&mut legacy, &mut alias, &mut named] {
        client.recv_json().await?;
    }
    legacy.send_json(json!({ "type": "reaction", "kind": "clap" })).await?;
    for client in [&mut legacy, &mut alias, &mut named] {
        assert_eq!(client.recv_json().await?, update(json!({ "clap": 1 })), "one room behind three paths");
    }
    host.stop().await
}

for_both_languages!(
    counts_are_broadcast_to_every_client_sender_included,
    limiter_answers_slowdown_then_goaway_and_closes,
    http_on_any_path_returns_the_counts_as_json,
    counts_and_compiled_code_survive_a_host_restart,
    invalid_messages_change_nothing,
    legacy_party_path_reaches_the_main_party
);
