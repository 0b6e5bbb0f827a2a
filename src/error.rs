//! Errors answered to clients, each mapped to its wire answer in one place.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::cursor::CursorError;
use crate::hub::{PublishError, SubscribeError};
use crate::topic::TopicError;

/// A request or command rejected because of the client's input.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("invalid topic: {0}")]
    InvalidTopic(#[source] TopicError),
    #[error("invalid filter: {0}")]
    InvalidFilter(#[source] TopicError),
    #[error(transparent)]
    InvalidCursor(#[from] CursorError),
    #[error("invalid class {0:?}: use \"event\" or \"telemetry\"")]
    InvalidClass(String),
    #[error("{0}")]
    InvalidPayload(String),
    #[error("{0}")]
    InvalidParameter(String),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Subscribe(#[from] SubscribeError),
    #[error("request body is larger than the maximum payload of {max} bytes")]
    BodyTooLarge { max: usize },
    #[error("{0}")]
    LimitExceeded(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("no subscription {0}")]
    UnknownSubscription(u64),
}

impl RequestError {
    /// Machine-readable code, the same on every transport.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidTopic(_) => "invalid_topic",
            Self::InvalidFilter(_) => "invalid_filter",
            Self::InvalidCursor(_) => "invalid_cursor",
            Self::InvalidClass(_) => "invalid_class",
            Self::InvalidPayload(_) => "invalid_payload",
            Self::InvalidParameter(_) => "invalid_parameter",
            Self::Publish(PublishError::PayloadTooLarge { .. }) | Self::BodyTooLarge { .. } => {
                "payload_too_large"
            }
            Self::Publish(PublishError::InvalidName { .. }) => "invalid_event_name",
            Self::Subscribe(SubscribeError::CursorAhead { .. }) => "invalid_cursor",
            Self::Subscribe(SubscribeError::TooManyFilters { .. }) => "limit_exceeded",
            Self::Subscribe(_) => "invalid_filter",
            Self::LimitExceeded(_) => "limit_exceeded",
            Self::Unsupported(_) => "unsupported",
            Self::UnknownSubscription(_) => "unknown_subscription",
        }
    }

    /// HTTP status of the rejection.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Publish(PublishError::PayloadTooLarge { .. }) | Self::BodyTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Self::LimitExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::UnknownSubscription(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'static str,
    message: &'a str,
}

impl IntoResponse for RequestError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        tracing::trace!(target: "hubcast::rejection", code = self.code(), %message);
        let body = ErrorBody {
            error: self.code(),
            message: &message,
        };
        (self.status(), axum::Json(body)).into_response()
    }
}

/// WebSocket close codes (RFC 6455 section 7.4).
pub mod close_code {
    /// Normal closure, the answer to a client's Close.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// A binary frame arrived where only JSON text is accepted.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A message was larger than the configured maximum.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The peer read too slowly: writes stalled past the write timeout. The reason names the
    /// cursor to resume from. Codes 4000-4999 are for applications (RFC 6455, 7.4.2).
    pub const TOO_SLOW: u16 = 4008;
}

/// WebTransport session and stream error codes sent by hubcast, as application error codes.
pub mod wt_code {
    /// A control-stream frame was longer than the configured maximum.
    pub const FRAME_TOO_LARGE: u32 = 0x10;
    /// The server is shutting down.
    pub const SHUTDOWN: u32 = 0x12;
    /// The client opened more bidirectional streams than a session allows.
    pub const STREAM_LIMIT: u32 = 0x13;
    /// The client read too slowly: a write stalled past the write timeout. The reason names the
    /// cursor to resume from.
    pub const TOO_SLOW: u32 = 0x14;
}
