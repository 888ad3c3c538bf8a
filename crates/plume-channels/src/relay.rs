//! [`NodeRelay`]: point-to-point messages between the nodes of a cluster.
//!
//! Broadcasts go to every node through [`crate::PubSub`]; some requests must reach exactly one
//! node instead. A LongPoll session lives on the node that created it, while a load balancer
//! without sticky sessions sends its polls to any node: the node that gets a request for a
//! session it does not hold relays the request to the holder and relays the answer back.
//!
//! Guarantees an implementation gives:
//! - [`NodeRelay::send_to`] reports whether a live node with that id took the message, so a
//!   caller learns at once that a node is gone instead of waiting for a timeout;
//! - messages from one sender to one node arrive in send order;
//! - delivery is at most once: a message sent while the link is down is lost, which the
//!   caller's timeout covers.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use tokio::sync::mpsc;

/// Why a message could not be sent: the backend's error (for Redis, the failed `PUBLISH`).
#[derive(Debug, thiserror::Error)]
#[error("node relay: {source}")]
pub struct RelayError {
    /// The backend's error.
    #[source]
    pub source: crate::channel::BoxError,
}

impl RelayError {
    /// A relay failure caused by `source`.
    pub fn new(source: impl Into<crate::channel::BoxError>) -> RelayError {
        RelayError {
            source: source.into(),
        }
    }
}

/// What [`NodeRelay::send_to`] returns: `Ok(true)` when a live node with that id took the
/// message, `Ok(false)` when no node by that id is listening.
pub type RelayFuture = Pin<Box<dyn Future<Output = Result<bool, RelayError>> + Send>>;

/// Messages to one named node of the cluster. See the module docs.
pub trait NodeRelay: Send + Sync + 'static {
    /// This node's id, as the other nodes address it.
    fn node_id(&self) -> &str;

    /// Sends `msg` to the node `node`.
    fn send_to(&self, node: &str, msg: Bytes) -> RelayFuture;

    /// Where the messages other nodes send to this one go from now on. A message that finds
    /// the inbox full is dropped (its sender times out).
    fn set_inbox(&self, inbox: mpsc::Sender<Bytes>);
}
