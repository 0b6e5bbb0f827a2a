//! Fan-out: one publisher, many subscribers of one topic.
//!
//! With `--rate max`, the first phase runs closed-loop: the publisher keeps at most
//! `--window` events ahead of the deliveries, so the rate it reaches is the one the
//! subscribers keep up with. A second phase then publishes at a fixed fraction of that rate
//! (`--paced-fraction`, half by default) to measure latency without queueing. A numeric
//! `--rate` runs only the paced phase at that rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{collect, emit, open_subscribers, today, Connecting, Latency, Opening, Totals};
use crate::probe::{payload, take_latency, Shared};
use crate::procfs::{round3, ProcessUsage, Sampler};
use crate::targets::{Context, Order, Publisher, Target};
use crate::Common;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Server and protocol under test.
    #[arg(long, value_enum)]
    target: Target,

    #[command(flatten)]
    common: Common,

    /// Subscribers of the topic.
    #[arg(long, default_value_t = 10_000)]
    subscribers: usize,

    /// Payload size of each event, in bytes (at least 35, the stamp).
    #[arg(long, value_name = "BYTES", default_value_t = 100)]
    size: usize,

    /// Seconds of publishing in each phase.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    duration: f64,

    /// Events per second, or `max` for a closed-loop phase followed by a paced phase.
    #[arg(long, default_value = "max")]
    rate: Rate,

    /// Rate of the paced phase after a `max` phase, as a fraction of the maximum rate.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.5)]
    paced_fraction: f64,

    /// Events the closed-loop publisher may run ahead of the average subscriber.
    #[arg(long, value_name = "EVENTS", default_value_t = 32)]
    window: u64,

    /// Connections opened at the same time while subscribing.
    #[arg(long, value_name = "COUNT", default_value_t = 64)]
    connect_concurrency: usize,

    /// Seconds to wait for outstanding deliveries after publishing stops, once they stop
    /// making progress.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    drain_timeout: f64,
}

#[derive(Debug, Clone, Copy)]
pub enum Rate {
    Max,
    PerSecond(f64),
}

impl std::str::FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "max" {
            return Ok(Rate::Max);
        }
        match text.parse::<f64>() {
            Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(Rate::PerSecond(rate)),
            _ => Err(format!(
                "invalid rate {text:?}: give `max` or a number of events per second above 0"
            )),
        }
    }
}

/// One publishing phase.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: &'static str,
    /// The rate the publisher aimed at, in events per second; absent when closed-loop.
    pub target_rate: Option<f64>,
    pub seconds: f64,
    pub published: u64,
    pub published_per_second: f64,
    /// Deliveries counted while the phase published, per second.
    pub delivered_per_second: f64,
    pub latency: Latency,
}

#[derive(Debug, Serialize)]
pub struct FanoutResult {
    pub scenario: &'static str,
    pub date: String,
    pub target: Target,
    pub label: Option<String>,
    pub subscribers: usize,
    pub size: usize,
    pub connecting: Connecting,
    pub phases: Vec<Phase>,
    pub published: u64,
    /// Deliveries expected: every subscriber receives every event.
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub totals: Totals,
    pub server: Option<ProcessUsage>,
    pub load_generator: Option<ProcessUsage>,
    pub ok: bool,
    pub failure: Option<String>,
}

