//! Deployments: a project's manifest and files arrive as one [`Bundle`],
//! are written to a new version folder, validated and compiled there, and
//! only then switched in, all at once. Versions stay on disk, so a rollback
//! is the previous folder activated again.
//!
//! On disk, under `<data_dir>/projects/<project>/`:
//! `versions/<n>/` (the manifest as `partykit.toml` plus the files it
//! names), `current` (the serving version), `storage.sqlite`.

use anyhow::Context;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use super::{Project, Projects};
use crate::ids::ProjectName;
use crate::manifest::{Deployment, ManifestError};

/// The manifest's name inside a version folder.
const MANIFEST_FILE: &str = "partykit.toml";

/// What `partyhost deploy` uploads: the manifest's text and every file it
/// names, by their paths relative to the manifest, base64-encoded.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    pub manifest: String,
    pub files: BTreeMap<String, String>,
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
    /// Writes `bundle` as the project's next version, validates and compiles
    /// it, then switches to it. On any error the new version is removed and
    /// the serving one is untouched.
    ///
    /// # Errors
    /// A [`DeployError`] with the exact reason.
    pub async fn deploy(&self, project: &ProjectName, bundle: Bundle) -> Result<Deployed, DeployError> {
        let _one_at_a_time = self.deploying.lock().await;
        let max_wasm = self.tenants.as_ref().map_or(usize::MAX, |t| t.max_wasm_bytes);
        let mut files = Vec::new();
        for (path, data) in &bundle.files {
            let relative = safe_relative(path).ok_or_else(|| {
                DeployError::Invalid(format!("file {path:?} must be a relative path inside the project"))
            })?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|e| DeployError::Invalid(format!("file {path:?} is not valid base64: {e}")))?;
            if bytes.len() > max_wasm {
                return Err(DeployError::TooLarge(format!(
                    "file {path:?} is {} bytes; this host accepts files up to {max_wasm} bytes",
                    bytes.len()
                )));
            }
            files.push((relative, bytes));
        }
        // Parsed before anything is written, so a broken manifest costs nothing.
        Deployment::parse(&bundle.manifest, Path::new("/"))?;

        let version = self.latest_version(project).map_err(DeployError::Internal)?.unwrap_or(0) + 1;
        let dir = self.version_dir(project, version);
        let written = write_version(&dir, &bundle.manifest, &files);
        let result = match written {
            Ok(()) => self.activate(project, version).await,
            Err(e) => Err(DeployError::Internal(e)),
        };
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        result
    }

    /// Switches the project back to the version before the serving one.
    ///
    /// # Errors
    /// [`DeployError::NoPrevious`] when there is none.
    pub async fn rollback(&self, project: &ProjectName) -> Result<Deployed, DeployError> {
        let _one_at_a_time = self.deploying.lock().await;
        let current = self.current_version(project).map_err(DeployError::Internal)?;
        let previous = current
            .and_then(|current| self.versions(project).ok()?.into_iter().filter(|v| *v < current).max());
        let previous = previous.ok_or_else(|| DeployError::NoPrevious(project.to_string()))?;
        self.activate(project, previous).await
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

        let existing = self.deployed(project.as_str());
        match existing {
            Some(serving) => serving.rooms.switch(deployment, parties),
            None => {
                let storage = self.root.join(project.as_str()).join("storage.sqlite");
                let opened = Project::open(
                    &storage,
                    deployment,
                    parties,
                    self.config.clone(),
                    self.totals_of(project),
                    &self.shutdown,
                    &self.tracker,
                )
                .map_err(DeployError::Internal)?;
                self.deployed
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(project.clone(), Arc::new(opened));
            }
        }
        let current = self.root.join(project.as_str()).join("current");
        std::fs::write(&current, version.to_string())
            .with_context(|| format!("writing {}", current.display()))
            .map_err(DeployError::Internal)?;
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

fn write_version(dir: &Path, manifest: &str, files: &[(PathBuf, Vec<u8>)]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join(MANIFEST_FILE), manifest).context("writing the manifest")?;
    for (relative, bytes) in files {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
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

/// Compiles every party off the async threads. The first failure names
/// its party and what is wrong with the component.
async fn compile_all(
    sandbox: &Arc<crate::sandbox::Sandbox>,
    deployment: &Deployment,
    dir: &Path,
) -> Result<HashMap<crate::ids::PartyName, Arc<crate::rooms::LoadedParty>>, DeployError> {
    let mut parties = HashMap::new();
    for (name, spec) in &deployment.parties {
        let (sandbox, name, spec) = (sandbox.clone(), name.clone(), spec.clone());
        let dir = dir.to_path_buf();
        let loaded = tokio::task::spawn_blocking(move || {
            crate::load_party(&sandbox, &name, &spec).map(|party| (name, party)).map_err(|e| {
                // The message names server paths; the client needs only its own.
                format!("{e:#}").replace(&format!("{}/", dir.display()), "")
            })
        })
        .await
        .map_err(|e| DeployError::Internal(anyhow::anyhow!("the compile task failed: {e}")))?;
        let (name, party) = loaded.map_err(DeployError::Invalid)?;
        parties.insert(name, Arc::new(party));
    }
    Ok(parties)
}
