//! In-memory stores for a single node (`--store memory`, and the presence store of every
//! single-node setup). Each is a map behind one short `parking_lot` mutex; none holds its
//! lock across an `.await`. Expiry runs on tokio's clock, so tests can pause time.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{
    Appended, Draft, LogHead, LoggedMessage, MembershipStore, MessageLog, PendingItem,
    PendingLimits, PendingStore, PresenceStore, ReadStore, Retention, SendKey, SentRecord,
    StoreError, UserChat, Whereabouts, new_epoch,
};
use crate::time::now_millis;

/// Membership in memory. Each chat's sorted member list is built once per change and shared;
/// each user's chats are indexed too (for the rooms list), with when they were added.
#[derive(Default)]
pub struct MemoryMembership {
    inner: Mutex<MembershipInner>,
}

#[derive(Default)]
struct MembershipInner {
    chats: HashMap<String, Members>,
    /// user → chat → added (ms since the Unix epoch).
    users: HashMap<String, HashMap<String, i64>>,
}

#[derive(Default)]
struct Members {
    set: BTreeSet<String>,
    /// The sorted list handed out by `members`, rebuilt after a change.
    list: Option<Arc<[String]>>,
}

impl MemoryMembership {
    /// Adds without going through the async trait (loading a cache); an existing member
    /// keeps their first `added_ms`.
    pub fn insert(&self, chat: &str, user: &str, added_ms: i64) {
        let mut inner = self.inner.lock();
        let members = inner.chats.entry(chat.to_owned()).or_default();
        if members.set.insert(user.to_owned()) {
            members.list = None;
        }
        inner
            .users
            .entry(user.to_owned())
            .or_default()
            .entry(chat.to_owned())
            .or_insert(added_ms);
    }

    /// Whether `user` is a member of `chat`.
    pub fn contains(&self, chat: &str, user: &str) -> bool {
        self.inner
            .lock()
            .chats
            .get(chat)
            .is_some_and(|m| m.set.contains(user))
    }
}

#[async_trait]
impl MembershipStore for MemoryMembership {
    async fn add(&self, chat: &str, user: &str) -> Result<(), StoreError> {
        self.insert(chat, user, now_millis());
        Ok(())
    }

    async fn remove(&self, chat: &str, user: &str) -> Result<bool, StoreError> {
        let mut inner = self.inner.lock();
        if let Some(chats) = inner.users.get_mut(user) {
            chats.remove(chat);
            if chats.is_empty() {
                inner.users.remove(user);
            }
        }
        let Some(members) = inner.chats.get_mut(chat) else {
            return Ok(false);
        };
        let removed = members.set.remove(user);
        members.list = None;
        if members.set.is_empty() {
            inner.chats.remove(chat);
        }
        Ok(removed)
    }

    async fn is_member(&self, chat: &str, user: &str) -> Result<bool, StoreError> {
        Ok(self.contains(chat, user))
    }

    async fn members(&self, chat: &str) -> Result<Arc<[String]>, StoreError> {
        let mut inner = self.inner.lock();
        let Some(members) = inner.chats.get_mut(chat) else {
            return Ok(Arc::from([]));
        };
        let list = members
            .list
            .get_or_insert_with(|| members.set.iter().cloned().collect());
        Ok(list.clone())
    }

