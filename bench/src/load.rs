//! The load generator: WebSocket clients that speak the reactions protocol,
//! and the two servers under test as child processes.

use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

use crate::host::ChildHost;
use crate::stats::ProcCpu;

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub const REACTION: &str = r#"{"type":"reaction","kind":"clap"}"#;

/// Which server a scenario runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Partyhost,
    Native,
}

impl Server {
    pub const BOTH: [Server; 2] = [Server::Partyhost, Server::Native];

    /// Starts the server, with the example-reactions limiter on or off.
    /// partyhost's own per-client message rate limit is lifted: the native
    /// server has none, and the throughput scenario sends flat out.
    pub async fn start(self, limiter: bool) -> anyhow::Result<ChildHost> {
        match self {
            Self::Partyhost => start_partyhost(limiter, false).await,
            Self::Native => ChildHost::start_native(limiter).await,
        }
    }
}

/// partyhost serving reactions; with `hibernate`, as the example manifest
/// ships it (`hibernate = true`), with a 200 ms idle timeout so a scenario
/// sees its idle rooms evicted quickly.
pub async fn start_partyhost(limiter: bool, hibernate: bool) -> anyhow::Result<ChildHost> {
    let wasm = crate::host::reactions_wasm()?;
    let cooldown = if limiter { 100 } else { 0 };
    let idle = if hibernate { "idle_timeout_ms = 200\n" } else { "" };
    let toml = format!(
        "name = \"bench\"\n[rooms]\nmax_live_instances = 100000\n{idle}\
         [limits]\nmessages_per_second = 1000000\n[parties.reactions]\nwasm = {:?}\nhibernate = {hibernate}\n\
         [parties.reactions.vars]\nRATE_LIMIT_MS = \"{cooldown}\"\n",
        wasm.display().to_string()
    );
    ChildHost::start(&toml).await
}

pub async fn connect(host: &ChildHost, room: &str) -> anyhow::Result<Socket> {
    let (socket, _) =
        tokio_tungstenite::connect_async(host.url(&format!("/parties/reactions/{room}"))).await?;
    Ok(socket)
}

/// The next text message, or an error after 10 s.
pub async fn next_text(socket: &mut Socket) -> anyhow::Result<String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next()).await? {
            Some(Ok(Message::Text(text))) => return Ok(text.to_string()),
            Some(Ok(_)) => {}
            other => anyhow::bail!("expected a message, got {other:?}"),
        }
    }
}

pub async fn send_reaction(socket: &mut Socket) -> anyhow::Result<()> {
    socket.send(Message::text(REACTION)).await?;
    Ok(())
}

/// One room's throughput: a client keeps `window` reactions in flight for
/// `seconds`; the rate of updates that come back.
pub async fn accepted_reactions_per_second(
    host: &ChildHost,
    window: usize,
    seconds: u64,
) -> anyhow::Result<f64> {
    let mut socket = connect(host, "throughput").await?;
    next_text(&mut socket).await?;
    for _ in 0..window {
        send_reaction(&mut socket).await?;
    }
    let started = Instant::now();
    let mut accepted = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        next_text(&mut socket).await?;
        accepted += 1;
        send_reaction(&mut socket).await?;
    }
    Ok(accepted as f64 / started.elapsed().as_secs_f64())
}

/// CPU time this process has used (user + system).
pub fn own_cpu() -> Duration {
    ProcCpu::of("self").total()
}

/// Measures the generator's own CPU over a piece of work.
pub struct CpuMeter {
    cpu: Duration,
    wall: Instant,
}

impl CpuMeter {
    pub fn start() -> Self {
        Self { cpu: own_cpu(), wall: Instant::now() }
    }

    /// Generator CPU as a share of one core since `start`.
    pub fn share(&self) -> f64 {
        (own_cpu() - self.cpu).as_secs_f64() / self.wall.elapsed().as_secs_f64()
    }
}
