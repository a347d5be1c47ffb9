//! The global counter of PartyKit's example-link-counter: one room
//! (`all-pages`) that knows every page's connection count and which pages
//! subscribe to it, and tells subscribers when a count changes. Pages talk
//! to it with POSTs of `{"action":"subscribe",...}` and
//! `{"action":"update",...}`.

use partyhost_guest::{AlarmInfo, ListOptions, Party, Request, Response, Room, export_party, join_all, now};
use serde::{Deserialize, Serialize};
use serde_json::{Map, json};

/// Forget idle pages after an hour (the manifest var
/// `CLEANUP_ALARM_DELAY_MS` overrides it, for tests).
const CLEANUP_ALARM_DELAY_MS: u64 = 60 * 60 * 1000;

#[derive(Deserialize)]
#[serde(tag = "action", rename_all = "lowercase", rename_all_fields = "camelCase")]
enum CounterRequest {
    Subscribe { subscriber_id: String, subscribe_to_room_ids: Vec<String> },
    Update { id: String, connection_count: u64 },
}

/// What the counter stores per page, under the page's id.
#[derive(Deserialize, Serialize, Clone)]
#[serde(rename_all = "camelCase")]
struct PageState {
    id: String,
    connection_count: u64,
    subscriber_ids: Vec<String>,
}

struct Counter {
    room: Room,
}

impl Counter {
    fn cleanup_at(&self) -> u64 {
        let delay = self.room.env("CLEANUP_ALARM_DELAY_MS").and_then(|v| v.parse().ok());
        now() + delay.unwrap_or(CLEANUP_ALARM_DELAY_MS)
    }

    fn update_page(&self, page_id: &str, update: impl FnOnce(&mut PageState)) -> PageState {
        let storage = self.room.storage();
        let mut state = storage.get(page_id).unwrap_or_else(|| PageState {
            id: page_id.to_owned(),
            connection_count: 0,
            subscriber_ids: Vec::new(),
        });
        update(&mut state);
        let _ = storage.put(page_id, &state);
        if storage.get_alarm().is_none() {
            storage.set_alarm(self.cleanup_at());
        }
        state
    }

    fn subscribe(&self, subscriber_id: &str, page_ids: &[String]) -> Response {
        let mut summary = Map::new();
        for page_id in page_ids {
            let state = self.update_page(page_id, |state| {
                state.subscriber_ids.retain(|id| id != subscriber_id);
                state.subscriber_ids.insert(0, subscriber_id.to_owned());
            });
            summary.insert(state.id, state.connection_count.into());
        }
        Response::json(&summary)
    }

    async fn update(&self, page_id: &str, connection_count: u64) -> Response {
        let state = self.update_page(page_id, |state| state.connection_count = connection_count);
        let update = json!({ "action": "update", "id": state.id, "connectionCount": state.connection_count });
        let notifications = state
            .subscriber_ids
            .iter()
            .map(|subscriber| self.room.fetch("page", subscriber, Request::post_json("/", &update)));
        join_all(notifications).await;
        Response::json(&json!({ "success": true }))
    }
}

impl Party for Counter {
    fn new(room: Room) -> Self {
        Self { room }
    }

    async fn on_request(&self, request: Request) -> Response {
        match request.body_json::<CounterRequest>() {
            Ok(CounterRequest::Subscribe { subscriber_id, subscribe_to_room_ids })
                if request.method == "POST" =>
            {
                self.subscribe(&subscriber_id, &subscribe_to_room_ids)
            }
            Ok(CounterRequest::Update { id, connection_count }) if request.method == "POST" => {
                self.update(&id, connection_count).await
            }
            _ => Response::text(400, "Bad request"),
        }
    }

    async fn on_alarm(&self, _info: AlarmInfo) {
        let storage = self.room.storage();
        for (page_id, state) in storage.list::<PageState>(&ListOptions::default()).unwrap_or_default() {
            if state.connection_count == 0 {
                storage.delete(&page_id);
            }
        }
        if !storage.list::<PageState>(&ListOptions::default()).unwrap_or_default().is_empty() {
            storage.set_alarm(self.cleanup_at());
        }
    }
}

export_party!(Counter);
