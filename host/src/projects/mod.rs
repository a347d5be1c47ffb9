//! Projects: the namespaces of a multi-tenant host.
//!
//! Every project is its own [`Rooms`] registry with its own SQLite file, so
//! its rooms, storage, alarms and room-to-room fetches cannot name another
//! project's: there is no path from one registry to another. The host's own
//! manifest is the *local* project, reached at plain paths. Deployed
//! projects (listed in `tenants.toml`) are reached at `<project>.<domain>`
//! or under the path prefix `/p/<project>/`.
//!
//! - `deploy.rs`: uploads, versions on disk, validation, the atomic switch
//!   and rollback.
//! - `secrets.rs`: each project's secrets, read by its guests as vars.

mod deploy;
mod secrets;

pub use deploy::{Bundle, DeployError, Deployed, Deploying};
pub use secrets::{MAX_VALUE_BYTES as MAX_SECRET_BYTES, SecretError, Secrets, parse_dotenv};

use axum::Router;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::budget::{Resource, Scope, Totals};
use crate::ids::ProjectName;
use crate::manifest::{Deployment, Tenants, TokenHash, TotalsSpec};
use crate::metrics::{Metrics, ProjectMetrics};
use crate::rooms::{LoadedParty, Rooms, RoomsConfig};
use crate::sandbox::Sandbox;
use crate::storage::Storage;

/// A project's secrets file, in its folder (the data dir for the local one).
pub const SECRETS_FILE: &str = "secrets.json";

/// The path prefix that reaches a deployed project without its host name.
pub const PATH_PREFIX: &str = "/p/";

/// Where a project's rooms keep their storage.
pub enum ProjectStorage<'a> {
    /// A SQLite file of the project's own.
    File(&'a Path),
    /// A cluster's PostgreSQL database (the local project of a node).
    Cluster(&'a Arc<crate::storage::Postgres>),
}

/// One project: its rooms and the routes that lead to them.
pub struct Project {
    pub rooms: Arc<Rooms>,
    /// The party routes and static files, bound to `rooms`.
    pub app: Router,
    /// Laid over the parties' vars (see [`Project::set_secret`]).
    pub secrets: Secrets,
    /// Held while a secret changes and reaches the rooms, so two changes
    /// at once cannot leave the rooms with the older set.
    changing: std::sync::Mutex<()>,
}

impl Project {
    /// Opens the project's storage and starts serving `deployment`, with
    /// `secrets` over its vars. In a cluster, alarms are found by the
    /// node's sweeper instead of at start.
    ///
    /// # Errors
    /// When the storage file cannot be opened.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        storage: ProjectStorage<'_>,
        secrets: Secrets,
        metrics: ProjectMetrics,
        deployment: Deployment,
        parties: HashMap<crate::ids::PartyName, Arc<LoadedParty>>,
        config: RoomsConfig,
        totals: Totals,
        shutdown: &CancellationToken,
        tracker: &TaskTracker,
    ) -> anyhow::Result<Self> {
        let (storage, alarms, stored_bytes) = match storage {
            ProjectStorage::File(path) => Storage::open(path, metrics.commits())?,
            ProjectStorage::Cluster(pg) => {
                (Storage::open_postgres(pg.clone(), &deployment.name), Vec::new(), 0)
            }
        };
        // What is on disk counts, whatever the caps say now.
        totals.charge(Resource::Storage, stored_bytes);
        totals.charge(Resource::Alarms, alarms.len() as u64);
        let rooms = Rooms::new(
            deployment,
            parties,
            storage,
            config,
            shutdown.clone(),
            tracker.clone(),
            totals,
            metrics,
        );
        if !alarms.is_empty() {
            tracing::info!(alarms = alarms.len(), "scheduling stored alarms");
        }
        rooms.schedule_alarms(alarms);
        rooms.set_secrets(secrets.values());
        let app = crate::http::project_router(rooms.clone(), shutdown.clone());
        Ok(Self { rooms, app, secrets, changing: std::sync::Mutex::default() })
    }

    /// Reads the `.env` at `path` over the stored secrets again
    /// (`partyhost dev`); rooms read the values from their next event.
    ///
    /// # Errors
    /// As [`Secrets::read_dotenv`]; then nothing changed.
    pub fn read_dotenv(&self, path: &Path) -> anyhow::Result<()> {
        let _changing = self.changing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.secrets.read_dotenv(path)?;
        self.rooms.set_secrets(self.secrets.values());
        Ok(())
    }

    /// Sets (or with `None` removes) a secret; rooms read the new value
    /// from their next event. Returns whether it existed (for removal).
    ///
    /// # Errors
    /// As [`Secrets::set`].
    pub fn set_secret(&self, name: &str, value: Option<&str>) -> Result<bool, SecretError> {
        let _changing = self.changing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let existed = match value {
            Some(value) => self.secrets.set(name, value).map(|()| true)?,
            None => self.secrets.remove(name)?,
        };
        self.rooms.set_secrets(self.secrets.values());
        Ok(existed)
    }
}

