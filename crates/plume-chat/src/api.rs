//! The server HTTP API for backends, under `/api/` on the WebSocket port.
//!
//! Every request needs `Authorization: Bearer <api key>` (401 otherwise). Without a
//! configured key the API is off and every `/api/` path is 404. Both, and the route (404,
//! 405), are decided from the request head in [`HttpApi::admit`], before the server reads
//! a byte of the body.
//!
//! | method and path                              | body                                   | answer |
//! |----------------------------------------------|----------------------------------------|--------|
//! | `PUT /api/chats/{chat_id}/members/{user_id}` |                                        | 200 `{"chat_id","user_id","member":true}` |
//! | `DELETE /api/chats/{chat_id}/members/{user_id}` |                                     | 200 `{"chat_id","user_id","member":false}` |
//! | `GET /api/chats/{chat_id}/members`           |                                        | 200 `{"members":[…]}` (sorted) |
//! | `GET /api/chats/{chat_id}/messages?before_seq=&limit=` |                              | 200 `{"messages":[…oldest first],"has_more"}` |
//! | `GET /api/chats/{chat_id}/presence`          |                                        | 200 `{user_id: {"metas":[…]}}` (as `presence_state`) |
//! | `GET /api/users/{user_id}/rooms?before=&limit=` |                                     | 200 `{"rooms":[…],"next"}` (the rooms list, [`crate::rooms`]) |
//! | `POST /api/broadcast`                        | `{"topic","event","payload"}`          | 202 `{"status":"accepted"}` |
//! | `POST /api/notify`                           | `{"user_id","chat_id","sender_id","content"}` | 200 `{"status":"delivered"\|"pending","message_id"}` |
//!
//! Errors are JSON `{"error": "…"}`: 400 for bad JSON, missing fields or an id over
//! `max_id_bytes`, 401, 404, 405, 413 (body over 1 MiB), 503 when a store is unavailable;
//! and from the server, while the body is read: 408 (body not complete within
//! `body_timeout`) and 503 (too many request bodies in flight).
//!
//! Removing a member also makes every socket of that user, on every node, leave the chat
//! (a leave order on `user_socket:{user_id}`; the client gets `phx_close`). Adding or
//! removing one pushes `room_updated` to the user's notifications topic.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode, header};
use http_body_util::Full;
use percent_encoding::percent_decode_str;
use plume_channels::Broadcast;
use plume_server::api::{ApiFuture, ApiHead, ApiRequest, HttpApi, json_error, json_response};
use plume_wire::{Json, Payload};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use crate::events::{CHAT_PREFIX, user_socket_topic};
use crate::failure::store_status;
use crate::state::ChatState;
use crate::store::{Notification, StoreError};
use crate::time::now_rfc3339;

type Resp = Response<Full<Bytes>>;

/// A failed API call: its status and message (sent as `{"error": message}`).
struct ApiError(StatusCode, String);

/// The backend API.
pub struct ChatApi {
    state: Arc<ChatState>,
    key: Option<String>,
}

impl ChatApi {
    /// The API, on when `key` is set.
    pub fn new(state: Arc<ChatState>, key: Option<String>) -> ChatApi {
        ChatApi {
            state,
            key: key.filter(|k| !k.is_empty()),
        }
    }
}

impl HttpApi for ChatApi {
    fn prefix(&self) -> &str {
        "/api/"
    }

    fn admit(&self, head: &ApiHead<'_>) -> Result<(), Box<Resp>> {
        let Some(key) = &self.key else {
            return Err(Box::new(json_error(
                StatusCode::NOT_FOUND,
                "the API is off (no API key configured)",
            )));
        };
        if !authorized(head.headers, key) {
            let mut resp = json_error(StatusCode::UNAUTHORIZED, "missing or wrong API key");
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return Err(Box::new(resp));
        }
        resolve(head.method, head.path)
            .map(|_| ())
            .map_err(|ApiError(status, msg)| Box::new(json_error(status, &msg)))
    }

