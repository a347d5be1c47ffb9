//! The host under test, as a child process running this binary's `host`
//! command, with a manifest written for the scenario.

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use partyhost::manifest::Deployment;

/// The built reactions guest.
pub fn reactions_wasm() -> anyhow::Result<PathBuf> {
    let wasm =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guests/wasm32-wasip2/guest/reactions.wasm");
    anyhow::ensure!(wasm.exists(), "{} is missing: run scripts/build-guests.sh", wasm.display());
    Ok(wasm)
}

/// A host child process serving one manifest from a temporary directory.
pub struct ChildHost {
    pub port: u16,
    /// `None` for a server this benchmark did not start (a cluster's proxy).
    child: Option<tokio::process::Child>,
    _dir: tempfile::TempDir,
}

impl ChildHost {
    /// Starts a host for `toml` (a manifest without `listen`).
    pub async fn start(toml: &str) -> anyhow::Result<Self> {
        Self::spawn(toml, false, None, &[]).await
    }

    /// The same, with extra `host` arguments (`--no-metrics`).
    pub async fn start_with_args(toml: &str, args: &[&str]) -> anyhow::Result<Self> {
        Self::spawn(toml, false, None, args).await
    }

    /// The same, watching and reloading as `partyhost dev`.
    pub async fn start_dev(toml: &str) -> anyhow::Result<Self> {
        Self::spawn(toml, true, None, &[]).await
    }

    /// The same, taking deployments for the projects of `tenants` (TOML).
    pub async fn start_with_tenants(toml: &str, tenants: &str) -> anyhow::Result<Self> {
        Self::spawn(toml, false, Some(tenants), &[]).await
    }

    /// The native baseline server.
    pub async fn start_native(limiter: bool) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let mut command = tokio::process::Command::new(std::env::current_exe()?);
        command.arg("native").arg(port.to_string()).args((!limiter).then_some("--no-limiter"));
        Self::run(command, port, dir, false).await
    }

    /// The native yrs server (bench `yjs`).
    pub async fn start_native_yjs() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let mut command = tokio::process::Command::new(std::env::current_exe()?);
        command.arg("native-yjs").arg(port.to_string());
        Self::run(command, port, dir, false).await
    }

    async fn spawn(toml: &str, dev: bool, tenants: Option<&str>, args: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let manifest = dir.path().join("partykit.toml");
        // Every load comes from one address, far past the default caps.
        let caps = "[edge]\nmax_connections = 1000000\nmax_connections_per_ip = 1000000\n";
        std::fs::write(&manifest, format!("listen = \"127.0.0.1:{port}\"\n{toml}\n{caps}"))?;
        let mut command = tokio::process::Command::new(std::env::current_exe()?);
        command.arg("host").arg(&manifest).args(dev.then_some("--dev")).args(args);
        if let Some(tenants) = tenants {
            let file = dir.path().join("tenants.toml");
            std::fs::write(&file, tenants)?;
            command.arg("--tenants").arg(file);
        }
        Self::run(command, port, dir, true).await
    }

    async fn run(
        mut command: tokio::process::Command,
        port: u16,
        dir: tempfile::TempDir,
        partyhost: bool,
    ) -> anyhow::Result<Self> {
        let child = command.stderr(Stdio::null()).kill_on_drop(true).spawn().context("starting the host")?;
        let started = Instant::now();
        // partyhost listens before its parties compile: wait until it is
        // ready, not only listening.
        while !if partyhost { is_ready(port).await } else { is_listening(port).await } {
            anyhow::ensure!(started.elapsed() < Duration::from_secs(20), "the host did not start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(Self { port, child: Some(child), _dir: dir })
    }

    /// A server already listening on `port` (started by someone else).
    pub fn external(port: u16) -> anyhow::Result<Self> {
        Ok(Self { port, child: None, _dir: tempfile::tempdir()? })
    }

    pub fn pid(&self) -> anyhow::Result<u32> {
        self.child.as_ref().and_then(tokio::process::Child::id).context("the host has exited")
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }
}

async fn is_listening(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
}

/// Whether `GET /_partyhost/ready` answers 200.
async fn is_ready(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return false };
    let request = "GET /_partyhost/ready HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n";
    let mut answer = Vec::new();
    stream.write_all(request.as_bytes()).await.is_ok()
        && stream.read_to_end(&mut answer).await.is_ok()
        && answer.starts_with(b"HTTP/1.1 200")
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The child's side: serve until killed.
pub async fn serve(
    manifest: &Path,
    dev: bool,
    tenants: Option<PathBuf>,
    no_metrics: bool,
) -> anyhow::Result<()> {
    let manifest = std::path::absolute(manifest)?;
    let deployment = Deployment::load(&manifest)?;
    let listener = tokio::net::TcpListener::bind(deployment.listen).await?;
    let shutdown = CancellationToken::new();
    if dev {
        return partyhost::run_dev(manifest, deployment, listener, shutdown).await;
    }
    let options = partyhost::Options {
        tenants: tenants.map(|t| partyhost::manifest::Tenants::load(&t)).transpose()?,
        no_metrics,
        ..partyhost::Options::default()
    };
    partyhost::Host::start_with(deployment, options, listener, shutdown).await?.wait().await
}
