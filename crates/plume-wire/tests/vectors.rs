//! Runs every golden vector in `protocol-spec/vectors/` against this crate.
//!
//! The file format is described in `protocol-spec/vectors/README.md`. Every case of every
//! `*.json` file is checked and all failures are reported together; a directory without
//! cases is a failure, so the test can never pass by checking nothing.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use plume_wire::client::{self, ServerMessage};
use plume_wire::error::BinaryError;
use plume_wire::{
    CloseReason, DecodeError, EncodeError, Frame, Json, Message, Payload, Ref, Serializer,
};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VectorFile {
    #[allow(dead_code)] // read by people, not by the test
    description: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    op: String,
    serializer: String,
    input: Fields,
    expect: Option<Fields>,
    error: Option<ExpectedError>,
}

/// A frame (`text` or `hex`) or the fields of a message; which keys a case may use depends
/// on its `op` and on whether it is the input or the expectation.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Fields {
    text: Option<String>,
    hex: Option<String>,
    #[serde(default)]
    join_ref: Option<VectorRef>,
    #[serde(default, rename = "ref")]
    ref_: Option<VectorRef>,
    topic: Option<String>,
    event: Option<String>,
    status: Option<String>,
    payload: Option<String>,
    payload_hex: Option<String>,
    reply_status: Option<String>,
    reply_response: Option<String>,
    reply_response_hex: Option<String>,
}

impl Fields {
    fn present(&self) -> BTreeSet<&'static str> {
        let keys = [
            ("text", self.text.is_some()),
            ("hex", self.hex.is_some()),
            ("join_ref", self.join_ref.is_some()),
            ("ref", self.ref_.is_some()),
            ("topic", self.topic.is_some()),
            ("event", self.event.is_some()),
            ("status", self.status.is_some()),
            ("payload", self.payload.is_some()),
            ("payload_hex", self.payload_hex.is_some()),
            ("reply_status", self.reply_status.is_some()),
            ("reply_response", self.reply_response.is_some()),
            ("reply_response_hex", self.reply_response_hex.is_some()),
        ];
        keys.into_iter()
            .filter(|(_, present)| *present)
            .map(|(k, _)| k)
            .collect()
    }

    /// Fails if a key outside `allowed` is present (a typo or a misplaced field in a vector).
    fn only(&self, role: &str, allowed: &[&str]) -> Result<(), String> {
        let extra: Vec<_> = self
            .present()
            .into_iter()
            .filter(|k| !allowed.contains(k))
            .collect();
        if extra.is_empty() {
            Ok(())
        } else {
            Err(format!("{role} has keys this op does not use: {extra:?}"))
        }
    }

    fn join_ref(&self) -> Option<Ref> {
        self.join_ref.as_ref().map(VectorRef::to_ref)
    }

    fn ref_(&self) -> Option<Ref> {
        self.ref_.as_ref().map(VectorRef::to_ref)
    }

    fn required<'a>(&self, value: &'a Option<String>, key: &str) -> Result<&'a str, String> {
        value.as_deref().ok_or_else(|| format!("missing {key:?}"))
    }

    /// The payload: `payload` (JSON text) or `payload_hex` (binary), exactly one.
    fn payload(&self) -> Result<Payload, String> {
        match (&self.payload, &self.payload_hex) {
            (Some(text), None) => Json::from_text(Bytes::from(text.clone()))
                .map(Payload::Json)
                .map_err(|e| format!("payload is not JSON: {e}")),
            (None, Some(hex)) => Ok(Payload::Binary(Bytes::from(unhex(hex)?))),
            _ => Err("needs exactly one of \"payload\" and \"payload_hex\"".into()),
        }
    }

    /// The frame: `text` or `hex`, exactly one.
    fn frame(&self) -> Result<Frame, String> {
        match (&self.text, &self.hex) {
            (Some(text), None) => Ok(Frame::Text(Bytes::from(text.clone()))),
            (None, Some(hex)) => Ok(Frame::Binary(Bytes::from(unhex(hex)?))),
            _ => Err("needs exactly one of \"text\" and \"hex\"".into()),
        }
    }
}

