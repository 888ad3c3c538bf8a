//! [`Socket`]: the per-connection state machine of the Phoenix protocol.
//!
//! The connection driver (plume-server) feeds it decoded client messages
//! ([`Socket::handle_message`]) and items from its outbound queue ([`Socket::handle_out`]);
//! the socket decides what to reply, push, close or broadcast and leaves the frames to write
//! in [`Socket::frames`]. It performs no IO itself, so every protocol rule is testable without
//! a network. One method per protocol case, in the order Phoenix's `socket.ex` checks them:
//! heartbeat, join, leave, message to a joined topic, message to an unjoined topic.
//!
//! Before the protocol cases come the socket's limits ([`SocketConfig`]): a token bucket for
//! pushes and one for joins (heartbeats are never limited), a tolerance for refusals beyond
//! which the socket is closed with [`close::RATE_LIMITED`], and the sizes of topics, event
//! names and join payloads. Leave orders on the socket id topic ([`Out::Leave`]) end one
//! channel with `phx_close`.
//!
//! A channel callback that waits does not stall the socket ([`crate::work`]): while it is in
//! flight the socket answers heartbeats, serves its other channels and takes its outbound
//! queue; what arrives for the busy channel waits for it, in order. The driver polls the work
//! in flight with [`Socket::next_done`] and hands each result to [`Socket::finish`].

use std::any::Any;
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::task::Poll;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use plume_wire::close::{self, CloseReason};
use plume_wire::{Frame, Json, Message, Payload, Ref, Serializer, event};
use prometheus_client::metrics::gauge::Gauge;

use crate::channel::{Context, DynChannel, JoinError, Outcome, Reply, SocketShared, Terminate};
use crate::connect::ConnectInfo;
use crate::limit::{IdBudget, TokenBucket};
use crate::metrics::{JoinResult, metrics};
use crate::outbound::{Out, OutboundRx, SocketId, admit_seq, outbound_with_budget};
use crate::pubsub::{PubSub, Subscriber, SubscriberKind};
use crate::router::Router;
use crate::work::{self, Done, DoneWhat, Owned, Queued, Work};

/// Output buffer capacity kept after a burst is written.
const RETAINED_FRAMES: usize = 64;

/// Client messages that may wait for busy channels at once; beyond it the driver stops
/// reading from the client until they drain ([`Socket::accepting`]).
pub const MAX_QUEUED_MESSAGES: usize = 256;

/// Limits of one socket. Every size a client chooses is bounded here or by the frame limit,
/// and every limit answers with a named reason or close code (protocol-spec/errors.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SocketConfig {
    /// Most channels one socket may have joined at once (Phoenix: 100). The next join gets
    /// `{"reason":"too many channels joined"}`.
    pub max_channels: usize,
    /// Most items waiting in the socket's outbound queue; one more closes the socket with
    /// [`close::SLOW_CONSUMER`].
    pub outbound_capacity: usize,
    /// Most bytes of frames waiting in the socket's outbound queue (1 MiB, as Centrifugo and
    /// AnyCable use); a frame that would go over it closes the socket with
    /// [`close::SLOW_CONSUMER`].
    pub outbound_max_bytes: usize,
    /// Messages (other than heartbeats and joins) one socket may send per second, on
    /// average; over it a message gets `{"reason":"rate_limited"}`. 0 turns the limit off.
    /// Default 100.
    pub max_pushes_per_second: u32,
    /// Messages a socket may send at once before the rate applies. Default 200.
    pub push_burst: u32,
    /// Messages all sockets of one identity (the socket id given at connect, one per user in
    /// the chat service) may send per second together on this node, with a burst of twice
    /// that; over it a message gets `{"reason":"rate_limited"}` as over the socket's own
    /// limit. The identity's budget outlives its sockets until it refills, so closing and
    /// reconnecting gives a flooder no fresh burst. `None` (the default): the socket's
    /// `max_pushes_per_second` and `push_burst`; 0 turns it off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pushes_per_second_per_id: Option<u32>,
    /// Joins one socket may send per second, on average; over it a join gets
    /// `{"reason":"rate_limited"}`. 0 turns the limit off. Default 20.
    pub max_joins_per_second: u32,
    /// Joins a socket may send at once. Default 100, the channel cap, so that a client
    /// rejoining everything after a reconnect is never refused.
    pub join_burst: u32,
    /// Rate-limited messages tolerated per 10 seconds: a bucket of this many refusals that
    /// refills a tenth of it per second (at least 1); once it is empty the next refusal
    /// closes the socket with [`close::RATE_LIMITED`]. 0 never closes. Default 100.
    pub max_rate_limited_per_10s: u32,
    /// Longest topic, in bytes; a longer one on a join gets `{"reason":"topic_too_long"}`.
    /// Default 255, the most the V2 binary format can carry.
    pub max_topic_bytes: usize,
    /// Longest event name, in bytes; a longer one gets `{"reason":"event_too_long"}`.
    /// Default 64.
    pub max_event_bytes: usize,
    /// Largest join payload, in bytes (as received); a larger one gets
    /// `{"reason":"join_payload_too_large"}`. Default 4 KiB.
    pub max_join_payload_bytes: usize,
}

