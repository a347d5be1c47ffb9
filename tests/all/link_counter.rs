//! example-link-counter's page and counter parties: rooms that call each
//! other, including page `b`, which links to itself, so its `on-connect`
//! awaits the counter while the counter awaits a POST back to `b`.

use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::path::Path;

use crate::common::{Client, Examples, TestHost, eventually, manifest, temp_dir};

const PAGE_LINKS: [(&str, &[&str]); 4] =
    [("a", &["b", "c", "d"]), ("b", &["a", "b", "c"]), ("c", &["a", "b", "d"]), ("d", &["a"])];

fn link_manifest(parties: &Examples, alarm_delay_ms: u64) -> String {
    let vars = format!("[vars]\nCLEANUP_ALARM_DELAY_MS = \"{alarm_delay_ms}\"\n");
    manifest(&[("page", parties.page), ("counter", parties.counter)], &vars)
}

fn links(page: &str) -> &'static [&'static str] {
    PAGE_LINKS.iter().find(|(p, _)| *p == page).map_or(&[], |(_, l)| l)
}

/// A client on `page` that has subscribed to the page's links.
async fn visit(host: &TestHost, page: &str) -> Result<(Client, Value)> {
    let mut client = Client::connect(&host.ws_url(&format!("/parties/page/{page}"))).await?;
    client.send_json(json!({ "type": "subscribe", "links": links(page) })).await?;
    let first = client.recv_json().await?;
    Ok((client, first))
}

/// Reads the next frame, which must be the update showing `counts` for the
/// linked pages: each step below changes one page's count, so each page
/// linking to it gets exactly one update, and a repeated, stale or stray
/// frame fails here.
async fn next_update_is(client: &mut Client, counts: Value) -> Result<()> {
    let expected = json!({ "type": "update", "connections": counts });
    let update = client.recv_json().await.with_context(|| format!("waiting for {expected}"))?;
    anyhow::ensure!(update == expected, "expected {expected}, got {update}");
    Ok(())
}

async fn pages_see_each_others_counts_go_up_and_down(parties: &Examples) -> Result<()> {
    let dir = temp_dir();
    let host = TestHost::start(dir.path(), &link_manifest(parties, 3_600_000)).await?;

    let (mut a, first) = visit(&host, "a").await?;
    assert_eq!(first, json!({ "type": "update", "connections": { "b": 0, "c": 0, "d": 0 } }));

    // b links to itself: connecting makes b's on-connect await the counter,
    // which awaits a POST back to b.
    let (mut b, first) = visit(&host, "b").await?;
    assert_eq!(first, json!({ "type": "update", "connections": { "a": 1, "b": 1, "c": 0 } }));
    next_update_is(&mut a, json!({ "b": 1, "c": 0, "d": 0 })).await?;

    let (mut c, first) = visit(&host, "c").await?;
    assert_eq!(first, json!({ "type": "update", "connections": { "a": 1, "b": 1, "d": 0 } }));
    next_update_is(&mut a, json!({ "b": 1, "c": 1, "d": 0 })).await?;
    next_update_is(&mut b, json!({ "a": 1, "b": 1, "c": 1 })).await?;

    // A second visitor on b: the self-link cycle again, now with b subscribed
    // to itself. Everyone linking to b sees 2, b's own clients included.
    let mut b2 = Client::connect(&host.ws_url("/parties/page/b")).await?;
    next_update_is(&mut b, json!({ "a": 1, "b": 2, "c": 1 })).await?;
    next_update_is(&mut b2, json!({ "a": 1, "b": 2, "c": 1 })).await?;
    next_update_is(&mut a, json!({ "b": 2, "c": 1, "d": 0 })).await?;
    next_update_is(&mut c, json!({ "a": 1, "b": 2, "d": 0 })).await?;

    // And down again when they leave.
    drop(b2);
    next_update_is(&mut a, json!({ "b": 1, "c": 1, "d": 0 })).await?;
    next_update_is(&mut b, json!({ "a": 1, "b": 1, "c": 1 })).await?;
    drop(c);
    next_update_is(&mut a, json!({ "b": 1, "c": 0, "d": 0 })).await?;
    next_update_is(&mut b, json!({ "a": 1, "b": 1, "c": 0 })).await?;

    let (_d, first) = visit(&host, "d").await?;
    assert_eq!(first, json!({ "type": "update", "connections": { "a": 1 } }));
    next_update_is(&mut a, json!({ "b": 1, "c": 0, "d": 1 })).await?;

    // The counter answers only the POSTs it knows, like the original.
    assert_eq!(host.http("GET", "/parties/counter/all-pages", "").await?.0, 400);
    host.stop().await
}

