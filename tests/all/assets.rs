//! The manifest's `serve` folder: files at `/` beside the parties, with
//! content types, ETags and cache headers, an optional single-page-app
//! fallback, and no way out of the folder.

use anyhow::Result;
use std::path::Path;

use crate::common::{TestHost, manifest, temp_dir};
use crate::guests::REACTIONS;

const SECRET: &str = "top secret, outside the serve folder";

/// A project whose `public` folder sits beside a secret it must never serve.
fn site(dir: &Path) -> Result<()> {
    let public = dir.join("public");
    std::fs::create_dir_all(public.join("docs"))?;
    std::fs::write(public.join("index.html"), "<h1>home</h1>")?;
    std::fs::write(public.join("app.js"), "console.log('hi')")?;
    std::fs::write(public.join("docs/index.html"), "<h1>docs</h1>")?;
    std::fs::write(public.join(".env"), "TOKEN=hidden")?;
    std::fs::write(dir.join("secret.txt"), SECRET)?;
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(dir.join("secret.txt"), public.join("link.txt"))?;
        std::os::unix::fs::symlink(dir, public.join("up"))?;
    }
    Ok(())
}

async fn host(dir: &Path, serve: &str) -> Result<TestHost> {
    site(dir)?;
    TestHost::start(dir, &manifest(&[("reactions", REACTIONS)], serve)).await
}

