//! Smoke runs of every hubcast-load scenario at small scale against an in-process server, so
//! the load generator keeps working. They check counts and outputs, never timings.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use serde_json::Value;

use common::{temp_dir, TestServer};

/// Longest a small hubcast-load run may take before the test fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs hubcast-load with `args` and returns its exit code and the JSON it printed.
async fn load(args: &[&str]) -> (i32, Value) {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_hubcast-load"))
        .args(args)
        .kill_on_drop(true)
        .output();
    let output: Output = tokio::time::timeout(RUN_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| panic!("hubcast-load {args:?} ran longer than {RUN_TIMEOUT:?}"))
        .expect("hubcast-load runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let json = stdout
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str::<Value>(line).ok())
        .unwrap_or_else(|| panic!("no JSON from hubcast-load {args:?}; stderr:\n{stderr}"));
    (output.status.code().unwrap_or(-1), json)
}

fn addresses(server: &TestServer, target: &str) -> (String, String) {
    let http = server.http.to_string();
    if target == "hubcast-h3sse" || target == "hubcast-wt" {
        (server.quic.to_string(), http)
    } else {
        (http.clone(), http)
    }
}

#[tokio::test]
async fn fanout_delivers_every_event_on_every_transport() {
    let server = TestServer::start().await;
    let pid = std::process::id().to_string();
    for target in ["hubcast-ws", "hubcast-sse", "hubcast-h3sse", "hubcast-wt"] {
        let (subscribe, publish) = addresses(&server, target);
        let (code, json) = load(&[
            "fanout",
            "--target",
            target,
            "--server",
            &subscribe,
            "--publish",
            &publish,
            "--subscribers",
            "20",
            "--duration",
            "0.5",
            "--pid",
            &pid,
        ])
        .await;
        assert_eq!(code, 0, "{target}: {json}");
        assert_eq!(json["ok"], true, "{target}: {json}");
        let published = json["published"].as_u64().unwrap();
        assert!(published > 0, "{target} published nothing: {json}");
        assert_eq!(json["delivered"].as_u64(), Some(published * 20), "{target}");
        assert_eq!(json["lost"], 0, "{target}");
        assert_eq!(json["phases"].as_array().map(Vec::len), Some(2), "{target}");
        assert!(
            json["phases"][1]["latency"]["samples"].as_u64().unwrap() > 0,
            "{target} recorded no latency: {json}"
        );
        assert!(
            json["server"]["rss_peak_kib"].as_u64().unwrap() > 0,
            "{target}"
        );
        server.wait_subscribers(0).await;
    }
}

/// A TCP proxy to `upstream` whose server-to-client direction can be paused, so that to the
/// server its subscribers stop reading.
async fn pausable_proxy(upstream: SocketAddr, paused: Arc<AtomicBool>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(upstream).await.unwrap();
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
            });
            let paused = paused.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 64 * 1024];
                loop {
                    let n = match server_read.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    while paused.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    if client_write.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn fanout_fails_when_events_are_lost() {
    // With a history of 2 events, subscribers that stop reading for a while fall behind the
    // history and get a resync signal in place of the events they missed.
    let server = TestServer::start_with(|config| {
        config.hub.history_max_events = 2;
        config.hub.queue.max_messages = 1;
    })
    .await;
    let paused = Arc::new(AtomicBool::new(false));
    let proxy = pausable_proxy(server.http, paused.clone()).await;
    let stall = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        paused.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        paused.store(false, Ordering::Relaxed);
    });
    let (code, json) = load(&[
        "fanout",
        "--target",
        "hubcast-ws",
        "--server",
        &proxy.to_string(),
        "--publish",
        &server.http.to_string(),
        "--subscribers",
        "3",
        "--size",
        "60000",
        "--duration",
        "2.5",
        "--rate",
        "400",
        "--drain-timeout",
        "2",
    ])
    .await;
    stall.await.unwrap();
    assert_eq!(code, 1, "a lossy run must exit with status 1: {json}");
    assert_eq!(json["ok"], false);
    assert!(json["lost"].as_u64().unwrap() > 0, "{json}");
    assert!(json["failure"].as_str().unwrap().contains("lost"), "{json}");
    let reason = json["totals"]["first_end_reason"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("resync"), "{json}");
}

#[tokio::test]
async fn telemetry_datagrams_reach_subscribers() {
    let server = TestServer::start().await;
    let (code, json) = load(&[
        "telemetry",
        "--server",
        &server.quic.to_string(),
        "--publishers",
        "6",
        "--subscribers",
        "3",
        "--rate",
        "50",
        "--duration",
        "1",
    ])
    .await;
    assert_eq!(code, 0, "{json}");
    assert_eq!(json["publishers_connected"], 6);
    let sent = json["sent"].as_u64().unwrap();
    assert!(sent >= 6, "{json}");
    // Datagrams may be dropped by design, but on an idle loopback most arrive.
    assert!(json["delivered"].as_u64().unwrap() * 2 >= sent, "{json}");
}

