//! `tenants.toml`: the host operator's side of multi-tenant hosting. It
//! names the projects that may deploy (each with the SHA-256 of its token),
//! the domain their host names live under, and hard caps on every limit
//! that a project's manifest may lower but never raise.
//!
//! ```toml
//! domain = "partyhost.localhost"   # alice's parties: alice.partyhost.localhost
//! max_wasm_mib = 32                # largest component in a deployment
//! max_bundle_mib = 64              # largest deployment upload
//! disk_mib = 1024                  # per project: kept versions + storage
//! keep_versions = 5                # versions kept for rollback
//!
//! [caps]                           # the [limits] fields
//! cpu_ms = 100
//! memory_mib = 128
//!
//! [projects.alice]
//! token_sha256 = "5e88..."         # `partyhost token` prints a token and this
//! ```

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

use super::{Deployment, LimitsSpec, ManifestError, TotalsSpec};
use crate::ids::ProjectName;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantsFile {
    domain: Option<String>,
    max_wasm_mib: Option<u64>,
    max_bundle_mib: Option<u64>,
    disk_mib: Option<u64>,
    keep_versions: Option<usize>,
    #[serde(default)]
    caps: LimitsSpec,
    #[serde(default)]
    totals: TotalsSpec,
    #[serde(default)]
    projects: BTreeMap<String, ProjectEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectEntry {
    token_sha256: String,
}

/// The validated `tenants.toml`.
#[derive(Debug, Clone)]
pub struct Tenants {
    /// `<project>.<domain>` reaches a project; without it only the path
    /// prefix `/p/<project>/` does.
    pub domain: Option<String>,
    pub max_wasm_bytes: usize,
    pub max_bundle_bytes: usize,
    /// Disk each project may use: its kept versions and its storage files.
    pub disk_bytes: u64,
    /// Versions each project keeps on disk for rollback (the serving one
    /// always stays).
    pub keep_versions: usize,
    pub caps: LimitsSpec,
    /// What all rooms of each deployed project may hold at once.
    pub totals: TotalsSpec,
    projects: BTreeMap<ProjectName, TokenHash>,
}

impl Tenants {
    /// Reads and validates `tenants.toml`.
    ///
    /// # Errors
    /// A [`ManifestError`] naming the file and the mistake.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ManifestError::Read { path: path.to_owned(), source })?;
        Self::parse(&text).map_err(|e| e.in_file(path))
    }

    /// Validates `tenants.toml` text.
    ///
    /// # Errors
    /// A [`ManifestError`] naming the mistake.
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let file: TenantsFile =
            toml::from_str(text).map_err(|e| ManifestError::Syntax { message: e.to_string() })?;
        let mut projects = BTreeMap::new();
        for (name, entry) in file.projects {
            let project = ProjectName::try_from(name.as_str())
                .map_err(|reason| ManifestError::ProjectName { name: name.clone(), reason })?;
            let hash =
                TokenHash::parse(&entry.token_sha256).ok_or(ManifestError::TokenHash { project: name })?;
            projects.insert(project, hash);
        }
        let mib =
            |v: Option<u64>, default: u64| usize::try_from(v.unwrap_or(default) << 20).unwrap_or(usize::MAX);
        Ok(Self {
            domain: file.domain.map(|d| d.trim_start_matches('.').to_ascii_lowercase()),
            max_wasm_bytes: mib(file.max_wasm_mib, 32),
            max_bundle_bytes: mib(file.max_bundle_mib, 64),
            disk_bytes: file.disk_mib.unwrap_or(1024).saturating_mul(1 << 20),
            keep_versions: file.keep_versions.unwrap_or(5).max(1),
            caps: file.caps,
            totals: file.totals,
            projects,
        })
    }

    /// The projects that may deploy.
    pub fn projects(&self) -> impl Iterator<Item = &ProjectName> {
        self.projects.keys()
    }

    /// Whether `token` is `project`'s. Compares digests in constant time.
    pub fn token_is_valid(&self, project: &str, token: &str) -> bool {
        self.projects.get(project).is_some_and(|expected| expected.matches(token))
    }

    /// Holds every party of `deployment` to the caps: a limit set above
    /// its cap is refused; an unset limit whose default is above the cap
    /// becomes the cap. A limit `[caps]` leaves out is capped at its
    /// default: a tenant can lower any limit, and raise one only where
    /// the operator says so.
    ///
    /// # Errors
    /// [`ManifestError::OverCap`] naming the party, the limit and the cap.
    pub fn apply_caps(&self, deployment: &mut Deployment) -> Result<(), ManifestError> {
        let caps = LimitsSpec::defaults().overlay(&self.caps);
        for (party, spec) in &mut deployment.parties {
            // `fields()` lists every limit in the same order, so the two zip.
            let limits = spec.limits.fields().into_iter().zip(caps.fields());
            for ((field, value), (_, cap)) in limits {
                let Some(cap) = cap else { continue };
                match value {
                    Some(value) if value > cap => {
                        return Err(ManifestError::OverCap { party: party.to_string(), field, value, cap });
                    }
                    None if spec.limits.default_of(field).is_some_and(|d| d > cap) => {
                        spec.limits.set(field, cap);
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// A token's SHA-256: only digests are configured, never tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// From 64 hex digits, or `None`.
    pub fn parse(hex: &str) -> Option<Self> {
        decode_hex(hex).map(Self)
    }

    /// The digest of `token`.
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// Whether `token` hashes to this. Compares in constant time.
    pub fn matches(&self, token: &str) -> bool {
        let actual: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.0.iter().zip(actual).fold(0, |diff, (a, b)| diff | (a ^ b)) == 0
    }
}

/// A SHA-256 digest written as 64 hex digits, or `None`.
fn decode_hex(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A new random token and the `token_sha256` line for `tenants.toml`.
pub fn new_token() -> anyhow::Result<(String, String)> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("the OS random generator failed: {e}"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let hash: String = Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    Ok((token, hash))
}
