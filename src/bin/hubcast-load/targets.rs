//! The servers under test and how the load generator subscribes and publishes on each.
//!
//! hubcast's WebTransport subscribers go through `hubcast::client`. Its WebSocket subscribers
//! and its publisher speak the JSON command protocol over plain tungstenite, as the WebSocket
//! peers are read, and its SSE subscribers read the event stream over HTTP/1.1 (hyper) and
//! HTTP/3 (h3). The peers speak their own
//! protocols, written here from their public specifications: NATS over WebSocket, Engine.IO
//! v4 for Socket.IO, a plain WebSocket hub, Pushpin's GRIP publish API and raw TCP lines.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use bytes::{Buf as _, Bytes};
use futures_util::future::BoxFuture;
use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt as _, Full};
use hubcast::client::{self, Client, Connector, Delivery};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, BufWriter};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::probe::{parse_stamp, Scanner, Shared, Tally};

/// Time allowed for one connection to open and subscribe.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// QUIC connections that share one client endpoint, and so one UDP socket.
const CONNECTIONS_PER_ENDPOINT: usize = 256;
/// Kernel receive and send buffer of each client UDP socket.
const UDP_BUFFER: usize = 4 << 20;
/// Read buffer of each WebSocket the load generator opens.
const WS_READ_BUFFER: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// hubcast over WebSocket (`/v1/ws`).
    HubcastWs,
    /// hubcast over HTTP/1.1 Server-Sent Events (`/v1/events`).
    HubcastSse,
    /// hubcast over HTTP/3 Server-Sent Events; `--server` is the QUIC address.
    #[value(name = "hubcast-h3sse")]
    #[serde(rename = "hubcast-h3sse")]
    HubcastH3Sse,
    /// hubcast over WebTransport event streams; `--server` is the QUIC address.
    HubcastWt,
    /// nats-server's WebSocket listener; `--publish` is its client port.
    NatsWs,
    /// A broadcast hub on Node's `ws` package.
    WsHub,
    /// A Socket.IO hub with rooms.
    Socketio,
    /// Pushpin streaming SSE; `--publish` is its HTTP control port.
    Pushpin,
    /// A raw TCP fan-out of newline-terminated lines, with no hub and no framing.
    RawTcp,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::HubcastWs => "hubcast-ws",
            Target::HubcastSse => "hubcast-sse",
            Target::HubcastH3Sse => "hubcast-h3sse",
            Target::HubcastWt => "hubcast-wt",
            Target::NatsWs => "nats-ws",
            Target::WsHub => "ws-hub",
            Target::Socketio => "socketio",
            Target::Pushpin => "pushpin",
            Target::RawTcp => "raw-tcp",
        }
    }

    pub fn is_hubcast(self) -> bool {
        matches!(
            self,
            Target::HubcastWs | Target::HubcastSse | Target::HubcastH3Sse | Target::HubcastWt
        )
    }

    /// Tells whether the subscriber's address is the server's QUIC address.
    pub fn uses_quic(self) -> bool {
        matches!(self, Target::HubcastH3Sse | Target::HubcastWt)
    }

    /// Tells whether the server confirms a subscription, so the publisher can start right
    /// after. Without confirmation the run waits a moment before publishing.
    pub fn confirms_subscription(self) -> bool {
        !matches!(self, Target::WsHub | Target::RawTcp | Target::Pushpin)
    }

    /// Returns the topic, subject or channel of a fan-out run, in the target's naming rules.
    pub fn fanout_topic(self) -> &'static str {
        match self {
            t if t.is_hubcast() => "bench/fanout",
            Target::NatsWs => "bench.fanout",
            _ => "bench-fanout",
        }
    }
}

/// Addresses and shared client state for one run against one server.
pub struct Context {
    pub target: Target,
    /// Address of the subscribers' connections.
    pub server: SocketAddr,
    /// Address of the publisher's connection.
    pub publish: SocketAddr,
    pub topic: String,
    connector: Option<Connector>,
    quic: QuicPool,
}

impl Context {
    pub fn new(target: Target, server: SocketAddr, publish: SocketAddr) -> anyhow::Result<Self> {
        let connector = match target {
            Target::HubcastWt => Some(hubcast_connector(Some(server), None)?),
            Target::HubcastWs => Some(hubcast_connector(None, Some(server))?),
            _ => None,
        };
        Ok(Self {
            target,
            server,
            publish,
            topic: target.fanout_topic().to_owned(),
            connector,
            quic: QuicPool::default(),
        })
    }
}

