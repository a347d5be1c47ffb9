//! One task per WebSocket: reads client frames into the room's mailbox and
//! writes the room's frames to the client. The room hears of the connection
//! first, from [`join`], while the handshake is still under way.

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::ids::{ConnectionId, RoomKey};
use crate::rooms::{
    CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG, CLOSE_TRY_AGAIN, Connect, Departure,
    Limit, Outgoing, QueueReceiver, RoomHandle, RoomMsg, Rooms, next_socket_serial, queue,
};
use crate::sandbox::{Limits, Message, Request};

/// A connection its room already has, waiting for its WebSocket.
///
/// The room is told of the connection when the upgrade request arrives, so
/// it starts (storage, instance, `on-connect`) while the handshake
/// completes, as PartyKit runs `onConnect` before its 101 response; frames
/// the room sends meanwhile wait in the queue. When dropped it tells the
/// room the connection is gone: how [`run`] saw it end, or that it never
/// saw an end (the upgrade failed, or the task stopped).
pub(super) struct Joined {
    rooms: Arc<Rooms>,
    room: RoomHandle,
    conn: ConnectionId,
    socket: u64,
    outgoing: QueueReceiver,
    too_slow: CancellationToken,
    rate: RateLimit,
    ending: Option<Departure>,
}

/// Gives the room a new connection, before its WebSocket exists.
///
/// # Errors
/// When the room cannot be started (its party was removed, say).
pub(super) async fn join(
    rooms: &Arc<Rooms>,
    key: &RoomKey,
    conn: ConnectionId,
    request: Request,
    limits: &Limits,
) -> anyhow::Result<Joined> {
    let socket = next_socket_serial();
    let (sender, outgoing) =
        queue(limits.connection_queue_frames, limits.connection_queue_bytes, rooms.queued_bytes_counter());
    let too_slow = CancellationToken::new();
    let connect = Connect { conn: conn.clone(), socket, request, sender, too_slow: too_slow.clone() };
    // While this connection is open the room keeps running, so later
    // messages go straight to the handle that took the connect.
    let room = rooms.send(key, RoomMsg::Connect(Box::new(connect))).await?;
    let rate = RateLimit::new(limits.messages_per_second);
    rooms.metrics().connection(true);
    Ok(Joined { rooms: rooms.clone(), room, conn, socket, outgoing, too_slow, rate, ending: None })
}

impl Drop for Joined {
    fn drop(&mut self) {
        self.rooms.metrics().connection(false);
        let how = self.ending.take().unwrap_or_else(|| {
            Departure::Failed(
                "the socket task ended without a close (a failed upgrade, or the task stopped)".into(),
            )
        });
        self.rooms
            .post_via(&self.room, RoomMsg::Departed { conn: self.conn.clone(), socket: self.socket, how });
    }
}

/// How a socket task keeps its client honest: pings, and how long it may
/// stay silent.
#[derive(Clone, Copy)]
pub(super) struct Keepalive {
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
}

/// Why a write was abandoned before it finished.
enum Interrupted {
    /// The room found the client too slow (its queue is full).
    TooSlow,
    /// The host is shutting down.
    ShuttingDown,
    Failed(axum::Error),
}

/// Serves one WebSocket until it closes, then tells the room how it ended.
///
/// This task lives as long as its connection, so its state is kept small:
/// it borrows what `joined` holds, and rare, large waits are boxed. Every
/// write also watches for "too slow" and for shutdown, so a client that
/// stops reading cannot keep the task, or the host, waiting; the socket's
/// write deadline (see `edge`) ends a write that stays blocked.
pub(super) fn run(
    ws: WebSocket,
    joined: Joined,
    shutdown: CancellationToken,
    keepalive: Keepalive,
) -> impl Future<Output = ()> + Send {
    // Split here, not in the task: an async fn keeps its arguments in its
    // state for as long as it runs, and the unsplit socket is 368 bytes.
    let (sink, stream) = ws.split();
    serve(joined, sink, stream, shutdown, keepalive)
}

