//! What a deploying tenant can do to the host's disk and to other tenants:
//! old versions are pruned, a disk quota refuses with 507, a project's
//! deploy lock is taken before its upload is read (other projects deploy
//! meanwhile), a failed write of `current` leaves the serving version
//! serving, and a component that does not fit leaves nothing in the
//! compile cache.

use anyhow::Result;
use serde_json::json;
use std::path::Path;
use tokio::io::AsyncWriteExt;

use crate::common::{Tenant, TestHost, local_project, manifest, temp_dir, tenants_toml, within};
use crate::guests::{HOSTILE, REACTIONS};

/// A tenant serving the hostile party and `public/index.html` of `page_bytes`.
fn with_page(root: &Path, name: &str, page_bytes: usize) -> Result<Tenant> {
    let tenant = Tenant::new(root, name, &[("hostile", HOSTILE)], "serve = \"public\"")?;
    set_page(&tenant, "v", page_bytes)?;
    Ok(tenant)
}

fn set_page(tenant: &Tenant, fill: &str, bytes: usize) -> Result<()> {
    std::fs::create_dir_all(tenant.dir.join("public"))?;
    std::fs::write(tenant.dir.join("public/index.html"), fill.repeat(bytes))?;
    Ok(())
}

fn versions_on_disk(root: &Path, project: &str) -> Result<Vec<u64>> {
    let mut versions: Vec<u64> =
        std::fs::read_dir(root.join("data/projects").join(project).join("versions"))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
    versions.sort_unstable();
    Ok(versions)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_versions_are_pruned_and_the_disk_quota_refuses_with_507() -> Result<()> {
    let dir = temp_dir();
    let alice = with_page(dir.path(), "alice", 2 << 20)?;
    let host = TestHost::start_with_tenants(
        dir.path(),
        &local_project(),
        &tenants_toml(&[&alice], "disk_mib = 3\nkeep_versions = 2"),
    )
    .await?;
    // Version 1 is about 2.3 MiB (the component and the page).
    assert_eq!(host.deploy(&alice).await?["version"], json!(1));
    // Version 2 would keep version 1 for rollback: about 4.6 MiB.
    let refused = host.deploy(&alice).await.err().map(|e| format!("{e:#}")).unwrap_or_default();
    let expected = "the host refused (507 Insufficient Storage): project `alice` would use ";
    assert!(refused.starts_with(expected) && refused.contains("MiB of its 3.0 MiB disk quota"), "{refused}");
    assert!(refused.contains("(tenants.toml: disk_mib)"), "{refused}");
    assert_eq!(versions_on_disk(dir.path(), "alice")?, vec![1], "nothing was written");
    assert_eq!(host.http("GET", &alice.path("/index.html"), "").await?.1.len(), 2 << 20);

    // Smaller versions fit, and only the newest two stay on disk.
    set_page(&alice, "w", 10 << 10)?;
    assert_eq!(host.deploy(&alice).await?["version"], json!(2));
    set_page(&alice, "x", 10 << 10)?;
    assert_eq!(host.deploy(&alice).await?["version"], json!(3));
    assert_eq!(versions_on_disk(dir.path(), "alice")?, vec![2, 3]);
    assert!(host.http("GET", &alice.path("/index.html"), "").await?.1.starts_with('x'));

    // Rollback reaches the kept version, and no further.
    let auth = format!("Bearer {}", alice.token);
    let headers = [("authorization", auth.as_str())];
    let rollback = host.http_with("POST", "/_partyhost/projects/alice/rollback", &headers, "").await?;
    assert_eq!(rollback.status, 200);
    assert!(host.http("GET", &alice.path("/index.html"), "").await?.1.starts_with('w'));
    let again = host.http_with("POST", "/_partyhost/projects/alice/rollback", &headers, "").await?;
    assert_eq!(again.status, 409);
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_is_locked_from_the_first_byte_of_its_upload_and_others_deploy_meanwhile() -> Result<()> {
    let dir = temp_dir();
    let alice = with_page(dir.path(), "alice", 100)?;
    let bob = with_page(dir.path(), "bob", 100)?;
    let host = TestHost::start_with_tenants(dir.path(), &local_project(), &tenants_toml(&[&alice, &bob], ""))
        .await?;

    // An upload of alice's that has sent its headers and a little body.
    let mut slow_upload = tokio::net::TcpStream::connect(host.addr).await?;
    let head = format!(
        "PUT /_partyhost/projects/alice HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {}\r\nContent-Length: 1000000\r\n\r\n{{\"manifest\":",
        alice.token
    );
    slow_upload.write_all(head.as_bytes()).await?;

    // A second deployment of alice is refused at once, unread.
    let busy = "the host refused (409 Conflict): a deployment or rollback of project `alice` is already under way; try again when it is done";
    crate::common::eventually("alice's second deployment to be refused as busy", async || {
        Ok(host.deploy(&alice).await.err().is_some_and(|e| format!("{e:#}") == busy))
    })
    .await?;
    // Bob is not held up by alice.
    assert_eq!(host.deploy(&bob).await?["version"], json!(1));

    // The cut-off upload ends, and with it the lock.
    drop(slow_upload);
    crate::common::eventually("alice's lock to be let go", async || Ok(host.deploy(&alice).await.is_ok()))
        .await?;

    // Two tenants deploying at the same moment both succeed, each its own.
    set_page(&alice, "a", 100)?;
    set_page(&bob, "b", 100)?;
    let (a, b) = tokio::join!(host.deploy(&alice), host.deploy(&bob));
    assert_eq!((a?["version"].clone(), b?["version"].clone()), (json!(2), json!(2)));
    assert_eq!(host.http("GET", &alice.path("/index.html"), "").await?.1, "a".repeat(100));
    assert_eq!(host.http("GET", &bob.path("/index.html"), "").await?.1, "b".repeat(100));
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_of_current_leaves_the_serving_version_serving() -> Result<()> {
    let dir = temp_dir();
    let alice = with_page(dir.path(), "alice", 0)?;
    set_page(&alice, "version one ", 1)?;
    let host =
        TestHost::start_with_tenants(dir.path(), &local_project(), &tenants_toml(&[&alice], "")).await?;
    assert_eq!(host.deploy(&alice).await?["version"], json!(1));

    // The write of the new `current` fails (its temporary name is taken by
    // a folder), after version 2 has compiled.
    let project = dir.path().join("data/projects/alice");
    std::fs::create_dir_all(project.join("current.tmp/blocker"))?;
    set_page(&alice, "version two ", 1)?;
    let failed = host.deploy(&alice).await.err().map(|e| format!("{e:#}")).unwrap_or_default();
    assert!(failed.starts_with("the host refused (500 Internal Server Error)"), "{failed}");

    // Version 1 serves, whole: its page and its party; version 2 is gone.
    assert_eq!(host.http("GET", &alice.path("/index.html"), "").await?.1, "version one ");
    assert_eq!(host.http("GET", &alice.path("/parties/hostile/x/pong"), "").await?.1, "pong");
    assert_eq!(host.project_status(&alice).await?["version"], json!(1));
    assert_eq!(versions_on_disk(dir.path(), "alice")?, vec![1]);
    assert_eq!(std::fs::read_to_string(project.join("current"))?, "1");
    host.stop().await?;

    // And a restart serves version 1 too; with the blocker gone, 2 deploys.
    let host =
        TestHost::start_with_tenants(dir.path(), &local_project(), &tenants_toml(&[&alice], "")).await?;
    assert_eq!(host.http("GET", &alice.path("/index.html"), "").await?.1, "version one ");
    std::fs::remove_dir_all(project.join("current.tmp"))?;
    assert_eq!(host.deploy(&alice).await?["version"], json!(2));
    assert_eq!(host.http("GET", &alice.path("/index.html"), "").await?.1, "version two ");
    host.stop().await
}

/// A valid component for another world: it compiles, but does not fit ours.
fn component_of_another_world() -> Result<Vec<u8>> {
    use wit_component::{ComponentEncoder, StringEncoding, dummy_module, embed_component_metadata};
    use wit_parser::{ManglingAndAbi, Resolve};
    let mut resolve = Resolve::default();
    let package =
        resolve.push_str("other.wit", "package test:other;\nworld other {\n  export run: func();\n}\n")?;
    let world = resolve.select_world(&[package], Some("other"))?;
    let mut module = dummy_module(&resolve, world, ManglingAndAbi::Standard32);
    embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8)?;
    ComponentEncoder::default().module(&module)?.validate(true).encode()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_that_does_not_fit_leaves_nothing_in_the_compile_cache() -> Result<()> {
    let dir = temp_dir();
    let alice = Tenant::new(dir.path(), "alice", &[("hostile", HOSTILE)], "")?;
    let tenants = partyhost::manifest::Tenants::parse(&tenants_toml(&[&alice], ""))?;
    let options = partyhost::Options { tenants: Some(tenants), ..Default::default() };
    let host = TestHost::start_with(dir.path(), &local_project(), options).await?;
    let cache = dir.path().join("data/compiled");
    let entries = || std::fs::read_dir(&cache).map(Iterator::count).unwrap_or(0);
    let before = entries();

    std::fs::write(alice.dir.join("hostile.wasm"), component_of_another_world()?)?;
    let refused = host.deploy(&alice).await.err().map(|e| format!("{e:#}")).unwrap_or_default();
    assert!(refused.contains("does not export the partyhost:party world"), "{refused}");
    assert_eq!(entries(), before, "the refused component was cached");

    // A good one is cached once it is known to be good.
    std::fs::copy(HOSTILE, alice.dir.join("hostile.wasm"))?;
    within("a deploy", host.deploy(&alice)).await?;
    assert_eq!(entries(), before + 1);
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_over_the_limit_is_413_and_a_cut_off_one_400() -> Result<()> {
    let dir = temp_dir();
    let alice = with_page(dir.path(), "alice", 2 << 20)?;
    let host = TestHost::start_with_tenants(
        dir.path(),
        &local_project(),
        &tenants_toml(&[&alice], "max_bundle_mib = 1"),
    )
    .await?;
    // The client knows the limit before it uploads.
    let refused = host.deploy(&alice).await.err().map(|e| format!("{e:#}")).unwrap_or_default();
    assert!(refused.starts_with("the deployment is "), "{refused}");
    assert!(
        refused.ends_with("this host accepts deployments up to 1048576 bytes (its max_bundle_mib)"),
        "{refused}"
    );
    // The host refuses it all the same, having read no more than its limit.
    let mut big = tokio::net::TcpStream::connect(host.addr).await?;
    let head = format!(
        "PUT /_partyhost/projects/alice HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
        alice.token,
        2 << 20
    );
    big.write_all(head.as_bytes()).await?;
    big.write_all(&vec![b' '; (1 << 20) + 4096]).await?;
    let mut answer = vec![0u8; 4096];
    let n = within("the 413", tokio::io::AsyncReadExt::read(&mut big, &mut answer)).await?;
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.ends_with("the deployment is over this host's limit of 1048576 bytes"), "{answer}");

    let mut upload = tokio::net::TcpStream::connect(host.addr).await?;
    let head = format!(
        "PUT /_partyhost/projects/alice HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {}\r\nContent-Length: 1000\r\n\r\n{{\"manifest\":",
        alice.token
    );
    upload.write_all(head.as_bytes()).await?;
    upload.shutdown().await?;
    let mut answer = String::new();
    within("the answer", tokio::io::AsyncReadExt::read_to_string(&mut upload, &mut answer)).await?;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("the upload was cut off"), "{answer}");
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_whose_request_times_out_still_finishes() -> Result<()> {
    let dir = temp_dir();
    let alice = with_page(dir.path(), "alice", 100)?;
    // The admin API's timeout is shorter than a compile: the request is
    // answered 408 while the deployment goes on in its own task.
    // The compile cache in the data dir: the shared one may hold the party compiled.
    let local = manifest(&[("reactions", REACTIONS)], "main = \"reactions\"\n[edge]\ndeploy_timeout_ms = 50");
    let tenants = partyhost::manifest::Tenants::parse(&tenants_toml(&[&alice], ""))?;
    let options = partyhost::Options { tenants: Some(tenants), ..Default::default() };
    let host = TestHost::start_with(dir.path(), &local, options).await?;
    let timed_out = host.deploy(&alice).await.err().map(|e| format!("{e:#}")).unwrap_or_default();
    assert!(timed_out.starts_with("the host refused (408 Request Timeout)"), "{timed_out}");
    crate::common::eventually("the deployment to finish on its own", async || {
        Ok(host.project_status(&alice).await?["version"] == json!(1))
    })
    .await?;
    assert_eq!(host.http("GET", &alice.path("/parties/hostile/x/pong"), "").await?.1, "pong");
    assert_eq!(versions_on_disk(dir.path(), "alice")?, vec![1]);
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_of_more_than_10000_files_is_refused_unwritten() -> Result<()> {
    let dir = temp_dir();
    let alice = with_page(dir.path(), "alice", 100)?;
    let host =
        TestHost::start_with_tenants(dir.path(), &local_project(), &tenants_toml(&[&alice], "")).await?;
    let mut bundle = partyhost::client::pack(&alice.dir.join("partykit.toml"))?;
    for i in 0..10_000 - bundle.files.len() + 1 {
        bundle.files.insert(format!("public/empty-{i}.txt"), "".into());
    }
    let auth = format!("Bearer {}", alice.token);
    let body = serde_json::to_string(&bundle)?;
    let refused =
        host.http_with("PUT", "/_partyhost/projects/alice", &[("authorization", &auth)], &body).await?;
    assert_eq!(
        (refused.status, refused.body.as_str()),
        (400, "the deployment has 10001 files; this host takes at most 10000")
    );
    assert!(!dir.path().join("data/projects/alice/versions").exists(), "nothing was written");
    host.stop().await
}
