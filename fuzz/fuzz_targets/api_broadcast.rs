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
        // A `Value` refuses numbers beyond f64 (`1e9999`), which JSON allows and the API
        // skips in unknown fields, so only a body a `Value` can hold is compared.
        let Ok(body) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        let sent: Value = payload.parse().expect("broadcast payload is JSON");
        assert_eq!(body["payload"], sent);
        assert_eq!(body["topic"], Value::String(topic));
    }
});
