//! The only way into a room: a cloneable handle on its bounded mailbox.

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::ids::{ConnectionId, RoomKey};
use crate::sandbox::{Message, Request, Response};

/// Mailbox size of a room, in messages. When it is full, senders wait: a
/// socket task stops reading from its client (TCP pushes back), an HTTP
/// request waits. The mailbox is also bounded in bytes: see [`Weight`].
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
    pub sender: super::queue::QueueSender,
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
        weight: Weight,
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
        weight: Weight,
    },
    /// From the registry: too many instances are alive; drop this room's
    /// instance if it is idle.
    Evict,
    /// From the registry: this node's cluster lease lapsed; a room loaded
    /// in an earlier term stops (its sockets are told 1012).
    Fence,
}

/// Where a room runs, as its storage load found out.
#[derive(Debug, Clone)]
pub enum Placement {
    /// The storage is still loading (in a cluster: being claimed).
    Loading,
    /// Here: the room's storage is loaded (in a cluster: claimed).
    Here,
    /// Another node owns the room: requests go there.
    Elsewhere(crate::storage::OwnedElsewhere),
    /// The load failed; the next caller starts the room afresh.
    Failed,
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
    /// Bytes of client messages and request bodies that may wait in the
    /// mailbox (`[rooms] mailbox_kib`).
    pub(super) bytes: Arc<Semaphore>,
    pub(super) bytes_capacity: usize,
    /// What the room last reported of itself, for listings.
    pub(super) gauges: Arc<RoomGauges>,
    /// Set once the room's storage has loaded, or it turned out to live
    /// elsewhere.
    pub(super) placement: tokio::sync::watch::Receiver<Placement>,
}

/// A running room's figures, written by the room after each event and read
/// by listings without asking the room.
#[derive(Debug, Default)]
pub struct RoomGauges {
    pub(super) connections: std::sync::atomic::AtomicUsize,
    pub(super) storage_bytes: std::sync::atomic::AtomicUsize,
}

impl RoomHandle {
    /// The room this handle reaches.
    pub fn key(&self) -> &RoomKey {
        &self.key
    }

    /// Where the room runs, once its storage load has told.
    pub async fn placement(&self) -> Placement {
        let mut placement = self.placement.clone();
        match placement.wait_for(|p| !matches!(p, Placement::Loading)).await {
            Ok(placed) => placed.clone(),
            Err(_) => Placement::Failed,
        }
    }

    /// Waits until `len` more bytes fit in the mailbox (a message larger
    /// than the whole mailbox waits for it to be empty), and reserves them
    /// until the room has handled the message carrying the [`Weight`].
    pub async fn weigh(&self, len: usize) -> Weight {
        let capacity = self.bytes_capacity;
        let permits = u32::try_from(len.min(capacity)).unwrap_or(u32::MAX);
        // The semaphore is never closed, so this only fails if it were.
        Weight { _held: self.bytes.clone().acquire_many_owned(permits).await.ok() }
    }
}

/// Bytes a message holds in its room's mailbox, given back when the room
/// is done with it (when the message is dropped). Only what clients send is
/// weighed: 1,024 messages of a MiB each would pin a GiB per room.
#[derive(Debug, Default)]
pub struct Weight {
    _held: Option<OwnedSemaphorePermit>,
}
