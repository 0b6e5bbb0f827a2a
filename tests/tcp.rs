//! The TCP listener: publish API, HTTP/1.1 SSE, long polling, WebSocket and the small routes.

mod common;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn sse_delivers_events_and_telemetry() {
    let server = TestServer::start().await;
    let mut sse = SseClient::open(&server, "topic=room/%2B", None).await;

    let cursor = server.publish("room/a", "line one\nline two").await;
    let event = sse.next().await;
    assert_eq!(event.id.as_deref(), Some(cursor.as_str()));
    assert_eq!(event.data, "line one\nline two");
    assert_eq!(event.event, None);

    server.publish_telemetry("room/temp", "21.5").await;
    let telemetry = sse.next().await;
    assert_eq!(telemetry.id, None, "telemetry carries no id");
    assert_eq!(telemetry.data, "21.5");
}

#[tokio::test]
async fn sse_headers_and_event_name() {
    let server = TestServer::start().await;
    let response = reqwest::Client::new()
        .get(server.url("/v1/events?topic=t"))
        .send()
        .await
        .unwrap();
    let headers = response.headers();
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-cache, no-transform");
    assert_eq!(headers["x-accel-buffering"], "no");
    assert!(headers["alt-svc"].to_str().unwrap().starts_with("h3=\":"));
    drop(response);

    let mut sse = SseClient::open(&server, "topic=t", None).await;
    reqwest::Client::new()
        .post(server.url("/v1/publish?topic=t&event=alarm"))
        .body("fire")
        .send()
        .await
        .unwrap();
    let event = sse.next().await;
    assert_eq!(event.event.as_deref(), Some("alarm"));
    assert_eq!(event.data, "fire");
}

#[tokio::test]
async fn sse_heartbeat_comment_arrives() {
    let server = TestServer::start().await;
    let mut response = reqwest::Client::new()
        .get(server.url("/v1/events?topic=t"))
        .send()
        .await
        .unwrap();
    let opening = within("opening", response.chunk()).await.unwrap().unwrap();
    assert!(opening.starts_with(b": hubcast"));
    // The tests configure a one-second heartbeat.
    let heartbeat = within("heartbeat", response.chunk())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&heartbeat[..], b":\n\n");
}

#[tokio::test]
async fn sse_binary_payload_uses_marker() {
    let server = TestServer::start().await;
    let mut sse = SseClient::open(&server, "topic=bin", None).await;
    let response = reqwest::Client::new()
        .post(server.url("/v1/publish?topic=bin"))
        .body(vec![0xffu8, 0x00, 0x0d])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let event = sse.next().await;
    assert_eq!(event.data, "b64:/wAN");
}

#[tokio::test]
async fn sse_json_format_carries_topic() {
    let server = TestServer::start().await;
    let mut sse = SseClient::open(&server, "topic=a/%23&format=json", None).await;
    let cursor = server.publish("a/b/c", "x").await;
    let event = sse.next().await;
    let body: Value = serde_json::from_str(&event.data).unwrap();
    assert_eq!(body["topic"], "a/b/c");
    assert_eq!(body["cursor"], cursor);
    assert_eq!(body["payload"], "x");
    assert_eq!(event.id.as_deref(), Some(cursor.as_str()));
}

#[tokio::test]
async fn sse_resumes_from_last_event_id() {
    let server = TestServer::start().await;
    let first = server.publish("t", "1").await;
    server.publish("t", "2").await;
    server.publish("t", "3").await;
    // The header wins over a stale cursor in the URL, as on an EventSource reconnect.
    let query = format!("topic=t&cursor={}", server.server.hub.head());
    let mut sse = SseClient::open(&server, &query, Some(&first)).await;
    assert_eq!(sse.next().await.data, "2");
    assert_eq!(sse.next().await.data, "3");
    server.publish("t", "4").await;
    assert_eq!(sse.next().await.data, "4");
}

#[tokio::test]
async fn publish_rejects_bad_input() {
    let server = TestServer::start_with(|c| c.hub.max_payload_bytes = 16).await;
    let client = reqwest::Client::new();
    let cases = [
        ("/v1/publish", "x", 400, "invalid_parameter"),
        ("/v1/publish?topic=a//b", "x", 400, "invalid_topic"),
        ("/v1/publish?topic=a/%2B", "x", 400, "invalid_topic"),
        ("/v1/publish?topic=a&class=loud", "x", 400, "invalid_class"),
        (
            "/v1/publish?topic=a&event=hubcast.x",
            "x",
            400,
            "invalid_event_name",
        ),
        ("/v1/publish?topic=a&topik=b", "x", 400, "invalid_parameter"),
        ("/v1/publish?topic=a&topic=b", "x", 400, "invalid_parameter"),
        (
            "/v1/publish?topic=a",
            "seventeen bytes!!",
            413,
            "payload_too_large",
        ),
    ];
    for (path, body, status, code) in cases {
        let response = client
            .post(server.url(path))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], code, "{path}");
        assert!(body["message"].as_str().unwrap().len() > 10, "{path}");
    }
    assert_eq!(server.server.hub.stats().events_published, 0);
}

