//! WebTransport sessions with the wtransport client: control commands, events on server
//! streams, telemetry as datagrams, and devices publishing through datagrams and streams.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Reads event frames from every server-opened stream into one channel.
fn collect_streams(connection: &wtransport::Connection) -> tokio::sync::mpsc::Receiver<Value> {
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let connection = connection.clone();
    tokio::spawn(async move {
        while let Ok(mut recv) = connection.accept_uni().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Ok(frame) = read_frame(&mut recv).await {
                    if tx.send(frame).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    rx
}

async fn subscribe(client: &mut WtClient, filters: &[&str]) -> Value {
    let reply = client
        .call(json!({"op": "subscribe", "id": 1, "filters": filters}))
        .await
        .unwrap();
    assert_eq!(reply["op"], "subscribed", "{reply}");
    reply
}

#[tokio::test]
async fn events_on_streams_and_telemetry_as_datagrams() {
    let server = TestServer::start().await;
    let mut client = WtClient::connect(&server).await.unwrap();
    let mut frames = collect_streams(&client.connection);
    subscribe(&mut client, &["home/#"]).await;

    let mut cursors = Vec::new();
    for n in 0..20 {
        cursors.push(server.publish("home/door", &format!("event {n}")).await);
    }
    for (n, cursor) in cursors.iter().enumerate() {
        let frame = within("event frame", frames.recv()).await.unwrap();
        assert_eq!(frame["op"], "event");
        assert_eq!(frame["topic"], "home/door");
        assert_eq!(frame["cursor"], *cursor);
        assert_eq!(frame["payload"], format!("event {n}"));
    }

    server.publish_telemetry("home/temp", "19.5").await;
    let datagram = within("datagram", client.connection.receive_datagram())
        .await
        .unwrap();
    let (topic, payload) = parse_datagram(&datagram);
    assert_eq!(topic, "home/temp");
    assert_eq!(payload, b"19.5");
}

#[tokio::test]
async fn oversized_telemetry_takes_a_stream() {
    let server = TestServer::start().await;
    let mut client = WtClient::connect(&server).await.unwrap();
    let mut frames = collect_streams(&client.connection);
    subscribe(&mut client, &["cam/+"]).await;
    let max = client
        .connection
        .max_datagram_size()
        .expect("datagrams enabled");
    assert!(max >= 1000, "maximum datagram size {max}");

    // Path MTU discovery may raise each side's limit at any time, so the payloads keep clear
    // of the boundary: QUIC datagrams never exceed the 64 KiB a UDP packet can carry.
    let fits = "a".repeat(900);
    server.publish_telemetry("cam/x", &fits).await;
    let datagram = within("datagram", client.connection.receive_datagram())
        .await
        .unwrap();
    assert_eq!(parse_datagram(&datagram).1.len(), fits.len());

    let too_big = "b".repeat(70_000);
    server.publish_telemetry("cam/x", &too_big).await;
    let frame = within("telemetry frame", frames.recv()).await.unwrap();
    assert_eq!(frame["op"], "telemetry");
    assert_eq!(frame["topic"], "cam/x");
    assert_eq!(frame["payload"], too_big);
    assert!(frame.get("cursor").is_none());
}

#[tokio::test]
async fn device_publishes_by_datagram_and_stream() {
    let server = TestServer::start().await;
    let mut sse = SseClient::open(&server, "topic=dev/%23", None).await;
    let mut device = WtClient::connect(&server).await.unwrap();

    // Telemetry with the topic written out.
    device
        .connection
        .send_datagram(topic_datagram("dev/1/temp", b"20.0"))
        .unwrap();
    let event = sse.next().await;
    assert_eq!((event.id, event.data.as_str()), (None, "20.0"));

    // Telemetry by alias.
    let reply = device
        .call(json!({"op": "alias", "id": 1, "alias": 7, "topic": "dev/1/hum"}))
        .await
        .unwrap();
    assert_eq!(reply["op"], "ack");
    let mut datagram = vec![0x01, 0x00, 0x07];
    datagram.extend(b"55");
    device.connection.send_datagram(datagram).unwrap();
    assert_eq!(sse.next().await.data, "55");

    // An event on the control stream, acknowledged with its cursor.
    let ack = device
        .call(json!({"op": "publish", "id": 2, "topic": "dev/1/alarm", "event": "alarm", "payload": "smoke"}))
        .await
        .unwrap();
    assert_eq!(ack["op"], "ack");
    let event = sse.next().await;
    assert_eq!(event.id.as_deref(), ack["cursor"].as_str());
    assert_eq!(event.event.as_deref(), Some("alarm"));

    // Events on a client-opened unidirectional stream.
    let mut uni = device.connection.open_uni().await.unwrap().await.unwrap();
    for n in 0..3 {
        let body = serde_json::to_vec(
            &json!({"op": "publish", "topic": "dev/1/log", "payload": format!("line {n}")}),
        )
        .unwrap();
        uni.write_all(&(body.len() as u32).to_be_bytes())
            .await
            .unwrap();
        uni.write_all(&body).await.unwrap();
    }
    uni.finish().await.unwrap();
    for n in 0..3 {
        assert_eq!(sse.next().await.data, format!("line {n}"));
    }

    // Malformed datagrams are dropped without disturbing the session.
    for bad in [
        vec![0x00, 0x00],
        vec![0x09, 1, 2],
        topic_datagram("a//b", b"x"),
        vec![0x01, 0x00, 0x08, b'x'],
    ] {
        device.connection.send_datagram(bad).unwrap();
    }
    device
        .connection
        .send_datagram(topic_datagram("dev/1/temp", b"21.0"))
        .unwrap();
    assert_eq!(sse.next().await.data, "21.0");
}

#[tokio::test]
async fn event_streams_are_capped_and_ordered_per_topic() {
    let server = TestServer::start_with(|c| c.wt_event_streams = 2).await;
    let mut client = WtClient::connect(&server).await.unwrap();
    subscribe(&mut client, &["t/+"]).await;
    for round in 0..10 {
        for topic in 0..6 {
            server
                .publish(&format!("t/{topic}"), &round.to_string())
                .await;
        }
    }
    let mut streams = Vec::new();
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    let mut total = 0;
    while total < 60 {
        let mut recv = within("event stream", client.connection.accept_uni())
            .await
            .unwrap();
        let mut count = 0;
        loop {
            let read =
                tokio::time::timeout(Duration::from_millis(300), read_frame(&mut recv)).await;
            let Ok(Ok(frame)) = read else { break };
            let topic = frame["topic"].as_str().unwrap().to_owned();
            seen.entry(topic)
                .or_default()
                .push(frame["payload"].as_str().unwrap().parse().unwrap());
            count += 1;
        }
        total += count;
        streams.push(count);
    }
    assert!(streams.len() <= 2, "{} streams opened", streams.len());
    assert_eq!(seen.len(), 6);
    for (topic, rounds) in seen {
        assert_eq!(rounds, (0..10).collect::<Vec<_>>(), "order of {topic}");
    }
}

#[tokio::test]
async fn session_commands_report_errors() {
    let server = TestServer::start().await;
    let mut client = WtClient::connect(&server).await.unwrap();
    let reply = client
        .call(json!({"op": "subscribe", "id": 5, "filters": ["#/x"]}))
        .await
        .unwrap();
    assert_eq!(reply["code"], "invalid_filter");
    assert_eq!(reply["id"], 5);
    let reply = client
        .call(json!({"op": "alias", "id": 6, "alias": 1, "topic": "a/+"}))
        .await
        .unwrap();
    assert_eq!(reply["code"], "invalid_topic");
    let reply = client.call(json!({"op": "ping", "id": 7})).await.unwrap();
    assert_eq!(reply["op"], "pong");
}

#[tokio::test]
async fn oversized_control_frame_closes_session() {
    let server = TestServer::start_with(|c| c.hub.max_payload_bytes = 100).await;
    let mut client = WtClient::connect(&server).await.unwrap();
    subscribe(&mut client, &["x"]).await;
    server.wait_subscribers(1).await;
    client
        .send
        .write_all(&(1u32 << 30).to_be_bytes())
        .await
        .unwrap();
    server.wait_subscribers(0).await;
    let error = within("session close", client.connection.closed()).await;
    assert!(!error.to_string().is_empty());
}

#[tokio::test]
async fn closing_session_frees_subscriptions() {
    let server = TestServer::start().await;
    let mut client = WtClient::connect(&server).await.unwrap();
    subscribe(&mut client, &["a"]).await;
    subscribe(&mut client, &["b"]).await;
    server.wait_subscribers(2).await;
    client.connection.close(0u32.into(), b"bye");
    server.wait_subscribers(0).await;
}

#[tokio::test]
async fn each_topic_gets_its_own_stream_while_free() {
    let server = TestServer::start().await;
    let mut client = WtClient::connect(&server).await.unwrap();
    subscribe(&mut client, &["own/+"]).await;
    server.publish("own/a", "1").await;
    server.publish("own/b", "2").await;
    let mut first = within("first stream", client.connection.accept_uni())
        .await
        .unwrap();
    let mut second = within("second stream", client.connection.accept_uni())
        .await
        .unwrap();
    let a = within("frame", read_frame(&mut first)).await.unwrap();
    let b = within("frame", read_frame(&mut second)).await.unwrap();
    let mut topics = [a["topic"].as_str().unwrap(), b["topic"].as_str().unwrap()];
    topics.sort();
    assert_eq!(topics, ["own/a", "own/b"]);
}

#[tokio::test]
async fn telemetry_does_not_wait_behind_blocked_events() {
    let server = TestServer::start().await;
    let mut client = WtClient::connect(&server).await.unwrap();
    subscribe(&mut client, &["mix/#"]).await;

    // The client never reads its event streams, so flow control soon holds the events back
    // and the session's writer waits for credit that does not come.
    let big = "e".repeat(60_000);
    for _ in 0..100 {
        server.publish("mix/log", &big).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    server.publish_telemetry("mix/temp", "17.25").await;
    let datagram = within("telemetry datagram", client.connection.receive_datagram())
        .await
        .unwrap();
    let (topic, payload) = parse_datagram(&datagram);
    assert_eq!(topic, "mix/temp");
    assert_eq!(payload, b"17.25");
}

#[tokio::test]
async fn many_open_command_streams_are_accepted() {
    let server = TestServer::start().await;
    let mut client = WtClient::connect(&server).await.unwrap();

    // A connection starts with room for 6 unidirectional streams, some of them taken by
    // HTTP/3, and grows to 256, so 50 command streams open at once all get credit.
    let mut streams = Vec::new();
    for n in 0..50 {
        let opening = within("stream credit", client.connection.open_uni())
            .await
            .unwrap_or_else(|e| panic!("command stream {n} failed: {e}"));
        let mut uni = within("command stream", opening)
            .await
            .unwrap_or_else(|e| panic!("command stream {n} failed: {e}"));
        let body = serde_json::to_vec(&json!({"op": "ping", "id": n})).unwrap();
        uni.write_all(&(body.len() as u32).to_be_bytes())
            .await
            .unwrap();
        uni.write_all(&body).await.unwrap();
        streams.push(uni);
    }

    // h3 0.0.8 reads a stream's session id only once more data or the end of the stream
    // arrives, so the pongs come after the streams finish.
    for uni in &mut streams {
        uni.finish().await.unwrap();
    }

    let mut ids = Vec::new();
    for _ in 0..50 {
        let reply = within("pong", client.reply()).await.unwrap();
        assert_eq!(reply["op"], "pong", "{reply}");
        ids.push(reply["id"].as_u64().unwrap());
    }
    ids.sort_unstable();
    assert_eq!(ids, (0..50).collect::<Vec<_>>());
}
