//! [`RedisPubSub`]: cluster-wide fan-out on top of the local registry.
//!
//! - A broadcast is dispatched to this node's subscribers at once, then handed to one
//!   publisher task, which sends it as one Redis `PUBLISH` on `plume:t:{topic}`. Batches of
//!   queued publishes go out as one pipeline, in queue order, so per-topic order holds.
//! - One subscriber task owns the node's Redis pub/sub connection. The node subscribes to
//!   `plume:t:{topic}` when the topic gets its first local subscriber and unsubscribes after
//!   the last one leaves. The task reconciles against the local registry, so the order in
//!   which joins and leaves race does not matter: it subscribes exactly to the topics that
//!   have local subscribers.
//! - A message from another node is decoded once and dispatched through the local registry,
//!   which encodes it once per serializer. The node ignores its own messages.
//! - When the connection drops, the task reconnects with backoff (100 ms doubling to 5 s) and
//!   resubscribes every local topic. Meanwhile local delivery continues; cross-node messages
//!   published during the outage are lost (Redis pub/sub keeps nothing), which the counters
//!   and the log show.
//! - Point-to-point ([`NodeRelay`]): each node also subscribes `plume:node:{node_id}`; a
//!   message for one node is a `PUBLISH` there, whose reply (the number of receivers) tells
//!   the sender at once whether that node is alive. LongPoll uses it to reach the node that
//!   holds a session.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use plume_channels::metrics::metrics;
use plume_channels::{
    Broadcast, LocalPubSub, NodeRelay, PubSub, PubSubError, RelayError, RelayFuture, SocketId,
    Subscribed, Subscriber,
};
use redis::aio::{ConnectionManager, PubSubSink};
use tokio::sync::{mpsc, oneshot};

use crate::envelope;

/// Prefix of the per-topic Redis channels.
pub const TOPIC_CHANNEL_PREFIX: &str = "plume:t:";

/// Subscription changes waiting for the subscriber task. Joins wait for room (backpressure);
/// a leave that finds the queue full leaves the topic subscribed upstream until its next
/// change, which costs only unneeded messages.
const CONTROL_QUEUE: usize = 4096;

/// How long a join waits for the upstream subscription before answering anyway.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(1);

fn topic_channel(topic: &str) -> String {
    format!("{TOPIC_CHANNEL_PREFIX}{topic}")
}

fn health_channel(node: &str) -> String {
    format!("plume:health:{node}")
}

/// The channel a node receives point-to-point messages on.
pub fn node_channel(node: &str) -> String {
    format!("plume:node:{node}")
}

/// Where point-to-point messages for this node go (set by [`NodeRelay::set_inbox`]).
type Inbox = Arc<parking_lot::Mutex<Option<mpsc::Sender<Bytes>>>>;

/// Why [`RedisPubSub::health`] found the link unhealthy.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// A command of the check failed.
    #[error("redis {op} failed: {source}")]
    Command {
        /// `PING` or `PUBLISH`.
        op: &'static str,
        /// The client's error.
        #[source]
        source: redis::RedisError,
    },
    /// A step of the check did not complete within the limit.
    #[error("redis {op} did not complete within {limit:?}")]
    Timeout {
        /// `PING`, or the `pub/sub round trip` (published, not received back).
        op: &'static str,
        /// The limit.
        limit: Duration,
    },
}

/// Counters of the Redis link, for `/readyz` and the logs.
#[derive(Default, Debug)]
pub struct Stats {
    /// Whether the pub/sub connection is up and subscribed.
    pub connected: AtomicBool,
    /// Broadcasts published to Redis.
    pub published: AtomicU64,
    /// Broadcasts that failed to publish (Redis error).
    pub publish_errors: AtomicU64,
    /// Broadcasts refused because the publish queue was full.
    pub publish_dropped: AtomicU64,
    /// Messages received from other nodes.
    pub received: AtomicU64,
    /// Messages from other nodes that could not be decoded.
    pub malformed: AtomicU64,
    /// Pub/sub reconnections.
    pub reconnects: AtomicU64,
    /// Times the pub/sub connection came up and subscribed (the first time included).
    pub connections: AtomicU64,
}

enum Control {
    /// Make the Redis subscription of `topic` match the local registry, then ack.
    Reconcile {
        topic: String,
        done: Option<oneshot::Sender<()>>,
    },
}