#[tokio::test]
async fn subscribe_rejects_bad_input() {
    let server = TestServer::start().await;
    let head = server.server.hub.head().to_string();
    let ahead = format!("{}-99", &head[..16]);
    let cases = [
        ("/v1/events", "invalid_filter"),
        ("/v1/events?topic=a/%23/b", "invalid_filter"),
        ("/v1/events?topic=a%2Bb", "invalid_filter"),
        ("/v1/events?topic=a&cursor=nope", "invalid_cursor"),
        ("/v1/events?topic=a&format=xml", "invalid_parameter"),
        ("/v1/poll?topic=a&timeout=-1", "invalid_parameter"),
        ("/v1/poll?topic=a&timeout=soon", "invalid_parameter"),
        ("/v1/poll?topic=", "invalid_filter"),
    ];
    for (path, code) in cases {
        let response = reqwest::get(server.url(path)).await.unwrap();
        assert_eq!(response.status(), 400, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], code, "{path}");
    }
    let response = reqwest::get(server.url(&format!("/v1/events?topic=a&cursor={ahead}")))
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = reqwest::Client::new()
        .get(server.url("/v1/events?topic=a"))
        .header("last-event-id", "garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(server.server.hub.stats().subscribers, 0);
}

#[tokio::test]
async fn poll_waits_then_returns_events() {
    let server = TestServer::start().await;
    let start = server.server.hub.head().to_string();
    let query = format!("topic=p&cursor={start}&timeout=5");
    let pending = tokio::spawn({
        let url = server.url(&format!("/v1/poll?{query}"));
        async move {
            reqwest::get(url)
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    });
    server.wait_subscribers(1).await;
    let cursor = server.publish("p", "hello").await;
    let body = within("poll reply", pending).await.unwrap();
    assert_eq!(body["cursor"], cursor);
    assert_eq!(body["events"][0]["payload"], "hello");
    assert_eq!(body["events"][0]["topic"], "p");

    // Nothing new: the poll times out with an empty list and the same cursor.
    let body = poll(&server, &format!("topic=p&cursor={cursor}&timeout=0.2")).await;
    assert_eq!(body["events"], json!([]));
    assert_eq!(body["cursor"], cursor);
}

#[tokio::test]
async fn poll_returns_backlog_in_order() {
    let server = TestServer::start().await;
    let start = server.server.hub.head().to_string();
    let mut cursors = Vec::new();
    for n in 0..5 {
        cursors.push(server.publish("q", &n.to_string()).await);
    }
    let body = poll(&server, &format!("topic=q&cursor={start}")).await;
    let payloads: Vec<&str> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["payload"].as_str().unwrap())
        .collect();
    assert_eq!(payloads, ["0", "1", "2", "3", "4"]);
    assert_eq!(body["cursor"], cursors[4]);
}

#[tokio::test]
async fn websocket_subscribe_publish_ack() {
    let server = TestServer::start().await;
    let mut ws = ws_connect(&server).await;
    ws_send(
        &mut ws,
        json!({"op": "subscribe", "id": 1, "filters": ["chat/#"]}),
    )
    .await;
    let reply = ws_next(&mut ws).await;
    assert_eq!(reply["op"], "subscribed");
    assert_eq!(reply["id"], 1);
    let sub = reply["sub"].as_u64().unwrap();

    ws_send(
        &mut ws,
        json!({"op": "publish", "id": 2, "topic": "chat/x", "event": "msg", "payload": "hi"}),
    )
    .await;
    // The ack and the event may come in either order, since the event goes through the hub.
    let mut ack = None;
    let mut event = None;
    for _ in 0..2 {
        let message = ws_next(&mut ws).await;
        match message["op"].as_str() {
            Some("ack") => ack = Some(message),
            Some("event") => event = Some(message),
            _ => panic!("unexpected {message}"),
        }
    }
    let (ack, event) = (ack.unwrap(), event.unwrap());
    assert_eq!(ack["id"], 2);
    assert_eq!(event["cursor"], ack["cursor"]);
    assert_eq!(event["topic"], "chat/x");
    assert_eq!(event["event"], "msg");
    assert_eq!(event["payload"], "hi");

    ws_send(&mut ws, json!({"op": "unsubscribe", "id": 3, "sub": sub})).await;
    assert_eq!(ws_next(&mut ws).await["op"], "unsubscribed");
    server.wait_subscribers(0).await;
}

