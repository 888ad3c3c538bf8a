//! The store traits over [`RedisState`]: what lets several nodes share membership, the
//! message log (with idempotency keys), pending notifications and presence.

use std::sync::Arc;

use async_trait::async_trait;
use plume_redis::state::{AppendArgs, AppendKind, AppendReply};
use plume_redis::{RedisState, StateError};
use serde::{Deserialize, Serialize};

use super::{
    Appended, Draft, LogHead, LoggedMessage, MembershipStore, MessageLog, PendingItem,
    PendingLimits, PendingStore, PresenceStore, ReadStore, Retention, Routed, SendKey, SendStore,
    SentRecord, StoreError, Stores, UserChat, Whereabouts, new_epoch,
};
use crate::time::now_millis;

/// The presence target of a user's notifications topic.
const NOTIFICATIONS_TARGET: &str = "notifications";

fn chat_target(chat: &str) -> String {
    format!("chat:{chat}")
}

fn err(e: StateError) -> StoreError {
    StoreError::Redis(e)
}

/// All four stores in Redis, the log keeping `retention`.
pub fn stores(state: RedisState, retention: Retention) -> Stores {
    let roster = Arc::new(super::roster::RedisRoster::new(state.clone()));
    let shared = Arc::new(RedisStores { state, retention });
    Stores {
        membership: shared.clone(),
        log: shared.clone(),
        pending: shared.clone(),
        presence: shared.clone(),
        reads: shared.clone(),
        roster: Some(roster),
        send: Some(shared),
        // A channel's waiting sends go to Redis together, one batch at a time, so their
        // seqs follow the order sent (`chat::batch_pipeline`).
        sends_in_flight: crate::chat::SENDS_IN_FLIGHT,
        batch_appends: true,
    }
}

struct RedisStores {
    state: RedisState,
    retention: Retention,
}

/// A log entry after its `{seq}:` prefix.
#[derive(Serialize, Deserialize)]
struct Entry<'a> {
    id: &'a str,
    from: &'a str,
    ts: i64,
    text: &'a str,
}

fn parse_entry(chat: &str, epoch: u64, raw: &str) -> Result<LoggedMessage, StoreError> {
    let what = || format!("log entry of chat {chat}");
    let (seq, body) = raw
        .split_once(':')
        .ok_or_else(|| StoreError::corrupt(what(), "no `{seq}:` prefix"))?;
    let seq = seq
        .parse()
        .map_err(|e| StoreError::corrupt(format!("seq of a log entry of chat {chat}"), e))?;
    let e: Entry<'_> = serde_json::from_str(body)
        .map_err(|e| StoreError::corrupt(format!("log entry {seq} of chat {chat}"), e))?;
    Ok(LoggedMessage {
        epoch,
        chat_id: chat.to_owned(),
        seq,
        message_id: e.id.to_owned(),
        sender_id: e.from.to_owned(),
        content: e.text.to_owned(),
        ts_ms: e.ts,
    })
}

impl RedisStores {
    /// The chat's epoch for reading entries (making one if the chat has none).
    async fn head_of(&self, chat: &str) -> Result<LogHead, StoreError> {
        let h = self
            .state
            .log_head(chat, self.retention.ttl, new_epoch())
            .await
            .map_err(err)?;
        Ok(LogHead {
            epoch: h.epoch,
            last_seq: h.last_seq,
            first_seq: h.first_seq.unwrap_or(h.last_seq + 1),
        })
    }

    fn parse_all(&self, chat: &str, epoch: u64, raw: Vec<String>) -> Vec<LoggedMessage> {
        raw.iter()
            .filter_map(|r| match parse_entry(chat, epoch, r) {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::error!(%e, "skipping a log entry");
                    None
                }
            })
            .collect()
    }
}

#[async_trait]
impl MembershipStore for RedisStores {
    async fn add(&self, chat: &str, user: &str) -> Result<(), StoreError> {
        self.state
            .add_member(chat, user, now_millis())
            .await
            .map_err(err)
    }

    async fn remove(&self, chat: &str, user: &str) -> Result<bool, StoreError> {
        self.state.remove_member(chat, user).await.map_err(err)
    }

