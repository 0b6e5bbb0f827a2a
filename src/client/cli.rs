//! The `hubcast sub` and `hubcast pub` commands.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt as _;
use http::uri::Authority;
use serde::Serialize;
use tokio::io::AsyncBufReadExt as _;
use tracing::{info, warn};

use super::{
    fetch_cert_info, parse_cert_hash, Client, Connector, Delivery, Error, Options, Transport,
};

/// Default TCP port of the server (protocol section 10.1).
const DEFAULT_HTTP_PORT: u16 = 8080;

/// Default UDP port of the server (protocol section 10.1).
const DEFAULT_QUIC_PORT: u16 = 4433;

/// Publishes from standard input that may wait for their acknowledgement at once.
const PUBLISH_WINDOW: usize = 64;

/// How long a command waits for its connections to send their close packets before exiting.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// The `--transport` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportArg {
    /// WebTransport first, then WebSocket.
    Auto,
    Webtransport,
    Websocket,
}

/// The `--format` values of `hubcast sub`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON envelope per line, as the WebSocket protocol sends them.
    Json,
    /// Each payload as it is, followed by a line feed.
    Raw,
}

/// Connection options of `hubcast sub` and `hubcast pub`.
#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    /// Host and port of the server's TCP listener, used for WebSocket and for
    /// GET /v1/cert-hash.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8080")]
    pub server: String,

    /// WebSocket URL, in place of --server: its host and port also serve GET /v1/cert-hash.
    /// [default: ws://HOST:PORT/v1/ws with HOST:PORT from --server]
    #[arg(long = "url-ws", value_name = "URL", conflicts_with = "server")]
    pub url_ws: Option<String>,

    /// WebTransport URL. [default: https://HOST:PORT/v1/wt, with the HOST of the TCP listener
    /// and PORT the QUIC port that GET /v1/cert-hash reports, or 4433]
    #[arg(long = "url-wt", value_name = "URL")]
    pub url_wt: Option<String>,

    /// SHA-256 hash of the server certificate as 64 hex digits, colons allowed: the `hex`
    /// member of GET /v1/cert-hash. Without it or --insecure, the client fetches the hash from
    /// the server's TCP listener over cleartext HTTP, which trusts the network path.
    #[arg(long, value_name = "HEX", conflicts_with = "insecure")]
    pub cert_hash: Option<String>,

    /// Accept any server certificate. Only for a server you run yourself.
    #[arg(long)]
    pub insecure: bool,

    /// Transport to use.
    #[arg(long, value_enum, default_value_t = TransportArg::Auto)]
    pub transport: TransportArg,

    /// Seconds allowed for each transport to connect.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    pub connect_timeout: f64,
}

/// Options of `hubcast sub`.
#[derive(Debug, clap::Args)]
pub struct SubArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,

    /// Resume after this cursor, as an earlier delivery or `subscribed` reply gave it.
    #[arg(long, value_name = "CURSOR")]
    pub cursor: Option<String>,

    /// Exit after this many deliveries: events, telemetry values and resync signals.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,

    /// Filters such as `sensors/#` or `alerts/+`; quote them in the shell.
    #[arg(required = true, value_name = "FILTER")]
    pub filters: Vec<String>,
}

/// Options of `hubcast pub`.
#[derive(Debug, clap::Args)]
pub struct PubArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,

    /// Event name to attach to each event.
    #[arg(long, value_name = "NAME", conflicts_with = "telemetry")]
    pub event: Option<String>,

    /// Publish telemetry instead of events. Each value is acknowledged by the server.
    #[arg(long)]
    pub telemetry: bool,

    /// Topic name, without wildcards.
    #[arg(value_name = "TOPIC")]
    pub topic: String,

    /// Payload. Without it, each line of standard input is published as one message.
    #[arg(value_name = "PAYLOAD")]
    pub payload: Option<String>,
}