/// Where a request goes.
pub enum Route {
    /// The local project, path unchanged.
    Local(Arc<Project>),
    /// A deployed project; the path loses this many leading bytes (the
    /// `/p/<project>` prefix, or nothing when the host name chose).
    Deployed(Arc<Project>, usize),
    /// A host name or prefix that names no deployed project.
    Unknown(String),
}

/// Every project of the host.
pub struct Projects {
    local: Arc<Project>,
    deployed: RwLock<HashMap<ProjectName, Arc<Project>>>,
    /// `None`: multi-tenant hosting is off.
    tenants: Option<Tenants>,
    /// The operator's token, which may act on every project.
    operator_token: Option<TokenHash>,
    /// The host's metrics; each project resolves its handles here.
    metrics: Arc<Metrics>,
    sandbox: Arc<Sandbox>,
    /// `<data_dir>/projects`: versions and storage of deployed projects.
    root: PathBuf,
    config: RoomsConfig,
    /// The host's totals, which every project's rooms also take from.
    host_totals: Arc<Scope>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    /// Each project's deploy lock (see [`Deploying`]).
    deploying: std::sync::Mutex<HashMap<ProjectName, Arc<tokio::sync::Mutex<()>>>>,
}

impl Projects {
    // Called once, by `Host::start_with`: each argument is a part it owns.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        local: Project,
        tenants: Option<Tenants>,
        operator_token: Option<TokenHash>,
        metrics: Arc<Metrics>,
        sandbox: Arc<Sandbox>,
        data_dir: &Path,
        config: RoomsConfig,
        host_totals: Arc<Scope>,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Arc<Self> {
        Arc::new(Self {
            host_totals,
            local: Arc::new(local),
            deployed: RwLock::default(),
            tenants,
            operator_token,
            metrics,
            sandbox,
            root: data_dir.join("projects"),
            config,
            shutdown,
            tracker,
            deploying: std::sync::Mutex::default(),
        })
    }

    /// The totals of a deployed project: `tenants.toml`'s `[totals]`
    /// over the project defaults, and the host's.
    fn totals_of(&self, project: &ProjectName) -> Totals {
        let spec = self.tenants.as_ref().map(|t| t.totals.clone()).unwrap_or_default();
        let scope = Scope::new(format!("project `{project}`"), &spec, &TotalsSpec::project_defaults());
        Totals { project: scope, host: self.host_totals.clone() }
    }

    /// The host's own project.
    pub fn local(&self) -> &Arc<Project> {
        &self.local
    }

    /// Cancelled when the host shuts down.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// The secret names of a deployed project, serving or not.
    ///
    /// # Errors
    /// When its secrets file cannot be read.
    pub fn secret_names(&self, project: &ProjectName) -> anyhow::Result<Vec<String>> {
        match self.deployed(project.as_str()) {
            Some(serving) => Ok(serving.secrets.names()),
            None => Ok(Secrets::open(self.secrets_file(project))?.names()),
        }
    }

    /// Sets (or with `None` removes) a deployed project's secret. One not
    /// serving yet keeps it for its first deploy. Returns whether it
    /// existed (for removal).
    ///
    /// # Errors
    /// As [`Secrets::set`]; `Busy` while the project is being deployed.
    pub fn set_secret(
        &self,
        project: &ProjectName,
        name: &str,
        value: Option<&str>,
    ) -> Result<bool, SecretError> {
        if let Some(serving) = self.deployed(project.as_str()) {
            return serving.set_secret(name, value);
        }
        // The deploy lock: a first deploy opening the project now would read
        // the file before this change.
        let _deploying = self.begin(project).map_err(|e| SecretError::Busy(e.to_string()))?;
        if let Some(serving) = self.deployed(project.as_str()) {
            return serving.set_secret(name, value);
        }
        let secrets = Secrets::open(self.secrets_file(project)).map_err(SecretError::Internal)?;
        match value {
            Some(value) => secrets.set(name, value).map(|()| true),
            None => secrets.remove(name),
        }
    }

