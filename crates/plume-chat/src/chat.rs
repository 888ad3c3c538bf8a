//! [`ChatChannel`]: `chat:{chat_id}`.
//!
//! - join: members only (strict) or anyone authenticated (open, which records them as a
//!   participant); otherwise `{"reason":"unauthorized"}`. The payload may ask for recovery
//!   (`{"last_seq", "epoch"}`) and recent history (`{"history": K}`); the reply carries the
//!   log's `last_seq` and `epoch`, `recovered` when recovery was asked, and `messages` when
//!   history was. Recovered messages follow the reply as `receive_message`, oldest first,
//!   then live ones with no gap and no duplicate (the socket subscribes before the log is
//!   read, and its floor drops the live copies of what was replayed).
//!   Chat ids are at most `max_id_bytes` (`chat_id_too_long`).
//! - `send_message` `{content, mobile_ref_id}`: validated (`mobile_ref_id` at most
//!   `max_mobile_ref_id_bytes`), the sender's membership checked again (a member removed
//!   since the join gets `unauthorized`), then appended to the chat's log
//!   (which numbers it and recognises a retry of the same (user, chat, mobile_ref_id) in one
//!   atomic step). A new message goes to every other socket in the chat as
//!   `receive_message`, to each other member who has no socket in the chat as a
//!   notification (live or pending), then the sender gets `message_sent` and the reply
//!   `{message_id, seq}`. A retry is answered the same way and delivers nothing, unless the
//!   first attempt stopped before its delivery step finished: then it delivers again.
//! - `history` `{before_seq?, limit?}`: a page of older messages.
//! - `typing` `{status}`: `user_typing` to the chat's other sockets (throttled, with an
//!   automatic `stop`).
//! - `mark_read` `{seq}`: the user's read position (never back); reply `{unread}`,
//!   `room_updated` to the user's notifications topic, and
//!   `message_read` to the chat's other sockets.
//! - presence: right after every join reply the socket gets `presence_state`; its join and
//!   its end reach the chat as `presence_diff` (see [`crate::presence`]).

use std::any::Any;
use std::borrow::Cow;
use std::sync::Arc;

use plume_channels::{
    Broadcast, Channel, ChannelError, Context, JoinError, Outcome, Reply, Seq, Terminate,
};
use plume_channels::{ChannelHandle, PubSub, SocketId};
use plume_wire::{Json, Payload, Ref};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::auth::UserSession;
use crate::config::Membership;
use crate::events::*;
use crate::failure::store_reason;
use crate::state::ChatState;
use crate::store::{
    Appended, Draft, LogHead, LoggedMessage, RouteMemo, SendKey, SentRecord, StoreError, epoch_text,
};
use crate::time::{format_millis, now_millis};

/// Most messages a join's `history` or a `history` push returns.
pub const MAX_HISTORY_PAGE: u64 = 100;
/// A `history` push's page size when it names none.
pub const DEFAULT_HISTORY_PAGE: u64 = 50;

/// The `chat:{id}` channel of one socket.
pub struct ChatChannel {
    state: Arc<ChatState>,
    chat_id: String,
    topic: Arc<str>,
    user: String,
    present: bool,
    /// This socket's presence meta (its `phx_ref`) once tracked.
    presence_ref: Option<String>,
    typing: Typing,
    /// What a send's store work needs, made on the first send.
    work: Option<Arc<SendWork>>,
    /// The queue of this channel's send pipeline, made on the first send when the store
    /// takes several at once (see [`pipeline`]). Its jobs are boxed: a tokio channel
    /// allocates its slots 32 at a time whatever its capacity, and 32 inline jobs were
    /// 5 KB held by every chat socket that had sent once (49 MB of the heap with 10,000).
    sends: Option<tokio::sync::mpsc::Sender<Box<SendJob>>>,
}

/// Most sends of one channel under way at once on the embedded and Redis stores
/// ([`crate::store::Stores::sends_in_flight`]; see `pipeline` and `batch_pipeline` here).
pub const SENDS_IN_FLIGHT: usize = 16;

/// A validated send, for the channel's pipeline.
struct SendJob {
    msg_ref: Option<Ref>,
    key: SendKey,
    draft: Draft,
}

/// A send's store work finished: answered on the channel.
struct SendDone {
    msg_ref: Option<Ref>,
    mobile_ref_id: String,
    /// What was sent, or why it was refused.
    result: Result<SentRecord, &'static str>,
}

/// What a send's store work needs of its channel.
struct SendWork {
    state: Arc<ChatState>,
    chat_id: String,
    topic: Arc<str>,
    user: String,
    pubsub: Arc<dyn PubSub>,
    from: Option<SocketId>,
    /// Who was absent at the last send, while the chat's members and presence stay the same.
    route_memo: RouteMemo,
}

/// The send pipeline of one channel: the store work of its sends (the append with the
/// membership check, the broadcast, notifications) runs here, up to `in_flight` sends at
/// once, while the channel goes on with the client's next message; each answer
/// (`message_sent` and the reply) goes back to the channel in the order the sends came.
///
/// Why: a send waits for its commit (the embedded store flushes its WAL first), so a channel
/// that did one send at a time acknowledged at most one message per commit, and a client's
/// burst (a publisher with several messages in flight) cost a commit and a wake-up per
/// message; now the burst shares the writer's batch, and its broadcasts go out together.
///
/// The embedded store runs sends so (`Stores::sends_in_flight`); an in-memory append does
/// not wait, so answering it in the channel is cheaper, and Redis appends go in batches
/// ([`batch_pipeline`]). Order here: sends are started in the order they came, each first
/// polled before the next, and the embedded store queues an append at that first poll (its
/// writer's queue is FIFO), so seqs follow the sender's order. When the channel ends, the
/// queue closes; sends under way finish (committed and delivered; their answers are
/// dropped, and a client's retry is answered from the send key).
async fn pipeline(
    mut jobs: tokio::sync::mpsc::Receiver<Box<SendJob>>,
    work: Arc<SendWork>,
    handle: ChannelHandle,
    in_flight: usize,
) {
    use futures_util::{FutureExt, StreamExt};
    let work = &*work;
    let mut running = futures_util::stream::FuturesOrdered::new();
    let mut open = true;
    while open || !running.is_empty() {
        tokio::select! {
            biased;
            Some(done) = running.next(), if !running.is_empty() => {
                let _ = handle.send_info(Box::new(done));
            }
            job = jobs.recv(), if open && running.len() < in_flight => match job {
                Some(job) => {
                    let SendJob { msg_ref, key, draft } = *job;
                    running.push_back(async move {
                        // A panic in the store work answers this send as failed and leaves
                        // the pipeline (and the channel's other sends) running.
                        let result = std::panic::AssertUnwindSafe(work.run(&key, &draft))
                            .catch_unwind()
                            .await
                            .unwrap_or_else(|_| {
                                tracing::error!(chat = %work.chat_id, "send_message: the store work panicked");
                                Err(REASON_STORAGE_UNAVAILABLE)
                            });
                        SendDone {
                            msg_ref,
                            mobile_ref_id: key.mobile_ref_id,
                            result,
                        }
                    });
                }
                None => open = false,
            },
        }
    }
}