/// Builds a connector from the command-line options.
async fn connector(args: &ConnectArgs, reconnect: bool) -> Result<Connector, String> {
    if !(args.connect_timeout.is_finite() && args.connect_timeout > 0.0) {
        return Err(format!(
            "invalid --connect-timeout {}: give a positive number of seconds",
            args.connect_timeout
        ));
    }
    let connect_timeout = Duration::from_secs_f64(args.connect_timeout.min(3600.0));
    // The server's TCP listener, from --url-ws when given and --server otherwise.
    let (server, tcp, websocket_url) = match &args.url_ws {
        Some(url) => {
            let invalid = || format!("invalid --url-ws {url:?}: give ws://HOST:PORT/v1/ws");
            let uri: http::Uri = url.parse().map_err(|_| invalid())?;
            let server = uri.authority().cloned().ok_or_else(invalid)?;
            let port = server.port_u16().unwrap_or(80);
            let tcp = format!("{}:{port}", server.host());
            (server, tcp, url.clone())
        }
        None => {
            let server: Authority = args.server.parse().map_err(|_| {
                format!(
                    "invalid --server {:?}: give HOST:PORT, such as 127.0.0.1:8080",
                    args.server
                )
            })?;
            let port = server.port_u16().unwrap_or(DEFAULT_HTTP_PORT);
            let tcp = format!("{}:{port}", server.host());
            let websocket_url = format!("ws://{tcp}/v1/ws");
            (server, tcp, websocket_url)
        }
    };
    let cert_hash = args
        .cert_hash
        .as_deref()
        .map(parse_cert_hash)
        .transpose()
        .map_err(|e| format!("invalid --cert-hash: {e}"))?;

    let webtransport_url = match (args.transport, &args.url_wt) {
        (TransportArg::Websocket, _) => None,
        (_, Some(url)) => Some(url.clone()),
        (_, None) => {
            // The QUIC port is whatever the server reports; its default otherwise.
            let port = match fetch_cert_info(&tcp, connect_timeout).await {
                Ok(info) => info.quic_port,
                Err(e) => {
                    warn!(error = %e, port = DEFAULT_QUIC_PORT, "using the default QUIC port");
                    DEFAULT_QUIC_PORT
                }
            };
            let host = server.host();
            let host = if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]")
            } else {
                host.to_owned()
            };
            Some(format!("https://{host}:{port}/v1/wt"))
        }
    };
    let mut options = Options::new(webtransport_url, Some(websocket_url));
    options.cert_hash = cert_hash;
    options.insecure = args.insecure;
    options.connect_timeout = connect_timeout;
    options.reconnect = reconnect;
    options.transport = match args.transport {
        TransportArg::Auto => None,
        TransportArg::Webtransport => Some(Transport::WebTransport),
        TransportArg::Websocket => Some(Transport::WebSocket),
    };
    Connector::new(options).map_err(|e| e.to_string())
}

async fn connect(args: &ConnectArgs, reconnect: bool) -> Result<(Connector, Client), String> {
    let connector = connector(args, reconnect).await?;
    let client = connector.connect().await.map_err(|e| e.to_string())?;
    info!(transport = %client.transport(), "connected");
    Ok((connector, client))
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

/// Runs `hubcast sub`: prints one line per delivery until `--count` deliveries or Ctrl-C, and
/// resumes after connection drops.
pub async fn sub(args: SubArgs) -> ExitCode {
    let (connector, client) = match connect(&args.connect, true).await {
        Ok(connected) => connected,
        Err(e) => return fail(e),
    };
    let filters: Vec<&str> = args.filters.iter().map(String::as_str).collect();
    let mut subscription = match client.subscribe(&filters, args.cursor.as_deref()).await {
        Ok(subscription) => subscription,
        Err(e) => return fail(e),
    };
    info!(
        filters = ?args.filters,
        cursor = subscription.cursor().unwrap_or_default(),
        "subscribed"
    );
    let mut stdout = std::io::stdout();
    let mut received = 0u64;
    let code = loop {
        if args.count.is_some_and(|count| received >= count) {
            break ExitCode::SUCCESS;
        }
        let delivery = tokio::select! {
            delivery = subscription.next() => delivery,
            _ = tokio::signal::ctrl_c() => break ExitCode::SUCCESS,
        };
        let Some(delivery) = delivery else {
            break fail("the subscription ended");
        };
        received += 1;
        let written = match args.format {
            Format::Json => write_json(&mut stdout, &delivery),
            Format::Raw => write_raw(&mut stdout, &delivery),
        };
        match written {
            Ok(()) => {}
            // A reader such as `head` that has seen enough closes the pipe.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break ExitCode::SUCCESS,
            Err(e) => break fail(format!("failed to write to standard output: {e}")),
        }
    };
    drop(subscription);
    client.close().await;
    connector.wait_idle(CLOSE_WAIT).await;
    code
}

/// A delivery as the JSON envelope of the protocol.
#[derive(Serialize)]
struct Envelope<'a> {
    op: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_b64: Option<String>,
}

