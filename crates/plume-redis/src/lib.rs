//! Plume's Redis adapter: what lets several `plume serve` nodes behind a load balancer act as
//! one server.
//!
//! - [`RedisPubSub`]: cross-node fan-out, one `PUBLISH` per broadcast, per-topic
//!   subscriptions, reconnect and resubscribe.
//! - [`RedisState`]: the shared state (membership, idempotency keys, pending notifications,
//!   cluster-wide presence with per-node expiry).
//! - [`roster`]: cluster-wide rosters (Phoenix Presence) and online status on [`RedisState`],
//!   with the sweep of dead nodes' records.
//! - [`envelope`]: the versioned message format between nodes.
//! - [`Cluster`] (this file): connects both and runs the node heartbeat.
//! - `test_server` (feature `test-server`): a private `redis-server` for tests.
//!
//! Depends only on plume-channels and plume-wire; the chat service adapts [`RedisState`] to
//! its store traits.

pub mod envelope;
pub mod pubsub;
pub mod roster;
pub mod state;
#[cfg(feature = "test-server")]
pub mod test_server;

use std::sync::Arc;
use std::time::Duration;

use plume_channels::LocalPubSub;
use redis::aio::ConnectionManagerConfig;
use serde::{Deserialize, Serialize};

pub use pubsub::{HealthError, RedisPubSub};
pub use state::{RedisState, StateError};

/// Redis settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RedisConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// This node's id; must be unique in the cluster. Random when empty.
    pub node_id: String,
    /// How long a node counts as alive after its last heartbeat. Default 15 s.
    #[serde(with = "plume_channels::duration_secs")]
    pub node_ttl: Duration,
    /// Broadcasts waiting to be published before new ones are refused. Default 65536.
    pub publish_queue: usize,
    /// Timeout of one Redis command. Default 2 s.
    #[serde(with = "plume_channels::duration_secs")]
    pub command_timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: String::new(),
            node_id: String::new(),
            node_ttl: Duration::from_secs(15),
            publish_queue: 65536,
            command_timeout: Duration::from_secs(2),
        }
    }
}

/// `url` with its credentials replaced by `<redacted>`, for logs, errors and `--print-config`:
/// the `user:password@` of `redis://user:password@host/0`, and the `pass=` value of a
/// `redis+unix:///path?pass=…` URL. A URL without credentials comes back unchanged.
pub fn redact_url(url: &str) -> String {
    let mut out = match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}<redacted>{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    };
    if let Some(query) = out.find('?') {
        let redacted: Vec<String> = out[query + 1..]
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some(("pass", _)) => "pass=<redacted>".to_owned(),
                _ => pair.to_owned(),
            })
            .collect();
        out = format!("{}?{}", &out[..query], redacted.join("&"));
    }
    out
}

/// A random node id: `node-` and 12 hex digits.
pub fn random_node_id() -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("node-{}", &id[id.len() - 12..])
}

/// Checks a node id: 1 to 64 characters of `[A-Za-z0-9._-]` (it is embedded in Redis keys
/// and fields, where `|` separates it from the rest).
pub fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A node's connection to the cluster.
pub struct Cluster {
    /// Fan-out.
    pub pubsub: Arc<RedisPubSub>,
    /// Shared state.
    pub state: RedisState,
    heartbeat: tokio::task::JoinHandle<()>,
}

/// The cluster could not be joined at start-up (`plume serve` then exits with it).
///
/// Only ever shown by the binary, which prints the chain of causes (anyhow), so each message
/// says what failed and leaves the cause to `source()` instead of repeating it.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The configured node id cannot be used.
    #[error("node id {0:?} must be 1-64 characters of A-Z a-z 0-9 . _ -")]
    InvalidNodeId(String),
    /// The URL is not a Redis URL.
    #[error("bad redis url {url:?}")]
    Url {
        /// The URL, credentials redacted.
        url: String,
        /// The client's error.
        #[source]
        source: redis::RedisError,
    },
    /// No connection within twice the command timeout.
    #[error("connecting to {url} timed out after {after:?}")]
    ConnectTimeout {
        /// The URL, credentials redacted.
        url: String,
        /// How long it waited.
        after: Duration,
    },
    /// The connection was refused or failed.
    #[error("connecting to {url}")]
    Connect {
        /// The URL, credentials redacted.
        url: String,
        /// The client's error.
        #[source]
        source: redis::RedisError,
    },
    /// A first command on the new connection failed.
    #[error("{what}")]
    Setup {
        /// What it was doing.
        what: &'static str,
        /// The command's error.
        #[source]
        source: StateError,
    },
    /// The pub/sub connection did not come up in time.
    #[error("the pub/sub connection did not come up within {0:?}")]
    PubSubTimeout(Duration),
}

