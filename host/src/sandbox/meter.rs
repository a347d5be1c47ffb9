//! A guest call's CPU time: time spent inside the polls of its future, that
//! is running wasm or the host code of its imports, and not time spent
//! waiting (yielded to other rooms, or sleeping in a WASI poll, which the
//! wall-clock deadline bounds instead).
//!
//! On a busy host the thread running a guest is preempted, and that time is
//! not the guest's. The thread's CPU clock says what it really used, but
//! reading it is a system call (about a microsecond), too dear for every
//! message. So a call's first poll runs on the monotonic clock until its
//! first epoch tick, which is charged at most [`FIRST_STRETCH`] (a guest
//! running wasm meets a tick within one); everything after, the rest of
//! that poll and every later poll (a call that yielded, so a long one), is
//! charged by the thread's CPU clock.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::limits::EPOCH_TICK;

/// The most a call's first stretch (start to first epoch tick) is charged.
/// Running wasm checks the epoch all the time, so a longer stretch was spent
/// preempted, or in one import (bounded by the wall-clock deadline).
const FIRST_STRETCH: Duration = EPOCH_TICK.saturating_mul(2);

/// Shared between the store (read by the epoch callback) and the future
/// that drives the call (which starts and stops the clock around each poll).
#[derive(Debug)]
pub(super) struct CpuMeter {
    origin: Instant,
    spent_nanos: AtomicU64,
    /// When the current poll began, in nanoseconds since `origin` plus one;
    /// zero between polls.
    running_since: AtomicU64,
    /// The polling thread's CPU clock when the poll under way was last
    /// charged, plus one; zero while the call's first stretch runs on the
    /// monotonic clock.
    cpu_mark: AtomicU64,
    /// No poll of the current call has begun yet.
    fresh: AtomicBool,
}

impl Default for CpuMeter {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            spent_nanos: AtomicU64::new(0),
            running_since: AtomicU64::new(0),
            cpu_mark: AtomicU64::new(0),
            fresh: AtomicBool::new(true),
        }
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
        self.cpu_mark.store(0, Ordering::Relaxed);
        self.fresh.store(true, Ordering::Relaxed);
    }

    fn resume(&self) {
        let mark = if self.fresh.swap(false, Ordering::Relaxed) { 0 } else { cpu_mark_now() };
        self.cpu_mark.store(mark, Ordering::Relaxed);
        self.running_since.store(self.now(), Ordering::Relaxed);
    }

    /// Charges the poll under way from its mark to now, and moves the mark.
    /// At a tick the first stretch is capped and the CPU clock takes over;
    /// at the end of a poll that met no tick, the monotonic time is charged
    /// as it is (the call is over or waiting: only metrics read it).
    fn charge(&self, at_tick: bool) {
        let since = self.running_since.load(Ordering::Relaxed);
        if since == 0 {
            return;
        }
        let used = match self.cpu_mark.load(Ordering::Relaxed) {
            0 if !at_tick => self.now().saturating_sub(since),
            0 => {
                self.cpu_mark.store(cpu_mark_now(), Ordering::Relaxed);
                let cap = u64::try_from(FIRST_STRETCH.as_nanos()).unwrap_or(u64::MAX);
                self.now().saturating_sub(since).min(cap)
            }
            mark => {
                let now = cpu_mark_now();
                self.cpu_mark.store(now, Ordering::Relaxed);
                now.saturating_sub(mark)
            }
        };
        self.spent_nanos.fetch_add(used, Ordering::Relaxed);
    }

    fn pause(&self) {
        self.charge(false);
        self.running_since.store(0, Ordering::Relaxed);
    }

    /// The call's time so far, the poll under way charged up to now. For
    /// the epoch callback, which runs on the thread polling the guest.
    pub(super) fn spent_at_tick(&self) -> Duration {
        self.charge(true);
        self.spent()
    }

    /// Time charged so far (between polls: all of it).
    pub(super) fn spent(&self) -> Duration {
        Duration::from_nanos(self.spent_nanos.load(Ordering::Relaxed))
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

/// The calling thread's CPU clock as a mark: plus one, so zero means none.
fn cpu_mark_now() -> u64 {
    thread_cpu_nanos().saturating_add(1)
}

/// CPU time used by the calling thread, in nanoseconds.
#[cfg(unix)]
#[allow(unsafe_code)]
fn thread_cpu_nanos() -> u64 {
    let mut time = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `time` is a valid, writable timespec for the call's duration.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut time) };
    if result != 0 {
        return 0;
    }
    let seconds = u64::try_from(time.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(time.tv_nsec).unwrap_or(0);
    seconds.saturating_mul(1_000_000_000).saturating_add(nanos)
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

    fn busy(time: Duration) {
        let started = Instant::now();
        while started.elapsed() < time {}
    }

    /// A thread blocked inside a poll stands for one preempted by other
    /// threads on a busy host: that time is not the guest's, in a call's
    /// first stretch (capped), after a tick, and in a later poll.
    #[tokio::test]
    async fn time_off_the_cpu_inside_a_poll_is_not_charged() {
        let meter = CpuMeter::default();
        meter
            .measure(async {
                busy(Duration::from_millis(2));
                std::thread::sleep(Duration::from_millis(100));
                let first = meter.spent_at_tick();
                assert!(first <= FIRST_STRETCH, "the first stretch was charged {first:?}");
                busy(Duration::from_millis(10));
                std::thread::sleep(Duration::from_millis(100));
                meter.spent_at_tick();
                tokio::task::yield_now().await;
                busy(Duration::from_millis(10));
                std::thread::sleep(Duration::from_millis(100));
            })
            .await;
        let spent = meter.spent();
        assert!(spent >= Duration::from_millis(20), "{spent:?}");
        assert!(spent < Duration::from_millis(60), "time off the CPU was charged: {spent:?}");
    }
}
