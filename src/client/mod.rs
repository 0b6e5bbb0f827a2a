//! A hubcast client for devices and Rust services, over WebTransport with a WebSocket
//! fallback.
//!
//! ```no_run
//! # async fn example() -> Result<(), hubcast::client::Error> {
//! use hubcast::client::{Connector, Delivery, Options};
//!
//! let options = Options::new(
//!     Some("https://127.0.0.1:4433/v1/wt".to_owned()),
//!     Some("ws://127.0.0.1:8080/v1/ws".to_owned()),
//! );
//! let connector = Connector::new(options)?;
//! let client = connector.connect().await?;
//! let mut subscription = client.subscribe(&["sensors/#"], None).await?;
//! let cursor = client.publish("sensors/kitchen/temp", b"21.5", Some("reading")).await?;
//! while let Some(delivery) = subscription.next().await {
//!     if let Delivery::Event { cursor: seen, .. } = &delivery {
//!         if *seen == cursor {
//!             break;
//!         }
//!     }
//! }
//! client.close().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Connections
//!
//! A [`Connector`] owns the options and one QUIC endpoint (one UDP socket), and opens any
//! number of connections through it. Each [`Client`] is one connection: WebTransport when it
//! connects within [`Options::connect_timeout`], WebSocket otherwise. One task per client runs
//! the connection.
//!
//! # Commands
//!
//! Calls on one client may run concurrently: each command carries an `id`, and the reply with
//! that `id` completes the call. The server handles one connection's commands in order.
//!
//! # Deliveries and back-pressure
//!
//! Each [`Subscription`] buffers up to [`Options::subscription_capacity`] deliveries. When a
//! subscription's buffer is full, the client stops reading the whole connection until there is
//! room, so replies and the other subscriptions of that client wait too. The server then treats
//! the client as a slow reader: it queues events and reads missed ones back from history, keeps
//! only the newest telemetry per topic, and closes a connection whose writes stall for its
//! `--write-timeout` (protocol section 3.3). With [`Options::reconnect`] the client then
//! resumes every subscription where it stopped. A caller that waits for a reply, such as a
//! `publish`, while it does not read a full subscription of the same client waits until that
//! close.
//!
//! Envelopes do not name their subscription. Each delivery goes to every subscription of the
//! client whose filters match its topic. When several match, an event reaches each of them
//! once, but telemetry arrives once per matching subscription.
//!
//! # Resuming
//!
//! The client tracks each subscription's position: the newest event cursor it routed to the
//! subscription, the cursor of the `subscribed` reply, or that of a resync signal. The
//! connection may drop for any reason but [`Client::close`], including a WebSocket close 4008
//! or a WebTransport session close 0x14 for a slow reader. It then reconnects with exponential
//! backoff and subscribes again from those positions, so no event is lost or repeated while
//! history still reaches back. After a server restart the server answers with a resync signal of reason
//! `epoch`, which [`Subscription::next`] returns.
//!
//! NOTE: over WebTransport each topic travels on its own stream and streams are not ordered
//! against each other (protocol section 9.4). When a subscription spans several topics, an
//! event still in flight on one stream when the connection drops is lost if a later event
//! arrived on another stream first. WebSocket has no such gap.

pub mod cli;
mod driver;
mod error;
mod fetch;
mod link;
mod options;
mod protocol;
mod state;
mod ws;
mod wt;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

pub use error::Error;
pub use fetch::{fetch_cert_info, CertInfo};
pub use options::{
    parse_cert_hash, Options, Transport, DEFAULT_CONNECT_TIMEOUT, DEFAULT_KEEP_ALIVE,
    DEFAULT_RECONNECT_DELAY_MAX, DEFAULT_SUBSCRIPTION_CAPACITY,
};

use crate::cursor::Cursor;
use crate::topic::{Filter, Topic};
use driver::{Driver, Request, SubscribeRequest};
use link::Link;
use protocol::Class;
use state::{Alias, Shared, MAX_ALIASES};
use wt::WtEndpoint;

