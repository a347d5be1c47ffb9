//! The only way into a room: a cloneable handle on its bounded mailbox.

use anyhow::{Context, anyhow};
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

/// What a room is asked to do.
#[derive(Debug)]
pub enum RoomMsg {
    Connect(Connect),
    Message {
        conn: ConnectionId,
        socket: u64,
        msg: Message,
    },
    Close {
        conn: ConnectionId,
        socket: u64,
        code: u16,
        reason: String,
    },
    Error {
        conn: ConnectionId,
        socket: u64,
        error: String,
    },
    Request {
        request: Request,
        reply: oneshot::Sender<Response>,
    },
}

/// A cheap, cloneable reference to a running room.
#[derive(Clone, Debug)]
pub struct RoomHandle {
    pub(super) key: RoomKey,
    pub(super) tx: mpsc::Sender<RoomMsg>,
}

impl RoomHandle {
    pub fn key(&self) -> &RoomKey {
        &self.key
    }

    /// Queues `msg`, waiting while the mailbox is full.
    ///
    /// # Errors
    /// When the room has stopped (shutdown, or it failed to load).
    pub async fn send(&self, msg: RoomMsg) -> anyhow::Result<()> {
        self.tx
            .send(msg)
            .await
            .map_err(|_| anyhow!("room {} has stopped", self.key))
    }

    /// Queues a request at once, so requests one room makes reach their
    /// target in the order it made them; only when the mailbox is full does
    /// the request wait in a task of its own. The receiver gets the response.
    pub fn enqueue_request(&self, request: Request) -> oneshot::Receiver<Response> {
        let (reply, response) = oneshot::channel();
        match self.tx.try_send(RoomMsg::Request { request, reply }) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(msg)) => {
                let tx = self.tx.clone();
                tokio::spawn(async move { tx.send(msg).await });
            }
        }
        response
    }

    /// Runs an HTTP request through the room's `on-request`.
    ///
    /// # Errors
    /// When the room stops before it answers.
    pub async fn request(&self, request: Request) -> anyhow::Result<Response> {
        let (reply, response) = oneshot::channel();
        self.send(RoomMsg::Request { request, reply }).await?;
        response
            .await
            .with_context(|| format!("room {} stopped before answering", self.key))
    }
}