impl Context {
    /// Waits, for at most a second, until every QUIC connection of the run has sent its close
    /// packet, so the server frees them at once rather than after its idle timeout.
    pub async fn wait_closed(&self) {
        let limit = Duration::from_secs(1);
        if let Some(connector) = &self.connector {
            connector.wait_idle(limit).await;
        }
        let endpoints = self.quic.endpoints.lock().unwrap().0.clone();
        for endpoint in endpoints {
            let _ = tokio::time::timeout(limit, endpoint.wait_idle()).await;
        }
    }
}

/// A connector to hubcast for one transport only, trusting any certificate: the load
/// generator only talks to servers on loopback that the person running it started.
pub fn hubcast_connector(
    quic: Option<SocketAddr>,
    tcp: Option<SocketAddr>,
) -> anyhow::Result<Connector> {
    let mut options = client::Options::new(
        quic.map(|a| format!("https://{a}/v1/wt")),
        tcp.map(|a| format!("ws://{a}/v1/ws")),
    );
    options.insecure = true;
    options.reconnect = false;
    options.connect_timeout = CONNECT_TIMEOUT;
    Connector::new(options).context("failed to set up the hubcast client")
}

/// Reads deliveries until cancelled or the connection ends, then returns what it counted
/// and why it ended early, if it did.
pub type Reader = BoxFuture<'static, (Tally, Option<String>)>;

/// Order check a subscriber applies to its deliveries.
#[derive(Clone, Copy)]
pub enum Order {
    /// One publisher's sequence, expected complete and in order.
    Sequence,
    /// Any order, from several publishers.
    Unordered,
}

/// Opens one subscriber on `filter` and returns once the server has confirmed the
/// subscription, where the target confirms it.
pub async fn subscribe(
    ctx: &Context,
    filter: &str,
    order: Order,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) -> anyhow::Result<Reader> {
    let sink = Sink {
        shared,
        tally: Tally::default(),
        order,
    };
    let opening = open_subscriber(ctx, filter, sink, cancel);
    tokio::time::timeout(CONNECT_TIMEOUT, opening)
        .await
        .map_err(|_| anyhow!("subscribing timed out after {CONNECT_TIMEOUT:?}"))?
}

async fn open_subscriber(
    ctx: &Context,
    filter: &str,
    sink: Sink,
    cancel: CancellationToken,
) -> anyhow::Result<Reader> {
    match ctx.target {
        Target::HubcastWs => {
            // Read like the peers' WebSocket subscribers below, so that every WebSocket target
            // costs the load generator the same per message. The publisher and the
            // WebTransport subscribers use `hubcast::client`.
            let ws = hubcast_ws_subscribe(ctx.server, filter).await?;
            Ok(Box::pin(read_websocket(ws, Flavor::Hubcast, sink, cancel)))
        }
        Target::HubcastWt => {
            let connector = ctx.connector.as_ref().expect("hubcast targets have one");
            let client = connector.connect().await?;
            let subscription = client.subscribe(&[filter], None).await?;
            Ok(Box::pin(read_hubcast(client, subscription, sink, cancel)))
        }
        Target::HubcastSse | Target::Pushpin => {
            let path = match ctx.target {
                Target::Pushpin => format!("/sub?topic={}", query_escape(filter)),
                _ => format!("/v1/events?topic={}", query_escape(filter)),
            };
            let mut body = http_stream(ctx.server, &path).await?;
            // hubcast's opening comment confirms the subscription, and so does the first
            // chunk Pushpin passes on from its origin once it keeps the stream open.
            match body.frame().await {
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("failed to read the event stream's first chunk: {e}"),
                None => bail!("the event stream ended before its first chunk"),
            }
            Ok(Box::pin(read_http_stream(body, sink, cancel)))
        }
        Target::HubcastH3Sse => {
            let path = format!("/v1/events?topic={}", query_escape(filter));
            let stream = ctx.quic.h3_get(ctx.server, &path).await?;
            Ok(Box::pin(read_h3_stream(stream, sink, cancel)))
        }
        Target::NatsWs => {
            let ws = nats_ws_subscribe(ctx.server, filter).await?;
            Ok(Box::pin(read_websocket(ws, Flavor::Nats, sink, cancel)))
        }
        Target::WsHub => {
            let path = format!("/sub?topic={}", query_escape(filter));
            let ws = ws_connect(ctx.server, &path).await?;
            Ok(Box::pin(read_websocket(ws, Flavor::Plain, sink, cancel)))
        }
        Target::Socketio => {
            let ws = socketio_join(ctx.server, filter).await?;
            Ok(Box::pin(read_websocket(ws, Flavor::SocketIo, sink, cancel)))
        }
        Target::RawTcp => {
            let mut stream = TcpStream::connect(ctx.server).await?;
            stream.set_nodelay(true)?;
            stream.write_all(b"SUB\n").await?;
            Ok(Box::pin(read_raw(stream, sink, cancel)))
        }
    }
}

