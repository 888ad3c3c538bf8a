//! The WebSocket close codes Plume sends, and why.
//!
//! Phoenix closes a socket that sends a malformed frame with 1011 and no reason. Plume names
//! the problem: each class of bad input has its own code in the private range 4000–4999 and a
//! reason text that says what was wrong. Only the offending socket is closed.
//!
//! phoenix.js 1.8.16 reconnects after any close it did not initiate itself; older 1.8.x
//! clients reconnect after any code other than 1000, which is why Plume never uses 1000 for a
//! close it expects the client to come back from.

use std::borrow::Cow;

use crate::error::DecodeError;

/// 1001: the server is shutting down, or the socket id received a `disconnect` broadcast.
pub const GOING_AWAY: u16 = 1001;
/// 1003: a binary frame on a V1 (`vsn=1.0.0`) socket, which has no binary encoding.
pub const UNSUPPORTED_DATA: u16 = 1003;
/// 1007: a text frame that is not valid UTF-8.
pub const INVALID_PAYLOAD: u16 = 1007;
/// 1009: a frame or message larger than the configured maximum.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// 1011: an unexpected server-side failure.
pub const INTERNAL_ERROR: u16 = 1011;
/// 4000: nothing was received from the client for the idle timeout.
pub const IDLE_TIMEOUT: u16 = 4000;
/// 4001: a text frame that is not JSON.
pub const MALFORMED_JSON: u16 = 4001;
/// 4002: JSON that is not a Phoenix message (wrong shape, arity or field types).
pub const INVALID_MESSAGE: u16 = 4002;
/// 4003: a binary frame that is not a V2 client push.
pub const INVALID_BINARY: u16 = 4003;
/// 4008: the socket's outbound queue overflowed (the client reads too slowly).
pub const SLOW_CONSUMER: u16 = 4008;
/// 4029: the client kept sending over its rate limit after being refused (a flood).
pub const RATE_LIMITED: u16 = 4029;

/// A close code with its reason text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseReason {
    /// The WebSocket close code.
    pub code: u16,
    /// A short human-readable reason (at most 123 bytes on the wire; longer text is cut).
    pub reason: Cow<'static, str>,
}

impl CloseReason {
    /// A close reason; the text is truncated to the 123 bytes a close frame can carry.
    pub fn new(code: u16, reason: impl Into<Cow<'static, str>>) -> CloseReason {
        let mut reason = reason.into();
        if reason.len() > 123 {
            let mut cut = 123;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason = Cow::Owned(reason[..cut].to_owned());
        }
        CloseReason { code, reason }
    }

    /// The close for a frame that could not be decoded: the one place a decode error becomes a
    /// close code.
    pub fn for_decode_error(err: &DecodeError) -> CloseReason {
        let code = match err {
            DecodeError::MalformedJson(_) => MALFORMED_JSON,
            DecodeError::BinaryNotSupported => UNSUPPORTED_DATA,
            DecodeError::Binary(_) => INVALID_BINARY,
            DecodeError::NotAnArray
            | DecodeError::NotAnObject
            | DecodeError::Arity(_)
            | DecodeError::MissingKey(_)
            | DecodeError::NotAString(_)
            | DecodeError::InvalidRef(_) => INVALID_MESSAGE,
        };
        CloseReason::new(code, err.to_string())
    }
}
