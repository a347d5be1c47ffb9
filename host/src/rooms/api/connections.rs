use std::collections::HashSet;

use super::{RoomState, host};
use crate::ids::ConnectionId;
use crate::rooms::Limit;
use crate::rooms::state::{ConnectionEntry, Outgoing, Target};
use crate::sandbox::{ConnectionInfo, Message, Refusal};

impl RoomState {
    /// The id if it names an open connection of this room.
    fn known(&self, conn: &str) -> Result<ConnectionId, Refusal> {
        ConnectionId::try_from(conn)
            .ok()
            .filter(|id| self.connections.contains_key(id))
            .ok_or(Refusal::NoSuchConnection)
    }

    /// Takes `msg`'s size times `receivers` from the call's fan-out
    /// budget. Past it the frame is dropped and the call will fail.
    fn charge_fanout(&mut self, msg: &Message, receivers: usize) -> bool {
        let size = match msg {
            Message::Text(text) => text.len(),
            Message::Binary(bytes) => bytes.len(),
        };
        let cost = (size as u64).saturating_mul(receivers as u64);
        match self.call.fanout_left.checked_sub(cost) {
            Some(left) => {
                self.call.fanout_left = left;
                true
            }
            None => {
                let limit = self.limits.fanout_bytes_per_event;
                self.call.exceeded.get_or_insert_with(|| {
                    (Limit::Fanout, format!("the call sent more than {limit} bytes (size x receivers)"))
                });
                false
            }
        }
    }

    fn info(&self, id: &ConnectionId) -> Option<ConnectionInfo> {
        self.connections.get(id).map(|entry| info_of(id, entry))
    }
}

impl host::Connections for RoomState {
    fn broadcast(&mut self, msg: Message, without: Vec<String>) {
        // A set, so that a long `without` costs one pass, not one per socket.
        let without: HashSet<String> = without.into_iter().collect();
        let receivers = self.connections.keys().filter(|id| !without.contains(id.as_str())).count();
        // Encoding the frame costs something even with nobody to receive it.
        if self.charge_fanout(&msg, receivers.max(1)) && receivers > 0 {
            self.outbox.push((Target::All { without }, Outgoing::from(&msg)));
        }
    }

    fn send(&mut self, conn: String, msg: Message) -> Result<(), Refusal> {
        let id = self.known(&conn)?;
        if !self.charge_fanout(&msg, 1) {
            let limit = self.limits.fanout_bytes_per_event;
            return Err(Refusal::QuotaExceeded(format!("this call already sent {limit} bytes")));
        }
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
        if let Some((id, entry)) = &self.departing
            && id.as_str() == conn
        {
            return Some(info_of(id, entry));
        }
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

fn info_of(id: &ConnectionId, entry: &ConnectionEntry) -> ConnectionInfo {
    ConnectionInfo {
        id: id.to_string(),
        tags: entry.tags.clone(),
        state: entry.state.clone(),
        uri: entry.uri.clone(),
    }
}
