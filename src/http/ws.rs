//! `GET /v1/ws`: the JSON command protocol over WebSocket (RFC 6455).
//!
//! One task reads commands and one writes replies and deliveries, joined by the bounded
//! channel of [`CommandSession`]. A binary frame closes the connection with 1003, an oversized
//! message with 1009 and server shutdown with 1001; a rejected command only gets an `error`.

use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::{mpsc, oneshot};

use super::{AppState, Http3};
use crate::commands::{CommandSession, Outbound};
use crate::cursor::Cursor;
use crate::error::close_code;
use crate::hub::Delivery;
use crate::metrics::Metrics;
use crate::wire;

/// Capacity of the channel between the command session and the socket writer.
const OUTBOUND_CAPACITY: usize = 64;

/// Bytes tungstenite reads per call, and the size its read buffer starts at. It keeps that
/// buffer for the life of the connection, grown to the largest message received. The socket
/// underneath reads 16 KiB at a time for such small reads (`ReadAhead` in `serve.rs`), so a
/// large message does not cost a system call per KiB.
const READ_BUFFER: usize = 1024;

/// Bytes of written frames buffered before they are flushed.
const WRITE_BUFFER: usize = 8 * 1024;

/// Maximum number of messages written with one flush.
const MAX_BATCH: usize = 64;

/// How long a connection closed by the server keeps reading before the socket is dropped.
const CLOSE_DRAIN: Duration = Duration::from_secs(2);

pub(super) async fn upgrade(
    State(state): State<AppState>,
    http3: Option<axum::Extension<Http3>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if http3.is_some() {
        return (
            StatusCode::UPGRADE_REQUIRED,
            "WebSocket needs an HTTP/1.1 upgrade request to the TCP listener\n",
        )
            .into_response();
    }
    // axum's rejection names what is wrong with the handshake, such as a missing key.
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    // Messages up to twice the limit are read whole and closed with 1009, while the stream can
    // still carry the close frame; larger ones are cut by tungstenite itself.
    let hard_max = state.config.max_command_bytes() * 2;
    // tungstenite allocates a 128 KiB read buffer per connection by default, which dominates
    // the memory of an idle connection; small reads suffice because messages are assembled
    // in a buffer of their own.
    upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(hard_max)
        .max_frame_size(hard_max)
        .on_upgrade(move |socket| {
            // Splitting here, not in `serve`, keeps the whole socket out of the state that
            // `serve` holds for the life of the connection.
            let (sink, stream) = socket.split();
            serve(sink, stream, state)
        })
}