    fn handle(&self, req: ApiRequest) -> ApiFuture {
        // The server calls `admit` first; checking again here costs a comparison and keeps
        // the key check from depending on that order.
        let admitted = self.admit(&ApiHead {
            method: &req.method,
            path: &req.path,
            headers: &req.headers,
        });
        let state = self.state.clone();
        Box::pin(async move {
            match admitted {
                Ok(()) => route(&state, req).await,
                Err(refused) => *refused,
            }
        })
    }
}

/// Constant-time comparison of the bearer token with the key.
fn authorized(headers: &http::HeaderMap, key: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    // Constant time in the key's bytes (the length is not secret).
    bool::from(subtle::ConstantTimeEq::ct_eq(
        given.trim().as_bytes(),
        key.as_bytes(),
    ))
}

fn segment(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// An API route, resolved from the method and path alone.
enum Route {
    SetMember {
        chat: String,
        user: String,
        member: bool,
    },
    Members {
        chat: String,
    },
    Messages {
        chat: String,
    },
    Presence {
        chat: String,
    },
    Rooms {
        user: String,
    },
    Broadcast,
    Notify,
}

fn resolve(method: &Method, path: &str) -> Result<Route, ApiError> {
    let path = path.trim_end_matches('/');
    let parts: Vec<&str> = path.split('/').skip(2).collect();
    match (method, parts.as_slice()) {
        (&Method::PUT | &Method::DELETE, ["chats", chat, "members", user]) => {
            Ok(Route::SetMember {
                chat: segment(chat),
                user: segment(user),
                member: method == Method::PUT,
            })
        }
        (&Method::GET, ["chats", chat, "members"]) => Ok(Route::Members {
            chat: segment(chat),
        }),
        (&Method::GET, ["chats", chat, "messages"]) => Ok(Route::Messages {
            chat: segment(chat),
        }),
        (&Method::GET, ["chats", chat, "presence"]) => Ok(Route::Presence {
            chat: segment(chat),
        }),
        (&Method::GET, ["users", user, "rooms"]) => Ok(Route::Rooms {
            user: segment(user),
        }),
        (&Method::POST, ["broadcast"]) => Ok(Route::Broadcast),
        (&Method::POST, ["notify"]) => Ok(Route::Notify),
        (
            _,
            ["chats", _, "members", _]
            | ["chats", _, "members"]
            | ["chats", _, "messages"]
            | ["chats", _, "presence"]
            | ["users", _, "rooms"]
            | ["broadcast"]
            | ["notify"],
        ) => Err(ApiError(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed".into(),
        )),
        _ => Err(ApiError(StatusCode::NOT_FOUND, "no such API route".into())),
    }
}

async fn route(state: &Arc<ChatState>, req: ApiRequest) -> Resp {
    let result = match resolve(&req.method, &req.path) {
        Ok(Route::SetMember { chat, user, member }) => {
            set_member(state, &chat, &user, member).await
        }
        Ok(Route::Members { chat }) => members(state, &chat).await,
        Ok(Route::Messages { chat }) => messages(state, &chat, &req.query).await,
        Ok(Route::Presence { chat }) => presence(state, &chat).await,
        Ok(Route::Rooms { user }) => rooms(state, &user, &req.query).await,
        Ok(Route::Broadcast) => broadcast(state, &req.body),
        Ok(Route::Notify) => notify(state, &req.body).await,
        Err(err) => Err(err),
    };
    result.unwrap_or_else(|ApiError(status, msg)| json_error(status, &msg))
}

fn unavailable(err: &StoreError) -> ApiError {
    tracing::error!(%err, "API: store unavailable");
    let (status, text) = store_status(err);
    ApiError(status, text.into())
}

fn bad_request(msg: &str) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.to_owned())
}

async fn set_member(
    state: &Arc<ChatState>,
    chat: &str,
    user: &str,
    member: bool,
) -> Result<Resp, ApiError> {
    if chat.is_empty() || user.is_empty() {
        return Err(bad_request("chat_id and user_id must not be empty"));
    }
    check_id(state, "chat_id", chat)?;
    check_id(state, "user_id", user)?;
    let store = &state.stores.membership;
    let result = if member {
        store.add(chat, user).await
    } else {
        store.remove(chat, user).await.map(|_| ())
    };
    result.map_err(|e| unavailable(&e))?;
    if !member {
        // The removal takes effect at once: every socket of the user, on every node, leaves
        // the chat. Told even when they were not a member (a retried DELETE tells again).
        tell_sockets_to_leave(state, chat, user)?;
    }
    state.spawn_room_updated(user, chat);
    Ok(json_response(
        StatusCode::OK,
        &json!({"chat_id": chat, "user_id": user, "member": member}),
    ))
}

