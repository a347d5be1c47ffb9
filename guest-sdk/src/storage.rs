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
    /// Only keys `< end`.
    pub end: Option<String>,
    /// At most this many entries.
    pub limit: Option<u32>,
    /// Descending key order.
    pub reverse: bool,
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
    pub fn list<T: DeserializeOwned>(&self, options: &ListOptions) -> Vec<(String, T)> {
        let options = wit::ListOptions {
            prefix: options.prefix.clone(),
            start: options.start.clone(),
            end: options.end.clone(),
            limit: options.limit,
            reverse: options.reverse,
        };
        wit::list(&options)
            .into_iter()
            .filter_map(|(key, bytes)| Some((key, serde_json::from_slice(&bytes).ok()?)))
            .collect()
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
