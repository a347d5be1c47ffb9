//! A room's storage as its handlers see it: the whole key space in memory,
//! plus the writes not yet committed.

use std::collections::BTreeMap;
use std::ops::Bound;

/// One queued change, in the order the handler made it.
#[derive(Debug, Clone)]
pub(super) enum Write {
    Put(String, Vec<u8>),
    Delete(String),
    DeleteAll,
}

/// Writes made since the last commit.
#[derive(Debug, Default)]
pub struct PendingWrites {
    pub(super) writes: Vec<Write>,
    /// `Some(new)` when the alarm was set or deleted.
    pub(super) alarm: Option<Option<u64>>,
    /// The ownership epoch the room was loaded under (0 with SQLite): in a
    /// cluster, a commit applies only while the room's epoch is still this.
    pub(super) epoch: u64,
}

/// Writes to one key replace the key's earlier queued write while the
/// queue is at most this long; past it they are appended (the scan for an
/// earlier write would cost more than it saves).
const COMPACT_WITHIN: usize = 64;

impl PendingWrites {
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.alarm.is_none()
    }

    /// Queues `write` after those already queued, dropping what it makes
    /// moot: a key's earlier write, or every write before a delete-all.
    /// Only the last write of each key reaches the database, so a room
    /// that puts one key a thousand times between commits commits it once.
    fn push(&mut self, write: Write) {
        let key = match &write {
            Write::DeleteAll => {
                self.writes.clear();
                self.writes.push(write);
                return;
            }
            Write::Put(key, _) | Write::Delete(key) => key,
        };
        let earlier = (self.writes.len() <= COMPACT_WITHIN)
            .then(|| {
                self.writes.iter().rposition(|w| match w {
                    Write::Put(k, _) | Write::Delete(k) => k == key,
                    Write::DeleteAll => false,
                })
            })
            .flatten();
        match earlier {
            // Writes to different keys commute, so the later write may
            // take the earlier one's place; a delete-all between them would
            // have cleared the queue.
            Some(i) => self.writes[i] = write,
            None => self.writes.push(write),
        }
    }

    /// Bytes of keys and values the batch writes; `None` for a batch with a
    /// delete-all, whose cost is that of every row of the room.
    pub fn weight(&self) -> Option<usize> {
        self.writes.iter().try_fold(0, |bytes, write| match write {
            Write::Put(key, value) => Some(bytes + key.len() + value.len()),
            Write::Delete(key) => Some(bytes + key.len()),
            Write::DeleteAll => None,
        })
    }

    /// Appends the writes of `later` (made after these), so both commit as
    /// one: what a room does with the writes of calls that ran while its
    /// previous commit was in flight.
    pub fn absorb(&mut self, later: PendingWrites) {
        for write in later.writes {
            self.push(write);
        }
        if later.alarm.is_some() {
            self.alarm = later.alarm;
        }
        self.epoch = later.epoch;
    }
}

/// Which entries [`RoomStorage::list`] returns.
#[derive(Debug, Default, Clone)]
pub struct ListQuery {
    pub prefix: Option<String>,
    pub start: Option<String>,
    /// Only keys after this one (exclusive; `start` is inclusive).
    pub start_after: Option<String>,
    pub end: Option<String>,
    pub limit: Option<u32>,
    pub reverse: bool,
}

/// A room's storage cache.
#[derive(Debug, Default)]
pub struct RoomStorage {
    entries: BTreeMap<String, Vec<u8>>,
    /// Bytes of all keys and values, kept up to date for the quota.
    total_bytes: usize,
    alarm: Option<u64>,
    pending: PendingWrites,
    /// See [`PendingWrites::epoch`].
    epoch: u64,
}

impl RoomStorage {
    pub(super) fn new(entries: BTreeMap<String, Vec<u8>>, alarm: Option<u64>) -> Self {
        let total_bytes = entries.iter().map(|(k, v)| k.len() + v.len()).sum();
        Self { entries, total_bytes, alarm, pending: PendingWrites::default(), epoch: 0 }
    }

