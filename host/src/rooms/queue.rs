//! One socket's outgoing queue, between its room (which queues frames and
//! never waits) and its socket task (which writes them). Bounded both in
//! frames and in bytes: frames may be up to a MiB each, so a count alone
//! would let a client that stops reading pin a GiB. A full queue tells the
//! room the client is too slow; the room then closes it with 1013.
//!
//! A `VecDeque` behind a lock rather than a channel: every idle socket has
//! one, and a tokio channel allocates a block of 32 slots (1.4 KiB here)
//! plus its own state (0.5 KiB) up front and keeps them; this queue keeps
//! at most [`KEPT_CAPACITY`] frames' worth once drained, and nothing
//! before its first frame (docs/benchmarks.md). One room sends and one
//! task receives, so the lock is all but never contended. Wakers are
//! woken and dropped after the lock is released: a waker's code may run
//! anything, this queue included.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker, ready};

use super::state::Outgoing;

/// Frames' worth of buffer a drained queue may keep; a larger one (left by
/// a burst) is freed, so that a socket idle after a burst costs no more
/// than one that never had one.
const KEPT_CAPACITY: usize = 4;

/// The room's end. Dropping the last clone ends the queue: the socket task
/// gets `None` once it has taken the frames already queued.
#[derive(Debug)]
pub struct QueueSender {
    shared: Arc<Shared>,
    max_frames: usize,
    max_bytes: usize,
}

/// The socket task's end.
#[derive(Debug)]
pub struct QueueReceiver {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Every queue of the project together (see `RoomStats::queued_bytes`).
    all_queues: Arc<AtomicUsize>,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Outgoing>,
    /// Bytes of `frames`.
    bytes: usize,
    /// The socket task, waiting for a frame.
    waiting: Option<Waker>,
    /// Clones of the sender alive; at 0 the queue has ended.
    senders: usize,
    receiver_gone: bool,
}

/// The queue had no room for the frame (or its socket task has ended).
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
    let state = State { senders: 1, ..State::default() };
    let shared = Arc::new(Shared { state: Mutex::new(state), all_queues });
    let sender = QueueSender { shared: shared.clone(), max_frames: max_frames.max(1), max_bytes };
    (sender, QueueReceiver { shared })
}

impl Shared {
    /// The state; a panic while it was held cannot leave it half-changed
    /// (every change is a push, a pop or a flag), so poisoning is ignored.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl QueueSender {
    /// Queues `frame` unless that would pass a bound. Never waits.
    pub fn try_send(&self, frame: Outgoing) -> Result<(), QueueFull> {
        let len = frame.bytes();
        let waiting = {
            let mut state = self.shared.state();
            let over_bytes = state.bytes > 0 && state.bytes.saturating_add(len) > self.max_bytes;
            if state.receiver_gone || over_bytes || state.frames.len() >= self.max_frames {
                return Err(QueueFull);
            }
            state.bytes += len;
            state.frames.push_back(frame);
            // Under the lock: the socket task may take the frame, and
            // subtract its bytes, as soon as the lock is released.
            self.shared.all_queues.fetch_add(len, Ordering::Relaxed);
            state.waiting.take()
        };
        if let Some(task) = waiting {
            task.wake();
        }
        Ok(())
    }
}

impl Clone for QueueSender {
    fn clone(&self) -> Self {
        self.shared.state().senders += 1;
        Self { shared: self.shared.clone(), max_frames: self.max_frames, max_bytes: self.max_bytes }
    }
}

impl Drop for QueueSender {
    fn drop(&mut self) {
        let waiting = {
            let mut state = self.shared.state();
            state.senders -= 1;
            if state.senders > 0 {
                return;
            }
            state.waiting.take()
        };
        if let Some(task) = waiting {
            task.wake();
        }
    }
}

impl QueueReceiver {
    /// The next frame; `None` once the room has dropped its end and every
    /// frame it queued has been taken.
    pub async fn recv(&mut self) -> Option<Outgoing> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Cancel-safe: a frame leaves the queue only in a `Ready`. Takes part
    /// in tokio's cooperative budget, as its channels do, so a socket task
    /// kept busy by its room still lets its worker's other tasks run.
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Outgoing>> {
        let coop = ready!(tokio::task::coop::poll_proceed(cx));
        let mut state = self.shared.state();
        if let Some(frame) = self.take(&mut state) {
            coop.made_progress();
            return Poll::Ready(Some(frame));
        }
        if state.senders == 0 {
            return Poll::Ready(None);
        }
        let replaced = match &state.waiting {
            Some(task) if task.will_wake(cx.waker()) => None,
            _ => state.waiting.replace(cx.waker().clone()),
        };
        drop(state);
        drop(replaced);
        Poll::Pending
    }

    /// The next frame if one is waiting.
    pub fn try_recv(&mut self) -> Option<Outgoing> {
        let mut state = self.shared.state();
        self.take(&mut state)
    }

    fn take(&self, state: &mut State) -> Option<Outgoing> {
        let frame = state.frames.pop_front()?;
        state.bytes -= frame.bytes();
        self.shared.all_queues.fetch_sub(frame.bytes(), Ordering::Relaxed);
        if state.frames.is_empty() && state.frames.capacity() > KEPT_CAPACITY {
            state.frames.shrink_to(KEPT_CAPACITY);
        }
        Some(frame)
    }
}

