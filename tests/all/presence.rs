//! The presence party: kcdshop's wire protocol against a real host.

use anyhow::Result;
use serde_json::{Value, json};

use crate::common::{Client, Examples, TestHost, eventually, manifest, temp_dir};

fn presence(users: Value) -> Value {
    json!({ "type": "presence", "payload": { "users": users } })
}

async fn users_are_added_removed_and_dropped_on_close(parties: &Examples) -> Result<()> {
    let dir = temp_dir();
    let host = TestHost::start(dir.path(), &manifest(&[("presence", parties.presence)], "")).await?;
    let url = host.ws_url("/parties/presence/workshop");
    let (mut ann, mut bob, mut cat) =
        (Client::connect(&url).await?, Client::connect(&url).await?, Client::connect(&url).await?);

    // Unknown fields are dropped; null stays null; numbers keep their form.
    let ann_user = json!({
        "id": "ann", "avatarUrl": "https://cdn.discordapp.com/a.png", "name": "Ann",
        "location": { "workshopTitle": "React", "exercise": { "type": "problem", "exerciseNumber": 1, "stepNumber": 2.5 } },
    });
    let mut sent = ann_user.clone();
    sent["secret"] = json!("dropped");
    sent["location"]["exercise"]["extra"] = json!(true);
    ann.send_json(json!({ "type": "add-user", "payload": sent })).await?;
    for client in [&mut ann, &mut bob, &mut cat] {
        assert_eq!(client.recv_json().await?, presence(json!([ann_user])));
    }

    // Bob (name only: score 1) sorts after Ann (avatar, discord, name: 2.5).
    let bob_user = json!({ "id": "bob", "name": "Bob", "avatarUrl": null });
    bob.send_json(json!({ "type": "add-user", "payload": bob_user })).await?;
    for client in [&mut ann, &mut bob, &mut cat] {
        assert_eq!(client.recv_json().await?, presence(json!([ann_user, bob_user])));
    }

    // Invalid messages and anonymous users broadcast nothing ...
    cat.send_text("not json").await?;
    cat.send_json(json!({ "type": "add-user", "payload": { "id": 7 } })).await?;
    cat.send_json(json!({ "type": "shout", "payload": {} })).await?;
    cat.send_json(json!({ "type": "add-anonymous-user", "payload": { "id": "ghost", "name": "x" } })).await?;
    // ... but anonymous users appear in the next broadcast (score 0: last),
    // once the room has handled cat's messages.
    eventually("the anonymous user to appear", async || {
        Ok(host.http("GET", "/parties/presence/workshop/presence", "").await?.1.contains("ghost"))
    })
    .await?;
    bob.send_json(json!({ "type": "remove-user", "payload": { "id": "bob" } })).await?;
    for client in [&mut ann, &mut bob, &mut cat] {
        assert_eq!(client.recv_json().await?, presence(json!([ann_user, { "id": "ghost" }])));
    }

    let (status, body) = host.http("GET", "/parties/presence/workshop/presence", "").await?;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&body)?, json!({ "users": [ann_user, { "id": "ghost" }] }));
    assert_eq!(
        host.http("GET", "/parties/presence/workshop/other", "").await?,
        (404, "not found".to_owned())
    );

    // Closing a connection broadcasts to the others without its user.
    drop(cat);
    for client in [&mut ann, &mut bob] {
        assert_eq!(client.recv_json().await?, presence(json!([ann_user])));
    }
    host.stop().await
}

async fn users_are_deduplicated_by_id_and_ordered_by_score(parties: &Examples) -> Result<()> {
    let dir = temp_dir();
    let host = TestHost::start(dir.path(), &manifest(&[("presence", parties.presence)], "")).await?;
    let url = host.ws_url("/parties/presence/dedupe");
    let users = [
        json!({ "id": "plain" }),
        json!({ "id": "named", "name": "N" }),
        json!({ "id": "plain", "avatarUrl": "https://example.com/p.png", "name": "P" }),
        json!({ "id": "discord", "avatarUrl": "https://cdn.discordapp.com/d.png" }),
    ];
    let mut tabs = Vec::new();
    for user in &users {
        // One tab at a time, so tabs connect in a known order.
        let mut tab = Client::connect(&url).await?;
        tab.send_json(json!({ "type": "add-user", "payload": user })).await?;
        tab.recv_json().await?;
        tabs.push(tab);
    }
    // `plain` is listed once, with the later tab's data (score 2), then
    // discord (1.5), then named (1).
    let (status, body) = host.http("GET", "/parties/presence/dedupe/presence", "").await?;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&body)?, json!({ "users": [users[2], users[3], users[1]] }));
    host.stop().await
}

for_both_languages!(
    users_are_added_removed_and_dropped_on_close,
    users_are_deduplicated_by_id_and_ordered_by_score
);
