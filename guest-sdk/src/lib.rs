//! Write [partyhost](https://github.com/) rooms in Rust.
//!
//! A party is a type implementing [`Party`]: PartyKit's `Party.Server`, one
//! optional async method per event. [`export_party!`] turns it into the
//! WebAssembly component the host runs, one instance per room.
//!
//! ```ignore
//! use partyhost_guest::{Connection, ConnectionContext, Message, Party, Request, Response, Room, export_party};
//! use std::cell::Cell;
//!
//! /// Counts messages per room and tells everyone the total.
//! struct Counter {
//!     room: Room,
//!     count: Cell<u64>,
//! }
//!
//! impl Party for Counter {
//!     fn new(room: Room) -> Self {
//!         Self { room, count: Cell::new(0) }
//!     }
//!
//!     async fn on_start(&self) {
//!         self.count.set(self.room.storage().get("count").unwrap_or(0));
//!     }
//!
//!     async fn on_connect(&self, conn: Connection, _ctx: ConnectionContext) {
//!         conn.send(self.count.get().to_string());
//!     }
//!
//!     async fn on_message(&self, _msg: Message, _sender: Connection) {
//!         self.count.set(self.count.get() + 1);
//!         let _ = self.room.storage().put("count", &self.count.get());
//!         self.room.broadcast(self.count.get().to_string(), &[]);
//!     }
//!
//!     async fn on_request(&self, _req: Request) -> Response {
//!         Response::json(&self.count.get())
//!     }
//! }
//!
//! export_party!(Counter);
//! ```
//!
//! Build it as a `cdylib` for `wasm32-wasip2` and name the `.wasm` in the
//! manifest. Handlers take `&self`: keep mutable state in `Cell`/`RefCell`,
//! since a handler that awaits [`Room::fetch`] lets others run meanwhile.
//! Storage calls are synchronous: the host keeps the room's data in memory.

#![deny(missing_docs)]

#[doc(hidden)]
pub mod bindings;
mod connection;
mod error;
mod executor;
mod http;
mod join;
mod message;
mod room;
mod storage;

pub use connection::Connection;
pub use error::Error;
pub use http::{Request, Response};
pub use join::join_all;
pub use message::Message;
pub use room::{Lobby, Room};
pub use storage::{ListOptions, Storage};

/// What a client sent when it connected.
#[derive(Debug, Clone)]
pub struct ConnectionContext {
    /// The WebSocket upgrade request (URL with query, headers).
    pub request: Request,
}

/// How a connection closed, for [`Party::on_close`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// The WebSocket close code (1006: the connection dropped).
    pub code: u16,
    /// The close reason, possibly empty.
    pub reason: String,
    /// Whether a close frame was exchanged (false for 1006).
    pub was_clean: bool,
}

/// About an alarm that fired, for [`Party::on_alarm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlarmInfo {
    /// 0 the first time; 1 to 6 when the host runs a failed `on_alarm`
    /// again (after 2, 4, ... 64 seconds, as Durable Objects retry).
    pub retry_count: u32,
}

/// A room's server, mirroring PartyKit's `Party.Server`. Every handler is
/// optional.
#[allow(async_fn_in_trait)]
pub trait Party: Sized + 'static {
    /// Creates the party for a room; runs once per instance, before
    /// `on_start`.
    fn new(room: Room) -> Self;

    /// Runs before any other handler of a fresh instance: after the host
    /// starts, after the room was evicted, after a crash. Load state here.
    async fn on_start(&self) {}

    /// A client connected.
    async fn on_connect(&self, conn: Connection, ctx: ConnectionContext) {
        let _ = (conn, ctx);
    }

    /// A client sent a message.
    async fn on_message(&self, message: Message, sender: Connection) {
        let _ = (message, sender);
    }

    /// A client's connection closed. During the call `conn`'s state and
    /// tags can still be read.
    async fn on_close(&self, conn: Connection, close: Close) {
        let _ = (conn, close);
    }

    /// A client's connection failed.
    async fn on_error(&self, conn: Connection, error: String) {
        let _ = (conn, error);
    }

    /// An HTTP request to the room, from a client or from another room.
    async fn on_request(&self, request: Request) -> Response {
        let _ = request;
        Response::not_found()
    }

    /// The alarm set with `Storage::set_alarm` fired. If this panics (or
    /// breaks a limit), the host runs it again later: see [`AlarmInfo`].
    async fn on_alarm(&self, info: AlarmInfo) {
        let _ = info;
    }

    /// PartyKit's static `onBeforeConnect`: runs before a WebSocket reaches
    /// the room, in an instance of its own (no `self`, no storage): return
    /// the request to pass on (perhaps with a header added, such as a
    /// verified user id) or `Err(response)` to refuse, which the client
    /// gets as an HTTP status before any upgrade. Runs only when named in
    /// `export_party!(MyParty, on_before_connect)`.
    async fn on_before_connect(request: Request, lobby: Lobby) -> Result<Request, Response> {
        let _ = lobby;
        Ok(request)
    }

    /// PartyKit's static `onBeforeRequest`: the same, before an HTTP
    /// request reaches the room. Runs only when named in
    /// `export_party!(MyParty, on_before_request)`.
    async fn on_before_request(request: Request, lobby: Lobby) -> Result<Request, Response> {
        let _ = lobby;
        Ok(request)
    }

    /// Tags for a connecting client, to find it later with
    /// `Room::connections_tagged`. Fixed for the connection's life.
    fn get_connection_tags(&self, conn: &Connection, ctx: &ConnectionContext) -> Vec<String> {
        let _ = (conn, ctx);
        Vec::new()
    }
}

