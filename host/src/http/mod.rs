//! HTTP and WebSocket front: axum routes that turn requests and sockets
//! into room messages.
//!
//! - `routes.rs`: `/parties/<party>/<room>[/...]` and the legacy
//!   `/party/<room>[/...]` (the `main` party), for upgrades and plain HTTP.
//! - `socket.rs`: one task per WebSocket, between the client and its room.
//! - `assets.rs`: the manifest's `serve` folder at `/` (the fallback route).
//! - `error.rs`: [`ApiError`], the one error type of every route.

mod assets;
mod error;
mod routes;
mod socket;

pub use error::ApiError;

use axum::Router;
use std::sync::Arc;

use crate::rooms::Rooms;

/// What every route needs.
#[derive(Clone)]
pub struct AppState {
    pub rooms: Arc<Rooms>,
    /// Cancelled at shutdown; socket tasks close their clients with 1001.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// The host's router.
pub fn router(state: AppState) -> Router {
    routes::router().with_state(state)
}
