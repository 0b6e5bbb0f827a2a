//! Device simulator: N temperature sensors on one WebTransport session, through
//! `hubcast::client`.
//!
//! Every sensor sends a reading to `<prefix>/<sensor>/temperature` as a datagram `rate` times a
//! second. Readings follow a slow sine wave with noise, and now and then a sensor spikes. When
//! a reading crosses the alarm threshold the simulator publishes an `alarm` event to
//! `alarms/<sensor>` over the control stream, and a `cleared` event once it falls back below.
//!
//! ```text
//! cargo run --example simulator -- https://127.0.0.1:4433/v1/wt --cert-hash <HEX>
//! cargo run --example simulator -- https://127.0.0.1:4433/v1/wt --insecure --sensors 8
//! ```
//!
//! The hash is the `hex` field of `GET /v1/cert-hash` on the server's HTTP listener. The run
//! stops by itself after `--duration` seconds.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use clap::Parser;
use hubcast::client::{self, Client, Connector, Error, Transport};
use serde_json::json;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

/// Time allowed for the session handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Time allowed for the last alarm events to be acknowledged when the run ends.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Simulates temperature sensors that publish telemetry datagrams and alarm events to hubcast.
#[derive(Debug, Parser)]
struct Args {
    /// WebTransport URL of the server.
    #[arg(default_value = "https://127.0.0.1:4433/v1/wt")]
    url: String,

    /// SHA-256 hash of the server certificate, as 64 hex digits (colons allowed), such as the
    /// `hex` field of `GET /v1/cert-hash`.
    #[arg(long, value_name = "HEX", conflicts_with = "insecure")]
    cert_hash: Option<String>,

    /// Accept any server certificate. Only for a server you run yourself.
    #[arg(long)]
    insecure: bool,

    /// Number of sensors.
    #[arg(long, value_name = "COUNT", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    sensors: u16,

    /// Readings per second of each sensor.
    #[arg(long, value_name = "HZ", default_value_t = 5.0)]
    rate: f64,

    /// Seconds to run before stopping, at most one day.
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    duration: f64,

    /// First segment of the telemetry topics.
    #[arg(long, value_name = "SEGMENT", default_value = "sensors")]
    prefix: String,

    /// Temperature in °C above which a sensor raises an alarm.
    #[arg(long, value_name = "CELSIUS", default_value_t = 30.0)]
    alarm_above: f64,

    /// Expected spikes per sensor per minute; a spike lifts the reading 1 to 4 °C above the
    /// alarm threshold for 3 to 7 seconds.
    #[arg(long, value_name = "COUNT", default_value_t = 2.0)]
    spikes_per_minute: f64,

    /// Write each topic into every datagram instead of registering aliases.
    #[arg(long)]
    inline_topics: bool,

    /// Seed of the random readings; the current time when absent.
    #[arg(long)]
    seed: Option<u64>,
}