    async fn is_member(&self, chat: &str, user: &str) -> Result<bool, StoreError> {
        self.state.is_member(chat, user).await.map_err(err)
    }

    async fn members(&self, chat: &str) -> Result<Arc<[String]>, StoreError> {
        self.state.members(chat).await.map(Arc::from).map_err(err)
    }

    async fn chats_of(&self, user: &str) -> Result<Vec<UserChat>, StoreError> {
        let chats = self.state.chats_of(user).await.map_err(err)?;
        Ok(chats
            .into_iter()
            .map(|(chat_id, added_ms)| UserChat { chat_id, added_ms })
            .collect())
    }

    async fn count_members(&self, chats: &[String]) -> Result<Vec<usize>, StoreError> {
        self.state.count_members(chats).await.map_err(err)
    }
}

impl RedisStores {
    /// The append script; `None` when `require_member` and the sender is not a member.
    async fn append_checked(
        &self,
        key: &SendKey,
        draft: &Draft,
        require_member: bool,
    ) -> Result<Option<Appended>, StoreError> {
        let entry = log_entry(key, draft)?;
        let reply = self
            .state
            .append(&self.append_args(key, draft, &entry, require_member))
            .await
            .map_err(err)?;
        appended(key, reply)
    }

    fn append_args<'a>(
        &self,
        key: &'a SendKey,
        draft: &'a Draft,
        entry: &'a str,
        require_member: bool,
    ) -> AppendArgs<'a> {
        AppendArgs {
            user: &key.user,
            chat: &key.chat,
            mobile_ref_id: &key.mobile_ref_id,
            message_id: &draft.message_id,
            ts_ms: draft.ts_ms,
            entry,
            limit: self.retention.limit,
            idempotency_ttl: self.retention.idempotency_ttl,
            log_ttl: self.retention.ttl,
            new_epoch: new_epoch(),
            require_member,
        }
    }
}

/// A send's log entry, as the append script stores it.
fn log_entry(key: &SendKey, draft: &Draft) -> Result<String, StoreError> {
    serde_json::to_string(&Entry {
        id: &draft.message_id,
        from: &key.user,
        ts: draft.ts_ms,
        text: &draft.content,
    })
    .map_err(StoreError::encode("log entry"))
}

/// What an append script's answer means for the send; `None`: not a member.
fn appended(key: &SendKey, reply: AppendReply) -> Result<Option<Appended>, StoreError> {
    if reply.kind == AppendKind::NotMember {
        return Ok(None);
    }
    let message = match &reply.entry {
        Some(raw) => Some(parse_entry(&key.chat, reply.epoch, raw)?),
        None => None,
    };
    match (reply.kind, message) {
        // Our own append, found again by a re-run after a lost reply: it is new, and
        // nobody has received it yet.
        (AppendKind::New | AppendKind::Own, Some(message)) => Ok(Some(Appended::New(message))),
        (AppendKind::New | AppendKind::Own, None) => Err(StoreError::corrupt(
            format!("append reply for chat {}", key.chat),
            "the appended message is missing from the log",
        )),
        (AppendKind::Retry | AppendKind::NotMember, message) => Ok(Some(Appended::Retry {
            sent: SentRecord {
                message_id: reply.message_id,
                seq: reply.seq,
                ts_ms: reply.ts_ms,
            },
            message,
            delivered: reply.delivered,
        })),
    }
}

#[async_trait]
impl SendStore for RedisStores {
    async fn append_as_member(
        &self,
        key: &SendKey,
        draft: &Draft,
    ) -> Result<Option<Appended>, StoreError> {
        self.append_checked(key, draft, true).await
    }

    async fn append_many_as_members(
        &self,
        sends: &[(&SendKey, &Draft)],
    ) -> Result<Vec<Result<Option<Appended>, StoreError>>, StoreError> {
        let entries = sends
            .iter()
            .map(|(key, draft)| log_entry(key, draft))
            .collect::<Result<Vec<_>, _>>()?;
        let args: Vec<AppendArgs<'_>> = sends
            .iter()
            .zip(&entries)
            .map(|((key, draft), entry)| self.append_args(key, draft, entry, true))
            .collect();
        let replies = self.state.append_many(&args).await.map_err(err)?;
        Ok(sends
            .iter()
            .zip(replies)
            .map(|((key, _), reply)| appended(key, reply))
            .collect())
    }