impl Cluster {
    /// Connects to Redis (failing if it is unreachable now: a node should not start blind),
    /// clears records a previous process with the same node id left behind, and starts the
    /// fan-out tasks and the heartbeat. Later outages are survived: see [`pubsub`].
    pub async fn connect(
        config: &RedisConfig,
        local: Arc<LocalPubSub>,
    ) -> Result<Cluster, ClusterError> {
        let node = if config.node_id.is_empty() {
            random_node_id()
        } else {
            config.node_id.clone()
        };
        if !valid_node_id(&node) {
            return Err(ClusterError::InvalidNodeId(node));
        }
        let url = redact_url(&config.url);
        let client =
            redis::Client::open(config.url.as_str()).map_err(|source| ClusterError::Url {
                url: url.clone(),
                source,
            })?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.command_timeout))
            .set_response_timeout(Some(config.command_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let wait = config.command_timeout * 2;
        let conn = tokio::time::timeout(
            wait,
            client.get_connection_manager_with_config(manager_config),
        )
        .await
        .map_err(|_| ClusterError::ConnectTimeout {
            url: url.clone(),
            after: wait,
        })?
        .map_err(|source| ClusterError::Connect {
            url: url.clone(),
            source,
        })?;
        let state = RedisState::new(conn.clone(), node.clone(), config.node_ttl);
        let setup = |what| move |source| ClusterError::Setup { what, source };
        state.clear_node(&node).await.map_err(setup(
            "clearing what an earlier process with this node id left",
        ))?;
        state
            .heartbeat()
            .await
            .map_err(setup("the first node heartbeat"))?;
        let pubsub = Arc::new(RedisPubSub::start(
            client,
            conn,
            local,
            node.clone().into(),
            config.publish_queue,
        ));
        // Ready means subscribed: wait (briefly) for the pub/sub connection.
        let deadline = tokio::time::Instant::now() + wait;
        while !pubsub
            .stats()
            .connected
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            if tokio::time::Instant::now() > deadline {
                return Err(ClusterError::PubSubTimeout(wait));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let heartbeat = tokio::spawn(heartbeat_loop(
            state.clone(),
            pubsub.clone(),
            config.node_ttl / 3,
            config.command_timeout,
        ));
        tracing::info!(node, %url, "joined the redis cluster");
        Ok(Cluster {
            pubsub,
            state,
            heartbeat,
        })
    }

    /// Leaves the cluster cleanly (on graceful shutdown): stops the heartbeat and removes
    /// this node's presence records, so its users stop counting as connected at once.
    pub async fn depart(self) {
        self.heartbeat.abort();
        if let Err(err) = self.state.depart().await {
            tracing::warn!(%err, "could not clear this node's presence on shutdown");
        }
    }
}

impl Drop for Cluster {
    /// Dropping the handle without [`Cluster::depart`] stops the heartbeat, as a crash would:
    /// the node's records expire after the TTL.
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

/// The node heartbeat, and with it a pub/sub round trip (its latency is the
/// `plume_redis_pubsub_round_trip_seconds` histogram, measured even when nobody polls
/// `/readyz`).
async fn heartbeat_loop(
    state: RedisState,
    pubsub: Arc<RedisPubSub>,
    every: Duration,
    limit: Duration,
) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        match state.heartbeat().await {
            Ok(()) if failing => {
                tracing::info!("redis heartbeat recovered");
                failing = false;
            }
            Ok(()) => {}
            Err(err) if !failing => {
                tracing::warn!(%err, "redis heartbeat failed");
                failing = true;
            }
            Err(_) => {}
        }
        if let Err(err) = pubsub.health(limit).await {
            tracing::debug!(%err, "redis pub/sub round trip failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn redact_url_hides_credentials_and_keeps_the_rest() {
        assert_eq!(
            redact_url("redis://:hunter2@redis:6379/0"),
            "redis://<redacted>@redis:6379/0"
        );
        assert_eq!(
            redact_url("rediss://app:hunter2@cache.example.com/1"),
            "rediss://<redacted>@cache.example.com/1"
        );
        assert_eq!(
            redact_url("redis+unix:///run/redis.sock?db=1&pass=hunter2"),
            "redis+unix:///run/redis.sock?db=1&pass=<redacted>"
        );
        assert_eq!(redact_url("redis://redis:6379/0"), "redis://redis:6379/0");
        assert_eq!(redact_url(""), "");
    }
}
