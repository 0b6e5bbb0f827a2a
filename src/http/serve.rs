//! The TCP accept loop: HTTP/1.1 connections served by hyper with a header read timeout.
//!
//! axum's own `serve` gives hyper no timer, so a client that opens a connection and never
//! finishes its request head would hold a file descriptor forever. Here every connection gets
//! the header read timeout, which also closes keep-alive connections that stay idle between
//! requests, and shuts down gracefully through the server's cancellation token.
//!
//! Every socket also reads ahead for small reads (see [`ReadAhead`]), so a WebSocket
//! connection can keep a small read buffer and still read large messages in large chunks.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::serve::Listener as _;
use axum::Router;
use bytes::{Buf as _, Bytes};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::timed::TimedListener;

/// How long a connection may take to finish closing once shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Smallest read passed straight to the socket. hyper reads requests into buffers of 8 KiB or
/// more, so in practice only WebSocket reads, which ask for at most the WebSocket read buffer
/// size, go through the read-ahead.
const DIRECT_READ: usize = 4 * 1024;

/// Bytes read from the socket at once for a smaller read.
const READ_AHEAD: usize = 16 * 1024;

/// Serves `app` on every connection `listener` accepts until `shutdown` is cancelled.
pub async fn serve(
    mut listener: TimedListener,
    app: Router,
    header_timeout: Duration,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => return,
        };
        let service = TowerToHyperService::new(app.clone());
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let connection = builder
                .serve_connection(TokioIo::new(ReadAhead::new(io)), service)
                .with_upgrades();
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    match tokio::time::timeout(SHUTDOWN_GRACE, connection.as_mut()).await {
                        Ok(result) => result,
                        Err(_) => return,
                    }
                }
            };
            if let Err(e) = result {
                debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        });
    }
}

/// A socket that serves small reads from one larger read.
///
/// tungstenite reads a WebSocket connection at most its read buffer size at a time, and keeps
/// that buffer for the life of the connection. A small buffer saves memory on every idle
/// connection but would cost a system call per few bytes of a large message. This wrapper
/// reads [`READ_AHEAD`] bytes into a stack buffer instead and keeps what the caller did not
/// take on the heap until it is read, so the extra memory exists only while data is waiting.
pub(crate) struct ReadAhead<S> {
    inner: S,
    /// Bytes read from the socket and not yet returned; empty, with no allocation, otherwise.
    surplus: Bytes,
}

impl<S> ReadAhead<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            surplus: Bytes::new(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.surplus.is_empty() {
            let n = self.surplus.len().min(buf.remaining());
            buf.put_slice(&self.surplus[..n]);
            self.surplus.advance(n);
            if self.surplus.is_empty() {
                // An emptied `Bytes` still references its allocation until it is replaced.
                self.surplus = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= DIRECT_READ {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_AHEAD];
        let mut chunk = ReadBuf::uninit(&mut chunk);
        std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, &mut chunk))?;
        let read = chunk.filled();
        let n = read.len().min(buf.remaining());
        buf.put_slice(&read[..n]);
        if read.len() > n {
            self.surplus = Bytes::copy_from_slice(&read[n..]);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// Connects two loopback sockets and returns the client end and the accepted end.
    async fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn read_ahead_returns_bytes_in_order() {
        let (mut client, server) = socket_pair().await;
        let sent: Vec<u8> = (0..200_000u32).map(|n| (n % 251) as u8).collect();
        let writer = {
            let sent = sent.clone();
            tokio::spawn(async move {
                client.write_all(&sent).await.unwrap();
                client.shutdown().await.unwrap();
            })
        };

        // Small reads take the read-ahead path, large ones go straight to the socket.
        let mut reader = ReadAhead::new(server);
        let mut received = Vec::new();
        let mut sizes = [100, 1024, 8192, 1, 4096].into_iter().cycle();
        loop {
            let mut chunk = vec![0u8; sizes.next().unwrap()];
            let n = reader.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            received.extend_from_slice(&chunk[..n]);
        }
        writer.await.unwrap();
        assert_eq!(received.len(), sent.len());
        assert!(received == sent, "the bytes differ from what was sent");
    }

    #[tokio::test]
    async fn read_ahead_frees_its_surplus_once_read() {
        let (mut client, server) = socket_pair().await;
        client.write_all(&[7u8; 3000]).await.unwrap();
        // Wait until all 3,000 bytes have arrived, so one socket read returns them all.
        let mut peeked = [0u8; 3000];
        while server.peek(&mut peeked).await.unwrap() < peeked.len() {
            tokio::task::yield_now().await;
        }
        let mut reader = ReadAhead::new(server);
        let mut chunk = [0u8; 1000];
        reader.read_exact(&mut chunk).await.unwrap();
        assert_eq!(reader.surplus.len(), 2000);
        reader.read_exact(&mut chunk).await.unwrap();
        reader.read_exact(&mut chunk).await.unwrap();
        assert!(reader.surplus.is_empty());
        // `Bytes::new()` is static and owns no allocation, unlike an emptied `Bytes`.
        assert_eq!(reader.surplus.as_ptr(), Bytes::new().as_ptr());
    }
}
