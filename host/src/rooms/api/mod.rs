//! The room API a guest imports, one file per WIT interface. Each function
//! acts on [`RoomState`](super::state::RoomState) only: no I/O, no waiting.
//! Refusals (too large, unknown connection) are values the guest can handle,
//! never traps.

mod alarms;
mod connections;
mod outbound;
mod room;
mod runtime;
mod storage;
mod tasks;

use super::state::RoomState;
use crate::sandbox::host;

impl host::Types for RoomState {}
