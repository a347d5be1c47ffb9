//! The only way into a room: a cloneable handle on its bounded mailbox.

use anyhow::anyhow;
use tokio::sync::mpsc::error::TrySendError;
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
    },
    /// From the registry: too many instances are alive; drop this room's
    /// instance if it is idle.
    Evict,
}

/// A cheap, cloneable reference to a running room. Send through
/// [`Rooms::send`](super::Rooms::send) when the room may have stopped since
/// the handle was taken; a socket task, whose open connection keeps its
/// room running, sends through the handle directly.
#[derive(Clone, Debug)]
pub struct RoomHandle {
    pub(super) key: RoomKey,
    pub(super) tx: mpsc::Sender<RoomMsg>,
    /// Which run of the room this is; a retired room's handle never
    /// matches the next run's.
    pub(super) generation: u64,
}

impl RoomHandle {
    pub fn key(&self) -> &RoomKey {
        &self.key
    }

    /// Queues `msg`, waiting while the mailbox is full. Most messages find
    /// room at once; the wait is boxed so that a socket task, one per
    /// connection, does not carry it in its state all its life.
    ///
    /// # Errors
    /// When the room has stopped.
    pub async fn send(&self, msg: RoomMsg) -> anyhow::Result<()> {
        let stopped = || anyhow!("room {} has stopped", self.key);
        match self.tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(TrySendError::Closed(_)) => Err(stopped()),
            Err(TrySendError::Full(msg)) => Box::pin(self.tx.send(msg)).await.map_err(|_| stopped()),
        }
    }

    /// Queues `msg` without waiting: at once if the mailbox has room, else
    /// from a task of its own (for callers that cannot wait, like `Drop`).
    /// Nothing happens if the room has stopped.
    pub fn post(&self, msg: RoomMsg) {
        if let Err(TrySendError::Full(msg)) = self.tx.try_send(msg) {
            let tx = self.tx.clone();
            // No runtime means the host is gone, and the room with it.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { tx.send(msg).await });
            }
        }
    }
}
