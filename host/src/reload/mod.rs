//! `partyhost dev`: live reload while sockets stay open.
//!
//! A [`Reloader`] watches the manifest, the `.env` beside it, each party's
//! `.wasm`, and each party's `build.watch` paths (notify). Bursts of file events are
//! debounced. A change to a party's sources runs its `build.command`, with
//! the compiler's output shown as it comes; a changed `.wasm` is validated
//! and compiled on a blocking thread, off the serving path, then swapped into
//! the registry. Rooms pick the new code up at their next event: their
//! instance is dropped, a new one runs `on-start` from storage, and clients
//! see no close. A failed build, an invalid component or a bad manifest
//! leaves the previous version serving and prints one error; fixing the
//! file recovers.
//!
//! Reload reaches rooms only through the registry (`Rooms::replace_party`,
//! `Rooms::switch`, and the project's secrets for `.env`).

mod watcher;

use anyhow::Context;
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::ids::PartyName;
use crate::manifest::{Deployment, PartySpec};
use crate::projects::Project;
use crate::rooms::{LoadedParty, Rooms};
use crate::sandbox::Sandbox;
use watcher::Watcher;

/// Quiet time that ends a burst of file events (editors and cargo write
/// several times per save).
const DEBOUNCE: Duration = Duration::from_millis(30);
/// A burst is cut off after this long even if events keep coming.
const MAX_BURST: Duration = Duration::from_millis(500);

/// Counts of what the reloader did, for tests and tooling.
#[derive(Debug, Default)]
pub struct ReloadStats {
    /// Party code swapped in, or a manifest applied.
    pub applied: AtomicU64,
    /// Builds, components or manifests refused (the old version serves on).
    pub failed: AtomicU64,
    /// Builds started: a party's `build.command`, or one JavaScript build
    /// (of every script party whose sources changed).
    pub builds: AtomicU64,
}

/// Watches a served manifest and swaps in what changes.
pub struct Reloader {
    manifest: PathBuf,
    /// The `.env` beside the manifest: secrets for the local project.
    dotenv: PathBuf,
    project: Arc<Project>,
    rooms: Arc<Rooms>,
    sandbox: Arc<Sandbox>,
    /// Digest of the `.wasm` each party now runs: an unchanged file (a
    /// no-op build, a touch) does not restart the party's rooms.
    digests: HashMap<PartyName, [u8; 32]>,
    /// Digest of the manifest text last applied or refused.
    manifest_digest: Option<[u8; 32]>,
    stats: Arc<ReloadStats>,
}

impl Reloader {
    pub(crate) fn new(manifest: PathBuf, project: Arc<Project>, sandbox: Arc<Sandbox>) -> Self {
        let rooms = project.rooms.clone();
        let dotenv = manifest.parent().unwrap_or(Path::new(".")).join(".env");
        let digests = rooms
            .deployment()
            .parties
            .iter()
            .filter_map(|(name, spec)| Some((name.clone(), digest(&spec.wasm).ok()?)))
            .collect();
        let manifest_digest = digest(&manifest).ok();
        Self { manifest, dotenv, project, rooms, sandbox, digests, manifest_digest, stats: Arc::default() }
    }

    pub fn stats(&self) -> Arc<ReloadStats> {
        self.stats.clone()
    }

