//! Deployments: a project's manifest and files arrive as one [`Bundle`],
//! are written to a new version folder, validated and compiled there, and
//! only then switched in, all at once. Versions stay on disk, so a rollback
//! is the previous folder activated again.
//!
//! On disk, under `<data_dir>/projects/<project>/`:
//! `versions/<n>/` (the manifest as `partykit.toml` plus the files it
//! names), `current` (the serving version), `storage.sqlite`.
//!
//! A project deploys (or rolls back) one change at a time: [`Deploying`]
//! is its lock, taken before the upload is read, so a second upload of the
//! same project is refused at once instead of piling up in memory. What a
//! project keeps on disk is bounded: the newest `keep_versions` versions
//! (and the serving one), within its `disk_mib` quota with its storage.

use anyhow::Context;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use super::{Project, Projects};
use crate::ids::ProjectName;
use crate::manifest::{Deployment, ManifestError};

/// The manifest's name inside a version folder.
const MANIFEST_FILE: &str = "partykit.toml";

/// Most files one deployment may carry: each is an inode and a write.
const MAX_FILES: usize = 10_000;

/// A file system block: the least a file or folder takes on disk.
const BLOCK: u64 = 4096;

/// A temporary name for `current` while it is written.
const CURRENT_TMP: &str = "current.tmp";

/// What `partyhost deploy` uploads: the manifest's text and every file it
/// names, by their paths relative to the manifest, base64-encoded. The
/// host parses it in place (borrowing from the upload) and decodes one
/// file at a time straight to disk, so an upload costs its own size once.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle<'a> {
    #[serde(borrow)]
    pub manifest: Cow<'a, str>,
    #[serde(borrow)]
    pub files: BTreeMap<String, Cow<'a, str>>,
}

/// A project's deploy lock: while it is held, no other deployment or
/// rollback of that project runs.
pub struct Deploying {
    project: ProjectName,
    _held: tokio::sync::OwnedMutexGuard<()>,
}

/// A version that is now serving.
#[derive(Debug, Serialize)]
pub struct Deployed {
    pub project: String,
    pub version: u64,
    pub parties: Vec<String>,
    /// Validation and compilation, in milliseconds.
    pub took_ms: u64,
}

/// Why a deployment or rollback changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The upload is wrong; the message says exactly how (400).
    #[error("{0}")]
    Invalid(String),
    /// The upload or one of its files is over the host's size limit (413).
    #[error("{0}")]
    TooLarge(String),
    /// Rollback with no earlier version (409).
    #[error("project `{0}` has no earlier version to roll back to")]
    NoPrevious(String),
    /// Another deployment or rollback of the project is under way (409).
    #[error("a deployment or rollback of project `{0}` is already under way; try again when it is done")]
    Busy(String),
    /// The project's disk quota would be passed (507).
    #[error("{0}")]
    OverQuota(String),
    /// The host failed (500); logged with its cause.
    #[error("{0:#}")]
    Internal(anyhow::Error),
}

impl From<ManifestError> for DeployError {
    fn from(e: ManifestError) -> Self {
        Self::Invalid(format!("{MANIFEST_FILE}: {e}"))
    }
}

impl Projects {
    /// Takes `project`'s deploy lock, or refuses at once if it is held.
    ///
    /// # Errors
    /// [`DeployError::Busy`] while another change of the project runs.
    pub fn begin(&self, project: &ProjectName) -> Result<Deploying, DeployError> {
        let lock = self
            .deploying
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(project.clone())
            .or_default()
            .clone();
        let held = lock.try_lock_owned().map_err(|_| DeployError::Busy(project.to_string()))?;
        Ok(Deploying { project: project.clone(), _held: held })
    }

    /// Writes the upload `body` (a [`Bundle`] as JSON) as the project's next
    /// version, validates and compiles it, then switches to it. On any
    /// error the new version is removed and the serving one is untouched.
    /// Old versions past `keep_versions` go.
    ///
    /// The work runs to its end in a task of its own that holds the
    /// project's lock, so a client that hangs up or times out leaves
    /// neither half a version nor a compile nobody waits for; file work
    /// runs on the blocking pool, never on the serving threads.
    ///
    /// # Errors
    /// A [`DeployError`] with the exact reason.
    pub async fn deploy(
        self: &Arc<Self>,
        deploying: Deploying,
        body: bytes::Bytes,
    ) -> Result<Deployed, DeployError> {
        let projects = self.clone();
        let task = tokio::spawn(async move {
            let project = deploying.project.clone();
            let (version, dir) = blocking({
                let (projects, project) = (projects.clone(), project.clone());
                move || projects.write_upload(&project, &body)
            })
            .await?;
            let result = projects.activate(&project, version).await;
            let succeeded = result.is_ok();
            let cleaned = blocking(move || {
                if succeeded {
                    projects.prune(&project);
                } else {
                    let _ = std::fs::remove_dir_all(&dir);
                }
                Ok(())
            });
            let _ = cleaned.await;
            drop(deploying);
            result
        });
        task.await.map_err(|e| DeployError::Internal(anyhow::anyhow!("the deploy task failed: {e}")))?
    }

