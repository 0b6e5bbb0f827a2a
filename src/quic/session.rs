//! WebTransport sessions over HTTP/3 (draft-ietf-webtrans-http3), on top of h3's internals.
//!
//! h3-webtransport 0.1.2 keeps the CONNECT stream to itself and never reads it, so a session
//! whose client finishes or resets that stream, with or without a CLOSE_WEBTRANSPORT_SESSION
//! capsule, would live on. It also numbers sessions by stream index instead of stream id and
//! hands out buffered unidirectional streams newest first. This module therefore drives the
//! session itself:
//!
//! * it watches the CONNECT stream and parses its capsules (RFC 9297), ending the session on
//!   FIN, reset or CLOSE_WEBTRANSPORT_SESSION and freeing its subscriptions at once;
//! * it accepts client streams oldest first, and routes plain HTTP/3 requests that arrive on a
//!   connection owned by a session to the shared router;
//! * it opens server streams and sends datagrams directly on the quinn connection;
//! * it closes a session that opens more than a few bidirectional streams besides the control
//!   stream, because h3 0.0.8 keeps the id of every accepted stream until the connection ends.
//!
//! The first bidirectional WebTransport stream the client opens is the control stream. It carries the JSON
//! commands of [`crate::commands`], each frame a 4-byte big-endian length and the JSON text.
//! Events go out on server-opened unidirectional streams, one per topic up to the configured
//! cap, after which topics share them by hash, so events of one topic stay in order.
//! Telemetry goes out as a datagram when it fits and on an event stream otherwise.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h3::frame::FrameStream;
use h3::proto::frame::Frame;
use h3::stream::BufRecvStream;
use h3::webtransport::SessionId;
use h3::ConnectionState as _;
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, oneshot, Mutex};
use tracing::debug;

use super::capsule::{close_capsule, watch_connect};
use super::writer::{send_datagram, write_loop, Writer};
use super::{request, varint, ConnectRequest, Context, H3Connection};
use crate::commands::{CommandSession, Outbound, TelemetryPath};
use crate::cursor::Cursor;
use crate::error::wt_code;
use crate::hub::{Class, Message};
use crate::metrics::Metrics;
use crate::topic::Topic;
use crate::wire;

/// Limits of one WebTransport session.
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    /// Server-opened event streams per session. Default 8.
    pub event_streams: usize,
    /// Largest control or command frame, in bytes.
    pub max_frame: usize,
    /// Subscriptions per session. Default 64.
    pub max_subscriptions: usize,
}

/// HTTP/3 error code of a clean close (RFC 9114, 8.1).
const H3_NO_ERROR: u32 = 0x100;
/// How long a closing session waits for its close capsule to be sent.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Bidirectional streams a session may open besides its control stream before it is closed.
/// h3 0.0.8 keeps the id of every such stream for the life of the connection.
const MAX_EXTRA_BIDI: usize = 16;
/// Capacity of the channel of replies and deliveries to the session's writer.
const OUTBOUND_CAPACITY: usize = 64;

pub(super) type WtBidi = BufRecvStream<super::guard::BidiStream, Bytes>;
type Resolver = h3::server::RequestResolver<super::guard::Connection, Bytes>;
type WtRecv = BufRecvStream<h3_quinn::RecvStream, Bytes>;

enum Incoming {
    Bidi(Box<super::guard::BidiStream>),
    Uni(SessionId, BufRecvStream<h3_quinn::RecvStream, Bytes>),
    Closed,
}

/// Reason a session ended.
#[derive(Debug)]
#[allow(
    dead_code,
    reason = "the fields are read through Debug in the session-closed log"
)]
pub(super) enum End {
    ConnectFinished,
    ConnectFailed(String),
    Capsule {
        code: u32,
        reason: String,
    },
    Connection(String),
    Control(&'static str),
    /// The client opened more bidirectional streams than a session allows.
    StreamLimit,
    /// A write stalled past the write timeout; every event up to this cursor was written.
    TooSlow(Option<Cursor>),
    Shutdown,
}

/// The one-time signal that ends a session, shared by every part of the session that can end
/// it. The first reason given wins, and later ones are dropped.
#[derive(Clone)]
pub(super) struct EndSignal(Arc<std::sync::Mutex<Option<oneshot::Sender<End>>>>);

impl EndSignal {
    fn new() -> (Self, oneshot::Receiver<End>) {
        let (tx, rx) = oneshot::channel();
        (Self(Arc::new(std::sync::Mutex::new(Some(tx)))), rx)
    }