/// The send pipeline of a store that appends a channel's waiting sends together
/// ([`crate::store::Stores::batch_appends`]: Redis). One batch is appended at a time, in one
/// step that keeps the order given (for Redis, one request), while the sends of earlier
/// batches deliver and the client's next sends gather into the next batch; answers go back
/// in the order the sends came, up to `in_flight` sends under way in all.
///
/// Why not [`pipeline`]'s one append per send: separate Redis requests keep their order only
/// while the connection lives; two that wait for a reconnection go out in any order, and a
/// burst's seqs would then not follow the order sent. Why not one send at a time: each then
/// waits for its two round trips, so a publisher with several messages in flight was held to
/// about one message per round trip (cluster fan-out to 1,000 members: 140 sends/s).
async fn batch_pipeline(
    mut jobs: tokio::sync::mpsc::Receiver<Box<SendJob>>,
    work: Arc<SendWork>,
    handle: ChannelHandle,
    in_flight: usize,
) {
    use futures_util::StreamExt;
    use futures_util::future::{FusedFuture, FutureExt};
    type Batch = Vec<Box<SendJob>>;
    type BatchResult = Result<Vec<Result<Option<Appended>, StoreError>>, StoreError>;
    let work = &*work;
    let mut waiting: Batch = Vec::new();
    let mut appending = futures_util::future::Fuse::<
        futures_util::future::BoxFuture<'_, (Batch, std::thread::Result<BatchResult>)>,
    >::terminated();
    let mut appending_len = 0;
    let mut finishing = futures_util::stream::FuturesOrdered::new();
    let mut open = true;
    loop {
        if appending.is_terminated() && !waiting.is_empty() {
            let batch = std::mem::take(&mut waiting);
            appending_len = batch.len();
            appending = async move {
                let sends: Vec<(&SendKey, &Draft)> =
                    batch.iter().map(|job| (&job.key, &job.draft)).collect();
                let result =
                    std::panic::AssertUnwindSafe(work.state.stores.append_many_as_members(&sends))
                        .catch_unwind()
                        .await;
                drop(sends);
                (batch, result)
            }
            .boxed()
            .fuse();
        }
        if !open && appending.is_terminated() && finishing.is_empty() {
            return;
        }
        let room = waiting.len() + appending_len + finishing.len() < in_flight;
        tokio::select! {
            biased;
            Some(done) = finishing.next(), if !finishing.is_empty() => {
                let _ = handle.send_info(Box::new(done));
            }
            (batch, result) = &mut appending, if !appending.is_terminated() => {
                appending_len = 0;
                let results = match result {
                    Ok(Ok(results)) if results.len() == batch.len() => results,
                    failed => {
                        let reason = match &failed {
                            Ok(Ok(results)) => {
                                tracing::error!(chat = %work.chat_id, sent = batch.len(),
                                    answers = results.len(), "send_message: the store answered a batch short");
                                REASON_STORAGE_UNAVAILABLE
                            }
                            Ok(Err(err)) => work.append_failed(err),
                            Err(_) => {
                                tracing::error!(chat = %work.chat_id, "send_message: the store work panicked");
                                REASON_STORAGE_UNAVAILABLE
                            }
                        };
                        for job in batch {
                            let SendJob { msg_ref, key, .. } = *job;
                            finishing.push_back(
                                async move {
                                    SendDone { msg_ref, mobile_ref_id: key.mobile_ref_id, result: Err(reason) }
                                }
                                .boxed(),
                            );
                        }
                        continue;
                    }
                };
                // Pushed in order, and first polled in that order: each broadcast goes out
                // at its send's first poll, so local sockets and other nodes get the batch
                // in seq order.
                for (job, appended) in batch.into_iter().zip(results) {
                    let SendJob { msg_ref, key, .. } = *job;
                    finishing.push_back(
                        async move {
                            let result = std::panic::AssertUnwindSafe(work.finish(&key, appended))
                                .catch_unwind()
                                .await
                                .unwrap_or_else(|_| {
                                    tracing::error!(chat = %work.chat_id, "send_message: the store work panicked");
                                    Err(REASON_STORAGE_UNAVAILABLE)
                                });
                            SendDone { msg_ref, mobile_ref_id: key.mobile_ref_id, result }
                        }
                        .boxed(),
                    );
                }
            }
            job = jobs.recv(), if open && room => match job {
                Some(job) => waiting.push(job),
                None => open = false,
            },
        }
    }
}

