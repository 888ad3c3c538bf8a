//! The chat service Plume exists for: `chat:{id}` rooms with acknowledged, idempotent sends,
//! `notifications:{user_id}` with pending notifications for offline users, JWT authentication
//! on connect, membership rules on join, and an HTTP API for backends.
//!
//! The client side is fixed (phoenix.js unchanged); `protocol-spec/chat.md` is the contract.
//!
//! # Layout
//!
//! - [`auth`]: JWT verification (algorithm pinned by configuration) and the connect hook.
//! - [`chat`]: the `chat:*` channel (join rules, `send_message`).
//! - [`notifications`]: the `notifications:*` / `notification:*` channel (pending delivery).
//! - [`presence`]: Phoenix Presence on chats and online status, one node or cluster-wide.
//! - [`state`]: what the channels share, and notification delivery.
//! - [`rooms`]: a user's rooms list (last message, unread, members and online counts), its
//!   cursor, and `room_updated`.
//! - [`repair`]: reading missed chat messages back from the log into this node's registry.
//! - [`store`]: the store traits (message log, membership, pending, presence) and their
//!   embedded (SQLite), in-memory and Redis implementations.
//! - [`api`]: the backend HTTP API.
//! - [`failure`]: what a client gets when a store or the fan-out fails (the one table).
//! - [`config`], [`events`], [`time`]: settings, wire names, timestamps.
//! - [`ChatService`] (this file): wires it all into a router, a connect hook and an API.

pub mod api;
pub mod auth;
pub mod chat;
pub mod config;
pub mod events;
pub mod failure;
pub mod notifications;
pub mod presence;
pub mod repair;
pub mod rooms;
pub mod state;
pub mod store;
pub mod time;

use std::sync::Arc;

use plume_channels::{PubSub, Router};

pub use auth::{ChatConnect, JwtVerifier, PublicKeyAlgorithm, UserSession};
pub use config::{ChatConfig, Membership};
pub use state::ChatState;
pub use store::Stores;

/// The chat service, ready to mount on a server.
pub struct ChatService {
    /// The shared state.
    pub state: Arc<ChatState>,
}

impl ChatService {
    /// A service over `stores`, broadcasting through `pubsub`. Installs the log repair on
    /// the pub/sub's registry, so chat messages reach this node's sockets in seq order.
    pub fn new(config: ChatConfig, stores: Stores, pubsub: Arc<dyn PubSub>) -> ChatService {
        let repair = repair::LogRepair::new(stores.log.clone(), &pubsub);
        pubsub.registry().set_repair(Arc::new(repair));
        let presence = presence::Tracker::new(&config, stores.clone(), pubsub.clone());
        ChatService {
            state: Arc::new(ChatState {
                config,
                stores,
                pubsub,
                presence,
            }),
        }
    }

    /// The presence tracker, for the connect hook ([`ChatConnect::online`]): each socket it
    /// accepts counts towards its user's online status.
    pub fn presence(&self) -> Arc<presence::Tracker> {
        self.state.presence.clone()
    }

    /// Adds the chat routes (`chat:*`, `notifications:*`, `notification:*`) to `router`.
    pub fn routes(&self, router: Router) -> Router {
        router
            .channel::<chat::ChatChannel>(events::CHAT_PREFIX_PATTERN, self.state.clone())
            .channel::<notifications::NotificationsChannel>(
                events::NOTIFICATIONS_PATTERN,
                self.state.clone(),
            )
            .channel::<notifications::NotificationsChannel>(
                events::NOTIFICATION_ALIAS_PATTERN,
                self.state.clone(),
            )
    }

    /// The backend HTTP API; off unless `api_key` is set.
    pub fn api(&self, api_key: Option<String>) -> api::ChatApi {
        api::ChatApi::new(self.state.clone(), api_key)
    }
}
