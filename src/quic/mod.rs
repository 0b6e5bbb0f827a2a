//! The QUIC endpoint: HTTP/3 requests and WebTransport sessions on one UDP port.
//!
//! Every connection runs in its own task, and every request in a task of its own. A panic inside
//! h3 while serving one peer therefore ends only that peer's task, while the accept loop and
//! every other connection carry on.

mod capsule;
mod guard;
mod request;
mod session;
mod stream_limit;
mod varint;
mod writer;

use std::future::IntoFuture as _;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use futures_util::FutureExt as _;
use h3::ext::Protocol;
use http::{Method, StatusCode};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::cert::Certificate;
use crate::config::Config;
use crate::hub::Hub;

pub use session::SessionLimits;
use stream_limit::StreamLimits;

/// Largest request header section accepted over HTTP/3, in bytes (RFC 9114, 4.2.2). h3 0.0.8
/// sets no limit of its own.
// h3 checks it only once a HEADERS frame has arrived whole, so `guard` also stops any stream
// whose frames other than DATA declare more than this, before h3 buffers them.
const MAX_HEADER_BYTES: u64 = 16 * 1024;

/// How long a closing endpoint waits for its connections to close themselves.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Path of the WebTransport endpoint.
pub const WEBTRANSPORT_PATH: &str = "/v1/wt";

/// Everything a QUIC connection task needs.
#[derive(Clone)]
pub(crate) struct Context {
    pub hub: Hub,
    pub router: Router,
    pub limits: SessionLimits,
    pub max_body: usize,
    /// How long a stream write may stall before the peer counts as too slow.
    pub write_timeout: Duration,
    pub metrics: crate::metrics::SharedMetrics,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
}

/// Builds the quinn server configuration: TLS 1.3 with ALPN `h3`, datagrams, keep-alive.
///
/// # Errors
///
/// Returns the rustls error when the certificate and key do not fit together.
pub fn server_config(
    cert: &Certificate,
    config: &Config,
) -> Result<quinn::ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(cert.chain.clone(), cert.key.clone_key())?;
    tls.alpn_protocols = vec![b"h3".to_vec()];
    tls.max_early_data_size = 0;

    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(config.idle_timeout.try_into().ok())
        .keep_alive_interval(Some(config.idle_timeout / 3))
        .max_concurrent_bidi_streams(stream_limit::INITIAL_BIDI_STREAMS.into())
        .max_concurrent_uni_streams(stream_limit::INITIAL_UNI_STREAMS.into())
        .stream_receive_window((1u32 << 20).into())
        .receive_window((8u32 << 20).into())
        .datagram_receive_buffer_size(Some(config.datagram_buffer_bytes))
        .datagram_send_buffer_size(config.datagram_buffer_bytes);
    server.transport_config(Arc::new(transport));
    Ok(server)
}

/// Accepts connections on `endpoint` until shutdown.
pub(crate) async fn serve(endpoint: quinn::Endpoint, context: Context) {
    let local = endpoint.local_addr().ok();
    // Shared rather than cloned, so each connection's futures hold a pointer, not a copy.
    let context = Arc::new(context);
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            _ = context.shutdown.cancelled() => break,
        };
        let Some(incoming) = incoming else { break };
        let remote = incoming.remote_address();
        // The task holds only the handshake future, not the larger `Incoming` it came from,
        // which would otherwise keep its room in the task for the life of the connection.
        let handshake = incoming.into_future();
        let context = context.clone();
        context.tasks.clone().spawn(async move {
            match handshake.await {
                Ok(connection) => connection_task(connection, context).await,
                Err(e) => debug!(%remote, error = %e, "QUIC handshake failed"),
            }
        });
    }
    // Sessions send their close capsules and close their own connections first; whatever is
    // left after the grace period is closed with H3_NO_ERROR (RFC 9114, 8.1).
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, endpoint.wait_idle()).await;
    endpoint.close(0x100u32.into(), b"server shutting down");
    debug!(?local, "QUIC endpoint closed");
}

async fn connection_task(connection: quinn::Connection, context: Arc<Context>) {
    let remote = connection.remote_address();
    let id = connection.stable_id();
    debug!(conn = id, %remote, "QUIC connection open");
    // h3 0.0.8 can panic when a stream is stopped while its data still arrives. The panic is
    // caught here, in the connection's own task, and closes only this connection.
    let quic = connection.clone();
    let work = AssertUnwindSafe(handle_connection(connection, context)).catch_unwind();
    if work.await.is_err() {
        warn!(conn = id, %remote, "connection task panicked; closing the connection");
        // H3_INTERNAL_ERROR (RFC 9114, 8.1).
        quic.close(0x0102u32.into(), b"internal error");
    }
    debug!(conn = id, "QUIC connection closed");
}

type H3Connection = h3::server::Connection<guard::Connection, Bytes>;
type H3Stream = h3::server::RequestStream<guard::BidiStream, Bytes>;

/// A WebTransport CONNECT request on its way from its resolver task to the connection task.
/// It is boxed because a tokio channel allocates room for 32 values up front.
type ConnectRequest = Box<(http::Request<()>, H3Stream)>;

/// Sets up HTTP/3 on `connection`: opens the control stream and sends SETTINGS. The HTTP/3
/// connection comes back boxed so that the futures that own it stay small, since an idle
/// connection keeps them for its whole life.
async fn start_h3(
    connection: &quinn::Connection,
) -> Result<Box<H3Connection>, h3::error::ConnectionError> {
    let h3 = h3::server::builder()
        .enable_webtransport(true)
        .enable_extended_connect(true)
        .enable_datagram(true)
        .max_field_section_size(MAX_HEADER_BYTES)
        .max_webtransport_sessions(1)
        .send_grease(true)
        .build(guard::Connection::new(
            h3_quinn::Connection::new(connection.clone()),
            MAX_HEADER_BYTES,
            StreamLimits::new(connection.clone()),
        ))
        .await?;
    Ok(Box::new(h3))
}

