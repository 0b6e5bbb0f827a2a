//! Capsules on the CONNECT stream of a WebTransport session (RFC 9297, section 3), and the
//! watcher that ends the session when that stream ends.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tracing::trace;

use super::session::{ConnectRecv, End, EndSignal};
use super::varint;

/// CLOSE_WEBTRANSPORT_SESSION capsule type (draft-ietf-webtrans-http3, 5).
const CAPSULE_CLOSE: u64 = 0x2843;
/// Maximum capsule size hubcast buffers from the CONNECT stream; a longer capsule ends the
/// session.
const MAX_CAPSULE: u64 = 64 * 1024;

/// Encodes a CLOSE_WEBTRANSPORT_SESSION capsule.
pub(super) fn close_capsule(code: u32, reason: &str) -> Bytes {
    let reason = &reason.as_bytes()[..reason.len().min(1024)];
    let mut out = BytesMut::new();
    varint::put(&mut out, CAPSULE_CLOSE);
    varint::put(&mut out, 4 + reason.len() as u64);
    out.put_u32(code);
    out.put_slice(reason);
    out.freeze()
}

/// Reads the CONNECT stream until the session ends, parsing capsules as they come.
pub(super) async fn watch_connect(mut recv: Box<ConnectRecv>, end: EndSignal) {
    let mut buffer = BytesMut::new();
    let outcome = loop {
        match recv.recv_data().await {
            Ok(Some(mut chunk)) => {
                while chunk.has_remaining() {
                    let part = chunk.chunk();
                    buffer.extend_from_slice(part);
                    let n = part.len();
                    chunk.advance(n);
                }
                match parse_capsules(&mut buffer) {
                    Ok(Some(end)) => break end,
                    Ok(None) => {}
                    Err(reason) => break End::ConnectFailed(reason),
                }
            }
            Ok(None) => break End::ConnectFinished,
            Err(e) => break End::ConnectFailed(e.to_string()),
        }
    };
    end.end(outcome);
}

/// Consumes complete capsules from `buffer`; returns the end of the session on a close capsule.
fn parse_capsules(buffer: &mut BytesMut) -> Result<Option<End>, String> {
    loop {
        let mut view = &buffer[..];
        let Some(kind) = varint::get(&mut view) else {
            return Ok(None);
        };
        let Some(len) = varint::get(&mut view) else {
            return Ok(None);
        };
        if len > MAX_CAPSULE {
            return Err(format!("capsule of {len} bytes exceeds {MAX_CAPSULE}"));
        }
        if (view.len() as u64) < len {
            return Ok(None);
        }
        let header = buffer.len() - view.len();
        let body = buffer.split_to(header + len as usize).split_off(header);
        if kind == CAPSULE_CLOSE {
            let mut body = &body[..];
            let code = if body.len() >= 4 { body.get_u32() } else { 0 };
            let reason = String::from_utf8_lossy(body).into_owned();
            return Ok(Some(End::Capsule { code, reason }));
        }
        // DRAIN_WEBTRANSPORT_SESSION and unknown capsules are skipped (RFC 9297, 3.2).
        trace!(capsule = kind, "ignored capsule");
    }
}
