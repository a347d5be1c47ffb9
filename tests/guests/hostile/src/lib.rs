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
        "wide-recurse" => {
            wide_recurse(0);
        }
        _ => {}
    }
}

/// Recursion that keeps nothing in linear memory, so it overflows wasm's
/// own call stack (`wide-recurse` overflows Rust's shadow stack instead).
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    recurse(std::hint::black_box(depth + 1)) + depth
}

/// Recursion with a 4 KiB array per frame, on Rust's shadow stack in
/// linear memory: it runs off the bottom of memory.
#[allow(unconditional_recursion)]
fn wide_recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 512]);
    wide_recurse(std::hint::black_box(depth + 1)) + frame[(depth % 512) as usize]
}

impl Hostile {
    async fn fetch_self(&self, path: &str) -> Response {
        let (party, room) = (self.room.party(), self.room.id());
        match self.room.fetch(&party, &room, Request::get(path)).await {
            Ok(inner) => Response::text(200, format!("inner {}: {}", inner.status, inner.body_text())),
            Err(e) => Response::text(502, e.to_string()),
        }
    }
}

impl Party for Hostile {
    fn new(room: Room) -> Self {
        Self {
            room,
            starts: Cell::new(0),
        }
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
        match command.as_str() {
            // Awaits a request to this very room, which does the same: a
            // cycle that can only end when the host refuses or times out.
            "self-fetch" => self.fetch_self("/self-fetch").await,
            // Never answers.
            "never" => std::future::pending().await,
            // Awaits a request to this room that never answers.
            "await-never" => self.fetch_self("/never").await,
            _ => Response::text(200, format!("ok starts={}", self.starts.get())),
        }
    }
}

export_party!(Hostile);
