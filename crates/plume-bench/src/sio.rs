//! Engine.IO v4 and Socket.IO v5 packets, sans-IO: what the Socket.IO peer and the load
//! generator exchange over a WebSocket.
//!
//! Over the WebSocket transport one WebSocket text message is one Engine.IO packet: a type
//! digit and its data.
//!
//! | Engine.IO | meaning |
//! |---|---|
//! | `0{json}` | open: session id, `pingInterval`, `pingTimeout`, `maxPayload` |
//! | `1` | close |
//! | `2` / `3` | ping (the server sends it every `pingInterval`) / pong (the client's answer) |
//! | `4…` | message: a Socket.IO packet follows |
//! | `5`, `6` | upgrade, noop (polling transport only) |
//!
//! A Socket.IO packet is a type digit, then for binary packets `N-` (attachment count), then a
//! namespace ending with `,` when it is not `/`, then an optional acknowledgement id (digits),
//! then JSON:
//!
//! | Socket.IO | example on the wire |
//! |---|---|
//! | CONNECT 0 | `40{"token":"…"}` from the client, `40{"sid":"…"}` back |
//! | DISCONNECT 1 | `41` |
//! | EVENT 2 | `42["receive_message",{…}]`, with an ack id: `4212["send_message",{…}]` |
//! | ACK 3 | `4312[{"status":"sent",…}]` |
//! | CONNECT_ERROR 4 | `44{"message":"unauthorized"}` |

use serde::Deserialize;
use thiserror::Error;

/// The client's answer to a ping.
pub const PONG: &str = "3";

/// A packet that is not valid Engine.IO or Socket.IO.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SioError {
    /// An empty WebSocket message.
    #[error("empty packet")]
    Empty,
    /// An unknown packet type.
    #[error("unknown packet type {0:?}")]
    UnknownType(char),
    /// A malformed acknowledgement id, attachment count or namespace.
    #[error("malformed packet header")]
    Header,
}

/// An Engine.IO packet; the data borrows from the WebSocket message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnginePacket<'a> {
    /// `0`: the handshake, with its JSON.
    Open(&'a str),
    /// `1`: the server closes the session.
    Close,
    /// `2`: a ping (optionally with data, echoed in the pong).
    Ping(&'a str),
    /// `3`: a pong.
    Pong(&'a str),
    /// `4`: a Socket.IO packet.
    Message(&'a str),
    /// `5`: upgrade.
    Upgrade,
    /// `6`: noop.
    Noop,
}

/// Decodes one Engine.IO packet.
pub fn decode_engine(text: &str) -> Result<EnginePacket<'_>, SioError> {
    let mut chars = text.chars();
    let kind = chars.next().ok_or(SioError::Empty)?;
    let rest = chars.as_str();
    Ok(match kind {
        '0' => EnginePacket::Open(rest),
        '1' => EnginePacket::Close,
        '2' => EnginePacket::Ping(rest),
        '3' => EnginePacket::Pong(rest),
        '4' => EnginePacket::Message(rest),
        '5' => EnginePacket::Upgrade,
        '6' => EnginePacket::Noop,
        other => return Err(SioError::UnknownType(other)),
    })
}

/// The fields of the open packet a client needs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenInfo {
    /// The session id.
    pub sid: String,
    /// Milliseconds between the server's pings.
    pub ping_interval: u64,
    /// Milliseconds the server waits for a pong.
    pub ping_timeout: u64,
    /// Largest packet the server accepts, in bytes.
    #[serde(default)]
    pub max_payload: u64,
}

/// Parses the JSON of an open packet.
pub fn parse_open(json: &str) -> Result<OpenInfo, serde_json::Error> {
    serde_json::from_str(json)
}

/// Socket.IO packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SioKind {
    /// 0: connect to a namespace (client), or its confirmation (server).
    Connect,
    /// 1: leave a namespace.
    Disconnect,
    /// 2: an event `["name", args…]`.
    Event,
    /// 3: the acknowledgement of an event `[args…]`.
    Ack,
    /// 4: the namespace refused the connect.
    ConnectError,
    /// 5: an event with binary attachments.
    BinaryEvent,
    /// 6: an acknowledgement with binary attachments.
    BinaryAck,
}

