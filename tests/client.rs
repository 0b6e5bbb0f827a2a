//! The client library and the `hubcast sub` / `hubcast pub` commands against a real server.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use hubcast::client::{
    parse_cert_hash, Client, Connector, Delivery, Error, Options, Subscription, Transport,
};
use hubcast::config::Config;
use hubcast::server::Server;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};

fn wt_url(quic: SocketAddr) -> String {
    format!("https://127.0.0.1:{}/v1/wt", quic.port())
}

fn ws_url(http: SocketAddr) -> String {
    format!("ws://{http}/v1/ws")
}

/// Options for one transport of `server`, with its certificate hash pinned.
fn options(server: &TestServer, transport: Transport) -> Options {
    let mut options = Options::new(Some(wt_url(server.quic)), Some(ws_url(server.http)));
    options.cert_hash = Some(server.hash);
    options.transport = Some(transport);
    options
}

async fn connect(options: Options) -> (Connector, Client) {
    let connector = Connector::new(options).expect("valid options");
    let client = within("client connection", connector.connect())
        .await
        .expect("client connects");
    (connector, client)
}

async fn next(subscription: &mut Subscription) -> Delivery {
    within("delivery", subscription.next())
        .await
        .expect("subscription still open")
}

/// The next delivery, which must be an event; returns its topic, cursor, name and payload.
async fn next_event(subscription: &mut Subscription) -> (String, String, Option<String>, Vec<u8>) {
    match next(subscription).await {
        Delivery::Event {
            topic,
            cursor,
            event,
            payload,
        } => (topic, cursor, event, payload.to_vec()),
        other => panic!("expected an event, got {other:?}"),
    }
}

