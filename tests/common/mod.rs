//! Shared set-up for the integration tests: a server on loopback port 0 and real clients.

#![allow(
    dead_code,
    reason = "each test binary uses a different subset of these helpers"
)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use bytes::{Buf, Bytes};
use futures_util::StreamExt as _;
use hubcast::config::Config;
use hubcast::server::Server;
use serde_json::Value;

pub mod raw_h3;

/// Upper bound of every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `future`, failing the test with `what` when it takes longer than [`WAIT`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A fresh directory for one server's generated certificate.
pub fn temp_dir() -> PathBuf {
    let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("hubcast-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

pub struct TestServer {
    pub server: Server,
    pub http: SocketAddr,
    pub quic: SocketAddr,
    pub hash: [u8; 32],
    pub cert_dir: PathBuf,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let cert_dir = temp_dir();
        let mut config = Config::loopback(cert_dir.clone());
        config.heartbeat = Duration::from_secs(1);
        adjust(&mut config);
        let server = Server::start(config).await.expect("server starts");
        let mut hash = [0u8; 32];
        for (i, byte) in hash.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&server.cert.hex[2 * i..2 * i + 2], 16).unwrap();
        }
        Self {
            http: server.http_addrs[0],
            quic: server.quic_addrs[0],
            hash,
            cert_dir,
            server,
        }
    }

    /// Largest WebSocket message or control frame the server accepts.
    pub fn server_max_command(&self) -> usize {
        let mut config = Config::loopback(self.cert_dir.clone());
        config.hub.max_payload_bytes = self.server.hub.config().max_payload_bytes;
        config.max_command_bytes()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// Publishes over HTTP/1.1 and returns the cursor of an event.
    pub async fn publish(&self, topic: &str, payload: &str) -> String {
        let response = reqwest::Client::new()
            .post(self.url(&format!("/v1/publish?topic={topic}")))
            .body(payload.to_owned())
            .send()
            .await
            .expect("publish request");
        assert_eq!(response.status(), 200, "publish to {topic}");
        let body: Value = response.json().await.expect("publish reply is JSON");
        body["cursor"].as_str().unwrap_or_default().to_owned()
    }

    pub async fn publish_telemetry(&self, topic: &str, payload: &str) {
        let response = reqwest::Client::new()
            .post(self.url(&format!("/v1/publish?topic={topic}&class=telemetry")))
            .body(payload.to_owned())
            .send()
            .await
            .expect("publish request");
        assert_eq!(response.status(), 200, "publish telemetry to {topic}");
    }

    /// Waits until the hub has exactly `count` subscribers.
    pub async fn wait_subscribers(&self, count: u64) {
        within(&format!("{count} subscribers"), async {
            while self.server.hub.stats().subscribers != count {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }
}

/// One parsed Server-Sent Event.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// Parses an event stream from chunks, following the WHATWG parsing rules for LF lines.
#[derive(Default)]
pub struct SseParser {
    buffer: String,
    current: SseEvent,
    has_data: bool,
}

impl SseParser {
    /// Feeds bytes and returns the events they complete.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buffer
            .push_str(std::str::from_utf8(chunk).expect("event stream is UTF-8"));
        let mut out = Vec::new();
        while let Some(pos) = self.buffer.find('\n') {
            let line: String = self.buffer.drain(..=pos).collect();
            let line = line.trim_end_matches('\n');
            assert!(!line.contains('\r'), "event stream has a carriage return");
            if line.is_empty() {
                if self.has_data {
                    out.push(std::mem::take(&mut self.current));
                }
                self.current = SseEvent::default();
                self.has_data = false;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => self.current.id = Some(value.to_owned()),
                "event" => self.current.event = Some(value.to_owned()),
                "data" => {
                    if self.has_data {
                        self.current.data.push('\n');
                    }
                    self.current.data.push_str(value);
                    self.has_data = true;
                }
                _ => {}
            }
        }
        out
    }
}

/// An HTTP/1.1 event stream read with reqwest.
pub struct SseClient {
    stream: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<Bytes>> + Send>>,
    parser: SseParser,
    pending: std::collections::VecDeque<SseEvent>,
}

impl SseClient {
    pub async fn open(server: &TestServer, query: &str, last_event_id: Option<&str>) -> Self {
        let mut request = reqwest::Client::new().get(server.url(&format!("/v1/events?{query}")));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.expect("SSE request");
        assert_eq!(response.status(), 200, "SSE status for {query}");
        let mut client = Self {
            stream: Box::pin(response.bytes_stream()),
            parser: SseParser::default(),
            pending: Default::default(),
        };
        // The opening comment arrives once the subscription exists.
        let first = within("SSE opening comment", client.stream.next()).await;
        let first = first.expect("SSE stream open").expect("SSE chunk");
        assert!(
            first.starts_with(b": hubcast"),
            "unexpected SSE opening {first:?}"
        );
        client
    }

    pub async fn next(&mut self) -> SseEvent {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return event;
            }
            let chunk = within("SSE event", self.stream.next())
                .await
                .expect("SSE stream ended")
                .expect("SSE chunk");
            self.pending.extend(self.parser.feed(&chunk));
        }
    }
}

