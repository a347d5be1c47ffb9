//! A party that misbehaves on command, for the host's isolation tests.
//! Each message names a misdeed; anything else is echoed with the number of
//! times this instance has started, so tests can see a restart.

// `invalid-utf8` hands the host a string that is not UTF-8, which safe
// Rust cannot make.
#![allow(unsafe_code)]

use partyhost_guest::{
    AlarmInfo, Close, Connection, ConnectionContext, ListOptions, Message, Party, Request, Response, Room,
    export_party, join_all, now, random_bytes,
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

/// Tries what WASI would let a guest reach beyond its room: files, the
/// host's environment and arguments, sockets, name lookups. Says, for
/// each, whether it was denied.
fn wasi_probes() -> String {
    fn verdict<T, E>(result: Result<T, E>) -> &'static str {
        if result.is_ok() { "ALLOWED" } else { "denied" }
    }
    let probes = [
        ("read", verdict(std::fs::read("/etc/passwd"))),
        ("write", verdict(std::fs::write("/tmp/partyhost-probe", b"x"))),
        ("list", verdict(std::fs::read_dir("/"))),
        ("cwd", verdict(std::fs::read_dir("."))),
        ("tcp", verdict(std::net::TcpStream::connect("127.0.0.1:1999"))),
        ("udp", verdict(std::net::UdpSocket::bind("127.0.0.1:0"))),
        ("dns", verdict(std::net::ToSocketAddrs::to_socket_addrs(&("localhost", 80)))),
    ];
    let mut report: Vec<String> = probes.iter().map(|(what, verdict)| format!("{what}={verdict}")).collect();
    report.push(format!("env={}", std::env::vars_os().count()));
    report.push(format!("args={}", std::env::args_os().count()));
    report.join(" ")
}

/// The party's vars, `times` times over: a loop of imports that each cost
/// the host far more than the guest when the vars are large.
fn vars_loop(times: usize) -> String {
    use partyhost_guest::bindings::partyhost::party::room;
    let mut bytes = 0;
    for _ in 0..times {
        bytes += room::vars().iter().map(|(name, value)| name.len() + value.len()).sum::<usize>();
    }
    format!("read {bytes} bytes of vars")
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
    fill_from(0, kib)
}

