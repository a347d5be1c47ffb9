//! Who is where in a workshop, wire-compatible with the presence party of
//! epicweb-dev/kcdshop: clients send `add-user`, `remove-user` and
//! `add-anonymous-user`; everyone gets `{"type":"presence","payload":{"users":[...]}}`.
//! Users live in connection state, so presence survives the room's instance
//! being restarted or evicted.

use partyhost_guest::{Close, Connection, Message, Party, Request, Response, Room, export_party};
use serde::{Deserialize, Deserializer, Serialize};

/// A field that may be absent, `null`, or a value, kept apart so a user is
/// echoed exactly as the original's schema passes it through.
type Maybe<T> = Option<Option<T>>;

fn maybe<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Maybe<T>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize, Serialize, Clone)]
#[serde(rename_all = "camelCase")]
struct User {
    id: String,
    #[serde(default, deserialize_with = "maybe", skip_serializing_if = "Option::is_none")]
    avatar_url: Maybe<String>,
    #[serde(default, deserialize_with = "maybe", skip_serializing_if = "Option::is_none")]
    name: Maybe<String>,
    #[serde(default, deserialize_with = "maybe", skip_serializing_if = "Option::is_none")]
    location: Maybe<Location>,
}

#[derive(Deserialize, Serialize, Clone)]
#[serde(rename_all = "camelCase")]
struct Location {
    #[serde(default, deserialize_with = "maybe", skip_serializing_if = "Option::is_none")]
    workshop_title: Maybe<String>,
    #[serde(default, deserialize_with = "maybe", skip_serializing_if = "Option::is_none")]
    exercise: Maybe<Exercise>,
}

#[derive(Deserialize, Serialize, Clone)]
#[serde(rename_all = "camelCase")]
struct Exercise {
    #[serde(default, deserialize_with = "maybe", skip_serializing_if = "Option::is_none")]
    r#type: Maybe<ExerciseType>,
    /// JSON numbers kept as written (`1` stays `1`, not `1.0`).
    #[serde(default, deserialize_with = "maybe", skip_serializing_if = "Option::is_none")]
    exercise_number: Maybe<serde_json::Number>,
    #[serde(default, deserialize_with = "maybe", skip_serializing_if = "Option::is_none")]
    step_number: Maybe<serde_json::Number>,
}

#[derive(Deserialize, Serialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum ExerciseType {
    Problem,
    Solution,
}

#[derive(Deserialize)]
struct UserId {
    id: String,
}

#[derive(Deserialize)]
#[serde(tag = "type", content = "payload", rename_all = "kebab-case")]
enum ClientMessage {
    AddUser(User),
    RemoveUser(#[allow(dead_code)] UserId),
    AddAnonymousUser(UserId),
    /// Valid by the original's schema, and ignored there too.
    Presence(#[allow(dead_code)] serde_json::Value),
}

/// `{"type":"presence","payload":{"users":[...]}}`, in the original's key order.
#[derive(Serialize)]
struct PresenceMessage {
    r#type: &'static str,
    payload: UsersPayload,
}

#[derive(Serialize)]
struct UsersPayload {
    users: Vec<User>,
}

/// What the host keeps per connection.
#[derive(Deserialize, Serialize, Default)]
struct ConnectionState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user: Option<User>,
}

struct Presence {
    room: Room,
}

impl Presence {
    /// One entry per user id (the last connection's user wins, at the first
    /// connection's place), best-described users first.
    fn users(&self) -> Vec<User> {
        let mut users: Vec<User> = Vec::new();
        for conn in self.room.connections() {
            let Some(user) = conn.state::<ConnectionState>().and_then(|s| s.user) else {
                continue;
            };
            match users.iter_mut().find(|u| u.id == user.id) {
                Some(known) => *known = user,
                None => users.push(user),
            }
        }
        // Stable, so equal scores keep connection order, as in the original.
        users.sort_by(|a, b| score(b).total_cmp(&score(a)));
        users
    }

    fn broadcast_presence(&self) {
        let payload = UsersPayload { users: self.users() };
        self.room.broadcast_json(&PresenceMessage { r#type: "presence", payload });
    }
}

fn score(user: &User) -> f64 {
    let avatar = user.avatar_url.clone().flatten().unwrap_or_default();
    let mut score = 0.0;
    if !avatar.is_empty() {
        score += 1.0;
    }
    if avatar.contains("discordapp") {
        score += 0.5;
    }
    if user.name.clone().flatten().is_some_and(|n| !n.is_empty()) {
        score += 1.0;
    }
    score
}

impl Party for Presence {
    fn new(room: Room) -> Self {
        Self { room }
    }

    async fn on_message(&self, message: Message, sender: Connection) {
        match message.json::<ClientMessage>() {
            Some(ClientMessage::AddUser(user)) => {
                let _ = sender.set_state(&ConnectionState { user: Some(user) });
                self.broadcast_presence();
            }
            Some(ClientMessage::RemoveUser(_)) => {
                sender.clear_state();
                self.broadcast_presence();
            }
            Some(ClientMessage::AddAnonymousUser(UserId { id })) => {
                let user = User { id, avatar_url: None, name: None, location: None };
                let _ = sender.set_state(&ConnectionState { user: Some(user) });
            }
            Some(ClientMessage::Presence(_)) | None => {}
        }
    }

    async fn on_close(&self, _conn: Connection, _close: Close) {
        self.broadcast_presence();
    }

    async fn on_error(&self, _conn: Connection, _error: String) {
        self.broadcast_presence();
    }

    async fn on_request(&self, request: Request) -> Response {
        if request.path().ends_with("/presence") {
            Response::json(&UsersPayload { users: self.users() })
        } else {
            Response::text(404, "not found")
        }
    }
}

export_party!(Presence);
