//! Raw quinn datagram echo: the ceiling for hubcast's telemetry datagram path in the fan-out
//! benchmark (`benches/peers/run.sh`).
//!
//! One process runs both ends. A server endpoint echoes every datagram back on the connection
//! it came from, with `send_datagram` as hubcast sends telemetry. A client endpoint opens
//! `--connections` connections, sends `--size`-byte datagrams at `--rate` per second in total
//! for `--duration` seconds and counts the echoes. Both ends use hubcast's datagram buffer
//! sizes (`src/quic/mod.rs`). The result is one JSON object on stdout:
//!
//! ```sh
//! cargo run --release --example peer-raw-quinn -- --connections 100 --size 100 --rate max --duration 10
//! {"connections":100,"size":100,"rate_per_s":null,"sent":..,"received":..,"duration_s":..,"received_per_s":..,"cpu_s":..}
//! ```
//!
//! `duration_s` is the sending time, `received` counts echoes that arrived by [`DRAIN`] after
//! it, and `cpu_s` is the user plus system CPU time of the whole process over that span.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use clap::Parser;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

/// How long the client keeps counting echoes after it stops sending.
const DRAIN: Duration = Duration::from_millis(500);

/// Datagram buffer sizes of hubcast's QUIC endpoint: the default of its `--datagram-buffer`.
const DATAGRAM_RECEIVE_BUFFER: usize = 64 << 10;
const DATAGRAM_SEND_BUFFER: usize = 64 << 10;

/// How long a `--size` above the current maximum datagram size waits for path MTU discovery.
const MTU_PROBE_WAIT: Duration = Duration::from_secs(2);

/// Period of the pacing timer when `--rate` is a number.
const PACING_TICK: Duration = Duration::from_millis(1);

/// ALPN protocol of this benchmark's connections.
const ALPN: &[u8] = b"hubcast-bench-echo";

/// Command-line options.
#[derive(Debug, Parser)]
#[command(about = "QUIC datagram echo through quinn: the ceiling for hubcast's telemetry path")]
struct Args {
    /// Number of client connections; the rate is split evenly between them.
    #[arg(long, value_name = "COUNT", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    connections: u32,

    /// Size of each datagram, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    size: u32,

    /// Datagrams per second over all connections, or `max` to send as fast as quinn's send
    /// buffer and congestion controller allow.
    #[arg(long, value_name = "PER_SECOND|max", default_value = "max")]
    rate: Rate,

    /// Seconds to send for.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    duration: f64,

    /// UDP address of the echo server endpoint.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:18600")]
    listen: SocketAddr,
}

/// Sending rate of the whole client.
#[derive(Debug, Clone, Copy)]
enum Rate {
    Max,
    PerSecond(f64),
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "max" {
            return Ok(Self::Max);
        }
        match text.parse::<f64>() {
            Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(Self::PerSecond(rate)),
            _ => Err(format!(
                "invalid rate {text:?}: expected `max` or a positive number of datagrams per second"
            )),
        }
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(e) = measure(&args).await {
        eprintln!("peer-raw-quinn: {e:#}");
        std::process::exit(1);
    }
}

/// Runs both endpoints, measures, and prints the report.
async fn measure(args: &Args) -> Result<()> {
    if !(args.duration.is_finite() && args.duration > 0.0) {
        bail!(
            "invalid --duration {}: expected a positive number of seconds",
            args.duration
        );
    }

    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .context("failed to generate the self-signed certificate")?;
    let cert = certified.cert.der().clone();
    let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());

    let server = quinn::Endpoint::server(server_config(cert.clone(), key.into())?, args.listen)
        .with_context(|| {
            format!(
                "failed to bind the echo server to --listen {}; pick a free UDP address",
                args.listen
            )
        })?;
    tokio::spawn(echo_server(server.clone()));

    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)
        .context("failed to bind the client endpoint on 127.0.0.1")?;
    client.set_default_client_config(client_config(cert)?);

    let connections = connect_all(&client, args.listen, args.connections).await?;
    let max_size = wait_for_datagram_size(&connections[0], args.size as usize).await;
    if args.size as usize > max_size {
        bail!(
            "--size {} is larger than the {max_size}-byte maximum datagram size of this path; \
             use --size {max_size} or less",
            args.size
        );
    }

    let report = run(args, &connections).await;
    client.close(0u32.into(), b"done");
    server.close(0u32.into(), b"done");
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

fn transport_config() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport
        .datagram_receive_buffer_size(Some(DATAGRAM_RECEIVE_BUFFER))
        .datagram_send_buffer_size(DATAGRAM_SEND_BUFFER);
    transport
}

fn server_config(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> Result<quinn::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport_config()));
    Ok(server)
}

/// Builds a client configuration that trusts only the server's self-signed certificate.
fn client_config(cert: CertificateDer<'static>) -> Result<quinn::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(Arc::new(transport_config()));
    Ok(client)
}

/// Accepts connections and echoes each one's datagrams until the endpoint closes.
async fn echo_server(endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let connection = match incoming.await {
                Ok(connection) => connection,
                Err(e) => {
                    eprintln!("peer-raw-quinn: server handshake failed: {e}");
                    return;
                }
            };
            while let Ok(datagram) = connection.read_datagram().await {
                // As in hubcast, a full send buffer drops the oldest unsent datagram.
                let _ = connection.send_datagram(datagram);
            }
        });
    }
}

