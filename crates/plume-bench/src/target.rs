//! Where the load goes: a protocol and a loopback address.
//!
//! The benchmark refuses any target outside the loopback range (127.0.0.0/8, `::1`,
//! `localhost`): it is a load generator, and the only servers it may load are the ones on
//! this machine.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio_tungstenite::tungstenite::http::Uri;

/// The protocol a server speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Phoenix Channels (Plume).
    Phoenix,
    /// Socket.IO v5 over Engine.IO v4 (the peer).
    SocketIo,
    /// Phoenix Channels over Plume's LongPoll transport.
    LongPoll,
}

impl Protocol {
    /// The WebSocket path when a URL names none.
    pub fn default_path(self) -> &'static str {
        match self {
            Protocol::Phoenix => "/socket/websocket",
            Protocol::SocketIo => "/socket.io/",
            Protocol::LongPoll => "/socket/longpoll",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Phoenix => "phoenix",
            Protocol::SocketIo => "socket.io",
            Protocol::LongPoll => "phoenix-longpoll",
        })
    }
}

/// One server to connect to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Its protocol.
    pub protocol: Protocol,
    /// Its loopback address.
    pub addr: SocketAddr,
    /// The WebSocket path.
    pub path: String,
}

impl Endpoint {
    /// The endpoint of a server started by the benchmark on `addr`.
    pub fn local(protocol: Protocol, addr: SocketAddr) -> Endpoint {
        Endpoint {
            protocol,
            addr,
            path: protocol.default_path().to_owned(),
        }
    }

    /// The connect URL for a user's token: Phoenix takes the token and `vsn=2.0.0` as
    /// params; Socket.IO takes `EIO=4&transport=websocket` (its token goes in the CONNECT
    /// packet).
    pub fn url(&self, token: &str) -> String {
        match self.protocol {
            Protocol::Phoenix => {
                format!("ws://{}{}?vsn=2.0.0&token={}", self.addr, self.path, token)
            }
            Protocol::SocketIo => {
                format!("ws://{}{}?EIO=4&transport=websocket", self.addr, self.path)
            }
            Protocol::LongPoll => {
                format!(
                    "http://{}{}?vsn=2.0.0&token={}",
                    self.addr, self.path, token
                )
            }
        }
    }
}

/// Why a target was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TargetError {
    /// Not a URL.
    #[error("not a URL: {0}")]
    Parse(String),
    /// Not `ws://`.
    #[error("only ws:// URLs are supported (got {0:?})")]
    Scheme(String),
    /// Not on this machine.
    #[error(
        "refusing non-loopback target {0:?}: plume-bench only loads servers on 127.0.0.0/8, ::1 or localhost"
    )]
    NotLoopback(String),
}

/// Parses a `ws://` URL and checks that it points at the loopback range. The query string,
/// if any, is dropped (the benchmark adds its own).
pub fn parse_loopback_url(url: &str, protocol: Protocol) -> Result<Endpoint, TargetError> {
    let uri: Uri =
        url.parse()
            .map_err(|e: tokio_tungstenite::tungstenite::http::uri::InvalidUri| {
                TargetError::Parse(e.to_string())
            })?;
    let scheme = uri.scheme_str().unwrap_or("");
    if scheme != "ws" {
        return Err(TargetError::Scheme(scheme.to_owned()));
    }
    let host = uri
        .host()
        .ok_or_else(|| TargetError::Parse(format!("{url}: no host")))?;
    let ip = loopback_ip(host).ok_or_else(|| TargetError::NotLoopback(host.to_owned()))?;
    let port = uri.port_u16().unwrap_or(80);
    let path = match uri.path() {
        "" | "/" => protocol.default_path().to_owned(),
        p => p.to_owned(),
    };
    Ok(Endpoint {
        protocol,
        addr: SocketAddr::new(ip, port),
        path,
    })
}

/// The address of a loopback host name, or `None` for anything else.
pub fn loopback_ip(host: &str) -> Option<IpAddr> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let ip: IpAddr = host.parse().ok()?;
    ip.is_loopback().then_some(ip)
}

