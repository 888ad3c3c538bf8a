//! [`RosterStore`]: the cluster-wide part of Phoenix Presence and online status (see
//! [`crate::presence`]), and [`RedisRoster`], its Redis implementation over plume-redis.
//!
//! A single node needs none: its presence tracker holds every meta itself. With Redis, each
//! node writes the metas of its own sockets here (one record per socket, owned by the node
//! and counted only while the node heartbeats), reads the whole roster of a chat for a
//! joiner's `presence_state`, and sweeps the records of nodes that died.

use async_trait::async_trait;
use plume_redis::{RedisState, StateError};
use serde::{Deserialize, Serialize};

use super::StoreError;

/// One socket's presence in one chat: the meta of `presence_state` and `presence_diff`,
/// with the user it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceMeta {
    /// The user (the presence key).
    #[serde(rename = "u")]
    pub user: String,
    /// Unique per meta, stable for its life.
    #[serde(rename = "r")]
    pub phx_ref: String,
    /// The socket's `device_unique_id` connect param (or one made up for it).
    #[serde(rename = "d")]
    pub device_unique_id: String,
    /// When the socket joined, ms since the Unix epoch.
    #[serde(rename = "t")]
    pub online_at: i64,
}

/// What a sweep removed: metas of dead nodes, per chat, and users who went offline with
/// them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Departures {
    /// `(chat, meta)` of every meta a dead node held.
    pub metas: Vec<(String, PresenceMeta)>,
    /// Users whose sockets were all on dead nodes.
    pub offline: Vec<String>,
}

/// Presence metas and online status shared by the nodes of a cluster. Records belong to the
/// node that wrote them and count only while it is alive.
#[async_trait]
pub trait RosterStore: Send + Sync + 'static {
    /// Adds this node's `meta` to `chat` (idempotent).
    async fn track(&self, chat: &str, meta: &PresenceMeta) -> Result<(), StoreError>;
    /// Removes this node's meta `phx_ref` from `chat`; `last` when this node has no other
    /// meta in the chat.
    async fn untrack(&self, chat: &str, phx_ref: &str, last: bool) -> Result<(), StoreError>;
    /// Every meta of `chat` held by a live node.
    async fn list(&self, chat: &str) -> Result<Vec<PresenceMeta>, StoreError>;
    /// The user's first socket on this node: true when they have none on any other live
    /// node (they came online).
    async fn online_up(&self, user: &str) -> Result<bool, StoreError>;
    /// The user's last socket on this node is gone: true when they have none on any other
    /// live node (they went offline).
    async fn online_down(&self, user: &str) -> Result<bool, StoreError>;
    /// Removes the records of dead nodes (and, when `own`, this node's records left by an
    /// earlier process with the same id) and returns them to this caller only.
    async fn sweep(&self, own: bool) -> Result<Departures, StoreError>;
    /// Whether the shared store still knows this node's records (false after it lost its
    /// data, or swept this node while it was cut off).
    async fn registered(&self) -> Result<bool, StoreError>;
    /// Writes this node's records again: `metas` per chat and the users online here.
    async fn restore(
        &self,
        metas: &[(String, PresenceMeta)],
        online: &[String],
    ) -> Result<(), StoreError>;
    /// How long a node counts as alive after its last heartbeat (the sweep runs a few
    /// times per period).
    fn node_ttl(&self) -> std::time::Duration;
}

/// [`RosterStore`] in Redis (see `plume_redis::roster` for the keys).
pub struct RedisRoster {
    state: RedisState,
}

impl RedisRoster {
    /// The roster of the cluster `state` belongs to.
    pub fn new(state: RedisState) -> RedisRoster {
        RedisRoster { state }
    }
}

fn err(e: StateError) -> StoreError {
    StoreError::Redis(e)
}

fn encode(meta: &PresenceMeta) -> Result<String, StoreError> {
    serde_json::to_string(meta).map_err(StoreError::encode("presence meta"))
}

fn decode(chat: &str, raw: &str) -> Option<PresenceMeta> {
    match serde_json::from_str(raw) {
        Ok(meta) => Some(meta),
        Err(e) => {
            tracing::error!(chat, %e, "skipping an unreadable presence record");
            None
        }
    }
}

fn departures(swept: plume_redis::roster::Swept) -> Departures {
    Departures {
        metas: swept
            .entries
            .into_iter()
            .filter_map(|(topic, raw)| {
                let meta = decode(&topic, &raw)?;
                Some((topic, meta))
            })
            .collect(),
        offline: swept.offline,
    }
}

#[async_trait]
impl RosterStore for RedisRoster {
    async fn track(&self, chat: &str, meta: &PresenceMeta) -> Result<(), StoreError> {
        self.state
            .roster_track(chat, &meta.phx_ref, &encode(meta)?)
            .await
            .map_err(err)
    }

    async fn untrack(&self, chat: &str, phx_ref: &str, last: bool) -> Result<(), StoreError> {
        self.state
            .roster_untrack(chat, phx_ref, last)
            .await
            .map_err(err)
    }

    async fn list(&self, chat: &str) -> Result<Vec<PresenceMeta>, StoreError> {
        let raw = self.state.roster_list(chat).await.map_err(err)?;
        Ok(raw.iter().filter_map(|r| decode(chat, r)).collect())
    }

    async fn online_up(&self, user: &str) -> Result<bool, StoreError> {
        self.state.online_up(user).await.map_err(err)
    }

    async fn online_down(&self, user: &str) -> Result<bool, StoreError> {
        self.state.online_down(user).await.map_err(err)
    }

    async fn sweep(&self, own: bool) -> Result<Departures, StoreError> {
        let swept = if own {
            self.state.roster_sweep_own().await
        } else {
            self.state.roster_sweep().await
        };
        swept.map(departures).map_err(err)
    }

    async fn registered(&self) -> Result<bool, StoreError> {
        self.state.roster_registered().await.map_err(err)
    }

    async fn restore(
        &self,
        metas: &[(String, PresenceMeta)],
        online: &[String],
    ) -> Result<(), StoreError> {
        let entries = metas
            .iter()
            .map(|(chat, meta)| Ok((chat.clone(), meta.phx_ref.clone(), encode(meta)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.state
            .roster_restore(&entries, online)
            .await
            .map_err(err)
    }

    fn node_ttl(&self) -> std::time::Duration {
        self.state.node_ttl()
    }
}
