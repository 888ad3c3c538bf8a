//! The backend HTTP API: auth, membership, broadcast, notify, and errors.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn the_api_needs_the_bearer_key() {
    let chat = start().await;
    let (code, _) = chat
        .api_with_key("GET", "/api/chats/1/members", None, None)
        .await;
    assert_eq!(code, 401);
    let (code, _) = chat
        .api_with_key("GET", "/api/chats/1/members", None, Some("wrong"))
        .await;
    assert_eq!(code, 401);
    let (code, body) = chat.api("GET", "/api/chats/1/members", None).await;
    assert_eq!((code, body), (200, json!({"members":[]})));
}

#[tokio::test]
async fn the_api_is_off_without_a_key() {
    let chat = start_custom(|_| {}, plume_chat::JwtVerifier::hs256(SECRET), None).await;
    let (code, _) = chat.api("GET", "/api/chats/1/members", None).await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn members_put_delete_get() {
    let chat = start().await;
    for u in ["b", "a"] {
        let (code, body) = chat
            .api("PUT", &format!("/api/chats/c%201/members/{u}"), None)
            .await;
        assert_eq!(
            (code, body),
            (200, json!({"chat_id":"c 1","user_id":u,"member":true}))
        );
    }
    let (_, body) = chat.api("GET", "/api/chats/c%201/members", None).await;
    assert_eq!(body, json!({"members":["a","b"]}));
    let (code, body) = chat.api("DELETE", "/api/chats/c%201/members/a", None).await;
    assert_eq!(
        (code, body),
        (200, json!({"chat_id":"c 1","user_id":"a","member":false}))
    );
    let (_, body) = chat.api("GET", "/api/chats/c%201/members", None).await;
    assert_eq!(body, json!({"members":["b"]}));
    let (code, _) = chat.api("POST", "/api/chats/c/members/a", None).await;
    assert_eq!(code, 405);
    let (code, _) = chat.api("GET", "/api/nothing", None).await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn broadcast_reaches_every_socket_joined_to_the_topic() {
    let chat = start().await;
    chat.add_member("x", "alice").await;
    chat.add_member("x", "bob").await;
    let mut a = chat.connect("alice", "a").await;
    let mut b = chat.connect("bob", "b").await;
    join_ok(&mut a, "chat:x").await;
    join_ok(&mut b, "chat:x").await;
    let (code, _) = chat
        .api(
            "POST",
            "/api/broadcast",
            Some(r#"{"topic":"chat:x","event":"announcement","payload":{"text":"maintenance"}}"#),
        )
        .await;
    assert_eq!(code, 202);
    for c in [&mut a, &mut b] {
        assert_eq!(
            next_event(c, "announcement").await,
            json!({"text":"maintenance"})
        );
    }
}

#[tokio::test]
async fn notify_delivers_live_or_stores_pending() {
    let chat = start().await;
    let body = r#"{"user_id":"fay","chat_id":"c9","sender_id":"system","content":"hi"}"#;
    let (code, resp) = chat.api("POST", "/api/notify", Some(body)).await;
    assert_eq!((code, resp["status"].clone()), (200, json!("pending")));
    let mut f = chat.connect("fay", "f").await;
    join_ok(&mut f, "notifications:fay").await;
    let pending = next_event(&mut f, "pending_notification").await;
    assert_eq!(
        (pending["content"].clone(), pending["message_id"].clone()),
        (json!("hi"), resp["message_id"].clone())
    );
    next_event(&mut f, "pending_notifications").await;
    let (code, resp) = chat.api("POST", "/api/notify", Some(body)).await;
    assert_eq!((code, resp["status"].clone()), (200, json!("delivered")));
    let live = next_event(&mut f, "new_notification").await;
    assert_eq!(
        live,
        json!({"chat_id":"c9","sender_id":"system","content":"hi","timestamp":live["timestamp"],"message_id":resp["message_id"]})
    );
}

#[tokio::test]
async fn bad_json_and_missing_fields_are_400_with_a_json_error() {
    let chat = start().await;
    for (path, body) in [
        ("/api/broadcast", "not json"),
        ("/api/broadcast", r#"{"topic":"t","event":"e"}"#),
        (
            "/api/broadcast",
            r#"{"topic":"t","event":"e","payload":[1]}"#,
        ),
        (
            "/api/notify",
            r#"{"user_id":"u","chat_id":"c","sender_id":"s"}"#,
        ),
        (
            "/api/notify",
            r#"{"user_id":"","chat_id":"c","sender_id":"s","content":"x"}"#,
        ),
    ] {
        let (code, resp) = chat.api("POST", path, Some(body)).await;
        assert_eq!(code, 400, "{path} {body}");
        assert!(resp["error"].is_string(), "{path} {body}: {resp}");
    }
}

#[tokio::test]
async fn a_disconnect_broadcast_on_the_user_socket_topic_closes_the_users_sockets() {
    let chat = start().await;
    let mut phone = chat.connect("mallory", "phone").await;
    let mut laptop = chat.connect("mallory", "laptop").await;
    let mut other = chat.connect("oscar", "o").await;
    let body = r#"{"topic":"user_socket:mallory","event":"disconnect","payload":{}}"#;
    let (code, _) = chat.api("POST", "/api/broadcast", Some(body)).await;
    assert_eq!(code, 202);
    for c in [&mut phone, &mut laptop] {
        let (code, _) = c.expect_close().await.unwrap();
        assert_eq!(code, Some(plume_wire::close::GOING_AWAY));
    }
    join_ok(&mut other, "notifications:oscar").await;
}

/// Sends a request head declaring a 1 MiB body and never sends the body; returns the status
/// the server answered with, failing if it waits for the body instead.
async fn status_without_body(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    auth: &str,
) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{auth}\
         content-type: application/json\r\ncontent-length: 1048576\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out));
    assert!(
        read.await.is_ok(),
        "{method} {path} {auth:?}: the server waited for the body"
    );
    let text = String::from_utf8_lossy(&out);
    text.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn refusals_are_answered_without_reading_the_body() {
    let chat = start().await;
    let right = format!("authorization: Bearer {API_KEY}\r\n");
    let cases = [
        (
            "POST",
            "/api/notify",
            "authorization: Bearer wrong\r\n",
            401,
        ),
        ("POST", "/api/broadcast", "", 401),
        ("POST", "/api/nothing", right.as_str(), 404),
        ("PUT", "/api/notify", right.as_str(), 405),
    ];
    for (method, path, auth, expected) in cases {
        let status = status_without_body(chat.addr(), method, path, auth).await;
        assert_eq!(status, expected, "{method} {path} {auth:?}");
    }
    let off = start_custom(|_| {}, plume_chat::JwtVerifier::hs256(SECRET), None).await;
    let status = status_without_body(off.addr(), "POST", "/api/notify", &right).await;
    assert_eq!(status, 404, "the API is off");
}
