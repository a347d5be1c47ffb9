//! Live reaction counts per room, wire-compatible with PartyKit's
//! example-reactions: clients send `{"type":"reaction","kind":"clap"}` and
//! everyone gets `{"type":"update","reactions":{"clap":1}}`.

use partyhost_guest::{
    Connection, ConnectionContext, Message, Party, Request, Response, Room, export_party, now,
};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::BTreeMap;

type Counts = BTreeMap<String, u64>;

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ClientMessage {
    Reaction { kind: Kind },
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Clap,
    Heart,
    Thumbsup,
    Party,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Clap => "clap",
            Self::Heart => "heart",
            Self::Thumbsup => "thumbsup",
            Self::Party => "party",
        }
    }
}

struct Reactions {
    room: Room,
    counts: RefCell<Counts>,
}

/// `{"type":"update","reactions":{...}}`, in the original's key order.
#[derive(Serialize)]
struct Update<'a> {
    r#type: &'static str,
    reactions: &'a Counts,
}

impl Reactions {
    fn update(&self) -> String {
        let counts = self.counts.borrow();
        serde_json::to_string(&Update { r#type: "update", reactions: &counts }).unwrap_or_default()
    }
}

impl Party for Reactions {
    fn new(room: Room) -> Self {
        Self { room, counts: RefCell::default() }
    }

    async fn on_start(&self) {
        *self.counts.borrow_mut() = self.room.storage().get("reactions").unwrap_or_default();
    }

    async fn on_connect(&self, conn: Connection, _ctx: ConnectionContext) {
        conn.send(self.update());
    }

    async fn on_message(&self, message: Message, sender: Connection) {
        let Some(ClientMessage::Reaction { kind }) = message.json() else {
            return;
        };
        let cooldown = self.room.env("RATE_LIMIT_MS").and_then(|v| v.parse().ok()).unwrap_or(100);
        limiter::rate_limit(&sender, cooldown, || {
            *self.counts.borrow_mut().entry(kind.as_str().to_owned()).or_default() += 1;
            let _ = self.room.storage().put("reactions", &*self.counts.borrow());
            self.room.broadcast(self.update(), &[]);
        });
    }

    async fn on_request(&self, _req: Request) -> Response {
        Response::json(&Update { r#type: "update", reactions: &self.counts.borrow() })
    }
}

mod limiter {
    //! example-reactions' per-connection limiter. Its state lives in the
    //! connection's state, so it survives the room's instance restarting.

    use super::{Connection, Deserialize, Serialize, now};

    #[derive(Serialize, Deserialize, Default)]
    #[serde(rename_all = "camelCase")]
    struct Limiter {
        next_allowed_time: Option<u64>,
        violations: u32,
    }

    /// Runs `action` unless the sender is inside its cooldown; then it gets
    /// `slowdown`, and at the 10th violation in a row `goaway` and a close.
    /// A cooldown of 0 turns the limiter off.
    pub fn rate_limit(sender: &Connection, cooldown_ms: u64, action: impl FnOnce()) {
        if cooldown_ms == 0 {
            return action();
        }
        let now = now();
        let mut limiter: Limiter = sender.state().unwrap_or_default();
        let mut next = limiter.next_allowed_time.unwrap_or(now);
        if next <= now {
            action();
            next = now;
            limiter.violations = 0;
        } else {
            limiter.violations += 1;
            if limiter.violations < 10 {
                sender.send("slowdown");
            } else {
                sender.send("goaway");
                sender.close();
            }
        }
        limiter.next_allowed_time = Some(next + cooldown_ms);
        let _ = sender.set_state(&limiter);
    }
}

export_party!(Reactions);
