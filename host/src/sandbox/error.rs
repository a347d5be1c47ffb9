//! How a guest call failed, keeping the trap kind: recovery and the logs
//! depend on it (a deadline is the tenant's CPU budget, a panic is a bug).

use std::fmt;

/// Why a guest call did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrapKind {
    /// The handler ran past its CPU budget.
    CpuLimit,
    /// The handler ran past its wall-clock deadline (it slept, or blocked
    /// in a WASI poll); the call was abandoned.
    WallClock,
    /// The instance tried to grow its memory past the limit.
    MemoryLimit,
    /// The wasm stack overflowed (unbounded recursion).
    StackOverflow,
    /// The guest panicked or executed `unreachable`.
    Panic,
    /// The guest accessed memory outside its bounds (in Rust guests, often
    /// recursion that overflowed the shadow stack in linear memory).
    OutOfBounds,
    /// The call broke a host limit that no import could refuse (named).
    HostLimit(&'static str),
    /// Any other trap or host error during the call.
    Other,
}

impl TrapKind {
    /// A stable name for logs and metrics (`error.type`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CpuLimit => "cpu_limit",
            Self::WallClock => "wall_clock",
            Self::MemoryLimit => "memory_limit",
            Self::StackOverflow => "stack_overflow",
            Self::Panic => "panic",
            Self::OutOfBounds => "out_of_bounds",
            Self::HostLimit(name) => name,
            Self::Other => "trap",
        }
    }
}

/// A failed guest call. The instance that produced it must not be called
/// again: the room drops it and starts a fresh one from storage.
#[derive(Debug)]
pub struct GuestError {
    pub kind: TrapKind,
    /// The full error chain as text.
    pub detail: String,
}

impl fmt::Display for GuestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.detail)
    }
}

impl std::error::Error for GuestError {}

/// Raised from the epoch callback when a call's CPU budget is spent.
#[derive(Debug)]
pub(super) struct CpuBudgetSpent;

/// Raised from the resource limiter when memory would grow past the
/// instance's limit, or past the project's or host's memory total.
#[derive(Debug)]
pub(super) struct MemoryLimitReached {
    pub(super) limit: usize,
    pub(super) total: Option<crate::budget::CapReached>,
}

impl fmt::Display for CpuBudgetSpent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the handler used up its CPU time budget")
    }
}

impl fmt::Display for MemoryLimitReached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.total {
            None => write!(f, "the instance tried to grow its memories and tables past {} bytes", self.limit),
            Some(cap) => write!(f, "the instance could not grow its memory: {cap}"),
        }
    }
}

impl std::error::Error for CpuBudgetSpent {}
impl std::error::Error for MemoryLimitReached {}

impl GuestError {
    /// A call abandoned at its wall-clock deadline.
    pub(super) fn deadline(what: &str, deadline: std::time::Duration) -> Self {
        Self {
            kind: TrapKind::WallClock,
            detail: format!(
                "{what} was still running after its wall-clock deadline of {deadline:?} (sleeping or blocked?); abandoned"
            ),
        }
    }

    /// A total's cap refused the instance.
    pub(super) fn cap(cap: &crate::budget::CapReached) -> Self {
        Self { kind: TrapKind::HostLimit("totals"), detail: cap.to_string() }
    }

    /// Classifies an error returned by a wasmtime call.
    pub(super) fn classify(error: wasmtime::Error) -> Self {
        let kind = if error.downcast_ref::<CpuBudgetSpent>().is_some() {
            TrapKind::CpuLimit
        } else if error.downcast_ref::<MemoryLimitReached>().is_some()
            // wasmtime's own refusal past `ResourceLimiter::memories` and co.
            || format!("{error:#}").contains("resource limit exceeded")
        {
            TrapKind::MemoryLimit
        } else {
            match error.downcast_ref::<wasmtime::Trap>() {
                Some(wasmtime::Trap::StackOverflow) => TrapKind::StackOverflow,
                Some(wasmtime::Trap::UnreachableCodeReached) => TrapKind::Panic,
                Some(wasmtime::Trap::MemoryOutOfBounds) => TrapKind::OutOfBounds,
                _ => TrapKind::Other,
            }
        };
        Self { kind, detail: format!("{error:#}") }
    }
}
