//! hubcast: a real-time pub/sub server.
//!
//! One topic [`hub`] is served over WebTransport and HTTP/3 on a QUIC endpoint ([`quic`]) and
//! over WebSocket, Server-Sent Events and long polling on a TCP listener ([`http`]). The
//! [`server`] module starts both and shuts them down through one cancellation token.
//! The [`client`] module is a client library for the same protocol, over WebTransport with a
//! WebSocket fallback.

pub mod cert;
pub mod client;
pub mod commands;
pub mod config;
pub mod cursor;
pub mod error;
pub mod http;
pub mod hub;
pub mod memory;
pub mod metrics;
pub mod quic;
pub mod server;
pub mod topic;
pub mod wire;
