//! Route table and the handler shared by every party route.

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, State, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use std::collections::HashMap;
use std::time::Duration;
use tracing::{Instrument, info_span};

use super::{ApiError, AppState, assets, socket};
use crate::ids::{ConnectionId, RoomId, RoomKey};
use crate::manifest::MAIN_ALIAS;
use crate::rooms::{Gate, Limit};
use crate::sandbox::{self, Header, Verdict};

/// Initial read buffer per WebSocket. tungstenite's default (128 KiB) made
/// an idle connection cost about 145 KiB, 4 KiB about 15 KiB, 1 KiB about
/// 12 KiB; messages larger than this still arrive whole, the buffer grows
/// for them.
const SOCKET_READ_BUFFER_BYTES: usize = 1 << 10;

/// Bytes of frames gathered before a write; a batch ends with a flush anyway.
const SOCKET_WRITE_BUFFER_BYTES: usize = 16 << 10;

/// How long an HTTP client waits for a room's response before a 504.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/parties/{party}/{room}", any(party_route))
        .route("/parties/{party}/{room}/{*rest}", any(party_route))
        .route("/party/{room}", any(legacy_route))
        .route("/party/{room}/{*rest}", any(legacy_route))
        .fallback(assets::static_file)
}

/// `/party/<room>`: PartyKit's legacy path for the `main` party.
async fn legacy_route(
    state: State<AppState>,
    Path(params): Path<HashMap<String, String>>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let room = params.get("room").cloned().unwrap_or_default();
    serve(state, MAIN_ALIAS, &room, request).await
}

async fn party_route(
    state: State<AppState>,
    Path(params): Path<HashMap<String, String>>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let party = params.get("party").map_or("", String::as_str);
    let room = params.get("room").map_or("", String::as_str);
    serve(state, party, room, request).await
}

async fn serve(
    State(app): State<AppState>,
    party: &str,
    room: &str,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let party = app
        .rooms
        .resolve_party(party)
        .ok_or_else(|| ApiError::NotFound(format!("no party named `{party}` is deployed on this host")))?;
    let room = RoomId::try_from(room)
        .map_err(|reason| ApiError::BadRequest(format!("room id {room:?} {reason}")))?;
    let limits = app
        .rooms
        .party(&party)
        .map(|p| p.code.limits().clone())
        .ok_or_else(|| ApiError::NotFound(format!("party `{party}` was just removed")))?;
    let key = RoomKey { party, room };

    // In a cluster: the room's owner serves it; this node may be the owner.
    let owner = app.rooms.owner_elsewhere(&key).await.map_err(ApiError::unavailable)?;
    if let (Some(owner), Some(cluster)) = (owner, app.rooms.cluster()) {
        return Ok(crate::cluster::to_owner(cluster.node(), &owner, request, app.shutdown.clone()).await);
    }
    // The room is here: the hop that brought it is the cluster's business.
    let mut request = request;
    request.headers_mut().remove(crate::cluster::FORWARDED_BY);

    if is_websocket_upgrade(request.headers()) {
        let (mut parts, _body) = request.into_parts();
        let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &())
            .await
            .map_err(|e| ApiError::BadRequest(format!("invalid WebSocket upgrade: {}", e.body_text())))?;
        let conn = connection_id(&parts.uri)?;
        let guest_request = guest_request(&parts.method, client_uri(&parts), &parts.headers, Vec::new());
        // Refused before any upgrade: the client gets a real HTTP status.
        let guest_request = match app.rooms.pass_gate(&key, Gate::BeforeConnect, guest_request).await {
            Verdict::Pass(request) => request,
            Verdict::Refuse(response) => return Ok(into_http_response(response)),
        };
        let span = info_span!("connection", room = %key, conn = %conn);
        let joined = socket::join(&app.rooms, &key, conn, guest_request, &limits)
            .await
            .map_err(ApiError::unavailable)?;
        let shutdown = app.shutdown.clone();
        let config = app.rooms.config();
        let keepalive = socket::Keepalive {
            ping_interval: config.ping_interval,
            idle_timeout: config.socket_idle_timeout,
        };
        let upgrade = upgrade
            .max_message_size(limits.message_bytes)
            .max_frame_size(limits.message_bytes)
            .read_buffer_size(SOCKET_READ_BUFFER_BYTES)
            // Frames queued together are written together (see
            // socket::write_batch); the buffer grows only as far as a batch.
            .write_buffer_size(SOCKET_WRITE_BUFFER_BYTES);
        return Ok(upgrade
            .on_upgrade(move |ws| socket::run(ws, joined, shutdown, keepalive).instrument(span))
            .into_response());
    }

    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, limits.message_bytes).await.map_err(|_| {
        app.rooms.limit_hit(&key, Limit::MessageSize, || "an HTTP request body over the limit".into());
        ApiError::TooLarge(format!("request body is over {} bytes", limits.message_bytes))
    })?;
    let guest_request = guest_request(&parts.method, client_uri(&parts), &parts.headers, body.to_vec());
    let guest_request = match app.rooms.pass_gate(&key, Gate::BeforeRequest, guest_request).await {
        Verdict::Pass(request) => request,
        Verdict::Refuse(response) => return Ok(into_http_response(response)),
    };
    let response = tokio::time::timeout(REQUEST_TIMEOUT, app.rooms.request(&key, guest_request))
        .await
        .map_err(|_| ApiError::Internal {
            status: StatusCode::GATEWAY_TIMEOUT,
            cause: anyhow::anyhow!("room {key} did not answer within {REQUEST_TIMEOUT:?}"),
        })?
        .map_err(ApiError::unavailable)?;
    Ok(into_http_response(response))
}

fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// `_pk` from the query (what partysocket sends), else a random UUID.
fn connection_id(uri: &Uri) -> Result<ConnectionId, ApiError> {
    let query = uri.query().unwrap_or_default().as_bytes();
    let pk = form_urlencoded::parse(query).find_map(|(name, value)| (name == "_pk").then_some(value));
    match pk {
        Some(pk) => ConnectionId::try_from(pk.as_ref())
            .map_err(|reason| ApiError::BadRequest(format!("connection id `_pk` {reason}"))),
        None => Ok(ConnectionId::random()),
    }
}

/// The URI the client sent: a tenant's `/p/<project>` prefix is taken off
/// for routing, but the room sees (and `connection.uri` keeps) the URL as
/// the client used it.
fn client_uri(parts: &axum::http::request::Parts) -> &Uri {
    parts.extensions.get::<axum::extract::OriginalUri>().map_or(&parts.uri, |original| &original.0)
}

/// The request as a guest sees it: full URL, lower-case header names.
fn guest_request(
    method: &axum::http::Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Vec<u8>,
) -> sandbox::Request {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    sandbox::Request {
        method: method.as_str().to_owned(),
        url: format!("http://{host}{path}"),
        headers: headers
            .iter()
            .filter_map(|(name, value)| {
                Some(Header { name: name.as_str().to_owned(), value: value.to_str().ok()?.to_owned() })
            })
            .collect(),
        body,
    }
}

/// Headers a guest may not set: they describe the connection or the
/// message's framing, which are the host's (RFC 9110 section 7.6.1), and a
/// wrong one would let a guest split or smuggle responses on a shared
/// connection. The host sets the real `Content-Length` itself.
const HOST_ONLY_HEADERS: [&str; 8] = [
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// A guest's response as HTTP. An invalid status becomes 500; headers with
/// an invalid name or value, and [`HOST_ONLY_HEADERS`], are dropped.
fn into_http_response(response: sandbox::Response) -> Response {
    // 1xx would tell the client an upgrade or more answers follow: not a
    // guest's to say.
    let status = StatusCode::from_u16(response.status)
        .ok()
        .filter(|s| !s.is_informational())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut http = Response::new(Body::from(response.body));
    *http.status_mut() = status;
    for Header { name, value } in response.headers {
        match (HeaderName::try_from(name.as_str()), HeaderValue::try_from(value.as_str())) {
            (Ok(name), _) if HOST_ONLY_HEADERS.contains(&name.as_str()) => {
                tracing::debug!(header = %name, "dropping a connection header from a room's response");
            }
            (Ok(name), Ok(value)) => {
                http.headers_mut().append(name, value);
            }
            _ => tracing::warn!(header = %name, "dropping an invalid header from a room's response"),
        }
    }
    http
}