impl Default for SocketConfig {
    fn default() -> Self {
        SocketConfig {
            max_channels: 100,
            outbound_capacity: 1024,
            outbound_max_bytes: 1024 * 1024,
            max_pushes_per_second: 100,
            push_burst: 200,
            max_pushes_per_second_per_id: None,
            max_joins_per_second: 20,
            join_burst: 100,
            max_rate_limited_per_10s: 100,
            max_topic_bytes: 255,
            max_event_bytes: 64,
            max_join_payload_bytes: 4096,
        }
    }
}

/// The socket's rate limits: pushes, joins, and how many refusals it tolerates.
struct Limits {
    pushes: TokenBucket,
    /// Its identity's share of pushes, when it has a socket id and the limit is on.
    id: Option<IdBudget>,
    joins: TokenBucket,
    /// One token per refused message; empty means the client floods and is closed.
    refusals: TokenBucket,
    refused: u64,
}

impl Limits {
    fn new(config: &SocketConfig, id: Option<IdBudget>) -> Limits {
        let tolerated = config.max_rate_limited_per_10s;
        Limits {
            pushes: TokenBucket::new(config.max_pushes_per_second, config.push_burst),
            id,
            joins: TokenBucket::new(config.max_joins_per_second, config.join_burst),
            // `tolerated` per 10 s is `tolerated / 10` per second; at least 1 so it refills.
            refusals: TokenBucket::new(
                if tolerated == 0 {
                    0
                } else {
                    (tolerated / 10).max(1)
                },
                tolerated,
            ),
            refused: 0,
        }
    }
}

struct Joined {
    topic: String,
    join_ref: Option<Ref>,
    id: u64,
    /// Highest seq of the topic given to this socket (sequenced topics; see [`Out::Seq`]).
    floor: Arc<AtomicU64>,
    /// The instance; `None` while one of its callbacks is in flight ([`crate::work`]).
    channel: Option<Box<dyn DynChannel>>,
    /// What arrived for the instance while it was busy, in order.
    backlog: VecDeque<Queued>,
    /// Counts the channel in its route's `plume_channels` gauge while it exists.
    _counted: Counted,
}

/// One joined channel in a route's gauge, for as long as this lives (whichever way the
/// channel ends).
struct Counted(Gauge);