    /// Starts watching now (a change made once this returns is seen), and
    /// reloads in a task until `shutdown`.
    ///
    /// # Errors
    /// When the file watcher cannot start.
    pub fn spawn(
        self,
        shutdown: CancellationToken,
    ) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
        let watcher = Watcher::new(&self.manifest, &self.rooms.deployment())?;
        info!(manifest = %self.manifest.display(), "watching for changes");
        Ok(tokio::spawn(self.run(watcher, shutdown)))
    }

    async fn run(mut self, mut watcher: Watcher, shutdown: CancellationToken) -> anyhow::Result<()> {
        loop {
            let changed = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                changed = watcher.next_burst(DEBOUNCE, MAX_BURST) => changed,
            };
            let Some(changed) = changed else { return Ok(()) };
            if changed.contains(&watcher::normal(&self.dotenv)) {
                self.apply_dotenv();
            }
            if changed.contains(&watcher::normal(&self.manifest)) || watcher.overflowed() {
                while self.apply_manifest().await {
                    watcher = Watcher::new(&self.manifest, &self.rooms.deployment())?;
                    // A write between the load and the new watcher reached
                    // neither watcher: look at the file itself once more.
                    if digest(&self.manifest).ok() == self.manifest_digest {
                        break;
                    }
                }
                continue;
            }
            self.apply_changes(&changed).await;
        }
    }

    /// Reads `.env` again; a malformed one leaves the previous values.
    fn apply_dotenv(&self) {
        match self.project.read_dotenv(&self.dotenv) {
            Ok(()) => {
                self.stats.applied.fetch_add(1, Ordering::Relaxed);
                eprintln!("partyhost dev: .env applied; rooms read it at their next event");
            }
            Err(e) => {
                self.refused(&format!("{e:#}; the previous values stay"));
            }
        }
    }

    /// Rebuilds parties whose sources changed, then reloads changed `.wasm`s.
    async fn apply_changes(&mut self, changed: &BTreeSet<PathBuf>) {
        let deployment = self.rooms.deployment();
        // Storage and compiled code change under a watched project folder
        // at every commit: never a source change.
        let data_dir = watcher::normal(&deployment.data_dir);
        let touched = |roots: &[PathBuf]| {
            changed
                .iter()
                .filter(|path| !path.starts_with(&data_dir))
                .any(|path| roots.iter().any(|root| watcher::is_source_change(path, root)))
        };
        let mut scripts = Vec::new();
        for (name, spec) in &deployment.parties {
            if let Some(build) = &spec.build
                && touched(&build.watch)
            {
                self.build(name, &build.command).await;
            }
            if let Some(folder) = spec.script_folder()
                && touched(&[folder])
            {
                scripts.push(name);
            }
        }
        if !scripts.is_empty() {
            self.build_scripts(&deployment, &scripts).await;
        }
        // Built or written directly: reload whichever component changed.
        for (name, spec) in &deployment.parties {
            if let Err(e) = self.reload_party(name, spec).await {
                self.refused(&format!("party `{name}`: {e:#}"));
            }
        }
    }

    /// Runs a party's build command with its output shown as it comes.
    async fn build(&self, party: &PartyName, command: &str) -> bool {
        let started = Instant::now();
        self.stats.builds.fetch_add(1, Ordering::Relaxed);
        eprintln!("partyhost dev: building `{party}`: {command}");
        let dir = self.manifest.parent().unwrap_or(Path::new("."));
        let status =
            tokio::process::Command::new("sh").arg("-c").arg(command).current_dir(dir).status().await;
        match status {
            Ok(status) if status.success() => {
                eprintln!("partyhost dev: built `{party}` in {:.1} s", started.elapsed().as_secs_f64());
                true
            }
            Ok(status) => {
                self.refused(&format!(
                    "build of `{party}` failed ({status}); the previous version keeps serving"
                ));
                false
            }
            Err(e) => {
                self.refused(&format!("could not run the build of `{party}`: {e}"));
                false
            }
        }
    }

    /// Builds script parties (bundle and componentize) with progress shown.
    async fn build_scripts(&self, deployment: &Deployment, parties: &[&PartyName]) -> bool {
        self.stats.builds.fetch_add(1, Ordering::Relaxed);
        let deployment = deployment.clone();
        let parties: Vec<PartyName> = parties.iter().map(|&p| p.clone()).collect();
        let built = tokio::task::spawn_blocking(move || {
            crate::js::build(&deployment, &parties.iter().collect::<Vec<_>>())
        })
        .await;
        match built {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => self.refused(&format!("{e:#}; the previous version keeps serving")),
            Err(e) => self.refused(&format!("the JavaScript build stopped: {e}")),
        }
    }

    /// Compiles the party's component if its bytes changed, then swaps it in.
    async fn reload_party(&mut self, name: &PartyName, spec: &PartySpec) -> anyhow::Result<()> {
        let new_digest = digest(&spec.wasm)?;
        if self.digests.get(name) == Some(&new_digest) {
            return Ok(());
        }
        let started = Instant::now();
        let party = self.compile(name, spec).await?;
        self.rooms.replace_party(name, party);
        self.digests.insert(name.clone(), new_digest);
        self.stats.applied.fetch_add(1, Ordering::Relaxed);
        eprintln!(
            "partyhost dev: `{name}` reloaded in {} ms; rooms switch at their next event",
            started.elapsed().as_millis()
        );
        Ok(())
    }

    /// Loads the manifest again and applies it whole, or not at all.
    /// Returns whether it was applied.
    async fn apply_manifest(&mut self) -> bool {
        self.manifest_digest = digest(&self.manifest).ok();
        let new = match Deployment::load(&self.manifest) {
            Ok(new) => new,
            Err(e) => {
                self.refused(&format!("{e}; the previous manifest keeps serving"));
                return false;
            }
        };
        let scripts = crate::js::script_parties(&new);
        if !scripts.is_empty() && !self.build_scripts(&new, &scripts).await {
            return false;
        }
        let old = self.rooms.deployment();
        if new.listen != old.listen || new.data_dir != old.data_dir || new.rooms != old.rooms {
            warn!("listen, data_dir and [rooms] take effect at the next start");
        }
        // Compile everything new or changed first: one bad party refuses
        // the whole manifest.
        // Unchanged parties keep their loaded code; the rest compile first,
        // then manifest and code switch together.
        let mut parties = HashMap::new();
        let mut digests = HashMap::new();
        for (name, spec) in &new.parties {
            let wasm_digest = match digest(&spec.wasm) {
                Ok(d) => d,
                Err(e) => {
                    return self
                        .refused(&format!("party `{name}`: {e:#}; the previous manifest keeps serving"));
                }
            };
            digests.insert(name.clone(), wasm_digest);
            let unchanged =
                old.parties.get(name) == Some(spec) && self.digests.get(name) == Some(&wasm_digest);
            if let Some(current) = self.rooms.party(name).filter(|_| unchanged) {
                parties.insert(name.clone(), current);
                continue;
            }
            match self.compile(name, spec).await {
                Ok(party) => parties.insert(name.clone(), Arc::new(party)),
                Err(e) => {
                    return self
                        .refused(&format!("party `{name}`: {e:#}; the previous manifest keeps serving"));
                }
            };
        }
        self.rooms.switch(new, parties);
        self.digests = digests;
        self.stats.applied.fetch_add(1, Ordering::Relaxed);
        eprintln!("partyhost dev: manifest applied");
        true
    }

    async fn compile(&self, name: &PartyName, spec: &PartySpec) -> anyhow::Result<LoadedParty> {
        crate::compile_party(&self.sandbox, name, spec).await
    }

    /// Reports a refused change; returns false for `apply_manifest`.
    fn refused(&self, message: &str) -> bool {
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        error!("{message}");
        eprintln!("partyhost dev: error: {message}");
        false
    }
}

fn digest(path: &Path) -> anyhow::Result<[u8; 32]> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Sha256::digest(bytes).into())
}
