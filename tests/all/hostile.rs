//! The hostile-guest suite: a project whose guest misbehaves in every way
//! we know, deployed next to a project serving reactions. Each attack is
//! stopped within its limit and counted, the hostile room recovers from its
//! storage, nothing crosses projects, the host stays up, and the
//! well-behaved room keeps answering: its latency is measured before and
//! during the attacks and printed.

use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::common::{Client, Tenant, TestHost, eventually, manifest, temp_dir};
use crate::guests::{HOSTILE, REACTIONS};

/// The hostile project's limits: tight, so each attack hits one quickly.
/// The CPU budget leaves `grow` time to reach the memory limit first even
/// on a loaded machine (epoch ticks count wall time while the guest runs).
const EVIL_LIMITS: &str = "[limits]\ncpu_ms = 200\nmemory_mib = 16\nfanout_mib_per_event = 1\n\
    log_kib_per_event = 4\nstorage_mib = 1\nmessages_per_second = 50\nconnections_per_room = 20\nmessage_kib = 64";

/// Reaction round trips (send, then see the update) on `client`.
async fn round_trips(client: &mut Client, count: usize) -> Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let sent = Instant::now();
        client.send_json(json!({ "type": "reaction", "kind": "clap" })).await?;
        client.recv_json().await?;
        samples.push(sent.elapsed());
    }
    Ok(samples)
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples.get(index).copied().unwrap_or_default()
}

struct Attack<'a> {
    host: &'a TestHost,
    evil: &'a Tenant,
    victim: Client,
    starts: u64,
}

