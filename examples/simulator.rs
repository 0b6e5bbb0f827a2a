//! Device simulator: N temperature sensors on one WebTransport session.
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

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use clap::Parser;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};
use tracing_subscriber::EnvFilter;
use wtransport::tls::Sha256Digest;
use wtransport::{ClientConfig, Connection, Endpoint, RecvStream, SendStream};

/// Type byte of a datagram that carries its topic in full.
const DATAGRAM_TOPIC: u8 = 0x00;
/// Type byte of a datagram that names its topic by a registered alias.
const DATAGRAM_ALIAS: u8 = 0x01;
/// Largest control-stream frame the simulator accepts from the server.
const MAX_FRAME: usize = 16 << 20;
/// Time allowed for the session handshake and for each command reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Simulates temperature sensors that publish telemetry datagrams and alarm events to hubcast.
#[derive(Debug, Parser)]
#[command(about)]
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
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    args.validate()?;

    let connection = connect(&args).await?;
    info!(url = %args.url, sensors = args.sensors, rate = args.rate, "connected");
    let (send, recv) = open_control_stream(&connection).await?;
    let control = Control::start(send, recv);

    let summary = run(&args, &connection, &control).await;
    control.finish().await;
    connection.close(0u32.into(), b"simulation finished");
    let summary = summary?;
    info!(
        datagrams = summary.datagrams,
        datagrams_failed = summary.datagrams_failed,
        alarms = summary.alarms,
        alarms_rejected = summary.alarms_rejected,
        "simulation finished"
    );
    Ok(())
}

async fn open_control_stream(connection: &Connection) -> anyhow::Result<(SendStream, RecvStream)> {
    let opening = tokio::time::timeout(REPLY_TIMEOUT, connection.open_bi())
        .await
        .context("opening the control stream timed out")?
        .context("failed to open the control stream")?;
    tokio::time::timeout(REPLY_TIMEOUT, opening)
        .await
        .context("opening the control stream timed out")?
        .context("failed to open the control stream")
}

async fn connect(args: &Args) -> anyhow::Result<Connection> {
    let builder = ClientConfig::builder().with_bind_default();
    let builder = match &args.cert_hash {
        Some(hex) => builder.with_server_certificate_hashes([parse_hash(hex)?]),
        None => builder.with_no_cert_validation(),
    };
    let config = builder
        .keep_alive_interval(Some(Duration::from_secs(5)))
        .build();
    let endpoint = Endpoint::client(config).context("failed to create the QUIC endpoint")?;
    tokio::time::timeout(REPLY_TIMEOUT, endpoint.connect(&args.url))
        .await
        .with_context(|| format!("connecting to {} timed out", args.url))?
        .with_context(|| format!("failed to connect to {}", args.url))
}

/// Parses 32 bytes written as hex, with or without `:` between the bytes.
fn parse_hash(text: &str) -> anyhow::Result<Sha256Digest> {
    let digits: String = text.chars().filter(|c| *c != ':').collect();
    let invalid = || anyhow::anyhow!("invalid --cert-hash {text:?}: give 64 hex digits");
    if digits.len() != 64 || !digits.is_ascii() {
        return Err(invalid());
    }
    let mut bytes = [0u8; 32];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).map_err(|_| invalid())?;
    }
    Ok(Sha256Digest::new(bytes))
}

#[derive(Default)]
struct Summary {
    datagrams: u64,
    datagrams_failed: u64,
    alarms: u64,
    alarms_rejected: u64,
}