/// A Socket.IO packet; `data` is the JSON text (possibly empty) and borrows from the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SioPacket<'a> {
    /// The packet type.
    pub kind: SioKind,
    /// The namespace (`/` when the packet names none).
    pub namespace: &'a str,
    /// The acknowledgement id, if any.
    pub id: Option<u64>,
    /// The JSON data (an array for events and acks, an object for connect packets).
    pub data: &'a str,
}

/// Decodes the Socket.IO packet inside an Engine.IO message.
pub fn decode_socketio(text: &str) -> Result<SioPacket<'_>, SioError> {
    let bytes = text.as_bytes();
    let first = *bytes.first().ok_or(SioError::Empty)?;
    let kind = match first {
        b'0' => SioKind::Connect,
        b'1' => SioKind::Disconnect,
        b'2' => SioKind::Event,
        b'3' => SioKind::Ack,
        b'4' => SioKind::ConnectError,
        b'5' => SioKind::BinaryEvent,
        b'6' => SioKind::BinaryAck,
        other => return Err(SioError::UnknownType(char::from(other))),
    };
    let mut pos = 1;
    if matches!(kind, SioKind::BinaryEvent | SioKind::BinaryAck) {
        let digits = count_digits(&bytes[pos..]);
        if digits == 0 || bytes.get(pos + digits) != Some(&b'-') {
            return Err(SioError::Header);
        }
        pos += digits + 1;
    }
    let mut namespace = "/";
    if bytes.get(pos) == Some(&b'/') {
        let end = bytes[pos..]
            .iter()
            .position(|&b| b == b',')
            .map(|off| pos + off);
        match end {
            Some(end) => {
                namespace = &text[pos..end];
                pos = end + 1;
            }
            // A namespace alone, with no data (`41/admin`).
            None => {
                namespace = &text[pos..];
                pos = bytes.len();
            }
        }
    }
    let digits = count_digits(&bytes[pos..]);
    let id = if digits > 0 {
        let id = text[pos..pos + digits]
            .parse::<u64>()
            .map_err(|_| SioError::Header)?;
        pos += digits;
        Some(id)
    } else {
        None
    };
    Ok(SioPacket {
        kind,
        namespace,
        id,
        data: &text[pos..],
    })
}

fn count_digits(bytes: &[u8]) -> usize {
    bytes.iter().take_while(|b| b.is_ascii_digit()).count()
}

/// The event name of an event packet's data (`["name", …]`), when it is a plain string
/// without escapes (the only kind the benchmark uses).
pub fn event_name(data: &str) -> Option<&str> {
    let rest = data.strip_prefix("[\"")?;
    let end = rest.find('"')?;
    let name = &rest[..end];
    (!name.contains('\\')).then_some(name)
}

/// `40{auth}`: connect to the main namespace with an auth object (JSON).
pub fn encode_connect(auth_json: &str) -> String {
    format!("40{auth_json}")
}

/// `42[id]["event",arg]`: an event with one JSON argument, acknowledged when `id` is set.
pub fn encode_event(id: Option<u64>, event: &str, arg_json: &str) -> String {
    let event = serde_json::Value::String(event.to_owned());
    match id {
        Some(id) => format!("42{id}[{event},{arg_json}]"),
        None => format!("42[{event},{arg_json}]"),
    }
}

