//! The side-by-side scenarios: each runs against partyhost, then against
//! the native server, in the same invocation, and prints both and the ratio.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

use crate::host::ChildHost;
use crate::load::{
    CpuMeter, Server, Socket, accepted_reactions_per_second, connect, next_text, send_reaction,
    start_partyhost,
};
use crate::stats::{Percentiles, ProcCpu, pss_bytes, rss_bytes};

/// One row of a scenario's table.
struct Row {
    measure: &'static str,
    partyhost: f64,
    native: f64,
    unit: &'static str,
}

fn print_table(title: &str, rows: &[Row], generator_cpu: f64) {
    println!("\n### {title}\n");
    println!("| measure | partyhost | native | partyhost / native |");
    println!("|---|---|---|---|");
    for row in rows {
        let ratio = if row.native > 0.0 { row.partyhost / row.native } else { f64::NAN };
        println!(
            "| {} | {:.0} {} | {:.0} {} | {ratio:.2}x |",
            row.measure, row.partyhost, row.unit, row.native, row.unit
        );
    }
    println!("\nload generator CPU: {:.0} % of one core (highest of the runs)", generator_cpu * 100.0);
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Fan-out: `rooms` x `per_room` clients, each sending a reaction every
/// 105 ms (as fast as the 100 ms limiter allows; a client told to slow
/// down skips a turn), for `seconds`.
pub async fn fan_out(rooms: usize, per_room: usize, seconds: u64) -> anyhow::Result<()> {
    let mut results = Vec::new();
    let mut cpu: f64 = 0.0;
    for server in Server::BOTH {
        let host = server.start(true).await?;
        let run = fan_out_on(&host, rooms, per_room, seconds).await?;
        cpu = cpu.max(run.generator_cpu);
        if !run.closes.is_empty() {
            println!("  {server:?}: limiter answers and closes: {:?}", run.closes);
        }
        results.push((run.deliveries_per_second, run.latency));
    }
    let (p, n) = (&results[0], &results[1]);
    print_table(
        &format!(
            "Fan-out: {rooms} room(s) x {per_room} clients, a reaction per client every 105 ms, {seconds} s"
        ),
        &[
            Row { measure: "deliveries/s", partyhost: p.0, native: n.0, unit: "" },
            Row {
                measure: "send -> first update after it, p50 (lower bound)",
                partyhost: us(p.1.p50),
                native: us(n.1.p50),
                unit: "µs",
            },
            Row {
                measure: "send -> first update after it, p99 (lower bound)",
                partyhost: us(p.1.p99),
                native: us(n.1.p99),
                unit: "µs",
            },
        ],
        cpu,
    );
    Ok(())
}

/// What one server did in a fan-out run.
pub struct FanOut {
    pub deliveries_per_second: f64,
    /// Send -> first update after it.
    pub latency: Percentiles,
    /// Limiter answers and closes, by kind.
    pub closes: std::collections::BTreeMap<String, usize>,
    pub generator_cpu: f64,
}

/// Fan-out against `host`: `rooms` x `per_room` clients (rooms `fan-<r>`),
/// each sending a reaction every 105 ms for `seconds`.
pub async fn fan_out_on(
    host: &ChildHost,
    rooms: usize,
    per_room: usize,
    seconds: u64,
) -> anyhow::Result<FanOut> {
    let mut sockets = Vec::new();
    for r in 0..rooms {
        for _ in 0..per_room {
            let mut socket = connect(host, &format!("fan-{r}")).await?;
            next_text(&mut socket).await?;
            sockets.push(socket);
        }
    }
    let deliveries = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let closes = Arc::new(Mutex::new(Vec::new()));
    let meter = CpuMeter::start();
    let until = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, socket)| {
            tokio::spawn(fan_out_client(
                socket,
                i,
                until,
                deliveries.clone(),
                latencies.clone(),
                closes.clone(),
            ))
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let mut counts = std::collections::BTreeMap::new();
    closes.lock().await.iter().for_each(|c: &String| *counts.entry(c.clone()).or_default() += 1);
    let mut latencies = latencies.lock().await.clone();
    Ok(FanOut {
        deliveries_per_second: deliveries.load(Ordering::Relaxed) as f64 / seconds as f64,
        latency: Percentiles::of(&mut latencies),
        closes: counts,
        generator_cpu: meter.share(),
    })
}

async fn fan_out_client(
    mut socket: Socket,
    index: usize,
    until: Instant,
    deliveries: Arc<AtomicU64>,
    latencies: Arc<Mutex<Vec<Duration>>>,
    closes: Arc<Mutex<Vec<String>>>,
) -> anyhow::Result<()> {
    use futures_util::StreamExt;
    // Spread the clients' sends over the interval.
    let interval = Duration::from_millis(105);
    let mut next_send = Instant::now() + interval.mul_f64((index % 97) as f64 / 97.0);
    let mut sent_at: Option<Instant> = None;
    let mut mine = Vec::new();
    loop {
        let now = Instant::now();
        if now >= until {
            break;
        }
        let wake = next_send.min(until);
        tokio::select! {
            () = tokio::time::sleep_until(wake.into()) => {
                if Instant::now() >= next_send {
                    if send_reaction(&mut socket).await.is_err() {
                        break;
                    }
                    sent_at = Some(Instant::now());
                    next_send += interval;
                }
            }
            msg = socket.next() => match msg {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) => {
                    if text.as_str() == "slowdown" || text.as_str() == "goaway" {
                        closes.lock().await.push(text.to_string());
                        // That send made no update: the next one is another's.
                        sent_at = None;
                        // "As fast as the limiter allows": a told-off client
                        // skips a turn, as a well-behaved one would.
                        next_send = next_send.max(Instant::now()) + interval;
                    } else if text.starts_with("{") {
                        deliveries.fetch_add(1, Ordering::Relaxed);
                        // The first update after a send stands for its own
                        // (others' reactions may come first under load).
                        if let Some(sent) = sent_at.take() {
                            mine.push(sent.elapsed());
                        }
                    }
                }
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => {
                    let code = frame.map_or(1005, |f| u16::from(f.code));
                    closes.lock().await.push(format!("closed {code}"));
                    break;
                }
                Some(Ok(_)) => {}
                _ => break,
            },
        }
    }
    latencies.lock().await.extend(mine);
    Ok(())
}