/// Writes a line to the host's log, tagged with the party and room.
pub mod log {
    use crate::bindings::partyhost::party::runtime::{LogLevel, log};

    /// Logs at debug level.
    pub fn debug(message: &str) {
        log(LogLevel::Debug, message);
    }
    /// Logs at info level.
    pub fn info(message: &str) {
        log(LogLevel::Info, message);
    }
    /// Logs at warn level.
    pub fn warn(message: &str) {
        log(LogLevel::Warn, message);
    }
    /// Logs at error level.
    pub fn error(message: &str) {
        log(LogLevel::Error, message);
    }
}

/// Wall-clock time in milliseconds since the Unix epoch (`Date.now()`).
pub fn now() -> u64 {
    bindings::partyhost::party::runtime::now_ms()
}

/// `len` cryptographically random bytes.
pub fn random_bytes(len: u32) -> Vec<u8> {
    bindings::partyhost::party::runtime::random_bytes(len)
}

/// Exports a [`Party`] type as the component's handlers, with the gates it
/// implements named after it: `export_party!(Chat)`,
/// `export_party!(Chat, on_before_connect, on_before_request)`. A gate not
/// named is never called, and costs nothing. Naming `hibernate` makes the
/// party's rooms hibernate (PartyKit's `options.hibernate`), as the
/// manifest's `hibernate = true` does.
#[macro_export]
macro_rules! export_party {
    ($party:ty $(, $gate:ident)* $(,)?) => {
        #[doc(hidden)]
        pub struct __PartyhostExports;

        impl $crate::__private::Handlers for __PartyhostExports {
            fn on_start(task: u64) {
                $crate::__private::on_start::<$party>(task)
            }
            fn on_connect(task: u64, conn: String, request: $crate::__private::WitRequest) {
                $crate::__private::on_connect::<$party>(task, conn, request)
            }
            fn on_message(task: u64, conn: String, msg: $crate::__private::WitMessage) {
                $crate::__private::on_message::<$party>(task, conn, msg)
            }
            fn on_close(task: u64, conn: String, code: u16, reason: String, was_clean: bool) {
                $crate::__private::on_close::<$party>(task, conn, code, reason, was_clean)
            }
            fn on_error(task: u64, conn: String, error: String) {
                $crate::__private::on_error::<$party>(task, conn, error)
            }
            fn on_request(task: u64, request: $crate::__private::WitRequest) -> $crate::__private::RequestOutcome {
                $crate::__private::on_request::<$party>(task, request)
            }
            fn on_alarm(task: u64, retry_count: u32) {
                $crate::__private::on_alarm::<$party>(task, retry_count)
            }
            fn traits() -> $crate::__private::PartyTraits {
                $crate::__private::PartyTraits::empty() $(| $crate::__gate_flag!($gate))*
            }
            fn on_before_connect(task: u64, request: $crate::__private::WitRequest) -> $crate::__private::GateOutcome {
                $crate::__private::on_before_connect::<$party>(task, request)
            }
            fn on_before_request(task: u64, request: $crate::__private::WitRequest) -> $crate::__private::GateOutcome {
                $crate::__private::on_before_request::<$party>(task, request)
            }
            fn get_connection_tags(conn: String, request: $crate::__private::WitRequest) -> Vec<String> {
                $crate::__private::get_connection_tags::<$party>(conn, request)
            }
            fn resume(fetch: u64, result: Result<$crate::__private::WitResponse, String>) {
                $crate::__private::resume(fetch, result)
            }
        }

        $crate::bindings::__export_party_world!(__PartyhostExports with_types_in $crate::__private::bindings);
    };
}

/// The trait flag of a gate (or `hibernate`) named in `export_party!`.
#[doc(hidden)]
#[macro_export]
macro_rules! __gate_flag {
    (hibernate) => {
        $crate::__private::PartyTraits::HIBERNATE
    };
    (on_before_connect) => {
        $crate::__private::PartyTraits::BEFORE_CONNECT
    };
    (on_before_request) => {
        $crate::__private::PartyTraits::BEFORE_REQUEST
    };
    ($other:ident) => {
        compile_error!(concat!(
            "export_party!: `",
            stringify!($other),
            "` is not a gate; name on_before_connect, on_before_request or hibernate"
        ))
    };
}

#[doc(hidden)]
pub mod __private;
