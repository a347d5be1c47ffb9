//! Every resource limit of a guest, in one place.
//!
//! Each limit says what it defends. Defaults follow PartyKit and Durable
//! Objects where they publish one.

use std::time::Duration;

use crate::manifest::LimitsSpec;

/// How often the epoch ticker thread advances the engine's epoch. CPU budgets
/// are counted in these ticks, so they are accurate to about one tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Instantiation (the component's start functions and data segments) may
/// use this many times a handler call's CPU budget, and its wall-clock
/// deadline: a new instance follows every trap, so a start function that
/// spins is stopped at a small multiple of `cpu_ms`.
pub const INSTANTIATE_CALLS: u32 = 2;

/// A handler call's default wall-clock deadline, in multiples of its CPU
/// budget: room for the epoch yields that let other rooms run, not for
/// sleeping.
pub const WALL_PER_CPU: u32 = 4;

/// Limits applied to every guest instance.
#[derive(Debug, Clone)]
pub struct Limits {
    /// CPU time one handler call may use before it traps. Defends the room's
    /// other clients and the worker threads against a guest that spins.
    pub cpu_per_event: Duration,
    /// Wall-clock time one handler call may take, time spent sleeping or
    /// blocked in a WASI poll included. Defends the room and the host's
    /// shutdown against a guest that sleeps; past it the call is abandoned
    /// (trap kind `wall_clock`).
    pub wall_per_event: Duration,
    /// Linear memory and table space an instance may grow to, all of its
    /// memories and tables together. Defends the host's memory.
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
    /// Outgoing bytes queued per connection, the same way: frames are up to
    /// `message_bytes` each, so a count alone would let one client that
    /// stops reading pin a gigabyte. One frame is always let in.
    pub connection_queue_bytes: usize,
    /// WebSockets open at once in one room (PartyKit allows 32,768
    /// hibernated). Defends the host's sockets and memory; one more is
    /// refused with close code 1013.
    pub connections_per_room: usize,
    /// Messages per second one client may send, sustained, with bursts of
    /// as many. Defends the room's CPU budget from one noisy client; past
    /// it the client is closed with 1008.
    pub messages_per_second: u32,
    /// Room-to-room fetches one handler call may start. Defends other rooms
    /// from a guest fetching in a loop; past it `fetch` returns an error.
    pub fetches_per_event: u32,
    /// Bytes one handler call may send, counted per receiver (a broadcast
    /// of 1 KiB to 100 sockets costs 100 KiB). Defends the host's network
    /// and memory from broadcast loops; past it the call traps.
    pub fanout_bytes_per_event: u64,
    /// Log bytes per handler call (the log import, stdout and stderr).
    /// Defends the host's logs; past it lines are dropped and counted.
    pub log_bytes_per_event: usize,
    /// Largest HTTP body a handler hands the host: a response, or the
    /// request of a fetch. Defends the host's memory (responses wait in
    /// the output gate).
    pub body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            cpu_per_event: Duration::from_millis(50),
            wall_per_event: Duration::from_millis(50 * WALL_PER_CPU as u64),
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
            connection_queue_bytes: 1 << 20,
            connections_per_room: 32_768,
            messages_per_second: 100,
            fetches_per_event: 16,
            fanout_bytes_per_event: 64 << 20,
            log_bytes_per_event: 64 << 10,
            body_bytes: 4 << 20,
        }
    }
}

impl From<&LimitsSpec> for Limits {
    /// A manifest's limits over the defaults.
    fn from(spec: &LimitsSpec) -> Self {
        let defaults = Self::default();
        let bytes = |value: Option<u64>, unit: u64, default: usize| {
            value.map_or(default, |v| usize::try_from(v.saturating_mul(unit)).unwrap_or(usize::MAX))
        };
        let count = |value: Option<u64>, default: u32| {
            value.map_or(default, |v| u32::try_from(v).unwrap_or(u32::MAX))
        };
        let millis = |value: Option<u64>, default: Duration| value.map_or(default, Duration::from_millis);
        let cpu_per_event = millis(spec.cpu_ms, defaults.cpu_per_event);
        Self {
            cpu_per_event,
            wall_per_event: millis(
                spec.wall_ms,
                cpu_per_event.checked_mul(WALL_PER_CPU).unwrap_or(Duration::MAX),
            ),
            memory_bytes: bytes(spec.memory_mib, 1 << 20, defaults.memory_bytes),
            message_bytes: bytes(spec.message_kib, 1 << 10, defaults.message_bytes),
            fetch_timeout: millis(spec.fetch_timeout_ms, defaults.fetch_timeout),
            storage_room_bytes: bytes(spec.storage_mib, 1 << 20, defaults.storage_room_bytes),
            connections_per_room: bytes(spec.connections_per_room, 1, defaults.connections_per_room),
            messages_per_second: count(spec.messages_per_second, defaults.messages_per_second),
            fetches_per_event: count(spec.fetches_per_event, defaults.fetches_per_event),
            fanout_bytes_per_event: spec
                .fanout_mib_per_event
                .map_or(defaults.fanout_bytes_per_event, |v| v.saturating_mul(1 << 20)),
            log_bytes_per_event: bytes(spec.log_kib_per_event, 1 << 10, defaults.log_bytes_per_event),
            body_bytes: bytes(spec.body_kib, 1 << 10, defaults.body_bytes),
            connection_queue_bytes: bytes(spec.queue_kib, 1 << 10, defaults.connection_queue_bytes),
            ..defaults
        }
    }
}

impl LimitsSpec {
    /// The defaults, in manifest units, for the README and for error
    /// messages that compare a value with them.
    pub fn defaults() -> Self {
        let d = Limits::default();
        let ms = |t: Duration| u64::try_from(t.as_millis()).unwrap_or(u64::MAX);
        let units = |bytes: usize, unit: usize| (bytes / unit) as u64;
        Self {
            cpu_ms: Some(ms(d.cpu_per_event)),
            wall_ms: Some(ms(d.wall_per_event)),
            memory_mib: Some(units(d.memory_bytes, 1 << 20)),
            message_kib: Some(units(d.message_bytes, 1 << 10)),
            fetch_timeout_ms: Some(ms(d.fetch_timeout)),
            storage_mib: Some(units(d.storage_room_bytes, 1 << 20)),
            connections_per_room: Some(d.connections_per_room as u64),
            messages_per_second: Some(u64::from(d.messages_per_second)),
            fetches_per_event: Some(u64::from(d.fetches_per_event)),
            fanout_mib_per_event: Some(d.fanout_bytes_per_event >> 20),
            log_kib_per_event: Some(units(d.log_bytes_per_event, 1 << 10)),
            body_kib: Some(units(d.body_bytes, 1 << 10)),
            queue_kib: Some(units(d.connection_queue_bytes, 1 << 10)),
        }
    }

    /// The value `field` takes when unset here: its default, except that
    /// `wall_ms` follows this spec's `cpu_ms`.
    pub fn default_of(&self, field: &str) -> Option<u64> {
        let defaults = Self::defaults();
        if field == "wall_ms" {
            let cpu = self.cpu_ms.or(defaults.cpu_ms)?;
            return Some(cpu.saturating_mul(u64::from(WALL_PER_CPU)));
        }
        defaults.fields().into_iter().find(|(name, _)| *name == field).and_then(|(_, value)| value)
    }
}
