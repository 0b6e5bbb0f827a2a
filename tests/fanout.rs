//! One hub, every transport: what a WebTransport device publishes reaches subscribers on
//! HTTP/3 SSE, WebSocket, HTTP/1.1 SSE and long polling alike.

mod common;

use common::*;
use http::Method;
use serde_json::{json, Value};

#[tokio::test]
async fn device_reaches_every_transport() {
    let server = TestServer::start().await;
    let start = server.server.hub.head().to_string();

    let mut h3 = H3Client::connect(&server).await.unwrap();
    let (_, stream) = h3
        .request(Method::GET, "/v1/events?topic=plant/%23", None)
        .await
        .unwrap();
    let mut h3_sse = H3Sse::new(stream);
    h3_sse.opened().await;
    let mut sse = SseClient::open(&server, "topic=plant/%23", None).await;
    let mut ws = ws_connect(&server).await;
    ws_send(&mut ws, json!({"op": "subscribe", "filters": ["plant/#"]})).await;
    assert_eq!(ws_next(&mut ws).await["op"], "subscribed");
    server.wait_subscribers(3).await;

    // The device: telemetry datagrams by alias, events on its control stream.
    let mut device = WtClient::connect(&server).await.unwrap();
    let reply = device
        .call(json!({"op": "alias", "alias": 1, "topic": "plant/boiler/temp"}))
        .await
        .unwrap();
    assert_eq!(reply["op"], "ack");
    let mut cursors = Vec::new();
    for n in 0..10 {
        let ack = device
            .call(json!({"op": "publish", "topic": "plant/boiler/state", "event": "state", "payload": format!("step {n}")}))
            .await
            .unwrap();
        assert_eq!(ack["op"], "ack", "{ack}");
        cursors.push(ack["cursor"].as_str().unwrap().to_owned());
    }
    let mut telemetry = vec![0x01, 0x00, 0x01];
    telemetry.extend(b"88.5");
    device.connection.send_datagram(telemetry).unwrap();

    // HTTP/1.1 and HTTP/3 SSE: the events in order, then the telemetry without an id.
    for (n, cursor) in cursors.iter().enumerate() {
        let event = sse.next().await;
        assert_eq!(event.id.as_deref(), Some(cursor.as_str()), "HTTP/1.1 SSE");
        assert_eq!(event.data, format!("step {n}"), "HTTP/1.1 SSE");
        let event = h3_sse.next().await;
        assert_eq!(event.id.as_deref(), Some(cursor.as_str()), "HTTP/3 SSE");
        assert_eq!(event.data, format!("step {n}"), "HTTP/3 SSE");
    }
    let reading = sse.next().await;
    assert_eq!((reading.id, reading.data.as_str()), (None, "88.5"));
    let reading = h3_sse.next().await;
    assert_eq!((reading.id, reading.data.as_str()), (None, "88.5"));

    // WebSocket: the same events and telemetry as JSON.
    for (n, cursor) in cursors.iter().enumerate() {
        let message = ws_next(&mut ws).await;
        assert_eq!(message["op"], "event");
        assert_eq!(message["cursor"], *cursor);
        assert_eq!(message["payload"], format!("step {n}"));
    }
    let message = ws_next(&mut ws).await;
    assert_eq!(message["op"], "telemetry");
    assert_eq!(message["topic"], "plant/boiler/temp");
    assert_eq!(message["payload"], "88.5");

    // Long polling: every event after the starting cursor, in order, across as many polls as
    // it takes; a poll without cursor shows the latest telemetry.
    let mut polled: Vec<Value> = Vec::new();
    let mut cursor = start;
    while polled.len() < 10 {
        let body = poll(
            &server,
            &format!("topic=plant/%23&cursor={cursor}&timeout=2"),
        )
        .await;
        polled.extend(body["events"].as_array().unwrap().iter().cloned());
        cursor = body["cursor"].as_str().unwrap().to_owned();
    }
    let payloads: Vec<&str> = polled
        .iter()
        .map(|e| e["payload"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..10).map(|n| format!("step {n}")).collect();
    assert_eq!(payloads, expected);
    let body = poll(&server, "topic=plant/%23&timeout=0").await;
    assert_eq!(body["events"][0]["op"], "telemetry");
    assert_eq!(body["events"][0]["payload"], "88.5");
}