impl SendWork {
    /// The append (with the membership check in the same step), then the delivery.
    async fn run(&self, key: &SendKey, draft: &Draft) -> Result<SentRecord, &'static str> {
        // Membership is checked on every send, in the same step as the append: a member
        // removed while joined, whose socket did not get (or not yet handle) the leave
        // order, cannot send.
        let appended = self.state.stores.append_as_member(key, draft).await;
        let (sent, undelivered) = self.accept(appended)?;
        // The delivery's future is boxed and owns the message: inline, it would double the
        // size of this one, which every send carries while it waits for its commit (up to
        // `SENDS_IN_FLIGHT` per chat socket), not only the ones delivering.
        if let Some(message) = undelivered {
            Box::pin(self.deliver(key, message)).await;
        }
        Ok(sent)
    }

    /// What follows an append made elsewhere (a batch's): the delivery, as in [`Self::run`].
    async fn finish(
        &self,
        key: &SendKey,
        appended: Result<Option<Appended>, StoreError>,
    ) -> Result<SentRecord, &'static str> {
        let (sent, undelivered) = self.accept(appended)?;
        if let Some(message) = undelivered {
            self.deliver(key, message).await;
        }
        Ok(sent)
    }

    /// What an append's result means: the sender's answer and the message to deliver, or
    /// the refusal.
    fn accept(
        &self,
        appended: Result<Option<Appended>, StoreError>,
    ) -> Result<(SentRecord, Option<LoggedMessage>), &'static str> {
        match appended {
            // From here the message is committed: whatever happens to its delivery, the
            // sender hears "sent", and members get it live, on recovery or from history.
            Ok(Some(appended)) => Ok(self.settle(appended)),
            Ok(None) => {
                tracing::info!(chat = %self.chat_id, user = %self.user,
                    "send_message refused: no longer a member");
                Err(REASON_UNAUTHORIZED)
            }
            Err(err) => Err(self.append_failed(&err)),
        }
    }

    /// Logs a failed append; the reason the sender is refused with.
    fn append_failed(&self, err: &StoreError) -> &'static str {
        tracing::error!(chat = %self.chat_id, user = %self.user, %err,
            timeout = err.is_timeout(), "send_message: the store refused the append");
        store_reason(err)
    }

    /// What the sender is answered with, and the message to deliver: a new one, or a
    /// retry's whose delivery did not finish.
    fn settle(&self, appended: Appended) -> (SentRecord, Option<LoggedMessage>) {
        match appended {
            Appended::New(message) => (sent_record(&message), Some(message)),
            Appended::Retry {
                sent,
                message,
                delivered,
            } => {
                let again = if delivered { None } else { message };
                if again.is_some() {
                    tracing::info!(chat = %self.chat_id, seq = sent.seq,
                        "retry of a send whose delivery did not finish; delivering again");
                }
                (sent, again)
            }
        }
    }

    /// The broadcast to the chat's other sockets, then notifications for members who are
    /// not in the chat (stored before the sender hears "sent", in one store step that also
    /// marks the send delivered). A failure here is logged, not reported to the sender: the
    /// message is in the log already, and the send key stays "not delivered" so a retry
    /// delivers again.
    async fn deliver(&self, key: &SendKey, message: LoggedMessage) {
        if let Err(err) = self.try_deliver(key, &message).await {
            tracing::error!(chat = %self.chat_id, seq = message.seq, %err,
                "delivery incomplete; the message is in the log for recovery and history");
        }
    }

    async fn try_deliver(&self, key: &SendKey, message: &LoggedMessage) -> Result<(), StoreError> {
        let broadcast = receive_broadcast(self.topic.clone(), message, self.from)?;
        if let Err(err) = self.pubsub.broadcast(broadcast) {
            // Delivered on this node; other nodes repair the gap from the log.
            tracing::warn!(chat = %self.chat_id, seq = message.seq, %err,
                "cross-node fan-out failed; other nodes will read the message from the log");
        }
        self.state
            .route_message(key, message, Some(&self.route_memo))
            .await
    }
}

/// What this socket last said about its user typing.
#[derive(Default)]
struct Typing {
    /// The status last forwarded and when (`None`: stopped).
    last: Option<(&'static str, tokio::time::Instant)>,
    /// Bumped by every forwarded status; a timeout for an older one is stale.
    generation: u64,
}

/// Sent to itself `typing_timeout` after a status was forwarded.
struct TypingTimeout(u64);

#[derive(Serialize)]
struct MessageRead<'a> {
    chat_id: &'a str,
    user_id: &'a str,
    seq: u64,
}

#[derive(Serialize)]
struct Unread {
    unread: u64,
}

#[derive(Serialize)]
struct UserTyping<'a> {
    chat_id: &'a str,
    user_id: &'a str,
    status: &'a str,
}

/// Sent to itself after the join reply: record presence once subscribed.
struct AfterJoin;

/// A message as clients see it (`receive_message`, history, recovery).
#[derive(Serialize)]
pub struct MessageView<'a> {
    chat_id: &'a str,
    content: &'a str,
    sender_id: &'a str,
    message_id: &'a str,
    timestamp: String,
    seq: u64,
}

impl<'a> MessageView<'a> {
    /// The client's view of a logged message.
    pub fn of(m: &'a LoggedMessage) -> MessageView<'a> {
        MessageView {
            chat_id: &m.chat_id,
            content: &m.content,
            sender_id: &m.sender_id,
            message_id: &m.message_id,
            timestamp: format_millis(m.ts_ms),
            seq: m.seq,
        }
    }
}

#[derive(Serialize)]
struct SendReply<'a> {
    message_id: &'a str,
    seq: u64,
}

#[derive(Serialize)]
struct MessageSent<'a> {
    mobile_ref_id: &'a str,
    status: &'static str,
    chat_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

fn json<T: Serialize>(value: &T) -> Result<Payload, ChannelError> {
    Payload::json(value).map_err(ChannelError::encode("a chat payload"))
}

/// The payload of `receive_message` for a logged message.
pub fn receive_payload(m: &LoggedMessage) -> Result<Payload, StoreError> {
    Payload::json(&MessageView::of(m)).map_err(StoreError::encode("receive_message"))
}

/// The sequenced broadcast of a logged message on its chat topic.
pub fn receive_broadcast(
    topic: Arc<str>,
    m: &LoggedMessage,
    from: Option<plume_channels::SocketId>,
) -> Result<Broadcast, StoreError> {
    static EVENT: std::sync::LazyLock<Arc<str>> =
        std::sync::LazyLock::new(|| Arc::from(RECEIVE_MESSAGE));
    Ok(Broadcast {
        topic,
        event: EVENT.clone(),
        payload: receive_payload(m)?,
        from,
        seq: Some(Seq {
            epoch: m.epoch,
            seq: m.seq,
        }),
    })
}

/// The user of the socket (set by the connect hook).
pub(crate) fn session_user(ctx: &Context<'_>) -> Result<String, JoinError> {
    ctx.assigns::<UserSession>()
        .map(|s| s.user_id.clone())
        .ok_or(JoinError::Failed(ChannelError::Internal(
            "the socket has no authenticated user",
        )))
}

/// A validated `send_message`.
struct ValidSend {
    content: String,
    mobile_ref_id: String,
}

/// Validation failure: the reason, and the mobile_ref_id if one could be read.
struct Invalid {
    reason: &'static str,
    mobile_ref_id: String,
}

/// The limits a `send_message` is checked against.
#[derive(Clone, Copy)]
struct SendLimits {
    max_chars: usize,
    max_ref_bytes: usize,
}