/// While events flow, a subscription's reply arrives before its first event and its
/// unsubscribe reply after its last, and the connection's other subscription keeps receiving.
#[tokio::test]
async fn subscription_replies_bracket_deliveries() {
    let server = TestServer::start().await;
    let mut publisher = ws_connect(&server).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let publishing = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut id = 0u64;
            while !stop.is_cancelled() {
                for topic in ["flow/a", "flow/b"] {
                    id += 1;
                    let command = json!({"op": "publish", "id": id, "topic": topic});
                    ws_send(&mut publisher, command).await;
                    assert_eq!(ws_next(&mut publisher).await["op"], "ack");
                }
            }
        }
    });

    let mut ws = ws_connect(&server).await;
    ws_send(
        &mut ws,
        json!({"op": "subscribe", "id": 1, "filters": ["flow/b"]}),
    )
    .await;
    let first = ws_next(&mut ws).await;
    assert_eq!(first["op"], "subscribed", "first message {first}");

    // Until the second reply, only events of the first subscription may arrive.
    ws_send(
        &mut ws,
        json!({"op": "subscribe", "id": 2, "filters": ["flow/a"]}),
    )
    .await;
    let second = loop {
        let message = ws_next(&mut ws).await;
        if message["op"] == "subscribed" {
            break message;
        }
        assert_eq!(message["topic"], "flow/b", "before the reply: {message}");
    };
    assert_eq!(second["id"], 2);
    let sub_a = second["sub"].as_u64().unwrap();

    // Both subscriptions deliver, each topic in cursor order.
    let mut last: std::collections::HashMap<String, u64> = Default::default();
    let mut seen_a = 0;
    let mut seen_b = 0;
    while seen_a < 5 || seen_b < 5 {
        let event = ws_next(&mut ws).await;
        assert_eq!(event["op"], "event", "{event}");
        let topic = event["topic"].as_str().unwrap().to_owned();
        let seq: u64 = event["cursor"]
            .as_str()
            .unwrap()
            .split('-')
            .next_back()
            .unwrap()
            .parse()
            .unwrap();
        let previous = last.insert(topic.clone(), seq).unwrap_or(0);
        assert!(seq > previous, "{topic} went from {previous} to {seq}");
        match topic.as_str() {
            "flow/a" => seen_a += 1,
            _ => seen_b += 1,
        }
    }

    ws_send(&mut ws, json!({"op": "unsubscribe", "id": 3, "sub": sub_a})).await;
    loop {
        let message = ws_next(&mut ws).await;
        if message["op"] == "unsubscribed" {
            assert_eq!(message["sub"], sub_a);
            break;
        }
        assert_eq!(message["op"], "event", "{message}");
    }
    for _ in 0..20 {
        let event = ws_next(&mut ws).await;
        assert_eq!(event["topic"], "flow/b", "after unsubscribing: {event}");
    }

    stop.cancel();
    within("publisher stops", publishing).await.unwrap();
}

#[tokio::test]
async fn websocket_binary_payload_round_trips() {
    let server = TestServer::start().await;
    let mut ws = ws_connect(&server).await;
    ws_send(&mut ws, json!({"op": "subscribe", "filters": ["b"]})).await;
    assert_eq!(ws_next(&mut ws).await["op"], "subscribed");
    ws_send(
        &mut ws,
        json!({"op": "publish", "topic": "b", "payload_b64": "AP8="}),
    )
    .await;
    let mut seen = None;
    for _ in 0..2 {
        let message = ws_next(&mut ws).await;
        if message["op"] == "event" {
            seen = Some(message);
        }
    }
    let event = seen.expect("event delivered");
    assert_eq!(event["payload_b64"], "AP8=");
    assert!(event.get("payload").is_none());
}

