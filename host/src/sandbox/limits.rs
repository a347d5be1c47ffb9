//! Every resource limit of a guest, in one place.
//!
//! Each limit says what it defends. Defaults follow PartyKit and Durable
//! Objects where they publish one.

use std::time::Duration;

/// How often the epoch ticker thread advances the engine's epoch. CPU budgets
/// are counted in these ticks, so they are accurate to about one tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Ticks allowed for instantiation (the component's start functions). They
/// run before the per-event deadline is armed; a start function that spins
/// is stopped here.
pub const INSTANTIATE_TICKS: u64 = 200;

/// Limits applied to every guest instance.
#[derive(Debug, Clone)]
pub struct Limits {
    /// CPU time one handler call may use before it traps. Defends the room's
    /// other clients and the worker threads against a guest that spins.
    pub cpu_per_event: Duration,
    /// Linear memory an instance may grow to. Defends the host's memory.
    pub memory_bytes: usize,
    /// Wasm stack an instance may use. Defends against unbounded recursion.
    pub stack_bytes: usize,
    /// Largest WebSocket message accepted from a client (PartyKit: 1 MiB).
    pub message_bytes: usize,
    /// Largest per-connection state (PartyKit: 2 KiB).
    pub connection_state_bytes: usize,
    /// Largest storage key (PartyKit: 2 KiB).
    pub storage_key_bytes: usize,
    /// Largest storage value (PartyKit: 128 KiB).
    pub storage_value_bytes: usize,
    /// Storage per room, keys plus values. A room's storage is held in
    /// memory while the room runs, so this also bounds that memory.
    pub storage_room_bytes: usize,
    /// How long an outbound fetch may wait for its response before the
    /// awaiting handler gets an error. Ends cycles that can never finish.
    pub fetch_timeout: Duration,
    /// How many fetches may be in flight from one room at once.
    pub fetches_in_flight: usize,
    /// Outgoing frames queued per connection; a client that falls further
    /// behind is disconnected as too slow (close code 1013).
    pub connection_queue_frames: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            cpu_per_event: Duration::from_millis(50),
            memory_bytes: 64 << 20,
            stack_bytes: 512 << 10,
            message_bytes: 1 << 20,
            connection_state_bytes: 2 << 10,
            storage_key_bytes: 2 << 10,
            storage_value_bytes: 128 << 10,
            storage_room_bytes: 16 << 20,
            fetch_timeout: Duration::from_secs(10),
            fetches_in_flight: 64,
            connection_queue_frames: 1024,
        }
    }
}

impl Limits {
    /// The CPU budget of one handler call in epoch ticks (at least one).
    pub fn ticks_per_event(&self) -> u64 {
        let ticks = self.cpu_per_event.as_micros() / EPOCH_TICK.as_micros();
        u64::try_from(ticks).unwrap_or(u64::MAX).max(1)
    }
}
