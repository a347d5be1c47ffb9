//! The output gate: after each guest call, commit its storage writes, and
//! only then release what it produced: frames, fetches, responses. No
//! client sees an effect whose writes a crash could still lose.
//!
//! Writes gather in the room's next batch (a key written twice is written
//! once), as Durable Objects coalesce writes: the room commits the batch
//! once the events already in its mailbox are handled (or after
//! [`GATHER_AT_MOST`]), so a burst of messages shares one
//! commit. It commits on its own thread when the SQLite connection is free
//! ([`crate::storage::Storage::commit_now`]), else through the storage
//! thread. A room has at most one commit in flight; what finishes meanwhile
//! waits in the next batch, sent when that commit is durable.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use super::{FetchDone, Room};
use crate::ids::{ConnectionId, RoomKey};
use crate::rooms::CLOSE_TRY_AGAIN;
use crate::rooms::Rooms;
use crate::rooms::state::{ConnectionEntry, FetchStart, Outgoing, Target};
use crate::sandbox::{GuestError, Response};
use crate::storage::{CommitTicket, PendingWrites};

/// Outputs a room may hold behind its commits before it stops taking
/// events until one is durable: a stalled disk or database then pushes back
/// through the room's mailbox to its sockets instead of growing the gate.
const MAX_HELD_OUTPUTS: usize = 256;

/// How long a room gathers writes while more events wait in its mailbox,
/// before it commits anyway: bounds how long the first output of a burst
/// waits for the others (and for events that produce none, such as
/// connects refused at a full room, which would keep the mailbox busy).
const GATHER_AT_MOST: Duration = Duration::from_millis(1);

/// What one guest call produced, held until its writes are durable.
pub(super) struct Output {
    commit: Durability,
    outbox: Vec<(Target, Outgoing)>,
    fetches: Vec<FetchStart>,
    completed: Vec<(u64, Response)>,
}

/// What a held output waits for before it leaves.
enum Durability {
    /// Nothing of its own (the call wrote nothing, or its writes went with
    /// an earlier output's commit): it leaves when every output before it
    /// has left, so output leaves in the order the calls ran.
    Turn,
    /// Its writes wait in the room's next batch, not sent yet.
    NextBatch,
    /// Its writes are being committed, with those of the outputs behind it
    /// that waited in the same batch.
    Commit(CommitTicket),
}