async fn handle_connection(connection: quinn::Connection, context: Arc<Context>) {
    let conn_id = connection.stable_id();
    // The set-up future is large and short-lived, so it goes on the heap instead of into this
    // function's state, which lasts as long as the connection.
    let mut h3 = match Box::pin(start_h3(&connection)).await {
        Ok(h3) => h3,
        Err(e) => {
            debug!(conn = conn_id, error = %e, "HTTP/3 set-up failed");
            return;
        }
    };
    // The accept loop's state is large and a session does not need it, so it lives on the
    // heap and is gone by the time the session runs.
    let accepted = Box::pin(accept_requests(&mut h3, &context, conn_id)).await;
    let Some(connect) = accepted else {
        return;
    };
    session::run(h3, connection, connect, &context).await;
}

/// Serves the connection's HTTP/3 requests until the connection ends, the server shuts down
/// or a WebTransport CONNECT arrives that opens a session. Returns that CONNECT request.
async fn accept_requests(
    h3: &mut H3Connection,
    context: &Arc<Context>,
    conn_id: usize,
) -> Option<ConnectRequest> {
    // Requests are resolved in their own tasks so a slow header block cannot hold up the
    // accept loop; a WebTransport CONNECT comes back here, because the session needs the
    // connection itself.
    let (connect_tx, mut connect_rx) = tokio::sync::mpsc::channel::<ConnectRequest>(1);
    loop {
        tokio::select! {
            accepted = h3.accept() => match accepted {
                Ok(Some(resolver)) => {
                    let context = context.clone();
                    let connect_tx = connect_tx.clone();
                    context.tasks.clone().spawn(async move {
                        let (request, stream) = match resolver.resolve_request().await {
                            Ok(resolved) => resolved,
                            Err(e) => {
                                debug!(conn = conn_id, error = %e, "invalid HTTP/3 request");
                                return;
                            }
                        };
                        let is_session =
                            is_webtransport(&request) && request.uri().path() == WEBTRANSPORT_PATH;
                        // Once a session owns the connection the channel is closed, and a later
                        // CONNECT is answered like any request, with a 400 that says why.
                        if !is_session {
                            request::serve(request, stream, &context).await;
                            return;
                        }
                        match connect_tx.reserve().await {
                            Ok(permit) => permit.send(Box::new((request, stream))),
                            Err(_) => request::serve(request, stream, &context).await,
                        }
                    });
                }
                Ok(None) => return None,
                Err(e) => {
                    debug!(conn = conn_id, error = %e, "HTTP/3 connection ended");
                    return None;
                }
            },
            connect = connect_rx.recv() => {
                let connect = connect?;
                if let Some(reason) = session::refusal(h3) {
                    // Browsers show only "connection rejected", so the reason goes to the log.
                    warn!(conn = conn_id, reason, "WebTransport session rejected");
                    let (_, stream) = *connect;
                    context.tasks.spawn(reject_connect(stream, StatusCode::BAD_REQUEST, reason));
                    continue;
                }
                connect_rx.close();
                while let Ok(queued) = connect_rx.try_recv() {
                    let context = context.clone();
                    context.tasks.clone().spawn(async move {
                        let (request, stream) = *queued;
                        request::serve(request, stream, &context).await;
                    });
                }
                return Some(connect);
            }
            _ = context.shutdown.cancelled() => {
                let _ = tokio::time::timeout(Duration::from_secs(1), h3.shutdown(0)).await;
                return None;
            }
        }
    }
}

fn is_webtransport(request: &http::Request<()>) -> bool {
    request.method() == Method::CONNECT
        && request.extensions().get::<Protocol>() == Some(&Protocol::WEB_TRANSPORT)
}

/// Rejects a CONNECT request on its own stream, with `status` and `reason` as the response.
pub(crate) async fn reject_connect(mut stream: H3Stream, status: StatusCode, reason: &str) {
    let response = http::Response::builder().status(status).body(());
    if let Ok(response) = response {
        if stream.send_response(response).await.is_ok() {
            let _ = stream.send_data(Bytes::from(format!("{reason}\n"))).await;
            let _ = stream.finish().await;
        }
    }
}

/// Binds one endpoint on a UDP socket whose kernel buffers are `buffer_bytes` each.
///
/// The kernel's default of about 208 KiB overflows when many connections burst at once (a
/// fan-out writes one packet to every subscriber's connection), and every packet it drops
/// costs QUIC a loss-recovery round and, for datagrams, the datagram itself.
///
/// # Errors
///
/// Returns the I/O error of creating or binding the UDP socket.
pub fn bind(
    addr: SocketAddr,
    config: quinn::ServerConfig,
    buffer_bytes: usize,
) -> std::io::Result<quinn::Endpoint> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Failing to resize leaves the default buffers, which work, only with more drops.
    if let Err(e) = socket.set_recv_buffer_size(buffer_bytes) {
        warn!(%addr, error = %e, "failed to set the UDP receive buffer size");
    }
    if let Err(e) = socket.set_send_buffer_size(buffer_bytes) {
        warn!(%addr, error = %e, "failed to set the UDP send buffer size");
    }
    socket.bind(&addr.into())?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        socket.into(),
        Arc::new(quinn::TokioRuntime),
    )?;
    info!(addr = %endpoint.local_addr()?, "listening for QUIC (HTTP/3, WebTransport)");
    Ok(endpoint)
}
