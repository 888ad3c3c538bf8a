//! The envelope a broadcast travels in between nodes, version 2.
//!
//! One Redis PUBLISH per broadcast, on the Redis channel `plume:t:{topic}` (so the topic is not
//! repeated inside). The message bytes:
//!
//! | offset | size | field |
//! |--------|------|-------|
//! | 0      | 1    | version, `2` |
//! | 1      | 1    | flags: bit 0 set = binary payload, clear = JSON payload; bit 1 set = sequenced |
//! | 2      | 1    | length N of the origin node id |
//! | 3      | N    | origin node id (UTF-8) |
//! | 3+N    | 8    | origin socket id, big endian; `0` = none (a plain broadcast) |
//! | 11+N   | 16   | only when sequenced: the log's epoch and the message's seq, u64 big endian each |
//! | then   | 2    | length E of the event name, big endian |
//! | then   | E    | event name (UTF-8) |
//! | then   | rest | payload: JSON text or raw bytes |
//!
//! Version 1 (before sequenced broadcasts) had no seq field and no flag bit 1. A node drops
//! envelopes of a version it does not speak; during a rolling upgrade the chat log repairs
//! the chat messages lost that way (see the seq repair in plume-channels).
//!
//! A receiver drops envelopes of another version, envelopes it cannot parse (logged), and
//! its own (it delivered them locally when it published). The origin socket id is how
//! broadcast_from excludes its sender: only the origin node has that socket.

use bytes::{BufMut, Bytes, BytesMut};
use plume_channels::Seq;
use plume_wire::{Json, Payload};

/// Current envelope version.
pub const VERSION: u8 = 2;

const FLAG_BINARY: u8 = 1;
const FLAG_SEQ: u8 = 2;

/// A decoded envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The node that published it.
    pub node: String,
    /// The socket excluded by broadcast_from (0 = none).
    pub from_socket: u64,
    /// The log position of a sequenced broadcast.
    pub seq: Option<Seq>,
    /// The event.
    pub event: String,
    /// The payload.
    pub payload: Payload,
}

/// Why an envelope was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Another version (a newer node, or not Plume).
    #[error("unsupported envelope version {0}")]
    Version(u8),
    /// Truncated or malformed.
    #[error("malformed envelope: {0}")]
    Malformed(&'static str),
}

/// Encodes an envelope. Fails only for a node id over 255 bytes or an event over 65535 bytes.
pub fn encode(
    node: &str,
    from_socket: u64,
    seq: Option<Seq>,
    event: &str,
    payload: &Payload,
) -> Result<Bytes, EnvelopeError> {
    let node_len = u8::try_from(node.len()).map_err(|_| EnvelopeError::Malformed("node id"))?;
    let event_len = u16::try_from(event.len()).map_err(|_| EnvelopeError::Malformed("event"))?;
    let (mut flags, body) = match payload {
        Payload::Json(j) => (0, j.as_bytes()),
        Payload::Binary(b) => (FLAG_BINARY, b),
    };
    if seq.is_some() {
        flags |= FLAG_SEQ;
    }
    let mut out = BytesMut::with_capacity(29 + node.len() + event.len() + body.len());
    out.put_u8(VERSION);
    out.put_u8(flags);
    out.put_u8(node_len);
    out.put_slice(node.as_bytes());
    out.put_u64(from_socket);
    if let Some(seq) = seq {
        out.put_u64(seq.epoch);
        out.put_u64(seq.seq);
    }
    out.put_u16(event_len);
    out.put_slice(event.as_bytes());
    out.put_slice(body);
    Ok(out.freeze())
}

