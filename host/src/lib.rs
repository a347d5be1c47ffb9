//! partyhost: a self-hosted, PartyKit-compatible real-time rooms server whose
//! room code runs as sandboxed WebAssembly components.
//!
//! # Layout
//! A message travels `http` -> `rooms` -> `sandbox` and back:
//! - [`manifest`]: `partykit.toml` into a validated [`manifest::Deployment`].
//! - [`http`]: axum routes; one task per WebSocket.
//! - [`rooms`]: one actor per live room, owning its guest instance, its
//!   connections and its storage cache; the registry that finds or spawns it.
//! - [`sandbox`]: the only wasmtime user: engine, limits, compile cache,
//!   bindings for `wit/party.wit`.
//! - [`storage`]: the SQLite file and the per-room cache.
//! - [`ids`]: validated names passed between modules.
//!
//! [`run`] is the whole server; the binary and the tests both call it.

pub mod http;
pub mod ids;
pub mod manifest;
pub mod rooms;
pub mod sandbox;
pub mod storage;

use anyhow::Context;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use manifest::{Deployment, LimitsSpec};
use rooms::{LoadedParty, Rooms};
use sandbox::{Limits, Sandbox};
use storage::Db;

/// Serves `deployment` on `listener` until `shutdown` is cancelled, then
/// closes every socket with 1001 and returns once all rooms have stopped.
///
/// # Errors
/// When the data directory, the storage file or a party's component cannot
/// be loaded; the message names which.
pub async fn run(
    deployment: Deployment,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let limits = limits_from(&deployment.limits);
    let data_dir = &deployment.data_dir;
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let db = Arc::new(Db::open(&data_dir.join("storage.sqlite"))?);
    let sandbox = Sandbox::new(&data_dir.join("compiled"))?;
    let mut parties = HashMap::new();
    for (name, spec) in &deployment.parties {
        let started = std::time::Instant::now();
        let code = sandbox.load(name.as_str(), &spec.wasm, limits.clone())?;
        info!(party = %name, wasm = %spec.wasm.display(), elapsed = ?started.elapsed(), "party loaded");
        let vars = spec.vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        parties.insert(
            name.clone(),
            LoadedParty {
                code: Arc::new(code),
                vars,
            },
        );
    }

    let tracker = TaskTracker::new();
    let rooms = Rooms::new(deployment, parties, db, shutdown.clone(), tracker.clone());
    let alarms = rooms.schedule_stored_alarms()?;
    if alarms > 0 {
        info!(alarms, "scheduled stored alarms");
    }
    let app = http::router(http::AppState {
        rooms,
        limits: Arc::new(limits),
        shutdown: shutdown.clone(),
    });
    let addr = listener.local_addr().context("reading the listening address")?;
    info!(%addr, "serving");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await
        .context("serving HTTP")?;
    tracker.close();
    tracker.wait().await;
    drop(sandbox);
    info!("stopped");
    Ok(())
}

/// The manifest's `[limits]` over the host defaults.
fn limits_from(spec: &LimitsSpec) -> Limits {
    let mut limits = Limits::default();
    if let Some(ms) = spec.cpu_ms {
        limits.cpu_per_event = Duration::from_millis(ms);
    }
    if let Some(mib) = spec.memory_mib {
        limits.memory_bytes = usize::try_from(mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
    }
    if let Some(kib) = spec.message_kib {
        limits.message_bytes = usize::try_from(kib.saturating_mul(1 << 10)).unwrap_or(usize::MAX);
    }
    if let Some(ms) = spec.fetch_timeout_ms {
        limits.fetch_timeout = Duration::from_millis(ms);
    }
    limits
}
