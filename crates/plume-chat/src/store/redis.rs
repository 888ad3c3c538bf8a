//! The store traits over [`RedisState`]: what lets several nodes share membership,
//! idempotency keys, pending notifications and presence.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use plume_redis::{RedisState, StateError};

use super::{
    IdempotencyStore, MembershipStore, Notification, PendingStore, PresenceStore, SendKey,
    SentMessage, StoreError, Stores, Whereabouts,
};

/// The presence target of a user's notifications topic.
const NOTIFICATIONS_TARGET: &str = "notifications";

fn chat_target(chat: &str) -> String {
    format!("chat:{chat}")
}

fn err(e: StateError) -> StoreError {
    StoreError(e.to_string())
}

/// All four stores in Redis.
pub fn stores(state: RedisState) -> Stores {
    let shared = Arc::new(RedisStores(state));
    Stores {
        membership: shared.clone(),
        idempotency: shared.clone(),
        pending: shared.clone(),
        presence: shared,
    }
}

struct RedisStores(RedisState);

#[async_trait]
impl MembershipStore for RedisStores {
    async fn add(&self, chat: &str, user: &str) -> Result<(), StoreError> {
        self.0.add_member(chat, user).await.map_err(err)
    }

    async fn remove(&self, chat: &str, user: &str) -> Result<bool, StoreError> {
        self.0.remove_member(chat, user).await.map_err(err)
    }

    async fn is_member(&self, chat: &str, user: &str) -> Result<bool, StoreError> {
        self.0.is_member(chat, user).await.map_err(err)
    }

    async fn members(&self, chat: &str) -> Result<Arc<[String]>, StoreError> {
        self.0.members(chat).await.map(Arc::from).map_err(err)
    }
}

#[async_trait]
impl IdempotencyStore for RedisStores {
    async fn claim(
        &self,
        key: &SendKey,
        sent: &SentMessage,
        ttl: Duration,
    ) -> Result<Option<SentMessage>, StoreError> {
        let value = serde_json::to_string(sent).map_err(|e| StoreError(e.to_string()))?;
        let previous = self
            .0
            .claim_send(&key.user, &key.chat, &key.mobile_ref_id, &value, ttl)
            .await
            .map_err(err)?;
        match previous {
            None => Ok(None),
            Some(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| StoreError(format!("stored send is unreadable: {e}"))),
        }
    }

    async fn release(&self, key: &SendKey) -> Result<(), StoreError> {
        self.0
            .release_send(&key.user, &key.chat, &key.mobile_ref_id)
            .await
            .map_err(err)
    }
}

#[async_trait]
impl PendingStore for RedisStores {
    async fn push(
        &self,
        user: &str,
        notification: &Notification,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let item = serde_json::to_string(notification).map_err(|e| StoreError(e.to_string()))?;
        self.0.push_pending(user, &item, limit).await.map_err(err)
    }

    async fn push_many(
        &self,
        users: &[String],
        notification: &Notification,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let item = serde_json::to_string(notification).map_err(|e| StoreError(e.to_string()))?;
        self.0
            .push_pending_many(users, &item, limit)
            .await
            .map_err(err)
    }

    async fn take_all(&self, user: &str) -> Result<Vec<Notification>, StoreError> {
        let items = self.0.take_pending(user).await.map_err(err)?;
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            match serde_json::from_str(&item) {
                Ok(n) => out.push(n),
                Err(e) => tracing::error!(user, %e, "dropping an unreadable pending notification"),
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl PresenceStore for RedisStores {
    async fn enter_chat(&self, user: &str, chat: &str) -> Result<(), StoreError> {
        self.0.enter(user, &chat_target(chat)).await.map_err(err)
    }

    async fn leave_chat(&self, user: &str, chat: &str) -> Result<(), StoreError> {
        self.0.leave(user, &chat_target(chat)).await.map_err(err)
    }

    async fn in_chat(&self, user: &str, chat: &str) -> Result<bool, StoreError> {
        self.0.present(user, &chat_target(chat)).await.map_err(err)
    }

    async fn enter_notifications(&self, user: &str) -> Result<(), StoreError> {
        self.0.enter(user, NOTIFICATIONS_TARGET).await.map_err(err)
    }

    async fn leave_notifications(&self, user: &str) -> Result<(), StoreError> {
        self.0.leave(user, NOTIFICATIONS_TARGET).await.map_err(err)
    }

    async fn has_notifications(&self, user: &str) -> Result<bool, StoreError> {
        self.0
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
        let rows = self.0.present_many(users, &targets).await.map_err(err)?;
        Ok(rows
            .into_iter()
            .map(|row| Whereabouts {
                notifications: row.first().copied().unwrap_or(false),
                in_chat: row.get(1).copied().unwrap_or(false),
            })
            .collect())
    }
}
