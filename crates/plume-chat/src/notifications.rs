//! [`NotificationsChannel`]: `notifications:{user_id}` (and the alias `notification:{user_id}`).
//!
//! Only the token's own user may join. Right after the join reply the channel records the
//! user as reachable, then reads the user's pending notifications and pushes them oldest
//! first, each as `pending_notification`, then all together once as `pending_notifications`
//! `{"notifications":[…]}`. Nothing is pushed when nothing was pending. They are deleted
//! only once those frames were written to the socket: a socket that dies before gets them
//! again on its next join (at least once; two devices joining at once may both get them).
//!
//! Live notifications are intercepted (they reach `handle_info`, not the fast path): the
//! channel pushes `new_notification` and, once the frame is written, removes the copy the
//! sender stored as pending for this user (see [`ChatState::notify_all`] and
//! [`ChatState::route_message`]).

use std::any::Any;
use std::sync::Arc;

use plume_channels::{
    Broadcast, Channel, ChannelError, Context, JoinError, Outcome, Reply, Terminate,
};
use plume_wire::Payload;

use crate::chat::session_user;
use crate::events::*;
use crate::failure::store_reason;
use crate::rooms::{Cursor, ROOMS_PAGE};
use crate::state::ChatState;
use crate::store::{Notification, PendingItem};

/// The notifications channel of one socket.
pub struct NotificationsChannel {
    state: Arc<ChatState>,
    user: String,
    present: bool,
}

/// Sent to itself after the join reply.
struct AfterJoin;

/// Sent to itself after pushing pending notifications up to this id: it is handled after
/// the driver wrote those frames, so they can be deleted.
struct PendingWritten(u64);

/// Sent to itself after pushing a live notification: handled after the frame was written.
struct LiveWritten(PendingItem);

/// A `list_rooms` request.
#[derive(Debug, PartialEq, Eq)]
pub struct ListRooms {
    /// Rooms after this position (from the first when `None`).
    pub before: Option<Cursor>,
    /// At most this many, 1 to [`ROOMS_PAGE`].
    pub limit: usize,
}

/// Parses `list_rooms` `{"before": cursor?, "limit": n?}` (an empty payload asks for the
/// first page); the error is the reply's reason.
pub fn parse_list_rooms(payload: &Payload, max_id_bytes: usize) -> Result<ListRooms, &'static str> {
    let mut ask = ListRooms {
        before: None,
        limit: ROOMS_PAGE,
    };
    let Some(obj) = crate::chat::object(payload) else {
        return Err(REASON_INVALID_PAYLOAD);
    };
    match obj.get("before") {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::String(text)) => {
            ask.before = Some(Cursor::decode(text, max_id_bytes).ok_or(REASON_INVALID_CURSOR)?);
        }
        Some(_) => return Err(REASON_INVALID_CURSOR),
    }
    match obj.get("limit") {
        None | Some(serde_json::Value::Null) => {}
        Some(v) => match v.as_u64() {
            Some(n) if (1..=ROOMS_PAGE as u64).contains(&n) => ask.limit = n as usize,
            _ => return Err(REASON_INVALID_LIMIT),
        },
    }
    Ok(ask)
}

/// The stored item a live `new_notification` stands for.
fn item_of(payload: &Payload) -> Option<PendingItem> {
    let n: Notification = serde_json::from_slice(payload.as_json()?.as_bytes()).ok()?;
    Some(match n.seq {
        Some(seq) => PendingItem::Message {
            chat_id: n.chat_id,
            seq,
        },
        None => PendingItem::Inline(n),
    })
}

impl Channel for NotificationsChannel {
    type State = ChatState;

