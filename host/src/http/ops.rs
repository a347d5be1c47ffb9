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

/// Whether the caller is the host's own machine (a loopback peer): the
/// operator, for metrics and the local project. Not for tenants' projects:
/// behind a reverse proxy on the same machine every client is loopback.
pub(super) fn is_local_operator(projects: &Projects, request: &Request) -> bool {
    let loopback = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .is_some_and(|ConnectInfo(peer)| peer.ip().to_canonical().is_loopback());
    loopback || has_operator_token(projects, request)
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