    /// Ends the session for `reason`, unless it is already ending for another one.
    pub(super) fn end(&self, reason: End) {
        let sender = self.0.lock().ok().and_then(|mut slot| slot.take());
        if let Some(sender) = sender {
            let _ = sender.send(reason);
        }
    }
}

/// The write half of the control stream, handed once from the task that accepts the stream to
/// the session's writer.
type ControlSlot = Arc<std::sync::Mutex<Option<oneshot::Sender<tokio::io::WriteHalf<WtBidi>>>>>;

/// Returns why a session cannot open on this connection, judged by the client's SETTINGS.
pub(super) fn refusal(h3: &H3Connection) -> Option<&'static str> {
    let settings = h3.inner.shared_state().settings();
    // Before the client's SETTINGS arrive h3 reports defaults (an owned value); a CONNECT may
    // overtake them (draft-ietf-webtrans-http3, 3.1), so only received SETTINGS can refuse.
    let received = matches!(settings, std::borrow::Cow::Borrowed(_));
    if received && (!settings.enable_webtransport() || !settings.enable_datagram()) {
        return Some("the client's HTTP/3 SETTINGS must enable WebTransport and HTTP datagrams");
    }
    None
}

/// The half of the CONNECT stream that sends capsules to the client.
type ConnectSend = h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
/// The half of the CONNECT stream that receives the client's capsules.
pub(super) type ConnectRecv = h3::server::RequestStream<super::guard::RecvStream, Bytes>;

/// Runs one accepted WebTransport session until it ends; the connection closes with it.
///
/// An idle session keeps this future for its whole life, so everything large in it (the
/// HTTP/3 connection, the CONNECT stream, the accept and close steps) is boxed.
pub(super) async fn run(
    mut h3: Box<H3Connection>,
    quic: quinn::Connection,
    connect: ConnectRequest,
    context: &Arc<Context>,
) {
    let conn_id = quic.stable_id();
    let Some((session_id, connect_send, connect_recv)) =
        Box::pin(accept_connect(connect, conn_id)).await
    else {
        return;
    };
    // A stream id is a QUIC varint, so it always fits a session id; the branch is defensive.
    let Ok(session) = SessionId::try_from(session_id) else {
        debug!(
            conn = conn_id,
            session = session_id,
            "stream id out of range for a session"
        );
        return;
    };
    context
        .metrics
        .sessions_open
        .fetch_add(1, Ordering::Relaxed);
    debug!(
        conn = conn_id,
        session = session_id,
        "WebTransport session open"
    );

    let (out_tx, out_rx) = mpsc::channel::<Outbound>(OUTBOUND_CAPACITY);
    let prefix = {
        let mut p = BytesMut::new();
        varint::put(&mut p, session_id / 4);
        p.freeze()
    };
    // Telemetry goes out as datagrams straight from each subscription, so it never waits
    // behind events that the client's flow control holds back.
    let telemetry_path: TelemetryPath = {
        let quic = quic.clone();
        let prefix = prefix.clone();
        let metrics = context.metrics.clone();
        Arc::new(move |message: &Message| send_datagram(&quic, &prefix, &metrics, message))
    };
    let commands = CommandSession::new(
        context.hub.clone(),
        out_tx,
        context.limits.max_subscriptions,
    )
    .with_telemetry_path(telemetry_path);
    let commands = Arc::new(Mutex::new(commands));
    let (control_tx, control_rx) = oneshot::channel::<tokio::io::WriteHalf<WtBidi>>();
    let (end, mut end_rx) = EndSignal::new();

    let writer = Box::new(Writer {
        quic: quic.clone(),
        session_id,
        prefix,
        lanes: Vec::new(),
        max_lanes: context.limits.event_streams,
        assigned: std::collections::HashMap::new(),
        write_timeout: context.write_timeout,
        metrics: context.metrics.clone(),
        last_cursor: None,
    });
    // The writer, the datagram reader and the CONNECT stream watcher run in this task rather
    // than in tasks of their own, which saves a task allocation each for every idle session.
    // Each of them returns only after it has ended the session or the connection is gone.
    let background = futures_util::future::join3(
        write_loop(writer, out_rx, control_rx, end.clone()),
        read_datagrams(quic.clone(), session_id, commands.clone(), context.clone()),
        watch_connect(connect_recv, end.clone()),
    );

    let mut session = SessionStreams {
        session_id: session,
        commands: commands.clone(),
        control: Arc::new(std::sync::Mutex::new(Some(control_tx))),
        extra_bidi: Arc::new(AtomicUsize::new(0)),
        end,
        max_frame: context.limits.max_frame,
        context: context.clone(),
    };
    let end = tokio::select! {
        biased;
        end = drive(&mut h3, &mut session, &mut end_rx, context) => end,
        _ = background => End::Connection("closed".into()),
    };
    debug!(conn = conn_id, session = session_id, reason = ?end, "WebTransport session closed");

    // Subscriptions go first, so nothing more is queued for a peer that is leaving. The writer,
    // datagram reader and watcher ended with the `select!` above, and `session` holds the
    // other reference to the commands.
    drop(session);
    drop(commands);
    context
        .metrics
        .sessions_open
        .fetch_sub(1, Ordering::Relaxed);

    // The close capsules go out on the heap, so these rarely taken paths add nothing to the
    // state the session keeps while it is open.
    Box::pin(close_connect(connect_send, end)).await;
    // The close capsule must reach the client before the connection goes, so the client gets
    // to close first. A client that does not is cut after the grace period.
    tokio::select! {
        _ = quic.closed() => {}
        _ = tokio::time::sleep(CLOSE_GRACE) => {}
    }
    quic.close(H3_NO_ERROR.into(), b"WebTransport session closed");
}

