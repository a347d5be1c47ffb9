//! The document in room storage: a snapshot (the whole state as one Yjs
//! update) and the updates that arrived since, each split into chunks
//! under the host's 128 KiB value limit. Compaction replaces both with a
//! new snapshot, in one handler call, so one commit holds it all.
//!
//! Keys: `yjs:s:<part>` for the snapshot, `yjs:u:<seq>:<part>` for the
//! updates; numbers are zero-padded so keys sort in order.

use partyhost_guest::{Error, ListOptions, Storage};

/// Bytes per stored value, under the host's 128 KiB value limit.
const CHUNK: usize = 120 * 1024;
const SNAPSHOT: &str = "yjs:s:";
const UPDATE: &str = "yjs:u:";

/// Compact once the updates since the snapshot hold more than this many
/// bytes and more than the snapshot itself (so compaction costs at most
/// about as much as the writes it folds in)...
const COMPACT_BYTES: usize = 256 * 1024;
/// ... or once there are this many of them.
const COMPACT_UPDATES: usize = 1000;

/// What is stored, as the room knows it between calls.
#[derive(Debug, Default)]
pub struct Stored {
    snapshot_parts: usize,
    snapshot_bytes: usize,
    /// The keys of the updates since the snapshot, in order.
    update_keys: Vec<String>,
    update_bytes: usize,
    updates: usize,
    next_seq: u64,
}

impl Stored {
    /// Reads the stored document: the snapshot, then each update, as Yjs
    /// updates to apply in this order.
    pub fn load(storage: &Storage) -> Result<(Self, Vec<Vec<u8>>), Error> {
        let mut stored = Self::default();
        let mut blobs = Vec::new();
        let snapshot = list(storage, SNAPSHOT)?;
        if !snapshot.is_empty() {
            stored.snapshot_parts = snapshot.len();
            let bytes: Vec<u8> = snapshot.into_iter().flat_map(|(_, value)| value).collect();
            stored.snapshot_bytes = bytes.len();
            blobs.push(bytes);
        }
        let mut current: Option<(u64, Vec<u8>)> = None;
        for (key, value) in list(storage, UPDATE)? {
            let seq = key[UPDATE.len()..].split(':').next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
            stored.update_bytes += value.len();
            stored.update_keys.push(key);
            match &mut current {
                Some((at, bytes)) if *at == seq => bytes.extend_from_slice(&value),
                _ => {
                    if let Some((_, bytes)) = current.replace((seq, value)) {
                        blobs.push(bytes);
                    }
                    stored.updates += 1;
                }
            }
            stored.next_seq = seq + 1;
        }
        blobs.extend(current.map(|(_, bytes)| bytes));
        Ok((stored, blobs))
    }

    /// Bytes stored for the document.
    pub fn bytes(&self) -> usize {
        self.snapshot_bytes + self.update_bytes
    }

    /// Whether updates are waiting to be folded into the snapshot.
    pub fn has_updates(&self) -> bool {
        self.updates > 0
    }

    /// Whether the updates are worth folding into a new snapshot now.
    pub fn wants_compaction(&self) -> bool {
        self.updates > COMPACT_UPDATES
            || (self.update_bytes > COMPACT_BYTES && self.update_bytes > self.snapshot_bytes)
    }

    /// Appends one update.
    pub fn append(&mut self, storage: &Storage, update: &[u8]) -> Result<(), Error> {
        let seq = self.next_seq;
        for (part, chunk) in update.chunks(CHUNK).enumerate() {
            let key = format!("{UPDATE}{seq:012}:{part:04}");
            storage.put_bytes(&key, chunk)?;
            self.update_keys.push(key);
        }
        self.next_seq += 1;
        self.updates += 1;
        self.update_bytes += update.len();
        Ok(())
    }

    /// Replaces the snapshot and every update with `state`, the whole
    /// document encoded as one update.
    pub fn compact(&mut self, storage: &Storage, state: &[u8]) -> Result<(), Error> {
        let old_snapshot = (0..self.snapshot_parts).map(snapshot_key);
        let old: Vec<String> = old_snapshot.chain(self.update_keys.drain(..)).collect();
        for keys in old.chunks(128) {
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            storage.delete_many(&keys)?;
        }
        let chunks: Vec<&[u8]> = state.chunks(CHUNK).collect();
        for (part, chunk) in chunks.iter().enumerate() {
            storage.put_bytes(&snapshot_key(part), chunk)?;
        }
        self.snapshot_parts = chunks.len();
        self.snapshot_bytes = state.len();
        self.update_bytes = 0;
        self.updates = 0;
        Ok(())
    }
}

fn snapshot_key(part: usize) -> String {
    format!("{SNAPSHOT}{part:04}")
}

fn list(storage: &Storage, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, Error> {
    storage.list_bytes(&ListOptions { prefix: Some(prefix.to_owned()), ..ListOptions::default() })
}
