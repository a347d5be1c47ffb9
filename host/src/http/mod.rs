//! HTTP and WebSocket front: axum routes that turn requests and sockets
//! into room messages.
//!
//! - `mod.rs`: the host's router: the admin API, then each request to its
//!   project (by host name, `/p/<project>/` prefix, or the local project).
//! - `routes.rs`: a project's `/parties/<party>/<room>[/...]` and the
//!   legacy `/party/<room>[/...]` (the `main` party).
//! - `socket.rs`: one task per WebSocket, between the client and its room.
//! - `assets.rs`: the manifest's `serve` folder at `/` (the fallback route).
//! - `admin.rs`: per project, by token: deploy, rollback, status, secrets,
//!   rooms, live logs.
//! - `ops.rs`: health, readiness and metrics, for the operator.
//! - `error.rs`: [`ApiError`], the one error type of every route.

mod admin;
mod assets;
mod error;
mod ops;
mod routes;
mod socket;

pub use error::ApiError;
pub use ops::{Readiness, starting_router};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use std::sync::Arc;
use tower::ServiceExt;

use crate::projects::{Projects, Route};
use crate::rooms::Rooms;

/// What a project's routes need.
#[derive(Clone)]
pub struct AppState {
    pub rooms: Arc<Rooms>,
    /// Cancelled at shutdown; socket tasks close their clients with 1001.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Static files' ETags, computed once per version of a file.
    pub(crate) etags: Arc<assets::Etags>,
}

/// The host's router; with `peers`, also the route other nodes of the
/// cluster call rooms here by.
pub fn router(projects: Arc<Projects>, peers: Option<crate::cluster::PeerState>) -> Router {
    let peer_routes = match peers {
        Some(peers) => Router::new()
            .route(crate::cluster::FETCH_ROUTE, post(crate::cluster::serve_fetch))
            // A room's request body (up to `message_kib`) in base64, in JSON.
            .layer(axum::extract::DefaultBodyLimit::max(64 << 20))
            .with_state(peers),
        None => Router::new(),
    };
    Router::new()
        .merge(peer_routes)
        .route("/_partyhost/metrics", get(ops::metrics))
        .route("/_partyhost/projects/{project}", get(admin::status).put(admin::deploy))
        .route("/_partyhost/projects/{project}/rollback", post(admin::rollback))
        .route("/_partyhost/projects/{project}/env", get(admin::env_list))
        .route("/_partyhost/projects/{project}/env/{name}", put(admin::env_set).delete(admin::env_remove))
        .route("/_partyhost/projects/{project}/rooms", get(admin::rooms))
        .route("/_partyhost/projects/{project}/tail", get(admin::tail))
        .fallback(to_project)
        .with_state(projects)
}

/// One project's routes, bound to its rooms.
pub fn project_router(rooms: Arc<Rooms>, shutdown: tokio_util::sync::CancellationToken) -> Router {
    routes::router().with_state(AppState { rooms, shutdown, etags: Arc::default() })
}

/// Hands the request to its project's router, without the path prefix.
async fn to_project(State(projects): State<Arc<Projects>>, mut request: Request) -> Response {
    let host = request.headers().get(header::HOST).and_then(|h| h.to_str().ok());
    let (project, strip) = match projects.route(host, request.uri().path()) {
        Route::Local(project) => (project, 0),
        Route::Deployed(project, strip) => (project, strip),
        Route::Unknown(name) => {
            return ApiError::NotFound(format!("no project named `{name}` is deployed on this host"))
                .into_response();
        }
    };
    if strip > 0 {
        let uri = request.uri();
        let rest = uri.path().get(strip..).unwrap_or_default();
        let path = if rest.starts_with('/') { rest.to_owned() } else { format!("/{rest}") };
        let path_and_query = match uri.query() {
            Some(query) => format!("{path}?{query}"),
            None => path,
        };
        match Uri::try_from(path_and_query) {
            Ok(stripped) => *request.uri_mut() = stripped,
            Err(e) => return ApiError::BadRequest(format!("invalid path: {e}")).into_response(),
        }
    }
    let mut response = match project.app.clone().oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    if strip > 0 {
        isolate(&mut response);
    }
    response
}

/// The sandbox every response under `/p/<project>/` gets: such pages share
/// the host's origin with every other tenant and with the host's own pages,
/// so they run as an opaque origin (`Content-Security-Policy: sandbox`
/// without `allow-same-origin`: no cookies, no storage, no same-origin
/// reads of anyone's pages) and may not set cookies or other host-wide
/// state on the shared host name. A tenant that needs an origin of its own is served at
/// `<project>.<domain>`, where none of this applies.
const SHARED_ORIGIN_POLICY: &str =
    "sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads";

/// Headers that would act on the whole shared host name, not the tenant:
/// cookies, wiping every page's data, pinning HTTPS, advertising other
/// protocols, widening a service worker's reach.
const SHARED_ORIGIN_DROPPED: [&str; 5] =
    ["set-cookie", "clear-site-data", "strict-transport-security", "alt-svc", "service-worker-allowed"];

fn isolate(response: &mut Response) {
    let headers = response.headers_mut();
    for name in SHARED_ORIGIN_DROPPED {
        if headers.remove(name).is_some() {
            tracing::debug!(header = name, "dropped from a response on the shared origin");
        }
    }
    // Appended, not replaced: every policy a response carries applies, so
    // a tenant's own stricter policy still holds.
    headers.append(header::CONTENT_SECURITY_POLICY, header::HeaderValue::from_static(SHARED_ORIGIN_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
}
