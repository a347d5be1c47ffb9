//! A party that misbehaves on command, for the host's isolation tests.
//! Each message names a misdeed; anything else is echoed with the number of
//! times this instance has started, so tests can see a restart.

// `invalid-utf8` hands the host a string that is not UTF-8, which safe
// Rust cannot make.
#![allow(unsafe_code)]

use partyhost_guest::{
    Connection, ConnectionContext, Message, Party, Request, Response, Room, export_party, join_all, now,
};

use std::cell::Cell;

struct Hostile {
    room: Room,
    starts: Cell<u64>,
}

/// How long after `spin-on-close` or `spin-alarm` the handler spins.
const SPIN_WINDOW_MS: u64 = 3000;

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

/// Writes `kib` KiB of storage in 64 KiB values; says where it stopped.
fn fill(kib: usize) -> String {
    let storage = partyhost_guest::Room::default().storage();
    let chunk = vec![7u8; 64 << 10];
    for i in 0..kib.div_ceil(64) {
        if let Err(e) = storage.put_bytes(&format!("fill/{i}"), &chunk) {
            return format!("filled {i} chunks, then {e}");
        }
    }
    format!("filled {kib} KiB")
}

/// Spins until the host stops the call.
fn spin() -> ! {
    loop {
        std::hint::spin_loop();
    }
}

