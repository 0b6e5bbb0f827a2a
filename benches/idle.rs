//! Memory per idle connection: WebSocket connections and WebTransport sessions that each hold
//! one subscription and receive nothing.
//!
//! The release `hubcast` binary runs as a child process and its resident memory and heap in
//! use (from /metrics) are read before and after the connections open. Run with
//! `cargo bench --bench idle`; `WS` and `WT` set the counts (defaults 5,000 and 1,000; the
//! process needs a file descriptor limit above the WebSocket count). Either count may be 0
//! to measure one transport alone.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

#[path = "support/mod.rs"]
mod support;

use support::{env_or, ServerProcess};

/// Memory of the server process: resident KiB and heap bytes in use.
async fn memory(server: &ServerProcess) -> (u64, u64) {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let heap = server.metric("hubcast_heap_in_use_bytes").await;
    (server.resident_kib(), heap)
}

fn report(what: &str, count: usize, before: (u64, u64), after: (u64, u64)) {
    if count == 0 {
        return;
    }
    let rss = (after.0.saturating_sub(before.0) * 1024) as f64 / count as f64;
    let heap = after.1.saturating_sub(before.1) as f64 / count as f64;
    println!(
        "{what:<28} {count:>6}  resident {:>7.1} KiB each  heap {:>7.1} KiB each",
        rss / 1024.0,
        heap / 1024.0
    );
}

#[tokio::main]
async fn main() {
    let ws_count = env_or("WS", 5000);
    let wt_count = env_or("WT", 1000);
    let server =
        ServerProcess::start("idle", &["--heartbeat", "600", "--idle-timeout", "600"]).await;
    let (http, quic) = (server.http, server.quic);

    // WebSocket: each connection subscribes and then stays idle.
    let before = memory(&server).await;
    let mut sockets = Vec::with_capacity(ws_count);
    for n in 0..ws_count {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{http}/v1/ws"))
            .await
            .unwrap_or_else(|e| panic!("WebSocket {n} failed: {e}"));
        let command = format!(r#"{{"op":"subscribe","filters":["idle/{n}"]}}"#);
        ws.send(Message::text(command)).await.unwrap();
        let _ = ws.next().await;
        sockets.push(ws);
    }
    let after = memory(&server).await;
    report("idle WebSocket connections", ws_count, before, after);
    drop(sockets);
    if ws_count > 0 {
        // The server hands freed heap pages back at its next trim, so the WebTransport
        // sessions start from a resident size that no longer includes the WebSockets.
        tokio::time::sleep(hubcast::memory::TRIM_INTERVAL).await;
    }

    // WebTransport: each session opens its control stream and subscribes.
    let config = wtransport::ClientConfig::builder()
        .with_bind_default()
        .with_no_cert_validation()
        .keep_alive_interval(Some(Duration::from_secs(60)))
        .build();
    let endpoint = wtransport::Endpoint::client(config).unwrap();
    let before = memory(&server).await;
    let mut sessions = Vec::with_capacity(wt_count);
    for n in 0..wt_count {
        let url = format!("https://127.0.0.1:{}/v1/wt", quic.port());
        let connection = endpoint
            .connect(url)
            .await
            .unwrap_or_else(|e| panic!("WebTransport session {n} failed: {e}"));
        let (mut send, mut recv) = connection.open_bi().await.unwrap().await.unwrap();
        let body = format!(r#"{{"op":"subscribe","filters":["idle/{n}"]}}"#);
        send.write_all(&(body.len() as u32).to_be_bytes())
            .await
            .unwrap();
        send.write_all(body.as_bytes()).await.unwrap();
        let mut len = [0u8; 4];
        recv.read_exact(&mut len).await.unwrap();
        let mut reply = vec![0u8; u32::from_be_bytes(len) as usize];
        recv.read_exact(&mut reply).await.unwrap();
        sessions.push((connection, send, recv));
    }
    let after = memory(&server).await;
    report("idle WebTransport sessions", wt_count, before, after);
    drop(sessions);
}