// `joined` first: arguments drop last to first, and its drop tells the room
// the socket has gone, which should follow the socket's own end.
async fn serve(
    mut joined: Joined,
    mut sink: WsSink,
    mut stream: futures_util::stream::SplitStream<WebSocket>,
    shutdown: CancellationToken,
    keepalive: Keepalive,
) {
    debug!("connected");
    let ending = {
        let Joined { rooms, room, conn, socket, outgoing, too_slow, rate, .. } = &mut joined;
        // Made once: a `cancelled()` future registers with its token, and every
        // socket shares the shutdown token.
        let shutting_down = shutdown.cancelled();
        let dropped_as_slow = too_slow.cancelled();
        let mut ping = tokio::time::interval_at(
            tokio::time::Instant::now() + keepalive.ping_interval,
            keepalive.ping_interval,
        );
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = tokio::time::Instant::now();
        tokio::pin!(shutting_down, dropped_as_slow);
        // A write, unless the room finds the client too slow or the host
        // shuts down first.
        macro_rules! guarded {
            ($write:expr) => {
                tokio::select! {
                    biased;
                    () = &mut shutting_down => Err(Interrupted::ShuttingDown),
                    () = &mut dropped_as_slow => Err(Interrupted::TooSlow),
                    written = $write => written.map_err(Interrupted::Failed),
                }
            };
        }
        loop {
            tokio::select! {
                frame = outgoing.recv() => match frame {
                    Some(frame) => match guarded!(Box::pin(write_batch(&mut sink, frame, outgoing, rooms.metrics()))) {
                        Ok(None) => {}
                        Ok(Some(ending)) => break ending,
                        Err(why) => break Box::pin(interrupted(&mut sink, why)).await,
                    },
                    // The room stopped (shutdown): tell the client to come back.
                    None => {
                        let reason = "room stopped".to_owned();
                        send_close(&mut sink, CLOSE_GOING_AWAY, &reason).await;
                        break Departure::Closed { code: CLOSE_GOING_AWAY, reason };
                    }
                },
                incoming = stream.next() => {
                    last_heard = tokio::time::Instant::now();
                    // Control frames count too: a flood of pings would cost a pong each.
                    let counted = matches!(
                        incoming,
                        Some(Ok(WsMessage::Text(_) | WsMessage::Binary(_) | WsMessage::Ping(_) | WsMessage::Pong(_)))
                    );
                    if counted && !rate.admit() {
                        let reason = format!("too many messages: at most {} per second", rate.per_second);
                        rooms.limit_hit(room.key(), Limit::MessageRate, || format!("{conn}: {reason}"));
                        send_close(&mut sink, CLOSE_POLICY, &reason).await;
                        break Departure::Failed(reason);
                    }
                    match incoming {
                        Some(Ok(frame @ (WsMessage::Text(_) | WsMessage::Binary(_)))) => {
                            let msg = match frame {
                                WsMessage::Text(text) => Message::Text(text.as_str().to_owned()),
                                other => Message::Binary(other.into_data().to_vec()),
                            };
                            // Waits while the room's mailbox is full of bytes:
                            // meanwhile this client is not read (TCP pushes back).
                            rooms.metrics().message_in();
                            let weight = Box::pin(room.weigh(msg.len())).await;
                            let msg = RoomMsg::Message { conn: conn.clone(), socket: *socket, msg, weight };
                            if Box::pin(rooms.send_via(room, msg)).await.is_err() {
                                break Departure::Failed("room stopped".into());
                            }
                            // The wait for the mailbox was ours, not the client's silence.
                            last_heard = tokio::time::Instant::now();
                        }
                        Some(Ok(WsMessage::Close(frame))) => {
                            let (code, reason) = frame.map_or((1005, String::new()), |f| (f.code, f.reason.to_string()));
                            break Departure::Closed { code, reason };
                        }
                        Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
                        Some(Err(e)) => match classify(e) {
                            SocketError::Gone => break Departure::Closed { code: 1006, reason: String::new() },
                            SocketError::TooBig(error) => {
                                rooms.limit_hit(room.key(), Limit::MessageSize, || format!("{conn}: {error}"));
                                send_close(&mut sink, CLOSE_TOO_BIG, "message too big").await;
                                break Departure::Failed(error);
                            }
                            SocketError::Protocol(error) => {
                                send_close(&mut sink, CLOSE_PROTOCOL_ERROR, "protocol error").await;
                                break Departure::Failed(error);
                            }
                        },
                        None => break Departure::Closed { code: 1006, reason: String::new() },
                    }
                },
                _ = ping.tick() => {
                    if last_heard.elapsed() >= keepalive.idle_timeout {
                        // A client that answers no ping is gone, whatever TCP says.
                        let reason = format!("no answer to pings for {:?}", keepalive.idle_timeout);
                        debug!(%reason, "dropping a silent socket");
                        break Departure::Closed { code: 1006, reason };
                    }
                    if let Err(why) = guarded!(sink.send(WsMessage::Ping(Bytes::new()))) {
                        break Box::pin(interrupted(&mut sink, why)).await;
                    }
                }
                () = &mut dropped_as_slow => break Box::pin(interrupted(&mut sink, Interrupted::TooSlow)).await,
                () = &mut shutting_down => break Box::pin(interrupted(&mut sink, Interrupted::ShuttingDown)).await,
            }
        }
    };
    debug!("disconnected");
    joined.ending = Some(ending);
}

