//! Connection storm: workers open a connection, subscribe, and close it, again and again,
//! so the run measures how many new connections per second the server completes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{emit, today};
use crate::probe::Shared;
use crate::procfs::{round3, ProcessUsage, Sampler};
use crate::targets::{self, Context, Order, Target};
use crate::Common;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Server and protocol under test.
    #[arg(long, value_enum)]
    target: Target,

    #[command(flatten)]
    common: Common,

    /// Seconds to run.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    duration: f64,

    /// Connections in progress at the same time.
    #[arg(long, value_name = "COUNT", default_value_t = 64)]
    concurrency: usize,
}

#[derive(Debug, Serialize)]
pub struct StormResult {
    pub scenario: &'static str,
    pub date: String,
    pub target: Target,
    pub label: Option<String>,
    pub concurrency: usize,
    pub seconds: f64,
    /// Connections that opened, subscribed and closed.
    pub completed: u64,
    pub failed: u64,
    pub per_second: f64,
    pub first_error: Option<String>,
    pub server: Option<ProcessUsage>,
    pub load_generator: Option<ProcessUsage>,
    pub failure: Option<String>,
}

pub async fn run(args: Args) -> anyhow::Result<bool> {
    if !(args.duration.is_finite() && args.duration > 0.0) {
        bail!("invalid --duration {}: give seconds above 0", args.duration);
    }
    if args.concurrency == 0 {
        bail!("invalid --concurrency 0: give at least 1");
    }
    let publish = args.common.publish.unwrap_or(args.common.server);
    let ctx = Arc::new(Context::new(args.target, args.common.server, publish)?);
    let shared = Arc::new(Shared::new());
    let completed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let server = args.common.pid.and_then(Sampler::start);
    let load = Sampler::start(std::process::id());
    let duration = Duration::from_secs_f64(args.duration);
    let started = Instant::now();
    let mut workers = Vec::with_capacity(args.concurrency);
    for worker in 0..args.concurrency {
        let ctx = ctx.clone();
        let shared = shared.clone();
        let (completed, failed) = (completed.clone(), failed.clone());
        let first_error = first_error.clone();
        workers.push(tokio::spawn(async move {
            let filter = format!("storm/{worker}");
            while started.elapsed() < duration {
                let cancel = CancellationToken::new();
                let opened = targets::subscribe(
                    &ctx,
                    &filter,
                    Order::Sequence,
                    shared.clone(),
                    cancel.clone(),
                )
                .await;
                match opened {
                    Ok(reader) => {
                        cancel.cancel();
                        reader.await;
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        first_error
                            .lock()
                            .unwrap()
                            .get_or_insert_with(|| format!("{e:#}"));
                        // Back off a little so a refusing server is not spun against.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }));
    }
    for worker in workers {
        let _ = worker.await;
    }
    ctx.wait_closed().await;
    let seconds = started.elapsed().as_secs_f64();
    let completed = completed.load(Ordering::Relaxed);
    let failed = failed.load(Ordering::Relaxed);
    let first_error = first_error.lock().unwrap().take();
    let result = StormResult {
        scenario: "storm",
        date: today(),
        target: args.target,
        label: args.common.label.clone(),
        concurrency: args.concurrency,
        seconds: round3(seconds),
        completed,
        failed,
        per_second: round3(completed as f64 / seconds),
        first_error,
        server: server.map(Sampler::finish),
        load_generator: load.map(Sampler::finish),
        failure: (completed == 0).then(|| "no connection completed".to_owned()),
    };
    let table = format!(
        "storm {}: {} connections in {:.1} s ({:.0}/s), {} failed{}",
        result.target.name(),
        result.completed,
        result.seconds,
        result.per_second,
        result.failed,
        result
            .first_error
            .as_deref()
            .map(|e| format!("\n  first error: {e}"))
            .unwrap_or_default()
    );
    emit(&result, &table, args.common.json.as_deref())?;
    Ok(result.failure.is_none())
}
