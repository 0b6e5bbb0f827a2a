//! Serves a plain HTTP/3 request through the shared axum router.

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, StatusCode};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;
use tracing::debug;

use super::{reject_connect, Context, H3Stream};
use crate::http::Http3;

/// Reads the request body (bounded by the maximum payload), runs the router and streams the
/// response back. Any stream error, such as the client stopping the stream, ends only this
/// request.
pub(super) async fn serve(request: http::Request<()>, mut stream: H3Stream, context: &Context) {
    if request.method() == Method::CONNECT {
        let protocol = request
            .extensions()
            .get::<h3::ext::Protocol>()
            .map(|p| p.as_str().to_owned());
        let path = request.uri().path();
        let (status, reason) = match protocol.as_deref() {
            Some("webtransport") if path == super::WEBTRANSPORT_PATH => {
                tracing::warn!("WebTransport session rejected: the connection already has one");
                let reason = "this connection already carries a WebTransport session: open a new \
                              connection";
                (StatusCode::BAD_REQUEST, reason.to_owned())
            }
            Some("webtransport") => {
                tracing::warn!(path, "WebTransport session rejected: unknown path");
                let reason = "WebTransport is served at /v1/wt".to_owned();
                (StatusCode::NOT_FOUND, reason)
            }
            Some(p) => {
                let reason =
                    format!("unsupported :protocol {p:?}: only \"webtransport\" is served");
                (StatusCode::NOT_IMPLEMENTED, reason)
            }
            None => {
                let reason = "CONNECT is not supported: use extended CONNECT with :protocol \
                              webtransport";
                (StatusCode::NOT_IMPLEMENTED, reason.to_owned())
            }
        };
        reject_connect(stream, status, &reason).await;
        return;
    }

    let mut body = BytesMut::new();
    let too_large = loop {
        match stream.recv_data().await {
            Ok(Some(mut chunk)) => {
                if body.len() + chunk.remaining() > context.max_body {
                    break true;
                }
                while chunk.has_remaining() {
                    let part = chunk.chunk();
                    body.extend_from_slice(part);
                    let n = part.len();
                    chunk.advance(n);
                }
            }
            Ok(None) => break false,
            Err(e) => {
                debug!(error = %e, "HTTP/3 request body failed");
                return;
            }
        }
    };
    if too_large {
        stream.stop_sending(h3::error::Code::H3_NO_ERROR);
        let message = format!(
            "{{\"error\":\"payload_too_large\",\"message\":\"request body is larger than the \
             maximum payload of {} bytes\"}}",
            context.max_body
        );
        let response = http::Response::builder()
            .status(StatusCode::PAYLOAD_TOO_LARGE)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(());
        if let Ok(response) = response {
            if stream.send_response(response).await.is_ok() {
                let _ = stream.send_data(Bytes::from(message)).await;
                let _ = stream.finish().await;
            }
        }
        return;
    }

    let (mut parts, ()) = request.into_parts();
    parts.extensions.insert(Http3);
    let request = http::Request::from_parts(parts, axum::body::Body::from(body.freeze()));
    let response = match context.router.clone().oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };

    let (parts, mut body) = response.into_parts();
    if stream
        .send_response(http::Response::from_parts(parts, ()))
        .await
        .is_err()
    {
        return;
    }
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return };
        if let Ok(data) = frame.into_data() {
            match tokio::time::timeout(context.write_timeout, stream.send_data(data)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    // The client stopped reading: its flow-control window stays closed.
                    crate::metrics::Metrics::add(&context.metrics.disconnected_slow);
                    debug!("HTTP/3 response stalled past the write timeout; resetting it");
                    stream.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
                    return;
                }
            }
        }
    }
    let _ = stream.finish().await;
}
