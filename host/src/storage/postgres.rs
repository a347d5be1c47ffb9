//! PostgreSQL storage for a cluster: rooms' entries and alarms, which node
//! owns each room, and each node's lease.
//!
//! One writer per room: a node *claims* a room in the transaction that
//! loads it, which bumps the room's epoch, and only while the room is
//! unowned, already this node's, or its owner's lease has run out (or its
//! owner's session is gone: see [`CLAIM`]). Every commit re-checks the
//! epoch in its own transaction, so a node that lost a room cannot write to
//! it, whatever its clock says. Output that writes nothing is bounded by
//! the node's own lease (`lease.rs`). The SQLite backend stays the default;
//! this one is chosen by `[cluster]` (see `crate::cluster`).

use anyhow::{Context, anyhow};
use futures_util::future::try_join_all;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{RwLock, mpsc};
use tokio_postgres::{Client, NoTls, Statement};
use tokio_util::sync::CancellationToken;

use super::cache::{PendingWrites, RoomStorage, Write};
use super::lease::Lease;
use super::writer::{Job, Reply};
use crate::ids::{PartyName, RoomId, RoomKey};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS partyhost_nodes (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL,
    address     TEXT NOT NULL,
    lease_until TIMESTAMPTZ NOT NULL,
    renewed_at  TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS partyhost_rooms (
    project TEXT NOT NULL,
    party   TEXT NOT NULL,
    room    TEXT NOT NULL,
    owner   BIGINT NOT NULL,
    epoch   BIGINT NOT NULL,
    seq     BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (project, party, room)
);
CREATE TABLE IF NOT EXISTS partyhost_kv (
    project TEXT NOT NULL,
    party   TEXT NOT NULL,
    room    TEXT NOT NULL,
    key     TEXT NOT NULL,
    value   BYTEA NOT NULL,
    PRIMARY KEY (project, party, room, key)
);
CREATE TABLE IF NOT EXISTS partyhost_alarms (
    project TEXT NOT NULL,
    party   TEXT NOT NULL,
    room    TEXT NOT NULL,
    time_ms BIGINT NOT NULL,
    PRIMARY KEY (project, party, room)
);
CREATE INDEX IF NOT EXISTS partyhost_alarms_due ON partyhost_alarms (time_ms);
CREATE TABLE IF NOT EXISTS partyhost_commits (
    id      BIGSERIAL PRIMARY KEY,
    project TEXT NOT NULL,
    party   TEXT NOT NULL,
    room    TEXT NOT NULL,
    epoch   BIGINT NOT NULL,
    seq     BIGINT NOT NULL,
    node    BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS partyhost_secret (
    id     INT PRIMARY KEY CHECK (id = 1),
    secret TEXT NOT NULL
);
";

/// Any number the nodes agree on: the schema is created under this lock,
/// so nodes starting together do not race on `CREATE TABLE`.
const SCHEMA_LOCK: i64 = 0x7061_7274_7968;

/// Claims a room for node $4, bumping its epoch, when it is unowned, this
/// node's, or its owner cannot be acting: the owner's lease has run out on
/// the database's clock, or its session is gone (its advisory lock is
/// free) and it has not renewed for $5 seconds ([`ClusterConfig::quiet`],
/// longer than any node acts on one renewal). A killed node's session ends
/// with it, so its rooms move before its lease runs out; a node alive
/// through a database restart (every session ends) has stopped its rooms by
/// then. A node claims only while its own lease lives.
const CLAIM: &str = "
INSERT INTO partyhost_rooms AS r (project, party, room, owner, epoch)
SELECT $1, $2, $3, $4, 1 FROM partyhost_nodes me WHERE me.id = $4 AND me.lease_until > clock_timestamp()
ON CONFLICT (project, party, room) DO UPDATE SET owner = $4, epoch = r.epoch + 1
WHERE r.owner = $4 OR NOT EXISTS (
    SELECT 1 FROM partyhost_nodes n WHERE n.id = r.owner AND n.lease_until > clock_timestamp()
        AND (n.renewed_at > clock_timestamp() - make_interval(secs => $5) OR NOT pg_try_advisory_xact_lock(n.id))
)
RETURNING epoch";

/// The live owner of a room, when it is not node $4 and may not be claimed.
const OWNER: &str = "
SELECT n.name, n.address FROM partyhost_rooms r JOIN partyhost_nodes n ON n.id = r.owner
WHERE r.project = $1 AND r.party = $2 AND r.room = $3 AND r.owner <> $4 AND n.lease_until > clock_timestamp()";

/// Where a room is served when this node may not claim it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("room is owned by node `{node}` at {address}")]
pub struct OwnedElsewhere {
    pub node: String,
    pub address: String,
}

/// A commit found that another node claimed the room since it was loaded.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("another node has claimed this room")]
pub struct OwnershipLost;

/// What a node needs to join a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `postgres://user@host:port/db`.
    pub database_url: String,
    /// This node's name, for people (logs, `cluster.sh status`).
    pub node: String,
    /// `host:port` other nodes reach this one at.
    pub advertise: String,
    /// How long a renewal keeps the node's rooms on the database's clock
    /// (it renews every fifth of it, and acts on each for half of it).
    pub lease: Duration,
    /// Record (epoch, sequence) of every commit in `partyhost_commits`.
    pub audit: bool,
}

impl ClusterConfig {
    /// How often the node renews its lease.
    fn renew_every(&self) -> Duration {
        self.lease / 5
    }

    /// A node whose session is gone and that has not renewed for this long
    /// may lose its rooms before its lease runs out (see [`CLAIM`]).
    fn quiet(&self) -> Duration {
        self.renew_every() * 3
    }

    /// How long after sending a renewal the node's rooms may act: shorter
    /// than [`Self::quiet`] by a tenth of the lease, for clock rates, so no
    /// claim can come while they do. One renewal may fail or come late
    /// without a lapse.
    fn acting(&self) -> Duration {
        self.quiet() - self.lease / 10
    }
}

/// This node's membership: its row in `partyhost_nodes`, the session that
/// holds its advisory lock, and its lease.
pub struct Postgres {
    pub config: ClusterConfig,
    /// This node's id (a new one each time the process starts).
    pub node_id: i64,
    /// The session that renews the lease and answers lookups; replaced
    /// when it breaks.
    session: RwLock<Client>,
    lease: Arc<Lease>,
    /// Shared by the nodes (`partyhost_secret`): authenticates their calls
    /// to each other.
    pub secret: String,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres").field("node", &self.config.node).field("node_id", &self.node_id).finish()
    }
}

