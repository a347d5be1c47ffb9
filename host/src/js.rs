//! TypeScript and JavaScript parties: turning `main = "src/server.ts"` into
//! a component.
//!
//! This module owns the JavaScript toolchain and the builds that use it. The
//! toolchain's files (`js/` in the source tree: the build script, the
//! runtime that gives PartyKit's API over `wit/party.wit`, and the pinned
//! esbuild and componentize-js) are compiled into this binary and installed
//! once, with `npm ci`, into a cache folder named by their hash. A build runs
//! `node build.mjs` for a deployment's script parties: bundle, then
//! componentize unless a component of the same bundle is cached, then write
//! `.partyhost/build/<party>.wasm` beside the manifest, where the rest of the
//! host finds it like any other party's `.wasm`. The host never builds a
//! deployed tenant's scripts: `partyhost deploy` builds before it uploads.

use anyhow::{Context, bail};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::ids::PartyName;
use crate::manifest::Deployment;

/// The npm packages of the toolchain: the install folder is named by
/// their hash, and `npm ci` installs them once.
const PACKAGES: [(&str, &str); 2] = [
    ("package.json", include_str!("../../js/package.json")),
    ("package-lock.json", include_str!("../../js/package-lock.json")),
];

/// The rest of the toolchain, written anew before every build: what runs
/// is always this binary's, whatever the folder held.
const SCRIPTS: [(&str, &str); 4] = [
    ("build.mjs", include_str!("../../js/build.mjs")),
    ("runtime/globals.js", include_str!("../../js/runtime/globals.js")),
    ("runtime/party.js", include_str!("../../js/runtime/party.js")),
    ("wit/party.wit", include_str!("../../wit/party.wit")),
];

/// What one party's build did.
#[derive(Debug, Deserialize)]
pub struct Built {
    pub party: String,
    /// The bundle was componentized before: no SpiderMonkey step ran.
    #[serde(default)]
    pub cached: bool,
    #[serde(default)]
    error: Option<String>,
}

/// Builds every script party of `deployment`, with progress on stderr.
///
/// # Errors
/// When Node.js is missing, the toolchain cannot be installed, or a party
/// fails to bundle or componentize (the error names each such party and
/// says why).
pub fn build_all(deployment: &Deployment) -> anyhow::Result<Vec<Built>> {
    build(deployment, &script_parties(deployment))
}

/// The parties of `deployment` written in TypeScript or JavaScript.
pub fn script_parties(deployment: &Deployment) -> Vec<&PartyName> {
    deployment.parties.iter().filter(|(_, spec)| spec.script.is_some()).map(|(name, _)| name).collect()
}

/// Builds the named script parties of `deployment` (others are skipped).
///
/// # Errors
/// As [`build_all`].
pub fn build(deployment: &Deployment, parties: &[&PartyName]) -> anyhow::Result<Vec<Built>> {
    let mut args = Vec::new();
    for name in parties {
        let Some(spec) = deployment.parties.get(*name) else { continue };
        let Some(script) = &spec.script else { continue };
        if !script.is_file() {
            bail!("party `{name}`: its `main` script {} does not exist", script.display());
        }
        if let Some(dir) = spec.wasm.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        // Absolute: node runs in the toolchain's folder.
        let absolute =
            |path: &Path| std::path::absolute(path).with_context(|| format!("resolving {}", path.display()));
        args.extend([
            name.to_string().into(),
            absolute(script)?.into_os_string(),
            absolute(&spec.wasm)?.into(),
        ]);
    }
    if args.is_empty() {
        return Ok(Vec::new());
    }
    let toolchain = toolchain()?;
    write_files(&toolchain, &SCRIPTS)?;
    let started = Instant::now();
    let mut child = Command::new("node")
        .arg(toolchain.join("build.mjs"))
        .arg(toolchain.join("wit"))
        .args(&args)
        // Not the caller's folder: componentize-js opens the working
        // directory to the engine while it snapshots the party's module.
        .current_dir(&toolchain)
        .env("PARTYHOST_PROJECT_DIR", std::path::absolute(project_dir(deployment))?)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("running node for the JavaScript build (is Node.js 20 or later on PATH?)")?;
    let stdout = child.stdout.take().context("node's stdout")?;
    let mut built = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading the JavaScript build's output")?;
        let Ok(result) = serde_json::from_str::<Built>(&line) else {
            eprintln!("{line}");
            continue;
        };
        built.push(result);
    }
    let status = child.wait().context("waiting for the JavaScript build")?;
    let failures: Vec<String> = built
        .iter()
        .filter_map(|b| b.error.as_ref().map(|e| format!("party `{}`: {}", b.party, e.trim_end())))
        .collect();
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    if !status.success() || built.len() != args.len() / 3 {
        bail!("the JavaScript build failed ({status})");
    }
    let fresh = built.iter().filter(|b| !b.cached).count();
    if fresh > 0 {
        eprintln!(
            "built {fresh} script part{} in {:.1} s",
            if fresh == 1 { "y" } else { "ies" },
            started.elapsed().as_secs_f64()
        );
    }
    Ok(built)
}

