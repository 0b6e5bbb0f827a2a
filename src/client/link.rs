//! One open connection on either transport.

use bytes::Bytes;

use super::ws::WsLink;
use super::wt::WtLink;
use super::Transport;

/// Output of an open connection.
pub(crate) enum LinkEvent {
    /// One JSON message: a WebSocket text message, or a control-stream or event-stream frame.
    Message(Bytes),
    /// A WebTransport datagram, after the quarter stream ID.
    Datagram(Bytes),
    /// The connection ended, for the given reason.
    Closed(String),
}

pub(crate) enum Link {
    /// Boxed: the socket with its buffers' bookkeeping is four times the size of a session.
    WebSocket(Box<WsLink>),
    WebTransport(WtLink),
}

impl Link {
    pub(crate) fn transport(&self) -> Transport {
        match self {
            Link::WebSocket(_) => Transport::WebSocket,
            Link::WebTransport(_) => Transport::WebTransport,
        }
    }

    /// Queues one JSON command.
    pub(crate) fn send(&mut self, body: Bytes) {
        match self {
            Link::WebSocket(link) => link.send(body),
            Link::WebTransport(link) => link.send(body),
        }
    }

    /// Writes queued commands while waiting for what the server sends next. Cancel safe.
    pub(crate) async fn next(&mut self) -> LinkEvent {
        match self {
            Link::WebSocket(link) => link.next().await,
            Link::WebTransport(link) => link.next().await,
        }
    }

    /// Returns the WebTransport session, for sending datagrams.
    pub(crate) fn webtransport(&self) -> Option<&wtransport::Connection> {
        match self {
            Link::WebSocket(_) => None,
            Link::WebTransport(link) => Some(link.connection()),
        }
    }

    /// Ends the connection on the client's initiative.
    pub(crate) async fn close(self) {
        match self {
            Link::WebSocket(link) => link.close().await,
            Link::WebTransport(link) => link.close(),
        }
    }
}