/// Connects with keepalives, so a connection to a database that vanished
/// (no reset ever comes) is found dead within seconds, not hours.
async fn connect(url: &str) -> anyhow::Result<Client> {
    let mut config: tokio_postgres::Config =
        url.parse().with_context(|| format!("reading the database URL {}", redact(url)))?;
    config.keepalives_idle(Duration::from_secs(5)).connect_timeout(Duration::from_secs(3));
    let (client, connection) =
        config.connect(NoTls).await.with_context(|| format!("connecting to {}", redact(url)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(cause = %e, "database connection closed");
        }
    });
    Ok(client)
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user = &url[scheme + 3..at];
            let user = user.split(':').next().unwrap_or_default();
            format!("{}{user}@{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Postgres {
    /// Connects, creates the schema if needed, and registers this node with
    /// a fresh lease; renews it until `shutdown`.
    ///
    /// # Errors
    /// When the database cannot be reached or the schema not created.
    pub async fn join(config: ClusterConfig, shutdown: &CancellationToken) -> anyhow::Result<Arc<Self>> {
        let mut client = connect(&config.database_url).await?;
        let tx = client.transaction().await.context("starting the schema transaction")?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK]).await?;
        tx.batch_execute(SCHEMA).await.context("creating the cluster schema")?;
        // A deploy token's kind of secret: random bytes as hex.
        let (fresh, _) = crate::manifest::new_token().context("making the cluster secret")?;
        tx.execute(
            "INSERT INTO partyhost_secret (id, secret) VALUES (1, $1) ON CONFLICT DO NOTHING",
            &[&fresh],
        )
        .await?;
        tx.commit().await.context("committing the cluster schema")?;
        let secret: String = client.query_one("SELECT secret FROM partyhost_secret", &[]).await?.get(0);
        let sent = Instant::now();
        let node_id: i64 = client
            .query_one(
                "INSERT INTO partyhost_nodes (name, address, lease_until, renewed_at)
                 VALUES ($1, $2, clock_timestamp() + make_interval(secs => $3), clock_timestamp()) RETURNING id",
                &[&config.node, &config.advertise, &secs(config.lease)],
            )
            .await
            .context("registering this node")?
            .get(0);
        client.execute("SELECT pg_advisory_lock($1)", &[&node_id]).await.context("taking the node's lock")?;
        let lease = Arc::new(Lease::new(sent + config.acting()));
        tracing::info!(node = %config.node, id = node_id, address = %config.advertise, "joined the cluster");
        let pg = Arc::new(Self { config, node_id, session: RwLock::new(client), lease, secret });
        tokio::spawn(pg.clone().renew_until(shutdown.clone()));
        Ok(pg)
    }

    pub fn lease(&self) -> &Arc<Lease> {
        &self.lease
    }

    /// Renews the lease every fifth of its length, and soon again after a
    /// failure (on a new session); meanwhile the lease runs down, and once
    /// it lapses the node's rooms fence themselves (see [`Lease`]).
    async fn renew_until(self: Arc<Self>, shutdown: CancellationToken) {
        let mut next = Instant::now() + self.config.renew_every();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep_until(next.into()) => {}
            }
            let sent = Instant::now();
            let retry = sent + self.config.lease / 20;
            match tokio::time::timeout(self.config.renew_every(), self.renew()).await {
                Ok(Ok(())) => {
                    self.lease.renewed(sent, self.config.acting());
                    next = sent + self.config.renew_every();
                }
                Ok(Err(e)) => {
                    tracing::warn!(cause = %format!("{e:#}"), "could not renew the lease");
                    next = retry;
                }
                Err(_) => {
                    tracing::warn!("renewing the lease timed out");
                    next = retry;
                }
            }
            // Notices a lapse even when nothing else is running.
            self.lease.valid(self.lease.term());
        }
    }

    async fn renew(&self) -> anyhow::Result<()> {
        if self.session.read().await.is_closed() {
            let mut session = self.session.write().await;
            let client = connect(&self.config.database_url).await?;
            // Its lock went with the old session (unless the server has not
            // noticed yet: then the old session still holds it for us).
            client.query_one("SELECT pg_try_advisory_lock($1)", &[&self.node_id]).await?;
            *session = client;
            tracing::info!("database session re-established");
        }
        let session = self.session.read().await;
        let renewed = session
            .execute(
                "UPDATE partyhost_nodes SET lease_until = clock_timestamp() + make_interval(secs => $2),
                 renewed_at = clock_timestamp() WHERE id = $1",
                &[&self.node_id, &secs(self.config.lease)],
            )
            .await?;
        anyhow::ensure!(renewed == 1, "this node's row is gone from partyhost_nodes");
        Ok(())
    }

    /// The node serving `key` when it is not this one and may not be
    /// claimed from it; `None` when this node may serve it.
    ///
    /// # Errors
    /// When the database cannot be asked.
    pub async fn owner_elsewhere(
        &self,
        project: &str,
        key: &RoomKey,
    ) -> anyhow::Result<Option<OwnedElsewhere>> {
        let session = self.session.read().await;
        let row = session
            .query_opt(OWNER, &[&project, &key.party.as_str(), &key.room.as_str(), &self.node_id])
            .await
            .with_context(|| format!("looking up the owner of room {key}"))?;
        Ok(row.map(|row| OwnedElsewhere { node: row.get(0), address: row.get(1) }))
    }

    /// Alarms due within `within` of rooms this node may claim: unowned,
    /// its own, or of a node whose lease ran out.
    ///
    /// # Errors
    /// When the database cannot be asked.
    pub async fn due_alarms(
        &self,
        project: &str,
        parties: &[&str],
        within: Duration,
    ) -> anyhow::Result<Vec<(RoomKey, u64)>> {
        let horizon = i64::try_from(crate::rooms::now_ms() + within.as_millis() as u64).unwrap_or(i64::MAX);
        let session = self.session.read().await;
        let rows = session
            .query(
                "SELECT a.party, a.room, a.time_ms FROM partyhost_alarms a
                 LEFT JOIN partyhost_rooms r USING (project, party, room)
                 LEFT JOIN partyhost_nodes n ON n.id = r.owner
                 WHERE a.project = $1 AND a.time_ms <= $2 AND a.party = ANY($4)
                   AND (r.owner IS NULL OR r.owner = $3 OR n.lease_until IS NULL OR n.lease_until <= clock_timestamp())
                 ORDER BY a.time_ms LIMIT 1000",
                &[&project, &horizon, &self.node_id, &parties],
            )
            .await
            .context("reading due alarms")?;
        Ok(rows
            .iter()
            .filter_map(|row| {
                let party = PartyName::try_from(row.get::<_, &str>(0)).ok()?;
                let room = RoomId::try_from(row.get::<_, &str>(1)).ok()?;
                Some((RoomKey { party, room }, row.get::<_, i64>(2).max(0).cast_unsigned()))
            })
            .collect())
    }

    /// Gives up the lease at once (a clean shutdown, after the rooms
    /// stopped): other nodes may claim this node's rooms without waiting.
    pub async fn leave(&self) {
        let session = self.session.read().await;
        let left = session
            .execute("UPDATE partyhost_nodes SET lease_until = clock_timestamp() - interval '1 second' WHERE id = $1", &[
                &self.node_id,
            ])
            .await;
        if let Err(e) = left {
            tracing::warn!(cause = %e, "could not give up the lease; other nodes wait for it to run out");
        }
    }
}