async fn serve(
    mut sink: SplitSink<WebSocket, Message>,
    mut stream: SplitStream<WebSocket>,
    state: AppState,
) {
    let (out_tx, mut out_rx) = mpsc::channel::<Outbound>(OUTBOUND_CAPACITY);
    // The reader sends at most one close request, because `close` below takes the sender, so
    // a oneshot channel suffices. A tokio mpsc channel would allocate room for 32 requests,
    // about 1.3 KiB per connection.
    let (close_tx, mut close_rx) = oneshot::channel::<(u16, &'static str)>();
    let heartbeat = state.config.heartbeat;
    let write_timeout = state.config.write_timeout;
    let shutdown = state.shutdown.clone();
    let metrics = state.metrics.clone();

    let mut writer = tokio::spawn(async move {
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        // Created once: a `cancelled()` future made per message would register with, and
        // leave, the token's waiter list each time, under a lock every connection shares.
        let shutdown = shutdown.cancelled_owned();
        tokio::pin!(shutdown);
        let mut last_cursor: Option<Cursor> = None;
        let mut pending_cursor: Option<Cursor> = None;
        loop {
            let message = tokio::select! {
                biased;
                // The branch ends the loop, so the finished receiver is never polled again.
                close = &mut close_rx => {
                    let (code, reason) = close.unwrap_or((close_code::GOING_AWAY, "closing"));
                    let frame = CloseFrame { code, reason: reason.into() };
                    // Replies to the commands read before the close are already queued, and
                    // go out first so the client learns the fate of each command.
                    for _ in 0..OUTBOUND_CAPACITY {
                        let Ok(outbound) = out_rx.try_recv() else { break };
                        let message = match outbound {
                            Outbound::Reply(json) => {
                                Message::Text(Utf8Bytes::try_from(json).unwrap_or_default())
                            }
                            Outbound::Delivery { sub, delivery } => encode(&delivery, sub),
                        };
                        let _ = sink.feed(message).await;
                    }
                    // After the peer's Close, tungstenite has queued the reply itself and
                    // refuses another frame; flushing sends the queued one.
                    if sink.send(Message::Close(Some(frame))).await.is_err() {
                        let _ = sink.flush().await;
                    }
                    break;
                }
                outbound = out_rx.recv() => match outbound {
                    Some(Outbound::Reply(json)) => {
                        Message::Text(Utf8Bytes::try_from(json).unwrap_or_default())
                    }
                    Some(Outbound::Delivery { sub, delivery }) => {
                        pending_cursor = delivery_cursor(&delivery);
                        encode(&delivery, sub)
                    }
                    None => break,
                },
                _ = ping.tick() => Message::Ping(Default::default()),
                _ = &mut shutdown => {
                    let frame = CloseFrame {
                        code: close_code::GOING_AWAY,
                        reason: "server shutting down".into(),
                    };
                    let _ = sink.send(Message::Close(Some(frame))).await;
                    break;
                }
            };
            // Whatever else is ready goes out with this message in one flush, so a busy
            // connection costs one write per batch instead of one per message.
            let batch = async {
                sink.feed(message).await?;
                for _ in 0..MAX_BATCH {
                    let message = match out_rx.try_recv() {
                        Ok(Outbound::Reply(json)) => {
                            Message::Text(Utf8Bytes::try_from(json).unwrap_or_default())
                        }
                        Ok(Outbound::Delivery { sub, delivery }) => {
                            if let Some(cursor) = delivery_cursor(&delivery) {
                                pending_cursor = Some(cursor);
                            }
                            encode(&delivery, sub)
                        }
                        Err(_) => break,
                    };
                    sink.feed(message).await?;
                }
                sink.flush().await
            };
            match tokio::time::timeout(write_timeout, batch).await {
                Ok(Ok(())) => {
                    if let Some(cursor) = pending_cursor.take() {
                        last_cursor = Some(cursor);
                    }
                }
                Ok(Err(_)) => break,
                Err(_) => {
                    // The peer reads too slowly. A close frame reaches it only if it is still
                    // reading at all, so sending one is bounded too.
                    Metrics::add(&metrics.disconnected_slow);
                    let reason = match last_cursor {
                        Some(cursor) => format!("too slow: resume from cursor {cursor}"),
                        None => "too slow".to_owned(),
                    };
                    tracing::debug!(%reason, "closing slow WebSocket");
                    let frame = CloseFrame {
                        code: close_code::TOO_SLOW,
                        reason: reason.into(),
                    };
                    let close = sink.send(Message::Close(Some(frame)));
                    let _ = tokio::time::timeout(CLOSE_DRAIN, close).await;
                    break;
                }
            }
        }
    });

    let mut session =
        CommandSession::new(state.hub.clone(), out_tx, state.config.max_subscriptions);
    // The sender stays alive until `serve` returns, because the writer takes a dropped sender
    // as a request to close with 1001.
    let mut close_tx = Some(close_tx);
    let mut close = |code: u16, reason: &'static str| {
        if let Some(sender) = close_tx.take() {
            let _ = sender.send((code, reason));
        }
    };
    let mut closing = false;
    let max_message = state.config.max_command_bytes();
    // A live peer answers every heartbeat ping, so silence this long means it is gone.
    let silence = heartbeat + state.config.peer_timeout;
    let mut writer_done = false;
    loop {
        let read = tokio::time::timeout(silence, stream.next());
        let read = tokio::select! {
            read = read => read,
            // The writer stops on a slow peer, a failed write or shutdown; the connection ends
            // with it, so its subscriptions are freed now, not when the peer next speaks.
            _ = &mut writer => {
                writer_done = true;
                break;
            }
        };
        let Ok(received) = read else {
            Metrics::add(&state.metrics.disconnected_dead);
            tracing::debug!("WebSocket peer silent past the heartbeat timeout; closing");
            break;
        };
        let Some(received) = received else { break };
        match received {
            Ok(Message::Text(text)) if text.len() > max_message => {
                close(
                    close_code::MESSAGE_TOO_BIG,
                    "message larger than the maximum",
                );
                closing = true;
                break;
            }
            Ok(Message::Text(text)) => {
                // Handling a command takes far more state than waiting for one, so it runs on
                // the heap and an idle connection's task keeps only what the wait needs.
                if !Box::pin(session.handle(text.as_bytes(), false)).await {
                    break;
                }
            }
            Ok(Message::Binary(_)) => {
                close(
                    close_code::UNSUPPORTED_DATA,
                    "binary frames are not accepted: send JSON commands as text",
                );
                closing = true;
                break;
            }
            Ok(Message::Close(_)) => {
                // The closing handshake (RFC 6455, 5.5.1): the server answers with a Close.
                close(close_code::NORMAL, "");
                break;
            }
            Ok(Message::Ping(_) | Message::Pong(_)) => {}
            Err(e) => {
                tracing::debug!(error = %e, "websocket read failed");
                if is_capacity_error(&e) {
                    close(close_code::MESSAGE_TOO_BIG, "message too large");
                    closing = true;
                }
                break;
            }
        }
    }
    // Dropping the session stops its subscriptions and, through the closed channel, the writer.
    drop(session);
    if !writer_done {
        let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    }
    if closing {
        // Closing a socket with unread input makes the kernel send RST, which can destroy the
        // close frame before the peer reads it. So the rest of the input is read first.
        let drain = async { while let Some(Ok(_)) = stream.next().await {} };
        let _ = tokio::time::timeout(CLOSE_DRAIN, drain).await;
    }
}

/// Cursor a client can resume from once this delivery has been sent.
fn delivery_cursor(delivery: &Delivery) -> Option<Cursor> {
    match delivery {
        Delivery::Message(message) => message.cursor,
        Delivery::Resync { cursor, .. } => Some(*cursor),
    }
}

fn encode(delivery: &Delivery, sub: u64) -> Message {
    match delivery {
        Delivery::Message(message) => Message::Text(wire::ws_text(message)),
        Delivery::Resync { .. } => Message::Text(
            Utf8Bytes::try_from(wire::delivery_json(delivery, Some(sub))).unwrap_or_default(),
        ),
    }
}

/// Tests whether a read failed on the configured message size limit. axum does not re-export
/// tungstenite's error type, so its message text is the only handle on the cause.
fn is_capacity_error(error: &axum::Error) -> bool {
    error.to_string().contains("Space limit exceeded")
}
