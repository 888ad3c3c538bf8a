//! The [`Channel`] trait: what an application implements for a family of topics, and the
//! [`Context`] its callbacks use to reply, push and broadcast.
//!
//! A channel instance lives inside its socket's task: callbacks of one socket run one at a
//! time and in the order their messages arrived, so a channel needs no locking of its own
//! state. A callback that returns an error or panics "crashes" the channel: the client gets
//! `phx_error` `{"reason":"channel_crash"}` and may rejoin; the socket and its other channels
//! carry on.

use std::any::Any;
use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use plume_wire::{Frame, Payload, Ref, Serializer, event};

use crate::connect::ConnectInfo;
pub use crate::error::{BoxError, ChannelError, JoinError};
use crate::outbound::{Out, OutboundTx, SendError, SocketId};
use crate::pubsub::{Broadcast, PubSub, PubSubError, Subscriber, SubscriberKind};

/// A boxed future, as used by the type-erased channel interface.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A reply to a client message: `phx_reply` with `{"status", "response"}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The status string the client matches on (`push.receive("ok", …)`).
    pub status: Cow<'static, str>,
    /// The response payload (binary responses travel as V2 binary reply frames).
    pub response: Payload,
}

impl Reply {
    /// `ok` with a response.
    pub fn ok(response: Payload) -> Reply {
        Reply {
            status: Cow::Borrowed(event::STATUS_OK),
            response,
        }
    }

    /// `ok` with `{}`.
    pub fn ok_empty() -> Reply {
        Reply::ok(Payload::empty())
    }

    /// `error` with a response.
    pub fn error(response: Payload) -> Reply {
        Reply {
            status: Cow::Borrowed(event::STATUS_ERROR),
            response,
        }
    }

    /// `error` with `{"reason": reason}`.
    pub fn error_reason(reason: &str) -> Reply {
        Reply::error(reason_payload(reason))
    }
}

/// `{"reason": reason}`.
pub fn reason_payload(reason: &str) -> Payload {
    #[derive(serde::Serialize)]
    struct R<'a> {
        reason: &'a str,
    }
    // Serializing a struct of one string cannot fail.
    Payload::json(&R { reason }).unwrap_or_else(|_| Payload::empty())
}

/// What a `handle_in` asks the socket to do after it returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing more (the client's push will time out unless a reply is sent some other way).
    NoReply,
    /// Send this reply to the message.
    Reply(Reply),
    /// Optionally reply, then close the channel gracefully (`phx_close`, no rejoin).
    Stop(Option<Reply>),
}

impl From<Reply> for Outcome {
    fn from(reply: Reply) -> Outcome {
        Outcome::Reply(reply)
    }
}

/// Why a channel instance ends; passed to [`Channel::terminate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminate {
    /// The client sent `phx_leave`.
    Left,
    /// The channel asked to stop ([`Outcome::Stop`]).
    Stopped,
    /// A new join of the same topic on the same socket replaced it.
    DuplicateJoin,
    /// The channel failed (error or panic); it may be in an inconsistent state.
    Crashed,
    /// The socket closed.
    SocketClosed,
    /// A leave order on the socket's id topic ([`plume_wire::event::LEAVE_TOPIC`]) removed
    /// it; the client got `phx_close`.
    Removed,
}

/// An application channel for the topics of one route (for example `chat:*`).
///
/// All methods have access to a [`Context`]. `join` builds the instance; the others run for
/// that instance until it leaves, stops, crashes or its socket closes. `terminate` runs in
/// every one of those cases (after a crash too), so cleanup belongs there.
pub trait Channel: Sized + Send + 'static {
    /// State shared by all instances of the channel (stores, configuration). Given to `join`.
    type State: Send + Sync + 'static;

    /// Whether the channel reads the connect params ([`ConnectRequest::params`] through
    /// [`Context::connect_info`]). A socket keeps them for its whole life only when some
    /// route's channel does; otherwise they are dropped once the connect hook has run (a
    /// socket's params, the token among them, are most of a kilobyte).
    ///
    /// [`ConnectRequest::params`]: crate::ConnectRequest::params
    const READS_CONNECT_PARAMS: bool = false;

    /// Handles `phx_join`: build the instance and the reply response, or refuse.
    fn join(
        state: &Arc<Self::State>,
        topic: &str,
        payload: Payload,
        ctx: &mut Context<'_>,
    ) -> impl Future<Output = Result<(Self, Payload), JoinError>> + Send;

    /// Handles a client event on the joined topic.
    fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut Context<'_>,
    ) -> impl Future<Output = Result<Outcome, ChannelError>> + Send;

    /// Handles a message sent to this instance with [`Context::send_info`] or a
    /// [`ChannelHandle`]. The default ignores it.
    fn handle_info(
        &mut self,
        info: Box<dyn Any + Send>,
        ctx: &mut Context<'_>,
    ) -> impl Future<Output = Result<(), ChannelError>> + Send {
        let _ = (info, ctx);
        async { Ok(()) }
    }

    /// A message for this instance was refused before reaching `handle_in` (the socket's
    /// rate limit: `reason` is `rate_limited`); returns the reply the client gets. The default
    /// is `{"reason": reason}`. Runs on the refusal path of a flood, so it must be quick and
    /// must not wait on anything: it may push (a channel whose clients expect an event with
    /// the outcome, as chat's `message_sent`, sends it here).
    fn refused(
        &mut self,
        event: &str,
        payload: &Payload,
        reason: &str,
        ctx: &mut Context<'_>,
    ) -> Reply {
        let _ = (event, payload, ctx);
        Reply::error_reason(reason)
    }

    /// Runs once when the instance ends, whatever the reason.
    fn terminate(
        &mut self,
        reason: Terminate,
        ctx: &mut Context<'_>,
    ) -> impl Future<Output = ()> + Send {
        let _ = (reason, ctx);
        async {}
    }
}