#[tokio::test]
async fn websocket_errors_keep_connection() {
    let server = TestServer::start().await;
    let mut ws = ws_connect(&server).await;
    let cases = [
        (
            json!({"op": "subscribe", "id": 1, "filters": ["a/#/b"]}),
            "invalid_filter",
        ),
        (
            json!({"op": "subscribe", "id": 2, "filters": ["a"], "cursor": "x"}),
            "invalid_cursor",
        ),
        (
            json!({"op": "publish", "id": 3, "topic": "a/+"}),
            "invalid_topic",
        ),
        (
            json!({"op": "publish", "id": 4, "topic": "a", "class": "x"}),
            "invalid_class",
        ),
        (
            json!({"op": "publish", "id": 5, "topic": "a", "payload_b64": "!!"}),
            "invalid_payload",
        ),
        (
            json!({"op": "unsubscribe", "id": 6, "sub": 99}),
            "unknown_subscription",
        ),
        (
            json!({"op": "alias", "id": 7, "alias": 1, "topic": "a"}),
            "unsupported",
        ),
        (json!({"op": "dance", "id": 8}), "invalid_command"),
    ];
    for (command, code) in cases {
        ws_send(&mut ws, command.clone()).await;
        let reply = ws_next(&mut ws).await;
        assert_eq!(reply["op"], "error", "{command}");
        assert_eq!(reply["code"], code, "{command}");
    }
    // Malformed JSON is an error reply too, not a disconnect.
    {
        use futures_util::SinkExt as _;
        ws.send(tokio_tungstenite::tungstenite::Message::text("{not json"))
            .await
            .unwrap();
    }
    assert_eq!(ws_next(&mut ws).await["code"], "invalid_command");
    ws_send(&mut ws, json!({"op": "ping", "id": 9})).await;
    assert_eq!(ws_next(&mut ws).await["op"], "pong");
}

#[tokio::test]
async fn websocket_close_codes() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;

    let server = TestServer::start_with(|c| c.hub.max_payload_bytes = 64).await;
    let mut ws = ws_connect(&server).await;
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let close = within("close frame", ws.next()).await.unwrap().unwrap();
    match close {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1003),
        other => panic!("expected close 1003, got {other:?}"),
    }

    let mut ws = ws_connect(&server).await;
    let huge = "x".repeat(100_000);
    ws_send(
        &mut ws,
        json!({"op": "publish", "topic": "t", "payload": huge}),
    )
    .await;
    let close = within("close frame", ws.next()).await.unwrap().unwrap();
    match close {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1009),
        other => panic!("expected close 1009, got {other:?}"),
    }
}

#[tokio::test]
async fn websocket_disconnect_frees_subscriptions() {
    let server = TestServer::start().await;
    let mut ws = ws_connect(&server).await;
    for n in 0..3 {
        ws_send(
            &mut ws,
            json!({"op": "subscribe", "filters": [format!("t/{n}")]}),
        )
        .await;
        assert_eq!(ws_next(&mut ws).await["op"], "subscribed");
    }
    server.wait_subscribers(3).await;
    drop(ws);
    server.wait_subscribers(0).await;
}

