//! The scenarios and what they share: opening many subscribers, summarising latency and
//! printing results.

pub mod fanout;
pub mod idle;
pub mod storm;
pub mod telemetry;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use futures_util::stream::{FuturesUnordered, StreamExt as _};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::probe::{Shared, Tally};
use crate::procfs::round3;
use crate::targets::{self, Context, Order};

/// Percentiles of publish-to-deliver latency, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub samples: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn from_histogram(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        let ms = |micros: u64| round3(micros as f64 / 1000.0);
        Self {
            samples: histogram.len(),
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
        }
    }
}

/// Outcome of opening the connections of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Connecting {
    pub requested: usize,
    pub opened: usize,
    pub failed: usize,
    pub seconds: f64,
    /// Connections opened and subscribed per second of the connecting phase.
    pub per_second: f64,
    pub first_error: Option<String>,
}

/// The readers of the open subscribers, and how opening them went.
pub struct Subscribers {
    pub readers: Vec<JoinHandle<(Tally, Option<String>)>>,
    pub connecting: Connecting,
}

/// How many subscribers to open and how.
pub struct Opening {
    pub count: usize,
    /// Connections opened at the same time.
    pub concurrency: usize,
    pub order: Order,
    /// Whether no new connection starts after the first failure.
    pub stop_on_error: bool,
}

/// Opens the subscribers that `opening` specifies, the `n`th on `filter(n)`.
pub async fn open_subscribers(
    ctx: &Arc<Context>,
    shared: &Arc<Shared>,
    cancel: &CancellationToken,
    opening: Opening,
    filter: impl Fn(usize) -> String,
) -> Subscribers {
    let Opening {
        count,
        concurrency,
        order,
        stop_on_error,
    } = opening;
    let started = Instant::now();
    let mut connecting = Connecting {
        requested: count,
        ..Connecting::default()
    };
    let mut readers = Vec::with_capacity(count);
    let mut pending = FuturesUnordered::new();
    let mut next = 0;
    loop {
        let stopped = stop_on_error && connecting.failed > 0;
        while !stopped && next < count && pending.len() < concurrency.max(1) {
            let ctx = ctx.clone();
            let shared = shared.clone();
            let cancel = cancel.clone();
            let filter = filter(next);
            pending.push(
                async move { targets::subscribe(&ctx, &filter, order, shared, cancel).await },
            );
            next += 1;
        }
        let Some(opened) = pending.next().await else {
            break;
        };
        match opened {
            Ok(reader) => {
                readers.push(tokio::spawn(reader));
                connecting.opened += 1;
            }
            Err(e) => {
                connecting.failed += 1;
                connecting
                    .first_error
                    .get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    connecting.seconds = round3(seconds);
    connecting.per_second = round3(connecting.opened as f64 / seconds.max(1e-9));
    Subscribers {
        readers,
        connecting,
    }
}

/// Counts of all subscribers of a run, summed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub received: u64,
    pub duplicates: u64,
    pub gaps: u64,
    /// Subscribers whose connection ended before the run stopped it.
    pub ended_early: u64,
    pub first_end_reason: Option<String>,
}

/// Stops the readers and sums their tallies.
pub async fn collect(
    readers: Vec<JoinHandle<(Tally, Option<String>)>>,
    cancel: &CancellationToken,
) -> Totals {
    cancel.cancel();
    let mut totals = Totals::default();
    for reader in readers {
        let Ok((tally, ended)) = reader.await else {
            totals.ended_early += 1;
            totals
                .first_end_reason
                .get_or_insert_with(|| "a reader task panicked".to_owned());
            continue;
        };
        totals.received += tally.received;
        totals.duplicates += tally.duplicates;
        totals.gaps += tally.gaps;
        if let Some(reason) = ended {
            totals.ended_early += 1;
            totals.first_end_reason.get_or_insert(reason);
        }
    }
    totals
}

/// Prints the result as a table on stderr and as one JSON line on stdout, and writes the
/// JSON to `path` when given.
pub fn emit(result: &impl Serialize, table: &str, path: Option<&Path>) -> anyhow::Result<()> {
    eprintln!("{table}");
    let json = serde_json::to_string_pretty(result)?;
    println!("{}", serde_json::to_string(result)?);
    if let Some(path) = path {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, json + "\n")
            .map_err(|e| anyhow::anyhow!("failed to write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Today's date in UTC as `YYYY-MM-DD`.
pub fn today() -> String {
    let days = crate::probe::now_nanos() / 1_000_000_000 / 86_400;
    time::Date::from_julian_day(2_440_588 + days as i32)
        .map(|d| d.to_string())
        .unwrap_or_default()
}
