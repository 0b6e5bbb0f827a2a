//! The client side of the JSON command protocol and of WebTransport datagrams.
//!
//! Server messages are parsed with borrowed strings, and a payload that needs no unescaping is
//! sliced out of the received frame instead of copied.

use std::borrow::Cow;

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::wire::{DATAGRAM_ALIAS, DATAGRAM_TOPIC};

/// A command as JSON. Members that are `None` are left out.
#[derive(Serialize)]
struct Command<'a> {
    op: &'static str,
    id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    filters: Option<&'a [&'a str]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    class: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_b64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alias: Option<u16>,
}

impl<'a> Command<'a> {
    fn new(op: &'static str, id: u64) -> Self {
        Self {
            op,
            id,
            filters: None,
            cursor: None,
            sub: None,
            topic: None,
            class: None,
            event: None,
            payload: None,
            payload_b64: None,
            alias: None,
        }
    }

    fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("a command always serializes"))
    }
}

pub(crate) fn subscribe(id: u64, filters: &[&str], cursor: Option<&str>) -> Bytes {
    Command {
        filters: Some(filters),
        cursor,
        ..Command::new("subscribe", id)
    }
    .encode()
}

pub(crate) fn unsubscribe(id: u64, sub: u64) -> Bytes {
    Command {
        sub: Some(sub),
        ..Command::new("unsubscribe", id)
    }
    .encode()
}

/// Delivery class of a published message.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Event,
    Telemetry,
}

pub(crate) fn publish(
    id: u64,
    topic: &str,
    payload: &[u8],
    event: Option<&str>,
    class: Class,
) -> Bytes {
    let (text, base64) = match std::str::from_utf8(payload) {
        Ok(text) => (Some(text), None),
        Err(_) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(payload)),
        ),
    };
    Command {
        topic: Some(topic),
        class: (class == Class::Telemetry).then_some("telemetry"),
        event,
        payload: text,
        payload_b64: base64,
        ..Command::new("publish", id)
    }
    .encode()
}

pub(crate) fn alias(id: u64, alias: u16, topic: &str) -> Bytes {
    Command {
        alias: Some(alias),
        topic: Some(topic),
        ..Command::new("alias", id)
    }
    .encode()
}

pub(crate) fn ping(id: u64) -> Bytes {
    Command::new("ping", id).encode()
}

/// A JSON string, borrowed from the input when it has no escapes. serde's own `Cow<str>`
/// always copies inside an `Option`, so this wrapper has its own visitor.
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visitor<'a> {
            type Value = Text<'a>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(Visitor(std::marker::PhantomData))
    }
}

/// Every member any server message may carry. Unknown members are ignored, as the protocol
/// requires of clients.
#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    op: Text<'a>,
    id: Option<u64>,
    sub: Option<u64>,
    #[serde(borrow)]
    cursor: Option<Text<'a>>,
    #[serde(borrow)]
    code: Option<Text<'a>>,
    #[serde(borrow)]
    message: Option<Text<'a>>,
    #[serde(borrow)]
    reason: Option<Text<'a>>,
    #[serde(borrow)]
    topic: Option<Text<'a>>,
    #[serde(borrow)]
    event: Option<Text<'a>>,
    #[serde(borrow)]
    payload: Option<Text<'a>>,
    #[serde(borrow)]
    payload_b64: Option<Text<'a>>,
}

/// A message from the server.
#[derive(Debug)]
pub(crate) enum ServerMessage {
    /// `subscribed`, `unsubscribed`, `ack` or `pong`.
    Reply {
        id: Option<u64>,
        sub: Option<u64>,
        cursor: Option<String>,
    },
    /// An `error` reply.
    Error {
        id: Option<u64>,
        code: String,
        message: String,
    },
    Resync {
        sub: Option<u64>,
        cursor: String,
        reason: String,
    },
    Event {
        topic: String,
        cursor: String,
        event: Option<String>,
        payload: Bytes,
    },
    Telemetry {
        topic: String,
        event: Option<String>,
        payload: Bytes,
    },
}

fn owned(text: Option<Text<'_>>) -> Option<String> {
    text.map(|text| text.0.into_owned())
}

