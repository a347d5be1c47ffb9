//! Rooms: one actor per live room, and the registry that finds or spawns
//! them.
//!
//! - `registry.rs`: [`Rooms`], the map from room key to handle.
//! - `handle.rs`: [`RoomHandle`] and [`RoomMsg`], the only way into a room;
//!   its mailbox is bounded in messages and in bytes ([`Weight`]).
//! - `queue.rs`: a socket's outgoing queue, bounded in frames and bytes.
//! - `room.rs`: the actor loop: event -> guest call -> commit -> release.
//! - `instances.rs`: the live-instance cap's bookkeeping.
//! - `state.rs`: [`RoomState`], what outlives a guest instance.
//! - `tail.rs`: [`Tail`], a project's live log for `partyhost tail`.
//! - `limit_hits.rs`: [`LimitHits`], how often each limit stopped something.
//! - `gate.rs`: `on-before-connect` / `on-before-request`, run before a room.
//! - `api/`: the WIT imports, implemented on [`RoomState`].
//!
//! Rooms never see axum: the http module turns sockets into [`RoomMsg`]s and
//! drains [`Outgoing`] frames.

mod api;
mod gate;
mod handle;
mod instances;
mod limit_hits;
mod queue;
mod registry;
mod room;
mod state;
mod tail;

pub use gate::Gate;
pub use handle::{Connect, Departure, Placement, ROOM_MAILBOX, RoomHandle, RoomMsg, Weight};
pub use limit_hits::{Limit, LimitHits};
pub use queue::{QueueReceiver, QueueSender, queue};
pub use registry::{Cluster, LoadedParty, RoomInfo, RoomStats, Rooms, RoomsConfig};
pub use room::error_response;
pub use state::{Outgoing, RoomState};
pub use tail::{MAX_LISTENERS as MAX_TAIL_LISTENERS, Tail, TailEvent};

use std::sync::atomic::{AtomicU64, Ordering};

/// Close code: the server is going away (shutdown).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code: the room failed to handle the connection.
pub const CLOSE_INTERNAL_ERROR: u16 = 1011;
/// Close code: the client read too slowly and its queue overflowed.
pub const CLOSE_TRY_AGAIN: u16 = 1013;
/// Close code: the client broke the WebSocket protocol.
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Close code: the client broke a policy (sent messages too fast).
pub const CLOSE_POLICY: u16 = 1008;
/// Close code: a message was larger than the limit.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code: the room moved to another node of the cluster (reconnect).
pub const CLOSE_SERVICE_RESTART: u16 = 1012;

/// A number unique to each socket in this process.
pub fn next_socket_serial() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}
