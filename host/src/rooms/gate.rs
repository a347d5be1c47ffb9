//! Gates: PartyKit's static `onBeforeConnect` and `onBeforeRequest`. A gate
//! runs before a request reaches its room, in a fresh instance of the party
//! used for nothing else: no `on-start`, no storage, alarms or connections,
//! only the room's identity and vars and fetches to the project's rooms,
//! under the party's limits. It passes the request on (perhaps rewritten)
//! or answers in the room's place. Which gates a party has is asked once
//! per loaded party (its traits); a party without them costs no instance at all.

use std::sync::Arc;
use tokio::task::JoinSet;

use super::registry::Rooms;
use super::room::{error_response, run_fetch};
use super::state::RoomState;
use crate::ids::RoomKey;
use crate::sandbox::{GateOutcome, Guest, GuestError, Request, Traits, Verdict};
use crate::storage::RoomStorage;

/// Which gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Before a WebSocket upgrade.
    BeforeConnect,
    /// Before an HTTP request.
    BeforeRequest,
}

impl Gate {
    fn flag(self) -> Traits {
        match self {
            Self::BeforeConnect => Traits::BEFORE_CONNECT,
            Self::BeforeRequest => Traits::BEFORE_REQUEST,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::BeforeConnect => "on-before-connect",
            Self::BeforeRequest => "on-before-request",
        }
    }
}

/// The task id of the gate's one call (its instance runs nothing else).
const GATE_TASK: u64 = 1;

/// Gates of one party running at once. Each holds an instance of its own
/// (counted against the project's instances and memory): a flood of
/// clients is refused here, not by starving the project's rooms.
pub const MAX_GATES_PER_PARTY: usize = 64;

/// The longest a gate may take, fetches included.
pub const GATE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// Most bytes of URL and headers a gate may pass on, and most headers: it
/// rewrites a request that the edge had bounded.
const MAX_PASSED_URL_BYTES: usize = 16 << 10;
const MAX_PASSED_HEADER_BYTES: usize = 64 << 10;
const MAX_PASSED_HEADERS: usize = 128;

impl Rooms {
    /// Runs the party's `gate` on `request` for room `key`: the request to
    /// pass on, or the response to give instead. A party without the gate
    /// passes the request as it is; a gate that fails answers 500.
    pub async fn pass_gate(self: &Arc<Self>, key: &RoomKey, gate: Gate, request: Request) -> Verdict {
        let Some(party) = self.party(&key.party) else { return Verdict::Pass(request) };
        if party.traits.get().is_some_and(|traits| !traits.contains(gate.flag())) {
            return Verdict::Pass(request);
        }
        let Ok(_slot) = party.gate_slots.clone().try_acquire_owned() else {
            let message =
                format!("too many requests are waiting for {} of this party; try again", gate.name());
            self.limit_hit(key, super::Limit::Totals, || message.clone());
            return Verdict::Refuse(error_response(503, &message));
        };
        match tokio::time::timeout(GATE_DEADLINE, self.run_gate(key, &party, gate, request)).await {
            Ok(verdict) => verdict,
            Err(_) => {
                let message = format!("{} did not decide within {GATE_DEADLINE:?}", gate.name());
                self.limit_hit(key, super::Limit::Wall, || message.clone());
                Verdict::Refuse(error_response(504, &message))
            }
        }
    }

