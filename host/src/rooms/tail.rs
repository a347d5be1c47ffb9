//! Live logs (`partyhost tail`, PartyKit's `partykit tail`): a project's
//! guest log lines, failed calls and limit hits, as they happen, to
//! whoever is listening. Nothing is kept: with no listener an event costs
//! one atomic read, and a listener that falls behind is told how many
//! events it missed.

use serde::Serialize;
use std::sync::Arc;
use tokio::sync::broadcast;

use crate::ids::RoomKey;

/// Events a slow listener may fall behind by before it misses some.
const BACKLOG: usize = 1024;

/// Listeners of one project at once: each costs the host an encoding of
/// every event.
pub const MAX_LISTENERS: usize = 16;

/// One thing that happened in a room.
#[derive(Debug, Clone, Serialize)]
pub struct TailEvent {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub party: String,
    pub room: String,
    /// `log`, `trap` (a failed call; the room restarts its instance) or
    /// `limit` (a limit stopped something).
    pub kind: &'static str,
    /// For a log line, its level; for a trap or limit, the kind of it.
    pub level: String,
    pub message: String,
}

/// A project's live log.
#[derive(Debug)]
pub struct Tail {
    sender: broadcast::Sender<Arc<TailEvent>>,
}

impl Default for Tail {
    fn default() -> Self {
        Self { sender: broadcast::channel(BACKLOG).0 }
    }
}

impl Tail {
    /// Sends the event `make` builds, if anyone is listening.
    pub fn emit(&self, room: &RoomKey, kind: &'static str, make: impl FnOnce() -> (String, String)) {
        if self.sender.receiver_count() == 0 {
            return;
        }
        let (level, message) = make();
        let event = TailEvent {
            time_ms: super::now_ms(),
            party: room.party.to_string(),
            room: room.room.to_string(),
            kind,
            level,
            message,
        };
        let _ = self.sender.send(Arc::new(event));
    }

    /// A new listener, from now on; `None` when [`MAX_LISTENERS`] listen.
    pub fn subscribe(&self) -> Option<broadcast::Receiver<Arc<TailEvent>>> {
        (self.sender.receiver_count() < MAX_LISTENERS).then(|| self.sender.subscribe())
    }
}