    async fn join(
        state: &Arc<ChatState>,
        topic: &str,
        _payload: Payload,
        ctx: &mut Context<'_>,
    ) -> Result<(NotificationsChannel, Payload), JoinError> {
        let wanted = topic
            .strip_prefix(NOTIFICATIONS_PREFIX)
            .or_else(|| topic.strip_prefix(NOTIFICATION_ALIAS_PREFIX))
            .unwrap_or("");
        if wanted.is_empty() {
            return Err(JoinError::reason(REASON_INVALID_TOPIC));
        }
        let user = session_user(ctx)?;
        if wanted != user {
            return Err(JoinError::reason(REASON_UNAUTHORIZED));
        }
        // Subscribed before the rooms are read: a room_updated published after the read
        // arrives live.
        ctx.intercept().await;
        let rooms = state
            .rooms_page(&user, None, ROOMS_PAGE, true)
            .await
            .map_err(|err| {
                tracing::error!(%user, %err, "notifications join: rooms unavailable");
                JoinError::reason(store_reason(&err))
            })?;
        let reply = Payload::json(&rooms).map_err(ChannelError::encode("the join reply"))?;
        ctx.send_info(Box::new(AfterJoin))
            .map_err(ChannelError::queue("the after-join step"))?;
        let channel = NotificationsChannel {
            state: state.clone(),
            user,
            present: false,
        };
        Ok((channel, reply))
    }

    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        _ctx: &mut Context<'_>,
    ) -> Result<Outcome, ChannelError> {
        if event != LIST_ROOMS {
            return Ok(Reply::error_reason(REASON_UNKNOWN_EVENT).into());
        }
        let ask = match parse_list_rooms(&payload, self.state.config.max_id_bytes) {
            Ok(ask) => ask,
            Err(reason) => return Ok(Reply::error_reason(reason).into()),
        };
        match self
            .state
            .rooms_page(&self.user, ask.before.as_ref(), ask.limit, true)
            .await
        {
            Ok(page) => Ok(Reply::ok(
                Payload::json(&page).map_err(ChannelError::encode("the rooms page"))?,
            )
            .into()),
            Err(err) => {
                tracing::error!(user = %self.user, %err, "list_rooms: store unavailable");
                Ok(Reply::error_reason(store_reason(&err)).into())
            }
        }
    }

    async fn handle_info(
        &mut self,
        info: Box<dyn Any + Send>,
        ctx: &mut Context<'_>,
    ) -> Result<(), ChannelError> {
        let stores = &self.state.stores;
        let fail = |what| move |e| ChannelError::failed(what, e);
        if let Some(PendingWritten(upto)) = info.downcast_ref::<PendingWritten>() {
            return stores
                .pending
                .remove(&self.user, *upto)
                .await
                .map_err(fail("removing written pending notifications"));
        }
        if let Some(LiveWritten(item)) = info.downcast_ref::<LiveWritten>() {
            return stores
                .pending
                .remove_item(&self.user, item)
                .await
                .map_err(fail("removing a notification written live"));
        }
        let info = match info.downcast::<Broadcast>() {
            Ok(broadcast) => {
                ctx.push(&broadcast.event, &broadcast.payload);
                if &*broadcast.event == NEW_NOTIFICATION
                    && let Some(item) = item_of(&broadcast.payload)
                {
                    ctx.send_info(Box::new(LiveWritten(item)))
                        .map_err(ChannelError::queue("the live notification's removal"))?;
                }
                return Ok(());
            }
            Err(other) => other,
        };
        if !info.is::<AfterJoin>() || self.present {
            return Ok(());
        }
        // Reachable first, then drain: a notification created in between is either still
        // pending (and taken below) or broadcast to this subscribed channel. None is lost.
        stores
            .presence
            .enter_notifications(&self.user, ctx.socket_id().0)
            .await
            .map_err(fail("recording the notifications topic as joined"))?;
        self.present = true;
        let items = stores
            .pending
            .list(&self.user)
            .await
            .map_err(fail("listing pending notifications"))?;
        let Some((upto, _)) = items.last() else {
            return Ok(());
        };
        let upto = *upto;
        let pending = self
            .state
            .resolve_pending(&items)
            .await
            .map_err(fail("reading pending notifications from the log"))?;
        for n in &pending {
            let payload = Payload::json(n).map_err(ChannelError::encode("pending_notification"))?;
            ctx.push(PENDING_NOTIFICATION, &payload);
        }
        if !pending.is_empty() {
            let all = serde_json::json!({ "notifications": pending });
            let payload =
                Payload::json(&all).map_err(ChannelError::encode("pending_notifications"))?;
            ctx.push(PENDING_NOTIFICATIONS, &payload);
        }
        ctx.send_info(Box::new(PendingWritten(upto)))
            .map_err(ChannelError::queue("the pending notifications' removal"))?;
        Ok(())
    }

    async fn terminate(&mut self, _reason: Terminate, ctx: &mut Context<'_>) {
        if self.present
            && let Err(err) = self
                .state
                .stores
                .presence
                .leave_notifications(&self.user, ctx.socket_id().0)
                .await
        {
            tracing::error!(user = %self.user, %err, "leave_notifications failed");
        }
    }
}