/// The statements a writer runs, prepared once per connection (so each is
/// sent whole the first time its future is polled, and statements started in
/// order reach the database in order).
struct Statements {
    claim: Statement,
    owner: Statement,
    load_kv: Statement,
    load_alarm: Statement,
    check_epoch: Statement,
    put: Statement,
    delete: Statement,
    delete_all: Statement,
    set_alarm: Statement,
    delete_alarm: Statement,
    audit: Statement,
}

impl Statements {
    async fn prepare(client: &Client) -> anyhow::Result<Self> {
        let prepare = |sql: &'static str| async move {
            client.prepare(sql).await.with_context(|| format!("preparing {}", sql.trim()))
        };
        Ok(Self {
            claim: prepare(CLAIM).await?,
            owner: prepare(OWNER).await?,
            load_kv: prepare("SELECT key, value FROM partyhost_kv WHERE project = $1 AND party = $2 AND room = $3")
                .await?,
            load_alarm: prepare(
                "SELECT time_ms FROM partyhost_alarms WHERE project = $1 AND party = $2 AND room = $3",
            )
            .await?,
            check_epoch: prepare(
                "UPDATE partyhost_rooms SET seq = seq + 1
                 WHERE project = $1 AND party = $2 AND room = $3 AND owner = $4 AND epoch = $5 RETURNING seq",
            )
            .await?,
            put: prepare(
                "INSERT INTO partyhost_kv (project, party, room, key, value) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (project, party, room, key) DO UPDATE SET value = EXCLUDED.value",
            )
            .await?,
            delete: prepare(
                "DELETE FROM partyhost_kv WHERE project = $1 AND party = $2 AND room = $3 AND key = $4",
            )
            .await?,
            delete_all: prepare("DELETE FROM partyhost_kv WHERE project = $1 AND party = $2 AND room = $3")
                .await?,
            set_alarm: prepare(
                "INSERT INTO partyhost_alarms (project, party, room, time_ms) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (project, party, room) DO UPDATE SET time_ms = EXCLUDED.time_ms",
            )
            .await?,
            delete_alarm: prepare("DELETE FROM partyhost_alarms WHERE project = $1 AND party = $2 AND room = $3")
                .await?,
            audit: prepare(
                "INSERT INTO partyhost_commits (project, party, room, epoch, seq, node) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .await?,
        })
    }
}

