//! Event names and reply reasons, spelled exactly as they travel on the wire.

/// Topic of the socket-level heartbeat.
pub const PHOENIX_TOPIC: &str = "phoenix";
/// Heartbeat event (client to server, topic `phoenix`).
pub const HEARTBEAT: &str = "heartbeat";
/// Join a topic.
pub const PHX_JOIN: &str = "phx_join";
/// Leave a topic.
pub const PHX_LEAVE: &str = "phx_leave";
/// A reply to a client message; payload `{"status":…,"response":…}`.
pub const PHX_REPLY: &str = "phx_reply";
/// The server closed a channel gracefully (ref = join_ref).
pub const PHX_CLOSE: &str = "phx_close";
/// A channel failed (ref = join_ref); the client rejoins.
pub const PHX_ERROR: &str = "phx_error";
/// Broadcast on a socket id topic that closes every socket with that id.
pub const DISCONNECT: &str = "disconnect";
/// Broadcast on a socket id topic, payload `{"topic": T}`: every socket with that id leaves
/// topic `T` (the client gets `phx_close` on it). Only the socket id topic carries it, and no
/// client can join or publish there, so a client cannot forge it.
pub const LEAVE_TOPIC: &str = "plume_leave_topic";

/// Reply status `ok`.
pub const STATUS_OK: &str = "ok";
/// Reply status `error`.
pub const STATUS_ERROR: &str = "error";

/// Reason for a message to a topic that has no channel on this socket.
pub const REASON_UNMATCHED_TOPIC: &str = "unmatched topic";
/// Reason for a join whose channel failed while joining.
pub const REASON_JOIN_CRASHED: &str = "join crashed";
/// Reason for a join beyond the per-socket channel cap.
pub const REASON_TOO_MANY_CHANNELS: &str = "too many channels joined";
/// Reason for a message refused by the socket's rate limit.
pub const REASON_RATE_LIMITED: &str = "rate_limited";
/// Reason for a join whose topic is longer than the socket's limit.
pub const REASON_TOPIC_TOO_LONG: &str = "topic_too_long";
/// Reason for a message whose event name is longer than the socket's limit.
pub const REASON_EVENT_TOO_LONG: &str = "event_too_long";
/// Reason for a join whose payload is larger than the socket's limit.
pub const REASON_JOIN_PAYLOAD_TOO_LARGE: &str = "join_payload_too_large";
/// Reason carried by `phx_error` when a channel fails.
pub const REASON_CHANNEL_CRASH: &str = "channel_crash";