/// Parses one JSON message from the server: a WebSocket text message or a WebTransport frame
/// body.
pub(crate) fn parse(frame: &Bytes) -> Result<ServerMessage, String> {
    let raw: Raw<'_> =
        serde_json::from_slice(frame).map_err(|e| format!("invalid JSON message: {e}"))?;
    let op = raw.op.0;
    let missing = |member: &str| format!("{op:?} message without `{member}`");
    match &*op {
        "subscribed" | "unsubscribed" | "ack" | "pong" => Ok(ServerMessage::Reply {
            id: raw.id,
            sub: raw.sub,
            cursor: owned(raw.cursor),
        }),
        "error" => Ok(ServerMessage::Error {
            id: raw.id,
            code: owned(raw.code).unwrap_or_default(),
            message: owned(raw.message).unwrap_or_default(),
        }),
        "resync" => Ok(ServerMessage::Resync {
            sub: raw.sub,
            cursor: owned(raw.cursor).ok_or_else(|| missing("cursor"))?,
            reason: owned(raw.reason).unwrap_or_default(),
        }),
        "event" | "telemetry" => {
            let payload = match (raw.payload.map(|t| t.0), raw.payload_b64) {
                (Some(Cow::Borrowed(text)), None) => frame.slice_ref(text.as_bytes()),
                (Some(Cow::Owned(text)), None) => Bytes::from(text.into_bytes()),
                (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
                    .decode(encoded.0.as_bytes())
                    .map(Bytes::from)
                    .map_err(|e| format!("invalid payload_b64: {e}"))?,
                (None, None) => Bytes::new(),
                (Some(_), Some(_)) => {
                    return Err("message with both payload and payload_b64".to_owned())
                }
            };
            let topic = owned(raw.topic).ok_or_else(|| missing("topic"))?;
            let event = owned(raw.event);
            if op == "event" {
                Ok(ServerMessage::Event {
                    cursor: owned(raw.cursor).ok_or_else(|| missing("cursor"))?,
                    topic,
                    event,
                    payload,
                })
            } else {
                Ok(ServerMessage::Telemetry {
                    topic,
                    event,
                    payload,
                })
            }
        }
        other => Err(format!("unknown message {other:?}")),
    }
}

/// Parses a server datagram, after the quarter stream ID: type `0x00`, a 2-byte big-endian
/// topic length, the topic, then the payload. Returns `None` for anything else.
pub(crate) fn parse_datagram(datagram: &Bytes) -> Option<(String, Bytes)> {
    let (&kind, rest) = datagram.split_first()?;
    if kind != DATAGRAM_TOPIC || rest.len() < 2 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
    let topic = rest.get(2..2 + len)?;
    let topic = std::str::from_utf8(topic).ok()?.to_owned();
    Some((topic, datagram.slice(3 + len..)))
}

/// Builds a client datagram that names its topic by a registered alias.
pub(crate) fn alias_datagram(alias: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 + payload.len());
    out.push(DATAGRAM_ALIAS);
    out.extend_from_slice(&alias.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Builds a client datagram with the topic written out. `topic` must be at most 65,535 bytes, which
/// every valid topic name is.
pub(crate) fn topic_datagram(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 + topic.len() + payload.len());
    out.push(DATAGRAM_TOPIC);
    out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_payload_is_sliced_from_the_frame() {
        let frame = Bytes::from_static(
            br#"{"op":"event","topic":"a/b","cursor":"00000000000000aa-7","event":"n","payload":"hi"}"#,
        );
        let ServerMessage::Event {
            topic,
            cursor,
            event,
            payload,
        } = parse(&frame).unwrap()
        else {
            panic!("not an event");
        };
        assert_eq!(topic, "a/b");
        assert_eq!(cursor, "00000000000000aa-7");
        assert_eq!(event.as_deref(), Some("n"));
        assert_eq!(&payload[..], b"hi");
        // The payload points into the frame: no copy was made.
        let start = frame.as_ptr() as usize;
        let inside = payload.as_ptr() as usize;
        assert!(inside > start);
        assert!(inside < start + frame.len());
    }

    #[test]
    fn escaped_and_base64_payloads_are_decoded() {
        let escaped = Bytes::from_static(br#"{"op":"telemetry","topic":"t","payload":"a\nb"}"#);
        let ServerMessage::Telemetry { payload, .. } = parse(&escaped).unwrap() else {
            panic!("not telemetry");
        };
        assert_eq!(&payload[..], b"a\nb");
        let encoded = Bytes::from_static(br#"{"op":"telemetry","topic":"t","payload_b64":"/wA="}"#);
        let ServerMessage::Telemetry { payload, .. } = parse(&encoded).unwrap() else {
            panic!("not telemetry");
        };
        assert_eq!(&payload[..], [0xff, 0x00]);
    }

    #[test]
    fn replies_and_errors_are_parsed() {
        let error = Bytes::from_static(
            br#"{"op":"error","id":3,"code":"invalid_topic","message":"bad","extra":1}"#,
        );
        match parse(&error).unwrap() {
            ServerMessage::Error { id, code, message } => {
                assert_eq!(id, Some(3));
                assert_eq!(code, "invalid_topic");
                assert_eq!(message, "bad");
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&Bytes::from_static(b"{\"op\":\"nope\"}")).is_err());
        assert!(parse(&Bytes::from_static(b"not json")).is_err());
    }

    #[test]
    fn datagrams_round_trip() {
        let datagram = Bytes::from(topic_datagram("s/t", b"21.5"));
        let (topic, payload) = parse_datagram(&datagram).unwrap();
        assert_eq!(topic, "s/t");
        assert_eq!(&payload[..], b"21.5");
        assert_eq!(alias_datagram(7, b"x"), [0x01, 0x00, 0x07, b'x']);
        assert!(parse_datagram(&Bytes::from_static(&[0x00, 0x00, 0x09, b'a'])).is_none());
        assert!(parse_datagram(&Bytes::from_static(&[0x01, 0x00, 0x00])).is_none());
    }

    #[test]
    fn non_utf8_payload_is_sent_as_base64() {
        let body = publish(1, "t", &[0xff], None, Class::Telemetry);
        let text = std::str::from_utf8(&body).unwrap();
        assert!(text.contains(r#""payload_b64":"/w==""#), "{text}");
        assert!(text.contains(r#""class":"telemetry""#), "{text}");
    }
}