/// What a socket knows about itself, shared with its channels' contexts.
pub struct SocketShared {
    /// This socket's id.
    pub id: SocketId,
    /// Its serializer.
    pub serializer: Serializer,
    /// What the connect step learnt (params, token, assigns).
    pub connect: Arc<ConnectInfo>,
    /// The pub/sub backend.
    pub pubsub: Arc<dyn PubSub>,
    /// The socket's own outbound queue.
    pub tx: OutboundTx,
}

/// The view a channel callback has of its socket and topic.
pub struct Context<'a> {
    pub(crate) socket: &'a SocketShared,
    pub(crate) topic: &'a str,
    pub(crate) join_ref: Option<&'a Ref>,
    pub(crate) channel_id: u64,
    pub(crate) out: &'a mut Vec<Frame>,
    /// The instance's subscription floor (see [`Out::Seq`]).
    pub(crate) floor: &'a Arc<AtomicU64>,
    /// During `join` only: whether the channel subscribed early ([`Context::subscribe`]).
    pub(crate) subscribed: Option<&'a mut bool>,
    /// During `handle_in` only: the ref of the message being handled.
    pub(crate) msg_ref: Option<&'a Ref>,
}

impl<'a> Context<'a> {
    /// The channel's topic.
    pub fn topic(&self) -> &str {
        self.topic
    }

    /// The join_ref of this instance (the one the client used to join).
    pub fn join_ref(&self) -> Option<&Ref> {
        self.join_ref
    }

    /// During `handle_in`: the ref of the client's message, for answering it later with
    /// [`Context::reply_to`] (after returning [`Outcome::NoReply`]). `None` elsewhere, and
    /// for a message sent without a ref.
    pub fn msg_ref(&self) -> Option<&Ref> {
        self.msg_ref
    }

    /// Answers the client's message `msg_ref` of this instance now (from `handle_info`, when
    /// the work the message started finished elsewhere): a `phx_reply` with this instance's
    /// join_ref, written in order with the callback's pushes.
    pub fn reply_to(&mut self, msg_ref: Option<&Ref>, reply: &Reply) {
        match self.socket.serializer.encode_reply(
            self.join_ref,
            msg_ref,
            self.topic,
            &reply.status,
            &reply.response,
        ) {
            Ok(frame) => self.out.push(frame),
            Err(err) => tracing::warn!(topic = self.topic, %err, "late reply dropped"),
        }
    }

    /// This instance's id within its socket (the address of [`Out::Info`]).
    pub fn channel_id(&self) -> u64 {
        self.channel_id
    }

    /// The socket's id.
    pub fn socket_id(&self) -> SocketId {
        self.socket.id
    }

    /// The socket's serializer.
    pub fn serializer(&self) -> Serializer {
        self.socket.serializer
    }

    /// What the connect step learnt about the client.
    pub fn connect_info(&self) -> &ConnectInfo {
        &self.socket.connect
    }

    /// The application data the connect hook attached to the socket, if it has type `T`.
    pub fn assigns<T: Any>(&self) -> Option<&T> {
        self.socket.connect.assigns.as_deref()?.downcast_ref()
    }

    /// The pub/sub backend.
    pub fn pubsub(&self) -> &Arc<dyn PubSub> {
        &self.socket.pubsub
    }

    /// Pushes an event to this client only: `[join_ref, null, topic, event, payload]`.
    /// Frames are written in the order they are pushed, before the reply of the current
    /// message. A payload the socket's serializer cannot carry (binary on V1) is logged and
    /// dropped.
    pub fn push(&mut self, event: &str, payload: &Payload) {
        match self
            .socket
            .serializer
            .encode_push(self.join_ref, self.topic, event, payload)
        {
            Ok(frame) => self.out.push(frame),
            Err(err) => tracing::warn!(topic = self.topic, event, %err, "push dropped"),
        }
    }

    /// Broadcasts to every subscriber of the topic, this client included.
    pub fn broadcast(&self, event: &str, payload: Payload) -> Result<(), PubSubError> {
        self.socket.pubsub.broadcast(Broadcast {
            topic: self.topic.into(),
            event: event.into(),
            payload,
            from: None,
            seq: None,
        })
    }

