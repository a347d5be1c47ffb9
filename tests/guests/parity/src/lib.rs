//! A test party for PartyKit's API as partyhost offers it: static gates
//! (`on_before_connect`, `on_before_request`) with the lobby's vars and
//! fetch, multi-key storage, paging with `start_after`, alarm retries,
//! `connection.uri`, close details and secrets read as vars; `log` and
//! `panic` commands feed the live tail.
//!
//! Gates: a WebSocket needs `?token=<TOKEN var>`; the gate adds `x-user`
//! (from `?user=`, or looked up with a fetch to room `directory` when
//! `?lookup=1`). An HTTP request to `.../secret` needs
//! `authorization: Bearer <TOKEN>`; every request passed gets `x-gated`.

use partyhost_guest::{
    AlarmInfo, Close, Connection, ConnectionContext, ListOptions, Lobby, Message, Party, Request, Response,
    Room, export_party, now,
};

struct Parity {
    room: Room,
}

impl Parity {
    fn command(&self, text: &str) -> String {
        let storage = self.room.storage();
        let (verb, rest) = text.split_once(' ').unwrap_or((text, ""));
        let words: Vec<&str> = rest.split(',').filter(|w| !w.is_empty()).collect();
        match verb {
            // `put-many a=1,b=2`: all or nothing.
            "put-many" => {
                let entries: Vec<(&str, String)> = words
                    .iter()
                    .map(|w| w.split_once('=').map_or((*w, String::new()), |(k, v)| (k, v.to_owned())))
                    .collect();
                match storage.put_many(&entries) {
                    Ok(()) => "ok".into(),
                    Err(e) => format!("refused: {e}"),
                }
            }
            // `put-keys N`: N keys at once.
            "put-keys" => {
                let n: usize = rest.parse().unwrap_or(0);
                let keys: Vec<String> = (0..n).map(|i| format!("k{i:04}")).collect();
                let entries: Vec<(&str, u32)> = keys.iter().map(|k| (k.as_str(), 1)).collect();
                match storage.put_many(&entries) {
                    Ok(()) => format!("put {n}"),
                    Err(e) => format!("refused: {e}"),
                }
            }
            // `put-big N`: N entries of 100 KiB each, at once.
            "put-big" => {
                let n: usize = rest.parse().unwrap_or(0);
                let keys: Vec<String> = (0..n).map(|i| format!("big{i}")).collect();
                let value = "x".repeat(100 << 10);
                let entries: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), value.as_str())).collect();
                match storage.put_many(&entries) {
                    Ok(()) => format!("put {n} big"),
                    Err(e) => format!("refused: {e}"),
                }
            }
            "get-many" => match storage.get_many::<serde_json::Value>(&words) {
                Ok(found) => {
                    let text = |v: serde_json::Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                    let found: Vec<String> =
                        found.into_iter().map(|(k, v)| format!("{k}={}", text(v))).collect();
                    found.join(",")
                }
                Err(e) => format!("refused: {e}"),
            },
            "delete-many" => match storage.delete_many(&words) {
                Ok(n) => format!("deleted {n}"),
                Err(e) => format!("refused: {e}"),
            },
            // `page <after>,<limit>`: keys after `after` (empty: from the start).
            "page" => {
                let after = words.first().filter(|a| **a != "-").map(|a| (*a).to_owned());
                let limit = words.get(1).and_then(|l| l.parse().ok());
                let options = ListOptions { start_after: after, limit, ..ListOptions::default() };
                match storage.list::<serde_json::Value>(&options) {
                    Ok(entries) => entries.into_iter().map(|(k, _)| k).collect::<Vec<_>>().join(","),
                    Err(e) => format!("refused: {e}"),
                }
            }
            "list-both" => {
                let options = ListOptions {
                    start: Some("a".into()),
                    start_after: Some("a".into()),
                    ..ListOptions::default()
                };
                match storage.list::<serde_json::Value>(&options) {
                    Ok(entries) => format!("listed {}", entries.len()),
                    Err(e) => format!("refused: {e}"),
                }
            }
            "log" => {
                partyhost_guest::log::warn(rest);
                "logged".into()
            }
            "panic" => panic!("asked to panic"),
            // `alarm-fail N`: the alarm's first N runs panic.
            "alarm-fail" => {
                let _ = storage.put("fail-runs", &rest.parse::<u32>().unwrap_or(0));
                storage.set_alarm(now());
                "alarm set".into()
            }
            _ => format!("unknown command {text:?}"),
        }
    }
}

impl Party for Parity {
    fn new(room: Room) -> Self {
        Self { room }
    }

