//! Wire encodings of hub messages, each built once per message and shared by all subscribers.
//!
//! * JSON envelope: the WebSocket text message and the WebTransport stream frame body.
//! * WebTransport stream frame: a 4-byte big-endian length, then the JSON envelope.
//! * WebTransport datagram: type byte `0x00`, 2-byte big-endian topic length, topic, payload.
//! * Server-Sent Events, raw: `id:` cursor, `event:` name, payload on `data:` lines.
//! * Server-Sent Events, JSON: `id:` cursor and the JSON envelope on one `data:` line.
//!
//! A payload goes into JSON as the string `payload` when it is valid UTF-8 and as base64 in
//! `payload_b64` otherwise. Raw SSE carries a payload as text unless it is not UTF-8, contains a
//! carriage return or starts with [`SSE_BASE64_MARKER`]; then it is the marker followed by the
//! payload in standard base64, so every payload survives the event stream's line parsing.

use std::sync::OnceLock;

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

use crate::cursor::Cursor;
use crate::hub::{Delivery, Message, ResyncReason};

/// Prefix of a raw SSE `data:` value that carries a base64 payload.
pub const SSE_BASE64_MARKER: &str = "b64:";

/// Type byte of a datagram whose topic is written out in full.
pub const DATAGRAM_TOPIC: u8 = 0x00;

/// Type byte of a client datagram that names its topic by a registered alias.
pub const DATAGRAM_ALIAS: u8 = 0x01;

/// Event name of the resync signal on raw SSE.
pub const SSE_RESYNC_EVENT: &str = "hubcast.resync";

/// Per-message cache of encodings.
#[derive(Default)]
pub struct Encoded {
    json: OnceLock<Bytes>,
    frame: OnceLock<Bytes>,
    datagram: OnceLock<Bytes>,
    sse_raw: OnceLock<Bytes>,
    sse_json: OnceLock<Bytes>,
    ws_text: OnceLock<axum::extract::ws::Utf8Bytes>,
    /// The datagram behind a one-byte prefix, cached for the prefix of session 0.
    datagram_session0: OnceLock<Bytes>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    op: &'static str,
    topic: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_b64: Option<String>,
}

#[derive(Serialize)]
struct ResyncEnvelope {
    op: &'static str,
    cursor: String,
    reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<u64>,
}

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// JSON envelope of a message.
pub fn json(message: &Message) -> Bytes {
    message
        .encoded
        .json
        .get_or_init(|| {
            let text = std::str::from_utf8(&message.payload).ok();
            let envelope = Envelope {
                op: message.class.as_str(),
                topic: message.topic.as_str(),
                cursor: message.cursor.map(|c| c.to_string()),
                event: message.name.as_deref(),
                payload: text,
                payload_b64: text.is_none().then(|| base64(&message.payload)),
            };
            to_json(&envelope)
        })
        .clone()
}

/// WebSocket text message of a message: its JSON envelope, checked as UTF-8 once.
pub fn ws_text(message: &Message) -> axum::extract::ws::Utf8Bytes {
    message
        .encoded
        .ws_text
        .get_or_init(|| {
            // serde_json always produces UTF-8, so the fallback is never taken.
            axum::extract::ws::Utf8Bytes::try_from(json(message)).unwrap_or_default()
        })
        .clone()
}

/// JSON resync signal; `sub` names the subscription on connections that hold several.
pub fn resync_json(cursor: Cursor, reason: ResyncReason, sub: Option<u64>) -> Bytes {
    to_json(&ResyncEnvelope {
        op: "resync",
        cursor: cursor.to_string(),
        reason: reason.as_str(),
        sub,
    })
}

