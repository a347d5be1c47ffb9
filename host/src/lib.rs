//! partyhost: a self-hosted, PartyKit-compatible real-time rooms server whose
//! room code runs as sandboxed WebAssembly components.
//!
//! # Layout
//! A message travels `http` -> `rooms` -> `sandbox` and back:
//! - [`manifest`]: `partykit.toml` into a validated [`manifest::Deployment`].
//! - [`edge`]: accepting connections: caps, timeouts, TLS.
//! - [`http`]: axum routes; one task per WebSocket.
//! - [`rooms`]: one actor per live room, owning its guest instance, its
//!   connections and its storage cache; the registry that finds or spawns it.
//! - [`sandbox`]: the only wasmtime user: engine, limits, compile cache,
//!   bindings for `wit/party.wit`.
//! - [`storage`]: the SQLite file (or a cluster's PostgreSQL database) and
//!   the per-room cache.
//! - [`cluster`]: several nodes serving one project: membership, fencing,
//!   forwarding to a room's owner, room-to-room requests between nodes.
//! - [`ids`]: validated names passed between modules.
//! - [`budget`]: what all rooms of a project, and of the host, may hold.
//! - [`metrics`]: what `/_partyhost/metrics` reports.
//!
//! [`run`] is the whole server; the binary and the tests both call it.

pub mod budget;
pub mod client;
pub mod cluster;
pub mod edge;
pub mod http;
pub mod ids;
pub mod js;
pub mod manifest;
pub mod metrics;
pub mod projects;
pub mod reload;
pub mod rooms;
pub mod sandbox;
pub mod scaffold;
pub mod storage;

use anyhow::Context;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use budget::{Scope, Totals};
use ids::PartyName;
use manifest::{Deployment, PartySpec, RoomsSpec, Tenants, TotalsSpec};
use projects::{Project, Projects};
use rooms::{LoadedParty, RoomStats, Rooms, RoomsConfig};
use sandbox::{Limits, Sandbox};

/// Serves `deployment` on `listener` until `shutdown` is cancelled, then
/// closes every socket with 1001 and returns once all rooms have stopped.
///
/// # Errors
/// When the data directory, the storage file or a party's component cannot
/// be loaded (the message names which), or serving fails.
pub async fn run(
    deployment: Deployment,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    Host::start(deployment, listener, shutdown).await?.wait().await
}

/// [`run`] for `partyhost dev`: also watches `manifest` (the file
/// `deployment` came from, by an absolute path) and swaps in what changes.
///
/// # Errors
/// As [`run`], or when the file watcher cannot start.
pub async fn run_dev(
    manifest: PathBuf,
    deployment: Deployment,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let host = Host::start_dev(&manifest, deployment, listener, shutdown.clone()).await?;
    host.reloader(manifest).spawn(shutdown)?;
    host.wait().await
}

/// How long shutdown waits for rooms by default; see [`RoomsSpec`].
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// How a host serves, beyond its manifest.
#[derive(Default)]
pub struct Options {
    /// Host other people's projects too (`--tenants`).
    pub tenants: Option<Tenants>,
    /// Terminate TLS with this certificate (`--tls-cert`, `--tls-key`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `partyhost dev`: compile without optimisation, so reloads serve sooner.
    pub dev: bool,
    /// A `.env` file laid over the local project's secrets (`partyhost dev`).
    pub dotenv: Option<PathBuf>,
    /// The SHA-256 of the operator's token (`--operator-token-sha256`): it
    /// opens metrics and every project's admin calls, as loopback does.
    pub operator_token: Option<manifest::TokenHash>,
    /// Count nothing and serve no metrics (`--no-metrics`).
    pub no_metrics: bool,
    /// Where compiled code is cached; default `<data_dir>/compiled`. Hosts
    /// that serve the same components may share one (the tests do).
    pub compile_cache: Option<PathBuf>,
    /// Serve the local project as a node of a cluster (`[cluster]` with
    /// `--cluster-node`): storage in PostgreSQL, one owner per room.
    pub cluster: Option<storage::ClusterConfig>,
}

