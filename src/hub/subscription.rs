//! One subscriber's bounded queue and the handle its transport reads from.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::history::History;
use super::{lock, Delivery, Hub, Message, ResyncReason};
use crate::cursor::Cursor;
use crate::topic::{Filter, Topic};

/// Bounds of one subscriber's outgoing queue.
#[derive(Clone, Copy, Debug)]
pub struct QueueLimits {
    /// Maximum number of queued deliveries. Default 256.
    pub max_messages: usize,
    /// Maximum queued bytes, counting payload and topic. Default 256 KiB.
    pub max_bytes: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self {
            // A full queue costs nothing but a catch-up from history, so the queue can stay
            // small; this bounds what each of many idle or slow subscribers holds.
            max_messages: 256,
            max_bytes: 256 << 10,
        }
    }
}

/// Maximum number of history entries one catch-up step reads while holding the history lock.
const CATCH_UP_SCAN: usize = 4096;

/// Queue bookkeeping cost of one delivery besides its payload and topic, in bytes.
const ENTRY_OVERHEAD: usize = 64;

fn cost(message: &Message) -> usize {
    message.payload.len() + message.topic.as_str().len() + ENTRY_OVERHEAD
}

pub(crate) struct Shared {
    id: u64,
    filters: Vec<Filter>,
    limits: QueueLimits,
    queue: Mutex<Queue>,
    notify: Notify,
}

struct Queue {
    items: VecDeque<Delivery>,
    bytes: usize,
    /// Sequence number of the last event queued or, while catching up, scanned in history.
    last_seq: u64,
    /// Events after `last_seq` are in history but were not queued.
    lagging: bool,
    /// Newest telemetry per topic that found the queue full.
    conflated: HashMap<Topic, Arc<Message>>,
}

impl Queue {
    fn has_room(&self, limits: &QueueLimits, bytes: usize) -> bool {
        // An empty queue takes any one message, so an item above the byte bound cannot stall it.
        self.items.is_empty()
            || (self.items.len() < limits.max_messages && self.bytes + bytes <= limits.max_bytes)
    }

    fn push(&mut self, message: &Arc<Message>) {
        self.bytes += cost(message);
        self.items.push_back(Delivery::Message(message.clone()));
    }

    fn pop(&mut self) -> Option<Delivery> {
        if let Some(delivery) = self.items.pop_front() {
            if let Delivery::Message(message) = &delivery {
                self.bytes -= cost(message);
            }
            return Some(delivery);
        }
        let topic = self.conflated.keys().next()?.clone();
        self.conflated.remove(&topic).map(Delivery::Message)
    }
}