/// A rustls verifier that accepts exactly one certificate, by its SHA-256 hash, the way a
/// browser's `serverCertificateHashes` does.
#[derive(Debug)]
pub struct PinnedHash {
    hash: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedHash {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let digest = ring::digest::digest(&ring::digest::SHA256, end_entity.as_ref());
        if digest.as_ref() == self.hash {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("certificate hash mismatch".into()))
        }
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Opens a raw QUIC connection with ALPN `h3` that trusts the server's pinned hash.
pub async fn quic_connect(server: &TestServer) -> Result<(quinn::Endpoint, quinn::Connection)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedHash {
            hash: server.hash,
            provider,
        }))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.datagram_receive_buffer_size(Some(1 << 20));
    client.transport_config(Arc::new(transport));
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(client);
    let connection = within(
        "QUIC handshake",
        endpoint.connect(server.quic, "localhost")?,
    )
    .await?;
    Ok((endpoint, connection))
}

pub type H3Send = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;
pub type H3RequestStream = h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// An HTTP/3 client connection; the driver task runs until the connection closes.
pub struct H3Client {
    pub endpoint: quinn::Endpoint,
    pub quic: quinn::Connection,
    pub send: H3Send,
    driver: tokio::task::JoinHandle<()>,
}

impl H3Client {
    pub async fn connect(server: &TestServer) -> Result<Self> {
        let (endpoint, quic) = quic_connect(server).await?;
        let (mut driver, send) = h3::client::builder()
            .enable_extended_connect(true)
            .enable_datagram(true)
            .build::<_, _, Bytes>(h3_quinn::Connection::new(quic.clone()))
            .await?;
        let driver = tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        Ok(Self {
            endpoint,
            quic,
            send,
            driver,
        })
    }

    /// Sends a request with an optional body and returns the stream after the response head.
    pub async fn request(
        &mut self,
        method: http::Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<(http::Response<()>, H3RequestStream)> {
        let request = http::Request::builder()
            .method(method)
            .uri(format!("https://localhost{path}"))
            .body(())?;
        let mut stream = self.send.send_request(request).await?;
        if let Some(body) = body {
            stream.send_data(body).await?;
        }
        stream.finish().await?;
        let response = within("HTTP/3 response", stream.recv_response()).await?;
        Ok((response, stream))
    }

    /// Sends a request and reads the whole response body.
    pub async fn fetch(
        &mut self,
        method: http::Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<(http::StatusCode, String)> {
        let (response, mut stream) = self.request(method, path, body).await?;
        let mut text = Vec::new();
        while let Some(mut chunk) = within("HTTP/3 body", stream.recv_data()).await? {
            while chunk.has_remaining() {
                let part = chunk.chunk().to_vec();
                chunk.advance(part.len());
                text.extend(part);
            }
        }
        Ok((response.status(), String::from_utf8(text)?))
    }
}

impl Drop for H3Client {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Reads SSE events from an HTTP/3 response stream.
pub struct H3Sse {
    pub stream: H3RequestStream,
    parser: SseParser,
    pending: std::collections::VecDeque<SseEvent>,
}

impl H3Sse {
    pub fn new(stream: H3RequestStream) -> Self {
        Self {
            stream,
            parser: SseParser::default(),
            pending: Default::default(),
        }
    }

    /// Reads until the opening comment has arrived.
    pub async fn opened(&mut self) {
        let chunk = within("HTTP/3 SSE opening", self.stream.recv_data())
            .await
            .expect("HTTP/3 SSE data")
            .expect("HTTP/3 SSE open");
        assert!(chunk.chunk().starts_with(b": hubcast"));
    }

    pub async fn next(&mut self) -> SseEvent {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return event;
            }
            let mut chunk = within("HTTP/3 SSE event", self.stream.recv_data())
                .await
                .expect("HTTP/3 SSE data")
                .expect("HTTP/3 SSE stream ended");
            let mut bytes = Vec::new();
            while chunk.has_remaining() {
                let part = chunk.chunk().to_vec();
                chunk.advance(part.len());
                bytes.extend(part);
            }
            self.pending.extend(self.parser.feed(&bytes));
        }
    }
}

/// A WebTransport client session (wtransport) with its control stream.
pub struct WtClient {
    pub connection: wtransport::Connection,
    pub send: wtransport::SendStream,
    pub recv: wtransport::RecvStream,
}

impl WtClient {
    pub async fn connect(server: &TestServer) -> Result<Self> {
        let config = wtransport::ClientConfig::builder()
            .with_bind_default()
            .with_server_certificate_hashes([wtransport::tls::Sha256Digest::new(server.hash)])
            .build();
        let endpoint = wtransport::Endpoint::client(config)?;
        let url = format!("https://localhost:{}/v1/wt", server.quic.port());
        let connection = within("WebTransport session", endpoint.connect(url)).await?;
        let (send, recv) = connection.open_bi().await?.await?;
        Ok(Self {
            connection,
            send,
            recv,
        })
    }