/// A `send_message` payload as sent: its two fields borrowed from the frame, not parsed into a
/// `serde_json::Value` (the send path reads two strings; a map of every field costs more).
#[derive(Deserialize)]
struct SendBody<'a> {
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    mobile_ref_id: Option<&'a RawValue>,
}

/// A JSON string's text (unescaped; borrowed when it has no escapes), or `None` for any other
/// JSON value.
fn json_str(raw: Option<&RawValue>) -> Option<Cow<'_, str>> {
    serde_json::from_str::<Cow<'_, str>>(raw?.get()).ok()
}

fn validate(payload: &Payload, limits: SendLimits) -> Result<ValidSend, Invalid> {
    let invalid = |reason, mobile_ref_id: &str| Invalid {
        reason,
        mobile_ref_id: mobile_ref_id.to_owned(),
    };
    let Some(text) = payload.as_json().map(|j| j.as_bytes()) else {
        return Err(invalid(REASON_INVALID_PAYLOAD, ""));
    };
    // An object only: serde would also fill the struct from an array, by position.
    let is_object = text.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let body = match serde_json::from_slice::<SendBody<'_>>(text) {
        Ok(body) if is_object => body,
        _ => return Err(invalid(REASON_INVALID_PAYLOAD, "")),
    };
    let mobile_ref_id = match json_str(body.mobile_ref_id) {
        // Not echoed back: the client sent it, and a megabyte of it helps nobody.
        Some(s) if s.len() > limits.max_ref_bytes => {
            return Err(invalid(REASON_MOBILE_REF_ID_TOO_LONG, ""));
        }
        Some(s) if !s.is_empty() => s.into_owned(),
        _ => return Err(invalid(REASON_INVALID_MOBILE_REF_ID, "")),
    };
    let content = match json_str(body.content) {
        Some(s) if !s.trim().is_empty() => s,
        _ => return Err(invalid(REASON_INVALID_CONTENT, &mobile_ref_id)),
    };
    if content.chars().count() > limits.max_chars {
        return Err(invalid(REASON_CONTENT_TOO_LONG, &mobile_ref_id));
    }
    Ok(ValidSend {
        content: content.into_owned(),
        mobile_ref_id,
    })
}

/// The payload as an object (`{}` for an empty or absent payload), or `None`.
pub(crate) fn object(payload: &Payload) -> Option<Map<String, Value>> {
    match payload.as_json()?.parse::<Value>().ok()? {
        Value::Object(obj) => Some(obj),
        Value::Null => Some(Map::new()),
        _ => None,
    }
}

/// A non-negative integer field: `Ok(None)` when absent or null, `Err` when malformed.
fn uint(obj: &Map<String, Value>, field: &str) -> Result<Option<u64>, ()> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or(()),
        Some(_) => Err(()),
    }
}

/// What a join asked for.
#[derive(Debug, PartialEq, Eq)]
struct JoinAsk {
    /// `last_seq` and `epoch` for recovery.
    recover: Option<(u64, Option<String>)>,
    /// How many recent messages to put in the reply.
    history: u64,
}

fn parse_join(payload: &Payload) -> Result<JoinAsk, &'static str> {
    let obj = object(payload).ok_or(REASON_INVALID_PAYLOAD)?;
    let last_seq = uint(&obj, "last_seq").map_err(|()| REASON_INVALID_LAST_SEQ)?;
    let epoch = match obj.get("epoch") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(REASON_INVALID_EPOCH),
    };
    let history = match uint(&obj, "history") {
        Ok(h) if h.unwrap_or(0) <= MAX_HISTORY_PAGE => h.unwrap_or(0),
        _ => return Err(REASON_INVALID_HISTORY),
    };
    Ok(JoinAsk {
        recover: last_seq.map(|n| (n, epoch)),
        history,
    })
}

/// Whether a client that has everything up to `last_seq` of `epoch` can be brought up to
/// date by replaying the log: same epoch (a client that has seen nothing may omit it), the
/// messages after `last_seq` all still kept, and not more than `limit` of them.
fn can_recover(head: &LogHead, last_seq: u64, epoch: Option<&str>, limit: usize) -> bool {
    let same_epoch = match epoch {
        Some(e) => e == epoch_text(head.epoch),
        None => last_seq == 0,
    };
    same_epoch
        && last_seq <= head.last_seq
        && last_seq + 1 >= head.first_seq
        && head.last_seq - last_seq <= limit as u64
}

#[derive(Serialize)]
struct JoinReply<'a> {
    last_seq: u64,
    epoch: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    recovered: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<Vec<MessageView<'a>>>,
}

impl ChatChannel {
    fn send_limits(&self) -> SendLimits {
        SendLimits {
            max_chars: self.state.config.max_message_chars,
            max_ref_bytes: self.state.config.max_mobile_ref_id_bytes,
        }
    }

    /// The `message_sent` of a refused send, pushed before its error reply.
    fn push_refusal(
        &self,
        ctx: &mut Context<'_>,
        reason: &str,
        mobile_ref_id: &str,
    ) -> Result<(), ChannelError> {
        let sent = MessageSent {
            mobile_ref_id,
            status: STATUS_ERROR,
            chat_id: &self.chat_id,
            message_id: None,
            seq: None,
            timestamp: None,
            reason: Some(reason),
        };
        ctx.push(MESSAGE_SENT, &json(&sent)?);
        Ok(())
    }

    fn refuse_send(
        &self,
        ctx: &mut Context<'_>,
        reason: &str,
        mobile_ref_id: &str,
    ) -> Result<Outcome, ChannelError> {
        self.push_refusal(ctx, reason, mobile_ref_id)?;
        Ok(Reply::error_reason(reason).into())
    }

