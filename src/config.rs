//! Command-line options and the configuration they produce.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::client::cli::{PubArgs, SubArgs};
use crate::hub::{HubConfig, QueueLimits};

/// hubcast: a real-time pub/sub server over WebTransport, HTTP/3 and TCP fallbacks.
///
/// Without a subcommand, hubcast runs the server with the options below, as `hubcast serve`
/// does.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub serve: Args,
}

/// The subcommands of `hubcast`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default without a subcommand).
    Serve(Args),
    /// Subscribe to filters and print each delivery as a line.
    Sub(SubArgs),
    /// Publish a payload, or each line of standard input, and print each event's cursor.
    Pub(PubArgs),
}

/// hubcast: a real-time pub/sub server over WebTransport, HTTP/3 and TCP fallbacks.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Args {
    /// UDP address for QUIC (HTTP/3 and WebTransport); repeat to listen on several. Port 0
    /// picks a free port. [default: 127.0.0.1:4433 and [::1]:4433]
    #[arg(long = "quic-listen", value_name = "ADDR")]
    pub quic_listen: Vec<SocketAddr>,

    /// TCP address for HTTP/1.1 (WebSocket, SSE, long polling, publish API, demo); repeat to
    /// listen on several. Port 0 picks a free port. [default: 127.0.0.1:8080 and [::1]:8080]
    #[arg(long = "http-listen", value_name = "ADDR")]
    pub http_listen: Vec<SocketAddr>,

    /// PEM certificate chain to serve, used as is; requires --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,

    /// PEM private key of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,

    /// Directory for the generated development certificate when no --cert is given.
    #[arg(long, value_name = "DIR", default_value = "certs")]
    pub cert_dir: PathBuf,

    /// Directory of the web demo served at `/`.
    #[arg(long, value_name = "DIR", default_value = "web")]
    pub web_dir: PathBuf,

    /// Maximum number of events kept in history.
    #[arg(long, value_name = "COUNT", default_value_t = 10_000)]
    pub history_events: usize,

    /// Maximum total payload bytes kept in history.
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    pub history_bytes: usize,

    /// Maximum payload of one message, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    pub max_payload: usize,

    /// Maximum total payload bytes of the latest telemetry values kept per topic.
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    pub retained_bytes: usize,

    /// Maximum number of deliveries queued for one subscriber before it lags.
    #[arg(long, value_name = "COUNT", default_value_t = 256)]
    pub queue_messages: usize,

    /// Maximum bytes queued for one subscriber before it lags.
    #[arg(long, value_name = "BYTES", default_value_t = 256 << 10)]
    pub queue_bytes: usize,

    /// Seconds between heartbeats: SSE comments and WebSocket pings.
    #[arg(long, value_name = "SECONDS", default_value_t = 15)]
    pub heartbeat: u64,

    /// Maximum wait of a long poll, in seconds; longer `timeout` values are cut to this.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub poll_max_timeout: u64,

    /// Maximum subscriptions on one WebSocket or WebTransport connection.
    #[arg(long, value_name = "COUNT", default_value_t = 64)]
    pub max_subscriptions: usize,

    /// Maximum server-opened event streams per WebTransport session; topics share them beyond.
    #[arg(long, value_name = "COUNT", default_value_t = 8)]
    pub wt_event_streams: usize,

    /// Seconds a write may stall before the connection is closed as too slow.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub write_timeout: u64,

    /// Seconds a WebSocket peer may stay silent after a heartbeat ping before it counts as gone.
    #[arg(long, value_name = "SECONDS", default_value_t = 20)]
    pub peer_timeout: u64,

    /// Seconds a client may take to send a request head; idle keep-alive connections close
    /// after the same time.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub header_timeout: u64,

    /// QUIC idle timeout, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub idle_timeout: u64,

    /// Receive and send buffer of each QUIC UDP socket, in bytes. Linux caps it at
    /// net.core.rmem_max and net.core.wmem_max; a buffer too small for a burst drops packets,
    /// which QUIC then resends or, for datagrams, loses.
    #[arg(long, value_name = "BYTES", default_value_t = 4 << 20)]
    pub udp_buffer: usize,

    /// Maximum bytes of datagrams queued in each QUIC connection, in each direction. When the
    /// send queue is full, the oldest unsent datagram is dropped, so this bounds both the
    /// memory a session can hold and how stale its telemetry can get. Minimum 2048.
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 10)]
    pub datagram_buffer: usize,
}

