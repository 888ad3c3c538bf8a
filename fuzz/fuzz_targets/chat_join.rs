//! The `phx_join` payload of `chat:{id}` (`last_seq`, `epoch`, `history`): any JSON payload,
//! and any bytes as a binary payload.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use plume_chat::chat::decode::join;
use plume_wire::{Json, Payload};

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    let payload = match Json::from_text(bytes.clone()) {
        Ok(json) => Payload::Json(json),
        Err(_) => Payload::Binary(bytes),
    };
    match join(&payload) {
        Ok((recover, history)) => {
            assert!(history <= plume_chat::chat::MAX_HISTORY_PAGE);
            assert!(
                matches!(payload, Payload::Json(_)),
                "a binary join was accepted"
            );
            let obj: serde_json::Value = payload
                .as_json()
                .and_then(|j| j.parse().ok())
                .unwrap_or_default();
            assert_eq!(
                recover.map(|(seq, _)| seq),
                obj.get("last_seq").and_then(|v| v.as_u64())
            );
        }
        Err(reason) => assert!(!reason.is_empty()),
    }
});