/// A subscriber's counts on their way to the shared totals.
struct Sink {
    shared: Arc<Shared>,
    tally: Tally,
    order: Order,
}

impl Sink {
    fn stamp(&mut self, seq: u64, sent: u64) {
        match self.order {
            Order::Sequence => self.tally.record(&self.shared, seq, sent),
            Order::Unordered => self.tally.record_unordered(&self.shared, sent),
        }
    }

    fn scan(&mut self, scanner: &mut Scanner, bytes: &[u8]) {
        let Sink {
            shared,
            tally,
            order,
        } = self;
        scanner.feed(bytes, |seq, sent| match order {
            Order::Sequence => tally.record(shared, seq, sent),
            Order::Unordered => tally.record_unordered(shared, sent),
        });
    }

    fn finish(self, ended: Option<String>) -> (Tally, Option<String>) {
        (self.tally, ended)
    }
}

async fn read_hubcast(
    client: Client,
    mut subscription: client::Subscription,
    mut sink: Sink,
    cancel: CancellationToken,
) -> (Tally, Option<String>) {
    let ended = loop {
        let delivery = tokio::select! {
            _ = cancel.cancelled() => break None,
            delivery = subscription.next() => delivery,
        };
        match delivery {
            Some(Delivery::Event { payload, .. }) | Some(Delivery::Telemetry { payload, .. }) => {
                match parse_stamp(&payload) {
                    Some((seq, sent)) => sink.stamp(seq, sent),
                    None => break Some("a delivery without a stamp".to_owned()),
                }
            }
            Some(Delivery::Resync { cursor, reason }) => {
                break Some(format!("resync to {cursor} ({reason})"));
            }
            None => break Some("the connection ended".to_owned()),
        }
    };
    client.close().await;
    sink.finish(ended)
}

/// Opens a streaming GET over HTTP/1.1 and returns its body once the status is 200.
async fn http_stream(addr: SocketAddr, path: &str) -> anyhow::Result<hyper::body::Incoming> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::ACCEPT, "text/event-stream")
        .body(Full::default())?;
    let response = sender.send_request(request).await?;
    if response.status() != http::StatusCode::OK {
        bail!("GET {path} returned {}", response.status());
    }
    Ok(response.into_body())
}

async fn read_http_stream(
    mut body: hyper::body::Incoming,
    mut sink: Sink,
    cancel: CancellationToken,
) -> (Tally, Option<String>) {
    let mut scanner = Scanner::default();
    let ended = loop {
        let frame = tokio::select! {
            _ = cancel.cancelled() => break None,
            frame = body.frame() => frame,
        };
        match frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    sink.scan(&mut scanner, data);
                }
            }
            Some(Err(e)) => break Some(format!("failed to read the event stream: {e}")),
            None => break Some("the event stream ended".to_owned()),
        }
    };
    sink.finish(ended)
}

type H3Stream = h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// An HTTP/3 event stream with the connection it runs on. h3 closes a client connection
/// once every request sender is dropped, so the sender lives as long as the stream.
pub struct H3Subscription {
    stream: H3Stream,
    _sender: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    connection: quinn::Connection,
}

