//! Several nodes serving one project's rooms, on PostgreSQL, behind any
//! proxy that hashes rooms to nodes (HAProxy in `scripts/cluster.sh`).
//!
//! This module owns what a node does as a member: it joins (its row and
//! lease in the database, `storage::Postgres`), stops its rooms when its
//! lease lapses, wakes rooms whose alarms are due when their node is gone,
//! forwards a client's request or socket to the node that owns its room
//! (`forward.rs`), and carries room-to-room requests between nodes, in
//! order per caller and target (`peer.rs`). Ownership itself (the claim
//! with the load, the epoch checked by every commit) is the storage's: see
//! `storage/postgres.rs`. The proxy only spreads load; correctness never
//! depends on where it sends a request.

mod forward;
mod peer;

pub use forward::{FORWARDED_BY, to_owner};
pub use peer::{FETCH_ROUTE, PeerState, serve_fetch};

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::ids::RoomKey;
use crate::rooms::Rooms;
use crate::sandbox::{Request, Response};
use crate::storage::{Lease, Postgres};

/// How far ahead the alarm sweeper looks, beyond its own period.
const ALARM_LOOKAHEAD: Duration = Duration::from_secs(2);

/// This node's part in the cluster.
pub struct Node {
    pg: Arc<Postgres>,
    /// The project the rooms belong to (the manifest's name).
    project: String,
    /// Room-to-room requests waiting to leave, one ordered lane per
    /// (caller, target).
    lanes: peer::Lanes,
    /// The digest of the cluster's shared secret, which other nodes' calls carry.
    secret: crate::manifest::TokenHash,
}

impl Node {
    /// Makes `rooms` this node's rooms of the cluster: fences them when the
    /// lease lapses and sweeps for due alarms of rooms no live node holds.
    pub fn start(
        pg: Arc<Postgres>,
        project: &str,
        rooms: &Arc<Rooms>,
        shutdown: &CancellationToken,
    ) -> Arc<Self> {
        let node = Arc::new(Self {
            secret: crate::manifest::TokenHash::of(&pg.secret),
            pg,
            project: project.to_owned(),
            lanes: Arc::default(),
        });
        rooms.join_cluster(node.clone());
        tokio::spawn(fence_on_lapse(node.pg.lease().clone(), rooms.clone(), shutdown.clone()));
        tokio::spawn(node.clone().sweep_alarms(rooms.clone(), shutdown.clone()));
        node
    }

    /// The database and this node's membership.
    pub fn postgres(&self) -> &Arc<Postgres> {
        &self.pg
    }

    /// Wakes rooms whose alarms are due and that no live node holds (their
    /// node died): the wake claims the room here. Rooms this node holds
    /// wake by their own timers; waking them again changes nothing.
    async fn sweep_alarms(self: Arc<Self>, rooms: Arc<Rooms>, shutdown: CancellationToken) {
        let period = self.pg.config.lease / 5;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(period) => {}
            }
            let parties = rooms.party_names();
            let parties: Vec<&str> = parties.iter().map(String::as_str).collect();
            match self.pg.due_alarms(&self.project, &parties, period + ALARM_LOOKAHEAD).await {
                Ok(due) => {
                    for (key, time_ms) in due {
                        if rooms.party(&key.party).is_some() {
                            rooms.wake_at(key, time_ms);
                        }
                    }
                }
                Err(e) => tracing::warn!(cause = %format!("{e:#}"), "could not read due alarms"),
            }
        }
    }
}

/// Tells every room when the lease lapses: rooms of the lapsed term stop
/// at once, even those with nothing to send.
async fn fence_on_lapse(lease: Arc<Lease>, rooms: Arc<Rooms>, shutdown: CancellationToken) {
    let mut lapses = lease.lapses();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = lapses.changed() => if changed.is_err() { return },
        }
        tracing::warn!("this node's lease lapsed: its rooms stop (another node may claim them)");
        rooms.fence_all();
    }
}

impl crate::rooms::Cluster for Node {
    fn node(&self) -> &str {
        &self.pg.config.node
    }

    fn owner<'a>(
        &'a self,
        key: &'a RoomKey,
    ) -> futures_util::future::BoxFuture<'a, anyhow::Result<Option<crate::storage::OwnedElsewhere>>> {
        Box::pin(self.pg.owner_elsewhere(&self.project, key))
    }

    fn lease(&self) -> &Arc<Lease> {
        self.pg.lease()
    }

    fn fetch(
        &self,
        rooms: &Arc<Rooms>,
        from: &RoomKey,
        to: RoomKey,
        request: Request,
        hops: u32,
    ) -> oneshot::Receiver<Response> {
        let (reply, response) = oneshot::channel();
        let mut lanes = self.lanes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let lane = (from.clone(), to.clone());
        let mut queued = peer::LaneRequest { request, hops, reply };
        // Sent under the lock: a lane closes under it too, so a request is
        // never left in a lane that has stopped.
        if let Some(sender) = lanes.get(&lane) {
            match sender.send(queued) {
                Ok(()) => return response,
                Err(mpsc::error::SendError(returned)) => queued = returned,
            }
        }
        let (sender, queue) = mpsc::unbounded_channel();
        let _ = sender.send(queued);
        lanes.insert(lane.clone(), sender);
        drop(lanes);
        tokio::spawn(peer::run_lane(rooms.clone(), self.pg.clone(), lane, queue, self.lanes.clone()));
        response
    }
}
