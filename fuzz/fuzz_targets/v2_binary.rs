//! V2 binary frames: the client push the server decodes (kind 0, 5-byte header) and the
//! server frames the client decodes (kinds 0, 1, 2). A decoded frame re-encodes to exactly
//! the same bytes.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use plume_wire::client::{decode_server_binary, encode_client_push};
use plume_wire::{Frame, Payload, Serializer};

fuzz_target!(|data: &[u8]| {
    let data = Bytes::copy_from_slice(data);
    if let Ok(m) = Serializer::V2.decode_binary(data.clone()) {
        assert!(matches!(m.payload, Payload::Binary(_)), "{m:?}");
        let frame = encode_client_push(
            Serializer::V2,
            m.join_ref.as_ref(),
            m.ref_.as_ref(),
            &m.topic,
            &m.event,
            &m.payload,
        )
        .expect("decoded fields are at most 255 bytes");
        assert_eq!(frame, Frame::Binary(data.clone()), "re-encoded {m:?}");
        plume_fuzz::server_encoders(Serializer::V2, &m);
    }
    if let Ok(sm) = decode_server_binary(data.clone()) {
        let ser = Serializer::V2;
        let frame = match (data[0], &sm.status) {
            (0, None) => ser.encode_push(sm.join_ref.as_ref(), &sm.topic, &sm.event, &sm.payload),
            (1, Some(status)) => ser.encode_reply(
                sm.join_ref.as_ref(),
                sm.ref_.as_ref(),
                &sm.topic,
                status,
                &sm.payload,
            ),
            (2, None) => ser.encode_broadcast(&sm.topic, &sm.event, &sm.payload),
            (kind, status) => panic!("kind {kind} decoded with status {status:?}"),
        }
        .expect("decoded fields are at most 255 bytes");
        assert_eq!(frame, Frame::Binary(data), "re-encoded {sm:?}");
        assert_eq!(sm.reply_status(), sm.status);
    }
});