/// Parameters are `&(dyn ToSql + Sync)`.
type Params<'a> = Vec<&'a (dyn tokio_postgres::types::ToSql + Sync)>;

/// The writer of one project's rooms: loads (claims) and group commits, on
/// a connection of its own, in the order rooms sent them.
pub(super) struct Writer {
    pg: Arc<Postgres>,
    project: String,
    connection: Option<(Client, Statements)>,
    /// Rooms (and epochs) whose last commit failed; forgotten when the
    /// room loads again.
    poisoned: std::collections::HashSet<(RoomKey, u64)>,
}

/// A group of rooms' writes on their way to one transaction.
type Group = Vec<(RoomKey, PendingWrites, Reply<()>)>;

impl Writer {
    pub(super) fn new(pg: Arc<Postgres>, project: String) -> Self {
        Self { pg, project, connection: None, poisoned: std::collections::HashSet::new() }
    }

    /// Runs jobs until every handle is dropped.
    pub(super) async fn run(mut self, mut queue: mpsc::Receiver<Job>, max_group: usize) {
        let mut group: Group = Vec::new();
        while let Some(job) = queue.recv().await {
            let mut next = Some(job);
            while let Some(job) = next.take() {
                match job {
                    Job::Commit { key, writes, reply } => group.push((key, writes, reply)),
                    Job::Load { key, reply } => {
                        // Commits queued before this load land first.
                        self.commit_group(&mut group).await;
                        self.poisoned.retain(|(poisoned, _)| poisoned != &key);
                        let _ = reply.send(self.claim_and_load(&key).await);
                    }
                    // PostgreSQL checkpoints by itself.
                    Job::Checkpoint => {}
                }
                if group.len() < max_group {
                    next = queue.try_recv().ok();
                }
            }
            self.commit_group(&mut group).await;
        }
    }

