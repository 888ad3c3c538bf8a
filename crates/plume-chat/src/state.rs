//! [`ChatState`]: what every chat and notifications channel shares (config, stores, pub/sub),
//! and the one place a notification is delivered or stored.

use std::sync::Arc;

use plume_channels::{Broadcast, PubSub};
use plume_wire::Payload;

use crate::config::ChatConfig;
use crate::events::{NEW_NOTIFICATION, NOTIFICATION_ALIAS_PREFIX, NOTIFICATIONS_PREFIX};
use crate::store::{
    LoggedMessage, Notification, PendingItem, PendingLimits, RouteMemo, SendKey, StoreError, Stores,
};

/// What a notification is about: a message in a chat log (stored as a reference to it) or a
/// notification the backend sent through the API (stored whole). Built into a
/// [`Notification`] or a [`PendingItem`] only when someone is to be notified.
#[derive(Clone, Copy)]
pub enum Subject<'a> {
    /// A logged chat message.
    Logged(&'a LoggedMessage),
    /// A notification from the API.
    Inline(&'a Notification),
}

impl Subject<'_> {
    /// As pushed to `notifications:{user}`.
    pub fn notification(self) -> Notification {
        match self {
            Subject::Logged(m) => Notification {
                chat_id: m.chat_id.clone(),
                sender_id: m.sender_id.clone(),
                content: m.content.clone(),
                timestamp: crate::time::format_millis(m.ts_ms),
                message_id: m.message_id.clone(),
                seq: Some(m.seq),
            },
            Subject::Inline(n) => n.clone(),
        }
    }

    /// As stored pending.
    pub fn item(self) -> PendingItem {
        match self {
            Subject::Logged(m) => PendingItem::Message {
                chat_id: m.chat_id.clone(),
                seq: m.seq,
            },
            Subject::Inline(n) => PendingItem::Inline(n.clone()),
        }
    }
}