/// Room throughput: one client keeps `window` reactions in flight into one
/// room with the limiter off; each reaction is one guest call, one storage
/// write (partyhost) and one update back.
pub async fn throughput(window: usize, seconds: u64) -> anyhow::Result<()> {
    let mut rates = Vec::new();
    let mut cpu: f64 = 0.0;
    for server in Server::BOTH {
        let host = server.start(false).await?;
        let meter = CpuMeter::start();
        rates.push(accepted_reactions_per_second(&host, window, seconds).await?);
        cpu = cpu.max(meter.share());
    }
    print_table(
        &format!("Room throughput: one room, limiter off, {window} reactions in flight, {seconds} s"),
        &[Row { measure: "accepted reactions/s", partyhost: rates[0], native: rates[1], unit: "" }],
        cpu,
    );
    Ok(())
}

/// How new rooms arrive in the cold-start scenario.
#[derive(Clone, Copy)]
pub enum Arrivals {
    /// Closed loop: this many clients, each opening its next room as soon
    /// as the last one answered. Measures capacity (rooms/s); its latency
    /// is mostly queueing (clients / rate), whatever the server.
    Clients(usize),
    /// Open loop: a new room every 1/rate s, whatever the server's answers.
    /// Measures latency at a load both servers can carry.
    Rate(u32),
}

/// One server's share of a cold-start round.
struct ColdRun {
    rate: f64,
    latency: Percentiles,
    cpu: ProcCpu,
    lag: Percentiles,
    generator_cpu: f64,
}

/// Starts `server`, warms it with one room, and connects to `rooms`
/// never-seen rooms arriving as `arrivals` says.
async fn cold_run(server: Server, rooms: usize, arrivals: Arrivals) -> anyhow::Result<ColdRun> {
    let host = Arc::new(server.start(true).await?);
    // One room first: the measure is a new room, not a new server (the
    // host's first instance pays one-time set-up).
    let mut warm = connect(&host, "warm-up").await?;
    next_text(&mut warm).await?;
    let pid = host.pid()?.to_string();
    let server_before = ProcCpu::of(&pid);
    let meter = CpuMeter::start();
    let started = Instant::now();
    let (mut times, mut lags) = match arrivals {
        Arrivals::Clients(clients) => (closed_loop(&host, rooms, clients).await?, Vec::new()),
        Arrivals::Rate(rate) => open_loop(&host, rooms, rate).await?,
    };
    Ok(ColdRun {
        rate: rooms as f64 / started.elapsed().as_secs_f64(),
        latency: Percentiles::of(&mut times),
        cpu: ProcCpu::of(&pid).since(&server_before),
        lag: Percentiles::of(&mut lags),
        generator_cpu: meter.share(),
    })
}

