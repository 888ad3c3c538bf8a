//! The chat service's state, behind traits so a node can keep it in an embedded database
//! (the single-node default, [`sqlite`]), in memory ([`memory`], tests and throwaway runs) or
//! share it through Redis ([`redis`], over plume-redis) without the channels changing.
//!
//! Every method is async and returns [`StoreError`] when the backend cannot answer (the
//! variants in [`error`]); the channels turn that into an error reply (`storage_unavailable`,
//! decided in [`crate::failure`]) instead of dropping data.
//!
//! [`timed`] wraps any of them to record each operation's latency, and each failure's kind,
//! in the node's metrics. `wal_sync` (private) is the embedded store's flusher thread: the
//! `fdatasync` of the WAL that every write's answer waits for.

pub mod error;
pub mod memory;
pub mod redis;
pub mod roster;
pub mod sqlite;
pub mod timed;
mod wal_sync;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use error::StoreError;

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
    /// Every chat `user` is a member of, with when they were added (the first time: adding
    /// again keeps it), in no particular order.
    async fn chats_of(&self, user: &str) -> Result<Vec<UserChat>, StoreError>;
    /// How many members each of `chats` has. One round trip for a remote store.
    async fn count_members(&self, chats: &[String]) -> Result<Vec<usize>, StoreError> {
        let mut out = Vec::with_capacity(chats.len());
        for chat in chats {
            out.push(self.members(chat).await?.len());
        }
        Ok(out)
    }
}

/// One chat of a user's, as [`MembershipStore::chats_of`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserChat {
    /// The chat.
    pub chat_id: String,
    /// When the user was added, milliseconds since the Unix epoch (0 when the store does not
    /// know: a membership from before schema version 3).
    pub added_ms: i64,
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

/// A message as the chat log keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedMessage {
    /// The epoch of the log it is in (see [`LogHead::epoch`]).
    pub epoch: u64,
    /// The chat.
    pub chat_id: String,
    /// Position in the chat's log: 1, 2, 3, … without gaps.
    pub seq: u64,
    /// The server's id of the message (a UUIDv7).
    pub message_id: String,
    /// Who sent it.
    pub sender_id: String,
    /// The text.
    pub content: String,
    /// When it was accepted, milliseconds since the Unix epoch.
    pub ts_ms: i64,
}

/// A new message before the log numbers it.
#[derive(Debug, Clone)]
pub struct Draft {
    /// The id it gets if it is new.
    pub message_id: String,
    /// Its timestamp if it is new (ms since the Unix epoch).
    pub ts_ms: i64,
    /// The text.
    pub content: String,
}

/// What the first send with a [`SendKey`] produced; a retry is answered with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentRecord {
    /// The message id.
    pub message_id: String,
    /// Its seq.
    pub seq: u64,
    /// Its timestamp (ms since the Unix epoch).
    pub ts_ms: i64,
}

/// The outcome of [`MessageLog::append`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// A new message, now in the log with the next seq.
    New(LoggedMessage),
    /// A retry of an earlier send: nothing was appended.
    Retry {
        /// The original send.
        sent: SentRecord,
        /// The original message, if the log still has it.
        message: Option<LoggedMessage>,
        /// Whether the original send's delivery step finished ([`MessageLog::mark_delivered`]);
        /// when not, the retry delivers it again (receivers drop what they already have by seq).
        delivered: bool,
    },
}

/// Where a chat's log stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogHead {
    /// Identifies this log: it changes when the log is lost or reset (seq starts again).
    pub epoch: u64,
    /// The newest seq; 0 for a chat with no message yet.
    pub last_seq: u64,
    /// The oldest seq still kept; `last_seq + 1` when none is kept.
    pub first_seq: u64,
}

