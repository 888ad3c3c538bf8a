//! The client side of the protocol: encode what a client sends, decode what a server sends.
//!
//! The server never needs these; they exist for Plume's own test client and load generator,
//! which must speak exactly what phoenix.js speaks:
//!
//! - [`encode_client_push`]: V2 `[join_ref, ref, topic, event, payload]`, V1
//!   `{"topic","event","payload","ref"}` (plus `"join_ref"` when there is one), or a V2 binary
//!   kind-0 frame with the 5-byte client header for a binary payload.
//! - [`decode_server_text`] and [`decode_server_binary`]: server frames into a
//!   [`ServerMessage`], which also carries the status of a binary reply (kind 1), since a
//!   binary reply has no JSON `{"status", "response"}` wrapper to hold it.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::{DecodeError, EncodeError};
use crate::event::PHX_REPLY;
use crate::message::{Frame, Json, Message, Payload, Ref};
use crate::serializer::Serializer;
use crate::{binary, json};

/// A message from the server, as a client sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerMessage {
    /// The join_ref of the channel instance it belongs to (`None` for broadcasts and for V1,
    /// which never sends one).
    pub join_ref: Option<Ref>,
    /// The ref of the client message it answers (replies, `phx_close`, `phx_error`).
    pub ref_: Option<Ref>,
    /// The topic.
    pub topic: String,
    /// The event; `phx_reply` for replies, binary ones included.
    pub event: String,
    /// The payload: for a JSON reply the whole `{"status", "response"}` object, for a binary
    /// reply the response bytes alone.
    pub payload: Payload,
    /// The status of a binary reply (kind 1); `None` for every other frame. Use
    /// [`ServerMessage::reply_status`] to read the status of any reply.
    pub status: Option<String>,
}

impl ServerMessage {
    /// The status of a reply (`ok`, `error`, ...): from the binary reply header, or from the
    /// `"status"` key of a JSON `phx_reply` payload. `None` for anything that is not a reply
    /// or whose payload has no string status.
    pub fn reply_status(&self) -> Option<String> {
        if let Some(status) = &self.status {
            return Some(status.clone());
        }
        #[derive(Deserialize)]
        struct Reply {
            status: String,
        }
        let json = self.json_reply()?;
        json.parse::<Reply>().ok().map(|reply| reply.status)
    }

    /// The response of a reply: the response bytes of a binary reply, or the `"response"`
    /// value of a JSON `phx_reply` payload (a zero-copy slice of it). `None` for anything
    /// that is not a reply or whose payload has no response.
    pub fn reply_response(&self) -> Option<Payload> {
        if self.status.is_some() {
            return Some(self.payload.clone());
        }
        #[derive(Deserialize)]
        struct Reply<'a> {
            #[serde(borrow)]
            response: &'a RawValue,
        }
        let text = self.json_reply()?.as_bytes();
        let reply = serde_json::from_slice::<Reply<'_>>(text).ok()?;
        let response = json::subslice(text, reply.response.get().as_bytes());
        Some(Payload::Json(Json::from_trusted(response)))
    }

    /// The JSON payload of a `phx_reply`.
    fn json_reply(&self) -> Option<&Json> {
        if self.event == PHX_REPLY {
            self.payload.as_json()
        } else {
            None
        }
    }

    fn from_message(m: Message) -> ServerMessage {
        ServerMessage {
            join_ref: m.join_ref,
            ref_: m.ref_,
            topic: m.topic,
            event: m.event,
            payload: m.payload,
            status: None,
        }
    }
}

/// Encodes a message from a client: a JSON text frame for a JSON payload, a V2 binary kind-0
/// frame (5-byte header; `None` refs as empty fields) for a binary one.
///
/// Fails with [`EncodeError::BinaryOnV1`] for a binary payload on V1, and with
/// [`EncodeError::FieldTooLong`] when a binary frame's field exceeds 255 bytes.
pub fn encode_client_push(
    ser: Serializer,
    join_ref: Option<&Ref>,
    ref_: Option<&Ref>,
    topic: &str,
    event: &str,
    payload: &Payload,
) -> Result<Frame, EncodeError> {
    match (ser, payload) {
        (Serializer::V2, Payload::Json(j)) => Ok(Frame::Text(json::encode_v2(
            join_ref, ref_, topic, event, j,
        ))),
        (Serializer::V1, Payload::Json(j)) => Ok(Frame::Text(json::encode_v1_client(
            join_ref, ref_, topic, event, j,
        ))),
        (Serializer::V2, Payload::Binary(b)) => {
            binary::encode_client_push(join_ref, ref_, topic, event, b).map(Frame::Binary)
        }
        (Serializer::V1, Payload::Binary(_)) => Err(EncodeError::BinaryOnV1),
    }
}