    async fn send_message(
        &mut self,
        payload: Payload,
        ctx: &mut Context<'_>,
    ) -> Result<Outcome, ChannelError> {
        let send = match validate(&payload, self.send_limits()) {
            Ok(send) => send,
            Err(invalid) => return self.refuse_send(ctx, invalid.reason, &invalid.mobile_ref_id),
        };
        let key = SendKey {
            user: self.user.clone(),
            chat: self.chat_id.clone(),
            mobile_ref_id: send.mobile_ref_id,
        };
        let draft = Draft {
            message_id: uuid::Uuid::now_v7().to_string(),
            ts_ms: now_millis(),
            content: send.content,
        };
        let work = self
            .work
            .get_or_insert_with(|| {
                Arc::new(SendWork {
                    state: self.state.clone(),
                    chat_id: self.chat_id.clone(),
                    topic: self.topic.clone(),
                    user: self.user.clone(),
                    pubsub: ctx.pubsub().clone(),
                    from: ctx.from_self(),
                    route_memo: RouteMemo::default(),
                })
            })
            .clone();
        let in_flight = self.state.stores.sends_in_flight;
        if in_flight <= 1 {
            // One at a time, answered here: an in-memory append does not wait.
            let result = work.run(&key, &draft).await;
            return Ok(self.answer_send(result, &key.mobile_ref_id, ctx)?.into());
        }
        let sends = self
            .sends
            .get_or_insert_with(|| {
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                if self.state.stores.batch_appends {
                    tokio::spawn(batch_pipeline(rx, work, ctx.handle(), in_flight));
                } else {
                    tokio::spawn(pipeline(rx, work, ctx.handle(), in_flight));
                }
                tx
            })
            .clone();
        let mobile_ref_id = key.mobile_ref_id.clone();
        let job = Box::new(SendJob {
            msg_ref: ctx.msg_ref().cloned(),
            key,
            draft,
        });
        // Waits while the pipeline is full: the channel's next messages wait with it.
        if sends.send(job).await.is_err() {
            return self.refuse_send(ctx, REASON_STORAGE_UNAVAILABLE, &mobile_ref_id);
        }
        Ok(Outcome::NoReply)
    }

    /// Pushes the `message_sent` of a send whose store work finished; returns its reply.
    fn answer_send(
        &self,
        result: Result<SentRecord, &'static str>,
        mobile_ref_id: &str,
        ctx: &mut Context<'_>,
    ) -> Result<Reply, ChannelError> {
        let sent = match result {
            Ok(sent) => sent,
            Err(reason) => {
                self.push_refusal(ctx, reason, mobile_ref_id)?;
                return Ok(Reply::error_reason(reason));
            }
        };
        let timestamp = format_millis(sent.ts_ms);
        let ack = MessageSent {
            mobile_ref_id,
            status: STATUS_SENT,
            chat_id: &self.chat_id,
            message_id: Some(&sent.message_id),
            seq: Some(sent.seq),
            timestamp: Some(&timestamp),
            reason: None,
        };
        ctx.push(MESSAGE_SENT, &json(&ack)?);
        let reply = SendReply {
            message_id: &sent.message_id,
            seq: sent.seq,
        };
        Ok(Reply::ok(json(&reply)?))
    }

    /// `typing` `{"status"}`: forwarded to the chat's other sockets as `user_typing`, at most
    /// once per `typing_throttle` for the same status; a `stop` follows by itself after
    /// `typing_timeout` without a new event. Not stored.
    fn typing(
        &mut self,
        payload: &Payload,
        ctx: &mut Context<'_>,
    ) -> Result<Outcome, ChannelError> {
        // Borrowed: a typing push may come before every message, so it is read without
        // building a map (unknown fields are skipped, an escaped status still matches).
        #[derive(Deserialize)]
        struct TypingPush<'a> {
            #[serde(borrow)]
            status: Option<std::borrow::Cow<'a, str>>,
        }
        let status = payload
            .as_json()
            .and_then(|json| serde_json::from_slice::<TypingPush<'_>>(json.as_bytes()).ok())
            .and_then(|push| push.status)
            .and_then(|s| TYPING_STATUSES.iter().copied().find(|t| *t == s));
        let Some(status) = status else {
            return Ok(Reply::error_reason(REASON_INVALID_TYPING_STATUS).into());
        };
        let now = tokio::time::Instant::now();
        let throttled = matches!(self.typing.last, Some((last, at))
            if last == status && now.duration_since(at) < self.state.config.typing_throttle);
        let repeat_stop = status == TYPING_STOP && self.typing.last.is_none();
        if !throttled && !repeat_stop {
            self.forward_typing(status, ctx)?;
            if status != TYPING_STOP {
                let (handle, generation) = (ctx.handle(), self.typing.generation);
                let wait = self.state.config.typing_timeout;
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    let _ = handle.send_info(Box::new(TypingTimeout(generation)));
                });
            }
        }
        Ok(Reply::ok_empty().into())
    }

    fn forward_typing(
        &mut self,
        status: &'static str,
        ctx: &mut Context<'_>,
    ) -> Result<(), ChannelError> {
        self.typing.generation += 1;
        self.typing.last = (status != TYPING_STOP).then(|| (status, tokio::time::Instant::now()));
        let event = UserTyping {
            chat_id: &self.chat_id,
            user_id: &self.user,
            status,
        };
        if let Err(err) = ctx.broadcast_from(USER_TYPING, json(&event)?) {
            tracing::debug!(chat = %self.chat_id, %err, "user_typing not fanned out to other nodes");
        }
        Ok(())
    }

    /// `mark_read` `{"seq": N}`: the user has read the chat up to N (a position that never
    /// moves back). Reply `{"unread": n}`; the chat's other sockets get `message_read`.
    async fn mark_read(
        &self,
        payload: &Payload,
        ctx: &mut Context<'_>,
    ) -> Result<Outcome, ChannelError> {
        let seq = match object(payload).map(|o| uint(&o, "seq")) {
            Some(Ok(Some(seq))) if seq > 0 => seq,
            _ => return Ok(Reply::error_reason(REASON_INVALID_SEQ).into()),
        };
        let stores = &self.state.stores;
        let unavailable = |err: StoreError| {
            tracing::error!(chat = %self.chat_id, %err, "mark_read: store unavailable");
            Ok(Reply::error_reason(store_reason(&err)).into())
        };
        let head = match stores.log.head(&self.chat_id).await {
            Ok(head) => head,
            Err(err) => return unavailable(err),
        };
        if seq > head.last_seq {
            return Ok(Reply::error_reason(REASON_INVALID_SEQ).into());
        }
        let at = match stores.reads.mark_read(&self.user, &self.chat_id, seq).await {
            Ok(at) => at,
            Err(err) => return unavailable(err),
        };
        let unread = match stores.log.count_unread(&self.chat_id, at, &self.user).await {
            Ok(n) => n,
            Err(err) => return unavailable(err),
        };
        let read = MessageRead {
            chat_id: &self.chat_id,
            user_id: &self.user,
            seq: at,
        };
        if let Err(err) = ctx.broadcast_from(MESSAGE_READ, json(&read)?) {
            tracing::debug!(chat = %self.chat_id, %err, "message_read not fanned out to other nodes");
        }
        // The user's rooms list, on every device, shows the new unread count.
        self.state.spawn_room_updated(&self.user, &self.chat_id);
        Ok(Reply::ok(json(&Unread { unread })?).into())
    }

    /// `presence_state` (with this channel's join_ref): the chat's whole roster.
    async fn push_presence_state(&self, ctx: &mut Context<'_>) -> Result<(), ChannelError> {
        let state = self
            .state
            .presence
            .state(&self.chat_id)
            .await
            .map_err(|e| ChannelError::failed("reading the presence state", e))?;
        ctx.push(PRESENCE_STATE, &state);
        Ok(())
    }

    async fn history(&self, payload: Payload) -> Result<Outcome, ChannelError> {
        let Some(obj) = object(&payload) else {
            return Ok(Reply::error_reason(REASON_INVALID_PAYLOAD).into());
        };
        let before = match uint(&obj, "before_seq") {
            Ok(Some(0)) | Err(()) => {
                return Ok(Reply::error_reason(REASON_INVALID_BEFORE_SEQ).into());
            }
            Ok(b) => b,
        };
        let limit = match uint(&obj, "limit") {
            Ok(None) => DEFAULT_HISTORY_PAGE,
            Ok(Some(n)) if (1..=MAX_HISTORY_PAGE).contains(&n) => n,
            _ => return Ok(Reply::error_reason(REASON_INVALID_LIMIT).into()),
        };
        plume_channels::metrics::metrics().history_read("push");
        match history_page(&self.state, &self.chat_id, before, limit).await {
            Ok(page) => Ok(Reply::ok(json(&page)?).into()),
            Err(err) => {
                tracing::error!(chat = %self.chat_id, %err, "history: log unavailable");
                Ok(Reply::error_reason(store_reason(&err)).into())
            }
        }
    }
}

