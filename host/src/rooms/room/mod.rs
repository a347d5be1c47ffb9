//! The room actor: one task per running room, owning its guest instance,
//! its connections and its storage cache. Everything else talks to it
//! through its [`RoomHandle`](super::RoomHandle).
//!
//! Events are handled one at a time. A handler that awaits a fetch parks
//! inside the guest and the call returns, so the room goes on with its next
//! event; when the fetch's response arrives (from the `fetches` set) the
//! room calls `resume` and the handler carries on.
//!
//! - this file: the loop and one method per event;
//! - `effects.rs`: after a call, commit its writes, then release its output;
//! - `lifecycle.rs`: instances started, evicted, reset; the room retiring.

mod effects;
mod lifecycle;

pub(super) use effects::run_fetch;
pub(super) use lifecycle::limit_of;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::debug;

use super::handle::{Connect, Departure, RoomGauges, RoomMsg};
use super::registry::{LoadedParty, Rooms};
use super::state::{ConnectionEntry, Outgoing, RoomState};
use super::{CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR, CLOSE_TRY_AGAIN, Limit, now_ms};
use crate::budget::Lease;
use crate::ids::{ConnectionId, RoomKey};
use crate::sandbox::{Guest, Request, RequestOutcome, Response};

/// A fetch's outcome, for the handler parked on it.
pub(super) struct FetchDone {
    pub(super) id: u64,
    /// Hops of the call that started the fetch: its handler resumes at
    /// that depth.
    hops: u32,
    pub(super) result: Result<Response, String>,
}

/// How often a failed `on-alarm` runs again, as Durable Objects retry
/// alarms; the first wait is `[rooms] alarm_retry_ms`, doubled each time.
const MAX_ALARM_RETRIES: u32 = 6;

/// Most tags a connection keeps (its id included), as in Durable Objects.
const MAX_TAGS: usize = 10;
/// Longest tag kept, in bytes.
const MAX_TAG_BYTES: usize = 256;

/// What woke the room.
enum Event {
    Message(RoomMsg),
    FetchDone(FetchDone),
    Alarm,
    Idle,
    /// The oldest held output's commit finished.
    Durable(anyhow::Result<()>),
}

/// The instance, or the state alone while no instance runs.
// One per room, moved between variants on every eviction and revival:
// boxing the larger variant would add an allocation to each.
#[allow(clippy::large_enum_variant)]
enum Slot {
    Live(Guest<RoomState>),
    Idle(RoomState),
    /// Only while an instance is being created or dropped.
    Empty,
}

pub(super) struct Room {
    key: RoomKey,
    rooms: Arc<Rooms>,
    /// The party's code and settings this room runs; compared with the
    /// registry's at each event, so a reload reaches every room.
    party: Arc<LoadedParty>,
    /// This run's generation in the registry (see `Rooms::retire`).
    generation: u64,
    rx: mpsc::Receiver<RoomMsg>,
    slot: Slot,
    next_task: u64,
    /// When the last event was handled; idleness is measured from it.
    last_event: tokio::time::Instant,
    /// The same, on the registry's clock, read by it to pick LRU victims.
    last_active: Arc<AtomicU64>,
    /// Replies owed to parked `on-request` handlers, by task id.
    pending_requests: HashMap<u64, oneshot::Sender<Response>>,
    /// Outbound fetches in flight; dropping the set aborts them.
    fetches: JoinSet<FetchDone>,
    /// The output gate: what each call produced, in order, until its
    /// writes are durable.
    gate: VecDeque<effects::Output>,
    /// Writes of finished calls not committed yet: gathered over a burst
    /// of events, or waiting for the commit in flight (see `effects.rs`).
    next_batch: crate::storage::PendingWrites,
    /// When the first write of the next batch was gathered.
    gathering_since: Option<std::time::Instant>,
    /// The room's place among its project's running rooms; given back as
    /// it retires, before it forwards late messages to its next run.
    running: Option<Lease>,
    /// Why the instance could not start, when a total's cap refused it: the
    /// client is told (it is the tenant's to know).
    start_refusal: Option<String>,
    /// Read by room listings; written after each event.
    gauges: Arc<RoomGauges>,
    /// In a cluster: the lease term the room was claimed in.
    fence: Option<Fence>,
    /// Set when the room found it no longer owns itself (another node
    /// claimed it, or this node's lease lapsed): it stops after the event.
    moved: bool,
}

