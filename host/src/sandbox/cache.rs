//! Compiled components cached on disk, so a restart does not recompile.
//!
//! The file name is the SHA-256 of the `.wasm` plus the engine's
//! compatibility hash, so a changed guest or a different wasmtime build or
//! configuration never loads stale code. An entry is written only once the
//! component has passed every check (it links against our world), and the
//! folder is kept under a size bound by dropping the least recently used
//! entries: every deploy would otherwise add to it for ever.

#![allow(unsafe_code)]

use anyhow::Context;
use sha2::{Digest, Sha256};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Bytes the cache folder may hold; past it the least recently used entries
/// go until it holds three quarters of this.
pub(super) const MAX_CACHE_BYTES: u64 = 2 << 30;

/// A compiled component not yet in the cache: [`Uncached::store`] it once
/// it has passed its checks.
pub(super) struct Uncached {
    path: PathBuf,
}

/// Returns the compiled component for `wasm`, from the cache when present;
/// otherwise also what to [`Uncached::store`] once it is known to be good.
pub(super) fn compile(
    engine: &Engine,
    cache_dir: &Path,
    wasm: &[u8],
) -> anyhow::Result<(Component, Option<Uncached>)> {
    let path = cache_dir.join(format!("{}.cwasm", cache_key(engine, wasm)));
    if path.exists() {
        // SAFETY: the file was written by `Component::serialize` below, in
        // the host's own data directory, under a name that includes the
        // engine's compatibility hash. A file that fails to load (truncated,
        // tampered) is recompiled.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => {
                // Its modification time is its last use, for the collector.
                let _ = std::fs::File::options()
                    .append(true)
                    .open(&path)
                    .and_then(|f| f.set_modified(SystemTime::now()));
                return Ok((component, None));
            }
            Err(e) => tracing::warn!(path = %path.display(), cause = %e, "cache entry unusable; recompiling"),
        }
    }
    let started = std::time::Instant::now();
    let component = Component::new(engine, wasm).map_err(anyhow::Error::from).context("compiling")?;
    tracing::debug!(elapsed = ?started.elapsed(), "compiled component");
    Ok((component, Some(Uncached { path })))
}

impl Uncached {
    /// Writes the entry (errors are logged: the cache is an optimisation),
    /// then trims the folder.
    pub(super) fn store(self, component: &Component) {
        let Some(dir) = self.path.parent() else { return };
        if let Err(e) = write_entry(component, dir, &self.path) {
            tracing::warn!(path = %self.path.display(), cause = %format!("{e:#}"), "could not cache compiled code");
        }
        match collect_garbage(dir, MAX_CACHE_BYTES) {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, dir = %dir.display(), "trimmed the compile cache"),
            Err(e) => tracing::warn!(cause = %format!("{e:#}"), "could not trim the compile cache"),
        }
    }
}

fn cache_key(engine: &Engine, wasm: &[u8]) -> String {
    let mut engine_hash = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut engine_hash);
    let digest = Sha256::digest(wasm);
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("{hex}-{:016x}", engine_hash.finish())
}

/// Writes to a temporary name first, so a crash never leaves half a file
/// under the real name.
fn write_entry(component: &Component, dir: &Path, path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let bytes = component.serialize().map_err(anyhow::Error::from)?;
    // Unique per writer: hosts sharing the folder may store the same entry at once.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let write = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{write}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Temporary files older than this are left over from a crash.
const STALE_TMP: Duration = Duration::from_secs(3600);

/// Removes the least recently used `.cwasm` files while the folder holds
/// more than `max_bytes`, down to three quarters of it, and temporary files
/// a crash left behind. Returns how many files it removed.
pub(super) fn collect_garbage(dir: &Path, max_bytes: u64) -> anyhow::Result<usize> {
    let mut entries = Vec::new();
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let metadata = entry.metadata()?;
        let used = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let path = entry.path();
        let is_tmp = path.extension().is_some_and(|e| e.to_string_lossy().starts_with("tmp"));
        if is_tmp {
            if used.elapsed().is_ok_and(|age| age > STALE_TMP) && std::fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        } else if path.extension().is_some_and(|e| e == "cwasm") {
            entries.push((used, metadata.len(), path));
        }
    }
    let mut total: u64 = entries.iter().map(|(_, len, _)| len).sum();
    if total <= max_bytes {
        return Ok(removed);
    }
    entries.sort_by_key(|(used, _, _)| *used);
    for (_, len, path) in entries {
        if total <= max_bytes / 4 * 3 {
            break;
        }
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        total -= len;
        removed += 1;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_entries_go_first() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let now = SystemTime::now();
        for (name, age_secs) in [("old", 300), ("mid", 200), ("new", 100)] {
            let path = dir.path().join(format!("{name}.cwasm"));
            std::fs::write(&path, vec![0u8; 1000])?;
            std::fs::File::options()
                .append(true)
                .open(&path)?
                .set_modified(now - Duration::from_secs(age_secs))?;
        }
        let stale = dir.path().join("x.tmp42");
        std::fs::write(&stale, b"half")?;
        std::fs::File::options().append(true).open(&stale)?.set_modified(now - STALE_TMP * 2)?;

        assert_eq!(collect_garbage(dir.path(), 3000)?, 1, "under the bound only the stale temp file goes");
        assert_eq!(collect_garbage(dir.path(), 2800)?, 1, "down to 3/4 of 2800 (2100): one entry");
        assert!(!dir.path().join("old.cwasm").exists(), "the oldest went");
        assert!(dir.path().join("mid.cwasm").exists() && dir.path().join("new.cwasm").exists());
        Ok(())
    }
}
