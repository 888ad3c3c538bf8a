//! V1 (objects) and V2 (arrays) JSON text frames.
//!
//! Decoding walks the frame once with serde_json and borrows every field as a `&RawValue`: a
//! view of the field's exact text inside the frame. No `serde_json::Value` is built. The
//! fields are then checked by their first byte (a quote, a digit, `null`, ...), which keeps
//! "is it JSON?" ([`DecodeError::MalformedJson`]) apart from "is it a Phoenix message?" (the
//! shape errors), and the payload becomes a zero-copy slice of the frame.
//!
//! Encoding writes into one buffer whose exact size is computed first, escaping strings the
//! way Phoenix's encoder does and copying payloads verbatim.
//!
//! Field checks run in the order join_ref, ref, topic, event, so a frame with several bad
//! fields always reports the first of them.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::error::DecodeError;
use crate::message::{Json, Message, Payload, Ref};

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// Decodes `[join_ref, ref, topic, event, payload, ...]`.
pub(crate) fn decode_v2(text: Bytes) -> Result<Message, DecodeError> {
    if first_token(&text) != Some(b'[') {
        return Err(classify_non_container(&text, DecodeError::NotAnArray));
    }
    let fields = {
        let mut de = serde_json::Deserializer::from_slice(&text);
        let fields = (&mut de).deserialize_seq(V2Visitor).map_err(malformed)?;
        de.end().map_err(malformed)?;
        fields
    };
    match fields {
        Ok(fields) => build_message(&text, fields),
        Err(count) => Err(DecodeError::Arity(count)),
    }
}

/// Decodes `{"topic", "event", "payload", "ref"}` with an optional `"join_ref"`.
pub(crate) fn decode_v1(text: Bytes) -> Result<Message, DecodeError> {
    if first_token(&text) != Some(b'{') {
        return Err(classify_non_container(&text, DecodeError::NotAnObject));
    }
    let slots = {
        let mut de = serde_json::Deserializer::from_slice(&text);
        let slots = (&mut de).deserialize_map(V1Visitor).map_err(malformed)?;
        de.end().map_err(malformed)?;
        slots
    };
    let fields = RawFields {
        topic: slots.topic.ok_or(DecodeError::MissingKey("topic"))?,
        event: slots.event.ok_or(DecodeError::MissingKey("event"))?,
        payload: slots.payload.ok_or(DecodeError::MissingKey("payload"))?,
        ref_: slots.ref_.ok_or(DecodeError::MissingKey("ref"))?,
        join_ref: slots.join_ref,
    };
    build_message(&text, fields)
}

/// The five fields of a message, each still the raw JSON text it was sent as.
struct RawFields<'a> {
    /// `None` when the key is absent (V1 only); a present `null` is `Some("null")`.
    join_ref: Option<&'a RawValue>,
    ref_: &'a RawValue,
    topic: &'a RawValue,
    event: &'a RawValue,
    payload: &'a RawValue,
}

fn build_message(text: &Bytes, fields: RawFields<'_>) -> Result<Message, DecodeError> {
    let join_ref = match fields.join_ref {
        Some(raw) => parse_ref(raw, "join_ref")?,
        None => None,
    };
    Ok(Message {
        join_ref,
        ref_: parse_ref(fields.ref_, "ref")?,
        topic: parse_string(fields.topic, "topic")?.into_owned(),
        event: parse_string(fields.event, "event")?.into_owned(),
        payload: Payload::Json(Json::from_trusted(subslice(
            text,
            fields.payload.get().as_bytes(),
        ))),
    })
}

/// A ref is a string, a number (kept as its literal) or null. `raw` is already valid JSON
/// without surrounding whitespace, so its first byte tells its type.
fn parse_ref(raw: &RawValue, field: &'static str) -> Result<Option<Ref>, DecodeError> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => Ok(Some(Ref::Str(unescape(text)?.into()))),
        Some(b'-' | b'0'..=b'9') => Ok(Some(Ref::Num(text.into()))),
        Some(b'n') => Ok(None),
        _ => Err(DecodeError::InvalidRef(field)),
    }
}

fn parse_string<'a>(raw: &'a RawValue, field: &'static str) -> Result<Cow<'a, str>, DecodeError> {
    let text = raw.get();
    if text.starts_with('"') {
        unescape(text)
    } else {
        Err(DecodeError::NotAString(field))
    }
}