/// How much of each chat's log is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Newest messages kept per chat.
    pub limit: usize,
    /// Messages older than this are trimmed.
    pub ttl: Duration,
    /// How long a send is remembered for retries.
    pub idempotency_ttl: Duration,
    /// Send keys kept per user by the in-memory log (the oldest are forgotten first).
    pub max_send_keys_per_user: usize,
    /// Send keys kept in all by the in-memory log (the oldest are forgotten first).
    pub max_send_keys: usize,
}

impl Default for Retention {
    /// The settings of [`crate::ChatConfig::default`], their one source.
    fn default() -> Self {
        crate::ChatConfig::default().retention()
    }
}

/// The durable, per-chat numbered message log, with send idempotency folded in so that
/// "is this a retry" and "append with the next seq" are one atomic step.
///
/// Guarantees: seqs of a chat are 1, 2, 3, … with no gap and no duplicate, whatever the
/// number of concurrent senders (and nodes, for a shared store); an `Ok` from `append` means
/// the message is committed (durable for a durable store); a retry of a send whose first
/// attempt was committed returns that attempt and appends nothing.
#[async_trait]
pub trait MessageLog: Send + Sync + 'static {
    /// Appends `draft` to `key.chat` unless `key` was sent before (within the idempotency
    /// TTL). Trims the chat to the retention limits.
    async fn append(&self, key: &SendKey, draft: &Draft) -> Result<Appended, StoreError>;
    /// Records that the send's delivery step (broadcast, notifications) finished. Called on
    /// the send's path before the acknowledgement, so it must not wait on a round trip or a
    /// commit: a store queues it (losing one only means a retry delivers again).
    async fn mark_delivered(&self, key: &SendKey) -> Result<(), StoreError>;
    /// The chat's epoch, newest seq and oldest kept seq.
    async fn head(&self, chat: &str) -> Result<LogHead, StoreError>;
    /// Up to `limit` messages with seq above `after`, oldest first.
    async fn after(
        &self,
        chat: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LoggedMessage>, StoreError>;
    /// The newest `limit` messages with seq below `before` (all when `None`), oldest first.
    async fn before(
        &self,
        chat: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<LoggedMessage>, StoreError>;
    /// The messages at these positions, `None` where the log no longer has one.
    async fn get(&self, refs: &[(String, u64)]) -> Result<Vec<Option<LoggedMessage>>, StoreError>;
    /// How many kept messages of `chat` with seq above `after` were not sent by `user` (the
    /// user's unread count when `after` is their read position).
    async fn count_unread(&self, chat: &str, after: u64, user: &str) -> Result<u64, StoreError>;
    /// The newest kept message of each of `chats` (`None`: none kept). One round trip for a
    /// remote store.
    async fn latest(&self, chats: &[String]) -> Result<Vec<Option<LoggedMessage>>, StoreError> {
        let mut out = Vec::with_capacity(chats.len());
        for chat in chats {
            out.push(self.before(chat, None, 1).await?.pop());
        }
        Ok(out)
    }
    /// [`MessageLog::count_unread`] for several `(chat, after)` positions of one user.
    async fn count_unread_many(
        &self,
        positions: &[(String, u64)],
        user: &str,
    ) -> Result<Vec<u64>, StoreError> {
        let mut out = Vec::with_capacity(positions.len());
        for (chat, after) in positions {
            out.push(self.count_unread(chat, *after, user).await?);
        }
        Ok(out)
    }
}

/// How far each user has read each chat. Durable like the log.
#[async_trait]
pub trait ReadStore: Send + Sync + 'static {
    /// Moves `user`'s read position in `chat` up to `seq` (never back); returns the position
    /// after the call.
    async fn mark_read(&self, user: &str, chat: &str, seq: u64) -> Result<u64, StoreError>;
    /// `user`'s read position in `chat` (0: nothing read).
    async fn read_position(&self, user: &str, chat: &str) -> Result<u64, StoreError>;
    /// `user`'s read position in each of `chats`. One round trip for a remote store.
    async fn read_positions(&self, user: &str, chats: &[String]) -> Result<Vec<u64>, StoreError> {
        let mut out = Vec::with_capacity(chats.len());
        for chat in chats {
            out.push(self.read_position(user, chat).await?);
        }
        Ok(out)
    }
}

