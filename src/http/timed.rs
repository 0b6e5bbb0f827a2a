//! TCP connections whose writes fail once they stall past a timeout.
//!
//! A peer that stops reading fills its receive window, and every later write waits forever.
//! hyper has no write timeout, so each accepted socket is wrapped: a write that stays pending
//! longer than the write timeout fails with `TimedOut`, which ends the connection and frees its
//! subscriptions. `TCP_USER_TIMEOUT` (Linux) does the same for data the peer never
//! acknowledges, which is how a peer whose network vanished without FIN or RST is found.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tracing::{debug, warn};

use crate::metrics::{Metrics, SharedMetrics};

/// Listener that wraps each accepted socket in a [`TimedStream`].
pub struct TimedListener {
    inner: TcpListener,
    write_timeout: Duration,
    metrics: SharedMetrics,
    /// When accept last failed with a warning; repeats within a minute are logged at debug.
    last_warning: Option<Instant>,
}

impl TimedListener {
    pub fn new(inner: TcpListener, write_timeout: Duration, metrics: SharedMetrics) -> Self {
        Self {
            inner,
            write_timeout,
            metrics,
            last_warning: None,
        }
    }
}

impl axum::serve::Listener for TimedListener {
    type Io = TimedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let socket = socket2::SockRef::from(&stream);
                    #[cfg(any(target_os = "linux", target_os = "android"))]
                    if let Err(e) = socket.set_tcp_user_timeout(Some(self.write_timeout)) {
                        debug!(error = %e, "TCP_USER_TIMEOUT not set");
                    }
                    let _ = socket;
                    return (
                        TimedStream {
                            inner: stream,
                            timeout: self.write_timeout,
                            deadline: None,
                            metrics: self.metrics.clone(),
                            counted: false,
                        },
                        addr,
                    );
                }
                Err(e) => {
                    // Running out of file descriptors must not spin the accept loop or flood
                    // the log.
                    let now = Instant::now();
                    let recent = self
                        .last_warning
                        .is_some_and(|at| now.duration_since(at) < Duration::from_secs(60));
                    if recent {
                        debug!(error = %e, "accepting a TCP connection failed");
                    } else {
                        self.last_warning = Some(now);
                        warn!(error = %e, "accepting a TCP connection failed; repeats within a minute are logged at debug level");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A TCP stream whose pending writes time out.
pub struct TimedStream {
    inner: TcpStream,
    timeout: Duration,
    /// Set while a write is pending: when it fires, the write fails.
    deadline: Option<Pin<Box<Sleep>>>,
    metrics: SharedMetrics,
    /// Whether this connection was already counted as too slow.
    counted: bool,
}

impl TimedStream {
    fn count_slow(&mut self) {
        if !self.counted {
            self.counted = true;
            Metrics::add(&self.metrics.disconnected_slow);
        }
    }

    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let timeout = self.timeout;
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + timeout)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.count_slow();
                debug!(peer = ?self.inner.peer_addr().ok(), "write stalled; closing the connection");
                Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "write stalled past the write timeout: the peer is too slow",
                ))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn track<T>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match result {
            Poll::Ready(done) => {
                self.deadline = None;
                // The kernel reports TCP_USER_TIMEOUT, which also covers a receive window
                // that stays closed, as ETIMEDOUT.
                if matches!(&done, Err(e) if e.kind() == io::ErrorKind::TimedOut) {
                    self.count_slow();
                }
                Poll::Ready(done)
            }
            Poll::Pending => match self.poll_deadline(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

use std::future::Future as _;

impl AsyncRead for TimedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        // An aborted connection may first show up on a read, when no write is pending.
        if matches!(&result, Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::TimedOut) {
            self.count_slow();
        }
        result
    }
}

impl AsyncWrite for TimedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.track(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.track(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.track(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
