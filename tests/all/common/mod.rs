//! Fixtures: a real host on an ephemeral port, and WebSocket clients.

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use partyhost::Host;
use partyhost::manifest::Deployment;
use partyhost::reload::ReloadStats;
use partyhost::rooms::RoomStats;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Every await in a test is bounded by this.
pub const STEP: Duration = Duration::from_secs(10);

/// Awaits `future`, failing the test after [`STEP`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    within_for(STEP, what, future).await
}

/// Awaits `future`, failing the test after `limit`: for a JavaScript build
/// and compile, which take tens of seconds on a loaded machine.
pub async fn within_for<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// Checks `done` every 10 ms until it holds, failing the test after
/// [`STEP`] with `what`. For state the test can only observe by asking.
pub async fn eventually(what: &str, mut done: impl AsyncFnMut() -> Result<bool>) -> Result<()> {
    within(what, async {
        loop {
            if done().await? {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// A manifest serving `parties` (name, wasm path), plus extra TOML.
pub fn manifest(parties: &[(&str, &str)], extra: &str) -> String {
    let mut toml = format!("name = \"test\"\n{extra}\n");
    for (name, wasm) in parties {
        toml.push_str(&format!("[parties.{name}]\nwasm = {wasm:?}\n"));
    }
    toml
}

/// Options with the compile cache the tests' hosts share, under target/.
pub fn shared_compile_cache() -> partyhost::Options {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo_root().join("target"), PathBuf::from);
    partyhost::Options { compile_cache: Some(target.join("test-compiled")), ..partyhost::Options::default() }
}

/// A host running in this process. Stops when dropped.
pub struct TestHost {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    host: Option<Host>,
    /// In dev mode: what the reloader has done.
    pub reloads: Option<Arc<ReloadStats>>,
}

impl TestHost {
    /// Starts a host for `manifest_toml` with its data in `dir`.
    /// Compiled code goes to a cache shared by the tests' hosts (a
    /// JavaScript party takes seconds to compile); [`TestHost::start_with`]
    /// keeps it in the data dir unless told otherwise.
    pub async fn start(dir: &Path, manifest_toml: &str) -> Result<Self> {
        Self::start_with(dir, manifest_toml, shared_compile_cache()).await
    }

    /// Starts a multi-tenant host: the local project of `manifest_toml`,
    /// plus the projects of `tenants_toml`, deployable through the admin API.
    pub async fn start_with_tenants(dir: &Path, manifest_toml: &str, tenants_toml: &str) -> Result<Self> {
        let tenants = partyhost::manifest::Tenants::parse(tenants_toml)?;
        let options = partyhost::Options { tenants: Some(tenants), ..shared_compile_cache() };
        Self::start_with(dir, manifest_toml, options).await
    }

    /// Starts a host with every option (TLS, tenants).
    pub async fn start_with(dir: &Path, manifest_toml: &str, options: partyhost::Options) -> Result<Self> {
        Self::start_at("127.0.0.1:0".parse()?, dir, manifest_toml, options).await
    }

    /// [`TestHost::start_with`] on `addr` (a restarted host on the port its
    /// clients reconnect to).
    pub async fn start_at(
        addr: SocketAddr,
        dir: &Path,
        manifest_toml: &str,
        options: partyhost::Options,
    ) -> Result<Self> {
        let deployment = Deployment::parse(manifest_toml, dir)?;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let host = Host::start_with(deployment, options, listener, shutdown.clone()).await?;
        Ok(Self { addr, shutdown, host: Some(host), reloads: None })
    }

    /// The host's status of a deployed project, from the admin API.
    pub async fn project_status(&self, project: &Tenant) -> Result<serde_json::Value> {
        let auth = format!("Bearer {}", project.token);
        let path = format!("/_partyhost/projects/{}", project.name);
        let response = self.http_with("GET", &path, &[("authorization", &auth)], "").await?;
        anyhow::ensure!(response.status == 200, "status: {} {}", response.status, response.body);
        Ok(serde_json::from_str(&response.body)?)
    }

    /// Deploys the project in `project.dir` through the real client.
    pub async fn deploy(&self, project: &Tenant) -> Result<serde_json::Value> {
        let url = format!("http://{}", self.addr);
        let target = partyhost::client::Target {
            url: &url,
            project: &project.name,
            token: &project.token,
            ca_cert: None,
        };
        partyhost::client::deploy(&target, &project.dir.join("partykit.toml")).await
    }

    /// Starts a host in dev mode: the manifest is written to
    /// `dir/partykit.toml` and watched, as `partyhost dev` does.
    pub async fn start_dev(dir: &Path, manifest_toml: &str) -> Result<Self> {
        let manifest = std::path::absolute(dir)?.join("partykit.toml");
        std::fs::write(&manifest, manifest_toml)?;
        let deployment = Deployment::load(&manifest)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let host = Host::start_dev(&manifest, deployment, listener, shutdown.clone()).await?;
        let reloader = host.reloader(manifest);
        let reloads = Some(reloader.stats());
        reloader.spawn(shutdown.clone())?;
        Ok(Self { addr, shutdown, host: Some(host), reloads })
    }

    /// Waits until the reloader has applied `applied` changes and refused
    /// `failed` ones, in all.
    pub async fn wait_for_reloads(&self, applied: u64, failed: u64) {
        self.wait_for_reloads_within(STEP, applied, failed).await;
    }

    /// [`TestHost::wait_for_reloads`] for reloads that may take `limit`.
    pub async fn wait_for_reloads_within(&self, limit: Duration, applied: u64, failed: u64) {
        let Some(stats) = &self.reloads else { panic!("not in dev mode") };
        let what = format!("{applied} reloads applied and {failed} refused");
        within_for(limit, &what, async {
            loop {
                let now = (stats.applied.load(Ordering::Relaxed), stats.failed.load(Ordering::Relaxed));
                if now == (applied, failed) {
                    return;
                }
                assert!(now.0 <= applied && now.1 <= failed, "{what}, but saw {now:?}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }

    /// Live rooms and instances right now.
    pub fn stats(&self) -> RoomStats {
        self.host.as_ref().map_or(RoomStats { rooms: 0, instances: 0, queued_bytes: 0 }, Host::stats)
    }

    /// The local project's rooms, for their counters and totals.
    pub fn local_rooms(&self) -> Arc<partyhost::rooms::Rooms> {
        match &self.host {
            Some(host) => host.projects().local().rooms.clone(),
            None => panic!("the host has stopped"),
        }
    }

    /// Polls until `done(stats)` holds, failing after [`STEP`].
    pub async fn wait_for_stats(&self, what: &str, done: impl Fn(RoomStats) -> bool) {
        let stats = eventually(what, async || Ok(done(self.stats()))).await;
        stats.unwrap_or_else(|e| panic!("{e}"));
    }

    /// Stops the host and waits until every room has stopped.
    pub async fn stop(mut self) -> Result<()> {
        self.shutdown.cancel();
        match self.host.take() {
            Some(host) => within("host stop", host.wait()).await,
            None => Ok(()),
        }
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// A plain HTTP request; returns status and body.
    pub async fn http(&self, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
        let response = self.http_with(method, path, &[], body).await?;
        Ok((response.status, response.body))
    }

    /// A raw HTTP/1.1 request: `path` is sent exactly as written (no
    /// client-side normalisation of `..` or escapes).
    pub async fn http_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<HttpResponse> {
        raw_http(self.addr, method, path, headers, body).await
    }
}

/// [`TestHost::http_with`] by address, for a task of its own.
pub async fn raw_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<HttpResponse> {
    let mut stream = TcpStream::connect(addr).await?;
    let mut extra: String = headers.iter().map(|(name, value)| format!("{name}: {value}\r\n")).collect();
    if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("host")) {
        extra.push_str(&format!("host: {addr}\r\n"));
    }
    let request = format!(
        "{method} {path} HTTP/1.1\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes()).await?;
    let mut response = Vec::new();
    within("http response", tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut response)).await?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).context("no status")?.parse()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v == "chunked");
    let body = if chunked { dechunk(body) } else { body.to_owned() };
    Ok(HttpResponse { status, headers, body })
}

/// What [`TestHost::http_with`] read back.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Names in lower case, in the order sent.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || tail.len() < size {
            break;
        }
        out.push_str(&tail[..size]);
        rest = tail[size..].trim_start_matches("\r\n");
    }
    out
}

/// Connects a WebSocket the server is expected to refuse: the HTTP status
/// and body it answered the upgrade with.
pub async fn refused_upgrade(url: &str) -> Result<(u16, String)> {
    match within("websocket connect", tokio_tungstenite::connect_async(url)).await {
        Ok(_) => bail!("the upgrade to {url} was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            Ok((response.status().as_u16(), body.into_owned()))
        }
        Err(e) => bail!("the upgrade to {url} failed without an HTTP answer: {e}"),
    }
}

/// A WebSocket client.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn connect(url: &str) -> Result<Self> {
        let (ws, _) = within("websocket connect", tokio_tungstenite::connect_async(url)).await?;
        Ok(Self { ws })
    }

    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        within("send", self.ws.send(Message::text(text))).await?;
        Ok(())
    }

    pub async fn send_json(&mut self, value: serde_json::Value) -> Result<()> {
        self.send_text(&value.to_string()).await
    }

    /// The next text message (pings and pongs skipped).
    pub async fn recv_text(&mut self) -> Result<String> {
        loop {
            match within("receive", self.ws.next()).await {
                Some(Ok(Message::Text(text))) => return Ok(text.to_string()),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => bail!("expected a text message, got {other:?}"),
            }
        }
    }

    /// The next binary message (pings and pongs skipped).
    pub async fn recv_binary(&mut self) -> Result<Vec<u8>> {
        loop {
            match within("receive", self.ws.next()).await {
                Some(Ok(Message::Binary(bytes))) => return Ok(bytes.to_vec()),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => bail!("expected a binary message, got {other:?}"),
            }
        }
    }

    pub async fn recv_json(&mut self) -> Result<serde_json::Value> {
        let text = self.recv_text().await?;
        serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))
    }

    /// Waits for the server's close frame and returns its code and reason.
    /// Any message before it fails the test: nothing may leak out first.
    pub async fn recv_close(&mut self) -> Result<(u16, String)> {
        self.recv_close_after(|_| false).await
    }

    /// [`Client::recv_close`], letting through the text messages `expected`
    /// accepts (answers the test provoked and does not count).
    pub async fn recv_close_after(&mut self, expected: impl Fn(&str) -> bool) -> Result<(u16, String)> {
        loop {
            match within("close", self.ws.next()).await {
                Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                    return Ok((code.into(), reason.to_string()));
                }
                Some(Ok(Message::Text(text))) if expected(&text) => {}
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => bail!("expected a close frame, got {other:?}"),
            }
        }
    }

    /// Closes with `code` and `reason`, and waits for the server's reply.
    pub async fn close(&mut self, code: u16, reason: &str) -> Result<()> {
        let frame = CloseFrame { code: code.into(), reason: reason.into() };
        within("close", self.ws.close(Some(frame))).await?;
        while let Some(Ok(_)) = within("close reply", self.ws.next()).await {}
        Ok(())
    }

    /// Sends a raw frame (binary, oversized, ...).
    pub async fn send(&mut self, message: Message) -> Result<()> {
        within("send", self.ws.send(message)).await?;
        Ok(())
    }
}