fn envelope(delivery: &Delivery) -> Envelope<'_> {
    let empty = Envelope {
        op: "",
        topic: None,
        cursor: None,
        reason: None,
        event: None,
        payload: None,
        payload_b64: None,
    };
    match delivery {
        Delivery::Event {
            topic,
            cursor,
            event,
            payload,
        } => {
            let (text, encoded) = split_payload(payload);
            Envelope {
                op: "event",
                topic: Some(topic),
                cursor: Some(cursor),
                event: event.as_deref(),
                payload: text,
                payload_b64: encoded,
                ..empty
            }
        }
        Delivery::Telemetry {
            topic,
            event,
            payload,
        } => {
            let (text, encoded) = split_payload(payload);
            Envelope {
                op: "telemetry",
                topic: Some(topic),
                event: event.as_deref(),
                payload: text,
                payload_b64: encoded,
                ..empty
            }
        }
        Delivery::Resync { cursor, reason } => Envelope {
            op: "resync",
            cursor: Some(cursor),
            reason: Some(reason),
            ..empty
        },
    }
}

/// Splits a payload into JSON text when it is UTF-8, or base64 otherwise (protocol section 2).
fn split_payload(payload: &[u8]) -> (Option<&str>, Option<String>) {
    match std::str::from_utf8(payload) {
        Ok(text) => (Some(text), None),
        Err(_) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(payload)),
        ),
    }
}

fn write_json(out: &mut std::io::Stdout, delivery: &Delivery) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(&envelope(delivery)).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut out = out.lock();
    out.write_all(&line)?;
    out.flush()
}

fn write_raw(out: &mut std::io::Stdout, delivery: &Delivery) -> std::io::Result<()> {
    let payload = match delivery {
        Delivery::Event { payload, .. } | Delivery::Telemetry { payload, .. } => payload,
        Delivery::Resync { cursor, reason } => {
            warn!(%cursor, %reason, "resync: the events before this cursor were skipped");
            return Ok(());
        }
    };
    let mut out = out.lock();
    out.write_all(payload)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Runs `hubcast pub`: publishes the payload, or each line of standard input, and prints the
/// cursor of each event.
pub async fn publish(args: PubArgs) -> ExitCode {
    let (connector, client) = match connect(&args.connect, false).await {
        Ok(connected) => connected,
        Err(e) => return fail(e),
    };
    let result = match &args.payload {
        Some(payload) => publish_one(
            client.clone(),
            Arc::from(args.topic.as_str()),
            args.event.clone().map(Arc::from),
            args.telemetry,
            payload.clone(),
        )
        .await
        .map(|cursor| print_cursor(cursor.as_deref()))
        .map_err(|e| e.to_string()),
        None => publish_lines(&client, &args).await,
    };
    client.close().await;
    connector.wait_idle(CLOSE_WAIT).await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// Prints an event's cursor. A closed standard output is ignored: the publish itself went
/// through.
fn print_cursor(cursor: Option<&str>) {
    if let Some(cursor) = cursor {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{cursor}").and_then(|()| out.flush());
    }
}

async fn publish_one(
    client: Client,
    topic: Arc<str>,
    event: Option<Arc<str>>,
    telemetry: bool,
    payload: String,
) -> Result<Option<String>, Error> {
    if telemetry {
        client
            .publish_telemetry_acked(&topic, payload.as_bytes())
            .await?;
        Ok(None)
    } else {
        client
            .publish(&topic, payload.as_bytes(), event.as_deref())
            .await
            .map(Some)
    }
}

/// Publishes each line of standard input, up to [`PUBLISH_WINDOW`] at a time, and prints the
/// cursors in input order.
async fn publish_lines(client: &Client, args: &PubArgs) -> Result<(), String> {
    let topic: Arc<str> = Arc::from(args.topic.as_str());
    let event: Option<Arc<str>> = args.event.as_deref().map(Arc::from);
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut in_flight = FuturesOrdered::new();
    let mut input_done = false;
    let mut line_number = 0u64;
    loop {
        tokio::select! {
            line = lines.next_line(), if !input_done && in_flight.len() < PUBLISH_WINDOW => {
                match line {
                    Ok(Some(line)) => {
                        line_number += 1;
                        let publishing = publish_one(
                            client.clone(),
                            topic.clone(),
                            event.clone(),
                            args.telemetry,
                            line,
                        );
                        let number = line_number;
                        in_flight.push_back(async move { (number, publishing.await) });
                    }
                    Ok(None) => input_done = true,
                    Err(e) => return Err(format!("failed to read standard input: {e}")),
                }
            }
            Some((number, result)) = in_flight.next() => match result {
                Ok(cursor) => print_cursor(cursor.as_deref()),
                Err(e) => return Err(format!("line {number}: {e}")),
            },
            else => return Ok(()),
        }
    }
}
