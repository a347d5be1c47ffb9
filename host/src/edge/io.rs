//! A client's TCP stream with a write deadline: a write (or flush) that
//! stays blocked for `write_timeout`, because the client stopped reading,
//! fails with `TimedOut` and the connection ends. Everything above it, the
//! TLS layer, hyper and the WebSocket after an upgrade, writes through it,
//! so no slow reader can pin a task or its buffers for longer than that.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::connections::Slot;

pub(super) struct EdgeIo {
    stream: TcpStream,
    write_timeout: Duration,
    /// Running while a write is blocked; reset by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
    /// Counts this connection until the socket is dropped.
    _slot: Slot,
}

impl EdgeIo {
    pub(super) fn new(stream: TcpStream, write_timeout: Duration, slot: Slot) -> Self {
        Self { stream, write_timeout, stalled: None, _slot: slot }
    }

    /// `poll` (a write or a flush) under the deadline.
    fn deadline<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if let Poll::Ready(result) = poll(Pin::new(&mut self.stream), cx) {
            self.stalled = None;
            return Poll::Ready(result);
        }
        let timeout = self.write_timeout;
        let stalled = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(stalled.as_mut().poll(cx));
        self.stalled = None;
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the client read nothing for {timeout:?}"),
        )))
    }
}

impl AsyncRead for EdgeIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for EdgeIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().deadline(cx, |stream, cx| stream.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().deadline(cx, |stream, cx| stream.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().deadline(cx, TcpStream::poll_flush)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().deadline(cx, TcpStream::poll_shutdown)
    }
}
