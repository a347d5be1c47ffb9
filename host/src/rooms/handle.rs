//! The only way into a room: a cloneable handle on its bounded mailbox.

use tokio::sync::{mpsc, oneshot};

use super::state::Outgoing;
use crate::ids::{ConnectionId, RoomKey};
use crate::sandbox::{Message, Request, Response};

/// Mailbox size of a room. When it is full, senders wait: a socket task
/// stops reading from its client (TCP pushes back), an HTTP request waits.
pub const ROOM_MAILBOX: usize = 1024;

/// A new WebSocket for the room.
#[derive(Debug)]
pub struct Connect {
    pub conn: ConnectionId,
    /// Unique per socket; later messages name it so that a stale socket
    /// cannot act for a newer one with the same connection id.
    pub socket: u64,
    /// The upgrade request, as the guest will see it.
    pub request: Request,
    /// Where the room queues frames for this socket.
    pub sender: mpsc::Sender<Outgoing>,
    /// Cancelled by the room when the socket's queue overflows.
    pub too_slow: tokio_util::sync::CancellationToken,
}

/// How a connection ended.
#[derive(Debug)]
pub enum Departure {
    /// Closed, by either side, with a WebSocket close code and reason.
    Closed { code: u16, reason: String },
    /// Failed (protocol error, oversized message, write error).
    Failed(String),
}

/// What a room is asked to do. The rare, large payloads are boxed: every
/// room's mailbox and every socket task's state is sized by the largest.
#[derive(Debug)]
pub enum RoomMsg {
    Connect(Box<Connect>),
    Message {
        conn: ConnectionId,
        socket: u64,
        msg: Message,
    },
    /// A socket ended; the room runs `on-close` or `on-error` for it.
    Departed {
        conn: ConnectionId,
        socket: u64,
        how: Departure,
    },
    Request {
        request: Box<Request>,
        reply: oneshot::Sender<Response>,
        /// Room-to-room requests that led here: 0 from a client.
        hops: u32,
    },
    /// From the registry: too many instances are alive; drop this room's
    /// instance if it is idle.
    Evict,
}

/// A cheap, cloneable reference to a running room. Send by key with
/// [`Rooms::send`](super::Rooms::send), or through a kept handle with
/// [`Rooms::send_via`](super::Rooms::send_via), which follows the room to
/// its next run if it stopped.
#[derive(Clone, Debug)]
pub struct RoomHandle {
    pub(super) key: RoomKey,
    pub(super) tx: mpsc::Sender<RoomMsg>,
    /// Which run of the room this is; a retired room's handle never
    /// matches the next run's.
    pub(super) generation: u64,
}
