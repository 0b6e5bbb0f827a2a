//! `GET /v1/events`: Server-Sent Events (WHATWG HTML Living Standard, section 9.2).

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::stream;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{AppState, Query};
use crate::commands::parse_filters;
use crate::cursor::Cursor;
use crate::error::RequestError;
use crate::hub::{Delivery, Subscription};
use crate::wire;

/// Sent first, so clients and proxies see the stream open before the first event.
const OPENING: &[u8] = b": hubcast\n\n";
const HEARTBEAT: &[u8] = b":\n\n";

pub(super) async fn events(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, RequestError> {
    let query = Query::parse(raw.as_deref(), &["topic", "cursor", "format"])?;
    let filters = parse_filters(&query.all("topic"))?;
    let raw_format = match query.one("format")? {
        None | Some("raw") => true,
        Some("json") => false,
        Some(other) => {
            return Err(RequestError::InvalidParameter(format!(
                "invalid format {:?}: use \"raw\" or \"json\"",
                other.chars().take(32).collect::<String>()
            )))
        }
    };
    // A reconnecting EventSource repeats the original URL and adds Last-Event-ID, which is the
    // newer position, so the header wins over the query parameter.
    let last_event_id =
        match headers.get("last-event-id").map(|v| v.to_str()) {
            None => None,
            Some(Ok(value)) => Some(value).filter(|v| !v.is_empty()),
            Some(Err(_)) => return Err(RequestError::InvalidParameter(
                "invalid Last-Event-ID header: not visible ASCII; send a cursor exactly as the \
                 server sent it"
                    .into(),
            )),
        };
    let cursor = last_event_id
        .or(query.one("cursor")?)
        .map(str::parse::<Cursor>)
        .transpose()?;
    let subscription = state.hub.subscribe(filters, cursor)?;

    let mut heartbeat = tokio::time::interval_at(
        Instant::now() + state.config.heartbeat,
        state.config.heartbeat,
    );
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let stream = EventStream {
        subscription,
        heartbeat,
        shutdown: state.shutdown.clone(),
        raw: raw_format,
        opened: false,
    };
    let body = Body::from_stream(stream::unfold(stream, |mut s| async move {
        let chunk = s.next().await?;
        Some((Ok::<Bytes, Infallible>(chunk), s))
    }));

    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

struct EventStream {
    subscription: Subscription,
    heartbeat: Interval,
    shutdown: CancellationToken,
    raw: bool,
    opened: bool,
}

impl EventStream {
    /// The next chunk to write: one event, a heartbeat, or `None` at shutdown.
    async fn next(&mut self) -> Option<Bytes> {
        if !self.opened {
            self.opened = true;
            return Some(Bytes::from_static(OPENING));
        }
        tokio::select! {
            delivery = self.subscription.recv() => Some(self.encode(&delivery)),
            _ = self.heartbeat.tick() => Some(Bytes::from_static(HEARTBEAT)),
            _ = self.shutdown.cancelled() => None,
        }
    }

    fn encode(&mut self, delivery: &Delivery) -> Bytes {
        // Any write resets the heartbeat, which exists only to show the connection is alive.
        self.heartbeat.reset();
        match delivery {
            Delivery::Message(message) if self.raw => wire::sse_raw(message),
            Delivery::Message(message) => wire::sse_json(message),
            Delivery::Resync { cursor, reason } => wire::sse_resync(*cursor, *reason, self.raw),
        }
    }
}
