//! In-memory stores for a single node. Each is a map behind one short `parking_lot` mutex;
//! none holds its lock across an `.await`.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{
    IdempotencyStore, MembershipStore, Notification, PendingStore, PresenceStore, SendKey,
    SentMessage, StoreError, Whereabouts,
};

/// Membership in memory. Each chat's sorted member list is built once per change and shared.
#[derive(Default)]
pub struct MemoryMembership {
    chats: Mutex<HashMap<String, Members>>,
}

#[derive(Default)]
struct Members {
    set: BTreeSet<String>,
    /// The sorted list handed out by `members`, rebuilt after a change.
    list: Option<Arc<[String]>>,
}

#[async_trait]
impl MembershipStore for MemoryMembership {
    async fn add(&self, chat: &str, user: &str) -> Result<(), StoreError> {
        let mut chats = self.chats.lock();
        let members = chats.entry(chat.to_owned()).or_default();
        if members.set.insert(user.to_owned()) {
            members.list = None;
        }
        Ok(())
    }

    async fn remove(&self, chat: &str, user: &str) -> Result<bool, StoreError> {
        let mut chats = self.chats.lock();
        let Some(members) = chats.get_mut(chat) else {
            return Ok(false);
        };
        let removed = members.set.remove(user);
        members.list = None;
        if members.set.is_empty() {
            chats.remove(chat);
        }
        Ok(removed)
    }

    async fn is_member(&self, chat: &str, user: &str) -> Result<bool, StoreError> {
        Ok(self
            .chats
            .lock()
            .get(chat)
            .is_some_and(|m| m.set.contains(user)))
    }

    async fn members(&self, chat: &str) -> Result<Arc<[String]>, StoreError> {
        let mut chats = self.chats.lock();
        let Some(members) = chats.get_mut(chat) else {
            return Ok(Arc::from([]));
        };
        let list = members
            .list
            .get_or_insert_with(|| members.set.iter().cloned().collect());
        Ok(list.clone())
    }
}

/// Idempotency keys in memory; expired keys are swept as new ones arrive.
#[derive(Default)]
pub struct MemoryIdempotency {
    inner: Mutex<IdemInner>,
}

#[derive(Default)]
struct IdemInner {
    keys: HashMap<SendKey, (SentMessage, Instant)>,
    /// Insertion order with deadlines, for sweeping (every key has the same TTL per call).
    order: VecDeque<(Instant, SendKey)>,
}

#[async_trait]
impl IdempotencyStore for MemoryIdempotency {
    async fn claim(
        &self,
        key: &SendKey,
        sent: &SentMessage,
        ttl: Duration,
    ) -> Result<Option<SentMessage>, StoreError> {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        // Sweep expired keys from the front (bounded work: only expired entries are removed).
        while let Some((deadline, _)) = inner.order.front() {
            if *deadline > now {
                break;
            }
            if let Some((_, k)) = inner.order.pop_front()
                && inner.keys.get(&k).is_some_and(|(_, d)| *d <= now)
            {
                inner.keys.remove(&k);
            }
        }
        if let Some((original, deadline)) = inner.keys.get(key)
            && *deadline > now
        {
            return Ok(Some(original.clone()));
        }
        let deadline = now + ttl;
        inner.keys.insert(key.clone(), (sent.clone(), deadline));
        inner.order.push_back((deadline, key.clone()));
        Ok(None)
    }

    async fn release(&self, key: &SendKey) -> Result<(), StoreError> {
        self.inner.lock().keys.remove(key);
        Ok(())
    }
}

/// Pending notifications in memory.
#[derive(Default)]
pub struct MemoryPending {
    users: Mutex<HashMap<String, VecDeque<Notification>>>,
}

#[async_trait]
impl PendingStore for MemoryPending {
    async fn push(
        &self,
        user: &str,
        notification: &Notification,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let mut users = self.users.lock();
        let queue = users.entry(user.to_owned()).or_default();
        queue.push_back(notification.clone());
        let mut dropped = 0;
        while queue.len() > limit.max(1) {
            queue.pop_front();
            dropped += 1;
        }
        Ok(dropped)
    }

    async fn take_all(&self, user: &str) -> Result<Vec<Notification>, StoreError> {
        Ok(self
            .users
            .lock()
            .remove(user)
            .map(Vec::from)
            .unwrap_or_default())
    }
}

