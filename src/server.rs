//! Starts the listeners around one hub and stops them through one path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderValue;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::cert::{CertError, Certificate};
use crate::config::Config;
use crate::http::timed::TimedListener;
use crate::http::{router, AppState, CertInfo};
use crate::hub::Hub;
use crate::quic::{self, SessionLimits, WEBTRANSPORT_PATH};

/// Extra time the socket-level write timeout allows beyond the configured one, so a protocol
/// that can still say why it closes (a WebSocket close frame) gets to do so first.
pub const SOCKET_TIMEOUT_MARGIN: Duration = Duration::from_secs(5);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Certificate(#[from] CertError),
    #[error("invalid certificate or key: {0}")]
    Tls(#[from] rustls::Error),
    #[error(
        "failed to listen on {addr} ({transport}): {source}; pick another address with \
         --http-listen or --quic-listen"
    )]
    Bind {
        addr: SocketAddr,
        transport: &'static str,
        source: std::io::Error,
    },
    #[error(
        "no {0} address could be bound (see the warnings above); stop the process that uses \
         the port, or pick other addresses with --http-listen and --quic-listen"
    )]
    NothingBound(&'static str),
}

/// A running server.
pub struct Server {
    pub hub: Hub,
    /// Bound TCP addresses, in configuration order.
    pub http_addrs: Vec<SocketAddr>,
    /// Bound UDP addresses, in configuration order.
    pub quic_addrs: Vec<SocketAddr>,
    pub cert: CertInfo,
    pub metrics: crate::metrics::SharedMetrics,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Server {
    /// Loads or generates the certificate, binds every listener and starts serving.
    ///
    /// # Errors
    ///
    /// Returns [`StartError`] when the certificate is unusable or a configured address cannot
    /// be bound.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let cert = match &config.cert {
            Some((cert, key)) => Certificate::load(cert, key)?,
            None => Certificate::load_or_generate(&config.cert_dir)?,
        };
        let hub = Hub::new(config.hub.clone());
        let metrics = crate::metrics::SharedMetrics::default();
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();

        let quic_config = quic::server_config(&cert, &config)?;
        let mut endpoints = Vec::new();
        for addr in &config.quic_listen {
            match quic::bind(*addr, quic_config.clone(), config.udp_buffer_bytes) {
                Ok(endpoint) => endpoints.push(endpoint),
                Err(e) if config.skip_unavailable => {
                    warn!(%addr, error = %e, "skipping QUIC address that cannot be bound")
                }
                Err(source) => {
                    return Err(StartError::Bind {
                        addr: *addr,
                        transport: "QUIC/UDP",
                        source,
                    })
                }
            }
        }
        let quic_addrs: Vec<SocketAddr> = endpoints
            .iter()
            .filter_map(|e| e.local_addr().ok())
            .collect();
        let quic_port = quic_addrs
            .first()
            .map(SocketAddr::port)
            .ok_or(StartError::NothingBound("QUIC"))?;

        let mut listeners = Vec::new();
        for addr in &config.http_listen {
            match TcpListener::bind(addr).await {
                Ok(listener) => listeners.push(listener),
                Err(e) if config.skip_unavailable => {
                    warn!(%addr, error = %e, "skipping TCP address that cannot be bound")
                }
                Err(source) => {
                    return Err(StartError::Bind {
                        addr: *addr,
                        transport: "TCP",
                        source,
                    })
                }
            }
        }
        let http_addrs: Vec<SocketAddr> = listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect();
        if http_addrs.is_empty() {
            return Err(StartError::NothingBound("TCP"));
        }

        let cert_info = CertInfo {
            algorithm: "sha-256",
            hex: cert.sha256_hex(),
            base64: cert.sha256_base64(),
            generated: cert.generated,
            webtransport_path: WEBTRANSPORT_PATH,
            quic_port,
        };
        let config = Arc::new(config);
        let state = AppState {
            hub: hub.clone(),
            config: config.clone(),
            cert: Arc::new(cert_info.clone()),
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
        };
        let alt_svc = HeaderValue::from_str(&format!("h3=\":{quic_port}\"; ma=86400")).ok();
        let app = router(state, alt_svc);

        for listener in listeners {
            let addr = listener.local_addr().ok();
            if let Some(addr) = addr {
                info!(%addr, "listening for HTTP/1.1 (WebSocket, SSE, polling, demo)");
            }
            let app = app.clone();
            let token = shutdown.clone();
            let listener = TimedListener::new(
                listener,
                config.write_timeout + SOCKET_TIMEOUT_MARGIN,
                metrics.clone(),
            );
            let header_timeout = config.header_timeout;
            tasks.spawn(crate::http::serve(
                listener,
                app,
                header_timeout,
                token,
                tasks.clone(),
            ));
        }

        let context = quic::Context {
            hub: hub.clone(),
            router: app,
            limits: SessionLimits {
                event_streams: config.wt_event_streams,
                max_frame: config.max_command_bytes(),
                max_subscriptions: config.max_subscriptions,
            },
            max_body: config.hub.max_payload_bytes,
            write_timeout: config.write_timeout,
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
            tasks: tasks.clone(),
        };
        for endpoint in endpoints {
            tasks.spawn(quic::serve(endpoint, context.clone()));
        }
        tasks.spawn(crate::memory::trim_periodically(shutdown.clone()));

        info!(
            sha256 = %cert_info.hex,
            generated = cert_info.generated,
            path = %cert.cert_path.display(),
            "certificate ready"
        );
        let demo = config.web_dir.join("index.html").is_file();
        if !demo {
            warn!(
                web_dir = %config.web_dir.display(),
                "demo page not found: run from the repository root or pass --web-dir"
            );
        }
        if let Some(addr) = http_addrs.first().filter(|_| demo) {
            let host = if addr.ip().is_loopback() {
                "localhost".to_owned()
            } else {
                addr.ip().to_string()
            };
            info!(url = %format!("http://{host}:{}/", addr.port()), "demo page");
        }
        Ok(Self {
            hub,
            http_addrs,
            quic_addrs,
            cert: cert_info,
            metrics,
            shutdown,
            tasks,
        })
    }

    /// Token cancelled when the server shuts down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops accepting, ends every connection and waits up to `grace` for the tasks to finish.
    pub async fn shutdown(self, grace: Duration) {
        info!("shutting down");
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            warn!(grace = ?grace, "tasks still running after the shutdown grace period");
        }
    }
}