/// The manifest's folder: where `.partyhost/build` is.
fn project_dir(deployment: &Deployment) -> &Path {
    let wasm = deployment.parties.values().find(|spec| spec.script.is_some()).map(|spec| spec.wasm.as_path());
    let dir = wasm.and_then(|w| w.parent()?.parent()?.parent());
    dir.filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// The installed toolchain's folder, installing it first if needed (once
/// per process at a time; another process installing too is harmless).
fn toolchain() -> anyhow::Result<PathBuf> {
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = INSTALLING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut hash = Sha256::new();
    for (path, text) in PACKAGES {
        hash.update(path);
        hash.update(text);
    }
    let digest = hash.finalize();
    let name = format!("js-{}", digest.iter().take(6).map(|b| format!("{b:02x}")).collect::<String>());
    let root = cache_root()?;
    private_folder(&root)?;
    let dir = root.join(name);
    if dir.join("node_modules/.package-lock.json").is_file() {
        return Ok(dir);
    }
    eprintln!("installing the JavaScript toolchain (esbuild, componentize-js) into {}, once", dir.display());
    let staging = root.join(format!(
        ".{}-{}",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("js"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&staging);
    write_files(&staging, &PACKAGES)?;
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"])
        .current_dir(&staging)
        .stdout(Stdio::null())
        .status()
        .context("running npm for the JavaScript toolchain (is npm on PATH?)")?;
    if !status.success() {
        let _ = std::fs::remove_dir_all(&staging);
        bail!("installing the JavaScript toolchain with npm failed ({status})");
    }
    // Another build may have installed it meanwhile: either copy will do.
    if std::fs::rename(&staging, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&staging);
        if !dir.join("node_modules/.package-lock.json").is_file() {
            bail!("could not put the JavaScript toolchain at {}", dir.display());
        }
    }
    Ok(dir)
}

fn write_files(dir: &Path, files: &[(&str, &str)]) -> anyhow::Result<()> {
    for (path, text) in files {
        let file = dir.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(())
}

/// Where the toolchain is installed: `$PARTYHOST_CACHE_DIR`, else the
/// user's cache folder; never a folder other users share, since what is
/// there runs.
fn cache_root() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PARTYHOST_CACHE_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let home_cache = std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache"));
    let cache = std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from).or(home_cache);
    let cache =
        cache.context("no cache folder for the JavaScript toolchain: set PARTYHOST_CACHE_DIR or HOME")?;
    Ok(cache.join("partyhost"))
}

/// Creates `dir` for its owner only, and refuses one another user owns.
fn private_folder(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let owner = std::fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?.uid();
    // /proc/self belongs to this process's user.
    let me = std::fs::metadata("/proc/self").context("reading /proc/self")?.uid();
    anyhow::ensure!(
        owner == me,
        "{} belongs to another user; the JavaScript toolchain runs from there, so it must be yours",
        dir.display()
    );
    Ok(())
}
