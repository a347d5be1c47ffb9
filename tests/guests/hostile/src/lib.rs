//! A party that misbehaves on command, for the host's isolation tests.
//! Each message names a misdeed; anything else is echoed with the number of
//! times this instance has started, so tests can see a restart.

use partyhost_guest::{Connection, Message, Party, Request, Response, Room, export_party};
use std::cell::Cell;

struct Hostile {
    room: Room,
    starts: Cell<u64>,
}

#[allow(clippy::panic)]
fn misbehave(command: &str) {
    match command {
        "panic" => panic!("asked to panic"),
        "spin" => loop {
            std::hint::spin_loop();
        },
        "grow" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "recurse" => {
            recurse(0);
        }
        _ => {}
    }
}

#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    std::hint::black_box(recurse(depth + 1)) + 1
}

impl Party for Hostile {
    fn new(room: Room) -> Self {
        Self { room, starts: Cell::new(0) }
    }

    async fn on_start(&self) {
        let starts: u64 = self.room.storage().get("starts").unwrap_or(0) + 1;
        self.starts.set(starts);
        let _ = self.room.storage().put("starts", &starts);
    }

    async fn on_message(&self, message: Message, sender: Connection) {
        let text = message.as_text().unwrap_or_default().to_owned();
        misbehave(&text);
        sender.send(format!("echo {text} starts={}", self.starts.get()));
    }

    async fn on_request(&self, request: Request) -> Response {
        let command = request.path().rsplit('/').next().unwrap_or_default().to_owned();
        misbehave(&command);
        Response::text(200, format!("ok starts={}", self.starts.get()))
    }
}

export_party!(Hostile);