/// How many pending notifications a user keeps, in count and in bytes (as stored: the item's
/// JSON). The oldest go first; the newest item is always kept, whatever its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingLimits {
    /// Most items per user.
    pub count: usize,
    /// Most bytes per user.
    pub bytes: usize,
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
    /// The message's seq in its chat (absent for a notification the backend sent through
    /// the API, which is not in any chat log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

/// What a pending notification holds: a reference into a chat log (a chat message; the
/// content is read from the log when it is delivered, so a message to a thousand offline
/// members is stored once), or a whole notification (one the backend sent through the API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PendingItem {
    /// Message `seq` of chat `chat_id`.
    Message {
        /// The chat.
        chat_id: String,
        /// The seq.
        seq: u64,
    },
    /// A notification that is not in any log.
    Inline(Notification),
}

/// Notifications stored for a user until they were written to one of the user's sockets:
/// stored for every member who is not in the chat, online or not, and removed once written
/// (live as `new_notification`, or on the next join as `pending_notification`), so a socket
/// or node that dies before writing loses nothing.
///
/// Delivery is at least once: [`PendingStore::list`] does not remove anything; the channel
/// removes what it listed with [`PendingStore::remove`] only after it was written to the
/// socket, so a socket that dies mid-way gets them again next time. Storing the same chat
/// message twice for a user keeps one copy.
#[async_trait]
pub trait PendingStore: Send + Sync + 'static {
    /// Stores `item` for each of `users`, keeping each user within `limits` (the oldest are
    /// dropped); returns how many were dropped in total.
    async fn push_many(
        &self,
        users: &[String],
        item: &PendingItem,
        limits: PendingLimits,
    ) -> Result<usize, StoreError>;
    /// Every stored item of `user`, oldest first, each with its id (ids increase).
    async fn list(&self, user: &str) -> Result<Vec<(u64, PendingItem)>, StoreError>;
    /// Removes the items of `user` with id up to and including `upto`.
    async fn remove(&self, user: &str, upto: u64) -> Result<(), StoreError>;
    /// Removes one item of `user` (one that was delivered live), if it is stored.
    async fn remove_item(&self, user: &str, item: &PendingItem) -> Result<(), StoreError>;
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
/// Counts sockets (each named by its id, so a store may make enter and leave idempotent),
/// and a user with two devices stays present until both leave.
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    /// Socket `socket` of `user` joined `chat`.
    async fn enter_chat(&self, user: &str, chat: &str, socket: u64) -> Result<(), StoreError>;
    /// Socket `socket` of `user` left `chat`.
    async fn leave_chat(&self, user: &str, chat: &str, socket: u64) -> Result<(), StoreError>;
    /// Whether `user` has any socket joined to `chat`.
    async fn in_chat(&self, user: &str, chat: &str) -> Result<bool, StoreError>;
    /// Socket `socket` of `user` joined its notifications topic.
    async fn enter_notifications(&self, user: &str, socket: u64) -> Result<(), StoreError>;
    /// Socket `socket` of `user` left its notifications topic.
    async fn leave_notifications(&self, user: &str, socket: u64) -> Result<(), StoreError>;
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

    /// A number that changes whenever the set of users with sockets in `chat` changes, and
    /// only then: a caller may keep what it derived from [`PresenceStore::locate`] for the
    /// chat while the number stays the same (see [`RouteMemo`]). `None`: the store cannot
    /// tell cheaply (a remote store), and callers locate every time.
    fn chat_version(&self, _chat: &str) -> Option<u64> {
        None
    }
}

