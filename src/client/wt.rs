//! The WebTransport side of a connection: one QUIC endpoint per connector, the certificate
//! check, and a session's control stream, event streams and datagrams.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::AsyncWrite;
use wtransport::endpoint::endpoint_side;
use wtransport::error::{ConnectionError, StreamReadExactError};
use wtransport::{ClientConfig, Connection, Endpoint, RecvStream, SendStream, VarInt};

use super::fetch::fetch_cert_hash;
use super::link::LinkEvent;
use super::{Error, Options};

/// Largest event or control frame accepted from the server. The server's own largest frame is
/// a base64 payload of its `--max-payload` plus the envelope, 1.4 MB with the defaults. The
/// larger limit leaves room for servers configured with larger payloads.
const MAX_FRAME: usize = 64 << 20;

/// The check applied to the server certificate.
enum CertCheck {
    /// The leaf certificate's SHA-256 hash must match.
    Pinned([u8; 32]),
    /// Any certificate is accepted.
    Any,
    /// The hash is fetched from the server's `/v1/cert-hash` over cleartext HTTP.
    Fetched {
        url: String,
        hash: Mutex<Option<[u8; 32]>>,
        /// Set after a failed handshake, so the next attempt fetches the hash again: the server
        /// may have replaced its certificate.
        stale: AtomicBool,
        /// Serialises fetches, so that many connections opening at once fetch once.
        fetching: tokio::sync::Mutex<()>,
    },
}

impl CertCheck {
    fn expected(&self) -> Option<[u8; 32]> {
        match self {
            CertCheck::Pinned(hash) => Some(*hash),
            CertCheck::Any => None,
            CertCheck::Fetched { hash, .. } => *hash.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }
}

/// A rustls verifier that checks the leaf certificate by its SHA-256 hash, or not at all. The
/// handshake signature is still verified, so the server proves that it has the private key.
struct HashVerifier {
    check: Arc<CertCheck>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl std::fmt::Debug for HashVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashVerifier")
    }
}

impl ServerCertVerifier for HashVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if matches!(*self.check, CertCheck::Any) {
            return Ok(ServerCertVerified::assertion());
        }
        let Some(expected) = self.check.expected() else {
            return Err(rustls::Error::General(
                "no certificate hash is known yet".into(),
            ));
        };
        let digest = ring::digest::digest(&ring::digest::SHA256, end_entity.as_ref());
        if digest.as_ref() == expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the server certificate's SHA-256 hash is {}, not the expected {}",
                hex(digest.as_ref()),
                hex(&expected)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used by QUIC".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Builds the QUIC settings of the client's connections: quinn's defaults, except that the
/// server may open no bidirectional streams. A hubcast server opens only unidirectional event
/// streams, and quinn reserves state for every stream the peer may open. Without the
/// reservation an idle connection takes 74.4 instead of 79.7 KiB of heap, as measured with
/// 1,000 connections to a local server on a 2-core x86-64 VM.
fn transport_config() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(0u32.into());
    transport
}

/// Requested send and receive buffer of the endpoint's UDP socket. One socket carries every
/// connection of a connector, and the kernel default of 208 KiB (Linux) overflows when a few
/// hundred connections open at once, so handshake packets are dropped and each drop costs a
/// retransmission timeout. Linux caps the value at `net.core.rmem_max` / `wmem_max`.
const UDP_SOCKET_BUFFER: usize = 4 << 20;

/// Binds the endpoint's UDP socket on every address, IPv4 and IPv6, with large buffers.
fn bind_socket() -> Result<std::net::UdpSocket, Error> {
    use socket2::{Domain, Protocol, Socket, Type};
    let failed = |e: std::io::Error| {
        Error::Connect(format!("failed to bind a UDP socket for WebTransport: {e}"))
    };
    let (socket, addr) = match Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)) {
        Ok(socket) => {
            socket.set_only_v6(false).map_err(failed)?;
            let any: std::net::SocketAddr = (std::net::Ipv6Addr::UNSPECIFIED, 0).into();
            (socket, any)
        }
        // A host without IPv6.
        Err(_) => {
            let socket =
                Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(failed)?;
            (socket, (std::net::Ipv4Addr::UNSPECIFIED, 0).into())
        }
    };
    // A smaller buffer than requested still works, so failures here are ignored.
    let _ = socket.set_recv_buffer_size(UDP_SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_SOCKET_BUFFER);
    socket.bind(&addr.into()).map_err(failed)?;
    Ok(socket.into())
}

