//! The built `partyhost` binary as a user runs it: one-line errors, serving
//! a manifest, and a clean stop on SIGTERM that tells clients "going away".

use futures_util::{SinkExt, StreamExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const BINARY: &str = env!("CARGO_BIN_EXE_partyhost");

#[test]
fn a_missing_manifest_is_one_line_on_stderr() {
    let output = Command::new(BINARY).args(["--manifest", "/no/such/partykit.toml"]).output();
    let output = output.unwrap_or_else(|e| panic!("running {BINARY}: {e}"));
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "error: cannot read manifest /no/such/partykit.toml: No such file or directory (os error 2)\n"
    );
}

#[tokio::test]
async fn serves_a_manifest_and_stops_cleanly_on_sigterm() -> anyhow::Result<()> {
    let reactions =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guests/wasm32-wasip2/guest/reactions.wasm");
    anyhow::ensure!(reactions.exists(), "run scripts/build-guests.sh first");
    let dir = tempfile::tempdir()?;
    let (mut host, port) = spawn_host(dir.path(), &reactions, "")?;
    let mut socket = connect(&format!("ws://127.0.0.1:{port}/party/lobby")).await?;
    let first = tokio::time::timeout(Duration::from_secs(10), socket.next()).await?;
    assert!(
        matches!(first, Some(Ok(Message::Text(t))) if t.as_str() == r#"{"type":"update","reactions":{}}"#)
    );

    let pid = host.id().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    assert!(Command::new("kill").args(["-TERM", &pid.to_string()]).status()?.success());
    let close = tokio::time::timeout(Duration::from_secs(10), socket.next()).await?;
    match close {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1001),
        other => anyhow::bail!("expected a going-away close, got {other:?}"),
    }
    let status = tokio::time::timeout(Duration::from_secs(10), host.wait()).await??;
    assert!(status.success(), "exit status {status}");
    Ok(())
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Starts the binary serving `wasm` as the main party, with `extra` TOML
/// after the manifest's first lines; returns it and its port.
fn spawn_host(dir: &Path, wasm: &Path, extra: &str) -> anyhow::Result<(tokio::process::Child, u16)> {
    // A port that was free a moment ago; the host binds it again.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let manifest = dir.join("partykit.toml");
    let toml = format!(
        "name = \"bin\"\nmain = \"main\"\nlisten = \"127.0.0.1:{port}\"\n{extra}\n[parties.main]\nwasm = {:?}\n",
        wasm.display().to_string()
    );
    std::fs::write(&manifest, toml)?;
    let host = tokio::process::Command::new(BINARY)
        .arg("serve")
        .arg("--manifest")
        .arg(&manifest)
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    Ok((host, port))
}

/// Connects once the host listens (it may still be starting).
async fn connect(url: &str) -> anyhow::Result<Socket> {
    let started = Instant::now();
    loop {
        match tokio_tungstenite::connect_async(url).await {
            Ok((socket, _)) => return Ok(socket),
            Err(_) if started.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => anyhow::bail!("the host never answered: {e}"),
        }
    }
}

/// A handler asleep in `std::thread::sleep` holds up neither its room's
/// next event nor SIGTERM: its wall-clock deadline abandons the call; and
/// with a deadline longer than the shutdown's, shutdown abandons the room.
#[tokio::test]
async fn sigterm_stops_a_host_whose_guest_sleeps() -> anyhow::Result<()> {
    let hostile =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guests/wasm32-wasip2/guest/hostile.wasm");
    anyhow::ensure!(hostile.exists(), "run scripts/build-guests.sh first");
    let cases = [
        ("", Duration::ZERO),
        ("[limits]\nwall_ms = 3600000\n[rooms]\nshutdown_deadline_ms = 1500", Duration::from_millis(1400)),
    ];
    for (extra, at_least) in cases {
        let dir = tempfile::tempdir()?;
        let (mut host, port) = spawn_host(dir.path(), &hostile, extra)?;
        let mut socket = connect(&format!("ws://127.0.0.1:{port}/party/sleepy")).await?;
        socket.send(Message::text("sleep:3600000")).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let pid = host.id().ok_or_else(|| anyhow::anyhow!("no pid"))?;
        let signalled = Instant::now();
        assert!(Command::new("kill").args(["-TERM", &pid.to_string()]).status()?.success());
        loop {
            match tokio::time::timeout(Duration::from_secs(5), socket.next()).await? {
                Some(Ok(Message::Close(Some(frame)))) => {
                    assert_eq!(u16::from(frame.code), 1001);
                    break;
                }
                Some(Ok(Message::Text(_))) => {}
                other => anyhow::bail!("expected a going-away close, got {other:?}"),
            }
        }
        let status = tokio::time::timeout(Duration::from_secs(5), host.wait())
            .await
            .map_err(|_| anyhow::anyhow!("still running 5 s after SIGTERM ({extra:?})"))??;
        let took = signalled.elapsed();
        assert!(status.success(), "exit status {status}");
        assert!(took >= at_least, "stopped after {took:?}, before the deadline ({extra:?})");
    }
    Ok(())
}

/// `partyhost token`, `serve --tenants`, `deploy` and `rollback`, as an
/// operator and a tenant run them.
#[tokio::test]
async fn a_tenant_deploys_and_rolls_back_with_the_cli() -> anyhow::Result<()> {
    let guests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guests/wasm32-wasip2/guest");
    anyhow::ensure!(guests.join("reactions.wasm").exists(), "run scripts/build-guests.sh first");
    let dir = tempfile::tempdir()?;
    let token = Command::new(BINARY).args(["token", "alice"]).output()?;
    let printed = String::from_utf8(token.stdout)?;
    let token = printed.lines().nth(1).map(str::trim).unwrap_or_default().to_owned();
    let grant = printed.lines().skip(3).map(|l| format!("{}\n", l.trim())).collect::<String>();
    assert!(grant.starts_with("[projects.alice]\ntoken_sha256 = \""), "{printed}");
    std::fs::write(dir.path().join("tenants.toml"), format!("domain = \"localhost\"\n{grant}"))?;

    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let host_manifest = format!(
        "name = \"host\"\nlisten = \"127.0.0.1:{port}\"\n[parties.main]\nwasm = {:?}\n",
        guests.join("reactions.wasm").display().to_string()
    );
    std::fs::write(dir.path().join("host.toml"), host_manifest)?;
    let project = dir.path().join("alice");
    std::fs::create_dir_all(&project)?;
    std::fs::copy(guests.join("counter.wasm"), project.join("counter.wasm"))?;
    let manifest = "name = \"alice\"\nmain = \"counter\"\n[parties.counter]\nwasm = \"counter.wasm\"\n";
    std::fs::write(project.join("partykit.toml"), manifest)?;
    let _host = tokio::process::Command::new(BINARY)
        .args(["serve", "--manifest", "host.toml", "--tenants", "tenants.toml"])
        .current_dir(dir.path())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let url = format!("http://127.0.0.1:{port}");
    let cli = |command: &str, token: &str| {
        Command::new(BINARY).args([command, "--url", &url, "--token", token]).current_dir(&project).output()
    };
    let started = Instant::now();
    let deployed = loop {
        let output = cli("deploy", &token)?;
        if output.status.success() || started.elapsed() > Duration::from_secs(10) {
            break output;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (stdout, stderr) = (String::from_utf8(deployed.stdout)?, String::from_utf8(deployed.stderr)?);
    assert!(
        stdout.starts_with("project `alice` now serves version 1 (parties: counter;"),
        "{stdout}{stderr}"
    );
    assert!(stderr.contains("uploading 100%"), "progress is shown: {stderr}");
    assert!(cli("deploy", &token)?.status.success());

    let wrong = cli("deploy", "wrong")?;
    assert_eq!(
        String::from_utf8(wrong.stderr)?,
        "error: the host refused (401 Unauthorized): not a valid token for project `alice`\n",
        "refused before the upload"
    );
    let rolled = cli("rollback", &token)?;
    assert!(String::from_utf8(rolled.stdout)?.starts_with("project `alice` now serves version 1"));
    Ok(())
}
