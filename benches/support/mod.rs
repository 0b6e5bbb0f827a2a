//! What the process-level benchmarks share: the server as a child process, its memory and its
//! metrics.

#![allow(
    dead_code,
    reason = "each benchmark uses a different subset of these helpers"
)]

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Reads a count from the environment, `default` when it is unset or not a number.
pub fn env_or(name: &str, default: usize) -> usize {
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

/// Resident memory of process `pid`, in KiB, read from /proc.
pub fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The release `hubcast` binary running on free loopback ports; killed on drop.
pub struct ServerProcess {
    child: Child,
    pub http: SocketAddr,
    pub quic: SocketAddr,
    pub cert_dir: PathBuf,
}

impl ServerProcess {
    /// Starts the server with `args` on top of the listen addresses and a fresh certificate
    /// directory, and waits until its TCP listener accepts.
    pub async fn start(name: &str, args: &[&str]) -> Self {
        let port = free_port();
        let http: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let quic: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let cert_dir = std::env::temp_dir().join(format!("hubcast-{name}-{}", std::process::id()));
        let child = Command::new(env!("CARGO_BIN_EXE_hubcast"))
            .args(["--http-listen", &http.to_string()])
            .args(["--quic-listen", &quic.to_string()])
            .args(["--cert-dir", cert_dir.to_str().unwrap()])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start the hubcast binary");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(http).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            child,
            http,
            quic,
            cert_dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the server, in KiB.
    pub fn resident_kib(&self) -> u64 {
        resident_kib(self.pid())
    }

    /// Reads one value from the metrics endpoint, `u64::MAX` when it is missing.
    pub async fn metric(&self, name: &str) -> u64 {
        let http = self.http;
        let mut socket = tokio::net::TcpStream::connect(http).await.unwrap();
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n");
        socket.write_all(request.as_bytes()).await.unwrap();
        let mut body = String::new();
        socket.read_to_string(&mut body).await.unwrap();
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(u64::MAX)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.cert_dir);
    }
}
