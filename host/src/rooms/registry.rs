//! The registry of running rooms: finds a room's handle or spawns the room,
//! delivers messages to it, and keeps the number of live instances under
//! the cap by evicting the least recently used.

use anyhow::anyhow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;
use tokio::sync::mpsc::error::{SendError, TrySendError};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info_span};

use super::LimitHits;
use super::handle::{Placement, ROOM_MAILBOX, RoomHandle, RoomMsg, Weight};
use super::instances::LiveInstances;
use super::room::Room;
use super::state::RoomState;
use super::tail::Tail;
use crate::budget::{Resource, Totals};
use crate::ids::{PartyName, RoomId, RoomKey};
use crate::manifest::{Deployment, ServeSpec};
use crate::sandbox::{PartyCode, Request, Response};
use crate::storage::{CommitHooks, Lease, OwnedElsewhere, Storage, StoredAlarm};

/// How long an alarm waits before its room is woken again, when a cap
/// refused to start the room.
const WAKE_RETRY_MS: u64 = 1000;

/// A party as the registry runs it. Replaced whole when its code or
/// settings change (or the project's secrets do); rooms notice at their
/// next event.
#[derive(Clone)]
pub struct LoadedParty {
    pub code: Arc<PartyCode<RoomState>>,
    /// The manifest's vars, shared by every room of the party (the
    /// project's secrets are laid over them: [`Rooms::vars_of`]).
    pub vars: Arc<[(String, String)]>,
    /// The manifest's `hibernate = true`: evict idle instances even while
    /// sockets are open.
    pub hibernate: bool,
    /// What the code says of itself (its gates, whether it hibernates),
    /// once a first instance was asked: a room's or a gate's.
    pub traits: tokio::sync::OnceCell<crate::sandbox::Traits>,
    /// Gates of this party running at once (see `gate.rs`).
    pub gate_slots: Arc<tokio::sync::Semaphore>,
}

impl LoadedParty {
    /// Whether idle instances go while sockets stay open: the manifest's
    /// `hibernate`, or the code's own (PartyKit's `options.hibernate`).
    pub fn hibernates(&self) -> bool {
        self.hibernate || self.traits.get().is_some_and(|t| t.contains(crate::sandbox::Traits::HIBERNATE))
    }

    pub fn new(code: PartyCode<RoomState>, vars: Arc<[(String, String)]>, hibernate: bool) -> Self {
        Self {
            code: Arc::new(code),
            vars,
            hibernate,
            traits: tokio::sync::OnceCell::new(),
            gate_slots: Arc::new(tokio::sync::Semaphore::new(super::gate::MAX_GATES_PER_PARTY)),
        }
    }
}

/// What rooms need of a cluster (see `crate::cluster`, which implements
/// it): the node's lease, which bounds what its rooms may send, and
/// room-to-room requests that may cross to another node.
pub trait Cluster: Send + Sync {
    /// This node's name.
    fn node(&self) -> &str;

    /// The live node that owns `key`, when it is not this one (a read:
    /// nothing is claimed).
    fn owner<'a>(
        &'a self,
        key: &'a RoomKey,
    ) -> futures_util::future::BoxFuture<'a, anyhow::Result<Option<OwnedElsewhere>>>;

    /// The node's lease: rooms loaded in a term that lapsed stop.
    fn lease(&self) -> &Arc<Lease>;

    /// Delivers a room-to-room request to `to`, wherever it runs, after
    /// the requests `from` sent to `to` before it.
    fn fetch(
        &self,
        rooms: &Arc<Rooms>,
        from: &RoomKey,
        to: RoomKey,
        request: Request,
        hops: u32,
    ) -> oneshot::Receiver<Response>;
}

/// A room's wake timer for its alarm.
struct Wake {
    time_ms: u64,
    /// Wakes the timer when the time moves earlier.
    moved: Arc<tokio::sync::Notify>,
}

