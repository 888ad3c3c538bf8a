//! [`LocalPubSub`]: the in-process topic registry.
//!
//! Topics are spread over shards by hash, each behind its own `RwLock`, so there is no global
//! lock: joins and leaves on different topics rarely contend, and broadcasts on a topic take
//! only a read lock. A topic's only subscriber (a user's notifications topic, most often) is
//! kept inline; several live in an `IndexMap` keyed by socket, which iterates like a `Vec`
//! on the fan-out path and removes in O(1) when a socket leaves.
//!
//! The fan-out path does, per broadcast: one shard read lock, at most one encode per
//! serializer, then one reference-count increment and one queue push per subscriber. No lock
//! is held across an `.await` (there is none on this path).

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use indexmap::IndexMap;
use parking_lot::{Mutex, RwLock};
use plume_wire::{Frame, Payload, Serializer, event};

use super::{
    Broadcast, PubSub, PubSubError, Seq, Subscribed, Subscriber, SubscriberKind, subscribed_now,
};
use crate::metrics::metrics;
use crate::outbound::{Out, SendError, SharedFrame, SocketId};

const SHARDS: usize = 64;

/// Sequenced broadcasts held per topic while an earlier seq is missing. Beyond it the newest
/// are dropped: the repair that was asked for reads them from the log again.
const MAX_HELD: usize = 4096;

/// Fetches what a sequenced topic is missing, from the application's log.
///
/// The registry calls [`SeqRepair::repair`] when a topic's next seq has not arrived but a
/// later one has, and (through [`LocalPubSub::resync`]) after a clustered backend lost
/// messages. The implementation reads the log after `after` and hands the messages to
/// [`LocalPubSub::repaired`]. It is called with no lock held but on the dispatching thread,
/// so it must not wait: spawn a task.
pub trait SeqRepair: Send + Sync + 'static {
    /// `topic` (in `epoch`) has dispatched everything up to `after` and is missing what follows.
    fn repair(&self, topic: &str, epoch: u64, after: u64);
}

struct Topic {
    subs: Subs,
    /// Ordering state of a sequenced topic; `None` until the first sequenced use. Boxed:
    /// every topic has the slot, only chat topics fill it.
    seq: Mutex<Option<Box<SeqState>>>,
}

/// A topic's subscribers. Half the topics of a typical node have one subscriber (each
/// user's `notifications:` topic), and an `IndexMap` for one costs two allocations (about
/// 130 bytes in an idle heap profile), so one is kept inline.
enum Subs {
    One(Subscriber),
    Many(IndexMap<SocketId, Subscriber>),
}

impl Subs {
    fn insert(&mut self, sub: Subscriber) {
        match self {
            Subs::Many(map) if map.is_empty() => *self = Subs::One(sub),
            Subs::Many(map) => {
                map.insert(sub.socket, sub);
            }
            Subs::One(one) if one.socket == sub.socket => *one = sub,
            Subs::One(_) => {
                let mut map = IndexMap::with_capacity(2);
                if let Subs::One(one) = std::mem::replace(self, Subs::Many(IndexMap::new())) {
                    map.insert(one.socket, one);
                }
                map.insert(sub.socket, sub);
                *self = Subs::Many(map);
            }
        }
    }

    /// Removes `socket`'s subscription; whether it had one.
    fn remove(&mut self, socket: SocketId) -> bool {
        match self {
            Subs::One(one) if one.socket == socket => {
                *self = Subs::Many(IndexMap::new());
                true
            }
            Subs::One(_) => false,
            Subs::Many(map) => map.swap_remove(&socket).is_some(),
        }
    }

