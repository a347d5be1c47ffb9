//! TypeScript and JavaScript parties (`main = "src/server.ts"`): PartyKit's
//! server API as the JavaScript runtime gives it (tests/js/probe.ts), a
//! hostile JavaScript party stopped like a Rust one (tests/js/hostile.js),
//! and the build in `dev`, `deploy` and `partyhost new --ts`. The example
//! parties' TypeScript twins run the wire tests of reactions.rs,
//! presence.rs, link_counter.rs, partysocket.rs and browser.rs.

use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

use crate::common::{
    Client, Examples, Tenant, TestHost, busy_machine, cli, cli_within, eventually, local_project, manifest,
    refused_upgrade, script_party, temp_dir, tenants_toml, within,
};

/// What a JavaScript build, or a rebuild and compile in `partyhost dev`,
/// may take on a loaded 2-core machine.
const BUILD: Duration = Duration::from_secs(120);

fn probe() -> &'static str {
    script_party("tests/js", "probe")
}

fn hostile() -> &'static str {
    script_party("tests/js", "hostile")
}

/// A host serving the probe party, with the token its gate asks for.
async fn probe_host(dir: &std::path::Path, extra: &str) -> Result<TestHost> {
    let toml = manifest(&[("probe", probe())], &format!("{extra}\n[parties.probe.vars]\nTOKEN = \"good\"\n"));
    TestHost::start(dir, &toml).await
}

