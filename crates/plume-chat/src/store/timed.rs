//! [`Timed`]: a store wrapper that records each call's latency in the
//! `plume_store_operation_duration_seconds` histogram, labelled by store (`memory`, `sqlite`,
//! `redis`) and operation (the trait method's name), and each failed call in
//! `plume_store_errors_total`, labelled by store and [`StoreError::kind`]. [`Stores::timed`]
//! wraps all five.
//!
//! One wrapper instead of timing inside each backend: the three backends stay as they are, and
//! every operation of every backend is measured the same way (from the caller's side, so a
//! queued SQLite write counts its wait for the writer thread too).

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use plume_channels::metrics::metrics;

use super::{
    Appended, Draft, LogHead, LoggedMessage, MembershipStore, MessageLog, PendingItem,
    PendingLimits, PendingStore, PresenceStore, ReadStore, Routed, SendKey, SendStore, StoreError,
    Stores, UserChat, Whereabouts,
};

/// A store whose calls are timed. See the module docs.
pub struct Timed<S: ?Sized> {
    store: &'static str,
    inner: Arc<S>,
}

impl<S: ?Sized> Timed<S> {
    /// Wraps `inner`, labelling its operations with `store`.
    pub fn new(store: &'static str, inner: Arc<S>) -> Timed<S> {
        Timed { store, inner }
    }

    async fn time<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let out = call.await;
        metrics().store_operation(self.store, operation, started.elapsed());
        if let Err(err) = &out {
            metrics().store_error(self.store, err.kind());
        }
        out
    }
}

impl Stores {
    /// The same stores with every call timed, labelled `store` (see [`Timed`]).
    pub fn timed(self, store: &'static str) -> Stores {
        Stores {
            membership: Arc::new(Timed::new(store, self.membership)),
            log: Arc::new(Timed::new(store, self.log)),
            pending: Arc::new(Timed::new(store, self.pending)),
            presence: Arc::new(Timed::new(store, self.presence)),
            reads: Arc::new(Timed::new(store, self.reads)),
            // The roster times nothing per send: it runs on join, leave and the sweep.
            roster: self.roster,
            send: self
                .send
                .map(|s| Arc::new(Timed::new(store, s)) as Arc<dyn SendStore>),
            sends_in_flight: self.sends_in_flight,
            batch_appends: self.batch_appends,
        }
    }
}

#[async_trait]
impl MembershipStore for Timed<dyn MembershipStore> {
    async fn add(&self, chat: &str, user: &str) -> Result<(), StoreError> {
        self.time("membership_add", self.inner.add(chat, user))
            .await
    }
    async fn remove(&self, chat: &str, user: &str) -> Result<bool, StoreError> {
        self.time("membership_remove", self.inner.remove(chat, user))
            .await
    }
    async fn is_member(&self, chat: &str, user: &str) -> Result<bool, StoreError> {
        self.time("is_member", self.inner.is_member(chat, user))
            .await
    }
    async fn members(&self, chat: &str) -> Result<Arc<[String]>, StoreError> {
        self.time("members", self.inner.members(chat)).await
    }
    async fn chats_of(&self, user: &str) -> Result<Vec<UserChat>, StoreError> {
        self.time("chats_of", self.inner.chats_of(user)).await
    }
    async fn count_members(&self, chats: &[String]) -> Result<Vec<usize>, StoreError> {
        self.time("count_members", self.inner.count_members(chats))
            .await
    }
}

