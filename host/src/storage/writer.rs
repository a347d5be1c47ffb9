//! The storage thread: the only user of the SQLite connection. Rooms send it
//! loads and commits; it applies every commit queued at that moment in one
//! transaction (group commit), so many rooms writing at once share a commit.
//!
//! Jobs run in arrival order, so a room loaded after another room's commit
//! (after an eviction, say) always sees it.

use anyhow::{Context, anyhow};
use prometheus_client::metrics::histogram::Histogram;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use tokio::sync::{mpsc, oneshot};

use super::cache::{PendingWrites, RoomStorage};
use super::db::{Db, StoredAlarm};
use super::postgres::{Postgres, Writer};
use crate::ids::RoomKey;

/// Jobs waiting for the storage thread. When full, rooms wait (they are
/// waiting for their commit anyway).
const QUEUE: usize = 4096;
/// Most commits folded into one transaction.
const MAX_GROUP: usize = 512;
/// Connections writing to PostgreSQL at once, rooms spread over them: a
/// claim (a round trip or three) or a group commit on one does not hold up
/// the rooms of the others.
const POSTGRES_WRITERS: usize = 4;

/// Where a job's outcome goes.
pub(super) type Reply<T> = oneshot::Sender<anyhow::Result<T>>;

/// What rooms ask of their storage backend.
pub(super) enum Job {
    Load { key: RoomKey, reply: Reply<RoomStorage> },
    Commit { key: RoomKey, writes: PendingWrites, reply: Reply<()> },
}

/// A handle on the storage thread. Cheap to clone; the thread stops when
/// the last handle is dropped, after finishing the jobs it has.
#[derive(Clone)]
pub struct Storage {
    /// One queue per writer; a room's jobs always go to the same one, so
    /// they run in the order the room sent them.
    jobs: Arc<[mpsc::Sender<Job>]>,
    hooks: Arc<CommitHooks>,
}

/// Lets a test decide when commits happen: hold them all until released,
/// or fail the next group. The output gate's tests use it to show that
/// nothing leaves a room before its writes are durable. Nothing else calls
/// it; unused, it costs one uncontended lock per group commit.
#[derive(Debug, Default)]
pub struct CommitHooks {
    state: Mutex<HookState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct HookState {
    held: bool,
    fail_next: bool,
}

impl CommitHooks {
    /// Commits wait from now until [`CommitHooks::release`].
    pub fn hold(&self) {
        self.update(|state| state.held = true);
    }

    /// Held commits go ahead.
    pub fn release(&self) {
        self.update(|state| state.held = false);
    }

    /// The next group commit fails, as a full disk would fail it.
    pub fn fail_next(&self) {
        self.update(|state| state.fail_next = true);
    }

    fn update(&self, change: impl FnOnce(&mut HookState)) {
        change(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()));
        self.changed.notify_all();
    }

    /// Waits while held; then whether this group must fail.
    fn before_commit(&self) -> bool {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut state = self.changed.wait_while(state, |state| state.held).unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut state.fail_next)
    }
}

impl Storage {
    /// Opens the file and starts the storage thread. Also returns the alarms
    /// stored in the file and its stored bytes, read before the thread starts.
    ///
    /// # Errors
    /// When the file cannot be opened or read.
    /// Each commit's time is observed in `commit_seconds`.
    pub fn open(
        path: &Path,
        commit_seconds: Option<Histogram>,
    ) -> anyhow::Result<(Self, Vec<StoredAlarm>, u64)> {
        let mut db = Db::open(path)?;
        let alarms = db.alarms()?;
        let stored_bytes = db.stored_bytes()?;
        let (jobs, queue) = mpsc::channel(QUEUE);
        let hooks = Arc::new(CommitHooks::default());
        let thread_hooks = hooks.clone();
        std::thread::Builder::new()
            .name("storage".into())
            .spawn(move || run(&mut db, queue, &thread_hooks, &commit_seconds))
            .context("starting the storage thread")?;
        Ok((Self { jobs: Arc::new([jobs]), hooks }, alarms, stored_bytes))
    }

    /// Storage for `project`'s rooms in the cluster's PostgreSQL database:
    /// a load claims the room for this node, a commit checks it still owns
    /// it (see `postgres.rs`).
    pub fn open_postgres(pg: Arc<Postgres>, project: &str) -> Self {
        let jobs: Vec<_> = (0..POSTGRES_WRITERS)
            .map(|_| {
                let (jobs, queue) = mpsc::channel(QUEUE);
                tokio::spawn(Writer::new(pg.clone(), project.to_owned()).run(queue, MAX_GROUP));
                jobs
            })
            .collect();
        Self { jobs: jobs.into(), hooks: Arc::default() }
    }

