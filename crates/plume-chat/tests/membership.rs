//! Membership changes take effect at once (issue 9, failure 8): removing a member makes their
//! joined sockets leave the chat (`phx_close`, so phoenix.js does not rejoin), and a send on
//! a join that outlived the membership is refused.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use plume_chat::{ChatConfig, JwtVerifier, Stores};
use serde_json::json;

#[tokio::test]
async fn removing_a_member_closes_their_chat_channels_on_every_socket() {
    let chat = start().await;
    chat.add_member("r", "alice").await;
    chat.add_member("r", "bob").await;
    chat.add_member("other", "bob").await;
    let mut alice = chat.connect("alice", "a").await;
    let jra = join_ok(&mut alice, "chat:r").await;
    let mut phone = chat.connect("bob", "phone").await;
    let mut laptop = chat.connect("bob", "laptop").await;
    let jr_phone = join_ok(&mut phone, "chat:r").await;
    let jr_laptop = join_ok(&mut laptop, "chat:r").await;
    let jr_other = join_ok(&mut laptop, "chat:other").await;

    let (code, body) = chat.api("DELETE", "/api/chats/r/members/bob", None).await;
    assert_eq!(
        (code, body),
        (200, json!({"chat_id":"r","user_id":"bob","member":false}))
    );
    for (c, jr) in [(&mut phone, &jr_phone), (&mut laptop, &jr_laptop)] {
        expect_phx_close(c, "chat:r", jr).await;
    }
    // bob hears nothing more from the chat, and his other chat is untouched.
    send(
        &mut alice,
        &jra,
        "r",
        r#"{"content":"secret","mobile_ref_id":"1"}"#,
    )
    .await;
    assert_no(&mut phone, "receive_message").await;
    assert_no(&mut laptop, "receive_message").await;
    let (status, _, _) = send(
        &mut laptop,
        &jr_other,
        "other",
        r#"{"content":"hi","mobile_ref_id":"2"}"#,
    )
    .await;
    assert_eq!(status, "ok");
    // A push on the old join is for a topic the socket no longer has.
    let reply = phone
        .call(&jr_phone, "chat:r", "send_message", &json_payload())
        .await
        .unwrap();
    assert_eq!(reply.reply_status().unwrap(), "error");
    // Strict membership: a rejoin is refused.
    let (_, status, resp) = join(&mut phone, "chat:r").await;
    assert_eq!(
        (status.as_str(), resp),
        ("error", json!({"reason":"unauthorized"}))
    );
    // Only bob was affected.
    let (status, _, _) = send(
        &mut alice,
        &jra,
        "r",
        r#"{"content":"still here","mobile_ref_id":"3"}"#,
    )
    .await;
    assert_eq!(status, "ok");
}

fn json_payload() -> plume_wire::Payload {
    json_text(r#"{"content":"x","mobile_ref_id":"late"}"#)
}

fn json_text(s: &str) -> plume_wire::Payload {
    common::json(s)
}

/// A join that outlived the membership (the leave order never reached it: here the store is
/// changed behind the API's back) cannot send.
#[tokio::test]
async fn a_send_on_a_join_that_outlived_the_membership_is_unauthorized() {
    let config = ChatConfig::default();
    let stores = Stores::memory(config.retention());
    let membership = stores.membership.clone();
    let chat = start_on(
        config,
        stores,
        JwtVerifier::hs256(SECRET),
        Some(API_KEY.into()),
    )
    .await;
    chat.add_member("s", "bob").await;
    chat.add_member("s", "alice").await;
    let mut bob = chat.connect("bob", "b").await;
    let jr = join_ok(&mut bob, "chat:s").await;
    let mut alice = chat.connect("alice", "a").await;
    join_ok(&mut alice, "chat:s").await;
    assert!(membership.remove("s", "bob").await.unwrap());
    let (status, resp, sent) =
        send(&mut bob, &jr, "s", r#"{"content":"x","mobile_ref_id":"9"}"#).await;
    assert_eq!(status, "error");
    assert_eq!(resp, json!({"reason":"unauthorized"}));
    assert_eq!(
        (sent["status"].clone(), sent["reason"].clone()),
        (json!("error"), json!("unauthorized"))
    );
    assert_no(&mut alice, "receive_message").await;
}
