//! V2 binary frames.
//!
//! A frame is a kind byte, one length byte per metadata field, the fields (UTF-8, no
//! separators), then the payload as the rest of the frame:
//!
//! | kind | direction        | fields                              |
//! |------|------------------|-------------------------------------|
//! | 0    | client to server | join_ref, ref, topic, event         |
//! | 0    | server to client | join_ref, topic, event (no ref)     |
//! | 1    | server to client | join_ref, ref, topic, status        |
//! | 2    | server to client | topic, event                        |
//!
//! A missing ref travels as an empty field, and an empty ref field decodes to `None`.

use bytes::Bytes;

use crate::client::ServerMessage;
use crate::error::{BinaryError, EncodeError};
use crate::event::PHX_REPLY;
use crate::message::{Message, Payload, Ref};

const KIND_PUSH: u8 = 0;
const KIND_REPLY: u8 = 1;
const KIND_BROADCAST: u8 = 2;

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// Decodes a client push: kind 0 with a 5-byte header.
pub(crate) fn decode_push(data: Bytes) -> Result<Message, BinaryError> {
    let mut frame = Reader::new(&data)?;
    if frame.kind != KIND_PUSH {
        return Err(BinaryError::UnknownKind(frame.kind));
    }
    let [join_ref, ref_, topic, event] = frame.header()?;
    let join_ref = frame.ref_field(join_ref, "join_ref")?;
    let ref_ = frame.ref_field(ref_, "ref")?;
    let topic = frame.text(topic, "topic")?.to_owned();
    let event = frame.text(event, "event")?.to_owned();
    Ok(Message {
        join_ref,
        ref_,
        topic,
        event,
        payload: Payload::Binary(frame.rest()),
    })
}

/// Decodes any frame a server sends (kinds 0, 1 and 2); the client side of the protocol.
pub(crate) fn decode_server(data: Bytes) -> Result<ServerMessage, BinaryError> {
    let mut frame = Reader::new(&data)?;
    match frame.kind {
        KIND_PUSH => {
            let [join_ref, topic, event] = frame.header()?;
            Ok(ServerMessage {
                join_ref: frame.ref_field(join_ref, "join_ref")?,
                ref_: None,
                topic: frame.text(topic, "topic")?.to_owned(),
                event: frame.text(event, "event")?.to_owned(),
                payload: Payload::Binary(frame.rest()),
                status: None,
            })
        }
        KIND_REPLY => {
            let [join_ref, ref_, topic, status] = frame.header()?;
            Ok(ServerMessage {
                join_ref: frame.ref_field(join_ref, "join_ref")?,
                ref_: frame.ref_field(ref_, "ref")?,
                topic: frame.text(topic, "topic")?.to_owned(),
                event: PHX_REPLY.to_owned(),
                status: Some(frame.text(status, "status")?.to_owned()),
                payload: Payload::Binary(frame.rest()),
            })
        }
        KIND_BROADCAST => {
            let [topic, event] = frame.header()?;
            Ok(ServerMessage {
                join_ref: None,
                ref_: None,
                topic: frame.text(topic, "topic")?.to_owned(),
                event: frame.text(event, "event")?.to_owned(),
                payload: Payload::Binary(frame.rest()),
                status: None,
            })
        }
        kind => Err(BinaryError::UnknownKind(kind)),
    }
}