impl Counted {
    fn new(gauge: &Gauge) -> Counted {
        gauge.inc();
        Counted(gauge.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Joined {
    /// The channel and the context its callbacks get, borrowed side by side; `None` while
    /// the instance is busy.
    fn split<'a>(
        &'a mut self,
        socket: &'a SocketShared,
        out: &'a mut Vec<Frame>,
    ) -> Option<(&'a mut dyn DynChannel, Context<'a>)> {
        let ctx = Context {
            socket,
            topic: &self.topic,
            join_ref: self.join_ref.as_ref(),
            channel_id: self.id,
            out,
            floor: &self.floor,
            subscribed: None,
            msg_ref: None,
        };
        Some((&mut **self.channel.as_mut()?, ctx))
    }

    fn busy(&self) -> bool {
        self.channel.is_none()
    }

    /// Takes the instance out for a callback in flight.
    fn take(&mut self, shared: &Arc<SocketShared>) -> Option<(Box<dyn DynChannel>, Owned)> {
        let channel = self.channel.take()?;
        let own = Owned {
            shared: shared.clone(),
            topic: self.topic.clone(),
            join_ref: self.join_ref.clone(),
            channel_id: self.id,
            floor: self.floor.clone(),
        };
        Some((channel, own))
    }
}

/// One client connection's protocol state: its joined channels and pending output.
pub struct Socket {
    shared: Arc<SocketShared>,
    router: Arc<Router>,
    config: SocketConfig,
    channels: Vec<Joined>,
    out: Vec<Frame>,
    next_channel: u64,
    limits: Limits,
    /// Channel callbacks in flight; `None` while there are none (an empty set still holds
    /// an allocation, about 140 bytes per idle socket in a heap profile).
    inflight: Option<FuturesUnordered<Work>>,
    /// Client messages in the channels' backlogs.
    queued_messages: usize,
    /// Everything in the channels' backlogs.
    queued: usize,
}

fn channel_crash_payload() -> Json {
    Json::from_text(Bytes::from_static(br#"{"reason":"channel_crash"}"#))
        .unwrap_or_else(|_| Json::empty_object())
}

fn panic_text(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_owned()
    }
}

impl Socket {
    /// A socket for an accepted connection, with its outbound queue. Subscribes the socket id
    /// topic (for `disconnect` broadcasts) when the connect hook named one.
    pub fn new(
        mut connect: ConnectInfo,
        router: Arc<Router>,
        pubsub: Arc<dyn PubSub>,
        config: SocketConfig,
    ) -> (Socket, OutboundRx) {
        if !router.keeps_connect_params() {
            // The hook has read them; no channel will (see `Channel::READS_CONNECT_PARAMS`).
            connect.request.params = serde_json::Map::new();
        }
        let (tx, rx) = outbound_with_budget(config.outbound_capacity, config.outbound_max_bytes);
        let id = SocketId::next();
        let serializer = connect.request.serializer;
        if let Some(topic) = &connect.socket_id {
            // Not awaited: a disconnect published in the first instants may be missed, which
            // is harmless (the socket has just connected with a valid token).
            drop(pubsub.subscribe(
                topic,
                Subscriber {
                    socket: id,
                    serializer,
                    kind: SubscriberKind::Control,
                    tx: tx.clone(),
                    floor: None,
                },
            ));
        }
        let (id_rate, id_burst) = match config.max_pushes_per_second_per_id {
            None => (config.max_pushes_per_second, config.push_burst),
            Some(rate) => (rate, rate.saturating_mul(2)),
        };
        let id_budget = match &connect.socket_id {
            Some(socket_id) if id_rate > 0 => {
                Some(router.id_budgets().join(socket_id, id_rate, id_burst))
            }
            _ => None,
        };
        let shared = Arc::new(SocketShared {
            id,
            serializer,
            connect: Arc::new(connect),
            pubsub,
            tx,
        });
        let socket = Socket {
            shared,
            router,
            config,
            channels: Vec::new(),
            out: Vec::new(),
            next_channel: 1,
            limits: Limits::new(&config, id_budget),
            inflight: None,
            queued_messages: 0,
            queued: 0,
        };
        (socket, rx)
    }

    /// This socket's id.
    pub fn id(&self) -> SocketId {
        self.shared.id
    }

    /// This socket's serializer.
    pub fn serializer(&self) -> Serializer {
        self.shared.serializer
    }

    /// Frames waiting to be written, in order.
    pub fn frames(&self) -> &[Frame] {
        &self.out
    }

    /// Takes the frames waiting to be written, in order (the driver writes them after every
    /// step).
    pub fn drain_frames(&mut self) -> std::vec::Drain<'_, Frame> {
        self.out.drain(..)
    }

    /// Gives back the output buffer's memory after a burst, once it is empty: a socket that
    /// was busy once does not stay large.
    pub fn release_frame_capacity(&mut self) {
        if self.out.is_empty() && self.out.capacity() > RETAINED_FRAMES {
            self.out.shrink_to(RETAINED_FRAMES);
        }
    }

    /// The fan-out fast path of an outbound item: an encoded frame (a sequenced one if this
    /// socket does not have its seq yet) goes straight into the output. Any other item is
    /// given back, for [`Socket::handle_out`].
    pub fn push_out(&mut self, item: Out) -> Option<Out> {
        match item {
            Out::Frame(shared) => self.out.push(shared.frame.clone()),
            Out::Seq { frame, floor } => {
                if let Some(frame) = admit_seq(&frame, &floor) {
                    self.out.push(frame);
                }
            }
            other => return Some(other),
        }
        None
    }

    /// Whether a channel callback is in flight (the driver then polls [`Socket::next_done`]).
    pub fn busy(&self) -> bool {
        self.inflight.is_some()
    }

    /// Whether the socket takes more client messages now. False while
    /// [`MAX_QUEUED_MESSAGES`] wait for busy channels: the driver stops reading from the
    /// client until they drain, so a client cannot queue without bound behind a slow store.
    pub fn accepting(&self) -> bool {
        self.queued_messages < MAX_QUEUED_MESSAGES
    }

    /// The next channel callback to finish; pending while none is in flight. Hand the
    /// result to [`Socket::finish`].
    pub async fn next_done(&mut self) -> Done {
        if let Some(set) = &mut self.inflight
            && let Some(done) = set.next().await
        {
            if set.is_empty() {
                self.inflight = None;
            }
            return done;
        }
        self.inflight = None;
        std::future::pending().await
    }

    /// Puts a finished callback's instance back, writes what it pushed and its reply (or
    /// stops or crashes the channel as it asked), then runs what waited for it.
    pub async fn finish(&mut self, done: Done) {
        let channel_id = done.channel_id;
        self.complete(done).await;
        self.run_backlog(channel_id).await;
    }

    /// The first half of [`Socket::finish`]: everything but the backlog.
    async fn complete(&mut self, done: Done) {
        let Some(idx) = self.position(done.channel_id) else {
            // Cannot happen: a busy instance is never removed, whatever arrives for it.
            tracing::error!(
                channel = done.channel_id,
                "finished callback of a gone channel"
            );
            return;
        };
        let Done {
            channel,
            mut out,
            what,
            ..
        } = done;
        self.channels[idx].channel = Some(channel);
        self.out.append(&mut out);
        let join_ref = self.channels[idx].join_ref.clone();
        match what {
            DoneWhat::In {
                ref_,
                topic,
                result,
            } => match result {
                Ok(Ok(Outcome::NoReply)) => {}
                Ok(Ok(Outcome::Reply(reply))) => {
                    self.reply(join_ref.as_ref(), ref_.as_ref(), &topic, &reply);
                }
                Ok(Ok(Outcome::Stop(reply))) => {
                    if let Some(reply) = reply {
                        self.reply(join_ref.as_ref(), ref_.as_ref(), &topic, &reply);
                    }
                    let joined = self.channels.swap_remove(idx);
                    let backlog = self.end(joined, Terminate::Stopped).await;
                    self.control(
                        join_ref.as_ref(),
                        &topic,
                        event::PHX_CLOSE,
                        &Json::empty_object(),
                    );
                    self.redispatch(backlog).await;
                }
                Ok(Err(err)) => self.crash(idx, &err.to_string()).await,
                Err(panic) => self.crash(idx, &panic_text(&*panic)).await,
            },
            DoneWhat::Info(result) => match result {
                Ok(Ok(())) => {}
                Ok(Err(err)) => self.crash(idx, &err.to_string()).await,
                Err(panic) => self.crash(idx, &panic_text(&*panic)).await,
            },
        }
    }

    fn position(&self, channel_id: u64) -> Option<usize> {
        self.channels.iter().position(|j| j.id == channel_id)
    }

    /// Queues `item` for busy channel `idx`.
    fn enqueue(&mut self, idx: usize, item: Queued) {
        if matches!(item, Queued::Message(_) | Queued::Refused(_)) {
            self.queued_messages += 1;
        }
        self.queued += 1;
        self.channels[idx].backlog.push_back(item);
    }

    fn dequeue(&mut self, idx: usize) -> Option<Queued> {
        let item = self.channels[idx].backlog.pop_front()?;
        if matches!(item, Queued::Message(_) | Queued::Refused(_)) {
            self.queued_messages -= 1;
        }
        self.queued -= 1;
        Some(item)
    }

    /// Runs a callback: polled once here, so one that does not wait finishes now; one that
    /// waits joins the work in flight.
    async fn run(&mut self, work: Work) {
        if let Some(done) = self.poll_once(work).await {
            self.finish(done).await;
        }
    }

    /// Polls `work` once: its result if it is done, else it joins the work in flight.
    async fn poll_once(&mut self, mut work: Work) -> Option<Done> {
        let polled = std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await;
        match polled {
            Poll::Ready(done) => Some(done),
            Poll::Pending => {
                self.inflight
                    .get_or_insert_with(FuturesUnordered::new)
                    .push(work);
                None
            }
        }
    }

    /// Runs what waited for instance `channel_id`, in order, until it is busy again (that
    /// callback joins the work in flight) or its backlog is empty.
    async fn run_backlog(&mut self, channel_id: u64) {
        loop {
            let Some(idx) = self.position(channel_id) else {
                return;
            };
            if self.channels[idx].busy() {
                return;
            }
            let Some(item) = self.dequeue(idx) else {
                return;
            };
            let work = match item {
                Queued::Message(msg) => self.dispatch(msg).await,
                Queued::Refused(msg) => {
                    self.refuse(&msg);
                    None
                }
                Queued::Info(info) => self.start_info(idx, info),
                Queued::Removed => {
                    let topic = self.channels[idx].topic.clone();
                    self.remove(&topic).await;
                    None
                }
            };
            if let Some(work) = work
                && let Some(done) = self.poll_once(work).await
            {
                self.complete(done).await;
            }
        }
    }

    /// Sends what waited for a removed instance where it now belongs: client messages are
    /// handled again (a push then finds no channel and is answered `unmatched topic`, a join
    /// makes a new instance), the rest is dropped. Boxed: it may join, which may end an
    /// instance, which may redispatch.
    fn redispatch(&mut self, backlog: VecDeque<Queued>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            for item in backlog {
                self.queued -= 1;
                match item {
                    Queued::Message(msg) => {
                        self.queued_messages -= 1;
                        if let Some(work) = self.dispatch(msg).await
                            && let Some(done) = self.poll_once(work).await
                        {
                            self.complete(done).await;
                        }
                    }
                    Queued::Refused(msg) => {
                        self.queued_messages -= 1;
                        self.refuse(&msg);
                    }
                    Queued::Info(_) | Queued::Removed => {}
                }
            }
        })
    }