/// Ends a socket whose write was interrupted: a close frame with why,
/// unless the write itself failed.
async fn interrupted(sink: &mut WsSink, why: Interrupted) -> Departure {
    match why {
        Interrupted::TooSlow => {
            let reason = "too slow: outgoing queue full".to_owned();
            send_close(sink, CLOSE_TRY_AGAIN, &reason).await;
            Departure::Failed(reason)
        }
        Interrupted::ShuttingDown => {
            let reason = "server shutting down".to_owned();
            send_close(sink, CLOSE_GOING_AWAY, &reason).await;
            Departure::Closed { code: CLOSE_GOING_AWAY, reason }
        }
        Interrupted::Failed(e) => Departure::Failed(format!("write failed: {e}")),
    }
}

/// What went wrong on a socket, by what the room and the client are told.
enum SocketError {
    /// The client vanished without a close frame: a close with 1006, as
    /// browsers and Durable Objects report it, not an error.
    Gone,
    /// A message over the size limit.
    TooBig(String),
    /// A frame that breaks the WebSocket protocol (e.g. invalid UTF-8 text).
    Protocol(String),
}

fn classify(error: axum::Error) -> SocketError {
    use tungstenite::error::{Error, ProtocolError};
    match error.into_inner().downcast::<Error>() {
        Ok(error) => match *error {
            Error::ConnectionClosed
            | Error::AlreadyClosed
            | Error::Io(_)
            | Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => SocketError::Gone,
            Error::Capacity(e) => SocketError::TooBig(e.to_string()),
            other => SocketError::Protocol(other.to_string()),
        },
        Err(other) => SocketError::Protocol(other.to_string()),
    }
}

/// A token bucket: `per_second` messages a second, in bursts of as many.
struct RateLimit {
    per_second: u32,
    tokens: f64,
    last: std::time::Instant,
}

impl RateLimit {
    fn new(per_second: u32) -> Self {
        let per_second = per_second.max(1);
        Self { per_second, tokens: f64::from(per_second), last: std::time::Instant::now() }
    }

    /// Whether one more message may pass now.
    fn admit(&mut self) -> bool {
        let now = std::time::Instant::now();
        let per_second = f64::from(self.per_second);
        let refill = now.duration_since(self.last).as_secs_f64() * per_second;
        self.tokens = (self.tokens + refill).min(per_second);
        self.last = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

type WsSink = futures_util::stream::SplitSink<WebSocket, WsMessage>;

/// Most frames written before one flush.
const MAX_BATCH: usize = 64;

/// Writes `first` and whatever else is already queued, then flushes once:
/// under fan-out a busy client gets one syscall for many frames. A close
/// frame ends the batch and the socket.
async fn write_batch(
    sink: &mut WsSink,
    first: Outgoing,
    queued: &mut QueueReceiver,
    metrics: &crate::metrics::ProjectMetrics,
) -> Result<Option<Departure>, axum::Error> {
    let mut next = Some(first);
    let mut written: usize = 0;
    while let Some(frame) = next.take() {
        if let Outgoing::Close { code, reason } = frame {
            sink.send(close_frame(code, &reason)).await?;
            return Ok(Some(Departure::Closed { code, reason }));
        }
        sink.feed(to_ws(frame)).await?;
        written += 1;
        if written < MAX_BATCH {
            next = queued.try_recv();
        }
    }
    sink.flush().await?;
    metrics.frames_out(written);
    Ok(None)
}

fn to_ws(frame: Outgoing) -> WsMessage {
    match frame {
        // Rooms queue text only from Rust strings, so this never fails; the
        // check is a scan, not a copy.
        Outgoing::Text(text) => {
            WsMessage::Text(Utf8Bytes::try_from(text).unwrap_or_else(|_| Utf8Bytes::from_static("")))
        }
        Outgoing::Binary(bytes) => WsMessage::Binary(bytes),
        Outgoing::Close { code, reason } => close_frame(code, &reason),
    }
}

/// Sends a close frame; errors are moot, the socket is ending. Boxed: it
/// happens once, and stays out of the socket task's state.
async fn send_close(sink: &mut WsSink, code: u16, reason: &str) {
    let _ = Box::pin(sink.send(close_frame(code, reason))).await;
}

fn close_frame(code: u16, reason: &str) -> WsMessage {
    WsMessage::Close(Some(CloseFrame { code, reason: Utf8Bytes::from(reason) }))
}

#[cfg(test)]
mod tests {
    /// A socket's task lives as long as its connection: its state is part
    /// of what every idle socket costs (docs/benchmarks.md).
    #[test]
    fn a_sockets_task_stays_small() {
        fn future_bytes<A, B, C, D, F: std::future::Future>(_: fn(A, B, C, D) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let bytes = future_bytes(super::run);
        assert!(bytes <= 1536, "the socket task's future is {bytes} bytes; box the await that grew it");
    }
}
