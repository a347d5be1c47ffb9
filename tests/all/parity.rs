//! PartyKit's API as partyhost offers it, through the `parity` test party:
//! static gates before connect and request, multi-key storage and paging,
//! alarm retries, `connection.uri` and close details.

use anyhow::Result;
use std::time::Duration;

use crate::common::{Client, TestHost, eventually, manifest, refused_upgrade, temp_dir};
use crate::guests;

fn parity_manifest(extra: &str) -> String {
    let toml = manifest(&[("parity", guests::PARITY), ("plain", guests::HOSTILE)], extra);
    format!("{toml}[parties.parity.vars]\nTOKEN = \"good\"\n[parties.parity.limits]\nstorage_mib = 1\n")
}

/// A client of the parity party's `room`, let in by its gate.
async fn member(host: &TestHost, room: &str, query: &str) -> Result<(Client, String)> {
    let mut client =
        Client::connect(&host.ws_url(&format!("/parties/parity/{room}?token=good&{query}"))).await?;
    let hello = client.recv_text().await?;
    Ok((client, hello))
}

async fn ask(client: &mut Client, command: &str) -> Result<String> {
    client.send_text(command).await?;
    client.recv_text().await
}

#[tokio::test]
async fn on_before_connect_refuses_with_a_status_or_passes_a_rewritten_request() -> Result<()> {
    let dir = temp_dir();
    let host = TestHost::start(dir.path(), &parity_manifest("")).await?;
    let rooms_before = host.stats().rooms;

    let refused = refused_upgrade(&host.ws_url("/parties/parity/vault?token=wrong")).await?;
    assert_eq!(refused, (401, "bad token for room vault".to_owned()));
    assert_eq!(host.stats().rooms, rooms_before, "a refused client never starts its room");

    // The gate added `x-user`; the room sees the URL the client used.
    let (_ann, hello) = member(&host, "vault", "user=ann&_pk=c1").await?;
    let url = format!("http://{}/parties/parity/vault?token=good&user=ann&_pk=c1", host.addr);
    assert_eq!(hello, format!("hello ann uri={url}"));

    // The lobby's fetch reaches another room of the project.
    let (_bob, hello) = member(&host, "vault", "lookup=1").await?;
    assert!(hello.starts_with("hello looked-up-user uri="), "{hello}");
    let refused = refused_upgrade(&host.ws_url("/parties/parity/vault?token=good&lookup=1&user=x")).await;
    assert!(refused.is_err(), "a looked-up user is let in: {refused:?}");

    // A gate that panics is a 500 naming the gate; one reaching for
    // storage is told it has none.
    let (status, body) = refused_upgrade(&host.ws_url("/parties/parity/vault?trap=1")).await?;
    assert_eq!((status, body.as_str()), (500, "on-before-connect failed (panic)"));
    let (status, body) = refused_upgrade(&host.ws_url("/parties/parity/vault?gate-put=1")).await?;
    assert_eq!(status, 409);
    assert!(body.contains("no storage"), "{body}");
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_parked_gates_is_refused_past_64_at_once() -> Result<()> {
    let _alone = crate::common::quiet_machine();
    let dir = temp_dir();
    let host = TestHost::start(dir.path(), &parity_manifest("[limits]\nfetch_timeout_ms = 1500")).await?;
    // Seventy clients whose gate parks on a fetch that never answers.
    let url = host.ws_url("/parties/parity/flooded?token=good&hang=1");
    let attempts: Vec<_> = (0..70).map(|_| tokio::spawn(refused_upgrade_owned(url.clone()))).collect();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for attempt in attempts {
        let (status, _) = attempt.await??;
        *statuses.entry(status).or_default() += 1;
    }
    // 64 held an instance each until their fetch timed out; the rest were
    // turned away at once instead of taking more of the project's.
    assert_eq!(statuses, [(502, 64), (503, 6)].into_iter().collect(), "{statuses:?}");
    host.stop().await
}

async fn refused_upgrade_owned(url: String) -> Result<(u16, String)> {
    refused_upgrade(&url).await
}

#[tokio::test]
async fn on_before_request_guards_http_and_parties_without_gates_pass_untouched() -> Result<()> {
    let dir = temp_dir();
    let host = TestHost::start(dir.path(), &parity_manifest("")).await?;

    let (status, body) = host.http("GET", "/parties/parity/vault/secret", "").await?;
    assert_eq!((status, body.as_str()), (401, "unauthorized"));
    let auth = [("authorization", "Bearer good")];
    let response = host.http_with("GET", "/parties/parity/vault/secret", &auth, "").await?;
    assert_eq!((response.status, response.body.as_str()), (200, "the secret room"));
    let (status, body) = host.http("GET", "/parties/parity/vault/anything", "").await?;
    assert_eq!((status, body.as_str()), (200, "gated=vault"), "the gate's header reached the room");

    // `plain` names no gate in export_party!: asked once, then never again.
    let (status, _) = host.http("GET", "/parties/plain/r/pong", "").await?;
    assert_eq!(status, 200);
    let rooms = host.local_rooms();
    let plain = rooms.resolve_party("plain").and_then(|name| rooms.party(&name)).expect("plain is served");
    assert_eq!(plain.traits.get(), Some(&partyhost::sandbox::Traits::empty()));
    let mut client = Client::connect(&host.ws_url("/parties/plain/r")).await?;
    client.send_text("hello").await?;
    assert!(client.recv_text().await?.starts_with("echo hello"));
    host.stop().await
}

#[tokio::test]
async fn storage_takes_up_to_128_keys_at_once_all_or_nothing_and_pages_after_a_key() -> Result<()> {
    let dir = temp_dir();
    let host = TestHost::start(dir.path(), &parity_manifest("")).await?;
    let (mut client, _) = member(&host, "store", "").await?;

    assert_eq!(ask(&mut client, "put-many a=1,b=2,c=3").await?, "ok");
    assert_eq!(ask(&mut client, "get-many c,missing,a").await?, "c=3,a=1");
    assert_eq!(ask(&mut client, "put-keys 128").await?, "put 128");
    let refused = ask(&mut client, "put-keys 129").await?;
    assert_eq!(refused, "refused: too large: 129 keys in one call; at most 128");
    assert!(ask(&mut client, "get-many k0000,k0127,k0128").await?.ends_with("k0127=1"));

    // Ten 100 KiB values fit the 1 MiB room; eleven do not, and then none
    // of the eleven is written.
    let refused = ask(&mut client, "put-big 11").await?;
    assert!(refused.starts_with("refused: quota exceeded: room storage would exceed"), "{refused}");
    assert_eq!(ask(&mut client, "get-many big0,big10").await?, "");
    assert_eq!(ask(&mut client, "put-big 2").await?, "put 2 big");

    // Paging: each page starts after the last key of the one before.
    assert_eq!(ask(&mut client, "page -,3").await?, "a,b,big0");
    assert_eq!(ask(&mut client, "page big0,3").await?, "big1,c,k0000");
    assert_eq!(ask(&mut client, "page k0126,5").await?, "k0127");
    assert_eq!(ask(&mut client, "page k0127,5").await?, "");
    assert_eq!(
        ask(&mut client, "list-both").await?,
        "refused: invalid: give `start` or `start-after`, not both"
    );
    assert_eq!(ask(&mut client, "delete-many a,b,nope").await?, "deleted 2");
    drop(client);
    host.stop().await?;

    let host = TestHost::start(dir.path(), &parity_manifest("")).await?;
    let (mut client, _) = member(&host, "store", "").await?;
    let big = "x".repeat(100 << 10);
    assert_eq!(ask(&mut client, "get-many a,c,big1,k0127").await?, format!("c=3,big1={big},k0127=1"));
    host.stop().await
}

#[tokio::test]
async fn a_failing_alarm_runs_again_with_its_retry_count_and_six_retries_at_most() -> Result<()> {
    let dir = temp_dir();
    let host = TestHost::start(dir.path(), &parity_manifest("[rooms]\nalarm_retry_ms = 50")).await?;

    // Fails twice, then runs: the third run is retry 2, and the failed
    // runs' writes were undone.
    let (mut client, _) = member(&host, "alarmed", "").await?;
    assert_eq!(ask(&mut client, "alarm-fail 2").await?, "alarm set");
    assert_eq!(client.recv_text().await?, "alarm ran, retry-count 2");
    let (_, runs) = host.http("GET", "/parties/parity/alarmed/alarm-runs", "").await?;
    assert_eq!(runs, "[2]");

    // Fails every time: the first run and six retries, then no more.
    let traps = || host.local_rooms().limit_hits().snapshot().get("trap").copied().unwrap_or(0);
    let before = traps();
    let (mut client, _) = member(&host, "doomed", "").await?;
    assert_eq!(ask(&mut client, "alarm-fail 99").await?, "alarm set");
    eventually("the first run and six retries failed", async || Ok(traps() - before == 7)).await?;
    // The last wait was 50 ms x 2^5; twice that again brings nothing more.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    assert_eq!(traps() - before, 7, "no seventh retry");
    let (_, runs) = host.http("GET", "/parties/parity/doomed/alarm-runs", "").await?;
    assert_eq!(runs, "[]", "every run failed, and its writes with it");
    host.stop().await
}

#[tokio::test]
async fn on_close_learns_the_code_reason_and_whether_the_close_was_clean() -> Result<()> {
    let dir = temp_dir();
    let host = TestHost::start(dir.path(), &parity_manifest("")).await?;
    let (mut polite, _) = member(&host, "closing", "_pk=polite").await?;
    let (rude, _) = member(&host, "closing", "_pk=rude").await?;
    polite.close(4001, "bye").await?;
    drop(rude);
    eventually("both closes recorded", async || {
        let (_, closes) = host.http("GET", "/parties/parity/closing/closes", "").await?;
        Ok(closes == "polite 4001 \"bye\" clean=true\nrude 1006 \"\" clean=false")
    })
    .await?;
    host.stop().await
}