#[tokio::test]
async fn idle_reports_memory_per_connection() {
    let pid = std::process::id().to_string();
    for target in ["hubcast-ws", "hubcast-wt"] {
        let server = TestServer::start().await;
        let (subscribe, publish) = addresses(&server, target);
        let (code, json) = load(&[
            "idle",
            "--target",
            target,
            "--server",
            &subscribe,
            "--publish",
            &publish,
            "--connections",
            "30",
            "--pid",
            &pid,
            "--settle",
            "0.2",
        ])
        .await;
        assert_eq!(code, 0, "{target}: {json}");
        assert_eq!(json["connecting"]["opened"], 30, "{target}: {json}");
        assert!(json["stopped_by"].is_null(), "{target}: {json}");
        assert!(
            json["heap_per_connection_kib"].as_f64().is_some(),
            "{target}"
        );
        server.wait_subscribers(0).await;
    }
}

#[tokio::test]
async fn storm_completes_connections_on_every_transport() {
    let server = TestServer::start().await;
    for target in ["hubcast-ws", "hubcast-sse", "hubcast-h3sse", "hubcast-wt"] {
        let (subscribe, publish) = addresses(&server, target);
        let (code, json) = load(&[
            "storm",
            "--target",
            target,
            "--server",
            &subscribe,
            "--publish",
            &publish,
            "--duration",
            "0.5",
            "--concurrency",
            "4",
        ])
        .await;
        assert_eq!(code, 0, "{target}: {json}");
        assert!(json["completed"].as_u64().unwrap() > 0, "{target}: {json}");
        assert_eq!(json["failed"], 0, "{target}: {json}");
    }
}

/// Runs `hubcast-load report` on `results` into `page` and returns the page.
fn render_report(results: &Path, page: &Path) -> String {
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_hubcast-load"))
        .args(["report", results.to_str().unwrap(), page.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success(), "hubcast-load report failed");
    std::fs::read_to_string(page).unwrap()
}

#[tokio::test]
async fn report_renders_results_between_markers() {
    let server = TestServer::start().await;
    let dir = temp_dir();
    let results = dir.join("results");
    let result_file = results.join("fanout-hubcast-ws.json");
    let (code, _) = load(&[
        "fanout",
        "--target",
        "hubcast-ws",
        "--server",
        &server.http.to_string(),
        "--subscribers",
        "3",
        "--duration",
        "0.3",
        "--json",
        result_file.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0);
    let page = dir.join("page.md");
    let before = "# Page\n\nkept\n\n<!-- hubcast-load report: begin -->\nold\n\
                  <!-- hubcast-load report: end -->\n\nalso kept\n";
    std::fs::write(&page, before).unwrap();
    let after = render_report(&results, &page);
    assert!(after.starts_with("# Page\n\nkept\n"), "{after}");
    assert!(
        after.ends_with("<!-- hubcast-load report: end -->\n\nalso kept\n"),
        "{after}"
    );
    assert!(!after.contains("\nold\n"), "{after}");
    assert!(after.contains("| hubcast-ws | 3 |"), "{after}");
    assert!(after.contains("Machine: "), "{after}");
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}

#[tokio::test]
async fn report_compares_telemetry_with_same_shape_echo() {
    let server = TestServer::start().await;
    let dir = temp_dir();
    let results = dir.join("results");
    std::fs::create_dir_all(&results).unwrap();
    let telemetry_file = results.join("telemetry-paced.json");
    let (code, telemetry) = load(&[
        "telemetry",
        "--server",
        &server.quic.to_string(),
        "--publishers",
        "4",
        "--subscribers",
        "2",
        "--rate",
        "50",
        "--duration",
        "0.5",
        "--json",
        telemetry_file.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0, "{telemetry}");

    // Echo results in the format of benches/peers/raw_quinn.rs: one run of the same shape (4
    // connections, 200 datagrams/s in total) and one of another shape.
    let same_shape = serde_json::json!({
        "connections": 4, "size": 100, "rate_per_s": 200.0, "sent": 1000, "received": 800,
        "duration_s": 5.0, "received_per_s": 160.0, "cpu_s": 1.0
    });
    let other_shape = serde_json::json!({
        "connections": 100, "size": 100, "rate_per_s": null, "sent": 1000, "received": 1000,
        "duration_s": 1.0, "received_per_s": 1000.0, "cpu_s": 1.0
    });
    std::fs::write(results.join("raw-quinn-paced.json"), same_shape.to_string()).unwrap();
    std::fs::write(results.join("raw-quinn.json"), other_shape.to_string()).unwrap();

    let page = dir.join("page.md");
    let markers = "<!-- hubcast-load report: begin -->\n<!-- hubcast-load report: end -->\n";
    std::fs::write(&page, markers).unwrap();
    let after = render_report(&results, &page);

    assert!(
        after.contains("| raw-quinn-paced | 4 | 200/s | 200 | 160 | 20.00 | 20 |"),
        "{after}"
    );
    assert!(
        after.contains("| raw-quinn | 100 | max | 1000 | 1000 | 0.00 | 100 |"),
        "{after}"
    );
    let delivered = telemetry["delivered_per_second"].as_f64().unwrap();
    let ratio = format!("{:.0} %", 100.0 * delivered / 160.0);
    let row = format!("| telemetry-paced | {delivered:.0} | raw-quinn-paced | 160 | {ratio} |");
    assert!(after.contains(&row), "expected {row} in {after}");
    assert!(!after.contains("| raw-quinn | 1000 |"), "{after}");
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}