async fn read_h3_stream(
    subscription: H3Subscription,
    mut sink: Sink,
    cancel: CancellationToken,
) -> (Tally, Option<String>) {
    let H3Subscription {
        mut stream,
        _sender,
        connection,
    } = subscription;
    let mut scanner = Scanner::default();
    let ended = loop {
        let data = tokio::select! {
            _ = cancel.cancelled() => break None,
            data = stream.recv_data() => data,
        };
        match data {
            Ok(Some(mut chunk)) => {
                while chunk.has_remaining() {
                    let part = chunk.chunk();
                    let len = part.len();
                    sink.scan(&mut scanner, part);
                    chunk.advance(len);
                }
            }
            Ok(None) => break Some("the HTTP/3 event stream ended".to_owned()),
            Err(e) => break Some(format!("failed to read the HTTP/3 event stream: {e}")),
        }
    };
    connection.close(0u32.into(), b"done");
    sink.finish(ended)
}

/// Client QUIC endpoints for HTTP/3, each shared by up to `CONNECTIONS_PER_ENDPOINT`
/// connections.
#[derive(Default)]
pub struct QuicPool {
    endpoints: std::sync::Mutex<(Vec<quinn::Endpoint>, usize)>,
}

impl QuicPool {
    fn endpoint(&self) -> anyhow::Result<quinn::Endpoint> {
        let mut guard = self.endpoints.lock().unwrap();
        let (endpoints, used) = &mut *guard;
        if endpoints.is_empty() || *used >= CONNECTIONS_PER_ENDPOINT {
            let socket = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::DGRAM,
                Some(socket2::Protocol::UDP),
            )?;
            // As on the server: the default buffer drops packets when a fan-out bursts.
            let _ = socket.set_recv_buffer_size(UDP_BUFFER);
            let _ = socket.set_send_buffer_size(UDP_BUFFER);
            socket.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
            let mut endpoint = quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                None,
                socket.into(),
                Arc::new(quinn::TokioRuntime),
            )?;
            endpoint.set_default_client_config(h3_client_config()?);
            endpoints.push(endpoint);
            *used = 0;
        }
        *used += 1;
        Ok(endpoints.last().expect("one endpoint exists").clone())
    }

    /// Opens an HTTP/3 connection, sends a GET for `path` and returns the response stream
    /// once the opening chunk of the event stream has arrived.
    pub async fn h3_get(&self, addr: SocketAddr, path: &str) -> anyhow::Result<H3Subscription> {
        let connection = self.endpoint()?.connect(addr, "localhost")?.await?;
        let (mut driver, mut sender) = h3::client::builder()
            .build::<_, _, Bytes>(h3_quinn::Connection::new(connection.clone()))
            .await?;
        tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        let request = http::Request::get(format!("https://localhost{path}")).body(())?;
        let mut stream = sender.send_request(request).await?;
        stream.finish().await?;
        let response = stream.recv_response().await?;
        if response.status() != http::StatusCode::OK {
            bail!("HTTP/3 GET {path} returned {}", response.status());
        }
        // The opening comment confirms the subscription.
        let opening = stream.recv_data().await?;
        if opening.is_none() {
            bail!("the HTTP/3 event stream ended before its opening comment");
        }
        Ok(H3Subscription {
            stream,
            _sender: sender,
            connection,
        })
    }
}

fn h3_client_config() -> anyhow::Result<quinn::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}

/// Accepts any server certificate but still checks the handshake signature. Only for the
/// loopback servers the load generator is pointed at.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &rustls::pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

type Ws = WebSocketStream<TcpStream>;

async fn ws_connect(addr: SocketAddr, path: &str) -> anyhow::Result<Ws> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(0);
    let url = format!("ws://{addr}{path}");
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .with_context(|| format!("WebSocket handshake with {addr}{path} failed"))?;
    Ok(ws)
}

/// Reads the next text or binary message, skipping control frames.
async fn next_message<S>(ws: &mut S) -> anyhow::Result<Bytes>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(Bytes::from(text)),
            Some(Ok(Message::Binary(bytes))) => return Ok(bytes),
            Some(Ok(Message::Close(frame))) => bail!("the server closed the WebSocket: {frame:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("the WebSocket ended"),
        }
    }
}

/// Engine.IO v4 ping and pong packets.
const SOCKETIO_PING: &[u8] = b"2";
const SOCKETIO_PONG: &str = "3";