/// Cold start: connects to `rooms` never-seen rooms per round, arriving as
/// `arrivals` says; connect-to-first-message latency and rooms/s. With
/// several rounds the servers alternate, and the round with the median p99
/// is reported beside the worst: a disturbed stretch of a shared machine
/// then spoils one round, not the figure.
pub async fn cold_start(rooms: usize, arrivals: Arrivals, rounds: usize) -> anyhow::Result<()> {
    let mut runs: [Vec<ColdRun>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..rounds.max(1) {
        for (server, runs) in Server::BOTH.into_iter().zip(runs.iter_mut()) {
            runs.push(cold_run(server, rooms, arrivals).await?);
        }
    }
    let cpu = runs.iter().flatten().map(|r| r.generator_cpu).fold(0.0, f64::max);
    let worst_p99 = |runs: &[ColdRun]| runs.iter().map(|r| r.latency.p99).max().unwrap_or_default();
    let (worst_p, worst_n) = (worst_p99(&runs[0]), worst_p99(&runs[1]));
    let [p, n] = runs.map(|mut runs| {
        runs.sort_by_key(|r| r.latency.p99);
        runs.swap_remove(runs.len() / 2)
    });
    let per_room = |d: Duration| us(d) / rooms as f64;
    let mut title = match arrivals {
        Arrivals::Clients(clients) => {
            format!("Cold start, capacity: {rooms} never-seen rooms, {clients} clients connecting at once")
        }
        Arrivals::Rate(rate) => {
            format!("Cold start, latency: {rooms} never-seen rooms, one every 1/{rate} s")
        }
    };
    if rounds > 1 {
        title.push_str(&format!("; {rounds} rounds, the servers alternating, the median round shown"));
    }
    let latency = |measure, at: fn(&Percentiles) -> Duration| Row {
        measure,
        partyhost: us(at(&p.latency)),
        native: us(at(&n.latency)),
        unit: "µs",
    };
    let mut rows = vec![
        latency("connect -> first message p50", |p| p.p50),
        latency("connect -> first message p99", |p| p.p99),
        latency("connect -> first message max", |p| p.max),
    ];
    if rounds > 1 {
        rows.push(Row {
            measure: "p99 of the worst round",
            partyhost: us(worst_p),
            native: us(worst_n),
            unit: "µs",
        });
    }
    match arrivals {
        Arrivals::Clients(_) => {
            rows.push(Row { measure: "new rooms/s", partyhost: p.rate, native: n.rate, unit: "" })
        }
        // The generator's own lag: were the rooms offered on time?
        Arrivals::Rate(_) => rows.extend([
            Row {
                measure: "connect started late by, p99",
                partyhost: us(p.lag.p99),
                native: us(n.lag.p99),
                unit: "µs",
            },
            Row {
                measure: "connect started late by, max",
                partyhost: us(p.lag.max),
                native: us(n.lag.max),
                unit: "µs",
            },
        ]),
    }
    rows.extend([
        Row {
            measure: "server CPU per new room, user",
            partyhost: per_room(p.cpu.user),
            native: per_room(n.cpu.user),
            unit: "µs",
        },
        Row {
            measure: "server CPU per new room, system",
            partyhost: per_room(p.cpu.system),
            native: per_room(n.cpu.system),
            unit: "µs",
        },
        Row {
            measure: "server page faults per new room",
            partyhost: p.cpu.minor_faults as f64 / rooms as f64,
            native: n.cpu.minor_faults as f64 / rooms as f64,
            unit: "",
        },
    ]);
    print_table(&title, &rows, cpu);
    Ok(())
}

/// Connect-to-first-message time of one never-seen room.
async fn time_new_room(host: &ChildHost, n: usize) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let mut socket = connect(host, &format!("cold-{n}")).await?;
    next_text(&mut socket).await?;
    Ok(t.elapsed())
}

pub async fn closed_loop(
    host: &Arc<ChildHost>,
    rooms: usize,
    clients: usize,
) -> anyhow::Result<Vec<Duration>> {
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (host, next) = (host.clone(), next.clone());
            tokio::spawn(async move {
                let mut times = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if n >= rooms {
                        return anyhow::Ok(times);
                    }
                    times.push(time_new_room(&host, n).await?);
                }
            })
        })
        .collect();
    let mut times = Vec::new();
    for task in tasks {
        times.extend(task.await??);
    }
    Ok(times)
}

