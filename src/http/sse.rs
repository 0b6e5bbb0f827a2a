//! `GET /v1/events`: Server-Sent Events (WHATWG HTML Living Standard, section 9.2).

use std::convert::Infallible;
use std::pin::Pin;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::stream;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::WaitForCancellationFutureOwned;

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
        shutdown: Box::pin(state.shutdown.clone().cancelled_owned()),
        raw: raw_format,
        opened: false,
        wrote: false,
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
    /// Created once: a `cancelled()` future made per delivery would register with, and leave,
    /// the token's waiter list each time, under a lock that every connection shares.
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    raw: bool,
    opened: bool,
    /// Whether a delivery went out since the last heartbeat tick.
    wrote: bool,
}

impl EventStream {
    /// The next chunk to write: one event, a heartbeat, or `None` at shutdown.
    async fn next(&mut self) -> Option<Bytes> {
        if !self.opened {
            self.opened = true;
            return Some(Bytes::from_static(OPENING));
        }
        loop {
            tokio::select! {
                delivery = self.subscription.recv() => {
                    self.wrote = true;
                    return Some(self.encode(&delivery));
                }
                // The heartbeat only shows that the connection is alive, so a period with a
                // delivery in it needs none. Skipping the tick costs less than resetting the
                // timer on every delivery.
                _ = self.heartbeat.tick() => {
                    if !std::mem::take(&mut self.wrote) {
                        return Some(Bytes::from_static(HEARTBEAT));
                    }
                }
                _ = &mut self.shutdown => return None,
            }
        }
    }

    fn encode(&mut self, delivery: &Delivery) -> Bytes {
        match delivery {
            Delivery::Message(message) if self.raw => wire::sse_raw(message),
            Delivery::Message(message) => wire::sse_json(message),
            Delivery::Resync { cursor, reason } => wire::sse_resync(*cursor, *reason, self.raw),
        }
    }
}
