//! WebSocket messages as a party sees them.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings::partyhost::party::types::Message as WitMessage;

/// A WebSocket message: text or binary, as it was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Vec<u8>),
}

impl Message {
    /// The text, if this is a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Self::Text(text) => Some(text),
            Self::Binary(_) => None,
        }
    }

    /// Parses a text message as JSON; `None` for binary or invalid JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_str(self.as_text()?).ok()
    }

    /// A text message holding `value` as JSON.
    ///
    /// # Panics
    /// Never for plain data types; only if `value`'s `Serialize` impl fails.
    pub fn from_json<T: Serialize>(value: &T) -> Self {
        Self::Text(serde_json::to_string(value).unwrap_or_else(|e| panic!("serializing a message: {e}")))
    }

    pub(crate) fn to_wit(&self) -> WitMessage {
        match self {
            Self::Text(text) => WitMessage::Text(text.clone()),
            Self::Binary(bytes) => WitMessage::Binary(bytes.clone()),
        }
    }

    pub(crate) fn from_wit(msg: WitMessage) -> Self {
        match msg {
            WitMessage::Text(text) => Self::Text(text),
            WitMessage::Binary(bytes) => Self::Binary(bytes),
        }
    }
}

impl From<String> for Message {
    fn from(text: String) -> Self {
        Self::Text(text)
    }
}

impl From<&str> for Message {
    fn from(text: &str) -> Self {
        Self::Text(text.to_owned())
    }
}

impl From<Vec<u8>> for Message {
    fn from(bytes: Vec<u8>) -> Self {
        Self::Binary(bytes)
    }
}
