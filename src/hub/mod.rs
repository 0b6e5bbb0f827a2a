//! The topic hub: one event sequence, bounded history and the latest telemetry per topic.
//!
//! The hub knows nothing of transports. Publishers hand it a topic, a delivery class and a
//! payload; subscribers receive [`Delivery`] values from a [`Subscription`] and encode them for
//! their own wire format through the message's shared encoding cache, so each format is encoded
//! once per message, however many subscribers it reaches.
//!
//! # Delivery classes
//!
//! * **Events** take the next number of the hub-wide sequence under one lock, are appended to a
//!   history bounded by count and by bytes, and reach each matching subscriber in sequence order.
//! * **Telemetry** never touches the event sequence or the history lock. The hub keeps only the
//!   latest value per topic and hands it to every new matching subscriber.
//!
//! # Slow subscribers
//!
//! Each subscriber has a queue bounded in messages and in bytes. Publishing only ever tries to
//! push onto it, so a publisher never waits for a subscriber and one slow subscriber never delays
//! another:
//!
//! * When an event finds the queue full, the hub stops queueing events for that subscriber and
//!   marks it *lagging*. Once the subscriber drains its queue, [`Subscription::recv`] reads the
//!   missed events from history, in order, with no gap and no duplicate. If history no longer
//!   reaches back that far, the subscriber receives [`Delivery::Resync`] and then live events.
//! * When telemetry finds the queue full, the hub keeps only the newest value per topic for that
//!   subscriber (conflation) and delivers those once the queue has room.
//!
//! Resuming from a cursor uses the same path: a new subscription starts out lagging at the
//! cursor's position and reads history until it reaches the head.
//!
//! # Lock order
//!
//! `events` (history and sequence), then `registry`, then a subscriber's own queue. Telemetry
//! takes only the last two.

mod history;
mod registry;
mod subscription;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;

use crate::cursor::Cursor;
use crate::topic::{Filter, Topic};
use crate::wire::Encoded;

use history::History;
use registry::Registry;
pub use subscription::{QueueLimits, Subscription};

/// Limits of one hub. Every field is a configurable value with the default shown.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// Maximum number of events kept in history. Default 10,000.
    pub history_max_events: usize,
    /// Maximum total payload bytes kept in history. Default 64 MiB.
    pub history_max_bytes: usize,
    /// Maximum payload size of one message, in bytes. Default 1 MiB.
    pub max_payload_bytes: usize,
    /// Bounds of each subscriber's outgoing queue.
    pub queue: QueueLimits,
    /// Maximum number of topics whose latest telemetry value is kept. Default 100,000.
    pub max_retained_topics: usize,
    /// Maximum total payload bytes of the kept telemetry values. Default 64 MiB.
    pub max_retained_bytes: usize,
    /// Maximum number of filters in one subscription. Default 128.
    pub max_filters: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            history_max_events: 10_000,
            history_max_bytes: 64 << 20,
            max_payload_bytes: 1 << 20,
            queue: QueueLimits::default(),
            max_retained_topics: 100_000,
            max_retained_bytes: 64 << 20,
            max_filters: 128,
        }
    }
}

/// Delivery class of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Ordered, numbered, kept in history and resumable.
    Event,
    /// Droppable; only the latest value per topic is kept.
    Telemetry,
}

impl Class {
    /// Name used on every wire format.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Event => "event",
            Self::Telemetry => "telemetry",
        }
    }
}

/// One published message, shared by every subscriber that receives it.
pub struct Message {
    pub topic: Topic,
    /// Optional event name chosen by the publisher.
    pub name: Option<Arc<str>>,
    pub payload: Bytes,
    pub class: Class,
    /// Position in the event sequence; `None` for telemetry.
    pub cursor: Option<Cursor>,
    /// Wire encodings, each built on first use and then shared.
    pub encoded: Encoded,
}

/// Item a subscription yields.
#[derive(Clone)]
pub enum Delivery {
    Message(Arc<Message>),
    /// Events between the subscriber's position and `cursor` cannot be delivered; the stream
    /// continues with the events after `cursor`.
    Resync {
        cursor: Cursor,
        reason: ResyncReason,
    },
}

