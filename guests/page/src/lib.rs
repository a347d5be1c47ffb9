//! One page of a site, wire-compatible with PartyKit's example-link-counter
//! `page` party: it tells the global counter how many people are on it, and
//! tells its own clients how many people are on the pages it links to.
//!
//! Clients send `{"type":"subscribe","links":["b","c"]}` and get
//! `{"type":"update","connections":{"b":1,"c":0}}`, then a new update
//! whenever a linked page's count changes.

use partyhost_guest::{
    AlarmInfo, Close, Connection, ConnectionContext, Message, Party, Request, Response, Room, export_party,
    now,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// The one counter room that counts across all pages.
const GLOBAL_COUNTER_ID: &str = "all-pages";
/// Forget link counts after an hour without subscribers (the manifest var
/// `CLEANUP_ALARM_DELAY_MS` overrides it, for tests).
const CLEANUP_ALARM_DELAY_MS: u64 = 60 * 60 * 1000;

/// Connection counts of linked pages, in the order the counter sent them.
type Summary = Map<String, Value>;

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ClientMessage {
    Subscribe { links: Vec<String> },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CountUpdate {
    action: String,
    id: String,
    connection_count: u64,
}

struct Page {
    room: Room,
}

impl Page {
    fn cleanup_at(&self) -> u64 {
        let delay = self.room.env("CLEANUP_ALARM_DELAY_MS").and_then(|v| v.parse().ok());
        now() + delay.unwrap_or(CLEANUP_ALARM_DELAY_MS)
    }

    /// Stores the summary and postpones the clean-up.
    fn save(&self, connections: &Summary) {
        let storage = self.room.storage();
        let _ = storage.put("connections", connections);
        storage.set_alarm(self.cleanup_at());
    }

    async fn send_count_to_counter(&self) {
        let update = json!({
            "action": "update",
            "id": self.room.id(),
            "connectionCount": self.room.connections().len(),
        });
        let _ = self.room.fetch("counter", GLOBAL_COUNTER_ID, Request::post_json("/", &update)).await;
    }

    async fn subscribe(&self, links: Vec<String>) -> Option<Summary> {
        let subscribe = json!({
            "action": "subscribe",
            "subscriberId": self.room.id(),
            "subscribeToRoomIds": links,
        });
        let response =
            self.room.fetch("counter", GLOBAL_COUNTER_ID, Request::post_json("/", &subscribe)).await;
        let connections: Summary = response.ok()?.body_json().ok()?;
        self.save(&connections);
        Some(connections)
    }

    /// The counter says a linked page's count changed.
    fn apply_count(&self, update: CountUpdate) {
        // No stored summary means nobody here is subscribed: nothing to do.
        let Some(mut connections) = self.room.storage().get::<Summary>("connections") else {
            return;
        };
        connections.insert(update.id, update.connection_count.into());
        self.save(&connections);
        self.room.broadcast_json(&json!({ "type": "update", "connections": connections }));
    }
}

impl Party for Page {
    fn new(room: Room) -> Self {
        Self { room }
    }

    async fn on_connect(&self, _conn: Connection, _ctx: ConnectionContext) {
        self.send_count_to_counter().await;
    }

    async fn on_close(&self, _conn: Connection, _close: Close) {
        self.send_count_to_counter().await;
    }

    async fn on_message(&self, message: Message, sender: Connection) {
        let Some(ClientMessage::Subscribe { links }) = message.json() else {
            return;
        };
        if let Some(connections) = self.subscribe(links).await {
            sender.send_json(&json!({ "type": "update", "connections": connections }));
        }
    }

    async fn on_request(&self, request: Request) -> Response {
        if request.method == "POST"
            && let Ok(update) = request.body_json::<CountUpdate>()
            && update.action == "update"
        {
            self.apply_count(update);
        }
        // The original answers every request this way, even the updates it
        // applied; the counter ignores the status.
        Response::text(400, "Bad request")
    }

    async fn on_alarm(&self, _info: AlarmInfo) {
        if self.room.connections().is_empty() {
            self.room.storage().delete("connections");
        } else {
            self.room.storage().set_alarm(self.cleanup_at());
        }
    }
}

export_party!(Page);
