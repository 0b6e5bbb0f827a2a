//! The JSON command set shared by the WebSocket connection and the WebTransport control stream.
//!
//! Each command is one JSON object whose `op` names it. Replies and deliveries go out through
//! one bounded channel per connection, so a reply is always sent before the events of the
//! subscription it confirms. A rejected command gets an `error` reply and leaves the connection
//! and its other subscriptions untouched.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::cursor::Cursor;
use crate::error::RequestError;
use crate::hub::{Class, Delivery, Hub, Message, Subscription};
use crate::topic::{Filter, Topic};
use crate::wire::to_json;

/// A command from a client.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    Subscribe {
        id: Option<u64>,
        filters: Vec<String>,
        cursor: Option<String>,
    },
    Unsubscribe {
        id: Option<u64>,
        sub: u64,
    },
    Publish {
        id: Option<u64>,
        topic: String,
        class: Option<String>,
        event: Option<String>,
        payload: Option<String>,
        payload_b64: Option<String>,
    },
    /// Registers a topic alias for datagrams; WebTransport only.
    Alias {
        id: Option<u64>,
        alias: u16,
        topic: String,
    },
    Ping {
        id: Option<u64>,
    },
}

/// An item for a connection's writer.
pub enum Outbound {
    /// A JSON reply to a command.
    Reply(Bytes),
    /// A delivery of subscription `sub`.
    Delivery { sub: u64, delivery: Delivery },
}

#[derive(Serialize)]
struct Reply<'a> {
    op: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
}

impl Reply<'_> {
    fn new(op: &'static str, id: Option<u64>) -> Self {
        Self {
            op,
            id,
            sub: None,
            cursor: None,
            code: None,
            message: None,
        }
    }
}

/// Encodes an `error` reply.
pub fn error_reply(id: Option<u64>, code: &'static str, message: &str) -> Bytes {
    to_json(&Reply {
        code: Some(code),
        message: Some(message),
        ..Reply::new("error", id)
    })
}

/// A path of its own for telemetry, such as WebTransport datagrams: returns `true` when it sent
/// the message, `false` when the message must take the ordinary path.
pub type TelemetryPath = Arc<dyn Fn(&Message) -> bool + Send + Sync>;

/// Per-connection command state: the subscriptions and the datagram aliases.
pub struct CommandSession {
    hub: Hub,
    out: mpsc::Sender<Outbound>,
    telemetry_path: Option<TelemetryPath>,
    subscriptions: HashMap<u64, JoinHandle<()>>,
    next_sub: u64,
    max_subscriptions: usize,
    aliases: HashMap<u16, Topic>,
    max_aliases: usize,
}

impl CommandSession {
    /// Creates the state of one connection whose writer reads `out`.
    pub fn new(hub: Hub, out: mpsc::Sender<Outbound>, max_subscriptions: usize) -> Self {
        Self {
            hub,
            out,
            telemetry_path: None,
            subscriptions: HashMap::new(),
            next_sub: 1,
            max_subscriptions,
            aliases: HashMap::new(),
            max_aliases: 1024,
        }
    }

    /// Sends telemetry through `path` whenever it takes it, so telemetry never waits behind
    /// events the connection cannot write yet.
    pub fn with_telemetry_path(mut self, path: TelemetryPath) -> Self {
        self.telemetry_path = Some(path);
        self
    }

    /// Topic registered under a datagram alias.
    pub fn alias(&self, alias: u16) -> Option<&Topic> {
        self.aliases.get(&alias)
    }

    /// Parses and runs one command, then queues its reply. Returns `false` once the writer is
    /// gone, which ends the connection.
    pub async fn handle(&mut self, text: &[u8], allow_alias: bool) -> bool {
        let command = match parse_command(text) {
            Ok(command) => command,
            Err((id, message)) => {
                return self
                    .send(error_reply(id, "invalid_command", &message))
                    .await;
            }
        };
        let id = command_id(&command);
        match self.run(command, allow_alias).await {
            Ok(Some(reply)) => self.send(reply).await,
            Ok(None) => !self.out.is_closed(),
            Err(e) => self.send(error_reply(id, e.code(), &e.to_string())).await,
        }
    }

