//! Room-to-room requests between nodes.
//!
//! Each (caller, target) pair has a lane: a task that sends the caller's
//! requests to the target one at a time, in the order the caller made
//! them, to whichever node owns the target (this one included). Across
//! nodes a request is an HTTP call to the owner's [`FETCH_ROUTE`],
//! authenticated by the cluster's shared secret. A request is sent once:
//! if the owner's node dies with it, the caller gets a 502 saying so, never
//! a second delivery. Only an owner that answers "not mine" (421, nothing
//! ran) sends the request looking for the room again.

use anyhow::{Context, anyhow};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response as HttpResponse};
use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

use super::Node;
use crate::ids::{PartyName, RoomId, RoomKey};
use crate::rooms::{Placement, Rooms};
use crate::sandbox::{Header, Request, Response};
use crate::storage::{OwnedElsewhere, Postgres};

/// Where a node takes other nodes' room-to-room requests.
pub const FETCH_ROUTE: &str = "/_partyhost/cluster/fetch/{party}/{room}";
const SECRET_HEADER: &str = "x-partyhost-cluster-secret";
const HOPS_HEADER: &str = "x-partyhost-hops";
/// A lane with nothing to send for this long stops.
const LANE_IDLE: Duration = Duration::from_secs(30);
/// How often a request follows a room that moved before giving up.
const MAX_MOVES: usize = 3;
/// The longest a remote room may take to answer.
const REMOTE_DEADLINE: Duration = Duration::from_secs(30);

/// Every lane of a node, by (caller, target).
pub(super) type Lanes = Arc<Mutex<HashMap<(RoomKey, RoomKey), mpsc::UnboundedSender<LaneRequest>>>>;

/// A room-to-room request waiting in its lane.
pub(super) struct LaneRequest {
    pub(super) request: Request,
    pub(super) hops: u32,
    pub(super) reply: oneshot::Sender<Response>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct WireMessage {
    /// The request's method; absent in a response.
    #[serde(default)]
    method: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    status: u16,
    headers: Vec<(String, String)>,
    /// Base64.
    body: String,
}

fn encode(headers: &[Header], body: &[u8]) -> (Vec<(String, String)>, String) {
    let headers = headers.iter().map(|h| (h.name.clone(), h.value.clone())).collect();
    (headers, base64::engine::general_purpose::STANDARD.encode(body))
}

fn decode(headers: Vec<(String, String)>, body: &str) -> anyhow::Result<(Vec<Header>, Vec<u8>)> {
    let body = base64::engine::general_purpose::STANDARD.decode(body).context("the body is not base64")?;
    Ok((headers.into_iter().map(|(name, value)| Header { name, value }).collect(), body))
}

/// Sends a lane's requests in order until it has been idle for
/// [`LANE_IDLE`]; then takes it out of `lanes`.
pub(super) async fn run_lane(
    rooms: Arc<Rooms>,
    pg: Arc<Postgres>,
    lane: (RoomKey, RoomKey),
    mut queue: mpsc::UnboundedReceiver<LaneRequest>,
    lanes: Lanes,
) {
    let mut peer = None;
    loop {
        match tokio::time::timeout(LANE_IDLE, queue.recv()).await {
            Ok(Some(next)) => deliver(&rooms, &pg, &lane.1, next, &mut peer).await,
            Ok(None) => return,
            Err(_) => {
                // Senders send under this lock, so nothing can slip in.
                let mut lanes = lanes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if queue.is_empty() {
                    lanes.remove(&lane);
                    return;
                }
            }
        }
    }
}

/// An open connection to another node, kept by a lane.
struct Peer {
    address: String,
    sender: SendRequest<Full<Bytes>>,
}

async fn deliver(
    rooms: &Arc<Rooms>,
    pg: &Postgres,
    to: &RoomKey,
    next: LaneRequest,
    peer: &mut Option<Peer>,
) {
    let LaneRequest { request, hops, reply } = next;
    // The caller gave up (its fetch timed out, or it reset): sending now
    // would deliver what it was told had failed.
    if reply.is_closed() {
        return;
    }
    let fail = |status: u16, message: String| {
        tracing::warn!(room = %to, %message, "room-to-room request failed");
        crate::rooms::error_response(status, &message)
    };
    for _ in 0..MAX_MOVES {
        let placement = match rooms.get_or_spawn(to) {
            Ok(handle) => handle.placement().await,
            Err(e) => {
                let _ = reply.send(fail(503, format!("fetch to {to} failed: {e:#}")));
                return;
            }
        };
        match placement {
            Placement::Here => {
                if let Err(e) = rooms.fetch_here(to, request, hops, reply) {
                    tracing::warn!(room = %to, cause = %format!("{e:#}"), "room-to-room request failed");
                }
                return;
            }
            Placement::Elsewhere(owner) => match call(peer, pg, &owner, to, &request, hops).await {
                Ok(Some(response)) => {
                    let _ = reply.send(response);
                    return;
                }
                // The owner says it is not: look again.
                Ok(None) => {}
                Err(e) => {
                    let message = format!(
                        "fetch to {to} failed: node `{}` at {} did not answer ({e:#}); the request was not sent again",
                        owner.node, owner.address
                    );
                    *peer = None;
                    let _ = reply.send(fail(502, message));
                    return;
                }
            },
            Placement::Loading | Placement::Failed => break,
        }
    }
    let _ = reply.send(fail(503, format!("fetch to {to} failed: the room could not be placed on any node")));
}

/// Sends `request` to the node that owns `to`. `Ok(None)`: that node does
/// not own it (nothing ran there).
async fn call(
    peer: &mut Option<Peer>,
    pg: &Postgres,
    owner: &OwnedElsewhere,
    to: &RoomKey,
    request: &Request,
    hops: u32,
) -> anyhow::Result<Option<Response>> {
    if peer.as_ref().is_none_or(|p| p.address != owner.address || p.sender.is_closed()) {
        *peer = None;
        let stream =
            tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(&owner.address))
                .await
                .map_err(|_| anyhow!("connecting timed out"))?
                .context("connecting")?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        *peer = Some(Peer { address: owner.address.clone(), sender });
    }
    let sender = &mut peer.as_mut().ok_or_else(|| anyhow!("no connection"))?.sender;
    let (headers, body) = encode(&request.headers, &request.body);
    let wire =
        WireMessage { method: request.method.clone(), url: request.url.clone(), status: 0, headers, body };
    let path = format!("/_partyhost/cluster/fetch/{}/{}", to.party, urlencode(to.room.as_str()));
    let http = hyper::Request::post(path)
        .header(hyper::header::HOST, &owner.address)
        .header(SECRET_HEADER, &pg.secret)
        .header(HOPS_HEADER, hops.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(&wire)?)))?;
    let answered = async {
        sender.ready().await?;
        let response = sender.send_request(http).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, body))
    };
    let (status, body) = tokio::time::timeout(REMOTE_DEADLINE, answered)
        .await
        .map_err(|_| anyhow!("no answer in {REMOTE_DEADLINE:?}"))??;
    match status {
        StatusCode::OK => {
            let wire: WireMessage = serde_json::from_slice(&body).context("reading the owner's answer")?;
            let (headers, body) = decode(wire.headers, &wire.body)?;
            Ok(Some(Response { status: wire.status, headers, body }))
        }
        StatusCode::MISDIRECTED_REQUEST => Ok(None),
        status => Err(anyhow!("it answered {status}: {}", String::from_utf8_lossy(&body))),
    }
}