    /// Routes an admitted client message: into its busy channel's backlog, or to its
    /// protocol case. A push to an idle channel comes back as work to run.
    async fn dispatch(&mut self, msg: Message) -> Option<Work> {
        if let Some(idx) = self.find(&msg.topic)
            && self.channels[idx].busy()
        {
            self.enqueue(idx, Queued::Message(msg));
            return None;
        }
        match msg.event.as_str() {
            event::PHX_JOIN => {
                self.join(msg).await;
                None
            }
            event::PHX_LEAVE => {
                self.leave(msg).await;
                None
            }
            _ => match self.find(&msg.topic) {
                Some(idx) => self.start_in(idx, msg),
                None => {
                    self.unmatched(&msg);
                    None
                }
            },
        }
    }

    /// `handle_in` on idle instance `idx`, as work; `None` for a stale join_ref (dropped
    /// without a reply, Phoenix 1.8).
    fn start_in(&mut self, idx: usize, msg: Message) -> Option<Work> {
        if is_stale(&msg, &self.channels[idx]) {
            tracing::debug!(topic = %msg.topic, event = %msg.event, "stale join_ref; dropped");
            return None;
        }
        let (channel, own) = self.channels[idx].take(&self.shared)?;
        Some(work::handle_in(channel, own, msg))
    }