/// What one channel's sends remember between them of who was not in the chat, so that a send
/// into a chat whose members and presence did not change skips locating every member (in a
/// chat of 10,000 that was two hash lookups per member per message). Exact: it is used only
/// while the membership store hands out the same member list (the list is shared until the
/// membership changes) and the presence store reports the same [`PresenceStore::chat_version`].
#[derive(Default)]
pub struct RouteMemo(parking_lot::Mutex<Option<Remembered>>);

struct Remembered {
    chat: String,
    sender: String,
    members: Arc<[String]>,
    presence: u64,
    /// The members other than the sender without a socket in the chat.
    absent: Arc<[String]>,
}

impl RouteMemo {
    fn recall(
        &self,
        key: &SendKey,
        members: &Arc<[String]>,
        presence: u64,
    ) -> Option<Arc<[String]>> {
        let memo = self.0.lock();
        let r = memo.as_ref()?;
        (Arc::ptr_eq(&r.members, members)
            && r.presence == presence
            && r.chat == key.chat
            && r.sender == key.user)
            .then(|| r.absent.clone())
    }

    fn keep(&self, key: &SendKey, members: Arc<[String]>, presence: u64, absent: Arc<[String]>) {
        *self.0.lock() = Some(Remembered {
            chat: key.chat.clone(),
            sender: key.user.clone(),
            members,
            presence,
            absent,
        });
    }
}

/// What the step of a send after its broadcast did (see [`Stores::route`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Routed {
    /// Members not in the chat who have their notifications topic joined somewhere: they
    /// get `new_notification` now (and have it pending, in case the push is lost).
    pub live: Vec<String>,
    /// Older pending items dropped to keep users within their limits.
    pub dropped: usize,
}

/// The two steps of a chat send that read several stores, for a shared store that can do
/// each in one round trip whatever the chat's size (Redis). Without one, [`Stores`] composes
/// them from the other stores.
#[async_trait]
pub trait SendStore: Send + Sync + 'static {
    /// [`MessageLog::append`] if `key.user` is a member of `key.chat`, checked in the same
    /// step; `None` when they are not (nothing appended).
    async fn append_as_member(
        &self,
        key: &SendKey,
        draft: &Draft,
    ) -> Result<Option<Appended>, StoreError>;
    /// [`SendStore::append_as_member`] for each send, in one step that appends them in the
    /// order given (one round trip for Redis); answers in that order. An error fails the
    /// batch: none of it, or any of it, may have been appended (a retry finds out).
    async fn append_many_as_members(
        &self,
        sends: &[(&SendKey, &Draft)],
    ) -> Result<Vec<Result<Option<Appended>, StoreError>>, StoreError>;
    /// See [`Stores::route`].
    async fn route(
        &self,
        key: &SendKey,
        item: &PendingItem,
        limits: PendingLimits,
    ) -> Result<Routed, StoreError>;
}

/// A fresh log epoch: 64 random bits (from a UUIDv7's random part), so a wiped store is
/// never mistaken for the old one.
pub fn new_epoch() -> u64 {
    let bits = uuid::Uuid::now_v7().as_u128() as u64;
    // Zero is kept free (never an epoch), which lets stores use it as "none".
    bits.max(1)
}

/// The epoch as it travels on the wire (`"epoch"`): 16 lowercase hex digits.
pub fn epoch_text(epoch: u64) -> String {
    format!("{epoch:016x}")
}

