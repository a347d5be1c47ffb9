//! The room actor: one task per live room, owning its guest instance, its
//! connections and its storage cache. Everything else talks to it through
//! its [`RoomHandle`](super::RoomHandle).
//!
//! Events are handled one at a time. A handler that awaits a fetch parks
//! inside the guest and the call returns, so the room goes on with its next
//! event; when the fetch's response arrives (from the `fetches` set) the
//! room calls `resume` and the handler carries on.
//!
//! After each guest call the room commits the call's storage writes, then
//! releases its effects: frames, fetches, responses. A trap or a failed
//! commit discards the effects, drops the instance and reloads storage; the
//! next event starts a fresh instance, so the room recovers by itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::handle::{Connect, RoomMsg};
use super::registry::Rooms;
use super::state::{ConnectionEntry, FetchStart, Outgoing, RoomState, Target};
use super::{CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR, CLOSE_TRY_AGAIN, now_ms};
use crate::ids::{ConnectionId, RoomKey};
use crate::sandbox::{Guest, GuestError, PartyCode, Request, RequestOutcome, Response};

/// Most tags a connection keeps (its id included), as in Durable Objects.
const MAX_TAGS: usize = 10;
/// Longest tag kept, in bytes.
const MAX_TAG_BYTES: usize = 256;

/// The instance, or the state alone while no instance runs.
enum Slot {
    Live(Guest<RoomState>),
    Idle(RoomState),
    /// Only while an instance is being created.
    Empty,
}

pub(super) struct Room {
    key: RoomKey,
    rooms: Arc<Rooms>,
    code: Arc<PartyCode<RoomState>>,
    rx: mpsc::Receiver<RoomMsg>,
    slot: Slot,
    next_task: u64,
    /// Replies owed to parked `on-request` handlers, by task id.
    pending_requests: HashMap<u64, oneshot::Sender<Response>>,
    /// Outbound fetches in flight; dropping the set aborts them.
    fetches: JoinSet<(u64, Result<Response, String>)>,
    shutdown: CancellationToken,
}

