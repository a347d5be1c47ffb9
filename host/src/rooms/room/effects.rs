//! The output gate: after each guest call, commit its storage writes, and
//! only then release what it produced: frames, fetches, responses. No
//! client sees an effect whose writes a crash could still lose.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use super::{FetchDone, Room};
use crate::ids::{ConnectionId, RoomKey};
use crate::rooms::CLOSE_TRY_AGAIN;
use crate::rooms::Rooms;
use crate::rooms::state::{ConnectionEntry, FetchStart, Outgoing, Target};
use crate::sandbox::{GuestError, Response};
use crate::storage::CommitTicket;

/// What one guest call produced, held until its writes are durable.
pub(super) struct Output {
    /// `None` when the call wrote nothing: it still waits its turn, so
    /// output leaves in the order the calls ran.
    commit: Option<CommitTicket>,
    outbox: Vec<(Target, Outgoing)>,
    fetches: Vec<FetchStart>,
    completed: Vec<(u64, Response)>,
}

impl Room {
    /// Ends a guest call. Its writes are queued for commit and its output
    /// (frames, fetches, responses) joins the gate, to leave once the
    /// writes are durable; the room meanwhile goes on with its next event,
    /// so one room's commits overlap its calls and share transactions.
    /// A failed call resets the room. Returns whether the call succeeded.
    pub(super) async fn finish(&mut self, result: Result<(), GuestError>) -> bool {
        // A limit an import could not refuse (a broadcast) fails the call.
        let state = self.state_mut();
        state.hops = 0;
        let result = result.and_then(|()| state.take_exceeded());
        if let Err(e) = result {
            self.reset(&e).await;
            return false;
        }
        let state = self.state_mut();
        let writes = state.storage.take_pending();
        let output = Output {
            commit: None,
            outbox: std::mem::take(&mut state.outbox),
            fetches: std::mem::take(&mut state.fetches),
            completed: std::mem::take(&mut state.completed),
        };
        let commit = if writes.is_empty() {
            None
        } else {
            match self.rooms.storage().queue_commit(&self.key, writes).await {
                Ok(ticket) => Some(ticket),
                Err(e) => {
                    self.commit_failed(&e).await;
                    return false;
                }
            }
        };
        if commit.is_none() && self.gate.is_empty() {
            self.release(output);
        } else {
            self.gate.push_back(Output { commit, ..output });
        }
        true
    }

    /// Waits for the oldest held output's commit; `None` when nothing is
    /// held. Safe to drop half-way: the ticket stays in the gate.
    pub(super) async fn next_durable(gate: &mut VecDeque<Output>) -> Option<anyhow::Result<()>> {
        let front = gate.front_mut()?;
        let result = match &mut front.commit {
            Some(ticket) => ticket.durable().await,
            None => Ok(()),
        };
        front.commit = None;
        Some(result)
    }

    /// The oldest held output's writes are durable (or failed): release it
    /// and every output behind it that wrote nothing.
    pub(super) async fn on_durable(&mut self, result: anyhow::Result<()>) {
        if let Err(e) = result {
            return self.commit_failed(&e).await;
        }
        while self.gate.front().is_some_and(|output| output.commit.is_none()) {
            if let Some(output) = self.gate.pop_front() {
                self.release(output);
            }
        }
    }

    /// Waits for every held output and releases it (shutdown).
    pub(super) async fn drain_gate(&mut self) {
        while let Some(result) = Self::next_durable(&mut self.gate).await {
            self.on_durable(result).await;
        }
    }

    /// A commit failed: the room's cache and every held output reflect
    /// writes that are not durable, so all of it goes. When another node
    /// has claimed the room, the room stops instead (see `moved_away`).
    async fn commit_failed(&mut self, e: &anyhow::Error) {
        if e.downcast_ref::<crate::storage::OwnershipLost>().is_some() {
            tracing::warn!(room = %self.key, "another node claimed the room; stopping it here");
            self.gate.clear();
            self.moved = true;
            return;
        }
        tracing::error!(room = %self.key, cause = %format!("{e:#}"), "storage commit failed; resetting the room");
        self.gate.clear();
        self.reset_state().await;
    }

    /// Tasks whose responses wait in the gate: a reset must not fail them,
    /// their calls succeeded.
    pub(super) fn held_tasks(&self) -> Vec<u64> {
        self.gate.iter().flat_map(|o| o.completed.iter().map(|(task, _)| *task)).collect()
    }

    /// Sends what a call produced: frames, fetches, responses. Nothing
    /// leaves a room that may have moved to another node.
    fn release(&mut self, output: Output) {
        if !self.still_owned() {
            return;
        }
        let Output { outbox, fetches, completed, .. } = output;
        let state = self.state_mut();
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
        let timeout = self.party.code.limits().fetch_timeout;
        self.fetches.spawn(run_fetch(&self.rooms, &self.key, fetch, timeout));
    }
}

/// Sends a fetch a guest started to its room; resolves with the outcome
/// for the handler parked on it, which resumes at the depth it started
/// from.
pub(in crate::rooms) fn run_fetch(
    rooms: &Arc<Rooms>,
    from: &RoomKey,
    fetch: FetchStart,
    timeout: Duration,
) -> impl Future<Output = FetchDone> + Send + 'static {
    let FetchStart { id, party, room, request, hops, lease } = fetch;
    let origin_hops = hops.saturating_sub(1);
    let response = rooms.fetch(from, &party, &room, request, hops);
    async move {
        // In flight until this future ends, however it ends.
        let _lease = lease;
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
        FetchDone { id, hops: origin_hops, result }
    }
}

/// Queues `frame` for its target; a full queue marks the client too slow.
fn deliver(connections: &HashMap<ConnectionId, ConnectionEntry>, target: Target, frame: Outgoing) {
    let push = |entry: &ConnectionEntry| {
        if entry.sender.try_send(frame.clone()).is_err() {
            tracing::debug!("outgoing queue full; dropping the client as too slow ({CLOSE_TRY_AGAIN})");
            entry.too_slow.cancel();
        }
    };
    match target {
        Target::One(id) => connections.get(&id).into_iter().for_each(push),
        Target::All { without } => connections
            .iter()
            .filter(|(id, _)| !without.contains(id.as_str()))
            .for_each(|(_, entry)| push(entry)),
    }
}