/// The content of a JSON string literal. Most topics, events and refs have no escapes, so
/// they are borrowed; only a string with a backslash goes through serde_json again.
fn unescape(literal: &str) -> Result<Cow<'_, str>, DecodeError> {
    if !literal.as_bytes().contains(&b'\\')
        && let Some(inner) = literal
            .strip_prefix('"')
            .and_then(|rest| rest.strip_suffix('"'))
    {
        return Ok(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(literal)
        .map(Cow::Owned)
        .map_err(malformed)
}

/// `part` as a zero-copy slice of `whole`. `part` always lies inside `whole` (serde_json
/// borrowed it from there); the copy is a fallback that keeps this function total.
pub(crate) fn subslice(whole: &Bytes, part: &[u8]) -> Bytes {
    let start = part.as_ptr().addr().wrapping_sub(whole.as_ptr().addr());
    match start.checked_add(part.len()) {
        Some(end) if end <= whole.len() => whole.slice(start..end),
        _ => Bytes::copy_from_slice(part),
    }
}

/// The first byte that is not JSON whitespace.
fn first_token(text: &[u8]) -> Option<u8> {
    text.iter()
        .copied()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

/// A frame that does not open with the expected bracket: `shape_error` if it is otherwise
/// valid JSON, `MalformedJson` if it is not JSON at all.
fn classify_non_container(text: &[u8], shape_error: DecodeError) -> DecodeError {
    match serde_json::from_slice::<IgnoredAny>(text) {
        Ok(_) => shape_error,
        Err(e) => malformed(e),
    }
}

fn malformed(e: serde_json::Error) -> DecodeError {
    DecodeError::MalformedJson(e.to_string())
}

/// Reads the first five elements of an array as raw values and skips the rest. Yields
/// `Err(count)` for an array shorter than five.
struct V2Visitor;

impl<'de> Visitor<'de> for V2Visitor {
    type Value = Result<RawFields<'de>, usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array [join_ref, ref, topic, event, payload]")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let Some(join_ref) = seq.next_element()? else {
            return Ok(Err(0));
        };
        let Some(ref_) = seq.next_element()? else {
            return Ok(Err(1));
        };
        let Some(topic) = seq.next_element()? else {
            return Ok(Err(2));
        };
        let Some(event) = seq.next_element()? else {
            return Ok(Err(3));
        };
        let Some(payload) = seq.next_element()? else {
            return Ok(Err(4));
        };
        // Phoenix takes the first five elements and ignores the rest; they must still be JSON.
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Ok(RawFields {
            join_ref: Some(join_ref),
            ref_,
            topic,
            event,
            payload,
        }))
    }
}

/// The keys of a V1 object; a repeated key keeps its last value, unknown keys are skipped.
#[derive(Default)]
struct V1Slots<'a> {
    topic: Option<&'a RawValue>,
    event: Option<&'a RawValue>,
    payload: Option<&'a RawValue>,
    ref_: Option<&'a RawValue>,
    join_ref: Option<&'a RawValue>,
}

struct V1Visitor;

impl<'de> Visitor<'de> for V1Visitor {
    type Value = V1Slots<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object {topic, event, payload, ref}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut slots = V1Slots::default();
        while let Some(key) = map.next_key::<V1Key>()? {
            let slot = match key {
                V1Key::Topic => &mut slots.topic,
                V1Key::Event => &mut slots.event,
                V1Key::Payload => &mut slots.payload,
                V1Key::Ref => &mut slots.ref_,
                V1Key::JoinRef => &mut slots.join_ref,
                V1Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            *slot = Some(map.next_value()?);
        }
        Ok(slots)
    }
}

enum V1Key {
    Topic,
    Event,
    Payload,
    Ref,
    JoinRef,
    Other,
}

impl<'de> Deserialize<'de> for V1Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(V1KeyVisitor)
    }
}

struct V1KeyVisitor;

