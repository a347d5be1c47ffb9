//! A room whose guest panics, spins, eats memory or recurses is stopped
//! within its limit, recovers from its storage, keeps its sockets open, and
//! never disturbs a neighbouring room.

use anyhow::Result;
use serde_json::json;

use crate::common::{Client, TestHost, manifest, temp_dir};
use crate::guests::{HOSTILE, REACTIONS};

async fn misdeed_is_stopped_and_the_room_recovers(command: &str, kind: &str) -> Result<()> {
    let dir = temp_dir();
    // A generous wall-clock deadline, so that on a loaded machine the loop
    // meets its CPU budget (time on the CPU) before the deadline.
    let limits = "[limits]\ncpu_ms = 50\nwall_ms = 2000\nmemory_mib = 16";
    let host =
        TestHost::start(dir.path(), &manifest(&[("hostile", HOSTILE), ("reactions", REACTIONS)], limits))
            .await?;
    let mut neighbour = Client::connect(&host.ws_url("/parties/reactions/next-door")).await?;
    neighbour.recv_json().await?;
    let mut victim = Client::connect(&host.ws_url(&format!("/parties/hostile/{command}"))).await?;
    victim.send_text("hello").await?;
    assert_eq!(victim.recv_text().await?, "echo hello starts=1");

    // Over HTTP the failure's kind is reported to the caller.
    let (status, body) = host.http("GET", &format!("/parties/hostile/{command}/{command}"), "").await?;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body, format!("the room failed while handling the request ({kind})"));

    // Over WebSocket: the socket stays open and the room restarts from storage.
    victim.send_text(command).await?;
    victim.send_text("after").await?;
    assert_eq!(victim.recv_text().await?, "echo after starts=3", "two restarts, socket kept");

    neighbour.send_json(json!({ "type": "reaction", "kind": "clap" })).await?;
    assert_eq!(neighbour.recv_json().await?["reactions"]["clap"], 1, "the neighbour room is unaffected");
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_traps_and_the_room_recovers() -> Result<()> {
    misdeed_is_stopped_and_the_room_recovers("panic", "panic").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_loop_hits_the_cpu_limit() -> Result<()> {
    misdeed_is_stopped_and_the_room_recovers("spin", "cpu_limit").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_allocation_hits_the_memory_limit() -> Result<()> {
    misdeed_is_stopped_and_the_room_recovers("grow", "memory_limit").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_recursion_overflows_the_stack() -> Result<()> {
    misdeed_is_stopped_and_the_room_recovers("recurse", "stack_overflow").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_stack_overflow_is_an_out_of_bounds_trap() -> Result<()> {
    misdeed_is_stopped_and_the_room_recovers("wide-recurse", "out_of_bounds").await
}
