//! How often each limit stopped something, per project. The admin API
//! reports these counts, so an operator sees which tenant hits which limit.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// A limit that can be hit; see `sandbox::Limits` for what each defends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Cpu,
    Memory,
    Stack,
    Storage,
    MessageSize,
    MessageRate,
    Connections,
    Fetches,
    Fanout,
    Log,
    /// A call abandoned at its wall-clock deadline.
    Wall,
    /// A body the guest handed the host was too large.
    Body,
    /// A project's or the host's total (rooms, instances, memory, fetches,
    /// storage, alarms) refused something.
    Totals,
    /// A guest that panicked or trapped for another reason.
    Trap,
}

impl Limit {
    const ALL: [Self; 14] = [
        Self::Cpu,
        Self::Memory,
        Self::Stack,
        Self::Storage,
        Self::MessageSize,
        Self::MessageRate,
        Self::Connections,
        Self::Fetches,
        Self::Fanout,
        Self::Log,
        Self::Wall,
        Self::Body,
        Self::Totals,
        Self::Trap,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Memory => "memory",
            Self::Stack => "stack",
            Self::Storage => "storage",
            Self::MessageSize => "message_size",
            Self::MessageRate => "message_rate",
            Self::Connections => "connections",
            Self::Fetches => "fetches",
            Self::Fanout => "fanout",
            Self::Log => "log",
            Self::Wall => "wall_clock",
            Self::Body => "body",
            Self::Totals => "totals",
            Self::Trap => "trap",
        }
    }
}

/// One counter per [`Limit`].
#[derive(Debug, Default)]
pub struct LimitHits([AtomicU64; Limit::ALL.len()]);

impl LimitHits {
    pub fn count(&self, limit: Limit) {
        self.0[limit as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Every counter by name, zeros included.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        Limit::ALL.iter().map(|&l| (l.as_str(), self.0[l as usize].load(Ordering::Relaxed))).collect()
    }
}
