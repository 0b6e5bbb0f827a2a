//! Idle connections: each keeps one subscription and receives nothing, and the server's
//! memory per connection is read before and after they open.
//!
//! The run opens connections until it reaches `--connections` or one fails, and reports
//! where it stopped and why: a file descriptor limit, the ephemeral port range or the
//! server refusing more.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{collect, emit, open_subscribers, today, Connecting, Opening};
use crate::probe::Shared;
use crate::procfs::{resident_kib, round3};
use crate::targets::{http_sender, Context, Order, Target};
use crate::Common;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// hubcast transport to hold connections on.
    #[arg(long, value_enum)]
    target: Target,

    #[command(flatten)]
    common: Common,

    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,

    /// hubcast's TCP address, to read the heap in use from /metrics; defaults to
    /// `--publish`, or `--server` for the TCP targets.
    #[arg(long, value_name = "HOST:PORT")]
    metrics: Option<SocketAddr>,

    /// Connections opened at the same time.
    #[arg(long, value_name = "COUNT", default_value_t = 64)]
    connect_concurrency: usize,

    /// Seconds to wait before each memory reading, so the server settles.
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
    settle: f64,
}

/// Server memory at one moment.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Memory {
    pub rss_kib: u64,
    pub heap_bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct IdleResult {
    pub scenario: &'static str,
    pub date: String,
    pub target: Target,
    pub label: Option<String>,
    pub connecting: Connecting,
    /// The error that stopped the run before `requested`, when one did.
    pub stopped_by: Option<String>,
    pub open_file_limit: Option<u64>,
    pub before: Memory,
    pub after: Memory,
    pub rss_per_connection_kib: Option<f64>,
    pub heap_per_connection_kib: Option<f64>,
    pub load_generator_rss_per_connection_kib: f64,
    pub failure: Option<String>,
}

pub async fn run(args: Args) -> anyhow::Result<bool> {
    if !args.target.is_hubcast() {
        bail!(
            "invalid --target {}: idle runs measure hubcast's transports only",
            args.target.name()
        );
    }
    let Some(pid) = args.common.pid else {
        bail!("missing --pid: the idle scenario measures the server's memory");
    };
    let publish = args.common.publish.unwrap_or(args.common.server);
    let metrics = args.metrics.or(if args.target.uses_quic() {
        args.common.publish
    } else {
        Some(args.common.server)
    });
    let ctx = Arc::new(Context::new(args.target, args.common.server, publish)?);
    let shared = Arc::new(Shared::new());
    let cancel = CancellationToken::new();
    let settle = Duration::from_secs_f64(args.settle.max(0.0));

    // Every TCP connection takes a descriptor on both sides. Headroom is kept so the server
    // can still accept the request for /metrics after the last connection.
    let mut stopped_by = None;
    let mut requested = args.connections;
    if !args.target.uses_quic() {
        let room = descriptors_left(pid).min(descriptors_left(std::process::id()));
        if let Some(room) = room.filter(|room| *room < requested) {
            requested = room;
            stopped_by = Some(format!(
                "open file limit: the server or the load generator has room for {room} more connections, \
                 keeping {DESCRIPTOR_HEADROOM} descriptors spare (raise the hard limit with \
                 `ulimit -Hn` as root for more)"
            ));
        }
    }
    let before = memory(pid, metrics, settle).await?;
    let own_before = resident_kib(std::process::id()).unwrap_or(0);
    let subscribers = open_subscribers(
        &ctx,
        &shared,
        &cancel,
        Opening {
            count: requested,
            concurrency: args.connect_concurrency,
            order: Order::Sequence,
            stop_on_error: true,
        },
        |n| format!("idle/{n}"),
    )
    .await;
    let after = memory(pid, metrics, settle).await?;
    let own_after = resident_kib(std::process::id()).unwrap_or(0);
    let mut connecting = subscribers.connecting.clone();
    // The run asked for `--connections`, even where the descriptor limit cut it short.
    connecting.requested = args.connections;
    let opened = connecting.opened.max(1) as f64;
    let per = |before: u64, after: u64, unit: f64| {
        round3(after.saturating_sub(before) as f64 / unit / opened)
    };
    let rss_per_connection_kib = Some(per(before.rss_kib, after.rss_kib, 1.0));
    let heap_per_connection_kib = before
        .heap_bytes
        .zip(after.heap_bytes)
        .map(|(b, a)| per(b, a, 1024.0));
    let stopped_by = connecting.first_error.clone().or(stopped_by);
    let totals = collect(subscribers.readers, &cancel).await;
    ctx.wait_closed().await;
    let failure = (connecting.opened == 0).then(|| "no connection opened".to_owned());
    let _ = totals;
    let result = IdleResult {
        scenario: "idle",
        date: today(),
        target: args.target,
        label: args.common.label.clone(),
        stopped_by,
        open_file_limit: crate::open_file_limit(),
        before,
        after,
        rss_per_connection_kib,
        heap_per_connection_kib,
        load_generator_rss_per_connection_kib: per(own_before, own_after, 1.0),
        connecting,
        failure,
    };
    let table = format!(
        "idle {}: {} of {} open in {:.1} s; server per connection: RSS {:.1} KiB, heap {} KiB{}",
        result.target.name(),
        result.connecting.opened,
        result.connecting.requested,
        result.connecting.seconds,
        result.rss_per_connection_kib.unwrap_or(0.0),
        result
            .heap_per_connection_kib
            .map(|h| format!("{h:.1}"))
            .unwrap_or_else(|| "?".into()),
        result
            .stopped_by
            .as_deref()
            .map(|s| format!("\n  stopped by: {s}"))
            .unwrap_or_default()
    );
    emit(&result, &table, args.common.json.as_deref())?;
    Ok(result.failure.is_none())
}