/// A cursor over a binary frame; every read is bounds-checked.
struct Reader<'a> {
    data: &'a Bytes,
    kind: u8,
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(data: &'a Bytes) -> Result<Reader<'a>, BinaryError> {
        let kind = *data.first().ok_or(BinaryError::Empty)?;
        Ok(Reader { data, kind, pos: 1 })
    }

    /// The `N` length bytes after the kind byte.
    fn header<const N: usize>(&mut self) -> Result<[u8; N], BinaryError> {
        let lens = self
            .data
            .get(self.pos..self.pos + N)
            .and_then(|bytes| <[u8; N]>::try_from(bytes).ok())
            .ok_or(BinaryError::Truncated("header"))?;
        self.pos += N;
        Ok(lens)
    }

    fn text(&mut self, len: u8, field: &'static str) -> Result<&'a str, BinaryError> {
        let end = self.pos + usize::from(len);
        let bytes = self
            .data
            .get(self.pos..end)
            .ok_or(BinaryError::Truncated(field))?;
        self.pos = end;
        std::str::from_utf8(bytes).map_err(|_| BinaryError::InvalidUtf8(field))
    }

    /// A ref field: empty means "no ref".
    fn ref_field(&mut self, len: u8, field: &'static str) -> Result<Option<Ref>, BinaryError> {
        let text = self.text(len, field)?;
        Ok((!text.is_empty()).then(|| Ref::Str(text.into())))
    }

    /// The payload: everything after the fields, without copying.
    fn rest(self) -> Bytes {
        self.data.slice(self.pos..)
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

/// A server push: kind 0 with a 4-byte header (no ref).
pub(crate) fn encode_push(
    join_ref: Option<&Ref>,
    topic: &str,
    event: &str,
    payload: &Bytes,
) -> Result<Bytes, EncodeError> {
    encode(
        KIND_PUSH,
        [
            ("join_ref", ref_text(join_ref)),
            ("topic", topic),
            ("event", event),
        ],
        payload,
    )
}

/// A reply: kind 1; the status takes the event's place.
pub(crate) fn encode_reply(
    join_ref: Option<&Ref>,
    ref_: Option<&Ref>,
    topic: &str,
    status: &str,
    payload: &Bytes,
) -> Result<Bytes, EncodeError> {
    encode(
        KIND_REPLY,
        [
            ("join_ref", ref_text(join_ref)),
            ("ref", ref_text(ref_)),
            ("topic", topic),
            ("status", status),
        ],
        payload,
    )
}

/// A broadcast: kind 2, no refs.
pub(crate) fn encode_broadcast(
    topic: &str,
    event: &str,
    payload: &Bytes,
) -> Result<Bytes, EncodeError> {
    encode(
        KIND_BROADCAST,
        [("topic", topic), ("event", event)],
        payload,
    )
}

/// A client push: kind 0 with a 5-byte header (the client side of the protocol).
pub(crate) fn encode_client_push(
    join_ref: Option<&Ref>,
    ref_: Option<&Ref>,
    topic: &str,
    event: &str,
    payload: &Bytes,
) -> Result<Bytes, EncodeError> {
    encode(
        KIND_PUSH,
        [
            ("join_ref", ref_text(join_ref)),
            ("ref", ref_text(ref_)),
            ("topic", topic),
            ("event", event),
        ],
        payload,
    )
}

/// A missing ref is an empty field, as Phoenix writes it.
fn ref_text(r: Option<&Ref>) -> &str {
    r.map_or("", Ref::as_str)
}

/// Writes kind, lengths, fields and payload into one exactly sized buffer.
fn encode<const N: usize>(
    kind: u8,
    fields: [(&'static str, &str); N],
    payload: &[u8],
) -> Result<Bytes, EncodeError> {
    let mut lens = [0u8; N];
    for (len, (field, value)) in lens.iter_mut().zip(fields) {
        *len = u8::try_from(value.len()).map_err(|_| EncodeError::FieldTooLong {
            field,
            len: value.len(),
        })?;
    }
    let size = 1 + N + fields.iter().map(|(_, v)| v.len()).sum::<usize>() + payload.len();
    let mut out = Vec::with_capacity(size);
    out.push(kind);
    out.extend_from_slice(&lens);
    for (_, value) in fields {
        out.extend_from_slice(value.as_bytes());
    }
    out.extend_from_slice(payload);
    debug_assert_eq!(out.len(), size);
    Ok(Bytes::from(out))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use super::*;

    fn str_ref(s: &str) -> Option<Ref> {
        Some(Ref::Str(s.into()))
    }

    /// The worked example of the protocol notes: `00 02 03 05 05 "12" "123" "topic" "event"
    /// 65 66 67`.
    const CLIENT_PUSH: &[u8] = b"\x00\x02\x03\x05\x0512123topicevent\x65\x66\x67";

    #[test]
    fn decodes_the_worked_client_push() {
        let m = decode_push(Bytes::from_static(CLIENT_PUSH)).unwrap();
        assert_eq!(m.join_ref, str_ref("12"));
        assert_eq!(m.ref_, str_ref("123"));
        assert_eq!(m.topic, "topic");
        assert_eq!(m.event, "event");
        assert_eq!(m.payload, Payload::Binary(Bytes::from_static(b"efg")));
    }

    #[test]
    fn decodes_the_transcript_push() {
        // binary_push.txt: 00 | 01 01 06 0c | "1" "2" "chat:1" "send_message" | 01 02 03
        let frame = b"\x00\x01\x01\x06\x0c12chat:1send_message\x01\x02\x03";
        let m = decode_push(Bytes::from_static(frame)).unwrap();
        assert_eq!(m.join_ref, str_ref("1"));
        assert_eq!(m.ref_, str_ref("2"));
        assert_eq!(m.topic, "chat:1");
        assert_eq!(m.event, "send_message");
        assert_eq!(m.payload, Payload::Binary(Bytes::from_static(&[1, 2, 3])));
    }

    #[test]
    fn an_empty_join_ref_is_none() {
        let frame = b"\x00\x00\x01\x06\x0c2chat:1send_message\x01\x02\x03";
        let m = decode_push(Bytes::from_static(frame)).unwrap();
        assert_eq!(m.join_ref, None);
        assert_eq!(m.ref_, str_ref("2"));
        assert_eq!(m.event, "send_message");
    }

    #[test]
    fn payload_is_a_slice_of_the_frame() {
        let frame = Bytes::from_static(CLIENT_PUSH);
        let m = decode_push(frame.clone()).unwrap();
        let Payload::Binary(payload) = m.payload else {
            panic!("expected binary");
        };
        assert_eq!(payload.as_ptr().addr() - frame.as_ptr().addr(), 20);
    }

    #[test]
    fn empty_payload_and_empty_fields() {
        let m = decode_push(Bytes::from_static(b"\x00\x00\x00\x00\x00")).unwrap();
        assert_eq!((m.join_ref, m.ref_), (None, None));
        assert_eq!((m.topic.as_str(), m.event.as_str()), ("", ""));
        assert_eq!(m.payload, Payload::Binary(Bytes::new()));
    }

    #[test]
    fn push_errors() {
        let decode = |b: &'static [u8]| decode_push(Bytes::from_static(b));
        assert_eq!(decode(b""), Err(BinaryError::Empty));
        assert_eq!(
            decode(b"\x01\x00\x00\x00\x00"),
            Err(BinaryError::UnknownKind(1))
        );
        assert_eq!(decode(b"\x02\x00\x00"), Err(BinaryError::UnknownKind(2)));
        assert_eq!(decode(b"\xff"), Err(BinaryError::UnknownKind(255)));
        assert_eq!(decode(b"\x00"), Err(BinaryError::Truncated("header")));
        assert_eq!(
            decode(b"\x00\x02\x03\x05"),
            Err(BinaryError::Truncated("header"))
        );
        assert_eq!(
            decode(b"\x00\x02\x03\x05\x051"),
            Err(BinaryError::Truncated("join_ref"))
        );
        assert_eq!(
            decode(b"\x00\x02\x03\x05\x0512"),
            Err(BinaryError::Truncated("ref"))
        );
        assert_eq!(
            decode(b"\x00\x02\x03\x05\x0512123top"),
            Err(BinaryError::Truncated("topic"))
        );
        assert_eq!(
            decode(b"\x00\x02\x03\x05\x0512123topiceven"),
            Err(BinaryError::Truncated("event"))
        );
        assert_eq!(
            decode(b"\x00\x00\x00\x01\x01\xffe"),
            Err(BinaryError::InvalidUtf8("topic"))
        );
        assert_eq!(
            decode(b"\x00\x01\x00\x01\x01\xc3te"),
            Err(BinaryError::InvalidUtf8("join_ref"))
        );
        assert_eq!(
            decode(b"\xff\xff\xff\xff\xff"),
            Err(BinaryError::UnknownKind(255))
        );
        assert_eq!(
            decode(b"\x00\xff\xff\xff\xff"),
            Err(BinaryError::Truncated("join_ref"))
        );
    }

    #[test]
    fn every_prefix_of_a_frame_is_an_error_not_a_panic() {
        for len in 0..20 {
            let frame = Bytes::copy_from_slice(&CLIENT_PUSH[..len]);
            assert!(decode_push(frame).is_err(), "prefix {len}");
        }
        let reply = b"\x01\x02\x03\x05\x0212123topicok";
        for len in 0..reply.len() {
            let frame = Bytes::copy_from_slice(&reply[..len]);
            assert!(decode_server(frame).is_err(), "prefix {len}");
        }
    }

    #[test]
    fn encodes_the_worked_server_frames() {
        let payload = Bytes::from_static(&[101, 102, 103]);
        let jr = Ref::from("12");
        let r = Ref::from("123");
        assert_eq!(
            &encode_push(Some(&jr), "topic", "event", &payload).unwrap()[..],
            b"\x00\x02\x05\x0512topicevent\x65\x66\x67"
        );
        assert_eq!(
            &encode_reply(Some(&jr), Some(&r), "topic", "ok", &payload).unwrap()[..],
            b"\x01\x02\x03\x05\x0212123topicok\x65\x66\x67"
        );
        assert_eq!(
            &encode_broadcast("topic", "event", &payload).unwrap()[..],
            b"\x02\x05\x05topicevent\x65\x66\x67"
        );
        assert_eq!(
            &encode_client_push(Some(&jr), Some(&r), "topic", "event", &payload).unwrap()[..],
            CLIENT_PUSH
        );
    }

    #[test]
    fn encodes_the_phoenix_js_example() {
        // {join_ref:"0", ref:"1", topic:"t", event:"e", payload:[0x01]}
        let out = encode_client_push(
            Some(&Ref::from("0")),
            Some(&Ref::from("1")),
            "t",
            "e",
            &Bytes::from_static(&[1]),
        )
        .unwrap();
        assert_eq!(&out[..], b"\x00\x01\x01\x01\x01\x30\x31\x74\x65\x01");
    }

    #[test]
    fn none_refs_are_empty_fields() {
        let out = encode_reply(None, None, "t", "ok", &Bytes::new()).unwrap();
        assert_eq!(&out[..], b"\x01\x00\x00\x01\x02tok");
        let out = encode_push(None, "t", "e", &Bytes::new()).unwrap();
        assert_eq!(&out[..], b"\x00\x00\x01\x01te");
        let num = Ref::Num("42".into());
        let out = encode_push(Some(&num), "t", "e", &Bytes::new()).unwrap();
        assert_eq!(&out[..], b"\x00\x02\x01\x0142te");
    }

    #[test]
    fn multibyte_text_is_counted_in_bytes() {
        let out = encode_broadcast("é", "ü", &Bytes::new()).unwrap();
        assert_eq!(&out[..], "\x02\x02\x02éü".as_bytes());
    }

    #[test]
    fn fields_longer_than_255_bytes_are_refused() {
        let long = "a".repeat(256);
        let edge = "b".repeat(255);
        let p = Bytes::new();
        assert_eq!(
            encode_broadcast(&long, "e", &p),
            Err(EncodeError::FieldTooLong {
                field: "topic",
                len: 256
            })
        );
        assert_eq!(
            encode_push(None, "t", &long, &p),
            Err(EncodeError::FieldTooLong {
                field: "event",
                len: 256
            })
        );
        let long_ref = Ref::from(long.as_str());
        assert_eq!(
            encode_reply(None, Some(&long_ref), "t", "ok", &p),
            Err(EncodeError::FieldTooLong {
                field: "ref",
                len: 256
            })
        );
        assert_eq!(
            encode_reply(Some(&long_ref), None, "t", "ok", &p),
            Err(EncodeError::FieldTooLong {
                field: "join_ref",
                len: 256
            })
        );
        assert_eq!(
            encode_reply(None, None, "t", &long, &p),
            Err(EncodeError::FieldTooLong {
                field: "status",
                len: 256
            })
        );
        let out = encode_broadcast(&edge, "e", &p).unwrap();
        assert_eq!(out.len(), 3 + 255 + 1);
        assert_eq!(out[1], 255);
    }

    #[test]
    fn decodes_every_server_kind() {
        let m = decode_server(Bytes::from_static(
            b"\x00\x02\x05\x0512topicevent\x65\x66\x67",
        ))
        .unwrap();
        assert_eq!(m.join_ref, str_ref("12"));
        assert_eq!(m.ref_, None);
        assert_eq!((m.topic.as_str(), m.event.as_str()), ("topic", "event"));
        assert_eq!(m.payload, Payload::Binary(Bytes::from_static(b"efg")));
        assert_eq!(m.status, None);

        let m = decode_server(Bytes::from_static(
            b"\x01\x02\x03\x05\x0212123topicok\x65\x66\x67",
        ))
        .unwrap();
        assert_eq!(m.join_ref, str_ref("12"));
        assert_eq!(m.ref_, str_ref("123"));
        assert_eq!(m.event, "phx_reply");
        assert_eq!(m.status.as_deref(), Some("ok"));
        assert_eq!(m.payload, Payload::Binary(Bytes::from_static(b"efg")));

        let m = decode_server(Bytes::from_static(b"\x02\x05\x05topicevent\x65\x66\x67")).unwrap();
        assert_eq!((m.join_ref, m.ref_), (None, None));
        assert_eq!((m.topic.as_str(), m.event.as_str()), ("topic", "event"));

        assert_eq!(
            decode_server(Bytes::from_static(b"\x03\x00")),
            Err(BinaryError::UnknownKind(3))
        );
        assert_eq!(
            decode_server(Bytes::from_static(b"\x01\x00\x00\x01\x02tx")),
            Err(BinaryError::Truncated("status"))
        );
    }
}