/// What a run of the `partyhost` command printed.
#[derive(Debug)]
pub struct CliOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// The real `partyhost` binary (scripts/test.sh builds it first).
pub fn partyhost_binary() -> PathBuf {
    let binary = repo_root().join("target/release/partyhost");
    assert!(
        binary.exists(),
        "{} is missing: run scripts/test.sh, or `cargo build --release -p partyhost` first",
        binary.display()
    );
    binary
}

/// Runs the real `partyhost` command with `args` to its end.
pub async fn cli(args: &[&str]) -> Result<CliOutput> {
    cli_within(STEP, args).await
}

/// [`cli`] for a command that may take up to `limit` (a build).
pub async fn cli_within(limit: Duration, args: &[&str]) -> Result<CliOutput> {
    let output = within_for(
        limit,
        "the partyhost command",
        tokio::process::Command::new(partyhost_binary())
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await?;
    Ok(CliOutput {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// Runs a script of tests/node and parses the JSON report it prints.
pub async fn run_node(script: &str, args: &[String]) -> Result<serde_json::Value> {
    let script = repo_root().join("tests/node").join(script);
    let child = tokio::process::Command::new("node")
        .arg(&script)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("running node (scripts/setup.sh installs tests/node)")?;
    let output =
        tokio::time::timeout(STEP * 6, child.wait_with_output()).await.context("node timed out")??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "node failed: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    Ok(serde_json::from_str(stdout.trim())?)
}

/// The host's own project beside the tenants of a multi-tenant test host.
pub fn local_project() -> String {
    manifest(&[("reactions", crate::guests::REACTIONS)], "main = \"reactions\"")
}

/// `tenants.toml` for `projects` under the domain `partyhost.test`, with
/// `extra` TOML (caps, quotas) before the project entries.
pub fn tenants_toml(projects: &[&Tenant], extra: &str) -> String {
    let entries: String = projects.iter().map(|p| p.entry.clone()).collect();
    format!("domain = \"partyhost.test\"\n{extra}\n{entries}")
}

/// A tenant: a project folder with its manifest and components, and its
/// deploy token.
pub struct Tenant {
    pub name: String,
    pub token: String,
    /// `[projects.<name>]` for tenants.toml.
    pub entry: String,
    pub dir: PathBuf,
}

impl Tenant {
    /// A project `name` in `root/<name>` whose manifest serves `parties`
    /// (name, wasm) with `extra` TOML before the party tables; each
    /// component is copied into the folder, as a real project has it.
    pub fn new(root: &Path, name: &str, parties: &[(&str, &str)], extra: &str) -> Result<Self> {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir)?;
        let mut toml = format!("name = \"{name}\"\n{extra}\n");
        for (party, wasm) in parties {
            let file = format!("{party}.wasm");
            std::fs::copy(wasm, dir.join(&file))?;
            toml.push_str(&format!("[parties.{party}]\nwasm = \"{file}\"\n"));
        }
        std::fs::write(dir.join("partykit.toml"), toml)?;
        let (token, hash) = partyhost::manifest::new_token()?;
        let entry = format!("[projects.{name}]\ntoken_sha256 = \"{hash}\"\n");
        Ok(Self { name: name.to_owned(), token, entry, dir })
    }

    /// A WebSocket URL path of this project, by the `/p/<project>` prefix.
    pub fn path(&self, rest: &str) -> String {
        format!("/p/{}{rest}", self.name)
    }
}

/// A temporary directory for one test's data.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("creating a temp dir: {e}"))
}

/// The repository root (for tests/node).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The four example parties in one language: the Rust guests (guests/) or
/// their TypeScript twins (guests-ts/), which must behave the same on the
/// wire.
pub struct Examples {
    /// `rust` or `typescript`.
    pub language: &'static str,
    pub reactions: &'static str,
    pub presence: &'static str,
    pub page: &'static str,
    pub counter: &'static str,
}

impl Examples {
    pub fn rust() -> Self {
        use crate::guests::{COUNTER, PAGE, PRESENCE, REACTIONS};
        Self { language: "rust", reactions: REACTIONS, presence: PRESENCE, page: PAGE, counter: COUNTER }
    }

    /// Built by `partyhost::js` once per test run (a cached build only
    /// bundles, to find the cached component).
    pub fn typescript() -> Self {
        let wasm = |party: &str| script_party("guests-ts", party);
        Self {
            language: "typescript",
            reactions: wasm("reactions"),
            presence: wasm("presence"),
            page: wasm("page"),
            counter: wasm("counter"),
        }
    }
}

/// The machine, shared by tests that run side by side: tests that measure
/// latency or count what arrives within a deadline run alone
/// ([`quiet_machine`]); tests that build or compile JavaScript components,
/// seconds of both cores each, hold [`busy_machine`] while they do.
static MACHINE: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Waits until no JavaScript build or compile runs, and keeps others from
/// starting until the guard is dropped.
pub fn quiet_machine() -> std::sync::RwLockWriteGuard<'static, ()> {
    MACHINE.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Marks a JavaScript build or compile under way (many may run at once).
pub fn busy_machine() -> std::sync::RwLockReadGuard<'static, ()> {
    MACHINE.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The component of script party `party` of `<folder>/partykit.toml` (a
/// folder of the repository), built by partyhost's JavaScript build once
/// per test run and compiled once into the shared compile cache, before the
/// tests that need it all miss the cache at once and compile side by side.
pub fn script_party(folder: &str, party: &str) -> &'static str {
    static BUILT: std::sync::Mutex<Vec<(String, Result<(), String>)>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !built.iter().any(|(f, _)| f == folder) {
        let outcome = build_and_compile(&repo_root().join(folder).join("partykit.toml"));
        built.push((folder.to_owned(), outcome));
    }
    if let Some((_, Err(e))) = built.iter().find(|(f, _)| f == folder) {
        panic!("building the script parties of {folder}: {e}");
    }
    let path = repo_root().join(folder).join(format!(".partyhost/build/{party}.wasm"));
    path.display().to_string().leak()
}

fn build_and_compile(manifest: &Path) -> Result<(), String> {
    let _busy = busy_machine();
    let deployment = Deployment::load(manifest).map_err(|e| e.to_string())?;
    partyhost::js::build_all(&deployment).map_err(|e| format!("{e:#}"))?;
    let warm_up = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new()?;
        runtime.block_on(async {
            let dir = temp_dir();
            let deployment = Deployment { data_dir: dir.path().join("data"), ..deployment };
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let shutdown = CancellationToken::new();
            let host =
                Host::start_with(deployment, shared_compile_cache(), listener, shutdown.clone()).await?;
            shutdown.cancel();
            host.wait().await
        })
    });
    warm_up.join().map_err(|_| "the compile warm-up panicked".to_owned())?.map_err(|e| format!("{e:#}"))
}

/// Runs each named `async fn(&Examples) -> Result<()>` twice: against the
/// Rust example parties (`<name>::rust`) and the TypeScript ones
/// (`<name>::typescript`).
macro_rules! for_both_languages {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rust() -> anyhow::Result<()> {
                super::$test(&crate::common::Examples::rust()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn typescript() -> anyhow::Result<()> {
                super::$test(&crate::common::Examples::typescript()).await
            }
        }
    )*};
}