impl Room {
    /// Ends a guest call. Its writes join the room's next batch and its
    /// output (frames, fetches, responses) joins the gate, to leave once
    /// the writes are durable; the room meanwhile goes on with its next
    /// event, so one room's commits overlap its calls. A failed call resets
    /// the room. Returns whether the call succeeded.
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
        let wrote = !writes.is_empty();
        let output = Output {
            commit: if wrote { Durability::NextBatch } else { Durability::Turn },
            outbox: std::mem::take(&mut state.outbox),
            fetches: std::mem::take(&mut state.fetches),
            completed: std::mem::take(&mut state.completed),
        };
        if !wrote && self.gate.is_empty() {
            self.release(output);
            return true;
        }
        if wrote && self.next_batch.is_empty() {
            self.gathering_since = Some(std::time::Instant::now());
        }
        self.next_batch.absorb(writes);
        self.gate.push_back(output);
        while self.gate.len() > MAX_HELD_OUTPUTS && self.settle_front().await {}
        true
    }

    /// After each event: commits the gathered batch, unless more events
    /// wait in the mailbox and it began gathering less than
    /// [`GATHER_AT_MOST`] ago (a burst then shares one commit).
    pub(super) async fn commit_gathered(&mut self) {
        let young = self.gathering_since.is_some_and(|since| since.elapsed() < GATHER_AT_MOST);
        if !self.rx.is_empty() && young {
            return;
        }
        if let Err(e) = self.send_batch().await {
            self.commit_failed(&e).await;
        }
    }

    /// Whether one of the room's commits is in flight.
    fn committing(&self) -> bool {
        self.gate.iter().any(|output| matches!(output.commit, Durability::Commit(_)))
    }

    /// Commits the next batch, unless a commit is in flight (the batch then
    /// goes when it is durable): at once when the database is free, and
    /// the outputs waiting on it leave; else queued, and the first output
    /// waiting on it holds the ticket, the others leave behind it.
    async fn send_batch(&mut self) -> anyhow::Result<()> {
        if self.next_batch.is_empty() || self.committing() {
            return Ok(());
        }
        let writes = std::mem::take(&mut self.next_batch);
        self.gathering_since = None;
        let storage = self.rooms.storage();
        let mut ticket = match storage.commit_now(&self.key, &writes) {
            Some(committed) => committed.map(|()| None)?,
            None => Some(storage.queue_commit(&self.key, writes).await?),
        };
        for output in self.gate.iter_mut().filter(|o| matches!(o.commit, Durability::NextBatch)) {
            output.commit = ticket.take().map_or(Durability::Turn, Durability::Commit);
        }
        self.release_ready();
        Ok(())
    }

    /// Waits until the room has nothing left to commit: the commit in
    /// flight, then the batch gathered behind it, each released as it is
    /// durable. A failed commit drops all that is held, as
    /// [`Room::commit_failed`] does. Before a reload after a trap: the file
    /// never holds a later batch without an earlier one, and the reload
    /// sees every write whose output was promised.
    pub(super) async fn settle_commits(&mut self) {
        loop {
            if let Err(e) = self.send_batch().await {
                self.drop_after_failed_commit(&e);
                return;
            }
            if !self.committing() {
                return;
            }
            match Self::next_durable(&mut self.gate).await {
                Some(Ok(())) => self.release_ready(),
                Some(Err(e)) => {
                    self.drop_after_failed_commit(&e);
                    return;
                }
                None => return,
            }
        }
    }

    /// Waits for the oldest held output's commit and acts on its outcome;
    /// false when nothing is held.
    async fn settle_front(&mut self) -> bool {
        // The batch still gathering goes first: nothing else sends it.
        if let Err(e) = self.send_batch().await {
            self.commit_failed(&e).await;
            return true;
        }
        match Self::next_durable(&mut self.gate).await {
            Some(result) => {
                self.on_durable(result).await;
                true
            }
            None => false,
        }
    }

    /// Drops every held output and the writes gathered for the next batch.
    fn drop_held(&mut self) {
        self.gate.clear();
        self.next_batch = PendingWrites::default();
        self.gathering_since = None;
    }

    /// Releases the outputs at the front of the gate that wait only for
    /// their turn.
    fn release_ready(&mut self) {
        while self.gate.front().is_some_and(|output| matches!(output.commit, Durability::Turn)) {
            if let Some(output) = self.gate.pop_front() {
                self.release(output);
            }
        }
    }

    /// Waits for the oldest held output's commit; `None` when nothing is
    /// held. Safe to drop half-way: the ticket stays in the gate.
    pub(super) async fn next_durable(gate: &mut VecDeque<Output>) -> Option<anyhow::Result<()>> {
        let front = gate.front_mut()?;
        let result = match &mut front.commit {
            Durability::Commit(ticket) => ticket.durable().await,
            Durability::Turn => Ok(()),
            // At the front only while the room gathers a burst, with events
            // in its mailbox to handle: it is sent after them (see `run`),
            // or by `settle_front`.
            Durability::NextBatch => std::future::pending().await,
        };
        front.commit = Durability::Turn;
        Some(result)
    }

    /// The oldest held output's writes are durable (or failed): release it
    /// and every output behind it that waits only for its turn, then send
    /// the batch that gathered meanwhile.
    pub(super) async fn on_durable(&mut self, result: anyhow::Result<()>) {
        if let Err(e) = result {
            return self.commit_failed(&e).await;
        }
        self.release_ready();
        if let Err(e) = self.send_batch().await {
            self.commit_failed(&e).await;
        }
    }

    /// Waits for every held output and releases it (shutdown).
    pub(super) async fn drain_gate(&mut self) {
        while self.settle_front().await {}
    }

    /// A commit failed: the room's cache and every held output reflect
    /// writes that are not durable, so all of it goes. When another node
    /// has claimed the room, the room stops instead (see `moved_away`).
    async fn commit_failed(&mut self, e: &anyhow::Error) {
        if self.drop_after_failed_commit(e) {
            self.reset_state().await;
        }
    }

    /// Drops everything held after a failed commit, and says whether the
    /// room should reload from storage: not when another node has claimed
    /// it (it stops instead, see `moved_away`).
    fn drop_after_failed_commit(&mut self, e: &anyhow::Error) -> bool {
        self.drop_held();
        if e.downcast_ref::<crate::storage::OwnershipLost>().is_some() {
            tracing::warn!(room = %self.key, "another node claimed the room; stopping it here");
            self.moved = true;
            return false;
        }
        tracing::error!(room = %self.key, cause = %format!("{e:#}"), "storage commit failed; resetting the room");
        true
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