/// Alarm rows and stored keys, read straight from the host's SQLite file.
fn stored(db: &Path) -> Result<(Vec<String>, Vec<String>)> {
    let conn = rusqlite::Connection::open(db)?;
    let rows = |sql: &str| -> Result<Vec<String>> {
        let mut stmt = conn.prepare(sql)?;
        let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    };
    Ok((
        rows("SELECT party || '/' || room FROM alarms ORDER BY 1")?,
        rows("SELECT party || '/' || room || '/' || key FROM kv ORDER BY 1")?,
    ))
}

async fn cleanup_alarms_fire_after_a_restart(parties: &Examples) -> Result<()> {
    let dir = temp_dir();
    let db = dir.path().join("data/storage.sqlite");
    // Long enough that the host surely stops before the alarms are due,
    // even on loaded cores; the restarted host then waits for them.
    let delay_ms = 4000;
    let host = TestHost::start(dir.path(), &link_manifest(parties, delay_ms)).await?;
    let (client, _) = visit(&host, "a").await?;
    drop(client);
    // The page's close reaches the counter (a's count back to 0) ...
    eventually("page a's close to reach the counter", async || {
        let conn = rusqlite::Connection::open(&db)?;
        let sql = "SELECT CAST(value AS TEXT) FROM kv WHERE room = 'all-pages' AND key = 'a'";
        let state: String = conn.query_row(sql, [], |r| r.get(0))?;
        Ok(state.contains("\"connectionCount\":0"))
    })
    .await?;
    // ... then the host stops before any alarm is due.
    host.stop().await?;
    let (alarms, keys) = stored(&db)?;
    assert_eq!(alarms, ["counter/all-pages", "page/a"]);
    assert_eq!(
        keys,
        [
            "counter/all-pages/a",
            "counter/all-pages/b",
            "counter/all-pages/c",
            "counter/all-pages/d",
            "page/a/connections"
        ]
    );

    // A new host wakes both rooms at their alarm time: every page has no
    // connections, so the counter forgets them all and the page its summary.
    let host = TestHost::start(dir.path(), &link_manifest(parties, delay_ms)).await?;
    eventually("the alarms to clean up", async || Ok(stored(&db)? == (vec![], vec![]))).await?;
    host.stop().await
}

/// Each end against the original's wire shapes on its own, so a rename on
/// both sides of ours cannot pass: the counter's answers byte for byte, and
/// the page applying a counter's update POST.
async fn counter_and_page_speak_the_originals_bodies(parties: &Examples) -> Result<()> {
    let dir = temp_dir();
    let host = TestHost::start(dir.path(), &link_manifest(parties, 3_600_000)).await?;
    let counter = "/parties/counter/all-pages";

    let update = r#"{"action":"update","id":"b","connectionCount":2}"#;
    assert_eq!(host.http("POST", counter, update).await?, (200, r#"{"success":true}"#.to_owned()));
    let subscribe = r#"{"action":"subscribe","subscriberId":"a","subscribeToRoomIds":["b","c"]}"#;
    assert_eq!(host.http("POST", counter, subscribe).await?, (200, r#"{"b":2,"c":0}"#.to_owned()));
    let (status, body) = host.http("POST", counter, r#"{"action":"subscribe","subscriber":"a"}"#).await?;
    assert_eq!((status, body.as_str()), (400, "Bad request"), "a wrong field name is refused");

    // A page with a subscribed client applies the counter's update POST,
    // and answers it as the original does (400, whatever it applied).
    let (mut client, first) = visit(&host, "d").await?;
    assert_eq!(first, json!({ "type": "update", "connections": { "a": 0 } }));
    let update = r#"{"action":"update","id":"a","connectionCount":7}"#;
    assert_eq!(host.http("POST", "/parties/page/d", update).await?, (400, "Bad request".to_owned()));
    assert_eq!(client.recv_json().await?, json!({ "type": "update", "connections": { "a": 7 } }));
    host.stop().await
}

for_both_languages!(
    pages_see_each_others_counts_go_up_and_down,
    cleanup_alarms_fire_after_a_restart,
    counter_and_page_speak_the_originals_bodies
);
