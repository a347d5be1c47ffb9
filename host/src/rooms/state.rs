//! What a room keeps across instances: its connections, its storage cache,
//! and the effects the current handler call produced.
//!
//! While a guest runs, a [`RoomState`] lives inside its wasmtime `Store` and
//! the imports (in `api/`) act on it. Effects that leave the room (frames to
//! clients, outbound fetches, responses) are queued here, not sent: the room
//! releases them only after the call's storage writes are committed, so no
//! client sees a state that a crash could lose.

use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use super::queue::QueueSender;
use super::tail::Tail;
use super::{Limit, LimitHits, now_ms};
use crate::budget::{CapReached, Lease, Resource, Totals};
use crate::ids::{ConnectionId, RoomKey};
use crate::sandbox::{
    GuestError, GuestOutput, Header, Limits, LogSink, Message, Refusal, Request, Response, TrapKind, Verdict,
};
use crate::storage::RoomStorage;

/// Longest chain of room-to-room requests (a request to a room that
/// fetches another room counts one hop per fetch). Past it `fetch` fails,
/// so a party that fetches fresh rooms which fetch again cannot grow
/// without end.
pub const MAX_HOPS: u32 = 8;

/// Soonest an alarm may fire after it is set. An alarm handler that sets
/// the next alarm for "now" would otherwise run in a tight loop with no
/// client around.
pub const MIN_ALARM_DELAY_MS: u64 = 100;

/// A frame for one socket, queued by the room and written by the
/// connection's socket task.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// UTF-8 text, shared: a broadcast is encoded once for every receiver.
    Text(Bytes),
    Binary(Bytes),
    /// Close the socket with this code and reason.
    Close {
        code: u16,
        reason: String,
    },
}

impl Outgoing {
    /// Bytes the frame holds (a close frame's reason).
    pub fn bytes(&self) -> usize {
        match self {
            Self::Text(bytes) | Self::Binary(bytes) => bytes.len(),
            Self::Close { reason, .. } => reason.len(),
        }
    }
}

impl From<&Message> for Outgoing {
    fn from(msg: &Message) -> Self {
        match msg {
            Message::Text(text) => Self::Text(Bytes::copy_from_slice(text.as_bytes())),
            Message::Binary(bytes) => Self::Binary(Bytes::copy_from_slice(bytes)),
        }
    }
}

/// One open WebSocket, as the room tracks it.
pub struct ConnectionEntry {
    /// Distinguishes this socket from a later one that reuses the same id.
    pub socket: u64,
    pub tags: Vec<String>,
    pub state: Option<Vec<u8>>,
    /// The URL the client connected with (after `on-before-connect`).
    pub uri: String,
    /// To the socket task; bounded by `Limits::connection_queue_frames`.
    pub(super) sender: QueueSender,
    /// Cancelled by the room to drop a client whose queue is full; the
    /// socket task watches it and closes with 1013.
    pub(super) too_slow: CancellationToken,
}

/// Where a queued frame goes.
#[derive(Debug)]
pub(super) enum Target {
    One(ConnectionId),
    All { without: HashSet<String> },
}

/// A fetch the guest started during the current call.
#[derive(Debug)]
pub(super) struct FetchStart {
    pub id: u64,
    pub party: String,
    pub room: String,
    pub request: Request,
    /// Hops of the call that started it; the target's call runs at one more.
    pub hops: u32,
    /// Its place among the project's and host's fetches in flight.
    pub lease: Lease,
}

