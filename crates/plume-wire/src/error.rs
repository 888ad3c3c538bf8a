//! Errors of decoding and encoding. Which close code each decode error earns is decided in
//! one place, [`crate::close::CloseReason::for_decode_error`].

use thiserror::Error;

/// Why a client frame is not a Phoenix message.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The text is not JSON.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// V2 text that is JSON but not an array.
    #[error("expected a JSON array [join_ref, ref, topic, event, payload]")]
    NotAnArray,
    /// V1 text that is JSON but not an object.
    #[error("expected a JSON object {{topic, event, payload, ref}}")]
    NotAnObject,
    /// A V2 array with fewer than five elements.
    #[error("expected 5 elements [join_ref, ref, topic, event, payload], got {0}")]
    Arity(usize),
    /// A V1 object without one of its required keys.
    #[error("missing key {0:?}")]
    MissingKey(&'static str),
    /// `topic` or `event` is not a string.
    #[error("{0} must be a string")]
    NotAString(&'static str),
    /// `ref` or `join_ref` is not a string, a number or null.
    #[error("{0} must be a string, a number or null")]
    InvalidRef(&'static str),
    /// A binary frame on a V1 socket.
    #[error("binary frames need vsn=2.0.0")]
    BinaryNotSupported,
    /// A binary frame that is not a well-formed V2 client push.
    #[error("{0}")]
    Binary(BinaryError),
}

/// Why a binary frame is not a V2 client push (kind 0, 5-byte header).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BinaryError {
    /// The frame has no bytes.
    #[error("empty binary frame")]
    Empty,
    /// The kind byte is not 0 (clients may only send pushes).
    #[error("binary frame kind {0} is not a client push (0)")]
    UnknownKind(u8),
    /// The header or a metadata field runs past the end of the frame.
    #[error("binary frame truncated in {0}")]
    Truncated(&'static str),
    /// A metadata field is not UTF-8.
    #[error("binary frame field {0} is not UTF-8")]
    InvalidUtf8(&'static str),
}

/// Why a message cannot be encoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// A V2 binary frame field longer than 255 bytes (its length is one byte).
    #[error("{field} is {len} bytes; binary frames allow at most 255")]
    FieldTooLong {
        /// Which field.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// A binary payload for a V1 socket, which has only JSON text frames.
    #[error("V1 sockets cannot carry binary payloads")]
    BinaryOnV1,
}
