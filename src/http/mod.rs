//! HTTP routes, shared by the TCP listener and HTTP/3.
//!
//! One axum router serves both: the TCP listener hands it requests through hyper, and the QUIC
//! side converts each HTTP/3 request into the same `Request` type. A route therefore behaves
//! identically on both, except `/v1/ws`, which needs an HTTP/1.1 upgrade.

mod poll;
mod publish;
mod serve;
mod sse;
mod static_files;
pub mod timed;
mod ws;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::RequestError;
use crate::hub::Hub;

/// State every route handler receives.
#[derive(Clone)]
pub struct AppState {
    pub hub: Hub,
    pub config: Arc<Config>,
    pub cert: Arc<CertInfo>,
    pub metrics: crate::metrics::SharedMetrics,
    /// Cancelled when the server shuts down; long-lived responses end on it.
    pub shutdown: CancellationToken,
}

/// Body of the `/v1/cert-hash` response.
#[derive(Clone, Debug, Serialize)]
pub struct CertInfo {
    pub algorithm: &'static str,
    pub hex: String,
    pub base64: String,
    /// Whether the certificate was generated, so a browser accepts it only by this hash.
    pub generated: bool,
    /// WebTransport URL path.
    pub webtransport_path: &'static str,
    /// UDP port of the first QUIC listener.
    pub quic_port: u16,
}

pub use serve::serve;

/// Marks a request that arrived over HTTP/3.
#[derive(Clone, Copy, Debug)]
pub struct Http3;

/// Builds the router with every route.
pub fn router(state: AppState, alt_svc: Option<HeaderValue>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/cert-hash", get(cert_hash))
        .route("/metrics", get(metrics))
        .route("/v1/publish", post(publish::publish))
        .route("/v1/events", get(sse::events))
        .route("/v1/poll", get(poll::poll))
        .route("/v1/ws", get(ws::upgrade))
        .route("/", get(static_files::index))
        .route("/{file}", get(static_files::file))
        .layer(middleware::from_fn_with_state(alt_svc, add_alt_svc))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(&state.hub),
    )
        .into_response()
}

async fn cert_hash(State(state): State<AppState>) -> Json<CertInfo> {
    Json((*state.cert).clone())
}

/// Advertises HTTP/3 on every TCP response (RFC 7838).
async fn add_alt_svc(
    State(alt_svc): State<Option<HeaderValue>>,
    request: Request<axum::body::Body>,
    next: Next,
) -> Response {
    let over_http3 = request.extensions().get::<Http3>().is_some();
    let mut response = next.run(request).await;
    if let (Some(value), false) = (alt_svc, over_http3) {
        response.headers_mut().insert(header::ALT_SVC, value);
    }
    response
}

/// Decodes one `application/x-www-form-urlencoded` component (`+` is a space), rejecting
/// bytes that do not form UTF-8 instead of replacing them.
fn decode_component(text: &str) -> Result<String, RequestError> {
    let spaced = text.replace('+', " ");
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(&spaced).collect();
    String::from_utf8(bytes).map_err(|_| {
        RequestError::InvalidParameter(format!(
            "query component {:?} is not UTF-8 once percent-decoded: percent-encode UTF-8 text",
            text.chars().take(64).collect::<String>()
        ))
    })
}

/// Query parameters as name and value pairs, with unknown names rejected.
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    /// Parses a query string, accepting only the names in `known`.
    pub(crate) fn parse(raw: Option<&str>, known: &[&str]) -> Result<Self, RequestError> {
        let mut pairs = Vec::new();
        for part in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            pairs.push((decode_component(name)?, decode_component(value)?));
        }
        if let Some((name, _)) = pairs.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            return Err(RequestError::InvalidParameter(format!(
                "unknown query parameter {:?}: this route accepts {}",
                name.chars().take(64).collect::<String>(),
                known.join(", ")
            )));
        }
        Ok(Self(pairs))
    }

    /// Returns every value of `name`.
    pub(crate) fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Returns the value of `name`, rejecting repeats.
    pub(crate) fn one(&self, name: &str) -> Result<Option<&str>, RequestError> {
        let values = self.all(name);
        match values.as_slice() {
            [] => Ok(None),
            [value] => Ok(Some(value)),
            _ => Err(RequestError::InvalidParameter(format!(
                "query parameter {name:?} given {} times: give it once",
                values.len()
            ))),
        }
    }
}
