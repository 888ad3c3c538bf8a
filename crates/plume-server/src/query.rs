//! Query-string decoding, the way Plug (and therefore Phoenix) decodes connect params.
//!
//! phoenix.js serializes nested params with bracketed keys (`user[name]=a`,
//! `roles[0]=x`) and leaves an empty segment for a `null` value (`a=1&&vsn=2.0.0`). This
//! parser skips empty segments, percent-decodes keys and values (`+` is a space), and builds
//! nested objects: `a[b]=1` gives `{"a":{"b":"1"}}`, `a[]=x&a[]=y` gives `{"a":["x","y"]}`.
//! Numbered keys (`a[0]`) stay object keys, as in Plug. A later value for the same key wins.

use percent_encoding::percent_decode_str;
use serde_json::{Map, Value};

/// Decodes a query string (without the leading `?`) into a JSON object of strings.
pub fn parse_query(query: &str) -> Map<String, Value> {
    let mut params = Map::new();
    for pair in query.split('&') {
        if pair.is_empty() {
            continue;
        }
        let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(raw_key);
        if key.is_empty() {
            continue;
        }
        let value = Value::String(decode(raw_value));
        let path = split_key(&key);
        insert(&mut params, &path, value);
    }
    params
}

fn decode(s: &str) -> String {
    let spaced = s.replace('+', " ");
    percent_decode_str(&spaced).decode_utf8_lossy().into_owned()
}

/// `a[b][]` -> ["a", "b", ""]; a key without well-formed brackets is taken whole.
fn split_key(key: &str) -> Vec<&str> {
    let Some(open) = key.find('[') else {
        return vec![key];
    };
    if open == 0 {
        return vec![key];
    }
    let mut parts = vec![&key[..open]];
    let mut rest = &key[open..];
    while let Some(stripped) = rest.strip_prefix('[') {
        let Some(close) = stripped.find(']') else {
            return vec![key];
        };
        parts.push(&stripped[..close]);
        rest = &stripped[close + 1..];
    }
    if !rest.is_empty() {
        return vec![key];
    }
    parts
}

fn insert(map: &mut Map<String, Value>, path: &[&str], value: Value) {
    let (head, tail) = match path {
        [] => return,
        [head, tail @ ..] => (*head, tail),
    };
    match tail {
        [] => {
            map.insert(head.to_owned(), value);
        }
        [""] => {
            let slot = map
                .entry(head.to_owned())
                .or_insert_with(|| Value::Array(Vec::new()));
            if !slot.is_array() {
                *slot = Value::Array(Vec::new());
            }
            if let Value::Array(items) = slot {
                items.push(value);
            }
        }
        _ => {
            let slot = map
                .entry(head.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if !slot.is_object() {
                *slot = Value::Object(Map::new());
            }
            if let Value::Object(inner) = slot {
                // `a[][b]` (objects inside lists) is rare in connect params; treat `[]` in
                // the middle of a path as an ordinary key.
                insert(inner, tail, value);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use super::parse_query;
    use serde_json::json;

    #[test]
    fn plain_pairs_and_empty_segments() {
        let p = parse_query("token=abc&&device_unique_id=d1&&vsn=2.0.0&");
        assert_eq!(
            serde_json::Value::Object(p),
            json!({"token":"abc","device_unique_id":"d1","vsn":"2.0.0"})
        );
    }

    #[test]
    fn brackets_nest_like_plug() {
        let p = parse_query(
            "user%5Bname%5D=a%20b&user%5Broles%5D%5B0%5D=x&user%5Broles%5D%5B1%5D=y&flag=true&n=1&&vsn=2.0.0",
        );
        assert_eq!(
            serde_json::Value::Object(p),
            json!({"user":{"name":"a b","roles":{"0":"x","1":"y"}},"flag":"true","n":"1","vsn":"2.0.0"})
        );
    }

    #[test]
    fn list_keys_and_plus_and_bare_keys() {
        let p = parse_query("a[]=x&a[]=y&q=hello+world&bare&=novalue&odd[=1");
        assert_eq!(
            serde_json::Value::Object(p),
            json!({"a":["x","y"],"q":"hello world","bare":"","odd[":"1"})
        );
    }

    #[test]
    fn last_value_wins() {
        let p = parse_query("token=a&token=b");
        assert_eq!(p["token"], "b");
    }
}
