//! Per-call and per-client limits of the README's limit table that no other
//! test reaches: an HTTP body over `message_kib`, connection state over
//! 2 KiB, and log lines past the per-call budget. (A client's queue past
//! `queue_kib` is tests/all/edge.rs.)

use anyhow::Result;
use std::sync::{Mutex, OnceLock};

use crate::common::{Client, TestHost, manifest, temp_dir};
use crate::guests::HOSTILE;

fn hits(host: &TestHost, limit: &str) -> u64 {
    host.local_rooms().limit_hits().snapshot().get(limit).copied().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_body_over_message_kib_is_refused_with_413() -> Result<()> {
    let dir = temp_dir();
    let host =
        TestHost::start(dir.path(), &manifest(&[("hostile", HOSTILE)], "[limits]\nmessage_kib = 4")).await?;
    let fits = "x".repeat(4 << 10);
    assert_eq!(host.http("POST", "/parties/hostile/x/pong", &fits).await?, (200, "pong".to_owned()));
    assert_eq!(hits(&host, "message_size"), 0);
    let over = "x".repeat((4 << 10) + 1);
    let refused = host.http("POST", "/parties/hostile/x/pong", &over).await?;
    assert_eq!(refused, (413, "request body is over 4096 bytes".to_owned()));
    assert_eq!(hits(&host, "message_size"), 1);
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_state_over_2_kib_is_refused_as_too_large() -> Result<()> {
    let dir = temp_dir();
    let host = TestHost::start(dir.path(), &manifest(&[("hostile", HOSTILE)], "")).await?;
    let mut client = Client::connect(&host.ws_url("/parties/hostile/state")).await?;
    // The state is stored as JSON: a string of 2,000 characters fits in 2 KiB.
    let fits = "s".repeat(2000);
    client.send_text(&format!("remember:{fits}")).await?;
    assert_eq!(client.recv_text().await?, format!("remembered {fits}"));
    client.send_text(&format!("remember:{}", "s".repeat(2100))).await?;
    let refused = client.recv_text().await?;
    assert!(refused.starts_with("refused: ") && refused.contains("too large"), "{refused}");
    // The state that fitted is still there.
    client.send_text("recall:").await?;
    assert_eq!(client.recv_text().await?, format!("recall {fits}"));
    assert_eq!(hits(&host, "storage"), 0, "a state refusal is not a storage hit");
    host.stop().await
}

/// Every line guests log in this test process (target `guest`), once the
/// first test asks for it.
fn guest_log() -> &'static Mutex<Vec<u8>> {
    static LOG: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log: &'static Mutex<Vec<u8>> = Box::leak(Box::default());
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("guest=info"))
            .with_ansi(false)
            .with_writer(move || Appender(log))
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        log
    })
}

struct Appender(&'static Mutex<Vec<u8>>);

impl std::io::Write for Appender {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Lines `room` printed, as the host logged them.
fn printed_by(room: &str) -> usize {
    let log = guest_log().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    String::from_utf8_lossy(&log)
        .lines()
        .filter(|line| line.contains(room) && line.contains("of a guest that prints too much"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_past_the_budget_are_dropped_and_counted() -> Result<()> {
    guest_log();
    let dir = temp_dir();
    let host =
        TestHost::start(dir.path(), &manifest(&[("hostile", HOSTILE)], "[limits]\nlog_kib_per_event = 1"))
            .await?;
    let room = format!("logs-{}", std::process::id());
    let mut client = Client::connect(&host.ws_url(&format!("/parties/hostile/{room}"))).await?;
    // 10 lines of about 40 bytes fit in 1 KiB; the call goes on either way.
    client.send_text("print:10").await?;
    assert!(client.recv_text().await?.starts_with("printed"));
    assert_eq!(printed_by(&room), 10);
    assert_eq!(hits(&host, "log"), 0);
    client.send_text("print:1000").await?;
    assert!(client.recv_text().await?.starts_with("printed"), "the call is not failed by its logs");
    let logged = printed_by(&room) - 10;
    assert!((20..30).contains(&logged), "{logged} of 1000 lines logged with a 1 KiB budget");
    // What a call dropped is counted (and warned about once) as the next call begins.
    client.send_text("hello").await?;
    assert!(client.recv_text().await?.starts_with("echo hello"));
    assert_eq!(hits(&host, "log"), 1, "one hit per call past the budget");
    host.stop().await
}
