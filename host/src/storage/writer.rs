//! The storage thread, and the commits that need not wait for it. Rooms send
//! the thread loads and commits; it applies every commit queued at that
//! moment in one transaction (group commit), so many rooms writing at once
//! share a commit. Jobs run in arrival order, so a room loaded after another
//! room's commit (after an eviction, say) always sees it.
//!
//! A room may instead commit on its own thread when the SQLite connection is
//! free at that moment ([`Storage::commit_now`]): the commit takes tens of
//! microseconds, and the two thread hops it saves (to the storage thread and
//! back) were what bounded a busy room's round trips. When the connection
//! is busy (a group commit, a load, a checkpoint, another room's commit),
//! the room queues as before and never waits for the lock, so a slow disk
//! holds up at most the one thread that found the connection free. The
//! storage thread also owns the checkpoints, so no fsync of theirs runs on
//! a serving thread.
//!
//! A room reads its storage (as it starts, or after a reset) the same way
//! when the connection is free and no commit queued for the thread is still
//! unapplied ([`Storage::load`]): a new room's first answer then waits for
//! no thread hop, and a room too big to read in a moment is read by the
//! thread.

use anyhow::{Context, anyhow};
use prometheus_client::metrics::histogram::Histogram;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
/// The largest batch a room commits on its own thread ([`Storage::commit_now`]),
/// in bytes of keys and values: a bigger one, or a delete-all, goes to the
/// storage thread, so a commit holds a serving thread no longer than a small
/// one does (tens of microseconds).
const COMMIT_NOW_BYTES: usize = 64 << 10;
/// The most writes (each its own statement) such a batch may hold.
const COMMIT_NOW_WRITES: usize = 256;
/// The most entries, and bytes of keys and values, a room may hold to be
/// read on a serving thread when it starts; a bigger one is read by the
/// storage thread.
const LOAD_NOW_ROWS: usize = 1024;
const LOAD_NOW_BYTES: usize = COMMIT_NOW_BYTES;
/// Connections writing to PostgreSQL at once, rooms spread over them: a
/// claim (a round trip or three) or a group commit on one does not hold up
/// the rooms of the others.
const POSTGRES_WRITERS: usize = 4;

/// Where a job's outcome goes.
pub(super) type Reply<T> = oneshot::Sender<anyhow::Result<T>>;

/// What rooms ask of their storage backend.
pub(super) enum Job {
    Load {
        key: RoomKey,
        reply: Reply<RoomStorage>,
    },
    Commit {
        key: RoomKey,
        writes: PendingWrites,
        reply: Reply<()>,
    },
    /// Commits made by rooms themselves filled the write-ahead log.
    Checkpoint,
}

/// A handle on the storage thread. Cheap to clone; the thread stops when
/// the last handle is dropped, after finishing the jobs it has.
#[derive(Clone)]
pub struct Storage {
    /// One queue per writer; a room's jobs always go to the same one, so
    /// they run in the order the room sent them.
    jobs: Arc<[mpsc::Sender<Job>]>,
    hooks: Arc<CommitHooks>,
    /// The SQLite file, for [`Storage::commit_now`] and
    /// [`Storage::load_now`]; `None` on PostgreSQL.
    sqlite: Option<Arc<SharedDb>>,
}

/// The SQLite connection, shared by the storage thread and rooms that
/// commit on their own threads.
struct SharedDb {
    db: Mutex<Db>,
    commit_seconds: Option<Histogram>,
    /// A checkpoint was asked of the storage thread and has not run yet:
    /// the rooms committing meanwhile do not ask again.
    checkpoint_asked: AtomicBool,
    /// The storage thread waits for the connection: rooms leave it alone
    /// (a lock is not fair, and rooms taking it back to back could keep
    /// loads, big commits and checkpoints waiting).
    thread_waiting: AtomicBool,
    /// Commits queued for the storage thread and not yet applied: a load on
    /// a serving thread must not overtake one (it could be an earlier run
    /// of the same room's). Lowered by the thread while it holds `db`.
    unapplied: AtomicUsize,
}

impl SharedDb {
    fn new(db: Db, commit_seconds: Option<Histogram>) -> Self {
        Self {
            db: Mutex::new(db),
            commit_seconds,
            checkpoint_asked: false.into(),
            thread_waiting: false.into(),
            unapplied: 0.into(),
        }
    }

