//! One socket's outgoing queue, between its room (which queues frames and
//! never waits) and its socket task (which writes them). Bounded both in
//! frames and in bytes: frames may be up to a MiB each, so a count alone
//! would let a client that stops reading pin a GiB. A full queue tells the
//! room the client is too slow; the room then closes it with 1013.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::mpsc;

use super::state::Outgoing;

/// The room's end.
#[derive(Debug, Clone)]
pub struct QueueSender {
    frames: mpsc::Sender<Outgoing>,
    queued: Arc<AtomicUsize>,
    /// Every queue of the project together (see `RoomStats::queued_bytes`).
    all_queues: Arc<AtomicUsize>,
    max_bytes: usize,
}

/// The socket task's end.
#[derive(Debug)]
pub struct QueueReceiver {
    frames: mpsc::Receiver<Outgoing>,
    queued: Arc<AtomicUsize>,
    all_queues: Arc<AtomicUsize>,
}

/// The queue had no room for the frame.
#[derive(Debug)]
pub struct QueueFull;

/// A queue of at most `max_frames` frames and `max_bytes` bytes (one frame
/// always fits in an empty queue, whatever its size). `all_queues` counts
/// the bytes of many queues together.
pub fn queue(
    max_frames: usize,
    max_bytes: usize,
    all_queues: Arc<AtomicUsize>,
) -> (QueueSender, QueueReceiver) {
    let (frames, receiver) = mpsc::channel(max_frames.max(1));
    let queued = Arc::new(AtomicUsize::new(0));
    let sender = QueueSender { frames, queued: queued.clone(), all_queues: all_queues.clone(), max_bytes };
    (sender, QueueReceiver { frames: receiver, queued, all_queues })
}

impl QueueSender {
    /// Queues `frame` unless that would pass a bound. Only the room sends,
    /// so checking then adding cannot race another sender past the bound.
    pub fn try_send(&self, frame: Outgoing) -> Result<(), QueueFull> {
        let len = frame.bytes();
        let queued = self.queued.load(Ordering::Acquire);
        if queued > 0 && queued.saturating_add(len) > self.max_bytes {
            return Err(QueueFull);
        }
        self.queued.fetch_add(len, Ordering::AcqRel);
        self.all_queues.fetch_add(len, Ordering::AcqRel);
        self.frames.try_send(frame).map_err(|_| {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            self.all_queues.fetch_sub(len, Ordering::AcqRel);
            QueueFull
        })
    }

    /// Bytes waiting now.
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

impl QueueReceiver {
    /// The next frame; `None` once the room has dropped its end.
    pub async fn recv(&mut self) -> Option<Outgoing> {
        let frame = self.frames.recv().await?;
        Some(self.taken(frame))
    }

    /// The next frame if one is waiting.
    pub fn try_recv(&mut self) -> Option<Outgoing> {
        let frame = self.frames.try_recv().ok()?;
        Some(self.taken(frame))
    }

    fn taken(&self, frame: Outgoing) -> Outgoing {
        self.queued.fetch_sub(frame.bytes(), Ordering::AcqRel);
        self.all_queues.fetch_sub(frame.bytes(), Ordering::AcqRel);
        frame
    }
}

impl Drop for QueueReceiver {
    /// Frames never written leave the count with their queue.
    fn drop(&mut self) {
        self.frames.close();
        while let Ok(frame) = self.frames.try_recv() {
            self.taken(frame);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn bounded_in_bytes_but_one_frame_always_fits() {
        let all = Arc::new(AtomicUsize::new(0));
        let (sender, mut receiver) = queue(100, 10, all.clone());
        let frame = |n: usize| Outgoing::Binary(Bytes::from(vec![0; n]));
        assert!(sender.try_send(frame(25)).is_ok(), "an empty queue takes one frame of any size");
        assert!(sender.try_send(frame(1)).is_err(), "over the bytes");
        assert!(receiver.try_recv().is_some());
        assert_eq!(sender.queued_bytes(), 0);
        assert!(sender.try_send(frame(6)).is_ok());
        assert!(sender.try_send(frame(4)).is_ok());
        assert!(sender.try_send(frame(1)).is_err(), "10 bytes queued is the bound");
        assert_eq!(all.load(Ordering::Acquire), 10);
        drop(receiver);
        assert_eq!(all.load(Ordering::Acquire), 0, "a dropped queue's frames leave the count");
    }
}