/// Responds to the CONNECT request with 200 and splits its stream. Returns the session id (the
/// CONNECT stream's id) and the two halves, boxed because the session keeps them until it
/// ends, or `None` when the response cannot be sent.
async fn accept_connect(
    connect: ConnectRequest,
    conn_id: usize,
) -> Option<(u64, Box<ConnectSend>, Box<ConnectRecv>)> {
    let (_request, mut stream) = *connect;
    let response = http::Response::builder()
        .status(StatusCode::OK)
        .header("sec-webtransport-http3-draft", "draft02")
        .body(())
        .ok()?;
    if let Err(e) = stream.send_response(response).await {
        debug!(conn = conn_id, error = %e, "WebTransport response failed");
        return None;
    }
    let session_id = stream.id().into_inner();
    let (send, recv) = stream.split();
    Some((session_id, Box::new(send), Box::new(recv)))
}

/// Sends the close capsule with the reason the session ended, for the reasons that have one,
/// and finishes the CONNECT stream.
async fn close_connect(mut connect_send: Box<ConnectSend>, end: End) {
    match end {
        End::Shutdown => {
            let _ = connect_send
                .send_data(close_capsule(wt_code::SHUTDOWN, "server shutting down"))
                .await;
            let _ = connect_send.finish().await;
        }
        End::Control(reason) => {
            let _ = connect_send
                .send_data(close_capsule(wt_code::FRAME_TOO_LARGE, reason))
                .await;
            let _ = connect_send.finish().await;
        }
        End::StreamLimit => {
            let reason = "too many bidirectional streams: a session has one control stream";
            let _ = connect_send
                .send_data(close_capsule(wt_code::STREAM_LIMIT, reason))
                .await;
            let _ = connect_send.finish().await;
        }
        End::TooSlow(cursor) => {
            let reason = match cursor {
                Some(cursor) => format!("too slow: resume from cursor {cursor}"),
                None => "too slow".to_owned(),
            };
            // The CONNECT stream has flow control of its own, so the reason still gets through
            // when the event streams are stuck; the wait for it is bounded all the same.
            let close = async {
                let _ = connect_send
                    .send_data(close_capsule(wt_code::TOO_SLOW, &reason))
                    .await;
                let _ = connect_send.finish().await;
            };
            let _ = tokio::time::timeout(CLOSE_GRACE, close).await;
        }
        _ => {
            let _ = connect_send.finish().await;
        }
    }
}

struct SessionStreams {
    session_id: SessionId,
    commands: Arc<Mutex<CommandSession>>,
    /// Taken by the first WebTransport bidirectional stream, which becomes the control stream.
    control: ControlSlot,
    /// Bidirectional WebTransport streams opened besides the control stream.
    extra_bidi: Arc<AtomicUsize>,
    end: EndSignal,
    max_frame: usize,
    context: Arc<Context>,
}

