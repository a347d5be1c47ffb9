//! Multi-tenant hosting: projects deploy through the admin API with their
//! own tokens, switch versions atomically while sockets stay open, roll
//! back, live in separate namespaces, and a bad deployment changes nothing.

use anyhow::Result;
use serde_json::json;

use crate::common::{Client, Tenant, TestHost, eventually, local_project, temp_dir, tenants_toml};
use crate::guests::{COMMAND, COUNTER, HOSTILE, REACTIONS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_switches_atomically_and_rolls_back() -> Result<()> {
    let dir = temp_dir();
    // The example's limiter is off: this test reacts faster than a person.
    let extra = "main = \"reactions\"\n[vars]\nRATE_LIMIT_MS = \"0\"";
    let alice = Tenant::new(dir.path(), "alice", &[("reactions", REACTIONS)], extra)?;
    let host =
        TestHost::start_with_tenants(dir.path(), &local_project(), &tenants_toml(&[&alice], "")).await?;
    assert_eq!(host.project_status(&alice).await?["version"], json!(null), "nothing deployed yet");

    let v1 = host.deploy(&alice).await?;
    assert_eq!((v1["version"].clone(), v1["parties"].clone()), (json!(1), json!(["reactions"])));
    let mut socket = Client::connect(&host.ws_url(&alice.path("/parties/main/lobby"))).await?;
    assert_eq!(socket.recv_json().await?["reactions"], json!({}));
    socket.send_json(json!({ "type": "reaction", "kind": "clap" })).await?;
    assert_eq!(socket.recv_json().await?["reactions"], json!({ "clap": 1 }));

    // Version 2 adds a party. The open socket is served by the new code at
    // its next event, with the room's storage intact.
    let mut toml = std::fs::read_to_string(alice.dir.join("partykit.toml"))?;
    std::fs::copy(COUNTER, alice.dir.join("counter.wasm"))?;
    toml.push_str("[parties.counter]\nwasm = \"counter.wasm\"\n");
    std::fs::write(alice.dir.join("partykit.toml"), toml)?;
    let v2 = host.deploy(&alice).await?;
    assert_eq!((v2["version"].clone(), v2["parties"].clone()), (json!(2), json!(["counter", "reactions"])));
    socket.send_json(json!({ "type": "reaction", "kind": "clap" })).await?;
    assert_eq!(socket.recv_json().await?["reactions"], json!({ "clap": 2 }));
    let (status, _) = host.http("GET", &alice.path("/parties/counter/all-pages"), "").await?;
    assert_eq!(status, 400, "the counter party answers (its original's 400)");

    // Rollback: version 1 again, the counter party is gone, the socket stays.
    let back = crate::common::within("rollback", rollback(&host, &alice)).await?;
    assert_eq!((back.0, back.1["version"].clone()), (200, json!(1)));
    let (status, body) = host.http("GET", &alice.path("/parties/counter/all-pages"), "").await?;
    assert_eq!(status, 404, "{body}");
    socket.send_json(json!({ "type": "reaction", "kind": "heart" })).await?;
    assert_eq!(socket.recv_json().await?["reactions"], json!({ "clap": 2, "heart": 1 }));
    let (status, body) = rollback(&host, &alice).await?;
    assert_eq!(status, 409, "{body}");
    assert_eq!(host.project_status(&alice).await?["version"], json!(1));
    drop(socket);
    host.stop().await?;

    // A restarted host serves the version that was serving, with its storage.
    let host =
        TestHost::start_with_tenants(dir.path(), &local_project(), &tenants_toml(&[&alice], "")).await?;
    assert_eq!(host.project_status(&alice).await?["version"], json!(1));
    let (status, body) = host.http("GET", &alice.path("/parties/main/lobby"), "").await?;
    assert_eq!((status, body.as_str()), (200, r#"{"type":"update","reactions":{"clap":2,"heart":1}}"#));
    host.stop().await
}

async fn rollback(host: &TestHost, project: &Tenant) -> Result<(u16, serde_json::Value)> {
    let auth = format!("Bearer {}", project.token);
    let path = format!("/_partyhost/projects/{}/rollback", project.name);
    let response = host.http_with("POST", &path, &[("authorization", &auth)], "").await?;
    let body = serde_json::from_str(&response.body).unwrap_or(json!(response.body));
    Ok((response.status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projects_are_separate_namespaces() -> Result<()> {
    let dir = temp_dir();
    let alice = Tenant::new(
        dir.path(),
        "alice",
        &[("reactions", REACTIONS), ("hostile", HOSTILE)],
        "serve = \"public\"",
    )?;
    std::fs::create_dir_all(alice.dir.join("public"))?;
    std::fs::write(alice.dir.join("public/index.html"), "alice's page")?;
    let bob = Tenant::new(dir.path(), "bob", &[("reactions", REACTIONS), ("vault", HOSTILE)], "")?;
    let host = TestHost::start_with_tenants(dir.path(), &local_project(), &tenants_toml(&[&alice, &bob], ""))
        .await?;
    host.deploy(&alice).await?;
    host.deploy(&bob).await?;

    // The same party and room name in each project are different rooms.
    let mut in_alice = Client::connect(&host.ws_url(&alice.path("/parties/reactions/lobby"))).await?;
    in_alice.recv_json().await?;
    in_alice.send_json(json!({ "type": "reaction", "kind": "clap" })).await?;
    assert_eq!(in_alice.recv_json().await?["reactions"], json!({ "clap": 1 }));
    let empty = r#"{"type":"update","reactions":{}}"#;
    assert_eq!(host.http("GET", &bob.path("/parties/reactions/lobby"), "").await?.1, empty);
    assert_eq!(host.http("GET", "/parties/reactions/lobby", "").await?.1, empty, "nor the local project");

    // A project's host name reaches it, like PartyKit's <name>.<user>.partykit.dev.
    let by_name =
        host.http_with("GET", "/parties/reactions/lobby", &[("host", "alice.partyhost.test")], "").await?;
    assert_eq!(by_name.body, r#"{"type":"update","reactions":{"clap":1}}"#);
    // Static files travel with the deployment and are served in the project only.
    let page = host.http_with("GET", "/", &[("host", "alice.partyhost.test:1999")], "").await?;
    assert_eq!((page.status, page.body.as_str()), (200, "alice's page"));
    assert_eq!(host.http("GET", &alice.path("/index.html"), "").await?.1, "alice's page");
    assert_eq!(host.http("GET", &bob.path("/index.html"), "").await?.0, 404);
    let unknown = host.http_with("GET", "/", &[("host", "carol.partyhost.test")], "").await?;
    assert_eq!(
        (unknown.status, unknown.body.as_str()),
        (404, "no project named `carol` is deployed on this host")
    );

    // fetch cannot leave the project: bob's `vault` does not exist for alice.
    let mut guest = Client::connect(&host.ws_url(&alice.path("/parties/hostile/probe"))).await?;
    guest.send_text("fetch-other:vault").await?;
    assert_eq!(
        guest.recv_text().await?,
        "fetch refused: fetch failed: fetch to vault/x failed: no party named `vault`"
    );
    guest.send_text("fetch-other:reactions").await?;
    assert!(guest.recv_text().await?.starts_with("fetched 200"), "its own parties it reaches");

    // Each project has its own storage file.
    let storage = |p: &str| dir.path().join(format!("data/projects/{p}/storage.sqlite"));
    assert!(storage("alice").exists() && storage("bob").exists());

    // Tokens are per project.
    let bobs_token = format!("Bearer {}", bob.token);
    let as_bob =
        host.http_with("GET", "/_partyhost/projects/alice", &[("authorization", &bobs_token)], "").await?;
    assert_eq!((as_bob.status, as_bob.body.as_str()), (401, "not a valid token for project `alice`"));
    host.stop().await
}

/// Deploys `project` after `change` and returns the host's refusal.
async fn refusal(
    host: &TestHost,
    project: &Tenant,
    change: impl FnOnce(&std::path::Path) -> Result<()>,
) -> String {
    change(&project.dir).unwrap_or_else(|e| panic!("{e}"));
    match host.deploy(project).await {
        Ok(answer) => panic!("deployed: {answer}"),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_deployment_gets_an_exact_error_and_changes_nothing() -> Result<()> {
    let dir = temp_dir();
    let alice = Tenant::new(dir.path(), "alice", &[("reactions", REACTIONS)], "")?;
    let caps = "max_wasm_mib = 1\n[caps]\ncpu_ms = 100\n";
    let host =
        TestHost::start_with_tenants(dir.path(), &local_project(), &tenants_toml(&[&alice], caps)).await?;
    host.deploy(&alice).await?;
    let manifest = alice.dir.join("partykit.toml");
    let good = std::fs::read_to_string(&manifest)?;
    let write =
        |text: String| move |dir: &std::path::Path| Ok(std::fs::write(dir.join("partykit.toml"), text)?);

    let wrong_token = Tenant { token: "not-the-token".into(), ..Tenant::new(dir.path(), "alice", &[], "")? };
    std::fs::write(&manifest, &good)?;
    let refused = host.deploy(&wrong_token).await.map(|_| ()).expect_err("a wrong token deployed");
    assert_eq!(
        format!("{refused:#}"),
        "the host refused (401 Unauthorized): not a valid token for project `alice`"
    );

    let cases: Vec<(String, &str)> = vec![
        (
            refusal(&host, &alice, |d| {
                std::fs::write(d.join("junk.wasm"), b"\0asm\x01\0\0\0")?;
                write(good.replace("reactions.wasm", "junk.wasm"))(d)
            })
            .await,
            "the host refused (400 Bad Request): junk.wasm: not a WebAssembly component",
        ),
        (
            refusal(&host, &alice, |d| {
                std::fs::copy(COMMAND, d.join("command.wasm"))?;
                write(good.replace("reactions.wasm", "command.wasm"))(d)
            })
            .await,
            "from command.wasm: it does not export the partyhost:party world: no exported instance named `partyhost:party/handlers@0.2.0`",
        ),
        (
            refusal(&host, &alice, |d| {
                std::fs::write(d.join("big.wasm"), vec![0; 2 << 20])?;
                write(good.replace("reactions.wasm", "big.wasm"))(d)
            })
            .await,
            "the host refused (413 Payload Too Large): file \"big.wasm\" is 2097152 bytes; this host accepts files up to 1048576 bytes",
        ),
        (
            refusal(&host, &alice, write(format!("{good}[parties.reactions.limits]\ncpu_ms = 1000\n"))).await,
            "the host refused (400 Bad Request): partykit.toml: party `reactions`: `cpu_ms = 1000` is over this host's cap of 100",
        ),
        (
            refusal(&host, &alice, write(good.replace("wasm = \"reactions.wasm\"", "wasm = 3"))).await,
            "invalid type: integer `3`, expected path string",
        ),
    ];
    for (error, expected) in &cases {
        assert!(error.contains(expected), "expected {expected:?} in:\n{error}");
    }
    assert!(cases[4].0.contains("partykit.toml: TOML parse error at line 4, column 8"), "{}", cases[4].0);

    // The client checks the manifest before uploading; the host checks it
    // again, with the same exact message.
    let auth = format!("Bearer {}", alice.token);
    let broken = json!({ "manifest": "name = \"alice\"\n[parties.x]\nwasm = 3\n", "files": {} });
    let refused = host
        .http_with("PUT", "/_partyhost/projects/alice", &[("authorization", &auth)], &broken.to_string())
        .await?;
    assert_eq!(refused.status, 400);
    assert!(
        refused.body.starts_with("partykit.toml: TOML parse error at line 3, column 8"),
        "{}",
        refused.body
    );
    assert!(refused.body.ends_with("invalid type: integer `3`, expected path string\n"), "{}", refused.body);

    // A path out of the project, and a file name with `..`, sent raw.
    let escape =
        json!({ "manifest": "name = \"alice\"\n[parties.x]\nwasm = \"../../../x.wasm\"\n", "files": {} });
    let refused = host
        .http_with("PUT", "/_partyhost/projects/alice", &[("authorization", &auth)], &escape.to_string())
        .await?;
    assert_eq!(
        (refused.status, refused.body.as_str()),
        (
            400,
            "partykit.toml: party `x`: wasm \"../../../x.wasm\" must be a relative path inside the project"
        )
    );
    let sneaky = json!({ "manifest": good, "files": { "../../escape.wasm": "AAAA" } });
    let refused = host
        .http_with("PUT", "/_partyhost/projects/alice", &[("authorization", &auth)], &sneaky.to_string())
        .await?;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        !dir.path().join("data/escape.wasm").exists()
            && !dir.path().join("data/projects/escape.wasm").exists()
    );

    // Nothing changed: version 1 still serves.
    assert_eq!(host.project_status(&alice).await?["version"], json!(1));
    let (status, _) = host.http("GET", &alice.path("/parties/reactions/lobby"), "").await?;
    assert_eq!(status, 200);
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_project_looks_like_a_wrong_token_and_a_tenants_host_settings_are_ignored() -> Result<()> {
    let dir = temp_dir();
    // A tenant's manifest naming the host's own settings: where data lives,
    // where to listen, how rooms idle, what to build.
    let extra = "data_dir = \"../escaped\"\nlisten = \"0.0.0.0:1\"\n[rooms]\nidle_timeout_ms = 1\n\
                 [parties.reactions.build]\ncommand = \"touch built-on-the-host\"\nwatch = [\"src\"]\n";
    let alice = Tenant::new(dir.path(), "alice", &[("reactions", REACTIONS)], extra)?;
    let host =
        TestHost::start_with_tenants(dir.path(), &local_project(), &tenants_toml(&[&alice], "")).await?;
    host.deploy(&alice).await?;
    let mut socket = Client::connect(&host.ws_url(&alice.path("/parties/reactions/r"))).await?;
    socket.recv_json().await?;
    socket.send_json(json!({ "type": "reaction", "kind": "clap" })).await?;
    assert_eq!(socket.recv_json().await?["reactions"], json!({ "clap": 1 }));
    // Storage is where the host keeps the project's, nowhere the manifest said.
    assert!(dir.path().join("data/projects/alice/storage.sqlite").exists());
    let escaped = [dir.path().join("escaped"), dir.path().join("data/projects/alice/versions/escaped")];
    assert!(escaped.iter().all(|p| !p.exists()), "storage followed the tenant's data_dir");
    // `build` is for `partyhost dev` on one's own machine: never run here.
    let built = [
        dir.path().join("built-on-the-host"),
        dir.path().join("data/projects/alice/versions/1/built-on-the-host"),
    ];
    assert!(built.iter().all(|p| !p.exists()), "the host ran a tenant's build command");
    // The host's idle timeout (10 s), not the tenant's 1 ms: a room left
    // empty is still running a moment later.
    drop(socket);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let status = host.project_status(&alice).await?;
    assert_eq!(status["rooms"], json!(1), "{status}");

    // No project of that name and a wrong token for a real one: the same
    // answer, so a token cannot probe for names.
    let token = format!("Bearer {}", alice.token);
    let unknown =
        host.http_with("GET", "/_partyhost/projects/nobody", &[("authorization", &token)], "").await?;
    let wrong =
        host.http_with("GET", "/_partyhost/projects/alice", &[("authorization", "Bearer x")], "").await?;
    assert_eq!((unknown.status, wrong.status), (401, 401));
    assert_eq!(unknown.body.replace("nobody", "NAME"), wrong.body.replace("alice", "NAME"));
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_wakes_its_own_projects_room_and_no_other() -> Result<()> {
    let dir = temp_dir();
    let alice = Tenant::new(dir.path(), "alice", &[("hostile", HOSTILE)], "")?;
    let bob = Tenant::new(dir.path(), "bob", &[("hostile", HOSTILE)], "")?;
    let host = TestHost::start_with_tenants(dir.path(), &local_project(), &tenants_toml(&[&alice, &bob], ""))
        .await?;
    host.deploy(&alice).await?;
    host.deploy(&bob).await?;
    // The same party and room id in both projects; only alice's sets an alarm.
    let fired = async |project: &Tenant| -> Result<String> {
        Ok(host.http("GET", &project.path("/parties/hostile/same/alarms-fired"), "").await?.1)
    };
    assert_eq!(fired(&bob).await?, "alarms fired 0");
    let mut socket = Client::connect(&host.ws_url(&alice.path("/parties/hostile/same"))).await?;
    socket.send_text("alarm:200").await?;
    assert!(socket.recv_text().await?.starts_with("alarm set"));
    assert!(socket.recv_text().await?.starts_with("alarm fired"), "alice's room woke");
    assert_eq!(fired(&alice).await?, "alarms fired 1");
    assert_eq!(fired(&bob).await?, "alarms fired 0", "bob's room of the same name did not");
    drop(socket);
    host.stop().await?;

    // Nor after a restart, when alarms come back from each project's file.
    let host = TestHost::start_with_tenants(dir.path(), &local_project(), &tenants_toml(&[&alice, &bob], ""))
        .await?;
    let mut socket = Client::connect(&host.ws_url(&alice.path("/parties/hostile/later"))).await?;
    socket.send_text("alarm:300").await?;
    assert!(socket.recv_text().await?.starts_with("alarm set"));
    drop(socket);
    host.stop().await?;
    let host = TestHost::start_with_tenants(dir.path(), &local_project(), &tenants_toml(&[&alice, &bob], ""))
        .await?;
    eventually("alice's stored alarm to fire after the restart", async || {
        Ok(host.http("GET", &alice.path("/parties/hostile/later/alarms-fired"), "").await?.1
            == "alarms fired 1")
    })
    .await?;
    let (_, bobs) = host.http("GET", &bob.path("/parties/hostile/later/alarms-fired"), "").await?;
    assert_eq!(bobs, "alarms fired 0");
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_switch_to_a_new_version_drops_nothing_in_flight() -> Result<()> {
    let dir = temp_dir();
    // The socket reacts flat out for as long as the deploy takes, so its
    // rate limit is off: 100 messages a second closed it (1008) when a
    // deploy on busy cores took longer than its burst.
    let extra = "[vars]\nRATE_LIMIT_MS = \"0\"\n[limits]\nmessages_per_second = 1000000";
    let alice = Tenant::new(dir.path(), "alice", &[("reactions", REACTIONS)], extra)?;
    let caps = "[caps]\nmessages_per_second = 1000000";
    let host =
        TestHost::start_with_tenants(dir.path(), &local_project(), &tenants_toml(&[&alice], caps)).await?;
    host.deploy(&alice).await?;
    let mut socket = Client::connect(&host.ws_url(&alice.path("/parties/reactions/busy"))).await?;
    socket.recv_json().await?;

    // Version 2 deploys while a socket reacts and HTTP requests arrive
    // without pause: each reaction is counted once, each request answered.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (addr, path, http_done) = (host.addr, alice.path("/parties/reactions/busy"), done.clone());
    let requests = tokio::spawn(async move {
        let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
        while !http_done.load(std::sync::atomic::Ordering::Relaxed) {
            let response = crate::common::raw_http(addr, "GET", &path, &[], "").await?;
            *statuses.entry(response.status).or_default() += 1;
        }
        anyhow::Ok(statuses)
    });
    let socket_done = done.clone();
    let reacting = tokio::spawn(async move {
        // Whole cycles only: a reaction is counted once its update is seen.
        let mut reactions = 0u64;
        while !socket_done.load(std::sync::atomic::Ordering::Relaxed) {
            socket.send_json(json!({ "type": "reaction", "kind": "clap" })).await?;
            reactions += 1;
            let update = socket.recv_json().await?;
            anyhow::ensure!(update["reactions"]["clap"] == json!(reactions), "{update} after {reactions}");
        }
        anyhow::Ok((socket, reactions))
    });
    let deployed = host.deploy(&alice).await?;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(deployed["version"], json!(2));
    let statuses = requests.await??;
    let (mut socket, reactions) = reacting.await??;
    assert_eq!(statuses.keys().copied().collect::<Vec<_>>(), [200], "{statuses:?}");
    assert!(reactions > 0 && statuses[&200] > 0, "traffic during the deploy: {reactions} {statuses:?}");
    // The socket stayed open: the new version serves it, with the counts.
    socket.send_json(json!({ "type": "reaction", "kind": "clap" })).await?;
    assert_eq!(socket.recv_json().await?["reactions"]["clap"], json!(reactions + 1));
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_pages_on_the_shared_origin_are_sandboxed_and_set_no_cookies() -> Result<()> {
    let dir = temp_dir();
    let alice = Tenant::new(dir.path(), "alice", &[("hostile", HOSTILE)], "serve = \"public\"")?;
    std::fs::create_dir_all(alice.dir.join("public"))?;
    std::fs::write(alice.dir.join("public/index.html"), "<script>document.cookie</script>")?;
    let host =
        TestHost::start_with_tenants(dir.path(), &local_project(), &tenants_toml(&[&alice], "")).await?;
    host.deploy(&alice).await?;

    // Under /p/alice/ the page shares the host's origin: it runs sandboxed
    // (an opaque origin: no cookies, no storage, nothing of other pages).
    for path in ["/index.html", "/parties/hostile/x/evil-headers"] {
        let shared = host.http_with("GET", &alice.path(path), &[], "").await?;
        assert_eq!(shared.status, 200);
        let policy = shared.header("content-security-policy").unwrap_or_default();
        assert!(policy.starts_with("sandbox allow-scripts"), "{path}: {shared:?}");
        assert!(!policy.contains("allow-same-origin"), "{path}: {policy}");
        assert_eq!(shared.header("x-content-type-options"), Some("nosniff"));
        for name in ["set-cookie", "clear-site-data", "strict-transport-security"] {
            assert_eq!(shared.header(name), None, "{path}: a tenant set {name} on the shared origin");
        }
    }
    // At its own host name the project is its own origin: none of that.
    let own = host
        .http_with("GET", "/parties/hostile/x/evil-headers", &[("host", "alice.partyhost.test")], "")
        .await?;
    assert_eq!(own.header("content-security-policy"), None);
    assert_eq!(own.header("set-cookie"), Some("session=tenant; Path=/"));
    assert_eq!(own.header("clear-site-data"), Some("\"cookies\", \"storage\""));
    host.stop().await
}