    fn secrets_file(&self, project: &ProjectName) -> PathBuf {
        self.root.join(project.as_str()).join(SECRETS_FILE)
    }

    /// The host's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The operator's token digest, if one was given.
    pub fn operator_token(&self) -> Option<&TokenHash> {
        self.operator_token.as_ref()
    }

    /// `tenants.toml`, when multi-tenant hosting is on.
    pub fn tenants(&self) -> Option<&Tenants> {
        self.tenants.as_ref()
    }

    /// A deployed project that is serving.
    pub fn deployed(&self, name: &str) -> Option<Arc<Project>> {
        self.deployed.read().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    /// Every serving project by name, the local one first.
    pub fn serving(&self) -> Vec<(String, Arc<Project>)> {
        let mut all = vec![(self.local.rooms.deployment().name, self.local.clone())];
        let deployed = self.deployed.read().unwrap_or_else(|p| p.into_inner());
        all.extend(deployed.iter().map(|(name, project)| (name.to_string(), project.clone())));
        all
    }

    /// The version a deployed project serves, if any.
    pub fn serving_version(&self, project: &ProjectName) -> Option<u64> {
        self.current_version(project).ok().flatten()
    }

    /// Chooses the project for a request by its `Host` header, then by the
    /// `/p/<project>/` prefix; anything else is the local project's.
    pub fn route(&self, host: Option<&str>, path: &str) -> Route {
        let host_name = host.map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name).to_ascii_lowercase());
        if let (Some(domain), Some(host_name)) =
            (self.tenants.as_ref().and_then(|t| t.domain.as_ref()), host_name)
            && let Some(label) = host_name.strip_suffix(domain.as_str()).and_then(|l| l.strip_suffix('.'))
        {
            return match self.deployed(label) {
                Some(project) => Route::Deployed(project, 0),
                None => Route::Unknown(label.to_owned()),
            };
        }
        if self.tenants.is_some()
            && let Some(rest) = path.strip_prefix(PATH_PREFIX)
        {
            let name = rest.split('/').next().unwrap_or_default();
            return match self.deployed(name) {
                Some(project) => Route::Deployed(project, PATH_PREFIX.len() + name.len()),
                None => Route::Unknown(name.to_owned()),
            };
        }
        Route::Local(self.local.clone())
    }

    /// Loads the current version of every project in `tenants.toml` that
    /// has one. A project that fails to load is logged and left out; the
    /// others serve.
    pub(crate) async fn load_deployed(&self) {
        let Some(tenants) = &self.tenants else { return };
        for project in tenants.projects() {
            match self.current_version(project) {
                Ok(Some(version)) => match self.activate(project, version).await {
                    Ok(deployed) => {
                        tracing::info!(%project, version, parties = ?deployed.parties, "project loaded")
                    }
                    Err(e) => tracing::error!(%project, version, cause = %e, "could not load project"),
                },
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(%project, cause = %format!("{e:#}"), "could not read project versions")
                }
            }
        }
    }
}

/// Replaces `target` atomically: `tmp` is written with `bytes` (and
/// `mode`), synced, renamed over it, and the folder synced, so a crash or a
/// failed write leaves the old content or the new, never neither.
///
/// # Errors
/// When the temporary file cannot be written or renamed.
pub(crate) fn replace_file(target: &Path, tmp: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::io::Write as _;
    // A stale temporary file would keep its own permissions.
    let _ = std::fs::remove_file(tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(bytes).with_context(|| format!("writing {}", tmp.display()))?;
    file.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
    std::fs::rename(tmp, target).with_context(|| format!("renaming to {}", target.display()))?;
    // The switch has happened: failing now would undo nothing. A folder
    // that cannot be synced is only logged.
    let dir = target.parent().unwrap_or(Path::new("."));
    if let Err(e) = std::fs::File::open(dir).and_then(|dir| dir.sync_all()) {
        tracing::warn!(dir = %dir.display(), cause = %e, "could not sync the folder");
    }
    Ok(())
}
