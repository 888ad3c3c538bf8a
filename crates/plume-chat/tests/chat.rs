//! The chat contract, sentence by sentence: joins, send_message, acknowledgements, delivery,
//! validation errors, idempotent retries, notifications and pending notifications.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use plume_chat::Membership;
use serde_json::json;

#[tokio::test]
async fn strict_membership_admits_only_registered_members() {
    let chat = start().await;
    let mut alice = chat.connect("alice", "a1").await;
    let (_, status, resp) = join(&mut alice, "chat:1").await;
    assert_eq!(
        (status.as_str(), resp),
        ("error", json!({"reason":"unauthorized"}))
    );
    chat.add_member("1", "alice").await;
    join_ok(&mut alice, "chat:1").await;
    // Removing the member stops the next join.
    let (code, _) = chat.api("DELETE", "/api/chats/1/members/alice", None).await;
    assert_eq!(code, 200);
    let mut again = chat.connect("alice", "a2").await;
    let (_, status, _) = join(&mut again, "chat:1").await;
    assert_eq!(status, "error");
}

#[tokio::test]
async fn open_membership_admits_anyone_and_records_them() {
    let chat = start_with(|c| c.membership = Membership::Open).await;
    let mut zed = chat.connect("zed", "z").await;
    join_ok(&mut zed, "chat:open").await;
    let (code, body) = chat.api("GET", "/api/chats/open/members", None).await;
    assert_eq!((code, body), (200, json!({"members":["zed"]})));
}

#[tokio::test]
async fn send_message_acks_the_sender_and_reaches_every_other_socket() {
    let chat = start().await;
    chat.add_member("7", "alice").await;
    chat.add_member("7", "bob").await;
    let mut a1 = chat.connect("alice", "a1").await;
    let mut a2 = chat.connect("alice", "a2").await; // alice's second device
    let mut b = chat.connect("bob", "b1").await;
    let jr = join_ok(&mut a1, "chat:7").await;
    join_ok(&mut a2, "chat:7").await;
    join_ok(&mut b, "chat:7").await;

    let (status, reply, sent) = send(
        &mut a1,
        &jr,
        "7",
        r#"{"content":"hello","mobile_ref_id":"m-1"}"#,
    )
    .await;
    assert_eq!(status, "ok");
    let id = reply["message_id"].as_str().unwrap().to_owned();
    assert!(!id.is_empty());
    assert_eq!(sent["status"], "sent");
    assert_eq!(sent["mobile_ref_id"], "m-1");
    assert_eq!(sent["chat_id"], "7");
    assert_eq!(sent["message_id"], id.as_str());
    let ts = sent["timestamp"].as_str().unwrap().to_owned();
    assert!(ts.ends_with('Z') && ts.len() == 24, "{ts}");

    assert_eq!(reply["seq"], 1);
    assert_eq!(sent["seq"], 1);
    let expected = json!({"chat_id":"7","content":"hello","sender_id":"alice","message_id":id,
        "timestamp":ts,"seq":1});
    assert_eq!(next_event(&mut b, "receive_message").await, expected);
    assert_eq!(next_event(&mut a2, "receive_message").await, expected);
    assert_no(&mut a1, "receive_message").await;
}