    /// Checks the upload and writes it as the next version's folder.
    /// Returns the version and its folder.
    fn write_upload(&self, project: &ProjectName, body: &[u8]) -> Result<(u64, PathBuf), DeployError> {
        let bundle: Bundle<'_> = serde_json::from_slice(body)
            .map_err(|e| DeployError::Invalid(format!("the deployment is not a valid bundle: {e}")))?;
        if bundle.files.len() > MAX_FILES {
            return Err(DeployError::Invalid(format!(
                "the deployment has {} files; this host takes at most {MAX_FILES}",
                bundle.files.len()
            )));
        }
        let (max_wasm, quota) =
            self.tenants.as_ref().map_or((usize::MAX, u64::MAX), |t| (t.max_wasm_bytes, t.disk_bytes));
        let mut files = Vec::with_capacity(bundle.files.len());
        let mut incoming = on_disk(bundle.manifest.len() as u64);
        for (path, data) in &bundle.files {
            let relative = safe_relative(path).ok_or_else(|| {
                DeployError::Invalid(format!("file {path:?} must be a relative path inside the project"))
            })?;
            let len = decoded_len(data);
            if len > max_wasm {
                return Err(too_large(path, len, max_wasm));
            }
            incoming += on_disk(len as u64);
            files.push((relative, path.as_str(), data.as_ref()));
        }
        // Parsed before anything is written, so a broken manifest costs nothing.
        Deployment::parse(&bundle.manifest, Path::new("/"))?;
        let used = self.disk_after_deploy(project).map_err(DeployError::Internal)?;
        if used.total() + incoming > quota {
            return Err(DeployError::OverQuota(format!(
                "project `{project}` would use {} of its {} disk quota (storage {}, versions kept {}, this \
                 deployment {}); remove data or ask for more (tenants.toml: disk_mib)",
                mib(used.total() + incoming),
                mib(quota),
                mib(used.storage),
                mib(used.versions),
                mib(incoming)
            )));
        }
        let version = self.latest_version(project).map_err(DeployError::Internal)?.unwrap_or(0) + 1;
        let dir = self.version_dir(project, version);
        if let Err(e) = write_version(&dir, &bundle.manifest, &files, max_wasm) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        Ok((version, dir))
    }

    /// Switches the project back to the version before the serving one, in
    /// a task of its own like [`Projects::deploy`].
    ///
    /// # Errors
    /// [`DeployError::NoPrevious`] when there is none.
    pub async fn rollback(self: &Arc<Self>, deploying: Deploying) -> Result<Deployed, DeployError> {
        let projects = self.clone();
        let task = tokio::spawn(async move {
            let project = &deploying.project;
            let current = projects.current_version(project).map_err(DeployError::Internal)?;
            let previous = current.and_then(|current| {
                projects.versions(project).ok()?.into_iter().filter(|v| *v < current).max()
            });
            let previous = previous.ok_or_else(|| DeployError::NoPrevious(project.to_string()))?;
            projects.activate(project, previous).await
        });
        task.await.map_err(|e| DeployError::Internal(anyhow::anyhow!("the rollback task failed: {e}")))?
    }