async fn run(args: &Args, connection: &Connection, control: &Control) -> anyhow::Result<Summary> {
    let mut rng = Rng::new(args.seed.unwrap_or_else(seed_from_clock));
    let mut sensors: Vec<Sensor> = (0..args.sensors)
        .map(|i| Sensor::new(&args.prefix, usize::from(i), &mut rng))
        .collect();

    if !args.inline_topics {
        for (i, sensor) in sensors.iter().enumerate() {
            let alias = u16::try_from(i + 1).context("more sensors than aliases")?;
            let command = json!({"op": "alias", "alias": alias, "topic": sensor.topic});
            control.request(command).await.with_context(|| {
                format!("failed to register alias {alias} for {}", sensor.topic)
            })?;
        }
    }

    let period = Duration::from_secs_f64(1.0 / args.rate);
    let spike_chance = args.spikes_per_minute / 60.0 / args.rate;
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration);
    let started = Instant::now();
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut summary = Summary::default();
    let mut pending_alarms = Vec::new();

    while Instant::now() < deadline {
        tokio::select! {
            _ = ticker.tick() => {}
            error = connection.closed() => bail!("the session closed: {error}"),
        }
        let elapsed = started.elapsed().as_secs_f64();
        for (i, sensor) in sensors.iter_mut().enumerate() {
            let reading = sensor.step(
                elapsed,
                period.as_secs_f64(),
                spike_chance,
                args.alarm_above,
                &mut rng,
            );
            let text = format!("{reading:.2}");
            let datagram = if args.inline_topics {
                inline_datagram(&sensor.topic, text.as_bytes())
            } else {
                alias_datagram(i as u16 + 1, text.as_bytes())
            };
            match connection.send_datagram(&datagram) {
                Ok(()) => summary.datagrams += 1,
                Err(e) => {
                    summary.datagrams_failed += 1;
                    if summary.datagrams_failed == 1 {
                        warn!(
                            error = %e,
                            topic = %sensor.topic,
                            "failed to send a datagram, further failures are only counted"
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
                let command = json!({
                    "op": "publish",
                    "topic": topic,
                    "event": if alarm == "raised" { "alarm" } else { "cleared" },
                    "payload": payload,
                });
                pending_alarms.push(control.send(command).await?);
                summary.alarms += 1;
            }
        }
    }

    for reply in pending_alarms {
        if let Err(e) = Control::wait(reply).await {
            summary.alarms_rejected += 1;
            warn!(error = %e, "alarm event was not acknowledged");
        }
    }
    Ok(summary)
}

fn inline_datagram(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 + topic.len() + payload.len());
    out.push(DATAGRAM_TOPIC);
    out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(payload);
    out
}

fn alias_datagram(alias: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 + payload.len());
    out.push(DATAGRAM_ALIAS);
    out.extend_from_slice(&alias.to_be_bytes());
    out.extend_from_slice(payload);
    out
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

/// The control stream: length-prefixed JSON commands out, replies in.
struct Control {
    commands: mpsc::Sender<(Value, oneshot::Sender<Value>)>,
    task: tokio::task::JoinHandle<()>,
}

type Reply = oneshot::Receiver<Value>;

impl Control {
    fn start(send: SendStream, recv: RecvStream) -> Self {
        let (commands, rx) = mpsc::channel(256);
        let task = tokio::spawn(Self::serve(send, recv, rx));
        Self { commands, task }
    }

    /// Sends a command and returns the receiver of its reply.
    async fn send(&self, command: Value) -> anyhow::Result<Reply> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send((command, tx))
            .await
            .context("the control stream is closed")?;
        Ok(rx)
    }

    /// Waits for a reply; an `error` reply becomes an error.
    async fn wait(reply: Reply) -> anyhow::Result<Value> {
        let reply = tokio::time::timeout(REPLY_TIMEOUT, reply)
            .await
            .context("no reply within the timeout")?
            .context("the control stream closed before the reply")?;
        if reply["op"] == "error" {
            bail!("{}: {}", reply["code"], reply["message"]);
        }
        Ok(reply)
    }

    async fn request(&self, command: Value) -> anyhow::Result<Value> {
        Self::wait(self.send(command).await?).await
    }

    /// Stops sending commands; replies already requested are delivered first.
    async fn finish(self) {
        drop(self.commands);
        let _ = tokio::time::timeout(REPLY_TIMEOUT, self.task).await;
    }

    async fn serve(
        mut send: SendStream,
        mut recv: RecvStream,
        mut commands: mpsc::Receiver<(Value, oneshot::Sender<Value>)>,
    ) {
        let mut waiting: HashMap<u64, oneshot::Sender<Value>> = HashMap::new();
        let mut next_id = 1u64;
        let mut reader = FrameReader::default();
        let mut buffer = vec![0u8; 16 * 1024];
        let mut sending = true;
        loop {
            tokio::select! {
                command = commands.recv(), if sending => {
                    let Some((mut command, reply)) = command else {
                        sending = false;
                        if waiting.is_empty() {
                            break;
                        }
                        continue;
                    };
                    command["id"] = json!(next_id);
                    waiting.insert(next_id, reply);
                    next_id += 1;
                    let body = command.to_string();
                    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
                    frame.extend_from_slice(body.as_bytes());
                    if let Err(e) = send.write_all(&frame).await {
                        warn!(error = %e, "failed to write to the control stream");
                        break;
                    }
                }
                read = recv.read(&mut buffer) => {
                    let n = match read {
                        Ok(Some(n)) => n,
                        Ok(None) => {
                            debug!("the server finished the control stream");
                            break;
                        }
                        Err(e) => {
                            warn!(error = %e, "failed to read the control stream");
                            break;
                        }
                    };
                    reader.push(&buffer[..n]);
                    loop {
                        let frame = match reader.next_frame() {
                            Ok(Some(frame)) => frame,
                            Ok(None) => break,
                            Err(e) => {
                                warn!(
                                    error = %e,
                                    "invalid control frame, closing the control stream"
                                );
                                return;
                            }
                        };
                        Self::dispatch(frame, &mut waiting);
                    }
                    if !sending && waiting.is_empty() {
                        break;
                    }
                }
            }
        }
        let _ = send.finish().await;
    }

    fn dispatch(frame: Vec<u8>, waiting: &mut HashMap<u64, oneshot::Sender<Value>>) {
        let reply: Value = match serde_json::from_slice(&frame) {
            Ok(reply) => reply,
            Err(e) => {
                warn!(error = %e, "control frame is not JSON");
                return;
            }
        };
        match reply["id"].as_u64().and_then(|id| waiting.remove(&id)) {
            Some(sender) => {
                let _ = sender.send(reply);
            }
            None if reply["op"] == "error" => warn!(%reply, "command rejected"),
            None => debug!(%reply, "control frame without a waiting command"),
        }
    }
}

/// Splits a byte stream into frames of a 4-byte big-endian length and a body.
#[derive(Default)]
struct FrameReader {
    buffer: Vec<u8>,
}

impl FrameReader {
    fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    fn next_frame(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        let Some(header) = self.buffer.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len > MAX_FRAME {
            bail!("frame of {len} bytes exceeds the maximum of {MAX_FRAME}");
        }
        if self.buffer.len() < 4 + len {
            return Ok(None);
        }
        let frame = self.buffer[4..4 + len].to_vec();
        self.buffer.drain(..4 + len);
        Ok(Some(frame))
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
