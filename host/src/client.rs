//! The client side of deployment: `partyhost deploy` packs a local project
//! (its manifest, every party's `.wasm` and the `serve` folder) into a
//! [`Bundle`] and uploads it to a host's admin API, showing progress;
//! `partyhost rollback` asks for the previous version.

use anyhow::{Context, bail};
use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;

use crate::manifest::{Deployment, is_served_name};
use crate::projects::Bundle;

/// Bytes per upload chunk; progress is shown per chunk.
const CHUNK: usize = 64 << 10;

/// Where and as whom to deploy.
pub struct Target<'a> {
    /// `https://host[:port]` (or `http://host:port`) of the host.
    pub url: &'a str,
    pub project: &'a str,
    /// The project's token, or the operator's; empty: none (the operator
    /// on loopback needs none).
    pub token: &'a str,
    /// Extra PEM roots to trust for an `https://` host.
    pub ca_cert: Option<&'a Path>,
}

/// Packs the project of `manifest` and uploads it; returns the host's
/// answer (the version now serving).
///
/// # Errors
/// When the manifest is invalid, a file cannot be read, or the host
/// refuses the deployment (its message is returned as is).
pub async fn deploy(target: &Target<'_>, manifest: &Path) -> anyhow::Result<serde_json::Value> {
    let path = manifest.to_path_buf();
    // Script parties are built here, never on the host.
    let bundle =
        tokio::task::spawn_blocking(move || pack(&path)).await.context("packing the deployment")??;
    let body = serde_json::to_vec(&bundle).context("encoding the deployment")?;
    let path = format!("/_partyhost/projects/{}", target.project);
    // A wrong token or URL fails here, before the upload; so does a bundle
    // the host would refuse as too large (it would answer 413 mid-upload).
    let status = send(target, "GET", &path, Vec::new()).await?;
    if let Some(max) = status["max_bundle_bytes"].as_u64()
        && body.len() as u64 > max
    {
        bail!(
            "the deployment is {} bytes; this host accepts deployments up to {max} bytes (its max_bundle_mib)",
            body.len()
        );
    }
    eprintln!(
        "partyhost deploy: {} files, {:.1} MiB, to project `{}` at {}",
        bundle.files.len(),
        body.len() as f64 / f64::from(1 << 20),
        target.project,
        target.url
    );
    send(target, "PUT", &path, body).await
}

/// One admin call about the project: `rest` is the path after
/// `/_partyhost/projects/<project>` (`/env`, `/rooms?party=chat`, ...).
///
/// # Errors
/// When the host cannot be reached or refuses (its message is returned).
pub async fn call(
    target: &Target<'_>,
    method: &str,
    rest: &str,
    body: Vec<u8>,
) -> anyhow::Result<serde_json::Value> {
    send(target, method, &format!("/_partyhost/projects/{}{rest}", target.project), body).await
}

/// Follows the project's live log (`rest`: `/tail?party=...`), calling
/// `on_event` with each event until the host ends the stream.
///
/// # Errors
/// When the host cannot be reached, refuses, or sends something else than
/// JSON lines.
pub async fn tail(
    target: &Target<'_>,
    rest: &str,
    mut on_event: impl FnMut(serde_json::Value),
) -> anyhow::Result<()> {
    let (authority, mut sender) = connect(target).await?;
    let path = format!("/_partyhost/projects/{}{rest}", target.project);
    let request = request(target, "GET", &path, &authority, 0)
        .body(StreamBody::new(Box::pin(futures_util::stream::empty()) as BoxedFrames))
        .context("building the request")?;
    let response = sender.send_request(request).await.context("sending the request")?;
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        let text = body.collect().await.context("reading the answer")?.to_bytes();
        bail!("the host refused ({status}): {}", String::from_utf8_lossy(&text).trim());
    }
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.context("reading the live log")?.into_data() else { continue };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let event = serde_json::from_slice(&line).with_context(|| {
                format!("the host sent something else than JSON: {}", String::from_utf8_lossy(&line))
            })?;
            on_event(event);
        }
    }
    Ok(())
}

/// Asks the host to serve the project's previous version.
///
/// # Errors
/// When the host refuses (no earlier version, wrong token).
pub async fn rollback(target: &Target<'_>) -> anyhow::Result<serde_json::Value> {
    send(target, "POST", &format!("/_partyhost/projects/{}/rollback", target.project), Vec::new()).await
}