/// The `n`-th source address (0-based) when spreading connections over `count` addresses
/// starting at 127.0.0.{1 + offset}: 127.0.0.1, 127.0.0.2, … with offset 0. Each address has
/// its own ephemeral port range towards one server port, so the connections a run can open
/// grow with `count` (see `cli::CONNECTIONS_PER_SOURCE_IP`). The offset lets consecutive runs
/// use fresh addresses while the previous run's ports sit in TIME_WAIT.
pub fn source_ip(n: usize, count: usize, offset: usize) -> IpAddr {
    let count = count.clamp(1, 254);
    let last = (offset + n % count) % 254 + 1;
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, u8::try_from(last).unwrap_or(1)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls_are_accepted() {
        let e =
            parse_loopback_url("ws://127.0.0.1:4000/socket/websocket", Protocol::Phoenix).unwrap();
        assert_eq!(e.addr, "127.0.0.1:4000".parse().unwrap());
        assert_eq!(e.path, "/socket/websocket");
        let e = parse_loopback_url("ws://localhost:3000", Protocol::SocketIo).unwrap();
        assert_eq!(e.path, "/socket.io/");
        assert_eq!(e.addr.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        let e = parse_loopback_url("ws://127.8.9.10:1/x?vsn=1.0.0", Protocol::Phoenix).unwrap();
        assert_eq!(e.path, "/x");
        let e = parse_loopback_url("ws://[::1]:4000/socket/websocket", Protocol::Phoenix).unwrap();
        assert!(e.addr.ip().is_loopback());
    }

    #[test]
    fn other_targets_are_refused() {
        for url in [
            "ws://10.0.0.1:4000/socket/websocket",
            "ws://192.168.1.5:4000/",
            "ws://8.8.8.8/",
            "ws://example.com:4000/socket/websocket",
            "ws://0.0.0.0:4000/",
            "ws://[::ffff:127.0.0.1]:4000/",
            "ws://[2001:db8::1]:4000/",
        ] {
            assert!(
                matches!(
                    parse_loopback_url(url, Protocol::Phoenix),
                    Err(TargetError::NotLoopback(_))
                ),
                "{url}"
            );
        }
        assert!(matches!(
            parse_loopback_url("wss://127.0.0.1/", Protocol::Phoenix),
            Err(TargetError::Scheme(_))
        ));
        assert!(matches!(
            parse_loopback_url("http://127.0.0.1/", Protocol::Phoenix),
            Err(TargetError::Scheme(_))
        ));
        assert!(parse_loopback_url("not a url", Protocol::Phoenix).is_err());
    }

    #[test]
    fn urls_carry_protocol_params() {
        let e = Endpoint::local(Protocol::Phoenix, "127.0.0.1:4000".parse().unwrap());
        assert_eq!(
            e.url("tok"),
            "ws://127.0.0.1:4000/socket/websocket?vsn=2.0.0&token=tok"
        );
        let e = Endpoint::local(Protocol::SocketIo, "127.0.0.1:3000".parse().unwrap());
        assert_eq!(
            e.url("tok"),
            "ws://127.0.0.1:3000/socket.io/?EIO=4&transport=websocket"
        );
    }

    #[test]
    fn source_ips_cycle_over_127_0_0_x() {
        let ip = |d| IpAddr::V4(Ipv4Addr::new(127, 0, 0, d));
        assert_eq!(source_ip(0, 4, 0), ip(1));
        assert_eq!(source_ip(3, 4, 0), ip(4));
        assert_eq!(source_ip(4, 4, 0), ip(1));
        assert_eq!(source_ip(5, 0, 0), ip(1));
        assert_eq!(source_ip(300, 1000, 0), ip(47));
        assert_eq!(source_ip(1, 4, 10), ip(12));
        // Never 127.0.0.0 or 127.0.0.255.
        assert_eq!(source_ip(0, 1, 253), ip(254));
        assert_eq!(source_ip(0, 1, 254), ip(1));
    }
}