    async fn route(
        &self,
        key: &SendKey,
        item: &PendingItem,
        limits: PendingLimits,
    ) -> Result<Routed, StoreError> {
        let item = serde_json::to_string(item).map_err(StoreError::encode("pending item"))?;
        let reply = self
            .state
            .route(
                &key.user,
                &key.chat,
                &key.mobile_ref_id,
                &item,
                limits.count,
                limits.bytes,
            )
            .await
            .map_err(err)?;
        Ok(Routed {
            live: reply.live,
            dropped: reply.dropped,
        })
    }
}

#[async_trait]
impl MessageLog for RedisStores {
    async fn append(&self, key: &SendKey, draft: &Draft) -> Result<Appended, StoreError> {
        match self.append_checked(key, draft, false).await? {
            Some(appended) => Ok(appended),
            None => Err(StoreError::corrupt(
                format!("append reply for chat {}", key.chat),
                "a membership answer to an append that did not ask for one",
            )),
        }
    }

    async fn mark_delivered(&self, key: &SendKey) -> Result<(), StoreError> {
        // Off the send's path (see the trait): a lost mark only means a retry delivers again.
        let (state, key) = (self.state.clone(), key.clone());
        tokio::spawn(async move {
            if let Err(e) = state
                .mark_delivered(&key.user, &key.chat, &key.mobile_ref_id)
                .await
            {
                tracing::warn!(%e, "could not record a delivered send");
            }
        });
        Ok(())
    }

    async fn head(&self, chat: &str) -> Result<LogHead, StoreError> {
        self.head_of(chat).await
    }