/// The bundle for the manifest at `path`: the manifest as written, each
/// party's component (script parties built first) and every file of the
/// `serve` folder (dotfiles and `node_modules` left out, as the host would
/// not serve them).
///
/// # Errors
/// When the manifest is invalid or names a file outside its folder.
pub fn pack(path: &Path) -> anyhow::Result<Bundle<'static>> {
    let deployment = Deployment::load(path)?;
    crate::js::build_all(&deployment)?;
    let folder = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let base = std::path::absolute(folder)?;
    let manifest = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut files = BTreeMap::new();
    let mut add = |file: &Path| -> anyhow::Result<()> {
        let absolute = std::path::absolute(file)?;
        let Ok(relative) = absolute.strip_prefix(&base) else {
            bail!(
                "{} is outside the manifest's folder {}; a deployment carries only files below it",
                file.display(),
                base.display()
            );
        };
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let key = relative.to_str().with_context(|| format!("{} is not a UTF-8 path", relative.display()))?;
        files.insert(key.replace('\\', "/"), base64::engine::general_purpose::STANDARD.encode(bytes).into());
        Ok(())
    };
    for spec in deployment.parties.values() {
        add(&spec.wasm)?;
    }
    if let Some(serve) = &deployment.serve {
        for file in walk(&serve.dir)? {
            add(&file)?;
        }
    }
    Ok(Bundle { manifest: manifest.into(), files })
}

/// Every visible file below `dir`.
fn walk(dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            if !is_served_name(&entry.file_name().to_string_lossy()) {
                continue;
            }
            // Symlinks are skipped: a deployment carries plain files only.
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    Ok(files)
}

/// One HTTP/1.1 request to the host's admin API; the body goes up in
/// chunks with a progress line. A non-2xx answer is an error carrying the
/// host's message.
async fn send(
    target: &Target<'_>,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> anyhow::Result<serde_json::Value> {
    let (authority, mut sender) = connect(target).await?;
    let total = body.len();
    let body = Bytes::from(body);
    let chunks: Vec<Bytes> =
        (0..total).step_by(CHUNK).map(|start| body.slice(start..(start + CHUNK).min(total))).collect();
    let mut sent = 0;
    let frames = futures_util::stream::iter(chunks).map(move |chunk| {
        sent += chunk.len();
        // Progress only for uploads big enough to wait for.
        if total > CHUNK
            && let Some(percent) = (sent * 100).checked_div(total)
        {
            eprint!("\ruploading {percent:>3}%");
            if sent == total {
                eprint!("\ruploaded; the host is validating and compiling...\n");
            }
            let _ = std::io::stderr().flush();
        }
        Ok::<_, std::convert::Infallible>(Frame::data(chunk))
    });
    let request = request(target, method, path, &authority, total)
        .body(StreamBody::new(Box::pin(frames) as BoxedFrames))
        .context("building the request")?;
    let response = sender.send_request(request).await.context("sending the request")?;
    let status = response.status();
    let text = response.into_body().collect().await.context("reading the answer")?.to_bytes();
    let text = String::from_utf8_lossy(&text);
    if !status.is_success() {
        bail!("the host refused ({status}): {}", text.trim());
    }
    serde_json::from_str(&text)
        .with_context(|| format!("the host answered with something else than JSON: {text}"))
}

/// A request's head: the host, the token if any, the body's length.
fn request(
    target: &Target<'_>,
    method: &str,
    path: &str,
    authority: &str,
    length: usize,
) -> hyper::http::request::Builder {
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::CONTENT_LENGTH, length);
    if !target.token.is_empty() {
        builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {}", target.token));
    }
    builder
}

type Sender = hyper::client::conn::http1::SendRequest<StreamBody<BoxedFrames>>;
type BoxedFrames = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<Frame<Bytes>, std::convert::Infallible>> + Send>,
>;

/// An HTTP/1.1 connection to the host, over TLS for `https://`. Returns
/// the authority (`host:port`) for the `Host` header.
async fn connect(target: &Target<'_>) -> anyhow::Result<(String, Sender)> {
    let (tls, rest) = if let Some(rest) = target.url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = target.url.strip_prefix("http://") {
        (false, rest)
    } else {
        bail!("{} is not an https:// (or http://) URL", target.url);
    };
    let authority = rest.trim_end_matches('/').to_owned();
    let with_port = if authority.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok()) {
        authority.clone()
    } else {
        format!("{authority}:{}", if tls { 443 } else { 80 })
    };
    let stream = tokio::net::TcpStream::connect(&with_port)
        .await
        .with_context(|| format!("connecting to {with_port}"))?;
    if !tls {
        if !stream.peer_addr().is_ok_and(|a| a.ip().is_loopback()) {
            eprintln!(
                "partyhost: warning: {} is plain http; the token crosses the network in clear",
                target.url
            );
        }
        return handshake(authority, stream).await;
    }
    let config = crate::edge::client_config(target.ca_cert)?;
    let host = with_port.rsplit_once(':').map_or(with_port.as_str(), |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .with_context(|| format!("{host} is not a valid TLS server name"))?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
        .with_context(|| format!("TLS with {with_port}"))?;
    handshake(authority, stream).await
}

async fn handshake<S>(authority: String, stream: S) -> anyhow::Result<(String, Sender)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.context("starting HTTP")?;
    tokio::spawn(connection);
    Ok((authority, sender))
}
