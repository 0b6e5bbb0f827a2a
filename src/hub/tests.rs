use bytes::Bytes;

use super::*;

fn hub_with(history: usize, queue: usize) -> Hub {
    Hub::with_epoch(
        HubConfig {
            history_max_events: history,
            queue: QueueLimits {
                max_messages: queue,
                max_bytes: 1 << 20,
            },
            ..HubConfig::default()
        },
        7,
    )
}

fn topic(name: &str) -> Topic {
    Topic::parse(name).unwrap()
}

fn filters(list: &[&str]) -> Vec<Filter> {
    list.iter().map(|f| Filter::parse(f).unwrap()).collect()
}

fn event(hub: &Hub, name: &str, payload: &str) -> Cursor {
    hub.publish(
        topic(name),
        Class::Event,
        None,
        Bytes::copy_from_slice(payload.as_bytes()),
    )
    .unwrap()
    .unwrap()
}

fn drain(subscription: &mut Subscription) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(delivery) = subscription.try_recv() {
        out.push(match delivery {
            Delivery::Message(m) => String::from_utf8(m.payload.to_vec()).unwrap(),
            Delivery::Resync { reason, .. } => format!("resync:{}", reason.as_str()),
        });
    }
    out
}

#[test]
fn events_arrive_in_order() {
    let hub = hub_with(100, 100);
    let mut sub = hub.subscribe(filters(&["a/#"]), None).unwrap();
    event(&hub, "a/1", "one");
    event(&hub, "b/1", "skipped");
    event(&hub, "a/2", "two");
    assert_eq!(drain(&mut sub), ["one", "two"]);
}

#[test]
fn cursor_resumes_without_gap_or_duplicate() {
    let hub = hub_with(100, 100);
    let first = event(&hub, "t", "1");
    event(&hub, "t", "2");
    event(&hub, "t", "3");
    let mut sub = hub.subscribe(filters(&["t"]), Some(first)).unwrap();
    assert_eq!(drain(&mut sub), ["2", "3"]);
    event(&hub, "t", "4");
    assert_eq!(drain(&mut sub), ["4"]);
}

#[test]
fn foreign_epoch_gets_resync() {
    let hub = hub_with(100, 100);
    event(&hub, "t", "1");
    let foreign = Cursor::new(8, 1);
    let mut sub = hub.subscribe(filters(&["t"]), Some(foreign)).unwrap();
    event(&hub, "t", "2");
    assert_eq!(drain(&mut sub), ["resync:epoch", "2"]);
}

#[test]
fn expired_cursor_gets_resync() {
    let hub = hub_with(2, 100);
    let first = event(&hub, "t", "1");
    for n in 2..=5 {
        event(&hub, "t", &n.to_string());
    }
    let mut sub = hub.subscribe(filters(&["t"]), Some(first)).unwrap();
    assert_eq!(drain(&mut sub), ["resync:expired"]);
    event(&hub, "t", "6");
    assert_eq!(drain(&mut sub), ["6"]);
}

#[test]
fn cursor_ahead_is_rejected() {
    let hub = hub_with(100, 100);
    event(&hub, "t", "1");
    let ahead = Cursor::new(7, 5);
    assert!(matches!(
        hub.subscribe(filters(&["t"]), Some(ahead)),
        Err(SubscribeError::CursorAhead { .. })
    ));
}

#[test]
fn full_queue_lags_then_catches_up() {
    let hub = hub_with(100, 2);
    let mut sub = hub.subscribe(filters(&["t"]), None).unwrap();
    for n in 1..=10 {
        event(&hub, "t", &n.to_string());
    }
    assert_eq!(hub.stats().lagged, 1);
    let expected: Vec<String> = (1..=10).map(|n| n.to_string()).collect();
    assert_eq!(drain(&mut sub), expected);
}

#[test]
fn lagging_past_history_gets_resync() {
    let hub = hub_with(3, 2);
    let mut sub = hub.subscribe(filters(&["t"]), None).unwrap();
    for n in 1..=10 {
        event(&hub, "t", &n.to_string());
    }
    // The queue holds 1 and 2; history holds 8 to 10, so 3 to 7 are lost.
    assert_eq!(drain(&mut sub), ["1", "2", "resync:expired"]);
    event(&hub, "t", "11");
    assert_eq!(drain(&mut sub), ["11"]);
}

