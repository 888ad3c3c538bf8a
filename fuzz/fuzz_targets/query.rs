//! The connect-params query string (`parse_query`, Plug's decoding): any text gives an object
//! whose keys are non-empty and whose leaves are all strings.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plume_server::query::parse_query;
use serde_json::Value;

fn only_strings(v: &Value) -> bool {
    match v {
        Value::String(_) => true,
        Value::Array(items) => items.iter().all(only_strings),
        Value::Object(map) => map.values().all(only_strings),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let query = String::from_utf8_lossy(data);
    let params = parse_query(&query);
    assert!(params.keys().all(|k| !k.is_empty()), "{params:?}");
    assert!(params.values().all(only_strings), "{params:?}");
});