/// The QUIC endpoint that every WebTransport connection of one connector shares: one UDP
/// socket, one endpoint driver task.
pub(crate) struct WtEndpoint {
    endpoint: Endpoint<endpoint_side::Client>,
    /// `None` when the certificate is checked against the system's root certificates.
    check: Option<Arc<CertCheck>>,
    connect_timeout: Duration,
}

impl WtEndpoint {
    /// Binds the endpoint. Must run inside a Tokio runtime.
    pub(crate) fn new(options: &Options, cert_hash_url: Option<String>) -> Result<Self, Error> {
        let check = match (options.cert_hash, options.insecure, cert_hash_url) {
            (Some(hash), _, _) => Some(CertCheck::Pinned(hash)),
            (None, true, _) => Some(CertCheck::Any),
            (None, false, Some(url)) => Some(CertCheck::Fetched {
                url,
                hash: Mutex::new(None),
                stale: AtomicBool::new(true),
                fetching: tokio::sync::Mutex::new(()),
            }),
            (None, false, None) => None,
        };
        let check = check.map(Arc::new);
        let builder = ClientConfig::builder().with_bind_socket(bind_socket()?);
        let builder = match &check {
            Some(check) => {
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let verifier = HashVerifier {
                    check: check.clone(),
                    provider: provider.clone(),
                };
                let mut tls = rustls::ClientConfig::builder_with_provider(provider)
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .map_err(|e| Error::InvalidOptions(format!("TLS 1.3 is unavailable: {e}")))?
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(verifier))
                    .with_no_client_auth();
                tls.alpn_protocols = vec![wtransport::tls::WEBTRANSPORT_ALPN.to_vec()];
                builder.with_custom_tls_and_transport(tls, transport_config())
            }
            None => builder.with_custom_transport(transport_config()),
        };
        let config = builder
            .keep_alive_interval(Some(options.keep_alive))
            .max_idle_timeout(Some(options.keep_alive.saturating_mul(3)))
            .map_err(|_| {
                Error::InvalidOptions(format!(
                    "keep_alive {:?} is too long: three times it exceeds the largest QUIC idle \
                     timeout, so give a shorter keep_alive",
                    options.keep_alive
                ))
            })?
            .build();
        let endpoint = Endpoint::client(config).map_err(|e| {
            Error::Connect(format!("failed to bind a UDP socket for WebTransport: {e}"))
        })?;
        Ok(Self {
            endpoint,
            check,
            connect_timeout: options.connect_timeout,
        })
    }

    /// Opens a session and its control stream.
    pub(crate) async fn connect(&self, url: &str) -> Result<WtLink, String> {
        self.refresh_hash().await?;
        let connection = match self.endpoint.connect(url).await {
            Ok(connection) => connection,
            Err(e) => {
                if let Some(CertCheck::Fetched { stale, .. }) = self.check.as_deref() {
                    stale.store(true, Ordering::Relaxed);
                }
                return Err(e.to_string());
            }
        };
        let opening = connection
            .open_bi()
            .await
            .map_err(|e| format!("failed to open the control stream: {e}"))?;
        let (send, recv) = opening
            .await
            .map_err(|e| format!("failed to open the control stream: {e}"))?;
        Ok(WtLink::new(connection, send, recv))
    }

    /// Fetches the certificate hash when it is fetched from the server and none is known or
    /// the last handshake failed.
    async fn refresh_hash(&self) -> Result<(), String> {
        let Some(CertCheck::Fetched {
            url,
            hash,
            stale,
            fetching,
        }) = self.check.as_deref()
        else {
            return Ok(());
        };
        if !stale.load(Ordering::Relaxed) {
            return Ok(());
        }
        let _guard = fetching.lock().await;
        // Another connection may have fetched it while this one waited.
        if !stale.load(Ordering::Relaxed) {
            return Ok(());
        }
        let info = fetch_cert_hash(url, self.connect_timeout)
            .await
            .map_err(|e| e.to_string())?;
        *hash.lock().unwrap_or_else(|e| e.into_inner()) = Some(info.cert_hash);
        stale.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Waits until every connection of the endpoint has closed, for at most `timeout`.
    pub(crate) async fn wait_idle(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.endpoint.wait_idle()).await;
    }
}

/// One frame read from a stream, with the stream to read the next one from.
struct StreamRead {
    stream: RecvStream,
    control: bool,
    frame: Result<Option<Bytes>, String>,
}