    /// Removes versions past the newest `keep_versions`, never the serving
    /// one. Failures are logged: the next deployment tries again.
    fn prune(&self, project: &ProjectName) {
        let keep = self.tenants.as_ref().map_or(usize::MAX, |t| t.keep_versions);
        let current = self.current_version(project).ok().flatten();
        for version in self.versions_beyond(project, keep) {
            if Some(version) == current {
                continue;
            }
            let dir = self.version_dir(project, version);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => tracing::info!(%project, version, "removed an old version"),
                Err(e) => tracing::warn!(%project, version, cause = %e, "could not remove an old version"),
            }
        }
    }

    /// Versions older than the newest `keep`, newest first.
    fn versions_beyond(&self, project: &ProjectName, keep: usize) -> Vec<u64> {
        let mut versions = self.versions(project).unwrap_or_default();
        versions.sort_unstable_by(|a, b| b.cmp(a));
        versions.into_iter().skip(keep).collect()
    }

    /// The project's disk use once a new version is in and pruning is done:
    /// its storage files and the versions that will stay.
    fn disk_after_deploy(&self, project: &ProjectName) -> anyhow::Result<DiskUse> {
        let keep = self.tenants.as_ref().map_or(usize::MAX, |t| t.keep_versions).saturating_sub(1);
        let current = self.current_version(project)?;
        let going = self.versions_beyond(project, keep);
        let mut versions = 0;
        for version in self.versions(project)? {
            if Some(version) == current || !going.contains(&version) {
                versions += disk_size(&self.version_dir(project, version))?;
            }
        }
        let root = self.root.join(project.as_str());
        let mut storage = 0;
        if let Ok(entries) = std::fs::read_dir(&root) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with("storage.sqlite") {
                    storage += entry.metadata().map_or(0, |m| m.len());
                }
            }
        }
        Ok(DiskUse { storage, versions })
    }

    /// Validates, compiles and switches to a version already on disk.
    pub(super) async fn activate(
        &self,
        project: &ProjectName,
        version: u64,
    ) -> Result<Deployed, DeployError> {
        let started = std::time::Instant::now();
        let dir = self.version_dir(project, version);
        let text = std::fs::read_to_string(dir.join(MANIFEST_FILE))
            .with_context(|| format!("reading version {version} of {project}"))
            .map_err(DeployError::Internal)?;
        let mut deployment = Deployment::parse(&text, &dir)?;
        check_inside(&deployment, &dir)?;
        if let Some(tenants) = &self.tenants {
            tenants.apply_caps(&mut deployment)?;
        }
        let parties = compile_all(&self.sandbox, &deployment, &dir).await?;
        let names = deployment.parties.keys().map(ToString::to_string).collect();

        // Everything that can fail happens before the switch: a new project's
        // storage is opened, then `current` is replaced atomically. If either
        // fails, the version serving before goes on serving.
        let existing = self.deployed(project.as_str());
        let opened = match existing {
            Some(_) => None,
            None => {
                let dir = self.root.join(project.as_str());
                let secrets =
                    super::Secrets::open(dir.join(super::SECRETS_FILE)).map_err(DeployError::Internal)?;
                let storage_file = dir.join("storage.sqlite");
                let opened = Project::open(
                    super::ProjectStorage::File(&storage_file),
                    secrets,
                    self.metrics.project(project.as_str()),
                    deployment.clone(),
                    parties.clone(),
                    self.config.clone(),
                    self.totals_of(project),
                    &self.shutdown,
                    &self.tracker,
                )
                .map_err(DeployError::Internal)?;
                Some(opened)
            }
        };
        // At start-up the version is already `current`: nothing to write.
        if self.current_version(project).ok().flatten() != Some(version) {
            let project_dir = self.root.join(project.as_str());
            blocking(move || write_current(&project_dir, version).map_err(DeployError::Internal)).await?;
        }
        match (existing, opened) {
            (Some(serving), _) => serving.rooms.switch(deployment, parties),
            (None, Some(opened)) => {
                self.deployed
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(project.clone(), Arc::new(opened));
            }
            (None, None) => {}
        }
        let took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        tracing::info!(%project, version, took_ms, "project version serving");
        Ok(Deployed { project: project.to_string(), version, parties: names, took_ms })
    }

    fn version_dir(&self, project: &ProjectName, version: u64) -> PathBuf {
        self.root.join(project.as_str()).join("versions").join(version.to_string())
    }

    /// Every version on disk, unordered.
    fn versions(&self, project: &ProjectName) -> anyhow::Result<Vec<u64>> {
        let dir = self.root.join(project.as_str()).join("versions");
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
        };
        Ok(entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
    }

    fn latest_version(&self, project: &ProjectName) -> anyhow::Result<Option<u64>> {
        Ok(self.versions(project)?.into_iter().max())
    }

    /// The version named by the project's `current` file.
    pub(super) fn current_version(&self, project: &ProjectName) -> anyhow::Result<Option<u64>> {
        let file = self.root.join(project.as_str()).join("current");
        match std::fs::read_to_string(&file) {
            Ok(text) => text.trim().parse().map(Some).with_context(|| format!("reading {}", file.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", file.display())),
        }
    }
}

/// `path` as a relative path of plain names, or `None`.
fn safe_relative(path: &str) -> Option<PathBuf> {
    let path = Path::new(path);
    let plain = path.components().all(|c| matches!(c, Component::Normal(_)));
    (plain && !path.as_os_str().is_empty()).then(|| path.to_path_buf())
}

/// Writes the manifest and every file, each decoded from base64 on its
/// own, so only one decoded file is in memory at a time.
fn write_version(
    dir: &Path,
    manifest: &str,
    files: &[(PathBuf, &str, &str)],
    max_file: usize,
) -> Result<(), DeployError> {
    let internal = DeployError::Internal;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display())).map_err(internal)?;
    std::fs::write(dir.join(MANIFEST_FILE), manifest).context("writing the manifest").map_err(internal)?;
    for (relative, shown, data) in files {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| DeployError::Invalid(format!("file {shown:?} is not valid base64: {e}")))?;
        if bytes.len() > max_file {
            return Err(too_large(shown, bytes.len(), max_file));
        }
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))
                .map_err(internal)?;
        }
        std::fs::write(&path, bytes)
            .with_context(|| format!("writing {}", path.display()))
            .map_err(internal)?;
    }
    Ok(())
}