impl Drop for QueueReceiver {
    /// Frames never written leave the count with their queue, and the room
    /// can queue no more.
    fn drop(&mut self) {
        let (frames, waiting) = {
            let mut state = self.shared.state();
            state.receiver_gone = true;
            self.shared.all_queues.fetch_sub(state.bytes, Ordering::Relaxed);
            state.bytes = 0;
            (std::mem::take(&mut state.frames), state.waiting.take())
        };
        drop((frames, waiting));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn frame(n: usize) -> Outgoing {
        Outgoing::Binary(Bytes::from(vec![0; n]))
    }

    #[test]
    fn bounded_in_bytes_but_one_frame_always_fits() {
        let all = Arc::new(AtomicUsize::new(0));
        let (sender, mut receiver) = queue(100, 10, all.clone());
        assert!(sender.try_send(frame(25)).is_ok(), "an empty queue takes one frame of any size");
        assert!(sender.try_send(frame(1)).is_err(), "over the bytes");
        assert!(receiver.try_recv().is_some());
        assert_eq!(sender.shared.state().bytes, 0);
        assert!(sender.try_send(frame(6)).is_ok());
        assert!(sender.try_send(frame(4)).is_ok());
        assert!(sender.try_send(frame(1)).is_err(), "10 bytes queued is the bound");
        assert_eq!(all.load(Ordering::Acquire), 10);
        assert!(receiver.try_recv().is_some());
        assert_eq!(all.load(Ordering::Acquire), 4, "a frame taken leaves the count");
        assert!(sender.try_send(frame(3)).is_ok());
        drop(receiver);
        assert_eq!(all.load(Ordering::Acquire), 0, "a dropped queue's frames leave the count");
        assert!(sender.try_send(frame(1)).is_err(), "nothing is queued for a socket task that has ended");
    }

    #[test]
    fn bounded_in_frames_one_past() {
        let (sender, mut receiver) = queue(3, 1 << 20, Arc::default());
        for _ in 0..3 {
            assert!(sender.try_send(frame(1)).is_ok());
        }
        assert!(sender.try_send(frame(1)).is_err(), "a fourth frame is past the bound of 3");
        assert!(receiver.try_recv().is_some());
        assert!(sender.try_send(frame(1)).is_ok(), "one taken makes room for one");
    }

    #[tokio::test]
    async fn a_waiting_task_is_woken_and_the_queue_ends_after_its_frames() {
        let (sender, mut receiver) = queue(10, 1 << 20, Arc::default());
        let task = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(frame) = receiver.recv().await {
                got.push(frame.bytes());
            }
            got
        });
        tokio::task::yield_now().await;
        sender.try_send(frame(1)).expect("queued");
        tokio::task::yield_now().await;
        sender.try_send(frame(2)).expect("queued");
        let clone = sender.clone();
        drop(sender);
        // The receiver takes frame 2 and waits again: a clone is alive.
        tokio::task::yield_now().await;
        clone.try_send(frame(3)).expect("queued by a clone");
        drop(clone);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .expect("the receiver saw the end")
            .expect("the receiver did not panic");
        assert_eq!(got, [1, 2, 3], "every frame queued before the last sender went, in order");
    }

    /// Counts the wakes of the waker it makes.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting() -> (Arc<Wakes>, Waker) {
        let wakes = Arc::new(Wakes::default());
        (wakes.clone(), Waker::from(wakes))
    }

    fn woken(wakes: &Wakes) -> usize {
        wakes.0.load(Ordering::SeqCst)
    }

    #[test]
    fn the_waiting_task_is_woken_by_a_frame_and_by_the_last_sender_only() {
        let (sender, mut receiver) = queue(10, 1 << 20, Arc::default());
        let (first, first_waker) = counting();
        let (second, second_waker) = counting();
        let mut first_cx = Context::from_waker(&first_waker);
        let mut second_cx = Context::from_waker(&second_waker);

        assert!(receiver.poll_recv(&mut first_cx).is_pending());
        sender.try_send(frame(1)).expect("queued");
        assert_eq!(woken(&first), 1, "a frame wakes the waiting task");
        assert!(matches!(receiver.poll_recv(&mut first_cx), Poll::Ready(Some(_))));

        assert!(receiver.poll_recv(&mut first_cx).is_pending());
        assert!(receiver.poll_recv(&mut second_cx).is_pending(), "polled again with another waker");
        let clone = sender.clone();
        drop(sender);
        assert_eq!(woken(&second), 0, "a sender that is not the last one ends nothing");
        assert!(receiver.poll_recv(&mut second_cx).is_pending());
        drop(clone);
        assert_eq!(woken(&second), 1, "the last sender's drop wakes the task");
        assert_eq!(woken(&first), 1, "a replaced waker is not woken");
        assert!(matches!(receiver.poll_recv(&mut second_cx), Poll::Ready(None)));
    }

    /// `select!` drops a `recv` that lost the race: its frame must still come.
    #[tokio::test]
    async fn an_abandoned_wait_loses_no_frame() {
        let (sender, mut receiver) = queue(10, 1 << 20, Arc::default());
        let waited = tokio::time::timeout(std::time::Duration::from_millis(10), receiver.recv()).await;
        assert!(waited.is_err(), "nothing was queued yet");
        sender.try_send(frame(7)).expect("queued");
        assert_eq!(receiver.recv().await.map(|frame| frame.bytes()), Some(7));
    }

    /// Every socket has a queue: one idle after a burst keeps a few frames'
    /// buffer, not the burst's.
    #[test]
    fn a_drained_queue_keeps_little() {
        let (sender, mut receiver) = queue(1000, 1 << 20, Arc::default());
        for _ in 0..500 {
            sender.try_send(frame(1)).expect("queued");
        }
        while receiver.try_recv().is_some() {}
        let kept = receiver.shared.state().frames.capacity();
        assert!(kept <= KEPT_CAPACITY, "a drained queue kept room for {kept} frames");
        sender.try_send(frame(1)).expect("a queue freed after a burst takes frames again");
        assert!(receiver.try_recv().is_some());
    }
}