/// Reason a subscriber has to resynchronise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResyncReason {
    /// The cursor belongs to another epoch, for example from before a restart.
    Epoch,
    /// History no longer reaches back to the cursor.
    Expired,
}

impl ResyncReason {
    /// Name used on every wire format.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Epoch => "epoch",
            Self::Expired => "expired",
        }
    }
}

/// Reason a publish was rejected.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("payload is {len} bytes, the maximum is {max}")]
    PayloadTooLarge { len: usize, max: usize },
    #[error("invalid event name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
}

/// Reason a subscription was rejected.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error(
        "no topic filter given: pass at least one (the `topic` query parameter, or `filters` in a \
         subscribe command)"
    )]
    NoFilters,
    #[error("{count} filters given, the maximum is {max}")]
    TooManyFilters { count: usize, max: usize },
    #[error("cursor {cursor} is ahead of this hub's latest event {head}")]
    CursorAhead { cursor: Cursor, head: Cursor },
}

/// Maximum length of an event name, in bytes.
pub const MAX_EVENT_NAME_LEN: usize = 64;

/// Prefix of event names the server itself uses, such as `hubcast.resync`.
pub const RESERVED_NAME_PREFIX: &str = "hubcast.";

/// Counters for the metrics endpoint, all monotonic except `subscribers`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub events_published: u64,
    pub telemetry_published: u64,
    pub subscribers: u64,
    /// Times a subscriber was marked lagging because its queue was full.
    pub lagged: u64,
    /// Telemetry values replaced by a newer one in a full queue.
    pub conflated: u64,
    /// Resync signals sent.
    pub resyncs: u64,
    /// Telemetry values not kept as their topic's latest because a retained bound was reached.
    pub not_retained: u64,
}

#[derive(Default)]
struct Counters {
    events_published: AtomicU64,
    telemetry_published: AtomicU64,
    subscribers: AtomicU64,
    lagged: AtomicU64,
    conflated: AtomicU64,
    resyncs: AtomicU64,
    not_retained: AtomicU64,
}

/// The latest telemetry value per topic, bounded by topic count and payload bytes.
#[derive(Default)]
struct Retained {
    values: HashMap<Topic, Arc<Message>>,
    bytes: usize,
}

impl Retained {
    /// Keeps `message` as its topic's latest value; an empty payload removes the topic's value
    /// instead, as MQTT clears a retained message. Returns `false` when a bound left the topic
    /// without a kept value.
    fn retain(&mut self, message: &Arc<Message>, config: &HubConfig) -> bool {
        let old = self
            .values
            .remove(&message.topic)
            .map_or(0, |m| m.payload.len());
        self.bytes -= old;
        if message.payload.is_empty() {
            return true;
        }
        let fits_bytes = self.bytes + message.payload.len() <= config.max_retained_bytes;
        let fits_topics = self.values.len() < config.max_retained_topics;
        if !(fits_bytes && fits_topics) {
            return false;
        }
        self.bytes += message.payload.len();
        self.values.insert(message.topic.clone(), message.clone());
        true
    }
}

/// Shared handle to a hub. Cloning is cheap.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    config: HubConfig,
    epoch: u64,
    events: Mutex<History>,
    registry: RwLock<Registry>,
    latest: Mutex<Retained>,
    counters: Counters,
    next_subscriber: AtomicU64,
}

impl Hub {
    /// Creates a hub with a fresh random epoch and empty history.
    pub fn new(config: HubConfig) -> Self {
        Self::with_epoch(config, random_epoch())
    }

    /// Creates a hub with a chosen epoch, for tests that need two hubs to agree or differ.
    pub fn with_epoch(config: HubConfig, epoch: u64) -> Self {
        let history = History::new(config.history_max_events, config.history_max_bytes);
        Self {
            inner: Arc::new(Inner {
                config,
                epoch,
                events: Mutex::new(history),
                registry: RwLock::new(Registry::default()),
                latest: Mutex::new(Retained::default()),
                counters: Counters::default(),
                next_subscriber: AtomicU64::new(1),
            }),
        }
    }

    /// Returns the hub's configuration.
    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// Returns the hub's epoch.
    pub fn epoch(&self) -> u64 {
        self.inner.epoch
    }