/// Presence counts in memory: per chat, the users with sockets in it; per user, the sockets
/// on their notifications topic. Lookups by `&str`, without allocating.
#[derive(Default)]
pub struct MemoryPresence {
    chats: Mutex<HashMap<String, HashMap<String, usize>>>,
    notifications: Mutex<HashMap<String, usize>>,
}

fn increment(map: &mut HashMap<String, usize>, key: &str) {
    match map.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            map.insert(key.to_owned(), 1);
        }
    }
}

fn decrement(map: &mut HashMap<String, usize>, key: &str) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

#[async_trait]
impl PresenceStore for MemoryPresence {
    async fn enter_chat(&self, user: &str, chat: &str) -> Result<(), StoreError> {
        let mut chats = self.chats.lock();
        match chats.get_mut(chat) {
            Some(users) => increment(users, user),
            None => {
                chats.insert(chat.to_owned(), HashMap::from([(user.to_owned(), 1)]));
            }
        }
        Ok(())
    }

    async fn leave_chat(&self, user: &str, chat: &str) -> Result<(), StoreError> {
        let mut chats = self.chats.lock();
        if let Some(users) = chats.get_mut(chat) {
            decrement(users, user);
            if users.is_empty() {
                chats.remove(chat);
            }
        }
        Ok(())
    }

    async fn in_chat(&self, user: &str, chat: &str) -> Result<bool, StoreError> {
        Ok(self
            .chats
            .lock()
            .get(chat)
            .is_some_and(|users| users.contains_key(user)))
    }

    async fn enter_notifications(&self, user: &str) -> Result<(), StoreError> {
        increment(&mut self.notifications.lock(), user);
        Ok(())
    }

    async fn leave_notifications(&self, user: &str) -> Result<(), StoreError> {
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
        let chats = self.chats.lock();
        let in_chat = chat.and_then(|c| chats.get(c));
        let notifications = self.notifications.lock();
        Ok(users
            .iter()
            .map(|u| Whereabouts {
                in_chat: in_chat.is_some_and(|m| m.contains_key(u.as_str())),
                notifications: notifications.contains_key(u.as_str()),
            })
            .collect())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use super::*;

    fn note(i: usize) -> Notification {
        Notification {
            chat_id: "c".into(),
            sender_id: "s".into(),
            content: format!("m{i}"),
            timestamp: "t".into(),
            message_id: format!("id{i}"),
        }
    }

    #[tokio::test]
    async fn pending_keeps_the_newest_up_to_the_limit_and_take_empties() {
        let p = MemoryPending::default();
        let mut dropped = 0;
        for i in 0..5 {
            dropped += p.push("u", &note(i), 3).await.unwrap();
        }
        assert_eq!(dropped, 2);
        let got: Vec<_> = p
            .take_all("u")
            .await
            .unwrap()
            .into_iter()
            .map(|n| n.content)
            .collect();
        assert_eq!(got, ["m2", "m3", "m4"]);
        assert!(p.take_all("u").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn idempotency_returns_the_original_until_it_expires() {
        let s = MemoryIdempotency::default();
        let key = SendKey {
            user: "u".into(),
            chat: "c".into(),
            mobile_ref_id: "r".into(),
        };
        let first = SentMessage {
            message_id: "1".into(),
            timestamp: "t1".into(),
        };
        let second = SentMessage {
            message_id: "2".into(),
            timestamp: "t2".into(),
        };
        let ttl = Duration::from_millis(50);
        assert_eq!(s.claim(&key, &first, ttl).await.unwrap(), None);
        assert_eq!(
            s.claim(&key, &second, ttl).await.unwrap(),
            Some(first.clone())
        );
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(s.claim(&key, &second, ttl).await.unwrap(), None);
        s.release(&key).await.unwrap();
        assert_eq!(s.claim(&key, &first, ttl).await.unwrap(), None);
    }

    #[tokio::test]
    async fn presence_counts_sockets() {
        let p = MemoryPresence::default();
        p.enter_chat("u", "c").await.unwrap();
        p.enter_chat("u", "c").await.unwrap();
        p.leave_chat("u", "c").await.unwrap();
        assert!(p.in_chat("u", "c").await.unwrap());
        p.leave_chat("u", "c").await.unwrap();
        assert!(!p.in_chat("u", "c").await.unwrap());
        p.enter_notifications("u").await.unwrap();
        assert!(p.has_notifications("u").await.unwrap());
        p.leave_notifications("u").await.unwrap();
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
    }
}