/// A room's claim on itself in a cluster: valid while the node's lease has
/// not lapsed since the room was loaded.
pub(in crate::rooms) struct Fence {
    lease: Arc<crate::storage::Lease>,
    term: u64,
}

impl Fence {
    pub(in crate::rooms) fn new(lease: &Arc<crate::storage::Lease>) -> Self {
        Self { lease: lease.clone(), term: lease.term() }
    }

    fn holds(&self) -> bool {
        self.lease.valid(self.term)
    }
}

impl Room {
    pub(super) fn new(
        rooms: Arc<Rooms>,
        party: Arc<LoadedParty>,
        generation: u64,
        state: RoomState,
        rx: mpsc::Receiver<RoomMsg>,
        running: Lease,
        gauges: Arc<RoomGauges>,
    ) -> Self {
        Self {
            gauges,
            running: Some(running),
            start_refusal: None,
            key: state.key.clone(),
            last_active: Arc::new(AtomicU64::new(rooms.clock_ms())),
            rooms,
            party,
            generation,
            rx,
            slot: Slot::Idle(state),
            next_task: 1,
            last_event: tokio::time::Instant::now(),
            pending_requests: HashMap::new(),
            fetches: JoinSet::new(),
            gate: VecDeque::new(),
            next_batch: crate::storage::PendingWrites::default(),
            gathering_since: None,
            fence: None,
            moved: false,
        }
    }

    /// In a cluster: the room acts only while `fence` holds.
    pub(super) fn fenced_by(self, fence: Option<Fence>) -> Self {
        Self { fence, ..self }
    }

    /// Whether the room may still act as its one writer; once it may not,
    /// it stops after the event under way.
    fn still_owned(&mut self) -> bool {
        if self.fence.as_ref().is_some_and(|fence| !fence.holds()) {
            self.moved = true;
        }
        !self.moved
    }

    /// Handles events until the room retires (idle, no sockets) or the host
    /// shuts down; then closes any socket left with 1001.
    pub(super) async fn run(mut self) {
        let shutdown = self.rooms.shutdown().clone();
        loop {
            let alarm = self.state().storage.alarm();
            let idle_at = self.idle_action().map(|_| self.last_event + self.rooms.config().idle_timeout);
            let event = tokio::select! {
                // In this order: shutdown first, so a room with a full mailbox
                // stops after the call under way, not after its whole queue;
                // then commits and fetch results, so busy sockets cannot keep
                // the output gate from draining.
                biased;
                () = shutdown.cancelled() => break,
                Some(result) = Self::next_durable(&mut self.gate), if !self.gate.is_empty() => Event::Durable(result),
                Some(Ok(done)) = self.fetches.join_next(), if !self.fetches.is_empty() => {
                    Event::FetchDone(done)
                }
                msg = self.rx.recv() => match msg {
                    Some(msg) => Event::Message(msg),
                    None => break,
                },
                () = sleep_until_ms(alarm), if alarm.is_some() => Event::Alarm,
                () = sleep_until(idle_at), if idle_at.is_some() => Event::Idle,
            };
            // A reload reaches the room here, before the event it woke for;
            // a commit's outcome is taken first, so a failed one is never
            // released as durable by the flush after a removed party.
            if !matches!(event, Event::Durable(_)) && !self.follow_party() {
                break;
            }
            // Each event's work is boxed: a future holds the state of its
            // deepest await, so inline this loop would carry that of the
            // longest path (a connect that starts an instance, resets it
            // and reloads storage) for as long as the room lives, idle or
            // not: kilobytes per room, against one allocation per event.
            match event {
                Event::Message(msg) => Box::pin(self.handle(msg)).await,
                Event::FetchDone(done) => Box::pin(self.resume(done)).await,
                Event::Alarm => Box::pin(self.fire_alarm()).await,
                Event::Durable(result) => Box::pin(self.on_durable(result)).await,
                Event::Idle => {
                    if self.on_idle() && self.rooms.retire(&self.key, self.generation, || self.rx.is_empty())
                    {
                        return Box::pin(self.retired()).await;
                    }
                }
            }
            if !self.next_batch.is_empty() {
                Box::pin(self.commit_gathered()).await;
            }
            if self.moved {
                return Box::pin(self.moved_away()).await;
            }
            self.touch();
        }
        // Flush: what already ran reaches clients once it is durable.
        Box::pin(self.drain_gate()).await;
        for entry in self.state().connections.values() {
            let _ = entry
                .sender
                .try_send(Outgoing::Close { code: CLOSE_GOING_AWAY, reason: "server shutting down".into() });
        }
        self.drop_instance();
        debug!(room = %self.key, "room stopped");
    }