fn sent_record(m: &LoggedMessage) -> SentRecord {
    SentRecord {
        message_id: m.message_id.clone(),
        seq: m.seq,
        ts_ms: m.ts_ms,
    }
}

/// A page of history: `{"messages": [...oldest first], "has_more": bool}`, shared by the
/// `history` push and the HTTP API.
pub async fn history_page(
    state: &ChatState,
    chat: &str,
    before: Option<u64>,
    limit: u64,
) -> Result<Value, StoreError> {
    let limit = limit.min(MAX_HISTORY_PAGE) as usize;
    // One more than asked tells whether there is more.
    let mut messages = state.stores.log.before(chat, before, limit + 1).await?;
    let has_more = messages.len() > limit;
    if has_more {
        messages.remove(0);
    }
    let views: Vec<MessageView<'_>> = messages.iter().map(MessageView::of).collect();
    Ok(serde_json::json!({ "messages": views, "has_more": has_more }))
}

impl Channel for ChatChannel {
    type State = ChatState;

    async fn join(
        state: &Arc<ChatState>,
        topic: &str,
        payload: Payload,
        ctx: &mut Context<'_>,
    ) -> Result<(ChatChannel, Payload), JoinError> {
        let chat_id = topic.strip_prefix(CHAT_PREFIX).unwrap_or("");
        if chat_id.is_empty() {
            return Err(JoinError::reason(REASON_INVALID_TOPIC));
        }
        if chat_id.len() > state.config.max_id_bytes {
            return Err(JoinError::reason(REASON_CHAT_ID_TOO_LONG));
        }
        let ask = parse_join(&payload).map_err(JoinError::reason)?;
        let user = session_user(ctx)?;
        let membership = &state.stores.membership;
        let allowed = match state.config.membership {
            Membership::Strict => membership.is_member(chat_id, &user).await,
            Membership::Open => membership.add(chat_id, &user).await.map(|()| true),
        };
        let unavailable = |what: &str, err: StoreError| {
            tracing::error!(chat = chat_id, %user, %err, "join: {what} unavailable");
            JoinError::reason(store_reason(&err))
        };
        match allowed {
            Ok(true) => {}
            Ok(false) => return Err(JoinError::reason(REASON_UNAUTHORIZED)),
            Err(err) => return Err(unavailable("membership", err)),
        }
        // Subscribed before the log is read: a message appended after the read is published
        // after this point, so it arrives live; one appended before is in what we read.
        ctx.subscribe().await;
        let log = &state.stores.log;
        let head = log.head(chat_id).await.map_err(|e| unavailable("log", e))?;
        let mut floor = head.last_seq;
        let mut recovered = None;
        if let Some((last_seq, epoch)) = &ask.recover {
            let ok = can_recover(
                &head,
                *last_seq,
                epoch.as_deref(),
                state.config.recovery_limit,
            );
            if ok && *last_seq < head.last_seq {
                // A little past the head: messages appended since the head was read come
                // in this read rather than live (the floor then drops their live copies).
                let want = (head.last_seq - last_seq) as usize + 64;
                let missed = log
                    .after(chat_id, *last_seq, want)
                    .await
                    .map_err(|e| unavailable("log", e))?;
                for m in &missed {
                    let payload = receive_payload(m).map_err(|e| unavailable("log", e))?;
                    ctx.push(RECEIVE_MESSAGE, &payload);
                    floor = floor.max(m.seq);
                }
            }
            recovered = Some(ok);
            plume_channels::metrics::metrics().recovery(ok);
        }
        let recent = if ask.history > 0 {
            plume_channels::metrics::metrics().history_read("join");
            log.before(chat_id, Some(floor + 1), ask.history as usize)
                .await
                .map_err(|e| unavailable("log", e))?
        } else {
            Vec::new()
        };
        ctx.set_floor(floor);
        ctx.pubsub()
            .registry()
            .start_seq(topic, head.epoch, head.last_seq);
        ctx.send_info(Box::new(AfterJoin))
            .map_err(ChannelError::queue("the after-join step"))?;
        let reply = JoinReply {
            last_seq: head.last_seq,
            epoch: epoch_text(head.epoch),
            recovered,
            messages: (ask.history > 0).then(|| recent.iter().map(MessageView::of).collect()),
        };
        let reply = Payload::json(&reply).map_err(ChannelError::encode("the join reply"))?;
        let channel = ChatChannel {
            state: state.clone(),
            chat_id: chat_id.to_owned(),
            topic: topic.into(),
            user,
            present: false,
            presence_ref: None,
            typing: Typing::default(),
            work: None,
            sends: None,
        };
        Ok((channel, reply))
    }

    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut Context<'_>,
    ) -> Result<Outcome, ChannelError> {
        match event {
            SEND_MESSAGE => self.send_message(payload, ctx).await,
            HISTORY => self.history(payload).await,
            TYPING => self.typing(&payload, ctx),
            MARK_READ => self.mark_read(&payload, ctx).await,
            _ => Ok(Reply::error_reason(REASON_UNKNOWN_EVENT).into()),
        }
    }

    /// A rate-limited `send_message` is answered like every other refused send: a
    /// `message_sent` with status `error` (and the `mobile_ref_id`, when it is one the
    /// client may use), then the error reply. Read with a borrowed struct: no store call, no
    /// copy of the payload.
    fn refused(
        &mut self,
        event: &str,
        payload: &Payload,
        reason: &str,
        ctx: &mut Context<'_>,
    ) -> Reply {
        if event == SEND_MESSAGE {
            #[derive(serde::Deserialize)]
            struct Ref<'a> {
                #[serde(borrow, default)]
                mobile_ref_id: Option<std::borrow::Cow<'a, str>>,
            }
            let mobile_ref_id = payload
                .as_json()
                .and_then(|j| serde_json::from_slice::<Ref<'_>>(j.as_bytes()).ok())
                .and_then(|r| r.mobile_ref_id)
                .filter(|r| r.len() <= self.state.config.max_mobile_ref_id_bytes)
                .unwrap_or_default();
            if let Err(err) = self.push_refusal(ctx, reason, &mobile_ref_id) {
                tracing::warn!(chat = %self.chat_id, %err, "message_sent of a refusal dropped");
            }
        }
        Reply::error_reason(reason)
    }

    async fn handle_info(
        &mut self,
        info: Box<dyn Any + Send>,
        ctx: &mut Context<'_>,
    ) -> Result<(), ChannelError> {
        let info = match info.downcast::<SendDone>() {
            Ok(done) => {
                let reply = self.answer_send(done.result, &done.mobile_ref_id, ctx)?;
                ctx.reply_to(done.msg_ref.as_ref(), &reply);
                return Ok(());
            }
            Err(info) => info,
        };
        if let Some(TypingTimeout(generation)) = info.downcast_ref::<TypingTimeout>() {
            if *generation == self.typing.generation && self.typing.last.is_some() {
                self.forward_typing(TYPING_STOP, ctx)?;
            }
            return Ok(());
        }
        if info.is::<crate::presence::Resync>() && self.presence_ref.is_some() {
            return self.push_presence_state(ctx).await;
        }
        if info.is::<AfterJoin>() && !self.present {
            // Subscribed by now: from here on this user gets the chat's messages live, so
            // they stop being notified about it.
            self.state
                .stores
                .presence
                .enter_chat(&self.user, &self.chat_id, ctx.socket_id().0)
                .await
                .map_err(|e| ChannelError::failed("recording the user in the chat", e))?;
            self.present = true;
            let members = self
                .state
                .stores
                .membership
                .count_members(std::slice::from_ref(&self.chat_id))
                .await
                .map_err(|e| ChannelError::failed("counting members for presence", e))?;
            let limit = self.state.config.presence_max_members;
            if members.first().is_some_and(|n| *n > limit) {
                // Too big to track: the helper still syncs, to an empty list.
                tracing::debug!(chat = %self.chat_id, limit, "presence not tracked: chat too big");
                ctx.push(PRESENCE_STATE, &Payload::Json(Json::empty_object()));
                return Ok(());
            }
            // Tracked before the state is read, so the joiner finds itself in it.
            let device = match ctx.assigns::<UserSession>() {
                Some(s) if !s.device_unique_id.is_empty() => s.device_unique_id.clone(),
                _ => self.state.presence.anonymous_device(ctx.socket_id()),
            };
            let meta = self
                .state
                .presence
                .track(&self.chat_id, &self.user, &device, ctx.handle())
                .await
                .map_err(|e| ChannelError::failed("tracking presence", e))?;
            self.presence_ref = Some(meta.phx_ref);
            self.push_presence_state(ctx).await?;
        }
        Ok(())
    }

    async fn terminate(&mut self, _reason: Terminate, ctx: &mut Context<'_>) {
        if self.typing.last.is_some() {
            let _ = self.forward_typing(TYPING_STOP, ctx);
        }
        if let Some(phx_ref) = self.presence_ref.take() {
            self.state
                .presence
                .untrack(&self.chat_id, &self.user, &phx_ref)
                .await;
        }
        if self.present
            && let Err(err) = self
                .state
                .stores
                .presence
                .leave_chat(&self.user, &self.chat_id, ctx.socket_id().0)
                .await
        {
            tracing::error!(chat = %self.chat_id, user = %self.user, %err, "leave_chat failed");
        }
    }
}