    async fn on_before_connect(request: Request, lobby: Lobby) -> Result<Request, Response> {
        if request.query("trap").is_some() {
            panic!("the gate panicked on purpose");
        }
        if request.query("gate-put").is_some() {
            // Reaching past the SDK: a gate has no storage, and is told so.
            let refused = partyhost_guest::bindings::partyhost::party::storage::put("k", b"v");
            return Err(Response::text(409, format!("{refused:?}")));
        }
        let expected = lobby.env("TOKEN").unwrap_or_default();
        if request.query("token").as_deref() != Some(expected.as_str()) {
            return Err(Response::text(401, format!("bad token for room {}", lobby.id())));
        }
        if request.query("hang").is_some() {
            // Parks on a room that never answers, until the fetch times out.
            let waited = lobby.fetch(&lobby.party(), "sink", Request::get("/never")).await;
            return Err(Response::text(502, format!("{waited:?}")));
        }
        let user = match request.query("lookup") {
            Some(_) => {
                let token = request.query("token").unwrap_or_default();
                let path = format!("/user?token={token}");
                match lobby.fetch(&lobby.party(), "directory", Request::get(path)).await {
                    Ok(response) if response.status == 200 => response.body_text(),
                    Ok(response) => return Err(Response::text(403, response.body_text())),
                    Err(e) => return Err(Response::text(502, e.to_string())),
                }
            }
            None => request.query("user").unwrap_or_else(|| "anonymous".to_owned()),
        };
        let mut request = request;
        request.headers.push(("x-user".into(), user));
        Ok(request)
    }

    async fn on_before_request(request: Request, lobby: Lobby) -> Result<Request, Response> {
        if request.path().ends_with("/secret") {
            let expected = format!("Bearer {}", lobby.env("TOKEN").unwrap_or_default());
            if request.header("authorization") != Some(expected.as_str()) {
                return Err(Response::text(401, "unauthorized"));
            }
        }
        let mut request = request;
        request.headers.push(("x-gated".into(), lobby.id()));
        Ok(request)
    }

    async fn on_connect(&self, conn: Connection, ctx: ConnectionContext) {
        let user = ctx.request.header("x-user").unwrap_or("-").to_owned();
        conn.send(format!("hello {user} uri={}", conn.uri()));
    }

    async fn on_message(&self, message: Message, sender: Connection) {
        let reply = match message.as_text() {
            Some("close-me") => return sender.close_with(4000, "asked"),
            Some(text) => self.command(text),
            // Binary comes back binary, reversed.
            None => {
                let Message::Binary(mut bytes) = message else { return };
                bytes.reverse();
                return sender.send(Message::Binary(bytes));
            }
        };
        sender.send(reply);
    }

    async fn on_close(&self, conn: Connection, close: Close) {
        let line = format!("{} {} {:?} clean={}", conn.id(), close.code, close.reason, close.was_clean);
        let _ = self.room.storage().put(&format!("close/{}", conn.id()), &line);
    }

    async fn on_alarm(&self, info: AlarmInfo) {
        let storage = self.room.storage();
        let mut runs: Vec<u32> = storage.get("alarm-runs").unwrap_or_default();
        runs.push(info.retry_count);
        let fail_runs: u32 = storage.get("fail-runs").unwrap_or(0);
        if info.retry_count < fail_runs {
            // This write is undone with the failed call.
            let _ = storage.put("alarm-runs", &runs);
            panic!("alarm run {} fails on purpose", info.retry_count);
        }
        let _ = storage.put("alarm-runs", &runs);
        self.room.broadcast(format!("alarm ran, retry-count {}", info.retry_count), &[]);
    }

    async fn on_request(&self, request: Request) -> Response {
        let storage = self.room.storage();
        match request.path().rsplit('/').next().unwrap_or_default() {
            "user" => match request.query("token").as_deref() {
                Some("good") => Response::text(200, "looked-up-user"),
                _ => Response::text(404, "no such user"),
            },
            "secret" => Response::text(200, "the secret room"),
            "never" => std::future::pending().await,
            "closes" => {
                let options = ListOptions { prefix: Some("close/".into()), ..ListOptions::default() };
                let closes: Vec<String> = storage
                    .list::<String>(&options)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(_, v)| v)
                    .collect();
                Response::text(200, closes.join("\n"))
            }
            "alarm-runs" => Response::json(&storage.get::<Vec<u32>>("alarm-runs").unwrap_or_default()),
            "env" => {
                let name = request.query("name").unwrap_or_default();
                Response::text(200, self.room.env(&name).unwrap_or_else(|| "(unset)".into()))
            }
            _ => Response::text(200, format!("gated={}", request.header("x-gated").unwrap_or("no"))),
        }
    }
}

export_party!(Parity, on_before_connect, on_before_request);
