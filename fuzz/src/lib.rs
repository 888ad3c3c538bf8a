//! Properties shared by the fuzz targets in `fuzz_targets/`.
//!
//! Every target feeds libFuzzer's bytes to one of Plume's real decoders. A panic anywhere is a
//! crash; the `assert!`s here add the properties that are cheap and always true (a decoded
//! message re-encodes to something that decodes to the same message, a decoded payload is
//! valid JSON), so a decoder that silently loses or invents data fails too.

use bytes::Bytes;
use plume_wire::client::{decode_server_text, encode_client_push};
use plume_wire::{Frame, Json, Message, Payload, Serializer};

/// Decodes `data` as a client text frame with `ser`, then checks the round trip and the
/// server-side encoders on the result; also decodes it as a server frame (the client side).
pub fn text_frame(ser: Serializer, data: &[u8]) {
    let data = Bytes::copy_from_slice(data);
    if let Ok(m) = ser.decode_text(data.clone()) {
        let Payload::Json(json) = &m.payload else {
            panic!("a text frame decoded to a binary payload: {m:?}");
        };
        assert!(
            Json::from_text(json.as_bytes().clone()).is_ok(),
            "payload is not one JSON value: {json:?}"
        );
        // Client encoding of the decoded fields decodes to the same message.
        let frame = encode_client_push(
            ser,
            m.join_ref.as_ref(),
            m.ref_.as_ref(),
            &m.topic,
            &m.event,
            &m.payload,
        )
        .expect("a JSON payload always encodes");
        let Frame::Text(text) = frame else {
            panic!("a JSON payload encoded to a binary frame");
        };
        assert!(
            std::str::from_utf8(&text).is_ok(),
            "text frame is not UTF-8"
        );
        let again = ser
            .decode_text(text.clone())
            .unwrap_or_else(|e| panic!("re-encoded {text:?} does not decode: {e}"));
        assert_eq!(again, m, "round trip through {text:?} changed the message");
        server_encoders(ser, &m);
    }
    if let Ok(sm) = decode_server_text(ser, data) {
        if let Some(Payload::Json(response)) = sm.reply_response() {
            assert!(
                Json::from_text(response.as_bytes().clone()).is_ok(),
                "reply response is not one JSON value: {response:?}"
            );
        }
        let _ = sm.reply_status();
    }
}

/// The server's encoders on a decoded message's fields: never a panic, and a JSON frame is
/// always valid UTF-8 that the same serializer decodes.
pub fn server_encoders(ser: Serializer, m: &Message) {
    let frames = [
        ser.encode_push(m.join_ref.as_ref(), &m.topic, &m.event, &m.payload),
        ser.encode_reply(
            m.join_ref.as_ref(),
            m.ref_.as_ref(),
            &m.topic,
            "ok",
            &m.payload,
        ),
        ser.encode_broadcast(&m.topic, &m.event, &m.payload),
    ];
    for frame in frames.into_iter().flatten() {
        if let Frame::Text(text) = frame {
            assert!(
                std::str::from_utf8(&text).is_ok(),
                "text frame is not UTF-8"
            );
            if let Err(e) = ser.decode_text(text.clone()) {
                panic!("server frame {text:?} does not decode: {e}");
            }
        }
    }
}
