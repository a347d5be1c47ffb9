//! The compile cache: a restart loads compiled code instead of compiling
//! again, and an entry that cannot be loaded is compiled afresh, not
//! trusted.

use anyhow::{Context, Result};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::common::{TestHost, manifest, temp_dir};
use crate::guests;

/// The one `.cwasm` in the host's compile cache.
fn entry(data: &Path) -> Result<PathBuf> {
    let entries: Vec<PathBuf> = std::fs::read_dir(data.join("compiled"))?
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .collect();
    anyhow::ensure!(entries.len() == 1, "expected one cache entry, found {entries:?}");
    entries.into_iter().next().context("no entry")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_loads_the_cached_code_and_a_corrupt_entry_is_compiled_again() -> Result<()> {
    let dir = temp_dir();
    let toml = manifest(&[("plain", guests::HOSTILE)], "");
    let serves = async |host: &TestHost| -> Result<()> {
        let (status, body) = host.http("GET", "/parties/plain/r/pong", "").await?;
        anyhow::ensure!((status, body.as_str()) == (200, "pong"), "{status} {body}");
        Ok(())
    };
    let host = TestHost::start_with(dir.path(), &toml, partyhost::Options::default()).await?;
    serves(&host).await?;
    host.stop().await?;
    let cached = entry(&dir.path().join("data"))?;
    let (inode, bytes) = (std::fs::metadata(&cached)?.ino(), std::fs::read(&cached)?);

    // A compile writes a new file under the name (a rename): the same file
    // after a restart means the code was loaded, not compiled.
    let host = TestHost::start_with(dir.path(), &toml, partyhost::Options::default()).await?;
    serves(&host).await?;
    host.stop().await?;
    assert_eq!(entry(&dir.path().join("data"))?, cached);
    assert_eq!(std::fs::metadata(&cached)?.ino(), inode, "the restart compiled again");

    // Junk in place of the entry: compiled again, served, and replaced by
    // a good entry.
    std::fs::write(&cached, b"not a compiled component")?;
    let host = TestHost::start_with(dir.path(), &toml, partyhost::Options::default()).await?;
    serves(&host).await?;
    host.stop().await?;
    assert_ne!(std::fs::metadata(&cached)?.ino(), inode, "the corrupt entry was not replaced");
    assert_eq!(std::fs::read(&cached)?.len(), bytes.len(), "the new entry is the compiled code again");
    Ok(())
}