/// `43id[args]`: the acknowledgement of event `id`, with one JSON argument.
pub fn encode_ack(id: u64, arg_json: &str) -> String {
    format!("43{id}[{arg_json}]")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn engine_packets() {
        assert_eq!(
            decode_engine(r#"0{"sid":"a"}"#),
            Ok(EnginePacket::Open(r#"{"sid":"a"}"#))
        );
        assert_eq!(decode_engine("1"), Ok(EnginePacket::Close));
        assert_eq!(decode_engine("2"), Ok(EnginePacket::Ping("")));
        assert_eq!(decode_engine("2probe"), Ok(EnginePacket::Ping("probe")));
        assert_eq!(decode_engine("3"), Ok(EnginePacket::Pong("")));
        assert_eq!(
            decode_engine("42[\"a\"]"),
            Ok(EnginePacket::Message("2[\"a\"]"))
        );
        assert_eq!(decode_engine("5"), Ok(EnginePacket::Upgrade));
        assert_eq!(decode_engine("6"), Ok(EnginePacket::Noop));
        assert_eq!(decode_engine(""), Err(SioError::Empty));
        assert_eq!(decode_engine("9"), Err(SioError::UnknownType('9')));
    }

    #[test]
    fn open_packet_fields() {
        let open = parse_open(
            r#"{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#,
        )
        .unwrap();
        assert_eq!(open.sid, "lv_VI97HAXpY6yYWAAAC");
        assert_eq!(open.ping_interval, 25000);
        assert_eq!(open.ping_timeout, 20000);
        assert_eq!(open.max_payload, 1_000_000);
        assert!(parse_open("{}").is_err());
    }

    #[test]
    fn socketio_packets() {
        let p = decode_socketio(r#"0{"sid":"x"}"#).unwrap();
        assert_eq!(p.kind, SioKind::Connect);
        assert_eq!(p.namespace, "/");
        assert_eq!(p.id, None);
        assert_eq!(p.data, r#"{"sid":"x"}"#);

        let p = decode_socketio(r#"2["receive_message",{"content":"hi"}]"#).unwrap();
        assert_eq!(p.kind, SioKind::Event);
        assert_eq!(p.id, None);
        assert_eq!(event_name(p.data), Some("receive_message"));

        let p = decode_socketio(r#"312[{"status":"sent"}]"#).unwrap();
        assert_eq!(p.kind, SioKind::Ack);
        assert_eq!(p.id, Some(12));
        assert_eq!(p.data, r#"[{"status":"sent"}]"#);

        let p = decode_socketio(r#"2/admin,7["ev"]"#).unwrap();
        assert_eq!(p.namespace, "/admin");
        assert_eq!(p.id, Some(7));
        assert_eq!(p.data, r#"["ev"]"#);

        let p = decode_socketio("1/admin").unwrap();
        assert_eq!(p.kind, SioKind::Disconnect);
        assert_eq!(p.namespace, "/admin");
        assert_eq!(p.data, "");

        let p = decode_socketio(r#"51-["up",{"_placeholder":true,"num":0}]"#).unwrap();
        assert_eq!(p.kind, SioKind::BinaryEvent);
        assert_eq!(event_name(p.data), Some("up"));

        let p = decode_socketio(r#"4{"message":"unauthorized"}"#).unwrap();
        assert_eq!(p.kind, SioKind::ConnectError);

        assert_eq!(decode_socketio(""), Err(SioError::Empty));
        assert_eq!(decode_socketio("7"), Err(SioError::UnknownType('7')));
        assert_eq!(decode_socketio("5[]"), Err(SioError::Header));
        assert_eq!(
            decode_socketio("399999999999999999999999[]"),
            Err(SioError::Header)
        );
    }

    #[test]
    fn event_names() {
        assert_eq!(event_name(r#"["join","chat:1"]"#), Some("join"));
        assert_eq!(event_name(r#"["a\"b"]"#), None);
        assert_eq!(event_name(r#"[1]"#), None);
        assert_eq!(event_name(""), None);
    }

    #[test]
    fn encoding_round_trips() {
        let connect = encode_connect(r#"{"token":"t"}"#);
        assert_eq!(connect, r#"40{"token":"t"}"#);
        let event = encode_event(Some(5), "send_message", r#"{"content":"x"}"#);
        assert_eq!(event, r#"425["send_message",{"content":"x"}]"#);
        let EnginePacket::Message(inner) = decode_engine(&event).unwrap() else {
            panic!("expected a message packet");
        };
        let p = decode_socketio(inner).unwrap();
        assert_eq!((p.kind, p.id), (SioKind::Event, Some(5)));
        assert_eq!(event_name(p.data), Some("send_message"));
        assert_eq!(
            encode_event(None, "join", "\"chat:1\""),
            r#"42["join","chat:1"]"#
        );
        assert_eq!(encode_ack(3, r#"{"ok":true}"#), r#"433[{"ok":true}]"#);
        // Event names are JSON-escaped.
        assert_eq!(encode_event(None, "a\"b", "1"), r#"42["a\"b",1]"#);
    }
}