    /// The connection, for a room on its own thread: only if it is free
    /// right now and the storage thread is not waiting for it.
    fn for_a_room(&self) -> Option<std::sync::MutexGuard<'_, Db>> {
        if self.thread_waiting.load(Ordering::Relaxed) {
            return None;
        }
        self.db.try_lock().ok()
    }

    /// The connection, for the storage thread.
    fn lock(&self) -> std::sync::MutexGuard<'_, Db> {
        self.thread_waiting.store(true, Ordering::Relaxed);
        let db = self.db.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.thread_waiting.store(false, Ordering::Relaxed);
        db
    }
}

/// Lets a test decide when commits happen: hold them all until released,
/// or fail the next group. The output gate's tests use it to show that
/// nothing leaves a room before its writes are durable. Nothing else calls
/// it; unused, it costs one uncontended lock per commit.
#[derive(Debug, Default)]
pub struct CommitHooks {
    state: Mutex<HookState>,
    changed: Condvar,
    /// Commits tried by rooms on their own threads.
    made_by_rooms: std::sync::atomic::AtomicU64,
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

    /// How many commits rooms tried on their own threads
    /// ([`Storage::commit_now`]), failed ones included.
    pub fn made_by_rooms(&self) -> u64 {
        self.made_by_rooms.load(Ordering::Relaxed)
    }

    /// Whether a test holds commits or wants the next one to fail: those
    /// are the storage thread's to carry out.
    fn engaged(&self) -> bool {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.held || state.fail_next
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
        let db = Db::open(path)?;
        let alarms = db.alarms()?;
        let stored_bytes = db.stored_bytes()?;
        let (jobs, queue) = mpsc::channel(QUEUE);
        let hooks = Arc::new(CommitHooks::default());
        let shared = Arc::new(SharedDb::new(db, commit_seconds));
        let (thread_hooks, thread_db) = (hooks.clone(), shared.clone());
        std::thread::Builder::new()
            .name("storage".into())
            .spawn(move || run(&thread_db, queue, &thread_hooks))
            .context("starting the storage thread")?;
        Ok((Self { jobs: Arc::new([jobs]), hooks, sqlite: Some(shared) }, alarms, stored_bytes))
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
        Self { jobs: jobs.into(), hooks: Arc::default(), sqlite: None }
    }

    /// The test hooks of this storage thread (see [`CommitHooks`]).
    pub fn hooks(&self) -> &Arc<CommitHooks> {
        &self.hooks
    }

    /// Reads a room's storage (in a cluster, claims the room first): on
    /// the caller's thread when [`Storage::load_now`] can, else on the
    /// storage thread.
    ///
    /// # Errors
    /// On a database error, or when the storage thread has stopped; in a
    /// cluster, [`super::OwnedElsewhere`] when another node serves the room.
    pub async fn load(&self, key: &RoomKey) -> anyhow::Result<RoomStorage> {
        if let Some(loaded) = self.load_now(key) {
            return loaded;
        }
        let (reply, result) = oneshot::channel();
        self.send(key, Job::Load { key: key.clone(), reply }).await?;
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
        self.send(key, Job::Commit { key: key.clone(), writes, reply }).await?;
        Ok(CommitTicket(result))
    }

    /// Reads a room's storage on the caller's thread if the SQLite
    /// connection is free right now, no queued commit waits for the storage
    /// thread, and the room is small; `None` when not (or on PostgreSQL,
    /// where a load also claims the room). Never waits, neither for the
    /// connection nor for another process's lock on the file.
    fn load_now(&self, key: &RoomKey) -> Option<anyhow::Result<RoomStorage>> {
        let shared = self.sqlite.as_ref()?;
        let mut db = shared.for_a_room()?;
        // Read under the lock, which the thread holds while it lowers it.
        if shared.unapplied.load(Ordering::SeqCst) > 0 {
            return None;
        }
        db.load_without_waiting(key, LOAD_NOW_ROWS, LOAD_NOW_BYTES)
    }