/// The payload checks of `phx_join` and `send_message` without a channel around them, for
/// the fuzz targets in `fuzz/`. Not part of Plume's API. An error is the reply reason.
#[doc(hidden)]
pub mod decode {
    use plume_wire::Payload;

    /// What a join asks to recover from: `(last_seq, epoch)`.
    pub type Recover = (u64, Option<String>);

    /// A `phx_join` payload: `(recover, history)`.
    pub fn join(payload: &Payload) -> Result<(Option<Recover>, u64), &'static str> {
        super::parse_join(payload).map(|ask| (ask.recover, ask.history))
    }

    /// A `send_message` payload: `(content, mobile_ref_id)`, or the reason and the
    /// mobile_ref_id the error reply carries. `max_chars` bounds the content and
    /// `max_ref_bytes` the mobile_ref_id.
    pub fn send(
        payload: &Payload,
        max_chars: usize,
        max_ref_bytes: usize,
    ) -> Result<(String, String), (&'static str, String)> {
        let limits = super::SendLimits {
            max_chars,
            max_ref_bytes,
        };
        super::validate(payload, limits)
            .map(|v| (v.content, v.mobile_ref_id))
            .map_err(|e| (e.reason, e.mobile_ref_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use plume_wire::Json;

    fn payload(s: &str) -> Payload {
        Payload::Json(
            Json::from_text(Bytes::copy_from_slice(s.as_bytes()))
                .unwrap_or_else(|_| Json::empty_object()),
        )
    }

    fn limits(max: usize) -> SendLimits {
        SendLimits {
            max_chars: max,
            max_ref_bytes: 8,
        }
    }

    fn reason(p: &str, max: usize) -> &'static str {
        match validate(&payload(p), limits(max)) {
            Ok(_) => "ok",
            Err(i) => i.reason,
        }
    }

    #[test]
    fn join_payload_reasons() {
        let ask = |p: &str| parse_join(&payload(p));
        assert_eq!(
            ask("{}"),
            Ok(JoinAsk {
                recover: None,
                history: 0
            })
        );
        assert_eq!(
            ask(r#"{"last_seq":3,"epoch":"e","history":100}"#),
            Ok(JoinAsk {
                recover: Some((3, Some("e".into()))),
                history: 100
            })
        );
        assert_eq!(ask(r#"{"last_seq":-1}"#), Err(REASON_INVALID_LAST_SEQ));
        assert_eq!(ask(r#"{"last_seq":"3"}"#), Err(REASON_INVALID_LAST_SEQ));
        assert_eq!(ask(r#"{"last_seq":1.5}"#), Err(REASON_INVALID_LAST_SEQ));
        assert_eq!(
            ask(r#"{"last_seq":1,"epoch":7}"#),
            Err(REASON_INVALID_EPOCH)
        );
        assert_eq!(ask(r#"{"history":101}"#), Err(REASON_INVALID_HISTORY));
        assert_eq!(ask(r#"{"history":true}"#), Err(REASON_INVALID_HISTORY));
        assert_eq!(ask("[1]"), Err(REASON_INVALID_PAYLOAD));
    }

    #[test]
    fn recovery_rule() {
        let head = LogHead {
            epoch: 5,
            last_seq: 20,
            first_seq: 11,
        };
        let e = epoch_text(5);
        assert!(can_recover(&head, 20, Some(&e), 5));
        assert!(can_recover(&head, 15, Some(&e), 5));
        assert!(!can_recover(&head, 14, Some(&e), 5), "over the limit");
        assert!(can_recover(&head, 10, Some(&e), 100), "first kept is 11");
        assert!(!can_recover(&head, 9, Some(&e), 100), "10 was trimmed");
        assert!(!can_recover(&head, 15, Some("other"), 100), "another epoch");
        assert!(!can_recover(&head, 21, Some(&e), 100), "ahead of the log");
        assert!(
            !can_recover(&head, 0, None, 100),
            "0 without epoch, but trimmed"
        );
        let fresh = LogHead {
            epoch: 5,
            last_seq: 3,
            first_seq: 1,
        };
        assert!(can_recover(&fresh, 0, None, 100));
        assert!(
            !can_recover(&fresh, 1, None, 100),
            "an epoch is needed past 0"
        );
    }

    #[test]
    fn validation_reasons() {
        assert_eq!(reason(r#"{"content":"hi","mobile_ref_id":"r"}"#, 10), "ok");
        assert_eq!(reason(r#""str""#, 10), REASON_INVALID_PAYLOAD);
        // An array is not an object, even one serde could read by position.
        assert_eq!(reason(r#"["hi","r"]"#, 10), REASON_INVALID_PAYLOAD);
        assert_eq!(reason(r#" [null,null]"#, 10), REASON_INVALID_PAYLOAD);
        // Escapes are read (the text is then owned, not borrowed).
        assert_eq!(
            reason(
                r#"{"content":"h\u00e9","mobile_ref_id":"r\n","extra":[1,{"a":2}]}"#,
                10
            ),
            "ok"
        );
        assert_eq!(
            reason(r#"{"content":"hi"}"#, 10),
            REASON_INVALID_MOBILE_REF_ID
        );
        assert_eq!(
            reason(r#"{"content":"hi","mobile_ref_id":""}"#, 10),
            REASON_INVALID_MOBILE_REF_ID
        );
        assert_eq!(
            reason(r#"{"content":"hi","mobile_ref_id":5}"#, 10),
            REASON_INVALID_MOBILE_REF_ID
        );
        assert_eq!(
            reason(r#"{"content":"hi","mobile_ref_id":"12345678"}"#, 10),
            "ok"
        );
        assert_eq!(
            reason(r#"{"content":"hi","mobile_ref_id":"123456789"}"#, 10),
            REASON_MOBILE_REF_ID_TOO_LONG
        );
        assert_eq!(
            reason(r#"{"content":"","mobile_ref_id":"r"}"#, 10),
            REASON_INVALID_CONTENT
        );
        assert_eq!(
            reason(r#"{"content":"  ","mobile_ref_id":"r"}"#, 10),
            REASON_INVALID_CONTENT
        );
        assert_eq!(
            reason(r#"{"content":7,"mobile_ref_id":"r"}"#, 10),
            REASON_INVALID_CONTENT
        );
        // Characters, not bytes: ten 'é' are 20 bytes but 10 characters.
        assert_eq!(
            reason(r#"{"content":"éééééééééé","mobile_ref_id":"r"}"#, 10),
            "ok"
        );
        assert_eq!(
            reason(r#"{"content":"ééééééééééé","mobile_ref_id":"r"}"#, 10),
            REASON_CONTENT_TOO_LONG
        );
        assert_eq!(
            match validate(&Payload::Binary(Bytes::from_static(b"x")), limits(10)) {
                Ok(_) => "ok",
                Err(i) => i.reason,
            },
            REASON_INVALID_PAYLOAD
        );
    }

    /// A send waiting for its commit carries this future (up to `SENDS_IN_FLIGHT` of them per
    /// chat socket), so it stays small: 1,008 bytes in a release build while the delivery
    /// was inline, 216 since it is boxed.
    #[test]
    fn a_send_waiting_for_its_commit_stays_small() {
        let config = crate::ChatConfig::default();
        let stores = crate::Stores::memory(config.retention());
        let pubsub: Arc<dyn PubSub> = Arc::new(plume_channels::LocalPubSub::new());
        let state = crate::ChatService::new(config, stores, pubsub.clone()).state;
        let work = SendWork {
            state,
            chat_id: "c".into(),
            topic: Arc::from("chat:c"),
            user: "u".into(),
            pubsub,
            from: None,
            route_memo: RouteMemo::default(),
        };
        let key = SendKey {
            user: "u".into(),
            chat: "c".into(),
            mobile_ref_id: "r".into(),
        };
        let draft = Draft {
            message_id: "m".into(),
            ts_ms: 0,
            content: "hi".into(),
        };
        let size = std::mem::size_of_val(&work.run(&key, &draft));
        assert!(size <= 512, "a send's store work grew to {size} bytes");
    }
}
