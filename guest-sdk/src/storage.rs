//! Durable key-value storage and the room's alarm.
//!
//! Values are stored as JSON. Writes are visible to reads at once and are
//! committed to disk when the handler returns (or parks on a fetch); clients
//! never see the effects of a handler before its writes are durable.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::bindings::partyhost::party::{alarms, storage as wit};

/// Which entries [`Storage::list`] returns.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Only keys starting with this.
    pub prefix: Option<String>,
    /// Only keys `>= start`.
    pub start: Option<String>,
    /// Only keys `> start_after` (for paging: the last key of the previous
    /// page); not together with `start`.
    pub start_after: Option<String>,
    /// Only keys `< end`.
    pub end: Option<String>,
    /// At most this many entries.
    pub limit: Option<u32>,
    /// Descending key order.
    pub reverse: bool,
}

impl ListOptions {
    fn to_wit(&self) -> wit::ListOptions {
        wit::ListOptions {
            prefix: self.prefix.clone(),
            start: self.start.clone(),
            start_after: self.start_after.clone(),
            end: self.end.clone(),
            limit: self.limit,
            reverse: self.reverse,
        }
    }
}

/// `(key, bytes)` entries with the values parsed as JSON; those that are
/// not a `T` are skipped.
fn parse_entries<T: DeserializeOwned>(entries: Vec<(String, Vec<u8>)>) -> Vec<(String, T)> {
    entries.into_iter().filter_map(|(key, bytes)| Some((key, serde_json::from_slice(&bytes).ok()?))).collect()
}

/// The room's storage. Zero-sized: get it with `Room::storage`.
#[derive(Debug, Clone, Copy)]
pub struct Storage {
    _private: (),
}

impl Storage {
    pub(crate) const fn new() -> Self {
        Self { _private: () }
    }

    /// The value at `key` parsed as JSON; `None` when absent or not a `T`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        serde_json::from_slice(&wit::get(key)?).ok()
    }

    /// Stores `value` as JSON at `key`.
    ///
    /// # Errors
    /// When the key is over 2 KiB or the value over 128 KiB.
    pub fn put<T: Serialize>(&self, key: &str, value: &T) -> Result<(), Error> {
        Ok(wit::put(key, &serde_json::to_vec(value)?)?)
    }

    /// The raw bytes at `key`.
    pub fn get_bytes(&self, key: &str) -> Option<Vec<u8>> {
        wit::get(key)
    }

    /// Stores raw bytes at `key`.
    ///
    /// # Errors
    /// When the key is over 2 KiB or the value over 128 KiB.
    pub fn put_bytes(&self, key: &str, value: &[u8]) -> Result<(), Error> {
        Ok(wit::put(key, value)?)
    }

    /// Deletes `key`; returns whether it existed.
    pub fn delete(&self, key: &str) -> bool {
        wit::delete(key)
    }

    /// Entries matching `options`, parsed as JSON; entries that are not a
    /// `T` are skipped.
    ///
    /// # Errors
    /// When both `start` and `start_after` are given.
    pub fn list<T: DeserializeOwned>(&self, options: &ListOptions) -> Result<Vec<(String, T)>, Error> {
        Ok(parse_entries(wit::list(&options.to_wit())?))
    }

    /// Entries matching `options`, as raw bytes.
    ///
    /// # Errors
    /// When both `start` and `start_after` are given.
    pub fn list_bytes(&self, options: &ListOptions) -> Result<Vec<(String, Vec<u8>)>, Error> {
        Ok(wit::list(&options.to_wit())?)
    }

    /// The values of up to 128 keys at once, parsed as JSON, in the order
    /// asked; absent keys (and values that are not a `T`) are left out.
    ///
    /// # Errors
    /// When more than 128 keys are asked for.
    pub fn get_many<T: DeserializeOwned>(&self, keys: &[&str]) -> Result<Vec<(String, T)>, Error> {
        let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        Ok(parse_entries(wit::get_many(&keys)?))
    }

    /// Stores up to 128 values as JSON at once: all of them or, when one is
    /// refused (too large, over the quota), none.
    ///
    /// # Errors
    /// As [`Storage::put`], or when more than 128 entries are given.
    pub fn put_many<T: Serialize>(&self, entries: &[(&str, T)]) -> Result<(), Error> {
        let entries = entries
            .iter()
            .map(|(key, value)| Ok(((*key).to_owned(), serde_json::to_vec(value)?)))
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(wit::put_many(&entries)?)
    }

    /// Deletes up to 128 keys at once; returns how many existed.
    ///
    /// # Errors
    /// When more than 128 keys are given.
    pub fn delete_many(&self, keys: &[&str]) -> Result<u32, Error> {
        let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        Ok(wit::delete_many(&keys)?)
    }

    /// Deletes every key of the room.
    pub fn delete_all(&self) {
        wit::delete_all();
    }

    /// The pending alarm, in milliseconds since the Unix epoch.
    pub fn get_alarm(&self) -> Option<u64> {
        alarms::get()
    }

    /// Sets the alarm: `Party::on_alarm` runs at `time_ms`.
    pub fn set_alarm(&self, time_ms: u64) {
        alarms::set(time_ms);
    }

    /// Cancels the alarm.
    pub fn delete_alarm(&self) {
        alarms::delete();
    }
}