    /// Commits `writes` on the caller's thread if the SQLite connection is
    /// free right now and the batch is small; `None` when not (or on
    /// PostgreSQL, or while a test holds commits): then queue them with
    /// [`Storage::queue_commit`]. Never waits, neither for the connection
    /// nor for another process's lock on the file. The caller must have no
    /// commit of its own still queued, so its commits stay in order.
    ///
    /// # Errors
    /// As the storage thread's commit: nothing of `writes` is applied then.
    pub fn commit_now(&self, key: &RoomKey, writes: &PendingWrites) -> Option<anyhow::Result<()>> {
        let shared = self.sqlite.as_ref()?;
        let small = writes.writes.len() <= COMMIT_NOW_WRITES
            && writes.weight().is_some_and(|bytes| bytes <= COMMIT_NOW_BYTES);
        if !small || self.hooks.engaged() {
            return None;
        }
        let mut db = shared.for_a_room()?;
        self.hooks.made_by_rooms.fetch_add(1, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let committed = db.commit_without_waiting(key, writes)?;
        observe(&shared.commit_seconds, started);
        if db.checkpoint_due() && !shared.checkpoint_asked.swap(true, Ordering::Relaxed) {
            // Not here: a checkpoint syncs the file. A full queue only
            // puts it off to the next commit.
            if self.jobs[0].try_send(Job::Checkpoint).is_err() {
                shared.checkpoint_asked.store(false, Ordering::Relaxed);
            }
        }
        Some(committed)
    }

    /// Queues `job`, about `key`'s room, on the writer that room's jobs go to.
    async fn send(&self, key: &RoomKey, job: Job) -> anyhow::Result<()> {
        let writer = if self.jobs.len() == 1 {
            0
        } else {
            let mut hasher = std::hash::DefaultHasher::new();
            std::hash::Hash::hash(key, &mut hasher);
            (std::hash::Hasher::finish(&hasher) % self.jobs.len() as u64) as usize
        };
        let slot = self.jobs[writer].reserve().await.map_err(|_| anyhow!("the storage thread stopped"))?;
        // Counted as it is queued, with no wait in between that a caller
        // could abandon.
        if let (Job::Commit { .. }, Some(shared)) = (&job, &self.sqlite) {
            shared.unapplied.fetch_add(1, Ordering::SeqCst);
        }
        slot.send(job);
        Ok(())
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

fn run(shared: &SharedDb, mut queue: mpsc::Receiver<Job>, hooks: &CommitHooks) {
    let mut group = Vec::new();
    while let Some(job) = queue.blocking_recv() {
        // Held while the jobs queued now are done: rooms that find it
        // taken queue their commits instead of waiting.
        let mut db = shared.lock();
        let mut next = Some(job);
        let mut commits = 0;
        while let Some(job) = next.take() {
            match job {
                Job::Commit { key, writes, reply } => {
                    commits += 1;
                    group.push((key, writes, reply));
                }
                Job::Load { key, reply } => {
                    // Commits queued before this load must land first.
                    commit_group(&mut db, &mut group, hooks, &shared.commit_seconds);
                    let _ = reply.send(db.load(&key));
                }
                Job::Checkpoint => {}
            }
            if group.len() < MAX_GROUP {
                next = queue.try_recv().ok();
            }
        }
        commit_group(&mut db, &mut group, hooks, &shared.commit_seconds);
        shared.unapplied.fetch_sub(commits, Ordering::SeqCst);
        shared.checkpoint_asked.store(false, Ordering::Relaxed);
        if db.checkpoint_due()
            && let Err(e) = db.checkpoint()
        {
            tracing::warn!(cause = %format!("{e:#}"), "checkpoint failed; the next one retries");
        }
    }
}

/// Records a commit's time in `commit_seconds`, when metrics are on.
fn observe(commit_seconds: &Option<Histogram>, started: std::time::Instant) {
    if let Some(histogram) = commit_seconds {
        histogram.observe(started.elapsed().as_secs_f64());
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
    observe(commit_seconds, started);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{PartyName, RoomId};

    /// Storage on a fresh file, and a room's key.
    fn opened() -> anyhow::Result<(tempfile::TempDir, Storage, RoomKey)> {
        let dir = tempfile::tempdir()?;
        let (storage, _, _) = Storage::open(&dir.path().join("storage.sqlite"), None)?;
        let key = RoomKey {
            party: PartyName::try_from("p").map_err(|e| anyhow!("{e}"))?,
            room: RoomId::try_from("r").map_err(|e| anyhow!("{e}"))?,
        };
        Ok((dir, storage, key))
    }

    /// Rooms that commit on their own threads never checkpoint; the log
    /// must still be copied into the file and start over, or a room writing
    /// for ever grows it for ever (SQLite's automatic checkpoint is off).
    #[tokio::test]
    async fn commits_made_by_rooms_keep_the_write_ahead_log_bounded() -> anyhow::Result<()> {
        let (dir, storage, key) = opened()?;
        let path = dir.path().join("storage.sqlite");
        let commits = 3_000;
        let mut inline = 0;
        for i in 0..commits {
            let mut room = RoomStorage::new(Default::default(), None);
            room.put(format!("key-{i}"), vec![7; 100]);
            let writes = room.take_pending();
            match storage.commit_now(&key, &writes) {
                Some(committed) => {
                    committed?;
                    inline += 1;
                }
                None => storage.queue_commit(&key, writes).await?.durable().await?,
            }
        }
        assert!(
            inline > commits / 2,
            "only {inline} of {commits} commits were made without the storage thread"
        );
        // Each commit appends one or two 4 KiB pages to the log: without
        // checkpoints it would hold them all (over 20 MiB); with them, about
        // a checkpoint's worth (4 MiB).
        let wal = std::fs::metadata(dir.path().join("storage.sqlite-wal"))?.len();
        assert!(wal < 8 << 20, "the write-ahead log grew to {wal} bytes over {commits} commits");
        let reopened = Db::open(&path)?.load(&key)?;
        assert_eq!(reopened.get("key-2999"), Some(&[7; 100][..]));
        Ok(())
    }

    /// One byte past the bound, and a delete-all, go to the storage thread.
    #[tokio::test]
    async fn only_small_batches_are_committed_on_the_rooms_own_thread() -> anyhow::Result<()> {
        let (_dir, storage, key) = opened()?;
        let batch = |value_bytes: usize, delete_all: bool| {
            let mut room = RoomStorage::new(Default::default(), None);
            if delete_all {
                room.delete_all();
            }
            room.put("k".into(), vec![0; value_bytes]);
            room.take_pending()
        };
        let at_bound = batch(COMMIT_NOW_BYTES - 1, false);
        assert!(matches!(storage.commit_now(&key, &at_bound), Some(Ok(()))));
        assert!(storage.commit_now(&key, &batch(COMMIT_NOW_BYTES, false)).is_none());
        assert!(storage.commit_now(&key, &batch(10, true)).is_none());
        // Nearly weightless writes, but each is a statement.
        let writes = |count: usize| {
            let mut room = RoomStorage::new(Default::default(), None);
            (0..count).for_each(|i| room.put(i.to_string(), Vec::new()));
            room.take_pending()
        };
        assert!(matches!(storage.commit_now(&key, &writes(COMMIT_NOW_WRITES)), Some(Ok(()))));
        assert!(storage.commit_now(&key, &writes(COMMIT_NOW_WRITES + 1)).is_none());
        Ok(())
    }

    /// A room starting while a commit of an earlier run of it still waits
    /// for the storage thread is read by the thread, after that commit: read
    /// at once, it would start without the commit's writes.
    #[tokio::test]
    async fn a_load_on_the_callers_thread_never_overtakes_a_queued_commit() -> anyhow::Result<()> {
        let (dir, _, key) = opened()?;
        // The storage thread not started yet: queued jobs wait.
        let shared = Arc::new(SharedDb::new(Db::open(&dir.path().join("storage.sqlite"))?, None));
        let (jobs, queue) = mpsc::channel(QUEUE);
        let hooks = Arc::new(CommitHooks::default());
        let storage = Storage { jobs: Arc::new([jobs]), hooks: hooks.clone(), sqlite: Some(shared.clone()) };
        let mut room = RoomStorage::new(Default::default(), None);
        room.put("k".into(), b"v".to_vec());
        let mut ticket = storage.queue_commit(&key, room.take_pending()).await?;
        assert!(storage.load_now(&key).is_none(), "read past a commit still queued");
        let thread = std::thread::spawn(move || run(&shared, queue, &hooks));
        ticket.durable().await?;
        let loaded =
            load_now_when_idle(&storage, &key).await?.context("not read at once, with nothing queued")?;
        assert_eq!(loaded.get("k"), Some(&b"v"[..]));
        drop(storage);
        thread.join().map_err(|_| anyhow!("the storage thread panicked"))?;
        Ok(())
    }

    /// [`Storage::load_now`] once the storage thread has let go of the
    /// connection (it answers a commit just before): the first time a
    /// small room is read at once, `key` is tried.
    async fn load_now_when_idle(storage: &Storage, key: &RoomKey) -> anyhow::Result<Option<RoomStorage>> {
        let probe = RoomKey {
            party: key.party.clone(),
            room: crate::ids::RoomId::try_from("probe").map_err(|e| anyhow!("{e}"))?,
        };
        let started = std::time::Instant::now();
        while storage.load_now(&probe).is_none() {
            anyhow::ensure!(
                started.elapsed() < std::time::Duration::from_secs(5),
                "the storage thread never let go"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        storage.load_now(key).transpose()
    }

    /// A room at the bounds is read at once; one entry or one byte past
    /// them, by the storage thread, whole.
    #[tokio::test]
    async fn only_small_rooms_are_read_on_the_callers_thread() -> anyhow::Result<()> {
        let (_dir, storage, key) = opened()?;
        let commit = |room: &mut RoomStorage| {
            let (storage, key, writes) = (storage.clone(), key.clone(), room.take_pending());
            async move { storage.queue_commit(&key, writes).await?.durable().await }
        };
        let mut room = RoomStorage::new(Default::default(), None);
        (0..LOAD_NOW_ROWS).for_each(|i| room.put(format!("{i:04}"), Vec::new()));
        commit(&mut room).await?;
        assert!(
            load_now_when_idle(&storage, &key).await?.is_some(),
            "{LOAD_NOW_ROWS} entries not read at once"
        );
        room.put("one more".into(), Vec::new());
        commit(&mut room).await?;
        assert!(load_now_when_idle(&storage, &key).await?.is_none(), "one entry past the bound read at once");
        let whole = storage.load(&key).await?;
        assert_eq!(whole.list(&super::super::cache::ListQuery::default()).len(), LOAD_NOW_ROWS + 1);

        room.delete_all();
        room.put("k".into(), vec![0; LOAD_NOW_BYTES - 1]);
        commit(&mut room).await?;
        assert!(
            load_now_when_idle(&storage, &key).await?.is_some(),
            "{LOAD_NOW_BYTES} bytes not read at once"
        );
        room.put("k".into(), vec![0; LOAD_NOW_BYTES]);
        commit(&mut room).await?;
        assert!(load_now_when_idle(&storage, &key).await?.is_none(), "one byte past the bound read at once");
        assert_eq!(storage.load(&key).await?.get("k").map(<[u8]>::len), Some(LOAD_NOW_BYTES));
        Ok(())
    }

    /// While the storage thread waits for the connection, rooms leave it
    /// alone (the lock is not fair: rooms taking it back to back could keep
    /// loads, big commits and checkpoints waiting); then they go on.
    #[tokio::test]
    async fn rooms_leave_the_connection_to_a_waiting_storage_thread() -> anyhow::Result<()> {
        let (_dir, storage, key) = opened()?;
        let shared = storage.sqlite.clone().context("storage on SQLite")?;
        let mut room = RoomStorage::new(Default::default(), None);
        room.put("k".into(), b"v".to_vec());
        let writes = room.take_pending();
        shared.thread_waiting.store(true, Ordering::Relaxed);
        assert!(storage.commit_now(&key, &writes).is_none(), "committed before a waiting thread");
        assert!(storage.load_now(&key).is_none(), "read before a waiting thread");
        shared.thread_waiting.store(false, Ordering::Relaxed);
        assert!(matches!(storage.commit_now(&key, &writes), Some(Ok(()))));
        assert!(matches!(storage.load_now(&key), Some(Ok(read)) if read.get("k").is_some()));
        Ok(())
    }

    /// Another process holding the file's write lock (an operator's
    /// `sqlite3`): a room's commit does not wait out the busy timeout on a
    /// serving thread, it goes to the storage thread.
    #[tokio::test]
    async fn a_commit_on_a_rooms_thread_does_not_wait_for_another_process() -> anyhow::Result<()> {
        let (dir, storage, key) = opened()?;
        let path = dir.path().join("storage.sqlite");
        let other = rusqlite::Connection::open(&path)?;
        other.execute_batch("BEGIN IMMEDIATE")?;
        let mut room = RoomStorage::new(Default::default(), None);
        room.put("k".into(), b"v".to_vec());
        let writes = room.take_pending();
        let started = std::time::Instant::now();
        assert!(storage.commit_now(&key, &writes).is_none(), "committed past another's lock");
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "waited {:?}", started.elapsed());
        // Queued, it lands once the lock is given back.
        let mut ticket = storage.queue_commit(&key, writes).await?;
        other.execute_batch("COMMIT")?;
        ticket.durable().await?;
        assert_eq!(Db::open(&path)?.load(&key)?.get("k"), Some(&b"v"[..]));
        Ok(())
    }
}