/// Refuses an id longer than the configured limit (400), before it reaches a store.
fn check_id(state: &ChatState, field: &str, id: &str) -> Result<(), ApiError> {
    let max = state.config.max_id_bytes;
    if id.len() > max {
        return Err(bad_request(&format!(
            "{field} is {} bytes, over the limit of {max}",
            id.len()
        )));
    }
    Ok(())
}

/// A leave order for `chat:{chat}` on the user's socket id topic; each socket's state
/// machine turns it into the end of that channel and a `phx_close`. Sent on the socket id
/// topic, which no client can join or publish to, so no client can forge it. A failed
/// publish is 503: the member is removed, and a retried DELETE tells the sockets again
/// (meanwhile their sends are refused, since every send checks membership).
fn tell_sockets_to_leave(state: &ChatState, chat: &str, user: &str) -> Result<(), ApiError> {
    let topic = format!("{CHAT_PREFIX}{chat}");
    let payload = Payload::json(&json!({ "topic": topic }))
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    state
        .pubsub
        .broadcast(Broadcast {
            topic: user_socket_topic(user).into(),
            event: plume_wire::event::LEAVE_TOPIC.into(),
            payload,
            from: None,
            seq: None,
        })
        .map_err(|e| {
            tracing::error!(chat, user, %e, "member removed, but their sockets were not told");
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "member removed, but their sockets could not be told; retry".into(),
            )
        })
}

async fn members(state: &ChatState, chat: &str) -> Result<Resp, ApiError> {
    check_id(state, "chat_id", chat)?;
    let members = state
        .stores
        .membership
        .members(chat)
        .await
        .map_err(|e| unavailable(&e))?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "members": &*members }),
    ))
}

/// `GET /api/chats/{id}/messages?before_seq=N&limit=K`: a page of history, as the
/// `history` push answers it (K from 1 to 100, default 50).
async fn messages(state: &ChatState, chat: &str, query: &str) -> Result<Resp, ApiError> {
    check_id(state, "chat_id", chat)?;
    let mut before = None;
    let mut limit = crate::chat::DEFAULT_HISTORY_PAGE;
    for (name, value) in url_pairs(query) {
        match name.as_str() {
            "before_seq" => match value.parse::<u64>() {
                Ok(n) if n > 0 => before = Some(n),
                _ => return Err(bad_request("before_seq must be a positive integer")),
            },
            "limit" => match value.parse::<u64>() {
                Ok(n) if (1..=crate::chat::MAX_HISTORY_PAGE).contains(&n) => limit = n,
                _ => return Err(bad_request("limit must be an integer from 1 to 100")),
            },
            _ => {}
        }
    }
    plume_channels::metrics::metrics().history_read("api");
    let page = crate::chat::history_page(state, chat, before, limit)
        .await
        .map_err(|e| unavailable(&e))?;
    Ok(json_response(StatusCode::OK, &page))
}

/// `GET /api/chats/{id}/presence`: the map a joiner's `presence_state` carries.
async fn presence(state: &ChatState, chat: &str) -> Result<Resp, ApiError> {
    check_id(state, "chat_id", chat)?;
    let payload = state
        .presence
        .state(chat)
        .await
        .map_err(|e| unavailable(&e))?;
    let value: serde_json::Value = payload
        .as_json()
        .and_then(|j| j.parse().ok())
        .unwrap_or_else(|| json!({}));
    Ok(json_response(StatusCode::OK, &value))
}

