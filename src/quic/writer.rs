//! The writing side of a WebTransport session: replies on the control stream, events on
//! server-opened event streams and telemetry as datagrams, every write bounded by the write
//! timeout.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash as _, Hasher as _};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use super::session::{End, EndSignal, WtBidi};
use super::varint;
use crate::commands::Outbound;
use crate::cursor::Cursor;
use crate::hub::{Class, Delivery, Message};
use crate::metrics::{Metrics, SharedMetrics};
use crate::wire;

/// Stream type of a WebTransport unidirectional stream (draft-ietf-webtrans-http3, 4.2).
const WT_UNI_STREAM: u64 = 0x54;

/// Sends replies on the control stream, events on event streams and telemetry as datagrams.
pub(super) struct Writer {
    pub(super) quic: quinn::Connection,
    pub(super) session_id: u64,
    /// Quarter stream id that starts every datagram of this session (RFC 9297, 2.1).
    pub(super) prefix: Bytes,
    /// Event streams by lane, opened as topics arrive; a lane is `None` after the client stopped
    /// its stream, until the next event opens it again.
    pub(super) lanes: Vec<Option<quinn::SendStream>>,
    /// Number of lanes the session may open.
    pub(super) max_lanes: usize,
    /// Lane of each topic seen while lanes were still free; other topics go by hash.
    pub(super) assigned: std::collections::HashMap<crate::topic::Topic, usize>,
    pub(super) write_timeout: Duration,
    pub(super) metrics: SharedMetrics,
    /// Cursor of the last event fully written, reported when the peer is too slow.
    pub(super) last_cursor: Option<Cursor>,
}

/// Reason the writer stopped.
enum WriteError {
    Failed(String),
    Stalled,
}

/// Writes everything the session sends until the session ends. The writer arrives boxed, so
/// this future, which lives as long as the session, does not hold it twice.
pub(super) async fn write_loop(
    mut writer: Box<Writer>,
    mut out: mpsc::Receiver<Outbound>,
    control: oneshot::Receiver<tokio::io::WriteHalf<WtBidi>>,
    end: EndSignal,
) {
    let Ok(mut control) = control.await else {
        return;
    };
    let write_timeout = writer.write_timeout;
    while let Some(outbound) = out.recv().await {
        // The write and its timer go on the heap, one allocation per item, so a session that
        // waits for its next item keeps no room for them.
        let write = Box::pin(tokio::time::timeout(
            write_timeout,
            writer.write(&mut control, outbound),
        ));
        let result = match write.await {
            Ok(result) => result,
            Err(_) => Err(WriteError::Stalled),
        };
        match result {
            Ok(()) => {}
            Err(WriteError::Stalled) => {
                Metrics::add(&writer.metrics.disconnected_slow);
                end.end(End::TooSlow(writer.last_cursor));
                return;
            }
            Err(WriteError::Failed(e)) => {
                debug!(session = writer.session_id, error = %e, "WebTransport write failed");
                end.end(End::Connection(e));
                return;
            }
        }
    }
}

impl Writer {
    async fn write(
        &mut self,
        control: &mut tokio::io::WriteHalf<WtBidi>,
        outbound: Outbound,
    ) -> Result<(), WriteError> {
        let failed = |e: std::io::Error| WriteError::Failed(e.to_string());
        match outbound {
            Outbound::Reply(json) => control
                .write_all(&wire::length_prefixed(&json))
                .await
                .map_err(failed),
            Outbound::Delivery { sub, delivery } => match &delivery {
                Delivery::Resync { cursor, .. } => {
                    let json = wire::delivery_json(&delivery, Some(sub));
                    control
                        .write_all(&wire::length_prefixed(&json))
                        .await
                        .map_err(failed)?;
                    self.last_cursor = Some(*cursor);
                    Ok(())
                }
                Delivery::Message(message) if message.class == Class::Telemetry => {
                    if self.send_datagram(message) {
                        return Ok(());
                    }
                    Metrics::add(&self.metrics.datagrams_oversized);
                    self.write_lane(message).await
                }
                Delivery::Message(message) => {
                    self.write_lane(message).await?;
                    if message.cursor.is_some() {
                        self.last_cursor = message.cursor;
                    }
                    Ok(())
                }
            },
        }
    }

    fn send_datagram(&self, message: &Message) -> bool {
        send_datagram(&self.quic, &self.prefix, &self.metrics, message)
    }

    /// Picks the event stream of a topic: its own while streams are left, then one shared by
    /// hash. A topic keeps its stream for the session, so its events stay in order.
    fn lane(&mut self, topic: &crate::topic::Topic) -> usize {
        if let Some(index) = self.assigned.get(topic) {
            return *index;
        }
        // Lanes are added one per new topic, so a session that sends nothing has none.
        if self.lanes.len() < self.max_lanes {
            let index = self.lanes.len();
            self.lanes.push(None);
            self.assigned.insert(topic.clone(), index);
            return index;
        }
        let mut hasher = DefaultHasher::new();
        topic.hash(&mut hasher);
        (hasher.finish() % self.lanes.len() as u64) as usize
    }

    async fn write_lane(&mut self, message: &Message) -> Result<(), WriteError> {
        let index = self.lane(&message.topic);
        // A client may stop an event stream; the frame then goes out once more on a new one,
        // so stopping a stream never loses an event.
        for attempt in 0..2 {
            self.open_lane(index).await?;
            let Some(stream) = self.lanes[index].as_mut() else {
                return Ok(());
            };
            match stream.write_chunk(wire::frame(message)).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    debug!(error = %e, attempt, "event stream stopped by the client");
                    self.lanes[index] = None;
                }
            }
        }
        Err(WriteError::Failed(
            "the client stops every event stream".into(),
        ))
    }

    async fn open_lane(&mut self, index: usize) -> Result<(), WriteError> {
        if self.lanes[index].is_none() {
            let opened = self.quic.open_uni().await;
            let mut stream = opened.map_err(|e| WriteError::Failed(e.to_string()))?;
            let mut header = BytesMut::new();
            varint::put(&mut header, WT_UNI_STREAM);
            varint::put(&mut header, self.session_id);
            let written = stream.write_all(&header).await;
            written.map_err(|e| WriteError::Failed(e.to_string()))?;
            self.lanes[index] = Some(stream);
        }
        Ok(())
    }
}

/// Sends telemetry as one datagram behind the session's `prefix`. Returns `false` when it does
/// not fit the current maximum datagram size (or the peer takes no datagrams), so the caller
/// sends it on a stream instead; a datagram quinn cannot send for any other reason is dropped,
/// as telemetry may be.
pub(super) fn send_datagram(
    quic: &quinn::Connection,
    prefix: &Bytes,
    metrics: &Metrics,
    message: &Message,
) -> bool {
    let datagram = wire::prefixed_datagram(message, prefix);
    match quic.max_datagram_size() {
        Some(max) if datagram.len() <= max => {}
        _ => return false,
    }
    // quinn 0.11 discards the oldest unsent datagrams to make room, so this never blocks.
    match quic.send_datagram(datagram) {
        Ok(()) => {
            Metrics::add(&metrics.datagrams_sent);
            true
        }
        Err(quinn::SendDatagramError::TooLarge) => false,
        Err(_) => true,
    }
}