    /// `handle_info` on idle instance `idx`, as work; `None` if it is busy.
    fn start_info(&mut self, idx: usize, info: Box<dyn Any + Send>) -> Option<Work> {
        let (channel, own) = self.channels[idx].take(&self.shared)?;
        Some(work::handle_info(channel, own, info))
    }

    /// Topics currently joined, with their join_refs.
    pub fn joined(&self) -> impl Iterator<Item = (&str, Option<&Ref>)> {
        self.channels
            .iter()
            .map(|j| (j.topic.as_str(), j.join_ref.as_ref()))
    }

    /// Handles one decoded client message; returns the close to perform, if any (a socket
    /// that keeps sending over its rate limit is closed with [`close::RATE_LIMITED`]).
    ///
    /// Order of the checks: a heartbeat is answered at once (never limited, so a busy client
    /// is never timed out), then the rate limits, then the size limits, then the protocol
    /// cases.
    pub async fn handle_message(&mut self, msg: Message) -> Option<CloseReason> {
        metrics().message_in();
        if msg.topic == event::PHOENIX_TOPIC && msg.event == event::HEARTBEAT {
            self.reply(None, msg.ref_.as_ref(), &msg.topic, &Reply::ok_empty());
            return None;
        }
        let is_join = msg.event == event::PHX_JOIN;
        let admitted = if is_join {
            self.limits.joins.take()
        } else {
            self.limits.pushes.take() && self.limits.id.as_ref().is_none_or(IdBudget::take)
        };
        if !admitted {
            return self.rate_limited(&msg);
        }
        if msg.event.len() > self.config.max_event_bytes {
            tracing::debug!(
                socket = self.shared.id.0,
                len = msg.event.len(),
                "event too long"
            );
            let reply = Reply::error_reason(event::REASON_EVENT_TOO_LONG);
            self.reply(None, msg.ref_.as_ref(), &msg.topic, &reply);
            return None;
        }
        if let Some(work) = self.dispatch(msg).await {
            self.run(work).await;
        }
        None
    }

    /// A message over the rate limit: an error reply (the channel's, for a joined topic, so
    /// that it can say more, as chat's `message_sent` does), and a close once the socket has
    /// been refused more than its tolerance.
    fn rate_limited(&mut self, msg: &Message) -> Option<CloseReason> {
        self.limits.refused += 1;
        if self.limits.refused == 1 {
            tracing::info!(socket = self.shared.id.0, topic = %msg.topic, event = %msg.event,
                "rate limit reached; refusing messages");
        }
        if !self.limits.refusals.take() {
            tracing::warn!(
                socket = self.shared.id.0,
                refused = self.limits.refused,
                "closing socket: it kept sending over its rate limit"
            );
            self.answer_queued_refusals();
            return Some(CloseReason::new(
                close::RATE_LIMITED,
                "rate limited: too many messages",
            ));
        }
        let busy = (msg.event != event::PHX_JOIN)
            .then(|| self.find(&msg.topic))
            .flatten()
            .filter(|&idx| self.channels[idx].busy());
        match busy {
            Some(idx) => self.enqueue(idx, Queued::Refused(msg.clone())),
            None => self.refuse(msg),
        }
        None
    }

    /// Answers now the refusals waiting behind busy channels (written before the close that
    /// follows, which would otherwise drop them: the client hears why each push failed).
    fn answer_queued_refusals(&mut self) {
        let mut refused = Vec::new();
        for joined in &mut self.channels {
            for item in std::mem::take(&mut joined.backlog) {
                match item {
                    Queued::Refused(msg) => refused.push(msg),
                    other => joined.backlog.push_back(other),
                }
            }
        }
        self.queued -= refused.len();
        self.queued_messages -= refused.len();
        for msg in &refused {
            self.refuse(msg);
        }
    }

