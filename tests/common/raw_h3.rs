//! A minimal HTTP/3 client written against the RFCs, independent of the h3 crate, for what
//! the crate's client cannot do: advertise WebTransport in its SETTINGS, send arbitrary
//! `:protocol` values, and finish a CONNECT stream without a capsule.

use anyhow::{bail, Context as _, Result};
use bytes::{Buf, BufMut, BytesMut};

pub const SETTINGS_ENABLE_CONNECT_PROTOCOL: u64 = 0x08;
pub const SETTINGS_H3_DATAGRAM: u64 = 0x33;
pub const SETTINGS_ENABLE_WEBTRANSPORT: u64 = 0x2b60_3742;
const FRAME_DATA: u64 = 0x00;
const FRAME_HEADERS: u64 = 0x01;
const FRAME_SETTINGS: u64 = 0x04;
const WT_BIDI_SIGNAL: u64 = 0x41;

pub fn put_varint(buf: &mut impl BufMut, value: u64) {
    match value {
        0..=63 => buf.put_u8(value as u8),
        64..=16_383 => buf.put_u16(0x4000 | value as u16),
        16_384..=1_073_741_823 => buf.put_u32(0x8000_0000 | value as u32),
        _ => buf.put_u64(0xc000_0000_0000_0000 | value),
    }
}

pub async fn read_varint(recv: &mut quinn::RecvStream) -> Result<u64> {
    let mut first = [0u8; 1];
    recv.read_exact(&mut first).await?;
    let size = 1usize << (first[0] >> 6);
    let mut rest = vec![0u8; size - 1];
    recv.read_exact(&mut rest).await?;
    let mut value = u64::from(first[0] & 0x3f);
    for byte in rest {
        value = (value << 8) | u64::from(byte);
    }
    Ok(value)
}

fn get_varint(buf: &mut &[u8]) -> Option<u64> {
    let first = *buf.first()?;
    let size = 1usize << (first >> 6);
    if buf.len() < size {
        return None;
    }
    let mut value = u64::from(first & 0x3f);
    for byte in &buf[1..size] {
        value = (value << 8) | u64::from(*byte);
    }
    buf.advance(size);
    Some(value)
}

/// Reads the server's control stream and returns its SETTINGS as pairs.
pub async fn read_server_settings(quic: &quinn::Connection) -> Result<Vec<(u64, u64)>> {
    loop {
        let mut recv = quic.accept_uni().await?;
        let stream_type = read_varint(&mut recv).await?;
        if stream_type != 0x00 {
            continue;
        }
        let frame_type = read_varint(&mut recv).await?;
        if frame_type != FRAME_SETTINGS {
            bail!("first frame on the control stream is {frame_type:#x}, not SETTINGS");
        }
        let len = read_varint(&mut recv).await? as usize;
        let mut body = vec![0u8; len];
        recv.read_exact(&mut body).await?;
        let mut view = &body[..];
        let mut pairs = Vec::new();
        while !view.is_empty() {
            let id = get_varint(&mut view).context("setting id")?;
            let value = get_varint(&mut view).context("setting value")?;
            pairs.push((id, value));
        }
        return Ok(pairs);
    }
}

/// Opens the client control stream and sends SETTINGS enabling WebTransport and datagrams.
pub async fn send_client_settings(quic: &quinn::Connection) -> Result<quinn::SendStream> {
    let mut control = quic.open_uni().await?;
    let mut body = BytesMut::new();
    for (id, value) in [
        (SETTINGS_ENABLE_CONNECT_PROTOCOL, 1),
        (SETTINGS_H3_DATAGRAM, 1),
        (SETTINGS_ENABLE_WEBTRANSPORT, 1),
    ] {
        put_varint(&mut body, id);
        put_varint(&mut body, value);
    }
    let mut frame = BytesMut::new();
    put_varint(&mut frame, 0x00);
    put_varint(&mut frame, FRAME_SETTINGS);
    put_varint(&mut frame, body.len() as u64);
    frame.put_slice(&body);
    control.write_all(&frame).await?;
    Ok(control)
}