/// When rooms give up their instances.
#[derive(Debug, Clone)]
pub struct RoomsConfig {
    /// An instance with no event for this long is evicted (hibernating
    /// parties), or, once its last socket has closed, the room stops.
    pub idle_timeout: Duration,
    /// Most instances alive at once; past it the least recently used idle
    /// ones are evicted.
    pub max_live_instances: usize,
    /// Bytes of client messages and requests one room's mailbox holds.
    pub mailbox_bytes: usize,
    /// How often sockets are pinged.
    pub ping_interval: Duration,
    /// How long a socket may be silent (no frame, no pong) before it is dropped.
    pub socket_idle_timeout: Duration,
    /// The wait before a failed `on-alarm`'s first retry (doubled after).
    pub alarm_retry: Duration,
}

/// How many rooms and instances are alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomStats {
    /// Running room actors (each holds its connections and storage cache).
    pub rooms: usize,
    /// Live guest instances (each holds a wasm store).
    pub instances: usize,
    /// Bytes queued for clients, not yet written to their sockets.
    pub queued_bytes: usize,
}

/// Every running room of the host, by key.
pub struct Rooms {
    /// The manifest being served (for the `main` alias); replaced on reload.
    deployment: RwLock<Deployment>,
    parties: RwLock<HashMap<PartyName, Arc<LoadedParty>>>,
    storage: Storage,
    config: RoomsConfig,
    /// Handles of running rooms. A room is inserted before its task starts,
    /// under this lock, so two callers never spawn the same room twice.
    live: Mutex<HashMap<RoomKey, RoomHandle>>,
    /// Rooms with a live instance, with the time of their last event
    /// (see [`Rooms::clock_ms`]).
    instances: Mutex<LiveInstances>,
    next_generation: AtomicU64,
    /// Zero of the clock behind `last_active` stamps.
    epoch: tokio::time::Instant,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    /// How often this project's rooms hit each limit.
    hits: Arc<LimitHits>,
    /// What this project's rooms, and the host's, may hold at once.
    totals: Totals,
    /// Rooms woken by a timer for their alarm: one timer per room however
    /// often the room retires.
    wakes: Mutex<HashMap<RoomKey, Wake>>,
    /// Bytes in every socket's outgoing queue together.
    queued_bytes: Arc<std::sync::atomic::AtomicUsize>,
    /// The project's live log (`partyhost tail`).
    tail: Arc<Tail>,
    /// The project's metric handles.
    metrics: crate::metrics::ProjectMetrics,
    /// The project's secrets, read by guests as vars over the manifest's.
    secrets: RwLock<Arc<[(String, String)]>>,
    /// Set when the project's rooms live in a cluster.
    cluster: std::sync::OnceLock<Arc<dyn Cluster>>,
}

/// A running room, as [`Rooms::list`] reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RoomInfo {
    pub party: String,
    pub id: String,
    pub connections: usize,
    /// `live` (an instance runs) or `hibernated` (sockets kept by the host,
    /// no instance).
    pub state: &'static str,
    /// Bytes of keys and values in the room's storage.
    pub storage_bytes: usize,
}