/// Decodes a text frame from the server: a V2 array or a V1 object. The payload stays a
/// zero-copy slice of `text`.
pub fn decode_server_text(ser: Serializer, text: Bytes) -> Result<ServerMessage, DecodeError> {
    ser.decode_text(text).map(ServerMessage::from_message)
}

/// Decodes a binary frame from the server: kind 0 (push, no ref), 1 (reply; event
/// `phx_reply`, `status` set, payload = response bytes) or 2 (broadcast, no refs).
pub fn decode_server_binary(data: Bytes) -> Result<ServerMessage, DecodeError> {
    binary::decode_server(data).map_err(DecodeError::Binary)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use super::*;

    fn text(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn json_reply_status_and_response() {
        let m = decode_server_text(
            Serializer::V2,
            text(r#"["1","2","chat:1","phx_reply",{"response":{"reason":"invalid_payload"},"status":"error"}]"#),
        )
        .unwrap();
        assert_eq!(m.status, None);
        assert_eq!(m.reply_status().as_deref(), Some("error"));
        let Some(Payload::Json(response)) = m.reply_response() else {
            panic!("expected a JSON response");
        };
        assert_eq!(&response.as_bytes()[..], br#"{"reason":"invalid_payload"}"#);
    }

    #[test]
    fn v1_reply() {
        let m = decode_server_text(
            Serializer::V1,
            text(r#"{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"1","topic":"phoenix"}"#),
        )
        .unwrap();
        assert_eq!(m.join_ref, None);
        assert_eq!(m.ref_, Some(Ref::from("1")));
        assert_eq!(m.reply_status().as_deref(), Some("ok"));
        assert_eq!(m.reply_response(), Some(Payload::empty()));
    }

    #[test]
    fn non_replies_have_no_status() {
        let m = decode_server_text(
            Serializer::V2,
            text(r#"[null,null,"chat:1","new_msg",{"response":{},"status":"ok"}]"#),
        )
        .unwrap();
        assert_eq!(m.reply_status(), None);
        assert_eq!(m.reply_response(), None);
        let m =
            decode_server_text(Serializer::V2, text(r#"["1","1","t","phx_reply","x"]"#)).unwrap();
        assert_eq!(m.reply_status(), None);
        assert_eq!(m.reply_response(), None);
    }

    #[test]
    fn binary_reply() {
        let m = decode_server_binary(Bytes::from_static(b"\x01\x02\x01\x01\x02112tok\x01\x02"))
            .unwrap();
        assert_eq!(m.event, "phx_reply");
        assert_eq!(m.reply_status().as_deref(), Some("ok"));
        assert_eq!(
            m.reply_response(),
            Some(Payload::Binary(Bytes::from_static(&[1, 2])))
        );
        assert_eq!(
            decode_server_binary(Bytes::new()),
            Err(DecodeError::Binary(crate::error::BinaryError::Empty))
        );
    }

    #[test]
    fn client_push_round_trips_through_the_server_decoder() {
        let jr = Ref::from("3");
        let r = Ref::Num("8".into());
        let payload = Payload::json(&serde_json::json!({"body": "hi"})).unwrap();
        for ser in Serializer::ALL {
            let frame =
                encode_client_push(ser, Some(&jr), Some(&r), "room:lobby", "new_msg", &payload)
                    .unwrap();
            let Frame::Text(bytes) = frame else {
                panic!("expected text");
            };
            let m = ser.decode_text(bytes).unwrap();
            assert_eq!(m.join_ref, Some(jr.clone()));
            assert_eq!(m.ref_, Some(r.clone()));
            assert_eq!(m.topic, "room:lobby");
            assert_eq!(m.payload, payload);
        }
        let binary = Payload::Binary(Bytes::from_static(&[1, 2]));
        let frame = encode_client_push(Serializer::V2, None, Some(&jr), "t", "e", &binary).unwrap();
        assert_eq!(
            frame,
            Frame::Binary(Bytes::from_static(b"\x00\x00\x01\x01\x013te\x01\x02"))
        );
        let m = Serializer::V2
            .decode_binary(frame.as_bytes().clone())
            .unwrap();
        assert_eq!(m.join_ref, None);
        assert_eq!(m.payload, binary);
        assert_eq!(
            encode_client_push(Serializer::V1, None, None, "t", "e", &binary),
            Err(EncodeError::BinaryOnV1)
        );
    }
}
