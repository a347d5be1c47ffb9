//! How long this node may act as the one writer of the rooms it loaded.
//!
//! In a cluster the database holds each node's lease (`lease_until`, on the
//! database's clock). The node keeps its own, shorter deadline on its
//! monotonic clock, from the moment it *sent* each renewal: once that
//! deadline passes, another node may soon claim its rooms, so nothing the
//! node's rooms produce may reach a client any more. A renewal that comes
//! after the deadline starts a new *term*: rooms loaded in an older term
//! stay fenced even though the node is valid again, because their rooms
//! may have moved meanwhile.

use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A node's lease as the node sees it.
#[derive(Debug)]
pub struct Lease {
    state: Mutex<LeaseState>,
    /// The current term, changed when the lease lapses (watchers fence).
    lapsed: watch::Sender<u64>,
}

#[derive(Debug, Clone, Copy)]
struct LeaseState {
    valid_until: Instant,
    term: u64,
}

impl Lease {
    /// A lease valid until `valid_until`, in term 1.
    pub fn new(valid_until: Instant) -> Self {
        Self { state: Mutex::new(LeaseState { valid_until, term: 1 }), lapsed: watch::Sender::new(1) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LeaseState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The term rooms loaded now belong to.
    pub fn term(&self) -> u64 {
        self.state().term
    }

    /// Whether rooms loaded in `term` may still act: the lease has not
    /// lapsed since. Checks the clock, so a node that was stopped (SIGSTOP)
    /// past its deadline finds out before it sends anything.
    pub fn valid(&self, term: u64) -> bool {
        let lapsed = {
            let mut state = self.state();
            if state.term != term {
                return false;
            }
            if Instant::now() < state.valid_until {
                return true;
            }
            state.term += 1;
            state.term
        };
        self.lapsed.send_replace(lapsed);
        false
    }

    /// A renewal sent at `sent` succeeded: the database recorded it at some
    /// moment after `sent`, so this node may act until `sent + acting`
    /// (see `ClusterConfig::acting`). A renewal after the deadline opens a
    /// new term (rooms of the old one stay fenced).
    pub fn renewed(&self, sent: Instant, acting: Duration) {
        let term = self.term();
        self.valid(term);
        self.state().valid_until = sent + acting;
    }

    /// Until when rooms may act (for the renewal loop's timing).
    pub fn valid_until(&self) -> Instant {
        self.state().valid_until
    }

    /// Resolves with each new term: every room of an older term must stop.
    pub fn lapses(&self) -> watch::Receiver<u64> {
        self.lapsed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lapse_fences_the_old_term_even_after_a_renewal() {
        let length = Duration::from_millis(40);
        let lease = Lease::new(Instant::now() + length);
        let term = lease.term();
        assert!(lease.valid(term));
        // Renewed in time: the same term goes on.
        lease.renewed(Instant::now(), length);
        assert!(lease.valid(term));
        std::thread::sleep(length + Duration::from_millis(10));
        // A renewal after the deadline: valid again, but only for new rooms.
        lease.renewed(Instant::now(), length);
        assert!(!lease.valid(term), "a room of the lapsed term must stay fenced");
        assert!(lease.valid(lease.term()));
        assert_ne!(lease.term(), term);
        assert_eq!(*lease.lapses().borrow(), lease.term());
    }
}
