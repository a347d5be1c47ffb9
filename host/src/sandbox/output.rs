//! A guest's log output: the `log` import and WASI stdout/stderr both end
//! in the host's log (target `guest`), under one byte budget per call, so
//! a guest printing in a loop cannot flood the host's logs.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Longest line kept; the rest of a longer line is cut.
const MAX_LINE_BYTES: usize = 4096;

/// Log bytes the current call may still write, and how many it dropped.
#[derive(Debug, Default)]
pub struct LogBudget {
    left: AtomicUsize,
    dropped: AtomicUsize,
}

impl LogBudget {
    /// Starts a call with `bytes` to spend; returns how many bytes the
    /// previous call dropped.
    pub fn refill(&self, bytes: usize) -> usize {
        self.left.store(bytes, Ordering::Relaxed);
        self.dropped.swap(0, Ordering::Relaxed)
    }

    /// Takes `bytes` from the budget; false (and counted) when it is spent.
    pub fn take(&self, bytes: usize) -> bool {
        let taken =
            self.left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(bytes));
        if taken.is_err() {
            self.dropped.fetch_add(bytes, Ordering::Relaxed);
        }
        taken.is_ok()
    }
}

/// Where a guest's log lines go besides the host's log (a live tail).
pub trait LogSink: Send + Sync {
    fn line(&self, level: tracing::Level, line: &str);
}

/// Writes one guest log line if the budget allows, cut at a char boundary;
/// returns the line as written.
fn log_line<'a>(room: &str, level: tracing::Level, line: &'a str, budget: &LogBudget) -> Option<&'a str> {
    let mut end = line.len().min(MAX_LINE_BYTES);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    let line = &line[..end];
    if !budget.take(line.len()) {
        return None;
    }
    match level {
        tracing::Level::ERROR => tracing::error!(target: "guest", %room, "{line}"),
        tracing::Level::WARN => tracing::warn!(target: "guest", %room, "{line}"),
        tracing::Level::INFO => tracing::info!(target: "guest", %room, "{line}"),
        tracing::Level::DEBUG => tracing::debug!(target: "guest", %room, "{line}"),
        tracing::Level::TRACE => tracing::trace!(target: "guest", %room, "{line}"),
    }
    Some(line)
}

/// WASI stdout and stderr of one room's guest: each write is logged at
/// info level under the room's name, within the call's log budget.
#[derive(Clone)]
pub struct GuestOutput {
    pub room: Arc<str>,
    pub budget: Arc<LogBudget>,
    pub sink: Option<Arc<dyn LogSink>>,
}

impl GuestOutput {
    /// Logs one line of the guest's, within the call's budget.
    pub fn line(&self, level: tracing::Level, line: &str) {
        if let Some(written) = log_line(&self.room, level, line, &self.budget)
            && let Some(sink) = &self.sink
        {
            sink.line(level, written);
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for GuestOutput {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let text = String::from_utf8_lossy(buf);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            self.line(tracing::Level::INFO, line);
        }
        // Accepted even when dropped: a guest's print must not fail (Rust's
        // `println!` panics on a write error).
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
