//! Topic pub/sub: who is subscribed to which topic, and how a broadcast reaches them.
//!
//! [`PubSub`] is the seam between the runtime and a backend. [`LocalPubSub`] is the in-process
//! registry used by a single node; a clustered backend (plume-redis) wraps it, publishing each
//! broadcast once to its peers and dispatching what peers publish through the same local
//! registry.
//!
//! Guarantees every implementation gives:
//! - a broadcast is encoded at most once per [`Serializer`] and the encoded [`Frame`](plume_wire::Frame) is shared
//!   by every subscriber using that serializer;
//! - broadcasts published on one topic from one caller reach each subscriber in publish order;
//! - `from` (broadcast_from) excludes exactly that socket's subscription;
//! - publishing never blocks on a subscriber: a subscriber whose queue is full is closed as a
//!   slow consumer (see [`crate::outbound`]);
//! - a *sequenced* broadcast (one with a [`Seq`], such as a chat message from a durable log)
//!   reaches this node's subscribers in seq order, each seq once: the registry holds one that
//!   arrives early, drops one it already dispatched, and asks the application's
//!   [`SeqRepair`] to fetch what is missing when a gap does not close by itself.

mod local;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use plume_wire::{Payload, Serializer};

pub use local::{LocalPubSub, SeqRepair};

use crate::outbound::{OutboundTx, SocketId};

/// A message for every subscriber of a topic.
#[derive(Clone, Debug)]
pub struct Broadcast {
    /// The topic.
    pub topic: Arc<str>,
    /// The event name.
    pub event: Arc<str>,
    /// The payload (JSON, or binary for V2 binary frames).
    pub payload: Payload,
    /// For broadcast_from: the socket that must not receive it.
    pub from: Option<SocketId>,
    /// The position of the message in its topic's log, for sequenced topics.
    pub seq: Option<Seq>,
}

/// Where a sequenced broadcast sits in its topic's log: `seq` counts 1, 2, 3, … within an
/// `epoch`, and the epoch changes when the log is lost or reset (seq then starts again).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Seq {
    /// The log's epoch.
    pub epoch: u64,
    /// The message's sequence number (from 1).
    pub seq: u64,
}

/// How a subscription wants its messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscriberKind {
    /// A joined channel: broadcasts arrive as frames encoded with the socket's serializer.
    Fastlane,
    /// The socket's id topic: only a `disconnect` event matters, and it closes the socket.
    Control,
    /// A joined channel that handles its topic's broadcasts itself (Phoenix's `intercept`):
    /// each arrives in the channel's `handle_info` as a [`Broadcast`], which the channel
    /// pushes (or not) and can follow up once it is written.
    Intercept {
        /// The channel instance (see [`crate::Context::channel_id`]).
        channel: u64,
    },
}

/// One socket's subscription to one topic.
#[derive(Clone)]
pub struct Subscriber {
    /// The subscribing socket.
    pub socket: SocketId,
    /// How frames for this socket are encoded.
    pub serializer: Serializer,
    /// What the subscription is for.
    pub kind: SubscriberKind,
    /// The socket's outbound queue.
    pub tx: OutboundTx,
    /// For a joined channel: the highest seq of the topic this socket was given (see
    /// [`crate::outbound::Out::Seq`]). `None` for control subscriptions.
    pub floor: Option<Arc<AtomicU64>>,
}

/// Completes when a subscription is effective cluster-wide (see [`PubSub::subscribe`]).
pub type Subscribed = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A subscription that is effective immediately.
pub fn subscribed_now() -> Subscribed {
    Box::pin(std::future::ready(()))
}

