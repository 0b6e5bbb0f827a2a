//! Telemetry: WebTransport sessions publish datagrams that subscriber sessions receive.
//!
//! Publisher `p` sends to `telemetry/<p mod S>/<p>` and subscriber `s` subscribes to
//! `telemetry/<s>/#`, where S is the number of subscribers, so each datagram reaches exactly
//! one subscriber and the load spreads evenly. Telemetry may be dropped by design (datagrams
//! are unreliable and the hub conflates a lagging subscriber's values), so losses are
//! reported and do not fail the run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{collect, emit, open_subscribers, today, Connecting, Latency, Opening, Totals};
use crate::probe::{payload, take_latency, Shared};
use crate::procfs::{round3, ProcessUsage, Sampler};
use crate::targets::{hubcast_connector, Context, Order, Target};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// hubcast's QUIC address.
    #[arg(long, value_name = "HOST:PORT")]
    server: std::net::SocketAddr,

    /// Publishing sessions.
    #[arg(long, default_value_t = 1000)]
    publishers: usize,

    /// Subscribing sessions.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,

    /// Datagrams per second of each publisher, or `max` to send as fast as each session
    /// can.
    #[arg(long, default_value = "100")]
    rate: super::fanout::Rate,

    /// Payload size of each datagram, in bytes (at least 35, the stamp).
    #[arg(long, value_name = "BYTES", default_value_t = 100)]
    size: usize,

    /// Seconds of publishing.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    duration: f64,

    /// Sessions opened at the same time.
    #[arg(long, value_name = "COUNT", default_value_t = 64)]
    connect_concurrency: usize,

    /// Process id of the server, to sample its memory and CPU from /proc.
    #[arg(long, value_name = "PID")]
    pid: Option<u32>,

    /// Also write the result as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct TelemetryResult {
    pub scenario: &'static str,
    pub date: String,
    pub publishers: usize,
    pub subscribers: usize,
    pub size: usize,
    /// Datagrams per second of each publisher; absent when sending as fast as possible.
    pub rate_per_publisher: Option<f64>,
    pub seconds: f64,
    pub connecting: Connecting,
    pub publishers_connected: usize,
    pub sent: u64,
    /// Sends the client refused, such as when its datagram buffer was full.
    pub send_failed: u64,
    pub sent_per_second: f64,
    pub delivered: u64,
    pub delivered_per_second: f64,
    pub lost: u64,
    pub loss_percent: f64,
    pub latency: Latency,
    pub totals: Totals,
    pub server: Option<ProcessUsage>,
    pub load_generator: Option<ProcessUsage>,
    pub failure: Option<String>,
}

/// Datagrams a publisher sends back to back before it lets other tasks run, when sending
/// as fast as it can.
const MAX_RATE_BURST: u32 = 16;
/// Time after publishing stops for the last datagrams to arrive.
const SETTLE: Duration = Duration::from_secs(1);

