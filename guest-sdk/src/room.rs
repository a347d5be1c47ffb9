//! The room a party runs in: its identity, its connections, its storage and
//! requests to other rooms.

use serde::Serialize;

use crate::bindings::partyhost::party::{connections, outbound, room};
use crate::executor::FetchFuture;
use crate::{Connection, Error, Message, Request, Response, Storage};

/// What a gate (`on_before_connect`, `on_before_request`) knows of the room
/// a request is for, as PartyKit's `lobby`: its party, id and vars, and
/// fetches to the project's rooms. Zero-sized.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lobby {
    room: Room,
}

impl Lobby {
    pub(crate) const fn new() -> Self {
        Self { room: Room::new() }
    }

    /// The id of the room the request is for.
    pub fn id(&self) -> String {
        self.room.id()
    }

    /// The party's name from the manifest.
    pub fn party(&self) -> String {
        self.room.party()
    }

    /// A var from the manifest, or a secret set with `partyhost env set`.
    pub fn env(&self, name: &str) -> Option<String> {
        self.room.env(name)
    }

    /// Sends `request` to room `room` of party `party` of this project.
    ///
    /// # Errors
    /// As [`Room::fetch`].
    pub async fn fetch(&self, party: &str, room: &str, request: Request) -> Result<Response, Error> {
        self.room.fetch(party, room, request).await
    }
}

/// The room this instance serves. Zero-sized; copy it freely.
#[derive(Debug, Clone, Copy, Default)]
pub struct Room {
    _private: (),
}

impl Room {
    pub(crate) const fn new() -> Self {
        Self { _private: () }
    }

    /// The room id from the URL: `lobby` in `/parties/main/lobby`.
    pub fn id(&self) -> String {
        room::id()
    }

    /// The party's name from the manifest.
    pub fn party(&self) -> String {
        room::party()
    }

    /// A var from the manifest (`[vars]` or `[parties.<name>.vars]`), or a
    /// secret set with `partyhost env set`.
    pub fn env(&self, name: &str) -> Option<String> {
        room::vars().into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// Sends `msg` to every connection except those whose ids are in
    /// `without`.
    pub fn broadcast(&self, msg: impl Into<Message>, without: &[&str]) {
        let without: Vec<String> = without.iter().map(|s| (*s).to_owned()).collect();
        connections::broadcast(&msg.into().to_wit(), &without);
    }

    /// Sends `value` as JSON to every connection.
    pub fn broadcast_json<T: Serialize>(&self, value: &T) {
        self.broadcast(Message::from_json(value), &[]);
    }

    /// Every open connection, in the order they connected.
    pub fn connections(&self) -> Vec<Connection> {
        connections::get_connections(None).into_iter().map(|c| Connection::new(c.id)).collect()
    }

    /// The open connections carrying `tag`.
    pub fn connections_tagged(&self, tag: &str) -> Vec<Connection> {
        connections::get_connections(Some(tag)).into_iter().map(|c| Connection::new(c.id)).collect()
    }

    /// One open connection by id.
    pub fn connection(&self, id: &str) -> Option<Connection> {
        connections::get_connection(id).map(|c| Connection::new(c.id))
    }

    /// The room's durable storage.
    pub fn storage(&self) -> Storage {
        Storage::new()
    }

    /// Sends `request` to room `room` of party `party` and awaits its
    /// response. While this waits, the room goes on handling other events,
    /// including requests that this one causes to come back here.
    ///
    /// # Errors
    /// When the target party is unknown, too many fetches are in flight, or
    /// no response comes within the host's fetch timeout.
    pub async fn fetch(&self, party: &str, room: &str, request: Request) -> Result<Response, Error> {
        let id = outbound::fetch(party, room, &request.to_wit())?;
        let result = FetchFuture::new(id).await;
        result.map(Response::from_wit).map_err(Error::Fetch)
    }
}
