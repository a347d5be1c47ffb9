//! Compiled components cached on disk, so a restart does not recompile.
//!
//! The file name is the SHA-256 of the `.wasm` plus the engine's
//! compatibility hash, so a changed guest or a different wasmtime build or
//! configuration never loads stale code.

#![allow(unsafe_code)]

use anyhow::Context;
use sha2::{Digest, Sha256};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use wasmtime::Engine;
use wasmtime::component::Component;

/// Returns the compiled component for `wasm`, from the cache when present.
pub(super) fn compile(engine: &Engine, cache_dir: &Path, wasm: &[u8]) -> anyhow::Result<Component> {
    let path = cache_dir.join(format!("{}.cwasm", cache_key(engine, wasm)));
    if path.exists() {
        // SAFETY: the file was written by `Component::serialize` below, in
        // the host's own data directory, under a name that includes the
        // engine's compatibility hash. A file that fails to load (truncated,
        // tampered) is recompiled.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => return Ok(component),
            Err(e) => tracing::warn!(path = %path.display(), cause = %e, "cache entry unusable; recompiling"),
        }
    }
    let started = std::time::Instant::now();
    let component = Component::new(engine, wasm).map_err(anyhow::Error::from).context("compiling")?;
    tracing::debug!(elapsed = ?started.elapsed(), "compiled component");
    if let Err(e) = store(&component, cache_dir, &path) {
        tracing::warn!(path = %path.display(), cause = %format!("{e:#}"), "could not cache compiled code");
    }
    Ok(component)
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
fn store(component: &Component, dir: &Path, path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let bytes = component.serialize().map_err(anyhow::Error::from)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}
