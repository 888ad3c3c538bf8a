//! The `POST /api/broadcast` body (`{"topic","event","payload"}`): decoded and checked as the
//! API does before it broadcasts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plume_chat::api::decode::broadcast_body;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    if let Ok((topic, event, payload)) = broadcast_body(data) {
        assert!(!topic.is_empty() && !event.is_empty());
        assert!(payload.is_object(), "{payload:?}");
        // The payload the API broadcasts is the body's payload, re-serialized.
        let body: Value = serde_json::from_slice(data).expect("accepted body is JSON");
        let sent: Value = payload.parse().expect("broadcast payload is JSON");
        assert_eq!(body["payload"], sent);
        assert_eq!(body["topic"], Value::String(topic));
    }
});