fn seq(cursor: &str) -> u64 {
    cursor.rsplit('-').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn webtransport_subscribe_publish_and_telemetry() {
    let server = TestServer::start().await;
    let (_connector, client) = connect(options(&server, Transport::WebTransport)).await;
    assert_eq!(client.transport(), Transport::WebTransport);
    let mut subscription = client.subscribe(&["t/#"], None).await.unwrap();
    server.wait_subscribers(1).await;

    let cursor = client.publish("t/a", b"one", Some("greet")).await.unwrap();
    let (topic, delivered, event, payload) = next_event(&mut subscription).await;
    assert_eq!(topic, "t/a");
    assert_eq!(delivered, cursor);
    assert_eq!(event.as_deref(), Some("greet"));
    assert_eq!(payload, b"one");
    assert_eq!(subscription.cursor(), Some(cursor.as_str()));

    // Telemetry goes out as datagrams: the first registers an alias, the second uses it.
    for (n, value) in ["21.5", "21.6"].into_iter().enumerate() {
        client
            .publish_telemetry("t/b", value.as_bytes())
            .await
            .unwrap();
        assert_eq!(client.telemetry_datagrams(), n as u64 + 1);
        match next(&mut subscription).await {
            Delivery::Telemetry {
                topic,
                event,
                payload,
            } => {
                assert_eq!(topic, "t/b");
                assert_eq!(event, None);
                assert_eq!(&payload[..], value.as_bytes());
            }
            other => panic!("expected telemetry, got {other:?}"),
        }
    }
    let metrics = &server.server.metrics;
    assert_eq!(metrics.datagrams_dropped.load(Ordering::Relaxed), 0);
    assert_eq!(metrics.datagrams_sent.load(Ordering::Relaxed), 2);

    // A value too large for a datagram goes as a command, and comes back on an event stream.
    let big = vec![b'v'; 4000];
    client.publish_telemetry("t/b", &big).await.unwrap();
    assert_eq!(client.telemetry_datagrams(), 2);
    match next(&mut subscription).await {
        Delivery::Telemetry { payload, .. } => assert_eq!(&payload[..], &big[..]),
        other => panic!("expected telemetry, got {other:?}"),
    }

    // A payload that is not UTF-8 travels as base64 and arrives unchanged.
    client.publish("t/c", &[0xff, 0x00], None).await.unwrap();
    let (_, _, event, payload) = next_event(&mut subscription).await;
    assert_eq!(event, None);
    assert_eq!(payload, [0xff, 0x00]);

    let rtt = client.ping().await.unwrap();
    assert!(rtt < WAIT);
    client.close().await;
    assert!(within("end of subscription", subscription.next())
        .await
        .is_none());
    assert!(matches!(
        client.publish("t/a", b"x", None).await,
        Err(Error::Closed)
    ));
}

#[tokio::test]
async fn websocket_fallback_when_udp_port_is_closed() {
    let server = TestServer::start().await;
    let closed = {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap()
    };
    let mut options = Options::new(Some(wt_url(closed)), Some(ws_url(server.http)));
    options.cert_hash = Some(server.hash);
    options.connect_timeout = Duration::from_secs(1);
    let (_connector, client) = connect(options).await;
    assert_eq!(client.transport(), Transport::WebSocket);

    let mut subscription = client.subscribe(&["f/+"], None).await.unwrap();
    let cursor = client.publish("f/a", b"over tcp", None).await.unwrap();
    let (topic, delivered, _, payload) = next_event(&mut subscription).await;
    assert_eq!(topic, "f/a");
    assert_eq!(delivered, cursor);
    assert_eq!(payload, b"over tcp");

    // Telemetry over WebSocket is a command.
    client.publish_telemetry("f/b", b"7").await.unwrap();
    assert_eq!(client.telemetry_datagrams(), 0);
    match next(&mut subscription).await {
        Delivery::Telemetry { topic, payload, .. } => {
            assert_eq!(topic, "f/b");
            assert_eq!(&payload[..], b"7");
        }
        other => panic!("expected telemetry, got {other:?}"),
    }
}

#[tokio::test]
async fn cert_hash_is_fetched_or_checked() {
    let server = TestServer::start().await;
    // Neither hash nor `insecure`: the hash comes from GET /v1/cert-hash.
    let mut fetched = Options::new(Some(wt_url(server.quic)), Some(ws_url(server.http)));
    fetched.transport = Some(Transport::WebTransport);
    let (_connector, client) = connect(fetched).await;
    assert_eq!(client.transport(), Transport::WebTransport);
    client.ping().await.unwrap();

    // Any certificate with `insecure`.
    let mut insecure = Options::new(Some(wt_url(server.quic)), None);
    insecure.insecure = true;
    let (_connector, client) = connect(insecure).await;
    client.ping().await.unwrap();

    // A wrong pinned hash fails the handshake and names the hashes.
    let mut wrong = options(&server, Transport::WebTransport);
    wrong.cert_hash = Some([0x11; 32]);
    let connector = Connector::new(wrong).unwrap();
    let error = match within("rejected handshake", connector.connect()).await {
        Ok(_) => panic!("a wrong certificate hash was accepted"),
        Err(error) => error,
    };
    assert!(matches!(error, Error::Connect(_)), "{error}");
    assert!(error.to_string().contains(&"11".repeat(32)), "{error}");
}

#[tokio::test]
async fn pipelined_publishes_all_arrive_in_order() {
    let server = TestServer::start().await;
    let (_subscriber_connector, subscriber) = connect(options(&server, Transport::WebSocket)).await;
    let mut subscription = subscriber.subscribe(&["p/#"], None).await.unwrap();
    for transport in [Transport::WebTransport, Transport::WebSocket] {
        let (_connector, publisher) = connect(options(&server, transport)).await;
        let count = 200;
        let publishes = (0..count).map(|i| {
            let publisher = publisher.clone();
            async move {
                publisher
                    .publish("p/x", format!("{i}").as_bytes(), None)
                    .await
            }
        });
        let cursors: Vec<String> = futures_util::future::join_all(publishes)
            .await
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap();
        let mut unique = cursors.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), count, "{transport}: duplicate cursors");

        let mut last = 0;
        for _ in 0..count {
            let (_, cursor, _, payload) = next_event(&mut subscription).await;
            let index: usize = String::from_utf8(payload).unwrap().parse().unwrap();
            assert_eq!(
                cursors[index], cursor,
                "{transport}: cursor of publish {index}"
            );
            assert!(seq(&cursor) > last, "{transport}: {cursor} out of order");
            last = seq(&cursor);
        }
    }
}