    /// The connection, opened (and its statements prepared) if needed.
    async fn connection(&mut self) -> anyhow::Result<&mut (Client, Statements)> {
        if self.connection.as_ref().is_none_or(|(client, _)| client.is_closed()) {
            self.connection = None;
            let client = connect(&self.pg.config.database_url).await?;
            // A transaction left open by a node that stopped (SIGSTOP) holds
            // its rooms' rows: the server ends it before anyone may claim
            // them, and a claim waits at most a lease for a row.
            let (acting, lease) = (self.pg.config.acting().as_millis(), self.pg.config.lease.as_millis());
            client
                .batch_execute(&format!(
                    "SET idle_in_transaction_session_timeout = {acting}; SET lock_timeout = {lease}"
                ))
                .await?;
            let statements = Statements::prepare(&client).await?;
            self.connection = Some((client, statements));
        }
        self.connection.as_mut().ok_or_else(|| anyhow!("no database connection"))
    }

    /// After a failed attempt: whether to try again. A lost connection (the
    /// database restarting) is retried on a new one while the lease lasts,
    /// so rooms' output waits behind their gates instead of failing. Every
    /// attempt is a whole transaction, and its writes are idempotent (whole
    /// values put, keys deleted), so one that committed unseen does no harm
    /// when repeated.
    async fn should_retry(&mut self, e: &anyhow::Error, term: u64, wait: &mut Duration) -> bool {
        let broken = self.connection.as_ref().is_none_or(|(client, _)| client.is_closed());
        if !broken || !self.pg.lease.valid(term) {
            return false;
        }
        tracing::warn!(cause = %format!("{e:#}"), "database unreachable; retrying");
        self.connection = None;
        tokio::time::sleep(*wait).await;
        *wait = (*wait * 2).min(Duration::from_secs(1));
        true
    }