    async fn send(&self, reply: Bytes) -> bool {
        self.out.send(Outbound::Reply(reply)).await.is_ok()
    }

    /// Runs a command; `Ok(None)` means the reply was already queued.
    async fn run(
        &mut self,
        command: Command,
        allow_alias: bool,
    ) -> Result<Option<Bytes>, RequestError> {
        match command {
            Command::Subscribe {
                id,
                filters,
                cursor,
            } => {
                self.subscribe(id, filters, cursor).await?;
                Ok(None)
            }
            Command::Unsubscribe { id, sub } => {
                let task = self
                    .subscriptions
                    .remove(&sub)
                    .ok_or(RequestError::UnknownSubscription(sub))?;
                // Once the aborted task has ended, nothing of this subscription follows the reply.
                task.abort();
                let _ = task.await;
                Ok(Some(to_json(&Reply {
                    sub: Some(sub),
                    ..Reply::new("unsubscribed", id)
                })))
            }
            Command::Publish {
                id,
                topic,
                class,
                event,
                payload,
                payload_b64,
            } => {
                let topic = Topic::parse(&topic).map_err(RequestError::InvalidTopic)?;
                let class = parse_class(class.as_deref())?;
                let payload = match (payload, payload_b64) {
                    (Some(text), None) => Bytes::from(text),
                    (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
                        .decode(encoded)
                        .map(Bytes::from)
                        .map_err(|e| {
                            RequestError::InvalidPayload(format!(
                                "invalid payload_b64 ({e}): use standard base64 with = padding"
                            ))
                        })?,
                    (None, None) => Bytes::new(),
                    (Some(_), Some(_)) => {
                        return Err(RequestError::InvalidPayload(
                            "give either payload or payload_b64, not both".into(),
                        ))
                    }
                };
                let cursor = self.hub.publish(topic, class, event.as_deref(), payload)?;
                Ok(Some(to_json(&Reply {
                    cursor: cursor.map(|c| c.to_string()),
                    ..Reply::new("ack", id)
                })))
            }
            Command::Alias { id, alias, topic } => {
                if !allow_alias {
                    return Err(RequestError::Unsupported(
                        "aliases name datagram topics and exist on WebTransport only".into(),
                    ));
                }
                let topic = Topic::parse(&topic).map_err(RequestError::InvalidTopic)?;
                if !self.aliases.contains_key(&alias) && self.aliases.len() >= self.max_aliases {
                    return Err(RequestError::LimitExceeded(format!(
                        "at most {} aliases per session",
                        self.max_aliases
                    )));
                }
                self.aliases.insert(alias, topic);
                Ok(Some(to_json(&Reply::new("ack", id))))
            }
            Command::Ping { id } => Ok(Some(to_json(&Reply::new("pong", id)))),
        }
    }

    async fn subscribe(
        &mut self,
        id: Option<u64>,
        filters: Vec<String>,
        cursor: Option<String>,
    ) -> Result<(), RequestError> {
        if self.subscriptions.len() >= self.max_subscriptions {
            return Err(RequestError::LimitExceeded(format!(
                "at most {} subscriptions per connection: unsubscribe first",
                self.max_subscriptions
            )));
        }
        let filters = parse_filters(&filters)?;
        let cursor = cursor.map(|c| c.parse::<Cursor>()).transpose()?;
        let subscription = self.hub.subscribe(filters, cursor)?;

        let sub = self.next_sub;
        self.next_sub += 1;
        let start = subscription.start();
        let reply = to_json(&Reply {
            sub: Some(sub),
            cursor: Some(start.to_string()),
            ..Reply::new("subscribed", id)
        });
        // The reply enters the channel before the forwarding task starts, so it precedes every
        // delivery of this subscription.
        if self.out.send(Outbound::Reply(reply)).await.is_err() {
            return Ok(());
        }
        let out = self.out.clone();
        let path = self.telemetry_path.clone();
        let task = tokio::spawn(forward(subscription, sub, out, path));
        self.subscriptions.insert(sub, task);
        Ok(())
    }
}

/// Moves one subscription's deliveries to the connection's writer. With a telemetry path,
/// telemetry skips the writer, including while the writer has no room for the next event.
async fn forward(
    mut subscription: Subscription,
    sub: u64,
    out: mpsc::Sender<Outbound>,
    path: Option<TelemetryPath>,
) {
    let takes = |delivery: &Delivery| match (&path, delivery) {
        (Some(path), Delivery::Message(m)) if m.class == Class::Telemetry => path(m),
        _ => false,
    };
    loop {
        let delivery = subscription.recv().await;
        if takes(&delivery) {
            continue;
        }
        // Wait for room in the writer; telemetry that arrives meanwhile takes its own path, or,
        // too large for it, waits in one slot where a newer value replaces an older one.
        let mut held: Option<Arc<Message>> = None;
        let permit = loop {
            tokio::select! {
                permit = out.reserve() => break permit,
                telemetry = subscription.recv_telemetry(), if path.is_some() => {
                    if !takes(&Delivery::Message(telemetry.clone())) {
                        held = Some(telemetry);
                    }
                }
            }
        };
        let Ok(permit) = permit else { return };
        permit.send(Outbound::Delivery { sub, delivery });
        if let Some(telemetry) = held {
            let delivery = Delivery::Message(telemetry);
            if out
                .send(Outbound::Delivery { sub, delivery })
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

impl Drop for CommandSession {
    fn drop(&mut self) {
        for task in self.subscriptions.values() {
            task.abort();
        }
    }
}

/// Parses a command, or returns the error message with the command's `id` when it has one, so
/// a client that sends several commands at once can tell which one failed.
fn parse_command(text: &[u8]) -> Result<Command, (Option<u64>, String)> {
    let value: serde_json::Value = serde_json::from_slice(text)
        .map_err(|e| (None, format!("invalid command: not JSON ({e})")))?;
    let Some(object) = value.as_object() else {
        let message = "invalid command: send a JSON object with an \"op\" field".to_owned();
        return Err((None, message));
    };
    let id = object.get("id").and_then(serde_json::Value::as_u64);
    let op = match object.get("op").and_then(serde_json::Value::as_str) {
        Some(op) => op.chars().take(32).collect::<String>(),
        None => {
            let message = "invalid command: missing \"op\": use subscribe, unsubscribe, \
                           publish, alias or ping";
            return Err((id, message.to_owned()));
        }
    };
    serde_json::from_value(value).map_err(|e| (id, format!("invalid {op:?} command: {e}")))
}

fn command_id(command: &Command) -> Option<u64> {
    match command {
        Command::Subscribe { id, .. }
        | Command::Unsubscribe { id, .. }
        | Command::Publish { id, .. }
        | Command::Alias { id, .. }
        | Command::Ping { id } => *id,
    }
}

/// Parses the `class` of a publish; absent means `event`.
///
/// # Errors
///
/// Returns [`RequestError::InvalidClass`] for any other value.
pub fn parse_class(class: Option<&str>) -> Result<Class, RequestError> {
    match class {
        None | Some("event") => Ok(Class::Event),
        Some("telemetry") => Ok(Class::Telemetry),
        Some(other) => Err(RequestError::InvalidClass(other.chars().take(64).collect())),
    }
}

/// Parses subscription filters.
///
/// # Errors
///
/// Returns [`RequestError::InvalidFilter`] naming the first invalid filter.
pub fn parse_filters<S: AsRef<str>>(filters: &[S]) -> Result<Vec<Filter>, RequestError> {
    filters
        .iter()
        .map(|f| Filter::parse(f.as_ref()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(RequestError::InvalidFilter)
}