/// Protocol duties of a WebSocket subscriber besides scanning messages for stamps.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Plain,
    /// Replies to Engine.IO pings with pongs.
    SocketIo,
    /// Stop at a hubcast resync signal, which means events were skipped.
    Hubcast,
    /// Reply to NATS PINGs, which may share a message with MSG frames, and stop at `-ERR`.
    Nats,
}

async fn read_websocket(
    mut ws: Ws,
    flavor: Flavor,
    mut sink: Sink,
    cancel: CancellationToken,
) -> (Tally, Option<String>) {
    let mut scanner = Scanner::default();
    let ended = loop {
        let message = tokio::select! {
            _ = cancel.cancelled() => break None,
            message = next_message(&mut ws) => message,
        };
        match message {
            Ok(bytes) if flavor == Flavor::SocketIo && bytes.as_ref() == SOCKETIO_PING => {
                if let Err(e) = ws.send(Message::text(SOCKETIO_PONG)).await {
                    break Some(format!("failed to answer a ping: {e}"));
                }
            }
            Ok(bytes) if flavor == Flavor::Hubcast && bytes.starts_with(b"{\"op\":\"resync\"") => {
                break Some(format!("resync: {}", String::from_utf8_lossy(&bytes)));
            }
            Ok(bytes) if flavor == Flavor::Nats => {
                if bytes.starts_with(b"-ERR") {
                    break Some(format!("NATS error: {}", String::from_utf8_lossy(&bytes)));
                }
                if find(&bytes, b"PING\r\n").is_some() {
                    if let Err(e) = ws.send(Message::binary(&b"PONG\r\n"[..])).await {
                        break Some(format!("failed to answer a NATS PING: {e}"));
                    }
                }
                sink.scan(&mut scanner, &bytes);
            }
            Ok(bytes) => sink.scan(&mut scanner, &bytes),
            Err(e) => break Some(e.to_string()),
        }
    };
    let _ = ws.close(None).await;
    sink.finish(ended)
}

/// Connects to hubcast's WebSocket endpoint and subscribes to `filter`, returning once the
/// `subscribed` reply arrives.
async fn hubcast_ws_subscribe(addr: SocketAddr, filter: &str) -> anyhow::Result<Ws> {
    let mut ws = ws_connect(addr, "/v1/ws").await?;
    let command = serde_json::json!({"op": "subscribe", "id": 1, "filters": [filter]});
    ws.send(Message::text(command.to_string())).await?;
    let reply = next_message(&mut ws).await?;
    let reply: serde_json::Value = serde_json::from_slice(&reply)?;
    if reply["op"] != "subscribed" {
        bail!("subscribing to {filter:?} failed: {reply}");
    }
    Ok(ws)
}

/// Connects to Socket.IO over a WebSocket and joins room `topic`.
async fn socketio_join(addr: SocketAddr, topic: &str) -> anyhow::Result<Ws> {
    let mut ws = ws_connect(addr, "/socket.io/?EIO=4&transport=websocket").await?;
    let open = next_message(&mut ws).await?;
    if !open.starts_with(b"0") {
        bail!("expected the Engine.IO open packet, got {open:?}");
    }
    ws.send(Message::text("40")).await?;
    loop {
        let packet = next_message(&mut ws).await?;
        if packet.starts_with(b"40") {
            break;
        }
        if packet.starts_with(b"44") {
            bail!("Socket.IO refused the connection: {packet:?}");
        }
    }
    let join = serde_json::to_string(&("join", topic))?;
    ws.send(Message::text(format!("421{join}"))).await?;
    loop {
        let packet = next_message(&mut ws).await?;
        if packet.starts_with(b"431") {
            return Ok(ws);
        }
        if packet.as_ref() == SOCKETIO_PING {
            ws.send(Message::text(SOCKETIO_PONG)).await?;
        }
    }
}

/// Connects to NATS over a WebSocket, subscribes to `subject` and waits for the PONG that
/// follows the SUB, which confirms the server has processed it.
async fn nats_ws_subscribe(addr: SocketAddr, subject: &str) -> anyhow::Result<Ws> {
    let mut ws = ws_connect(addr, "/").await?;
    let info = next_message(&mut ws).await?;
    if !info.starts_with(b"INFO") {
        bail!("expected the NATS INFO line, got {info:?}");
    }
    let hello = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"protocol\":1}}\r\nSUB {subject} 1\r\nPING\r\n"
    );
    ws.send(Message::binary(hello.into_bytes())).await?;
    loop {
        let message = next_message(&mut ws).await?;
        if find(&message, b"PONG\r\n").is_some() {
            return Ok(ws);
        }
        if message.starts_with(b"-ERR") {
            bail!("NATS rejected the subscription: {message:?}");
        }
    }
}