/// Runs file work on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, DeployError> + Send + 'static,
) -> Result<T, DeployError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| DeployError::Internal(anyhow::anyhow!("a file task failed: {e}")))?
}

/// What `len` bytes take on disk at least: a block, even for an empty file.
fn on_disk(len: u64) -> u64 {
    len.max(BLOCK)
}

/// The length of padded base64 once decoded (checked again on decoding).
fn decoded_len(data: &str) -> usize {
    let padding = data.bytes().rev().take(2).filter(|b| *b == b'=').count();
    (data.len() / 4 * 3).saturating_sub(padding)
}

fn too_large(path: &str, len: usize, max: usize) -> DeployError {
    DeployError::TooLarge(format!("file {path:?} is {len} bytes; this host accepts files up to {max} bytes"))
}

/// Replaces the project's `current` file atomically (see [`replace_file`]).
fn write_current(project_dir: &Path, version: u64) -> anyhow::Result<()> {
    let (tmp, current) = (project_dir.join(CURRENT_TMP), project_dir.join("current"));
    super::replace_file(&current, &tmp, version.to_string().as_bytes(), 0o644)
}

/// What a project holds on disk, in bytes.
struct DiskUse {
    storage: u64,
    versions: u64,
}

impl DiskUse {
    fn total(&self) -> u64 {
        self.storage + self.versions
    }
}

/// Bytes of every file below `path`.
fn disk_size(path: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    let mut pending = vec![path.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
        };
        for entry in entries {
            let entry = entry?;
            let metadata = entry.metadata()?;
            if metadata.is_dir() {
                pending.push(entry.path());
            }
            total += on_disk(metadata.len());
        }
    }
    Ok(total)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// Every path the manifest names must stay inside the version folder, and
/// every component must have been uploaded.
fn check_inside(deployment: &Deployment, dir: &Path) -> Result<(), DeployError> {
    let inside = |path: &Path| {
        path.strip_prefix(dir).is_ok_and(|rest| rest.components().all(|c| matches!(c, Component::Normal(_))))
    };
    for (party, spec) in &deployment.parties {
        let shown = spec.wasm.strip_prefix(dir).unwrap_or(&spec.wasm).display().to_string();
        if !inside(&spec.wasm) {
            return Err(ManifestError::OutsideProject {
                party: party.to_string(),
                what: "wasm",
                path: shown,
            }
            .into());
        }
        if !spec.wasm.is_file() {
            return Err(DeployError::Invalid(format!(
                "party `{party}`: wasm {shown:?} is not among the uploaded files"
            )));
        }
    }
    if let Some(serve) = &deployment.serve
        && !inside(&serve.dir)
    {
        let shown = serve.dir.display().to_string();
        return Err(
            ManifestError::OutsideProject { party: "(serve)".into(), what: "path", path: shown }.into()
        );
    }
    Ok(())
}

/// Compiles every party on the background compile worker. The first failure names
/// its party and what is wrong with the component.
async fn compile_all(
    sandbox: &Arc<crate::sandbox::Sandbox>,
    deployment: &Deployment,
    dir: &Path,
) -> Result<HashMap<crate::ids::PartyName, Arc<crate::rooms::LoadedParty>>, DeployError> {
    let mut parties = HashMap::new();
    for (name, spec) in &deployment.parties {
        let party = crate::compile_party(sandbox, name, spec).await.map_err(|e| {
            // The message names server paths; the client needs only its own.
            DeployError::Invalid(format!("{e:#}").replace(&format!("{}/", dir.display()), ""))
        })?;
        parties.insert(name.clone(), Arc::new(party));
    }
    Ok(parties)
}
