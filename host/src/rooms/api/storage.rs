use super::{RoomState, host};
use crate::budget::Resource;
use crate::rooms::Limit;
use crate::sandbox::{ListOptions, Refusal};
use crate::storage::ListQuery;

/// Most keys one multi-key call takes, as in Durable Objects.
pub const MAX_KEYS_PER_CALL: usize = 128;

/// What a gate's instance is told when it reaches for storage.
const NO_STORAGE: &str = "on-before-connect and on-before-request run outside the room: no storage";

impl RoomState {
    /// Refuses a multi-key call over [`MAX_KEYS_PER_CALL`], and any call
    /// from a gate's instance.
    fn check_keys(&self, count: usize) -> Result<(), Refusal> {
        if self.stateless {
            return Err(Refusal::Invalid(NO_STORAGE.into()));
        }
        if count > MAX_KEYS_PER_CALL {
            return Err(Refusal::TooLarge(format!("{count} keys in one call; at most {MAX_KEYS_PER_CALL}")));
        }
        Ok(())
    }

    /// Checks one entry against the key and value limits.
    fn check_entry(&self, key: &str, value: &[u8]) -> Result<(), Refusal> {
        let (key_limit, value_limit) = (self.limits.storage_key_bytes, self.limits.storage_value_bytes);
        if key.len() > key_limit {
            return Err(Refusal::TooLarge(format!("storage key is over {key_limit} bytes")));
        }
        // PostgreSQL's text cannot hold it, and no PartyKit key needs it.
        if key.contains('\0') {
            return Err(Refusal::Invalid("a storage key may not contain the NUL character".into()));
        }
        if value.len() > value_limit {
            return Err(Refusal::TooLarge(format!("value of key {key:?} is over {value_limit} bytes")));
        }
        Ok(())
    }

    /// Puts `entries`, all or none: every check runs before the first write.
    fn put_entries(&mut self, entries: Vec<(String, Vec<u8>)>) -> Result<(), Refusal> {
        // What each key will hold: a key put twice in one call counts once,
        // with its last value.
        let mut last = std::collections::HashMap::new();
        for (key, value) in &entries {
            self.check_entry(key, value)?;
            last.insert(key.as_str(), value.len());
        }
        let before = self.storage.total_bytes();
        let after = last
            .iter()
            .fold(before, |total, (key, len)| total - self.storage.entry_bytes(key) + key.len() + len);
        let quota = self.limits.storage_room_bytes;
        if after > quota {
            let why = format!("room storage would exceed {quota} bytes");
            return Err(self.refuse(Limit::Storage, Refusal::QuotaExceeded, why));
        }
        if after > before {
            self.totals.try_take(Resource::Storage, (after - before) as u64).map_err(|cap| {
                self.cap_reached(&cap);
                Refusal::QuotaExceeded(cap.to_string())
            })?;
        } else {
            self.totals.settle(Resource::Storage, before as u64, after as u64);
        }
        for (key, value) in entries {
            self.storage.put(key, value);
        }
        Ok(())
    }

    fn delete_key(&mut self, key: &str) -> bool {
        let before = self.storage.total_bytes();
        let existed = self.storage.delete(key);
        self.totals.settle(Resource::Storage, before as u64, self.storage.total_bytes() as u64);
        existed
    }
}

impl host::Storage for RoomState {
    fn get(&mut self, key: String) -> Option<Vec<u8>> {
        self.storage.get(&key).map(<[u8]>::to_vec)
    }

    fn put(&mut self, key: String, value: Vec<u8>) -> Result<(), Refusal> {
        self.check_keys(1)?;
        self.put_entries(vec![(key, value)])
    }

    fn delete(&mut self, key: String) -> bool {
        self.delete_key(&key)
    }

    fn list(&mut self, options: ListOptions) -> Result<Vec<(String, Vec<u8>)>, Refusal> {
        if options.start.is_some() && options.start_after.is_some() {
            return Err(Refusal::Invalid("give `start` or `start-after`, not both".into()));
        }
        Ok(self.storage.list(&ListQuery {
            prefix: options.prefix,
            start: options.start,
            start_after: options.start_after,
            end: options.end,
            limit: options.limit,
            reverse: options.reverse,
        }))
    }

    fn delete_all(&mut self) {
        self.totals.settle(Resource::Storage, self.storage.total_bytes() as u64, 0);
        self.storage.delete_all();
    }

    fn get_many(&mut self, keys: Vec<String>) -> Result<Vec<(String, Vec<u8>)>, Refusal> {
        self.check_keys(keys.len())?;
        Ok(keys
            .into_iter()
            .filter_map(|key| {
                let value = self.storage.get(&key)?.to_vec();
                Some((key, value))
            })
            .collect())
    }

    fn put_many(&mut self, entries: Vec<(String, Vec<u8>)>) -> Result<(), Refusal> {
        self.check_keys(entries.len())?;
        self.put_entries(entries)
    }

    fn delete_many(&mut self, keys: Vec<String>) -> Result<u32, Refusal> {
        self.check_keys(keys.len())?;
        let deleted = keys.iter().filter(|key| self.delete_key(key)).count();
        Ok(u32::try_from(deleted).unwrap_or(u32::MAX))
    }
}