/// Smallest datagram queue: room for one datagram of the largest size a 1,500-byte MTU allows.
/// A smaller queue would also forbid clients datagrams that the path could carry.
const MIN_DATAGRAM_BUFFER: usize = 2048;

/// Complete server configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// UDP addresses for QUIC.
    pub quic_listen: Vec<SocketAddr>,
    /// TCP addresses for HTTP/1.1.
    pub http_listen: Vec<SocketAddr>,
    /// Whether an address that cannot be bound is skipped with a warning (the built-in
    /// defaults, where `::1` may be missing) instead of failing start-up.
    pub skip_unavailable: bool,
    pub cert: Option<(PathBuf, PathBuf)>,
    pub cert_dir: PathBuf,
    pub web_dir: PathBuf,
    pub hub: HubConfig,
    /// Interval of SSE comment heartbeats and WebSocket pings. Default 15 s.
    pub heartbeat: Duration,
    /// Cap of a long poll's wait. Default 30 s.
    pub poll_max_timeout: Duration,
    /// Subscriptions per WebSocket or WebTransport connection. Default 64.
    pub max_subscriptions: usize,
    /// Server-opened event streams per WebTransport session. Default 8.
    pub wt_event_streams: usize,
    /// QUIC idle timeout. Default 30 s; keep-alives go out at a third of it.
    pub idle_timeout: Duration,
    /// How long a write may stall before the connection is closed as too slow. Default 30 s.
    pub write_timeout: Duration,
    /// How long a WebSocket peer may stay silent after a heartbeat ping. Default 20 s.
    pub peer_timeout: Duration,
    /// How long a client may take to send a request head over TCP. Default 30 s.
    pub header_timeout: Duration,
    /// Receive and send buffer of each QUIC UDP socket, in bytes. Default 4 MiB.
    pub udp_buffer_bytes: usize,
    /// Datagram bytes queued per QUIC connection in each direction. Default 64 KiB.
    pub datagram_buffer_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Args::parse_from(["hubcast"]).into_config()
    }
}

impl Args {
    /// Turns parsed options into a configuration.
    pub fn into_config(self) -> Config {
        let skip_unavailable = self.quic_listen.is_empty() || self.http_listen.is_empty();
        let or_loopback = |addrs: Vec<SocketAddr>, port: u16| {
            if addrs.is_empty() {
                vec![
                    SocketAddr::from(([127, 0, 0, 1], port)),
                    SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
                ]
            } else {
                addrs
            }
        };
        Config {
            quic_listen: or_loopback(self.quic_listen, 4433),
            http_listen: or_loopback(self.http_listen, 8080),
            skip_unavailable,
            cert: self.cert.zip(self.key),
            cert_dir: self.cert_dir,
            web_dir: self.web_dir,
            hub: HubConfig {
                history_max_events: self.history_events,
                history_max_bytes: self.history_bytes,
                max_payload_bytes: self.max_payload,
                max_retained_bytes: self.retained_bytes,
                queue: QueueLimits {
                    max_messages: self.queue_messages,
                    max_bytes: self.queue_bytes,
                },
                ..HubConfig::default()
            },
            heartbeat: Duration::from_secs(self.heartbeat.max(1)),
            poll_max_timeout: Duration::from_secs(self.poll_max_timeout),
            max_subscriptions: self.max_subscriptions,
            wt_event_streams: self.wt_event_streams.max(1),
            idle_timeout: Duration::from_secs(self.idle_timeout.max(1)),
            write_timeout: Duration::from_secs(self.write_timeout.max(1)),
            peer_timeout: Duration::from_secs(self.peer_timeout.max(1)),
            header_timeout: Duration::from_secs(self.header_timeout.max(1)),
            udp_buffer_bytes: self.udp_buffer,
            datagram_buffer_bytes: self.datagram_buffer.max(MIN_DATAGRAM_BUFFER),
        }
    }
}

impl Config {
    /// Configuration for tests and embedding: one loopback address per listener on a free port,
    /// and the generated certificate in `cert_dir`.
    pub fn loopback(cert_dir: PathBuf) -> Self {
        Self {
            quic_listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            http_listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            skip_unavailable: false,
            cert_dir,
            ..Self::default()
        }
    }

    /// Largest WebSocket message or control-stream frame accepted: a base64 payload of the
    /// maximum size plus room for the rest of the command.
    pub fn max_command_bytes(&self) -> usize {
        self.hub.max_payload_bytes / 3 * 4 + 4 + 4096
    }
}
