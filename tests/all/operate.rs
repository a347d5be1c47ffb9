//! Running a host for others: secrets, the rooms listing, live logs,
//! health, readiness and metrics, each through the real `partyhost`
//! command and the HTTP API.

use anyhow::{Context, Result};
use std::time::Duration;

use crate::common::{
    Client, Tenant, TestHost, cli, eventually, local_project, manifest, partyhost_binary, refused_upgrade,
    temp_dir, tenants_toml, within,
};
use crate::guests;

/// The parity party, whose gate checks `?token=` against the TOKEN var.
const PARITY_VARS: &str = "[parties.parity.vars]\nTOKEN = \"good\"\n";

/// A manifest serving the parity party in rooms of 1 MiB.
fn small_parity() -> String {
    manifest(&[("parity", guests::PARITY)], "") + PARITY_VARS + "[parties.parity.limits]\nstorage_mib = 1\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_on_the_host_and_parties_read_them_as_vars() -> Result<()> {
    let dir = temp_dir();
    let alice = Tenant::new(dir.path(), "alice", &[("parity", guests::PARITY)], PARITY_VARS)?;
    let host =
        TestHost::start_with_tenants(dir.path(), &local_project(), &tenants_toml(&[&alice], "")).await?;
    let url = format!("http://{}", host.addr);
    let as_alice = ["--url", &url, "--project", "alice", "--token", &alice.token];

    // Set before the first deploy, kept for it.
    let set = cli(&[&["env", "set", "API_KEY", "s3cret"], &as_alice[..]].concat()).await?;
    assert!(set.success, "{set:?}");
    host.deploy(&alice).await?;
    let read =
        async |name: &str| host.http("GET", &format!("/p/alice/parties/parity/r/env?name={name}"), "").await;
    assert_eq!(read("API_KEY").await?, (200, "s3cret".to_owned()));

    // Over the HTTP API, over a manifest var, and the gate reads it too.
    let auth = format!("Bearer {}", alice.token);
    let put = host
        .http_with("PUT", "/_partyhost/projects/alice/env/TOKEN", &[("authorization", &auth)], "better")
        .await?;
    assert_eq!(put.status, 200, "{}", put.body);
    let room_url = |token: &str| format!("ws://{}/p/alice/parties/parity/r?token={token}", host.addr);
    assert_eq!(
        refused_upgrade(&room_url("good")).await?.0,
        401,
        "the manifest's value no longer lets anyone in"
    );
    let mut client = Client::connect(&room_url("better")).await?;
    assert!(client.recv_text().await?.starts_with("hello"));

    // Names come back, values never; another project's token gets nothing.
    let listed = cli(&[&["env", "list"], &as_alice[..]].concat()).await?;
    assert_eq!(listed.stdout, "API_KEY\nTOKEN\n", "{listed:?}");
    let wrong = host
        .http_with("GET", "/_partyhost/projects/alice/env", &[("authorization", "Bearer nope")], "")
        .await?;
    assert_eq!(wrong.status, 401);
    let refused = cli(&["env", "list", "--url", &url, "--project", "alice"]).await?;
    assert!(!refused.success && refused.stderr.contains("401"), "loopback is no tenant's token: {refused:?}");

    // On disk: the host's own file, readable by its user only, and in no
    // version of the bundle.
    let file = dir.path().join("data/projects/alice/secrets.json");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file)?.permissions());
    assert_eq!(mode & 0o777, 0o600);
    let versions = dir.path().join("data/projects/alice/versions");
    let leaked =
        walk(&versions)?.into_iter().find(|f| std::fs::read(f).is_ok_and(|b| contains(&b, b"s3cret")));
    assert_eq!(leaked, None, "a secret reached a deployed version's files");

    let removed = cli(&[&["env", "remove", "API_KEY"], &as_alice[..]].concat()).await?;
    assert!(removed.stdout.contains("removed API_KEY"), "{removed:?}");
    assert_eq!(read("API_KEY").await?, (200, "(unset)".to_owned()));
    let bad = host
        .http_with("PUT", "/_partyhost/projects/alice/env/1BAD", &[("authorization", &auth)], "x")
        .await?;
    assert_eq!(bad.status, 400, "{}", bad.body);
    drop(client);
    host.stop().await?;

    // They outlive the host.
    let host =
        TestHost::start_with_tenants(dir.path(), &local_project(), &tenants_toml(&[&alice], "")).await?;
    let mut client =
        Client::connect(&format!("ws://{}/p/alice/parties/parity/r?token=better", host.addr)).await?;
    assert!(client.recv_text().await?.starts_with("hello"));
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_reads_a_dotenv_beside_the_manifest_and_loopback_manages_the_local_project() -> Result<()> {
    let dir = temp_dir();
    std::fs::write(dir.path().join(".env"), "# local secrets\nAPI_KEY=\"from dotenv\"\n")?;
    let host = TestHost::start_dev(dir.path(), &manifest(&[("parity", guests::PARITY)], "")).await?;
    let (_, value) = host.http("GET", "/parties/parity/r/env?name=API_KEY", "").await?;
    assert_eq!(value, "from dotenv");

    // The operator on the host's own machine needs no token for its own
    // project (named `test` in its manifest).
    let url = format!("http://{}", host.addr);
    let set = cli(&["env", "set", "OTHER", "x", "--url", &url, "--project", "test"]).await?;
    assert!(set.success, "{set:?}");
    let (_, value) = host.http("GET", "/parties/parity/r/env?name=OTHER", "").await?;
    assert_eq!(value, "x");
    let listed = cli(&["env", "list", "--url", &url, "--project", "test"]).await?;
    assert_eq!(listed.stdout, "API_KEY\nOTHER\n");

    // An edited `.env` applies while serving; a malformed one is refused
    // and the values before it stay.
    std::fs::write(dir.path().join(".env"), "API_KEY=edited\n")?;
    host.wait_for_reloads(1, 0).await;
    assert_eq!(host.http("GET", "/parties/parity/r/env?name=API_KEY", "").await?.1, "edited");
    std::fs::write(dir.path().join(".env"), "API_KEY=x\nnot a line\n")?;
    host.wait_for_reloads(1, 1).await;
    assert_eq!(host.http("GET", "/parties/parity/r/env?name=API_KEY", "").await?.1, "edited");
    let deploy = cli(&["deploy", "--url", &url, "--project", "test", "--token", "t"]).await?;
    assert!(!deploy.success);
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_are_listed_with_connections_state_and_storage() -> Result<()> {
    let dir = temp_dir();
    let toml = format!(
        "name = \"test\"\n[rooms]\nidle_timeout_ms = 300\n[parties.parity]\nwasm = {:?}\nhibernate = true\n\
         {PARITY_VARS}[parties.plain]\nwasm = {:?}\n",
        guests::PARITY,
        guests::HOSTILE
    );
    let host = TestHost::start(dir.path(), &toml).await?;
    let url = |room: &str| host.ws_url(&format!("/parties/parity/{room}?token=good"));
    let mut a1 = Client::connect(&url("a")).await?;
    let mut a2 = Client::connect(&url("a")).await?;
    let _b = Client::connect(&url("b")).await?;
    for client in [&mut a1, &mut a2] {
        client.recv_text().await?;
    }
    a1.send_text("put-many k=v").await?;
    assert_eq!(a1.recv_text().await?, "ok");
    let (status, _) = host.http("GET", "/parties/plain/c/pong", "").await?;
    assert_eq!(status, 200);

    let listed = host.http("GET", "/_partyhost/projects/test/rooms?party=parity", "").await?;
    let rooms: serde_json::Value = serde_json::from_str(&listed.1)?;
    let a = &rooms["rooms"][0];
    assert_eq!(
        (a["party"].as_str(), a["id"].as_str(), a["connections"].as_u64()),
        (Some("parity"), Some("a"), Some(2))
    );
    assert_eq!(a["state"], "live");
    assert_eq!(a["storage_bytes"], 4, "key `k` and the JSON string \"v\"");
    assert_eq!(rooms["rooms"].as_array().map(Vec::len), Some(2), "only parity's rooms: {rooms}");

    // Idle, the hibernating party's instances go; their sockets stay.
    let url_text = format!("http://{}", host.addr);
    eventually("room a hibernates", async || {
        let out = cli(&["rooms", "--url", &url_text, "--project", "test", "--party", "parity"]).await?;
        Ok(out
            .stdout
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["parity", "a", "2", "hibernated", "4"]))
    })
    .await?;
    // Unfiltered (room `c` of `plain` has retired meanwhile: no sockets).
    let all = cli(&["rooms", "--url", &url_text, "--project", "test"]).await?;
    assert_eq!(all.stdout.lines().count(), 3, "a header and rooms a and b: {all:?}");
    let unknown = host.http("GET", "/_partyhost/projects/test/rooms?party=nope", "").await?;
    assert_eq!(unknown, (404, "project `test` has no party named `nope`".to_owned()));
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_streams_a_rooms_logs_traps_and_limit_hits_as_they_happen() -> Result<()> {
    let dir = temp_dir();
    let host = TestHost::start(dir.path(), &small_parity()).await?;
    let url = format!("http://{}", host.addr);

    // The real command, following room t1 only, as JSON lines.
    let mut tail = tokio::process::Command::new(partyhost_binary())
        .args(["tail", "--json", "--room", "t1", "--url", &url, "--project", "test"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = tail.stdout.take().context("no stdout")?;
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let mut next = async || -> Result<serde_json::Value> {
        let line = within("a tail line", lines.next_line()).await?.context("the tail ended")?;
        Ok(serde_json::from_str(&line)?)
    };
    assert_eq!(next().await?["kind"], "open");

    let mut other = Client::connect(&host.ws_url("/parties/parity/t2?token=good")).await?;
    other.recv_text().await?;
    assert_eq!(ask(&mut other, "log not for this tail").await?, "logged");
    let mut client = Client::connect(&host.ws_url("/parties/parity/t1?token=good")).await?;
    client.recv_text().await?;
    assert_eq!(ask(&mut client, "log hello from t1").await?, "logged");
    assert!(ask(&mut client, "put-big 11").await?.starts_with("refused"));
    client.send_text("panic").await?;

    let log = next().await?;
    assert_eq!((log["kind"].as_str(), log["level"].as_str()), (Some("log"), Some("warn")), "{log}");
    assert_eq!(
        (log["party"].as_str(), log["room"].as_str(), log["message"].as_str()),
        (Some("parity"), Some("t1"), Some("hello from t1"))
    );
    let limit = next().await?;
    assert_eq!(
        (limit["kind"].as_str(), limit["level"].as_str()),
        (Some("limit"), Some("storage")),
        "{limit}"
    );
    // The panic's message is logged by the guest, then the call traps.
    let mut trap = next().await?;
    while trap["kind"] == "log" {
        trap = next().await?;
    }
    assert_eq!((trap["kind"].as_str(), trap["level"].as_str()), (Some("trap"), Some("panic")), "{trap}");
    assert!(trap["message"].as_str().is_some_and(|m| m.starts_with("call failed")), "{trap}");

    // The HTTP API, unfiltered, and a stream that ends with the host.
    let mut stream = tokio::net::TcpStream::connect(host.addr).await?;
    let head = format!("GET /_partyhost/projects/test/tail HTTP/1.1\r\nhost: {}\r\n\r\n", host.addr);
    tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes()).await?;
    let mut reader = tokio::io::BufReader::new(stream);
    let mut seen = String::new();
    while !seen.contains("\"kind\":\"open\"") {
        let mut line = String::new();
        within("the tail's head", tokio::io::AsyncBufReadExt::read_line(&mut reader, &mut line)).await?;
        seen.push_str(&line);
    }
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert_eq!(ask(&mut other, "log now everyone hears t2").await?, "logged");
    let mut rest = String::new();
    while !rest.contains("now everyone hears t2") {
        within("t2's line", tokio::io::AsyncBufReadExt::read_line(&mut reader, &mut rest)).await?;
    }
    host.stop().await?;
    let ended = within("the command ends with the host", tail.wait()).await?;
    assert!(ended.success(), "{ended:?}");
    Ok(())
}

async fn ask(client: &mut Client, command: &str) -> Result<String> {
    client.send_text(command).await?;
    client.recv_text().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_up_at_once_and_ready_only_once_every_party_serves() -> Result<()> {
    let dir = temp_dir();
    let toml = manifest(&[("parity", guests::PARITY), ("plain", guests::HOSTILE)], "") + PARITY_VARS;
    let deployment = partyhost::manifest::Deployment::parse(&toml, dir.path())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    // Nothing compiled yet (a fresh cache): the host takes a while.
    let starting = tokio::spawn(partyhost::Host::start(deployment, listener, shutdown.clone()));
    let mut answers = Vec::new();
    within("ready", async {
        loop {
            let health = crate::common::raw_http(addr, "GET", "/_partyhost/health", &[], "").await;
            let ready = crate::common::raw_http(addr, "GET", "/_partyhost/ready", &[], "").await;
            let room = crate::common::raw_http(addr, "GET", "/parties/plain/r/pong", &[], "").await;
            if let (Ok(health), Ok(ready), Ok(room)) = (health, ready, room) {
                answers.push((
                    health.status,
                    ready.status,
                    room.status,
                    room.header("retry-after").map(str::to_owned),
                ));
                if ready.status == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    let host = within("started", starting).await??;
    assert!(answers.iter().all(|(health, ..)| *health == 200), "{answers:?}");
    let waiting = answers.iter().find(|(_, ready, ..)| *ready == 503).context("no 503 seen before ready")?;
    assert_eq!((waiting.2, waiting.3.as_deref()), (503, Some("1")), "party routes wait too: {answers:?}");
    let last = answers.last().context("no answers")?;
    assert_eq!((last.1, last.2), (200, 200), "ready means the parties serve: {answers:?}");
    shutdown.cancel();
    host.wait().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_messages_calls_commits_rooms_and_limit_hits() -> Result<()> {
    let dir = temp_dir();
    let host = TestHost::start(dir.path(), &small_parity()).await?;
    let mut client = Client::connect(&host.ws_url("/parties/parity/m?token=good")).await?;
    client.recv_text().await?;
    for _ in 0..3 {
        assert_eq!(ask(&mut client, "put-many a=1").await?, "ok");
    }
    assert!(ask(&mut client, "put-big 11").await?.starts_with("refused"));

    let series = |text: &str, name: &str| -> f64 {
        text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(-1.0)
    };
    // A frame is counted once written, a moment after the client has it.
    let out = "partyhost_messages_out_total{project=\"test\"}";
    eventually("hello and four answers counted", async || {
        Ok(series(&host.http("GET", "/_partyhost/metrics", "").await?.1, out) == 5.0)
    })
    .await?;
    let metrics = host.http("GET", "/_partyhost/metrics", "").await?;
    assert_eq!(metrics.0, 200);
    let value = |name: &str| series(&metrics.1, name);
    assert_eq!(value("partyhost_messages_in_total{project=\"test\"}"), 4.0, "{}", metrics.1);
    assert_eq!(value("partyhost_connections{project=\"test\"}"), 1.0);
    assert_eq!(
        value("partyhost_guest_call_seconds_count{project=\"test\",party=\"parity\",handler=\"on-message\"}"),
        4.0
    );
    assert_eq!(
        value(
            "partyhost_guest_call_seconds_count{project=\"test\",party=\"parity\",handler=\"on-before-connect\"}"
        ),
        1.0
    );
    // What the party is (its gates, whether it hibernates) is asked once.
    assert_eq!(
        value("partyhost_guest_call_seconds_count{project=\"test\",party=\"parity\",handler=\"traits\"}"),
        1.0
    );
    assert!(value("partyhost_commit_seconds_count{project=\"test\"}") >= 1.0);
    assert_eq!(value("partyhost_rooms{project=\"test\"}"), 1.0);
    assert_eq!(value("partyhost_rooms_live{project=\"test\"}"), 1.0);
    assert_eq!(value("partyhost_limit_hits_total{project=\"test\",limit=\"storage\"}"), 1.0);
    assert_eq!(value("partyhost_compile_seconds_count"), 1.0);
    assert!(metrics.1.ends_with("# EOF\n"));

    // Not for a page that rebound its own name to 127.0.0.1, nor for
    // clients a reverse proxy forwards (they all come from loopback).
    let rebound = host.http_with("GET", "/_partyhost/metrics", &[("host", "evil.example")], "").await?;
    assert_eq!(rebound.status, 401);
    let origin = [("origin", "http://evil.example")];
    assert_eq!(host.http_with("GET", "/_partyhost/metrics", &origin, "").await?.status, 401);
    let proxied = [("x-forwarded-for", "203.0.113.9")];
    assert_eq!(host.http_with("GET", "/_partyhost/metrics", &proxied, "").await?.status, 401);
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_token_opens_a_tenants_project_but_deploys_nothing_to_the_hosts() -> Result<()> {
    let dir = temp_dir();
    let alice = Tenant::new(dir.path(), "alice", &[("parity", guests::PARITY)], PARITY_VARS)?;
    let (operator, hash) = partyhost::manifest::new_token()?;
    let tenants = partyhost::manifest::Tenants::parse(&tenants_toml(&[&alice], ""))?;
    let options = partyhost::Options {
        tenants: Some(tenants),
        operator_token: partyhost::manifest::TokenHash::parse(&hash),
        ..partyhost::Options::default()
    };
    let host = TestHost::start_with(dir.path(), &local_project(), options).await?;
    host.deploy(&alice).await?;
    let as_operator = format!("Bearer {operator}");
    let rooms = host
        .http_with("GET", "/_partyhost/projects/alice/rooms", &[("authorization", &as_operator)], "")
        .await?;
    assert_eq!(rooms.status, 200, "{}", rooms.body);
    let without = host.http("GET", "/_partyhost/projects/alice/rooms", "").await?;
    assert_eq!(without.0, 401, "loopback alone is no tenant's operator");
    let deploy =
        host.http_with("PUT", "/_partyhost/projects/test", &[("authorization", &as_operator)], "{}").await?;
    assert_eq!(deploy.status, 400, "{}", deploy.body);
    host.stop().await
}

fn walk(dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(walk(&path)?);
        } else {
            files.push(path);
        }
    }
    Ok(files)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_one_object_per_line() -> Result<()> {
    let dir = temp_dir();
    let manifest_file = dir.path().join("partykit.toml");
    std::fs::write(&manifest_file, small_parity())?;
    let mut host = tokio::process::Command::new(partyhost_binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json", "--manifest"])
        .arg(&manifest_file)
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stderr = host.stderr.take().context("no stderr")?;
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
    let ready = within("the host's `ready` line", async {
        loop {
            let line = lines.next_line().await?.context("the host ended")?;
            let entry: serde_json::Value =
                serde_json::from_str(&line).with_context(|| format!("not a JSON line: {line}"))?;
            if entry["fields"]["message"] == "ready" {
                return anyhow::Ok(entry);
            }
        }
    })
    .await?;
    assert_eq!(ready["level"], "INFO", "{ready}");
    assert!(ready["fields"]["addr"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")), "{ready}");
    host.kill().await?;
    Ok(())
}
