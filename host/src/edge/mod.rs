//! The edge: where client connections arrive, before any route. It owns
//! what an anonymous client can hold of the host: how many connections
//! (in all, and per client address), how long it may take to send headers
//! or a whole request, how long a write to it may stay blocked, and the TLS
//! handshake when the host terminates TLS itself. Past a cap the client
//! gets a 503 that says which; past a timeout the connection is dropped.
//! Shutdown stops accepting at once and asks open connections to finish.
//!
//! - `connections.rs`: the counts, and the [`Slot`](connections::Slot) a
//!   connection holds until its socket closes (WebSockets included).
//! - `io.rs`: the socket wrapper that enforces the write deadline.
//! - `tls.rs`: loading a certificate and key for `--tls-cert`/`--tls-key`.

mod connections;
mod io;
mod tls;

pub use tls::{client_config, server_config};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::manifest::EdgeLimits;
use connections::{Connections, Refusal};
use io::EdgeIo;

/// Connections answered with a 503 at once; more over the caps than this
/// are dropped without a word, so refusing costs the host little.
const MAX_REFUSING: usize = 64;

/// How long a refused client has to send its request and read the 503.
const REFUSAL_TIME: Duration = Duration::from_secs(2);

/// How long a request still in flight when shutdown begins may take: a
/// slow client must not hold the host until its request timeout.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The path prefix of the admin API, whose requests get `deploy_timeout`.
const ADMIN_PREFIX: &str = "/_partyhost/";

/// Serves `app` on `listener` until `shutdown` is cancelled, then lets
/// open HTTP requests finish (WebSockets close themselves with 1001).
///
/// # Errors
/// Never for a client's doing; only when the listener itself fails.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: EdgeLimits,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let edge = Arc::new(Edge {
        connections: Connections::new(limits.max_connections, limits.max_connections_per_ip),
        tls: tls.map(tokio_rustls::TlsAcceptor::from),
        limits,
        app,
    });
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let tracker = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: wait instead of spinning.
                    tracing::warn!(cause = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        match edge.connections.admit(peer.ip()) {
            Ok(slot) => {
                let io = EdgeIo::new(stream, edge.limits.write_timeout, slot);
                tracker.spawn(edge.clone().serve_connection(io, peer, shutdown.clone()));
            }
            Err(refusal) => {
                tracing::debug!(%peer, %refusal, "connection refused");
                // Over TLS a plain-text 503 would be noise: just close.
                if edge.tls.is_none()
                    && let Ok(permit) = refusing.clone().try_acquire_owned()
                {
                    tokio::spawn(async move {
                        let _permit = permit;
                        refuse(stream, refusal).await;
                    });
                }
            }
        }
    }
    // No new connections queue up in the backlog while the rest drain.
    drop(listener);
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// What every connection task shares.
struct Edge {
    connections: Connections,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: EdgeLimits,
    app: Router,
}

impl Edge {
    /// HTTP/1.1 on one connection (after TLS, when on), with upgrades.
    async fn serve_connection(self: Arc<Self>, io: EdgeIo, peer: SocketAddr, shutdown: CancellationToken) {
        match self.tls.clone() {
            None => self.serve_http(io, peer, shutdown).await,
            Some(acceptor) => {
                match tokio::time::timeout(self.limits.header_timeout, acceptor.accept(io)).await {
                    Ok(Ok(tls)) => self.serve_http(tls, peer, shutdown).await,
                    Ok(Err(e)) => tracing::debug!(%peer, cause = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            }
        }
    }

    async fn serve_http<I>(self: Arc<Self>, io: I, peer: SocketAddr, shutdown: CancellationToken)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let header_timeout = self.limits.header_timeout;
        let edge = self.clone();
        let stopping = shutdown.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let (edge, stopping) = (edge.clone(), stopping.clone());
            async move { Ok::<_, Infallible>(edge.answer(request, peer, stopping).await) }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        tokio::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            () = shutdown.cancelled() => {
                connection.as_mut().graceful_shutdown();
                // A request in flight gets its grace (see `answer`); a client
                // still sending headers gets no more than that either.
                match tokio::time::timeout(SHUTDOWN_GRACE * 2, connection).await {
                    Ok(result) => result,
                    Err(_) => return,
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, cause = %e, "connection ended with an error");
        }
    }

    /// One request through the router, within its time; once shutdown has
    /// begun, within [`SHUTDOWN_GRACE`] more.
    async fn answer(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
        shutdown: CancellationToken,
    ) -> Response<Body> {
        let limit = if request.uri().path().starts_with(ADMIN_PREFIX) {
            self.limits.deploy_timeout
        } else {
            self.limits.request_timeout
        };
        let mut request = request.map(Body::new);
        // Who is asking, for the operator's routes (loopback is trusted).
        request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        let routed = self.app.clone().oneshot(request);
        let stopping = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        tokio::select! {
            routed = tokio::time::timeout(limit, routed) => match routed {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(_) => {
                    // Debug, not warn: a client can cause as many as it likes.
                    tracing::debug!(%peer, ?limit, "request timed out");
                    let text = format!("the request took longer than this host allows ({} s)", limit.as_secs_f64());
                    closing(StatusCode::REQUEST_TIMEOUT, text)
                }
            },
            () = stopping => closing(StatusCode::SERVICE_UNAVAILABLE, "the host is shutting down".to_owned()),
        }
    }
}

/// A response that ends its connection.
fn closing(status: StatusCode, text: String) -> Response<Body> {
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    response
}

/// Answers every request on an over-cap connection with a 503 naming the
/// cap, for at most [`REFUSAL_TIME`]. A WebSocket client sees the 503 as
/// its failed handshake; partysocket retries with back-off.
async fn refuse(stream: TcpStream, refusal: Refusal) {
    let text = refusal.to_string();
    let service = hyper::service::service_fn(move |_request: Request<Incoming>| {
        let mut response = closing(StatusCode::SERVICE_UNAVAILABLE, text.clone());
        response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        std::future::ready(Ok::<_, Infallible>(response))
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(REFUSAL_TIME)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(REFUSAL_TIME, connection).await;
}
