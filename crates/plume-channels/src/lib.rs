//! Plume's protocol runtime: sockets, channels, routing and pub/sub, without any IO.
//!
//! A connection driver (plume-server) owns one [`Socket`] per WebSocket. It hands the socket
//! decoded messages and the items of its bounded outbound queue, and writes out the frames the
//! socket produces. Applications implement [`Channel`] for topic patterns registered on a
//! [`Router`]; broadcasts travel through a [`PubSub`] backend, encoded once per serializer.
//!
//! # Layout
//!
//! - [`socket`]: the per-connection state machine (heartbeat, join, leave, routing, stale
//!   join_refs, duplicate joins, crashes, the channel cap).
//! - [`work`]: channel callbacks in flight, so one that waits never stalls its socket.
//! - [`channel`]: the [`Channel`] trait, its [`Context`] (reply, push, broadcast,
//!   broadcast_from, handle_info messages) and outcomes.
//! - [`error`]: how a channel fails ([`ChannelError`], [`JoinError`]).
//! - [`router`]: topic patterns (`chat:*`) to channels.
//! - [`pubsub`]: the [`PubSub`] trait and [`LocalPubSub`], the sharded in-process registry.
//! - [`limit`]: the token bucket behind the per-socket rate limits.
//! - [`metrics`]: the node's Prometheus metrics, recorded by every crate, served by the server.
//! - [`outbound`]: the bounded per-socket queue with its overflow policy.
//! - [`relay`]: [`NodeRelay`], point-to-point messages to one named node of a cluster.
//! - [`connect`]: what a client presented on connect and the [`ConnectHook`] that judges it.
//! - [`echo`]: a sample `echo:*` channel that exercises all of the above.
//! - [`duration_secs`]: durations as seconds in config files (shared by every crate's config).

pub mod channel;
pub mod connect;
pub mod duration_secs;
pub mod echo;
pub mod error;
pub mod limit;
pub mod metrics;
pub mod outbound;
pub mod pubsub;
pub mod relay;
pub mod router;
pub mod socket;
pub mod work;

pub use channel::{
    BoxError, Channel, ChannelError, ChannelHandle, Context, JoinError, Outcome, Reply, Terminate,
};
pub use connect::{AcceptAll, Accepted, ConnectHook, ConnectInfo, ConnectRequest, Refused};
pub use outbound::{Out, OutboundRx, OutboundTx, SocketId};
pub use pubsub::{
    Broadcast, LocalPubSub, PubSub, PubSubError, Seq, SeqRepair, Subscribed, Subscriber,
    SubscriberKind, subscribed_now,
};
pub use relay::{NodeRelay, RelayError, RelayFuture};
pub use router::Router;
pub use socket::{Socket, SocketConfig};
