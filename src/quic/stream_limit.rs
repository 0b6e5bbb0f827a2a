//! Stream limits that start small and grow with the streams a connection actually uses.
//!
//! quinn 0.11 keeps a map entry for every stream the peer may open. With 256 bidirectional and
//! 256 unidirectional streams allowed, those maps take about 35 KiB per connection (measured
//! with heaptrack on idle WebTransport sessions, which use two streams each). Each connection
//! therefore starts with a small limit and doubles it, up to the maximum, once the peer has
//! opened more than half as many streams as the limit allows.
//!
//! The count is of streams accepted over the life of the connection, not of streams open now.
//! quinn does not report when it frees a stream, and a stream stays open after the server is
//! done with it until the peer finishes or resets its side. Counting every accepted stream
//! means the limit has always doubled before the peer can use it all, so a peer is held back
//! only at [`MAX_STREAMS`] concurrent streams, as with a fixed limit. A connection that serves
//! many requests in turn still grows to the maximum. A client that opens streams faster than
//! the limit grows waits for the server's MAX_STREAMS frame (RFC 9000, 4.6), one round trip
//! per doubling.

use std::sync::atomic::{AtomicU32, Ordering};

/// Bidirectional streams a new connection lets its peer open at once. An idle WebTransport
/// session uses two: its CONNECT stream and its control stream.
pub(super) const INITIAL_BIDI_STREAMS: u32 = 8;
/// Unidirectional streams a new connection lets its peer open at once: room for an HTTP/3
/// client's control stream and two QPACK streams, and as many again.
pub(super) const INITIAL_UNI_STREAMS: u32 = 6;
/// Maximum concurrent streams of each direction a connection may grow to.
pub(super) const MAX_STREAMS: u32 = 256;

/// Direction of a stream the peer opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Direction {
    Bidi,
    Uni,
}

/// Accepted-stream counts and current limits of one connection.
pub(super) struct StreamLimits {
    quic: quinn::Connection,
    bidi: Counter,
    uni: Counter,
}

struct Counter {
    accepted: AtomicU32,
    limit: AtomicU32,
}

impl Counter {
    fn new(limit: u32) -> Self {
        Self {
            accepted: AtomicU32::new(0),
            limit: AtomicU32::new(limit),
        }
    }
}

impl StreamLimits {
    /// Tracks the streams of `quic`, whose transport configuration granted the initial limits.
    pub(super) fn new(quic: quinn::Connection) -> Self {
        Self {
            quic,
            bidi: Counter::new(INITIAL_BIDI_STREAMS),
            uni: Counter::new(INITIAL_UNI_STREAMS),
        }
    }

    /// Counts a stream the peer opened, and doubles the limit of its direction once the
    /// accepted streams exceed half of it.
    pub(super) fn accepted(&self, direction: Direction) {
        let counter = match direction {
            Direction::Bidi => &self.bidi,
            Direction::Uni => &self.uni,
        };
        let accepted = counter.accepted.fetch_add(1, Ordering::Relaxed) + 1;
        let limit = counter.limit.load(Ordering::Relaxed);
        if accepted.saturating_mul(2) <= limit || limit >= MAX_STREAMS {
            return;
        }
        let raised = (limit * 2).min(MAX_STREAMS);
        // Only the caller that wins the exchange sends the new limit.
        let won = counter
            .limit
            .compare_exchange(limit, raised, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
        if !won {
            return;
        }
        tracing::debug!(
            conn = self.quic.stable_id(),
            ?direction,
            accepted,
            limit = raised,
            "raising the stream limit"
        );
        match direction {
            Direction::Bidi => self.quic.set_max_concurrent_bi_streams(raised.into()),
            Direction::Uni => self.quic.set_max_concurrent_uni_streams(raised.into()),
        }
    }
}
