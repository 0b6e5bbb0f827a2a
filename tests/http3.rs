//! HTTP/3 on the QUIC endpoint: SETTINGS, the shared routes, misbehaving clients and the end
//! of WebTransport sessions seen only through the CONNECT stream.

mod common;

use bytes::Bytes;
use common::raw_h3::*;
use common::*;
use http::Method;
use serde_json::{json, Value};

#[tokio::test]
async fn settings_advertise_webtransport() {
    let server = TestServer::start().await;
    let (_endpoint, quic) = quic_connect(&server).await.unwrap();
    let settings = within("server SETTINGS", read_server_settings(&quic))
        .await
        .unwrap();
    let value = |id: u64| settings.iter().find(|(k, _)| *k == id).map(|(_, v)| *v);
    assert_eq!(
        value(SETTINGS_ENABLE_CONNECT_PROTOCOL),
        Some(1),
        "{settings:x?}"
    );
    assert_eq!(value(SETTINGS_H3_DATAGRAM), Some(1), "{settings:x?}");
    assert_eq!(
        value(SETTINGS_ENABLE_WEBTRANSPORT),
        Some(1),
        "{settings:x?}"
    );
}

#[tokio::test]
async fn sse_and_publish_over_http3() {
    let server = TestServer::start().await;
    let mut client = H3Client::connect(&server).await.unwrap();
    let (response, stream) = client
        .request(Method::GET, "/v1/events?topic=h3/%2B", None)
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert!(!response.headers().contains_key("alt-svc"));
    let mut sse = H3Sse::new(stream);
    sse.opened().await;

    let mut publisher = H3Client::connect(&server).await.unwrap();
    let (status, body) = publisher
        .fetch(
            Method::POST,
            "/v1/publish?topic=h3/a",
            Some(Bytes::from("hi")),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let body: Value = serde_json::from_str(&body).unwrap();
    let event = sse.next().await;
    assert_eq!(event.id.as_deref(), body["cursor"].as_str());
    assert_eq!(event.data, "hi");
}

#[tokio::test]
async fn http3_routes_match_tcp() {
    let server = TestServer::start_with(|c| c.hub.max_payload_bytes = 8).await;
    let mut client = H3Client::connect(&server).await.unwrap();
    let (status, body) = client.fetch(Method::GET, "/healthz", None).await.unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, "ok\n"));

    let (status, body) = client
        .fetch(Method::GET, "/v1/cert-hash", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(body.contains(&server.server.cert.hex));

    let (status, body) = client
        .fetch(Method::GET, "/v1/poll?topic=p&timeout=0", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("\"events\":[]"), "{body}");

    let (status, _) = client.fetch(Method::GET, "/v1/ws", None).await.unwrap();
    assert_eq!(status, 426);

    let (status, body) = client
        .fetch(
            Method::POST,
            "/v1/publish?topic=p",
            Some(Bytes::from("too large")),
        )
        .await
        .unwrap();
    assert_eq!(status, 413);
    assert!(body.contains("payload_too_large"));

    let (status, body) = client
        .fetch(
            Method::POST,
            "/v1/publish?topic=a//b",
            Some(Bytes::from("x")),
        )
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("invalid_topic"));
}

/// Opens a QUIC connection and sends SETTINGS that enable WebTransport, as browsers do.
async fn raw_connection(
    server: &TestServer,
) -> (quinn::Endpoint, quinn::Connection, quinn::SendStream) {
    let (endpoint, quic) = quic_connect(server).await.unwrap();
    let control = send_client_settings(&quic).await.unwrap();
    (endpoint, quic, control)
}

/// After every misbehaving client, a new HTTP/3 connection must still be served.
async fn assert_still_serving(server: &TestServer, after: &str) {
    let mut client = H3Client::connect(server)
        .await
        .unwrap_or_else(|e| panic!("no new connection after {after}: {e}"));
    let (status, _) = client
        .fetch(Method::GET, "/healthz", None)
        .await
        .unwrap_or_else(|e| panic!("healthz failed after {after}: {e}"));
    assert_eq!(status, 200, "after {after}");
}