    async fn chats_of(&self, user: &str) -> Result<Vec<UserChat>, StoreError> {
        Ok(self
            .inner
            .lock()
            .users
            .get(user)
            .map(|chats| {
                chats
                    .iter()
                    .map(|(chat, added)| UserChat {
                        chat_id: chat.clone(),
                        added_ms: *added,
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn count_members(&self, chats: &[String]) -> Result<Vec<usize>, StoreError> {
        let inner = self.inner.lock();
        Ok(chats
            .iter()
            .map(|c| inner.chats.get(c).map_or(0, |m| m.set.len()))
            .collect())
    }
}

/// The message log in memory: per chat, the kept messages in a deque; per send key, the
/// first result, swept as it expires. One mutex, held for a few map operations.
///
/// Send keys are capped per user and in total ([`Retention::max_send_keys_per_user`],
/// [`Retention::max_send_keys`]): past either cap the oldest key is forgotten first (a
/// retry of it would be sent again), counted in [`MemoryLog::send_keys_forgotten`] and
/// logged, so a client inventing `mobile_ref_id`s cannot grow the process without bound.
pub struct MemoryLog {
    retention: Retention,
    epoch: u64,
    inner: Mutex<LogInner>,
    forgotten: AtomicU64,
}

#[derive(Default)]
struct LogInner {
    chats: HashMap<String, ChatLog>,
    sends: HashMap<Arc<SendKey>, Send>,
    /// Send keys by insertion number, oldest first: for sweeping (one TTL for all, so
    /// insertion order is expiry order) and for the total cap.
    /// Each entry carries its key's deadline, so sweeping reads no hash map.
    order: BTreeMap<u64, (Instant, Arc<SendKey>)>,
    /// Each user's send keys by insertion number, oldest first: for the per-user cap.
    by_user: HashMap<String, VecDeque<u64>>,
    next_send: u64,
}

#[derive(Default)]
struct ChatLog {
    last_seq: u64,
    messages: VecDeque<LoggedMessage>,
}

struct Send {
    sent: SentRecord,
    delivered: bool,
}

impl MemoryLog {
    /// An empty log with a fresh epoch.
    pub fn new(retention: Retention) -> MemoryLog {
        MemoryLog {
            retention,
            epoch: new_epoch(),
            inner: Mutex::new(LogInner::default()),
            forgotten: AtomicU64::new(0),
        }
    }

    /// Send keys currently remembered.
    pub fn send_keys(&self) -> usize {
        self.inner.lock().sends.len()
    }

    /// Send keys forgotten before their TTL because a cap was reached, since start.
    pub fn send_keys_forgotten(&self) -> u64 {
        self.forgotten.load(Ordering::Relaxed)
    }
}

impl LogInner {
    fn sweep(&mut self, now: Instant) {
        while let Some((_, (deadline, _))) = self.order.first_key_value() {
            if *deadline > now {
                break;
            }
            self.forget_oldest();
        }
    }

    /// Forgets the oldest send key of all.
    fn forget_oldest(&mut self) {
        let Some((id, (_, key))) = self.order.pop_first() else {
            return;
        };
        self.sends.remove(&*key);
        if let Some(queue) = self.by_user.get_mut(&key.user) {
            // The oldest of all is its user's oldest too.
            if queue.front() == Some(&id) {
                queue.pop_front();
            } else if let Some(pos) = queue.iter().position(|i| *i == id) {
                queue.remove(pos);
            }
            if queue.is_empty() {
                self.by_user.remove(&key.user);
            }
        }
    }

    /// Forgets `user`'s oldest send key.
    fn forget_oldest_of(&mut self, user: &str) {
        let Some(queue) = self.by_user.get_mut(user) else {
            return;
        };
        if let Some(id) = queue.pop_front()
            && let Some((_, key)) = self.order.remove(&id)
        {
            self.sends.remove(&*key);
        }
        if queue.is_empty() {
            self.by_user.remove(user);
        }
    }

    /// Remembers a new send key until `deadline`, then applies the caps; returns how many
    /// keys it forgot.
    fn remember(
        &mut self,
        key: &SendKey,
        send: Send,
        deadline: Instant,
        retention: &Retention,
    ) -> u64 {
        let id = self.next_send;
        self.next_send += 1;
        let key = Arc::new(key.clone());
        self.sends.insert(key.clone(), send);
        self.order.insert(id, (deadline, key.clone()));
        // The user's queue is looked up before one is made: a user's name is copied once,
        // not on every send.
        let queued = match self.by_user.get_mut(&key.user) {
            Some(queue) => {
                queue.push_back(id);
                queue.len()
            }
            None => {
                self.by_user.insert(key.user.clone(), VecDeque::from([id]));
                1
            }
        };
        let mut forgotten = 0;
        let over_user = queued.saturating_sub(retention.max_send_keys_per_user.max(1));
        for _ in 0..over_user {
            self.forget_oldest_of(&key.user);
            forgotten += 1;
        }
        while self.sends.len() > retention.max_send_keys.max(1) {
            self.forget_oldest();
            forgotten += 1;
        }
        forgotten
    }
}

fn trim(log: &mut ChatLog, retention: &Retention, now_ms: i64) {
    let oldest = now_ms - i64::try_from(retention.ttl.as_millis()).unwrap_or(i64::MAX);
    while log.messages.len() > retention.limit.max(1)
        || log.messages.front().is_some_and(|m| m.ts_ms < oldest)
    {
        log.messages.pop_front();
    }
}

#[async_trait]
impl MessageLog for MemoryLog {
    async fn append(&self, key: &SendKey, draft: &Draft) -> Result<Appended, StoreError> {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        inner.sweep(now);
        if let Some(send) = inner.sends.get(key) {
            let (sent, delivered) = (send.sent.clone(), send.delivered);
            let message = inner.chats.get(&key.chat).and_then(|log| {
                log.messages
                    .binary_search_by_key(&sent.seq, |m| m.seq)
                    .ok()
                    .map(|i| log.messages[i].clone())
            });
            return Ok(Appended::Retry {
                sent,
                message,
                delivered,
            });
        }
        let log = inner.chats.entry(key.chat.clone()).or_default();
        log.last_seq += 1;
        let message = LoggedMessage {
            epoch: self.epoch,
            chat_id: key.chat.clone(),
            seq: log.last_seq,
            message_id: draft.message_id.clone(),
            sender_id: key.user.clone(),
            content: draft.content.clone(),
            ts_ms: draft.ts_ms,
        };
        log.messages.push_back(message.clone());
        trim(log, &self.retention, draft.ts_ms);
        let deadline = now + self.retention.idempotency_ttl;
        let sent = SentRecord {
            message_id: message.message_id.clone(),
            seq: message.seq,
            ts_ms: message.ts_ms,
        };
        let send = Send {
            sent,
            delivered: false,
        };
        let forgotten = inner.remember(key, send, deadline, &self.retention);
        drop(inner);
        if forgotten > 0 {
            let before = self.forgotten.fetch_add(forgotten, Ordering::Relaxed);
            // The first time, then every 1,000th: a steady stream should not flood the log.
            if before == 0 || before / 1000 != (before + forgotten) / 1000 {
                tracing::warn!(
                    total = before + forgotten,
                    per_user = self.retention.max_send_keys_per_user,
                    in_all = self.retention.max_send_keys,
                    "send keys over a cap; the oldest were forgotten before their TTL"
                );
            }
        }
        Ok(Appended::New(message))
    }

    async fn mark_delivered(&self, key: &SendKey) -> Result<(), StoreError> {
        if let Some(send) = self.inner.lock().sends.get_mut(key) {
            send.delivered = true;
        }
        Ok(())
    }

    async fn head(&self, chat: &str) -> Result<LogHead, StoreError> {
        let mut inner = self.inner.lock();
        let (last_seq, first_seq) = match inner.chats.get_mut(chat) {
            Some(log) => {
                trim(log, &self.retention, now_millis());
                let first = log.messages.front().map_or(log.last_seq + 1, |m| m.seq);
                (log.last_seq, first)
            }
            None => (0, 1),
        };
        Ok(LogHead {
            epoch: self.epoch,
            last_seq,
            first_seq,
        })
    }

    async fn after(
        &self,
        chat: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LoggedMessage>, StoreError> {
        let inner = self.inner.lock();
        let Some(log) = inner.chats.get(chat) else {
            return Ok(Vec::new());
        };
        let start = log.messages.partition_point(|m| m.seq <= after);
        Ok(log.messages.range(start..).take(limit).cloned().collect())
    }

    async fn before(
        &self,
        chat: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<LoggedMessage>, StoreError> {
        let inner = self.inner.lock();
        let Some(log) = inner.chats.get(chat) else {
            return Ok(Vec::new());
        };
        let end = match before {
            Some(b) => log.messages.partition_point(|m| m.seq < b),
            None => log.messages.len(),
        };
        let start = end.saturating_sub(limit);
        Ok(log.messages.range(start..end).cloned().collect())
    }

    async fn count_unread(&self, chat: &str, after: u64, user: &str) -> Result<u64, StoreError> {
        let inner = self.inner.lock();
        let Some(log) = inner.chats.get(chat) else {
            return Ok(0);
        };
        let start = log.messages.partition_point(|m| m.seq <= after);
        Ok(log
            .messages
            .range(start..)
            .filter(|m| m.sender_id != user)
            .count() as u64)
    }

    async fn get(&self, refs: &[(String, u64)]) -> Result<Vec<Option<LoggedMessage>>, StoreError> {
        let inner = self.inner.lock();
        Ok(refs
            .iter()
            .map(|(chat, seq)| {
                let log = inner.chats.get(chat)?;
                let i = log.messages.binary_search_by_key(seq, |m| m.seq).ok()?;
                Some(log.messages[i].clone())
            })
            .collect())
    }
}

/// Read positions in memory.
#[derive(Default)]
pub struct MemoryReads {
    positions: Mutex<HashMap<(String, String), u64>>,
}

#[async_trait]
impl ReadStore for MemoryReads {
    async fn mark_read(&self, user: &str, chat: &str, seq: u64) -> Result<u64, StoreError> {
        let mut positions = self.positions.lock();
        let at = positions
            .entry((user.to_owned(), chat.to_owned()))
            .or_default();
        *at = (*at).max(seq);
        Ok(*at)
    }

    async fn read_position(&self, user: &str, chat: &str) -> Result<u64, StoreError> {
        Ok(self
            .positions
            .lock()
            .get(&(user.to_owned(), chat.to_owned()))
            .copied()
            .unwrap_or(0))
    }
}

/// Pending notifications in memory, per user in id order, with their stored sizes.
#[derive(Default)]
pub struct MemoryPending {
    inner: Mutex<PendingInner>,
}

#[derive(Default)]
struct PendingInner {
    next_id: u64,
    users: HashMap<String, UserPending>,
}

#[derive(Default)]
struct UserPending {
    /// (id, item, its size in bytes), oldest first.
    items: VecDeque<(u64, PendingItem, usize)>,
    /// The sum of the sizes.
    bytes: usize,
}

impl UserPending {
    fn pop_front(&mut self) {
        if let Some((_, _, size)) = self.items.pop_front() {
            self.bytes -= size;
        }
    }
}

/// How far back a push looks for the same chat message already stored (a redelivery of a
/// send comes right after the first).
const PENDING_DEDUPE_WINDOW: usize = 64;

/// The size a pending item counts for: its JSON, as the other stores keep it.
pub(crate) fn pending_size(item: &PendingItem) -> Result<usize, StoreError> {
    serde_json::to_vec(item)
        .map(|v| v.len())
        .map_err(StoreError::encode("pending item"))
}

#[async_trait]
impl PendingStore for MemoryPending {
    async fn push_many(
        &self,
        users: &[String],
        item: &PendingItem,
        limits: PendingLimits,
    ) -> Result<usize, StoreError> {
        let size = pending_size(item)?;
        let mut inner = self.inner.lock();
        let mut dropped = 0;
        for user in users {
            inner.next_id += 1;
            let id = inner.next_id;
            let queue = inner.users.entry(user.clone()).or_default();
            let repeat = matches!(item, PendingItem::Message { .. })
                && queue
                    .items
                    .iter()
                    .rev()
                    .take(PENDING_DEDUPE_WINDOW)
                    .any(|(_, held, _)| held == item);
            if repeat {
                continue;
            }
            queue.items.push_back((id, item.clone(), size));
            queue.bytes += size;
            while queue.items.len() > limits.count.max(1)
                || (queue.bytes > limits.bytes && queue.items.len() > 1)
            {
                queue.pop_front();
                dropped += 1;
            }
        }
        Ok(dropped)
    }

    async fn list(&self, user: &str) -> Result<Vec<(u64, PendingItem)>, StoreError> {
        Ok(self
            .inner
            .lock()
            .users
            .get(user)
            .map(|q| {
                q.items
                    .iter()
                    .map(|(id, item, _)| (*id, item.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn remove(&self, user: &str, upto: u64) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        if let Some(queue) = inner.users.get_mut(user) {
            while queue.items.front().is_some_and(|(id, _, _)| *id <= upto) {
                queue.pop_front();
            }
            if queue.items.is_empty() {
                inner.users.remove(user);
            }
        }
        Ok(())
    }

    async fn remove_item(&self, user: &str, item: &PendingItem) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        if let Some(queue) = inner.users.get_mut(user) {
            // Live deliveries remove what was stored last, so search from the back.
            if let Some(pos) = queue.items.iter().rposition(|(_, held, _)| held == item)
                && let Some((_, _, size)) = queue.items.remove(pos)
            {
                queue.bytes -= size;
            }
            if queue.items.is_empty() {
                inner.users.remove(user);
            }
        }
        Ok(())
    }
}

/// Presence counts in memory: per chat, the users with sockets in it; per user, the sockets
/// on their notifications topic. Lookups by `&str`, without allocating.
#[derive(Default)]
pub struct MemoryPresence {
    chats: Mutex<ChatsPresent>,
    notifications: Mutex<HashMap<String, usize>>,
}

/// Who is in each chat, with a version per chat (see [`PresenceStore::chat_version`]).
#[derive(Default)]
struct ChatsPresent {
    chats: HashMap<String, InChat>,
    /// The last version handed out; every change of a chat's users takes the next one, so a
    /// version never stands for two different sets (an empty chat is 0, and has no entry).
    last_version: u64,
}

struct InChat {
    /// Sockets per user.
    users: HashMap<String, usize>,
    version: u64,
}

fn increment(map: &mut HashMap<String, usize>, key: &str) -> bool {
    match map.get_mut(key) {
        Some(n) => {
            *n += 1;
            false
        }
        None => {
            map.insert(key.to_owned(), 1);
            true
        }
    }
}

fn decrement(map: &mut HashMap<String, usize>, key: &str) -> bool {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
            return true;
        }
    }
    false
}

#[async_trait]
impl PresenceStore for MemoryPresence {
    async fn enter_chat(&self, user: &str, chat: &str, _socket: u64) -> Result<(), StoreError> {
        let mut present = self.chats.lock();
        let present = &mut *present;
        match present.chats.get_mut(chat) {
            Some(in_chat) => {
                if increment(&mut in_chat.users, user) {
                    present.last_version += 1;
                    in_chat.version = present.last_version;
                }
            }
            None => {
                present.last_version += 1;
                let in_chat = InChat {
                    users: HashMap::from([(user.to_owned(), 1)]),
                    version: present.last_version,
                };
                present.chats.insert(chat.to_owned(), in_chat);
            }
        }
        Ok(())
    }

    async fn leave_chat(&self, user: &str, chat: &str, _socket: u64) -> Result<(), StoreError> {
        let mut present = self.chats.lock();
        let present = &mut *present;
        if let Some(in_chat) = present.chats.get_mut(chat) {
            if decrement(&mut in_chat.users, user) {
                present.last_version += 1;
                in_chat.version = present.last_version;
            }
            if in_chat.users.is_empty() {
                present.chats.remove(chat);
            }
        }
        Ok(())
    }

    async fn in_chat(&self, user: &str, chat: &str) -> Result<bool, StoreError> {
        Ok(self
            .chats
            .lock()
            .chats
            .get(chat)
            .is_some_and(|in_chat| in_chat.users.contains_key(user)))
    }

    async fn enter_notifications(&self, user: &str, _socket: u64) -> Result<(), StoreError> {
        increment(&mut self.notifications.lock(), user);
        Ok(())
    }

    async fn leave_notifications(&self, user: &str, _socket: u64) -> Result<(), StoreError> {
        decrement(&mut self.notifications.lock(), user);
        Ok(())
    }

    async fn has_notifications(&self, user: &str) -> Result<bool, StoreError> {
        Ok(self.notifications.lock().contains_key(user))
    }

    async fn locate(
        &self,
        users: &[String],
        chat: Option<&str>,
    ) -> Result<Vec<Whereabouts>, StoreError> {
        let present = self.chats.lock();
        let in_chat = chat.and_then(|c| present.chats.get(c));
        let notifications = self.notifications.lock();
        Ok(users
            .iter()
            .map(|u| Whereabouts {
                in_chat: in_chat.is_some_and(|c| c.users.contains_key(u.as_str())),
                notifications: notifications.contains_key(u.as_str()),
            })
            .collect())
    }

    fn chat_version(&self, chat: &str) -> Option<u64> {
        Some(self.chats.lock().chats.get(chat).map_or(0, |c| c.version))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use super::*;

    fn item(i: u64) -> PendingItem {
        PendingItem::Message {
            chat_id: "c".into(),
            seq: i,
        }
    }

    #[tokio::test]
    async fn pending_keeps_the_newest_up_to_the_limit_until_removed() {
        let p = MemoryPending::default();
        let users = ["u".to_owned()];
        let mut dropped = 0;
        for i in 0..5 {
            dropped += p.push_many(&users, &item(i), count(3)).await.unwrap();
        }
        // The same chat message again is not stored twice.
        p.push_many(&users, &item(4), count(3)).await.unwrap();
        assert_eq!(dropped, 2);
        let listed = p.list("u").await.unwrap();
        let seqs: Vec<_> = listed
            .iter()
            .map(|(_, i)| match i {
                PendingItem::Message { seq, .. } => *seq,
                PendingItem::Inline(_) => 0,
            })
            .collect();
        assert_eq!(seqs, [2, 3, 4]);
        // Listing removes nothing; removal is up to an id.
        assert_eq!(p.list("u").await.unwrap().len(), 3);
        p.remove("u", listed[1].0).await.unwrap();
        assert_eq!(p.list("u").await.unwrap(), listed[2..]);
    }

    use crate::store::test_support::{draft, key};

    fn count(n: usize) -> PendingLimits {
        PendingLimits {
            count: n,
            bytes: usize::MAX,
        }
    }

    fn inline(content: &str) -> PendingItem {
        PendingItem::Inline(crate::store::Notification {
            chat_id: "c".into(),
            sender_id: "s".into(),
            content: content.into(),
            timestamp: "t".into(),
            message_id: content.into(),
            seq: None,
        })
    }

    #[tokio::test]
    async fn pending_is_bounded_in_bytes_too_and_keeps_the_newest() {
        let p = MemoryPending::default();
        let users = ["u".to_owned()];
        let size = pending_size(&inline(&"a".repeat(1000))).unwrap();
        let limits = PendingLimits {
            count: 100,
            bytes: size * 3,
        };
        let mut dropped = 0;
        for i in 0..10 {
            let content = format!("{i}{}", "a".repeat(999));
            dropped += p
                .push_many(&users, &inline(&content), limits)
                .await
                .unwrap();
        }
        let kept = p.list("u").await.unwrap();
        assert_eq!(
            (kept.len(), dropped),
            (3, 7),
            "three fit in the byte budget"
        );
        let first = |items: &[(u64, PendingItem)]| match &items[0].1 {
            PendingItem::Inline(n) => n.content.chars().next().unwrap(),
            PendingItem::Message { .. } => '?',
        };
        assert_eq!(first(&kept), '7', "the newest are kept");
        // One item over the whole budget is still kept (alone): a notification is never
        // refused for its size here; the API bounds sizes before it gets this far.
        let huge = inline(&"h".repeat(size * 4));
        p.push_many(&users, &huge, limits).await.unwrap();
        assert_eq!(p.list("u").await.unwrap(), vec![(11, huge.clone())]);
        // Removal gives the bytes back.
        p.remove_item("u", &huge).await.unwrap();
        for i in 0..3 {
            p.push_many(&users, &inline(&format!("{i}{}", "b".repeat(999))), limits)
                .await
                .unwrap();
        }
        assert_eq!(p.list("u").await.unwrap().len(), 3);
    }

    fn user_key(user: &str, r: usize) -> SendKey {
        SendKey {
            user: user.into(),
            chat: "c".into(),
            mobile_ref_id: format!("r{r}"),
        }
    }

    #[tokio::test]
    async fn send_keys_are_capped_per_user_and_in_all_oldest_first() {
        let log = MemoryLog::new(Retention {
            max_send_keys_per_user: 3,
            max_send_keys: 5,
            ..Retention::default()
        });
        for r in 0..5 {
            log.append(&user_key("a", r), &draft("x")).await.unwrap();
        }
        assert_eq!((log.send_keys(), log.send_keys_forgotten()), (3, 2));
        // a's oldest two were forgotten: a retry of r0 sends again, r2 is still a retry.
        assert!(matches!(
            log.append(&user_key("a", 2), &draft("x")).await.unwrap(),
            Appended::Retry { .. }
        ));
        assert!(matches!(
            log.append(&user_key("a", 0), &draft("x")).await.unwrap(),
            Appended::New(_)
        ));
        // Now a holds r3, r4, r0 (r2 went for r0). Three of b make 6 in all, over the total
        // of 5: the oldest of all, a's r3, goes.
        for r in 0..3 {
            log.append(&user_key("b", r), &draft("x")).await.unwrap();
        }
        assert_eq!(log.send_keys(), 5);
        for (user, r, retry) in [("a", 3, false), ("a", 0, true), ("b", 0, true)] {
            let got = log.append(&user_key(user, r), &draft("x")).await.unwrap();
            assert_eq!(matches!(got, Appended::Retry { .. }), retry, "{user} r{r}");
        }
        let inner = log.inner.lock();
        assert_eq!(inner.sends.len(), inner.order.len());
        assert_eq!(
            inner.by_user.values().map(VecDeque::len).sum::<usize>(),
            inner.sends.len(),
            "the indexes agree"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn log_numbers_messages_and_answers_retries_until_the_key_expires() {
        let log = MemoryLog::new(Retention {
            idempotency_ttl: std::time::Duration::from_secs(60),
            ..Retention::default()
        });
        let Appended::New(first) = log.append(&key("r1"), &draft("a")).await.unwrap() else {
            panic!("first send is new")
        };
        assert_eq!(first.seq, 1);
        let Appended::New(second) = log.append(&key("r2"), &draft("b")).await.unwrap() else {
            panic!("second send is new")
        };
        assert_eq!(second.seq, 2);
        match log.append(&key("r1"), &draft("c")).await.unwrap() {
            Appended::Retry {
                sent,
                message,
                delivered,
            } => {
                assert_eq!((sent.message_id.as_str(), sent.seq), ("a", 1));
                assert_eq!(message, Some(first.clone()));
                assert!(!delivered);
            }
            other => panic!("expected a retry, got {other:?}"),
        }
        log.mark_delivered(&key("r1")).await.unwrap();
        assert!(matches!(
            log.append(&key("r1"), &draft("c")).await.unwrap(),
            Appended::Retry {
                delivered: true,
                ..
            }
        ));
        tokio::time::advance(std::time::Duration::from_secs(61)).await;
        let Appended::New(third) = log.append(&key("r1"), &draft("d")).await.unwrap() else {
            panic!("an expired key sends again")
        };
        assert_eq!(third.seq, 3);
        let head = log.head("c").await.unwrap();
        assert_eq!((head.last_seq, head.first_seq), (3, 1));
    }

    #[tokio::test]
    async fn log_trims_to_the_limit_and_pages_both_ways() {
        let log = MemoryLog::new(Retention {
            limit: 3,
            ..Retention::default()
        });
        for i in 0..5 {
            log.append(&key(&format!("r{i}")), &draft(&format!("m{i}")))
                .await
                .unwrap();
        }
        let head = log.head("c").await.unwrap();
        assert_eq!((head.last_seq, head.first_seq), (5, 3));
        let seqs = |v: Vec<LoggedMessage>| v.into_iter().map(|m| m.seq).collect::<Vec<_>>();
        assert_eq!(seqs(log.after("c", 0, 10).await.unwrap()), [3, 4, 5]);
        assert_eq!(seqs(log.after("c", 3, 1).await.unwrap()), [4]);
        assert_eq!(seqs(log.before("c", None, 2).await.unwrap()), [4, 5]);
        assert_eq!(seqs(log.before("c", Some(5), 10).await.unwrap()), [3, 4]);
        let got = log
            .get(&[("c".into(), 2), ("c".into(), 4), ("x".into(), 1)])
            .await
            .unwrap();
        assert_eq!(
            got.iter()
                .map(|m| m.as_ref().map(|m| m.seq))
                .collect::<Vec<_>>(),
            [None, Some(4), None]
        );
        let empty = log.head("none").await.unwrap();
        assert_eq!(
            (empty.last_seq, empty.first_seq, empty.epoch),
            (0, 1, head.epoch)
        );
    }

    #[tokio::test]
    async fn presence_counts_sockets() {
        let p = MemoryPresence::default();
        p.enter_chat("u", "c", 1).await.unwrap();
        p.enter_chat("u", "c", 1).await.unwrap();
        p.leave_chat("u", "c", 1).await.unwrap();
        assert!(p.in_chat("u", "c").await.unwrap());
        p.leave_chat("u", "c", 1).await.unwrap();
        assert!(!p.in_chat("u", "c").await.unwrap());
        p.enter_notifications("u", 1).await.unwrap();
        assert!(p.has_notifications("u").await.unwrap());
        p.leave_notifications("u", 1).await.unwrap();
        assert!(!p.has_notifications("u").await.unwrap());
    }

    #[tokio::test]
    async fn membership_add_remove_list() {
        let m = MemoryMembership::default();
        m.add("c", "b").await.unwrap();
        m.add("c", "a").await.unwrap();
        m.add("c", "a").await.unwrap();
        assert_eq!(&*m.members("c").await.unwrap(), ["a", "b"]);
        assert!(m.is_member("c", "a").await.unwrap());
        assert!(m.remove("c", "a").await.unwrap());
        assert!(!m.remove("c", "a").await.unwrap());
        assert!(!m.is_member("c", "a").await.unwrap());
        // Each user's chats, with the first time they were added.
        m.insert("c", "b", 5);
        m.insert("d", "b", 7);
        let mut chats = m.chats_of("b").await.unwrap();
        chats.sort_by(|x, y| x.chat_id.cmp(&y.chat_id));
        assert_eq!(chats.len(), 2);
        assert_eq!(chats[0].chat_id, "c");
        assert!(chats[0].added_ms > 5, "the first add's time is kept");
        assert_eq!((chats[1].chat_id.as_str(), chats[1].added_ms), ("d", 7));
        assert_eq!(
            m.count_members(&["c".into(), "d".into(), "x".into()])
                .await
                .unwrap(),
            [1, 1, 0]
        );
        m.remove("d", "b").await.unwrap();
        assert_eq!(m.chats_of("b").await.unwrap().len(), 1);
        assert!(m.chats_of("a").await.unwrap().is_empty());
    }
}