/// Health checks waiting for their nonce to come back through the subscription. Shared, so a
/// waiter is registered before its nonce is published (no race with the subscriber task).
type HealthWaiters = Arc<parking_lot::Mutex<HashMap<u64, oneshot::Sender<()>>>>;

/// Fan-out through Redis. See the module docs.
pub struct RedisPubSub {
    local: Arc<LocalPubSub>,
    node: Arc<str>,
    control: mpsc::Sender<Control>,
    publish: mpsc::Sender<(String, Bytes)>,
    conn: ConnectionManager,
    health_waiters: HealthWaiters,
    stats: Arc<Stats>,
    nonce: AtomicU64,
    inbox: Inbox,
}

impl RedisPubSub {
    /// Starts the subscriber and publisher tasks. `publish_queue` bounds the broadcasts
    /// waiting to be published.
    pub(crate) fn start(
        client: redis::Client,
        conn: ConnectionManager,
        local: Arc<LocalPubSub>,
        node: Arc<str>,
        publish_queue: usize,
    ) -> RedisPubSub {
        let stats = Arc::new(Stats::default());
        let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
        let (publish, publish_rx) = mpsc::channel(publish_queue.max(1));
        let health_waiters = HealthWaiters::default();
        let inbox = Inbox::default();
        tokio::spawn(subscriber(
            client,
            local.clone(),
            node.clone(),
            control_rx,
            stats.clone(),
            health_waiters.clone(),
            inbox.clone(),
        ));
        tokio::spawn(publisher(conn.clone(), publish_rx, stats.clone()));
        RedisPubSub {
            local,
            node,
            control,
            publish,
            conn,
            stats,
            nonce: AtomicU64::new(1),
            health_waiters,
            inbox,
        }
    }

    /// The link's counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Checks the Redis link: a PING on the command connection and a message round trip
    /// through this node's pub/sub subscription. Returns the round-trip time.
    pub async fn health(&self, limit: Duration) -> Result<Duration, HealthError> {
        let started = Instant::now();
        let mut conn = self.conn.clone();
        let ping =
            tokio::time::timeout(limit, redis::cmd("PING").query_async::<String>(&mut conn)).await;
        match ping {
            Ok(Ok(_)) => {}
            Ok(Err(source)) => return Err(HealthError::Command { op: "PING", source }),
            Err(_) => return Err(HealthError::Timeout { op: "PING", limit }),
        }
        let nonce = self.nonce.fetch_add(1, Ordering::Relaxed);
        let (done, wait) = oneshot::channel();
        self.health_waiters.lock().insert(nonce, done);
        let published = redis::cmd("PUBLISH")
            .arg(health_channel(&self.node))
            .arg(nonce.to_string())
            .query_async::<i64>(&mut conn)
            .await;
        if let Err(source) = published {
            self.health_waiters.lock().remove(&nonce);
            return Err(HealthError::Command {
                op: "PUBLISH",
                source,
            });
        }
        let result = match tokio::time::timeout(limit, wait).await {
            Ok(Ok(())) => {
                let rtt = started.elapsed();
                metrics().redis_round_trip(rtt);
                Ok(rtt)
            }
            _ => Err(HealthError::Timeout {
                op: "pub/sub round trip",
                limit,
            }),
        };
        self.health_waiters.lock().remove(&nonce);
        result
    }
}

impl NodeRelay for RedisPubSub {
    fn node_id(&self) -> &str {
        &self.node
    }

    fn send_to(&self, node: &str, msg: Bytes) -> RelayFuture {
        let mut conn = self.conn.clone();
        let channel = node_channel(node);
        Box::pin(async move {
            let receivers = redis::cmd("PUBLISH")
                .arg(channel)
                .arg(msg.as_ref())
                .query_async::<i64>(&mut conn)
                .await
                .map_err(RelayError::new)?;
            Ok(receivers > 0)
        })
    }

    fn set_inbox(&self, inbox: mpsc::Sender<Bytes>) {
        *self.inbox.lock() = Some(inbox);
    }
}