/// The four stores the chat service uses.
#[derive(Clone)]
pub struct Stores {
    /// Chat membership.
    pub membership: Arc<dyn MembershipStore>,
    /// The message log (with send idempotency).
    pub log: Arc<dyn MessageLog>,
    /// Pending notifications.
    pub pending: Arc<dyn PendingStore>,
    /// Who is joined where.
    pub presence: Arc<dyn PresenceStore>,
    /// Read positions.
    pub reads: Arc<dyn ReadStore>,
    /// The cluster-wide presence roster and online status; `None` on a single node, whose
    /// presence tracker holds it all.
    pub roster: Option<Arc<dyn roster::RosterStore>>,
    /// A send's multi-store steps in one round trip each; `None`: composed from the stores
    /// above (local stores, where a call costs no round trip).
    pub send: Option<Arc<dyn SendStore>>,
    /// How many sends of one channel may be under way at once (at least 1). More than one
    /// only for a store whose append waits: the embedded store (its one writer takes appends
    /// in the order they are first polled, so a client's burst shares commits and keeps its
    /// order; see `chat::pipeline`) and Redis (with [`Stores::batch_appends`]; see
    /// `chat::batch_pipeline`).
    pub sends_in_flight: usize,
    /// Whether a channel's waiting sends are appended together, in one
    /// [`SendStore::append_many_as_members`] step, one batch at a time (Redis: one round trip
    /// whose order is the order sent); else each send's append runs on its own.
    pub batch_appends: bool,
}

impl Stores {
    /// All four in memory (`--store memory`: tests and throwaway runs; nothing survives a
    /// restart).
    pub fn memory(retention: Retention) -> Stores {
        Stores {
            membership: Arc::new(memory::MemoryMembership::default()),
            log: Arc::new(memory::MemoryLog::new(retention)),
            pending: Arc::new(memory::MemoryPending::default()),
            presence: Arc::new(memory::MemoryPresence::default()),
            reads: Arc::new(memory::MemoryReads::default()),
            roster: None,
            send: None,
            sends_in_flight: 1,
            batch_appends: false,
        }
    }

    /// Appends `draft` if `key.user` is a member of `key.chat` (checked on every send, not
    /// only at join: a member removed while joined cannot send); `None`: not a member.
    pub async fn append_as_member(
        &self,
        key: &SendKey,
        draft: &Draft,
    ) -> Result<Option<Appended>, StoreError> {
        if let Some(send) = &self.send {
            return send.append_as_member(key, draft).await;
        }
        if !self.membership.is_member(&key.chat, &key.user).await? {
            return Ok(None);
        }
        self.log.append(key, draft).await.map(Some)
    }

    /// [`Stores::append_as_member`] for several sends, appended in the order given; see
    /// [`SendStore::append_many_as_members`].
    pub async fn append_many_as_members(
        &self,
        sends: &[(&SendKey, &Draft)],
    ) -> Result<Vec<Result<Option<Appended>, StoreError>>, StoreError> {
        if let Some(send) = &self.send {
            return send.append_many_as_members(sends).await;
        }
        let mut out = Vec::with_capacity(sends.len());
        for (key, draft) in sends {
            out.push(self.append_as_member(key, draft).await);
        }
        Ok(out)
    }

    /// The step of a send after its broadcast: `item` is stored pending for every member of
    /// the chat but the sender who has no socket in it, those of them with a notifications
    /// topic joined are returned (for `new_notification` now), and the send is marked
    /// delivered ([`MessageLog::mark_delivered`]). Run after the broadcast, so a socket that
    /// leaves the chat meanwhile either got the broadcast or is no longer in the chat here.
    pub async fn route(
        &self,
        key: &SendKey,
        item: &PendingItem,
        limits: PendingLimits,
        memo: Option<&RouteMemo>,
    ) -> Result<Routed, StoreError> {
        if let Some(send) = &self.send {
            return send.route(key, item, limits).await;
        }
        let members = self.membership.members(&key.chat).await?;
        // Read before locating: a change after this read gives the next send another version,
        // so what is kept below is never newer than the version it is kept under.
        let version = self.presence.chat_version(&key.chat);
        let recalled = match (memo, version) {
            (Some(memo), Some(version)) => memo.recall(key, &members, version),
            _ => None,
        };
        let (absent, live) = match recalled {
            Some(absent) if absent.is_empty() => (absent, Vec::new()),
            Some(absent) => {
                let located = self.presence.locate(&absent, None).await?;
                let live = absent
                    .iter()
                    .zip(&located)
                    .filter(|(_, at)| at.notifications)
                    .map(|(user, _)| user.clone())
                    .collect();
                (absent, live)
            }
            None => {
                let located = self.presence.locate(&members, Some(&key.chat)).await?;
                let mut absent = Vec::new();
                let mut live = Vec::new();
                for (user, at) in members.iter().zip(&located) {
                    if at.in_chat || *user == key.user {
                        continue;
                    }
                    absent.push(user.clone());
                    if at.notifications {
                        live.push(user.clone());
                    }
                }
                let absent: Arc<[String]> = absent.into();
                if let (Some(memo), Some(version)) = (memo, version) {
                    memo.keep(key, members.clone(), version, absent.clone());
                }
                (absent, live)
            }
        };
        let dropped = if absent.is_empty() {
            0
        } else {
            self.pending.push_many(&absent, item, limits).await?
        };
        // Stores record this without waiting (a lost mark only means a retry delivers again).
        if let Err(err) = self.log.mark_delivered(key).await {
            tracing::warn!(%err, "could not record a delivered send");
        }
        Ok(Routed { live, dropped })
    }
}

