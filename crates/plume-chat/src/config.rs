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
}

impl ChatConfig {
    /// What the message log keeps, from these settings.
    pub fn retention(&self) -> Retention {
        Retention {
            limit: self.history_limit,
            ttl: self.history_ttl,
            idempotency_ttl: self.idempotency_ttl,
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
            history_limit: 10_000,
            history_ttl: Duration::from_secs(30 * 24 * 3600),
            recovery_limit: 1000,
            typing_timeout: Duration::from_secs(6),
            typing_throttle: Duration::from_secs(1),
        }
    }
}
