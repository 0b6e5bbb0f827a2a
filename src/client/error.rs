//! Errors of the client library.

use crate::topic::TopicError;

/// Error of a client call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// Neither a WebTransport nor a WebSocket URL was given.
    #[error(
        "no server URL given: set a WebTransport URL (https://host:4433/v1/wt), a WebSocket URL \
         (ws://host:8080/v1/ws), or both"
    )]
    MissingUrl,

    /// A URL could not be used.
    #[error("invalid {kind} URL {url:?}: {reason}")]
    InvalidUrl {
        kind: &'static str,
        url: String,
        reason: String,
    },

    /// A certificate hash is not 64 hex digits.
    #[error(
        "invalid certificate hash {value:?}: give 64 hex digits, with or without `:` between \
         the bytes, such as the `hex` member of GET /v1/cert-hash"
    )]
    InvalidCertHash { value: String },

    /// The options contradict each other or are out of range.
    #[error("invalid client options: {0}")]
    InvalidOptions(String),

    /// A filter breaks the topic rules, so it was not sent.
    #[error("invalid filter {filter:?}: {source}")]
    InvalidFilter { filter: String, source: TopicError },

    /// A topic name breaks the topic rules, so it was not sent.
    #[error("invalid topic {topic:?}: {source}")]
    InvalidTopic { topic: String, source: TopicError },

    /// The certificate hash could not be fetched from the server's HTTP listener.
    #[error(
        "failed to fetch the certificate hash from {url}: {reason}; check that the server runs \
         and that the URL names its TCP listener (`--server` in the CLI), pass the hash \
         explicitly (`--cert-hash`), or accept any certificate for a server you run yourself \
         (`--insecure`)"
    )]
    CertHashFetch { url: String, reason: String },

    /// No transport could connect.
    #[error(
        "failed to connect: {0}; check that the server runs, that the URLs name its \
         listeners, and that the certificate settings match it"
    )]
    Connect(String),

    /// The server rejected a command with an `error` reply.
    #[error("the server rejected the command with {code}: {message}")]
    Server { code: String, message: String },

    /// The connection ended before the reply arrived. A `publish` may or may not have been
    /// applied.
    #[error("the connection ended before the reply: {reason}")]
    ConnectionLost { reason: String },

    /// The client was closed with [`Client::close`](super::Client::close).
    #[error("the client is closed: connect again to send more commands")]
    Closed,

    /// The server sent something this client does not understand.
    #[error("unexpected reply from the server: {0}")]
    Protocol(String),
}

impl Error {
    /// Returns the server's error code, such as `invalid_topic`, when the server rejected the
    /// command.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Tests whether the connection is gone, so the call may succeed on a new connection.
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, Error::ConnectionLost { .. } | Error::Closed)
    }
}
