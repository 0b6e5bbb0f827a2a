//! Client options and the checks that run before any connection.

use std::time::Duration;

use http::Uri;

use super::Error;

/// Default time allowed for one transport to connect.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Default cap of the delay between two reconnection attempts.
pub const DEFAULT_RECONNECT_DELAY_MAX: Duration = Duration::from_secs(10);

/// Default interval of keep-alives: WebSocket pings and QUIC keep-alive packets.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Default number of deliveries buffered per [`Subscription`](super::Subscription). It equals
/// the server's default queue of 256 messages per subscription.
pub const DEFAULT_SUBSCRIPTION_CAPACITY: usize = 256;

/// The transport a connection runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// WebTransport over HTTP/3 on the server's QUIC listener.
    WebTransport,
    /// WebSocket on the server's TCP listener.
    WebSocket,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::WebTransport => "WebTransport",
            Transport::WebSocket => "WebSocket",
        })
    }
}

/// Settings of a [`Connector`](super::Connector).
///
/// The server certificate of WebTransport is checked in one of four ways:
///
/// * `cert_hash`: the SHA-256 hash of the leaf certificate must match, as with a browser's
///   `serverCertificateHashes`. Any certificate authority and validity period is accepted.
/// * `insecure`: any certificate is accepted. Use it only for a server you run yourself.
/// * neither, with a `websocket_url`: the hash is fetched from `GET /v1/cert-hash` on the same
///   host and port as the WebSocket URL, over cleartext HTTP. An attacker on that path could
///   replace the hash, so this trusts the network between client and server as much as the
///   WebSocket connection itself does.
/// * neither, without a `websocket_url`: the certificate must chain to a root certificate of the
///   operating system, as for any HTTPS server.
#[derive(Debug, Clone)]
pub struct Options {
    /// WebTransport URL, such as `https://127.0.0.1:4433/v1/wt`.
    pub webtransport_url: Option<String>,
    /// WebSocket URL, such as `ws://127.0.0.1:8080/v1/ws`. Only `ws:` is supported.
    pub websocket_url: Option<String>,
    /// SHA-256 hash of the server's leaf certificate; see [`parse_cert_hash`].
    pub cert_hash: Option<[u8; 32]>,
    /// Accept any server certificate.
    pub insecure: bool,
    /// Time allowed for each transport to connect, the TLS and WebSocket handshakes included.
    pub connect_timeout: Duration,
    /// Whether a connection that ends unexpectedly is opened again, with every subscription
    /// resumed from its last cursor. Without it, subscriptions end with the connection.
    pub reconnect: bool,
    /// Cap of the exponential backoff between reconnection attempts.
    pub reconnect_delay_max: Duration,
    /// Restricts connections to one transport. `None` tries WebTransport first, then
    /// WebSocket. The other URL may still be set: the WebSocket URL then only locates
    /// `/v1/cert-hash`.
    pub transport: Option<Transport>,
    /// Interval of keep-alives. A WebSocket connection that receives nothing for twice this
    /// long counts as dropped. QUIC connections time out after three times this long or the
    /// server's idle timeout, whichever is shorter.
    pub keep_alive: Duration,
    /// Deliveries buffered per subscription before the connection stops reading.
    pub subscription_capacity: usize,
    /// Whether WebTransport telemetry datagrams name their topic by an alias registered once
    /// per topic (3 bytes) instead of writing the topic into every datagram.
    pub telemetry_aliases: bool,
}

impl Options {
    /// Options for the given URLs with the defaults: a 5 s connect timeout, reconnection on,
    /// WebTransport first, 15 s keep-alives, 256 deliveries per subscription and telemetry
    /// aliases on. The certificate is checked as the type documentation describes.
    pub fn new(webtransport_url: Option<String>, websocket_url: Option<String>) -> Self {
        Self {
            webtransport_url,
            websocket_url,
            cert_hash: None,
            insecure: false,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            reconnect: true,
            reconnect_delay_max: DEFAULT_RECONNECT_DELAY_MAX,
            transport: None,
            keep_alive: DEFAULT_KEEP_ALIVE,
            subscription_capacity: DEFAULT_SUBSCRIPTION_CAPACITY,
            telemetry_aliases: true,
        }
    }