    /// Claims `key` and reads its entries and alarm, in one transaction.
    async fn claim_and_load(&mut self, key: &RoomKey) -> anyhow::Result<RoomStorage> {
        let (term, mut wait) = (self.pg.lease.term(), Duration::from_millis(50));
        loop {
            match self.try_claim_and_load(key).await {
                Err(e) if self.should_retry(&e, term, &mut wait).await => {}
                result => return result,
            }
        }
    }

    async fn try_claim_and_load(&mut self, key: &RoomKey) -> anyhow::Result<RoomStorage> {
        let (project, node_id) = (self.project.clone(), self.pg.node_id);
        let quiet = secs(self.pg.config.quiet());
        let (party, room) = (key.party.as_str(), key.room.as_str());
        let (client, statements) = self.connection().await?;
        let tx = client.transaction().await?;
        // Sent together: each statement still runs after the one before it
        // (and takes its snapshot then), so the reads see every commit the
        // claim waited for.
        let key_params: Params<'_> = vec![&project, &party, &room];
        let (claimed, rows, alarm) = futures_util::future::try_join3(
            tx.query_opt(&statements.claim, &[&project, &party, &room, &node_id, &quiet]),
            tx.query(&statements.load_kv, &key_params),
            tx.query_opt(&statements.load_alarm, &key_params),
        )
        .await
        .with_context(|| format!("claiming and loading room {key}"))?;
        let Some(claimed) = claimed else {
            let owner = tx.query_opt(&statements.owner, &[&project, &party, &room, &node_id]).await?;
            return Err(match owner {
                Some(row) => anyhow::Error::new(OwnedElsewhere { node: row.get(0), address: row.get(1) }),
                // This node's own lease ran out (or the owner's, just now).
                None => anyhow!(
                    "room {key} could not be claimed: this node's lease has lapsed, or its owner's just did"
                ),
            });
        };
        let epoch: i64 = claimed.get(0);
        tx.commit().await.with_context(|| format!("committing the claim of room {key}"))?;
        let entries: BTreeMap<String, Vec<u8>> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
        let alarm = alarm.map(|row| row.get::<_, i64>(0).max(0).cast_unsigned());
        tracing::debug!(room = %key, epoch, "claimed");
        Ok(RoomStorage::new(entries, alarm).with_epoch(epoch.cast_unsigned()))
    }

    /// Commits every queued room's writes in one transaction. Rooms that
    /// another node claimed meanwhile fail with [`OwnershipLost`], and the
    /// rest go again without them; when the group fails for another reason,
    /// each room is committed alone, so one bad write fails only its room.
    async fn commit_group(&mut self, group: &mut Group) {
        // After a failed commit a room may not commit a later one of the
        // same epoch: the database would hold writes it never had together.
        let poisoned = &self.poisoned;
        for (key, _, reply) in
            group.extract_if(.., |(key, writes, _)| poisoned.contains(&(key.clone(), writes.epoch)))
        {
            let _ = reply
                .send(Err(anyhow!("commit to room {key} refused: an earlier commit of the room failed")));
        }
        let (term, mut wait) = (self.pg.lease.term(), Duration::from_millis(50));
        while !group.is_empty() {
            let result = match self.commit_many(group).await {
                Err(e) if self.should_retry(&e, term, &mut wait).await => continue,
                result => result,
            };
            match result {
                Ok(lost) if lost.is_empty() => {
                    group.drain(..).for_each(|(_, _, reply)| drop(reply.send(Ok(()))));
                }
                Ok(lost) => {
                    let rooms = std::mem::take(group);
                    for (index, (key, writes, reply)) in rooms.into_iter().enumerate() {
                        if lost.contains(&index) {
                            let lost =
                                anyhow::Error::new(OwnershipLost).context(format!("commit to room {key}"));
                            let _ = reply.send(Err(lost));
                        } else {
                            group.push((key, writes, reply));
                        }
                    }
                }
                Err(e) if group.len() > 1 && self.pg.lease.valid(term) => {
                    tracing::warn!(rooms = group.len(), cause = %format!("{e:#}"), "group commit failed; committing rooms one by one");
                    for room in std::mem::take(group) {
                        Box::pin(self.commit_group(&mut vec![room])).await;
                    }
                }
                Err(e) => {
                    let cause = format!("{e:#}");
                    // The lease lapsed while the database was away.
                    let lost = !self.pg.lease.valid(term);
                    for (key, writes, reply) in group.drain(..) {
                        let e = anyhow!("commit to room {key} failed: {cause}");
                        self.poisoned.insert((key, writes.epoch));
                        let _ = reply.send(Err(if lost { e.context(OwnershipLost) } else { e }));
                    }
                }
            }
        }
    }