    fn len(&self) -> usize {
        match self {
            Subs::One(_) => 1,
            Subs::Many(map) => map.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn values(&self) -> impl Iterator<Item = &Subscriber> {
        let (one, many) = match self {
            Subs::One(one) => (Some(one), None),
            Subs::Many(map) => (None, Some(map.values())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

struct SeqState {
    epoch: u64,
    /// Highest seq dispatched. `None` until the application says where the topic starts
    /// ([`LocalPubSub::start_seq`]); until then sequenced broadcasts are held.
    last: Option<u64>,
    /// Broadcasts that arrived ahead of their turn, by seq.
    held: BTreeMap<u64, Broadcast>,
    /// The `last` for which a repair has been asked (so one gap asks once).
    repair_asked: Option<u64>,
}

impl SeqState {
    fn new(epoch: u64) -> SeqState {
        SeqState {
            epoch,
            last: None,
            held: BTreeMap::new(),
            repair_asked: None,
        }
    }
}

type Topics = HashMap<Box<str>, Topic>;

/// The in-process registry of topic subscriptions.
pub struct LocalPubSub {
    shards: Box<[RwLock<Topics>]>,
    hasher: RandomState,
    stats: Stats,
    repair: OnceLock<Arc<dyn SeqRepair>>,
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

/// A repair to ask for once the locks are released.
type RepairAsk = Option<(u64, u64)>;

impl LocalPubSub {
    /// An empty registry.
    pub fn new() -> LocalPubSub {
        LocalPubSub {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            stats: Stats::default(),
            repair: OnceLock::new(),
        }
    }

    /// Installs the application's log reader for sequenced topics (once; later calls are
    /// ignored). Without one, a sequenced broadcast that arrives early is dispatched at once.
    pub fn set_repair(&self, repair: Arc<dyn SeqRepair>) {
        let _ = self.repair.set(repair);
    }

    fn shard(&self, topic: &str) -> &RwLock<Topics> {
        &self.shards[(self.hasher.hash_one(topic) as usize) % SHARDS]
    }

    /// Adds a subscription; returns true when it is the topic's first local subscriber (a
    /// clustered backend subscribes to the topic upstream at that moment).
    pub fn add(&self, topic: &str, sub: Subscriber) -> bool {
        let mut shard = self.shard(topic).write();
        match shard.get_mut(topic) {
            Some(t) => {
                t.subs.insert(sub);
                false
            }
            None => {
                shard.insert(
                    topic.into(),
                    Topic {
                        subs: Subs::One(sub),
                        seq: Mutex::new(None),
                    },
                );
                true
            }
        }
    }

    /// Removes a subscription; returns true when the topic has no local subscriber left.
    pub fn remove(&self, topic: &str, socket: SocketId) -> bool {
        let mut shard = self.shard(topic).write();
        let Some(t) = shard.get_mut(topic) else {
            return false;
        };
        if !t.subs.remove(socket) {
            return false;
        }
        if t.subs.is_empty() {
            shard.remove(topic);
            true
        } else {
            false
        }
    }

    /// Delivers a broadcast to the local subscribers of its topic and returns how many
    /// received it. Frames are encoded lazily, once per serializer in use. A sequenced
    /// broadcast is dispatched in seq order (held while an earlier one is missing, dropped
    /// when already dispatched).
    pub fn dispatch(&self, msg: &Broadcast) -> usize {
        let (delivered, ask) = {
            let shard = self.shard(&msg.topic).read();
            let Some(topic) = shard.get(&*msg.topic) else {
                return 0;
            };
            match msg.seq {
                None => (self.fan_out(&topic.subs, msg), None),
                Some(seq) => self.dispatch_seq(topic, msg, seq),
            }
        };
        self.ask_repair(&msg.topic, ask);
        delivered
    }

    fn dispatch_seq(&self, topic: &Topic, msg: &Broadcast, seq: Seq) -> (usize, RepairAsk) {
        let mut guard = topic.seq.lock();
        let state = guard.get_or_insert_with(|| Box::new(SeqState::new(seq.epoch)));
        if state.epoch != seq.epoch {
            // The log was reset (a new epoch): start over from this message, and forget what
            // every socket was given, since the new seqs start again from 1.
            **state = SeqState::new(seq.epoch);
            state.last = Some(seq.seq.saturating_sub(1));
            for sub in topic.subs.values() {
                if let Some(floor) = &sub.floor {
                    floor.store(0, Ordering::Release);
                }
            }
        }
        let Some(last) = state.last else {
            hold(state, seq.seq, msg);
            return (0, None);
        };
        if seq.seq <= last {
            return (0, None);
        }
        if seq.seq > last + 1 && self.repair.get().is_some() {
            hold(state, seq.seq, msg);
            return (0, ask_once(state, last));
        }
        let delivered = self.fan_out(&topic.subs, msg);
        state.last = Some(seq.seq);
        let ask = self.drain_held(&topic.subs, state);
        (delivered, ask)
    }

    /// Dispatches the held broadcasts that are now next in line; asks for a repair when some
    /// remain behind a gap.
    fn drain_held(&self, subs: &Subs, state: &mut SeqState) -> RepairAsk {
        let mut last = state.last?;
        while let Some(entry) = state.held.first_entry() {
            let seq = *entry.key();
            if seq <= last {
                entry.remove();
            } else if seq == last + 1 {
                let msg = entry.remove();
                self.fan_out(subs, &msg);
                last = seq;
            } else {
                break;
            }
        }
        state.last = Some(last);
        if state.held.is_empty() {
            state.repair_asked = None;
            None
        } else {
            ask_once(state, last)
        }
    }

    fn ask_repair(&self, topic: &str, ask: RepairAsk) {
        if let (Some((epoch, after)), Some(repair)) = (ask, self.repair.get()) {
            repair.repair(topic, epoch, after);
        }
    }

    /// Says where a sequenced topic starts on this node: everything up to `last` (in `epoch`)
    /// is accounted for, so dispatch continues at `last + 1`. Called by the application once
    /// it has subscribed and read its log's head. No effect on a topic that is already
    /// running in the same epoch, or that has no local subscriber.
    pub fn start_seq(&self, topic: &str, epoch: u64, last: u64) {
        let ask = {
            let shard = self.shard(topic).read();
            let Some(t) = shard.get(topic) else {
                return;
            };
            let mut guard = t.seq.lock();
            let state = guard.get_or_insert_with(|| Box::new(SeqState::new(epoch)));
            if state.epoch != epoch {
                **state = SeqState::new(epoch);
            }
            if state.last.is_some() {
                return;
            }
            state.last = Some(last);
            self.drain_held(&t.subs, state)
        };
        self.ask_repair(topic, ask);
    }

    /// The highest seq dispatched on `topic` (with its epoch), if it is sequenced here.
    pub fn seq_position(&self, topic: &str) -> Option<Seq> {
        let shard = self.shard(topic).read();
        let guard = shard.get(topic)?.seq.lock();
        let state = guard.as_ref()?;
        Some(Seq {
            epoch: state.epoch,
            seq: state.last?,
        })
    }

    /// What a [`SeqRepair`] read from the log after `after`, oldest first. When the log no
    /// longer has `after + 1` (trimmed), dispatch skips to the oldest message it has.
    pub fn repaired(&self, topic: &str, epoch: u64, after: u64, messages: Vec<Broadcast>) {
        {
            let shard = self.shard(topic).read();
            let Some(t) = shard.get(topic) else {
                return;
            };
            let mut guard = t.seq.lock();
            if let Some(state) = guard.as_mut() {
                state.repair_asked = None;
                let first = messages.first().and_then(|m| m.seq).map(|s| s.seq);
                if let (true, Some(last), Some(first)) = (state.epoch == epoch, state.last, first)
                    && last == after
                    && first > last + 1
                {
                    state.last = Some(first - 1);
                }
            }
        }
        for msg in &messages {
            self.dispatch(msg);
        }
    }

    /// Asks for a repair of every sequenced topic with local subscribers, from what each has
    /// dispatched (a clustered backend calls this after its link to the other nodes dropped).
    pub fn resync(&self) {
        let mut asks = Vec::new();
        for shard in self.shards.iter() {
            for (name, t) in shard.read().iter() {
                let mut guard = t.seq.lock();
                if let Some(state) = guard.as_mut()
                    && let Some(last) = state.last
                {
                    state.repair_asked = Some(last);
                    asks.push((name.to_string(), state.epoch, last));
                }
            }
        }
        for (topic, epoch, after) in asks {
            self.ask_repair(&topic, Some((epoch, after)));
        }
    }

    fn fan_out(&self, subs: &Subs, msg: &Broadcast) -> usize {
        let mut encoded: [Option<Option<Arc<SharedFrame>>>; 2] = [None, None];
        // A leave order's topic, read from its payload once for all of the topic's sockets.
        let mut leave: Option<Option<Arc<str>>> = None;
        let mut delivered = 0;
        for sub in subs.values() {
            if Some(sub.socket) == msg.from {
                continue;
            }
            let item = match sub.kind {
                SubscriberKind::Control => match &*msg.event {
                    event::DISCONNECT => Out::Disconnect,
                    event::LEAVE_TOPIC => {
                        match leave.get_or_insert_with(|| leave_topic(&msg.payload)) {
                            Some(topic) => Out::Leave {
                                topic: topic.clone(),
                            },
                            None => continue,
                        }
                    }
                    _ => continue,
                },
                SubscriberKind::Intercept { channel } => Out::Info {
                    channel,
                    info: Box::new(msg.clone()),
                },
                SubscriberKind::Fastlane => {
                    let slot = &mut encoded[sub.serializer.index()];
                    let frame = slot.get_or_insert_with(|| {
                        let seq = msg.seq.map_or(0, |seq| seq.seq);
                        encode(sub.serializer, msg).map(|frame| SharedFrame::new(frame, seq))
                    });
                    match (frame, msg.seq, &sub.floor) {
                        (None, _, _) => continue,
                        (Some(frame), Some(_), Some(floor)) => Out::Seq {
                            frame: frame.clone(),
                            floor: floor.clone(),
                        },
                        (Some(frame), _, _) => Out::Frame(frame.clone()),
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
        // Once per broadcast, not per subscriber: one atomic add on the fan-out path.
        metrics().delivered(delivered as u64);
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
        self.shard(topic)
            .read()
            .get(topic)
            .map_or(0, |t| t.subs.len())
    }

    /// Subscribers closed as slow consumers since start.
    pub fn overflowed_total(&self) -> u64 {
        self.stats.overflowed.load(Ordering::Relaxed)
    }
}

/// Holds a broadcast that arrived ahead of its turn, unless [`MAX_HELD`] are held already
/// (then it is dropped, and counted: the repair reads it from the log again).
fn hold(state: &mut SeqState, seq: u64, msg: &Broadcast) {
    if state.held.len() < MAX_HELD {
        state.held.insert(seq, msg.clone());
    } else {
        metrics().broadcasts_dropped("held_overflow", 1);
    }
}

/// A repair request for the gap after `last`, unless one is out for it already.
fn ask_once(state: &mut SeqState, last: u64) -> RepairAsk {
    if state.repair_asked == Some(last) {
        return None;
    }
    state.repair_asked = Some(last);
    Some((state.epoch, last))
}

/// The topic a leave order names: its payload is `{"topic": T}`; anything else is ignored
/// (with a log line).
fn leave_topic(payload: &Payload) -> Option<Arc<str>> {
    #[derive(serde::Deserialize)]
    struct Leave<'a> {
        #[serde(borrow)]
        topic: std::borrow::Cow<'a, str>,
    }
    let parsed = payload
        .as_json()
        .and_then(|j| serde_json::from_slice::<Leave<'_>>(j.as_bytes()).ok());
    if parsed.is_none() {
        tracing::warn!("leave order without a {{\"topic\": …}} payload; ignored");
    }
    parsed.map(|l| Arc::from(&*l.topic))
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

    fn registry(&self) -> &LocalPubSub {
        self
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use super::*;
    use crate::outbound::{OutboundRx, OutboundTx, admit_seq, outbound};
    use bytes::Bytes;
    use plume_wire::{Json, Payload};

    /// Records the repairs asked for.
    #[derive(Default)]
    struct Asked(parking_lot::Mutex<Vec<(String, u64, u64)>>);

    impl SeqRepair for Asked {
        fn repair(&self, topic: &str, epoch: u64, after: u64) {
            self.0.lock().push((topic.to_owned(), epoch, after));
        }
    }

    fn msg(epoch: u64, seq: u64) -> Broadcast {
        Broadcast {
            topic: "t".into(),
            event: "e".into(),
            payload: Payload::Json(
                Json::from_text(Bytes::from(format!(r#"{{"n":{seq}}}"#))).unwrap(),
            ),
            from: None,
            seq: Some(Seq { epoch, seq }),
        }
    }

    fn setup() -> (LocalPubSub, Arc<Asked>, OutboundRx, Arc<AtomicU64>) {
        let registry = LocalPubSub::new();
        let asked = Arc::new(Asked::default());
        registry.set_repair(asked.clone());
        let (tx, rx) = outbound(64);
        let floor = Arc::new(AtomicU64::new(0));
        registry.add("t", fastlane(1, tx, Some(floor.clone())));
        (registry, asked, rx, floor)
    }

    /// A socket's fan-out subscription.
    fn fastlane(id: u64, tx: OutboundTx, floor: Option<Arc<AtomicU64>>) -> Subscriber {
        Subscriber {
            socket: SocketId(id),
            serializer: Serializer::V2,
            kind: SubscriberKind::Fastlane,
            tx,
            floor,
        }
    }

    /// The seqs a socket would write, in order (through its floor, as the driver does).
    async fn written(rx: &mut OutboundRx) -> Vec<u64> {
        let mut items = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(20),
            rx.recv_batch(&mut items),
        )
        .await;
        items
            .into_iter()
            .filter_map(|item| match item {
                Out::Seq { frame, floor } => admit_seq(&frame, &floor).map(|_| frame.seq),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn holds_until_the_start_is_known_then_dispatches_in_order() {
        let (registry, asked, mut rx, _) = setup();
        registry.dispatch(&msg(1, 6));
        registry.dispatch(&msg(1, 5));
        assert!(written(&mut rx).await.is_empty(), "no start yet");
        // The join read the head at 4: everything after it, in order.
        registry.start_seq("t", 1, 4);
        assert_eq!(written(&mut rx).await, [5, 6]);
        registry.dispatch(&msg(1, 6));
        registry.dispatch(&msg(1, 7));
        assert_eq!(written(&mut rx).await, [7], "a repeat is dropped");
        assert!(asked.0.lock().is_empty());
        // Starting again in the same epoch changes nothing.
        registry.start_seq("t", 1, 100);
        registry.dispatch(&msg(1, 8));
        assert_eq!(written(&mut rx).await, [8]);
    }

    #[tokio::test]
    async fn a_gap_is_held_asked_for_once_and_closed_by_the_repair() {
        let (registry, asked, mut rx, _) = setup();
        registry.start_seq("t", 1, 0);
        registry.dispatch(&msg(1, 1));
        registry.dispatch(&msg(1, 3));
        registry.dispatch(&msg(1, 4));
        assert_eq!(written(&mut rx).await, [1]);
        assert_eq!(
            *asked.0.lock(),
            [("t".to_owned(), 1, 1)],
            "asked once for the gap"
        );
        assert_eq!(registry.seq_position("t"), Some(Seq { epoch: 1, seq: 1 }));
        registry.repaired("t", 1, 1, vec![msg(1, 2), msg(1, 3)]);
        assert_eq!(written(&mut rx).await, [2, 3, 4]);
        assert_eq!(registry.seq_position("t"), Some(Seq { epoch: 1, seq: 4 }));
    }

    #[tokio::test]
    async fn a_repair_that_finds_the_gap_trimmed_skips_it() {
        let (registry, _, mut rx, _) = setup();
        registry.start_seq("t", 1, 10);
        registry.dispatch(&msg(1, 15));
        assert!(written(&mut rx).await.is_empty());
        // The log keeps only 14 onwards.
        registry.repaired("t", 1, 10, vec![msg(1, 14), msg(1, 15)]);
        assert_eq!(written(&mut rx).await, [14, 15]);
    }

    #[tokio::test]
    async fn a_new_epoch_starts_over_and_resets_floors() {
        let (registry, _, mut rx, floor) = setup();
        registry.start_seq("t", 1, 0);
        registry.dispatch(&msg(1, 1));
        registry.dispatch(&msg(1, 2));
        assert_eq!(written(&mut rx).await, [1, 2]);
        assert_eq!(floor.load(Ordering::Relaxed), 2);
        // The log was lost: seq starts again at 1 in epoch 2.
        registry.dispatch(&msg(2, 1));
        assert_eq!(written(&mut rx).await, [1]);
        assert_eq!(registry.seq_position("t"), Some(Seq { epoch: 2, seq: 1 }));
    }

    #[tokio::test]
    async fn resync_asks_every_sequenced_topic_from_where_it_stands() {
        let (registry, asked, _rx, _) = setup();
        registry.start_seq("t", 3, 7);
        registry.resync();
        assert_eq!(*asked.0.lock(), [("t".to_owned(), 3, 7)]);
    }

    #[tokio::test]
    async fn plain_broadcasts_are_not_sequenced() {
        let (registry, _, mut rx, _) = setup();
        let mut plain = msg(0, 0);
        plain.seq = None;
        assert_eq!(registry.dispatch(&plain), 1);
        let mut items = Vec::new();
        rx.recv_batch(&mut items).await;
        assert!(matches!(items.as_slice(), [Out::Frame(_)]));
    }

    /// A topic goes from one inline subscriber to several and back without losing or
    /// doubling anyone, and ends when its last subscriber leaves.
    #[tokio::test]
    async fn subscribers_come_and_go_across_one_and_many() {
        let registry = LocalPubSub::new();
        let mut rxs = Vec::new();
        let sub = |id: u64, rxs: &mut Vec<OutboundRx>| {
            let (tx, rx) = outbound(64);
            rxs.push(rx);
            fastlane(id, tx, None)
        };
        let mut plain = msg(0, 0);
        plain.seq = None;
        assert!(registry.add("t", sub(1, &mut rxs)), "the first subscriber");
        // The same socket again replaces its subscription (its new queue gets the frames).
        assert!(!registry.add("t", sub(1, &mut rxs)));
        assert_eq!(registry.subscriber_count("t"), 1);
        assert_eq!(registry.dispatch(&plain), 1);
        assert!(!registry.add("t", sub(2, &mut rxs)));
        assert!(!registry.add("t", sub(3, &mut rxs)));
        assert_eq!(registry.subscriber_count("t"), 3);
        assert_eq!(registry.dispatch(&plain), 3);
        assert!(!registry.remove("t", SocketId(9)), "not a subscriber");
        assert!(!registry.remove("t", SocketId(1)));
        assert!(!registry.remove("t", SocketId(3)));
        assert_eq!(registry.dispatch(&plain), 1, "only socket 2 is left");
        assert!(
            registry.remove("t", SocketId(2)),
            "the last one ends the topic"
        );
        assert!(registry.topics().is_empty());
        // One subscriber removed leaves no topic behind either.
        assert!(registry.add("u", sub(4, &mut rxs)));
        assert!(!registry.remove("u", SocketId(5)));
        assert!(registry.remove("u", SocketId(4)));
        assert!(registry.topics().is_empty());
        // What each queue got: the first socket-1 queue nothing (replaced before the first
        // broadcast), the second two frames, sockets 2 and 3 one each.
        let mut got = Vec::new();
        for rx in &mut rxs[..4] {
            let mut items = Vec::new();
            let _ = tokio::time::timeout(
                std::time::Duration::from_millis(5),
                rx.recv_batch(&mut items),
            )
            .await;
            got.push(items.len());
        }
        assert_eq!(got, [0, 2, 2, 1]);
    }
}
