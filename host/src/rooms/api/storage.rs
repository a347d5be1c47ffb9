use super::{RoomState, host};
use crate::budget::Resource;
use crate::rooms::Limit;
use crate::sandbox::{ListOptions, Refusal};
use crate::storage::ListQuery;

impl host::Storage for RoomState {
    fn get(&mut self, key: String) -> Option<Vec<u8>> {
        self.storage.get(&key).map(<[u8]>::to_vec)
    }

    fn put(&mut self, key: String, value: Vec<u8>) -> Result<(), Refusal> {
        let (key_limit, value_limit) = (self.limits.storage_key_bytes, self.limits.storage_value_bytes);
        if key.len() > key_limit {
            return Err(Refusal::TooLarge(format!("storage key is over {key_limit} bytes")));
        }
        if value.len() > value_limit {
            return Err(Refusal::TooLarge(format!("value of key {key:?} is over {value_limit} bytes")));
        }
        let quota = self.limits.storage_room_bytes;
        let (before, after) = (self.storage.total_bytes(), self.storage.total_bytes_after_put(&key, &value));
        if after > quota {
            self.hits.count(Limit::Storage);
            return Err(Refusal::QuotaExceeded(format!("room storage would exceed {quota} bytes")));
        }
        if after > before {
            self.totals.try_take(Resource::Storage, (after - before) as u64).map_err(|cap| {
                self.cap_reached(&cap);
                Refusal::QuotaExceeded(cap.to_string())
            })?;
        } else {
            self.totals.settle(Resource::Storage, before as u64, after as u64);
        }
        self.storage.put(key, value);
        Ok(())
    }

    fn delete(&mut self, key: String) -> bool {
        let before = self.storage.total_bytes();
        let existed = self.storage.delete(&key);
        self.totals.settle(Resource::Storage, before as u64, self.storage.total_bytes() as u64);
        existed
    }

    fn list(&mut self, options: ListOptions) -> Vec<(String, Vec<u8>)> {
        self.storage.list(&ListQuery {
            prefix: options.prefix,
            start: options.start,
            end: options.end,
            limit: options.limit,
            reverse: options.reverse,
        })
    }

    fn delete_all(&mut self) {
        self.totals.settle(Resource::Storage, self.storage.total_bytes() as u64, 0);
        self.storage.delete_all();
    }
}