pub async fn run(args: Args) -> anyhow::Result<bool> {
    validate(&args)?;
    let publish = args.common.publish_addr(args.target)?;
    let ctx = Arc::new(Context::new(args.target, args.common.server, publish)?);
    let shared = Arc::new(Shared::new());
    let cancel = CancellationToken::new();

    let topic = ctx.topic.clone();
    let subscribers = open_subscribers(
        &ctx,
        &shared,
        &cancel,
        Opening {
            count: args.subscribers,
            concurrency: args.connect_concurrency,
            order: Order::Sequence,
            stop_on_error: true,
        },
        |_| topic.clone(),
    )
    .await;
    let connecting = subscribers.connecting.clone();
    if connecting.failed > 0 {
        let totals = collect(subscribers.readers, &cancel).await;
        let failure = format!(
            "{} of {} subscribers failed to connect: {}",
            connecting.failed,
            args.subscribers,
            connecting.first_error.clone().unwrap_or_default()
        );
        return finish(
            &args,
            connecting,
            Vec::new(),
            0,
            totals,
            None,
            None,
            Some(failure),
        );
    }
    if !args.target.confirms_subscription() {
        // The server does not confirm subscriptions: give it time to register the last.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    let mut publisher = Publisher::connect(&ctx).await?;
    let server = args.common.pid.and_then(Sampler::start);
    let load = Sampler::start(std::process::id());
    let count = args.subscribers as u64;
    let mut run = Publishing {
        publisher: &mut publisher,
        topic: &ctx.topic,
        shared: &shared,
        subscribers: count,
        size: args.size,
        next_seq: 0,
        drain_timeout: Duration::from_secs_f64(args.drain_timeout),
    };
    let duration = Duration::from_secs_f64(args.duration);
    let mut phases = Vec::new();
    let mut failure = None;
    let outcome: anyhow::Result<()> = async {
        match args.rate {
            Rate::Max => {
                let max = run.closed_loop(duration, args.window).await?;
                let paced = max.published_per_second * args.paced_fraction;
                phases.push(max);
                if paced > 0.0 {
                    phases.push(run.paced(duration, paced).await?);
                }
            }
            Rate::PerSecond(rate) => phases.push(run.paced(duration, rate).await?),
        }
        Ok(())
    }
    .await;
    if let Err(e) = outcome {
        failure = Some(format!("publishing failed: {e:#}"));
    }
    let published = run.next_seq;
    let server = server.map(Sampler::finish);
    let load = load.map(Sampler::finish);
    let totals = collect(subscribers.readers, &cancel).await;
    ctx.wait_closed().await;
    finish(
        &args, connecting, phases, published, totals, server, load, failure,
    )
}

fn validate(args: &Args) -> anyhow::Result<()> {
    if args.subscribers == 0 {
        bail!("invalid --subscribers 0: give at least 1");
    }
    if args.size < crate::probe::STAMP_LEN {
        bail!(
            "invalid --size {}: give at least {} bytes, the length of the stamp",
            args.size,
            crate::probe::STAMP_LEN
        );
    }
    if !(args.duration.is_finite() && args.duration > 0.0) {
        bail!("invalid --duration {}: give seconds above 0", args.duration);
    }
    if !(args.paced_fraction > 0.0 && args.paced_fraction <= 1.0) {
        bail!(
            "invalid --paced-fraction {}: give a fraction in (0, 1]",
            args.paced_fraction
        );
    }
    if args.window == 0 {
        bail!("invalid --window 0: give at least 1 event");
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn finish(
    args: &Args,
    connecting: Connecting,
    phases: Vec<Phase>,
    published: u64,
    totals: Totals,
    server: Option<ProcessUsage>,
    load_generator: Option<ProcessUsage>,
    mut failure: Option<String>,
) -> anyhow::Result<bool> {
    let expected = published * args.subscribers as u64;
    let lost = expected.saturating_sub(totals.received);
    if failure.is_none() && (lost > 0 || totals.duplicates > 0 || totals.gaps > 0) {
        failure = Some(format!(
            "{lost} of {expected} deliveries lost, {} duplicated, {} gaps{}",
            totals.duplicates,
            totals.gaps,
            totals
                .first_end_reason
                .as_deref()
                .map(|r| format!("; first early end: {r}"))
                .unwrap_or_default()
        ));
    }
    let result = FanoutResult {
        scenario: "fanout",
        date: today(),
        target: args.target,
        label: args.common.label.clone(),
        subscribers: args.subscribers,
        size: args.size,
        connecting,
        phases,
        published,
        expected,
        delivered: totals.received,
        lost,
        totals,
        server,
        load_generator,
        ok: failure.is_none(),
        failure,
    };
    emit(&result, &table(&result), args.common.json.as_deref())?;
    // Only hubcast promises lossless delivery of events; peers' losses are reported.
    Ok(result.ok || !args.target.is_hubcast())
}

fn table(result: &FanoutResult) -> String {
    let mut out = format!(
        "fanout {} x{} ({} B): connected {} in {:.1} s ({:.0}/s)\n",
        result.target.name(),
        result.subscribers,
        result.size,
        result.connecting.opened,
        result.connecting.seconds,
        result.connecting.per_second
    );
    out.push_str(&format!(
        "  {:<8} {:>12} {:>12} {:>14} {:>9} {:>9} {:>9}\n",
        "phase", "target/s", "published/s", "delivered/s", "p50 ms", "p99 ms", "p99.9 ms"
    ));
    for phase in &result.phases {
        out.push_str(&format!(
            "  {:<8} {:>12} {:>12.0} {:>14.0} {:>9.2} {:>9.2} {:>9.2}\n",
            phase.name,
            phase
                .target_rate
                .map(|r| format!("{r:.0}"))
                .unwrap_or_else(|| "max".into()),
            phase.published_per_second,
            phase.delivered_per_second,
            phase.latency.p50_ms,
            phase.latency.p99_ms,
            phase.latency.p999_ms
        ));
    }
    out.push_str(&format!(
        "  delivered {} of {} (lost {}, duplicates {}, gaps {})",
        result.delivered,
        result.expected,
        result.lost,
        result.totals.duplicates,
        result.totals.gaps
    ));
    if let Some(server) = &result.server {
        out.push_str(&format!(
            "\n  server: RSS peak {:.1} MiB, CPU {:.1} s ({:.0} %)",
            server.rss_peak_kib as f64 / 1024.0,
            server.cpu_seconds,
            server.cpu_percent
        ));
    }
    if let Some(load) = &result.load_generator {
        out.push_str(&format!(
            "\n  load generator: CPU {:.1} s ({:.0} %)",
            load.cpu_seconds, load.cpu_percent
        ));
    }
    if let Some(failure) = &result.failure {
        out.push_str(&format!("\n  FAILED: {failure}"));
    }
    out
}

/// The publisher's side of a run.
struct Publishing<'a> {
    publisher: &'a mut Publisher,
    topic: &'a str,
    shared: &'a Shared,
    subscribers: u64,
    size: usize,
    next_seq: u64,
    drain_timeout: Duration,
}

impl Publishing<'_> {
    async fn publish_next(&mut self) -> anyhow::Result<()> {
        let seq = self.next_seq;
        self.publisher
            .publish(self.topic, payload(seq, self.size))
            .await?;
        self.next_seq += 1;
        Ok(())
    }

    /// Publishes for `duration`, never more than `window` events ahead of the deliveries.
    async fn closed_loop(&mut self, duration: Duration, window: u64) -> anyhow::Result<Phase> {
        take_latency();
        let start_seq = self.next_seq;
        let start_delivered = self.shared.delivered();
        let started = Instant::now();
        while started.elapsed() < duration {
            if self.next_seq >= window {
                // Every subscriber's share of deliveries must reach `next_seq - window + 1`.
                let needed = (self.next_seq - window + 1) * self.subscribers;
                if self.shared.delivered() < needed {
                    let remaining = duration.saturating_sub(started.elapsed());
                    self.shared
                        .wait_delivered(needed, remaining.min(Duration::from_millis(50)))
                        .await;
                    continue;
                }
            }
            self.publish_next().await?;
        }
        let seconds = started.elapsed().as_secs_f64();
        let delivered = self.shared.delivered() - start_delivered;
        self.drain().await;
        Ok(self.phase("max", None, seconds, start_seq, delivered))
    }

    /// Publishes at `rate` events per second for `duration`; an event that falls behind its
    /// schedule is sent at once.
    async fn paced(&mut self, duration: Duration, rate: f64) -> anyhow::Result<Phase> {
        take_latency();
        let start_seq = self.next_seq;
        let start_delivered = self.shared.delivered();
        let started = Instant::now();
        let period = Duration::from_secs_f64(1.0 / rate);
        let mut sent = 0u32;
        while started.elapsed() < duration {
            let due = started + period.mul_f64(f64::from(sent));
            tokio::time::sleep_until(due.into()).await;
            self.publish_next().await?;
            sent = sent.saturating_add(1);
        }
        let seconds = started.elapsed().as_secs_f64();
        let delivered = self.shared.delivered() - start_delivered;
        self.drain().await;
        Ok(self.phase("paced", Some(rate), seconds, start_seq, delivered))
    }

    fn phase(
        &self,
        name: &'static str,
        target_rate: Option<f64>,
        seconds: f64,
        start_seq: u64,
        delivered: u64,
    ) -> Phase {
        let published = self.next_seq - start_seq;
        Phase {
            name,
            target_rate: target_rate.map(round3),
            seconds: round3(seconds),
            published,
            published_per_second: round3(published as f64 / seconds),
            delivered_per_second: round3(delivered as f64 / seconds),
            latency: Latency::from_histogram(&take_latency()),
        }
    }

    /// Waits until every published event reached every subscriber, or until deliveries
    /// make no progress for the drain timeout.
    async fn drain(&self) {
        let expected = self.next_seq * self.subscribers;
        let mut last = self.shared.delivered();
        let mut progressed = Instant::now();
        while last < expected && progressed.elapsed() < self.drain_timeout {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let now = self.shared.delivered();
            if now != last {
                last = now;
                progressed = Instant::now();
            }
        }
    }
}