    /// Marks the storage as loaded under ownership epoch `epoch`.
    pub(super) fn with_epoch(self, epoch: u64) -> Self {
        Self { epoch, ..self }
    }

    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.entries.get(key).map(Vec::as_slice)
    }

    /// Bytes `key` and its value hold now (0 when absent).
    pub fn entry_bytes(&self, key: &str) -> usize {
        self.entries.get(key).map_or(0, |old| key.len() + old.len())
    }

    /// Total bytes the room would hold after putting `value` at `key`.
    pub fn total_bytes_after_put(&self, key: &str, value: &[u8]) -> usize {
        self.total_bytes - self.entry_bytes(key) + key.len() + value.len()
    }

    pub fn put(&mut self, key: String, value: Vec<u8>) {
        self.total_bytes = self.total_bytes_after_put(&key, &value);
        self.pending.push(Write::Put(key.clone(), value.clone()));
        self.entries.insert(key, value);
    }

    /// Returns whether the key existed.
    pub fn delete(&mut self, key: &str) -> bool {
        let Some(old) = self.entries.remove(key) else { return false };
        self.total_bytes -= key.len() + old.len();
        self.pending.push(Write::Delete(key.to_owned()));
        true
    }

    pub fn delete_all(&mut self) {
        self.entries.clear();
        self.total_bytes = 0;
        self.pending.push(Write::DeleteAll);
    }

    /// Entries matching `query`, in key order (or reversed).
    pub fn list(&self, query: &ListQuery) -> Vec<(String, Vec<u8>)> {
        // The tightest of the lower bounds given.
        let lower = [
            query.start.clone().map(Bound::Included),
            query.start_after.clone().map(Bound::Excluded),
            query.prefix.clone().map(Bound::Included),
        ]
        .into_iter()
        .flatten()
        .max_by(|a, b| match (a, b) {
            (Bound::Included(x) | Bound::Excluded(x), Bound::Included(y) | Bound::Excluded(y)) if x != y => {
                x.cmp(y)
            }
            (Bound::Excluded(_), Bound::Included(_)) => std::cmp::Ordering::Greater,
            (Bound::Included(_), Bound::Excluded(_)) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Equal,
        })
        .unwrap_or(Bound::Unbounded);
        let upper = query.end.clone().map_or(Bound::Unbounded, Bound::Excluded);
        if matches!((&lower, &upper), (Bound::Included(l) | Bound::Excluded(l), Bound::Excluded(u)) if l >= u)
        {
            return Vec::new();
        }
        let prefix = query.prefix.as_deref().unwrap_or("");
        let matching =
            self.entries.range::<String, _>((lower, upper)).take_while(|(k, _)| k.starts_with(prefix));
        let limit = query.limit.map_or(usize::MAX, |l| l as usize);
        let clone = |(k, v): (&String, &Vec<u8>)| (k.clone(), v.clone());
        if query.reverse {
            let all: Vec<_> = matching.collect();
            all.into_iter().rev().take(limit).map(clone).collect()
        } else {
            matching.take(limit).map(clone).collect()
        }
    }

    /// Total bytes of keys and values.
    pub fn total_bytes(&self) -> usize {
        self.total_bytes
    }

    pub fn alarm(&self) -> Option<u64> {
        self.alarm
    }

    pub fn set_alarm(&mut self, time_ms: Option<u64>) {
        self.alarm = time_ms;
        self.pending.alarm = Some(time_ms);
    }

    /// Takes the writes to commit, leaving none queued.
    pub fn take_pending(&mut self) -> PendingWrites {
        PendingWrites { epoch: self.epoch, ..std::mem::take(&mut self.pending) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(keys: &[&str]) -> RoomStorage {
        RoomStorage::new(keys.iter().map(|k| (k.to_string(), k.as_bytes().to_vec())).collect(), None)
    }

    fn keys(entries: Vec<(String, Vec<u8>)>) -> Vec<String> {
        entries.into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn list_honours_prefix_range_limit_and_order() {
        let s = storage(&["a", "b/1", "b/2", "b/3", "c"]);
        let q = |prefix: Option<&str>, start: Option<&str>, end: Option<&str>, limit, reverse| ListQuery {
            prefix: prefix.map(Into::into),
            start: start.map(Into::into),
            start_after: None,
            end: end.map(Into::into),
            limit,
            reverse,
        };
        assert_eq!(keys(s.list(&q(Some("b/"), None, None, None, false))), ["b/1", "b/2", "b/3"]);
        assert_eq!(keys(s.list(&q(Some("b/"), None, None, Some(2), true))), ["b/3", "b/2"]);
        assert_eq!(keys(s.list(&q(None, Some("b/2"), Some("c"), None, false))), ["b/2", "b/3"]);
        assert_eq!(keys(s.list(&q(Some("b/"), Some("a"), None, None, false))), ["b/1", "b/2", "b/3"]);
        assert!(s.list(&q(None, Some("c"), Some("a"), None, false)).is_empty());
        assert_eq!(keys(s.list(&ListQuery::default())).len(), 5);
    }

    #[test]
    fn start_after_is_exclusive_and_pages_through_a_prefix() {
        let s = storage(&["a", "b/1", "b/2", "b/3", "c"]);
        let after = |key: &str, prefix: Option<&str>, limit| ListQuery {
            start_after: Some(key.into()),
            prefix: prefix.map(Into::into),
            limit,
            ..ListQuery::default()
        };
        assert_eq!(keys(s.list(&after("b/1", Some("b/"), Some(1)))), ["b/2"]);
        assert_eq!(keys(s.list(&after("b/2", Some("b/"), None))), ["b/3"]);
        assert_eq!(keys(s.list(&after("a", Some("b/"), None))), ["b/1", "b/2", "b/3"]);
        assert_eq!(keys(s.list(&after("b/3", None, None))), ["c"]);
        assert!(s.list(&after("c", None, None)).is_empty());
        let bounded = ListQuery { end: Some("b/2".into()), ..after("b/1", None, None) };
        assert!(s.list(&bounded).is_empty());
    }

    #[test]
    fn writes_are_visible_at_once_and_queued_in_order() {
        let mut s = storage(&["x"]);
        s.put("y".into(), b"1".to_vec());
        assert_eq!(s.get("y"), Some(&b"1"[..]));
        assert!(s.delete("x"));
        assert!(!s.delete("x"));
        assert_eq!(s.total_bytes(), 2);
        s.put("y".into(), b"123".to_vec());
        assert_eq!(s.total_bytes(), 4);
        let pending = s.take_pending();
        // The second put of `y` replaced the first.
        assert!(
            matches!(&pending.writes[..], [Write::Put(y, v), Write::Delete(x)] if y == "y" && v == b"123" && x == "x")
        );
        assert!(s.take_pending().is_empty());
    }

    /// What each key holds after applying `writes` to `start`, as the
    /// database would.
    fn applied(start: &[(&str, &str)], writes: &PendingWrites) -> BTreeMap<String, Vec<u8>> {
        let mut db: BTreeMap<String, Vec<u8>> =
            start.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect();
        for write in &writes.writes {
            match write {
                Write::Put(k, v) => drop(db.insert(k.clone(), v.clone())),
                Write::Delete(k) => drop(db.remove(k)),
                Write::DeleteAll => db.clear(),
            }
        }
        db
    }

    #[test]
    fn absorbed_writes_commit_what_the_cache_holds_and_no_more() {
        let start = [("a", "0"), ("b", "0")];
        let mut s = RoomStorage::new(
            start.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect(),
            None,
        );
        let mut batch = PendingWrites::default();
        // Three "calls" whose writes join one batch.
        s.put("a".into(), b"1".to_vec());
        s.put("c".into(), b"1".to_vec());
        batch.absorb(s.take_pending());
        s.delete("a");
        s.put("c".into(), b"2".to_vec());
        s.set_alarm(Some(5));
        batch.absorb(s.take_pending());
        s.put("a".into(), b"3".to_vec());
        batch.absorb(s.take_pending());
        assert_eq!(batch.writes.len(), 2, "one write per key: {:?}", batch.writes);
        assert_eq!(batch.alarm, Some(Some(5)));
        let cache: BTreeMap<_, _> = s.list(&ListQuery::default()).into_iter().collect();
        assert_eq!(applied(&start, &batch), cache);
        // A delete-all makes everything before it moot, not what follows.
        s.delete_all();
        s.put("z".into(), b"9".to_vec());
        batch.absorb(s.take_pending());
        assert!(matches!(&batch.writes[..], [Write::DeleteAll, Write::Put(z, _)] if z == "z"));
        let cache: BTreeMap<_, _> = s.list(&ListQuery::default()).into_iter().collect();
        assert_eq!(applied(&start, &batch), cache);
    }

    /// One step past [`COMPACT_WITHIN`]: later writes are appended, not
    /// folded, and the batch still commits exactly what the cache holds.
    #[test]
    fn a_batch_past_the_compaction_cutoff_still_commits_the_last_write_of_each_key() {
        let mut s = RoomStorage::default();
        for i in 0..=COMPACT_WITHIN {
            s.put(format!("k{i}"), b"1".to_vec());
        }
        s.put("k0".into(), b"2".to_vec());
        s.delete("k1");
        let batch = s.take_pending();
        assert_eq!(batch.writes.len(), COMPACT_WITHIN + 3, "appended past the cutoff");
        let cache: BTreeMap<_, _> = s.list(&ListQuery::default()).into_iter().collect();
        assert_eq!(applied(&[], &batch), cache);
    }
}