    /// Checks the options and returns the URLs each transport may use.
    pub(crate) fn validate(&self) -> Result<Checked, Error> {
        if self.cert_hash.is_some() && self.insecure {
            return Err(Error::InvalidOptions(
                "both a certificate hash and `insecure` are set: keep one of them".to_owned(),
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err(Error::InvalidOptions(
                "connect_timeout is zero: give a positive duration, such as 5 s".to_owned(),
            ));
        }
        if self.keep_alive.is_zero() {
            return Err(Error::InvalidOptions(
                "keep_alive is zero: give a positive duration, such as 15 s".to_owned(),
            ));
        }
        if self.subscription_capacity == 0 {
            return Err(Error::InvalidOptions(
                "subscription_capacity is zero: give 1 or more deliveries".to_owned(),
            ));
        }
        let webtransport = self
            .webtransport_url
            .as_deref()
            .map(check_webtransport_url)
            .transpose()?;
        let websocket = self
            .websocket_url
            .as_deref()
            .map(check_websocket_url)
            .transpose()?;
        let cert_hash_url = websocket.as_ref().map(|ws| ws.cert_hash_url.clone());
        let (webtransport, websocket) = match self.transport {
            None => (webtransport, websocket.map(|ws| ws.url)),
            Some(Transport::WebTransport) => {
                if webtransport.is_none() {
                    return Err(Error::InvalidOptions(
                        "the transport is restricted to WebTransport but no WebTransport URL \
                         is set: set webtransport_url"
                            .to_owned(),
                    ));
                }
                (webtransport, None)
            }
            Some(Transport::WebSocket) => {
                if websocket.is_none() {
                    return Err(Error::InvalidOptions(
                        "the transport is restricted to WebSocket but no WebSocket URL is set: \
                         set websocket_url"
                            .to_owned(),
                    ));
                }
                (None, websocket.map(|ws| ws.url))
            }
        };
        if webtransport.is_none() && websocket.is_none() {
            return Err(Error::MissingUrl);
        }
        Ok(Checked {
            webtransport,
            websocket,
            cert_hash_url,
        })
    }
}

/// URLs that passed [`Options::validate`].
pub(crate) struct Checked {
    pub webtransport: Option<String>,
    pub websocket: Option<String>,
    /// `http://<host:port of the WebSocket URL>/v1/cert-hash`.
    pub cert_hash_url: Option<String>,
}

struct WebSocketUrl {
    url: String,
    cert_hash_url: String,
}

fn check_webtransport_url(url: &str) -> Result<String, Error> {
    let invalid = |reason: &str| Error::InvalidUrl {
        kind: "WebTransport",
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: Uri = url
        .parse()
        .map_err(|_| invalid("not a URL: give https://host:port/v1/wt"))?;
    if uri.scheme_str() != Some("https") {
        return Err(invalid(
            "the scheme must be https: give https://host:port/v1/wt",
        ));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("no host: give https://host:port/v1/wt"));
    }
    Ok(url.to_owned())
}

fn check_websocket_url(url: &str) -> Result<WebSocketUrl, Error> {
    let invalid = |reason: &str| Error::InvalidUrl {
        kind: "WebSocket",
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: Uri = url
        .parse()
        .map_err(|_| invalid("not a URL: give ws://host:port/v1/ws"))?;
    match uri.scheme_str() {
        Some("ws") => {}
        Some("wss") => {
            return Err(invalid(
                "wss: is not supported by this client: connect to the server's cleartext TCP \
                 listener with ws://host:port/v1/ws",
            ))
        }
        _ => return Err(invalid("the scheme must be ws: give ws://host:port/v1/ws")),
    }
    let Some(authority) = uri.authority().filter(|a| !a.host().is_empty()) else {
        return Err(invalid("no host: give ws://host:port/v1/ws"));
    };
    let host_port = match authority.port_u16() {
        Some(_) => authority.as_str().to_owned(),
        None => format!("{}:80", authority.as_str()),
    };
    Ok(WebSocketUrl {
        url: url.to_owned(),
        cert_hash_url: format!("http://{host_port}/v1/cert-hash"),
    })
}

/// Parses a SHA-256 certificate hash written as 64 hex digits, with or without `:` between
/// the bytes, such as the `hex` member of the server's `GET /v1/cert-hash`.
///
/// # Errors
///
/// Returns [`Error::InvalidCertHash`] for anything else.
pub fn parse_cert_hash(text: &str) -> Result<[u8; 32], Error> {
    let invalid = || Error::InvalidCertHash {
        value: text.chars().take(100).collect(),
    };
    let digits: Vec<u8> = text.bytes().filter(|b| *b != b':').collect();
    if digits.len() != 64 {
        return Err(invalid());
    }
    let mut hash = [0u8; 32];
    for (byte, pair) in hash.iter_mut().zip(digits.chunks_exact(2)) {
        let pair = std::str::from_utf8(pair).map_err(|_| invalid())?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| invalid())?;
    }
    Ok(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_hash_accepts_hex_with_colons() {
        let plain = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        let hash = parse_cert_hash(plain).unwrap();
        assert_eq!(hash[0], 0x00);
        assert_eq!(hash[31], 0xff);
        let colons: Vec<String> = hash.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(parse_cert_hash(&colons.join(":")).unwrap(), hash);
    }

    #[test]
    fn cert_hash_rejects_bad_text() {
        for text in ["", "zz", &"0".repeat(63), &"g".repeat(64), &"é".repeat(32)] {
            let error = parse_cert_hash(text).unwrap_err();
            assert!(matches!(error, Error::InvalidCertHash { .. }), "{text:?}");
        }
    }

    #[test]
    fn urls_are_checked() {
        let check = |wt: Option<&str>, ws: Option<&str>| {
            Options::new(wt.map(str::to_owned), ws.map(str::to_owned))
                .validate()
                .map(|c| c.cert_hash_url)
        };
        assert!(matches!(check(None, None), Err(Error::MissingUrl)));
        assert!(matches!(
            check(Some("http://h:1/v1/wt"), None),
            Err(Error::InvalidUrl { .. })
        ));
        assert!(matches!(
            check(None, Some("wss://h:1/v1/ws")),
            Err(Error::InvalidUrl { .. })
        ));
        assert!(matches!(
            check(None, Some("not a url")),
            Err(Error::InvalidUrl { .. })
        ));
        assert_eq!(
            check(Some("https://h:1/v1/wt"), Some("ws://h:2/v1/ws")).unwrap(),
            Some("http://h:2/v1/cert-hash".to_owned())
        );
        assert_eq!(
            check(None, Some("ws://h/v1/ws")).unwrap(),
            Some("http://h:80/v1/cert-hash".to_owned())
        );
    }
}
