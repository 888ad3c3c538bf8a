//! [`ChatChannel`]: `chat:{chat_id}`.
//!
//! - join: members only (strict, the default) or anyone authenticated (open, which records
//!   them as a participant); otherwise `{"reason":"unauthorized"}`.
//! - `send_message` `{content, mobile_ref_id}`: validated; a retry with the same
//!   (user, chat, mobile_ref_id) returns the original `message_id` without delivering again.
//!   A new message goes to every other socket in the chat as `receive_message`, to each other
//!   member who has no socket in the chat as a notification (live or pending), then the
//!   sender gets `message_sent` and the reply `{message_id}`.

use std::any::Any;
use std::sync::Arc;

use plume_channels::{Channel, ChannelError, Context, JoinError, Outcome, Reply, Terminate};
use plume_wire::Payload;
use serde::Serialize;
use serde_json::Value;

use crate::auth::UserSession;
use crate::config::Membership;
use crate::events::*;
use crate::state::ChatState;
use crate::store::{Notification, SendKey, SentMessage, StoreError};
use crate::time::now_rfc3339;

/// The `chat:{id}` channel of one socket.
pub struct ChatChannel {
    state: Arc<ChatState>,
    chat_id: String,
    user: String,
    present: bool,
}

/// Sent to itself after the join reply: record presence once subscribed.
struct AfterJoin;

#[derive(Serialize)]
struct ReceiveMessage<'a> {
    chat_id: &'a str,
    content: &'a str,
    sender_id: &'a str,
    message_id: &'a str,
    timestamp: &'a str,
}

#[derive(Serialize)]
struct MessageSent<'a> {
    mobile_ref_id: &'a str,
    status: &'static str,
    chat_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

fn json<T: Serialize>(value: &T) -> Result<Payload, ChannelError> {
    Payload::json(value).map_err(|e| ChannelError::new(e.to_string()))
}

/// The user of the socket (set by the connect hook).
pub(crate) fn session_user(ctx: &Context<'_>) -> Result<String, JoinError> {
    ctx.assigns::<UserSession>()
        .map(|s| s.user_id.clone())
        .ok_or_else(|| JoinError::Failed("socket has no authenticated user".into()))
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

fn validate(payload: &Payload, max_chars: usize) -> Result<ValidSend, Invalid> {
    let invalid = |reason, mobile_ref_id: &str| Invalid {
        reason,
        mobile_ref_id: mobile_ref_id.to_owned(),
    };
    let Some(Ok(Value::Object(obj))) = payload.as_json().map(|j| j.parse::<Value>()) else {
        return Err(invalid(REASON_INVALID_PAYLOAD, ""));
    };
    let mobile_ref_id = match obj.get("mobile_ref_id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(invalid(REASON_INVALID_MOBILE_REF_ID, "")),
    };
    let content = match obj.get("content") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        _ => return Err(invalid(REASON_INVALID_CONTENT, &mobile_ref_id)),
    };
    if content.chars().count() > max_chars {
        return Err(invalid(REASON_CONTENT_TOO_LONG, &mobile_ref_id));
    }
    Ok(ValidSend {
        content,
        mobile_ref_id,
    })
}

impl ChatChannel {
    fn refuse_send(
        &self,
        ctx: &mut Context<'_>,
        reason: &str,
        mobile_ref_id: &str,
    ) -> Result<Outcome, ChannelError> {
        let sent = MessageSent {
            mobile_ref_id,
            status: STATUS_ERROR,
            chat_id: &self.chat_id,
            message_id: None,
            timestamp: None,
            reason: Some(reason),
        };
        ctx.push(MESSAGE_SENT, &json(&sent)?);
        Ok(Reply::error_reason(reason).into())
    }

    async fn send_message(
        &mut self,
        payload: Payload,
        ctx: &mut Context<'_>,
    ) -> Result<Outcome, ChannelError> {
        let send = match validate(&payload, self.state.config.max_message_chars) {
            Ok(send) => send,
            Err(invalid) => return self.refuse_send(ctx, invalid.reason, &invalid.mobile_ref_id),
        };
        let key = SendKey {
            user: self.user.clone(),
            chat: self.chat_id.clone(),
            mobile_ref_id: send.mobile_ref_id.clone(),
        };
        let fresh = SentMessage {
            message_id: uuid::Uuid::now_v7().to_string(),
            timestamp: now_rfc3339(),
        };
        let stores = &self.state.stores;
        let claim = stores
            .idempotency
            .claim(&key, &fresh, self.state.config.idempotency_ttl)
            .await;
        let sent = match claim {
            Err(err) => return self.store_failed(ctx, &send.mobile_ref_id, &err),
            // A retry: answer as the first time, deliver nothing.
            Ok(Some(original)) => original,
            Ok(None) => {
                if let Err(err) = self.deliver(ctx, &send, &fresh).await {
                    let _ = stores.idempotency.release(&key).await;
                    return self.store_failed(ctx, &send.mobile_ref_id, &err);
                }
                fresh
            }
        };
        let ack = MessageSent {
            mobile_ref_id: &send.mobile_ref_id,
            status: STATUS_SENT,
            chat_id: &self.chat_id,
            message_id: Some(&sent.message_id),
            timestamp: Some(&sent.timestamp),
            reason: None,
        };
        ctx.push(MESSAGE_SENT, &json(&ack)?);
        let reply = serde_json::json!({ "message_id": sent.message_id });
        Ok(Reply::ok(json(&reply)?).into())
    }

