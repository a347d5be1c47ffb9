//! A WebSocket connection of the room.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings::partyhost::party::connections as wit;
use crate::{Error, Message};

/// One client connected to the room. Cheap to clone: it is only the id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Connection {
    id: String,
}

impl Connection {
    pub(crate) fn new(id: String) -> Self {
        Self { id }
    }

    /// The connection's id: the client's `_pk`, else a random UUID.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Sends a message to this client. A client that already left is
    /// ignored, as in PartyKit.
    pub fn send(&self, msg: impl Into<Message>) {
        let _ = wit::send(&self.id, &msg.into().to_wit());
    }

    /// Sends `value` as a JSON text message.
    pub fn send_json<T: Serialize>(&self, value: &T) {
        self.send(Message::from_json(value));
    }

    /// Closes the connection normally (code 1000).
    pub fn close(&self) {
        self.close_with(1000, "");
    }

    /// Closes the connection with `code` (1000 or 3000-4999) and `reason`.
    pub fn close_with(&self, code: u16, reason: &str) {
        let _ = wit::close(&self.id, code, reason);
    }

    /// The URL the client connected with, query included (PartyKit's
    /// `connection.uri`). Empty once the connection has left.
    pub fn uri(&self) -> String {
        wit::get_connection(&self.id).map(|c| c.uri).unwrap_or_default()
    }

    /// The tags given to this connection when it connected (its id first).
    pub fn tags(&self) -> Vec<String> {
        wit::get_connection(&self.id).map(|c| c.tags).unwrap_or_default()
    }

    /// The state last stored with [`Connection::set_state`], parsed as JSON.
    /// It survives the room's instance being restarted or evicted.
    pub fn state<T: DeserializeOwned>(&self) -> Option<T> {
        let bytes = wit::get_connection(&self.id)?.state?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Stores `state` (as JSON, at most 2 KiB) with the connection.
    ///
    /// # Errors
    /// When the state is too large or the connection has left.
    pub fn set_state<T: Serialize>(&self, state: &T) -> Result<(), Error> {
        Ok(wit::set_state(&self.id, Some(&serde_json::to_vec(state)?))?)
    }

    /// Clears the connection's state.
    pub fn clear_state(&self) {
        let _ = wit::set_state(&self.id, None);
    }
}
