//! Server-wide counters, exported in the Prometheus text format at `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::hub::Hub;

/// Counters kept by the transports. The hub keeps its own ([`crate::hub::Stats`]).
#[derive(Default, Debug)]
pub struct Metrics {
    /// Connections closed because a write stalled past the write timeout.
    pub disconnected_slow: AtomicU64,
    /// Connections closed because the peer stopped answering heartbeats.
    pub disconnected_dead: AtomicU64,
    /// Client datagrams dropped: malformed, for an unknown session or alias, or refused.
    pub datagrams_dropped: AtomicU64,
    /// Telemetry sent as a datagram.
    pub datagrams_sent: AtomicU64,
    /// Telemetry that did not fit a datagram and went on a stream instead.
    pub datagrams_oversized: AtomicU64,
    /// WebTransport sessions open now.
    pub sessions_open: AtomicU64,
    /// WebTransport sessions closed for opening more streams than allowed.
    pub sessions_stream_limit: AtomicU64,
}

/// Shared handle to the counters.
pub type SharedMetrics = Arc<Metrics>;

impl Metrics {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Renders every counter, the hub's included, in the Prometheus text format 0.0.4.
    pub fn render(&self, hub: &Hub) -> String {
        let stats = hub.stats();
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let rows: [(&str, &str, &str, u64); 15] = [
            (
                "hubcast_events_published_total",
                "counter",
                "Events accepted by the hub.",
                stats.events_published,
            ),
            (
                "hubcast_telemetry_published_total",
                "counter",
                "Telemetry values accepted by the hub.",
                stats.telemetry_published,
            ),
            (
                "hubcast_subscribers",
                "gauge",
                "Live subscriptions on every transport.",
                stats.subscribers,
            ),
            (
                "hubcast_subscribers_lagged_total",
                "counter",
                "Times a subscriber's queue was full and it fell back to history.",
                stats.lagged,
            ),
            (
                "hubcast_telemetry_conflated_total",
                "counter",
                "Telemetry values replaced by a newer one in a full queue.",
                stats.conflated,
            ),
            (
                "hubcast_resyncs_total",
                "counter",
                "Resync signals sent.",
                stats.resyncs,
            ),
            (
                "hubcast_telemetry_not_retained_total",
                "counter",
                "Telemetry values not kept as latest because a retained bound was reached.",
                stats.not_retained,
            ),
            (
                "hubcast_disconnected_slow_total",
                "counter",
                "Connections closed because a write stalled past the write timeout.",
                load(&self.disconnected_slow),
            ),
            (
                "hubcast_disconnected_dead_total",
                "counter",
                "Connections closed because the peer stopped answering heartbeats.",
                load(&self.disconnected_dead),
            ),
            (
                "hubcast_datagrams_dropped_total",
                "counter",
                "Client datagrams dropped as malformed, unknown or refused.",
                load(&self.datagrams_dropped),
            ),
            (
                "hubcast_datagrams_sent_total",
                "counter",
                "Telemetry sent as datagrams.",
                load(&self.datagrams_sent),
            ),
            (
                "hubcast_datagrams_oversized_total",
                "counter",
                "Telemetry too large for a datagram, sent on a stream.",
                load(&self.datagrams_oversized),
            ),
            (
                "hubcast_webtransport_sessions",
                "gauge",
                "WebTransport sessions open.",
                load(&self.sessions_open),
            ),
            (
                "hubcast_webtransport_stream_limit_total",
                "counter",
                "Sessions closed for opening too many streams.",
                load(&self.sessions_stream_limit),
            ),
            (
                "hubcast_history_head",
                "gauge",
                "Sequence number of the newest event.",
                hub.head().seq,
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, value) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        if let Some(bytes) = crate::memory::heap_in_use() {
            let name = "hubcast_heap_in_use_bytes";
            let help = "Heap bytes allocated and not yet freed, as glibc reports them.";
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {bytes}"
            );
        }
        out
    }
}
