//! What metrics cost: one partyhost with metrics on and one with
//! `--no-metrics`, the same saturated fan-out through each, in alternating
//! rounds. Every client keeps reactions in flight (limiter off) and every
//! reaction is broadcast to the whole room, so the host runs flat out and
//! the measure is frames delivered per second.
//!
//! On these 2-core machines the rounds spread by tens of percent, far more
//! than metrics can cost, so the same run also times the metric
//! operations a frame pays for (on two threads at once, contended as in
//! the host) and sets them against the host's CPU time per frame.

use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

use crate::host::ChildHost;
use crate::load::{REACTION, connect, next_text};
use crate::stats::ProcCpu;

/// Reactions each client keeps in flight.
const WINDOW: usize = 2;

pub async fn run(clients: usize, seconds: u64, rounds: usize) -> anyhow::Result<()> {
    let mut on = Vec::new();
    let mut off = Vec::new();
    for round in 0..rounds {
        // Alternating which goes first, so drift on the machine falls on both.
        let order = if round % 2 == 0 { [true, false] } else { [false, true] };
        for metrics in order {
            let run = fan_out(metrics, clients, seconds).await?;
            eprintln!(
                "round {}: metrics {}: {:.0} frames/s",
                round + 1,
                if metrics { "on" } else { "off" },
                run.0
            );
            if metrics { on.push(run) } else { off.push(run) }
        }
    }
    // Median, and the spread of the rounds (max / min - 1): a difference
    // inside the spread is noise.
    let summary = |runs: &mut Vec<(f64, f64)>| {
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let spread = runs[runs.len() - 1].0 / runs[0].0 - 1.0;
        (runs[runs.len() / 2], spread)
    };
    let ((on, on_spread), (off, off_spread)) = (summary(&mut on), summary(&mut off));
    println!(
        "\n### Metrics cost: 1 room x {clients} clients, limiter off, {WINDOW} reactions in flight each, {seconds} s x {rounds} rounds (medians)\n"
    );
    println!("| measure | metrics on | --no-metrics | on / off |");
    println!("|---|---|---|---|");
    println!("| frames delivered/s | {:.0} | {:.0} | {:.3} |", on.0, off.0, on.0 / off.0);
    println!("| host CPU µs per frame | {:.2} | {:.2} | {:.3} |", on.1, off.1, on.1 / off.1);
    println!(
        "| spread of the rounds' frames/s | {:.1} % | {:.1} % | |",
        on_spread * 100.0,
        off_spread * 100.0
    );
    let per_frame = metric_ns_per_frame(clients);
    println!(
        "\nMetric operations per frame delivered: {per_frame:.1} ns (a frame counted, plus a message \
         counted and a call timed per {clients} frames, two threads at once), {:.2} % of the \
         {:.2} µs of host CPU a frame costs without metrics.",
        per_frame / (off.1 * 1000.0) * 100.0,
        off.1
    );
    Ok(())
}

/// Nanoseconds of metric work per frame delivered, timed on two threads.
fn metric_ns_per_frame(clients: usize) -> f64 {
    const OPS: u32 = 5_000_000;
    let metrics = partyhost::metrics::Metrics::default();
    let project = metrics.project("bench");
    let Some(calls) = project.calls("reactions") else { return f64::NAN };
    let time = |work: &(dyn Fn() + Sync)| {
        let started = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| (0..OPS).for_each(|_| work()));
            }
        });
        started.elapsed().as_secs_f64() * 1e9 / f64::from(OPS)
    };
    let frame = time(&|| project.frames_out(1));
    let message = time(&|| project.message_in());
    let call = time(&|| calls.observe("on-message", Duration::from_micros(3)));
    frame + (message + call) / clients as f64
}

/// One timed run: frames delivered per second, and the host's CPU time per
/// frame.
async fn fan_out(metrics: bool, clients: usize, seconds: u64) -> anyhow::Result<(f64, f64)> {
    let wasm = crate::host::reactions_wasm()?;
    let toml = format!(
        "name = \"bench\"\n[limits]\nmessages_per_second = 1000000\n[parties.reactions]\nwasm = {:?}\n\
         [parties.reactions.vars]\nRATE_LIMIT_MS = \"0\"\n",
        wasm.display().to_string()
    );
    let host = ChildHost::start_with_args(&toml, if metrics { &[] } else { &["--no-metrics"] }).await?;
    let mut sockets = Vec::new();
    for _ in 0..clients {
        let mut socket = connect(&host, "metrics").await?;
        next_text(&mut socket).await?;
        sockets.push(socket);
    }
    let pid = host.pid()?.to_string();
    let before = ProcCpu::of(&pid);
    let delivered = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|socket| tokio::spawn(client(socket, clients, until, delivered.clone())))
        .collect();
    let started = Instant::now();
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = ProcCpu::of(&pid).since(&before).total();
    let frames = delivered.load(Ordering::Relaxed) as f64;
    Ok((frames / elapsed, cpu.as_secs_f64() * 1e6 / frames.max(1.0)))
}

/// Keeps `WINDOW` reactions in flight: every reaction reaches every client,
/// so one more is sent per `clients` frames received.
async fn client(
    socket: crate::load::Socket,
    clients: usize,
    until: Instant,
    delivered: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let (mut sink, mut stream) = socket.split();
    for _ in 0..WINDOW {
        sink.send(Message::text(REACTION)).await?;
    }
    let mut received = 0usize;
    while Instant::now() < until {
        match tokio::time::timeout(Duration::from_secs(10), stream.next()).await? {
            Some(Ok(Message::Text(_))) => {
                delivered.fetch_add(1, Ordering::Relaxed);
                received += 1;
                if received.is_multiple_of(clients) {
                    sink.send(Message::text(REACTION)).await?;
                }
            }
            Some(Ok(_)) => {}
            other => anyhow::bail!("expected a frame, got {other:?}"),
        }
    }
    Ok(())
}
