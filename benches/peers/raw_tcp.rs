//! Raw TCP fan-out: the ceiling for hubcast's WebSocket and SSE paths in the fan-out
//! benchmark (`benches/peers/run.sh`).
//!
//! The first line a client sends is `SUB` or `PUB`. Every later line from a `PUB` client is
//! written, newline included and otherwise unchanged, to every `SUB` socket. There are no
//! topics, no framing beyond the newline and no history. A subscriber that falls more than
//! [`LAG_LINES`] lines behind is disconnected.
//!
//! ```sh
//! cargo run --release --example peer-raw-tcp -- --listen 127.0.0.1:18500
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use clap::Parser;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

/// Lines a subscriber may fall behind the publishers before it is disconnected.
const LAG_LINES: usize = 4096;

/// Maximum length of one line, newline included; a longer line closes its connection.
const MAX_LINE_BYTES: usize = 64 << 10;

/// Bytes a publisher reads per call, and roughly what a subscriber writes per call.
const CHUNK_BYTES: usize = 64 << 10;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(about = "Raw TCP line fan-out: the ceiling for hubcast's WebSocket and SSE paths")]
struct Args {
    /// TCP address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:18500")]
    listen: SocketAddr,
}

/// Subscribers disconnected for lagging, for rate-limited logging.
static LAGGED: AtomicU64 = AtomicU64::new(0);

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let listener = match TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!(
                "peer-raw-tcp: failed to listen on --listen {}: {e}; pick a free address",
                args.listen
            );
            std::process::exit(1);
        }
    };
    eprintln!("peer-raw-tcp: listening on {}", args.listen);

    let (lines, _) = broadcast::channel::<Bytes>(LAG_LINES);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Running out of file descriptors ends up here; keep serving the others.
                eprintln!("peer-raw-tcp: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let lines = lines.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(stream, lines).await {
                eprintln!("peer-raw-tcp: connection from {peer} closed: {e}");
            }
        });
    }
}

/// Reads the role line and serves the connection as a subscriber or a publisher.
async fn serve(mut stream: TcpStream, lines: broadcast::Sender<Bytes>) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buffer = BytesMut::with_capacity(CHUNK_BYTES);
    let role = loop {
        if let Some(end) = buffer.iter().position(|&b| b == b'\n') {
            break buffer.split_to(end + 1);
        }
        if buffer.len() > 16 {
            return reject(stream, "the first line must be SUB or PUB").await;
        }
        if stream.read_buf(&mut buffer).await? == 0 {
            return Ok(());
        }
    };
    match role.trim_ascii_end() {
        b"SUB" => subscribe(stream, lines.subscribe()).await,
        b"PUB" => publish(stream, buffer, &lines).await,
        other => {
            let message = format!(
                "invalid first line {:?}: expected SUB or PUB",
                String::from_utf8_lossy(other)
            );
            reject(stream, &message).await
        }
    }
}

async fn reject(mut stream: TcpStream, message: &str) -> std::io::Result<()> {
    stream
        .write_all(format!("ERR {message}\n").as_bytes())
        .await?;
    stream.shutdown().await?;
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        message.to_owned(),
    ))
}

/// Broadcasts every complete line, each as one shared `Bytes`, until the publisher closes.
async fn publish(
    mut stream: TcpStream,
    mut buffer: BytesMut,
    lines: &broadcast::Sender<Bytes>,
) -> std::io::Result<()> {
    // Bytes of `buffer` already searched for a newline.
    let mut searched = 0;
    loop {
        while let Some(offset) = buffer[searched..].iter().position(|&b| b == b'\n') {
            let line = buffer.split_to(searched + offset + 1).freeze();
            searched = 0;
            // Sending fails only while no subscriber exists, and then the line has no reader.
            let _ = lines.send(line);
        }
        searched = buffer.len();
        if buffer.len() > MAX_LINE_BYTES {
            let message = format!("line longer than {MAX_LINE_BYTES} bytes");
            return reject(stream, &message).await;
        }
        // Lines already sent keep their part of the old allocation alive, so this allocates a
        // fresh chunk once the current one is used up.
        buffer.reserve(CHUNK_BYTES);
        if stream.read_buf(&mut buffer).await? == 0 {
            return Ok(());
        }
    }
}

/// Writes broadcast lines to a subscriber, every line that is ready under one write, until the
/// subscriber closes or lags.
async fn subscribe(
    stream: TcpStream,
    mut lines: broadcast::Receiver<Bytes>,
) -> std::io::Result<()> {
    let (mut reader, mut writer) = stream.into_split();
    let mut batch = Vec::with_capacity(CHUNK_BYTES);
    let mut ignored = [0u8; 512];
    loop {
        tokio::select! {
            received = lines.recv() => {
                match received {
                    Ok(line) => batch.extend_from_slice(&line),
                    Err(RecvError::Lagged(missed)) => return lagged(missed),
                    Err(RecvError::Closed) => return Ok(()),
                }
                while batch.len() < CHUNK_BYTES {
                    match lines.try_recv() {
                        Ok(line) => batch.extend_from_slice(&line),
                        Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                        Err(TryRecvError::Lagged(missed)) => return lagged(missed),
                    }
                }
                writer.write_all(&batch).await?;
                batch.clear();
            }
            // A subscriber sends nothing after its first line; a read of 0 means it closed.
            read = reader.read(&mut ignored) => {
                if read? == 0 {
                    return Ok(());
                }
            }
        }
    }
}

fn lagged(missed: u64) -> std::io::Result<()> {
    let count = LAGGED.fetch_add(1, Ordering::Relaxed) + 1;
    if count == 1 || count % 1000 == 0 {
        eprintln!(
            "peer-raw-tcp: disconnected {count} lagging subscribers so far \
             (the latest missed {missed} lines)"
        );
    }
    Ok(())
}