    /// Notifications first (they must be stored before the sender hears "sent"), then the
    /// broadcast to the chat's other sockets.
    async fn deliver(
        &self,
        ctx: &mut Context<'_>,
        send: &ValidSend,
        sent: &SentMessage,
    ) -> Result<(), StoreError> {
        let stores = &self.state.stores;
        let notification = Notification {
            chat_id: self.chat_id.clone(),
            sender_id: self.user.clone(),
            content: send.content.clone(),
            timestamp: sent.timestamp.clone(),
            message_id: sent.message_id.clone(),
        };
        let members = stores.membership.members(&self.chat_id).await?;
        self.state
            .notify_all(
                &members,
                Some(&self.user),
                Some(&self.chat_id),
                &notification,
            )
            .await?;
        let receive = ReceiveMessage {
            chat_id: &self.chat_id,
            content: &send.content,
            sender_id: &self.user,
            message_id: &sent.message_id,
            timestamp: &sent.timestamp,
        };
        let payload = Payload::json(&receive).map_err(|e| StoreError(e.to_string()))?;
        ctx.broadcast_from(RECEIVE_MESSAGE, payload)
            .map_err(|e| StoreError(e.to_string()))
    }

    fn store_failed(
        &self,
        ctx: &mut Context<'_>,
        mobile_ref_id: &str,
        err: &StoreError,
    ) -> Result<Outcome, ChannelError> {
        tracing::error!(chat = %self.chat_id, user = %self.user, %err, "send_message failed");
        self.refuse_send(ctx, REASON_STORAGE_UNAVAILABLE, mobile_ref_id)
    }
}

impl Channel for ChatChannel {
    type State = ChatState;

    async fn join(
        state: &Arc<ChatState>,
        topic: &str,
        _payload: Payload,
        ctx: &mut Context<'_>,
    ) -> Result<(ChatChannel, Payload), JoinError> {
        let chat_id = topic.strip_prefix(CHAT_PREFIX).unwrap_or("");
        if chat_id.is_empty() {
            return Err(JoinError::reason(REASON_INVALID_TOPIC));
        }
        let user = session_user(ctx)?;
        let membership = &state.stores.membership;
        let allowed = match state.config.membership {
            Membership::Strict => membership.is_member(chat_id, &user).await,
            Membership::Open => membership.add(chat_id, &user).await.map(|()| true),
        };
        match allowed {
            Ok(true) => {}
            Ok(false) => return Err(JoinError::reason(REASON_UNAUTHORIZED)),
            Err(err) => {
                tracing::error!(chat = chat_id, %user, %err, "join: membership unavailable");
                return Err(JoinError::reason(REASON_STORAGE_UNAVAILABLE));
            }
        }
        ctx.send_info(Box::new(AfterJoin))
            .map_err(|e| JoinError::Failed(e.to_string()))?;
        let channel = ChatChannel {
            state: state.clone(),
            chat_id: chat_id.to_owned(),
            user,
            present: false,
        };
        Ok((channel, Payload::empty()))
    }

    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut Context<'_>,
    ) -> Result<Outcome, ChannelError> {
        match event {
            SEND_MESSAGE => self.send_message(payload, ctx).await,
            _ => Ok(Reply::error_reason(REASON_UNKNOWN_EVENT).into()),
        }
    }

    async fn handle_info(
        &mut self,
        info: Box<dyn Any + Send>,
        _ctx: &mut Context<'_>,
    ) -> Result<(), ChannelError> {
        if info.is::<AfterJoin>() && !self.present {
            // Subscribed by now: from here on this user gets the chat's messages live, so
            // they stop being notified about it.
            self.state
                .stores
                .presence
                .enter_chat(&self.user, &self.chat_id)
                .await
                .map_err(|e| ChannelError::new(e.to_string()))?;
            self.present = true;
        }
        Ok(())
    }

    async fn terminate(&mut self, _reason: Terminate, _ctx: &mut Context<'_>) {
        if self.present
            && let Err(err) = self
                .state
                .stores
                .presence
                .leave_chat(&self.user, &self.chat_id)
                .await
        {
            tracing::error!(chat = %self.chat_id, user = %self.user, %err, "leave_chat failed");
        }
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

    fn reason(p: &str, max: usize) -> &'static str {
        match validate(&payload(p), max) {
            Ok(_) => "ok",
            Err(i) => i.reason,
        }
    }

    #[test]
    fn validation_reasons() {
        assert_eq!(reason(r#"{"content":"hi","mobile_ref_id":"r"}"#, 10), "ok");
        assert_eq!(reason(r#""str""#, 10), REASON_INVALID_PAYLOAD);
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
            match validate(&Payload::Binary(Bytes::from_static(b"x")), 10) {
                Ok(_) => "ok",
                Err(i) => i.reason,
            },
            REASON_INVALID_PAYLOAD
        );
    }
}