#[test]
fn telemetry_keeps_latest_and_conflates() {
    let hub = hub_with(100, 1);
    for value in ["20", "21"] {
        hub.publish(topic("s/temp"), Class::Telemetry, None, Bytes::from(value))
            .unwrap();
    }
    let mut sub = hub.subscribe(filters(&["s/+"]), None).unwrap();
    assert_eq!(drain(&mut sub), ["21"]);
    for value in ["22", "23", "24"] {
        hub.publish(topic("s/temp"), Class::Telemetry, None, Bytes::from(value))
            .unwrap();
    }
    // The queue takes one value; the newer ones replace each other.
    assert_eq!(drain(&mut sub), ["22", "24"]);
    assert_eq!(hub.stats().conflated, 1);
}

#[test]
fn retained_telemetry_is_bounded_and_clearable() {
    let hub = Hub::with_epoch(
        HubConfig {
            max_retained_bytes: 10,
            max_retained_topics: 2,
            ..HubConfig::default()
        },
        1,
    );
    let telemetry = |name: &str, value: &'static str| {
        hub.publish(topic(name), Class::Telemetry, None, Bytes::from(value))
            .unwrap();
    };
    telemetry("s/a", "12345");
    telemetry("s/b", "12345");
    // A third topic exceeds both bounds and is not kept.
    telemetry("s/c", "1");
    // A larger value would exceed the byte bound, so the topic loses its kept value.
    telemetry("s/a", "123456");
    assert_eq!(hub.stats().not_retained, 2);
    let mut sub = hub.subscribe(filters(&["s/+"]), None).unwrap();
    assert_eq!(drain(&mut sub), ["12345"]);

    // An empty payload clears the kept value of its topic.
    telemetry("s/b", "");
    drop(sub);
    let mut sub = hub.subscribe(filters(&["s/+"]), None).unwrap();
    assert!(drain(&mut sub).is_empty());
}

#[test]
fn telemetry_does_not_advance_sequence() {
    let hub = hub_with(100, 100);
    let before = hub.head();
    hub.publish(topic("s"), Class::Telemetry, None, Bytes::from("1"))
        .unwrap();
    assert_eq!(hub.head(), before);
}

#[test]
fn dropping_subscription_unregisters() {
    let hub = hub_with(100, 100);
    let sub = hub.subscribe(filters(&["a", "a/#"]), None).unwrap();
    assert_eq!(hub.stats().subscribers, 1);
    drop(sub);
    assert_eq!(hub.stats().subscribers, 0);
    event(&hub, "a", "nobody listens");
}

#[test]
fn overlapping_filters_deliver_once() {
    let hub = hub_with(100, 100);
    let mut sub = hub.subscribe(filters(&["a/b", "a/+", "#"]), None).unwrap();
    event(&hub, "a/b", "x");
    assert_eq!(drain(&mut sub), ["x"]);
}

#[test]
fn publish_checks_size_and_name() {
    let hub = Hub::with_epoch(
        HubConfig {
            max_payload_bytes: 4,
            ..HubConfig::default()
        },
        1,
    );
    assert!(matches!(
        hub.publish(topic("t"), Class::Event, None, Bytes::from("12345")),
        Err(PublishError::PayloadTooLarge { len: 5, max: 4 })
    ));
    for name in ["", "hubcast.resync", "a\nb"] {
        assert!(
            hub.publish(topic("t"), Class::Event, Some(name), Bytes::new())
                .is_err(),
            "{name:?} accepted"
        );
    }
}

#[test]
fn history_is_bounded_by_bytes() {
    let hub = Hub::with_epoch(
        HubConfig {
            history_max_bytes: 10,
            ..HubConfig::default()
        },
        1,
    );
    let first = event(&hub, "t", "aaaaa");
    event(&hub, "t", "bbbbb");
    event(&hub, "t", "ccccc");
    // Event 1 was evicted, but a client that saw it misses only 2 and 3.
    let mut sub = hub.subscribe(filters(&["t"]), Some(first)).unwrap();
    assert_eq!(drain(&mut sub), ["bbbbb", "ccccc"]);
    let mut sub = hub
        .subscribe(filters(&["t"]), Some(Cursor::new(1, 0)))
        .unwrap();
    assert_eq!(drain(&mut sub), ["resync:expired"]);
}