/// A running host: what [`run`] drives, and what tests inspect.
pub struct Host {
    shutdown: CancellationToken,
    /// How long shutdown waits for rooms before abandoning them.
    shutdown_deadline: Duration,
    /// The local project's rooms.
    rooms: Arc<Rooms>,
    projects: Arc<Projects>,
    server: JoinHandle<anyhow::Result<()>>,
    tracker: TaskTracker,
    /// Compiles parties; also used to reload them in `partyhost dev`.
    sandbox: Arc<Sandbox>,
    /// This node's part in a cluster, if it is in one.
    cluster: Option<Arc<cluster::Node>>,
}

impl Host {
    /// Loads every party, opens storage, schedules stored alarms and starts
    /// serving. Returns once the listener accepts connections.
    ///
    /// # Errors
    /// When the data directory, the storage file or a party's component
    /// cannot be loaded; the message names which.
    pub async fn start(
        deployment: Deployment,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        Self::start_with(deployment, Options::default(), listener, shutdown).await
    }

    /// [`Host::start`] for `partyhost dev` of the manifest at `manifest`:
    /// components compile without optimisation, so a reload serves sooner
    /// (the code runs slower), and a `.env` beside the manifest is read as
    /// secrets.
    ///
    /// # Errors
    /// As [`Host::start`], or when the `.env` file is malformed.
    pub async fn start_dev(
        manifest: &std::path::Path,
        deployment: Deployment,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let dotenv = manifest.parent().map(|dir| dir.join(".env"));
        let options = Options { dev: true, dotenv, ..Options::default() };
        Self::start_with(deployment, options, listener, shutdown).await
    }

    /// [`Host::start`] for a multi-tenant host: the projects of `tenants`
    /// deploy through the admin API and are served beside the local one.
    ///
    /// # Errors
    /// As [`Host::start`].
    pub async fn start_with_tenants(
        deployment: Deployment,
        tenants: Tenants,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let options = Options { tenants: Some(tenants), ..Options::default() };
        Self::start_with(deployment, options, listener, shutdown).await
    }

    /// [`Host::start`] with every option.
    ///
    /// # Errors
    /// As [`Host::start`].
    pub async fn start_with(
        deployment: Deployment,
        options: Options,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let Options {
            tenants,
            tls,
            dev: fast_compile,
            dotenv,
            operator_token,
            no_metrics,
            compile_cache,
            cluster,
        } = options;
        anyhow::ensure!(
            cluster.is_none() || tenants.is_none(),
            "--tenants and [cluster] do not go together yet: a cluster serves the manifest's own project"
        );
        // Serving from the start: health and readiness answer while the
        // parties compile; everything else is a 503 until they are ready.
        let edge_limits = deployment.edge.resolve();
        let readiness = Arc::new(http::Readiness::default());
        let addr = listener.local_addr().context("reading the listening address")?;
        let app = http::starting_router(readiness.clone());
        let server =
            tokio::spawn(edge::serve(listener, app, edge_limits.clone(), tls.clone(), shutdown.clone()));
        info!(%addr, tls = tls.is_some(), "listening; compiling parties");
        let metrics =
            Arc::new(if no_metrics { metrics::Metrics::off() } else { metrics::Metrics::default() });
        let loading =
            Loading { tenants, fast_compile, dotenv, operator_token, metrics, compile_cache, cluster };
        let started = Self::load(deployment, loading, &shutdown).await;
        let (projects, sandbox, tracker, shutdown_deadline, cluster) = match started {
            Ok(started) => started,
            Err(e) => {
                shutdown.cancel();
                return Err(e);
            }
        };
        let peers = cluster
            .as_ref()
            .map(|node| cluster::PeerState { node: node.clone(), rooms: projects.local().rooms.clone() });
        readiness.serve(http::router(projects.clone(), peers));
        info!(%addr, "ready");
        let rooms = projects.local().rooms.clone();
        Ok(Self { shutdown, shutdown_deadline, rooms, projects, server, tracker, sandbox, cluster })
    }

