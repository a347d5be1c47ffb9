//! A project's secrets (`partyhost env set|list|remove`, PartyKit's
//! `partykit env`): values kept on the host in the project's folder
//! (`secrets.json`, readable by the host's user only), never in the
//! manifest or a deploy bundle. Guests read them as vars, over the
//! manifest's. `partyhost dev` also reads a `.env` file beside the
//! manifest, over the stored ones.

use anyhow::{Context, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Longest secret name, and value, and most secrets per project.
pub const MAX_NAME_BYTES: usize = 128;
pub const MAX_VALUE_BYTES: usize = 32 << 10;
pub const MAX_SECRETS: usize = 100;

/// One project's secrets, as stored.
pub struct Secrets {
    file: PathBuf,
    values: Mutex<BTreeMap<String, String>>,
    /// From `.env` in `partyhost dev`: laid over the stored values, not
    /// stored.
    overlay: Mutex<BTreeMap<String, String>>,
}

impl Secrets {
    /// Reads `file` (absent: no secrets yet).
    ///
    /// # Errors
    /// When the file exists but cannot be read or parsed.
    pub fn open(file: PathBuf) -> anyhow::Result<Self> {
        let values = match std::fs::read(&file) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", file.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
        };
        Ok(Self { file, values: Mutex::new(values), overlay: Mutex::default() })
    }

    /// Lays the `.env` file at `path` over the stored values (none when
    /// it does not exist), in place of what an earlier one laid.
    ///
    /// # Errors
    /// When it exists and cannot be read or has a malformed line; then
    /// nothing changed.
    pub fn read_dotenv(&self, path: &Path) -> anyhow::Result<()> {
        let overlay = match std::fs::read_to_string(path) {
            Ok(text) => parse_dotenv(&text).with_context(|| format!("reading {}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        tracing::info!(file = %path.display(), vars = overlay.len(), "read .env");
        *self.overlay.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = overlay;
        Ok(())
    }

    fn overlay(&self) -> BTreeMap<String, String> {
        self.overlay.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Every secret as guests see it (stored, then `.env` over it).
    pub fn values(&self) -> Vec<(String, String)> {
        let mut all = self.lock().clone();
        all.extend(self.overlay());
        all.into_iter().collect()
    }

    /// The names, without values (they are never sent back).
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.lock().keys().cloned().collect();
        names.extend(self.overlay().into_keys());
        names.sort();
        names.dedup();
        names
    }

    /// Sets `name` to `value` and stores the result.
    ///
    /// # Errors
    /// When the name or value is invalid, too many secrets exist, or the
    /// file cannot be written (then nothing changed).
    pub fn set(&self, name: &str, value: &str) -> Result<(), SecretError> {
        check_name(name).map_err(SecretError::Invalid)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(SecretError::Invalid(format!("the value of {name} is over {MAX_VALUE_BYTES} bytes")));
        }
        let mut values = self.lock();
        if !values.contains_key(name) && values.len() >= MAX_SECRETS {
            return Err(SecretError::Invalid(format!("a project may keep at most {MAX_SECRETS} secrets")));
        }
        let mut next = values.clone();
        next.insert(name.to_owned(), value.to_owned());
        self.store(&next).map_err(SecretError::Internal)?;
        *values = next;
        Ok(())
    }

    /// Removes `name`; returns whether it existed.
    ///
    /// # Errors
    /// When the file cannot be written (then nothing changed).
    pub fn remove(&self, name: &str) -> Result<bool, SecretError> {
        let mut values = self.lock();
        if !values.contains_key(name) {
            return Ok(false);
        }
        let mut next = values.clone();
        next.remove(name);
        self.store(&next).map_err(SecretError::Internal)?;
        *values = next;
        Ok(true)
    }

    fn store(&self, values: &BTreeMap<String, String>) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec_pretty(values).context("encoding secrets")?;
        let tmp = self.file.with_extension("json.tmp");
        if let Some(dir) = self.file.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        super::replace_file(&self.file, &tmp, &bytes, 0o600)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.values.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Why a secret was not changed.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{0}")]
    Invalid(String),
    /// The project is being deployed; try again.
    #[error("{0}")]
    Busy(String),
    #[error(transparent)]
    Internal(anyhow::Error),
}

/// A name as shells and PartyKit take them: a letter or `_`, then letters,
/// digits and `_`.
fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let starts_well = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !starts_well || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("secret name {name:?} must be a letter or `_`, then letters, digits or `_`"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!("secret name is over {MAX_NAME_BYTES} bytes"));
    }
    Ok(())
}

/// `NAME=value` lines; blank lines and `#` comments skipped, `export`
/// allowed, values optionally in single or double quotes.
///
/// # Errors
/// On a line that is not `NAME=value`, naming the line.
pub fn parse_dotenv(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut vars = BTreeMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((name, value)) = line.split_once('=') else {
            bail!("line {}: expected NAME=value", number + 1);
        };
        let name = name.trim();
        check_name(name).map_err(|e| anyhow::anyhow!("line {}: {e}", number + 1))?;
        let value = value.trim();
        let unquoted = [('"', '"'), ('\'', '\'')]
            .iter()
            .find_map(|(open, close)| value.strip_prefix(*open)?.strip_suffix(*close))
            .unwrap_or(value);
        vars.insert(name.to_owned(), unquoted.to_owned());
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_takes_comments_exports_and_quotes_and_names_a_bad_line() -> anyhow::Result<()> {
        let vars = parse_dotenv("# keys\nA=1\nexport B = \"two words\"\n\nC='x=y'\n")?;
        assert_eq!(
            vars.into_iter().collect::<Vec<_>>(),
            [
                ("A".to_owned(), "1".to_owned()),
                ("B".to_owned(), "two words".to_owned()),
                ("C".to_owned(), "x=y".to_owned())
            ]
        );
        let bad = parse_dotenv("A=1\nnot a pair\n").map_err(|e| e.to_string());
        assert_eq!(bad, Err("line 2: expected NAME=value".to_owned()));
        Ok(())
    }
}