/// QPACK prefixed integer (RFC 9204, 4.1.1) with `prefix` bits after the `flags` bits.
fn put_prefixed(buf: &mut BytesMut, flags: u8, prefix: u8, mut value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        buf.put_u8(flags | value as u8);
        return;
    }
    buf.put_u8(flags | max as u8);
    value -= max;
    while value >= 128 {
        buf.put_u8((value % 128) as u8 | 0x80);
        value /= 128;
    }
    buf.put_u8(value as u8);
}

/// Encodes a header block with literal names and values only, no Huffman and no dynamic table.
pub fn qpack_literal(fields: &[(&str, &str)]) -> BytesMut {
    let mut block = BytesMut::new();
    block.put_u8(0); // Required Insert Count
    block.put_u8(0); // Delta Base
    for (name, value) in fields {
        // Literal Field Line with Literal Name: 001N H + 3-bit name length.
        put_prefixed(&mut block, 0x20, 3, name.len());
        block.put_slice(name.as_bytes());
        put_prefixed(&mut block, 0x00, 7, value.len());
        block.put_slice(value.as_bytes());
    }
    block
}

/// Sends a request's HEADERS frame on a new bidirectional stream.
pub async fn send_headers(
    quic: &quinn::Connection,
    fields: &[(&str, &str)],
) -> Result<(quinn::SendStream, quinn::RecvStream)> {
    let (mut send, recv) = quic.open_bi().await?;
    let block = qpack_literal(fields);
    let mut frame = BytesMut::new();
    put_varint(&mut frame, FRAME_HEADERS);
    put_varint(&mut frame, block.len() as u64);
    frame.put_slice(&block);
    send.write_all(&frame).await?;
    Ok((send, recv))
}

/// Reads a QPACK prefixed integer whose first byte keeps `prefix` low bits.
fn get_prefixed(buf: &mut &[u8], prefix: u8) -> Option<usize> {
    let max = (1usize << prefix) - 1;
    let first = usize::from(*buf.first()?) & max;
    buf.advance(1);
    if first < max {
        return Some(first);
    }
    let mut value = max;
    let mut shift = 0;
    loop {
        let byte = *buf.first()?;
        buf.advance(1);
        value += usize::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
}

/// `:status` values of the QPACK static table (RFC 9204, Appendix A), by index.
fn static_status(index: usize) -> Option<u16> {
    Some(match index {
        24 => 103,
        25 => 200,
        26 => 304,
        27 => 404,
        28 => 503,
        63 => 100,
        64 => 204,
        65 => 206,
        66 => 302,
        67 => 400,
        68 => 403,
        69 => 421,
        70 => 425,
        71 => 500,
        _ => return None,
    })
}

/// Reads the response HEADERS frame and returns its status. Only the two forms an encoder
/// without a dynamic table uses for `:status` are decoded: an indexed static entry, and a
/// literal value with a static name reference.
pub async fn read_status(recv: &mut quinn::RecvStream) -> Result<u16> {
    loop {
        let frame_type = read_varint(recv).await?;
        let len = read_varint(recv).await? as usize;
        let mut body = vec![0u8; len];
        recv.read_exact(&mut body).await?;
        if frame_type != FRAME_HEADERS {
            continue;
        }
        let mut view = &body[2..];
        let first = *view.first().context("empty header block")?;
        if first & 0xc0 == 0xc0 {
            let index = get_prefixed(&mut view, 6).context("field index")?;
            return static_status(index).context("indexed field is not a :status");
        }
        if first & 0xf0 == 0x50 {
            get_prefixed(&mut view, 4).context("name index")?;
            let huffman = view.first().context("value")? & 0x80 != 0;
            let len = get_prefixed(&mut view, 7).context("value length")?;
            let value = view.get(..len).context("value bytes")?;
            if huffman {
                return Ok(huffman_status(value));
            }
            return Ok(std::str::from_utf8(value)?.parse()?);
        }
        bail!("unexpected first header field {first:#x}");
    }
}

/// Decodes a Huffman-coded three-digit status (RFC 7541 Appendix B: digits 0-2 are 5-bit
/// codes 0x0-0x2, digits 3-9 are 6-bit codes 0x19-0x1f).
fn huffman_status(bytes: &[u8]) -> u16 {
    let mut bits: u64 = 0;
    let mut count = 0;
    for b in bytes {
        bits = (bits << 8) | u64::from(*b);
        count += 8;
    }
    let mut value = 0u16;
    let mut pos = count;
    for _ in 0..3 {
        let five = ((bits >> (pos - 5)) & 0x1f) as u16;
        if five <= 2 {
            value = value * 10 + five;
            pos -= 5;
        } else {
            let six = ((bits >> (pos - 6)) & 0x3f) as u16;
            value = value * 10 + (six - 0x19 + 3);
            pos -= 6;
        }
    }
    value
}

/// Sends bytes as one DATA frame.
pub async fn send_data(send: &mut quinn::SendStream, payload: &[u8]) -> Result<()> {
    let mut frame = BytesMut::new();
    put_varint(&mut frame, FRAME_DATA);
    put_varint(&mut frame, payload.len() as u64);
    frame.put_slice(payload);
    send.write_all(&frame).await?;
    Ok(())
}

/// Opens a WebTransport bidirectional stream of session `session_id`.
pub async fn open_wt_bidi(
    quic: &quinn::Connection,
    session_id: u64,
) -> Result<(quinn::SendStream, quinn::RecvStream)> {
    let (mut send, recv) = quic.open_bi().await?;
    let mut header = BytesMut::new();
    put_varint(&mut header, WT_BIDI_SIGNAL);
    put_varint(&mut header, session_id);
    send.write_all(&header).await?;
    Ok((send, recv))
}

/// Sends a length-prefixed JSON frame.
pub async fn send_json(send: &mut quinn::SendStream, value: &serde_json::Value) -> Result<()> {
    let body = serde_json::to_vec(value)?;
    send.write_all(&(body.len() as u32).to_be_bytes()).await?;
    send.write_all(&body).await?;
    Ok(())
}

/// Reads a length-prefixed JSON frame.
pub async fn read_json(recv: &mut quinn::RecvStream) -> Result<serde_json::Value> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    recv.read_exact(&mut body).await?;
    Ok(serde_json::from_slice(&body)?)
}

