//! The one task behind each [`Client`](super::Client): it owns the connection, writes
//! commands, matches replies to them by `id`, routes deliveries to subscriptions and opens a
//! new connection after a drop.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher as _, Hasher as _};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::link::{Link, LinkEvent};
use super::protocol::{self, ServerMessage};
use super::state::{End, Shared};
use super::{ConnectorInner, Delivery, Error, Position};
use crate::cursor::Cursor;
use crate::topic::Filter;

/// Commands kept while the connection is down, to be sent once it is back. Beyond this, new
/// commands fail at once instead of piling up.
const MAX_DEFERRED: usize = 1024;

/// Events remembered as "more copies to come" (see [`Driver::route_event`]). When more are
/// remembered, the oldest are forgotten, and a late copy of those may be delivered twice.
const MAX_COPIES: usize = 4096;

/// First reconnection delay, doubled after each failed attempt up to
/// [`Options::reconnect_delay_max`](super::Options::reconnect_delay_max).
const RECONNECT_DELAY_MIN: Duration = Duration::from_millis(100);

pub(crate) type ReplySender = oneshot::Sender<Result<Option<String>, Error>>;

/// A request from a [`Client`](super::Client) handle.
pub(crate) enum Request {
    Subscribe(SubscribeRequest),
    /// A command with its `id`, encoded by the caller; the reply goes to `reply`.
    Command {
        id: u64,
        body: Bytes,
        reply: ReplySender,
    },
    Close(oneshot::Sender<()>),
}

pub(crate) struct SubscribeRequest {
    pub local: u64,
    pub filters: Vec<Filter>,
    pub cursor: Option<String>,
    pub sender: mpsc::Sender<Box<Delivery>>,
    /// Receives the cursor of the `subscribed` reply.
    pub reply: oneshot::Sender<Result<String, Error>>,
}

/// The reply that a command sent on the current connection waits for, and its recipient.
enum Pending {
    Reply(ReplySender),
    /// A `subscribe` of the subscription with this local id.
    Subscribe(u64),
    Unsubscribe,
    /// An `alias` sent again after a reconnection.
    AliasRestore {
        topic: Arc<str>,
        generation: u64,
    },
}

/// A local subscription.
struct Entry {
    local: u64,
    filters: Vec<Filter>,
    sender: mpsc::Sender<Box<Delivery>>,
    /// Position to resume from after a drop.
    resume: Position,
    /// Start of the server subscription on the current connection.
    start: Option<Cursor>,
    /// The server's id of the subscription on the current connection, once confirmed.
    server_sub: Option<u64>,
    /// The caller of `subscribe`, until the first `subscribed` reply.
    waiter: Option<oneshot::Sender<Result<String, Error>>>,
}

impl Entry {
    fn matches(&self, topic: &str) -> bool {
        self.filters.iter().any(|f| f.matches_name(topic))
    }

    /// Tests whether the server subscription started before the event `at`, so that it sends
    /// a copy of that event. An unknown start counts as before.
    fn started_before(&self, at: Cursor) -> bool {
        match self.start {
            Some(start) if start.epoch == at.epoch => start.seq < at.seq,
            _ => true,
        }
    }
}

/// The subscriptions a delivery goes to, as indexes into `Driver::entries`.
enum Targets {
    None,
    One([usize; 1]),
    Many(Vec<usize>),
}

/// Result of [`Driver::serve`].
enum Outcome {
    /// The connection dropped, for this reason.
    Dropped(String),
    /// `close` was called, or every handle is gone (`None`).
    Close(Option<oneshot::Sender<()>>),
}

/// Result of [`Driver::reconnect`].
enum Reconnected {
    Link(Link),
    Close(Option<oneshot::Sender<()>>),
}

pub(crate) struct Driver {
    connector: Arc<ConnectorInner>,
    shared: Arc<Shared>,
    requests: mpsc::Receiver<Box<Request>>,
    /// Whether a [`Client`](super::Client) handle still exists.
    requests_open: bool,
    /// Local ids of dropped subscriptions.
    drops: mpsc::UnboundedReceiver<u64>,
    entries: Vec<Entry>,
    pending: HashMap<u64, Pending>,
    deferred: VecDeque<(u64, Bytes, ReplySender)>,
    /// Sequence number of an event → copies of it still expected (see [`Self::route_event`]).
    copies: BTreeMap<u64, u32>,
}