/// [`fill`] from chunk `first` on, so a large fill can take several calls.
fn fill_from(first: usize, kib: usize) -> String {
    let storage = partyhost_guest::Room::default().storage();
    let chunk = vec![7u8; 64 << 10];
    for i in first..first + kib.div_ceil(64) {
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

    /// Fetches 16 fresh rooms of this party, each of which does the same:
    /// without totals, one request would start rooms without end.
    async fn fan_out(&self) -> Response {
        let party = self.room.party();
        let rooms: Vec<String> = (0..16)
            .map(|_| {
                let id: String = random_bytes(6).iter().map(|b| format!("{b:02x}")).collect();
                format!("fan-{id}")
            })
            .collect();
        let fetches = rooms.iter().map(|room| self.room.fetch(&party, room, Request::get("/fanout")));
        let results = join_all(fetches).await;
        let ok = results.iter().filter(|r| r.as_ref().is_ok_and(|r| r.status == 200)).count();
        // The first refusal here, or one reported from further down.
        let refused = results.iter().find_map(|r| match r {
            Err(e) => Some(e.to_string()),
            Ok(inner) => Some(inner.body_text()).filter(|text| text.contains("refused: ")),
        });
        let refused = refused.map(|r| format!("refused: {}", r.trim_start_matches("fanned out to ")));
        Response::text(200, format!("fanned out to {ok} of 16; {}", refused.unwrap_or_default()))
    }

    /// Fetches one fresh room of this party, which does the same: a chain
    /// that only the hop limit ends.
    async fn chain(&self) -> Response {
        let id: String = random_bytes(6).iter().map(|b| format!("{b:02x}")).collect();
        match self.room.fetch(&self.room.party(), &format!("chain-{id}"), Request::get("/chain")).await {
            Ok(inner) => Response::text(200, format!("chain: {}", inner.body_text())),
            Err(e) => Response::text(200, format!("chain refused: {e}")),
        }
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

    #[allow(clippy::panic)]
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
            Some(("fill-from", args)) => {
                let (first, kib) = args.split_once(':').unwrap_or((args, "64"));
                fill_from(first.parse().unwrap_or(0), kib.parse().unwrap_or(0))
            }
            Some(("sleep", ms)) => {
                std::thread::sleep(std::time::Duration::from_millis(ms.parse().unwrap_or(0)));
                format!("slept starts={starts}")
            }
            Some(("vars-loop", times)) => vars_loop(times.parse().unwrap_or(1)),
            // Broadcasts `kib` KiB once, leaving out `ghosts` ids that name
            // no connection: every real connection still receives it.
            Some(("broadcast-without", args)) => {
                let (kib, ghosts) = args.split_once(':').unwrap_or((args, "0"));
                let ghosts: Vec<String> =
                    (0..ghosts.parse().unwrap_or(0)).map(|i| format!("ghost-{i}")).collect();
                let ghosts: Vec<&str> = ghosts.iter().map(String::as_str).collect();
                self.room.broadcast("x".repeat(kib.parse::<usize>().unwrap_or(1) << 10), &ghosts);
                format!("broadcast starts={starts}")
            }
            Some(("wasi-probes", _)) => wasi_probes(),
            // Writes and broadcasts, then fails: neither may ever be seen.
            Some(("write-broadcast-trap", _)) => {
                let _ = storage.put("doomed", &"written by a call that trapped");
                self.room.broadcast("a frame from a call that trapped", &[]);
                panic!("trapping after a write and a broadcast");
            }
            // An alarm that sets the next one for "now", every time.
            Some(("alarm-loop", _)) => {
                let _ = storage.put("alarm-loop", &true);
                storage.set_alarm(now());
                format!("alarm loop started starts={starts}")
            }
            Some(("stop-alarm-loop", _)) => {
                storage.delete("alarm-loop");
                storage.delete_alarm();
                let fired: u64 = storage.get("loop-fired").unwrap_or(0);
                format!("alarm loop fired {fired} times")
            }
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
            // For the cluster's tests: a write acknowledged only once durable.
            Some(("append", n)) => match storage.put(&format!("a:{n:0>10}"), &n) {
                Ok(()) => format!("acked {n}"),
                Err(e) => format!("refused: {e}"),
            },
            // `fetch-to:<party>:<room>:<path>`, answering with what came back.
            Some(("fetch-to", args)) => {
                let mut parts = args.splitn(3, ':');
                let (party, room, path) = (
                    parts.next().unwrap_or_default(),
                    parts.next().unwrap_or_default(),
                    parts.next().unwrap_or("/"),
                );
                match self.room.fetch(party, room, Request::get(path)).await {
                    Ok(response) => format!("fetched {}: {}", response.status, response.body_text()),
                    Err(e) => format!("fetch refused: {e}"),
                }
            }
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
            // A key given whole (NUL and all).
            Some(("put-named", key)) => match storage.put_bytes(key, b"v") {
                Ok(()) => format!("stored {key:?}"),
                Err(e) => format!("refused: {e}"),
            },
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

    async fn on_close(&self, conn: Connection, _close: Close) {
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

    async fn on_alarm(&self, _info: AlarmInfo) {
        if self.room.storage().get::<bool>("alarm-loop") == Some(true) {
            let fired: u64 = self.room.storage().get("loop-fired").unwrap_or(0) + 1;
            let _ = self.room.storage().put("loop-fired", &fired);
            self.room.storage().set_alarm(now());
            return;
        }
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
            // For the cluster's tests: how many `append`s are stored, and a
            // write that takes a while (a node can die during it).
            "appends" => {
                let options = ListOptions { prefix: Some("a:".into()), ..ListOptions::default() };
                let keys = self.room.storage().list_bytes(&options).map(|entries| entries.len());
                Response::text(200, format!("appends {}", keys.unwrap_or(0)))
            }
            "slow-append" => {
                std::thread::sleep(std::time::Duration::from_millis(1500));
                let _ = self.room.storage().put("a:slow", &"slow");
                Response::text(200, "slow appended")
            }
            "fanout" => self.fan_out().await,
            // A response of `?kib=N` KiB.
            "big" => {
                let kib = request.url.split("kib=").nth(1).and_then(|n| n.parse::<usize>().ok()).unwrap_or(1);
                Response::text(200, "x".repeat(kib << 10))
            }
            "chain" => self.chain().await,
            // Headers that are the host's to set, a cookie, and one
            // ordinary header: only the last two may pass (the cookie not
            // on the shared origin).
            "evil-headers" => {
                let mut response = Response::text(200, "the whole body");
                for (name, value) in [
                    ("content-length", "0"),
                    ("transfer-encoding", "chunked"),
                    ("connection", "keep-alive, x-smuggled"),
                    ("keep-alive", "timeout=999"),
                    ("upgrade", "websocket"),
                    ("trailer", "x-late"),
                    ("set-cookie", "session=tenant; Path=/"),
                    ("clear-site-data", "\"cookies\", \"storage\""),
                    ("strict-transport-security", "max-age=31536000; includeSubDomains"),
                    ("x-party", "ok"),
                ] {
                    response.headers.push((name.into(), value.into()));
                }
                response
            }
            "doomed" => Response::text(200, format!("{:?}", self.room.storage().get::<String>("doomed"))),
            "alarms-fired" => {
                let fired: u64 = self.room.storage().get("alarms-fired").unwrap_or(0);
                Response::text(200, format!("alarms fired {fired}"))
            }
            _ => Response::text(200, format!("ok starts={}", self.starts.get())),
        }
    }
}

export_party!(Hostile);
