//! [`ChatState`]: what every chat and notifications channel shares (config, stores, pub/sub),
//! and the one place a notification is delivered or stored.

use std::sync::Arc;

use plume_channels::{Broadcast, PubSub};
use plume_wire::Payload;

use crate::config::ChatConfig;
use crate::events::{NEW_NOTIFICATION, NOTIFICATION_ALIAS_PREFIX, NOTIFICATIONS_PREFIX};
use crate::store::{Notification, StoreError, Stores};

/// Shared state of the chat service.
pub struct ChatState {
    /// Settings.
    pub config: ChatConfig,
    /// The stores.
    pub stores: Stores,
    /// The pub/sub backend (for deliveries that do not start in a channel).
    pub pubsub: Arc<dyn PubSub>,
}

/// Where a notification went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Pushed as `new_notification` to the user's joined notifications topic.
    Delivered,
    /// Stored as pending until the user joins notifications.
    Pending,
}

impl Delivery {
    /// `delivered` or `pending`.
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Delivered => "delivered",
            Delivery::Pending => "pending",
        }
    }
}

impl ChatState {
    /// Delivers `notification` to `user`: a `new_notification` broadcast when they have a
    /// notifications topic joined anywhere, otherwise stored as pending (bounded per user).
    pub async fn notify(
        &self,
        user: &str,
        notification: &Notification,
    ) -> Result<Delivery, StoreError> {
        if self.stores.presence.has_notifications(user).await? {
            let payload = Payload::json(notification).map_err(|e| StoreError(e.to_string()))?;
            // Both spellings of the topic, since a client may have joined either.
            for prefix in [NOTIFICATIONS_PREFIX, NOTIFICATION_ALIAS_PREFIX] {
                self.pubsub
                    .broadcast(Broadcast {
                        topic: format!("{prefix}{user}").into(),
                        event: NEW_NOTIFICATION.into(),
                        payload: payload.clone(),
                        from: None,
                    })
                    .map_err(|e| StoreError(e.to_string()))?;
            }
            return Ok(Delivery::Delivered);
        }
        let dropped = self
            .stores
            .pending
            .push(user, notification, self.config.pending_limit)
            .await?;
        if dropped > 0 {
            tracing::warn!(
                user,
                dropped,
                limit = self.config.pending_limit,
                "pending notifications over the limit; oldest dropped"
            );
        }
        Ok(Delivery::Pending)
    }
}
