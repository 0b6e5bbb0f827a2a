//! State that the client handles and the driver task share: the current transport, the
//! WebTransport session for datagrams, and the datagram aliases.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::link::Link;
use super::{Error, Transport};

/// Aliases a WebTransport session may hold (protocol section 10.3). Topics beyond this go into
/// each datagram in full.
pub(crate) const MAX_ALIASES: usize = 1024;

/// Reason a client ended.
#[derive(Clone, Debug)]
pub(crate) enum End {
    /// [`Client::close`](super::Client::close) was called, or every handle was dropped.
    Closed,
    /// The connection ended and reconnection is off.
    Lost(String),
}

impl End {
    pub(crate) fn error(&self) -> Error {
        match self {
            End::Closed => Error::Closed,
            End::Lost(reason) => Error::ConnectionLost {
                reason: reason.clone(),
            },
        }
    }
}

/// A datagram alias of one topic.
pub(crate) struct Alias {
    pub value: u16,
    /// The connection generation on which the server acknowledged the alias.
    pub ready: Option<u64>,
    /// The connection generation on which the alias was last sent.
    pub requested: Option<u64>,
}

pub(crate) struct State {
    pub transport: Transport,
    /// The WebTransport session while one is open.
    pub session: Option<wtransport::Connection>,
    /// Counts connections, so that an alias acknowledged on an earlier one is not trusted.
    pub generation: u64,
    pub aliases: HashMap<Arc<str>, Alias>,
    pub next_alias: u16,
    pub ended: Option<End>,
}

pub(crate) struct Shared {
    next_id: AtomicU64,
    /// Telemetry values sent as datagrams.
    pub datagrams_sent: AtomicU64,
    state: Mutex<State>,
}

impl Shared {
    pub(crate) fn new(link: &Link) -> Self {
        Self {
            next_id: AtomicU64::new(1),
            datagrams_sent: AtomicU64::new(0),
            state: Mutex::new(State {
                transport: link.transport(),
                session: link.webtransport().cloned(),
                generation: 1,
                aliases: HashMap::new(),
                next_alias: 0,
                ended: None,
            }),
        }
    }

    /// Returns a fresh command id, unique on this client.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Locks the state. A panic while it was held leaves it usable: every update is a single
    /// assignment or map operation.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a new connection.
    pub(crate) fn attach(&self, link: &Link) {
        let mut state = self.lock();
        state.transport = link.transport();
        state.session = link.webtransport().cloned();
        state.generation += 1;
    }

    /// Records that the connection is gone.
    pub(crate) fn detach(&self) {
        self.lock().session = None;
    }

    pub(crate) fn end(&self, end: End) {
        let mut state = self.lock();
        state.session = None;
        state.ended = Some(end);
    }

    /// Returns the error for a call made after the client ended.
    pub(crate) fn ended_error(&self) -> Error {
        match &self.lock().ended {
            Some(end) => end.error(),
            None => Error::Closed,
        }
    }

    /// Marks every alias as sent on the current connection and returns them, to be
    /// registered again.
    pub(crate) fn aliases_to_restore(&self) -> (u64, Vec<(u16, Arc<str>)>) {
        let mut state = self.lock();
        let generation = state.generation;
        let aliases = state
            .aliases
            .iter_mut()
            .map(|(topic, alias)| {
                alias.requested = Some(generation);
                (alias.value, topic.clone())
            })
            .collect();
        (generation, aliases)
    }

    pub(crate) fn alias_ready(&self, topic: &str, generation: u64) {
        if let Some(alias) = self.lock().aliases.get_mut(topic) {
            alias.ready = Some(generation);
        }
    }

    pub(crate) fn remove_alias(&self, topic: &str) {
        self.lock().aliases.remove(topic);
    }
}
