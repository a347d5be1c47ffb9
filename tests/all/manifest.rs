//! Manifest mistakes get exact messages (goldens in tests/manifests: each
//! `.toml` beside the `.err` it must produce; `BLESS=1` rewrites them), and a
//! file that is not a partyhost component is refused by name.

use anyhow::{Context, Result};
use std::path::Path;

use crate::common::{manifest, repo_root, temp_dir};
use partyhost::manifest::Deployment;

#[test]
fn invalid_manifests_get_exact_errors() -> Result<()> {
    let dir = repo_root().join("tests/manifests");
    let bless = std::env::var("BLESS").is_ok_and(|v| v == "1");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let error = match Deployment::parse(&text, Path::new("/project")) {
            Ok(_) => panic!("{} was accepted", path.display()),
            Err(e) => format!("{e}\n"),
        };
        let golden = path.with_extension("err");
        if bless {
            std::fs::write(&golden, &error)?;
        }
        let expected = std::fs::read_to_string(&golden).unwrap_or_default();
        assert_eq!(error, expected, "{} (BLESS=1 rewrites the .err)", path.display());
        checked += 1;
    }
    assert!(checked >= 9, "only {checked} goldens found");
    Ok(())
}

#[test]
fn the_example_manifest_is_valid() -> Result<()> {
    let deployment = Deployment::load(&repo_root().join("partykit.toml.example"))?;
    assert_eq!(deployment.listen.to_string(), "127.0.0.1:1999");
    assert_eq!(deployment.resolve_party("main").map(|p| p.as_str()), Some("reactions"));
    assert!(deployment.parties.values().all(|p| p.wasm.exists()), "every example party is built");
    let serve = deployment.serve.as_ref().map(|s| s.dir.join("index.html"));
    assert!(serve.is_some_and(|index| index.exists()), "the example pages are served");
    Ok(())
}

#[test]
fn the_example_tenants_file_is_valid() -> Result<()> {
    let tenants = partyhost::manifest::Tenants::load(&repo_root().join("tenants.toml.example"))?;
    assert_eq!(tenants.domain.as_deref(), Some("partyhost.localhost"));
    assert_eq!(tenants.projects().map(|p| p.as_str()).collect::<Vec<_>>(), ["alice"]);
    assert_eq!(tenants.caps.cpu_ms, Some(100));
    Ok(())
}

#[test]
fn host_caps_lower_defaults_and_refuse_limits_above_them() -> Result<()> {
    let tenants = partyhost::manifest::Tenants::parse("[caps]\nmemory_mib = 32\ncpu_ms = 100\n")?;
    let toml = "name = \"t\"\n[limits]\ncpu_ms = 80\n[parties.a]\nwasm = \"a.wasm\"\n";
    let mut deployment = Deployment::parse(toml, Path::new("/project"))?;
    tenants.apply_caps(&mut deployment)?;
    let limits = &deployment.parties.values().next().context("no party")?.limits;
    assert_eq!(limits.memory_mib, Some(32), "the 64 MiB default is over the cap, so the cap applies");
    assert_eq!(limits.cpu_ms, Some(80), "a limit under its cap stays");
    assert_eq!(limits.storage_mib, None, "no cap, no change");

    let toml = format!("{toml}[parties.a.limits]\nmemory_mib = 33\n");
    let mut deployment = Deployment::parse(&toml, Path::new("/project"))?;
    let refused = tenants.apply_caps(&mut deployment).expect_err("over the cap");
    assert_eq!(refused.to_string(), "party `a`: `memory_mib = 33` is over this host's cap of 32");
    Ok(())
}

async fn start_error(wasm: &Path) -> String {
    let dir = temp_dir();
    let toml = manifest(&[("broken", wasm.to_str().unwrap_or_default())], "");
    let deployment = Deployment::parse(&toml, dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let shutdown = tokio_util::sync::CancellationToken::new();
    match partyhost::run(deployment, listener, shutdown).await {
        Ok(()) => panic!("a host started with {}", wasm.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test]
async fn a_core_module_or_junk_is_refused_with_a_clear_error() -> Result<()> {
    let dir = temp_dir();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0")?;
    assert_eq!(
        start_error(&core).await,
        format!(
            "{}: not a WebAssembly component (a core module or another file?); build guests with \
             `scripts/build-guests.sh`, which targets wasm32-wasip2",
            core.display()
        )
    );
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"hello, I am not wasm at all")?;
    assert!(start_error(&junk).await.contains("not a WebAssembly component"));
    let missing = dir.path().join("missing.wasm");
    let error = start_error(&missing).await;
    assert!(error.starts_with(&format!("loading party `broken` from {}: ", missing.display())), "{error}");
    Ok(())
}