/// A room's state: kept by the host while no instance runs.
pub struct RoomState {
    pub(super) key: RoomKey,
    /// Shared by every room of the party; copied only into a guest that
    /// asks for them.
    pub(super) vars: Arc<[(String, String)]>,
    pub(super) limits: Limits,
    /// The project's and host's totals this room takes from.
    pub(super) totals: Totals,
    /// How many room-to-room requests led to the current call (0 for a
    /// client's).
    pub(super) hops: u32,
    /// The depth of the call that set the alarm, for `on-alarm` (0 after a
    /// restart of the host).
    pub(super) alarm_hops: u32,
    pub(super) connections: HashMap<ConnectionId, ConnectionEntry>,
    pub(super) storage: RoomStorage,
    /// Frames to release after the current call commits.
    pub(super) outbox: Vec<(Target, Outgoing)>,
    /// Fetches to start after the current call commits.
    pub(super) fetches: Vec<FetchStart>,
    /// Responses of parked `on-request` handlers that finished.
    pub(super) completed: Vec<(u64, Response)>,
    /// Verdicts of parked gates that finished (a gate's instance only).
    pub(super) verdicts: Vec<(u64, Verdict)>,
    /// A gate's instance: no storage, alarms or connections of its own.
    pub(super) stateless: bool,
    /// Which retry of a failed `on-alarm` the pending alarm is (0: none).
    pub(super) alarm_retry: u32,
    /// Fetches started by this room and not yet resumed.
    pub(super) fetches_in_flight: usize,
    next_fetch_id: u64,
    /// The connection whose `on-close` or `on-error` is running: gone from
    /// `connections`, still readable through `get-connection`.
    pub(super) departing: Option<(ConnectionId, ConnectionEntry)>,
    /// What the current call may still do; refilled as each call begins.
    pub(super) call: CallBudget,
    /// Where the guest's log lines go: the host's log and the project's
    /// live tail, within a byte budget per call that the log import and
    /// WASI stdout/stderr share.
    pub(super) output: GuestOutput,
    /// The project's limit counters.
    pub(super) hits: Arc<LimitHits>,
    /// The project's live log.
    pub(super) tail: Arc<Tail>,
    /// Where the party's guest call times go (metrics).
    pub(super) calls: Option<Arc<crate::metrics::CallTimes>>,
}

/// The per-call limits' remainders.
#[derive(Debug, Default)]
pub(super) struct CallBudget {
    pub fetches_left: u32,
    pub fanout_left: u64,
    /// Set when the call broke a limit that an import cannot report as an
    /// error (a broadcast); the room then treats the call as failed.
    pub exceeded: Option<(Limit, String)>,
}

impl RoomState {
    pub(super) fn new(
        key: RoomKey,
        vars: Arc<[(String, String)]>,
        limits: Limits,
        storage: RoomStorage,
        hits: Arc<LimitHits>,
        tail: Arc<Tail>,
        totals: Totals,
    ) -> Self {
        let sink = Arc::new(TailSink { tail: tail.clone(), room: key.clone() });
        let output = GuestOutput { room: key.to_string().into(), budget: Arc::default(), sink: Some(sink) };
        Self {
            output,
            tail,
            calls: None,
            totals,
            hops: 0,
            alarm_hops: 0,
            departing: None,
            call: CallBudget::default(),
            hits,
            key,
            vars,
            limits,
            connections: HashMap::new(),
            storage,
            outbox: Vec::new(),
            fetches: Vec::new(),
            completed: Vec::new(),
            verdicts: Vec::new(),
            stateless: false,
            alarm_retry: 0,
            fetches_in_flight: 0,
            next_fetch_id: 1,
        }
    }

    pub(super) fn next_fetch_id(&mut self) -> u64 {
        let id = self.next_fetch_id;
        self.next_fetch_id += 1;
        id
    }

    /// Refills the per-call budgets; called as each guest call begins.
    pub(super) fn begin_call(&mut self) {
        self.call = CallBudget {
            fetches_left: self.limits.fetches_per_event,
            fanout_left: self.limits.fanout_bytes_per_event,
            exceeded: None,
        };
        let dropped = self.output.budget.refill(self.limits.log_bytes_per_event);
        if dropped > 0 {
            self.limit_hit(Limit::Log, || format!("{dropped} bytes of a call's log output were dropped"));
            tracing::warn!(target: "guest", room = %self.key, dropped, "log limit reached; the rest of a call's output was dropped");
        }
    }