/// Accepts the session's streams until it ends.
async fn drive(
    h3: &mut H3Connection,
    session: &mut SessionStreams,
    end_rx: &mut oneshot::Receiver<End>,
    context: &Context,
) -> End {
    loop {
        let incoming = tokio::select! {
            incoming = next_incoming(h3) => incoming,
            // `session` keeps the sender, so the channel cannot close while this loop runs, and
            // the fallback is defensive.
            end = &mut *end_rx => return end.unwrap_or(End::Connection("closed".into())),
            _ = context.shutdown.cancelled() => return End::Shutdown,
        };
        match incoming {
            Ok(Incoming::Bidi(stream)) => {
                let stream = FrameStream::new(BufRecvStream::new(*stream));
                accept_bidi(Box::new(h3.create_resolver(stream)), session);
            }
            // NOTE: h3 0.0.8 parses a unidirectional stream's session id only after a read
            // beyond the chunk that carried the stream type. A stream whose header and first
            // command arrive in one chunk therefore reaches this arm only once more data or
            // the end of the stream arrives.
            Ok(Incoming::Uni(id, stream)) => {
                if id != session.session_id {
                    debug!(session = ?id, "unidirectional stream for an unknown session dropped");
                    continue;
                }
                let commands = session.commands.clone();
                let max_frame = session.max_frame;
                session
                    .context
                    .tasks
                    .spawn(read_command_stream(stream, commands, max_frame));
            }
            Ok(Incoming::Closed) => return End::Connection("no more streams".into()),
            Err(e) => return End::Connection(e),
        }
    }
}

/// Waits for the next client-opened stream, taking buffered unidirectional streams oldest first.
async fn next_incoming(h3: &mut H3Connection) -> Result<Incoming, String> {
    std::future::poll_fn(|cx| {
        if let Err(e) = h3.inner.poll_accept_recv(cx) {
            return std::task::Poll::Ready(Err(e.to_string()));
        }
        let buffered = &mut h3.inner.accepted_streams_mut().wt_uni_streams;
        if !buffered.is_empty() {
            let (id, stream) = buffered.remove(0);
            return std::task::Poll::Ready(Ok(Incoming::Uni(id, stream)));
        }
        match h3.poll_accept_request_stream(cx) {
            std::task::Poll::Ready(Ok(Some(stream))) => {
                std::task::Poll::Ready(Ok(Incoming::Bidi(Box::new(stream))))
            }
            std::task::Poll::Ready(Ok(None)) => std::task::Poll::Ready(Ok(Incoming::Closed)),
            std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(e.to_string())),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    })
    .await
}

/// Reads a new bidirectional stream's first frame in its own task: a WebTransport stream of
/// this session becomes the control stream, anything else is served as an HTTP/3 request.
/// The resolver arrives boxed because the task keeps its capture for as long as the stream
/// lives, which is the whole session for the control stream.
fn accept_bidi(mut resolver: Box<Resolver>, session: &mut SessionStreams) {
    let control = session.control.clone();
    let session_id = session.session_id;
    let commands = session.commands.clone();
    let end = session.end.clone();
    let extra_bidi = session.extra_bidi.clone();
    let max_frame = session.max_frame;
    let context = session.context.clone();
    session.context.tasks.spawn(async move {
        let frame = std::future::poll_fn(|cx| resolver.frame_stream.poll_next(cx)).await;
        match frame {
            Ok(Some(Frame::WebTransportStream(id))) => {
                let stream = into_wt_stream(resolver);
                if id != session_id {
                    debug!(session = ?id, "bidirectional stream for an unknown session dropped");
                    return;
                }
                let control = control.lock().ok().and_then(|mut slot| slot.take());
                let Some(control) = control else {
                    if extra_bidi.fetch_add(1, Ordering::Relaxed) >= MAX_EXTRA_BIDI {
                        Metrics::add(&context.metrics.sessions_stream_limit);
                        end.end(End::StreamLimit);
                        return;
                    }
                    let (_, mut write) = tokio::io::split(stream);
                    let reply = crate::commands::error_reply(
                        None,
                        "unsupported",
                        "a session has one control stream: send commands there, or on \
                         unidirectional streams",
                    );
                    let _ = write.write_all(&wire::length_prefixed(&reply)).await;
                    let _ = write.shutdown().await;
                    return;
                };
                let (read, write) = tokio::io::split(stream);
                if control.send(write).is_err() {
                    return;
                }
                let outcome = read_commands(read, &commands, max_frame).await;
                if let Err(reason) = outcome {
                    end.end(End::Control(reason));
                }
            }
            Ok(None) => {}
            // An HTTP/3 request is served from the heap, so the control stream task, which
            // lives as long as the session, does not carry room for a request in its state.
            frame => Box::pin(serve_request(*resolver, frame, context)).await,
        }
    });
}