#[async_trait]
impl MessageLog for Timed<dyn MessageLog> {
    async fn append(&self, key: &SendKey, draft: &Draft) -> Result<Appended, StoreError> {
        self.time("append", self.inner.append(key, draft)).await
    }
    async fn mark_delivered(&self, key: &SendKey) -> Result<(), StoreError> {
        self.time("mark_delivered", self.inner.mark_delivered(key))
            .await
    }
    async fn head(&self, chat: &str) -> Result<LogHead, StoreError> {
        self.time("head", self.inner.head(chat)).await
    }
    async fn after(
        &self,
        chat: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LoggedMessage>, StoreError> {
        self.time("after", self.inner.after(chat, after, limit))
            .await
    }
    async fn before(
        &self,
        chat: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<LoggedMessage>, StoreError> {
        self.time("before", self.inner.before(chat, before, limit))
            .await
    }
    async fn get(&self, refs: &[(String, u64)]) -> Result<Vec<Option<LoggedMessage>>, StoreError> {
        self.time("get", self.inner.get(refs)).await
    }
    async fn count_unread(&self, chat: &str, after: u64, user: &str) -> Result<u64, StoreError> {
        self.time("count_unread", self.inner.count_unread(chat, after, user))
            .await
    }
    async fn latest(&self, chats: &[String]) -> Result<Vec<Option<LoggedMessage>>, StoreError> {
        self.time("latest", self.inner.latest(chats)).await
    }
    async fn count_unread_many(
        &self,
        positions: &[(String, u64)],
        user: &str,
    ) -> Result<Vec<u64>, StoreError> {
        self.time(
            "count_unread_many",
            self.inner.count_unread_many(positions, user),
        )
        .await
    }
}

#[async_trait]
impl ReadStore for Timed<dyn ReadStore> {
    async fn mark_read(&self, user: &str, chat: &str, seq: u64) -> Result<u64, StoreError> {
        self.time("mark_read", self.inner.mark_read(user, chat, seq))
            .await
    }
    async fn read_position(&self, user: &str, chat: &str) -> Result<u64, StoreError> {
        self.time("read_position", self.inner.read_position(user, chat))
            .await
    }
    async fn read_positions(&self, user: &str, chats: &[String]) -> Result<Vec<u64>, StoreError> {
        self.time("read_positions", self.inner.read_positions(user, chats))
            .await
    }
}

#[async_trait]
impl PendingStore for Timed<dyn PendingStore> {
    async fn push_many(
        &self,
        users: &[String],
        item: &PendingItem,
        limits: PendingLimits,
    ) -> Result<usize, StoreError> {
        self.time("pending_push", self.inner.push_many(users, item, limits))
            .await
    }
    async fn list(&self, user: &str) -> Result<Vec<(u64, PendingItem)>, StoreError> {
        self.time("pending_list", self.inner.list(user)).await
    }
    async fn remove(&self, user: &str, upto: u64) -> Result<(), StoreError> {
        self.time("pending_remove", self.inner.remove(user, upto))
            .await
    }
    async fn remove_item(&self, user: &str, item: &PendingItem) -> Result<(), StoreError> {
        self.time("pending_remove_item", self.inner.remove_item(user, item))
            .await
    }
}

#[async_trait]
impl PresenceStore for Timed<dyn PresenceStore> {
    async fn enter_chat(&self, user: &str, chat: &str, socket: u64) -> Result<(), StoreError> {
        self.time("enter_chat", self.inner.enter_chat(user, chat, socket))
            .await
    }
    async fn leave_chat(&self, user: &str, chat: &str, socket: u64) -> Result<(), StoreError> {
        self.time("leave_chat", self.inner.leave_chat(user, chat, socket))
            .await
    }
    async fn in_chat(&self, user: &str, chat: &str) -> Result<bool, StoreError> {
        self.time("in_chat", self.inner.in_chat(user, chat)).await
    }
    fn chat_version(&self, chat: &str) -> Option<u64> {
        self.inner.chat_version(chat)
    }
    async fn enter_notifications(&self, user: &str, socket: u64) -> Result<(), StoreError> {
        self.time(
            "enter_notifications",
            self.inner.enter_notifications(user, socket),
        )
        .await
    }
    async fn leave_notifications(&self, user: &str, socket: u64) -> Result<(), StoreError> {
        self.time(
            "leave_notifications",
            self.inner.leave_notifications(user, socket),
        )
        .await
    }
    async fn has_notifications(&self, user: &str) -> Result<bool, StoreError> {
        self.time("has_notifications", self.inner.has_notifications(user))
            .await
    }
    async fn locate(
        &self,
        users: &[String],
        chat: Option<&str>,
    ) -> Result<Vec<Whereabouts>, StoreError> {
        self.time("locate", self.inner.locate(users, chat)).await
    }
}

#[async_trait]
impl SendStore for Timed<dyn SendStore> {
    async fn append_as_member(
        &self,
        key: &SendKey,
        draft: &Draft,
    ) -> Result<Option<Appended>, StoreError> {
        self.time("append_as_member", self.inner.append_as_member(key, draft))
            .await
    }
    async fn append_many_as_members(
        &self,
        sends: &[(&SendKey, &Draft)],
    ) -> Result<Vec<Result<Option<Appended>, StoreError>>, StoreError> {
        self.time(
            "append_many_as_members",
            self.inner.append_many_as_members(sends),
        )
        .await
    }
    async fn route(
        &self,
        key: &SendKey,
        item: &PendingItem,
        limits: PendingLimits,
    ) -> Result<Routed, StoreError> {
        self.time("route", self.inner.route(key, item, limits))
            .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use super::*;
    use crate::store::Retention;
    use crate::store::test_support::{draft, key};

    fn count(store: &str, operation: &str) -> u64 {
        let text = plume_channels::metrics::encode();
        let name = format!(
            "plume_store_operation_duration_seconds_count{{store=\"{store}\",operation=\"{operation}\"}}"
        );
        plume_channels::metrics::sample(&text, &name).map_or(0, |v| v as u64)
    }

    #[tokio::test]
    async fn every_call_is_timed_under_its_store_and_operation_and_answers_as_the_store_does() {
        let stores = Stores::memory(Retention::default()).timed("memory");
        let appended = stores.log.append(&key("r1"), &draft("m1")).await.unwrap();
        assert!(
            matches!(appended, Appended::New(ref m) if m.seq == 1),
            "{appended:?}"
        );
        let again = stores.log.append(&key("r1"), &draft("m1")).await.unwrap();
        assert!(
            matches!(again, Appended::Retry { .. }),
            "the wrapper passes calls and answers through: {again:?}"
        );
        stores.membership.add("c", "u").await.unwrap();
        assert!(stores.membership.is_member("c", "u").await.unwrap());
        stores.presence.enter_chat("u", "c", 1).await.unwrap();
        let found = stores
            .presence
            .locate(&["u".to_owned()], Some("c"))
            .await
            .unwrap();
        assert!(found[0].in_chat);
        assert_eq!(count("memory", "append"), 2);
        assert_eq!(count("memory", "membership_add"), 1);
        assert_eq!(count("memory", "is_member"), 1);
        assert_eq!(count("memory", "enter_chat"), 1);
        assert_eq!(
            count("memory", "locate"),
            1,
            "locate is one call, timed once, whatever the store does inside"
        );
    }
}
