//! Manifest mistakes: one variant per mistake, each naming the bad value.

use std::path::PathBuf;

/// Why a manifest was refused. Messages are written for the person who
/// edits the file.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest {path}")]
    Read { path: PathBuf, source: std::io::Error },
    /// TOML syntax or a field of the wrong type or name; toml's message
    /// carries the line, column and a snippet.
    #[error("{message}")]
    Syntax { message: String },
    #[error("no parties: add at least one [parties.<name>] table with a `wasm` path or a `main` script")]
    NoParties,
    #[error("party name {name:?} {reason}")]
    PartyName { name: String, reason: String },
    #[error("`main = {main:?}` names no party; the parties are: {}", parties.join(", "))]
    UnknownMain { main: String, parties: Vec<String> },
    #[error("`main = {main:?}` makes {main:?} answer as `main`, but another party is already named `main`")]
    MainConflict { main: String },
    #[error("project name {name:?} {reason}")]
    ProjectName { name: String, reason: String },
    #[error("project `{project}`: `token_sha256` must be 64 hex digits (`partyhost token` prints one)")]
    TokenHash { project: String },
    #[error("party `{party}`: `{field} = {value}` is over this host's cap of {cap}")]
    OverCap { party: String, field: &'static str, value: u64, cap: u64 },
    #[error("party `{party}`: {what} {path:?} must be a relative path inside the project")]
    OutsideProject { party: String, what: &'static str, path: String },
    #[error("party `{party}`: {problem}")]
    PartySource { party: String, problem: &'static str },
    #[error(
        "party `{party}`: `memory_mib = {value}` is below the {floor} MiB a JavaScript party needs \
         (its engine's heap starts at 9 MiB and grows as the party allocates)"
    )]
    ScriptMemory { party: String, value: u64, floor: u64 },
    #[error("{path}: {inner}")]
    InFile { path: PathBuf, inner: Box<ManifestError> },
}

impl ManifestError {
    /// Prefixes the error with the manifest's path.
    pub(super) fn in_file(self, path: &std::path::Path) -> Self {
        Self::InFile { path: path.to_owned(), inner: Box::new(self) }
    }
}