impl Driver {
    pub(crate) fn new(
        connector: Arc<ConnectorInner>,
        shared: Arc<Shared>,
        requests: mpsc::Receiver<Box<Request>>,
        drops: mpsc::UnboundedReceiver<u64>,
    ) -> Self {
        Self {
            connector,
            shared,
            requests,
            requests_open: true,
            drops,
            entries: Vec::new(),
            pending: HashMap::new(),
            deferred: VecDeque::new(),
            copies: BTreeMap::new(),
        }
    }

    /// Serves `link`, which [`Shared`] already describes, and every later connection.
    pub(crate) async fn run(mut self, mut link: Link) {
        let mut attached = true;
        loop {
            self.on_connected(&mut link, attached);
            attached = false;
            match self.serve(&mut link).await {
                Outcome::Close(done) => {
                    link.close().await;
                    self.finish(End::Closed, done);
                    return;
                }
                Outcome::Dropped(reason) => {
                    drop(link);
                    self.on_dropped(&reason);
                    if !self.connector.options.reconnect {
                        debug!(%reason, "connection ended");
                        self.finish(End::Lost(reason), None);
                        return;
                    }
                    info!(%reason, "connection dropped, reconnecting");
                    // Boxed: the connection attempts are the largest state of this task, and
                    // an idle client never needs them.
                    match Box::pin(self.reconnect()).await {
                        Reconnected::Link(next) => link = next,
                        Reconnected::Close(done) => {
                            self.finish(End::Closed, done);
                            return;
                        }
                    }
                }
            }
        }
    }

    fn next_id(&self) -> u64 {
        self.shared.next_id()
    }

    /// Subscribes every local subscription again from its last cursor, registers the datagram
    /// aliases again and sends the commands that waited for a connection.
    fn on_connected(&mut self, link: &mut Link, attached: bool) {
        if !attached {
            self.shared.attach(link);
        }
        self.copies.clear();
        for index in 0..self.entries.len() {
            let id = self.next_id();
            let entry = &mut self.entries[index];
            entry.server_sub = None;
            entry.start = entry.resume.at();
            let filters: Vec<&str> = entry.filters.iter().map(Filter::as_str).collect();
            link.send(protocol::subscribe(id, &filters, entry.resume.text()));
            self.pending.insert(id, Pending::Subscribe(entry.local));
        }
        if link.webtransport().is_some() {
            let (generation, aliases) = self.shared.aliases_to_restore();
            for (value, topic) in aliases {
                let id = self.next_id();
                link.send(protocol::alias(id, value, &topic));
                self.pending
                    .insert(id, Pending::AliasRestore { topic, generation });
            }
        }
        while let Some((id, body, reply)) = self.deferred.pop_front() {
            self.pending.insert(id, Pending::Reply(reply));
            link.send(body);
        }
    }

    async fn serve(&mut self, link: &mut Link) -> Outcome {
        loop {
            tokio::select! {
                request = self.requests.recv(), if self.requests_open => match request {
                    Some(request) => {
                        if let Some(done) = self.on_request(*request, Some(&mut *link)) {
                            return Outcome::Close(Some(done));
                        }
                    }
                    None => self.requests_open = false,
                },
                Some(local) = self.drops.recv() => self.on_drop(local, Some(&mut *link)),
                event = link.next() => match event {
                    LinkEvent::Message(frame) => self.on_message(frame, link).await,
                    LinkEvent::Datagram(datagram) => self.on_datagram(datagram).await,
                    LinkEvent::Closed(reason) => return Outcome::Dropped(reason),
                },
            }
            if !self.requests_open && self.entries.is_empty() {
                return Outcome::Close(None);
            }
        }
    }

    /// Handles a request; returns the waiter of `close` when the client should close.
    fn on_request(
        &mut self,
        request: Request,
        link: Option<&mut Link>,
    ) -> Option<oneshot::Sender<()>> {
        match request {
            Request::Close(done) => return Some(done),
            Request::Command { id, body, reply } => match link {
                Some(link) => {
                    self.pending.insert(id, Pending::Reply(reply));
                    link.send(body);
                }
                None if self.deferred.len() < MAX_DEFERRED => {
                    self.deferred.push_back((id, body, reply));
                }
                None => {
                    let _ = reply.send(Err(Error::ConnectionLost {
                        reason: format!(
                            "the connection is down and {MAX_DEFERRED} commands already wait \
                             for it"
                        ),
                    }));
                }
            },
            Request::Subscribe(request) => {
                let mut entry = Entry {
                    local: request.local,
                    filters: request.filters,
                    sender: request.sender,
                    resume: Position::default(),
                    start: None,
                    server_sub: None,
                    waiter: Some(request.reply),
                };
                if let Some(cursor) = request.cursor {
                    entry.resume.set(&cursor);
                }
                if let Some(link) = link {
                    let id = self.next_id();
                    entry.start = entry.resume.at();
                    let filters: Vec<&str> = entry.filters.iter().map(Filter::as_str).collect();
                    link.send(protocol::subscribe(id, &filters, entry.resume.text()));
                    self.pending.insert(id, Pending::Subscribe(entry.local));
                }
                self.entries.push(entry);
            }
        }
        None
    }