/// JSON of a delivery, for WebSocket and stream frames.
pub fn delivery_json(delivery: &Delivery, sub: Option<u64>) -> Bytes {
    match delivery {
        Delivery::Message(message) => json(message),
        Delivery::Resync { cursor, reason } => resync_json(*cursor, *reason, sub),
    }
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> Bytes {
    // Serialising these plain structs into memory cannot fail.
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

/// Prefixes `body` with its 4-byte big-endian length.
pub fn length_prefixed(body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(4 + body.len());
    out.put_u32(body.len() as u32);
    out.put_slice(body);
    out.freeze()
}

/// WebTransport stream frame of a message.
pub fn frame(message: &Message) -> Bytes {
    message
        .encoded
        .frame
        .get_or_init(|| length_prefixed(&json(message)))
        .clone()
}

/// WebTransport datagram of a telemetry message, without the HTTP/3 quarter stream id.
pub fn datagram(message: &Message) -> Bytes {
    message
        .encoded
        .datagram
        .get_or_init(|| {
            let topic = message.topic.as_str().as_bytes();
            let mut out = BytesMut::with_capacity(3 + topic.len() + message.payload.len());
            out.put_u8(DATAGRAM_TOPIC);
            out.put_u16(topic.len() as u16);
            out.put_slice(topic);
            out.put_slice(&message.payload);
            out.freeze()
        })
        .clone()
}

/// The datagram of a message behind `prefix`, the HTTP/3 quarter stream id of its session.
/// Nearly every session is the first request of its connection, whose prefix is `0x00`; that
/// form is cached, any other is copied per session.
pub fn prefixed_datagram(message: &Message, prefix: &[u8]) -> Bytes {
    let build = || {
        let body = datagram(message);
        let mut out = BytesMut::with_capacity(prefix.len() + body.len());
        out.put_slice(prefix);
        out.put_slice(&body);
        out.freeze()
    };
    if prefix == [0] {
        message.encoded.datagram_session0.get_or_init(build).clone()
    } else {
        build()
    }
}

/// Raw SSE event of a message.
pub fn sse_raw(message: &Message) -> Bytes {
    message
        .encoded
        .sse_raw
        .get_or_init(|| {
            let mut out = String::with_capacity(message.payload.len() + 64);
            if let Some(cursor) = message.cursor {
                out.push_str(&format!("id: {cursor}\n"));
            }
            if let Some(name) = &message.name {
                out.push_str(&format!("event: {name}\n"));
            }
            match std::str::from_utf8(&message.payload) {
                Ok(text) if !text.contains('\r') && !text.starts_with(SSE_BASE64_MARKER) => {
                    for line in text.split('\n') {
                        out.push_str("data: ");
                        out.push_str(line);
                        out.push('\n');
                    }
                }
                _ => {
                    out.push_str("data: ");
                    out.push_str(SSE_BASE64_MARKER);
                    out.push_str(&base64(&message.payload));
                    out.push('\n');
                }
            }
            out.push('\n');
            Bytes::from(out)
        })
        .clone()
}

/// JSON SSE event of a message.
pub fn sse_json(message: &Message) -> Bytes {
    message
        .encoded
        .sse_json
        .get_or_init(|| {
            let body = json(message);
            let mut out = BytesMut::with_capacity(body.len() + 48);
            if let Some(cursor) = message.cursor {
                out.put_slice(format!("id: {cursor}\n").as_bytes());
            }
            out.put_slice(b"data: ");
            out.put_slice(&body);
            out.put_slice(b"\n\n");
            out.freeze()
        })
        .clone()
}

/// SSE resync signal. It carries the cursor as its `id:` so a reconnecting EventSource resumes
/// after it; raw streams name it [`SSE_RESYNC_EVENT`].
pub fn sse_resync(cursor: Cursor, reason: ResyncReason, raw: bool) -> Bytes {
    let body = resync_json(cursor, reason, None);
    let mut out = format!("id: {cursor}\n");
    if raw {
        out.push_str(&format!("event: {SSE_RESYNC_EVENT}\n"));
    }
    out.push_str("data: ");
    out.push_str(std::str::from_utf8(&body).unwrap_or_default());
    out.push_str("\n\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Class;
    use crate::topic::Topic;

    fn message(payload: &[u8], name: Option<&str>, cursor: Option<Cursor>) -> Message {
        Message {
            topic: Topic::parse("a/b").unwrap(),
            name: name.map(Into::into),
            payload: Bytes::copy_from_slice(payload),
            class: if cursor.is_some() {
                Class::Event
            } else {
                Class::Telemetry
            },
            cursor,
            encoded: Encoded::default(),
        }
    }

    #[test]
    fn sse_raw_splits_lines() {
        let m = message(b"one\ntwo", Some("greet"), Some(Cursor::new(1, 7)));
        assert_eq!(
            &sse_raw(&m)[..],
            b"id: 0000000000000001-7\nevent: greet\ndata: one\ndata: two\n\n"
        );
    }

    #[test]
    fn sse_raw_telemetry_has_no_id() {
        let m = message(b"21.5", None, None);
        assert_eq!(&sse_raw(&m)[..], b"data: 21.5\n\n");
    }

    #[test]
    fn sse_raw_marks_binary_and_carriage_returns() {
        for payload in [&b"\xff\x00"[..], b"a\r\nb", b"b64:literal"] {
            let m = message(payload, None, None);
            let encoded = String::from_utf8(sse_raw(&m).to_vec()).unwrap();
            let data = encoded
                .strip_prefix("data: b64:")
                .and_then(|s| s.strip_suffix("\n\n"))
                .unwrap();
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(data)
                .unwrap();
            assert_eq!(decoded, payload);
        }
    }

    #[test]
    fn json_uses_base64_for_binary() {
        let m = message(b"\xff", None, Some(Cursor::new(1, 1)));
        let value: serde_json::Value = serde_json::from_slice(&json(&m)).unwrap();
        assert_eq!(value["payload_b64"], "/w==");
        assert!(value.get("payload").is_none());
        assert_eq!(value["op"], "event");
    }

    #[test]
    fn datagram_header_layout() {
        let m = message(b"xy", None, None);
        assert_eq!(&datagram(&m)[..], b"\x00\x00\x03a/bxy");
    }

    #[test]
    fn encoding_is_cached() {
        let m = message(b"x", None, None);
        let first = json(&m);
        let second = json(&m);
        assert_eq!(first.as_ptr(), second.as_ptr());
    }
}
