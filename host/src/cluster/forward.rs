//! A client's request or WebSocket for a room another node owns goes to
//! that node unchanged: the request is sent on, and for an upgrade the two
//! connections are joined byte for byte once the owner has answered 101.
//! The owner runs the room's gates and handlers as for any client; this
//! node only carries bytes. A request that was already forwarded once is
//! not forwarded again (the room is moving): 503, and the client retries.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::storage::OwnedElsewhere;

/// Set on a forwarded request: the name of the node that forwarded it.
pub const FORWARDED_BY: &str = "x-partyhost-forwarded-by";

/// Headers about this hop's connection, not the request (RFC 9110 7.6.1);
/// an upgrade keeps `connection` and `upgrade`, which ask for it.
const HOP_BY_HOP: [&str; 6] =
    ["keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "proxy-authorization"];

/// How long connecting to the owner may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the owner may take to answer (a stopped owner still accepts
/// connections); a room's own request timeout is as long.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `request` to `owner` and answers with its response; an upgrade
/// becomes a tunnel between the client and the owner, cut at `shutdown`.
pub async fn to_owner(
    this_node: &str,
    owner: &OwnedElsewhere,
    request: axum::extract::Request,
    shutdown: CancellationToken,
) -> Response {
    if let Some(by) = request.headers().get(FORWARDED_BY) {
        tracing::info!(by = ?by, owner = %owner.node, "a forwarded request met another owner; the room is moving");
        return unavailable("the room is moving between nodes; retry");
    }
    match forward(this_node, owner, request, shutdown).await {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!(owner = %owner.node, address = %owner.address, cause = %format!("{e:#}"), "could not forward to the room's node");
            unavailable("the room's node did not answer; retry")
        }
    }
}

fn unavailable(message: &str) -> Response {
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, format!("{message}\n")).into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

async fn forward(
    this_node: &str,
    owner: &OwnedElsewhere,
    request: axum::extract::Request,
    shutdown: CancellationToken,
) -> anyhow::Result<Response> {
    use anyhow::Context;
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&owner.address))
        .await
        .context("connecting timed out")?
        .context("connecting")?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection.with_upgrades());

    let (mut parts, body) = request.into_parts();
    let client_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    // The original URI: a tenant prefix, if any, is the owner's to take off.
    let uri = parts.extensions.get::<axum::extract::OriginalUri>().map_or(&parts.uri, |o| &o.0);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut forwarded = hyper::Request::builder().method(parts.method.clone()).uri(path).body(body)?;
    let headers = forwarded.headers_mut();
    *headers = std::mem::take(&mut parts.headers);
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.insert(FORWARDED_BY, HeaderValue::from_str(this_node)?);

    let mut response = tokio::time::timeout(RESPONSE_TIMEOUT, sender.send_request(forwarded))
        .await
        .context("the owner did not answer in time")?
        .context("sending the request")?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(response.map(Body::new));
    }
    let owner_upgrade = hyper::upgrade::on(&mut response);
    let client_upgrade = client_upgrade.context("the owner upgraded a request that asked for no upgrade")?;
    tokio::spawn(async move {
        let (client, owner) = tokio::join!(client_upgrade, owner_upgrade);
        let (Ok(client), Ok(owner)) = (client, owner) else { return };
        let (mut client, mut owner) = (TokioIo::new(client), TokioIo::new(owner));
        tokio::select! {
            () = shutdown.cancelled() => {}
            _ = tokio::io::copy_bidirectional(&mut client, &mut owner) => {}
        }
    });
    let (parts, _) = response.into_parts();
    Ok(Response::from_parts(parts, Body::empty()))
}