    /// Forgets a dropped subscription and ends it on the server.
    fn on_drop(&mut self, local: u64, link: Option<&mut Link>) {
        let Some(index) = self.entries.iter().position(|e| e.local == local) else {
            return;
        };
        let entry = self.entries.swap_remove(index);
        // A subscription still waiting for its `subscribed` reply is ended when the reply
        // arrives, in `on_reply`.
        if let (Some(sub), Some(link)) = (entry.server_sub, link) {
            self.unsubscribe(sub, link);
        }
    }

    fn unsubscribe(&mut self, sub: u64, link: &mut Link) {
        let id = self.next_id();
        self.pending.insert(id, Pending::Unsubscribe);
        link.send(protocol::unsubscribe(id, sub));
    }

    async fn on_message(&mut self, frame: Bytes, link: &mut Link) {
        let message = match protocol::parse(&frame) {
            Ok(message) => message,
            Err(e) => {
                warn!(error = %e, "ignoring a message the client does not understand");
                return;
            }
        };
        match message {
            ServerMessage::Reply { id, sub, cursor } => self.on_reply(id, sub, cursor, link),
            ServerMessage::Error { id, code, message } => self.on_error(id, code, message),
            ServerMessage::Resync {
                sub,
                cursor,
                reason,
            } => self.on_resync(sub, cursor, reason).await,
            ServerMessage::Event {
                topic,
                cursor,
                event,
                payload,
            } => self.route_event(topic, cursor, event, payload).await,
            ServerMessage::Telemetry {
                topic,
                event,
                payload,
            } => {
                self.route_telemetry(Delivery::Telemetry {
                    topic,
                    event,
                    payload,
                })
                .await
            }
        }
    }

    async fn on_datagram(&mut self, datagram: Bytes) {
        match protocol::parse_datagram(&datagram) {
            Some((topic, payload)) => {
                self.route_telemetry(Delivery::Telemetry {
                    topic,
                    event: None,
                    payload,
                })
                .await
            }
            None => debug!(len = datagram.len(), "ignoring a malformed datagram"),
        }
    }

    fn on_reply(
        &mut self,
        id: Option<u64>,
        sub: Option<u64>,
        cursor: Option<String>,
        link: &mut Link,
    ) {
        let Some(pending) = id.and_then(|id| self.pending.remove(&id)) else {
            return;
        };
        match pending {
            Pending::Reply(reply) => {
                let _ = reply.send(Ok(cursor));
            }
            Pending::Unsubscribe => {}
            Pending::AliasRestore { topic, generation } => {
                self.shared.alias_ready(&topic, generation);
            }
            Pending::Subscribe(local) => {
                let Some(entry) = self.entries.iter_mut().find(|e| e.local == local) else {
                    // Dropped while the subscription was being made.
                    if let Some(sub) = sub {
                        self.unsubscribe(sub, link);
                    }
                    return;
                };
                entry.server_sub = sub;
                if let Some(cursor) = &cursor {
                    let at = cursor.parse().ok();
                    entry.start = at;
                    entry.resume.advance(cursor, at);
                }
                if let Some(waiter) = entry.waiter.take() {
                    let _ = waiter.send(Ok(cursor.unwrap_or_default()));
                }
            }
        }
    }

    fn on_error(&mut self, id: Option<u64>, code: String, message: String) {
        let Some(pending) = id.and_then(|id| self.pending.remove(&id)) else {
            warn!(%code, %message, "the server rejected a command");
            return;
        };
        match pending {
            Pending::Reply(reply) => {
                let _ = reply.send(Err(Error::Server { code, message }));
            }
            Pending::Subscribe(local) => {
                let Some(index) = self.entries.iter().position(|e| e.local == local) else {
                    return;
                };
                let entry = self.entries.swap_remove(index);
                match entry.waiter {
                    Some(waiter) => {
                        let _ = waiter.send(Err(Error::Server { code, message }));
                    }
                    None => warn!(
                        %code,
                        %message,
                        "the server rejected a subscription made again after a reconnection; \
                         the subscription ends"
                    ),
                }
            }
            Pending::AliasRestore { topic, .. } => {
                warn!(%topic, %code, %message, "the server rejected a datagram alias");
                self.shared.remove_alias(&topic);
            }
            Pending::Unsubscribe => debug!(%code, %message, "unsubscribe rejected"),
        }
    }