/// `GET /api/users/{id}/rooms?before=CURSOR&limit=K`: a page of the user's rooms list, as
/// `list_rooms` answers it (K from 1 to 50, default 50).
async fn rooms(state: &ChatState, user: &str, query: &str) -> Result<Resp, ApiError> {
    check_id(state, "user_id", user)?;
    let mut before = None;
    let mut limit = crate::rooms::ROOMS_PAGE;
    for (name, value) in url_pairs(query) {
        match name.as_str() {
            "before" => match crate::rooms::Cursor::decode(&value, state.config.max_id_bytes) {
                Some(c) => before = Some(c),
                None => return Err(bad_request("before is not a cursor this server issued")),
            },
            "limit" => match value.parse::<usize>() {
                Ok(n) if (1..=crate::rooms::ROOMS_PAGE).contains(&n) => limit = n,
                _ => return Err(bad_request("limit must be an integer from 1 to 50")),
            },
            _ => {}
        }
    }
    let page = state
        .rooms_page(user, before.as_ref(), limit, false)
        .await
        .map_err(|e| unavailable(&e))?;
    let body = serde_json::to_value(&page)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(json_response(StatusCode::OK, &body))
}

/// `name=value` pairs of a query string, percent-decoded.
fn url_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (segment(name), segment(value))
    })
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    // JSON text is UTF-8 (RFC 8259), and serde_json does not check the UTF-8 of a value it
    // skips (an unknown field), so the whole body is checked first.
    let text = std::str::from_utf8(body)
        .map_err(|e| bad_request(&format!("invalid JSON body: not UTF-8: {e}")))?;
    // Every body is an object; serde would also fill a struct from an array, by position.
    if !text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{')
    {
        return Err(bad_request("invalid JSON body: expected an object"));
    }
    serde_json::from_str(text).map_err(|e| bad_request(&format!("invalid JSON body: {e}")))
}

#[derive(Deserialize)]
struct BroadcastBody<'a> {
    topic: String,
    event: String,
    /// Kept as the backend's exact text: a `Value` would round big integers and some floats.
    #[serde(borrow)]
    payload: &'a RawValue,
}

/// Decodes and checks a `POST /api/broadcast` body: `(topic, event, payload)`.
fn broadcast_body(body: &[u8]) -> Result<(String, String, Json), ApiError> {
    let b: BroadcastBody<'_> = parse(body)?;
    if b.topic.is_empty() || b.event.is_empty() {
        return Err(bad_request("topic and event must not be empty"));
    }
    let payload = Json::from_text(Bytes::copy_from_slice(b.payload.get().as_bytes()))
        .map_err(|e| bad_request(&e.to_string()))?;
    if !payload.is_object() {
        return Err(bad_request("payload must be a JSON object"));
    }
    Ok((b.topic, b.event, payload))
}

fn broadcast(state: &ChatState, body: &Bytes) -> Result<Resp, ApiError> {
    let (topic, event, payload) = broadcast_body(body)?;
    let sent = state.pubsub.broadcast(Broadcast {
        topic: topic.as_str().into(),
        event: event.into(),
        payload: Payload::Json(payload),
        from: None,
        seq: None,
    });
    // This node's subscribers have it; a retry would send it to them twice. The backend
    // counted the broadcast the other nodes did not get.
    if let Err(err) = sent {
        tracing::warn!(%topic, %err, "API broadcast not forwarded to other nodes");
    }
    Ok(json_response(
        StatusCode::ACCEPTED,
        &json!({"status": "accepted"}),
    ))
}

#[derive(Deserialize)]
struct NotifyBody {
    user_id: String,
    chat_id: String,
    sender_id: String,
    content: String,
}

/// Decodes and checks a `POST /api/notify` body.
fn notify_body(body: &[u8]) -> Result<NotifyBody, ApiError> {
    let n: NotifyBody = parse(body)?;
    if n.user_id.is_empty() {
        return Err(bad_request("user_id must not be empty"));
    }
    Ok(n)
}