    async fn handle(&mut self, msg: RoomMsg) {
        match msg {
            RoomMsg::Connect(connect) => self.connect(*connect).await,
            // The weight is held until the guest is done with the message.
            RoomMsg::Message { conn, socket, msg, weight: _weight } => {
                if self.is_current(&conn, socket) {
                    let task = self.next_task();
                    if let Some(guest) = self.live_guest().await {
                        let result = guest.on_message(task, conn.as_str(), &msg).await;
                        self.finish(result).await;
                    }
                }
            }
            RoomMsg::Departed { conn, socket, how } => {
                if let Some(entry) = self.remove_connection(&conn, socket) {
                    self.departed(&conn, entry, how).await;
                }
            }
            RoomMsg::Request { request, reply, hops, weight: _weight } => {
                self.request(*request, reply, hops).await;
            }
            RoomMsg::Evict => self.evict_if_idle(),
            RoomMsg::Fence => {
                self.still_owned();
            }
        }
    }

    async fn connect(&mut self, c: Connect) {
        if let Some(old) = self.state_mut().connections.remove(&c.conn) {
            // partysocket reconnects with the same `_pk`; the newer socket wins.
            let reason = "replaced by a newer connection with the same id".to_owned();
            let _ = old.sender.try_send(Outgoing::Close { code: 1000, reason: reason.clone() });
            self.departed(&c.conn, old, Departure::Closed { code: 1000, reason }).await;
        }
        let max = self.state_mut().limits.connections_per_room;
        if self.state_mut().connections.len() >= max {
            let reason = format!("room is full ({max} connections)");
            self.rooms.limit_hit(&self.key, Limit::Connections, || reason.clone());
            let _ = c.sender.try_send(Outgoing::Close { code: CLOSE_TRY_AGAIN, reason });
            return;
        }
        let refuse = |c: &Connect| {
            let _ = c
                .sender
                .try_send(Outgoing::Close { code: CLOSE_INTERNAL_ERROR, reason: "room error".into() });
        };
        let task = self.next_task();
        let Some(guest) = self.live_guest().await else {
            return match self.start_refusal.take() {
                // A total's cap: the client may try again later, and learns why.
                Some(cap) => {
                    let reason = cut_reason(cap);
                    let _ = c.sender.try_send(Outgoing::Close { code: CLOSE_TRY_AGAIN, reason });
                }
                None => refuse(&c),
            };
        };
        let tags = match guest.get_connection_tags(c.conn.as_str(), &c.request).await {
            Ok(tags) => tags,
            Err(e) => {
                self.reset(&e).await;
                return refuse(&c);
            }
        };
        let entry = ConnectionEntry {
            socket: c.socket,
            tags: clean_tags(&c.conn, tags),
            state: None,
            uri: c.request.url.clone(),
            sender: c.sender.clone(),
            too_slow: c.too_slow.clone(),
        };
        guest.room_mut().connections.insert(c.conn.clone(), entry);
        let result = guest.on_connect(task, c.conn.as_str(), &c.request).await;
        if !self.finish(result).await {
            self.state_mut().connections.remove(&c.conn);
            refuse(&c);
        }
    }

