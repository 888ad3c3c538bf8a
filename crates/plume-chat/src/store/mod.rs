//! The chat service's state, behind traits so a node can keep it in memory (the single-node
//! default, [`memory`]) or share it through Redis ([`redis`], over plume-redis) without the
//! channels changing.
//!
//! Every method is async and returns [`StoreError`] when the backend cannot answer; the
//! channels turn that into an error reply (`storage_unavailable`) instead of dropping data.

pub mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// The backend could not answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("store unavailable: {0}")]
pub struct StoreError(pub String);

/// Who may join `chat:{id}` (and who is notified of its messages).
#[async_trait]
pub trait MembershipStore: Send + Sync + 'static {
    /// Adds `user` to `chat` (idempotent).
    async fn add(&self, chat: &str, user: &str) -> Result<(), StoreError>;
    /// Removes `user` from `chat`; true if they were a member.
    async fn remove(&self, chat: &str, user: &str) -> Result<bool, StoreError>;
    /// Whether `user` is a member of `chat`.
    async fn is_member(&self, chat: &str, user: &str) -> Result<bool, StoreError>;
    /// Every member of `chat`, sorted. Shared, because every chat message reads it: a store
    /// may hand out the same list until the membership changes.
    async fn members(&self, chat: &str) -> Result<Arc<[String]>, StoreError>;
}

/// The identity of a send for retries: the same user, chat and client reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SendKey {
    /// The sender.
    pub user: String,
    /// The chat.
    pub chat: String,
    /// The client's `mobile_ref_id`.
    pub mobile_ref_id: String,
}

/// What a first send produced; a retry gets it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentMessage {
    /// The server's id of the message.
    pub message_id: String,
    /// When it was sent (RFC 3339, UTC).
    pub timestamp: String,
}

/// Remembers sends for a while so that retries are not delivered twice.
#[async_trait]
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Claims `key` for `sent`, atomically: `None` when this is the first send (the claim now
    /// holds `sent` for `ttl`), `Some(original)` when the key was already claimed.
    async fn claim(
        &self,
        key: &SendKey,
        sent: &SentMessage,
        ttl: Duration,
    ) -> Result<Option<SentMessage>, StoreError>;
    /// Drops a claim (a send that failed after claiming, so a retry can go through).
    async fn release(&self, key: &SendKey) -> Result<(), StoreError>;
}

/// A notification about a chat message, as pushed to `notifications:{user}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// The chat the message was sent to.
    pub chat_id: String,
    /// Who sent it.
    pub sender_id: String,
    /// The message text.
    pub content: String,
    /// When it was sent (RFC 3339, UTC).
    pub timestamp: String,
    /// The message id.
    pub message_id: String,
}

/// Notifications stored while a user has no notifications topic joined.
#[async_trait]
pub trait PendingStore: Send + Sync + 'static {
    /// Appends a notification for `user`, keeping at most `limit` (the oldest are dropped);
    /// returns how many were dropped.
    async fn push(
        &self,
        user: &str,
        notification: &Notification,
        limit: usize,
    ) -> Result<usize, StoreError>;
    /// Removes and returns every stored notification of `user`, oldest first. Atomic: two
    /// concurrent callers never both get the same notification.
    async fn take_all(&self, user: &str) -> Result<Vec<Notification>, StoreError>;

    /// [`PendingStore::push`] for several users (one round trip for a remote store); returns
    /// how many were dropped in total.
    async fn push_many(
        &self,
        users: &[String],
        notification: &Notification,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let mut dropped = 0;
        for user in users {
            dropped += self.push(user, notification, limit).await?;
        }
        Ok(dropped)
    }
}

/// Where a user is, as far as notifications are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Whereabouts {
    /// Has a socket joined to the chat in question.
    pub in_chat: bool,
    /// Has a notifications topic joined somewhere.
    pub notifications: bool,
}

/// Which users have sockets joined where: `chat:{id}` and their notifications topic.
/// Counts sockets, so a user with two devices stays present until both leave.
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    /// One more socket of `user` joined `chat`.
    async fn enter_chat(&self, user: &str, chat: &str) -> Result<(), StoreError>;
    /// One socket of `user` left `chat`.
    async fn leave_chat(&self, user: &str, chat: &str) -> Result<(), StoreError>;
    /// Whether `user` has any socket joined to `chat`.
    async fn in_chat(&self, user: &str, chat: &str) -> Result<bool, StoreError>;
    /// One more socket of `user` joined its notifications topic.
    async fn enter_notifications(&self, user: &str) -> Result<(), StoreError>;
    /// One socket of `user` left its notifications topic.
    async fn leave_notifications(&self, user: &str) -> Result<(), StoreError>;
    /// Whether `user` has its notifications topic joined on any socket.
    async fn has_notifications(&self, user: &str) -> Result<bool, StoreError>;

    /// [`Whereabouts`] of each of `users` for `chat` (`None`: only notifications matter).
    /// One round trip for a remote store, whatever the number of users.
    async fn locate(
        &self,
        users: &[String],
        chat: Option<&str>,
    ) -> Result<Vec<Whereabouts>, StoreError> {
        let mut out = Vec::with_capacity(users.len());
        for user in users {
            let in_chat = match chat {
                Some(chat) => self.in_chat(user, chat).await?,
                None => false,
            };
            out.push(Whereabouts {
                in_chat,
                notifications: self.has_notifications(user).await?,
            });
        }
        Ok(out)
    }
}

/// The four stores the chat service uses.
#[derive(Clone)]
pub struct Stores {
    /// Chat membership.
    pub membership: Arc<dyn MembershipStore>,
    /// Send idempotency keys.
    pub idempotency: Arc<dyn IdempotencyStore>,
    /// Pending notifications.
    pub pending: Arc<dyn PendingStore>,
    /// Who is joined where.
    pub presence: Arc<dyn PresenceStore>,
}

impl Stores {
    /// All four in memory (the single-node default).
    pub fn memory() -> Stores {
        Stores {
            membership: Arc::new(memory::MemoryMembership::default()),
            idempotency: Arc::new(memory::MemoryIdempotency::default()),
            pending: Arc::new(memory::MemoryPending::default()),
            presence: Arc::new(memory::MemoryPresence::default()),
        }
    }
}
