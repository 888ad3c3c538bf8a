//! [`LocalPubSub`]: the in-process topic registry.
//!
//! Topics are spread over shards by hash, each behind its own `RwLock`, so there is no global
//! lock: joins and leaves on different topics rarely contend, and broadcasts on a topic take
//! only a read lock. Subscribers of a topic live in an `IndexMap` keyed by socket, which
//! iterates like a `Vec` on the fan-out path and removes in O(1) when a socket leaves.
//!
//! The fan-out path does, per broadcast: one shard read lock, at most one encode per
//! serializer, then one reference-count increment and one queue push per subscriber. No lock
//! is held across an `.await` (there is none on this path).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};

use indexmap::IndexMap;
use parking_lot::RwLock;
use plume_wire::{Frame, Serializer, event};

use super::{
    Broadcast, PubSub, PubSubError, Subscribed, Subscriber, SubscriberKind, subscribed_now,
};
use crate::outbound::{Out, SendError, SocketId};

const SHARDS: usize = 64;

type Topics = HashMap<Box<str>, IndexMap<SocketId, Subscriber>>;

/// The in-process registry of topic subscriptions.
pub struct LocalPubSub {
    shards: Box<[RwLock<Topics>]>,
    hasher: RandomState,
    stats: Stats,
}

#[derive(Default)]
struct Stats {
    overflowed: AtomicU64,
}

impl Default for LocalPubSub {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalPubSub {
    /// An empty registry.
    pub fn new() -> LocalPubSub {
        LocalPubSub {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            stats: Stats::default(),
        }
    }

    fn shard(&self, topic: &str) -> &RwLock<Topics> {
        &self.shards[(self.hasher.hash_one(topic) as usize) % SHARDS]
    }

    /// Adds a subscription; returns true when it is the topic's first local subscriber (a
    /// clustered backend subscribes to the topic upstream at that moment).
    pub fn add(&self, topic: &str, sub: Subscriber) -> bool {
        let mut shard = self.shard(topic).write();
        match shard.get_mut(topic) {
            Some(subs) => {
                subs.insert(sub.socket, sub);
                false
            }
            None => {
                let mut subs = IndexMap::with_capacity(1);
                subs.insert(sub.socket, sub);
                shard.insert(topic.into(), subs);
                true
            }
        }
    }

    /// Removes a subscription; returns true when the topic has no local subscriber left.
    pub fn remove(&self, topic: &str, socket: SocketId) -> bool {
        let mut shard = self.shard(topic).write();
        let Some(subs) = shard.get_mut(topic) else {
            return false;
        };
        if subs.swap_remove(&socket).is_none() {
            return false;
        }
        if subs.is_empty() {
            shard.remove(topic);
            true
        } else {
            false
        }
    }

    /// Delivers a broadcast to the local subscribers of its topic and returns how many
    /// received it. Frames are encoded lazily, once per serializer in use.
    pub fn dispatch(&self, msg: &Broadcast) -> usize {
        let shard = self.shard(&msg.topic).read();
        let Some(subs) = shard.get(&*msg.topic) else {
            return 0;
        };
        let mut encoded: [Option<Option<Frame>>; 2] = [None, None];
        let mut delivered = 0;
        for sub in subs.values() {
            if Some(sub.socket) == msg.from {
                continue;
            }
            let item = match sub.kind {
                SubscriberKind::Control => {
                    if &*msg.event != event::DISCONNECT {
                        continue;
                    }
                    Out::Disconnect
                }
                SubscriberKind::Fastlane => {
                    let slot = &mut encoded[sub.serializer.index()];
                    let frame = slot.get_or_insert_with(|| encode(sub.serializer, msg));
                    match frame {
                        Some(frame) => Out::Frame(frame.clone()),
                        None => continue,
                    }
                }
            };
            match sub.tx.send(item) {
                Ok(()) => delivered += 1,
                Err(SendError::Full) => {
                    self.stats.overflowed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(topic = %msg.topic, socket = sub.socket.0,
                        "outbound queue full; closing slow consumer");
                }
                Err(SendError::Closed) => {}
            }
        }
        delivered
    }

    /// Every topic with at least one local subscriber.
    pub fn topics(&self) -> Vec<String> {
        self.shards
            .iter()
            .flat_map(|s| s.read().keys().map(|k| k.to_string()).collect::<Vec<_>>())
            .collect()
    }

    /// Number of local subscribers of `topic`.
    pub fn subscriber_count(&self, topic: &str) -> usize {
        self.shard(topic).read().get(topic).map_or(0, IndexMap::len)
    }

    /// Subscribers closed as slow consumers since start.
    pub fn overflowed_total(&self) -> u64 {
        self.stats.overflowed.load(Ordering::Relaxed)
    }
}

fn encode(serializer: Serializer, msg: &Broadcast) -> Option<Frame> {
    match serializer.encode_broadcast(&msg.topic, &msg.event, &msg.payload) {
        Ok(frame) => Some(frame),
        Err(err) => {
            tracing::debug!(topic = %msg.topic, event = %msg.event, ?serializer, %err,
                "broadcast cannot be encoded for this serializer; skipped");
            None
        }
    }
}

impl PubSub for LocalPubSub {
    fn subscribe(&self, topic: &str, sub: Subscriber) -> Subscribed {
        self.add(topic, sub);
        subscribed_now()
    }

    fn unsubscribe(&self, topic: &str, socket: SocketId) {
        self.remove(topic, socket);
    }

    fn broadcast(&self, msg: Broadcast) -> Result<(), PubSubError> {
        self.dispatch(&msg);
        Ok(())
    }
}
