//! The example pages (web/) in headless Chromium, driven by Playwright
//! (tests/node/browser.mjs), against a real host serving them from the
//! manifest's `serve` folder. Screenshots land in target/screenshots/<language>.

use anyhow::{Context, Result};
use serde_json::json;
use std::path::PathBuf;

use crate::common::{Examples, TestHost, manifest, repo_root, run_node, temp_dir};

pub fn screenshot_dir() -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo_root().join("target"), PathBuf::from);
    target.join("screenshots")
}

async fn the_example_pages_work_in_a_browser(parties: &Examples) -> Result<()> {
    let public = repo_root().join("web/public");
    let bundle = public.join("build/reactions.js");
    assert!(bundle.exists(), "{} is missing: scripts/setup.sh bundles web/", bundle.display());
    let dir = temp_dir();
    let shots = screenshot_dir().join(parties.language);
    let parties = [
        ("reactions", parties.reactions),
        ("presence", parties.presence),
        ("page", parties.page),
        ("counter", parties.counter),
    ];
    // The limiter is off: the test clicks faster than a person would.
    let extra = format!("[serve]\npath = {:?}\n[parties.reactions.vars]\nRATE_LIMIT_MS = \"0\"", public);
    let host = TestHost::start(dir.path(), &manifest(&parties, &extra)).await?;

    let report = run_node("browser.mjs", &[host.addr.to_string(), shots.display().to_string()]).await?;

    assert_eq!(
        report["index"],
        json!(["/reactions.html", "/presence.html", "/links.html?page=a", "/editor.html"])
    );
    let both = json!({ "clap": "2", "heart": "1", "thumbsup": "0", "party": "0" });
    assert_eq!(report["reactions"], json!({ "ann": both, "bob": both }), "each user sees the other's clicks");
    assert_eq!(report["presence"]["both"], json!(["Ann", "Bob"]));
    assert_eq!(report["presence"]["afterBobLeft"], json!(["Ann"]));
    assert_eq!(report["presence"]["count"], "1");
    assert_eq!(report["links"], json!({ "before": "0 here", "after": "1 here" }));
    for shot in ["index", "reactions", "presence", "links-a", "links-b"] {
        let path = shots.join(format!("{shot}.png"));
        let size =
            std::fs::metadata(&path).with_context(|| format!("no screenshot {}", path.display()))?.len();
        assert!(size > 1000, "{} is only {size} bytes", path.display());
    }
    host.stop().await
}

for_both_languages!(the_example_pages_work_in_a_browser);