async fn read_frame(mut stream: RecvStream, control: bool) -> StreamRead {
    let frame = read_one(&mut stream).await;
    StreamRead {
        stream,
        control,
        frame,
    }
}

/// Reads one frame: a 4-byte big-endian length and that many bytes. `None` when the stream
/// ended cleanly between two frames.
async fn read_one(stream: &mut RecvStream) -> Result<Option<Bytes>, String> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len).await {
        Ok(()) => {}
        Err(StreamReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(format!(
            "frame of {len} bytes exceeds the client's maximum of {MAX_FRAME}"
        ));
    }
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Some(Bytes::from(body)))
}

/// Describes why a session ended, with the close code when the server sent one.
fn describe(error: &ConnectionError) -> String {
    match error {
        ConnectionError::ApplicationClosed(close) => format!(
            "the server closed the WebTransport session with code {:#x}: {}",
            close.code().into_inner(),
            String::from_utf8_lossy(close.reason())
        ),
        other => format!("the WebTransport session ended: {other}"),
    }
}

/// An open WebTransport session.
pub(crate) struct WtLink {
    connection: Connection,
    send: SendStream,
    /// Bytes waiting for the control stream: frame headers and bodies.
    out: VecDeque<Bytes>,
    /// One pending frame read per stream: the control stream and every event stream.
    reads: FuturesUnordered<BoxFuture<'static, StreamRead>>,
}

impl WtLink {
    fn new(connection: Connection, send: SendStream, recv: RecvStream) -> Self {
        let reads = FuturesUnordered::new();
        reads.push(Box::pin(read_frame(recv, true)) as BoxFuture<'static, StreamRead>);
        Self {
            connection,
            send,
            out: VecDeque::new(),
            reads,
        }
    }

    pub(crate) fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Queues one command frame for the control stream.
    pub(crate) fn send(&mut self, body: Bytes) {
        let len = u32::try_from(body.len()).expect("commands are far below 4 GiB");
        self.out
            .push_back(Bytes::copy_from_slice(&len.to_be_bytes()));
        self.out.push_back(body);
    }

    /// Writes queued commands while waiting for the next frame, datagram or the end of the
    /// session. Cancel safe: unwritten bytes stay in `out`, stream reads in progress stay in
    /// `reads`, and wtransport 0.7's `accept_uni` and `receive_datagram` lose nothing when
    /// dropped.
    pub(crate) async fn next(&mut self) -> LinkEvent {
        let Self {
            connection,
            send,
            out,
            reads,
        } = self;
        loop {
            tokio::select! {
                written = poll_fn(|cx| poll_write_out(send, out, cx)) => {
                    if let Err(e) = written {
                        return LinkEvent::Closed(format!(
                            "failed to write to the control stream: {e}"
                        ));
                    }
                }
                Some(read) = reads.next() => {
                    let StreamRead { stream, control, frame } = read;
                    match frame {
                        Ok(Some(frame)) => {
                            reads.push(Box::pin(read_frame(stream, control)));
                            return LinkEvent::Message(frame);
                        }
                        Ok(None) if control => {
                            return LinkEvent::Closed(
                                "the server finished the control stream".to_owned(),
                            );
                        }
                        Err(e) if control => {
                            return LinkEvent::Closed(format!(
                                "failed to read the control stream: {e}"
                            ));
                        }
                        // An event stream that ends or fails is dropped. If the session is
                        // gone, the other branches report it.
                        Ok(None) | Err(_) => {}
                    }
                }
                accepted = connection.accept_uni() => match accepted {
                    Ok(stream) => reads.push(Box::pin(read_frame(stream, false))),
                    Err(e) => return LinkEvent::Closed(describe(&e)),
                },
                datagram = connection.receive_datagram() => match datagram {
                    Ok(datagram) => return LinkEvent::Datagram(datagram.payload()),
                    Err(e) => return LinkEvent::Closed(describe(&e)),
                },
            }
        }
    }

    /// Closes the session's QUIC connection.
    pub(crate) fn close(self) {
        self.connection
            .close(VarInt::from_u32(0), b"closed by the client");
    }
}

/// Writes queued bytes to the control stream. Returns `Ready` only on an error, so that it can
/// sit in a `select!` next to the reads.
fn poll_write_out(
    send: &mut SendStream,
    out: &mut VecDeque<Bytes>,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<()>> {
    while let Some(front) = out.front_mut() {
        let written = ready!(Pin::new(&mut *send).poll_write(cx, front))?;
        front.advance(written);
        if front.is_empty() {
            out.pop_front();
        }
    }
    Poll::Pending
}