fn urlencode(room: &str) -> String {
    percent_encoding::utf8_percent_encode(room, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// What [`serve_fetch`] needs.
#[derive(Clone)]
pub struct PeerState {
    pub node: Arc<Node>,
    pub rooms: Arc<Rooms>,
}

/// `POST /_partyhost/cluster/fetch/<party>/<room>`: another node's room
/// calls a room here. 421 when this node does not own the room.
pub async fn serve_fetch(
    State(PeerState { node, rooms }): State<PeerState>,
    Path((party, room)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> HttpResponse {
    let secret = headers.get(SECRET_HEADER).and_then(|h| h.to_str().ok()).unwrap_or_default();
    if !node.secret.matches(secret) {
        return (StatusCode::UNAUTHORIZED, "not a node of this cluster\n").into_response();
    }
    let (Ok(party), Ok(room)) = (PartyName::try_from(party.as_str()), RoomId::try_from(room.as_str())) else {
        return (StatusCode::BAD_REQUEST, "invalid party or room\n").into_response();
    };
    let key = RoomKey { party, room };
    let hops = headers.get(HOPS_HEADER).and_then(|h| h.to_str().ok()?.parse().ok()).unwrap_or(0);
    let request = serde_json::from_slice::<WireMessage>(&body)
        .context("reading the request")
        .and_then(|wire| Ok((wire.method.clone(), wire.url.clone(), decode(wire.headers, &wire.body)?)));
    let (method, url, (headers, body)) = match request {
        Ok(request) => request,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e:#}\n")).into_response(),
    };
    match rooms.owner_elsewhere(&key).await {
        Ok(None) => {}
        Ok(Some(owner)) => return (StatusCode::MISDIRECTED_REQUEST, format!("{owner}\n")).into_response(),
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}\n")).into_response(),
    }
    let (reply, response) = oneshot::channel();
    if let Err(e) = rooms.fetch_here(&key, Request { method, url, headers, body }, hops, reply) {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}\n")).into_response();
    }
    let response = match tokio::time::timeout(REMOTE_DEADLINE, response).await {
        Ok(Ok(response)) => response,
        Ok(Err(_)) => return (StatusCode::SERVICE_UNAVAILABLE, "the room stopped\n").into_response(),
        Err(_) => return (StatusCode::GATEWAY_TIMEOUT, "the room did not answer\n").into_response(),
    };
    let (headers, body) = encode(&response.headers, &response.body);
    let wire =
        WireMessage { method: String::new(), url: String::new(), status: response.status, headers, body };
    axum::Json(wire).into_response()
}