/// What the store implementations' unit tests share.
#[cfg(test)]
pub(crate) mod test_support {
    use super::{Draft, SendKey};
    use crate::time::now_millis;

    /// User `u`'s send `r` in chat `c`.
    pub fn key(r: &str) -> SendKey {
        SendKey {
            user: "u".into(),
            chat: "c".into(),
            mobile_ref_id: r.into(),
        }
    }

    /// A message with id `id`, sent now.
    pub fn draft(id: &str) -> Draft {
        Draft {
            message_id: id.into(),
            ts_ms: now_millis(),
            content: format!("text {id}"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod route_memo_tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The in-memory presence, counting how often a whole chat is located.
    #[derive(Default)]
    struct Counting {
        inner: memory::MemoryPresence,
        chat_locates: AtomicUsize,
    }

    #[async_trait]
    impl PresenceStore for Counting {
        async fn enter_chat(&self, user: &str, chat: &str, socket: u64) -> Result<(), StoreError> {
            self.inner.enter_chat(user, chat, socket).await
        }
        async fn leave_chat(&self, user: &str, chat: &str, socket: u64) -> Result<(), StoreError> {
            self.inner.leave_chat(user, chat, socket).await
        }
        async fn in_chat(&self, user: &str, chat: &str) -> Result<bool, StoreError> {
            self.inner.in_chat(user, chat).await
        }
        async fn enter_notifications(&self, user: &str, socket: u64) -> Result<(), StoreError> {
            self.inner.enter_notifications(user, socket).await
        }
        async fn leave_notifications(&self, user: &str, socket: u64) -> Result<(), StoreError> {
            self.inner.leave_notifications(user, socket).await
        }
        async fn has_notifications(&self, user: &str) -> Result<bool, StoreError> {
            self.inner.has_notifications(user).await
        }
        async fn locate(
            &self,
            users: &[String],
            chat: Option<&str>,
        ) -> Result<Vec<Whereabouts>, StoreError> {
            if chat.is_some() {
                self.chat_locates.fetch_add(1, Ordering::Relaxed);
            }
            self.inner.locate(users, chat).await
        }
        fn chat_version(&self, chat: &str) -> Option<u64> {
            self.inner.chat_version(chat)
        }
    }

    const LIMITS: PendingLimits = PendingLimits {
        count: 1000,
        bytes: usize::MAX,
    };

    fn item(seq: u64) -> PendingItem {
        PendingItem::Message {
            chat_id: "c".into(),
            seq,
        }
    }

    fn sender() -> SendKey {
        SendKey {
            user: "a".into(),
            chat: "c".into(),
            mobile_ref_id: "r".into(),
        }
    }

    async fn pending_of(stores: &Stores, user: &str) -> usize {
        stores.pending.list(user).await.unwrap().len()
    }

    #[tokio::test]
    async fn a_remembered_route_follows_every_change_of_members_and_presence() {
        let presence = Arc::new(Counting::default());
        let stores = Stores {
            presence: presence.clone(),
            ..Stores::memory(Retention::default())
        }
        .timed("memory");
        for user in ["a", "b", "x"] {
            stores.membership.add("c", user).await.unwrap();
        }
        stores.presence.enter_chat("a", "c", 1).await.unwrap();
        stores.presence.enter_chat("b", "c", 2).await.unwrap();
        stores.presence.enter_notifications("x", 3).await.unwrap();
        let memo = RouteMemo::default();
        let locates = || presence.chat_locates.load(Ordering::Relaxed);

        // x is absent: pending and live, the first time after locating the chat ...
        let routed = stores
            .route(&sender(), &item(1), LIMITS, Some(&memo))
            .await
            .unwrap();
        assert_eq!(routed.live, ["x"]);
        assert_eq!(locates(), 1);
        // ... then from the memo, still with x's notifications looked up.
        let routed = stores
            .route(&sender(), &item(2), LIMITS, Some(&memo))
            .await
            .unwrap();
        assert_eq!(routed.live, ["x"]);
        assert_eq!(
            locates(),
            1,
            "nothing changed: the chat is not located again"
        );
        assert_eq!(pending_of(&stores, "x").await, 2);
        stores.presence.leave_notifications("x", 3).await.unwrap();
        let routed = stores
            .route(&sender(), &item(3), LIMITS, Some(&memo))
            .await
            .unwrap();
        assert!(
            routed.live.is_empty(),
            "x's notifications left: pending only"
        );
        assert_eq!(pending_of(&stores, "x").await, 3);

        // x joins the chat: located again, nobody absent.
        stores.presence.enter_chat("x", "c", 4).await.unwrap();
        stores
            .route(&sender(), &item(4), LIMITS, Some(&memo))
            .await
            .unwrap();
        assert_eq!(locates(), 2);
        assert_eq!(pending_of(&stores, "x").await, 3);
        // A second socket of a user already there changes nothing.
        stores.presence.enter_chat("b", "c", 5).await.unwrap();
        stores
            .route(&sender(), &item(5), LIMITS, Some(&memo))
            .await
            .unwrap();
        assert_eq!(locates(), 2);

        // b leaves with both sockets: absent from the next send on.
        stores.presence.leave_chat("b", "c", 2).await.unwrap();
        stores.presence.leave_chat("b", "c", 5).await.unwrap();
        stores
            .route(&sender(), &item(6), LIMITS, Some(&memo))
            .await
            .unwrap();
        assert_eq!(pending_of(&stores, "b").await, 1);
        assert_eq!(locates(), 3);

        // A new member is absent at once.
        stores.membership.add("c", "y").await.unwrap();
        stores
            .route(&sender(), &item(7), LIMITS, Some(&memo))
            .await
            .unwrap();
        assert_eq!(pending_of(&stores, "y").await, 1);
        assert_eq!(pending_of(&stores, "b").await, 2);
        assert_eq!(locates(), 4);

        // Everybody leaves and x alone comes back: the emptied chat's version is not reused
        // for a set it never stood for.
        for (user, socket) in [("a", 1), ("x", 4)] {
            stores.presence.leave_chat(user, "c", socket).await.unwrap();
        }
        stores
            .route(&sender(), &item(8), LIMITS, Some(&memo))
            .await
            .unwrap();
        assert_eq!(pending_of(&stores, "x").await, 4);
        stores.presence.enter_chat("x", "c", 6).await.unwrap();
        stores
            .route(&sender(), &item(9), LIMITS, Some(&memo))
            .await
            .unwrap();
        assert_eq!(pending_of(&stores, "x").await, 4, "x is back in the chat");
        assert_eq!(pending_of(&stores, "y").await, 3);
    }
}