/// Requests queued from the client handles to the connection task. Beyond this, calls wait.
const REQUEST_QUEUE: usize = 64;

/// One delivery of a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// An event, numbered by its cursor.
    Event {
        topic: String,
        cursor: String,
        event: Option<String>,
        payload: Bytes,
    },
    /// A telemetry value. Values that arrive as WebTransport datagrams carry no event name.
    Telemetry {
        topic: String,
        event: Option<String>,
        payload: Bytes,
    },
    /// Events between the subscription's position and `cursor` cannot be delivered; `reason`
    /// is `epoch` (the server restarted) or `expired` (history no longer reaches back). The
    /// subscription continues after `cursor`.
    Resync { cursor: String, reason: String },
}

/// A position in the event sequence: a cursor's text, and its parsed form when the text has
/// the current server's format.
#[derive(Debug, Default, Clone)]
pub(crate) struct Position {
    text: Option<String>,
    at: Option<Cursor>,
}

impl Position {
    fn text(&self) -> Option<&str> {
        self.text.as_deref()
    }

    fn at(&self) -> Option<Cursor> {
        self.at
    }

    fn set(&mut self, cursor: &str) {
        self.text = Some(cursor.to_owned());
        self.at = cursor.parse().ok();
    }

    /// Moves to `cursor` unless it is an older position of the same epoch. A cursor of another
    /// epoch, or one that does not parse, always replaces the position.
    fn advance(&mut self, cursor: &str, at: Option<Cursor>) {
        if let (Some(old), Some(new)) = (self.at, at) {
            if old.epoch == new.epoch && new.seq <= old.seq {
                return;
            }
        }
        self.text = Some(cursor.to_owned());
        self.at = at;
    }
}

/// Opens connections to one server. Build it once and reuse it, because it owns the options
/// and the one QUIC endpoint that all its WebTransport connections share.
#[derive(Clone)]
pub struct Connector {
    inner: Arc<ConnectorInner>,
}

pub(crate) struct ConnectorInner {
    options: Options,
    webtransport: Option<(String, WtEndpoint)>,
    websocket: Option<String>,
}

impl Connector {
    /// Checks the options and binds the QUIC endpoint when a WebTransport URL is set. Must be
    /// called inside a Tokio runtime.
    ///
    /// # Errors
    ///
    /// Returns [`Error::MissingUrl`], [`Error::InvalidUrl`] or [`Error::InvalidOptions`] for
    /// unusable options, and [`Error::Connect`] when no UDP socket can be bound.
    pub fn new(options: Options) -> Result<Self, Error> {
        let checked = options.validate()?;
        let webtransport = match checked.webtransport {
            Some(url) => {
                if tokio::runtime::Handle::try_current().is_err() {
                    return Err(Error::InvalidOptions(
                        "Connector::new was called outside a Tokio runtime: call it from async \
                         code, because it binds the QUIC endpoint"
                            .to_owned(),
                    ));
                }
                let endpoint = WtEndpoint::new(&options, checked.cert_hash_url)?;
                Some((url, endpoint))
            }
            None => None,
        };
        Ok(Self {
            inner: Arc::new(ConnectorInner {
                options,
                webtransport,
                websocket: checked.websocket,
            }),
        })
    }

    /// Opens a connection: WebTransport first, then WebSocket. This first attempt is not
    /// retried; reconnection applies once the client is connected.
    ///
    /// # Errors
    ///
    /// Returns [`Error::Connect`] with the reason of each transport that failed.
    pub async fn connect(&self) -> Result<Client, Error> {
        let link = self.inner.connect_once().await?;
        let shared = Arc::new(Shared::new(&link));
        let (requests, requests_rx) = mpsc::channel(REQUEST_QUEUE);
        let (drops, drops_rx) = mpsc::unbounded_channel();
        let driver = Driver::new(self.inner.clone(), shared.clone(), requests_rx, drops_rx);
        tokio::spawn(driver.run(link));
        Ok(Client {
            inner: Arc::new(ClientInner {
                requests,
                drops,
                shared,
                next_local: AtomicU64::new(1),
                subscription_capacity: self.inner.options.subscription_capacity,
                telemetry_aliases: self.inner.options.telemetry_aliases,
            }),
        })
    }

