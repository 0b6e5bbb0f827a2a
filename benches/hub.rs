//! Micro-benchmarks of the hub's hot paths: fan-out, topic matching and wire encoding.
//!
//! `fanout` publishes one event to N subscribers and has each subscriber take it and fetch its
//! WebSocket encoding, as a transport does. The throughput is per delivered message, so a flat
//! time per element as N grows shows that the encoding is built once per message and shared.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hubcast::hub::{Class, Hub, HubConfig, Message, QueueLimits, Subscription};
use hubcast::topic::{Filter, Topic};
use hubcast::wire::{self, Encoded};

/// One wire encoding of a message.
type Encoder = fn(&Message) -> Bytes;

fn new_hub() -> Hub {
    Hub::with_epoch(
        HubConfig {
            queue: QueueLimits {
                max_messages: 1 << 20,
                max_bytes: usize::MAX,
            },
            ..HubConfig::default()
        },
        1,
    )
}

fn payload() -> Bytes {
    Bytes::from(vec![b'x'; 100])
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    for subscribers in [1usize, 10, 100, 1_000, 10_000] {
        let hub = new_hub();
        let topic = Topic::parse("bench/fanout").unwrap();
        let filter = Filter::parse("bench/fanout").unwrap();
        let mut subs: Vec<Subscription> = (0..subscribers)
            .map(|_| hub.subscribe(vec![filter.clone()], None).unwrap())
            .collect();
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(subscribers),
            &subscribers,
            |b, _| {
                b.iter(|| {
                    hub.publish(topic.clone(), Class::Event, None, payload())
                        .unwrap();
                    for sub in subs.iter_mut() {
                        if let Some(hubcast::hub::Delivery::Message(message)) = sub.try_recv() {
                            black_box(wire::ws_text(&message));
                        }
                    }
                })
            },
        );
    }
    group.finish();
}

fn matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("match_10k_subscriptions");
    let hub = new_hub();
    let mut subs = Vec::new();
    for i in 0..10_000 {
        let exact = Filter::parse(&format!("site/{i}/temp")).unwrap();
        subs.push(hub.subscribe(vec![exact], None).unwrap());
    }
    let topic = Topic::parse("site/42/temp").unwrap();
    group.bench_function("exact", |b| {
        b.iter(|| {
            hub.publish(topic.clone(), Class::Telemetry, None, payload())
                .unwrap();
        })
    });
    // Every subscriber also holds a wildcard filter, which the registry tests one by one.
    let wild_hub = new_hub();
    let mut wild = Vec::new();
    for i in 0..10_000 {
        let filter = Filter::parse(&format!("site/{i}/+")).unwrap();
        wild.push(wild_hub.subscribe(vec![filter], None).unwrap());
    }
    group.bench_function("wildcard", |b| {
        b.iter(|| {
            wild_hub
                .publish(topic.clone(), Class::Telemetry, None, payload())
                .unwrap();
        })
    });
    group.finish();
    drop(subs);
    drop(wild);
}

fn encoding(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_100_bytes");
    let message = || Message {
        topic: Topic::parse("sensors/kitchen/temp").unwrap(),
        name: Some("reading".into()),
        payload: payload(),
        class: Class::Event,
        cursor: Some(hubcast::cursor::Cursor::new(0x1234, 42)),
        encoded: Encoded::default(),
    };
    let formats: [(&str, Encoder); 5] = [
        ("json", wire::json),
        ("webtransport_frame", wire::frame),
        ("datagram", wire::datagram),
        ("sse_raw", wire::sse_raw),
        ("sse_json", wire::sse_json),
    ];
    for (name, encode) in formats {
        group.bench_function(name, |b| {
            b.iter_batched(
                message,
                |m| black_box(encode(&m)),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, fanout, matching, encoding);
criterion_main!(benches);
