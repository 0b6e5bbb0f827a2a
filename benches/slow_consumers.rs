//! Slow consumers under load: 1,000 subscribers that never read and 100 that do, while one
//! publisher sends events as fast as the server takes them.
//!
//! The server runs as a child process (the release `hubcast` binary), so its resident memory
//! is measured alone from /proc. Reports the fast subscribers' publish-to-deliver latency, the
//! server's peak resident memory, and its resident memory before the slow subscribers connect
//! and after they are gone. Run with `cargo bench --bench slow_consumers`; the environment
//! variables `SLOW`, `FAST` and `SECONDS` change the scale.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::AsyncWriteExt as _;
use tokio_tungstenite::tungstenite::Message;

#[path = "support/mod.rs"]
mod support;

use support::{env_or, ServerProcess};

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Wait for the server to settle: longer than its heap trim interval.
const SETTLE: Duration = Duration::from_secs(7);

/// Publishes 100-byte events over one WebSocket for `duration`, as fast as acknowledgements
/// come back with 64 in flight; returns the count and the time taken.
async fn publish_for(http: SocketAddr, duration: Duration) -> (u64, Duration) {
    let (publisher, _) = tokio_tungstenite::connect_async(format!("ws://{http}/v1/ws"))
        .await
        .unwrap();
    let (mut sink, mut acks) = publisher.split();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(64));
    let ack_reader = tokio::spawn({
        let in_flight = in_flight.clone();
        async move {
            while let Some(Ok(Message::Text(text))) = acks.next().await {
                if text.contains("\"ack\"") {
                    in_flight.add_permits(1);
                }
            }
        }
    });
    let padding = "x".repeat(100 - 16);
    let started = Instant::now();
    let mut published = 0u64;
    while started.elapsed() < duration {
        in_flight.acquire().await.unwrap().forget();
        let command = format!(
            r#"{{"op":"publish","topic":"bench","payload":"{:016}{padding}"}}"#,
            now_micros()
        );
        sink.send(Message::text(command)).await.unwrap();
        published += 1;
    }
    let elapsed = started.elapsed();
    let _ = sink.close().await;
    ack_reader.abort();
    (published, elapsed)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

#[tokio::main]
async fn main() {
    let slow_count = env_or("SLOW", 1000);
    let fast_count = env_or("FAST", 100);
    let seconds = env_or("SECONDS", 10) as u64;

    let server = ServerProcess::start(
        "slow-consumers",
        &["--write-timeout", "300", "--history-events", "10000"],
    )
    .await;
    let http = server.http;

    // Fast subscribers: WebSocket clients that read everything and record latency.
    let latencies = Arc::new(Mutex::new(Vec::<u64>::new()));
    let delivered = Arc::new(AtomicU64::new(0));
    let recording = Arc::new(AtomicBool::new(false));
    let mut fast = Vec::new();
    for _ in 0..fast_count {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{http}/v1/ws"))
            .await
            .expect("fast subscriber connects");
        ws.send(Message::text(r#"{"op":"subscribe","filters":["bench"]}"#))
            .await
            .unwrap();
        let latencies = latencies.clone();
        let delivered = delivered.clone();
        let recording = recording.clone();
        fast.push(tokio::spawn(async move {
            let mut local = Vec::new();
            while let Some(Ok(message)) = ws.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let Some(start) = text.find("\"payload\":\"") else {
                    continue;
                };
                let digits = &text[start + 11..start + 27];
                if !recording.load(Ordering::Relaxed) {
                    continue;
                }
                if let Ok(sent) = digits.parse::<u64>() {
                    local.push(now_micros().saturating_sub(sent));
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
                if local.len() >= 4096 {
                    latencies.lock().unwrap().append(&mut local);
                }
            }
            latencies.lock().unwrap().append(&mut local);
        }));
    }
    // Warm-up: history fills to its bound and the fast subscribers' buffers reach their
    // working size, so the start figure is the server's steady state without slow clients.
    publish_for(http, Duration::from_secs(seconds.min(5))).await;
    tokio::time::sleep(SETTLE).await;
    let rss_start = server.resident_kib();
    let heap_start = server.metric("hubcast_heap_in_use_bytes").await / 1024;
    recording.store(true, Ordering::Relaxed);

    // Slow subscribers: an SSE request, then never a read.
    let mut slow = Vec::new();
    for _ in 0..slow_count {
        let mut socket = tokio::net::TcpStream::connect(http)
            .await
            .expect("slow subscriber");
        let request = format!("GET /v1/events?topic=bench HTTP/1.1\r\nHost: {http}\r\n\r\n");
        socket.write_all(request.as_bytes()).await.unwrap();
        slow.push(socket);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Sample the server's memory while the publisher runs.
    let peak = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let pid = server.pid();
    let sampler = tokio::spawn({
        let peak = peak.clone();
        let sampling = sampling.clone();
        async move {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(support::resident_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });

    let (published, elapsed) = publish_for(http, Duration::from_secs(seconds)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    sampling.store(false, Ordering::Relaxed);
    sampler.await.unwrap();

    // The slow subscribers leave; memory should fall back once the heap is trimmed.
    drop(slow);
    tokio::time::sleep(SETTLE).await;
    let rss_end = server.resident_kib();
    let subscribers_end = server.metric("hubcast_subscribers").await;
    let heap_end = server.metric("hubcast_heap_in_use_bytes").await / 1024;
    for task in fast {
        task.abort();
    }

    let mut all = std::mem::take(&mut *latencies.lock().unwrap());
    all.sort_unstable();
    let delivered = delivered.load(Ordering::Relaxed);
    let expected = published * fast_count as u64;
    println!("slow subscribers        {slow_count}");
    println!("fast subscribers        {fast_count}");
    println!("duration                {:.1} s", elapsed.as_secs_f64());
    println!(
        "events published        {published} ({:.0}/s)",
        published as f64 / elapsed.as_secs_f64()
    );
    println!("fast deliveries         {delivered} of {expected} recorded");
    println!(
        "fast latency p50        {:.2} ms",
        percentile(&all, 0.50) as f64 / 1000.0
    );
    println!(
        "fast latency p99        {:.2} ms",
        percentile(&all, 0.99) as f64 / 1000.0
    );
    println!("server RSS at start     {} KiB", rss_start);
    println!(
        "server RSS peak         {} KiB",
        peak.load(Ordering::Relaxed)
    );
    println!("subscribers after slow  {subscribers_end} (the fast ones remain)");
    println!("heap in use at start    {heap_start} KiB");
    println!("heap in use after slow  {heap_end} KiB");
    println!(
        "server RSS after slow   {} KiB ({:+.1}% of start)",
        rss_end,
        (rss_end as f64 / rss_start as f64 - 1.0) * 100.0
    );
}
