//! [`Serializer`]: the encoding a socket negotiated with its `vsn` connect parameter.
//!
//! | `vsn`             | serializer | text frames                            | binary frames |
//! |-------------------|------------|----------------------------------------|---------------|
//! | absent or `1.0.x` | V1         | `{"topic","event","payload","ref"}`    | none          |
//! | `2.0.x`           | V2         | `[join_ref, ref, topic, event, payload]` | kinds 0, 1, 2 |
//! | anything else     | refused (HTTP 403 before the upgrade)                        |||

use bytes::Bytes;
use thiserror::Error;

use crate::error::{DecodeError, EncodeError};
use crate::message::{Frame, Json, Message, Payload, Ref};
use crate::{binary, json};

/// The wire encoding of one socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Serializer {
    /// `vsn=1.0.0`: JSON objects, text only, no join_ref on the way out.
    V1,
    /// `vsn=2.0.0`: JSON arrays, plus V2 binary frames for binary payloads.
    V2,
}

/// A `vsn` that matches neither `~> 1.0.0` nor `~> 2.0.0`.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("unsupported vsn {0:?}: expected 1.0.x or 2.0.x")]
pub struct VsnError(pub String);

impl Serializer {
    /// Both serializers, in a fixed order (used to index per-serializer caches).
    pub const ALL: [Serializer; 2] = [Serializer::V1, Serializer::V2];

    /// Picks the serializer for a `vsn` parameter: absent means V1, `1.0.x` V1, `2.0.x` V2.
    /// Anything else (`2.1.0`, `3.0.0`, `2`, `2.0.x-rc`) is refused, as Phoenix refuses it.
    pub fn from_vsn(vsn: Option<&str>) -> Result<Serializer, VsnError> {
        let Some(v) = vsn else {
            return Ok(Serializer::V1);
        };
        let mut parts = v.split('.');
        let (major, minor, patch) = (parts.next(), parts.next(), parts.next());
        // Semantic versioning numbers: digits, no leading zero (as Elixir's Version parses).
        let is_num = |p: Option<&str>| {
            p.is_some_and(|p| {
                !p.is_empty()
                    && p.bytes().all(|b| b.is_ascii_digit())
                    && !(p.len() > 1 && p.starts_with('0'))
            })
        };
        if parts.next().is_some() || !is_num(major) || !is_num(minor) || !is_num(patch) {
            return Err(VsnError(v.to_owned()));
        }
        match (major, minor) {
            (Some("1"), Some("0")) => Ok(Serializer::V1),
            (Some("2"), Some("0")) => Ok(Serializer::V2),
            _ => Err(VsnError(v.to_owned())),
        }
    }

    /// Index of this serializer in [`Serializer::ALL`].
    pub fn index(self) -> usize {
        match self {
            Serializer::V1 => 0,
            Serializer::V2 => 1,
        }
    }

    /// Decodes a text frame. The payload stays a zero-copy slice of `text`.
    pub fn decode_text(self, text: Bytes) -> Result<Message, DecodeError> {
        match self {
            Serializer::V1 => json::decode_v1(text),
            Serializer::V2 => json::decode_v2(text),
        }
    }

    /// Decodes a binary frame (V2 client push, kind 0). V1 has no binary frames.
    pub fn decode_binary(self, data: Bytes) -> Result<Message, DecodeError> {
        match self {
            Serializer::V1 => Err(DecodeError::BinaryNotSupported),
            Serializer::V2 => binary::decode_push(data).map_err(DecodeError::Binary),
        }
    }