/// A ref in a vector: a JSON string is `Ref::Str`, `{"num": "<literal>"}` is `Ref::Num`
/// (a JSON number could not keep its literal text), and null or absent is no ref.
#[derive(Deserialize)]
#[serde(untagged)]
enum VectorRef {
    Str(String),
    Num { num: String },
}

impl VectorRef {
    fn to_ref(&self) -> Ref {
        match self {
            VectorRef::Str(s) => Ref::Str(s.as_str().into()),
            VectorRef::Num { num } => Ref::Num(num.as_str().into()),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedError {
    variant: String,
    detail: Option<Value>,
    close_code: Option<u16>,
}

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../protocol-spec/vectors")
}

#[test]
fn golden_vectors() {
    let dir = vectors_dir();
    let entries = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the vectors directory {}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no *.json vector files in {}",
        dir.display()
    );

    let mut total = 0;
    let mut failures = Vec::new();
    for path in &files {
        let file_name = path.file_name().unwrap_or_default().to_string_lossy();
        let text = fs::read_to_string(path).expect("read a vector file");
        let file: VectorFile = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{file_name} is not a valid vector file: {e}"));
        assert!(!file.cases.is_empty(), "{file_name} has no cases");
        let mut names = BTreeSet::new();
        for case in &file.cases {
            total += 1;
            if !names.insert(case.name.as_str()) {
                failures.push(format!("{file_name}: duplicate case name {:?}", case.name));
            }
            if let Err(why) = run(case) {
                failures.push(format!("{file_name}: {:?}: {why}", case.name));
            }
        }
    }
    assert!(total > 0, "no vector cases in {}", dir.display());
    assert!(
        failures.is_empty(),
        "{} of {total} vector cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("checked {total} vector cases in {} files", files.len());
}

fn run(case: &Case) -> Result<(), String> {
    let ser = match case.serializer.as_str() {
        "v1" => Serializer::V1,
        "v2" => Serializer::V2,
        other => return Err(format!("unknown serializer {other:?}")),
    };
    if case.expect.is_some() == case.error.is_some() {
        return Err("needs exactly one of \"expect\" and \"error\"".into());
    }
    match case.op.as_str() {
        "decode" => run_decode(case, ser),
        "decode_server" => run_decode_server(case, ser),
        "encode_push" | "encode_reply" | "encode_broadcast" | "encode_control"
        | "encode_client_push" => run_encode(case, ser),
        other => Err(format!("unknown op {other:?}")),
    }
}

const MESSAGE_KEYS: &[&str] = &[
    "join_ref",
    "ref",
    "topic",
    "event",
    "payload",
    "payload_hex",
];

fn run_decode(case: &Case, ser: Serializer) -> Result<(), String> {
    case.input.only("input", &["text", "hex"])?;
    let frame = case.input.frame()?;
    let result = match frame.clone() {
        Frame::Text(text) => ser.decode_text(text),
        Frame::Binary(data) => ser.decode_binary(data),
    };
    match (&case.expect, &case.error, result) {
        (Some(expect), _, Ok(message)) => {
            expect.only("expect", MESSAGE_KEYS)?;
            check_message(expect, &as_server_message(message.clone()))?;
            check_zero_copy(&frame, &message)
        }
        (_, Some(expected), Err(err)) => {
            check_error(expected, decode_error_parts(&err))?;
            let close = CloseReason::for_decode_error(&err);
            match expected.close_code {
                Some(code) if code == close.code => Ok(()),
                Some(code) => Err(format!("close code {} instead of {code}", close.code)),
                None => Err("a decode error needs its \"close_code\"".into()),
            }
        }
        (_, _, Err(err)) => Err(format!("expected a message, got {err:?}")),
        (_, _, Ok(message)) => Err(format!("expected an error, got {message:?}")),
    }
}

fn run_decode_server(case: &Case, ser: Serializer) -> Result<(), String> {
    case.input.only("input", &["text", "hex"])?;
    let result = match case.input.frame()? {
        Frame::Text(text) => client::decode_server_text(ser, text),
        Frame::Binary(data) => client::decode_server_binary(data),
    };
    match (&case.expect, &case.error, result) {
        (Some(expect), _, Ok(message)) => {
            let mut keys = MESSAGE_KEYS.to_vec();
            keys.extend([
                "status",
                "reply_status",
                "reply_response",
                "reply_response_hex",
            ]);
            expect.only("expect", &keys)?;
            check_message(expect, &message)?;
            // Absent keys mean "none" here, so every reply vector states its status.
            same("status", &message.status, &expect.status)?;
            same(
                "reply_status",
                &message.reply_status(),
                &expect.reply_status,
            )?;
            let response = match (&expect.reply_response, &expect.reply_response_hex) {
                (None, None) => None,
                (Some(json), None) => Some(Payload::Json(
                    Json::from_text(Bytes::from(json.clone())).map_err(|e| e.to_string())?,
                )),
                (None, Some(hex)) => Some(Payload::Binary(Bytes::from(unhex(hex)?))),
                _ => return Err("both reply_response and reply_response_hex".into()),
            };
            same("reply_response", &message.reply_response(), &response)
        }
        (_, Some(expected), Err(err)) => {
            if expected.close_code.is_some() {
                return Err("a client never sends a close code for a server frame".into());
            }
            check_error(expected, decode_error_parts(&err))
        }
        (_, _, Err(err)) => Err(format!("expected a message, got {err:?}")),
        (_, _, Ok(message)) => Err(format!("expected an error, got {message:?}")),
    }
}

fn run_encode(case: &Case, ser: Serializer) -> Result<(), String> {
    let input = &case.input;
    let payload = input.payload()?;
    let topic = input.required(&input.topic, "topic")?;
    let (join_ref, ref_) = (input.join_ref(), input.ref_());
    let (join_ref, ref_) = (join_ref.as_ref(), ref_.as_ref());
    let result = match case.op.as_str() {
        "encode_push" => {
            input.only(
                "input",
                &["join_ref", "topic", "event", "payload", "payload_hex"],
            )?;
            let event = input.required(&input.event, "event")?;
            ser.encode_push(join_ref, topic, event, &payload)
        }
        "encode_reply" => {
            input.only(
                "input",
                &[
                    "join_ref",
                    "ref",
                    "topic",
                    "status",
                    "payload",
                    "payload_hex",
                ],
            )?;
            let status = input.required(&input.status, "status")?;
            ser.encode_reply(join_ref, ref_, topic, status, &payload)
        }
        "encode_broadcast" => {
            input.only("input", &["topic", "event", "payload", "payload_hex"])?;
            let event = input.required(&input.event, "event")?;
            ser.encode_broadcast(topic, event, &payload)
        }
        "encode_control" => {
            input.only("input", &["join_ref", "topic", "event", "payload"])?;
            let event = input.required(&input.event, "event")?;
            let Payload::Json(json) = &payload else {
                return Err("encode_control takes a JSON payload".into());
            };
            Ok(ser.encode_control(join_ref, topic, event, json))
        }
        "encode_client_push" => {
            input.only("input", MESSAGE_KEYS)?;
            let event = input.required(&input.event, "event")?;
            client::encode_client_push(ser, join_ref, ref_, topic, event, &payload)
        }
        other => return Err(format!("unknown op {other:?}")),
    };
    match (&case.expect, &case.error, result) {
        (Some(expect), _, Ok(frame)) => {
            expect.only("expect", &["text", "hex"])?;
            let wanted = expect.frame()?;
            if frame == wanted {
                Ok(())
            } else {
                Err(format!(
                    "encoded\n    {}\nexpected\n    {}",
                    show(&frame),
                    show(&wanted)
                ))
            }
        }
        (_, Some(expected), Err(err)) => {
            if expected.close_code.is_some() {
                return Err("an encode error has no close code".into());
            }
            check_error(expected, encode_error_parts(&err))
        }
        (_, _, Err(err)) => Err(format!("expected a frame, got {err:?}")),
        (_, _, Ok(frame)) => Err(format!("expected an error, got {}", show(&frame))),
    }
}

fn as_server_message(m: Message) -> ServerMessage {
    ServerMessage {
        join_ref: m.join_ref,
        ref_: m.ref_,
        topic: m.topic,
        event: m.event,
        payload: m.payload,
        status: None,
    }
}

fn check_message(expect: &Fields, got: &ServerMessage) -> Result<(), String> {
    same("join_ref", &got.join_ref, &expect.join_ref())?;
    same("ref", &got.ref_, &expect.ref_())?;
    same(
        "topic",
        &got.topic.as_str(),
        &expect.required(&expect.topic, "topic")?,
    )?;
    same(
        "event",
        &got.event.as_str(),
        &expect.required(&expect.event, "event")?,
    )?;
    // Compared byte for byte: a decoded payload is the exact text the peer sent.
    same("payload", &got.payload, &expect.payload()?)
}

/// A decoded JSON payload must be a slice of the frame it came from, not a copy.
fn check_zero_copy(frame: &Frame, message: &Message) -> Result<(), String> {
    let outer = frame.as_bytes().as_ptr_range();
    let inner = match &message.payload {
        Payload::Json(json) => json.as_bytes().as_ptr_range(),
        Payload::Binary(bytes) if !bytes.is_empty() => bytes.as_ptr_range(),
        Payload::Binary(_) => return Ok(()),
    };
    if outer.start <= inner.start && inner.end <= outer.end {
        Ok(())
    } else {
        Err("the payload was copied out of the frame".into())
    }
}

fn same<T: PartialEq + std::fmt::Debug>(field: &str, got: &T, want: &T) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{field}: got {got:?}, expected {want:?}"))
    }
}