impl Args {
    fn validate(&self) -> anyhow::Result<()> {
        if !(self.rate.is_finite() && self.rate > 0.0 && self.rate <= 1000.0) {
            bail!(
                "invalid --rate {}: give a number of readings per second in (0, 1000]",
                self.rate
            );
        }
        if !(self.duration.is_finite() && self.duration > 0.0 && self.duration <= 86_400.0) {
            bail!(
                "invalid --duration {}: give a number of seconds in (0, 86400]",
                self.duration
            );
        }
        if !(self.spikes_per_minute.is_finite() && self.spikes_per_minute >= 0.0) {
            bail!(
                "invalid --spikes-per-minute {}: give a number, 0 or more",
                self.spikes_per_minute
            );
        }
        if self.prefix.is_empty() || self.prefix.contains(['/', '+', '#']) {
            bail!(
                "invalid --prefix {:?}: give one topic segment without `/`, `+` or `#`",
                self.prefix
            );
        }
        if self.cert_hash.is_none() && !self.insecure {
            bail!("missing --cert-hash: pass the server's certificate hash, or --insecure");
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    args.validate()?;

    let connector = connector(&args)?;
    let client = connector
        .connect()
        .await
        .with_context(|| format!("failed to connect to {}", args.url))?;
    info!(url = %args.url, sensors = args.sensors, rate = args.rate, "connected");

    let summary = run(&args, &client).await;
    client.close().await;
    connector.wait_idle(Duration::from_secs(1)).await;
    let summary = summary?;
    info!(
        datagrams = summary.datagrams,
        readings_failed = summary.readings_failed,
        alarms = summary.alarms,
        alarms_rejected = summary.alarms_rejected,
        "simulation finished"
    );
    Ok(())
}

/// Builds a connector for WebTransport only, without reconnection, so a dropped session ends
/// the run.
fn connector(args: &Args) -> anyhow::Result<Connector> {
    let mut options = client::Options::new(Some(args.url.clone()), None);
    options.cert_hash = args
        .cert_hash
        .as_deref()
        .map(client::parse_cert_hash)
        .transpose()
        .context("invalid --cert-hash")?;
    options.insecure = args.insecure;
    options.connect_timeout = CONNECT_TIMEOUT;
    options.reconnect = false;
    options.transport = Some(Transport::WebTransport);
    options.keep_alive = Duration::from_secs(5);
    options.telemetry_aliases = !args.inline_topics;
    Connector::new(options).context("invalid connection options")
}

#[derive(Default)]
struct Summary {
    /// Readings sent as datagrams.
    datagrams: u64,
    /// Readings the client could not send.
    readings_failed: u64,
    alarms: u64,
    alarms_rejected: u64,
}

async fn run(args: &Args, client: &Client) -> anyhow::Result<Summary> {
    let mut rng = Rng::new(args.seed.unwrap_or_else(seed_from_clock));
    let mut sensors: Vec<Sensor> = (0..args.sensors)
        .map(|i| Sensor::new(&args.prefix, usize::from(i), &mut rng))
        .collect();

    let period = Duration::from_secs_f64(1.0 / args.rate);
    let spike_chance = args.spikes_per_minute / 60.0 / args.rate;
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration);
    let started = Instant::now();
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut summary = Summary::default();
    let mut pending_alarms = Vec::new();

    while Instant::now() < deadline {
        ticker.tick().await;
        let elapsed = started.elapsed().as_secs_f64();
        for sensor in sensors.iter_mut() {
            let reading = sensor.step(
                elapsed,
                period.as_secs_f64(),
                spike_chance,
                args.alarm_above,
                &mut rng,
            );
            let text = format!("{reading:.2}");
            // The client registers an alias on the first reading of each topic, unless
            // --inline-topics is set, and sends every reading as a datagram.
            match client
                .publish_telemetry(&sensor.topic, text.as_bytes())
                .await
            {
                Ok(()) => {}
                Err(e) if e.is_connection_lost() => bail!("the session closed: {e}"),
                Err(e) => {
                    summary.readings_failed += 1;
                    if summary.readings_failed == 1 {
                        warn!(
                            error = %e,
                            topic = %sensor.topic,
                            "failed to send a reading, further failures are only counted"
                        );
                    }
                }
            }

            if let Some(alarm) = sensor.alarm_change(reading, args.alarm_above) {
                let topic = format!("alarms/{}", sensor.name);
                let payload = json!({
                    "sensor": sensor.name,
                    "topic": sensor.topic,
                    "state": alarm,
                    "value": (reading * 100.0).round() / 100.0,
                    "threshold": args.alarm_above,
                })
                .to_string();
                info!(%topic, state = alarm, value = %text, "publishing alarm event");
                let event = if alarm == "raised" {
                    "alarm"
                } else {
                    "cleared"
                };
                // Published without waiting, so readings keep their pace; the replies are
                // collected at the end.
                let client = client.clone();
                pending_alarms.push(tokio::spawn(async move {
                    client
                        .publish(&topic, payload.as_bytes(), Some(event))
                        .await
                }));
                summary.alarms += 1;
            }
        }
    }

    for alarm in pending_alarms {
        let result = match tokio::time::timeout(REPLY_TIMEOUT, alarm).await {
            Ok(Ok(result)) => result.map(drop),
            Ok(Err(e)) => Err(Error::Protocol(format!("the publishing task failed: {e}"))),
            Err(_) => Err(Error::Protocol(format!(
                "no reply within {REPLY_TIMEOUT:?}"
            ))),
        };
        if let Err(e) = result {
            summary.alarms_rejected += 1;
            warn!(error = %e, "alarm event was not acknowledged");
        }
    }
    summary.datagrams = client.telemetry_datagrams();
    Ok(summary)
}

/// One simulated temperature sensor.
struct Sensor {
    name: String,
    topic: String,
    base: f64,
    amplitude: f64,
    period: f64,
    phase: f64,
    spike: Option<Spike>,
    alarmed: bool,
}

/// A temporary rise of a reading: half a sine wave over `length` seconds.
struct Spike {
    /// Seconds since the spike started.
    age: f64,
    length: f64,
    /// Rise at the middle of the spike, in °C.
    height: f64,
}

impl Sensor {
    fn new(prefix: &str, index: usize, rng: &mut Rng) -> Self {
        let name = format!("sensor-{:02}", index + 1);
        Self {
            topic: format!("{prefix}/{name}/temperature"),
            name,
            base: 19.0 + 5.0 * rng.next_f64(),
            amplitude: 0.8 + 1.5 * rng.next_f64(),
            period: 20.0 + 40.0 * rng.next_f64(),
            phase: std::f64::consts::TAU * rng.next_f64(),
            spike: None,
            alarmed: false,
        }
    }

    /// Advances the sensor to `elapsed` seconds, `dt` after the previous step, and returns its
    /// reading in °C. A new spike peaks 1 to 4 °C above `threshold`.
    fn step(
        &mut self,
        elapsed: f64,
        dt: f64,
        spike_chance: f64,
        threshold: f64,
        rng: &mut Rng,
    ) -> f64 {
        let wave = (std::f64::consts::TAU * elapsed / self.period + self.phase).sin();
        let baseline = self.base + self.amplitude * wave;
        if self.spike.is_none() && rng.next_f64() < spike_chance {
            self.spike = Some(Spike {
                age: 0.0,
                length: 3.0 + 4.0 * rng.next_f64(),
                height: threshold + 1.0 + 3.0 * rng.next_f64() - baseline,
            });
        }
        let mut lift = 0.0;
        if let Some(spike) = &mut self.spike {
            spike.age += dt;
            if spike.age >= spike.length {
                self.spike = None;
            } else {
                lift = spike.height * (std::f64::consts::PI * spike.age / spike.length).sin();
            }
        }
        baseline + lift + 0.15 * (rng.next_f64() - 0.5)
    }

    /// Returns `raised` or `cleared` when `reading` crosses `threshold`.
    fn alarm_change(&mut self, reading: f64, threshold: f64) -> Option<&'static str> {
        let above = reading > threshold;
        if above == self.alarmed {
            return None;
        }
        self.alarmed = above;
        Some(if above { "raised" } else { "cleared" })
    }
}

/// xorshift64*: small, fast and good enough for simulated noise.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let value = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (value >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn seed_from_clock() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9e37_79b9_7f4a_7c15)
}