    /// Encodes a reply to the message `ref_`: `phx_reply` with `{"status","response"}`, or a
    /// binary kind-1 frame when the response is binary. The encoding follows the response,
    /// not the request.
    pub fn encode_reply(
        self,
        join_ref: Option<&Ref>,
        ref_: Option<&Ref>,
        topic: &str,
        status: &str,
        response: &Payload,
    ) -> Result<Frame, EncodeError> {
        match (self, response) {
            (Serializer::V2, Payload::Binary(b)) => {
                binary::encode_reply(join_ref, ref_, topic, status, b).map(Frame::Binary)
            }
            (Serializer::V1, Payload::Binary(_)) => Err(EncodeError::BinaryOnV1),
            (ser, Payload::Json(j)) => {
                let payload = json::reply_payload(status, j);
                Ok(ser.encode_json(join_ref, ref_, topic, crate::event::PHX_REPLY, &payload))
            }
        }
    }

    /// Encodes a push from a channel to its own client: `[join_ref, null, topic, event,
    /// payload]`, or a binary kind-0 frame (4-byte header, no ref).
    pub fn encode_push(
        self,
        join_ref: Option<&Ref>,
        topic: &str,
        event: &str,
        payload: &Payload,
    ) -> Result<Frame, EncodeError> {
        match (self, payload) {
            (Serializer::V2, Payload::Binary(b)) => {
                binary::encode_push(join_ref, topic, event, b).map(Frame::Binary)
            }
            (Serializer::V1, Payload::Binary(_)) => Err(EncodeError::BinaryOnV1),
            (ser, Payload::Json(j)) => Ok(ser.encode_json(join_ref, None, topic, event, j)),
        }
    }

    /// Encodes a broadcast: `[null, null, topic, event, payload]`, or a binary kind-2 frame.
    /// The pub/sub layer calls this once per serializer per broadcast and shares the result.
    pub fn encode_broadcast(
        self,
        topic: &str,
        event: &str,
        payload: &Payload,
    ) -> Result<Frame, EncodeError> {
        match (self, payload) {
            (Serializer::V2, Payload::Binary(b)) => {
                binary::encode_broadcast(topic, event, b).map(Frame::Binary)
            }
            (Serializer::V1, Payload::Binary(_)) => Err(EncodeError::BinaryOnV1),
            (ser, Payload::Json(j)) => Ok(ser.encode_json(None, None, topic, event, j)),
        }
    }

    /// Encodes `phx_close` or `phx_error`, which carry `ref = join_ref`: `[jr, jr, topic,
    /// event, payload]` (V1: `ref` is the join_ref, usually null). Always JSON text.
    pub fn encode_control(
        self,
        join_ref: Option<&Ref>,
        topic: &str,
        event: &str,
        payload: &Json,
    ) -> Frame {
        self.encode_json(join_ref, join_ref, topic, event, payload)
    }

    fn encode_json(
        self,
        join_ref: Option<&Ref>,
        ref_: Option<&Ref>,
        topic: &str,
        event: &str,
        payload: &Json,
    ) -> Frame {
        let text = match self {
            Serializer::V1 => json::encode_v1(ref_, topic, event, payload),
            Serializer::V2 => json::encode_v2(join_ref, ref_, topic, event, payload),
        };
        // Writers send text frames without checking them again (once per subscriber would be
        // the cost); what makes that right is checked here in every test build.
        debug_assert!(std::str::from_utf8(&text).is_ok(), "text frame is UTF-8");
        Frame::Text(text)
    }
}

#[cfg(test)]
mod tests {
    use super::Serializer;

    #[test]
    fn vsn_negotiation() {
        assert_eq!(Serializer::from_vsn(None), Ok(Serializer::V1));
        for v in ["1.0.0", "1.0.7"] {
            assert_eq!(Serializer::from_vsn(Some(v)), Ok(Serializer::V1), "{v}");
        }
        for v in ["2.0.0", "2.0.10"] {
            assert_eq!(Serializer::from_vsn(Some(v)), Ok(Serializer::V2), "{v}");
        }
        for v in [
            "2.1.0", "3.0.0", "2", "2.0", "2.0.0.0", "2.0.x", "", "02.0.0", "2.0.00", "v2.0.0",
        ] {
            assert!(Serializer::from_vsn(Some(v)).is_err(), "{v}");
        }
    }
}