#[tokio::test]
async fn files_are_served_with_types_etags_and_cache_headers() -> Result<()> {
    let dir = temp_dir();
    let host = host(dir.path(), "[serve]\npath = \"public\"\nbrowser_ttl = 60\n[parties]").await?;

    let index = host.http_with("GET", "/", &[], "").await?;
    assert_eq!((index.status, index.body.as_str()), (200, "<h1>home</h1>"));
    assert_eq!(index.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(index.header("cache-control"), Some("public, max-age=60"));
    let script = host.http_with("GET", "/app.js", &[], "").await?;
    assert_eq!(script.header("content-type"), Some("text/javascript; charset=utf-8"));
    let docs = host.http_with("GET", "/docs/", &[], "").await?;
    assert_eq!(docs.body, "<h1>docs</h1>", "a folder serves its index.html");

    // The ETag turns a repeat visit into a 304 without a body, until the
    // file changes.
    let etag = index.header("etag").expect("an ETag").to_owned();
    let again = host.http_with("GET", "/index.html", &[("if-none-match", &etag)], "").await?;
    assert_eq!((again.status, again.body.as_str()), (304, ""));
    assert_eq!(again.header("etag"), Some(etag.as_str()));
    let weak = format!("\"other\", W/{etag}");
    assert_eq!(host.http_with("GET", "/", &[("if-none-match", &weak)], "").await?.status, 304);
    std::fs::write(dir.path().join("public/index.html"), "<h1>new home</h1>")?;
    let changed = host.http_with("GET", "/", &[("if-none-match", &etag)], "").await?;
    assert_eq!((changed.status, changed.body.as_str()), (200, "<h1>new home</h1>"));
    assert_ne!(changed.header("etag"), Some(etag.as_str()));

    let head = host.http_with("HEAD", "/app.js", &[], "").await?;
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    assert_eq!(head.header("content-length"), Some("17"));
    let post = host.http_with("POST", "/app.js", &[], "x").await?;
    assert_eq!((post.status, post.header("allow")), (405, Some("GET, HEAD")));

    // Party routes are not shadowed by the folder.
    let (status, body) = host.http("GET", "/parties/reactions/r1", "").await?;
    assert_eq!((status, body.as_str()), (200, r#"{"type":"update","reactions":{}}"#));
    host.stop().await
}

#[tokio::test]
async fn no_path_leads_out_of_the_folder() -> Result<()> {
    let dir = temp_dir();
    let host = host(dir.path(), "serve = \"public\"").await?;
    let attempts = [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E%2Fsecret.txt",
        "/docs/..%2f..%2fsecret.txt",
        "/docs/%2e%2e/%2e%2e/secret.txt",
        "/..%5csecret.txt",
        "/docs/..%5c..%5csecret.txt",
        "/%252e%252e/secret.txt",
        "/secret.txt%00.html",
        "/.env",
        "/%2eenv",
        "/link.txt",
        "/up/secret.txt",
    ];
    for path in attempts {
        let response = host.http_with("GET", path, &[], "").await?;
        assert_eq!(response.status, 404, "{path} was served: {}", response.body);
        assert!(!response.body.contains(SECRET) && !response.body.contains("hidden"), "{path} leaked");
    }
    // The default cache policy: always revalidate.
    let index = host.http_with("GET", "/", &[], "").await?;
    assert_eq!(index.header("cache-control"), Some("no-cache"));
    let missing = host.http_with("GET", "/nowhere", &[], "").await?;
    assert_eq!(missing.status, 404, "without single_page_app an unknown path is a 404");
    host.stop().await
}

#[tokio::test]
async fn a_single_page_app_gets_its_index_for_client_routes() -> Result<()> {
    let dir = temp_dir();
    let host = host(dir.path(), "[serve]\npath = \"public\"\nsingle_page_app = true\n[parties]").await?;
    let route = host.http_with("GET", "/rooms/42/settings", &[], "").await?;
    assert_eq!((route.status, route.body.as_str()), (200, "<h1>home</h1>"));
    assert_eq!(host.http_with("GET", "/missing.js", &[], "").await?.status, 404, "files are not rewritten");
    assert_eq!(host.http_with("GET", "/../secret.txt", &[], "").await?.status, 404);
    host.stop().await
}

#[tokio::test]
async fn without_serve_unknown_paths_say_where_parties_live() -> Result<()> {
    let dir = temp_dir();
    site(dir.path())?;
    let host = TestHost::start(dir.path(), &manifest(&[("reactions", REACTIONS)], "")).await?;
    let (status, body) = host.http("GET", "/index.html", "").await?;
    assert_eq!(status, 404);
    assert!(body.contains("/parties/<party>/<room>"), "{body}");
    host.stop().await
}

#[tokio::test]
async fn large_files_stream_and_an_etag_is_computed_once_per_file_version() -> Result<()> {
    let dir = temp_dir();
    let host = host(dir.path(), "serve = \"public\"").await?;
    let big: String = (0..(3 << 20) / 16).map(|i| format!("{i:015}\n")).collect();
    let file = dir.path().join("public/big.txt");
    std::fs::write(&file, &big)?;

    let got = host.http_with("GET", "/big.txt", &[], "").await?;
    assert_eq!((got.status, got.body.len()), (200, big.len()));
    assert!(got.body == big, "the streamed file differs");
    assert_eq!(got.header("content-length"), Some(big.len().to_string().as_str()));
    let etag = got.header("etag").unwrap_or_default().to_owned();

    // HEAD: the headers of a GET, no body.
    let head = host.http_with("HEAD", "/big.txt", &[], "").await?;
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    assert_eq!(head.header("content-length"), Some(big.len().to_string().as_str()));
    assert_eq!(head.header("etag"), Some(etag.as_str()));

    // The same size and modification time is the same version: the ETag
    // is the one computed before, not the file hashed again.
    let modified = std::fs::metadata(&file)?.modified()?;
    std::fs::write(&file, big.replace('0', "9"))?;
    std::fs::File::options().append(true).open(&file)?.set_modified(modified)?;
    let cached = host.http_with("GET", "/big.txt", &[("if-none-match", &etag)], "").await?;
    assert_eq!(cached.status, 304);
    // A new modification time is a new version, with its own ETag.
    std::fs::File::options()
        .append(true)
        .open(&file)?
        .set_modified(modified + std::time::Duration::from_secs(5))?;
    let changed = host.http_with("GET", "/big.txt", &[("if-none-match", &etag)], "").await?;
    assert_eq!(changed.status, 200);
    assert_ne!(changed.header("etag"), Some(etag.as_str()));
    host.stop().await
}