pub async fn run(args: Args) -> anyhow::Result<bool> {
    if args.publishers == 0 || args.subscribers == 0 {
        bail!("invalid --publishers or --subscribers 0: give at least 1 of each");
    }
    if args.size < crate::probe::STAMP_LEN {
        bail!("invalid --size {}: give at least 35 bytes", args.size);
    }
    if !(args.duration.is_finite() && args.duration > 0.0) {
        bail!("invalid --duration {}: give seconds above 0", args.duration);
    }
    // Subscribers and publishers both use WebTransport, so `publish` is unused.
    let ctx = Arc::new(Context::new(Target::HubcastWt, args.server, args.server)?);
    let shared = Arc::new(Shared::new());
    let cancel = CancellationToken::new();
    let subscribers = open_subscribers(
        &ctx,
        &shared,
        &cancel,
        Opening {
            count: args.subscribers,
            concurrency: args.connect_concurrency,
            order: Order::Unordered,
            stop_on_error: true,
        },
        |s| format!("telemetry/{s}/#"),
    )
    .await;
    let mut connecting = subscribers.connecting.clone();

    let connector = hubcast_connector(Some(args.server), None)?;
    let started = Instant::now();
    let mut clients = Vec::with_capacity(args.publishers);
    let mut first_error = None;
    for _ in 0..args.publishers {
        match connector.connect().await {
            Ok(client) => clients.push(client),
            Err(e) => {
                first_error = Some(format!("publisher failed to connect: {e:#}"));
                break;
            }
        }
    }
    connecting.requested += args.publishers;
    connecting.opened += clients.len();
    connecting.failed += args.publishers - clients.len();
    let total_seconds = connecting.seconds + started.elapsed().as_secs_f64();
    connecting.seconds = round3(total_seconds);
    connecting.per_second = round3(connecting.opened as f64 / total_seconds.max(1e-9));
    if connecting.first_error.is_none() {
        connecting.first_error = first_error;
    }

    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let server = args.pid.and_then(Sampler::start);
    let load = Sampler::start(std::process::id());
    take_latency();
    let duration = Duration::from_secs_f64(args.duration);
    let started = Instant::now();
    let delivered_before = shared.delivered();
    let mut tasks = Vec::with_capacity(clients.len());
    for (p, client) in clients.iter().enumerate() {
        let client = client.clone();
        let topic = format!("telemetry/{}/{p}", p % args.subscribers);
        let (sent, failed) = (sent.clone(), failed.clone());
        let (size, rate) = (args.size, args.rate);
        tasks.push(tokio::spawn(async move {
            let mut seq = 0u64;
            let period = match rate {
                super::fanout::Rate::PerSecond(r) => Some(Duration::from_secs_f64(1.0 / r)),
                super::fanout::Rate::Max => None,
            };
            // Spread the publishers' first sends over one period.
            if let Some(period) = period {
                let offset = period.mul_f64(p as f64 / 997.0 % 1.0);
                tokio::time::sleep(offset).await;
            }
            let begin = Instant::now();
            while begin.elapsed() < duration {
                match client.publish_telemetry(&topic, &payload(seq, size)).await {
                    Ok(()) => sent.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
                seq += 1;
                match period {
                    Some(period) => {
                        let due = begin + period.mul_f64(seq as f64);
                        tokio::time::sleep_until(due.into()).await;
                    }
                    None if seq % u64::from(MAX_RATE_BURST) == 0 => tokio::task::yield_now().await,
                    None => {}
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let delivered_while_sending = shared.delivered() - delivered_before;
    tokio::time::sleep(SETTLE).await;
    let latency = Latency::from_histogram(&take_latency());
    let server = server.map(Sampler::finish);
    let load = load.map(Sampler::finish);
    for client in &clients {
        client.close().await;
    }
    connector.wait_idle(Duration::from_secs(1)).await;
    let totals = collect(subscribers.readers, &cancel).await;
    ctx.wait_closed().await;
    let sent = sent.load(Ordering::Relaxed);
    let lost = sent.saturating_sub(totals.received);
    let result = TelemetryResult {
        scenario: "telemetry",
        date: today(),
        publishers: args.publishers,
        subscribers: args.subscribers,
        size: args.size,
        rate_per_publisher: match args.rate {
            super::fanout::Rate::PerSecond(r) => Some(r),
            super::fanout::Rate::Max => None,
        },
        seconds: round3(seconds),
        publishers_connected: clients.len(),
        connecting,
        sent,
        send_failed: failed.load(Ordering::Relaxed),
        sent_per_second: round3(sent as f64 / seconds),
        delivered: totals.received,
        delivered_per_second: round3(delivered_while_sending as f64 / seconds),
        lost,
        loss_percent: round3(100.0 * lost as f64 / (sent.max(1)) as f64),
        latency,
        totals,
        server,
        load_generator: load,
        failure: None,
    };
    let mut result = result;
    if result.connecting.failed > 0 {
        result.failure = Some(format!(
            "{} sessions failed to connect: {}",
            result.connecting.failed,
            result.connecting.first_error.clone().unwrap_or_default()
        ));
    }
    let table = format!(
        "telemetry {} publishers -> {} subscribers ({} B): sent {:.0}/s, delivered {:.0}/s, \
         lost {} ({:.2} %), p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms{}",
        result.publishers_connected,
        result.subscribers,
        result.size,
        result.sent_per_second,
        result.delivered_per_second,
        result.lost,
        result.loss_percent,
        result.latency.p50_ms,
        result.latency.p99_ms,
        result.latency.p999_ms,
        result
            .failure
            .as_deref()
            .map(|f| format!("\n  FAILED: {f}"))
            .unwrap_or_default()
    );
    emit(&result, &table, args.json.as_deref())?;
    Ok(result.failure.is_none())
}