    /// Everything [`Host::start_with`] does before it is ready: compile the
    /// parties (off the serving threads), open storage, load deployed
    /// projects.
    async fn load(
        deployment: Deployment,
        loading: Loading,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<(Arc<Projects>, Arc<Sandbox>, TaskTracker, Duration, Option<Arc<cluster::Node>>)>
    {
        let Loading { tenants, fast_compile, dotenv, operator_token, metrics, compile_cache, cluster } =
            loading;
        // Joined first: a database that cannot be reached stops the start.
        let postgres = match cluster {
            Some(config) => Some(storage::Postgres::join(config, shutdown).await?),
            None => None,
        };
        let data_dir = deployment.data_dir.clone();
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating data dir {}", data_dir.display()))?;
        let compile_cache = compile_cache.unwrap_or_else(|| data_dir.join("compiled"));
        let sandbox = Arc::new(Sandbox::new(&compile_cache, fast_compile, metrics.clone())?);
        let compiling = (sandbox.clone(), deployment.parties.clone());
        let parties = tokio::task::spawn_blocking(move || {
            let (sandbox, specs) = compiling;
            let mut parties = HashMap::new();
            for (name, spec) in &specs {
                parties.insert(name.clone(), Arc::new(load_party(&sandbox, name, spec)?));
            }
            anyhow::Ok(parties)
        })
        .await
        .context("the compile task panicked")??;
        let secrets = projects::Secrets::open(data_dir.join(projects::SECRETS_FILE))?;
        if let Some(dotenv) = &dotenv {
            secrets.read_dotenv(dotenv)?;
        }

        let tracker = TaskTracker::new();
        let edge_limits = deployment.edge.resolve();
        let config = rooms_config(&deployment.rooms, &edge_limits);
        let shutdown_deadline =
            deployment.rooms.shutdown_deadline_ms.map_or(SHUTDOWN_DEADLINE, Duration::from_millis);
        // The host's own project is bounded by the host's totals alone.
        let host_defaults = TotalsSpec::host_defaults();
        let host_totals = Scope::new("this host", &deployment.totals, &host_defaults);
        let local_totals = Totals {
            project: Scope::new(format!("project `{}`", deployment.name), &deployment.totals, &host_defaults),
            host: host_totals.clone(),
        };
        let project_name = deployment.name.clone();
        let storage_file = data_dir.join("storage.sqlite");
        let local = Project::open(
            match &postgres {
                Some(postgres) => projects::ProjectStorage::Cluster(postgres),
                None => projects::ProjectStorage::File(&storage_file),
            },
            secrets,
            metrics.project(&deployment.name),
            deployment,
            parties,
            config.clone(),
            local_totals,
            shutdown,
            &tracker,
        )?;
        let projects = Projects::new(
            local,
            tenants,
            operator_token,
            metrics,
            sandbox.clone(),
            &data_dir,
            config,
            host_totals,
            shutdown.clone(),
            tracker.clone(),
        );
        projects.load_deployed().await;
        let node =
            postgres.map(|pg| cluster::Node::start(pg, &project_name, &projects.local().rooms, shutdown));
        Ok((projects, sandbox, tracker, shutdown_deadline, node))
    }

    /// A reloader for `partyhost dev`, watching the manifest at `manifest`
    /// (the one this host was started from, by an absolute path).
    pub fn reloader(&self, manifest: PathBuf) -> reload::Reloader {
        reload::Reloader::new(manifest, self.projects.local().clone(), self.sandbox.clone())
    }

    /// Every project of this host.
    pub fn projects(&self) -> &Arc<Projects> {
        &self.projects
    }

    /// How many rooms and instances are alive now (local project).
    pub fn stats(&self) -> RoomStats {
        self.rooms.stats()
    }

    /// Waits until the host has shut down and every room has stopped, or
    /// until the shutdown deadline has passed since shutdown began: rooms
    /// still busy then are abandoned (what they committed stays committed;
    /// their sockets were already told 1001 by their own tasks).
    ///
    /// # Errors
    /// When serving failed.
    pub async fn wait(self) -> anyhow::Result<()> {
        // The sandbox stays alive until the end: dropping it stops the epoch
        // ticker, and a guest still running would then never be stopped.
        let Self { shutdown, shutdown_deadline, server, tracker, sandbox: _sandbox, cluster, .. } = self;
        let stopped = async {
            let served = server.await.context("the HTTP server task panicked")?;
            // Serving may have failed on its own: rooms stop all the same.
            shutdown.cancel();
            tracker.close();
            tracker.wait().await;
            // Every room has committed and stopped: others may take them now.
            if let Some(node) = &cluster {
                node.postgres().leave().await;
            }
            served
        };
        let deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(shutdown_deadline).await;
        };
        tokio::select! {
            served = stopped => {
                info!("stopped");
                served
            }
            () = deadline => {
                tracing::warn!(deadline = ?shutdown_deadline, "rooms were still busy at the shutdown deadline; abandoned");
                Ok(())
            }
        }
    }
}