impl Rooms {
    // Called once per project, by `Project::open`: each argument is a part it owns.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        deployment: Deployment,
        parties: HashMap<PartyName, Arc<LoadedParty>>,
        storage: Storage,
        config: RoomsConfig,
        shutdown: CancellationToken,
        tracker: TaskTracker,
        totals: Totals,
        metrics: crate::metrics::ProjectMetrics,
    ) -> Arc<Self> {
        Arc::new(Self {
            metrics,
            totals,
            wakes: Mutex::default(),
            deployment: RwLock::new(deployment),
            parties: RwLock::new(parties),
            storage,
            config,
            live: Mutex::default(),
            instances: Mutex::default(),
            next_generation: AtomicU64::new(1),
            epoch: tokio::time::Instant::now(),
            shutdown,
            tracker,
            hits: Arc::default(),
            queued_bytes: Arc::default(),
            secrets: RwLock::new(Arc::from([])),
            tail: Arc::default(),
            cluster: std::sync::OnceLock::new(),
        })
    }

    /// From now on these rooms belong to `cluster` (once, before serving).
    pub fn join_cluster(&self, cluster: Arc<dyn Cluster>) {
        if self.cluster.set(cluster).is_err() {
            tracing::warn!("rooms joined a cluster twice; the first one stays");
        }
    }

    /// The cluster these rooms belong to, if any.
    pub fn cluster(&self) -> Option<&Arc<dyn Cluster>> {
        self.cluster.get()
    }

    /// In a cluster, the node that serves `key` when it is not this one:
    /// the room is started here (claimed with its storage load) unless
    /// another node owns it.
    ///
    /// # Errors
    /// When the room cannot start here for another reason (a cap, a failed
    /// load).
    pub async fn owner_elsewhere(self: &Arc<Self>, key: &RoomKey) -> anyhow::Result<Option<OwnedElsewhere>> {
        let Some(cluster) = self.cluster.get() else { return Ok(None) };
        let running = lock(&self.live).get(key).filter(|h| !h.tx.is_closed()).cloned();
        let handle = match running {
            Some(handle) => handle,
            // Owned elsewhere: a read says so without starting (and
            // claiming) the room here; otherwise this node claims it.
            None => match cluster.owner(key).await? {
                Some(owner) => return Ok(Some(owner)),
                None => self.get_or_spawn(key)?,
            },
        };
        match handle.placement().await {
            Placement::Here => Ok(None),
            Placement::Elsewhere(owner) => Ok(Some(owner)),
            Placement::Loading | Placement::Failed => Err(anyhow!("room {key} could not load its storage")),
        }
    }

    /// Tells every running room that the lease lapsed: rooms of an older
    /// term stop. (Each also checks before it sends anything.)
    pub fn fence_all(&self) {
        let handles: Vec<RoomHandle> = lock(&self.live).values().cloned().collect();
        for handle in handles {
            let _ = handle.tx.try_send(RoomMsg::Fence);
        }
    }

    /// The project's metric handles.
    pub fn metrics(&self) -> &crate::metrics::ProjectMetrics {
        &self.metrics
    }

    /// The project's live log.
    pub fn tail(&self) -> &Arc<Tail> {
        &self.tail
    }

    /// Counts a limit hit in `room`, and tells the live tail.
    pub fn limit_hit(&self, room: &RoomKey, limit: super::Limit, detail: impl FnOnce() -> String) {
        self.hits.count(limit);
        self.tail.emit(room, "limit", || (limit.as_str().to_owned(), detail()));
    }

    /// Counts a failed guest call (`what`: start, call or a gate) against
    /// its limit, and tells the live tail.
    pub(super) fn guest_failed(&self, room: &RoomKey, what: &str, e: &crate::sandbox::GuestError) {
        self.hits.count(super::room::limit_of(e.kind));
        self.tail.emit(room, "trap", || (e.kind.as_str().to_owned(), format!("{what} failed: {}", e.detail)));
    }

    /// Lays `secrets` over every party's vars from now on. Running rooms
    /// start a fresh instance with them at their next event.
    pub fn set_secrets(&self, secrets: Vec<(String, String)>) {
        *self.secrets.write().unwrap_or_else(|p| p.into_inner()) = secrets.into();
        let mut parties = self.parties.write().unwrap_or_else(|p| p.into_inner());
        for party in parties.values_mut() {
            // A new `Arc` is how rooms learn that something changed.
            *party = Arc::new(LoadedParty::clone(party));
        }
    }

    /// What a room of `party` reads as vars: the manifest's, then the
    /// project's secrets over them.
    pub fn vars_of(&self, party: &LoadedParty) -> Arc<[(String, String)]> {
        let secrets = read(&self.secrets).clone();
        if secrets.is_empty() {
            return party.vars.clone();
        }
        let mut vars: Vec<(String, String)> =
            party.vars.iter().filter(|(name, _)| !secrets.iter().any(|(s, _)| s == name)).cloned().collect();
        vars.extend(secrets.iter().cloned());
        vars.into()
    }

    /// The running rooms (of `party`, if given), by party and id.
    pub fn list(&self, party: Option<&PartyName>) -> Vec<RoomInfo> {
        let handles: Vec<RoomHandle> = lock(&self.live)
            .values()
            .filter(|h| !h.tx.is_closed() && party.is_none_or(|p| &h.key.party == p))
            .cloned()
            .collect();
        let instances = lock(&self.instances);
        let mut rooms: Vec<RoomInfo> = handles
            .into_iter()
            .map(|h| RoomInfo {
                party: h.key.party.to_string(),
                id: h.key.room.to_string(),
                connections: h.gauges.connections.load(Ordering::Relaxed),
                state: if instances.contains(&h.key) { "live" } else { "hibernated" },
                storage_bytes: h.gauges.storage_bytes.load(Ordering::Relaxed),
            })
            .collect();
        drop(instances);
        rooms.sort_by(|a, b| (&a.party, &a.id).cmp(&(&b.party, &b.id)));
        rooms
    }

    /// The counter every socket queue of these rooms adds its bytes to.
    pub fn queued_bytes_counter(&self) -> Arc<std::sync::atomic::AtomicUsize> {
        self.queued_bytes.clone()
    }

    /// How often these rooms hit each limit.
    pub fn limit_hits(&self) -> &Arc<LimitHits> {
        &self.hits
    }

    /// What this project's rooms, and the host's, hold and may hold.
    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// The storage thread's test hooks (see [`CommitHooks`]).
    pub fn commit_hooks(&self) -> &Arc<CommitHooks> {
        self.storage.hooks()
    }

    pub(super) fn storage(&self) -> &Storage {
        &self.storage
    }

    pub(super) fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    pub(crate) fn config(&self) -> &RoomsConfig {
        &self.config
    }

    /// The party a URL names, following the manifest's `main` alias.
    pub fn resolve_party(&self, name: &str) -> Option<PartyName> {
        read(&self.deployment).resolve_party(name).cloned()
    }

    /// The names of the parties served now.
    pub fn party_names(&self) -> Vec<String> {
        read(&self.parties).keys().map(ToString::to_string).collect()
    }

    /// The party's current code and settings.
    pub fn party(&self, name: &PartyName) -> Option<Arc<LoadedParty>> {
        read(&self.parties).get(name).cloned()
    }

    /// Serves new code for the party `name` from now on (its manifest
    /// entry is unchanged). Running rooms switch at their next event.
    pub fn replace_party(&self, name: &PartyName, party: LoadedParty) {
        self.parties.write().unwrap_or_else(|p| p.into_inner()).insert(name.clone(), Arc::new(party));
    }

    /// Serves `deployment` with `parties` from now on, both at once: no
    /// request sees the new manifest with the old code or the reverse.
    /// Running rooms switch at their next event; rooms of removed parties
    /// find no party and stop.
    pub fn switch(&self, deployment: Deployment, parties: HashMap<PartyName, Arc<LoadedParty>>) {
        let names: Vec<&str> = parties.keys().map(PartyName::as_str).collect();
        self.metrics.keep_parties(&names);
        let mut current_parties = self.parties.write().unwrap_or_else(|p| p.into_inner());
        let mut current_deployment = self.deployment.write().unwrap_or_else(|p| p.into_inner());
        *current_parties = parties;
        *current_deployment = deployment;
    }

    /// The static files the manifest serves, if any.
    pub fn serve(&self) -> Option<ServeSpec> {
        read(&self.deployment).serve.clone()
    }

    /// The manifest now being served.
    pub fn deployment(&self) -> Deployment {
        read(&self.deployment).clone()
    }

    pub fn stats(&self) -> RoomStats {
        RoomStats {
            rooms: lock(&self.live).len(),
            instances: lock(&self.instances).len(),
            queued_bytes: self.queued_bytes.load(Ordering::Acquire),
        }
    }

    /// The handle of a running room, spawning the room if none runs. The
    /// room loads its storage in its own task; messages wait in its mailbox.
    ///
    /// # Errors
    /// When the party is unknown, or the project or host is at its cap of
    /// running rooms.
    pub fn get_or_spawn(self: &Arc<Self>, key: &RoomKey) -> anyhow::Result<RoomHandle> {
        let mut live = lock(&self.live);
        if let Some(handle) = live.get(key).filter(|h| !h.tx.is_closed()) {
            return Ok(handle.clone());
        }
        let party = self.party(&key.party).ok_or_else(|| anyhow!("no party named `{}`", key.party))?;
        // Held by the room's task: given back however the room ends.
        let running = self.totals.lease(Resource::Rooms, 1).and_then(|lease| {
            self.totals.admit_start()?;
            Ok(lease)
        });
        let running = running.map_err(|cap| {
            self.limit_hit(key, super::Limit::Totals, || cap.to_string());
            anyhow::Error::new(cap).context(format!("room {key} cannot start"))
        })?;
        let (tx, rx) = mpsc::channel(ROOM_MAILBOX);
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        // The semaphore's permits are u32-counted per acquire; its total may be larger.
        let bytes_capacity = self.config.mailbox_bytes.min(u32::MAX as usize);
        let bytes = Arc::new(tokio::sync::Semaphore::new(bytes_capacity));
        let gauges = Arc::<super::handle::RoomGauges>::default();
        let (placed, placement) = tokio::sync::watch::channel(Placement::Loading);
        let handle = RoomHandle {
            key: key.clone(),
            tx,
            generation,
            bytes,
            bytes_capacity,
            gauges: gauges.clone(),
            placement,
        };
        live.insert(key.clone(), handle.clone());
        drop(live);

        let (rooms, key) = (self.clone(), key.clone());
        let span = info_span!("room", party = %key.party, room = %key.room);
        self.tracker.spawn(
            async move {
                // The term before the claim: a lapse during it fences the room.
                let fence = rooms.cluster.get().map(|c| super::room::Fence::new(c.lease()));
                let storage = match rooms.storage.load(&key).await {
                    Ok(storage) => storage,
                    Err(e) => {
                        // Dropping `rx` fails every queued sender; the next
                        // caller spawns the room afresh.
                        match e.downcast::<OwnedElsewhere>() {
                            Ok(owner) => {
                                tracing::debug!(room = %key, %owner, "served by another node");
                                placed.send_replace(Placement::Elsewhere(owner));
                            }
                            Err(e) => {
                                tracing::error!(room = %key, cause = %format!("{e:#}"), "could not load the room's storage");
                                placed.send_replace(Placement::Failed);
                            }
                        }
                        rooms.forget(&key, generation);
                        return;
                    }
                };
                placed.send_replace(Placement::Here);
                let limits = party.code.limits().clone();
                let (hits, totals) = (rooms.hits.clone(), rooms.totals.clone());
                let vars = rooms.vars_of(&party);
                let mut state = RoomState::new(key, vars, limits, storage, hits, rooms.tail.clone(), totals);
                state.calls = rooms.metrics.calls(state.key.party.as_str());
                Room::new(rooms, party, generation, state, rx, running, gauges).fenced_by(fence).run().await;
            }
            .instrument(span),
        );
        tracing::debug!(room = %handle.key, "room spawned");
        Ok(handle)
    }

    /// Delivers `msg` to the room, spawning it if needed. A room that stopped
    /// between lookup and send (it retired) is spawned again. Returns the
    /// handle that took the message.
    ///
    /// # Errors
    /// When the party is unknown, or the room keeps stopping (shutdown).
    pub async fn send(self: &Arc<Self>, key: &RoomKey, mut msg: RoomMsg) -> anyhow::Result<RoomHandle> {
        for _ in 0..3 {
            let handle = self.get_or_spawn(key)?;
            match handle.tx.send(msg).await {
                Ok(()) => return Ok(handle),
                Err(SendError(returned)) => msg = returned,
            }
        }
        Err(anyhow!("room {key} has stopped"))
    }

    /// Sends `msg` through `handle`, waiting while the mailbox is full (in a
    /// boxed future: socket tasks, one per connection, should not carry that
    /// wait in their state). If the room has stopped, `msg` goes to its next
    /// run and `handle` follows: a room that retired just as a socket joined
    /// has forwarded the connection there.
    ///
    /// # Errors
    /// When the room cannot run again (the host is shutting down, or the
    /// party was removed).
    pub async fn send_via(self: &Arc<Self>, handle: &mut RoomHandle, msg: RoomMsg) -> anyhow::Result<()> {
        let returned = match handle.tx.try_send(msg) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Full(msg)) => match Box::pin(handle.tx.send(msg)).await {
                Ok(()) => return Ok(()),
                Err(SendError(msg)) => msg,
            },
            Err(TrySendError::Closed(msg)) => msg,
        };
        if self.shutdown.is_cancelled() {
            return Err(anyhow!("room {} has stopped: the host is shutting down", handle.key));
        }
        let key = handle.key.clone();
        *handle = Box::pin(self.send(&key, returned)).await?;
        Ok(())
    }

    /// [`Rooms::send_via`] without waiting: queued at once when the mailbox
    /// has room, else from a task of its own, which may let a later message
    /// from elsewhere in first. For callers that cannot wait, like `Drop`.
    pub fn post_via(self: &Arc<Self>, handle: &RoomHandle, msg: RoomMsg) {
        let msg = match handle.tx.try_send(msg) {
            Ok(()) => return,
            Err(TrySendError::Full(msg) | TrySendError::Closed(msg)) => msg,
        };
        let (rooms, mut handle) = (self.clone(), handle.clone());
        // No runtime means the host is gone, and its rooms with it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { rooms.send_via(&mut handle, msg).await });
        }
    }

    /// Runs an HTTP request through the room's `on-request`.
    ///
    /// # Errors
    /// When the room stops before it answers.
    pub async fn request(self: &Arc<Self>, key: &RoomKey, request: Request) -> anyhow::Result<Response> {
        let (reply, response) = oneshot::channel();
        let weight = self.get_or_spawn(key)?.weigh(request.body.len()).await;
        self.send(key, RoomMsg::Request { request: Box::new(request), reply, hops: 0, weight }).await?;
        response.await.map_err(|_| anyhow!("room {key} stopped before answering"))
    }

    /// Routes a request from one room to another, in-process. It is queued
    /// at once, so the requests a room makes reach their target in the
    /// order it made them while its mailbox has room; only when it is full
    /// does the request wait in a task of its own.
    ///
    /// # Errors
    /// When the target party is unknown, the room id is invalid, or the
    /// room cannot start (a cap).
    pub fn fetch(
        self: &Arc<Self>,
        from: &RoomKey,
        party: &str,
        room: &str,
        request: Request,
        hops: u32,
    ) -> anyhow::Result<oneshot::Receiver<Response>> {
        let party = self.resolve_party(party).ok_or_else(|| anyhow!("no party named `{party}`"))?;
        let room = RoomId::try_from(room).map_err(|reason| anyhow!("room id {room:?} {reason}"))?;
        let key = RoomKey { party, room };
        tracing::debug!(%from, to = %key, "fetch");
        let request = Request { url: room_url(&key, &request.url), ..request };
        if let Some(cluster) = self.cluster.get() {
            return Ok(cluster.fetch(self, from, key, request, hops));
        }
        let (reply, response) = oneshot::channel();
        self.fetch_here(&key, request, hops, reply)?;
        Ok(response)
    }

    /// Queues a room-to-room request for `key` on this node (see
    /// [`Rooms::fetch`]); the room answers on `reply`.
    ///
    /// # Errors
    /// When the room cannot start (a cap).
    pub fn fetch_here(
        self: &Arc<Self>,
        key: &RoomKey,
        request: Request,
        hops: u32,
        reply: oneshot::Sender<Response>,
    ) -> anyhow::Result<()> {
        self.post_via(
            &self.get_or_spawn(key)?,
            RoomMsg::Request { request: Box::new(request), reply, hops, weight: Weight::default() },
        );
        Ok(())
    }

    /// Wakes `key` at `time_ms` so its alarm fires, without keeping the room
    /// loaded until then. The room arms its own timer from storage. A room
    /// has one wake timer, however often it retires: a later call moves it
    /// (a move to an earlier time wakes the timer to sleep less).
    pub fn wake_at(self: &Arc<Self>, key: RoomKey, time_ms: u64) {
        let moved = Arc::new(tokio::sync::Notify::new());
        {
            let mut wakes = lock(&self.wakes);
            if let Some(wake) = wakes.get_mut(&key) {
                if time_ms < wake.time_ms {
                    wake.moved.notify_one();
                }
                wake.time_ms = time_ms;
                return;
            }
            wakes.insert(key.clone(), Wake { time_ms, moved: moved.clone() });
        }
        let rooms = self.clone();
        let shutdown = self.shutdown.clone();
        self.tracker.spawn(async move {
            loop {
                let Some(time_ms) = lock(&rooms.wakes).get(&key).map(|w| w.time_ms) else { return };
                let wait = Duration::from_millis(time_ms.saturating_sub(super::now_ms()));
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = moved.notified() => continue,
                    () = tokio::time::sleep(wait) => {}
                }
                let mut wakes = lock(&rooms.wakes);
                match wakes.get_mut(&key) {
                    None => return,
                    Some(wake) if wake.time_ms > super::now_ms() => continue, // moved later
                    Some(wake) => match rooms.get_or_spawn(&key) {
                        // A cap (a burst of room starts, say) only delays the alarm.
                        Err(e) if e.downcast_ref::<crate::budget::CapReached>().is_some() => {
                            tracing::debug!(room = %key, cause = %format!("{e:#}"), "alarm delayed by a cap");
                            wake.time_ms = super::now_ms() + WAKE_RETRY_MS;
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(room = %key, cause = %format!("{e:#}"), "could not wake a room for its alarm");
                        }
                        Ok(_) => {}
                    },
                }
                wakes.remove(&key);
                return;
            }
        });
    }

    /// Schedules the alarms found on disk at start-up.
    pub fn schedule_alarms(self: &Arc<Self>, alarms: Vec<StoredAlarm>) {
        for StoredAlarm { room, time_ms } in alarms {
            if self.party(&room.party).is_some() {
                self.wake_at(room, time_ms);
            }
        }
    }

    /// Removes a room from the registry if `generation` is still the running
    /// one and nothing is waiting in its mailbox. Returns whether it did;
    /// the room must then stop and forward anything that arrives later.
    pub(super) fn retire(
        &self,
        key: &RoomKey,
        generation: u64,
        mailbox_empty: impl FnOnce() -> bool,
    ) -> bool {
        let mut live = lock(&self.live);
        let current = live.get(key).is_some_and(|h| h.generation == generation);
        if current && mailbox_empty() {
            live.remove(key);
            return true;
        }
        false
    }

    /// Removes a room that has lost its ownership from the registry, if
    /// `generation` is still the running one: the next caller places it
    /// anew. Whatever waits in its mailbox is answered by the room.
    pub(super) fn forget(&self, key: &RoomKey, generation: u64) {
        lock(&self.live).retain(|k, h| k != key || h.generation != generation);
    }

    /// Clock for `last_active` stamps, in milliseconds since start.
    pub(super) fn clock_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Records a new instance; past the cap, asks the least recently used
    /// other rooms to evict theirs (each does once it is idle). Rooms
    /// already asked are not counted again, so instances started while an
    /// eviction is on its way still bring the count back to the cap.
    pub(super) fn instance_started(&self, key: &RoomKey, last_active: &Arc<AtomicU64>) {
        let victims = lock(&self.instances).started(key, last_active, self.config.max_live_instances);
        for victim in victims {
            let sent = lock(&self.live).get(&victim).is_some_and(|h| h.tx.try_send(RoomMsg::Evict).is_ok());
            if !sent {
                self.eviction_declined(&victim);
            }
        }
    }

    /// A room asked to evict its instance was busy and kept it; it may be
    /// asked again.
    pub(super) fn eviction_declined(&self, key: &RoomKey) {
        lock(&self.instances).declined(key);
    }

    pub(super) fn instance_stopped(&self, key: &RoomKey) {
        lock(&self.instances).stopped(key);
    }
}

/// Reads a registry value; see [`lock`] on poisoning.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Locks a registry map. A panic while holding one of these locks leaves
/// the map consistent (each update is a single insert or remove).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
    if path.is_empty() { base } else { format!("{base}/{path}") }
}