#[tokio::test]
async fn small_routes_answer() {
    let server = TestServer::start().await;
    let health = reqwest::get(server.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(health.headers().contains_key("alt-svc"));

    let info: Value = reqwest::get(server.url("/v1/cert-hash"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["algorithm"], "sha-256");
    assert_eq!(info["hex"], server.server.cert.hex);
    assert_eq!(info["hex"].as_str().unwrap().len(), 64);
    assert_eq!(info["generated"], true);
    assert_eq!(info["quic_port"], server.quic.port());
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(info["base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(decoded, server.hash);

    let missing = reqwest::get(server.url("/../Cargo.toml")).await.unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn websocket_close_is_answered() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::Message;

    let server = TestServer::start().await;
    let mut ws = ws_connect(&server).await;
    let frame = CloseFrame {
        code: 1000u16.into(),
        reason: "done".into(),
    };
    ws.send(Message::Close(Some(frame))).await.unwrap();
    let reply = within("close reply", ws.next()).await.unwrap().unwrap();
    match reply {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1000),
        other => panic!("expected a close reply, got {other:?}"),
    }
}

#[tokio::test]
async fn query_decoding_rejects_bad_text() {
    let server = TestServer::start().await;
    let client = reqwest::Client::new();
    // Bytes that are not UTF-8 are an error, not a replacement character.
    let response = client
        .post(server.url("/v1/publish?topic=u/%FE"))
        .body("y")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_parameter");

    // An unencoded `+` arrives as a space; the error says how to write the wildcard.
    let response = reqwest::get(server.url("/v1/events?topic=sensors/+/temp"))
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_filter");
    assert!(body["message"].as_str().unwrap().contains("%2B"), "{body}");
    assert_eq!(server.server.hub.stats().events_published, 0);
}

#[tokio::test]
async fn declared_oversized_body_is_rejected_early() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let server = TestServer::start_with(|c| c.hub.max_payload_bytes = 1024).await;
    let mut socket = tokio::net::TcpStream::connect(server.http).await.unwrap();
    let request = format!(
        "POST /v1/publish?topic=big HTTP/1.1\r\nHost: {}\r\nContent-Length: 5000000\r\n\r\n",
        server.http
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    // No body is sent: the 413 must come from the header alone.
    let mut head = vec![0u8; 64];
    let n = within("413 response", socket.read(&mut head))
        .await
        .unwrap();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
}

#[tokio::test]
async fn websocket_replies_precede_close() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;

    let server = TestServer::start().await;
    for closer in ["binary", "close"] {
        let mut ws = ws_connect(&server).await;
        for n in 0..20 {
            let command = json!({"op": "publish", "id": n, "topic": "p", "payload": "x"});
            ws.send(Message::text(command.to_string())).await.unwrap();
        }
        match closer {
            "binary" => ws.send(Message::binary(vec![1u8])).await.unwrap(),
            _ => {
                let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
                    code: 1000u16.into(),
                    reason: "".into(),
                };
                ws.send(Message::Close(Some(frame))).await.unwrap()
            }
        }
        let mut acks = Vec::new();
        let code = loop {
            match within("reply or close", ws.next()).await {
                Some(Ok(Message::Text(text))) => {
                    let reply: Value = serde_json::from_str(&text).unwrap();
                    assert_eq!(reply["op"], "ack", "{reply}");
                    acks.push(reply["id"].as_u64().unwrap());
                }
                Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                other => panic!("{closer}: connection ended without a close frame: {other:?}"),
            }
        };
        // After a client's Close, RFC 6455 (5.5.1) lets no more data frames follow, so only the
        // server's own close waits for every reply.
        if closer == "binary" {
            assert_eq!(acks, (0..20).collect::<Vec<u64>>());
        }
        let expected = if closer == "binary" { 1003 } else { 1000 };
        assert_eq!(code, Some(expected), "{closer}");
    }
}

#[tokio::test]
async fn websocket_message_just_over_limit_gets_1009() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;

    let server = TestServer::start_with(|c| c.hub.max_payload_bytes = 300).await;
    let max = server.server_max_command();
    let mut ws = ws_connect(&server).await;
    let padding = "x".repeat(max + 1 - r#"{"op":"ping","pad":""}"#.len());
    let message = format!(r#"{{"op":"ping","pad":"{padding}"}}"#);
    assert_eq!(message.len(), max + 1);
    ws.send(Message::text(message)).await.unwrap();
    let close = within("close frame", ws.next()).await.unwrap().unwrap();
    match close {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1009),
        other => panic!("expected close 1009, got {other:?}"),
    }
}

#[tokio::test]
async fn command_errors_keep_their_id() {
    let server = TestServer::start().await;
    let mut ws = ws_connect(&server).await;
    ws_send(&mut ws, json!({"op": "unsubscribe", "id": 11})).await;
    let reply = ws_next(&mut ws).await;
    assert_eq!(reply["code"], "invalid_command");
    assert_eq!(reply["id"], 11);
    assert!(
        reply["message"].as_str().unwrap().contains("sub"),
        "{reply}"
    );

    ws_send(&mut ws, json!({"id": 12})).await;
    let reply = ws_next(&mut ws).await;
    assert_eq!(reply["id"], 12);
    assert!(reply["message"].as_str().unwrap().contains("op"), "{reply}");

    ws_send(&mut ws, json!([1, 2])).await;
    let reply = ws_next(&mut ws).await;
    assert_eq!(reply["code"], "invalid_command");
}

#[tokio::test]
async fn websocket_upgrade_errors_say_why() {
    let server = TestServer::start().await;
    let response = reqwest::Client::new()
        .get(server.url("/v1/ws"))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .send()
        .await
        .unwrap();
    assert!(response.status().is_client_error(), "{}", response.status());
    let text = response.text().await.unwrap();
    assert!(text.to_lowercase().contains("key"), "{text}");
}

#[tokio::test]
async fn idle_and_slow_request_heads_are_closed() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let server =
        TestServer::start_with(|c| c.header_timeout = std::time::Duration::from_secs(1)).await;
    // One connection sends nothing; the other starts a request head and never finishes it.
    let mut idle = tokio::net::TcpStream::connect(server.http).await.unwrap();
    let mut partial = tokio::net::TcpStream::connect(server.http).await.unwrap();
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    for socket in [&mut idle, &mut partial] {
        let mut buffer = Vec::new();
        // Without a header timeout this read would wait forever: `within` fails the test then.
        // The server closes the connection, with a 408 first or a reset.
        if let Err(e) = within("connection close", socket.read_to_end(&mut buffer)).await {
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
        }
        let text = String::from_utf8_lossy(&buffer);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{text}"
        );
    }
}