    /// Answers a message refused by the rate limit: with the channel's own reply for a
    /// joined (idle) topic, so that it can say more, as chat's `message_sent` does.
    fn refuse(&mut self, msg: &Message) {
        let joined = (msg.event != event::PHX_JOIN)
            .then(|| self.find(&msg.topic))
            .flatten()
            .filter(|&idx| !is_stale(msg, &self.channels[idx]));
        match joined {
            Some(idx) => {
                let Socket {
                    shared,
                    channels,
                    out,
                    ..
                } = self;
                let joined = &mut channels[idx];
                let join_ref = joined.join_ref.clone();
                let reply = match joined.split(shared, out) {
                    Some((channel, mut ctx)) => channel.refused(
                        &msg.event,
                        &msg.payload,
                        event::REASON_RATE_LIMITED,
                        &mut ctx,
                    ),
                    None => Reply::error_reason(event::REASON_RATE_LIMITED),
                };
                self.reply(join_ref.as_ref(), msg.ref_.as_ref(), &msg.topic, &reply);
            }
            None => {
                let join_ref = (msg.event == event::PHX_JOIN)
                    .then(|| self.join_ref_of(msg))
                    .flatten();
                let reply = Reply::error_reason(event::REASON_RATE_LIMITED);
                self.reply(join_ref.as_ref(), msg.ref_.as_ref(), &msg.topic, &reply);
            }
        }
    }

    /// The join_ref a join's reply carries: V2 channels are identified by the join's join_ref
    /// (its ref when the client sent null); V1 has no join_refs on the way out, so it keeps
    /// what was sent.
    fn join_ref_of(&self, msg: &Message) -> Option<Ref> {
        match self.shared.serializer {
            Serializer::V2 => msg.join_ref.clone().or_else(|| msg.ref_.clone()),
            Serializer::V1 => msg.join_ref.clone(),
        }
    }

    /// Handles one item from the outbound queue; returns the close to perform, if any.
    pub async fn handle_out(&mut self, item: Out) -> Option<CloseReason> {
        // A fast-path frame: nothing more to do.
        let item = self.push_out(item)?;
        match item {
            Out::Frame(_) | Out::Seq { .. } => {}
            Out::Disconnect => {
                return Some(CloseReason::new(close::GOING_AWAY, "disconnected"));
            }
            Out::Leave { topic } => match self.find(&topic) {
                Some(idx) if self.channels[idx].busy() => self.enqueue(idx, Queued::Removed),
                _ => self.remove(&topic).await,
            },
            Out::Info { channel, info } => {
                if let Some(idx) = self.position(channel) {
                    if self.channels[idx].busy() {
                        // Bounded like the outbound queue it came through.
                        if self.queued >= self.config.outbound_capacity {
                            return Some(CloseReason::new(
                                close::SLOW_CONSUMER,
                                "channel backlog overflow: a channel is too slow for what it is sent",
                            ));
                        }
                        self.enqueue(idx, Queued::Info(info));
                    } else if let Some(work) = self.start_info(idx, info) {
                        self.run(work).await;
                    }
                }
            }
        }
        None
    }

    /// Ends every channel (`terminate` with [`Terminate::SocketClosed`]) and drops every
    /// subscription. Call once when the connection is over.
    pub async fn close(&mut self) {
        // Callbacks in flight finish first, so their instances are back for `terminate`.
        if let Some(mut set) = self.inflight.take() {
            while let Some(done) = set.next().await {
                if let Some(idx) = self.position(done.channel_id) {
                    self.channels[idx].channel = Some(done.channel);
                }
            }
        }
        while let Some(joined) = self.channels.pop() {
            self.end(joined, Terminate::SocketClosed).await;
        }
        if let Some(topic) = &self.shared.connect.socket_id {
            self.shared.pubsub.unsubscribe(topic, self.shared.id);
        }
    }

    /// Ends the channel joined to `topic` on a leave order from the socket id topic (its
    /// user was removed from the chat, say): `terminate`, unsubscribe, then `phx_close`, so
    /// phoenix.js closes the channel and does not rejoin. Nothing joined: nothing happens.
    async fn remove(&mut self, topic: &str) {
        let Some(idx) = self.find(topic) else {
            return;
        };
        let joined = self.channels.swap_remove(idx);
        let join_ref = joined.join_ref.clone();
        tracing::info!(
            socket = self.shared.id.0,
            topic,
            "channel removed by a leave order"
        );
        let backlog = self.end(joined, Terminate::Removed).await;
        self.control(
            join_ref.as_ref(),
            topic,
            event::PHX_CLOSE,
            &Json::empty_object(),
        );
        self.redispatch(backlog).await;
    }

