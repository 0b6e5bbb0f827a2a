//! The WebSocket side of a connection, with small buffers so that many connections fit in one
//! process.

use std::collections::VecDeque;
use std::future::{poll_fn, Future as _};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, Stream};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::link::LinkEvent;

/// Read buffer of each WebSocket, allocated when it connects. Larger messages are assembled
/// in a buffer of their own size.
const READ_BUFFER: usize = 4 * 1024;

/// How long [`WsLink::close`] tries to send the Close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// WebSocket settings: a 4 KiB read buffer, and every message written at once instead of
/// being collected in a write buffer first.
fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
}

/// Opens a WebSocket connection. The caller applies the connect timeout.
pub(crate) async fn connect(url: &str, keep_alive: Duration) -> Result<WsLink, String> {
    let (socket, _response) =
        tokio_tungstenite::connect_async_with_config(url, Some(config()), true)
            .await
            .map_err(|e| e.to_string())?;
    Ok(WsLink {
        socket,
        out: VecDeque::new(),
        unflushed: false,
        keep_alive,
        last_received: Instant::now(),
        timer: Box::pin(tokio::time::sleep(keep_alive)),
    })
}

/// An open WebSocket connection.
pub(crate) struct WsLink {
    socket: Socket,
    /// Messages not yet handed to the socket.
    out: VecDeque<Message>,
    /// Whether messages were handed to the socket since the last flush.
    unflushed: bool,
    keep_alive: Duration,
    /// When the last frame of any kind arrived.
    last_received: Instant,
    /// Fires every `keep_alive`: sends a ping, or ends the connection after two silent
    /// intervals.
    timer: Pin<Box<Sleep>>,
}

impl WsLink {
    /// Queues one command as a text message.
    pub(crate) fn send(&mut self, body: Bytes) {
        match Utf8Bytes::try_from(body) {
            Ok(text) => self.out.push_back(Message::Text(text)),
            Err(e) => tracing::error!(error = %e, "command is not UTF-8, not sent"),
        }
    }

    /// Writes queued commands and keep-alives while waiting for the next message or the end
    /// of the connection. Cancel safe.
    pub(crate) async fn next(&mut self) -> LinkEvent {
        poll_fn(|cx| self.poll_next_event(cx)).await
    }

    fn poll_next_event(&mut self, cx: &mut Context<'_>) -> Poll<LinkEvent> {
        if let Err(e) = self.poll_write(cx) {
            return Poll::Ready(LinkEvent::Closed(format!(
                "failed to write to the WebSocket: {e}"
            )));
        }
        loop {
            // Reads come before the keep-alive check, so data that waited while the client
            // was not reading counts as received.
            let message = match Pin::new(&mut self.socket).poll_next(cx) {
                Poll::Pending => match self.poll_keep_alive(cx) {
                    Poll::Ready(Some(event)) => return Poll::Ready(event),
                    // A ping was queued and the timer reset: poll again to register both.
                    Poll::Ready(None) => continue,
                    Poll::Pending => return Poll::Pending,
                },
                Poll::Ready(None) => {
                    return Poll::Ready(LinkEvent::Closed(
                        "the server closed the WebSocket connection".to_owned(),
                    ))
                }
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(LinkEvent::Closed(format!(
                        "failed to read the WebSocket: {e}"
                    )))
                }
                Poll::Ready(Some(Ok(message))) => message,
            };
            self.last_received = Instant::now();
            match message {
                Message::Text(text) => return Poll::Ready(LinkEvent::Message(Bytes::from(text))),
                Message::Close(frame) => {
                    let reason = match frame {
                        Some(frame) => format!(
                            "the server closed the WebSocket with code {}: {}",
                            u16::from(frame.code),
                            frame.reason
                        ),
                        None => "the server closed the WebSocket without a code".to_owned(),
                    };
                    return Poll::Ready(LinkEvent::Closed(reason));
                }
                // tungstenite queues the pong for a ping and sends it on the next read, which
                // this loop makes at once. Binary messages are not part of the protocol in
                // this direction.
                Message::Ping(_) | Message::Pong(_) | Message::Binary(_) | Message::Frame(_) => {}
            }
        }
    }

    /// When the keep-alive timer fires: ends the connection after two silent intervals, or
    /// queues a ping and returns `Ready(None)`.
    fn poll_keep_alive(&mut self, cx: &mut Context<'_>) -> Poll<Option<LinkEvent>> {
        if self.timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let silent = self.last_received.elapsed();
        if silent >= self.keep_alive * 2 {
            return Poll::Ready(Some(LinkEvent::Closed(format!(
                "no data from the server for {silent:.0?}"
            ))));
        }
        self.out.push_back(Message::Ping(Bytes::new()));
        let next = Instant::now() + self.keep_alive;
        self.timer.as_mut().reset(next);
        if let Err(e) = self.poll_write(cx) {
            return Poll::Ready(Some(LinkEvent::Closed(format!(
                "failed to write to the WebSocket: {e}"
            ))));
        }
        Poll::Ready(None)
    }

    /// Hands queued messages to the socket and flushes them, as far as the socket accepts.
    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        while !self.out.is_empty() {
            match Pin::new(&mut self.socket).poll_ready(cx) {
                Poll::Ready(Ok(())) => {
                    let message = self.out.pop_front().expect("checked not empty");
                    Pin::new(&mut self.socket).start_send(message)?;
                    self.unflushed = true;
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => break,
            }
        }
        if self.unflushed {
            match Pin::new(&mut self.socket).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => {}
            }
        }
        Ok(())
    }

    /// Sends a Close frame with code 1000 and waits briefly for it to be written.
    pub(crate) async fn close(mut self) {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: Utf8Bytes::from_static("closed by the client"),
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.socket.close(Some(frame))).await;
    }
}