/// A broadcast that reached this node's subscribers but not the other nodes'.
///
/// Local delivery cannot fail ([`PubSub::broadcast`] dispatches to this node's subscribers
/// before anything else), so this error only ever means "delivered locally, remote fan-out
/// failed": the backend counts it in `plume_broadcasts_dropped_total` (with
/// [`PubSubError::drop_reason`]), the caller logs it, and nobody reports it to the client
/// as a failed send. Other nodes repair what they missed from the application's log where
/// there is one (chat messages); other broadcasts (typing, read receipts, presence diffs)
/// are lost for them. See `protocol-spec/errors.md`, "Server-side failures".
#[derive(Debug, thiserror::Error)]
pub enum PubSubError {
    /// The queue of publishes to other nodes was full: the link to them is slower than
    /// this node's broadcasts.
    #[error("not forwarded to other nodes: the publish queue ({capacity} broadcasts) is full")]
    QueueFull {
        /// How many broadcasts the queue holds.
        capacity: usize,
    },
    /// The task that publishes to other nodes has stopped (the node is shutting down).
    #[error("not forwarded to other nodes: the publisher has stopped")]
    PublisherStopped,
    /// The broadcast could not be encoded for other nodes (an event or node id too long for
    /// the envelope).
    #[error("not forwarded to other nodes: cannot encode it: {source}")]
    Encode {
        /// The encoder's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl PubSubError {
    /// The `reason` label of `plume_broadcasts_dropped_total` this failure is counted under
    /// (one of [`crate::metrics::DROP_REASONS`]).
    pub fn drop_reason(&self) -> &'static str {
        match self {
            PubSubError::QueueFull { .. } => "publish_queue_full",
            PubSubError::PublisherStopped => "publisher_stopped",
            PubSubError::Encode { .. } => "encode_failed",
        }
    }
}

/// Topic subscriptions and broadcasts. See the module docs for the guarantees.
pub trait PubSub: Send + Sync + 'static {
    /// Adds (or replaces) the subscription of `sub.socket` to `topic`. Local delivery starts
    /// at once; the returned future completes when broadcasts from other nodes will arrive
    /// too (a clustered backend confirms its upstream subscription, or gives up after a short
    /// timeout and keeps retrying in the background). The socket awaits it before answering
    /// a join, so a message published right after the join reply is not missed.
    fn subscribe(&self, topic: &str, sub: Subscriber) -> Subscribed;

    /// Removes the subscription of `socket` to `topic`, if any.
    fn unsubscribe(&self, topic: &str, socket: SocketId);

    /// Delivers a broadcast to every subscriber (except `from`). Never waits for subscribers.
    /// This node's subscribers always get it; an error says only that other nodes' did not
    /// (see [`PubSubError`]).
    fn broadcast(&self, msg: Broadcast) -> Result<(), PubSubError>;

    /// This node's registry: where a clustered backend dispatches what it receives, and where
    /// an application repairs sequenced topics (replays from its log go to this node's
    /// subscribers only).
    fn registry(&self) -> &LocalPubSub;

    /// Changes every time the link to other nodes is established again after it was lost
    /// (broadcasts from other nodes may have been missed in between). An application that
    /// keeps state from other nodes' broadcasts (presence) refreshes it when this changes.
    /// Always 0 for a backend without such a link.
    fn link_epoch(&self) -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::PubSubError;
    use crate::metrics::DROP_REASONS;

    #[test]
    fn each_variant_is_counted_under_its_documented_drop_reason() {
        let source: Box<dyn std::error::Error + Send + Sync> = "event too long".into();
        let cases = [
            (
                PubSubError::QueueFull { capacity: 65536 },
                "publish_queue_full",
            ),
            (PubSubError::PublisherStopped, "publisher_stopped"),
            (PubSubError::Encode { source }, "encode_failed"),
        ];
        for (err, reason) in cases {
            assert_eq!(err.drop_reason(), reason, "{err}");
            assert!(DROP_REASONS.contains(&reason), "{reason} is pre-registered");
            // Every message says the broadcast was delivered here but not forwarded.
            assert!(
                err.to_string().starts_with("not forwarded to other nodes"),
                "{err}"
            );
        }
    }
}
