//! Fetching the server's certificate hash over its cleartext HTTP listener.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;

use super::{parse_cert_hash, Error};

/// Largest `/v1/cert-hash` response body read; the real one is about 250 bytes.
const MAX_BODY: usize = 64 * 1024;

/// The members of the `GET /v1/cert-hash` response that a client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertInfo {
    /// SHA-256 hash of the server's leaf certificate.
    pub cert_hash: [u8; 32],
    /// UDP port of the server's first QUIC listener.
    pub quic_port: u16,
}

#[derive(Deserialize)]
struct CertHashBody {
    hex: String,
    quic_port: u16,
}

/// Fetches the certificate hash and QUIC port from `GET http://<host_port>/v1/cert-hash`, for
/// a server whose TCP listener is `host_port`, such as `127.0.0.1:8080`.
///
/// The request goes over cleartext HTTP, so an attacker on the path could replace the hash.
///
/// # Errors
///
/// Returns [`Error::CertHashFetch`] when the server cannot be reached within `timeout` or
/// responds with anything but the expected JSON body.
pub async fn fetch_cert_info(host_port: &str, timeout: Duration) -> Result<CertInfo, Error> {
    fetch_cert_hash(&format!("http://{host_port}/v1/cert-hash"), timeout).await
}

pub(crate) async fn fetch_cert_hash(url: &str, timeout: Duration) -> Result<CertInfo, Error> {
    let failed = |reason: String| Error::CertHashFetch {
        url: url.to_owned(),
        reason,
    };
    let body = tokio::time::timeout(timeout, get(url))
        .await
        .map_err(|_| failed(format!("no response within {timeout:?}")))?
        .map_err(failed)?;
    let body: CertHashBody = serde_json::from_slice(&body)
        .map_err(|e| failed(format!("the response is not the expected JSON: {e}")))?;
    let cert_hash = parse_cert_hash(&body.hex).map_err(|e| failed(e.to_string()))?;
    Ok(CertInfo {
        cert_hash,
        quic_port: body.quic_port,
    })
}

/// Sends one HTTP/1.1 GET and returns the body of a 200 response.
async fn get(url: &str) -> Result<Bytes, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("invalid URL: {e}"))?;
    let authority = uri
        .authority()
        .ok_or_else(|| "the URL has no host".to_owned())?
        .clone();
    let stream = TcpStream::connect(authority.as_str())
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let request = http::Request::get(uri.path())
        .header(http::header::HOST, authority.as_str())
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("failed to read the response: {e}"))?
            .to_bytes();
        if status != http::StatusCode::OK {
            return Err(format!(
                "status {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ));
        }
        Ok(body)
    };
    tokio::select! {
        result = exchange => result,
        ended = connection => Err(match ended {
            Ok(()) => "the server closed the connection before the response".to_owned(),
            Err(e) => e.to_string(),
        }),
    }
}