/// Decodes an envelope; the payload is a zero-copy slice of `data`.
pub fn decode(data: Bytes) -> Result<Envelope, EnvelopeError> {
    let take =
        |at: usize, n: usize, what| data.get(at..at + n).ok_or(EnvelopeError::Malformed(what));
    let version = *data.first().ok_or(EnvelopeError::Malformed("empty"))?;
    if version != VERSION {
        return Err(EnvelopeError::Version(version));
    }
    let flags = take(1, 1, "flags")?[0];
    let node_len = usize::from(take(2, 1, "node length")?[0]);
    let node = std::str::from_utf8(take(3, node_len, "node id")?)
        .map_err(|_| EnvelopeError::Malformed("node id"))?
        .to_owned();
    let mut at = 3 + node_len;
    let mut socket = [0u8; 8];
    socket.copy_from_slice(take(at, 8, "socket id")?);
    at += 8;
    let u64_at = |at: usize, what| -> Result<u64, EnvelopeError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(take(at, 8, what)?);
        Ok(u64::from_be_bytes(b))
    };
    let seq = if flags & FLAG_SEQ != 0 {
        let seq = Seq {
            epoch: u64_at(at, "epoch")?,
            seq: u64_at(at + 8, "seq")?,
        };
        at += 16;
        Some(seq)
    } else {
        None
    };
    let event_len = usize::from(u16::from_be_bytes([
        take(at, 1, "event length")?[0],
        take(at + 1, 1, "event length")?[0],
    ]));
    at += 2;
    let event = std::str::from_utf8(take(at, event_len, "event")?)
        .map_err(|_| EnvelopeError::Malformed("event"))?
        .to_owned();
    at += event_len;
    let body = data.slice(at..);
    let payload = if flags & FLAG_BINARY != 0 {
        Payload::Binary(body)
    } else {
        Payload::Json(Json::from_text(body).map_err(|_| EnvelopeError::Malformed("payload"))?)
    };
    Ok(Envelope {
        node,
        from_socket: u64::from_be_bytes(socket),
        seq,
        event,
        payload,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_and_exact_bytes() {
        let payload = Payload::Json(Json::from_text(Bytes::from_static(b"{\"a\":1}")).unwrap());
        let bytes = encode("n1", 7, None, "ev", &payload).unwrap();
        assert_eq!(
            bytes.as_ref(),
            b"\x02\x00\x02n1\x00\x00\x00\x00\x00\x00\x00\x07\x00\x02ev{\"a\":1}"
        );
        let back = decode(bytes).unwrap();
        assert_eq!(
            back,
            Envelope {
                node: "n1".into(),
                from_socket: 7,
                seq: None,
                event: "ev".into(),
                payload
            }
        );
    }

    #[test]
    fn sequenced_round_trip_and_exact_bytes() {
        let payload = Payload::Json(Json::from_text(Bytes::from_static(b"{}")).unwrap());
        let seq = Some(Seq { epoch: 9, seq: 258 });
        let bytes = encode("n", 0, seq, "e", &payload).unwrap();
        assert_eq!(
            bytes.as_ref(),
            b"\x02\x02\x01n\x00\x00\x00\x00\x00\x00\x00\x00\
              \x00\x00\x00\x00\x00\x00\x00\x09\x00\x00\x00\x00\x00\x00\x01\x02\
              \x00\x01e{}"
        );
        let back = decode(bytes).unwrap();
        assert_eq!((back.seq, back.event.as_str()), (seq, "e"));
        assert_eq!(back.payload, payload);
    }

    #[test]
    fn binary_round_trip() {
        let payload = Payload::Binary(Bytes::from_static(&[0, 1, 255]));
        let back = decode(encode("node", 0, None, "blob", &payload).unwrap()).unwrap();
        assert_eq!(back.payload, payload);
        assert_eq!(back.from_socket, 0);
    }

    #[test]
    fn bad_envelopes_are_errors_not_panics() {
        assert_eq!(decode(Bytes::new()), Err(EnvelopeError::Malformed("empty")));
        assert_eq!(
            decode(Bytes::from_static(&[1, 0])),
            Err(EnvelopeError::Version(1))
        );
        let seq = Some(Seq { epoch: 1, seq: 2 });
        for good in [
            encode("n", 1, None, "e", &Payload::empty()).unwrap(),
            encode("n", 1, seq, "e", &Payload::empty()).unwrap(),
        ] {
            for cut in 1..good.len() - 2 {
                assert!(decode(good.slice(..cut)).is_err(), "cut at {cut}");
            }
        }
        let good = encode("n", 1, None, "e", &Payload::empty()).unwrap();
        let mut bad_json = good.to_vec();
        bad_json.truncate(good.len() - 1);
        assert!(decode(Bytes::from(bad_json)).is_err());
    }
}