    /// Tells the guest a connection has gone. It is no longer among the
    /// room's connections, but during the call the guest can still read
    /// its state and tags, as PartyKit's `onClose` can.
    async fn departed(&mut self, conn: &ConnectionId, entry: ConnectionEntry, how: Departure) {
        let task = self.next_task();
        let Some(guest) = self.live_guest().await else { return };
        guest.room_mut().departing = Some((conn.clone(), entry));
        let result = match &how {
            Departure::Closed { code, reason } => {
                // 1006: the connection dropped without a closing handshake.
                let was_clean = *code != 1006;
                guest.on_close(task, conn.as_str(), *code, reason, was_clean).await
            }
            Departure::Failed(error) => guest.on_error(task, conn.as_str(), error).await,
        };
        self.state_mut().departing = None;
        self.finish(result).await;
    }

    async fn request(&mut self, request: Request, reply: oneshot::Sender<Response>, hops: u32) {
        let task = self.next_task();
        // Fetches made while handling it (and by an `on-start` it causes) go
        // one hop further; `finish` resets the depth after each call.
        self.state_mut().hops = hops;
        let Some(guest) = self.live_guest().await else {
            let message = match self.start_refusal.take() {
                Some(cap) => format!("the room cannot start: {cap}"),
                None => "the room could not start; see the host log".to_owned(),
            };
            let _ = reply.send(error_response(503, &message));
            return;
        };
        match guest.on_request(task, &request).await {
            Ok(RequestOutcome::Ready(response)) => {
                // Released with the call's other effects, after the commit.
                let response = guest.room().bounded(response);
                guest.room_mut().completed.push((task, response));
                self.pending_requests.insert(task, reply);
                self.finish(Ok(())).await;
            }
            Ok(RequestOutcome::Pending) => {
                self.pending_requests.insert(task, reply);
                self.finish(Ok(())).await;
            }
            Err(e) => {
                // The tenant may see the kind of failure (it is their code's),
                // never the host's internals.
                let message = format!("the room failed while handling the request ({})", e.kind.as_str());
                self.finish(Err(e)).await;
                let _ = reply.send(error_response(500, &message));
            }
        }
    }

    async fn resume(&mut self, done: FetchDone) {
        let state = self.state_mut();
        state.fetches_in_flight = state.fetches_in_flight.saturating_sub(1);
        state.hops = done.hops;
        if let Some(guest) = self.live_guest().await {
            let result = guest.resume(done.id, &done.result).await;
            self.finish(result).await;
        }
    }

    async fn fire_alarm(&mut self) {
        // Cleared before the call, in the batch its writes join (committed
        // even when it traps, before the room reloads): the handler may set
        // the next one, and a handler that traps does not fire again at once.
        let hops = self.state().alarm_hops;
        let retry = std::mem::take(&mut self.state_mut().alarm_retry);
        let _ = self.state_mut().set_alarm(None);
        if !self.finish(Ok(())).await {
            return;
        }
        let task = self.next_task();
        // At the depth of the call that set it: an alarm does not start a
        // chain of room-to-room requests afresh.
        self.state_mut().hops = hops;
        let ran = match self.live_guest().await {
            Some(guest) => {
                let result = guest.on_alarm(task, retry).await;
                self.finish(result).await
            }
            None => false,
        };
        if !ran {
            self.retry_alarm(retry, hops).await;
        }
    }

    /// After a failed `on-alarm`: runs it again after 2, 4, 8... seconds (by default),
    /// [`MAX_ALARM_RETRIES`] times, as Durable Objects do, unless an alarm
    /// is set again (the failed call's own writes are already undone).
    async fn retry_alarm(&mut self, failed: u32, hops: u32) {
        if failed >= MAX_ALARM_RETRIES || self.state().storage.alarm().is_some() {
            if failed >= MAX_ALARM_RETRIES {
                tracing::warn!(room = %self.key, retries = failed, "on-alarm failed on its last retry; the alarm is dropped");
            }
            return;
        }
        let first = u64::try_from(self.rooms.config().alarm_retry.as_millis()).unwrap_or(u64::MAX);
        let delay_ms = first.saturating_mul(1 << failed);
        let state = self.state_mut();
        state.hops = hops;
        if let Err(cap) = state.set_alarm(Some(now_ms().saturating_add(delay_ms))) {
            return state.cap_reached(&cap);
        }
        state.alarm_retry = failed + 1;
        tracing::info!(room = %self.key, retry = failed + 1, delay_ms, "on-alarm failed; retrying");
        self.finish(Ok(())).await;
    }