#[tokio::test]
async fn overlapping_subscriptions_get_each_event_once() {
    let server = TestServer::start().await;
    for transport in [Transport::WebSocket, Transport::WebTransport] {
        let (_connector, client) = connect(options(&server, transport)).await;
        let mut wide = client.subscribe(&["o/#"], None).await.unwrap();
        let mut narrow = client.subscribe(&["o/a"], None).await.unwrap();
        for (topic, payload) in [("o/a", "1"), ("o/b", "2"), ("o/a", "3"), ("o/a", "end")] {
            server.publish(topic, payload).await;
        }
        let mut seen = Vec::new();
        loop {
            let (_, _, _, payload) = next_event(&mut wide).await;
            let payload = String::from_utf8(payload).unwrap();
            let done = payload == "end";
            seen.push(payload);
            if done {
                break;
            }
        }
        assert_eq!(seen, ["1", "2", "3", "end"], "{transport}: wide");
        let mut seen = Vec::new();
        loop {
            let (_, _, _, payload) = next_event(&mut narrow).await;
            let payload = String::from_utf8(payload).unwrap();
            let done = payload == "end";
            seen.push(payload);
            if done {
                break;
            }
        }
        assert_eq!(seen, ["1", "3", "end"], "{transport}: narrow");
        client.close().await;
    }
}

#[tokio::test]
async fn dropped_subscription_ends_on_the_server() {
    let server = TestServer::start().await;
    let (_connector, client) = connect(options(&server, Transport::WebSocket)).await;
    let first = client.subscribe(&["d/a"], None).await.unwrap();
    let mut second = client.subscribe(&["d/b"], None).await.unwrap();
    server.wait_subscribers(2).await;
    drop(first);
    server.wait_subscribers(1).await;
    // The remaining subscription still works.
    server.publish("d/b", "still here").await;
    let (_, _, _, payload) = next_event(&mut second).await;
    assert_eq!(payload, b"still here");
}