    async fn after(
        &self,
        chat: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LoggedMessage>, StoreError> {
        let head = self.head_of(chat).await?;
        let raw = self
            .state
            .log_after(chat, after, limit)
            .await
            .map_err(err)?;
        Ok(self.parse_all(chat, head.epoch, raw))
    }

    async fn before(
        &self,
        chat: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<LoggedMessage>, StoreError> {
        let head = self.head_of(chat).await?;
        let raw = self
            .state
            .log_before(chat, before, limit)
            .await
            .map_err(err)?;
        let mut out = self.parse_all(chat, head.epoch, raw);
        out.reverse();
        Ok(out)
    }

    async fn count_unread(&self, chat: &str, after: u64, user: &str) -> Result<u64, StoreError> {
        let raw = self
            .state
            .log_after(chat, after, self.retention.limit)
            .await
            .map_err(err)?;
        Ok(raw
            .iter()
            .filter_map(|r| parse_entry(chat, 0, r).ok())
            .filter(|m| m.sender_id != user)
            .count() as u64)
    }

    async fn latest(&self, chats: &[String]) -> Result<Vec<Option<LoggedMessage>>, StoreError> {
        let raw = self.state.log_latest(chats).await.map_err(err)?;
        Ok(raw
            .into_iter()
            .zip(chats)
            .map(|(r, chat)| r.and_then(|r| parse_entry(chat, 0, &r).ok()))
            .collect())
    }

    async fn count_unread_many(
        &self,
        positions: &[(String, u64)],
        user: &str,
    ) -> Result<Vec<u64>, StoreError> {
        let raw = self
            .state
            .log_after_many(positions, self.retention.limit)
            .await
            .map_err(err)?;
        Ok(raw
            .iter()
            .zip(positions)
            .map(|(entries, (chat, _))| {
                entries
                    .iter()
                    .filter_map(|r| parse_entry(chat, 0, r).ok())
                    .filter(|m| m.sender_id != user)
                    .count() as u64
            })
            .collect())
    }

    async fn get(&self, refs: &[(String, u64)]) -> Result<Vec<Option<LoggedMessage>>, StoreError> {
        let raw = self.state.log_get(refs).await.map_err(err)?;
        // The epoch matters only for sequenced delivery, which pending items never use.
        Ok(raw
            .into_iter()
            .zip(refs)
            .map(|(r, (chat, _))| r.and_then(|r| parse_entry(chat, 0, &r).ok()))
            .collect())
    }
}

#[async_trait]
impl ReadStore for RedisStores {
    async fn mark_read(&self, user: &str, chat: &str, seq: u64) -> Result<u64, StoreError> {
        self.state.mark_read(user, chat, seq).await.map_err(err)
    }

    async fn read_position(&self, user: &str, chat: &str) -> Result<u64, StoreError> {
        self.state.read_position(user, chat).await.map_err(err)
    }

    async fn read_positions(&self, user: &str, chats: &[String]) -> Result<Vec<u64>, StoreError> {
        self.state.read_positions(user, chats).await.map_err(err)
    }
}

#[async_trait]
impl PendingStore for RedisStores {
    async fn push_many(
        &self,
        users: &[String],
        item: &PendingItem,
        limits: PendingLimits,
    ) -> Result<usize, StoreError> {
        let item = serde_json::to_string(item).map_err(StoreError::encode("pending item"))?;
        self.state
            .push_pending_many(users, &item, limits.count, limits.bytes)
            .await
            .map_err(err)
    }

    async fn list(&self, user: &str) -> Result<Vec<(u64, PendingItem)>, StoreError> {
        let items = self.state.list_pending(user).await.map_err(err)?;
        let mut out = Vec::with_capacity(items.len());
        for (id, item) in items {
            match serde_json::from_str(&item) {
                Ok(n) => out.push((id, n)),
                Err(e) => tracing::error!(user, %e, "skipping an unreadable pending item"),
            }
        }
        Ok(out)
    }

    async fn remove(&self, user: &str, upto: u64) -> Result<(), StoreError> {
        self.state.remove_pending(user, upto).await.map_err(err)
    }

    async fn remove_item(&self, user: &str, item: &PendingItem) -> Result<(), StoreError> {
        // Items are stored as their JSON, which serializing the same item reproduces.
        let item = serde_json::to_string(item).map_err(StoreError::encode("pending item"))?;
        self.state
            .remove_pending_item(user, &item)
            .await
            .map_err(err)
    }
}

#[async_trait]
impl PresenceStore for RedisStores {
    async fn enter_chat(&self, user: &str, chat: &str, socket: u64) -> Result<(), StoreError> {
        self.state
            .enter(user, &chat_target(chat), socket)
            .await
            .map_err(err)
    }

    async fn leave_chat(&self, user: &str, chat: &str, socket: u64) -> Result<(), StoreError> {
        self.state
            .leave(user, &chat_target(chat), socket)
            .await
            .map_err(err)
    }

    async fn in_chat(&self, user: &str, chat: &str) -> Result<bool, StoreError> {
        self.state
            .present(user, &chat_target(chat))
            .await
            .map_err(err)
    }

    async fn enter_notifications(&self, user: &str, socket: u64) -> Result<(), StoreError> {
        self.state
            .enter(user, NOTIFICATIONS_TARGET, socket)
            .await
            .map_err(err)
    }

    async fn leave_notifications(&self, user: &str, socket: u64) -> Result<(), StoreError> {
        self.state
            .leave(user, NOTIFICATIONS_TARGET, socket)
            .await
            .map_err(err)
    }

    async fn has_notifications(&self, user: &str) -> Result<bool, StoreError> {
        self.state
            .present(user, NOTIFICATIONS_TARGET)
            .await
            .map_err(err)
    }

    async fn locate(
        &self,
        users: &[String],
        chat: Option<&str>,
    ) -> Result<Vec<Whereabouts>, StoreError> {
        let chat_target = chat.map(chat_target);
        let targets: Vec<&str> = match &chat_target {
            Some(target) => vec![NOTIFICATIONS_TARGET, target.as_str()],
            None => vec![NOTIFICATIONS_TARGET],
        };
        let rows = self
            .state
            .present_many(users, &targets)
            .await
            .map_err(err)?;
        Ok(rows
            .into_iter()
            .map(|row| Whereabouts {
                notifications: row.first().copied().unwrap_or(false),
                in_chat: row.get(1).copied().unwrap_or(false),
            })
            .collect())
    }
}
