//! A frame-size guard between quinn and h3 on request streams.
//!
//! h3 0.0.8 buffers every frame other than DATA until it has arrived whole, whatever length
//! the frame declares, and checks the header section limit only afterwards. A client could
//! therefore make the server hold any amount of memory with HEADERS frames it never finishes.
//! The guard reads each frame header on client bidirectional streams as the bytes pass
//! through, and fails the stream as soon as a frame other than DATA declares more than the
//! limit. WebTransport streams, which start with their own signal, pass through unchecked.
//!
//! Every stream the peer opens passes through here, so this is also where they are counted
//! for the connection's [`StreamLimits`].

use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use h3::quic::{self, ConnectionErrorIncoming, StreamErrorIncoming, StreamId, WriteBuf};

use super::stream_limit::{Direction, StreamLimits};

/// HTTP/3 DATA frame type (RFC 9114, 7.2.1); its payload is streamed, not buffered.
const FRAME_DATA: u64 = 0x00;
/// Signal that starts a WebTransport bidirectional stream (draft-ietf-webtrans-http3, 4.2).
const WT_STREAM: u64 = 0x41;
/// H3_EXCESSIVE_LOAD (RFC 9114, 8.1): the peer makes the server do too much.
const H3_EXCESSIVE_LOAD: u64 = 0x107;

/// h3-quinn's connection, with every accepted bidirectional stream guarded and every
/// accepted stream counted.
pub struct Connection {
    inner: h3_quinn::Connection,
    max_frame: u64,
    limits: StreamLimits,
}

impl Connection {
    /// Wraps `inner`; frames other than DATA may declare at most `max_frame` bytes.
    pub fn new(inner: h3_quinn::Connection, max_frame: u64, limits: StreamLimits) -> Self {
        Self {
            inner,
            max_frame,
            limits,
        }
    }
}

/// Position of the guard within the stream's frames.
#[derive(Clone, Copy)]
enum State {
    /// Collecting a frame header; `len` bytes of it are in `header`.
    Header { header: [u8; 16], len: usize },
    /// Inside a frame payload with this many bytes left.
    Payload(u64),
    /// Not an HTTP request stream: nothing more to check.
    Passthrough,
}

/// Frame-header parser for one stream, which detects a frame that declares too much.
#[derive(Clone, Copy)]
struct Guard {
    state: State,
    max_frame: u64,
}

impl Guard {
    fn new(max_frame: u64) -> Self {
        Self {
            state: State::Header {
                header: [0; 16],
                len: 0,
            },
            max_frame,
        }
    }

    fn passthrough() -> Self {
        Self {
            state: State::Passthrough,
            max_frame: u64::MAX,
        }
    }

    /// Feeds the next bytes of the stream; returns `false` once a frame exceeds the limit.
    fn observe(&mut self, mut data: &[u8]) -> bool {
        while !data.is_empty() {
            match &mut self.state {
                State::Passthrough => return true,
                State::Payload(remaining) => {
                    let skip = (*remaining).min(data.len() as u64);
                    *remaining -= skip;
                    data = &data[skip as usize..];
                    if *remaining == 0 {
                        self.state = State::Header {
                            header: [0; 16],
                            len: 0,
                        };
                    }
                }
                State::Header { header, len } => {
                    header[*len] = data[0];
                    *len += 1;
                    data = &data[1..];
                    let mut view = &header[..*len];
                    let Some(kind) = super::varint::get(&mut view) else {
                        continue;
                    };
                    if kind == WT_STREAM {
                        self.state = State::Passthrough;
                        continue;
                    }
                    let Some(length) = super::varint::get(&mut view) else {
                        continue;
                    };
                    if kind != FRAME_DATA && length > self.max_frame {
                        return false;
                    }
                    self.state = if length == 0 {
                        State::Header {
                            header: [0; 16],
                            len: 0,
                        }
                    } else {
                        State::Payload(length)
                    };
                }
            }
        }
        true
    }
}

fn too_large() -> StreamErrorIncoming {
    StreamErrorIncoming::StreamTerminated {
        error_code: H3_EXCESSIVE_LOAD,
    }
}

/// Passes `data` through `guard`, failing the stream and sending STOP_SENDING when it trips.
fn check<S: quic::RecvStream>(
    guard: &mut Guard,
    stream: &mut S,
    data: Poll<Result<Option<Bytes>, StreamErrorIncoming>>,
) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
    if let Poll::Ready(Ok(Some(bytes))) = &data {
        if !guard.observe(bytes.chunk()) {
            tracing::debug!(
                max = guard.max_frame,
                "HTTP/3 frame too large; stopping the stream"
            );
            stream.stop_sending(H3_EXCESSIVE_LOAD);
            return Poll::Ready(Err(too_large()));
        }
    }
    data
}

/// A guarded bidirectional stream.
pub struct BidiStream {
    inner: h3_quinn::BidiStream<Bytes>,
    guard: Guard,
}

/// The receiving half of a guarded bidirectional stream.
pub struct RecvStream {
    inner: h3_quinn::RecvStream,
    guard: Guard,
}