async fn read_raw(
    mut stream: TcpStream,
    mut sink: Sink,
    cancel: CancellationToken,
) -> (Tally, Option<String>) {
    let mut scanner = Scanner::default();
    let mut buffer = vec![0u8; 16 * 1024];
    let ended = loop {
        let read = tokio::select! {
            _ = cancel.cancelled() => break None,
            read = stream.read(&mut buffer) => read,
        };
        match read {
            Ok(0) => break Some("the server closed the connection".to_owned()),
            Ok(n) => sink.scan(&mut scanner, &buffer[..n]),
            Err(e) => break Some(format!("failed to read: {e}")),
        }
    };
    sink.finish(ended)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Percent-encodes what a query value may not carry as is; topics here use only `/`,
/// `.`, `-`, letters, digits, `+` and `#`.
fn query_escape(value: &str) -> String {
    value.replace('+', "%2B").replace('#', "%23")
}

/// The one publisher of a fan-out run.
pub enum Publisher {
    /// `publish` commands over hubcast's WebSocket, at most [`HUBCAST_PIPELINE`] of them
    /// unacknowledged; a task reads the replies.
    Hubcast {
        sink: futures_util::stream::SplitSink<Ws, Message>,
        sent: u64,
        /// Number of `ack` replies so far; the reply reader drops its sender on any other reply.
        acked: tokio::sync::watch::Receiver<u64>,
        replies: tokio::task::JoinHandle<anyhow::Result<()>>,
    },
    /// `POST /publish?topic=T` with the payload as the body (ws-hub and Socket.IO hubs).
    HttpBody {
        sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        host: String,
        path: String,
    },
    /// Pushpin's HTTP control API: `POST /publish/` with a JSON list of items.
    Grip {
        sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        host: String,
        channel: String,
    },
    /// `PUB` over the plain NATS protocol.
    Nats {
        stream: BufWriter<TcpStream>,
        subject: String,
        sent: u64,
    },
    /// Newline-terminated lines to the raw TCP fan-out.
    Raw(TcpStream),
}

/// NATS messages between two PINGs the publisher waits on, so it cannot run ahead of the
/// server unboundedly.
const NATS_PING_EVERY: u64 = 100;

/// Unacknowledged hubcast publishes the publisher allows, the counterpart of
/// [`NATS_PING_EVERY`], so both servers read publishes at the same depth of pipelining.
const HUBCAST_PIPELINE: u64 = 100;

impl Publisher {
    pub async fn connect(ctx: &Context) -> anyhow::Result<Self> {
        let addr = ctx.publish;
        let publisher = match ctx.target {
            t if t.is_hubcast() => {
                let (sink, mut stream) = ws_connect(addr, "/v1/ws").await?.split();
                let (acks, acked) = tokio::sync::watch::channel(0u64);
                let replies = tokio::spawn(async move {
                    loop {
                        let reply = next_message(&mut stream).await?;
                        let json: serde_json::Value = serde_json::from_slice(&reply)
                            .context("hubcast sent a reply that is not JSON")?;
                        if json["op"] != "ack" {
                            bail!("hubcast rejected a publish: {json}");
                        }
                        acks.send_modify(|count| *count += 1);
                    }
                });
                Publisher::Hubcast {
                    sink,
                    sent: 0,
                    acked,
                    replies,
                }
            }
            Target::WsHub | Target::Socketio => Publisher::HttpBody {
                sender: http_sender(addr).await?,
                host: addr.to_string(),
                path: format!("/publish?topic={}", query_escape(&ctx.topic)),
            },
            Target::Pushpin => Publisher::Grip {
                sender: http_sender(addr).await?,
                host: addr.to_string(),
                channel: ctx.topic.clone(),
            },
            Target::NatsWs => {
                let mut stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                let mut info = vec![0u8; 4096];
                let n = stream.read(&mut info).await?;
                if !info[..n].starts_with(b"INFO") {
                    bail!("expected the NATS INFO line from {addr}");
                }
                stream
                    .write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n")
                    .await?;
                Publisher::Nats {
                    stream: BufWriter::new(stream),
                    subject: ctx.topic.clone(),
                    sent: 0,
                }
            }
            Target::RawTcp => {
                let mut stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                stream.write_all(b"PUB\n").await?;
                Publisher::Raw(stream)
            }
            t => unreachable!("{t:?} is a hubcast target"),
        };
        Ok(publisher)
    }

    /// Publishes one event to the run's topic. hubcast and NATS publishes are pipelined and
    /// confirmed in batches; the HTTP publishes of the other peers wait for their response.
    pub async fn publish(&mut self, topic: &str, payload: Vec<u8>) -> anyhow::Result<()> {
        match self {
            Publisher::Hubcast {
                sink,
                sent,
                acked,
                replies,
            } => {
                let window = *sent;
                let caught_up = acked
                    .wait_for(|&count| window - count < HUBCAST_PIPELINE)
                    .await
                    .is_ok();
                if !caught_up {
                    // The reply reader ended, and its result carries the cause.
                    return match replies.await {
                        Ok(Err(e)) => Err(e),
                        _ => Err(anyhow!("the publisher's WebSocket ended")),
                    };
                }
                let text =
                    std::str::from_utf8(&payload).context("a fan-out payload must be UTF-8")?;
                let command = serde_json::json!({"op": "publish", "topic": topic, "payload": text});
                sink.send(Message::text(command.to_string())).await?;
                *sent += 1;
            }
            Publisher::HttpBody { sender, host, path } => {
                let request = http::Request::post(path.as_str())
                    .header(http::header::HOST, host.as_str())
                    .body(Full::new(Bytes::from(payload)))?;
                sender.ready().await?;
                expect_success(sender.send_request(request).await?).await?;
            }
            Publisher::Grip {
                sender,
                host,
                channel,
            } => {
                // Pushpin 1.36 replies to every publish with `Connection: close`, so each
                // publish takes a new connection.
                *sender = http_sender(host.parse()?).await?;
                let content = format!("data: {}\n\n", String::from_utf8_lossy(&payload));
                let body = serde_json::json!({"items": [{
                    "channel": channel,
                    "formats": {"http-stream": {"content": content}},
                }]});
                let request = http::Request::post("/publish/")
                    .header(http::header::HOST, host.as_str())
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(body.to_string())))?;
                sender.ready().await?;
                expect_success(sender.send_request(request).await?).await?;
            }
            Publisher::Nats {
                stream,
                subject,
                sent,
            } => {
                let head = format!("PUB {subject} {}\r\n", payload.len());
                stream.write_all(head.as_bytes()).await?;
                stream.write_all(&payload).await?;
                stream.write_all(b"\r\n").await?;
                *sent += 1;
                if *sent % NATS_PING_EVERY == 0 {
                    stream.write_all(b"PING\r\n").await?;
                    stream.flush().await?;
                    wait_nats_pong(stream.get_mut()).await?;
                } else {
                    stream.flush().await?;
                }
            }
            Publisher::Raw(stream) => {
                let mut line = payload;
                line.push(b'\n');
                stream.write_all(&line).await?;
            }
        }
        Ok(())
    }
}

pub async fn http_sender(
    addr: SocketAddr,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("failed to connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

async fn expect_success(response: http::Response<hyper::body::Incoming>) -> anyhow::Result<()> {
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!(
            "publish returned {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}

/// Reads from the NATS connection until a PONG arrives. The publisher has no subscriptions,
/// so anything else is an INFO update, a PING that gets a PONG, or an error.
async fn wait_nats_pong(stream: &mut TcpStream) -> anyhow::Result<()> {
    let mut buffer = [0u8; 1024];
    loop {
        let n = stream.read(&mut buffer).await?;
        if n == 0 {
            bail!("NATS closed the publisher's connection");
        }
        let text = &buffer[..n];
        if text.starts_with(b"-ERR") {
            bail!("NATS error: {}", String::from_utf8_lossy(text));
        }
        if find(text, b"PING\r\n").is_some() {
            stream.write_all(b"PONG\r\n").await?;
        }
        if find(text, b"PONG\r\n").is_some() {
            return Ok(());
        }
    }
}
