//! The values of the protocol: a decoded client [`Message`], its [`Ref`]s and [`Payload`],
//! and an encoded outgoing [`Frame`].

use std::fmt;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A `ref` or `join_ref` exactly as the client sent it.
///
/// phoenix.js sends decimal strings, but other clients send numbers; Phoenix echoes the JSON
/// value untouched, so a numeric ref must come back as a number. Two refs are equal when their
/// JSON type and text are equal (Phoenix compares join_refs with strict equality).
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Ref {
    /// A JSON string (the unescaped text), or the text of a binary frame's ref field.
    Str(Box<str>),
    /// A JSON number, kept as its literal text so it is echoed byte for byte.
    Num(Box<str>),
}

impl Ref {
    /// The ref's text: the string's content, or the number's literal.
    pub fn as_str(&self) -> &str {
        match self {
            Ref::Str(s) | Ref::Num(s) => s,
        }
    }
}

impl fmt::Debug for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ref::Str(s) => write!(f, "{s:?}"),
            Ref::Num(n) => f.write_str(n),
        }
    }
}

impl From<&str> for Ref {
    fn from(s: &str) -> Self {
        Ref::Str(s.into())
    }
}

/// Valid JSON text held as shared bytes.
///
/// Decoding keeps a client payload as a zero-copy slice of the frame it arrived in; the
/// application parses it into its own types with [`Json::parse`] only when it needs to.
/// Encoding writes these bytes verbatim, so a payload is never re-serialized on the way out.
#[derive(Clone, PartialEq, Eq)]
pub struct Json(Bytes);

impl Json {
    /// `{}`, the empty object (no allocation).
    pub fn empty_object() -> Json {
        Json(Bytes::from_static(b"{}"))
    }

    /// Serializes a value. Fails only for values serde_json cannot represent (a map with
    /// non-string keys, for example).
    pub fn from_value<T: Serialize + ?Sized>(value: &T) -> Result<Json, serde_json::Error> {
        serde_json::to_vec(value).map(|v| Json(Bytes::from(v)))
    }

    /// Checks that `text` is one JSON value and keeps it.
    pub fn from_text(text: Bytes) -> Result<Json, serde_json::Error> {
        serde_json::from_slice::<serde::de::IgnoredAny>(&text)?;
        Ok(Json(text))
    }

    /// Wraps bytes that the caller knows to be one valid JSON value (the decoder uses this
    /// for slices of a frame it has just parsed).
    pub(crate) fn from_trusted(text: Bytes) -> Json {
        Json(text)
    }

    /// Parses the JSON into an application type.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.0)
    }

    /// The JSON text.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// True when the value is a JSON object.
    pub fn is_object(&self) -> bool {
        self.0.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
    }
}

impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

/// A message payload: JSON for text frames, raw bytes for V2 binary frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// A JSON value (usually an object).
    Json(Json),
    /// Raw bytes; encoded as a V2 binary frame.
    Binary(Bytes),
}

impl Payload {
    /// `{}`.
    pub fn empty() -> Payload {
        Payload::Json(Json::empty_object())
    }

    /// Serializes a value into a JSON payload.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Payload, serde_json::Error> {
        Json::from_value(value).map(Payload::Json)
    }

    /// The JSON payload, or `None` for a binary one.
    pub fn as_json(&self) -> Option<&Json> {
        match self {
            Payload::Json(j) => Some(j),
            Payload::Binary(_) => None,
        }
    }
}

/// A message from a client: `[join_ref, ref, topic, event, payload]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The join_ref of the channel instance the message is meant for (`None` = JSON null).
    pub join_ref: Option<Ref>,
    /// The message ref, echoed in the reply (`None` = JSON null).
    pub ref_: Option<Ref>,
    /// The topic, e.g. `chat:42`.
    pub topic: String,
    /// The event, e.g. `phx_join` or `send_message`.
    pub event: String,
    /// The payload.
    pub payload: Payload,
}

/// One encoded WebSocket message, ready to be written.
///
/// Cloning is cheap (a reference count), which is how one encoded broadcast is shared by every
/// subscriber.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A text frame; always valid UTF-8 (the encoders write it from `str`s and validated
    /// JSON), which is why a writer may send it without checking it again.
    Text(Bytes),
    /// A binary frame.
    Binary(Bytes),
}

impl Frame {
    /// The encoded bytes.
    pub fn as_bytes(&self) -> &Bytes {
        match self {
            Frame::Text(b) | Frame::Binary(b) => b,
        }
    }

    /// Length of the encoded bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// True when the frame carries no bytes.
    pub fn is_empty(&self) -> bool {
        self.as_bytes().is_empty()
    }
}
