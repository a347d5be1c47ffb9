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

mod deploy;

pub use deploy::{Bundle, DeployError, Deployed, Deploying};

use axum::Router;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::budget::{Resource, Scope, Totals};
use crate::ids::ProjectName;
use crate::manifest::{Deployment, Tenants, TotalsSpec};
use crate::rooms::{LoadedParty, Rooms, RoomsConfig};
use crate::sandbox::Sandbox;
use crate::storage::Storage;

/// The path prefix that reaches a deployed project without its host name.
pub const PATH_PREFIX: &str = "/p/";

/// One project: its rooms and the routes that lead to them.
pub struct Project {
    pub rooms: Arc<Rooms>,
    /// The party routes and static files, bound to `rooms`.
    pub app: Router,
}

impl Project {
    /// Opens the project's storage file and starts serving `deployment`.
    ///
    /// # Errors
    /// When the storage file cannot be opened.
    pub fn open(
        storage_file: &Path,
        deployment: Deployment,
        parties: HashMap<crate::ids::PartyName, Arc<LoadedParty>>,
        config: RoomsConfig,
        totals: Totals,
        shutdown: &CancellationToken,
        tracker: &TaskTracker,
    ) -> anyhow::Result<Self> {
        let (storage, alarms, stored_bytes) = Storage::open(storage_file)?;
        // What is on disk counts, whatever the caps say now.
        totals.charge(Resource::Storage, stored_bytes);
        totals.charge(Resource::Alarms, alarms.len() as u64);
        let rooms =
            Rooms::new(deployment, parties, storage, config, shutdown.clone(), tracker.clone(), totals);
        if !alarms.is_empty() {
            tracing::info!(alarms = alarms.len(), file = %storage_file.display(), "scheduling stored alarms");
        }
        rooms.schedule_alarms(alarms);
        let app = crate::http::project_router(rooms.clone(), shutdown.clone());
        Ok(Self { rooms, app })
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
    pub(crate) fn new(
        local: Project,
        tenants: Option<Tenants>,
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

    /// `tenants.toml`, when multi-tenant hosting is on.
    pub fn tenants(&self) -> Option<&Tenants> {
        self.tenants.as_ref()
    }

    /// A deployed project that is serving.
    pub fn deployed(&self, name: &str) -> Option<Arc<Project>> {
        self.deployed.read().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
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
