//! Host-side bindings for `wit/party.wit`.
//!
//! `bindgen!` output stays in a private module; this file re-exports what the
//! rest of the host uses. Exports are called with `call_*_async` so that a
//! guest running past its epoch tick yields to tokio instead of holding a
//! worker thread. Imports are plain synchronous functions: each one touches
//! only in-memory room state and never waits.

mod generated {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "party",
        exports: { default: async },
    });
}

pub use generated::exports::partyhost::party::handlers::Guest as Handlers;
pub use generated::exports::partyhost::party::handlers::{
    GateOutcome, PartyTraits as Traits, RequestOutcome,
};
pub use generated::partyhost::party::runtime::LogLevel;
pub use generated::partyhost::party::storage::ListOptions;
pub use generated::partyhost::party::types::{
    ConnectionInfo, Header, Message, Refusal, Request, Response, Verdict,
};
pub use generated::{Party, PartyPre};

/// The host traits a room's state implements, one per imported interface.
pub mod host {
    pub use super::generated::partyhost::party::{
        alarms::Host as Alarms, connections::Host as Connections, outbound::Host as Outbound,
        room::Host as Room, runtime::Host as Runtime, storage::Host as Storage, tasks::Host as Tasks,
        types::Host as Types,
    };
}

/// Everything a room's state must implement to be linked to a guest.
pub trait RoomApi:
    host::Alarms
    + host::Connections
    + host::Outbound
    + host::Room
    + host::Runtime
    + host::Storage
    + host::Tasks
    + host::Types
    + Send
    + 'static
{
    /// Called as each guest call begins, to refill per-call budgets.
    fn begin_call(&mut self);

    /// The totals the room's instance takes its place and memory from.
    fn totals(&self) -> crate::budget::Totals;

    /// Where the guest's WASI stdout and stderr go.
    fn output(&self) -> super::GuestOutput;

    /// Where the time of each call goes, if anywhere.
    fn call_times(&self) -> Option<std::sync::Arc<crate::metrics::CallTimes>>;
}

impl Message {
    /// Bytes of the payload.
    pub fn len(&self) -> usize {
        match self {
            Self::Text(text) => text.len(),
            Self::Binary(bytes) => bytes.len(),
        }
    }
}