    /// Sends one control frame.
    pub async fn command(&mut self, command: Value) -> Result<()> {
        let body = serde_json::to_vec(&command)?;
        self.send
            .write_all(&(body.len() as u32).to_be_bytes())
            .await?;
        self.send.write_all(&body).await?;
        Ok(())
    }

    /// Reads one control frame.
    pub async fn reply(&mut self) -> Result<Value> {
        read_frame(&mut self.recv).await
    }

    /// Sends a command and returns its reply, skipping nothing: the next control frame must be
    /// the reply.
    pub async fn call(&mut self, command: Value) -> Result<Value> {
        self.command(command).await?;
        within("control reply", self.reply()).await
    }
}

/// Reads one length-prefixed JSON frame from a WebTransport stream.
pub async fn read_frame(recv: &mut wtransport::RecvStream) -> Result<Value> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await.context("frame length")?;
    let len = u32::from_be_bytes(len) as usize;
    if len > 16 << 20 {
        bail!("frame of {len} bytes");
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.context("frame body")?;
    serde_json::from_slice(&body).map_err(|e| anyhow!("frame is not JSON: {e}"))
}

/// Parses a server datagram: `0x00`, topic length, topic, payload.
pub fn parse_datagram(bytes: &[u8]) -> (String, Vec<u8>) {
    assert_eq!(bytes[0], 0x00, "datagram type");
    let len = u16::from_be_bytes([bytes[1], bytes[2]]) as usize;
    let topic = String::from_utf8(bytes[3..3 + len].to_vec()).unwrap();
    (topic, bytes[3 + len..].to_vec())
}

/// Builds a client datagram with the topic written out.
pub fn topic_datagram(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x00];
    out.extend((topic.len() as u16).to_be_bytes());
    out.extend(topic.as_bytes());
    out.extend(payload);
    out
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn ws_connect(server: &TestServer) -> Ws {
    let url = format!("ws://{}/v1/ws", server.http);
    let (ws, _) = within("WebSocket handshake", tokio_tungstenite::connect_async(url))
        .await
        .expect("WebSocket connects");
    ws
}

pub async fn ws_send(ws: &mut Ws, command: Value) {
    use futures_util::SinkExt as _;
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        command.to_string(),
    ))
    .await
    .expect("WebSocket send");
}

/// Reads the next text message as JSON, skipping pings.
pub async fn ws_next(ws: &mut Ws) -> Value {
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let message = within("WebSocket message", ws.next())
            .await
            .expect("WebSocket open")
            .expect("WebSocket message");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).expect("JSON message"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected WebSocket message {other:?}"),
        }
    }
}

/// Long-polls once and returns the JSON body.
pub async fn poll(server: &TestServer, query: &str) -> Value {
    let response = within(
        "long poll",
        reqwest::get(server.url(&format!("/v1/poll?{query}"))),
    )
    .await
    .expect("poll request");
    assert_eq!(response.status(), 200, "poll status for {query}");
    response.json().await.expect("poll body is JSON")
}