impl Hostile {
    /// Starts `count` fetches to another room of this party in one call;
    /// says how many the host let through.
    async fn fetch_loop(&self, count: usize) -> String {
        let party = self.room.party();
        let fetches = (0..count).map(|_| self.room.fetch(&party, "sink", Request::get("/pong")));
        let results = join_all(fetches).await;
        let ok = results.iter().filter(|r| r.is_ok()).count();
        let refused =
            results.iter().find_map(|r| r.as_ref().err()).map(ToString::to_string).unwrap_or_default();
        format!("fetched {ok} of {count}; {refused}")
    }

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
        Self { room, starts: Cell::new(0) }
    }

    async fn on_start(&self) {
        if self.room.id() == "spins-on-start" {
            spin();
        }
        let starts: u64 = self.room.storage().get("starts").unwrap_or(0) + 1;
        self.starts.set(starts);
        let _ = self.room.storage().put("starts", &starts);
    }

    async fn on_message(&self, message: Message, sender: Connection) {
        let text = message.as_text().unwrap_or_default().to_owned();
        misbehave(&text);
        let starts = self.starts.get();
        let storage = self.room.storage();
        let reply = match text.split_once(':') {
            Some(("tagged", tag)) => format!("tagged {tag} = {}", self.room.connections_tagged(tag).len()),
            Some(("remember", value)) => match sender.set_state(&value) {
                Ok(()) => format!("remembered {value}"),
                Err(e) => format!("refused: {e}"),
            },
            Some(("recall", _)) => format!("recall {}", sender.state::<String>().unwrap_or_default()),
            Some(("broadcast", text)) => {
                self.room.broadcast(format!("broadcast {text} starts={starts}"), &[]);
                return;
            }
            Some(("alarm", ms)) => {
                storage.set_alarm(now() + ms.parse::<u64>().unwrap_or(0));
                format!("alarm set starts={starts}")
            }
            Some(("fill", kib)) => fill(kib.parse().unwrap_or(0)),
            // Broadcasts `kib` KiB `times` times in one call.
            Some(("flood", args)) => {
                let (kib, times) = args.split_once(':').unwrap_or((args, "1"));
                let big = "x".repeat(kib.parse::<usize>().unwrap_or(1) << 10);
                for _ in 0..times.parse().unwrap_or(1) {
                    self.room.broadcast(big.clone(), &[]);
                }
                format!("flooded starts={starts}")
            }
            Some(("fetch-other", party)) => match self.room.fetch(party, "x", Request::get("/")).await {
                Ok(response) => format!("fetched {}: {}", response.status, response.body_text()),
                Err(e) => format!("fetch refused: {e}"),
            },
            Some(("fetch-loop", count)) => self.fetch_loop(count.parse().unwrap_or(1)).await,
            Some(("alarms", count)) => {
                let count: u64 = count.parse().unwrap_or(1);
                for i in 0..count {
                    storage.set_alarm(now() + 60_000 + i);
                }
                format!("set {count} alarms starts={starts}")
            }
            Some(("print", count)) => {
                for i in 0..count.parse().unwrap_or(1) {
                    println!("line {i} of a guest that prints too much");
                }
                format!("printed starts={starts}")
            }
            // The next connection to close makes `on-close` spin. A window of
            // time, not a flag: a trapped call's writes are discarded, so the
            // handler could not clear a flag. Wide, so that a loaded machine
            // still closes the connection inside it.
            Some(("spin-on-close", _)) => {
                let _ = storage.put("spin-close-until", &(now() + SPIN_WINDOW_MS));
                format!("on-close will spin starts={starts}")
            }
            // The alarm handler spins when it fires within the window (an
            // alarm fires once, so it spins once).
            Some(("spin-alarm", ms)) => {
                let _ = storage.put("spin-until", &(now() + SPIN_WINDOW_MS));
                storage.set_alarm(now() + ms.parse::<u64>().unwrap_or(0));
                format!("alarm set to spin starts={starts}")
            }
            Some(("invalid-utf8", _)) => {
                // SAFETY: deliberately not upheld; the host must refuse it.
                let text = unsafe { String::from_utf8_unchecked(vec![b'o', b'k', 0xff, 0xfe]) };
                sender.send(text);
                return;
            }
            Some((what @ ("put-key" | "put-value"), len)) => {
                let len = len.parse().unwrap_or(0);
                let stored = match what {
                    "put-key" => storage.put_bytes(&"k".repeat(len), b"v"),
                    _ => storage.put_bytes("v", &vec![0; len]),
                };
                match stored {
                    Ok(()) => format!("stored {len} bytes"),
                    Err(e) => format!("refused: {e}"),
                }
            }
            _ => format!("echo {text} starts={starts}"),
        };
        sender.send(reply);
    }

    async fn on_connect(&self, _conn: Connection, ctx: ConnectionContext) {
        if ctx.request.url.contains("spin=connect") {
            spin();
        }
    }

    async fn on_error(&self, _conn: Connection, _error: String) {
        if self.room.id() == "spins-on-error" {
            spin();
        }
    }

    async fn on_close(&self, conn: Connection) {
        if self.room.storage().get::<u64>("spin-close-until").is_some_and(|until| now() < until) {
            spin();
        }
        // The closed connection's state is still readable here.
        if let Some(state) = conn.state::<String>() {
            self.room.broadcast(format!("closed {} with state {state}", conn.id()), &[]);
        }
    }

    fn get_connection_tags(&self, _conn: &Connection, ctx: &ConnectionContext) -> Vec<String> {
        // `?tag=x&tag=y` in the connection URL.
        let query = ctx.request.url.split_once('?').map_or("", |(_, q)| q);
        query.split('&').filter_map(|pair| pair.strip_prefix("tag=")).map(str::to_owned).collect()
    }

    async fn on_alarm(&self) {
        if self.room.storage().get::<u64>("spin-until").is_some_and(|until| now() < until) {
            spin();
        }
        let fired: u64 = self.room.storage().get("alarms-fired").unwrap_or(0) + 1;
        let _ = self.room.storage().put("alarms-fired", &fired);
        self.room.broadcast(format!("alarm fired starts={}", self.starts.get()), &[]);
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
            "pong" => Response::text(200, "pong"),
            "alarms-fired" => {
                let fired: u64 = self.room.storage().get("alarms-fired").unwrap_or(0);
                Response::text(200, format!("alarms fired {fired}"))
            }
            _ => Response::text(200, format!("ok starts={}", self.starts.get())),
        }
    }
}

export_party!(Hostile);
