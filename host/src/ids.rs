//! Names and ids passed between modules. Each is validated once, where it
//! enters the host, so nothing downstream re-checks a bare `String`.

use std::fmt;
use std::sync::Arc;

/// Largest party or room name accepted in a URL.
pub const MAX_NAME_BYTES: usize = 128;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        /// Lets maps keyed by this id be searched with a `&str`.
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A party's name: `[a-z0-9_-]`, 1 to 128 bytes, as in the manifest.
    PartyName
);
id_type!(
    /// A deployed project's name: a DNS label (`[a-z0-9-]`, 1 to 63 bytes,
    /// no `-` at either end), since it is also a host name.
    ProjectName
);
id_type!(
    /// A room's id from the URL: any printable text except `/`, 1 to 128 bytes.
    RoomId
);
id_type!(
    /// A connection's id, unique within its room.
    ConnectionId
);

impl TryFrom<&str> for PartyName {
    type Error = String;

    fn try_from(name: &str) -> Result<Self, String> {
        if name.is_empty() || name.len() > MAX_NAME_BYTES {
            return Err(format!("must be 1 to {MAX_NAME_BYTES} bytes long"));
        }
        if let Some(c) = name.chars().find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-' | '_')) {
            return Err(format!("may contain only a-z, 0-9, `-` and `_`, not {c:?}"));
        }
        Ok(Self(name.into()))
    }
}

impl TryFrom<&str> for ProjectName {
    type Error = String;

    fn try_from(name: &str) -> Result<Self, String> {
        if name.is_empty() || name.len() > 63 {
            return Err("must be 1 to 63 bytes long".into());
        }
        if let Some(c) = name.chars().find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-')) {
            return Err(format!("may contain only a-z, 0-9 and `-`, not {c:?}"));
        }
        if name.starts_with('-') || name.ends_with('-') {
            return Err("may not start or end with `-`".into());
        }
        Ok(Self(name.into()))
    }
}

impl TryFrom<&str> for RoomId {
    type Error = String;

    fn try_from(id: &str) -> Result<Self, String> {
        if id.is_empty() || id.len() > MAX_NAME_BYTES {
            return Err(format!("must be 1 to {MAX_NAME_BYTES} bytes long"));
        }
        if id.chars().any(|c| c == '/' || c.is_control()) {
            return Err("may not contain `/` or control characters".into());
        }
        Ok(Self(id.into()))
    }
}

impl TryFrom<&str> for ConnectionId {
    type Error = String;

    fn try_from(id: &str) -> Result<Self, String> {
        if id.is_empty() || id.len() > MAX_NAME_BYTES || id.chars().any(char::is_control) {
            return Err(format!("must be 1 to {MAX_NAME_BYTES} bytes of printable text"));
        }
        Ok(Self(id.into()))
    }
}

impl ConnectionId {
    /// A fresh random id, for clients that do not send `_pk`.
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4().to_string().into())
    }
}

/// A room's full address within the host.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomKey {
    pub party: PartyName,
    pub room: RoomId,
}

impl fmt::Display for RoomKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.party, self.room)
    }
}