/// The headers of a WebTransport CONNECT to `path`.
pub fn connect_headers<'a>(protocol: &'a str, path: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        (":method", "CONNECT"),
        (":protocol", protocol),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", path),
        ("origin", "http://localhost"),
    ]
}

/// Reads frames until a DATA frame and returns its payload, or `None` at the end of the stream.
pub async fn read_data_frame(recv: &mut quinn::RecvStream) -> Result<Option<Vec<u8>>> {
    loop {
        let frame_type = match read_varint(recv).await {
            Ok(t) => t,
            Err(_) => return Ok(None),
        };
        let len = read_varint(recv).await? as usize;
        let mut body = vec![0u8; len];
        recv.read_exact(&mut body).await?;
        if frame_type == FRAME_DATA {
            return Ok(Some(body));
        }
    }
}

/// Parses a CLOSE_WEBTRANSPORT_SESSION capsule into its code and reason.
pub fn parse_close_capsule(data: &[u8]) -> Result<(u32, String)> {
    let mut view = data;
    let kind = get_varint(&mut view).context("capsule type")?;
    if kind != 0x2843 {
        bail!("capsule type {kind:#x} is not CLOSE_WEBTRANSPORT_SESSION");
    }
    let len = get_varint(&mut view).context("capsule length")? as usize;
    if view.len() < len || len < 4 {
        bail!("capsule of {len} bytes with {} available", view.len());
    }
    let code = u32::from_be_bytes([view[0], view[1], view[2], view[3]]);
    let reason = String::from_utf8(view[4..len].to_vec())?;
    Ok((code, reason))
}

/// Sends `GET path` with no body and returns the response status.
pub async fn raw_get_status(quic: &quinn::Connection, path: &str) -> u16 {
    let fields = [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", path),
    ];
    let (mut send, mut recv) = send_headers(quic, &fields).await.expect("request sent");
    send.finish().expect("request finished");
    crate::common::within(path, read_status(&mut recv))
        .await
        .expect("response status")
}