    /// Waits until every WebTransport connection of this connector has closed and sent its
    /// close packet, for at most `timeout`. Call it after [`Client::close`] before the process
    /// exits, so the server learns of the close at once.
    pub async fn wait_idle(&self, timeout: Duration) {
        if let Some((_, endpoint)) = &self.inner.webtransport {
            endpoint.wait_idle(timeout).await;
        }
    }
}

impl ConnectorInner {
    /// Tries each allowed transport once, WebTransport first.
    pub(crate) async fn connect_once(&self) -> Result<Link, Error> {
        let timeout = self.options.connect_timeout;
        let mut failures = Vec::new();
        if let Some((url, endpoint)) = &self.webtransport {
            match tokio::time::timeout(timeout, endpoint.connect(url)).await {
                Ok(Ok(link)) => return Ok(Link::WebTransport(link)),
                Ok(Err(e)) => failures.push(format!("WebTransport {url}: {e}")),
                Err(_) => failures.push(format!("WebTransport {url}: timed out after {timeout:?}")),
            }
        }
        if let Some(url) = &self.websocket {
            match tokio::time::timeout(timeout, ws::connect(url, self.options.keep_alive)).await {
                Ok(Ok(link)) => {
                    if !failures.is_empty() {
                        // The reason WebTransport failed is otherwise lost with the fallback.
                        let reason = failures.join("; ");
                        tracing::info!(%reason, "WebTransport failed; using WebSocket");
                    }
                    return Ok(Link::WebSocket(Box::new(link)));
                }
                Ok(Err(e)) => failures.push(format!("WebSocket {url}: {e}")),
                Err(_) => failures.push(format!("WebSocket {url}: timed out after {timeout:?}")),
            }
        }
        Err(Error::Connect(failures.join("; ")))
    }
}

/// A handle to one connection. Clones share the connection, which closes on [`Client::close`]
/// or once every handle and every [`Subscription`] is dropped.
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    requests: mpsc::Sender<Box<Request>>,
    drops: mpsc::UnboundedSender<u64>,
    shared: Arc<Shared>,
    next_local: AtomicU64,
    subscription_capacity: usize,
    telemetry_aliases: bool,
}

/// Form of a telemetry datagram about to be sent.
enum DatagramPlan {
    Alias(u16),
    Inline,
    Register { alias: u16, generation: u64 },
}

impl Client {
    /// Returns the transport of the current connection. It may change when the client
    /// reconnects.
    pub fn transport(&self) -> Transport {
        self.inner.shared.lock().transport
    }

    /// Telemetry values this client has sent as WebTransport datagrams.
    pub fn telemetry_datagrams(&self) -> u64 {
        self.inner.shared.datagrams_sent.load(Ordering::Relaxed)
    }

    async fn request(&self, request: Request) -> Result<(), Error> {
        self.inner
            .requests
            .send(Box::new(request))
            .await
            .map_err(|_| self.inner.shared.ended_error())
    }

    /// Sends a command and waits for its reply; returns the reply's `cursor`.
    async fn command(&self, encode: impl FnOnce(u64) -> Bytes) -> Result<Option<String>, Error> {
        let id = self.inner.shared.next_id();
        let (reply, receiver) = oneshot::channel();
        self.request(Request::Command {
            id,
            body: encode(id),
            reply,
        })
        .await?;
        receiver
            .await
            .map_err(|_| self.inner.shared.ended_error())?
    }

