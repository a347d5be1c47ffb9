//! A guest call's CPU time: time spent inside the polls of its future, that
//! is running wasm or the host code of its imports, and not time spent
//! waiting (yielded to other rooms, or sleeping in a WASI poll, which the
//! wall-clock deadline bounds instead).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Shared between the store (read by the epoch callback) and the future
/// that drives the call (which starts and stops the clock around each poll).
#[derive(Debug)]
pub(super) struct CpuMeter {
    origin: Instant,
    spent_nanos: AtomicU64,
    /// When the current poll began, in nanoseconds since `origin` plus one;
    /// zero between polls.
    running_since: AtomicU64,
}

impl Default for CpuMeter {
    fn default() -> Self {
        Self { origin: Instant::now(), spent_nanos: AtomicU64::new(0), running_since: AtomicU64::new(0) }
    }
}

impl CpuMeter {
    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX).saturating_add(1)
    }

    /// Starts a new call at zero.
    pub(super) fn reset(&self) {
        self.spent_nanos.store(0, Ordering::Relaxed);
        self.running_since.store(0, Ordering::Relaxed);
    }

    fn resume(&self) {
        self.running_since.store(self.now(), Ordering::Relaxed);
    }

    fn pause(&self) {
        let since = self.running_since.swap(0, Ordering::Relaxed);
        if since != 0 {
            self.spent_nanos.fetch_add(self.now().saturating_sub(since), Ordering::Relaxed);
        }
    }

    /// Time spent so far, the poll under way included.
    pub(super) fn spent(&self) -> Duration {
        let since = self.running_since.load(Ordering::Relaxed);
        let running = if since == 0 { 0 } else { self.now().saturating_sub(since) };
        Duration::from_nanos(self.spent_nanos.load(Ordering::Relaxed).saturating_add(running))
    }

    /// Drives `call`, counting the time spent in each of its polls.
    pub(super) async fn measure<F: Future>(&self, call: F) -> F::Output {
        let mut call = std::pin::pin!(call);
        std::future::poll_fn(|cx| {
            self.resume();
            let polled = call.as_mut().poll(cx);
            self.pause();
            polled
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_time_in_polls_not_time_waiting() {
        let meter = CpuMeter::default();
        meter
            .measure(async {
                let busy = Instant::now();
                while busy.elapsed() < Duration::from_millis(20) {}
                tokio::time::sleep(Duration::from_millis(100)).await;
            })
            .await;
        let spent = meter.spent();
        assert!(spent >= Duration::from_millis(20), "{spent:?}");
        assert!(spent < Duration::from_millis(90), "sleeping was counted: {spent:?}");
    }
}
