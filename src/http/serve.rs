//! The TCP accept loop: HTTP/1.1 connections served by hyper with a header read timeout.
//!
//! axum's own `serve` gives hyper no timer, so a client that opens a connection and never
//! finishes its request head would hold a file descriptor forever. Here every connection gets
//! the header read timeout, which also closes keep-alive connections that stay idle between
//! requests, and shuts down gracefully through the server's cancellation token.

use std::time::Duration;

use axum::serve::Listener as _;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::timed::TimedListener;

/// How long a connection may take to finish closing once shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Serves `app` on every connection `listener` accepts until `shutdown` is cancelled.
pub async fn serve(
    mut listener: TimedListener,
    app: Router,
    header_timeout: Duration,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => return,
        };
        let service = TowerToHyperService::new(app.clone());
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let connection = builder
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    match tokio::time::timeout(SHUTDOWN_GRACE, connection.as_mut()).await {
                        Ok(result) => result,
                        Err(_) => return,
                    }
                }
            };
            if let Err(e) = result {
                debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        });
    }
}
