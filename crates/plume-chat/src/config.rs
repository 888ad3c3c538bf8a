//! [`ChatConfig`]: the chat service's settings and their defaults.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::Retention;

/// Who may join `chat:{id}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Membership {
    /// Only members registered through the HTTP API (the default).
    #[default]
    Strict,
    /// Any authenticated user; joining records them as a participant (member).
    Open,
}

/// Chat service settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChatConfig {
    /// Join rule for chats. Default strict.
    pub membership: Membership,
    /// Longest message content, in characters. Default 4096.
    pub max_message_chars: usize,
    /// How long a send is remembered for retries. Default 24 h.
    #[serde(with = "plume_channels::duration_secs")]
    pub idempotency_ttl: Duration,
    /// Most pending notifications kept per user (the oldest are dropped). Default 1000.
    pub pending_limit: usize,
    /// Most bytes of pending notifications kept per user, counted as stored (the oldest are
    /// dropped, but the newest is always kept). Default 1 MiB.
    pub pending_bytes_limit: usize,
    /// Longest chat id and user id (the token's `sub`), in bytes, wherever one arrives: a
    /// topic, a token, an API path or body. Default 128.
    pub max_id_bytes: usize,
    /// Longest `mobile_ref_id`, in bytes. Default 128.
    pub max_mobile_ref_id_bytes: usize,
    /// Send keys (idempotency entries) the in-memory log keeps per user; beyond it the
    /// user's oldest is forgotten (a retry of it would send again). Default 10,000.
    pub max_send_keys_per_user: usize,
    /// Send keys the in-memory log keeps in all; beyond it the oldest is forgotten.
    /// Default 1,000,000.
    pub max_send_keys: usize,
    /// Newest messages kept per chat log. Default 10,000.
    pub history_limit: usize,
    /// Messages older than this are trimmed from the log. Default 30 days.
    #[serde(with = "plume_channels::duration_secs")]
    pub history_ttl: Duration,
    /// Most messages a (re)join replays; a bigger gap answers `recovered: false` and the
    /// client pages history instead. Default 1,000.
    pub recovery_limit: usize,
    /// A user's typing status is reset with a `stop` sent on their behalf after this long
    /// without a new `typing` event. Default 6 s.
    #[serde(with = "plume_channels::duration_secs")]
    pub typing_timeout: Duration,
    /// The same typing status from one socket is forwarded at most once per this interval.
    /// Default 1 s.
    #[serde(with = "plume_channels::duration_secs")]
    pub typing_throttle: Duration,
    /// Presence changes of a chat on this node are gathered for this long and broadcast as
    /// one `presence_diff`. Default 100 ms.
    #[serde(with = "plume_channels::duration_secs")]
    pub presence_interval: Duration,
    /// A user whose last socket closed goes offline after this long without a new one.
    /// Default 5 s.
    #[serde(with = "plume_channels::duration_secs")]
    pub online_linger: Duration,
    /// Only chats of at most this many members tell their members that a user came online or
    /// went offline, and count online members: the rooms list's `online_count` is `null` for
    /// bigger ones. Default 100.
    pub online_fanout_max_members: usize,
    /// Only chats of at most this many members track presence: a socket joining a bigger one
    /// gets an empty `presence_state` and is not tracked (no diffs for it). Every join into a
    /// tracked chat costs a state of the whole roster, so a storm of N joins costs O(N²)
    /// bytes, held in the joiners' queues until written. Default 1,000.
    pub presence_max_members: usize,
}

impl ChatConfig {
    /// What the message log keeps, from these settings.
    pub fn retention(&self) -> Retention {
        Retention {
            limit: self.history_limit,
            ttl: self.history_ttl,
            idempotency_ttl: self.idempotency_ttl,
            max_send_keys_per_user: self.max_send_keys_per_user,
            max_send_keys: self.max_send_keys,
        }
    }
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            membership: Membership::Strict,
            max_message_chars: 4096,
            idempotency_ttl: Duration::from_secs(24 * 3600),
            pending_limit: 1000,
            pending_bytes_limit: 1 << 20,
            max_id_bytes: 128,
            max_mobile_ref_id_bytes: 128,
            max_send_keys_per_user: 10_000,
            max_send_keys: 1_000_000,
            history_limit: 10_000,
            history_ttl: Duration::from_secs(30 * 24 * 3600),
            recovery_limit: 1000,
            typing_timeout: Duration::from_secs(6),
            typing_throttle: Duration::from_secs(1),
            presence_interval: Duration::from_millis(100),
            online_linger: Duration::from_secs(5),
            online_fanout_max_members: 100,
            presence_max_members: 1000,
        }
    }
}
