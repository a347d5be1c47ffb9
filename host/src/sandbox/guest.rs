//! One live guest instance: a `Store` holding the room state, plus the
//! instance's exports. Every call runs under the party's CPU budget.

use wasmtime::Engine;
use wasmtime::Store;

use super::bindings::{Message, Party, PartyPre, Request, RequestOutcome, RoomApi};
use super::error::GuestError;
use super::limits::{INSTANTIATE_TICKS, Limits};
use super::store::{StoreData, on_epoch_tick};

/// A room's running instance. After any call returns an error the instance
/// is broken (wasmtime forbids re-entering a trapped component): take the
/// room state back with [`Guest::into_room`] and instantiate again.
pub struct Guest<R: RoomApi> {
    store: Store<StoreData<R>>,
    party: Party,
    ticks_per_event: u64,
}

impl<R: RoomApi> Guest<R> {
    pub(super) async fn instantiate(
        engine: &Engine,
        pre: &PartyPre<StoreData<R>>,
        limits: &Limits,
        room: R,
    ) -> Result<Self, (R, GuestError)> {
        let mut store = Store::new(engine, StoreData::new(room, limits));
        store.limiter(|data| data.limiter());
        store.epoch_deadline_callback(on_epoch_tick);
        store.data_mut().ticks_left = INSTANTIATE_TICKS;
        store.set_epoch_deadline(1);
        match pre.instantiate_async(&mut store).await {
            Ok(party) => Ok(Self { store, party, ticks_per_event: limits.ticks_per_event() }),
            Err(e) => Err((store.into_data().room, GuestError::classify(e))),
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

    /// Arms the CPU budget for one call.
    fn arm(&mut self) -> (&super::bindings::Handlers, &mut Store<StoreData<R>>) {
        let data = self.store.data_mut();
        data.ticks_left = self.ticks_per_event;
        data.room.begin_call();
        self.store.set_epoch_deadline(1);
        (self.party.partyhost_party_handlers(), &mut self.store)
    }

    pub async fn on_start(&mut self, task: u64) -> Result<(), GuestError> {
        let (h, store) = self.arm();
        h.call_on_start(store, task).await.map_err(GuestError::classify)
    }

    pub async fn on_connect(&mut self, task: u64, conn: &str, request: &Request) -> Result<(), GuestError> {
        let (h, store) = self.arm();
        h.call_on_connect(store, task, &conn.to_owned(), request).await.map_err(GuestError::classify)
    }

    pub async fn on_message(&mut self, task: u64, conn: &str, msg: &Message) -> Result<(), GuestError> {
        let (h, store) = self.arm();
        h.call_on_message(store, task, &conn.to_owned(), msg).await.map_err(GuestError::classify)
    }

    pub async fn on_close(
        &mut self,
        task: u64,
        conn: &str,
        code: u16,
        reason: &str,
    ) -> Result<(), GuestError> {
        let (h, store) = self.arm();
        h.call_on_close(store, task, &conn.to_owned(), code, reason).await.map_err(GuestError::classify)
    }

    pub async fn on_error(&mut self, task: u64, conn: &str, error: &str) -> Result<(), GuestError> {
        let (h, store) = self.arm();
        h.call_on_error(store, task, &conn.to_owned(), error).await.map_err(GuestError::classify)
    }

    pub async fn on_request(&mut self, task: u64, request: &Request) -> Result<RequestOutcome, GuestError> {
        let (h, store) = self.arm();
        h.call_on_request(store, task, request).await.map_err(GuestError::classify)
    }

    pub async fn on_alarm(&mut self, task: u64) -> Result<(), GuestError> {
        let (h, store) = self.arm();
        h.call_on_alarm(store, task).await.map_err(GuestError::classify)
    }

    pub async fn get_connection_tags(
        &mut self,
        conn: &str,
        request: &Request,
    ) -> Result<Vec<String>, GuestError> {
        let (h, store) = self.arm();
        h.call_get_connection_tags(store, &conn.to_owned(), request).await.map_err(GuestError::classify)
    }

    pub async fn resume(
        &mut self,
        fetch: u64,
        result: &Result<super::bindings::Response, String>,
    ) -> Result<(), GuestError> {
        let (h, store) = self.arm();
        h.call_resume(store, fetch, result.as_ref().map_err(String::as_str))
            .await
            .map_err(GuestError::classify)
    }
}