impl Attack<'_> {
    fn url(&self, rest: &str) -> String {
        self.host.ws_url(&self.evil.path(rest))
    }

    /// Sends a misdeed; the room restarts, keeps the socket, and answers.
    async fn restarts_after(&mut self, command: &str) -> Result<()> {
        self.victim.send_text(command).await?;
        self.answers().await.with_context(|| format!("after {command}"))
    }

    /// The hostile room answers, with the restarts so far.
    async fn answers(&mut self) -> Result<()> {
        self.victim.send_text("ping").await?;
        loop {
            let reply = self.victim.recv_text().await?;
            if let Some(starts) = reply.strip_prefix("echo ping starts=") {
                anyhow::ensure!(starts.parse::<u64>()? > self.starts, "no restart: {reply}");
                self.starts = starts.parse()?;
                return Ok(());
            }
        }
    }

    async fn ask(&mut self, command: &str) -> Result<String> {
        self.victim.send_text(command).await?;
        self.victim.recv_text().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_guests_are_stopped_and_their_neighbours_keep_serving() -> Result<()> {
    let dir = temp_dir();
    // The good room is measured flat out: its limiter and rate limit are off.
    let unlimited = "[vars]\nRATE_LIMIT_MS = \"0\"\n[limits]\nmessages_per_second = 1000000";
    let good = Tenant::new(dir.path(), "good", &[("reactions", REACTIONS)], unlimited)?;
    let evil = Tenant::new(dir.path(), "evil", &[("hostile", HOSTILE)], EVIL_LIMITS)?;
    let tenants = format!("domain = \"partyhost.test\"\n{}{}", good.entry, evil.entry);
    let local = manifest(&[("reactions", REACTIONS)], "");
    let host = TestHost::start_with_tenants(dir.path(), &local, &tenants).await?;
    host.deploy(&good).await?;
    host.deploy(&evil).await?;

    // The well-behaved room, before the attacks.
    let mut neighbour = Client::connect(&host.ws_url(&good.path("/parties/reactions/calm"))).await?;
    neighbour.recv_json().await?;
    let mut before = round_trips(&mut neighbour, 200).await?;

    // ...and during them, from a task of its own.
    let attacking = Arc::new(AtomicBool::new(true));
    let measuring = {
        let attacking = attacking.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while attacking.load(Ordering::Relaxed) {
                samples.extend(round_trips(&mut neighbour, 10).await?);
            }
            anyhow::Ok((samples, neighbour))
        })
    };

    let victim = Client::connect(&host.ws_url(&evil.path("/parties/hostile/attacks"))).await?;
    let mut attack = Attack { host: &host, evil: &evil, victim, starts: 0 };
    attack.answers().await?;

    // Loops forever in every handler (on-message here, then on-request,
    // on-start, on-connect, on-error, on-close, on-alarm), eats memory,
    // recurses, panics.
    for misdeed in ["spin", "grow", "recurse", "wide-recurse", "panic"] {
        attack.restarts_after(misdeed).await?;
    }
    let started = Instant::now();
    let (status, body) = host.http("GET", &evil.path("/parties/hostile/attacks/spin"), "").await?;
    let stopped_after = started.elapsed();
    assert_eq!((status, body.as_str()), (500, "the room failed while handling the request (cpu_limit)"));
    // 200 ms of CPU, counted in 5 ms epoch ticks, plus a restart.
    assert!(
        stopped_after < Duration::from_millis(1000),
        "a 200 ms CPU limit stopped the loop after {stopped_after:?}"
    );
    let mut spins_on_connect = Client::connect(&attack.url("/parties/hostile/attacks?spin=connect")).await?;
    assert_eq!(spins_on_connect.recv_close().await?, (1011, "room error".to_owned()));
    let mut never_starts = Client::connect(&attack.url("/parties/hostile/spins-on-start")).await?;
    assert_eq!(never_starts.recv_close().await?, (1011, "room error".to_owned()));
    let mut errs = Client::connect(&attack.url("/parties/hostile/spins-on-error")).await?;
    errs.send(Message::Frame(Frame::message(vec![0xff], OpCode::Data(Data::Text), true))).await?;
    assert_eq!(errs.recv_close().await?.0, 1002, "the client's error reaches on-error, which spins");
    let mut spins_on_close = Client::connect(&attack.url("/parties/hostile/attacks")).await?;
    spins_on_close.send_text("spin-on-close:").await?;
    assert!(spins_on_close.recv_text().await?.starts_with("on-close will spin"));
    drop(spins_on_close);
    assert_eq!(attack.ask("spin-alarm:10").await?.split(" starts").next(), Some("alarm set to spin"));
    eventually("the spinning alarm is stopped", async || {
        Ok(host.project_status(&evil).await?["limit_hits"]["cpu"].as_u64() >= Some(7))
    })
    .await?;
    attack.answers().await?;

    // Huge broadcasts in a loop: the call fails at 1 MiB of fan-out.
    attack.restarts_after("flood:64:100").await?;
    // Storage without bound stops at the quota, as an error the guest sees.
    let filled = attack.ask("fill:4096").await?;
    assert!(filled.ends_with("quota exceeded: room storage would exceed 1048576 bytes"), "{filled}");
    // fetch cannot reach the other project; a tight fetch loop is capped.
    assert_eq!(
        attack.ask("fetch-other:reactions").await?,
        "fetch refused: fetch failed: fetch to reactions/x failed: no party named `reactions`"
    );
    let fetched = attack.ask("fetch-loop:100").await?;
    assert!(fetched.starts_with("fetched 16 of 100; "), "{fetched}");
    assert!(fetched.ends_with("a handler call may start at most 16 fetches"), "{fetched}");
    // Thousands of alarms: a room has one alarm, the last one set.
    assert!(attack.ask("alarms:5000").await?.starts_with("set 5000 alarms"));
    // Logs without bound are cut at the call's budget.
    assert!(attack.ask("print:2000").await?.starts_with("printed"));
    // A string that is not UTF-8 from the guest traps; the client never sees it.
    attack.restarts_after("invalid-utf8:").await?;

    // Clients that misbehave: invalid UTF-8, too fast, too big, too many.
    let mut garbled = Client::connect(&attack.url("/parties/hostile/attacks")).await?;
    let invalid = Frame::message(vec![0xff, 0xfe, 0xfd], OpCode::Data(Data::Text), true);
    garbled.send(Message::Frame(invalid)).await?;
    assert_eq!(garbled.recv_close().await?.0, 1002, "invalid UTF-8 text is a protocol error");
    let mut hasty = Client::connect(&attack.url("/parties/hostile/hasty")).await?;
    for i in 0..200 {
        if hasty.send_text(&format!("{i}")).await.is_err() {
            break;
        }
    }
    assert_eq!(hasty.recv_close().await?, (1008, "too many messages: at most 50 per second".to_owned()));
    let mut big = Client::connect(&attack.url("/parties/hostile/attacks")).await?;
    big.send_text(&"x".repeat(65 << 10)).await?;
    assert_eq!(big.recv_close().await?.0, 1009);
    let mut crowd = Vec::new();
    for _ in 0..20 {
        let mut client = Client::connect(&attack.url("/parties/hostile/crowd")).await?;
        client.send_text("hi").await?;
        client.recv_text().await?;
        crowd.push(client);
    }
    let mut one_too_many = Client::connect(&attack.url("/parties/hostile/crowd")).await?;
    assert_eq!(one_too_many.recv_close().await?, (1013, "room is full (20 connections)".to_owned()));
    attack.victim.send_text("after the attacks").await?;
    assert!(attack.victim.recv_text().await?.starts_with("echo after the attacks"));

    attacking.store(false, Ordering::Relaxed);
    let (mut during, mut neighbour) = measuring.await??;

    // Every attack was counted against the hostile project, none against
    // the good one.
    let evil_hits = host.project_status(&evil).await?["limit_hits"].clone();
    for (limit, at_least) in [
        ("cpu", 7),
        ("memory", 1),
        ("stack", 2),
        ("trap", 2),
        ("fanout", 1),
        ("storage", 1),
        ("fetches", 1),
        ("log", 1),
        ("message_rate", 1),
        ("message_size", 1),
        ("connections", 1),
    ] {
        assert!(evil_hits[limit].as_u64() >= Some(at_least), "{limit}: {evil_hits}");
    }
    let good_hits = host.project_status(&good).await?["limit_hits"].clone();
    assert!(good_hits.as_object().is_some_and(|h| h.values().all(|v| v == &json!(0))), "{good_hits}");
    let alarms: i64 = rusqlite::Connection::open(dir.path().join("data/projects/evil/storage.sqlite"))?
        .query_row("SELECT COUNT(*) FROM alarms WHERE room = 'attacks'", [], |row| row.get(0))?;
    assert_eq!(alarms, 1, "5000 alarms set, one kept");

    // The neighbour kept serving throughout, and the host is up.
    let counts = round_trips(&mut neighbour, 1).await?;
    assert_eq!(counts.len(), 1);
    let (status, _) = host.http("GET", "/parties/reactions/lobby", "").await?;
    assert_eq!(status, 200);
    let report: Value = json!({
        "endless_loop_stopped_after_ms": ms(stopped_after),
        "before": { "samples": before.len(), "p50_ms": ms(percentile(&mut before, 0.5)), "p99_ms": ms(percentile(&mut before, 0.99)) },
        "during": { "samples": during.len(), "p50_ms": ms(percentile(&mut during, 0.5)), "p99_ms": ms(percentile(&mut during, 0.99)) },
    });
    println!("well-behaved room's reaction round trip: {report}");
    assert!(during.len() >= 50, "the neighbour answered only {} times during the attacks", during.len());
    assert!(percentile(&mut during, 0.99) < Duration::from_millis(500), "{report}");
    host.stop().await
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}