#[tokio::test]
async fn stopped_streams_leave_endpoint_up() {
    let server = TestServer::start().await;
    let cancel = h3::error::Code::H3_REQUEST_CANCELLED;

    // Publish: part of the body, then the request stream is reset.
    {
        let mut client = H3Client::connect(&server).await.unwrap();
        let request = http::Request::post("https://localhost/v1/publish?topic=r")
            .body(())
            .unwrap();
        let mut stream = client.send.send_request(request).await.unwrap();
        stream
            .send_data(Bytes::from(vec![b'x'; 4096]))
            .await
            .unwrap();
        stream.stop_stream(cancel);
        stream.stop_sending(cancel);
    }
    assert_still_serving(&server, "publish reset").await;

    // SSE: the client stops reading while events are being written.
    {
        let mut client = H3Client::connect(&server).await.unwrap();
        let (_, mut stream) = client
            .request(Method::GET, "/v1/events?topic=r", None)
            .await
            .unwrap();
        server.wait_subscribers(1).await;
        for n in 0..50 {
            server.publish("r", &format!("event {n}")).await;
            if n == 10 {
                stream.stop_sending(cancel);
            }
        }
        server.wait_subscribers(0).await;
    }
    assert_still_serving(&server, "SSE stop").await;

    // Long poll and health check: stopped before the response.
    for path in ["/v1/poll?topic=r&timeout=5", "/healthz", "/v1/cert-hash"] {
        let mut client = H3Client::connect(&server).await.unwrap();
        let request = http::Request::get(format!("https://localhost{path}"))
            .body(())
            .unwrap();
        let mut stream = client.send.send_request(request).await.unwrap();
        stream.stop_sending(cancel);
        stream.stop_stream(cancel);
        assert_still_serving(&server, path).await;
    }

    // WebTransport: the CONNECT stream and the control stream reset mid-frame.
    {
        let (_endpoint, quic, _control) = raw_connection(&server).await;
        let (mut send, mut recv) = send_headers(&quic, &connect_headers("webtransport", "/v1/wt"))
            .await
            .unwrap();
        assert_eq!(
            within("CONNECT", read_status(&mut recv)).await.unwrap(),
            200
        );
        let session = u64::from(send.id());
        let (mut wt_send, _wt_recv) = open_wt_bidi(&quic, session).await.unwrap();
        wt_send.write_all(&[0, 0, 1, 0, b'{']).await.unwrap();
        wt_send.reset(0u32.into()).unwrap();
        send.reset(0u32.into()).unwrap();
        recv.stop(0u32.into()).unwrap();
    }
    assert_still_serving(&server, "WebTransport reset").await;

    // TCP shares nothing with QUIC but the hub; it must be untouched too.
    let health = reqwest::get(server.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn unsupported_connect_fails_only_its_stream() {
    let server = TestServer::start().await;
    let (_endpoint, quic, _control) = raw_connection(&server).await;

    // A :protocol hubcast knows but does not serve gets 501.
    let (_send, mut recv) = send_headers(&quic, &connect_headers("connect-udp", "/v1/wt"))
        .await
        .unwrap();
    assert_eq!(
        within("connect-udp", read_status(&mut recv)).await.unwrap(),
        501
    );

    // WebTransport on another path gets 404.
    let (_send, mut recv) = send_headers(&quic, &connect_headers("webtransport", "/elsewhere"))
        .await
        .unwrap();
    assert_eq!(
        within("wrong path", read_status(&mut recv)).await.unwrap(),
        404
    );

    // A :protocol unknown to h3 0.0.8 fails while the header block is parsed, so h3 resets the
    // stream with H3_MESSAGE_ERROR instead of a response.
    let (_send, mut recv) = send_headers(&quic, &connect_headers("chat", "/v1/wt"))
        .await
        .unwrap();
    assert!(within("unknown protocol", read_status(&mut recv))
        .await
        .is_err());

    // The connection is still up and serves requests.
    assert_eq!(raw_get_status(&quic, "/healthz").await, 200);
}

/// Opens a session with the raw client, subscribes on its control stream and returns the
/// CONNECT stream halves with the control stream.
async fn raw_session(
    server: &TestServer,
    quic: &quinn::Connection,
) -> (
    quinn::SendStream,
    quinn::RecvStream,
    quinn::SendStream,
    quinn::RecvStream,
) {
    let (send, mut recv) = send_headers(quic, &connect_headers("webtransport", "/v1/wt"))
        .await
        .unwrap();
    assert_eq!(
        within("CONNECT", read_status(&mut recv)).await.unwrap(),
        200
    );
    let session = u64::from(send.id());
    let (mut control_send, mut control_recv) = open_wt_bidi(quic, session).await.unwrap();
    send_json(
        &mut control_send,
        &json!({"op": "subscribe", "filters": ["s/#"]}),
    )
    .await
    .unwrap();
    let reply = within("subscribed", read_json(&mut control_recv))
        .await
        .unwrap();
    assert_eq!(reply["op"], "subscribed");
    server.wait_subscribers(1).await;
    (send, recv, control_send, control_recv)
}

#[tokio::test]
async fn connect_fin_without_capsule_ends_session() {
    let server = TestServer::start().await;
    let (_endpoint, quic, _control) = raw_connection(&server).await;
    let (mut send, _recv, _control_send, _control_recv) = raw_session(&server, &quic).await;
    send.finish().unwrap();
    server.wait_subscribers(0).await;
}

#[tokio::test]
async fn close_capsule_ends_session() {
    let server = TestServer::start().await;
    let (_endpoint, quic, _control) = raw_connection(&server).await;
    let (mut send, _recv, _control_send, _control_recv) = raw_session(&server, &quic).await;
    // CLOSE_WEBTRANSPORT_SESSION: type 0x2843, length, 32-bit code, reason. The stream stays
    // open, so only the capsule can end the session.
    let mut capsule = Vec::new();
    put_varint(&mut capsule, 0x2843);
    put_varint(&mut capsule, 4 + 3);
    capsule.extend(7u32.to_be_bytes());
    capsule.extend(b"bye");
    send_data(&mut send, &capsule).await.unwrap();
    server.wait_subscribers(0).await;
}

#[tokio::test]
async fn connect_reset_ends_session() {
    let server = TestServer::start().await;
    let (_endpoint, quic, _control) = raw_connection(&server).await;
    let (mut send, _recv, _control_send, _control_recv) = raw_session(&server, &quic).await;
    send.reset(0u32.into()).unwrap();
    server.wait_subscribers(0).await;
}

#[tokio::test]
async fn session_without_webtransport_settings_is_refused() {
    let server = TestServer::start().await;
    let (_endpoint, quic) = quic_connect(&server).await.unwrap();
    // SETTINGS with extended CONNECT only: no WebTransport, no datagrams.
    let mut control = quic.open_uni().await.unwrap();
    let mut frame = Vec::new();
    put_varint(&mut frame, 0x00);
    put_varint(&mut frame, 0x04);
    put_varint(&mut frame, 2);
    put_varint(&mut frame, SETTINGS_ENABLE_CONNECT_PROTOCOL);
    put_varint(&mut frame, 1);
    control.write_all(&frame).await.unwrap();
    // Give the SETTINGS a head start over the CONNECT, which may otherwise overtake them.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (_send, mut recv) = send_headers(&quic, &connect_headers("webtransport", "/v1/wt"))
        .await
        .unwrap();
    assert_eq!(
        within("refusal", read_status(&mut recv)).await.unwrap(),
        400
    );
}

#[tokio::test]
async fn oversized_control_frame_sends_close_capsule() {
    let server = TestServer::start_with(|c| c.hub.max_payload_bytes = 100).await;
    let (_endpoint, quic, _control) = raw_connection(&server).await;
    let (_send, mut recv, mut control_send, _control_recv) = raw_session(&server, &quic).await;
    control_send
        .write_all(&(1u32 << 30).to_be_bytes())
        .await
        .unwrap();
    let data = within("close capsule", read_data_frame(&mut recv))
        .await
        .unwrap()
        .expect("a DATA frame before the CONNECT stream ends");
    let (code, reason) = parse_close_capsule(&data).unwrap();
    assert_eq!(code, 0x10);
    assert!(reason.contains("larger than the maximum"), "{reason}");
    server.wait_subscribers(0).await;
}

#[tokio::test]
async fn request_before_control_stream_keeps_session() {
    let server = TestServer::start().await;
    let (_endpoint, quic, _control) = raw_connection(&server).await;
    let (send, mut recv) = send_headers(&quic, &connect_headers("webtransport", "/v1/wt"))
        .await
        .unwrap();
    assert_eq!(
        within("CONNECT", read_status(&mut recv)).await.unwrap(),
        200
    );

    // A plain request on the session's connection is served and takes no control slot.
    assert_eq!(raw_get_status(&quic, "/healthz").await, 200);

    // A second session on the same connection is refused with a reason.
    let (_again, mut again_recv) = send_headers(&quic, &connect_headers("webtransport", "/v1/wt"))
        .await
        .unwrap();
    assert_eq!(
        within("second CONNECT", read_status(&mut again_recv))
            .await
            .unwrap(),
        400
    );

    // The control stream still works.
    let (mut control_send, mut control_recv) =
        open_wt_bidi(&quic, u64::from(send.id())).await.unwrap();
    send_json(&mut control_send, &json!({"op": "ping", "id": 1}))
        .await
        .unwrap();
    let reply = within("pong", read_json(&mut control_recv)).await.unwrap();
    assert_eq!(reply["op"], "pong");
}

#[tokio::test]
async fn extra_bidi_streams_are_capped() {
    let server = TestServer::start().await;
    let (_endpoint, quic, _control) = raw_connection(&server).await;
    let (send, mut recv, _control_send, _control_recv) = raw_session(&server, &quic).await;
    let session = u64::from(send.id());

    // h3 0.0.8 keeps every accepted stream id for the life of the connection, so a session
    // may open only a few streams besides its control stream; each gets an error frame.
    let mut extra = Vec::new();
    for _ in 0..16 {
        let (send, mut recv) = open_wt_bidi(&quic, session).await.unwrap();
        let reply = within("extra stream reply", read_json(&mut recv))
            .await
            .unwrap();
        assert_eq!(reply["code"], "unsupported");
        extra.push(send);
    }
    assert_eq!(server.server.hub.stats().subscribers, 1);

    // One more closes the session with the stream-limit code.
    let (_send, _recv) = open_wt_bidi(&quic, session).await.unwrap();
    let data = within("close capsule", read_data_frame(&mut recv))
        .await
        .unwrap()
        .expect("a close capsule");
    let (code, reason) = parse_close_capsule(&data).unwrap();
    assert_eq!(code, 0x13);
    assert!(reason.contains("too many"), "{reason}");
    server.wait_subscribers(0).await;
}

#[tokio::test]
async fn stalled_event_stream_closes_session_as_too_slow() {
    let server =
        TestServer::start_with(|c| c.write_timeout = std::time::Duration::from_secs(1)).await;
    let (_endpoint, quic, _control) = raw_connection(&server).await;
    let (_send, mut recv, _control_send, _control_recv) = raw_session(&server, &quic).await;

    // The client never accepts the event streams, so their flow-control windows stay closed.
    let big = "z".repeat(60_000);
    let mut last = String::new();
    for _ in 0..100 {
        last = server.publish("s/big", &big).await;
    }
    let data = within("close capsule", read_data_frame(&mut recv))
        .await
        .unwrap()
        .expect("a close capsule");
    let (code, reason) = parse_close_capsule(&data).unwrap();
    assert_eq!(code, 0x14);
    let cursor = reason
        .strip_prefix("too slow: resume from cursor ")
        .unwrap_or_else(|| panic!("reason {reason:?}"));
    // Every event up to the named cursor was written; the rest come from history on resume.
    let seq = |c: &str| c.rsplit('-').next().unwrap().parse::<u64>().unwrap();
    assert!(seq(cursor) < seq(&last), "{cursor} is not before {last}");
    server.wait_subscribers(0).await;
}

#[tokio::test]
async fn back_to_back_connects_get_session_and_400() {
    let server = TestServer::start().await;
    let (_endpoint, quic, _control) = raw_connection(&server).await;
    let headers = connect_headers("webtransport", "/v1/wt");
    let (_first, mut first_recv) = send_headers(&quic, &headers).await.unwrap();
    let (_second, mut second_recv) = send_headers(&quic, &headers).await.unwrap();
    let first = within("first CONNECT", read_status(&mut first_recv))
        .await
        .unwrap();
    let second = within("second CONNECT", read_status(&mut second_recv))
        .await
        .unwrap();
    let mut statuses = [first, second];
    statuses.sort();
    assert_eq!(statuses, [200, 400]);
}

#[tokio::test]
async fn shutdown_sends_close_capsule() {
    let server = TestServer::start().await;
    let (_endpoint, quic, _control) = raw_connection(&server).await;
    let (_send, mut recv, _control_send, _control_recv) = raw_session(&server, &quic).await;
    let stopping = tokio::spawn(server.server.shutdown(std::time::Duration::from_secs(5)));
    let data = within("close capsule", read_data_frame(&mut recv))
        .await
        .unwrap()
        .expect("a close capsule before the connection closes");
    let (code, reason) = parse_close_capsule(&data).unwrap();
    assert_eq!(code, 0x12);
    assert!(reason.contains("shutting down"), "{reason}");
    quic.close(0u32.into(), b"");
    within("shutdown", stopping).await.unwrap();
}

#[tokio::test]
async fn oversized_header_section_is_refused() {
    let server = TestServer::start().await;
    let (_endpoint, quic, _control) = raw_connection(&server).await;
    let big = "v".repeat(64 * 1024);
    let fields = [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", "/healthz"),
        ("x-padding", big.as_str()),
    ];
    let (mut send, mut recv) = send_headers(&quic, &fields).await.unwrap();
    send.finish().unwrap();
    // h3 answers a header section over the limit with 431, or resets the stream.
    let status = within("oversized headers", read_status(&mut recv)).await;
    assert!(matches!(status, Ok(431) | Err(_)), "{status:?}");

    // The connection still serves ordinary requests.
    assert_eq!(raw_get_status(&quic, "/healthz").await, 200);
}

#[tokio::test]
async fn unfinished_huge_headers_frame_is_stopped() {
    let server = TestServer::start().await;
    let (_endpoint, quic, _control) = raw_connection(&server).await;
    // A HEADERS frame that declares 1,000,000 bytes and delivers only part of them: without a
    // check of the declared length, the server would wait for the rest and keep buffering.
    let (mut send, mut recv) = quic.open_bi().await.unwrap();
    let mut frame = Vec::new();
    put_varint(&mut frame, 0x01);
    put_varint(&mut frame, 1_000_000);
    frame.extend(vec![0u8; 64 * 1024]);
    let _ = send.write_all(&frame).await;
    let status = within("stopped stream", read_status(&mut recv)).await;
    assert!(status.is_err(), "{status:?}");
    let stopped = within("stop sending", send.stopped()).await;
    assert!(matches!(stopped, Ok(Some(_))), "{stopped:?}");
    assert_still_serving(&server, "huge headers frame").await;
}

#[tokio::test]
async fn concurrent_requests_grow_stream_limit() {
    let server = TestServer::start().await;
    let mut client = H3Client::connect(&server).await.unwrap();
    // A connection starts with room for 8 bidirectional streams and grows to 256, so 100
    // requests held open at once all get their responses.
    let mut streams = Vec::new();
    for n in 0..100 {
        let path = format!("/v1/events?topic=grow/{n}");
        let (response, stream) = within("SSE request", client.request(Method::GET, &path, None))
            .await
            .unwrap_or_else(|e| panic!("request {n} failed: {e}"));
        assert_eq!(response.status(), 200, "request {n}");
        streams.push(stream);
    }
    server.wait_subscribers(100).await;
}