/// Shared state of the chat service.
pub struct ChatState {
    /// Settings.
    pub config: ChatConfig,
    /// The stores.
    pub stores: Stores,
    /// The pub/sub backend (for deliveries that do not start in a channel).
    pub pubsub: Arc<dyn PubSub>,
    /// Presence on chats and online status.
    pub presence: Arc<crate::presence::Tracker>,
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
        let users = [user.to_owned()];
        let done = self
            .notify_all(&users, None, None, Subject::Inline(notification))
            .await?;
        Ok(done.first().copied().flatten().unwrap_or(Delivery::Pending))
    }

    /// Notifies each of `users` except `sender` who has no socket in `chat` (all of them when
    /// `chat` is `None`). The subject is stored as pending for every one of them (for a chat
    /// message, a reference into the log), and those with a notifications topic joined also
    /// get `new_notification` at once; their channel removes the stored item once it wrote
    /// the frame. So a user whose socket or node dies before the write (or whose node is
    /// dead but still counts as present) finds it pending on the next join: never lost, at
    /// worst twice. A store is asked once for everybody's whereabouts and once to store
    /// every pending item, so a chat with many members costs two round trips, not two per
    /// member. Returns, per user, what happened (`None`: the sender, or in the chat).
    pub async fn notify_all(
        &self,
        users: &[String],
        sender: Option<&str>,
        chat: Option<&str>,
        subject: Subject<'_>,
    ) -> Result<Vec<Option<Delivery>>, StoreError> {
        let located = self.stores.presence.locate(users, chat).await?;
        let mut notified = Vec::new();
        let mut live = Vec::new();
        let mut outcome = Vec::with_capacity(users.len());
        for (user, at) in users.iter().zip(&located) {
            if at.in_chat || Some(user.as_str()) == sender {
                outcome.push(None);
                continue;
            }
            notified.push(user.clone());
            if at.notifications {
                live.push(user);
                outcome.push(Some(Delivery::Delivered));
            } else {
                outcome.push(Some(Delivery::Pending));
            }
        }
        if notified.is_empty() {
            return Ok(outcome);
        }
        // Stored before the live push, so the channel's removal after the write cannot come
        // first.
        let dropped = self
            .stores
            .pending
            .push_many(&notified, &subject.item(), self.pending_limits())
            .await?;
        self.push_live(live, dropped, subject)?;
        Ok(outcome)
    }

    /// The notification step of a chat message after its broadcast: pending for the
    /// members not in the chat, `new_notification` now for those of them listening, the
    /// send marked delivered ([`Stores::route`]: one round trip on a shared store).
    pub async fn route_message(
        &self,
        key: &SendKey,
        message: &LoggedMessage,
        memo: Option<&RouteMemo>,
    ) -> Result<(), StoreError> {
        let subject = Subject::Logged(message);
        let routed = self
            .stores
            .route(key, &subject.item(), self.pending_limits(), memo)
            .await?;
        self.push_live(&routed.live, routed.dropped, subject)
    }

    /// `new_notification` to each of `live` (their pending copies are stored already), and
    /// a log line when storing them dropped older items.
    fn push_live<U: AsRef<str>>(
        &self,
        live: impl IntoIterator<Item = U>,
        dropped: usize,
        subject: Subject<'_>,
    ) -> Result<(), StoreError> {
        if dropped > 0 {
            tracing::warn!(
                dropped,
                limit = self.config.pending_limit,
                bytes_limit = self.config.pending_bytes_limit,
                "pending notifications over the limit; oldest dropped"
            );
        }
        let mut live = live.into_iter().peekable();
        if live.peek().is_none() {
            return Ok(());
        }
        let payload = Payload::json(&subject.notification())
            .map_err(StoreError::encode("new_notification"))?;
        for user in live {
            self.broadcast_notification(user.as_ref(), &payload);
        }
        Ok(())
    }

    /// How much each user's pending notifications may hold.
    pub fn pending_limits(&self) -> PendingLimits {
        PendingLimits {
            count: self.config.pending_limit,
            bytes: self.config.pending_bytes_limit,
        }
    }

    /// The notifications that pending `items` stand for, in order: chat messages are read
    /// from the log (one that the log no longer keeps is skipped, with a log line).
    pub async fn resolve_pending(
        &self,
        items: &[(u64, PendingItem)],
    ) -> Result<Vec<Notification>, StoreError> {
        let refs: Vec<(String, u64)> = items
            .iter()
            .filter_map(|(_, item)| match item {
                PendingItem::Message { chat_id, seq } => Some((chat_id.clone(), *seq)),
                PendingItem::Inline(_) => None,
            })
            .collect();
        let mut found = self.stores.log.get(&refs).await?.into_iter();
        let mut out = Vec::with_capacity(items.len());
        for (_, item) in items {
            match item {
                PendingItem::Inline(n) => out.push(n.clone()),
                PendingItem::Message { chat_id, seq } => match found.next().flatten() {
                    Some(m) => out.push(Notification {
                        chat_id: m.chat_id,
                        sender_id: m.sender_id,
                        content: m.content,
                        timestamp: crate::time::format_millis(m.ts_ms),
                        message_id: m.message_id,
                        seq: Some(m.seq),
                    }),
                    None => tracing::info!(chat = %chat_id, seq,
                        "pending notification refers to a trimmed message; skipped"),
                },
            }
        }
        Ok(out)
    }

    /// `new_notification` on both spellings of the user's topic, since a client may have
    /// joined either. A broadcast that reached this node's sockets but not other nodes' is
    /// not a failure of the delivery (the backend counted it): the item is stored as
    /// pending, so a socket elsewhere gets it on its next join.
    fn broadcast_notification(&self, user: &str, payload: &Payload) {
        for prefix in [NOTIFICATIONS_PREFIX, NOTIFICATION_ALIAS_PREFIX] {
            let topic = format!("{prefix}{user}");
            let sent = self.pubsub.broadcast(Broadcast {
                topic: topic.as_str().into(),
                event: NEW_NOTIFICATION.into(),
                payload: payload.clone(),
                from: None,
                seq: None,
            });
            if let Err(err) = sent {
                tracing::warn!(%topic, %err,
                    "new_notification not forwarded to other nodes; it stays pending");
            }
        }
    }
}