    fn find(&self, topic: &str) -> Option<usize> {
        self.channels.iter().position(|j| j.topic == topic)
    }

    fn reply(&mut self, join_ref: Option<&Ref>, ref_: Option<&Ref>, topic: &str, reply: &Reply) {
        match self.shared.serializer.encode_reply(
            join_ref,
            ref_,
            topic,
            &reply.status,
            &reply.response,
        ) {
            Ok(frame) => self.out.push(frame),
            Err(err) => tracing::warn!(topic, %err, "reply cannot be encoded; dropped"),
        }
    }

    fn control(&mut self, join_ref: Option<&Ref>, topic: &str, event: &str, payload: &Json) {
        let frame = self
            .shared
            .serializer
            .encode_control(join_ref, topic, event, payload);
        self.out.push(frame);
    }

    fn unmatched(&mut self, msg: &Message) {
        let reply = Reply::error_reason(event::REASON_UNMATCHED_TOPIC);
        self.reply(None, msg.ref_.as_ref(), &msg.topic, &reply);
    }

    async fn join(&mut self, msg: Message) {
        let join_ref = self.join_ref_of(&msg);
        // Refused before anything is looked up or kept: a topic that long is never stored.
        if msg.topic.len() > self.config.max_topic_bytes {
            tracing::info!(
                socket = self.shared.id.0,
                len = msg.topic.len(),
                "join refused: topic too long"
            );
            self.router.metrics(&msg.topic).join(JoinResult::Refused);
            let reply = Reply::error_reason(event::REASON_TOPIC_TOO_LONG);
            // The reply names the topic as sent: clients match replies by topic and ref. It
            // is written once and dropped, never kept.
            return self.reply(join_ref.as_ref(), msg.ref_.as_ref(), &msg.topic, &reply);
        }
        let payload_len = match &msg.payload {
            Payload::Json(j) => j.as_bytes().len(),
            Payload::Binary(b) => b.len(),
        };
        if payload_len > self.config.max_join_payload_bytes {
            tracing::info!(socket = self.shared.id.0, topic = %msg.topic, len = payload_len,
                "join refused: payload too large");
            self.router.metrics(&msg.topic).join(JoinResult::Refused);
            let reply = Reply::error_reason(event::REASON_JOIN_PAYLOAD_TOO_LARGE);
            return self.reply(join_ref.as_ref(), msg.ref_.as_ref(), &msg.topic, &reply);
        }
        // A duplicate join replaces the live instance; its phx_close follows the new reply.
        let replaced = match self.find(&msg.topic) {
            Some(idx) => {
                let old = self.channels.swap_remove(idx);
                let old_ref = old.join_ref.clone();
                tracing::debug!(topic = %msg.topic, "duplicate join replaces the channel");
                // What waited behind this join (from its backlog) is for the new instance.
                let backlog = self.end(old, Terminate::DuplicateJoin).await;
                Some((old_ref, backlog))
            }
            None => None,
        };
        self.join_new(&msg, join_ref).await;
        if let Some((old_ref, backlog)) = replaced {
            self.control(
                old_ref.as_ref(),
                &msg.topic,
                event::PHX_CLOSE,
                &Json::empty_object(),
            );
            self.redispatch(backlog).await;
        }
    }