/// Takes the WebTransport stream out of its resolver. The box is consumed here, so it is freed
/// now rather than when the task that held it ends, which for the control stream is when the
/// session ends.
fn into_wt_stream(resolver: Box<Resolver>) -> WtBidi {
    let resolver = *resolver;
    resolver.frame_stream.into_inner()
}

/// Serves an HTTP/3 request that arrived on a connection owned by a WebTransport session,
/// given the request stream's first frame.
async fn serve_request(
    resolver: Resolver,
    frame: Result<Option<Frame<h3::proto::frame::PayloadLen>>, h3::frame::FrameStreamError>,
    context: Arc<Context>,
) {
    let resolved = match resolver.accept_with_frame(frame) {
        Ok(resolved) => resolved,
        Err(e) => {
            debug!(error = %e, "invalid HTTP/3 request in a WebTransport session");
            return;
        }
    };
    match resolved.resolve().await {
        Ok((request, stream)) => request::serve(request, stream, &context).await,
        Err(e) => debug!(error = %e, "invalid HTTP/3 request in a WebTransport session"),
    }
}

/// Reads length-prefixed commands until the stream ends. A frame above `max_frame` is an error
/// that ends the session, since the stream cannot be re-synchronised after it.
async fn read_commands<R: AsyncRead + Unpin>(
    mut read: R,
    commands: &Mutex<CommandSession>,
    max_frame: usize,
) -> Result<(), &'static str> {
    loop {
        let len = match read.read_u32().await {
            Ok(len) => len as usize,
            Err(_) => return Ok(()),
        };
        if len > max_frame {
            return Err("command frame larger than the maximum");
        }
        let mut frame = vec![0u8; len];
        if read.read_exact(&mut frame).await.is_err() {
            return Ok(());
        }
        // Handling a command takes far more state than waiting for one, so it runs on the
        // heap and an idle control stream keeps only what the wait needs.
        let handled = Box::pin(async { commands.lock().await.handle(&frame, true).await });
        if !handled.await {
            return Ok(());
        }
    }
}

async fn read_command_stream(
    stream: WtRecv,
    commands: Arc<Mutex<CommandSession>>,
    max_frame: usize,
) {
    if let Err(reason) = read_commands(stream, &commands, max_frame).await {
        debug!(reason, "command stream ended");
    }
}

/// Publishes client datagrams as telemetry: `0x00`, topic length, topic, payload; or `0x01`,
/// a registered alias, payload. Malformed datagrams are counted and dropped.
async fn read_datagrams(
    quic: quinn::Connection,
    session_id: u64,
    commands: Arc<Mutex<CommandSession>>,
    context: Arc<Context>,
) {
    let quarter = session_id / 4;
    let dropped = || Metrics::add(&context.metrics.datagrams_dropped);
    while let Ok(datagram) = quic.read_datagram().await {
        let mut view = &datagram[..];
        if varint::get(&mut view) != Some(quarter) {
            dropped();
            continue;
        }
        let topic = match view.first() {
            Some(&wire::DATAGRAM_TOPIC) if view.len() >= 3 => {
                let len = usize::from(u16::from_be_bytes([view[1], view[2]]));
                let topic = view
                    .get(3..3 + len)
                    .and_then(|t| std::str::from_utf8(t).ok());
                let parsed = topic.and_then(|t| Topic::parse(t).ok());
                view = view.get(3 + len..).unwrap_or_default();
                parsed
            }
            Some(&wire::DATAGRAM_ALIAS) if view.len() >= 3 => {
                let alias = u16::from_be_bytes([view[1], view[2]]);
                view = &view[3..];
                commands.lock().await.alias(alias).cloned()
            }
            _ => None,
        };
        let Some(topic) = topic else {
            dropped();
            continue;
        };
        let payload = datagram.slice_ref(view);
        if context
            .hub
            .publish(topic, Class::Telemetry, None, payload)
            .is_err()
        {
            dropped();
        }
    }
}
