//! Slow and vanished peers: bounded queues, catching up from history, write timeouts,
//! heartbeats and datagram limits.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::StreamExt as _;
use http::Method;
use hubcast::hub::Class;
use hubcast::topic::Topic;
use serde_json::json;
use tokio::io::AsyncWriteExt as _;

const KB: &str = include_str!("../Cargo.toml");

/// A 1 KB payload carrying its sequence number first.
fn payload(n: usize) -> Bytes {
    let mut text = format!("{n:08} ");
    text.push_str(&KB.replace(['\n', '\r'], " ")[..1016]);
    Bytes::from(text)
}

fn publish_events(server: &TestServer, topic: &str, count: usize) {
    let topic = Topic::parse(topic).unwrap();
    for n in 0..count {
        server
            .server
            .hub
            .publish(topic.clone(), Class::Event, None, payload(n))
            .unwrap();
    }
}

fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn raw_request(server: &TestServer, request: &str) -> tokio::net::TcpStream {
    let mut socket = tokio::net::TcpStream::connect(server.http).await.unwrap();
    socket.write_all(request.as_bytes()).await.unwrap();
    socket
}

#[tokio::test]
async fn stuck_readers_are_cut_and_others_keep_up() {
    let server = TestServer::start_with(|c| {
        c.write_timeout = Duration::from_secs(1);
        c.hub.queue.max_messages = 64;
    })
    .await;
    let host = server.http;
    // Two clients that send a request and then never read a byte.
    let _sse = raw_request(
        &server,
        &format!("GET /v1/events?topic=load HTTP/1.1\r\nHost: {host}\r\n\r\n"),
    )
    .await;
    let mut ws = raw_request(
        &server,
        &format!(
            "GET /v1/ws HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        ),
    )
    .await;
    // The WebSocket subscribes in a masked client frame, then stops reading too.
    let command = br#"{"op":"subscribe","filters":["load"]}"#;
    let mut frame = vec![0x81, 0x80 | command.len() as u8, 1, 2, 3, 4];
    frame.extend(
        command
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]),
    );
    ws.write_all(&frame).await.unwrap();
    server.wait_subscribers(2).await;

    let mut fast = SseClient::open(&server, "topic=load", None).await;
    server.wait_subscribers(3).await;
    let before = resident_kib();

    let publisher = tokio::task::spawn_blocking({
        let hub = server.server.hub.clone();
        move || {
            let topic = Topic::parse("load").unwrap();
            for n in 0..20_000 {
                hub.publish(topic.clone(), Class::Event, None, payload(n))
                    .unwrap();
            }
        }
    });
    for n in 0..20_000 {
        let event = fast.next().await;
        assert!(
            event.data.starts_with(&format!("{n:08} ")),
            "event {n} out of order"
        );
    }
    within("publisher", publisher).await.unwrap();

    // Both stuck clients are cut once their writes stall past the timeout.
    server.wait_subscribers(1).await;
    let metrics = &server.server.metrics;
    within("two slow disconnects counted", async {
        while metrics
            .disconnected_slow
            .load(std::sync::atomic::Ordering::Relaxed)
            < 2
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(server.server.hub.stats().lagged >= 2);
    // History holds the 20 MB once; the stuck clients hold no copies beyond their bounds.
    let grown = resident_kib().saturating_sub(before);
    assert!(grown < 96 * 1024, "resident memory grew by {grown} KiB");
}

#[tokio::test]
async fn silent_websocket_peer_is_dropped() {
    let server = TestServer::start_with(|c| {
        c.heartbeat = Duration::from_millis(200);
        c.peer_timeout = Duration::from_millis(300);
    })
    .await;
    let host = server.http;
    // Upgrades, subscribes, then never answers a ping.
    let mut socket = raw_request(
        &server,
        &format!(
            "GET /v1/ws HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        ),
    )
    .await;
    let command = br#"{"op":"subscribe","filters":["x"]}"#;
    let mut frame = vec![0x81, 0x80 | command.len() as u8, 0, 0, 0, 0];
    frame.extend(command);
    socket.write_all(&frame).await.unwrap();
    server.wait_subscribers(1).await;
    server.wait_subscribers(0).await;
    let dead = server
        .server
        .metrics
        .disconnected_dead
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(dead, 1);

    // A client that answers pings stays, well past the same interval.
    let mut ws = ws_connect(&server).await;
    ws_send(&mut ws, json!({"op": "subscribe", "filters": ["x"]})).await;
    assert_eq!(ws_next(&mut ws).await["op"], "subscribed");
    let reader = tokio::spawn(async move { while ws.next().await.is_some() {} });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(server.server.hub.stats().subscribers, 1);
    reader.abort();
}

/// A UDP relay between a client and the server that can stop forwarding, the way a network
/// disappears without any packet saying so.
struct Relay {
    addr: std::net::SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(server: std::net::SocketAddr) -> Self {
        let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        back.connect(server).await.unwrap();
        let addr = front.local_addr().unwrap();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = cut.clone();
        let task = tokio::spawn(async move {
            let mut client = None;
            let mut a = vec![0u8; 65536];
            let mut b = vec![0u8; 65536];
            loop {
                tokio::select! {
                    Ok((n, from)) = front.recv_from(&mut a) => {
                        client = Some(from);
                        if !flag.load(std::sync::atomic::Ordering::Relaxed) {
                            let _ = back.send(&a[..n]).await;
                        }
                    }
                    Ok(n) = back.recv(&mut b) => {
                        if let (Some(to), false) = (client, flag.load(std::sync::atomic::Ordering::Relaxed)) {
                            let _ = front.send_to(&b[..n], to).await;
                        }
                    }
                }
            }
        });
        Self { addr, cut, task }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Opens a WebTransport session to `server` through a new relay and subscribes it to `filter`.
async fn subscribe_via_relay(server: &TestServer, filter: &str) -> (Relay, WtClient) {
    let relay = Relay::start(server.quic).await;
    let mut via_relay = TestServer::start_with(|_| {}).await;
    // Aim the client at the relay while keeping the real server's certificate hash.
    via_relay.quic = relay.addr;
    via_relay.hash = server.hash;
    let mut client = WtClient::connect(&via_relay).await.unwrap();
    let reply = client
        .call(json!({"op": "subscribe", "filters": [filter]}))
        .await
        .unwrap();
    assert_eq!(reply["op"], "subscribed");
    server.wait_subscribers(1).await;
    (relay, client)
}

#[tokio::test]
async fn vanished_quic_peer_is_freed() {
    let server = TestServer::start_with(|c| c.idle_timeout = Duration::from_secs(1)).await;
    let (relay, _client) = subscribe_via_relay(&server, "q").await;

    relay.cut.store(true, std::sync::atomic::Ordering::Relaxed);
    // Keep-alives go unanswered; the idle timeout (1 s here) ends the connection.
    within("idle timeout", server.wait_subscribers(0)).await;
    assert_eq!(
        server
            .server
            .metrics
            .sessions_open
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

/// While a subscriber's path is down, its session's datagram queue keeps only the newest values
/// that fit the configured buffer, so the subscriber gets fresh telemetry once the path is back
/// instead of a backlog of stale values.
#[tokio::test]
async fn datagram_queue_keeps_newest_values() {
    const BUFFER: usize = 2048;
    const VALUES: usize = 2000;
    let server = TestServer::start_with(|c| c.datagram_buffer_bytes = BUFFER).await;
    let (relay, client) = subscribe_via_relay(&server, "g/#").await;

    relay.cut.store(true, std::sync::atomic::Ordering::Relaxed);
    let topic = Topic::parse("g/t").unwrap();
    for n in 0..VALUES {
        let payload = Bytes::from(format!("{n:0>40}"));
        server
            .server
            .hub
            .publish(topic.clone(), Class::Telemetry, None, payload)
            .unwrap();
        // Lets the session hand each value to QUIC before the hub's queue fills, so the values
        // pile up in the connection's datagram queue, not in the hub's conflation.
        if n % 8 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    // Whatever the congestion window lets out meanwhile is lost on the cut path.
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.cut.store(false, std::sync::atomic::Ordering::Relaxed);
    let last = Bytes::from("last");
    let publish_last = || {
        server
            .server
            .hub
            .publish(topic.clone(), Class::Telemetry, None, last.clone())
            .unwrap();
    };
    publish_last();

    // Read until the value published after the cut arrives; it goes out behind the queue.
    let mut values = Vec::new();
    let mut resend = tokio::time::interval(Duration::from_millis(200));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let datagram = tokio::select! {
            datagram = client.connection.receive_datagram() => datagram.unwrap(),
            _ = resend.tick() => {
                // The first copy may be lost while the path recovers.
                publish_last();
                continue;
            }
            _ = tokio::time::sleep_until(deadline) => panic!("the value after the cut never came"),
        };
        let (_, payload) = parse_datagram(&datagram);
        if payload == b"last" {
            break;
        }
        values.push(
            String::from_utf8(payload)
                .unwrap()
                .parse::<usize>()
                .unwrap(),
        );
    }

    // Each queued datagram is about 47 bytes, so about 43 of them fit the buffer.
    let fit = BUFFER / 40;
    assert!(
        values.len() <= fit,
        "{} queued values arrived, the buffer fits about {fit}: {values:?}",
        values.len()
    );
    let oldest = VALUES - fit;
    assert!(
        values.iter().all(|&n| n >= oldest),
        "values older than {oldest} arrived: {values:?}"
    );
}

#[tokio::test]
async fn datagram_limits_do_not_stall() {
    let server = TestServer::start().await;
    let mut sse = SseClient::open(&server, "topic=d/%2B", None).await;
    let device = WtClient::connect(&server).await.unwrap();

    // A 4 KB datagram is refused, and the small ones behind it still go through.
    let large = topic_datagram("d/big", &[b'x'; 4096]);
    assert!(device.connection.send_datagram(large).is_err());
    for n in 0..10 {
        let small = topic_datagram("d/small", format!("{n:0>97}").as_bytes());
        device.connection.send_datagram(small).unwrap();
    }
    let mut seen = 0;
    while seen < 10 {
        let event = sse.next().await;
        assert!(event.data.len() == 97, "{}", event.data);
        seen += 1;
    }

    // Exactly the maximum arrives; one byte more is refused. Path MTU discovery may raise the
    // maximum at any time, so it is read again right before each send.
    let header = 3 + "d/max".len();
    let max = device.connection.max_datagram_size().unwrap();
    let exact = topic_datagram("d/max", &vec![b'm'; max - header]);
    assert_eq!(exact.len(), max);
    device.connection.send_datagram(exact).unwrap();
    let event = sse.next().await;
    assert_eq!(event.data.len(), max - header);
    let max = device.connection.max_datagram_size().unwrap();
    let over = topic_datagram("d/max", &vec![b'm'; max - header + 1]);
    assert!(device.connection.send_datagram(over).is_err());
}

#[tokio::test]
async fn lagging_subscribers_catch_up_on_every_transport() {
    let server = TestServer::start_with(|c| {
        c.hub.queue.max_messages = 16;
        c.hub.history_max_events = 50_000;
        c.hub.history_max_bytes = 256 << 20;
    })
    .await;
    const COUNT: usize = 20_000;

    // Each subscriber is set up, then left unread while the events are published.
    let mut sse = SseClient::open(&server, "topic=lag", None).await;
    let mut h3 = H3Client::connect(&server).await.unwrap();
    let (_, stream) = h3
        .request(Method::GET, "/v1/events?topic=lag", None)
        .await
        .unwrap();
    let mut h3_sse = H3Sse::new(stream);
    h3_sse.opened().await;
    let mut ws = ws_connect(&server).await;
    ws_send(&mut ws, json!({"op": "subscribe", "filters": ["lag"]})).await;
    assert_eq!(ws_next(&mut ws).await["op"], "subscribed");
    let mut wt = WtClient::connect(&server).await.unwrap();
    let reply = wt
        .call(json!({"op": "subscribe", "filters": ["lag"]}))
        .await
        .unwrap();
    assert_eq!(reply["op"], "subscribed");
    server.wait_subscribers(4).await;

    publish_events(&server, "lag", COUNT);
    let lagged = server.server.hub.stats().lagged;
    assert!(lagged >= 4, "only {lagged} subscribers lagged");

    for n in 0..COUNT {
        let expected = format!("{n:08} ");
        assert!(
            sse.next().await.data.starts_with(&expected),
            "HTTP/1.1 SSE event {n}"
        );
        assert!(
            h3_sse.next().await.data.starts_with(&expected),
            "HTTP/3 SSE event {n}"
        );
        let message = ws_next(&mut ws).await;
        assert!(
            message["payload"].as_str().unwrap().starts_with(&expected),
            "WebSocket event {n}"
        );
    }
    let mut recv = within("event stream", wt.connection.accept_uni())
        .await
        .unwrap();
    for n in 0..COUNT {
        let frame = within("WebTransport event", read_frame(&mut recv))
            .await
            .unwrap();
        let text = frame["payload"].as_str().unwrap();
        assert!(
            text.starts_with(&format!("{n:08} ")),
            "WebTransport event {n}"
        );
    }
}

#[tokio::test]
async fn lagging_past_history_resyncs() {
    let server = TestServer::start_with(|c| {
        c.hub.queue.max_messages = 16;
        c.hub.history_max_events = 100;
    })
    .await;
    let mut ws = ws_connect(&server).await;
    ws_send(&mut ws, json!({"op": "subscribe", "filters": ["lag"]})).await;
    assert_eq!(ws_next(&mut ws).await["op"], "subscribed");
    publish_events(&server, "lag", 20_000);
    let mut resynced = false;
    let mut last = None;
    // Events arrive in order up to the gap, then the resync, then only what history holds.
    for _ in 0..20_000 {
        let message = ws_next(&mut ws).await;
        if message["op"] == "resync" {
            assert_eq!(message["reason"], "expired");
            resynced = true;
            break;
        }
        let n: usize = message["payload"].as_str().unwrap()[..8].parse().unwrap();
        if let Some(previous) = last {
            assert_eq!(n, previous + 1, "gap before the resync");
        }
        last = Some(n);
    }
    assert!(resynced, "no resync signal");
    publish_events(&server, "lag2", 0);
    server.publish("lag", "after").await;
    assert_eq!(ws_next(&mut ws).await["payload"], "after");
}

#[tokio::test]
async fn metrics_endpoint_lists_counters() {
    let server = TestServer::start().await;
    server.publish("m", "x").await;
    let text = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "hubcast_subscribers_lagged_total",
        "hubcast_telemetry_conflated_total",
        "hubcast_datagrams_dropped_total",
        "hubcast_disconnected_slow_total",
        "hubcast_disconnected_dead_total",
    ] {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
    }
    assert!(text.contains("hubcast_events_published_total 1\n"));
}

#[tokio::test]
async fn lagging_websocket_gets_latest_telemetry() {
    let server = TestServer::start_with(|c| c.hub.queue.max_messages = 16).await;
    let mut ws = ws_connect(&server).await;
    ws_send(&mut ws, json!({"op": "subscribe", "filters": ["t/+"]})).await;
    assert_eq!(ws_next(&mut ws).await["op"], "subscribed");

    // 40,000 readings of 1 KB on four topics while the client reads nothing (quickly enough
    // that it does not count as a silent peer).
    let hub = server.server.hub.clone();
    let published = 40_000;
    tokio::task::spawn_blocking(move || {
        for n in 0..published {
            let topic = Topic::parse(&format!("t/{}", n % 4)).unwrap();
            hub.publish(topic, Class::Telemetry, None, payload(n))
                .unwrap();
        }
    })
    .await
    .unwrap();
    assert!(server.server.hub.stats().conflated > 0);

    // Draining, the client sees a bounded backlog and then the newest value of every topic.
    let mut received = 0;
    let mut latest = [0usize; 4];
    while latest
        .iter()
        .enumerate()
        .any(|(t, n)| *n != published - 4 + t)
    {
        let message = ws_next(&mut ws).await;
        assert_eq!(message["op"], "telemetry");
        let n: usize = message["payload"].as_str().unwrap()[..8].parse().unwrap();
        latest[n % 4] = n;
        received += 1;
    }
    assert!(
        received < published / 2,
        "{received} of {published} readings delivered"
    );
}

#[tokio::test]
async fn lagging_past_history_resyncs_on_streams() {
    let server = TestServer::start_with(|c| {
        c.hub.queue.max_messages = 16;
        c.hub.history_max_events = 100;
    })
    .await;
    let mut sse = SseClient::open(&server, "topic=lag", None).await;
    let mut wt = WtClient::connect(&server).await.unwrap();
    let reply = wt
        .call(json!({"op": "subscribe", "filters": ["lag"]}))
        .await
        .unwrap();
    assert_eq!(reply["op"], "subscribed");
    server.wait_subscribers(2).await;
    publish_events(&server, "lag", 20_000);

    // SSE: ordered events, then the resync event, with no gap before it.
    let mut previous: Option<usize> = None;
    loop {
        let event = sse.next().await;
        if event.event.as_deref() == Some("hubcast.resync") {
            assert!(event.data.contains("\"expired\""), "{}", event.data);
            break;
        }
        let n: usize = event.data[..8].parse().unwrap();
        if let Some(p) = previous {
            assert_eq!(n, p + 1, "SSE gap before the resync");
        }
        previous = Some(n);
    }
    // WebTransport: the resync comes on the control stream.
    let resync = within("WebTransport resync", wt.reply()).await.unwrap();
    assert_eq!(resync["op"], "resync");
    assert_eq!(resync["reason"], "expired");
}