    async fn join_new(&mut self, msg: &Message, join_ref: Option<Ref>) {
        let route = self.router.metrics(&msg.topic).clone();
        if !self.router.has_route(&msg.topic) {
            route.join(JoinResult::Refused);
            return self.unmatched(msg);
        }
        if self.channels.len() >= self.config.max_channels {
            route.join(JoinResult::Refused);
            let reply = Reply::error_reason(event::REASON_TOO_MANY_CHANNELS);
            return self.reply(join_ref.as_ref(), msg.ref_.as_ref(), &msg.topic, &reply);
        }
        let id = self.next_channel;
        self.next_channel += 1;
        // Pushes made while joining are held back until the join reply is out.
        let mut held = Vec::new();
        let floor = Arc::new(AtomicU64::new(0));
        let mut subscribed_early = false;
        let result = {
            let mut ctx = Context {
                socket: &self.shared,
                topic: &msg.topic,
                join_ref: join_ref.as_ref(),
                channel_id: id,
                out: &mut held,
                floor: &floor,
                subscribed: Some(&mut subscribed_early),
                msg_ref: None,
            };
            match self.router.join(&msg.topic, msg.payload.clone(), &mut ctx) {
                Some(fut) => Some(AssertUnwindSafe(fut).catch_unwind().await),
                None => None,
            }
        };
        let Some(result) = result else {
            route.join(JoinResult::Refused);
            return self.unmatched(msg);
        };
        let reply = match result {
            Ok(Ok((channel, response))) => {
                if !subscribed_early {
                    let subscribed = self.shared.pubsub.subscribe(
                        &msg.topic,
                        Subscriber {
                            socket: self.shared.id,
                            serializer: self.shared.serializer,
                            kind: SubscriberKind::Fastlane,
                            tx: self.shared.tx.clone(),
                            floor: Some(floor.clone()),
                        },
                    );
                    subscribed.await;
                }
                // Exactly: most sockets join two or three topics, and a Vec's first push
                // would make room for four (about 240 bytes unused per socket).
                self.channels.reserve_exact(1);
                self.channels.push(Joined {
                    topic: msg.topic.clone(),
                    join_ref: join_ref.clone(),
                    id,
                    floor,
                    channel: Some(channel),
                    backlog: VecDeque::new(),
                    _counted: Counted::new(route.channels()),
                });
                route.join(JoinResult::Ok);
                Reply::ok(response)
            }
            Ok(Err(JoinError::Refused(response))) => {
                tracing::info!(topic = %msg.topic, reason = ?response, "join refused");
                route.join(JoinResult::Refused);
                Reply::error(response)
            }
            Ok(Err(JoinError::Failed(err))) => {
                tracing::error!(topic = %msg.topic, %err, "join failed");
                route.join(JoinResult::Failed);
                Reply::error_reason(event::REASON_JOIN_CRASHED)
            }
            Err(panic) => {
                tracing::error!(topic = %msg.topic, panic = %panic_text(&*panic), "join panicked");
                route.join(JoinResult::Failed);
                Reply::error_reason(event::REASON_JOIN_CRASHED)
            }
        };
        let joined = reply.status == event::STATUS_OK;
        if subscribed_early && !joined {
            self.shared.pubsub.unsubscribe(&msg.topic, self.shared.id);
        }
        self.reply(join_ref.as_ref(), msg.ref_.as_ref(), &msg.topic, &reply);
        // Pushes from a join that did not succeed would name a channel that does not exist.
        if joined {
            self.out.append(&mut held);
        }
    }

    async fn leave(&mut self, msg: Message) {
        let Some(idx) = self.find(&msg.topic) else {
            // Leaving a topic that is not joined is fine (the client may have timed out).
            return self.reply(
                msg.join_ref.as_ref(),
                msg.ref_.as_ref(),
                &msg.topic,
                &Reply::ok_empty(),
            );
        };
        if is_stale(&msg, &self.channels[idx]) {
            return;
        }
        let joined = self.channels.swap_remove(idx);
        let join_ref = joined.join_ref.clone();
        self.reply(
            join_ref.as_ref(),
            msg.ref_.as_ref(),
            &msg.topic,
            &Reply::ok_empty(),
        );
        let backlog = self.end(joined, Terminate::Left).await;
        self.control(
            join_ref.as_ref(),
            &msg.topic,
            event::PHX_CLOSE,
            &Json::empty_object(),
        );
        self.redispatch(backlog).await;
    }

    /// A channel failed: drop it and tell the client with `phx_error` (ref = join_ref).
    async fn crash(&mut self, idx: usize, why: &str) {
        let joined = self.channels.swap_remove(idx);
        tracing::error!(topic = %joined.topic, socket = self.shared.id.0, error = why,
            "channel crashed");
        let (topic, join_ref) = (joined.topic.clone(), joined.join_ref.clone());
        let backlog = self.end(joined, Terminate::Crashed).await;
        self.control(
            join_ref.as_ref(),
            &topic,
            event::PHX_ERROR,
            &channel_crash_payload(),
        );
        self.redispatch(backlog).await;
    }

    /// Runs an instance's `terminate`, then unsubscribes it (a panic in `terminate` is logged
    /// only). In that order so that while a channel records that it is leaving (a presence
    /// store, say), its socket still receives the topic: nothing sent in between falls in a
    /// gap where the user is neither subscribed nor known to be away.
    /// Returns what waited for the instance (see [`Socket::redispatch`]).
    async fn end(&mut self, mut joined: Joined, reason: Terminate) -> VecDeque<Queued> {
        if let Some((channel, mut ctx)) = joined.split(&self.shared, &mut self.out) {
            let result = AssertUnwindSafe(channel.terminate(reason, &mut ctx))
                .catch_unwind()
                .await;
            if let Err(panic) = result {
                tracing::error!(topic = %joined.topic, panic = %panic_text(&*panic),
                    "channel terminate panicked");
            }
        }
        self.shared
            .pubsub
            .unsubscribe(&joined.topic, self.shared.id);
        std::mem::take(&mut joined.backlog)
    }
}

/// A message whose non-null join_ref differs from the channel's is for an earlier instance
/// of the topic and is dropped without a reply (Phoenix 1.8).
fn is_stale(msg: &Message, joined: &Joined) -> bool {
    match (&msg.join_ref, &joined.join_ref) {
        (Some(sent), Some(current)) => sent != current,
        (Some(_), None) => false,
        (None, _) => false,
    }
}
