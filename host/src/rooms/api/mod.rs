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
use crate::sandbox::{GuestOutput, RoomApi, host};

impl host::Types for RoomState {}

impl RoomApi for RoomState {
    fn begin_call(&mut self) {
        RoomState::begin_call(self);
    }

    fn call_times(&self) -> Option<std::sync::Arc<crate::metrics::CallTimes>> {
        self.calls.clone()
    }

    fn output(&self) -> GuestOutput {
        RoomState::output(self)
    }

    fn totals(&self) -> crate::budget::Totals {
        self.totals.clone()
    }
}
