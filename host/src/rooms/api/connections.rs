use super::{RoomState, host};
use crate::ids::ConnectionId;
use crate::rooms::state::{Outgoing, Target};
use crate::sandbox::{ConnectionInfo, Message, Refusal};

impl RoomState {
    /// The id if it names an open connection of this room.
    fn known(&self, conn: &str) -> Result<ConnectionId, Refusal> {
        ConnectionId::try_from(conn)
            .ok()
            .filter(|id| self.connections.contains_key(id))
            .ok_or(Refusal::NoSuchConnection)
    }

    fn info(&self, id: &ConnectionId) -> Option<ConnectionInfo> {
        self.connections.get(id).map(|entry| ConnectionInfo {
            id: id.to_string(),
            tags: entry.tags.clone(),
            state: entry.state.clone(),
        })
    }
}

impl host::Connections for RoomState {
    fn broadcast(&mut self, msg: Message, without: Vec<String>) {
        self.outbox.push((Target::All { without }, Outgoing::from(&msg)));
    }

    fn send(&mut self, conn: String, msg: Message) -> Result<(), Refusal> {
        let id = self.known(&conn)?;
        self.outbox.push((Target::One(id), Outgoing::from(&msg)));
        Ok(())
    }

    fn close(&mut self, conn: String, code: u16, reason: String) -> Result<(), Refusal> {
        let id = self.known(&conn)?;
        // 1000 and 3000-4999 are the codes an application may send.
        if code != 1000 && !(3000..=4999).contains(&code) {
            return Err(Refusal::Invalid(format!("close code {code} is reserved; use 1000 or 3000-4999")));
        }
        if reason.len() > 123 {
            return Err(Refusal::TooLarge("close reason is over 123 bytes".into()));
        }
        self.outbox.push((Target::One(id), Outgoing::Close { code, reason }));
        Ok(())
    }

    fn get_connections(&mut self, tag: Option<String>) -> Vec<ConnectionInfo> {
        let mut entries: Vec<(&ConnectionId, u64)> = self
            .connections
            .iter()
            .filter(|(_, entry)| tag.as_ref().is_none_or(|t| entry.tags.contains(t)))
            .map(|(id, entry)| (id, entry.socket))
            .collect();
        // In the order the sockets connected, as PartyKit's getConnections
        // yields them (socket serials only grow).
        entries.sort_by_key(|(_, socket)| *socket);
        entries.into_iter().filter_map(|(id, _)| self.info(id)).collect()
    }

    fn get_connection(&mut self, conn: String) -> Option<ConnectionInfo> {
        self.known(&conn).ok().and_then(|id| self.info(&id))
    }

    fn set_state(&mut self, conn: String, state: Option<Vec<u8>>) -> Result<(), Refusal> {
        let id = self.known(&conn)?;
        let limit = self.limits.connection_state_bytes;
        if state.as_ref().is_some_and(|s| s.len() > limit) {
            return Err(Refusal::TooLarge(format!("connection state is over {limit} bytes")));
        }
        if let Some(entry) = self.connections.get_mut(&id) {
            entry.state = state;
        }
        Ok(())
    }
}
