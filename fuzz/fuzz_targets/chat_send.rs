//! The `send_message` payload of `chat:{id}` (`content`, `mobile_ref_id`): any JSON payload,
//! and any bytes as a binary payload; the content and mobile_ref_id limits come from the
//! input too.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use plume_chat::chat::decode::send;
use plume_wire::{Json, Payload};

fuzz_target!(|data: &[u8]| {
    // First byte: the content limit (0-255 characters); second: the mobile_ref_id limit
    // (0-255 bytes); the rest: the payload.
    let [limit, ref_limit, rest @ ..] = data else {
        return;
    };
    let (max_chars, max_ref_bytes) = (usize::from(*limit), usize::from(*ref_limit));
    let bytes = Bytes::copy_from_slice(rest);
    let payload = match Json::from_text(bytes.clone()) {
        Ok(json) => Payload::Json(json),
        Err(_) => Payload::Binary(bytes),
    };
    match send(&payload, max_chars, max_ref_bytes) {
        Ok((content, mobile_ref_id)) => {
            assert!(
                matches!(payload, Payload::Json(_)),
                "a binary send was accepted"
            );
            assert!(!mobile_ref_id.is_empty());
            assert!(!content.trim().is_empty());
            assert!(content.chars().count() <= max_chars);
            assert!(mobile_ref_id.len() <= max_ref_bytes);
        }
        Err((reason, _mobile_ref_id)) => assert!(!reason.is_empty()),
    }
});