    async fn on_resync(&mut self, sub: Option<u64>, cursor: String, reason: String) {
        let Some(entry) = self
            .entries
            .iter_mut()
            .find(|e| e.server_sub.is_some() && e.server_sub == sub)
        else {
            return;
        };
        // Over WebTransport, events that follow the signal may have arrived first; the
        // position never moves back to the signal's cursor past them.
        entry.resume.advance(&cursor, cursor.parse().ok());
        let _ = entry
            .sender
            .send(Box::new(Delivery::Resync { cursor, reason }))
            .await;
    }

    /// Delivers an event to the local subscriptions whose filters match its topic.
    ///
    /// Envelopes do not name their subscription, and the server sends an event once per
    /// subscription it matches. When several local subscriptions match, the first copy goes to
    /// all of them, and the copies that the other server subscriptions send are counted off
    /// and dropped. A subscription whose server side started after the event is not counted.
    async fn route_event(
        &mut self,
        topic: String,
        cursor: String,
        event: Option<String>,
        payload: Bytes,
    ) {
        let at: Option<Cursor> = cursor.parse().ok();
        // A copy already counted off: every subscription it was for has the event.
        if let Some(at) = at {
            if let Some(left) = self.copies.get_mut(&at.seq) {
                *left -= 1;
                if *left == 0 {
                    self.copies.remove(&at.seq);
                }
                return;
            }
        }

        let matching = self.entries.iter().filter(|e| e.matches(&topic)).count();
        if matching == 0 {
            return;
        }

        // Whether every matching subscription gets the event, or only those whose server
        // subscription started before it.
        let mut only_started = false;
        if let (Some(at), true) = (at, matching > 1) {
            let started = self
                .entries
                .iter()
                .filter(|e| e.matches(&topic) && e.started_before(at))
                .count();
            if started > 1 {
                self.remember_copies(at.seq, started as u32 - 1);
            }
            only_started = started > 0;
        }

        let is_target = |entry: &Entry| {
            entry.matches(&topic)
                && (!only_started || at.is_some_and(|at| entry.started_before(at)))
        };
        let targets = self.targets(is_target);
        let delivery = Delivery::Event {
            topic,
            cursor,
            event,
            payload,
        };
        self.deliver(&targets, delivery, at).await;
    }

    /// Indexes of the entries that `is_target` selects. Inline for one entry, the usual case,
    /// so that a delivery to one subscription allocates no list.
    fn targets(&self, is_target: impl Fn(&Entry) -> bool) -> Targets {
        let mut targets = Targets::None;
        for (index, entry) in self.entries.iter().enumerate() {
            if !is_target(entry) {
                continue;
            }
            targets = match targets {
                Targets::None => Targets::One([index]),
                Targets::One([first]) => Targets::Many(vec![first, index]),
                Targets::Many(mut list) => {
                    list.push(index);
                    Targets::Many(list)
                }
            };
        }
        targets
    }

    fn remember_copies(&mut self, seq: u64, copies: u32) {
        self.copies.insert(seq, copies);
        while self.copies.len() > MAX_COPIES {
            self.copies.pop_first();
        }
    }

    /// Delivers telemetry to every local subscription whose filters match its topic. When
    /// several match, each gets every copy the server sends, because telemetry has no cursor
    /// to tell copies apart.
    async fn route_telemetry(&mut self, delivery: Delivery) {
        let Delivery::Telemetry { topic, .. } = &delivery else {
            return;
        };
        let targets = self.targets(|entry| entry.matches(topic));
        self.deliver(&targets, delivery, None).await;
    }

    /// Sends `delivery` to the subscriptions at `targets`, waiting while a subscription's
    /// buffer is full, and moves their resume positions to an event's cursor.
    async fn deliver(&mut self, targets: &Targets, delivery: Delivery, at: Option<Cursor>) {
        let targets: &[usize] = match targets {
            Targets::None => &[],
            Targets::One(one) => one,
            Targets::Many(list) => list,
        };
        let Some((&last, others)) = targets.split_last() else {
            return;
        };
        if let Delivery::Event { cursor, .. } = &delivery {
            for &index in targets {
                self.entries[index].resume.advance(cursor, at);
            }
        }
        for &index in others {
            let _ = self.entries[index]
                .sender
                .send(Box::new(delivery.clone()))
                .await;
        }
        // A failed send means the subscription was dropped; its drop notice is on its way.
        let _ = self.entries[last].sender.send(Box::new(delivery)).await;
    }

