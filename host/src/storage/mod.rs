//! Durable room storage: one SQLite file per project by default, or a
//! cluster's PostgreSQL database (`postgres.rs`, with the node's lease in
//! `lease.rs`), and a per-room cache that handlers read and write
//! synchronously.
//!
//! A room's storage is loaded into its [`RoomStorage`] when the room starts.
//! Writes apply to the cache at once (so reads within a handler see them)
//! and are queued; the room commits the queue itself when the SQLite
//! connection is free and the queue small ([`Storage::commit_now`]), else
//! hands it to the [`Storage`] thread, which commits the queues of every room
//! waiting at that moment in one transaction. This module knows nothing of
//! wasmtime or of sockets.

mod cache;
mod db;
mod lease;
mod postgres;
mod writer;

pub use cache::{ListQuery, PendingWrites, RoomStorage};
pub use db::{Db, StoredAlarm};
pub use lease::Lease;
pub use postgres::{ClusterConfig, OwnedElsewhere, OwnershipLost, Postgres};
pub use writer::{CommitHooks, CommitTicket, Storage};