fn check_error(
    expected: &ExpectedError,
    (variant, detail): (String, Option<Value>),
) -> Result<(), String> {
    if expected.variant != variant {
        return Err(format!(
            "error {variant} ({detail:?}), expected {}",
            expected.variant
        ));
    }
    if expected.detail != detail {
        return Err(format!(
            "{variant} detail {detail:?}, expected {:?}",
            expected.detail
        ));
    }
    Ok(())
}

/// The variant name (binary errors as `Binary.<variant>`) and its argument. The text of
/// `MalformedJson` is serde_json's and is not part of the contract.
fn decode_error_parts(err: &DecodeError) -> (String, Option<Value>) {
    let (name, detail) = match err {
        DecodeError::MalformedJson(_) => ("MalformedJson", None),
        DecodeError::NotAnArray => ("NotAnArray", None),
        DecodeError::NotAnObject => ("NotAnObject", None),
        DecodeError::Arity(n) => ("Arity", Some(json!(n))),
        DecodeError::MissingKey(k) => ("MissingKey", Some(json!(k))),
        DecodeError::NotAString(k) => ("NotAString", Some(json!(k))),
        DecodeError::InvalidRef(k) => ("InvalidRef", Some(json!(k))),
        DecodeError::BinaryNotSupported => ("BinaryNotSupported", None),
        DecodeError::Binary(BinaryError::Empty) => ("Binary.Empty", None),
        DecodeError::Binary(BinaryError::UnknownKind(k)) => ("Binary.UnknownKind", Some(json!(k))),
        DecodeError::Binary(BinaryError::Truncated(f)) => ("Binary.Truncated", Some(json!(f))),
        DecodeError::Binary(BinaryError::InvalidUtf8(f)) => ("Binary.InvalidUtf8", Some(json!(f))),
    };
    (name.to_owned(), detail)
}

fn encode_error_parts(err: &EncodeError) -> (String, Option<Value>) {
    match err {
        EncodeError::FieldTooLong { field, len } => (
            "FieldTooLong".to_owned(),
            Some(json!({"field": field, "len": len})),
        ),
        EncodeError::BinaryOnV1 => ("BinaryOnV1".to_owned(), None),
    }
}

fn show(frame: &Frame) -> String {
    match frame {
        Frame::Text(text) => format!("text {}", String::from_utf8_lossy(text)),
        Frame::Binary(data) => {
            let hex: Vec<String> = data.iter().map(|b| format!("{b:02x}")).collect();
            format!("binary {}", hex.join(" "))
        }
    }
}

/// Hex digits, with any whitespace between them ignored (vectors group bytes by field).
fn unhex(text: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(format!("bad hex {text:?}"));
    }
    digits
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| format!("bad hex {text:?}"))
        })
        .collect()
}

#[test]
fn unhex_reads_grouped_digits() {
    assert_eq!(unhex("00 0a\nFF"), Ok(vec![0, 10, 255]));
    assert!(unhex("0").is_err());
    assert!(unhex("zz").is_err());
    assert!(unhex("+1").is_err());
}
