//! The SQLite file behind every room's storage and alarm.

use anyhow::Context;
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::BTreeMap;
use std::path::Path;

use super::cache::{PendingWrites, RoomStorage, Write};
use crate::ids::{PartyName, RoomId, RoomKey};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kv (
    party TEXT NOT NULL,
    room  TEXT NOT NULL,
    key   TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (party, room, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alarms (
    party   TEXT NOT NULL,
    room    TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    PRIMARY KEY (party, room)
) WITHOUT ROWID;
";

/// Pages written to the write-ahead log between two checkpoints into the
/// file, as SQLite's own automatic checkpoint would (every 1,000 pages); it
/// is off because it runs inside whichever commit crosses it, and commits
/// also run on the host's serving threads (see `writer.rs`), which must not
/// wait for a checkpoint's fsync. Pages are estimated: a row changed, a
/// page per 4 KiB written and one per commit.
const CHECKPOINT_PAGES: u64 = 1000;
/// What the log file is cut back to after a checkpoint let it start over.
const WAL_FILE_KEPT: i64 = 8 << 20;
/// How long a commit of the storage thread waits while another connection
/// (an operator's `sqlite3`, a backup) holds the file's write lock.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The host's storage file, shared by the storage thread and the rooms that
/// commit without it (see `writer.rs`).
pub struct Db {
    conn: Connection,
    /// Pages written to the log since the last checkpoint (estimated).
    uncheckpointed: u64,
}

/// Applies one room's writes inside `tx`, in the order they were made.
fn apply(tx: &rusqlite::Transaction<'_>, key: &RoomKey, writes: &PendingWrites) -> rusqlite::Result<()> {
    let (party, room) = (key.party.as_str(), key.room.as_str());
    for write in &writes.writes {
        match write {
            Write::Put(k, v) => tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO kv (party, room, key, value) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![party, room, k, v])?,
            Write::Delete(k) => tx
                .prepare_cached("DELETE FROM kv WHERE party = ?1 AND room = ?2 AND key = ?3")?
                .execute(params![party, room, k])?,
            Write::DeleteAll => tx
                .prepare_cached("DELETE FROM kv WHERE party = ?1 AND room = ?2")?
                .execute(params![party, room])?,
        };
    }
    match writes.alarm {
        None => {}
        Some(Some(time_ms)) => {
            tx.prepare_cached("INSERT OR REPLACE INTO alarms (party, room, time_ms) VALUES (?1, ?2, ?3)")?
                .execute(params![party, room, i64::try_from(time_ms).unwrap_or(i64::MAX)])?;
        }
        Some(None) => {
            tx.prepare_cached("DELETE FROM alarms WHERE party = ?1 AND room = ?2")?
                .execute(params![party, room])?;
        }
    }
    Ok(())
}

/// Whether SQLite refused because another connection holds the lock.
fn is_busy(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        matches!(cause.downcast_ref::<rusqlite::Error>(),
            Some(rusqlite::Error::SqliteFailure(failure, _)) if failure.code == rusqlite::ErrorCode::DatabaseBusy)
    })
}

/// An alarm found in the file at start-up.
#[derive(Debug, Clone)]
pub struct StoredAlarm {
    pub room: RoomKey,
    pub time_ms: u64,
}

