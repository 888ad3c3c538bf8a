//! Channel callbacks in flight: how a socket keeps going while one of its channels waits.
//!
//! A callback that waits (a chat send on a store, say) must not stall its socket: the
//! socket's other channels, its heartbeats and its outbound queue carry on (Phoenix gets
//! this from a process per channel). So a callback does not borrow the socket: its instance
//! is taken out of its slot and runs as a `Work` future owning everything it needs
//! (`Owned`); the socket polls it once at once (a callback that does not wait finishes
//! there, at no extra cost) and otherwise keeps it among its work in flight, which the
//! connection driver polls beside the network. When it finishes, the instance goes back
//! with what it pushed ([`Done`]), its reply is written, and what arrived for it meanwhile
//! (`Queued`, in arrival order) runs next: one channel handles one message at a time, in
//! order, as before.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::thread;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use plume_wire::{Frame, Message, Ref};

use crate::channel::{ChannelError, Context, DynChannel, Outcome, SocketShared};

/// What waits for a channel whose callback is in flight.
pub(crate) enum Queued {
    /// A client message for the topic (a push, a leave, a duplicate join), already admitted
    /// by the rate limits.
    Message(Message),
    /// A push refused by the rate limit: the channel's `refused` answers it.
    Refused(Message),
    /// An [`crate::Out::Info`] for the instance.
    Info(Box<dyn Any + Send>),
    /// A leave order from the socket id topic.
    Removed,
}

/// A callback in flight.
pub(crate) type Work = BoxFuture<'static, Done>;

/// A finished callback: the instance, what it pushed, and its outcome. Hand it back to
/// [`crate::Socket::finish`].
pub struct Done {
    pub(crate) channel_id: u64,
    pub(crate) channel: Box<dyn DynChannel>,
    pub(crate) out: Vec<Frame>,
    pub(crate) what: DoneWhat,
}

/// Which callback finished, and how.
pub(crate) enum DoneWhat {
    /// `handle_in` for the message with this ref on this topic.
    In {
        ref_: Option<Ref>,
        topic: String,
        result: thread::Result<Result<Outcome, ChannelError>>,
    },
    /// `handle_info`.
    Info(thread::Result<Result<(), ChannelError>>),
}

/// What a callback needs of its instance and socket, owned so that it outlives the borrow.
pub(crate) struct Owned {
    pub(crate) shared: Arc<SocketShared>,
    pub(crate) topic: String,
    pub(crate) join_ref: Option<Ref>,
    pub(crate) channel_id: u64,
    pub(crate) floor: Arc<AtomicU64>,
}

impl Owned {
    fn context<'a>(&'a self, out: &'a mut Vec<Frame>) -> Context<'a> {
        Context {
            socket: &self.shared,
            topic: &self.topic,
            join_ref: self.join_ref.as_ref(),
            channel_id: self.channel_id,
            out,
            floor: &self.floor,
            subscribed: None,
            msg_ref: None,
        }
    }
}

/// `handle_in` of `msg` on `channel`, as a future that owns them.
pub(crate) fn handle_in(mut channel: Box<dyn DynChannel>, own: Owned, msg: Message) -> Work {
    Box::pin(async move {
        let mut out = Vec::new();
        let Message {
            event,
            payload,
            ref_,
            ..
        } = msg;
        let result = {
            let mut ctx = own.context(&mut out);
            ctx.msg_ref = ref_.as_ref();
            AssertUnwindSafe(channel.handle_in(&event, payload, &mut ctx))
                .catch_unwind()
                .await
        };
        Done {
            channel_id: own.channel_id,
            channel,
            out,
            what: DoneWhat::In {
                ref_,
                topic: own.topic,
                result,
            },
        }
    })
}

/// `handle_info` of `info` on `channel`, as a future that owns them.
pub(crate) fn handle_info(
    mut channel: Box<dyn DynChannel>,
    own: Owned,
    info: Box<dyn Any + Send>,
) -> Work {
    Box::pin(async move {
        let mut out = Vec::new();
        let result = {
            let mut ctx = own.context(&mut out);
            AssertUnwindSafe(channel.handle_info(info, &mut ctx))
                .catch_unwind()
                .await
        };
        Done {
            channel_id: own.channel_id,
            channel,
            out,
            what: DoneWhat::Info(result),
        }
    })
}
