//! Memory per idle connection: WebSocket connections and WebTransport sessions that each hold
//! one subscription and receive nothing.
//!
//! The release `hubcast` binary runs as a child process and its resident memory and heap in
//! use (from /metrics) are read before and after the connections open. Run with
//! `cargo bench --bench idle`; `WS` and `WT` set the counts (defaults 5,000 and 1,000; the
//! process needs a file descriptor limit above the WebSocket count).

use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::Message;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Reads one value from the metrics endpoint, 0 when it is missing.
async fn metric(http: SocketAddr, name: &str) -> u64 {
    let mut socket = tokio::net::TcpStream::connect(http).await.unwrap();
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut body = String::new();
    socket.read_to_string(&mut body).await.unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Memory of the server process: resident KiB and heap bytes in use.
async fn memory(pid: u32, http: SocketAddr) -> (u64, u64) {
    tokio::time::sleep(Duration::from_secs(2)).await;
    (
        resident_kib(pid),
        metric(http, "hubcast_heap_in_use_bytes").await,
    )
}

fn report(what: &str, count: usize, before: (u64, u64), after: (u64, u64)) {
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
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let quic: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cert_dir = std::env::temp_dir().join(format!("hubcast-idle-{}", std::process::id()));
    let child = Command::new(env!("CARGO_BIN_EXE_hubcast"))
        .args(["--http-listen", &http.to_string()])
        .args(["--quic-listen", &quic.to_string()])
        .args(["--cert-dir", cert_dir.to_str().unwrap()])
        .args(["--heartbeat", "600", "--idle-timeout", "600"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start the hubcast binary");
    let server = ServerProcess(child);
    let pid = server.0.id();
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(http).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // WebSocket: each connection subscribes and then stays idle.
    let before = memory(pid, http).await;
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
    let after = memory(pid, http).await;
    report("idle WebSocket connections", ws_count, before, after);
    drop(sockets);

    // WebTransport: each session opens its control stream and subscribes.
    let config = wtransport::ClientConfig::builder()
        .with_bind_default()
        .with_no_cert_validation()
        .keep_alive_interval(Some(Duration::from_secs(60)))
        .build();
    let endpoint = wtransport::Endpoint::client(config).unwrap();
    let before = memory(pid, http).await;
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
    let after = memory(pid, http).await;
    report("idle WebTransport sessions", wt_count, before, after);
    drop(sessions);
    let _ = std::fs::remove_dir_all(cert_dir);
}
