//! `POST /v1/publish`: publish the request body to one topic.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::Json;
use serde::Serialize;

use super::{AppState, Query};
use crate::commands::parse_class;
use crate::error::RequestError;
use crate::topic::Topic;

#[derive(Serialize)]
pub(super) struct Published {
    /// Cursor of the event; absent for telemetry.
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<String>,
    topic: String,
    class: &'static str,
}

pub(super) async fn publish(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<Json<Published>, RequestError> {
    let query = Query::parse(raw.as_deref(), &["topic", "event", "class"])?;
    let topic = query.one("topic")?.ok_or_else(|| {
        RequestError::InvalidParameter("missing query parameter \"topic\"".into())
    })?;
    let topic = Topic::parse(topic).map_err(RequestError::InvalidTopic)?;
    let class = parse_class(query.one("class")?)?;
    let name = query.one("event")?;

    let max = state.hub.config().max_payload_bytes;
    // A declared length over the maximum is rejected before any of the body is read.
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(RequestError::BodyTooLarge { max });
    }
    let payload = read_body(body, max).await?;
    let cursor = state.hub.publish(topic.clone(), class, name, payload)?;
    Ok(Json(Published {
        cursor: cursor.map(|c| c.to_string()),
        topic: topic.to_string(),
        class: class.as_str(),
    }))
}

/// Reads a request body of at most `max` bytes.
async fn read_body(body: Body, max: usize) -> Result<bytes::Bytes, RequestError> {
    use http_body_util::{BodyExt as _, LengthLimitError, Limited};
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(RequestError::BodyTooLarge { max })
        }
        Err(e) => Err(RequestError::InvalidPayload(format!(
            "failed to read the request body: {e}"
        ))),
    }
}