    async fn run_gate(
        self: &Arc<Self>,
        key: &RoomKey,
        party: &super::LoadedParty,
        gate: Gate,
        request: Request,
    ) -> Verdict {
        let limits = party.code.limits().clone();
        let mut state = RoomState::new(
            key.clone(),
            self.vars_of(party),
            limits.clone(),
            RoomStorage::default(),
            self.limit_hits().clone(),
            self.tail().clone(),
            self.totals().clone(),
        );
        state.stateless = true;
        state.calls = self.metrics().calls(key.party.as_str());
        let mut guest = match party.code.instantiate(state).await {
            Ok(guest) => guest,
            // As when a room cannot start: a cap or a broken component.
            Err((_, e)) => return self.gate_failed(key, gate, &e, 503),
        };
        let traits = match party.traits.get() {
            Some(traits) => *traits,
            None => match guest.traits().await {
                Ok(traits) => *party.traits.get_or_init(|| async { traits }).await,
                // Whether it has a gate is unknown, so nothing passes.
                Err(e) => return self.gate_failed(key, gate, &e, 500),
            },
        };
        if !traits.contains(gate.flag()) {
            return Verdict::Pass(request);
        }
        let outcome = match gate {
            Gate::BeforeConnect => guest.on_before_connect(GATE_TASK, &request).await,
            Gate::BeforeRequest => guest.on_before_request(GATE_TASK, &request).await,
        };
        match self.drive(key, &mut guest, outcome, limits.fetch_timeout).await {
            Ok(Verdict::Pass(request)) => match check_passed(&request, limits.body_bytes) {
                Ok(()) => Verdict::Pass(request),
                Err(why) => {
                    let message = format!("{} passed on {why}", gate.name());
                    self.limit_hit(key, super::Limit::Body, || message.clone());
                    Verdict::Refuse(error_response(500, &message))
                }
            },
            Ok(Verdict::Refuse(response)) => Verdict::Refuse(guest.room().bounded(response)),
            Err(e) => self.gate_failed(key, gate, &e, 500),
        }
    }

    /// Carries a gate's call to its verdict: while it is parked on fetches,
    /// sends them and resumes it with each response, as a room would.
    async fn drive(
        self: &Arc<Self>,
        key: &RoomKey,
        guest: &mut Guest<RoomState>,
        mut outcome: Result<GateOutcome, GuestError>,
        fetch_timeout: std::time::Duration,
    ) -> Result<Verdict, GuestError> {
        let mut fetches = JoinSet::new();
        loop {
            if let GateOutcome::Ready(verdict) = outcome? {
                return Ok(verdict);
            }
            let state = guest.room_mut();
            state.take_exceeded()?;
            if let Some(at) = state.verdicts.iter().position(|(task, _)| *task == GATE_TASK) {
                return Ok(state.verdicts.swap_remove(at).1);
            }
            // In flight as a room counts them, so the per-room cap holds.
            for fetch in std::mem::take(&mut state.fetches) {
                state.fetches_in_flight += 1;
                fetches.spawn(run_fetch(self, key, fetch, fetch_timeout));
            }
            let Some(Ok(done)) = fetches.join_next().await else {
                return Err(GuestError {
                    kind: crate::sandbox::TrapKind::Other,
                    detail: "the gate parked with no fetch to wait for".into(),
                });
            };
            let state = guest.room_mut();
            state.fetches_in_flight = state.fetches_in_flight.saturating_sub(1);
            outcome = guest.resume(done.id, &done.result).await.map(|()| GateOutcome::Pending);
        }
    }

    fn gate_failed(&self, key: &RoomKey, gate: Gate, e: &GuestError, status: u16) -> Verdict {
        self.guest_failed(key, gate.name(), e);
        tracing::warn!(room = %key, gate = gate.name(), error.type = e.kind.as_str(), cause = %e.detail, "gate failed");
        // The tenant may see the kind of failure (it is their code's).
        let message = match status {
            503 => format!("{} could not start ({})", gate.name(), e.kind.as_str()),
            _ => format!("{} failed ({})", gate.name(), e.kind.as_str()),
        };
        Verdict::Refuse(error_response(status, &message))
    }
}

/// Whether a request a gate passes on stays within what the edge allowed.
fn check_passed(request: &Request, body_bytes: usize) -> Result<(), String> {
    let header_bytes: usize = request.headers.iter().map(|h| h.name.len() + h.value.len()).sum();
    if request.body.len() > body_bytes {
        Err(format!("a body over {body_bytes} bytes"))
    } else if request.url.len() > MAX_PASSED_URL_BYTES {
        Err(format!("a URL over {MAX_PASSED_URL_BYTES} bytes"))
    } else if request.headers.len() > MAX_PASSED_HEADERS || header_bytes > MAX_PASSED_HEADER_BYTES {
        Err(format!("over {MAX_PASSED_HEADERS} headers or {MAX_PASSED_HEADER_BYTES} bytes of them"))
    } else {
        Ok(())
    }
}
