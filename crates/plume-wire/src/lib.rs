//! The Phoenix Channels wire format, sans-IO.
//!
//! Bytes in, values out: this crate turns WebSocket frame payloads into [`Message`]s and
//! encodes replies, pushes and broadcasts into [`Frame`]s. It never touches a socket or an
//! executor, so every rule here is tested with byte literals and the golden vectors in
//! `protocol-spec/vectors/`.
//!
//! # Layout
//!
//! - [`message`]: the values: [`Message`], [`Ref`], [`Payload`], [`Json`], [`Frame`].
//! - [`serializer`]: [`Serializer`] (V1 JSON objects, V2 JSON arrays and V2 binary frames),
//!   chosen by the `vsn` connect parameter.
//! - `json` and `binary`: the two encodings behind [`Serializer`].
//! - [`client`]: the other side of the protocol, for Plume's test client and load generator:
//!   encode a client push, decode server frames into a [`ServerMessage`].
//! - [`error`]: [`DecodeError`] (with [`BinaryError`]) and [`EncodeError`].
//! - [`close`]: the WebSocket close codes Plume uses, and the one table that maps a decode
//!   error to its close code.
//! - [`event`]: event names and reply reasons, spelled exactly as on the wire.

mod binary;
pub mod client;
pub mod close;
pub mod error;
pub mod event;
mod json;
pub mod message;
pub mod serializer;

pub use client::ServerMessage;
pub use close::CloseReason;
pub use error::{BinaryError, DecodeError, EncodeError};
pub use message::{Frame, Json, Message, Payload, Ref};
pub use serializer::{Serializer, VsnError};