async fn memory(pid: u32, metrics: Option<SocketAddr>, settle: Duration) -> anyhow::Result<Memory> {
    tokio::time::sleep(settle).await;
    let rss_kib = resident_kib(pid).with_context(|| format!("no process {pid} in /proc"))?;
    let heap_bytes = match metrics {
        Some(addr) => Some(metric(addr, "hubcast_heap_in_use_bytes").await?),
        None => None,
    };
    Ok(Memory {
        rss_kib,
        heap_bytes,
    })
}

/// Descriptors kept free in each process for the /metrics request and the runtime's own.
const DESCRIPTOR_HEADROOM: usize = 64;

/// Connections process `pid` can still open before its soft limit on open files, less
/// `DESCRIPTOR_HEADROOM`; `None` when /proc does not tell.
fn descriptors_left(pid: u32) -> Option<usize> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let limit: usize = line.split_whitespace().nth(3)?.parse().ok()?;
    let open = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some(limit.saturating_sub(open + DESCRIPTOR_HEADROOM))
}

/// Time allowed for reading /metrics.
const METRICS_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads one value from hubcast's Prometheus text at `GET /metrics`.
pub async fn metric(addr: SocketAddr, name: &str) -> anyhow::Result<u64> {
    tokio::time::timeout(METRICS_TIMEOUT, read_metric(addr, name))
        .await
        .with_context(|| format!("reading http://{addr}/metrics timed out"))?
}

async fn read_metric(addr: SocketAddr, name: &str) -> anyhow::Result<u64> {
    let mut sender = http_sender(addr).await?;
    let request = http::Request::get("/metrics")
        .header(http::header::HOST, addr.to_string())
        .body(Full::<Bytes>::default())?;
    let response = sender.send_request(request).await?;
    let body = response.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&body);
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.trim().parse::<f64>().ok())?
        })
        .map(|value| value as u64)
        .with_context(|| format!("{name} is missing from http://{addr}/metrics"))
}
