//! `GET /v1/poll`: long polling for clients that can hold neither a stream nor a socket.
//!
//! Each request subscribes from its cursor, returns what is already waiting, or else waits up
//! to the timeout for the first delivery. Telemetry that arrives during the wait is included;
//! between requests only the latest values survive, and they are sent on a poll without cursor.

use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, BytesMut};

use super::{AppState, Query};
use crate::commands::parse_filters;
use crate::cursor::Cursor;
use crate::error::RequestError;
use crate::hub::Delivery;
use crate::wire;

/// Wait of a poll without `timeout`, before the configured cap applies.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(25);

/// Maximum number of deliveries in one response.
const MAX_BATCH: usize = 1000;

pub(super) async fn poll(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, RequestError> {
    let query = Query::parse(raw.as_deref(), &["topic", "cursor", "timeout"])?;
    let filters = parse_filters(&query.all("topic"))?;
    let cursor = query.one("cursor")?.map(str::parse::<Cursor>).transpose()?;
    let timeout = match query.one("timeout")? {
        None => DEFAULT_TIMEOUT,
        Some(text) => text
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::from_secs_f64(s.min(86_400.0)))
            .ok_or_else(|| {
                RequestError::InvalidParameter(format!(
                    "invalid timeout {:?}: give a number of seconds, 0 or more",
                    text.chars().take(32).collect::<String>()
                ))
            })?,
    }
    .min(state.config.poll_max_timeout);

    // A poller resuming in this epoch already has the latest telemetry; any other starts over.
    let fresh = cursor.is_none_or(|c| c.epoch != state.hub.epoch());
    let mut subscription = state.hub.subscribe_with(filters, cursor, fresh)?;
    let mut next = subscription.start();

    let mut batch = Vec::new();
    if let Some(first) = subscription.try_recv() {
        batch.push(first);
    } else {
        tokio::select! {
            first = subscription.recv() => batch.push(first),
            _ = tokio::time::sleep(timeout) => {}
            _ = state.shutdown.cancelled() => {}
        }
    }
    while batch.len() < MAX_BATCH {
        match subscription.try_recv() {
            Some(delivery) => batch.push(delivery),
            None => break,
        }
    }

    // The events array is spliced together from each message's cached JSON envelope.
    let mut events = BytesMut::new();
    let mut resync = None;
    for delivery in &batch {
        match delivery {
            Delivery::Message(message) => {
                if let Some(c) = message.cursor {
                    next = c;
                }
                if !events.is_empty() {
                    events.put_u8(b',');
                }
                events.put_slice(&wire::json(message));
            }
            Delivery::Resync { cursor, reason } => {
                next = *cursor;
                resync = Some(reason.as_str());
            }
        }
    }
    let mut body = BytesMut::with_capacity(events.len() + 96);
    body.put_slice(format!("{{\"cursor\":\"{next}\"").as_bytes());
    if let Some(reason) = resync {
        body.put_slice(format!(",\"resync\":\"{reason}\"").as_bytes());
    }
    body.put_slice(b",\"events\":[");
    body.put_slice(&events);
    body.put_slice(b"]}");

    let mut response = body.freeze().into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
