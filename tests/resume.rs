//! Resuming from a cursor on every transport: exactly the missed events, or a resync signal
//! when history cannot supply them.

mod common;

use common::*;
use http::Method;
use serde_json::json;

#[derive(Clone, Copy, Debug)]
enum Via {
    Sse,
    Http3Sse,
    WebSocket,
    WebTransport,
    Poll,
}

const ALL: [Via; 5] = [
    Via::Sse,
    Via::Http3Sse,
    Via::WebSocket,
    Via::WebTransport,
    Via::Poll,
];

/// An SSE event as a payload or `resync:<reason>`.
fn sse_delivery(event: SseEvent) -> String {
    match event.event.as_deref() {
        Some("hubcast.resync") => {
            let body: serde_json::Value = serde_json::from_str(&event.data).unwrap();
            format!("resync:{}", body["reason"].as_str().unwrap())
        }
        _ => event.data,
    }
}

/// Subscribes to `topic` from `cursor` and returns the first `count` deliveries, as payloads
/// or `resync:<reason>`.
async fn read_from(
    server: &TestServer,
    transport: Via,
    topic: &str,
    cursor: &str,
    count: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    match transport {
        Via::Sse => {
            let mut sse =
                SseClient::open(server, &format!("topic={topic}&cursor={cursor}"), None).await;
            while out.len() < count {
                let event = sse.next().await;
                out.push(sse_delivery(event));
            }
        }
        Via::Http3Sse => {
            let mut client = H3Client::connect(server).await.unwrap();
            let (_, stream) = client
                .request(
                    Method::GET,
                    &format!("/v1/events?topic={topic}&cursor={cursor}"),
                    None,
                )
                .await
                .unwrap();
            let mut sse = H3Sse::new(stream);
            sse.opened().await;
            while out.len() < count {
                let event = sse.next().await;
                out.push(sse_delivery(event));
            }
        }
        Via::WebSocket => {
            let mut ws = ws_connect(server).await;
            ws_send(
                &mut ws,
                json!({"op": "subscribe", "filters": [topic], "cursor": cursor}),
            )
            .await;
            assert_eq!(ws_next(&mut ws).await["op"], "subscribed");
            while out.len() < count {
                let message = ws_next(&mut ws).await;
                out.push(match message["op"].as_str() {
                    Some("resync") => format!("resync:{}", message["reason"].as_str().unwrap()),
                    _ => message["payload"].as_str().unwrap().to_owned(),
                });
            }
        }
        Via::WebTransport => {
            let mut client = WtClient::connect(server).await.unwrap();
            let reply = client
                .call(json!({"op": "subscribe", "filters": [topic], "cursor": cursor}))
                .await
                .unwrap();
            assert_eq!(reply["op"], "subscribed");
            // A resync comes on the control stream, events on an event stream.
            let resync =
                tokio::time::timeout(std::time::Duration::from_millis(500), client.reply()).await;
            if let Ok(Ok(message)) = resync {
                assert_eq!(message["op"], "resync");
                out.push(format!("resync:{}", message["reason"].as_str().unwrap()));
            }
            if out.len() < count {
                let mut recv = within("event stream", client.connection.accept_uni())
                    .await
                    .unwrap();
                while out.len() < count {
                    let frame = within("event", read_frame(&mut recv)).await.unwrap();
                    out.push(frame["payload"].as_str().unwrap().to_owned());
                }
            }
        }
        Via::Poll => {
            let mut cursor = cursor.to_owned();
            while out.len() < count {
                let body = poll(server, &format!("topic={topic}&cursor={cursor}&timeout=2")).await;
                if let Some(reason) = body["resync"].as_str() {
                    out.push(format!("resync:{reason}"));
                }
                for event in body["events"].as_array().unwrap() {
                    out.push(event["payload"].as_str().unwrap().to_owned());
                }
                cursor = body["cursor"].as_str().unwrap().to_owned();
            }
        }
    }
    out
}

#[tokio::test]
async fn cursor_yields_exactly_missed_events() {
    let server = TestServer::start().await;
    server.publish("r", "seen").await;
    let last_seen = server.publish("r", "also seen").await;
    server.publish("other", "not subscribed").await;
    for n in 0..4 {
        server.publish("r", &format!("missed {n}")).await;
    }
    for transport in ALL {
        let got = read_from(&server, transport, "r", &last_seen, 4).await;
        assert_eq!(
            got,
            ["missed 0", "missed 1", "missed 2", "missed 3"],
            "{transport:?}"
        );
    }
    // Live events continue after the replay with no duplicate.
    let mut ws = ws_connect(&server).await;
    ws_send(
        &mut ws,
        json!({"op": "subscribe", "filters": ["r"], "cursor": last_seen}),
    )
    .await;
    assert_eq!(ws_next(&mut ws).await["op"], "subscribed");
    for n in 0..4 {
        assert_eq!(ws_next(&mut ws).await["payload"], format!("missed {n}"));
    }
    server.publish("r", "live").await;
    assert_eq!(ws_next(&mut ws).await["payload"], "live");
}

#[tokio::test]
async fn cursor_from_before_restart_resyncs() {
    let old = TestServer::start().await;
    let stale = old.publish("r", "before restart").await;
    let cert_dir = old.cert_dir.clone();
    old.server.shutdown(std::time::Duration::from_secs(2)).await;

    let server = TestServer::start_with(|c| c.cert_dir = cert_dir).await;
    for transport in ALL {
        let got = read_from(&server, transport, "r", &stale, 1).await;
        assert_eq!(got, ["resync:epoch"], "{transport:?}");
    }
    // After the signal, live events follow.
    let mut sse = SseClient::open(&server, &format!("topic=r&cursor={stale}"), None).await;
    assert_eq!(sse.next().await.event.as_deref(), Some("hubcast.resync"));
    server.publish("r", "after restart").await;
    assert_eq!(sse.next().await.data, "after restart");
}

#[tokio::test]
async fn cursor_older_than_history_resyncs() {
    let server = TestServer::start_with(|c| c.hub.history_max_events = 3).await;
    let old = server.publish("r", "0").await;
    for n in 1..=5 {
        server.publish("r", &n.to_string()).await;
    }
    for transport in ALL {
        let got = read_from(&server, transport, "r", &old, 1).await;
        assert_eq!(got, ["resync:expired"], "{transport:?}");
    }
}