/// Starts room `n` at `start + n / rate`, each in its own task, so a slow
/// answer never delays the next arrival. Latency is timed from when each
/// connect starts; how late that was against its schedule (the generator's
/// own lag, tokio's 1 ms timer included) is returned beside it.
async fn open_loop(
    host: &Arc<ChildHost>,
    rooms: usize,
    rate: u32,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let start = tokio::time::Instant::now();
    let period = Duration::from_secs(1) / rate.max(1);
    let mut tasks = Vec::with_capacity(rooms);
    for n in 0..rooms {
        let due = start + period * u32::try_from(n)?;
        tokio::time::sleep_until(due).await;
        let host = host.clone();
        tasks.push(tokio::spawn(async move {
            let late = due.elapsed();
            anyhow::Ok((time_new_room(&host, n).await?, late))
        }));
    }
    let (mut times, mut lags) = (Vec::with_capacity(rooms), Vec::with_capacity(rooms));
    for task in tasks {
        let (time, late) = task.await??;
        times.push(time);
        lags.push(late);
    }
    Ok((times, lags))
}

/// Idle connections: `connections` over `rooms`; server memory per
/// connection (RSS and PSS growth over the idle server).
pub async fn connections(connections: usize, rooms: usize) -> anyhow::Result<()> {
    // partyhost twice: with every room's instance live, and hibernating (the
    // example manifest's setting, made for idle sockets: instances go, the
    // sockets and the room's state stay).
    let (mut per_connection, mut proportional) = (Vec::new(), Vec::new());
    for server in [Some(false), Some(true), None] {
        let host = match server {
            Some(hibernate) => start_partyhost(true, hibernate).await?,
            None => Server::Native.start(true).await?,
        };
        let pid = host.pid()?;
        let (base, base_pss) = (rss_bytes(pid)?, pss_bytes(pid)?);
        let mut sockets = Vec::with_capacity(connections);
        for i in 0..connections {
            let mut socket = connect(&host, &format!("idle-{}", i % rooms)).await?;
            next_text(&mut socket).await?;
            sockets.push(socket);
        }
        // Long enough for hibernating rooms to pass their idle timeout.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let per_socket = |now: u64, base: u64| now.saturating_sub(base) as f64 / connections as f64 / 1024.0;
        per_connection.push(per_socket(rss_bytes(pid)?, base));
        proportional.push(per_socket(pss_bytes(pid)?, base_pss));
    }
    let row = |measure, figures: &[f64], i: usize| Row {
        measure,
        partyhost: figures[i],
        native: figures[2],
        unit: "KiB",
    };
    print_table(
        &format!("Idle connections: {connections} over {rooms} rooms (server RSS and PSS growth)"),
        &[
            row("RSS per connection, instances live", &per_connection, 0),
            row("PSS per connection, instances live", &proportional, 0),
            row("RSS per connection, hibernate = true", &per_connection, 1),
            row("PSS per connection, hibernate = true", &proportional, 1),
        ],
        0.0,
    );
    Ok(())
}

/// One client sends `count` reactions to `host` one at a time (room `rtt`):
/// reaction -> update.
pub async fn round_trip_on(host: &ChildHost, count: usize) -> anyhow::Result<Percentiles> {
    let mut socket = connect(host, "rtt").await?;
    next_text(&mut socket).await?;
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        send_reaction(&mut socket).await?;
        next_text(&mut socket).await?;
        times.push(t.elapsed());
    }
    Ok(Percentiles::of(&mut times))
}

/// Guest call overhead: one client, one reaction at a time, limiter off:
/// the round trip through each server.
pub async fn round_trip(count: usize) -> anyhow::Result<()> {
    let mut results = Vec::new();
    for server in Server::BOTH {
        let host = server.start(false).await?;
        results.push(round_trip_on(&host, count).await?);
    }
    let (p, n) = (&results[0], &results[1]);
    print_table(
        &format!("Round trip: one client, {count} reactions one at a time (guest call + commit vs. plain)"),
        &[
            Row { measure: "reaction -> update p50", partyhost: us(p.p50), native: us(n.p50), unit: "µs" },
            Row { measure: "reaction -> update p99", partyhost: us(p.p99), native: us(n.p99), unit: "µs" },
        ],
        0.0,
    );
    Ok(())
}