async fn json_of(host: &TestHost, path: &str) -> Result<Value> {
    let (status, body) = host.http("GET", path, "").await?;
    anyhow::ensure!(status == 200, "{path}: {status} {body}");
    serde_json::from_str(&body).with_context(|| format!("{path}: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_is_durable_objects_storage_with_json_values() -> Result<()> {
    let dir = temp_dir();
    let host = probe_host(dir.path(), "").await?;
    assert_eq!(
        json_of(&host, "/parties/probe/s/storage").await?,
        json!({
            "single": { "n": 1, "list": [1, "two"], "nested": { "ok": true } },
            "many": { "k:a": 1, "k:c": 3 },
            "prefix": ["k:a", "k:b", "k:c", "k:d"],
            "range": ["k:b", "k:c"],
            "startAfter": ["k:c", "k:d"],
            "reverseLimit": ["k:d", "k:c"],
            "deletedOne": true,
            "deletedMany": 2,
            "after": ["k:c", "k:d", "one", "then 0"],
        })
    );
    // A refused put is a JavaScript error the party can catch.
    assert_eq!(
        host.http("GET", "/parties/probe/s/too-big", "").await?,
        (413, "Error: storage.put refused (too-large): value of key \"big\" is over 131072 bytes".to_owned())
    );
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gates_env_web_globals_logs_and_room_to_room_fetches() -> Result<()> {
    let dir = temp_dir();
    let host = probe_host(dir.path(), "").await?;
    let tail = host.local_rooms().tail().clone();
    let mut logs = tail.subscribe().context("a tail listener")?;

    let globals = json_of(&host, "/parties/probe/g/globals?q=1").await?;
    let timer = globals["timer"].as_str().unwrap_or_default().to_owned();
    assert!(timer.starts_with("Error: setTimeout(fn, 10) is not available in a partyhost party"), "{timer}");
    assert_eq!(
        globals,
        json!({
            "uuid": true, "random": true, "utf8": 6, "decoded": "héllo", "header": "Case", "query": "1",
            "gate": "request checked", "env": "good", "timer": timer, "order": ["deferred", "after"], "now": true,
        })
    );
    // console.* reaches the host's log (and the tail), at its level.
    let mut lines = Vec::new();
    while lines.len() < 2 {
        let event = within("a log line", logs.recv()).await?;
        lines.push((event.level.clone(), event.message.clone()));
    }
    assert_eq!(
        lines,
        [
            ("info".to_owned(), r#"a log line {"from":"probe"}"#.to_owned()),
            ("warn".to_owned(), "a warning".to_owned())
        ]
    );

    assert_eq!(
        json_of(&host, "/parties/probe/g/room").await?,
        json!({ "internalID": "probe/g", "name": "probe", "nobody": true, "inTransaction": 1 })
    );

    // onBeforeRequest refuses, or passes with a header onRequest sees.
    assert_eq!(
        host.http("GET", "/parties/probe/g/forbidden", "").await?,
        (401, "refused by the gate".to_owned())
    );
    let (status, body) = host.http("POST", "/parties/probe/g/ask-other", "").await?;
    assert_eq!((status, body.as_str()), (200, "201 across rooms POST"));

    // onBeforeConnect: a wrong token gets its 403 before any upgrade; the
    // right one passes with a header onConnect sees, and the URL as sent.
    let (status, body) = refused_upgrade(&host.ws_url("/parties/probe/lobby?token=bad")).await?;
    assert_eq!((status, body.as_str()), (403, "no entry to lobby"));
    let url = host.ws_url("/parties/probe/lobby?token=good&_pk=ann");
    let mut ann = Client::connect(&url).await?;
    let hello = ann.recv_json().await?;
    assert_eq!(hello["gate"], "checked lobby");
    assert_eq!(
        (&hello["id"], &hello["room"], &hello["party"]),
        (&json!("ann"), &json!("lobby"), &json!("probe"))
    );
    assert!(
        hello["uri"].as_str().is_some_and(|uri| uri.ends_with("/parties/probe/lobby?token=good&_pk=ann"))
    );
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_keep_state_attachments_and_tags_and_see_broadcasts_and_closes() -> Result<()> {
    let dir = temp_dir();
    // The instance is evicted between events: state lives with the host.
    let host = probe_host(dir.path(), "[rooms]\nidle_timeout_ms = 1").await?;
    let url = |id: &str, tag: &str| host.ws_url(&format!("/parties/probe/c?token=good&_pk={id}&tag={tag}"));
    let mut ann = Client::connect(&url("ann", "red")).await?;
    let mut bob = Client::connect(&url("bob", "blue")).await?;
    let mut cat = Client::connect(&url("cat", "red")).await?;
    for client in [&mut ann, &mut bob, &mut cat] {
        client.recv_json().await?;
    }

    ann.send_text("count").await?;
    assert_eq!(ann.recv_text().await?, "count 1 attachment null");
    ann.send_text("attach:kept apart").await?;
    assert_eq!(ann.recv_text().await?, r#"attached {"note":"kept apart"} state {"count":1}"#);
    tokio::time::sleep(Duration::from_millis(50)).await;
    ann.send_text("count").await?;
    assert_eq!(ann.recv_text().await?, r#"count 2 attachment {"note":"kept apart"}"#);

    ann.send_text("tagged:red").await?;
    assert_eq!(ann.recv_text().await?, "tagged red: ann,cat");

    // A broadcast skips `without`; binary frames arrive as ArrayBuffers.
    bob.send_text("shout:hi").await?;
    assert_eq!(ann.recv_text().await?, "shout hi from bob");
    assert_eq!(cat.recv_text().await?, "shout hi from bob");
    bob.send(Message::binary(vec![1, 2, 3])).await?;
    assert_eq!(bob.recv_binary().await?, vec![3, 2, 1]);

    // connection.close with a code, and onClose hears how each one ended.
    cat.send_text("count").await?;
    assert_eq!(cat.recv_text().await?, "count 1 attachment null");
    tokio::time::sleep(Duration::from_millis(50)).await;
    cat.send_text("close").await?;
    assert_eq!(cat.recv_close().await?, (4001, "asked to".to_owned()));
    bob.close(4000, "bye").await?;
    eventually("both closes to be stored", async || {
        Ok(json_of(&host, "/parties/probe/c/closed")
            .await?
            .as_object()
            .is_some_and(|closed| closed.len() == 2))
    })
    .await?;
    assert_eq!(
        json_of(&host, "/parties/probe/c/closed").await?,
        json!({
            "closed:bob": { "code": 4000, "reason": "bye", "wasClean": true, "state": null },
            "closed:cat": { "code": 4001, "reason": "asked to", "wasClean": true, "state": { "count": 1 } },
        })
    );
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_hibernate_in_the_class_lets_idle_instances_go_with_sockets_open() -> Result<()> {
    let dir = temp_dir();
    // The manifest says nothing of hibernation; the class's options do.
    let host = probe_host(dir.path(), "[rooms]\nidle_timeout_ms = 50").await?;
    let mut ann = Client::connect(&host.ws_url("/parties/probe/h?token=good&_pk=ann")).await?;
    ann.recv_json().await?;
    ann.send_text("count").await?;
    assert_eq!(ann.recv_text().await?, "count 1 attachment null");
    host.wait_for_stats("the idle instance to go", |stats| stats.rooms == 1 && stats.instances == 0).await;
    ann.send_text("count").await?;
    assert_eq!(ann.recv_text().await?, "count 2 attachment null", "the socket and its state stayed");
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_fire_with_their_retry_count_and_a_throwing_on_alarm_runs_again() -> Result<()> {
    let dir = temp_dir();
    let host = probe_host(dir.path(), "[rooms]\nalarm_retry_ms = 50").await?;
    // A second ahead: the host moves an alarm under 100 ms ahead to 100 ms.
    assert_eq!(json_of(&host, "/parties/probe/a1/alarm?in=1000").await?, json!({ "set": true }));
    eventually("the alarm to fire", async || {
        Ok(json_of(&host, "/parties/probe/a1/alarms").await?
            == json!([{ "retryCount": 0, "isRetry": false }]))
    })
    .await?;
    // Attempts 0 and 1 throw (their writes are rolled back); attempt 2 stays.
    assert_eq!(json_of(&host, "/parties/probe/a2/alarm?in=1000&fail").await?, json!({ "set": true }));
    eventually("the third attempt", async || {
        Ok(json_of(&host, "/parties/probe/a2/alarms").await? == json!([{ "retryCount": 2, "isRetry": true }]))
    })
    .await?;
    host.stop().await
}

/// What `hostile.js` answers to `ping`: how many instances it has started.
async fn starts(client: &mut Client) -> Result<u64> {
    client.send_text("ping").await?;
    let reply = client.recv_text().await?;
    Ok(reply.strip_prefix("pong starts=").with_context(|| format!("unexpected: {reply}"))?.parse()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_script_party_is_stopped_and_its_neighbours_keep_serving() -> Result<()> {
    let dir = temp_dir();
    let examples = Examples::typescript();
    let parties = [("hostile", hostile()), ("reactions", examples.reactions)];
    let toml = manifest(
        &parties,
        "[limits]\ncpu_ms = 100\nwall_ms = 2000\n[edge]\nrequest_timeout_ms = 1000\n[vars]\nRATE_LIMIT_MS = \"0\"",
    );
    let host = TestHost::start(dir.path(), &toml).await?;
    let tail = host.local_rooms().tail().clone();
    let mut logs = tail.subscribe().context("a tail listener")?;
    let mut neighbour = Client::connect(&host.ws_url("/parties/reactions/calm")).await?;
    neighbour.recv_json().await?;
    let mut victim = Client::connect(&host.ws_url("/parties/hostile/attacks")).await?;
    let mut before = starts(&mut victim).await?;

    let mut neighbour_answers = async || -> Result<()> {
        neighbour.send_json(json!({ "type": "reaction", "kind": "clap" })).await?;
        anyhow::ensure!(neighbour.recv_json().await?["type"] == "update", "the neighbour did not answer");
        Ok(())
    };
    // Each misdeed over HTTP: the status, what the body says, and whether it
    // cost the instance (a loop or a memory bomb traps; a JavaScript error,
    // deep recursion included, is caught and logged as in PartyKit).
    let misdeeds = [
        ("spin", "the room failed while handling the request (cpu_limit)", true),
        ("grow", "the room failed while handling the request (memory_limit)", true),
        ("recurse", "onRequest failed\n", false),
        ("throw", "onRequest failed\n", false),
        ("timer", "onRequest failed\n", false),
        ("interval", "onRequest failed\n", false),
        // Waits for nothing: the request's deadline answers, the room goes on.
        ("hang", "the request took longer than this host allows (1 s)", false),
    ];
    for (misdeed, answer, restarts) in misdeeds {
        let started = Instant::now();
        let (status, body) = host.http("GET", &format!("/parties/hostile/attacks/{misdeed}"), "").await?;
        let expected = if misdeed == "hang" { 408 } else { 500 };
        assert_eq!((status, body.as_str()), (expected, answer), "{misdeed}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{misdeed} held the room for {:?}",
            started.elapsed()
        );
        neighbour_answers().await.with_context(|| format!("after {misdeed}"))?;
        let now = starts(&mut victim).await.with_context(|| format!("after {misdeed}"))?;
        assert_eq!(now > before, restarts, "{misdeed}: instance starts went from {before} to {now}");
        before = now;
    }
    // A failing onStart fails the start: no handler runs on a half-made room.
    let (status, body) = host.http("GET", "/parties/hostile/bad-start/pong", "").await?;
    assert_eq!((status, body.as_str()), (503, "the room could not start; see the host log"));
    // A throwing or never-settling onMessage leaves the socket open.
    for misdeed in ["throw", "hang", "recurse"] {
        victim.send_text(misdeed).await?;
        assert_eq!(starts(&mut victim).await?, before, "the socket's room kept its instance after {misdeed}");
    }
    victim.send_text("spin").await?;
    assert!(starts(&mut victim).await? > before, "a spinning onMessage costs the instance");
    neighbour_answers().await?;

    // Each JavaScript error was logged with its message.
    let (mut errors, mut infos) = (Vec::new(), Vec::new());
    while let Ok(event) = logs.try_recv() {
        let line = event.message.lines().next().unwrap_or_default().to_owned();
        match (event.kind, event.level.as_str()) {
            ("log", "error") => errors.push(line),
            ("log", "info") => infos.push(line),
            _ => {}
        }
    }
    // A line logged at the module's top level arrives with the first event.
    assert!(infos.iter().any(|line| line == "hostile.js loaded"), "{infos:?}");
    for expected in [
        "onRequest threw: InternalError: too much recursion",
        "onRequest threw: Error: thrown on purpose",
        "onRequest threw: Error: setTimeout(fn, 1000) is not available in a partyhost party: nothing runs \
         between events, so the timer could never fire. Use this.room.storage.setAlarm(time) and onAlarm() \
         for work later; setTimeout(fn) with no delay runs fn later in the same event.",
        "onMessage threw: Error: thrown on purpose",
    ] {
        assert!(errors.iter().any(|e| e == expected), "no log line {expected:?} in {errors:#?}");
    }
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_rebuilds_a_typescript_party_on_save_and_keeps_its_sockets() -> Result<()> {
    let _busy = busy_machine();
    let dir = temp_dir();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src)?;
    let server = |greeting: &str| {
        format!(
            "import type * as Party from \"partykit/server\";\n\
             export default class Server implements Party.Server {{\n\
               constructor(readonly room: Party.Room) {{}}\n\
               onMessage(message: string, sender: Party.Connection) {{ sender.send(`{greeting} ${{message}}`); }}\n\
             }}\n"
        )
    };
    std::fs::write(src.join("server.ts"), server("hello"))?;
    let toml = "name = \"dev-ts\"\n[parties.main]\nmain = \"src/server.ts\"\n";
    std::fs::write(dir.path().join("partykit.toml"), toml)?;
    partyhost::js::build_all(&partyhost::manifest::Deployment::load(&dir.path().join("partykit.toml"))?)?;
    let host = TestHost::start_dev(dir.path(), toml).await?;
    let mut client = Client::connect(&host.ws_url("/parties/main/r")).await?;
    client.send_text("ann").await?;
    assert_eq!(client.recv_text().await?, "hello ann");

    // A type error is no build error (esbuild strips types), a syntax error is.
    std::fs::write(src.join("server.ts"), "export default class {")?;
    host.wait_for_reloads_within(BUILD, 0, 1).await;
    client.send_text("bob").await?;
    assert_eq!(client.recv_text().await?, "hello bob", "the previous version keeps serving");

    std::fs::write(src.join("server.ts"), server("welcome"))?;
    host.wait_for_reloads_within(BUILD, 1, 1).await;
    client.send_text("cat").await?;
    assert_eq!(client.recv_text().await?, "welcome cat", "the same socket reaches the new code");
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_deploys_a_typescript_project_built_on_its_own_machine() -> Result<()> {
    let _busy = busy_machine();
    let dir = temp_dir();
    let alice = Tenant::new(dir.path(), "alice", &[], "")?;
    // Not the Tenant's wasm parties: a script party, and its source.
    std::fs::create_dir_all(alice.dir.join("src"))?;
    std::fs::copy(
        crate::common::repo_root().join("guests-ts/src/reactions.ts"),
        alice.dir.join("src/reactions.ts"),
    )?;
    std::fs::copy(
        crate::common::repo_root().join("guests-ts/src/limiter.ts"),
        alice.dir.join("src/limiter.ts"),
    )?;
    std::fs::write(
        alice.dir.join("partykit.toml"),
        "name = \"alice\"\nmain = \"reactions\"\n[parties.reactions]\nmain = \"src/reactions.ts\"\n",
    )?;
    let host =
        TestHost::start_with_tenants(dir.path(), &local_project(), &tenants_toml(&[&alice], "")).await?;
    let answer = host.deploy(&alice).await?;
    assert_eq!(answer["parties"], json!(["reactions"]));
    // The host got the component, not the script: it never builds.
    let version = dir.path().join("data/projects/alice/versions/1");
    assert!(version.join(".partyhost/build/reactions.wasm").is_file());
    assert!(!version.join("src/reactions.ts").exists(), "the source was uploaded");

    let mut client = Client::connect(&host.ws_url(&alice.path("/parties/main/r"))).await?;
    assert_eq!(client.recv_json().await?, json!({ "type": "update", "reactions": {} }));
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partyhost_new_ts_scaffolds_a_project_that_builds_and_serves() -> Result<()> {
    let _busy = busy_machine();
    let dir = temp_dir();
    let manifest = dir.path().join("partykit.toml");
    let manifest_arg = manifest.display().to_string();
    let created = cli(&["new", "--ts", "chat", "--manifest", &manifest_arg]).await?;
    assert!(created.success, "{}", created.stderr);
    assert!(created.stdout.contains("next: partyhost dev"), "{}", created.stdout);
    let built = cli_within(BUILD, &["build", "--manifest", &manifest_arg]).await?;
    assert!(built.success, "{}", built.stderr);
    assert!(built.stderr.contains("chat: bundling"), "{}", built.stderr);

    let toml = std::fs::read_to_string(&manifest)?;
    let host = TestHost::start(dir.path(), &toml).await?;
    let mut client = Client::connect(&host.ws_url("/parties/main/lobby?_pk=ann")).await?;
    assert_eq!(client.recv_text().await?, "welcome to lobby: 0 messages so far");
    client.send_text("hi").await?;
    assert_eq!(client.recv_text().await?, "#1 from ann: hi");
    host.stop().await
}