    /// One transaction for the whole group. Returns the indexes of rooms
    /// whose epoch moved (then nothing was committed).
    async fn commit_many(&mut self, group: &Group) -> anyhow::Result<Vec<usize>> {
        let (project, node_id, audit) = (self.project.clone(), self.pg.node_id, self.pg.config.audit);
        let (client, statements) = self.connection().await?;
        let tx = client.transaction().await?;
        let rooms: Vec<(&str, &str, i64)> = group
            .iter()
            .map(|(key, writes, _)| (key.party.as_str(), key.room.as_str(), writes.epoch.cast_signed()))
            .collect();
        let checks: Vec<Params<'_>> = rooms
            .iter()
            .map(|(party, room, epoch)| -> Params<'_> { vec![&project, party, room, &node_id, epoch] })
            .collect();
        let sequences =
            try_join_all(checks.iter().map(|params| tx.query_opt(&statements.check_epoch, params)))
                .await
                .context("checking the rooms' epochs")?;
        let lost: Vec<usize> =
            sequences.iter().enumerate().filter(|(_, seq)| seq.is_none()).map(|(i, _)| i).collect();
        if !lost.is_empty() {
            tx.rollback().await?;
            return Ok(lost);
        }
        let alarm_times: Vec<i64> = group
            .iter()
            .map(|(_, writes, _)| match writes.alarm {
                Some(Some(time_ms)) => i64::try_from(time_ms).unwrap_or(i64::MAX),
                _ => 0,
            })
            .collect();
        let mut planned: Vec<(&Statement, Params<'_>)> = Vec::new();
        for (((_, writes, _), (party, room, _)), time_ms) in group.iter().zip(&rooms).zip(&alarm_times) {
            for write in &writes.writes {
                planned.push(match write {
                    Write::Put(k, v) => (&statements.put, vec![&project, party, room, k, v]),
                    Write::Delete(k) => (&statements.delete, vec![&project, party, room, k]),
                    Write::DeleteAll => (&statements.delete_all, vec![&project, party, room]),
                });
            }
            match writes.alarm {
                None => {}
                Some(Some(_)) => planned.push((&statements.set_alarm, vec![&project, party, room, time_ms])),
                Some(None) => planned.push((&statements.delete_alarm, vec![&project, party, room])),
            }
        }
        // Sent in this order, all at once; PostgreSQL runs them in order.
        try_join_all(planned.iter().map(|(statement, params)| tx.execute(*statement, params)))
            .await
            .context("writing storage")?;
        if audit {
            let sequences: Vec<i64> =
                sequences.iter().map(|seq| seq.as_ref().map_or(0, |row| row.get(0))).collect();
            let records: Vec<Params<'_>> = rooms
                .iter()
                .zip(&sequences)
                .map(|((party, room, epoch), seq)| -> Params<'_> {
                    vec![&project, party, room, epoch, seq, &node_id]
                })
                .collect();
            try_join_all(records.iter().map(|params| tx.execute(&statements.audit, params)))
                .await
                .context("recording the audit")?;
        }
        tx.commit().await.context("committing storage")?;
        Ok(Vec::new())
    }
}