#[tokio::test]
async fn invalid_sends_get_an_error_reply_and_an_error_message_sent() {
    let chat = start_with(|c| c.max_message_chars = 5).await;
    chat.add_member("v", "alice").await;
    chat.add_member("v", "bob").await;
    let mut a = chat.connect("alice", "a").await;
    let mut b = chat.connect("bob", "b").await;
    let jr = join_ok(&mut a, "chat:v").await;
    join_ok(&mut b, "chat:v").await;
    let cases = [
        (
            r#"{"content":"","mobile_ref_id":"r1"}"#,
            "invalid_content",
            "r1",
        ),
        (r#"{"mobile_ref_id":"r2"}"#, "invalid_content", "r2"),
        (
            r#"{"content":"toolong","mobile_ref_id":"r3"}"#,
            "content_too_long",
            "r3",
        ),
        (r#"{"content":"hi"}"#, "invalid_mobile_ref_id", ""),
        (
            r#"{"content":"hi","mobile_ref_id":""}"#,
            "invalid_mobile_ref_id",
            "",
        ),
        (r#""not an object""#, "invalid_payload", ""),
    ];
    for (payload, reason, mref) in cases {
        let (status, reply, sent) = send(&mut a, &jr, "v", payload).await;
        assert_eq!(
            (status.as_str(), &reply),
            ("error", &json!({"reason": reason})),
            "{payload}"
        );
        assert_eq!(
            sent,
            json!({"mobile_ref_id": mref, "status":"error", "chat_id":"v", "reason": reason}),
            "{payload}"
        );
    }
    assert_no(&mut b, "receive_message").await;
    // Unknown events are answered, not crashed on.
    let reply = a
        .call(&jr, "chat:v", "no_such_event", &json("{}"))
        .await
        .unwrap();
    assert_eq!(reply.reply_status().as_deref(), Some("error"));
}

#[tokio::test]
async fn a_retry_returns_the_original_id_and_is_not_delivered_twice() {
    let chat = start().await;
    chat.add_member("r", "alice").await;
    chat.add_member("r", "bob").await;
    let mut a = chat.connect("alice", "a").await;
    let mut b = chat.connect("bob", "b").await;
    let jr = join_ok(&mut a, "chat:r").await;
    join_ok(&mut b, "chat:r").await;
    let body = r#"{"content":"once","mobile_ref_id":"same"}"#;
    let (_, first, sent1) = send(&mut a, &jr, "r", body).await;
    next_event(&mut b, "receive_message").await;
    let (status, second, sent2) = send(&mut a, &jr, "r", body).await;
    assert_eq!(status, "ok");
    assert_eq!(first, second);
    assert_eq!(
        sent1, sent2,
        "the retry's message_sent repeats the original"
    );
    assert_no(&mut b, "receive_message").await;
    // The same ref in another chat is a different message.
    chat.add_member("r2", "alice").await;
    let jr2 = join_ok(&mut a, "chat:r2").await;
    let (_, other, _) = send(&mut a, &jr2, "r2", body).await;
    assert_ne!(first, other);
}

#[tokio::test]
async fn idempotency_keys_expire_after_the_configured_window() {
    let chat = start_with(|c| c.idempotency_ttl = Duration::from_millis(300)).await;
    chat.add_member("w", "alice").await;
    let mut a = chat.connect("alice", "a").await;
    let jr = join_ok(&mut a, "chat:w").await;
    let body = r#"{"content":"x","mobile_ref_id":"k"}"#;
    let (_, first, _) = send(&mut a, &jr, "w", body).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, later, _) = send(&mut a, &jr, "w", body).await;
    assert_ne!(first, later);
}

#[tokio::test]
async fn notifications_topic_is_only_for_its_own_user() {
    let chat = start().await;
    let mut a = chat.connect("alice", "a").await;
    let (_, status, resp) = join(&mut a, "notifications:bob").await;
    assert_eq!(
        (status.as_str(), resp),
        ("error", json!({"reason":"unauthorized"}))
    );
    let (_, status, _) = join(&mut a, "notification:bob").await;
    assert_eq!(status, "error");
    join_ok(&mut a, "notifications:alice").await;
    join_ok(&mut a, "notification:alice").await;
}

#[tokio::test]
async fn members_outside_the_chat_get_new_notification_members_inside_do_not() {
    let chat = start().await;
    for u in ["alice", "bob", "carol"] {
        chat.add_member("n", u).await;
    }
    let mut a = chat.connect("alice", "a").await;
    let mut b = chat.connect("bob", "b").await; // in the chat and on notifications
    let mut c = chat.connect("carol", "c").await; // notifications only, via the alias
    let jr = join_ok(&mut a, "chat:n").await;
    join_ok(&mut a, "notifications:alice").await;
    join_ok(&mut b, "chat:n").await;
    join_ok(&mut b, "notifications:bob").await;
    join_ok(&mut c, "notification:carol").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (_, reply, sent) = send(
        &mut a,
        &jr,
        "n",
        r#"{"content":"ping","mobile_ref_id":"p"}"#,
    )
    .await;
    let n = next_event(&mut c, "new_notification").await;
    assert_eq!(
        n,
        json!({"chat_id":"n","sender_id":"alice","content":"ping","timestamp":sent["timestamp"],
            "message_id":reply["message_id"],"seq":1})
    );
    assert_no(&mut b, "new_notification").await;
    assert_no(&mut a, "new_notification").await;
    // Carol's copy was stored until her socket wrote it: once written it is gone, so her
    // next join finds nothing pending.
    drop(c);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut c2 = chat.connect("carol", "c2").await;
    join_ok(&mut c2, "notifications:carol").await;
    assert_no(&mut c2, "pending_notifications").await;
}

#[tokio::test]
async fn offline_members_get_pending_notifications_on_join_once() {
    pending_once(&start().await).await;
}

/// The embedded store removes delivered pending notifications with a write that commits a
/// little later; a device joining in between must not get them again (it did: the phoenix.js
/// suite caught a second device receiving both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_members_get_pending_notifications_on_join_once_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    pending_once(&start_embedded(dir.path(), |_| {}).await).await;
}

async fn pending_once(chat: &Chat) {
    chat.add_member("p", "alice").await;
    chat.add_member("p", "dave").await;
    let mut a = chat.connect("alice", "a").await;
    let jr = join_ok(&mut a, "chat:p").await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let (_, reply, _) = send(
            &mut a,
            &jr,
            "p",
            &format!(r#"{{"content":"m{i}","mobile_ref_id":"r{i}"}}"#),
        )
        .await;
        ids.push(reply["message_id"].clone());
    }
    let mut d = chat.connect("dave", "d").await;
    join_ok(&mut d, "notifications:dave").await;
    for (i, id) in ids.iter().enumerate() {
        let n = next_event(&mut d, "pending_notification").await;
        assert_eq!(
            (n["content"].clone(), n["message_id"].clone()),
            (json!(format!("m{i}")), id.clone())
        );
    }
    let all = next_event(&mut d, "pending_notifications").await;
    let contents: Vec<_> = all["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["content"].clone())
        .collect();
    assert_eq!(contents, [json!("m0"), json!("m1"), json!("m2")]);
    // Delivered means removed: a second device joining later gets nothing pending.
    let mut d2 = chat.connect("dave", "d2").await;
    join_ok(&mut d2, "notifications:dave").await;
    assert_no(&mut d2, "pending_notification").await;
    // Now dave is online: the next message is a live notification, not pending.
    send(
        &mut a,
        &jr,
        "p",
        r#"{"content":"live","mobile_ref_id":"r9"}"#,
    )
    .await;
    assert_eq!(
        next_event(&mut d, "new_notification").await["content"],
        "live"
    );
}

#[tokio::test]
async fn pending_storage_is_bounded_per_user() {
    let chat = start_with(|c| c.pending_limit = 2).await;
    chat.add_member("b", "alice").await;
    chat.add_member("b", "erin").await;
    let mut a = chat.connect("alice", "a").await;
    let jr = join_ok(&mut a, "chat:b").await;
    for i in 0..4 {
        send(
            &mut a,
            &jr,
            "b",
            &format!(r#"{{"content":"m{i}","mobile_ref_id":"r{i}"}}"#),
        )
        .await;
    }
    let mut e = chat.connect("erin", "e").await;
    join_ok(&mut e, "notifications:erin").await;
    let all = next_event(&mut e, "pending_notifications").await;
    let contents: Vec<_> = all["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["content"].clone())
        .collect();
    assert_eq!(
        contents,
        [json!("m2"), json!("m3")],
        "the oldest are dropped"
    );
}

/// The seed story: two users chat, a third is offline and later connects to find the
/// pending notifications, and a retried send is not duplicated anywhere.
#[tokio::test]
async fn seed_story() {
    let chat = start().await;
    let chat_id = "674bd8ba5a0b920001bd9f5d";
    for u in ["u1", "u2", "u3"] {
        chat.add_member(chat_id, u).await;
    }
    let topic = format!("chat:{chat_id}");
    let mut one = chat.connect("u1", "dev-1").await;
    let mut two = chat.connect("u2", "dev-2").await;
    let jr1 = join_ok(&mut one, &topic).await;
    let jr2 = join_ok(&mut two, &topic).await;
    join_ok(&mut one, "notifications:u1").await;
    join_ok(&mut two, "notifications:u2").await;

    let (_, r1, _) = send(
        &mut one,
        &jr1,
        chat_id,
        r#"{"content":"Hey, how are you?","mobile_ref_id":"123123"}"#,
    )
    .await;
    assert_eq!(
        next_event(&mut two, "receive_message").await["content"],
        "Hey, how are you?"
    );
    let (_, r2, _) = send(
        &mut two,
        &jr2,
        chat_id,
        r#"{"content":"Hey, i'm fine! and you?","mobile_ref_id":"123124"}"#,
    )
    .await;
    assert_eq!(
        next_event(&mut one, "receive_message").await["sender_id"],
        "u2"
    );
    // u1's phone retries the first send (it never saw the ack): same id, nothing new.
    let (_, again, _) = send(
        &mut one,
        &jr1,
        chat_id,
        r#"{"content":"Hey, how are you?","mobile_ref_id":"123123"}"#,
    )
    .await;
    assert_eq!(again, r1);
    assert_no(&mut two, "receive_message").await;
    assert_no(&mut one, "new_notification").await;

    // u3 comes online and finds both messages waiting, once each.
    let mut three = chat.connect("u3", "dev-3").await;
    join_ok(&mut three, "notifications:u3").await;
    let all = next_event(&mut three, "pending_notifications").await;
    let got: Vec<_> = all["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["sender_id"].clone(), n["message_id"].clone()))
        .collect();
    assert_eq!(
        got,
        [
            (json!("u1"), r1["message_id"].clone()),
            (json!("u2"), r2["message_id"].clone())
        ]
    );
    let jr3 = join_ok(&mut three, &topic).await;
    send(
        &mut three,
        &jr3,
        chat_id,
        r#"{"content":"back!","mobile_ref_id":"9"}"#,
    )
    .await;
    assert_eq!(
        next_event(&mut one, "receive_message").await["content"],
        "back!"
    );
    assert_eq!(
        next_event(&mut two, "receive_message").await["content"],
        "back!"
    );
}