    /// Cursor of the newest event.
    pub fn head(&self) -> Cursor {
        let seq = lock(&self.inner.events).head();
        Cursor::new(self.inner.epoch, seq)
    }

    /// Current counters.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        Stats {
            events_published: c.events_published.load(Ordering::Relaxed),
            telemetry_published: c.telemetry_published.load(Ordering::Relaxed),
            subscribers: c.subscribers.load(Ordering::Relaxed),
            lagged: c.lagged.load(Ordering::Relaxed),
            conflated: c.conflated.load(Ordering::Relaxed),
            resyncs: c.resyncs.load(Ordering::Relaxed),
            not_retained: c.not_retained.load(Ordering::Relaxed),
        }
    }

    /// Checks an event name against the naming rules.
    ///
    /// # Errors
    ///
    /// Returns [`PublishError::InvalidName`] for an empty, overlong or reserved name, or one with
    /// a control character.
    pub fn check_name(name: &str) -> Result<(), PublishError> {
        let reason = if name.is_empty() {
            Some("it is empty")
        } else if name.len() > MAX_EVENT_NAME_LEN {
            Some("it is longer than 64 bytes")
        } else if name.chars().any(char::is_control) {
            Some("it contains a control character")
        } else if name.starts_with(RESERVED_NAME_PREFIX) {
            Some("names starting with `hubcast.` are reserved for the server")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(PublishError::InvalidName {
                name: name.chars().take(80).collect(),
                reason,
            }),
            None => Ok(()),
        }
    }

    /// Publishes one message and returns its cursor (`None` for telemetry).
    ///
    /// Never waits for subscribers: a full subscriber queue is handled by the lagging and
    /// conflation policy in the module documentation.
    ///
    /// # Errors
    ///
    /// Returns [`PublishError`] for an oversized payload or an invalid event name.
    pub fn publish(
        &self,
        topic: Topic,
        class: Class,
        name: Option<&str>,
        payload: Bytes,
    ) -> Result<Option<Cursor>, PublishError> {
        let max = self.inner.config.max_payload_bytes;
        if payload.len() > max {
            return Err(PublishError::PayloadTooLarge {
                len: payload.len(),
                max,
            });
        }
        if let Some(name) = name {
            Self::check_name(name)?;
        }
        let name = name.map(Arc::from);
        match class {
            Class::Event => Ok(Some(self.publish_event(topic, name, payload))),
            Class::Telemetry => {
                self.publish_telemetry(topic, name, payload);
                Ok(None)
            }
        }
    }

    fn publish_event(&self, topic: Topic, name: Option<Arc<str>>, payload: Bytes) -> Cursor {
        let inner = &*self.inner;
        let mut events = lock(&inner.events);
        let cursor = Cursor::new(inner.epoch, events.head() + 1);
        let message = Arc::new(Message {
            topic,
            name,
            payload,
            class: Class::Event,
            cursor: Some(cursor),
            encoded: Encoded::default(),
        });
        events.push(message.clone());

        // Dispatch while still holding the history lock, so every subscriber sees events in
        // sequence order and a catching-up subscriber cannot miss one between history and queue.
        let registry = read(&inner.registry);
        for subscriber in registry.matching(&message.topic) {
            if subscriber.offer_event(&message) {
                inner.counters.lagged.fetch_add(1, Ordering::Relaxed);
            }
        }
        inner
            .counters
            .events_published
            .fetch_add(1, Ordering::Relaxed);
        cursor
    }

    fn publish_telemetry(&self, topic: Topic, name: Option<Arc<str>>, payload: Bytes) {
        let inner = &*self.inner;
        let message = Arc::new(Message {
            topic,
            name,
            payload,
            class: Class::Telemetry,
            cursor: None,
            encoded: Encoded::default(),
        });
        if !lock(&inner.latest).retain(&message, &inner.config) {
            inner.counters.not_retained.fetch_add(1, Ordering::Relaxed);
        }
        let registry = read(&inner.registry);
        for subscriber in registry.matching(&message.topic) {
            if subscriber.offer_telemetry(&message) {
                inner.counters.conflated.fetch_add(1, Ordering::Relaxed);
            }
        }
        inner
            .counters
            .telemetry_published
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Subscribes to `filters`, starting after `from` or, without a cursor, at the head.
    ///
    /// The subscription first yields a [`Delivery::Resync`] when `from` belongs to another
    /// epoch, then the missed events after `from` (or a resync when history no longer contains
    /// them) and live messages in sequence order. The latest telemetry value of every matching
    /// topic is queued right after registration, so it may follow the first live messages; a
    /// topic's older retained value never follows a newer live one. Dropping the subscription
    /// unregisters it at once.
    ///
    /// # Errors
    ///
    /// Returns [`SubscribeError`] when no or too many filters are given, or when `from` is
    /// ahead of the newest event of this epoch.
    pub fn subscribe(
        &self,
        filters: Vec<Filter>,
        from: Option<Cursor>,
    ) -> Result<Subscription, SubscribeError> {
        self.subscribe_with(filters, from, true)
    }

    /// Like [`Hub::subscribe`], but without the latest telemetry values when `latest` is
    /// false: a long poller resuming from a cursor already has them.
    ///
    /// # Errors
    ///
    /// The same as [`Hub::subscribe`].
    pub fn subscribe_with(
        &self,
        filters: Vec<Filter>,
        from: Option<Cursor>,
        latest: bool,
    ) -> Result<Subscription, SubscribeError> {
        let inner = &*self.inner;
        if filters.is_empty() {
            return Err(SubscribeError::NoFilters);
        }
        if filters.len() > inner.config.max_filters {
            return Err(SubscribeError::TooManyFilters {
                count: filters.len(),
                max: inner.config.max_filters,
            });
        }

        let events = lock(&inner.events);
        let head = Cursor::new(inner.epoch, events.head());
        let mut resync = None;
        let start = match from {
            None => head.seq,
            Some(cursor) if cursor.epoch != inner.epoch => {
                resync = Some(ResyncReason::Epoch);
                head.seq
            }
            Some(cursor) if cursor.seq > head.seq => {
                return Err(SubscribeError::CursorAhead { cursor, head });
            }
            Some(cursor) => cursor.seq,
        };

        let id = inner.next_subscriber.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(subscription::Shared::new(
            id,
            filters,
            inner.config.queue,
            start,
            start < head.seq,
        ));
        if let Some(reason) = resync {
            shared.push_resync(head, reason);
            inner.counters.resyncs.fetch_add(1, Ordering::Relaxed);
        }
        write(&inner.registry).insert(&shared);
        drop(events);

        // Retained values are offered outside the history lock, so a wide filter over many
        // topics never delays event publishers. Holding the retained lock while offering keeps
        // a newer live value from being overtaken by an older retained one.
        if latest {
            let retained = lock(&inner.latest);
            let mut current: Vec<&Arc<Message>> = retained
                .values
                .values()
                .filter(|m| shared.filters().iter().any(|f| f.matches(&m.topic)))
                .collect();
            current.sort_by(|a, b| a.topic.cmp(&b.topic));
            for message in current {
                shared.offer_telemetry(message);
            }
        }

        inner.counters.subscribers.fetch_add(1, Ordering::Relaxed);
        let start = Cursor::new(inner.epoch, start);
        Ok(Subscription::new(self.clone(), shared, start))
    }

    /// Moves up to one batch of missed events from history into a lagging subscriber's queue.
    fn catch_up(&self, shared: &subscription::Shared) {
        let inner = &*self.inner;
        let events = lock(&inner.events);
        let head = Cursor::new(inner.epoch, events.head());
        if shared.catch_up(&events, head) {
            inner.counters.resyncs.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn unsubscribe(&self, shared: &subscription::Shared) {
        write(&self.inner.registry).remove(shared);
        self.inner
            .counters
            .subscribers
            .fetch_sub(1, Ordering::Relaxed);
    }
}

fn random_epoch() -> u64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    // A failing system random source leaves a time-based epoch, which still differs per run.
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return now.as_nanos() as u64;
    }
    u64::from_be_bytes(bytes)
}

// A poisoned lock means a panic while the hub's state was being changed in a way that cannot
// leave it half-updated (every critical section only pushes, pops or replaces whole values), so
// the guard is taken over instead of spreading the panic to every connection.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