impl PubSub for RedisPubSub {
    fn subscribe(&self, topic: &str, sub: Subscriber) -> Subscribed {
        self.local.add(topic, sub);
        let (done, wait) = oneshot::channel();
        let reconcile = Control::Reconcile {
            topic: topic.to_owned(),
            done: Some(done),
        };
        // Queued now, so the subscription happens even if the caller drops the future (the
        // socket-id subscription does); when the queue is full, a task waits for room.
        match self.control.try_send(reconcile) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(reconcile)) => {
                let control = self.control.clone();
                tokio::spawn(async move {
                    let _ = control.send(reconcile).await;
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Box::pin(std::future::ready(())),
        }
        Box::pin(async move {
            let _ = tokio::time::timeout(SUBSCRIBE_WAIT, wait).await;
        })
    }

    fn unsubscribe(&self, topic: &str, socket: SocketId) {
        if self.local.remove(topic, socket) {
            let _ = self.control.try_send(Control::Reconcile {
                topic: topic.to_owned(),
                done: None,
            });
        }
    }

    fn broadcast(&self, msg: Broadcast) -> Result<(), PubSubError> {
        self.local.dispatch(&msg);
        let from = msg.from.map_or(0, |s| s.0);
        let failed = match envelope::encode(&self.node, from, msg.seq, &msg.event, &msg.payload) {
            Err(err) => PubSubError::Encode {
                source: Box::new(err),
            },
            Ok(data) => match self.publish.try_send((topic_channel(&msg.topic), data)) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.stats.publish_dropped.fetch_add(1, Ordering::Relaxed);
                    PubSubError::QueueFull {
                        capacity: self.publish.max_capacity(),
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => PubSubError::PublisherStopped,
            },
        };
        // Delivered on this node only: counted here, once per broadcast, whoever sent it.
        metrics().broadcasts_dropped(failed.drop_reason(), 1);
        Err(failed)
    }

    fn registry(&self) -> &LocalPubSub {
        &self.local
    }

    fn link_epoch(&self) -> u64 {
        self.stats.connections.load(Ordering::Relaxed)
    }
}

async fn publisher(
    mut conn: ConnectionManager,
    mut rx: mpsc::Receiver<(String, Bytes)>,
    stats: Arc<Stats>,
) {
    let mut batch = Vec::with_capacity(256);
    let mut last_warning: Option<Instant> = None;
    while rx.recv_many(&mut batch, 256).await > 0 {
        let n = batch.len() as u64;
        let mut pipe = redis::pipe();
        for (channel, data) in batch.drain(..) {
            pipe.cmd("PUBLISH").arg(channel).arg(data.as_ref()).ignore();
        }
        let started = Instant::now();
        match pipe.query_async::<()>(&mut conn).await {
            Ok(()) => {
                metrics().redis_published(started.elapsed());
                stats.published.fetch_add(n, Ordering::Relaxed);
            }
            Err(err) => {
                metrics().broadcasts_dropped("publish_failed", n);
                let total = stats.publish_errors.fetch_add(n, Ordering::Relaxed) + n;
                // One line per second at most while Redis is down.
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                    tracing::warn!(%err, lost = n, total_lost = total,
                        "redis publish failed; cross-node delivery interrupted");
                    last_warning = Some(Instant::now());
                }
            }
        }
    }
}

struct SubscriberState {
    local: Arc<LocalPubSub>,
    node: Arc<str>,
    stats: Arc<Stats>,
    subscribed: HashSet<String>,
    health_waiters: HealthWaiters,
    inbox: Inbox,
    /// `plume:node:{node}`, this node's point-to-point channel.
    node_channel: String,
}

impl SubscriberState {
    /// Subscribes or unsubscribes `topic` to match the local registry.
    async fn reconcile(&mut self, sink: &mut PubSubSink, topic: &str) -> redis::RedisResult<()> {
        let wanted = self.local.subscriber_count(topic) > 0;
        let have = self.subscribed.contains(topic);
        if wanted && !have {
            sink.subscribe(topic_channel(topic)).await?;
            self.subscribed.insert(topic.to_owned());
        } else if !wanted && have {
            sink.unsubscribe(topic_channel(topic)).await?;
            self.subscribed.remove(topic);
        }
        Ok(())
    }

