//! The `POST /api/notify` body (`{"user_id","chat_id","sender_id","content"}`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use plume_chat::api::decode::notify_body;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    if let Ok([user_id, chat_id, sender_id, content]) = notify_body(data) {
        assert!(!user_id.is_empty());
        // A `Value` refuses numbers beyond f64 (`1e9999`), which JSON allows and the API
        // skips in unknown fields, so only a body a `Value` can hold is compared.
        let Ok(body) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        for (key, value) in [
            ("user_id", user_id),
            ("chat_id", chat_id),
            ("sender_id", sender_id),
            ("content", content),
        ] {
            assert_eq!(body[key], Value::String(value), "{key}");
        }
    }
});