async fn notify(state: &ChatState, body: &Bytes) -> Result<Resp, ApiError> {
    let n = notify_body(body)?;
    check_id(state, "user_id", &n.user_id)?;
    check_id(state, "chat_id", &n.chat_id)?;
    check_id(state, "sender_id", &n.sender_id)?;
    // Stored as pending until delivered: as long as a chat message may be, no longer.
    if n.content.chars().count() > state.config.max_message_chars {
        return Err(bad_request(&format!(
            "content is longer than {} characters",
            state.config.max_message_chars
        )));
    }
    let notification = Notification {
        chat_id: n.chat_id,
        sender_id: n.sender_id,
        content: n.content,
        timestamp: now_rfc3339(),
        message_id: uuid::Uuid::now_v7().to_string(),
        seq: None,
    };
    let delivery = state
        .notify(&n.user_id, &notification)
        .await
        .map_err(|e| unavailable(&e))?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"status": delivery.as_str(), "message_id": notification.message_id}),
    ))
}

/// The body decoders of the API without a server around them, for the fuzz targets in
/// `fuzz/`. Not part of Plume's API. An error is the 400 message the API would answer.
#[doc(hidden)]
pub mod decode {
    use plume_wire::Json;

    /// A `POST /api/broadcast` body: `(topic, event, payload)`.
    pub fn broadcast_body(body: &[u8]) -> Result<(String, String, Json), String> {
        super::broadcast_body(body).map_err(|super::ApiError(_, msg)| msg)
    }

    /// A `POST /api/notify` body: `[user_id, chat_id, sender_id, content]`.
    pub fn notify_body(body: &[u8]) -> Result<[String; 4], String> {
        super::notify_body(body)
            .map(|n| [n.user_id, n.chat_id, n.sender_id, n.content])
            .map_err(|super::ApiError(_, msg)| msg)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use super::*;

    /// Found by the `api_broadcast` fuzz target: the payload went through a `Value`, which
    /// turned an integer beyond 64 bits into a float and could move a float by one ULP.
    #[test]
    fn a_broadcast_payload_is_sent_as_the_backend_wrote_it() {
        let body = br#"{"topic":"t","event":"e","payload":{ "a" : 55555555555555555555555555530, "f": 2.2250738585072011e-308 }}"#;
        let (_, _, payload) = broadcast_body(body).ok().unwrap();
        assert_eq!(
            payload.as_bytes().as_ref(),
            br#"{ "a" : 55555555555555555555555555530, "f": 2.2250738585072011e-308 }"#
        );
        for not_object in [
            &br#"{"topic":"t","event":"e","payload":[1]}"#[..],
            br#"{"topic":"t","event":"e","payload":"{}"}"#,
        ] {
            assert!(broadcast_body(not_object).is_err());
        }
    }

    /// Found by the `api_notify` fuzz target: serde fills a struct from an array too, so
    /// `["u","c","s","x"]` was taken for a notify body.
    #[test]
    fn a_body_that_is_not_an_object_is_refused() {
        assert!(notify_body(br#"["u","c","s","x"]"#).is_err());
        assert!(broadcast_body(br#" ["t","e",{}]"#).is_err());
        assert!(
            notify_body(
                b" \r\n{\"user_id\":\"u\",\"chat_id\":\"c\",\"sender_id\":\"s\",\"content\":\"x\"}"
            )
            .is_ok()
        );
    }

    /// Found by the `api_broadcast` fuzz target: serde_json skips the value of an unknown
    /// field without checking its UTF-8, so a body that is not JSON text was accepted.
    #[test]
    fn a_body_that_is_not_utf8_is_refused() {
        let body = b"{\"topic\":\"t\",\"event\":\"e\",\"x\":\"\xe5\",\"payload\":{}}";
        let Err(ApiError(status, msg)) = broadcast_body(body) else {
            panic!("a body with invalid UTF-8 was accepted");
        };
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(msg.starts_with("invalid JSON body"), "{msg}");
        let body = b"{\"user_id\":\"u\",\"chat_id\":\"c\",\"sender_id\":\"s\",\"content\":\"x\",\"y\":\"\xff\"}";
        assert!(notify_body(body).is_err());
        // The same bodies in valid UTF-8 are accepted.
        assert!(broadcast_body(br#"{"topic":"t","event":"e","x":"\u00e5","payload":{}}"#).is_ok());
        assert!(
            notify_body(br#"{"user_id":"u","chat_id":"c","sender_id":"s","content":"x","y":"y"}"#)
                .is_ok()
        );
    }
}
