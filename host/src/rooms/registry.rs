//! The registry of live rooms: finds a room's handle, or spawns the room.

use anyhow::{Context, anyhow};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span};

use super::handle::{ROOM_MAILBOX, RoomHandle};
use super::room::Room;
use super::state::RoomState;
use crate::ids::{PartyName, RoomId, RoomKey};
use crate::manifest::Deployment;
use crate::sandbox::{PartyCode, Request, Response};
use crate::storage::{Db, StoredAlarm};

/// A party as the registry runs it.
pub struct LoadedParty {
    pub code: Arc<PartyCode<RoomState>>,
    pub vars: Vec<(String, String)>,
}

/// Every live room of the host, by key.
pub struct Rooms {
    deployment: Deployment,
    parties: HashMap<PartyName, LoadedParty>,
    db: Arc<Db>,
    /// Handles of running rooms. A room is inserted before its task starts,
    /// under this lock, so two callers never spawn the same room twice.
    live: Mutex<HashMap<RoomKey, RoomHandle>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Rooms {
    pub fn new(
        deployment: Deployment,
        parties: HashMap<PartyName, LoadedParty>,
        db: Arc<Db>,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Arc<Self> {
        Arc::new(Self {
            deployment,
            parties,
            db,
            live: Mutex::new(HashMap::new()),
            shutdown,
            tracker,
        })
    }

    pub(super) fn db(&self) -> &Db {
        &self.db
    }

    /// The party a URL names, following the manifest's `main` alias.
    pub fn resolve_party(&self, name: &str) -> Option<&PartyName> {
        self.deployment.resolve_party(name)
    }

    /// The handle of a running room, spawning the room if none runs.
    ///
    /// # Errors
    /// When the party is unknown or the room's storage cannot be read.
    pub fn get_or_spawn(self: &Arc<Self>, key: &RoomKey) -> anyhow::Result<RoomHandle> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(handle) = live.get(key).filter(|h| !h.tx.is_closed()) {
            return Ok(handle.clone());
        }
        let party = self
            .parties
            .get(&key.party)
            .ok_or_else(|| anyhow!("no party named `{}`", key.party))?;
        let storage = self.db.load(key)?;
        let state = RoomState::new(
            key.clone(),
            party.vars.clone(),
            party.code.limits().clone(),
            storage,
        );
        let (tx, rx) = mpsc::channel(ROOM_MAILBOX);
        let handle = RoomHandle { key: key.clone(), tx };
        live.insert(key.clone(), handle.clone());
        let room = Room::new(self.clone(), party.code.clone(), state, rx, self.shutdown.clone());
        let span = info_span!("room", party = %key.party, room = %key.room);
        self.tracker.spawn(room.run().instrument(span));
        info!(room = %key, "room spawned");
        Ok(handle)
    }

    /// Routes a request from one room to another, in-process, queueing it
    /// at once (see [`RoomHandle::enqueue_request`]).
    ///
    /// # Errors
    /// When the target party is unknown or the room id is invalid.
    pub fn fetch(
        self: &Arc<Self>,
        from: &RoomKey,
        party: &str,
        room: &str,
        request: Request,
    ) -> anyhow::Result<oneshot::Receiver<Response>> {
        let party = self
            .resolve_party(party)
            .ok_or_else(|| anyhow!("no party named `{party}`"))?
            .clone();
        let room = RoomId::try_from(room).map_err(|reason| anyhow!("room id {room:?} {reason}"))?;
        let key = RoomKey { party, room };
        tracing::debug!(%from, to = %key, "fetch");
        let request = Request {
            url: room_url(&key, &request.url),
            ..request
        };
        Ok(self.get_or_spawn(&key)?.enqueue_request(request))
    }

    /// Wakes, at their time, the rooms whose alarms are stored on disk, so
    /// alarms fire after a restart without every room being loaded now.
    ///
    /// # Errors
    /// When the alarms table cannot be read.
    pub fn schedule_stored_alarms(self: &Arc<Self>) -> anyhow::Result<usize> {
        let alarms = self.db.alarms().context("reading stored alarms")?;
        let count = alarms.len();
        for StoredAlarm { room, time_ms } in alarms {
            if !self.parties.contains_key(&room.party) {
                continue;
            }
            let rooms = self.clone();
            let shutdown = self.shutdown.clone();
            self.tracker.spawn(async move {
                let wait = std::time::Duration::from_millis(time_ms.saturating_sub(super::now_ms()));
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = tokio::time::sleep(wait) => {
                        // The room arms its own timer from storage when it starts.
                        if let Err(e) = rooms.get_or_spawn(&room) {
                            tracing::warn!(%room, cause = %format!("{e:#}"), "could not wake a room for its alarm");
                        }
                    }
                }
            });
        }
        Ok(count)
    }
}

/// The URL a room sees for a request from another room: a path is taken
/// relative to the target room (`/x` -> `.../parties/<party>/<room>/x`),
/// as PartyKit's `room.context.parties.<party>.get(<room>).fetch` does; a
/// full URL is kept.
fn room_url(key: &RoomKey, url: &str) -> String {
    if url.contains("://") {
        return url.to_owned();
    }
    let path = url.trim_start_matches('/');
    let base = format!("http://partyhost.internal/parties/{}/{}", key.party, key.room);
    if path.is_empty() {
        base
    } else {
        format!("{base}/{path}")
    }
}