    fn state(&self) -> &RoomState {
        match &self.slot {
            Slot::Live(guest) => guest.room(),
            Slot::Idle(state) => state,
            Slot::Empty => unreachable_state(),
        }
    }

    fn state_mut(&mut self) -> &mut RoomState {
        match &mut self.slot {
            Slot::Live(guest) => guest.room_mut(),
            Slot::Idle(state) => state,
            Slot::Empty => unreachable_state(),
        }
    }

    fn is_current(&self, conn: &ConnectionId, socket: u64) -> bool {
        self.state().connections.get(conn).is_some_and(|e| e.socket == socket)
    }

    /// Forgets a connection if `socket` is still the one registered for it.
    fn remove_connection(&mut self, conn: &ConnectionId, socket: u64) -> Option<ConnectionEntry> {
        if !self.is_current(conn, socket) {
            return None;
        }
        self.state_mut().connections.remove(conn)
    }

    fn next_task(&mut self) -> u64 {
        let task = self.next_task;
        self.next_task += 1;
        task
    }

    /// Marks the room active now (for idleness and the instance LRU).
    fn touch(&mut self) {
        let state = self.state();
        self.gauges.connections.store(state.connections.len(), Ordering::Relaxed);
        self.gauges.storage_bytes.store(state.storage.total_bytes(), Ordering::Relaxed);
        self.last_event = tokio::time::Instant::now();
        self.last_active.store(self.rooms.clock_ms(), std::sync::atomic::Ordering::Relaxed);
    }
}

/// `Slot::Empty` exists only inside `lifecycle.rs`, which never calls back
/// into the room while the slot is empty.
#[allow(clippy::panic)]
fn unreachable_state() -> ! {
    panic!("room state read while an instance was being created or dropped")
}

/// The connection id first, then the guest's tags, without duplicates,
/// within the DO limits.
fn clean_tags(conn: &ConnectionId, tags: Vec<String>) -> Vec<String> {
    let mut clean = vec![conn.to_string()];
    for tag in tags {
        if clean.len() == MAX_TAGS {
            tracing::warn!(conn = %conn, "more than {MAX_TAGS} connection tags; the rest are dropped");
            break;
        }
        if tag.is_empty() || tag.len() > MAX_TAG_BYTES || clean.contains(&tag) {
            continue;
        }
        clean.push(tag);
    }
    clean
}

/// A WebSocket close reason is at most 123 bytes.
fn cut_reason(mut reason: String) -> String {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason.truncate(end);
    reason
}

/// A plain-text response, for requests a room could not answer.
pub fn error_response(status: u16, message: &str) -> Response {
    Response {
        status,
        headers: vec![crate::sandbox::Header {
            name: "content-type".into(),
            value: "text/plain; charset=utf-8".into(),
        }],
        body: message.as_bytes().to_vec(),
    }
}

/// Sleeps until a wall-clock time in milliseconds since the Unix epoch.
async fn sleep_until_ms(time_ms: Option<u64>) {
    let wait = time_ms.map_or(Duration::MAX, |t| Duration::from_millis(t.saturating_sub(now_ms())));
    tokio::time::sleep(wait.min(Duration::from_secs(86_400 * 365))).await;
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::Room;

    /// What a future returned by `f` occupies while it waits.
    fn future_bytes<A, F: std::future::Future>(_: fn(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// A room's task lives as long as the room, hibernating or not, so
    /// whatever its deepest await holds is paid by every room: before the
    /// event handlers were boxed it held 10 KiB, 7.5 KiB of each hibernated
    /// room's 24 (docs/benchmarks.md).
    #[test]
    fn a_rooms_task_holds_a_few_kilobytes_while_it_waits() {
        let bytes = future_bytes(Room::run);
        assert!(bytes <= 4096, "Room::run's future is {bytes} bytes; box the await that grew it");
    }
}
