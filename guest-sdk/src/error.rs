//! Why a room API call was refused.

use std::fmt;

use crate::bindings::partyhost::party::types::Refusal;

/// A refused call. The room goes on; handle it or ignore it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A key, value, state or message is over its size limit.
    TooLarge(String),
    /// A quota (storage, fetches in flight, ...) is used up.
    QuotaExceeded(String),
    /// The connection is no longer in the room.
    NoSuchConnection,
    /// The call's arguments are invalid.
    Invalid(String),
    /// A fetch to another room failed or timed out.
    Fetch(String),
    /// A value could not be turned into or read from JSON.
    Json(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge(why) => write!(f, "too large: {why}"),
            Self::QuotaExceeded(why) => write!(f, "quota exceeded: {why}"),
            Self::NoSuchConnection => f.write_str("no such connection"),
            Self::Invalid(why) => write!(f, "invalid: {why}"),
            Self::Fetch(why) => write!(f, "fetch failed: {why}"),
            Self::Json(why) => write!(f, "JSON: {why}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<Refusal> for Error {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::TooLarge(why) => Self::TooLarge(why),
            Refusal::QuotaExceeded(why) => Self::QuotaExceeded(why),
            Refusal::NoSuchConnection => Self::NoSuchConnection,
            Refusal::Invalid(why) => Self::Invalid(why),
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Self::Json(e.to_string())
    }
}
