//! The manifest's `serve` folder, at `/` beside the party routes.
//!
//! A request path is percent-decoded once and checked segment by segment
//! (no `.`, `..`, dotfiles, `node_modules`, backslashes or NULs), and the
//! file it names must canonicalise to a path inside the folder's canonical
//! path, so neither encoded `..` nor a symlink leads out. Every refusal is a
//! plain 404: a client learns nothing about what lies outside.
//!
//! Files are streamed, never read whole; a file's ETag is its SHA-256,
//! computed once per version of the file (its size and modification time)
//! and kept, so a HEAD or a 304 reads nothing.

use anyhow::Context;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{ApiError, AppState};
use crate::manifest::{ServeSpec, is_served_name};

/// The fallback route: a static file, or a 404 that says where parties live.
pub(super) async fn static_file(
    State(app): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let no_route = || {
        ApiError::NotFound(format!("no route for {}; parties live at /parties/<party>/<room>", uri.path()))
    };
    let Some(serve) = app.rooms.serve() else {
        return Err(no_route());
    };
    if method != Method::GET && method != Method::HEAD {
        return Ok((
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET, HEAD")],
            "static files are read-only",
        )
            .into_response());
    }
    let relative = safe_relative_path(uri.path()).ok_or_else(no_route)?;
    let file = match find_file(&serve.dir, &relative).await {
        Some(file) => file,
        // A path without an extension is a client-side route of the app.
        None if serve.single_page_app && relative.extension().is_none() => {
            find_file(&serve.dir, Path::new("index.html")).await.ok_or_else(no_route)?
        }
        None => return Err(no_route()),
    };
    let Ok(metadata) = tokio::fs::metadata(&file).await else { return Err(no_route()) };
    let etag = app.etags.of(&file, &metadata).await.map_err(ApiError::internal)?;
    let mut response = respond(&serve, &file, &etag, metadata.len(), &headers);
    if response.status() == StatusCode::OK && method == Method::GET {
        let opened = tokio::fs::File::open(&file).await.map_err(|e| {
            ApiError::internal(anyhow::Error::new(e).context(format!("opening {}", file.display())))
        })?;
        *response.body_mut() = Body::from_stream(tokio_util::io::ReaderStream::new(opened));
    }
    Ok(response)
}

/// Most ETags kept; past it the cache starts afresh.
const MAX_ETAGS: usize = 16_384;

/// ETags by file, valid while the file's size and modification time stay.
#[derive(Default)]
pub(crate) struct Etags {
    known: std::sync::Mutex<KnownTags>,
}

/// Each file's size, modification time and ETag.
type KnownTags = HashMap<PathBuf, (u64, Option<SystemTime>, String)>;

impl Etags {
    /// `file`'s ETag, hashing the file (off the async threads) only when
    /// this version of it has not been seen.
    async fn of(&self, file: &Path, metadata: &std::fs::Metadata) -> anyhow::Result<String> {
        let version = (metadata.len(), metadata.modified().ok());
        if let Some((len, modified, etag)) = self.lock().get(file)
            && (*len, *modified) == version
        {
            return Ok(etag.clone());
        }
        let path = file.to_path_buf();
        let etag = tokio::task::spawn_blocking(move || hash_file(&path))
            .await
            .context("the hashing task failed")??;
        let mut known = self.lock();
        if known.len() >= MAX_ETAGS {
            known.clear();
        }
        known.insert(file.to_path_buf(), (version.0, version.1, etag.clone()));
        Ok(etag)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, KnownTags> {
        self.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A strong ETag: the first 12 bytes of the file's SHA-256, in hex.
fn hash_file(path: &Path) -> anyhow::Result<String> {
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("reading {}", path.display()))?;
    let digest = hasher.finalize();
    Ok(format!("\"{}\"", digest[..12].iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

/// The request path as a path relative to the folder, or `None` when any
/// segment is not a plain, visible name.
fn safe_relative_path(path: &str) -> Option<PathBuf> {
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8().ok()?;
    let mut relative = PathBuf::new();
    for segment in decoded.split('/').filter(|s| !s.is_empty()) {
        if !is_served_name(segment) || segment.contains(['\\', '\0']) {
            return None;
        }
        relative.push(segment);
    }
    Some(relative)
}

/// The file `relative` names (a folder's `index.html` for a folder), if it
/// exists and lies inside `dir` once symlinks are resolved.
async fn find_file(dir: &Path, relative: &Path) -> Option<PathBuf> {
    let root = tokio::fs::canonicalize(dir).await.ok()?;
    let mut file = tokio::fs::canonicalize(dir.join(relative)).await.ok()?;
    if tokio::fs::metadata(&file).await.ok()?.is_dir() {
        file = tokio::fs::canonicalize(file.join("index.html")).await.ok()?;
    }
    if !file.starts_with(&root) {
        tracing::warn!(path = %relative.display(), "refusing a static path that leads out of the serve folder");
        return None;
    }
    tokio::fs::metadata(&file).await.ok()?.is_file().then_some(file)
}

/// 200 with the file's headers (its body is added by the caller), or 304
/// when the client's ETag still matches.
fn respond(serve: &ServeSpec, file: &Path, etag: &str, len: u64, request: &HeaderMap) -> Response {
    let cache_control = match serve.browser_ttl {
        Some(seconds) => format!("public, max-age={seconds}"),
        None => "no-cache".to_owned(),
    };
    let mut headers = HeaderMap::new();
    for (name, value) in [(header::ETAG, etag), (header::CACHE_CONTROL, cache_control.as_str())] {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    }
    if etag_matches(request, etag) {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(header::CONTENT_TYPE, content_type(file));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    // Static files are public: a page may load them from any origin, and a
    // sandboxed tenant page (an opaque origin) needs this for its modules.
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    (StatusCode::OK, headers).into_response()
}

/// `If-None-Match: "a", W/"b"` or `*`; weak and strong tags compare equal
/// (RFC 9110's weak comparison, which is what a GET needs).
fn etag_matches(request: &HeaderMap, etag: &str) -> bool {
    request.get_all(header::IF_NONE_MATCH).iter().filter_map(|v| v.to_str().ok()).any(|list| {
        list.split(',').map(str::trim).any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
    })
}

fn content_type(file: &Path) -> HeaderValue {
    let mime = mime_guess::from_path(file).first_or_octet_stream();
    let textual = mime.type_() == mime_guess::mime::TEXT
        || matches!(mime.subtype().as_str(), "javascript" | "json" | "xml")
        || mime.suffix().is_some_and(|s| matches!(s.as_str(), "json" | "xml"));
    let value = if textual { format!("{mime}; charset=utf-8") } else { mime.to_string() };
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("application/octet-stream"))
}