/// Implements `RecvStream` for a guarded type whose `inner` stream is read through `guard`.
macro_rules! guarded_recv {
    ($type:ty) => {
        impl quic::RecvStream for $type {
            type Buf = Bytes;

            fn poll_data(
                &mut self,
                cx: &mut Context<'_>,
            ) -> Poll<Result<Option<Self::Buf>, StreamErrorIncoming>> {
                let data = self.inner.poll_data(cx);
                check(&mut self.guard, &mut self.inner, data)
            }

            fn stop_sending(&mut self, error_code: u64) {
                self.inner.stop_sending(error_code);
            }

            fn recv_id(&self) -> StreamId {
                self.inner.recv_id()
            }
        }
    };
}

guarded_recv!(BidiStream);
guarded_recv!(RecvStream);

impl quic::SendStream<Bytes> for BidiStream {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.inner.poll_ready(cx)
    }

    fn send_data<T: Into<WriteBuf<Bytes>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        self.inner.send_data(data)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.inner.poll_finish(cx)
    }

    fn reset(&mut self, reset_code: u64) {
        self.inner.reset(reset_code);
    }

    fn send_id(&self) -> StreamId {
        self.inner.send_id()
    }
}

impl quic::SendStreamUnframed<Bytes> for BidiStream {
    fn poll_send<D: Buf>(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut D,
    ) -> Poll<Result<usize, StreamErrorIncoming>> {
        self.inner.poll_send(cx, buf)
    }
}

impl quic::BidiStream<Bytes> for BidiStream {
    type SendStream = h3_quinn::SendStream<Bytes>;
    type RecvStream = RecvStream;

    fn split(self) -> (Self::SendStream, Self::RecvStream) {
        let (send, recv) = self.inner.split();
        let recv = RecvStream {
            inner: recv,
            guard: self.guard,
        };
        (send, recv)
    }
}

/// Opens streams on a guarded connection; server-opened streams need no guard.
pub struct OpenStreams {
    inner: h3_quinn::OpenStreams,
}

/// Implements `OpenStreams` for a type whose `inner` field is one of h3-quinn's openers:
/// the connection itself and its opener handle open streams the same way.
macro_rules! open_streams_via_inner {
    ($type:ty) => {
        impl quic::OpenStreams<Bytes> for $type {
            type BidiStream = BidiStream;
            type SendStream = h3_quinn::SendStream<Bytes>;

            fn poll_open_bidi(
                &mut self,
                cx: &mut Context<'_>,
            ) -> Poll<Result<Self::BidiStream, StreamErrorIncoming>> {
                let opened = quic::OpenStreams::<Bytes>::poll_open_bidi(&mut self.inner, cx);
                // Streams the server opens carry no request, so nothing is checked on them.
                opened.map_ok(|inner| BidiStream {
                    inner,
                    guard: Guard::passthrough(),
                })
            }

            fn poll_open_send(
                &mut self,
                cx: &mut Context<'_>,
            ) -> Poll<Result<Self::SendStream, StreamErrorIncoming>> {
                quic::OpenStreams::<Bytes>::poll_open_send(&mut self.inner, cx)
            }

            fn close(&mut self, code: h3::error::Code, reason: &[u8]) {
                quic::OpenStreams::<Bytes>::close(&mut self.inner, code, reason);
            }
        }
    };
}

open_streams_via_inner!(OpenStreams);
open_streams_via_inner!(Connection);

impl quic::Connection<Bytes> for Connection {
    type RecvStream = h3_quinn::RecvStream;
    type OpenStreams = OpenStreams;

    fn poll_accept_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::RecvStream, ConnectionErrorIncoming>> {
        let accepted = quic::Connection::<Bytes>::poll_accept_recv(&mut self.inner, cx);
        if let Poll::Ready(Ok(_)) = &accepted {
            self.limits.accepted(Direction::Uni);
        }
        accepted
    }

    fn poll_accept_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::BidiStream, ConnectionErrorIncoming>> {
        let max_frame = self.max_frame;
        let accepted = quic::Connection::<Bytes>::poll_accept_bidi(&mut self.inner, cx);
        if let Poll::Ready(Ok(_)) = &accepted {
            self.limits.accepted(Direction::Bidi);
        }
        accepted.map_ok(|inner| BidiStream {
            inner,
            guard: Guard::new(max_frame),
        })
    }

    fn opener(&self) -> Self::OpenStreams {
        OpenStreams {
            inner: quic::Connection::<Bytes>::opener(&self.inner),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_trips_on_large_headers_only() {
        // HEADERS (0x01) declaring 1,025 bytes, split across reads.
        let mut guard = Guard::new(1024);
        assert!(guard.observe(&[0x01]));
        assert!(!guard.observe(&[0x44, 0x01]));

        // DATA frames of any size pass, and so do small HEADERS after them.
        let mut guard = Guard::new(1024);
        assert!(guard.observe(&[0x01, 0x02, b'h', b'i']));
        assert!(guard.observe(&[0x00, 0x80, 0x01, 0x00, 0x00]));
        assert!(guard.observe(&vec![0u8; 65536]));
        assert!(guard.observe(&[0x01, 0x01, b'x']));
        assert!(!guard.observe(&[0x21, 0x44, 0x01]));

        // A WebTransport stream is never checked after its signal.
        let mut guard = Guard::new(1024);
        assert!(guard.observe(&[0x40, 0x41, 0x00]));
        assert!(guard.observe(&[0x01, 0x80, 0x10, 0x00, 0x00]));
    }
}