impl Db {
    /// Opens (or creates) the file in WAL mode.
    ///
    /// # Errors
    /// When the file cannot be opened or is not a partyhost database.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
        // WAL with synchronous=NORMAL: a commit is durable against a crash of
        // the process (the kill -9 case) without an fsync per transaction;
        // only a power loss can drop the last commits.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.pragma_update(None, "journal_size_limit", WAL_FILE_KEPT)?;
        conn.execute_batch(SCHEMA).with_context(|| format!("creating the schema in {}", path.display()))?;
        Ok(Self { conn, uncheckpointed: 0 })
    }

    /// Whether enough pages went into the write-ahead log since the last
    /// [`Db::checkpoint`] (see [`CHECKPOINT_PAGES`]).
    pub fn checkpoint_due(&self) -> bool {
        self.uncheckpointed >= CHECKPOINT_PAGES
    }

    /// Copies the write-ahead log into the file (SQLite's PASSIVE
    /// checkpoint, which waits for no reader), so the log can start over.
    ///
    /// # Errors
    /// On an SQLite error (the commits stay durable in the log).
    pub fn checkpoint(&mut self) -> anyhow::Result<()> {
        self.uncheckpointed = 0;
        self.conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            .context("checkpointing the write-ahead log")
    }

    /// Reads a room's entries and alarm.
    ///
    /// # Errors
    /// On an SQLite error; the message names the room.
    pub fn load(&self, key: &RoomKey) -> anyhow::Result<RoomStorage> {
        self.load_within(key, usize::MAX, usize::MAX)?
            .ok_or_else(|| anyhow::anyhow!("room {key} holds more than the address space"))
    }

    /// [`Db::load`], given up (`None`) once the room holds more than
    /// `max_rows` entries or `max_bytes` of keys and values.
    fn load_within(
        &self,
        key: &RoomKey,
        max_rows: usize,
        max_bytes: usize,
    ) -> anyhow::Result<Option<RoomStorage>> {
        let conn = &self.conn;
        let context = || format!("loading storage of room {key}");
        let mut stmt = conn
            .prepare_cached("SELECT key, value FROM kv WHERE party = ?1 AND room = ?2")
            .with_context(context)?;
        let mut rows = stmt.query(params![key.party.as_str(), key.room.as_str()]).with_context(context)?;
        let mut entries = BTreeMap::new();
        let mut bytes = 0usize;
        while let Some(row) = rows.next().with_context(context)? {
            let (k, v): (String, Vec<u8>) =
                (row.get(0).with_context(context)?, row.get(1).with_context(context)?);
            bytes = bytes.saturating_add(k.len() + v.len());
            if entries.len() >= max_rows || bytes > max_bytes {
                return Ok(None);
            }
            entries.insert(k, v);
        }
        let alarm = conn
            .prepare_cached("SELECT time_ms FROM alarms WHERE party = ?1 AND room = ?2")
            .and_then(|mut stmt| {
                stmt.query_row(params![key.party.as_str(), key.room.as_str()], |row| row.get::<_, i64>(0))
            })
            .optional()
            .with_context(|| format!("loading the alarm of room {key}"))?;
        Ok(Some(RoomStorage::new(entries, alarm.map(|t| t.max(0).cast_unsigned()))))
    }

    /// [`Db::load`] for a serving thread: without waiting for another
    /// connection's lock, and only for a room of at most `max_rows` entries
    /// and `max_bytes`; `None` when busy or bigger.
    pub fn load_without_waiting(
        &mut self,
        key: &RoomKey,
        max_rows: usize,
        max_bytes: usize,
    ) -> Option<anyhow::Result<RoomStorage>> {
        self.without_waiting(|db| db.load_within(key, max_rows, max_bytes))?.transpose()
    }

    /// Applies the queued writes of one or more rooms in one transaction.
    ///
    /// # Errors
    /// On an SQLite error; nothing of the batch is applied then.
    pub fn commit_many(&mut self, batch: &[(&RoomKey, &PendingWrites)]) -> anyhow::Result<()> {
        let rows_before = self.conn.total_changes();
        let tx = self.conn.transaction()?;
        for (key, writes) in batch {
            apply(&tx, key, writes).with_context(|| format!("writing storage of room {key}"))?;
        }
        tx.commit().context("committing storage")?;
        let rows = self.conn.total_changes().saturating_sub(rows_before);
        let bytes: usize = batch.iter().filter_map(|(_, writes)| writes.weight()).sum();
        self.uncheckpointed = self.uncheckpointed.saturating_add(rows + (bytes >> 12) as u64 + 1);
        Ok(())
    }

    /// [`Db::commit_many`] for one room, without waiting for another
    /// connection's write lock: `None` when the file is busy (nothing is
    /// applied then). For commits made on a serving thread.
    pub fn commit_without_waiting(
        &mut self,
        key: &RoomKey,
        writes: &PendingWrites,
    ) -> Option<anyhow::Result<()>> {
        self.without_waiting(|db| db.commit_many(&[(key, writes)]))
    }

    /// Runs `work` with no busy timeout: `None` when another connection's
    /// lock refused it.
    fn without_waiting<T>(
        &mut self,
        work: impl FnOnce(&mut Self) -> anyhow::Result<T>,
    ) -> Option<anyhow::Result<T>> {
        if let Err(e) = self.conn.busy_timeout(std::time::Duration::ZERO) {
            return Some(Err(e.into()));
        }
        let done = work(self);
        let restored = self.conn.busy_timeout(BUSY_TIMEOUT).context("restoring the busy timeout");
        match done {
            Err(e) if is_busy(&e) => None,
            Err(e) => Some(Err(e)),
            Ok(value) => Some(restored.map(|()| value)),
        }
    }

    /// Keys plus values stored for every room, in bytes: what the storage
    /// totals start from.
    ///
    /// # Errors
    /// On an SQLite error.
    pub fn stored_bytes(&self) -> anyhow::Result<u64> {
        let bytes: i64 = self
            .conn
            .query_row(
                "SELECT COALESCE(SUM(LENGTH(CAST(key AS BLOB)) + LENGTH(value)), 0) FROM kv",
                [],
                |row| row.get(0),
            )
            .context("summing stored bytes")?;
        Ok(bytes.max(0).cast_unsigned())
    }

    /// Every stored alarm, so the host can schedule them after a restart.
    ///
    /// # Errors
    /// On an SQLite error.
    pub fn alarms(&self) -> anyhow::Result<Vec<StoredAlarm>> {
        let mut stmt = self.conn.prepare("SELECT party, room, time_ms FROM alarms")?;
        let rows = stmt.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get::<_, i64>(2)?))
        })?;
        let mut alarms = Vec::new();
        for row in rows {
            let (party, room, time_ms) = row.context("reading the alarms table")?;
            // Rows written by an older manifest may name parties that are
            // gone or invalid now; they are skipped, not fatal.
            let (Ok(party), Ok(room)) =
                (PartyName::try_from(party.as_str()), RoomId::try_from(room.as_str()))
            else {
                tracing::warn!(%party, %room, "skipping an alarm with an invalid name");
                continue;
            };
            alarms
                .push(StoredAlarm { room: RoomKey { party, room }, time_ms: time_ms.max(0).cast_unsigned() });
        }
        Ok(alarms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(party: &str, room: &str) -> RoomKey {
        RoomKey {
            party: PartyName::try_from(party).unwrap_or_else(|e| panic!("{e}")),
            room: RoomId::try_from(room).unwrap_or_else(|e| panic!("{e}")),
        }
    }

    #[test]
    fn commits_survive_reopening_and_rooms_stay_apart() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("storage.sqlite");
        let (a, b) = (key("p", "a"), key("p", "b"));
        {
            let mut db = Db::open(&path)?;
            let mut room = db.load(&a)?;
            room.put("x".into(), b"1".to_vec());
            room.put("y".into(), b"2".to_vec());
            room.delete("y");
            room.set_alarm(Some(1234));
            db.commit_many(&[(&a, &room.take_pending())])?;
            let mut other = db.load(&b)?;
            other.put("x".into(), b"other".to_vec());
            other.delete_all();
            other.put("z".into(), b"3".to_vec());
            db.commit_many(&[(&b, &other.take_pending())])?;
        }
        let mut db = Db::open(&path)?;
        let room = db.load(&a)?;
        assert_eq!(room.get("x"), Some(&b"1"[..]));
        assert_eq!(room.get("y"), None);
        assert_eq!(room.alarm(), Some(1234));
        let other = db.load(&b)?;
        assert_eq!((other.get("x"), other.get("z")), (None, Some(&b"3"[..])));
        let alarms = db.alarms()?;
        assert_eq!(alarms.len(), 1);
        assert_eq!((alarms[0].room.clone(), alarms[0].time_ms), (a.clone(), 1234));
        let mut room = db.load(&a)?;
        room.set_alarm(None);
        db.commit_many(&[(&a, &room.take_pending())])?;
        assert!(db.alarms()?.is_empty());
        Ok(())
    }

    /// What a serving thread may read: one entry or one byte past the
    /// bounds, nothing.
    #[test]
    fn a_load_without_waiting_gives_up_one_past_its_bounds() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut db = Db::open(&dir.path().join("storage.sqlite"))?;
        let (a, b) = (key("p", "a"), key("p", "b"));
        let mut room = db.load(&a)?;
        (0..3).for_each(|i| room.put(i.to_string(), Vec::new()));
        db.commit_many(&[(&a, &room.take_pending())])?;
        assert!(matches!(db.load_without_waiting(&a, 3, 100), Some(Ok(read)) if read.get("2").is_some()));
        room.put("3".into(), Vec::new());
        db.commit_many(&[(&a, &room.take_pending())])?;
        assert!(db.load_without_waiting(&a, 3, 100).is_none());

        let mut other = db.load(&b)?;
        other.put("k".into(), vec![0; 9]);
        db.commit_many(&[(&b, &other.take_pending())])?;
        assert!(matches!(db.load_without_waiting(&b, 3, 10), Some(Ok(read)) if read.get("k").is_some()));
        other.put("k".into(), vec![0; 10]);
        db.commit_many(&[(&b, &other.take_pending())])?;
        assert!(db.load_without_waiting(&b, 3, 10).is_none());
        assert_eq!(db.load(&b)?.get("k").map(<[u8]>::len), Some(10));
        Ok(())
    }

    /// One big commit grows the write-ahead log past [`WAL_FILE_KEPT`];
    /// once a checkpoint has copied it into the file, the next commit starts
    /// the log over and cuts the file back (`journal_size_limit`), so the
    /// disk does not keep the largest commit's size for good.
    #[test]
    fn the_log_file_is_cut_back_once_a_checkpoint_let_it_start_over() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("storage.sqlite");
        let wal_bytes = || std::fs::metadata(dir.path().join("storage.sqlite-wal")).map(|m| m.len());
        let mut db = Db::open(&path)?;
        let a = key("p", "a");
        let mut room = db.load(&a)?;
        (0..40u8).for_each(|i| room.put(format!("k{i}"), vec![i; 512 << 10]));
        db.commit_many(&[(&a, &room.take_pending())])?;
        let grown = wal_bytes()?;
        assert!(grown > 2 * WAL_FILE_KEPT.cast_unsigned(), "the log grew to {grown} bytes only");
        assert!(db.checkpoint_due());
        db.checkpoint()?;
        room.put("small".into(), b"x".to_vec());
        db.commit_many(&[(&a, &room.take_pending())])?;
        let kept = wal_bytes()?;
        assert!(kept <= WAL_FILE_KEPT.cast_unsigned(), "the log kept {kept} bytes after starting over");
        assert_eq!(Db::open(&path)?.load(&a)?.get("k39").map(<[u8]>::len), Some(512 << 10));
        Ok(())
    }
}
