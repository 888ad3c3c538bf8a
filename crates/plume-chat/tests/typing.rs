//! Typing indicators on `chat:{id}`: forwarded to the chat's other sockets as `user_typing`,
//! throttled per status, a `stop` on the user's behalf after the timeout and when their socket
//! leaves, and an error for an unknown status.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use plume_chat::Membership;
use serde_json::json;

async fn typing(
    c: &mut plume_client::Client,
    jr: &plume_wire::Ref,
    status: &str,
) -> (String, serde_json::Value) {
    let reply = c
        .call(
            jr,
            "chat:t",
            "typing",
            &json(&format!(r#"{{"status":"{status}"}}"#)),
        )
        .await
        .unwrap();
    let body = match reply.reply_response().unwrap() {
        plume_wire::Payload::Json(j) => j.parse().unwrap(),
        plume_wire::Payload::Binary(_) => serde_json::Value::Null,
    };
    (reply.reply_status().unwrap(), body)
}

#[tokio::test]
async fn typing_reaches_the_others_throttled_then_stops_by_itself_and_on_leave() {
    let chat = start_with(|c| {
        c.membership = Membership::Open;
        c.typing_timeout = Duration::from_millis(400);
        c.typing_throttle = Duration::from_secs(1);
    })
    .await;
    let mut alice = chat.connect("alice", "a").await;
    let mut bob = chat.connect("bob", "b").await;
    let jr = join_ok(&mut alice, "chat:t").await;
    join_ok(&mut bob, "chat:t").await;

    assert_eq!(typing(&mut alice, &jr, "typing").await.0, "ok");
    assert_eq!(
        next_event(&mut bob, "user_typing").await,
        json!({"chat_id":"t","user_id":"alice","status":"typing"})
    );
    // The same status again within the throttle interval is not forwarded; another is.
    typing(&mut alice, &jr, "typing").await;
    typing(&mut alice, &jr, "recording").await;
    assert_eq!(
        next_event(&mut bob, "user_typing").await["status"],
        "recording"
    );
    // Nothing more for 400 ms: a stop on alice's behalf.
    assert_eq!(next_event(&mut bob, "user_typing").await["status"], "stop");
    assert_no(&mut bob, "user_typing").await;
    assert_no(&mut alice, "user_typing").await;

    // Typing, then the socket leaves: a stop follows.
    typing(&mut alice, &jr, "typing").await;
    assert_eq!(
        next_event(&mut bob, "user_typing").await["status"],
        "typing"
    );
    alice.close().await.unwrap();
    assert_eq!(next_event(&mut bob, "user_typing").await["status"], "stop");
}

#[tokio::test]
async fn an_unknown_typing_status_is_an_error() {
    let chat = start_with(|c| c.membership = Membership::Open).await;
    let mut alice = chat.connect("alice", "a").await;
    let mut bob = chat.connect("bob", "b").await;
    let jr = join_ok(&mut alice, "chat:t").await;
    join_ok(&mut bob, "chat:t").await;
    for bad in ["dancing", ""] {
        assert_eq!(
            typing(&mut alice, &jr, bad).await,
            (
                "error".to_owned(),
                json!({"reason":"invalid_typing_status"})
            )
        );
    }
    let reply = alice
        .call(&jr, "chat:t", "typing", &json("{}"))
        .await
        .unwrap();
    assert_eq!(reply.reply_status().as_deref(), Some("error"));
    assert_no(&mut bob, "user_typing").await;
}