impl Shared {
    pub(super) fn new(
        id: u64,
        filters: Vec<Filter>,
        limits: QueueLimits,
        start_seq: u64,
        lagging: bool,
    ) -> Self {
        Self {
            id,
            filters,
            limits,
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                bytes: 0,
                last_seq: start_seq,
                lagging,
                conflated: HashMap::new(),
            }),
            notify: Notify::new(),
        }
    }

    pub(super) fn id(&self) -> u64 {
        self.id
    }

    pub(super) fn filters(&self) -> &[Filter] {
        &self.filters
    }

    fn matches(&self, topic: &Topic) -> bool {
        self.filters.iter().any(|f| f.matches(topic))
    }

    /// Queues a live event; returns `true` when this event made the subscriber start lagging.
    pub(super) fn offer_event(&self, message: &Arc<Message>) -> bool {
        let mut queue = lock(&self.queue);
        if queue.lagging {
            return false;
        }
        if !queue.has_room(&self.limits, cost(message)) {
            queue.lagging = true;
            return true;
        }
        queue.push(message);
        if let Some(cursor) = message.cursor {
            queue.last_seq = cursor.seq;
        }
        drop(queue);
        self.notify.notify_one();
        false
    }

    /// Queues telemetry; returns `true` when it replaced an older value instead.
    pub(super) fn offer_telemetry(&self, message: &Arc<Message>) -> bool {
        let mut queue = lock(&self.queue);
        let conflated = if queue.has_room(&self.limits, cost(message)) {
            queue.push(message);
            false
        } else {
            queue
                .conflated
                .insert(message.topic.clone(), message.clone())
                .is_some()
        };
        drop(queue);
        self.notify.notify_one();
        conflated
    }

    pub(super) fn push_resync(&self, cursor: Cursor, reason: ResyncReason) {
        lock(&self.queue)
            .items
            .push_back(Delivery::Resync { cursor, reason });
        self.notify.notify_one();
    }

    /// Queues missed events from history; returns `true` when it had to queue a resync instead.
    /// The caller holds the history lock, so no live event can slip in between.
    pub(super) fn catch_up(&self, history: &History, head: Cursor) -> bool {
        let mut queue = lock(&self.queue);
        if !queue.lagging {
            return false;
        }
        if queue.last_seq + 1 < history.first_seq() {
            queue.items.push_back(Delivery::Resync {
                cursor: head,
                reason: ResyncReason::Expired,
            });
            queue.last_seq = head.seq;
            queue.lagging = false;
            return true;
        }
        let from = queue.last_seq + 1;
        for (scanned, message) in history.since(from).enumerate() {
            if scanned == CATCH_UP_SCAN {
                return false;
            }
            if self.matches(&message.topic) {
                if !queue.has_room(&self.limits, cost(message)) {
                    return false;
                }
                queue.push(message);
            }
            if let Some(cursor) = message.cursor {
                queue.last_seq = cursor.seq;
            }
        }
        queue.lagging = false;
        false
    }
}

/// A live subscription. Dropping it unregisters it from the hub at once.
pub struct Subscription {
    hub: Hub,
    shared: Arc<Shared>,
    start: Cursor,
}

impl Subscription {
    pub(super) fn new(hub: Hub, shared: Arc<Shared>, start: Cursor) -> Self {
        Self { hub, shared, start }
    }

    /// Returns where the subscription starts: the events after this cursor are delivered. It is the
    /// subscriber's own cursor when it resumes in this epoch, the newest event otherwise.
    pub fn start(&self) -> Cursor {
        self.start
    }

    /// Returns the filters this subscription was made with.
    pub fn filters(&self) -> &[Filter] {
        &self.shared.filters
    }

    /// Takes the oldest queued telemetry, skipping the events queued before it, or a value the
    /// queue conflated. Transports that send telemetry on a path of its own (WebTransport
    /// datagrams) use this while their event path is blocked.
    pub fn try_recv_telemetry(&mut self) -> Option<Arc<Message>> {
        let mut queue = lock(&self.shared.queue);
        let position = queue
            .items
            .iter()
            .position(|d| matches!(d, Delivery::Message(m) if m.class == super::Class::Telemetry));
        if let Some(Delivery::Message(message)) = position.and_then(|i| queue.items.remove(i)) {
            queue.bytes -= cost(&message);
            return Some(message);
        }
        let topic = queue.conflated.keys().next()?.clone();
        queue.conflated.remove(&topic)
    }

    /// Waits for the next telemetry, leaving events queued.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe, like [`Subscription::recv`].
    pub async fn recv_telemetry(&mut self) -> Arc<Message> {
        loop {
            if let Some(message) = self.try_recv_telemetry() {
                return message;
            }
            self.shared.notify.notified().await;
        }
    }

    /// Returns the next delivery if one is ready, reading missed events from history first
    /// when the subscriber is lagging.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        loop {
            {
                let mut queue = lock(&self.shared.queue);
                if let Some(delivery) = queue.pop() {
                    return Some(delivery);
                }
                if !queue.lagging {
                    return None;
                }
            }
            self.hub.catch_up(&self.shared);
        }
    }

    /// Waits for the next delivery.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: a delivery is removed from the queue only when this returns it.
    pub async fn recv(&mut self) -> Delivery {
        loop {
            if let Some(delivery) = self.try_recv() {
                return delivery;
            }
            self.shared.notify.notified().await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(&self.shared);
    }
}
