//! The manifest's `serve` folder, at `/` beside the party routes.
//!
//! A request path is percent-decoded once and checked segment by segment
//! (no `.`, `..`, dotfiles, `node_modules`, backslashes or NULs), and the
//! file it names must canonicalise to a path inside the folder's canonical
//! path, so neither encoded `..` nor a symlink leads out. Every refusal is a
//! plain 404: a client learns nothing about what lies outside.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

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
    let body = tokio::fs::read(&file).await.map_err(|e| {
        ApiError::internal(anyhow::Error::new(e).context(format!("reading {}", file.display())))
    })?;
    Ok(respond(&serve, &file, body, &headers))
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

/// 200 with the file, or 304 when the client's ETag still matches.
fn respond(serve: &ServeSpec, file: &Path, body: Vec<u8>, request: &HeaderMap) -> Response {
    let digest = Sha256::digest(&body);
    let etag = format!("\"{}\"", digest[..12].iter().map(|b| format!("{b:02x}")).collect::<String>());
    let cache_control = match serve.browser_ttl {
        Some(seconds) => format!("public, max-age={seconds}"),
        None => "no-cache".to_owned(),
    };
    let mut headers = HeaderMap::new();
    for (name, value) in [(header::ETAG, etag.as_str()), (header::CACHE_CONTROL, cache_control.as_str())] {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    }
    if etag_matches(request, &etag) {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(header::CONTENT_TYPE, content_type(file));
    (StatusCode::OK, headers, Body::from(body)).into_response()
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