    /// Broadcasts to every subscriber of the topic except this socket.
    pub fn broadcast_from(&self, event: &str, payload: Payload) -> Result<(), PubSubError> {
        self.socket.pubsub.broadcast(Broadcast {
            topic: self.topic.into(),
            event: event.into(),
            payload,
            from: Some(self.socket.id),
            seq: None,
        })
    }

    /// The id this socket's broadcasts exclude with `from` (for building a [`Broadcast`]).
    pub fn from_self(&self) -> Option<SocketId> {
        Some(self.socket.id)
    }

    /// During `join`: subscribes this socket to the topic now rather than after the join
    /// returns, and waits until the subscription is effective cluster-wide. A channel that
    /// replays a log does this before reading it, so nothing published meanwhile is missed;
    /// live copies of what it replays are dropped by [`Context::set_floor`]. Outside `join`
    /// (already subscribed) it does nothing. If the join then fails, the socket unsubscribes.
    pub async fn subscribe(&mut self) {
        self.subscribe_as(SubscriberKind::Fastlane).await;
    }

    /// During `join`: subscribes this socket to the topic so that its broadcasts arrive in
    /// the channel's `handle_info` as a [`Broadcast`] instead of going straight to the
    /// client (Phoenix's `intercept`). For low-volume topics whose channel must act on each
    /// delivery; the fan-out fast path is not used for them.
    pub async fn intercept(&mut self) {
        let channel = self.channel_id;
        self.subscribe_as(SubscriberKind::Intercept { channel })
            .await;
    }

    async fn subscribe_as(&mut self, kind: SubscriberKind) {
        let Some(flag) = self.subscribed.as_deref_mut() else {
            return;
        };
        if *flag {
            return;
        }
        *flag = true;
        let sub = Subscriber {
            socket: self.socket.id,
            serializer: self.socket.serializer,
            kind,
            tx: self.socket.tx.clone(),
            floor: Some(self.floor.clone()),
        };
        self.socket.pubsub.subscribe(self.topic, sub).await;
    }

    /// Sets the highest seq of the topic this socket has been given (by a replay): sequenced
    /// broadcasts at or below it are not written to this socket.
    pub fn set_floor(&self, seq: u64) {
        self.floor.store(seq, Ordering::Release);
    }

    /// Sends a message to this instance's own `handle_info`; it runs after the current callback
    /// (and after the reply to a join), in order with other queued deliveries.
    pub fn send_info(&self, info: Box<dyn Any + Send>) -> Result<(), SendError> {
        self.socket.tx.send(Out::Info {
            channel: self.channel_id,
            info,
        })
    }

    /// A handle that background tasks can use to send this instance messages later.
    pub fn handle(&self) -> ChannelHandle {
        ChannelHandle {
            tx: self.socket.tx.clone(),
            channel: self.channel_id,
        }
    }
}

/// Sends messages to one channel instance's `handle_info` from anywhere. Messages for an
/// instance that has since ended are dropped.
#[derive(Clone)]
pub struct ChannelHandle {
    tx: OutboundTx,
    channel: u64,
}

impl ChannelHandle {
    /// Queues a message for the instance.
    pub fn send_info(&self, info: Box<dyn Any + Send>) -> Result<(), SendError> {
        self.tx.send(Out::Info {
            channel: self.channel,
            info,
        })
    }
}

/// The object-safe form of [`Channel`] the socket stores.
pub(crate) trait DynChannel: Send {
    fn handle_in<'a>(
        &'a mut self,
        event: &'a str,
        payload: Payload,
        ctx: &'a mut Context<'_>,
    ) -> BoxFuture<'a, Result<Outcome, ChannelError>>;
    fn handle_info<'a>(
        &'a mut self,
        info: Box<dyn Any + Send>,
        ctx: &'a mut Context<'_>,
    ) -> BoxFuture<'a, Result<(), ChannelError>>;
    fn refused(
        &mut self,
        event: &str,
        payload: &Payload,
        reason: &str,
        ctx: &mut Context<'_>,
    ) -> Reply;
    fn terminate<'a>(
        &'a mut self,
        reason: Terminate,
        ctx: &'a mut Context<'_>,
    ) -> BoxFuture<'a, ()>;
}

impl<C: Channel> DynChannel for C {
    fn handle_in<'a>(
        &'a mut self,
        event: &'a str,
        payload: Payload,
        ctx: &'a mut Context<'_>,
    ) -> BoxFuture<'a, Result<Outcome, ChannelError>> {
        Box::pin(Channel::handle_in(self, event, payload, ctx))
    }

    fn handle_info<'a>(
        &'a mut self,
        info: Box<dyn Any + Send>,
        ctx: &'a mut Context<'_>,
    ) -> BoxFuture<'a, Result<(), ChannelError>> {
        Box::pin(Channel::handle_info(self, info, ctx))
    }

    fn refused(
        &mut self,
        event: &str,
        payload: &Payload,
        reason: &str,
        ctx: &mut Context<'_>,
    ) -> Reply {
        Channel::refused(self, event, payload, reason, ctx)
    }

    fn terminate<'a>(
        &'a mut self,
        reason: Terminate,
        ctx: &'a mut Context<'_>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(Channel::terminate(self, reason, ctx))
    }
}