    /// Fails the commands that waited for a reply on the dropped connection. Subscriptions
    /// stay, to be made again on the next connection.
    fn on_dropped(&mut self, reason: &str) {
        self.shared.detach();
        for (_, pending) in self.pending.drain() {
            if let Pending::Reply(reply) = pending {
                let _ = reply.send(Err(Error::ConnectionLost {
                    reason: reason.to_owned(),
                }));
            }
        }
        for entry in &mut self.entries {
            entry.server_sub = None;
        }
    }

    /// Connects again with exponential backoff and jitter, WebTransport first, while serving
    /// requests: commands wait for the connection, subscriptions are recorded.
    async fn reconnect(&mut self) -> Reconnected {
        let max = self.connector.options.reconnect_delay_max;
        let mut attempt: u32 = 0;
        loop {
            let delay = backoff(attempt, max);
            attempt += 1;
            let connector = self.connector.clone();
            let connecting = async move {
                tokio::time::sleep(delay).await;
                connector.connect_once().await
            };
            tokio::pin!(connecting);
            loop {
                tokio::select! {
                    result = &mut connecting => match result {
                        Ok(link) => {
                            info!(attempts = attempt, transport = %link.transport(), "reconnected");
                            return Reconnected::Link(link);
                        }
                        Err(e) => {
                            // Logged at 1, 2, 4, 8... failed attempts, so a long outage does
                            // not flood the log.
                            if attempt.is_power_of_two() {
                                warn!(error = %e, attempts = attempt, "reconnection failed, retrying");
                            } else {
                                debug!(error = %e, attempts = attempt, "reconnection failed, retrying");
                            }
                            break;
                        }
                    },
                    request = self.requests.recv(), if self.requests_open => match request {
                        Some(request) => {
                            if let Some(done) = self.on_request(*request, None) {
                                return Reconnected::Close(Some(done));
                            }
                        }
                        None => self.requests_open = false,
                    },
                    Some(local) = self.drops.recv() => self.on_drop(local, None),
                }
                if !self.requests_open && self.entries.is_empty() {
                    return Reconnected::Close(None);
                }
            }
        }
    }

    /// Ends the client: subscriptions end, and everything still waiting fails with `end`.
    fn finish(mut self, end: End, done: Option<oneshot::Sender<()>>) {
        self.shared.end(end.clone());
        for entry in self.entries.drain(..) {
            if let Some(waiter) = entry.waiter {
                let _ = waiter.send(Err(end.error()));
            }
        }
        for (_, pending) in self.pending.drain() {
            if let Pending::Reply(reply) = pending {
                let _ = reply.send(Err(end.error()));
            }
        }
        for (_, _, reply) in self.deferred.drain(..) {
            let _ = reply.send(Err(end.error()));
        }
        self.requests.close();
        while let Ok(request) = self.requests.try_recv() {
            match *request {
                Request::Subscribe(request) => {
                    let _ = request.reply.send(Err(end.error()));
                }
                Request::Command { reply, .. } => {
                    let _ = reply.send(Err(end.error()));
                }
                Request::Close(waiter) => {
                    let _ = waiter.send(());
                }
            }
        }
        if let Some(done) = done {
            let _ = done.send(());
        }
    }
}

/// Delay before reconnection attempt `attempt` (0 for the first): 100 ms doubled per attempt
/// up to `max`, then scaled by a random factor between 0.5 and 1, so that clients dropped
/// together do not reconnect in step.
fn backoff(attempt: u32, max: Duration) -> Duration {
    let delay = RECONNECT_DELAY_MIN
        .saturating_mul(1u32 << attempt.min(20))
        .min(max);
    delay.mul_f64(0.5 + 0.5 * random_fraction())
}

/// Returns a random number in [0, 1), from the standard library's randomly keyed hasher.
fn random_fraction() -> f64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap() {
        let max = Duration::from_secs(10);
        for attempt in 0..40 {
            let delay = backoff(attempt, max);
            let full = RECONNECT_DELAY_MIN
                .saturating_mul(1u32 << attempt.min(20))
                .min(max);
            assert!(delay >= full / 2, "attempt {attempt}: {delay:?}");
            assert!(delay <= full, "attempt {attempt}: {delay:?}");
        }
        assert!(backoff(30, max) >= Duration::from_secs(5));
    }
}
