//! The output gate: after each guest call, commit its storage writes, and
//! only then release what it produced: frames, fetches, responses. No
//! client sees an effect whose writes a crash could still lose.

use std::collections::HashMap;
use tokio::sync::mpsc;

use super::Room;
use crate::ids::ConnectionId;
use crate::rooms::CLOSE_TRY_AGAIN;
use crate::rooms::state::{ConnectionEntry, FetchStart, Outgoing, Target};
use crate::sandbox::GuestError;

impl Room {
    /// Ends a guest call: commits its writes and releases its effects, or
    /// resets the room if it failed. Returns whether the call took effect.
    pub(super) async fn finish(&mut self, result: Result<(), GuestError>) -> bool {
        if let Err(e) = result {
            self.reset(&e).await;
            return false;
        }
        let writes = self.state_mut().storage.take_pending();
        if !writes.is_empty()
            && let Err(e) = self.rooms.storage().commit(&self.key, writes).await
        {
            tracing::error!(room = %self.key, cause = %format!("{e:#}"), "storage commit failed; resetting the room");
            self.reset_state().await;
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
        let FetchStart { id, party, room, request } = fetch;
        let response = self.rooms.fetch(&self.key, &party, &room, request);
        let timeout = self.party.code.limits().fetch_timeout;
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
}

/// Queues `frame` for its target; a full queue marks the client too slow.
fn deliver(connections: &HashMap<ConnectionId, ConnectionEntry>, target: Target, frame: Outgoing) {
    let push = |entry: &ConnectionEntry| {
        if let Err(mpsc::error::TrySendError::Full(_)) = entry.sender.try_send(frame.clone()) {
            tracing::debug!("outgoing queue full; dropping the client as too slow ({CLOSE_TRY_AGAIN})");
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
