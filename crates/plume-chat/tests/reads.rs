//! Read receipts and unread counts on `chat:{id}`: `mark_read` stores a position that never
//! moves back, answers the unread count (messages after it not sent by the reader), tells
//! the chat's other sockets with `message_read`, and refuses a bad seq. On the embedded store
//! it survives a restart; across two nodes it is shared through Redis.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use plume_chat::Membership;
use plume_client::Client;
use plume_redis::test_server::RedisServer;
use serde_json::{Value, json};

async fn mark_read(
    c: &mut Client,
    jr: &plume_wire::Ref,
    chat: &str,
    payload: &str,
) -> (String, Value) {
    let reply = c
        .call(jr, &format!("chat:{chat}"), "mark_read", &json(payload))
        .await
        .unwrap();
    let body = match reply.reply_response().unwrap() {
        plume_wire::Payload::Json(j) => j.parse().unwrap(),
        plume_wire::Payload::Binary(_) => Value::Null,
    };
    (reply.reply_status().unwrap(), body)
}

async fn send_as(c: &mut Client, jr: &plume_wire::Ref, chat: &str, tag: &str) {
    let body = format!(r#"{{"content":"{tag}","mobile_ref_id":"{tag}"}}"#);
    assert_eq!(send(c, jr, chat, &body).await.0, "ok");
}

async fn read_flow(alice_node: &Chat, bob_node: &Chat) {
    let mut alice = alice_node.connect("alice", "a").await;
    let mut bob = bob_node.connect("bob", "b").await;
    let ajr = join_ok(&mut alice, "chat:r").await;
    let bjr = join_ok(&mut bob, "chat:r").await;
    // 1, 2, 3 from alice; 4 from bob; 5 from alice.
    for t in ["a1", "a2", "a3"] {
        send_as(&mut alice, &ajr, "r", t).await;
    }
    send_as(&mut bob, &bjr, "r", "b4").await;
    send_as(&mut alice, &ajr, "r", "a5").await;

    // Bob read up to 2: unread are 3 and 5 (4 is his own).
    assert_eq!(
        mark_read(&mut bob, &bjr, "r", r#"{"seq":2}"#).await,
        ("ok".into(), json!({"unread": 2}))
    );
    assert_eq!(
        next_event(&mut alice, "message_read").await,
        json!({"chat_id":"r","user_id":"bob","seq":2})
    );
    // Never back: marking 1 keeps 2.
    assert_eq!(
        mark_read(&mut bob, &bjr, "r", r#"{"seq":1}"#).await.1,
        json!({"unread": 2})
    );
    assert_eq!(next_event(&mut alice, "message_read").await["seq"], 2);
    assert_eq!(
        mark_read(&mut bob, &bjr, "r", r#"{"seq":5}"#).await.1,
        json!({"unread": 0})
    );
    for bad in [
        r#"{"seq":6}"#,
        r#"{"seq":0}"#,
        r#"{"seq":-1}"#,
        r#"{"seq":"3"}"#,
        "{}",
    ] {
        assert_eq!(
            mark_read(&mut bob, &bjr, "r", bad).await,
            ("error".into(), json!({"reason":"invalid_seq"})),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn mark_read_on_one_node() {
    let chat = start_with(|c| c.membership = Membership::Open).await;
    read_flow(&chat, &chat).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mark_read_across_two_nodes() {
    let redis = RedisServer::start();
    let open = |c: &mut plume_chat::ChatConfig| c.membership = Membership::Open;
    let (a, _ca) = start_node(&redis.url(), "a", open).await;
    let (b, _cb) = start_node(&redis.url(), "b", open).await;
    read_flow(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_position_survives_a_restart_of_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    {
        let chat = start_embedded(dir.path(), |c| c.membership = Membership::Open).await;
        let mut alice = chat.connect("alice", "a").await;
        let jr = join_ok(&mut alice, "chat:p").await;
        for t in ["x1", "x2", "x3"] {
            send_as(&mut alice, &jr, "p", t).await;
        }
        let mut bob = chat.connect("bob", "b").await;
        let bjr = join_ok(&mut bob, "chat:p").await;
        assert_eq!(
            mark_read(&mut bob, &bjr, "p", r#"{"seq":2}"#).await.1,
            json!({"unread": 1})
        );
        chat.running.shutdown().await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let chat = start_embedded(dir.path(), |c| c.membership = Membership::Open).await;
    let mut bob = chat.connect("bob", "b").await;
    let bjr = join_ok(&mut bob, "chat:p").await;
    // Marking an older seq answers from the stored position (2), not from 1.
    assert_eq!(
        mark_read(&mut bob, &bjr, "p", r#"{"seq":1}"#).await.1,
        json!({"unread": 1})
    );
}
