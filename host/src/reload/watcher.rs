//! File events for the reloader: which paths to watch, and debouncing.

use anyhow::Context;
use notify::{EventKind, RecursiveMode, Watcher as _};
use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

use crate::manifest::Deployment;

/// Paths reported by notify, waiting for the reloader.
const QUEUE: usize = 1024;

/// A notify watcher over a deployment's files.
pub(super) struct Watcher {
    _inner: notify::RecommendedWatcher,
    events: mpsc::Receiver<PathBuf>,
    /// Set when events were dropped because the queue was full; the
    /// reloader then re-reads everything instead of trusting the paths.
    overflow: Arc<AtomicBool>,
}

impl Watcher {
    /// Watches the manifest, every party's `.wasm` and `build.watch` paths.
    /// Files are watched through their folder, so editors that save by
    /// renaming a new file into place are seen too.
    pub(super) fn new(manifest: &Path, deployment: &Deployment) -> anyhow::Result<Self> {
        let (tx, events) = mpsc::channel(QUEUE);
        let overflow = Arc::new(AtomicBool::new(false));
        let full = overflow.clone();
        let mut inner = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if matches!(event.kind, EventKind::Access(_)) {
                return;
            }
            for path in event.paths {
                if tx.try_send(path).is_err() {
                    full.store(true, Ordering::Relaxed);
                }
            }
        })
        .context("starting the file watcher")?;
        let mut watch = |path: &Path, mode| {
            if let Err(e) = inner.watch(path, mode) {
                tracing::warn!(path = %path.display(), cause = %e, "cannot watch");
            }
        };
        watch(parent(manifest), RecursiveMode::NonRecursive);
        for spec in deployment.parties.values() {
            if let Some(dir) = spec.wasm.parent() {
                let _ = std::fs::create_dir_all(dir);
                watch(dir, RecursiveMode::NonRecursive);
            }
            for path in spec.build.iter().flat_map(|b| &b.watch).chain(&spec.script_folder()) {
                watch(path, RecursiveMode::Recursive);
            }
        }
        Ok(Self { _inner: inner, events, overflow })
    }

    /// Waits for changes and returns them once `quiet` passes without more
    /// (or `max` after the first). `None` when the watcher has stopped.
    pub(super) async fn next_burst(&mut self, quiet: Duration, max: Duration) -> Option<BTreeSet<PathBuf>> {
        let mut changed = BTreeSet::new();
        changed.insert(normal(&self.events.recv().await?));
        let deadline = tokio::time::Instant::now() + max;
        while let Ok(Some(path)) = tokio::time::timeout(quiet, self.events.recv()).await {
            changed.insert(normal(&path));
            if tokio::time::Instant::now() > deadline {
                break;
            }
        }
        Some(changed)
    }

    /// Whether events were lost since the last call.
    pub(super) fn overflowed(&self) -> bool {
        self.overflow.swap(false, Ordering::Relaxed)
    }
}

fn parent(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// `path` with its folder resolved (`..`, symlinks), so the paths notify
/// reports and the paths the manifest names compare equal. The file itself
/// may be gone (an editor's rename), so only the folder is resolved.
pub(super) fn normal(path: &Path) -> PathBuf {
    match (path.parent().and_then(|p| std::fs::canonicalize(p).ok()), path.file_name()) {
        (Some(dir), Some(name)) => dir.join(name),
        _ => path.to_path_buf(),
    }
}

/// Whether a change at `path` is an input under the watched `root`. Build
/// output never is: a `target` folder below the root is skipped, which
/// stops build -> event -> build loops.
pub(super) fn is_source_change(path: &Path, root: &Path) -> bool {
    const OUTPUTS: [&str; 3] = ["target", ".partyhost", "node_modules"];
    path.strip_prefix(normal(root)).is_ok_and(|rest| {
        !rest.components().any(|c| OUTPUTS.iter().any(|out| c == Component::Normal(out.as_ref())))
    })
}

#[cfg(test)]
mod tests {
    use super::is_source_change;
    use std::path::Path;

    #[test]
    fn build_output_below_the_watched_root_is_not_a_source_change() {
        assert!(is_source_change(Path::new("/p/src/lib.rs"), Path::new("/p")));
        assert!(!is_source_change(Path::new("/p/target/wasm32-wasip2/x.wasm"), Path::new("/p")));
        assert!(!is_source_change(Path::new("/p/.partyhost/build/x.wasm"), Path::new("/p")));
        assert!(!is_source_change(Path::new("/p/node_modules/zod/index.js"), Path::new("/p")));
        assert!(!is_source_change(Path::new("/q/src/lib.rs"), Path::new("/p")));
        // A project that itself lives under a `target` folder still works.
        assert!(is_source_change(Path::new("/w/target/party/src/lib.rs"), Path::new("/w/target/party/src")));
    }
}