/// Publishes `count` large events, waits until the server has closed the client as too slow,
/// then reads them all: each exactly once and in order.
async fn resume_after_too_slow(transport: Transport) {
    let server = TestServer::start_with(|c| c.write_timeout = Duration::from_secs(1)).await;
    let mut options = options(&server, transport);
    // One buffered delivery: the client stops reading the connection almost at once.
    options.subscription_capacity = 1;
    let (_connector, client) = connect(options).await;
    let mut subscription = client.subscribe(&["slow/a"], None).await.unwrap();
    server.wait_subscribers(1).await;

    let count = 400;
    let padding = "x".repeat(64 * 1024);
    for i in 0..count {
        server.publish("slow/a", &format!("{i}:{padding}")).await;
    }
    within("the server closing the slow client", async {
        while server
            .server
            .metrics
            .disconnected_slow
            .load(Ordering::Relaxed)
            == 0
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    let mut last = 0;
    for i in 0..count {
        let (_, cursor, _, payload) = next_event(&mut subscription).await;
        let payload = String::from_utf8(payload).unwrap();
        let (index, _) = payload.split_once(':').unwrap();
        assert_eq!(index, i.to_string(), "{transport}: event {i}");
        assert!(seq(&cursor) > last, "{transport}: {cursor} repeated");
        last = seq(&cursor);
    }
    // Nothing more: the next delivery is a fresh event.
    server.publish("slow/a", "after").await;
    let (_, _, _, payload) = next_event(&mut subscription).await;
    assert_eq!(payload, b"after", "{transport}");
    client.ping().await.unwrap();
}

#[tokio::test]
async fn websocket_resumes_after_too_slow_close() {
    resume_after_too_slow(Transport::WebSocket).await;
}

#[tokio::test]
async fn webtransport_resumes_after_too_slow_close() {
    resume_after_too_slow(Transport::WebTransport).await;
}

/// Starts a server on the given addresses with the certificate in `cert_dir`, retrying while
/// the previous server's sockets are still being released.
async fn restart(http: SocketAddr, quic: SocketAddr, cert_dir: PathBuf) -> Server {
    within("restarted server", async {
        loop {
            let mut config = Config::loopback(cert_dir.clone());
            config.heartbeat = Duration::from_secs(1);
            config.http_listen = vec![http];
            config.quic_listen = vec![quic];
            match Server::start(config).await {
                Ok(server) => return server,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
}

#[tokio::test]
async fn restart_resumes_with_epoch_resync() {
    for transport in [Transport::WebTransport, Transport::WebSocket] {
        let first = TestServer::start().await;
        let mut options = options(&first, transport);
        options.reconnect_delay_max = Duration::from_millis(200);
        let (_connector, client) = connect(options).await;
        let mut subscription = client.subscribe(&["r/#"], None).await.unwrap();
        first.publish("r/a", "before").await;
        let (_, before, _, _) = next_event(&mut subscription).await;

        let (http, quic, cert_dir) = (first.http, first.quic, first.cert_dir.clone());
        first.server.shutdown(Duration::from_secs(5)).await;
        let second = restart(http, quic, cert_dir).await;

        match next(&mut subscription).await {
            Delivery::Resync { cursor, reason } => {
                assert_eq!(reason, "epoch", "{transport}");
                assert_ne!(cursor, before, "{transport}");
                assert_eq!(subscription.cursor(), Some(cursor.as_str()));
            }
            other => panic!("{transport}: expected a resync, got {other:?}"),
        }
        assert_eq!(client.transport(), transport);
        let cursor = client.publish("r/a", b"after", None).await.unwrap();
        let (_, delivered, _, payload) = next_event(&mut subscription).await;
        assert_eq!(delivered, cursor, "{transport}");
        assert_eq!(payload, b"after", "{transport}");
        client.close().await;
        second.shutdown(Duration::from_secs(5)).await;
    }
}

#[tokio::test]
async fn without_reconnect_subscriptions_end_with_the_connection() {
    let server = TestServer::start().await;
    let mut options = options(&server, Transport::WebSocket);
    options.reconnect = false;
    let (_connector, client) = connect(options).await;
    let mut subscription = client.subscribe(&["e/#"], None).await.unwrap();
    server.server.shutdown(Duration::from_secs(5)).await;
    assert!(within("end of subscription", subscription.next())
        .await
        .is_none());
    let error = client.publish("e/a", b"x", None).await.unwrap_err();
    assert!(matches!(error, Error::ConnectionLost { .. }), "{error}");
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let error = parse_cert_hash("zz").unwrap_err();
    assert!(error.to_string().contains("\"zz\""), "{error}");
    assert!(error.to_string().contains("64 hex digits"), "{error}");

    let error = Connector::new(Options::new(Some("ftp://host/v1/wt".to_owned()), None))
        .err()
        .expect("an ftp URL is rejected");
    assert!(matches!(error, Error::InvalidUrl { .. }), "{error}");
    assert!(error.to_string().contains("ftp://host/v1/wt"), "{error}");
    assert!(
        error.to_string().contains("https://host:port/v1/wt"),
        "{error}"
    );

    let mut both = Options::new(None, Some("ws://127.0.0.1:1/v1/ws".to_owned()));
    both.cert_hash = Some([0; 32]);
    both.insecure = true;
    assert!(matches!(
        Connector::new(both).err(),
        Some(Error::InvalidOptions(_))
    ));

    let server = TestServer::start().await;
    for transport in [Transport::WebSocket, Transport::WebTransport] {
        let (_connector, client) = connect(options(&server, transport)).await;
        let error = client.publish("a/+", b"x", None).await.unwrap_err();
        assert_eq!(error.code(), Some("invalid_topic"), "{transport}: {error}");
        assert!(error.to_string().contains("a/+"), "{transport}: {error}");

        let error = client
            .publish("a", b"x", Some("hubcast.mine"))
            .await
            .unwrap_err();
        assert_eq!(error.code(), Some("invalid_event_name"), "{transport}");

        let error = client.subscribe(&["a", "b/#/c"], None).await.err().unwrap();
        assert!(matches!(error, Error::InvalidFilter { .. }), "{transport}");
        assert!(error.to_string().contains("b/#/c"), "{transport}: {error}");

        let error = client.subscribe(&["a"], Some("bogus")).await.err().unwrap();
        assert_eq!(error.code(), Some("invalid_cursor"), "{transport}");

        let error = client.publish_telemetry("a/#", b"1").await.unwrap_err();
        assert!(
            error.code() == Some("invalid_topic") || matches!(error, Error::InvalidTopic { .. }),
            "{transport}: {error}"
        );
        // The connection survives rejected commands.
        client.ping().await.unwrap();
    }
}

/// Runs `hubcast` with `args`, standard streams piped.
fn hubcast(args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_hubcast"))
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("hubcast starts")
}

/// Reads standard error until a line contains `needle`.
async fn wait_for_line(child: &mut tokio::process::Child, needle: &str) -> Vec<String> {
    let stderr = child.stderr.as_mut().expect("stderr is piped");
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    within(&format!("{needle:?} on standard error"), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let found = line.contains(needle);
            seen.push(line);
            if found {
                return;
            }
        }
        panic!("standard error ended without {needle:?}: {seen:?}");
    })
    .await;
    seen
}

async fn finish(child: tokio::process::Child) -> std::process::Output {
    within("hubcast to exit", child.wait_with_output())
        .await
        .expect("hubcast output")
}

#[tokio::test]
async fn cli_sub_prints_deliveries_and_exits_after_count() {
    let server = TestServer::start().await;
    let tcp = server.http.to_string();

    // Raw payloads; the WebTransport URL and the hash both come from GET /v1/cert-hash.
    let mut child = hubcast(&[
        "sub", "--server", &tcp, "--count", "3", "--format", "raw", "cli/#",
    ]);
    let log = wait_for_line(&mut child, "subscribed").await;
    assert!(
        log.iter().any(|l| l.contains("transport=WebTransport")),
        "{log:?}"
    );
    for payload in ["a", "b", "c"] {
        server.publish("cli/x", payload).await;
    }
    let output = finish(child).await;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8(output.stdout).unwrap(), "a\nb\nc\n");

    // JSON envelopes over WebSocket.
    let mut child = hubcast(&[
        "sub",
        "--server",
        &tcp,
        "--transport",
        "websocket",
        "--count",
        "2",
        "cli/#",
    ]);
    wait_for_line(&mut child, "subscribed").await;
    let first = server.publish("cli/y", "one").await;
    server.publish_telemetry("cli/z", "two").await;
    let output = finish(child).await;
    assert!(output.status.success(), "{output:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["op"], "event");
    assert_eq!(lines[0]["topic"], "cli/y");
    assert_eq!(lines[0]["cursor"], first.as_str());
    assert_eq!(lines[0]["payload"], "one");
    assert_eq!(lines[1]["op"], "telemetry");
    assert_eq!(lines[1]["payload"], "two");
}

#[tokio::test]
async fn cli_pub_publishes_each_stdin_line() {
    let server = TestServer::start().await;
    let (_connector, client) = connect(options(&server, Transport::WebSocket)).await;
    let mut subscription = client.subscribe(&["lines/#"], None).await.unwrap();

    let tcp = server.http.to_string();
    let hash: String = server.hash.iter().map(|b| format!("{b:02x}")).collect();
    let mut child = hubcast(&["pub", "--server", &tcp, "--cert-hash", &hash, "lines/x"]);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"one\ntwo\r\nthree\n").await.unwrap();
    drop(stdin);
    let output = finish(child).await;
    assert!(output.status.success(), "{output:?}");
    let cursors: Vec<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(cursors.len(), 3, "{cursors:?}");

    for (cursor, expected) in cursors.iter().zip(["one", "two", "three"]) {
        let (topic, delivered, _, payload) = next_event(&mut subscription).await;
        assert_eq!(topic, "lines/x");
        assert_eq!(&delivered, cursor);
        assert_eq!(payload, expected.as_bytes());
    }

    // One payload on the command line, as telemetry: no cursor is printed. The WebSocket URL
    // also locates GET /v1/cert-hash.
    let url = ws_url(server.http);
    let child = hubcast(&["pub", "--url-ws", &url, "--telemetry", "lines/t", "21.5"]);
    let output = finish(child).await;
    assert!(output.status.success(), "{output:?}");
    assert!(output.stdout.is_empty(), "{output:?}");
    match next(&mut subscription).await {
        Delivery::Telemetry { topic, payload, .. } => {
            assert_eq!(topic, "lines/t");
            assert_eq!(&payload[..], b"21.5");
        }
        other => panic!("expected telemetry, got {other:?}"),
    }
}

#[tokio::test]
async fn cli_pub_fails_clearly_on_errors() {
    let server = TestServer::start().await;
    let tcp = server.http.to_string();
    let child = hubcast(&["pub", "--server", &tcp, "bad/+", "x"]);
    let output = finish(child).await;
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("invalid_topic"), "{stderr}");

    let child = hubcast(&["pub", "--server", &tcp, "--cert-hash", "zz", "a", "x"]);
    let output = finish(child).await;
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("invalid --cert-hash"), "{stderr}");

    // Nothing listens on a port that was just released.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let mut child = hubcast(&[
        "pub",
        "--server",
        &closed,
        "--transport",
        "websocket",
        "a",
        "x",
    ]);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    let output = finish(child).await;
    assert!(!output.status.success(), "{output:?}");
    assert!(stderr.contains("failed to connect"), "{stderr}");
}