/// What [`Host::load`] needs besides the manifest.
struct Loading {
    tenants: Option<Tenants>,
    fast_compile: bool,
    dotenv: Option<PathBuf>,
    operator_token: Option<manifest::TokenHash>,
    metrics: Arc<metrics::Metrics>,
    compile_cache: Option<PathBuf>,
    cluster: Option<storage::ClusterConfig>,
}

/// Compiles (or loads from the cache) one party's component, at start-up.
///
/// # Errors
/// When the component is missing, invalid, or does not fit our world.
fn load_party(sandbox: &Sandbox, name: &PartyName, spec: &PartySpec) -> anyhow::Result<LoadedParty> {
    let started = std::time::Instant::now();
    let code = sandbox.load(name.as_str(), &spec.wasm, Limits::from(&spec.limits))?;
    Ok(loaded(name, spec, code, started))
}

/// [`load_party`] while serving: on the background compile worker.
///
/// # Errors
/// As [`load_party`].
async fn compile_party(
    sandbox: &Arc<Sandbox>,
    name: &PartyName,
    spec: &PartySpec,
) -> anyhow::Result<LoadedParty> {
    let started = std::time::Instant::now();
    let code = sandbox.load_in_background(name.as_str(), &spec.wasm, Limits::from(&spec.limits)).await?;
    Ok(loaded(name, spec, code, started))
}

fn loaded(
    name: &PartyName,
    spec: &PartySpec,
    code: sandbox::PartyCode<rooms::RoomState>,
    started: std::time::Instant,
) -> LoadedParty {
    info!(party = %name, wasm = %spec.wasm.display(), elapsed = ?started.elapsed(), "party loaded");
    let vars = spec.vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    LoadedParty::new(code, vars, spec.hibernate)
}

/// The manifest's `[rooms]` and `[edge]` over the host defaults.
fn rooms_config(spec: &RoomsSpec, edge: &manifest::EdgeLimits) -> RoomsConfig {
    RoomsConfig {
        idle_timeout: Duration::from_millis(spec.idle_timeout_ms.unwrap_or(10_000)),
        max_live_instances: spec.max_live_instances.unwrap_or(1000).max(1),
        mailbox_bytes: usize::try_from(spec.mailbox_kib.unwrap_or(8 << 10).saturating_mul(1 << 10))
            .unwrap_or(usize::MAX)
            .max(1),
        ping_interval: edge.ping_interval,
        socket_idle_timeout: edge.socket_idle_timeout,
        alarm_retry: Duration::from_millis(spec.alarm_retry_ms.unwrap_or(2000).max(1)),
    }
}
