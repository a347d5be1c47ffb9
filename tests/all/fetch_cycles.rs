//! Room-to-room requests that can never finish end with a clear error, and
//! the room stays usable.

use anyhow::Result;

use crate::common::{Client, TestHost, manifest, temp_dir};
use crate::guests::HOSTILE;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_awaiting_itself_forever_is_stopped_by_the_hop_limit() -> Result<()> {
    let dir = temp_dir();
    let host = TestHost::start(dir.path(), &manifest(&[("hostile", HOSTILE)], "")).await?;
    // Each level awaits a request to the same room, which the room handles
    // while the level waits; the fetch 8 requests deep is refused and the
    // refusal travels back up through every level.
    let (status, body) = host.http("GET", "/parties/hostile/loop/self-fetch", "").await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.matches("inner ").count(), 8, "{body}");
    assert!(
        body.ends_with("this call is 8 room-to-room requests deep; a chain may be at most 8 deep"),
        "{body}"
    );
    assert_eq!(host.http("GET", "/parties/hostile/loop/ok", "").await?, (200, "ok starts=1".to_owned()));
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_that_gets_no_answer_ends_at_the_deadline() -> Result<()> {
    let dir = temp_dir();
    let limits = "[limits]\nfetch_timeout_ms = 300";
    let host = TestHost::start(dir.path(), &manifest(&[("hostile", HOSTILE)], limits)).await?;
    let mut client = Client::connect(&host.ws_url("/parties/hostile/stuck")).await?;
    let (status, body) = host.http("GET", "/parties/hostile/stuck/await-never", "").await?;
    assert_eq!(
        (status, body.as_str()),
        (
            502,
            "fetch failed: fetch to hostile/stuck got no response within 300ms (a request cycle that cannot finish?)"
        )
    );
    // The room kept working all along, on the same instance.
    client.send_text("still there?").await?;
    assert_eq!(client.recv_text().await?, "echo still there? starts=1");
    host.stop().await
}