    /// Where the guest's stdout and stderr go.
    pub(super) fn output(&self) -> GuestOutput {
        self.output.clone()
    }

    /// The call's failure if it broke a limit that no import could refuse
    /// (a broadcast past its fan-out budget, say); clears it.
    pub(super) fn take_exceeded(&mut self) -> Result<(), GuestError> {
        match self.call.exceeded.take() {
            Some((limit, detail)) => Err(GuestError { kind: TrapKind::HostLimit(limit.as_str()), detail }),
            None => Ok(()),
        }
    }

    /// Counts a limit this room hit, and tells the live tail.
    pub(super) fn limit_hit(&self, limit: Limit, detail: impl FnOnce() -> String) {
        self.hits.count(limit);
        self.tail.emit(&self.key, "limit", || (limit.as_str().to_owned(), detail()));
    }

    /// Forgets every effect of the current call (it trapped or its commit
    /// failed).
    pub(super) fn discard_effects(&mut self) {
        self.outbox.clear();
        self.fetches.clear();
        self.completed.clear();
        self.verdicts.clear();
    }

    /// Counts a limit that refused a call, and gives the guest the refusal.
    pub(super) fn refuse(&self, limit: Limit, refusal: fn(String) -> Refusal, why: String) -> Refusal {
        self.limit_hit(limit, || why.clone());
        refusal(why)
    }

    /// Counts a refusal by a total's cap.
    pub(super) fn cap_reached(&self, cap: &CapReached) {
        self.limit_hit(Limit::Totals, || cap.to_string());
        tracing::warn!(room = %self.key, cause = %cap, "refused by a total's cap");
    }

    /// Sets or clears the alarm, keeping the project's count of rooms with
    /// an alarm. An alarm is never sooner than [`MIN_ALARM_DELAY_MS`].
    ///
    /// # Errors
    /// When setting a first alarm would pass the alarms total.
    pub(super) fn set_alarm(&mut self, time_ms: Option<u64>) -> Result<(), CapReached> {
        match (self.storage.alarm().is_some(), time_ms.is_some()) {
            (false, true) => self.totals.try_take(Resource::Alarms, 1)?,
            (true, false) => self.totals.give_back(Resource::Alarms, 1),
            _ => {}
        }
        self.storage.set_alarm(time_ms.map(|t| t.max(now_ms() + MIN_ALARM_DELAY_MS)));
        self.alarm_hops = self.hops;
        Ok(())
    }

    /// Takes the storage totals from `old`'s bytes and alarm to the
    /// current storage's (after a reload from disk).
    pub(super) fn settle_storage(&mut self, old_bytes: usize, old_alarm: bool) {
        let (bytes, alarm) = (self.storage.total_bytes(), self.storage.alarm().is_some());
        self.totals.settle(Resource::Storage, old_bytes as u64, bytes as u64);
        self.totals.settle(Resource::Alarms, u64::from(old_alarm), u64::from(alarm));
    }

    /// `response`, or a 500 in its place when its body is over the limit.
    pub(super) fn bounded(&self, response: Response) -> Response {
        let limit = self.limits.body_bytes;
        if response.body.len() <= limit {
            return response;
        }
        let message = format!("the room's response body is over {limit} bytes");
        self.limit_hit(Limit::Body, || message.clone());
        tracing::warn!(room = %self.key, size = response.body.len(), "{message}");
        Response {
            status: 500,
            headers: vec![Header { name: "content-type".into(), value: "text/plain; charset=utf-8".into() }],
            body: message.into_bytes(),
        }
    }
}

/// Sends a room's guest log lines to its project's live tail.
struct TailSink {
    tail: Arc<Tail>,
    room: RoomKey,
}

impl LogSink for TailSink {
    fn line(&self, level: tracing::Level, line: &str) {
        self.tail.emit(&self.room, "log", || (level.as_str().to_ascii_lowercase(), line.to_owned()));
    }
}
