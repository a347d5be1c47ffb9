//! What an operator watches: `GET /_partyhost/health` (the process is up),
//! `GET /_partyhost/ready` (200 only once every party is compiled and
//! serving), and `GET /_partyhost/metrics` (Prometheus text; loopback
//! clients or the operator's token only). Until the host is ready, every
//! other request is a 503 with `Retry-After`.

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use tower::ServiceExt;

use super::ApiError;
use crate::metrics::ProjectSnapshot;
use crate::projects::Projects;

/// The router the host serves once it is ready; unset while it starts.
#[derive(Default)]
pub struct Readiness {
    app: OnceLock<Router>,
}

impl Readiness {
    /// From now on, requests go to `app`.
    pub fn serve(&self, app: Router) {
        let _ = self.app.set(app);
    }
}

/// The host's router from its first moment: health and readiness, then
/// the real routes once they exist.
pub fn starting_router(readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route("/_partyhost/health", get(|| async { "ok\n" }))
        .route("/_partyhost/ready", get(ready))
        .fallback(when_ready)
        .with_state(readiness)
}

async fn ready(State(readiness): State<Arc<Readiness>>) -> Response {
    match readiness.app.get() {
        Some(_) => "ready\n".into_response(),
        None => starting(),
    }
}

async fn when_ready(State(readiness): State<Arc<Readiness>>, request: Request) -> Response {
    match readiness.app.get() {
        Some(app) => match app.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        },
        None => starting(),
    }
}

fn starting() -> Response {
    let mut response =
        (StatusCode::SERVICE_UNAVAILABLE, "partyhost is starting: its parties are compiling\n")
            .into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// Whether the caller is the operator, for metrics and the local project:
/// one showing the operator's token, or on a single-project host (no
/// `--tenants`) someone on the host's own machine (see [`is_loopback`]).
pub(super) fn is_local_operator(projects: &Projects, request: &Request) -> bool {
    has_operator_token(projects, request) || (projects.tenants().is_none() && is_loopback(request))
}

/// A request from this machine that no proxy forwarded and no web page
/// sent: a loopback peer, a loopback `Host` (a DNS-rebound page has its own
/// name there), no foreign `Origin`, no forwarding headers (a reverse proxy
/// on the same machine makes every client loopback; HAProxy's
/// `option forwardfor` and nginx's `X-Forwarded-For` tell them apart).
fn is_loopback(request: &Request) -> bool {
    let peer_is_loopback = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .is_some_and(|ConnectInfo(peer)| peer.ip().to_canonical().is_loopback());
    let headers = request.headers();
    let forwarded = ["forwarded", "x-forwarded-for", "x-real-ip"].iter().any(|h| headers.contains_key(*h));
    let loopback_name = |authority: &str| {
        let host = authority.rsplit_once(':').map_or(authority, |(host, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) { host } else { authority }
        });
        matches!(host, "localhost" | "127.0.0.1" | "[::1]")
    };
    let host_is_loopback = headers.get(header::HOST).and_then(|h| h.to_str().ok()).is_some_and(loopback_name);
    let origin_is_local = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()).is_none_or(|origin| {
        origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")).is_some_and(loopback_name)
    });
    peer_is_loopback && host_is_loopback && origin_is_local && !forwarded
}

/// Whether the caller shows the operator's token.
pub(super) fn has_operator_token(projects: &Projects, request: &Request) -> bool {
    projects.operator_token().is_some_and(|hash| bearer(request).is_some_and(|t| hash.matches(t)))
}

/// The bearer token of the request, if any.
pub(super) fn bearer(request: &Request) -> Option<&str> {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

pub(super) async fn metrics(
    State(projects): State<Arc<Projects>>,
    request: Request,
) -> Result<Response, ApiError> {
    if !projects.metrics().enabled() {
        return Err(ApiError::NotFound("metrics are off on this host (--no-metrics)".into()));
    }
    if !is_local_operator(&projects, &request) {
        return Err(ApiError::Unauthorized(
            "metrics are for loopback clients or the operator's token".into(),
        ));
    }
    let snapshots = projects
        .serving()
        .into_iter()
        .map(|(project, serving)| {
            let stats = serving.rooms.stats();
            ProjectSnapshot {
                project,
                rooms: stats.rooms,
                live_instances: stats.instances,
                queued_bytes: stats.queued_bytes,
                limit_hits: serving.rooms.limit_hits().snapshot(),
            }
        })
        .collect();
    let text = projects.metrics().render(snapshots);
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(response)
}