async fn connect_all(
    client: &quinn::Endpoint,
    server: SocketAddr,
    count: u32,
) -> Result<Vec<quinn::Connection>> {
    let mut handshakes = JoinSet::new();
    for _ in 0..count {
        let connecting = client.connect(server, "localhost")?;
        handshakes.spawn(connecting);
    }
    let mut connections = Vec::with_capacity(count as usize);
    while let Some(joined) = handshakes.join_next().await {
        connections.push(joined?.context("QUIC handshake with the echo server failed")?);
    }
    Ok(connections)
}

/// Returns the connection's maximum datagram size once it reaches `size`, or the size it has
/// after [`MTU_PROBE_WAIT`].
///
/// quinn starts at the 1,200-byte minimum QUIC packet size and raises the limit as path MTU
/// discovery succeeds, so a size close to the loopback MTU needs a moment after the handshake.
async fn wait_for_datagram_size(connection: &quinn::Connection, size: usize) -> usize {
    let deadline = Instant::now() + MTU_PROBE_WAIT;
    loop {
        let max = connection.max_datagram_size().unwrap_or(0);
        if max >= size || Instant::now() >= deadline {
            return max;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The JSON object printed on stdout.
#[derive(Debug, serde::Serialize)]
struct Report {
    connections: u32,
    size: u32,
    /// Datagrams per second over all connections; absent for `--rate max`.
    rate_per_s: Option<f64>,
    sent: u64,
    received: u64,
    duration_s: f64,
    received_per_s: f64,
    cpu_s: f64,
}

/// Sends for the configured duration, waits [`DRAIN`] for echoes, and returns the counts.
async fn run(args: &Args, connections: &[quinn::Connection]) -> Report {
    let payload = Bytes::from(vec![b'x'; args.size as usize]);
    let received = Arc::new(AtomicU64::new(0));
    let per_connection = match args.rate {
        Rate::Max => Rate::Max,
        Rate::PerSecond(rate) => Rate::PerSecond(rate / f64::from(args.connections)),
    };

    let mut receivers = JoinSet::new();
    for connection in connections {
        receivers.spawn(count_echoes(connection.clone(), received.clone()));
    }

    let cpu_start = cpu_seconds();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.duration);
    let mut senders = JoinSet::new();
    for connection in connections {
        senders.spawn(send_until(
            connection.clone(),
            payload.clone(),
            per_connection,
            started,
            deadline,
        ));
    }
    let mut sent = 0;
    while let Some(joined) = senders.join_next().await {
        sent += joined.unwrap_or(0);
    }
    let duration = started.elapsed().as_secs_f64();

    tokio::time::sleep(DRAIN).await;
    let received = received.load(Ordering::Relaxed);
    let cpu = cpu_seconds() - cpu_start;
    receivers.abort_all();

    Report {
        connections: args.connections,
        size: args.size,
        rate_per_s: match args.rate {
            Rate::Max => None,
            Rate::PerSecond(rate) => Some(rate),
        },
        sent,
        received,
        duration_s: round3(duration),
        received_per_s: round3(received as f64 / duration),
        cpu_s: round3(cpu),
    }
}

async fn count_echoes(connection: quinn::Connection, received: Arc<AtomicU64>) {
    while connection.read_datagram().await.is_ok() {
        received.fetch_add(1, Ordering::Relaxed);
    }
}

/// Sends `payload` on `connection` until `deadline` and returns how many datagrams quinn took.
async fn send_until(
    connection: quinn::Connection,
    payload: Bytes,
    rate: Rate,
    started: Instant,
    deadline: Instant,
) -> u64 {
    let mut sent = 0u64;
    // A send may wait long for buffer space while the two ends share the CPU, so the deadline
    // interrupts the wait as well.
    let stop = tokio::time::sleep_until(deadline.into());
    tokio::pin!(stop);
    let mut ticker = tokio::time::interval(PACING_TICK);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let outcome = 'sending: loop {
        let due = match rate {
            Rate::Max => sent + 1,
            Rate::PerSecond(rate) => tokio::select! {
                biased;
                () = &mut stop => break 'sending Ok(()),
                now = ticker.tick() => {
                    (now.into_std().duration_since(started).as_secs_f64() * rate) as u64
                }
            },
        };
        while sent < due {
            tokio::select! {
                biased;
                () = &mut stop => break 'sending Ok(()),
                // Waiting for buffer space keeps the client from discarding its own datagrams.
                result = connection.send_datagram_wait(payload.clone()) => match result {
                    Ok(()) => sent += 1,
                    Err(e) => break 'sending Err(e),
                },
            }
        }
    };
    if let Err(e) = outcome {
        eprintln!(
            "peer-raw-quinn: connection {} stopped sending after {sent} datagrams: {e}",
            connection.stable_id()
        );
    }
    sent
}

/// User plus system CPU time of this process in seconds, from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // The command name in field 2 may contain spaces, so count fields after its `)`.
    let Some(name_end) = stat.rfind(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = stat[name_end + 1..].split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 = fields
        .get(11..13)
        .unwrap_or_default()
        .iter()
        .filter_map(|field| field.parse::<u64>().ok())
        .sum();
    ticks as f64 / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> f64 {
    extern "C" {
        fn sysconf(name: std::os::raw::c_int) -> std::os::raw::c_long;
    }
    /// `_SC_CLK_TCK` in glibc's unistd.h.
    const SC_CLK_TCK: std::os::raw::c_int = 2;
    // SAFETY: sysconf takes an integer and reads a constant of the C library.
    let ticks = unsafe { sysconf(SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}
