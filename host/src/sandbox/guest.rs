//! One live guest instance: a `Store` holding the room state, plus the
//! instance's exports. Every call runs under the party's CPU budget and
//! wall-clock deadline.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::Engine;
use wasmtime::Store;

use super::bindings::{GateOutcome, Message, Party, PartyPre, Request, RequestOutcome, RoomApi, Traits};
use super::error::{GuestError, TrapKind};
use super::limits::{INSTANTIATE_CALLS, Limits};
use super::meter::CpuMeter;
use super::store::{StoreData, on_epoch_tick};
use crate::metrics::CallTimes;

/// A room's running instance. After any call returns an error the instance
/// is broken (wasmtime forbids re-entering a trapped component): take the
/// room state back with [`Guest::into_room`] and instantiate again.
pub struct Guest<R: RoomApi> {
    store: Store<StoreData<R>>,
    party: Party,
    cpu_per_event: Duration,
    wall_per_event: Duration,
}

/// The clock of one call: its CPU meter and its wall-clock deadline.
struct CallClock {
    meter: Arc<CpuMeter>,
    deadline: Duration,
    /// Told each call's CPU time (metrics).
    times: Option<Arc<CallTimes>>,
}

impl CallClock {
    /// Runs `call`, metered; past the deadline the call's future is
    /// dropped, which unwinds the guest (wasmtime resumes its fiber with an
    /// error), and the instance must be dropped as after any trap.
    async fn run<T>(
        self,
        what: &str,
        call: impl Future<Output = wasmtime::Result<T>>,
    ) -> Result<T, GuestError> {
        let result = match tokio::time::timeout(self.deadline, self.meter.measure(call)).await {
            Ok(result) => result.map_err(GuestError::classify),
            Err(_) => Err(GuestError::deadline(what, self.deadline)),
        };
        if let Some(times) = &self.times {
            times.observe(what, self.meter.spent());
        }
        result
    }
}

impl<R: RoomApi> Guest<R> {
    pub(super) async fn instantiate(
        engine: &Engine,
        pre: &PartyPre<StoreData<R>>,
        limits: &Limits,
        room: R,
    ) -> Result<Self, (R, GuestError)> {
        let data = StoreData::new(room, limits).map_err(|(room, cap)| (room, GuestError::cap(&cap)))?;
        let mut store = Store::new(engine, data);
        store.limiter(|data| data.limiter());
        store.epoch_deadline_callback(on_epoch_tick);
        let scale = |d: Duration| d.checked_mul(INSTANTIATE_CALLS).unwrap_or(Duration::MAX);
        store.data_mut().cpu_budget = scale(limits.cpu_per_event);
        store.set_epoch_deadline(1);
        let clock = CallClock {
            meter: store.data().meter.clone(),
            deadline: scale(limits.wall_per_event),
            times: store.data().room.call_times(),
        };
        match clock.run("instantiation", pre.instantiate_async(&mut store)).await {
            Ok(party) => Ok(Self {
                store,
                party,
                cpu_per_event: limits.cpu_per_event,
                wall_per_event: limits.wall_per_event,
            }),
            Err(e) => {
                // Out of the project's or host's memory: a cap, which the
                // room reports as one (1013, 503 with the cap's text).
                let refused_by = store.data_mut().memory_refused_by();
                let e = match refused_by {
                    Some(cap) if e.kind == TrapKind::MemoryLimit => GuestError::cap(&cap),
                    _ => e,
                };
                Err((store.into_data().room, e))
            }
        }
    }

    /// The room state, for the host to read between calls.
    pub fn room(&self) -> &R {
        &self.store.data().room
    }

    /// The room state, for the host to change between calls.
    pub fn room_mut(&mut self) -> &mut R {
        &mut self.store.data_mut().room
    }

    /// Drops the instance and hands back the room state.
    pub fn into_room(self) -> R {
        self.store.into_data().room
    }

    /// Arms the CPU budget for one call and starts its clock.
    fn arm(&mut self) -> (&super::bindings::Handlers, &mut Store<StoreData<R>>, CallClock) {
        let data = self.store.data_mut();
        data.meter.reset();
        data.cpu_budget = self.cpu_per_event;
        data.room.begin_call();
        let clock = CallClock {
            meter: data.meter.clone(),
            deadline: self.wall_per_event,
            times: data.room.call_times(),
        };
        self.store.set_epoch_deadline(1);
        (self.party.partyhost_party_handlers(), &mut self.store, clock)
    }

    pub async fn on_start(&mut self, task: u64) -> Result<(), GuestError> {
        let (h, store, clock) = self.arm();
        clock.run("on-start", h.call_on_start(store, task)).await
    }

    pub async fn on_connect(&mut self, task: u64, conn: &str, request: &Request) -> Result<(), GuestError> {
        let (h, store, clock) = self.arm();
        clock.run("on-connect", h.call_on_connect(store, task, &conn.to_owned(), request)).await
    }

    pub async fn on_message(&mut self, task: u64, conn: &str, msg: &Message) -> Result<(), GuestError> {
        let (h, store, clock) = self.arm();
        clock.run("on-message", h.call_on_message(store, task, &conn.to_owned(), msg)).await
    }

    pub async fn on_close(
        &mut self,
        task: u64,
        conn: &str,
        code: u16,
        reason: &str,
        was_clean: bool,
    ) -> Result<(), GuestError> {
        let (h, store, clock) = self.arm();
        clock.run("on-close", h.call_on_close(store, task, &conn.to_owned(), code, reason, was_clean)).await
    }

    pub async fn on_error(&mut self, task: u64, conn: &str, error: &str) -> Result<(), GuestError> {
        let (h, store, clock) = self.arm();
        clock.run("on-error", h.call_on_error(store, task, &conn.to_owned(), error)).await
    }

    pub async fn on_request(&mut self, task: u64, request: &Request) -> Result<RequestOutcome, GuestError> {
        let (h, store, clock) = self.arm();
        clock.run("on-request", h.call_on_request(store, task, request)).await
    }

    pub async fn on_alarm(&mut self, task: u64, retry_count: u32) -> Result<(), GuestError> {
        let (h, store, clock) = self.arm();
        clock.run("on-alarm", h.call_on_alarm(store, task, retry_count)).await
    }

    pub async fn traits(&mut self) -> Result<Traits, GuestError> {
        let (h, store, clock) = self.arm();
        clock.run("traits", h.call_traits(store)).await
    }

    pub async fn on_before_connect(
        &mut self,
        task: u64,
        request: &Request,
    ) -> Result<GateOutcome, GuestError> {
        let (h, store, clock) = self.arm();
        clock.run("on-before-connect", h.call_on_before_connect(store, task, request)).await
    }

    pub async fn on_before_request(
        &mut self,
        task: u64,
        request: &Request,
    ) -> Result<GateOutcome, GuestError> {
        let (h, store, clock) = self.arm();
        clock.run("on-before-request", h.call_on_before_request(store, task, request)).await
    }

    pub async fn get_connection_tags(
        &mut self,
        conn: &str,
        request: &Request,
    ) -> Result<Vec<String>, GuestError> {
        let (h, store, clock) = self.arm();
        clock.run("get-connection-tags", h.call_get_connection_tags(store, &conn.to_owned(), request)).await
    }

    pub async fn resume(
        &mut self,
        fetch: u64,
        result: &Result<super::bindings::Response, String>,
    ) -> Result<(), GuestError> {
        let (h, store, clock) = self.arm();
        clock.run("resume", h.call_resume(store, fetch, result.as_ref().map_err(String::as_str))).await
    }
}