impl Visitor<'_> for V1KeyVisitor {
    type Value = V1Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<V1Key, E> {
        Ok(match key {
            "topic" => V1Key::Topic,
            "event" => V1Key::Event,
            "payload" => V1Key::Payload,
            "ref" => V1Key::Ref,
            "join_ref" => V1Key::JoinRef,
            _ => V1Key::Other,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

/// `[join_ref,ref,"topic","event",payload]`.
pub(crate) fn encode_v2(
    join_ref: Option<&Ref>,
    ref_: Option<&Ref>,
    topic: &str,
    event: &str,
    payload: &Json,
) -> Bytes {
    let payload = payload.as_bytes();
    // `[`, four commas, `]`.
    let size = 6
        + ref_len(join_ref)
        + ref_len(ref_)
        + string_len(topic)
        + string_len(event)
        + payload.len();
    let mut out = Vec::with_capacity(size);
    out.push(b'[');
    write_ref(&mut out, join_ref);
    out.push(b',');
    write_ref(&mut out, ref_);
    out.push(b',');
    write_string(&mut out, topic);
    out.push(b',');
    write_string(&mut out, event);
    out.push(b',');
    out.extend_from_slice(payload);
    out.push(b']');
    debug_assert_eq!(out.len(), size);
    Bytes::from(out)
}

const V1_EVENT: &[u8] = b"{\"event\":";
const V1_PAYLOAD: &[u8] = b",\"payload\":";
const V1_REF: &[u8] = b",\"ref\":";
const V1_TOPIC: &[u8] = b",\"topic\":";

/// `{"event":E,"payload":P,"ref":R,"topic":T}`: Phoenix's key order, and never a join_ref.
pub(crate) fn encode_v1(ref_: Option<&Ref>, topic: &str, event: &str, payload: &Json) -> Bytes {
    let payload = payload.as_bytes();
    let size = V1_EVENT.len()
        + string_len(event)
        + V1_PAYLOAD.len()
        + payload.len()
        + V1_REF.len()
        + ref_len(ref_)
        + V1_TOPIC.len()
        + string_len(topic)
        + 1;
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(V1_EVENT);
    write_string(&mut out, event);
    out.extend_from_slice(V1_PAYLOAD);
    out.extend_from_slice(payload);
    out.extend_from_slice(V1_REF);
    write_ref(&mut out, ref_);
    out.extend_from_slice(V1_TOPIC);
    write_string(&mut out, topic);
    out.push(b'}');
    debug_assert_eq!(out.len(), size);
    Bytes::from(out)
}

const C1_TOPIC: &[u8] = b"{\"topic\":";
const C1_EVENT: &[u8] = b",\"event\":";
const C1_JOIN_REF: &[u8] = b",\"join_ref\":";

/// A V1 client message: `{"topic":T,"event":E,"payload":P,"ref":R}`, plus `"join_ref":J`
/// when there is one (the order legacy clients send).
pub(crate) fn encode_v1_client(
    join_ref: Option<&Ref>,
    ref_: Option<&Ref>,
    topic: &str,
    event: &str,
    payload: &Json,
) -> Bytes {
    let payload = payload.as_bytes();
    let join_ref_size = join_ref.map_or(0, |r| C1_JOIN_REF.len() + ref_len(Some(r)));
    let size = C1_TOPIC.len()
        + string_len(topic)
        + C1_EVENT.len()
        + string_len(event)
        + V1_PAYLOAD.len()
        + payload.len()
        + V1_REF.len()
        + ref_len(ref_)
        + join_ref_size
        + 1;
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(C1_TOPIC);
    write_string(&mut out, topic);
    out.extend_from_slice(C1_EVENT);
    write_string(&mut out, event);
    out.extend_from_slice(V1_PAYLOAD);
    out.extend_from_slice(payload);
    out.extend_from_slice(V1_REF);
    write_ref(&mut out, ref_);
    if join_ref.is_some() {
        out.extend_from_slice(C1_JOIN_REF);
        write_ref(&mut out, join_ref);
    }
    out.push(b'}');
    debug_assert_eq!(out.len(), size);
    Bytes::from(out)
}

const REPLY_RESPONSE: &[u8] = b"{\"response\":";
const REPLY_STATUS: &[u8] = b",\"status\":";

/// `{"response":R,"status":"S"}`: Phoenix's key order.
pub(crate) fn reply_payload(status: &str, response: &Json) -> Json {
    let response = response.as_bytes();
    let size = REPLY_RESPONSE.len() + response.len() + REPLY_STATUS.len() + string_len(status) + 1;
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(REPLY_RESPONSE);
    out.extend_from_slice(response);
    out.extend_from_slice(REPLY_STATUS);
    write_string(&mut out, status);
    out.push(b'}');
    debug_assert_eq!(out.len(), size);
    Json::from_trusted(Bytes::from(out))
}

/// Encoded length of a ref: `null`, a quoted string, or a number's literal.
fn ref_len(r: Option<&Ref>) -> usize {
    match r {
        None => 4,
        Some(Ref::Str(s)) => string_len(s),
        Some(Ref::Num(n)) => n.len(),
    }
}

fn write_ref(out: &mut Vec<u8>, r: Option<&Ref>) {
    match r {
        None => out.extend_from_slice(b"null"),
        Some(Ref::Str(s)) => write_string(out, s),
        Some(Ref::Num(n)) => out.extend_from_slice(n.as_bytes()),
    }
}

/// How each byte is written inside a JSON string: 0 = as itself, `u` = `\u00XX`, any other
/// value = a backslash followed by that byte. Like Phoenix's encoder, only `"`, `\` and the
/// control characters are escaped; `/` and non-ASCII text pass through.
static ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// Encoded length of `s` as a JSON string, quotes included.
fn string_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match ESCAPE[usize::from(b)] {
            0 => 1,
            b'u' => 6,
            _ => 2,
        })
        .sum::<usize>()
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.push(b'"');
    let mut plain_from = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape = ESCAPE[usize::from(b)];
        if escape == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[plain_from..i]);
        plain_from = i + 1;
        if escape == b'u' {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.push(b'\\');
            out.push(escape);
        }
    }
    out.extend_from_slice(&bytes[plain_from..]);
    out.push(b'"');
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use super::*;

    fn v2(text: &'static [u8]) -> Result<Message, DecodeError> {
        decode_v2(Bytes::from_static(text))
    }

    fn v1(text: &'static [u8]) -> Result<Message, DecodeError> {
        decode_v1(Bytes::from_static(text))
    }

    fn json(text: &'static [u8]) -> Json {
        Json::from_trusted(Bytes::from_static(text))
    }

    fn str_ref(s: &str) -> Option<Ref> {
        Some(Ref::Str(s.into()))
    }

    fn num_ref(s: &str) -> Option<Ref> {
        Some(Ref::Num(s.into()))
    }

    fn payload_text(m: &Message) -> &[u8] {
        match &m.payload {
            Payload::Json(j) => j.as_bytes(),
            Payload::Binary(_) => panic!("expected a JSON payload"),
        }
    }

    #[test]
    fn v2_decodes_a_phoenix_js_join() {
        let m = v2(br#"["3","3","room:lobby","phx_join",{"name":"x"}]"#).unwrap();
        assert_eq!(m.join_ref, str_ref("3"));
        assert_eq!(m.ref_, str_ref("3"));
        assert_eq!(m.topic, "room:lobby");
        assert_eq!(m.event, "phx_join");
        assert_eq!(payload_text(&m), br#"{"name":"x"}"#);
    }

    #[test]
    fn v2_payload_is_a_slice_of_the_frame() {
        let frame = Bytes::from_static(br#"[null,"1","phoenix","heartbeat",{"a":[1,2]}]"#);
        let m = decode_v2(frame.clone()).unwrap();
        let Payload::Json(payload) = &m.payload else {
            panic!("expected JSON");
        };
        let offset = payload.as_bytes().as_ptr().addr() - frame.as_ptr().addr();
        assert_eq!(offset, 32);
        assert_eq!(payload.as_bytes(), &b"{\"a\":[1,2]}"[..]);
    }

    #[test]
    fn v2_keeps_numeric_refs_as_literals() {
        let m = v2(b"[1,2,\"phoenix\",\"heartbeat\",{}]").unwrap();
        assert_eq!(m.join_ref, num_ref("1"));
        assert_eq!(m.ref_, num_ref("2"));
        let m = v2(b"[-0.50,1e3,\"t\",\"e\",{}]").unwrap();
        assert_eq!(m.join_ref, num_ref("-0.50"));
        assert_eq!(m.ref_, num_ref("1e3"));
    }

    #[test]
    fn v2_null_refs_and_whitespace() {
        let m = v2(b" [ null , null , \"t\" , \"e\" , \"str\" ] \n").unwrap();
        assert_eq!(m.join_ref, None);
        assert_eq!(m.ref_, None);
        assert_eq!(payload_text(&m), b"\"str\"");
    }

    #[test]
    fn v2_ignores_trailing_elements() {
        let m = v2(b"[null,\"1\",\"t\",\"e\",{},\"extra\",[1,{\"x\":2}]]").unwrap();
        assert_eq!(m.topic, "t");
        assert_eq!(payload_text(&m), b"{}");
    }

    #[test]
    fn v2_unescapes_strings() {
        let m = v2(br#"["a\"b","\u0031","chat:\u00e9\n","ev\\t",null]"#).unwrap();
        assert_eq!(m.join_ref, str_ref("a\"b"));
        assert_eq!(m.ref_, str_ref("1"));
        assert_eq!(m.topic, "chat:\u{e9}\n");
        assert_eq!(m.event, "ev\\t");
        assert_eq!(payload_text(&m), b"null");
    }

    #[test]
    fn v2_shape_errors() {
        assert_eq!(
            v2(br#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1"}"#),
            Err(DecodeError::NotAnArray)
        );
        assert_eq!(v2(b"42"), Err(DecodeError::NotAnArray));
        assert_eq!(v2(b"\"[\""), Err(DecodeError::NotAnArray));
        assert_eq!(
            v2(br#"[null,"1","phoenix","heartbeat"]"#),
            Err(DecodeError::Arity(4))
        );
        assert_eq!(v2(b"[]"), Err(DecodeError::Arity(0)));
        assert_eq!(
            v2(br#"[null,"1",7,"heartbeat",{}]"#),
            Err(DecodeError::NotAString("topic"))
        );
        assert_eq!(
            v2(br#"[null,"1","t",null,{}]"#),
            Err(DecodeError::NotAString("event"))
        );
        assert_eq!(
            v2(br#"[null,{"a":1},"t","e",{}]"#),
            Err(DecodeError::InvalidRef("ref"))
        );
        assert_eq!(
            v2(br#"[true,"1","t","e",{}]"#),
            Err(DecodeError::InvalidRef("join_ref"))
        );
        assert_eq!(
            v2(br#"[[],"1",1,2,{}]"#),
            Err(DecodeError::InvalidRef("join_ref"))
        );
    }

    #[test]
    fn v2_malformed_json() {
        for text in [
            &b"this is not json"[..],
            b"",
            b"   ",
            b"[null,\"1\",\"t\",\"e\",{}",
            b"[null,\"1\",\"t\",\"e\",{}] x",
            b"[null,\"1\",\"t\",\"e\",{},]",
            b"[null,\"1\",\"t\",\"e\",{}][]",
            b"[null,\"1\",\"t\",\"e\",{}, nope]",
            b"[null,\"\\x\",\"t\",\"e\",{}]",
            b"[null,\"1\",\"t\xff\",\"e\",{}]",
            b"{\"a\":}",
        ] {
            let result = decode_v2(Bytes::copy_from_slice(text));
            assert!(
                matches!(result, Err(DecodeError::MalformedJson(_))),
                "{:?} gave {result:?}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn v2_deep_nesting_is_an_error_not_a_crash() {
        let mut text = b"[null,null,\"t\",\"e\",".to_vec();
        text.extend(std::iter::repeat_n(b'[', 100_000));
        let result = decode_v2(Bytes::from(text));
        assert!(matches!(result, Err(DecodeError::MalformedJson(_))));
    }

    #[test]
    fn v1_decodes_objects() {
        let m = v1(br#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1"}"#).unwrap();
        assert_eq!(m.join_ref, None);
        assert_eq!(m.ref_, str_ref("1"));
        assert_eq!(m.topic, "phoenix");
        assert_eq!(m.event, "heartbeat");
        assert_eq!(payload_text(&m), b"{}");

        let m = v1(br#"{"ref":7,"x":[1],"payload":[1, 2],"join_ref":"2","event":"e","topic":"t"}"#)
            .unwrap();
        assert_eq!(m.join_ref, str_ref("2"));
        assert_eq!(m.ref_, num_ref("7"));
        assert_eq!(payload_text(&m), b"[1, 2]");

        let m =
            v1(br#"{"topic":"t","event":"e","payload":{},"ref":null,"join_ref":null}"#).unwrap();
        assert_eq!((m.join_ref, m.ref_), (None, None));
    }

    #[test]
    fn v1_errors() {
        assert_eq!(v1(b"[1,2,3,4,5]"), Err(DecodeError::NotAnObject));
        assert_eq!(v1(b"null"), Err(DecodeError::NotAnObject));
        assert!(matches!(v1(b"{"), Err(DecodeError::MalformedJson(_))));
        assert_eq!(
            v1(br#"{"event":"e","payload":{},"ref":"1"}"#),
            Err(DecodeError::MissingKey("topic"))
        );
        assert_eq!(
            v1(br#"{"topic":"t","payload":{},"ref":"1"}"#),
            Err(DecodeError::MissingKey("event"))
        );
        assert_eq!(
            v1(br#"{"topic":"t","event":"e","ref":"1"}"#),
            Err(DecodeError::MissingKey("payload"))
        );
        assert_eq!(
            v1(br#"{"topic":"t","event":"e","payload":{}}"#),
            Err(DecodeError::MissingKey("ref"))
        );
        assert_eq!(
            v1(br#"{"topic":1,"event":"e","payload":{},"ref":"1"}"#),
            Err(DecodeError::NotAString("topic"))
        );
        assert_eq!(
            v1(br#"{"topic":"t","event":"e","payload":{},"ref":"1","join_ref":{}}"#),
            Err(DecodeError::InvalidRef("join_ref"))
        );
    }

    #[test]
    fn v2_encodes_like_phoenix() {
        let out = encode_v2(
            None,
            Some(&Ref::Num("2".into())),
            "phoenix",
            "phx_reply",
            &reply_payload("ok", &Json::empty_object()),
        );
        assert_eq!(
            &out[..],
            br#"[null,2,"phoenix","phx_reply",{"response":{},"status":"ok"}]"#
        );
        let out = encode_v2(
            Some(&Ref::from("1")),
            None,
            "chat:1",
            "presence_state",
            &json(b"{\"a\":1}"),
        );
        assert_eq!(&out[..], br#"["1",null,"chat:1","presence_state",{"a":1}]"#);
    }

    #[test]
    fn v2_encode_escapes_strings() {
        let out = encode_v2(
            Some(&Ref::from("q\"")),
            Some(&Ref::from("\\")),
            "t\u{1}\u{1f}/\u{e9}",
            "\u{8}\u{c}\n\r\t",
            &json(b"{}"),
        );
        assert_eq!(
            &out[..],
            r#"["q\"","\\","t\u0001\u001f/é","\b\f\n\r\t",{}]"#.as_bytes()
        );
        let back = decode_v2(out).unwrap();
        assert_eq!(back.join_ref, str_ref("q\""));
        assert_eq!(back.ref_, str_ref("\\"));
        assert_eq!(back.topic, "t\u{1}\u{1f}/\u{e9}");
        assert_eq!(back.event, "\u{8}\u{c}\n\r\t");
    }

    #[test]
    fn v2_encode_sizes_its_buffer_exactly() {
        // encode_v2 debug-asserts that the size it computed up front equals what it wrote, so
        // this also checks the one-allocation promise for escaped text.
        let payload = json(b"{\"x\":\"y\"}");
        let out = encode_v2(None, None, "a\"b", "e\u{0}", &payload);
        assert_eq!(&out[..], br#"[null,null,"a\"b","e\u0000",{"x":"y"}]"#);
    }

    #[test]
    fn v1_encodes_in_phoenix_key_order() {
        let reply = reply_payload("ok", &Json::empty_object());
        let out = encode_v1(Some(&Ref::from("1")), "phoenix", "phx_reply", &reply);
        assert_eq!(
            &out[..],
            br#"{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"1","topic":"phoenix"}"#
        );
        let out = encode_v1(None, "chat:1", "phx_close", &Json::empty_object());
        assert_eq!(
            &out[..],
            br#"{"event":"phx_close","payload":{},"ref":null,"topic":"chat:1"}"#
        );
    }

    #[test]
    fn v1_client_encoding_decodes_back() {
        let out = encode_v1_client(
            Some(&Ref::from("2")),
            Some(&Ref::Num("6".into())),
            "phoenix",
            "heartbeat",
            &Json::empty_object(),
        );
        assert_eq!(
            &out[..],
            br#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":6,"join_ref":"2"}"#
        );
        let m = decode_v1(out).unwrap();
        assert_eq!(m.join_ref, str_ref("2"));
        assert_eq!(m.ref_, num_ref("6"));
        let out = encode_v1_client(None, None, "t", "e", &Json::empty_object());
        assert_eq!(
            &out[..],
            br#"{"topic":"t","event":"e","payload":{},"ref":null}"#
        );
    }

    #[test]
    fn reply_payload_escapes_status_and_keeps_response() {
        let p = reply_payload("e\"r", &json(br#"{"reason":"unmatched topic"}"#));
        assert_eq!(
            &p.as_bytes()[..],
            br#"{"response":{"reason":"unmatched topic"},"status":"e\"r"}"#
        );
    }

    #[test]
    fn subslice_falls_back_to_a_copy_outside_the_buffer() {
        let whole = Bytes::from_static(b"abcdef");
        assert_eq!(subslice(&whole, &whole[2..4]), Bytes::from_static(b"cd"));
        let other = b"xy".to_vec();
        assert_eq!(subslice(&whole, &other), Bytes::from_static(b"xy"));
    }
}