impl Room {
    pub(super) fn new(
        rooms: Arc<Rooms>,
        code: Arc<PartyCode<RoomState>>,
        state: RoomState,
        rx: mpsc::Receiver<RoomMsg>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            key: state.key.clone(),
            rooms,
            code,
            rx,
            slot: Slot::Idle(state),
            next_task: 1,
            pending_requests: HashMap::new(),
            fetches: JoinSet::new(),
            shutdown,
        }
    }

    /// Handles events until shutdown, then closes every socket with 1001.
    pub(super) async fn run(mut self) {
        loop {
            let alarm = self.state().storage.alarm();
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                msg = self.rx.recv() => match msg {
                    Some(msg) => self.handle(msg).await,
                    None => break,
                },
                Some(done) = self.fetches.join_next(), if !self.fetches.is_empty() => {
                    if let Ok((fetch, result)) = done {
                        self.resume(fetch, result).await;
                    }
                }
                () = sleep_until_ms(alarm), if alarm.is_some() => self.fire_alarm().await,
            }
        }
        for entry in self.state().connections.values() {
            let _ = entry.sender.try_send(Outgoing::Close {
                code: CLOSE_GOING_AWAY,
                reason: "server shutting down".into(),
            });
        }
        info!(room = %self.key, "room stopped");
    }

    async fn handle(&mut self, msg: RoomMsg) {
        match msg {
            RoomMsg::Connect(connect) => self.connect(connect).await,
            RoomMsg::Message { conn, socket, msg } => {
                if self.is_current(&conn, socket) {
                    let task = self.next_task();
                    if let Some(guest) = self.live_guest().await {
                        let result = guest.on_message(task, conn.as_str(), &msg).await;
                        self.finish(result).await;
                    }
                }
            }
            RoomMsg::Close {
                conn,
                socket,
                code,
                reason,
            } => {
                if self.remove_connection(&conn, socket) {
                    let task = self.next_task();
                    if let Some(guest) = self.live_guest().await {
                        let result = guest.on_close(task, conn.as_str(), code, &reason).await;
                        self.finish(result).await;
                    }
                }
            }
            RoomMsg::Error { conn, socket, error } => {
                if self.remove_connection(&conn, socket) {
                    let task = self.next_task();
                    if let Some(guest) = self.live_guest().await {
                        let result = guest.on_error(task, conn.as_str(), &error).await;
                        self.finish(result).await;
                    }
                }
            }
            RoomMsg::Request { request, reply } => self.request(request, reply).await,
        }
    }

    async fn connect(&mut self, c: Connect) {
        if let Some(old) = self.state_mut().connections.remove(&c.conn) {
            // partysocket reconnects with the same `_pk`; the newer socket wins.
            let reason = "replaced by a newer connection with the same id".to_owned();
            let _ = old.sender.try_send(Outgoing::Close {
                code: 1000,
                reason: reason.clone(),
            });
            let task = self.next_task();
            if let Some(guest) = self.live_guest().await {
                let result = guest.on_close(task, c.conn.as_str(), 1000, &reason).await;
                self.finish(result).await;
            }
        }
        let refuse = |c: &Connect| {
            let _ = c.sender.try_send(Outgoing::Close {
                code: CLOSE_INTERNAL_ERROR,
                reason: "room error".into(),
            });
        };
        let task = self.next_task();
        let Some(guest) = self.live_guest().await else {
            return refuse(&c);
        };
        let tags = match guest.get_connection_tags(c.conn.as_str(), &c.request).await {
            Ok(tags) => tags,
            Err(e) => {
                self.reset(&e);
                return refuse(&c);
            }
        };
        let entry = ConnectionEntry {
            socket: c.socket,
            tags: clean_tags(&c.conn, tags),
            state: None,
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

    async fn request(&mut self, request: Request, reply: oneshot::Sender<Response>) {
        let task = self.next_task();
        let Some(guest) = self.live_guest().await else {
            let _ = reply.send(error_response(503, "the room could not start; see the host log"));
            return;
        };
        let outcome = guest.on_request(task, &request).await;
        match outcome {
            Ok(RequestOutcome::Ready(response)) => {
                // Released with the call's other effects, after the commit.
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

    async fn resume(&mut self, fetch: u64, result: Result<Response, String>) {
        self.state_mut().fetches_in_flight -= 1;
        if let Some(guest) = self.live_guest().await {
            let result = guest.resume(fetch, &result).await;
            self.finish(result).await;
        }
    }

    async fn fire_alarm(&mut self) {
        // Cleared and committed before the call: the handler may set the
        // next one, and a handler that traps does not fire again at once.
        self.state_mut().storage.set_alarm(None);
        if !self.finish(Ok(())).await {
            return;
        }
        let task = self.next_task();
        if let Some(guest) = self.live_guest().await {
            let result = guest.on_alarm(task).await;
            self.finish(result).await;
        }
    }

    /// The running instance, creating it (and running `on-start`) if none
    /// runs. `None` when the instance could not start; that is logged.
    async fn live_guest(&mut self) -> Option<&mut Guest<RoomState>> {
        if let Slot::Idle(_) = self.slot {
            let Slot::Idle(state) = std::mem::replace(&mut self.slot, Slot::Empty) else {
                return None;
            };
            match self.code.instantiate(state).await {
                Ok(mut guest) => {
                    let task = self.next_task();
                    let started = guest.on_start(task).await;
                    self.slot = Slot::Live(guest);
                    info!(room = %self.key, "instance started");
                    if !self.finish(started).await {
                        return None;
                    }
                }
                Err((state, e)) => {
                    warn!(room = %self.key, error.type = e.kind.as_str(), cause = %e.detail, "instance failed to start");
                    self.slot = Slot::Idle(state);
                    return None;
                }
            }
        }
        match &mut self.slot {
            Slot::Live(guest) => Some(guest),
            _ => None,
        }
    }

    /// Ends a guest call: commits its writes and releases its effects, or
    /// resets the room if it failed. Returns whether the call took effect.
    async fn finish(&mut self, result: Result<(), GuestError>) -> bool {
        if let Err(e) = result {
            self.reset(&e);
            return false;
        }
        let writes = self.state_mut().storage.take_pending();
        if !writes.is_empty()
            && let Err(e) = self.rooms.db().commit(&self.key, &writes)
        {
            tracing::error!(room = %self.key, cause = %format!("{e:#}"), "storage commit failed; resetting the room");
            self.reset_state();
            return false;
        }
        self.release();
        true
    }

    /// Sends what the last call queued: frames, fetches, responses.
    fn release(&mut self) {
        let state = self.state_mut();
        let outbox = std::mem::take(&mut state.outbox);
        let fetches = std::mem::take(&mut state.fetches);
        let completed = std::mem::take(&mut state.completed);
        for (target, frame) in outbox {
            deliver(&state.connections, target, frame);
        }
        for fetch in fetches {
            self.start_fetch(fetch);
        }
        for (task, response) in completed {
            if let Some(reply) = self.pending_requests.remove(&task) {
                let _ = reply.send(response);
            }
        }
        // Callers that gave up (timeout, deadline) no longer need a reply.
        self.pending_requests.retain(|_, reply| !reply.is_closed());
    }

    fn start_fetch(&mut self, fetch: FetchStart) {
        self.state_mut().fetches_in_flight += 1;
        let FetchStart {
            id,
            party,
            room,
            request,
        } = fetch;
        let response = self.rooms.fetch(&self.key, &party, &room, request);
        let timeout = self.code.limits().fetch_timeout;
        self.fetches.spawn(async move {
            let result = match response {
                Err(e) => Err(format!("fetch to {party}/{room} failed: {e:#}")),
                Ok(response) => match tokio::time::timeout(timeout, response).await {
                    Ok(Ok(response)) => Ok(response),
                    Ok(Err(_)) => Err(format!("fetch to {party}/{room} failed: the room stopped")),
                    Err(_) => Err(format!(
                        "fetch to {party}/{room} got no response within {timeout:?} (a request cycle that cannot finish?)"
                    )),
                },
            };
            (id, result)
        });
    }

    /// Logs a failed call and resets the room.
    fn reset(&mut self, e: &GuestError) {
        warn!(room = %self.key, error.type = e.kind.as_str(), cause = %e.detail, "guest call failed; restarting the instance");
        self.reset_state();
    }

    /// Drops the instance and every effect not yet released, and reloads
    /// storage from disk so uncommitted writes vanish.
    fn reset_state(&mut self) {
        let mut state = match std::mem::replace(&mut self.slot, Slot::Empty) {
            Slot::Live(guest) => guest.into_room(),
            Slot::Idle(state) => state,
            Slot::Empty => return,
        };
        state.discard_effects();
        match self.rooms.db().load(&self.key) {
            Ok(storage) => state.storage = storage,
            Err(e) => {
                tracing::error!(room = %self.key, cause = %format!("{e:#}"), "reloading storage failed")
            }
        }
        // Handlers parked in the dropped instance will never finish.
        self.fetches.abort_all();
        state.fetches_in_flight = 0;
        for (_, reply) in self.pending_requests.drain() {
            let _ = reply.send(error_response(500, "the room restarted after an error"));
        }
        self.slot = Slot::Idle(state);
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
        self.state()
            .connections
            .get(conn)
            .is_some_and(|e| e.socket == socket)
    }

    /// Forgets a connection if `socket` is still the one registered for it.
    fn remove_connection(&mut self, conn: &ConnectionId, socket: u64) -> bool {
        let is_current = self.is_current(conn, socket);
        if is_current {
            self.state_mut().connections.remove(conn);
        }
        is_current
    }

    fn next_task(&mut self) -> u64 {
        let task = self.next_task;
        self.next_task += 1;
        task
    }
}

/// `Slot::Empty` exists only inside `live_guest` and `reset_state`, which
/// never call back into the room.
#[allow(clippy::panic)]
fn unreachable_state() -> ! {
    panic!("room state read while an instance was being created")
}

/// Queues `frame` for its target; a full queue marks the client too slow.
fn deliver(connections: &HashMap<ConnectionId, ConnectionEntry>, target: Target, frame: Outgoing) {
    let push = |entry: &ConnectionEntry| {
        if let Err(mpsc::error::TrySendError::Full(_)) = entry.sender.try_send(frame.clone()) {
            debug!("outgoing queue full; dropping the client as too slow ({CLOSE_TRY_AGAIN})");
            entry.too_slow.cancel();
        }
    };
    match target {
        Target::One(id) => connections.get(&id).into_iter().for_each(push),
        Target::All { without } => connections
            .iter()
            .filter(|(id, _)| !without.iter().any(|w| w == id.as_str()))
            .for_each(|(_, entry)| push(entry)),
    }
}

/// The connection id first, then the guest's tags, without duplicates,
/// within the DO limits.
fn clean_tags(conn: &ConnectionId, tags: Vec<String>) -> Vec<String> {
    let mut clean = vec![conn.to_string()];
    for tag in tags {
        if clean.len() == MAX_TAGS {
            warn!(conn = %conn, "more than {MAX_TAGS} connection tags; the rest are dropped");
            break;
        }
        if tag.is_empty() || tag.len() > MAX_TAG_BYTES || clean.contains(&tag) {
            continue;
        }
        clean.push(tag);
    }
    clean
}

fn error_response(status: u16, message: &str) -> Response {
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
    let wait = time_ms.map_or(Duration::MAX, |t| {
        Duration::from_millis(t.saturating_sub(now_ms()))
    });
    tokio::time::sleep(wait.min(Duration::from_secs(86_400 * 365))).await;
}
