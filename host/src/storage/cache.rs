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

impl PendingWrites {
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.alarm.is_none()
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
        self.pending.writes.push(Write::Put(key.clone(), value.clone()));
        self.entries.insert(key, value);
    }

    /// Returns whether the key existed.
    pub fn delete(&mut self, key: &str) -> bool {
        let Some(old) = self.entries.remove(key) else { return false };
        self.total_bytes -= key.len() + old.len();
        self.pending.writes.push(Write::Delete(key.to_owned()));
        true
    }

    pub fn delete_all(&mut self) {
        self.entries.clear();
        self.total_bytes = 0;
        self.pending.writes.push(Write::DeleteAll);
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
        assert_eq!(pending.writes.len(), 3);
        assert!(s.take_pending().is_empty());
    }
}