    /// The test hooks of this storage thread (see [`CommitHooks`]).
    pub fn hooks(&self) -> &Arc<CommitHooks> {
        &self.hooks
    }

    /// Reads a room's storage (in a cluster, claims the room first).
    ///
    /// # Errors
    /// On a database error, or when the storage thread has stopped; in a
    /// cluster, [`super::OwnedElsewhere`] when another node serves the room.
    pub async fn load(&self, key: &RoomKey) -> anyhow::Result<RoomStorage> {
        let (reply, result) = oneshot::channel();
        self.send(Job::Load { key: key.clone(), reply }).await?;
        result.await.map_err(|_| anyhow!("the storage thread stopped"))?
    }

    /// Queues `writes` for commit and returns at once (waiting only while
    /// the queue is full); the receiver tells when they are durable. Commits
    /// queued by one room apply in the order it queued them.
    ///
    /// # Errors
    /// When the storage thread has stopped.
    pub async fn queue_commit(&self, key: &RoomKey, writes: PendingWrites) -> anyhow::Result<CommitTicket> {
        let (reply, result) = oneshot::channel();
        self.send(Job::Commit { key: key.clone(), writes, reply }).await?;
        Ok(CommitTicket(result))
    }

    async fn send(&self, job: Job) -> anyhow::Result<()> {
        let key = match &job {
            Job::Load { key, .. } | Job::Commit { key, .. } => key,
        };
        let writer = if self.jobs.len() == 1 {
            0
        } else {
            let mut hasher = std::hash::DefaultHasher::new();
            std::hash::Hash::hash(key, &mut hasher);
            (std::hash::Hasher::finish(&hasher) % self.jobs.len() as u64) as usize
        };
        self.jobs[writer].send(job).await.map_err(|_| anyhow!("the storage thread stopped"))
    }
}

/// Resolves when a queued commit is durable, or failed.
pub struct CommitTicket(oneshot::Receiver<anyhow::Result<()>>);

impl CommitTicket {
    /// Waits in place, so a caller that stops waiting (a `select!` that
    /// took another branch) keeps the ticket. Do not wait again after it
    /// has resolved.
    ///
    /// # Errors
    /// When the commit failed or the storage thread stopped.
    pub async fn durable(&mut self) -> anyhow::Result<()> {
        (&mut self.0).await.map_err(|_| anyhow!("the storage thread stopped"))?
    }
}

fn run(db: &mut Db, mut queue: mpsc::Receiver<Job>, hooks: &CommitHooks, commit_seconds: &Option<Histogram>) {
    let mut group = Vec::new();
    while let Some(job) = queue.blocking_recv() {
        let mut next = Some(job);
        while let Some(job) = next.take() {
            match job {
                Job::Commit { key, writes, reply } => group.push((key, writes, reply)),
                Job::Load { key, reply } => {
                    // Commits queued before this load must land first.
                    commit_group(db, &mut group, hooks, commit_seconds);
                    let _ = reply.send(db.load(&key));
                }
            }
            if group.len() < MAX_GROUP {
                next = queue.try_recv().ok();
            }
        }
        commit_group(db, &mut group, hooks, commit_seconds);
    }
}

/// Commits every queued room's writes in one transaction. If that fails,
/// each room is committed alone, so one bad batch fails only its own room.
fn commit_group(
    db: &mut Db,
    group: &mut Vec<(RoomKey, PendingWrites, oneshot::Sender<anyhow::Result<()>>)>,
    hooks: &CommitHooks,
    commit_seconds: &Option<Histogram>,
) {
    if group.is_empty() {
        return;
    }
    let started = std::time::Instant::now();
    if hooks.before_commit() {
        for (_, _, reply) in group.drain(..) {
            let _ = reply.send(Err(anyhow!("commit failed (CommitHooks::fail_next)")));
        }
        return;
    }
    let batch: Vec<(&RoomKey, &PendingWrites)> = group.iter().map(|(k, w, _)| (k, w)).collect();
    let committed = db.commit_many(&batch);
    if let Some(histogram) = commit_seconds {
        histogram.observe(started.elapsed().as_secs_f64());
    }
    match committed {
        Ok(()) => group.drain(..).for_each(|(_, _, reply)| drop(reply.send(Ok(())))),
        Err(e) => {
            tracing::warn!(rooms = group.len(), cause = %format!("{e:#}"), "group commit failed; committing rooms one by one");
            for (key, writes, reply) in group.drain(..) {
                let _ = reply.send(db.commit_many(&[(&key, &writes)]));
            }
        }
    }
}