    fn handle_message(&mut self, msg: &redis::Msg) {
        let channel = msg.get_channel_name();
        if let Some(topic) = channel.strip_prefix(TOPIC_CHANNEL_PREFIX) {
            let data = Bytes::copy_from_slice(msg.get_payload_bytes());
            match envelope::decode(data) {
                Ok(env) if *env.node == *self.node => {}
                Ok(env) => {
                    self.stats.received.fetch_add(1, Ordering::Relaxed);
                    self.local.dispatch(&Broadcast {
                        topic: topic.into(),
                        event: env.event.into(),
                        payload: env.payload,
                        from: None,
                        seq: env.seq,
                    });
                }
                Err(err) => {
                    self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(channel, %err, "dropping an undecodable cluster message");
                }
            }
        } else if channel == self.node_channel {
            let data = Bytes::copy_from_slice(msg.get_payload_bytes());
            let delivered = match &*self.inbox.lock() {
                Some(inbox) => inbox.try_send(data).is_ok(),
                None => false,
            };
            if !delivered {
                tracing::warn!("dropping a point-to-point message: no inbox, or the inbox is full");
            }
        } else if let Ok(nonce) = std::str::from_utf8(msg.get_payload_bytes())
            .unwrap_or("")
            .parse::<u64>()
            && let Some(done) = self.health_waiters.lock().remove(&nonce)
        {
            let _ = done.send(());
        }
    }

    fn handle_control_offline(&mut self, ctl: Control) {
        // Offline: the topic is resubscribed on reconnect; do not hold the join up.
        let Control::Reconcile { done, .. } = ctl;
        if let Some(done) = done {
            let _ = done.send(());
        }
    }
}

async fn subscriber(
    client: redis::Client,
    local: Arc<LocalPubSub>,
    node: Arc<str>,
    mut control: mpsc::Receiver<Control>,
    stats: Arc<Stats>,
    health_waiters: HealthWaiters,
    inbox: Inbox,
) {
    let node_channel = node_channel(&node);
    let mut state = SubscriberState {
        local,
        node,
        stats,
        subscribed: HashSet::new(),
        health_waiters,
        inbox,
        node_channel,
    };
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    loop {
        if !first {
            state.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            // Sleep, but keep acknowledging joins meanwhile.
            let wake = tokio::time::sleep(backoff);
            tokio::pin!(wake);
            loop {
                tokio::select! {
                    () = &mut wake => break,
                    ctl = control.recv() => match ctl {
                        Some(ctl) => state.handle_control_offline(ctl),
                        None => return,
                    },
                }
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        first = false;
        let (mut sink, mut stream) = match client.get_async_pubsub().await {
            Ok(pubsub) => pubsub.split(),
            Err(err) => {
                tracing::warn!(%err, retry_in = ?backoff, "redis pub/sub connect failed");
                continue;
            }
        };
        state.subscribed.clear();
        let mut setup = sink.subscribe(health_channel(&state.node)).await;
        if setup.is_ok() {
            setup = sink.subscribe(state.node_channel.clone()).await;
        }
        if setup.is_ok() {
            for topic in state.local.topics() {
                setup = state.reconcile(&mut sink, &topic).await;
                if setup.is_err() {
                    break;
                }
            }
        }
        if let Err(err) = setup {
            tracing::warn!(%err, "redis pub/sub subscribe failed");
            continue;
        }
        backoff = Duration::from_millis(100);
        state.stats.connected.store(true, Ordering::Relaxed);
        state.stats.connections.fetch_add(1, Ordering::Relaxed);
        tracing::info!(topics = state.subscribed.len(), "redis pub/sub connected");
        // What other nodes published while this link was down is gone from pub/sub; every
        // sequenced topic reads it back from its log (subscribed again first, so nothing
        // published from here on is missed either).
        state.local.resync();
        loop {
            tokio::select! {
                ctl = control.recv() => match ctl {
                    None => return,
                    Some(Control::Reconcile { topic, done }) => {
                        let result = state.reconcile(&mut sink, &topic).await;
                        if let Some(done) = done {
                            let _ = done.send(());
                        }
                        if let Err(err) = result {
                            tracing::warn!(%err, topic, "redis subscription change failed");
                            break;
                        }
                    }
                },
                msg = stream.next() => match msg {
                    Some(msg) => state.handle_message(&msg),
                    None => break,
                },
            }
        }
        state.stats.connected.store(false, Ordering::Relaxed);
        // Pending health checks fail now rather than at their timeout.
        state.health_waiters.lock().clear();
        tracing::warn!("redis pub/sub connection lost; reconnecting");
    }
}
