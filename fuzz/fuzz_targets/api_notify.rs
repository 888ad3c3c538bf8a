//! The `POST /api/notify` body (`{"user_id","chat_id","sender_id","content"}`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use plume_chat::api::decode::notify_body;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    if let Ok([user_id, chat_id, sender_id, content]) = notify_body(data) {
        assert!(!user_id.is_empty());
        let body: Value = serde_json::from_slice(data).expect("accepted body is JSON");
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