    /// Subscribes to the topics matching `filters`, after `cursor` when given, and returns once
    /// the server has confirmed the subscription.
    ///
    /// # Errors
    ///
    /// Returns [`Error::InvalidFilter`] for a filter that breaks the topic rules, and
    /// [`Error::Server`] with the server's code, such as `invalid_cursor` or `limit_exceeded`.
    pub async fn subscribe(
        &self,
        filters: &[&str],
        cursor: Option<&str>,
    ) -> Result<Subscription, Error> {
        let filters = filters
            .iter()
            .map(|text| {
                Filter::parse(text).map_err(|source| Error::InvalidFilter {
                    filter: (*text).to_owned(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let local = self.inner.next_local.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = mpsc::channel(self.inner.subscription_capacity);
        let (reply, confirmed) = oneshot::channel();
        // Created before the request, so that a failed subscribe still removes its entry.
        let mut subscription = Subscription {
            receiver,
            position: Position::default(),
            local,
            drops: self.inner.drops.clone(),
        };
        self.request(Request::Subscribe(SubscribeRequest {
            local,
            filters,
            cursor: cursor.map(str::to_owned),
            sender,
            reply,
        }))
        .await?;
        let start = confirmed
            .await
            .map_err(|_| self.inner.shared.ended_error())??;
        if !start.is_empty() {
            subscription.position.set(&start);
        }
        Ok(subscription)
    }

    /// Publishes an event and returns its cursor.
    ///
    /// # Errors
    ///
    /// Returns [`Error::Server`] with the server's code, such as `invalid_topic`,
    /// `invalid_event_name` or `payload_too_large`, and [`Error::ConnectionLost`] when the
    /// connection ended before the reply: the event may or may not have been published.
    pub async fn publish(
        &self,
        topic: &str,
        payload: &[u8],
        event: Option<&str>,
    ) -> Result<String, Error> {
        self.command(|id| protocol::publish(id, topic, payload, event, Class::Event))
            .await?
            .ok_or_else(|| Error::Protocol("the ack of a published event has no cursor".into()))
    }

    /// Publishes a telemetry value. Over WebTransport it goes as a datagram, with no reply and
    /// no delivery guarantee, naming its topic by an alias that the client registers on first
    /// use of the topic. A value too large for a datagram, or any value over WebSocket, goes as
    /// a `publish` command and waits for the server's acknowledgement.
    ///
    /// # Errors
    ///
    /// Returns [`Error::InvalidTopic`] or [`Error::Server`] for an invalid topic, and the
    /// errors of [`Client::publish`] when the command is used.
    pub async fn publish_telemetry(&self, topic: &str, payload: &[u8]) -> Result<(), Error> {
        if self.send_datagram(topic, payload).await? {
            return Ok(());
        }
        self.publish_telemetry_acked(topic, payload).await
    }

    /// Publishes a telemetry value with a `publish` command on every transport and waits for
    /// the server's acknowledgement.
    ///
    /// # Errors
    ///
    /// As [`Client::publish`].
    pub async fn publish_telemetry_acked(&self, topic: &str, payload: &[u8]) -> Result<(), Error> {
        self.command(|id| protocol::publish(id, topic, payload, None, Class::Telemetry))
            .await
            .map(drop)
    }

    /// Sends a telemetry datagram; returns `false` when the value must go as a command instead.
    async fn send_datagram(&self, topic: &str, payload: &[u8]) -> Result<bool, Error> {
        let (session, plan) = {
            let mut state = self.inner.shared.lock();
            let Some(session) = state.session.clone() else {
                return Ok(false);
            };
            let generation = state.generation;
            let next_alias = state.next_alias;
            let can_add = state.aliases.len() < MAX_ALIASES && next_alias < u16::MAX;
            let plan = if !self.inner.telemetry_aliases {
                DatagramPlan::Inline
            } else {
                match state.aliases.get_mut(topic) {
                    Some(alias) if alias.ready == Some(generation) => {
                        DatagramPlan::Alias(alias.value)
                    }
                    // A registration is on its way; until it is acknowledged the topic goes
                    // in full.
                    Some(alias) if alias.requested == Some(generation) => DatagramPlan::Inline,
                    Some(alias) => {
                        alias.requested = Some(generation);
                        DatagramPlan::Register {
                            alias: alias.value,
                            generation,
                        }
                    }
                    None if can_add => {
                        state.next_alias += 1;
                        state.aliases.insert(
                            Arc::from(topic),
                            Alias {
                                value: next_alias,
                                ready: None,
                                requested: Some(generation),
                            },
                        );
                        DatagramPlan::Register {
                            alias: next_alias,
                            generation,
                        }
                    }
                    None => DatagramPlan::Inline,
                }
            };
            (session, plan)
        };
        let Some(max) = session.max_datagram_size() else {
            return Ok(false);
        };
        let datagram = match plan {
            DatagramPlan::Alias(alias) => protocol::alias_datagram(alias, payload),
            DatagramPlan::Inline => {
                Topic::parse(topic).map_err(|source| Error::InvalidTopic {
                    topic: topic.to_owned(),
                    source,
                })?;
                protocol::topic_datagram(topic, payload)
            }
            DatagramPlan::Register { alias, generation } => {
                match self.command(|id| protocol::alias(id, alias, topic)).await {
                    Ok(_) => {
                        self.inner.shared.alias_ready(topic, generation);
                        protocol::alias_datagram(alias, payload)
                    }
                    Err(e @ Error::Server { .. }) => {
                        self.inner.shared.remove_alias(topic);
                        // `unsupported`: the command reached a WebSocket connection after a
                        // reconnection.
                        if e.code() == Some("unsupported") {
                            return Ok(false);
                        }
                        return Err(e);
                    }
                    Err(Error::ConnectionLost { .. }) => return Ok(false),
                    Err(e) => return Err(e),
                }
            }
        };
        if datagram.len() > max {
            return Ok(false);
        }
        match session.send_datagram(&datagram) {
            Ok(()) => {
                self.inner
                    .shared
                    .datagrams_sent
                    .fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }

    /// Sends a `ping` command and returns the time until its `pong`.
    ///
    /// # Errors
    ///
    /// Returns [`Error::ConnectionLost`] or [`Error::Closed`] when the connection is gone.
    pub async fn ping(&self) -> Result<Duration, Error> {
        let started = Instant::now();
        self.command(protocol::ping).await?;
        Ok(started.elapsed())
    }

    /// Closes the connection for every handle: subscriptions end, and calls still waiting fail
    /// with [`Error::Closed`].
    pub async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.request(Request::Close(done)).await.is_ok() {
            let _ = closed.await;
        }
    }
}

/// The deliveries of one subscription. Dropping it ends the subscription on the server.
pub struct Subscription {
    receiver: mpsc::Receiver<Box<Delivery>>,
    position: Position,
    local: u64,
    drops: mpsc::UnboundedSender<u64>,
}

impl Subscription {
    /// Waits for the next delivery. Returns `None` once the subscription has ended: the client
    /// was closed, the connection ended with reconnection off, or the server rejected the
    /// subscription when it was made again after a reconnection.
    pub async fn next(&mut self) -> Option<Delivery> {
        let delivery = *self.receiver.recv().await?;
        match &delivery {
            Delivery::Event { cursor, .. } => self.position.advance(cursor, cursor.parse().ok()),
            Delivery::Resync { cursor, .. } => self.position.advance(cursor, cursor.parse().ok()),
            Delivery::Telemetry { .. } => {}
        }
        Some(delivery)
    }

    /// Returns the position to resume from in a later process: the newest event cursor or resync
    /// cursor this subscription returned, or where it started. Over WebTransport, events of
    /// different topics may arrive out of order, and an older one does not move this back.
    pub fn cursor(&self) -> Option<&str> {
        self.position.text()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self.drops.send(self.local);
    }
}
