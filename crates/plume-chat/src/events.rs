//! Topics, events and reasons of the chat service, spelled exactly as on the wire.

/// Prefix of chat topics: `chat:{chat_id}`.
pub const CHAT_PREFIX: &str = "chat:";
/// Prefix of notification topics: `notifications:{user_id}`.
pub const NOTIFICATIONS_PREFIX: &str = "notifications:";
/// The alias the seed documentation uses: `notification:{user_id}`.
pub const NOTIFICATION_ALIAS_PREFIX: &str = "notification:";

/// Client to server: send a chat message.
pub const SEND_MESSAGE: &str = "send_message";
/// Server to sender: the outcome of a send.
pub const MESSAGE_SENT: &str = "message_sent";
/// Server to the chat's other sockets: a new message.
pub const RECEIVE_MESSAGE: &str = "receive_message";
/// Server to a user's notifications topic: a message in a chat they are not in.
pub const NEW_NOTIFICATION: &str = "new_notification";
/// Server to a user joining notifications: one stored notification.
pub const PENDING_NOTIFICATION: &str = "pending_notification";
/// Server to a user joining notifications: every stored notification at once.
pub const PENDING_NOTIFICATIONS: &str = "pending_notifications";

/// Client to server on `chat:{id}`: a page of older messages.
pub const HISTORY: &str = "history";

/// Client to server on `chat:{id}`: the user is typing, recording, or stopped.
pub const TYPING: &str = "typing";
/// Server to the chat's other sockets: someone's typing status.
pub const USER_TYPING: &str = "user_typing";
/// Typing statuses, as on the wire.
pub const TYPING_STATUSES: [&str; 3] = ["typing", "recording", "stop"];
/// The typing status that ends the others.
pub const TYPING_STOP: &str = "stop";

/// Client to server on `chat:{id}`: the user has read up to a seq.
pub const MARK_READ: &str = "mark_read";
/// Server to the chat's other sockets: a member's read position moved.
pub const MESSAGE_READ: &str = "message_read";

/// Server to a joiner of `chat:{id}`, right after every join reply: the whole roster.
pub const PRESENCE_STATE: &str = "presence_state";
/// Server to `chat:{id}` (broadcast): metas that joined and left.
pub const PRESENCE_DIFF: &str = "presence_diff";
/// Server to `notifications:{user_id}`: a member of one of the user's chats came online or
/// went offline.
pub const USER_ONLINE_CHANGED: &str = "user_online_changed";
/// Client to server on `notifications:{user_id}`: the next page of the rooms list.
pub const LIST_ROOMS: &str = "list_rooms";
/// Server to a user's notifications topic: their view of one room changed (read on another
/// device, added to or removed from the chat).
pub const ROOM_UPDATED: &str = "room_updated";

/// `message_sent` status of a delivered send.
pub const STATUS_SENT: &str = "sent";
/// `message_sent` status of a failed send.
pub const STATUS_ERROR: &str = "error";

/// Join refused: not a member / not your notifications.
pub const REASON_UNAUTHORIZED: &str = "unauthorized";
/// Join of `chat:` or `notifications:` without an id.
pub const REASON_INVALID_TOPIC: &str = "invalid_topic";
/// The payload is not a JSON object.
pub const REASON_INVALID_PAYLOAD: &str = "invalid_payload";
/// `content` missing, not a string, or empty.
pub const REASON_INVALID_CONTENT: &str = "invalid_content";
/// `content` longer than the configured maximum.
pub const REASON_CONTENT_TOO_LONG: &str = "content_too_long";
/// `mobile_ref_id` missing, not a string, or empty.
pub const REASON_INVALID_MOBILE_REF_ID: &str = "invalid_mobile_ref_id";
/// `mobile_ref_id` longer than the configured maximum.
pub const REASON_MOBILE_REF_ID_TOO_LONG: &str = "mobile_ref_id_too_long";
/// Join of `chat:{id}` with an id longer than the configured maximum.
pub const REASON_CHAT_ID_TOO_LONG: &str = "chat_id_too_long";
/// A store did not answer (any `StoreError`, see [`crate::failure::store_reason`]); nothing
/// was delivered. After a timeout a send may be in the log all the same: a retry with the
/// same `mobile_ref_id` is answered with it.
pub const REASON_STORAGE_UNAVAILABLE: &str = "storage_unavailable";
/// Join `last_seq` (or history `before_seq`) that is not a non-negative integer.
pub const REASON_INVALID_LAST_SEQ: &str = "invalid_last_seq";
/// History `before_seq` that is not a positive integer.
pub const REASON_INVALID_BEFORE_SEQ: &str = "invalid_before_seq";
/// Join `epoch` that is not a string.
pub const REASON_INVALID_EPOCH: &str = "invalid_epoch";
/// Join `history` that is not an integer from 0 to 100.
pub const REASON_INVALID_HISTORY: &str = "invalid_history";
/// History `limit` that is not an integer from 1 to 100.
pub const REASON_INVALID_LIMIT: &str = "invalid_limit";
/// `typing` with a status other than typing, recording or stop.
pub const REASON_INVALID_TYPING_STATUS: &str = "invalid_typing_status";
/// `mark_read` with a seq that is not a positive integer or is above the chat's last seq.
pub const REASON_INVALID_SEQ: &str = "invalid_seq";
/// `list_rooms` or the rooms API with a `before` cursor the server did not issue.
pub const REASON_INVALID_CURSOR: &str = "invalid_cursor";
/// An event the channel does not handle.
pub const REASON_UNKNOWN_EVENT: &str = "unknown_event";

/// Prefix of a user's socket id topic, `user_socket:{user_id}`: a `disconnect` there closes
/// the user's sockets, a leave order ([`plume_wire::event::LEAVE_TOPIC`]) makes them leave a
/// topic.
pub const USER_SOCKET_PREFIX: &str = "user_socket:";

/// The socket id topic of `user`.
pub fn user_socket_topic(user: &str) -> String {
    format!("{USER_SOCKET_PREFIX}{user}")
}

/// Router pattern of chat topics.
pub const CHAT_PREFIX_PATTERN: &str = "chat:*";
/// Router pattern of notification topics.
pub const NOTIFICATIONS_PATTERN: &str = "notifications:*";
/// Router pattern of the notification alias.
pub const NOTIFICATION_ALIAS_PATTERN: &str = "notification:*";
