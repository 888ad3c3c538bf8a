//! The rooms list (`notifications:{user_id}`): the join reply's `rooms`, most recent activity
//! first with the last message, unread, members and online counts; `list_rooms` paging with
//! a cursor (and refusing one the server did not issue); `room_updated` when the user reads
//! on another device or is added to or removed from a chat; `GET /api/users/{id}/rooms`.
//! On memory, on the embedded store, and across two nodes sharing Redis.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use plume_client::Client;
use plume_redis::test_server::RedisServer;
use serde_json::{Value, json};

async fn call(
    c: &mut Client,
    jr: &plume_wire::Ref,
    topic: &str,
    event: &str,
    payload: &str,
) -> (String, Value) {
    let reply = c.call(jr, topic, event, &json(payload)).await.unwrap();
    let body = match reply.reply_response().unwrap() {
        plume_wire::Payload::Json(j) => j.parse().unwrap(),
        plume_wire::Payload::Binary(_) => Value::Null,
    };
    (reply.reply_status().unwrap(), body)
}

fn ids(rooms: &Value) -> Vec<&str> {
    rooms
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["chat_id"].as_str().unwrap())
        .collect()
}

/// Alice on `a`, Bob on `b` (the same node or two).
async fn rooms_flow(a: &Chat, b: &Chat) {
    for chat in ["r1", "r2", "r3"] {
        a.add_member(chat, "alice").await;
        a.add_member(chat, "bob").await;
    }
    let mut alice = a.connect("alice", "a").await;
    // Activity order r1 < r3 < r2 (each send a few ms after the one before): Alice sends to
    // r1 once, r3 twice, r2 once; Bob answers in r2 once.
    let mut jrs = std::collections::HashMap::new();
    for chat in ["r1", "r3", "r2"] {
        jrs.insert(chat, join_ok(&mut alice, &format!("chat:{chat}")).await);
    }
    for (chat, tag) in [
        ("r1", "one"),
        ("r3", "three-a"),
        ("r3", "three-b"),
        ("r2", "two"),
    ] {
        tokio::time::sleep(Duration::from_millis(3)).await;
        let body = format!(r#"{{"content":"{tag}","mobile_ref_id":"{tag}"}}"#);
        assert_eq!(send(&mut alice, &jrs[chat], chat, &body).await.0, "ok");
    }
    let mut bob = b.connect("bob", "b").await;
    let (njr, status, reply) = join(&mut bob, "notifications:bob").await;
    assert_eq!(status, "ok");
    assert_eq!(ids(&reply["rooms"]), ["r2", "r3", "r1"], "{reply}");
    assert_eq!(reply["next"], Value::Null);
    let r3 = &reply["rooms"][1];
    assert_eq!(r3["last_message"]["content"], "three-b");
    assert_eq!(r3["last_message"]["seq"], 2);
    assert_eq!(r3["last_message"]["sender_id"], "alice");
    assert!(r3["last_message"]["message_id"].is_string());
    assert!(
        r3["last_message"]["timestamp"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert_eq!(r3["unread_count"], 2);
    assert_eq!(r3["members_count"], 2);
    // Alice is in the chat, Bob is the one asking.
    assert_eq!(r3["online_count"], 2);
    assert_eq!(r3["member"], true);

    // Bob's own message does not count as unread; his device 2 reads r2.
    let mut bob2 = b.connect("bob", "b2").await;
    let bjr = join_ok(&mut bob2, "chat:r2").await;
    assert_eq!(
        send(
            &mut bob2,
            &bjr,
            "r2",
            r#"{"content":"reply","mobile_ref_id":"reply"}"#
        )
        .await
        .0,
        "ok"
    );
    assert_eq!(
        call(&mut bob2, &bjr, "chat:r2", "mark_read", r#"{"seq":1}"#)
            .await
            .1,
        json!({"unread": 0})
    );
    let updated = next_event(&mut bob, "room_updated").await;
    assert_eq!(updated["chat_id"], "r2");
    assert_eq!(updated["unread_count"], 0);
    assert_eq!(updated["last_message"]["content"], "reply");
    assert_eq!(updated["member"], true);

    // Paging: two, then the rest from the cursor.
    let (status, page) = call(
        &mut bob,
        &njr,
        "notifications:bob",
        "list_rooms",
        r#"{"limit":2}"#,
    )
    .await;
    assert_eq!(status, "ok");
    assert_eq!(ids(&page["rooms"]), ["r2", "r3"]);
    let next = page["next"].as_str().unwrap().to_owned();
    let (_, rest) = call(
        &mut bob,
        &njr,
        "notifications:bob",
        "list_rooms",
        &json!({"before": next}).to_string(),
    )
    .await;
    assert_eq!(ids(&rest["rooms"]), ["r1"]);
    assert_eq!(rest["next"], Value::Null);
    let (_, all) = call(&mut bob, &njr, "notifications:bob", "list_rooms", "{}").await;
    assert_eq!(ids(&all["rooms"]), ["r2", "r3", "r1"]);

    // Removed from r3: told at once, and r3 leaves the list.
    let (status, _) = a.api("DELETE", "/api/chats/r3/members/bob", None).await;
    assert_eq!(status, 200);
    let updated = next_event(&mut bob, "room_updated").await;
    assert_eq!(updated["chat_id"], "r3");
    assert_eq!(updated["member"], false);
    assert_eq!(updated["last_message"], Value::Null);
    assert_eq!(updated["members_count"], 1);
    // Added to r4: told, and first in the list (added after every message).
    tokio::time::sleep(Duration::from_millis(3)).await;
    a.add_member("r4", "bob").await;
    let updated = next_event(&mut bob, "room_updated").await;
    assert_eq!(updated["chat_id"], "r4");
    assert_eq!(updated["member"], true);
    assert_eq!(updated["last_message"], Value::Null);
    let (status, api) = b.api("GET", "/api/users/bob/rooms", None).await;
    assert_eq!(status, 200);
    assert_eq!(ids(&api["rooms"]), ["r4", "r2", "r1"], "{api}");
    let (_, api) = b.api("GET", "/api/users/bob/rooms?limit=1", None).await;
    assert_eq!(ids(&api["rooms"]), ["r4"]);
    let cursor = api["next"].as_str().unwrap().to_owned();
    let (_, api) = a
        .api(
            "GET",
            &format!("/api/users/bob/rooms?limit=1&before={cursor}"),
            None,
        )
        .await;
    assert_eq!(
        ids(&api["rooms"]),
        ["r2"],
        "a cursor from one node pages on the other"
    );
}

#[tokio::test]
async fn rooms_list_on_one_node() {
    let chat = start().await;
    rooms_flow(&chat, &chat).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_list_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let chat = start_embedded(dir.path(), |_| {}).await;
    rooms_flow(&chat, &chat).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_list_across_two_nodes() {
    let redis = RedisServer::start();
    let (a, _ca) = start_node(&redis.url(), "a", |_| {}).await;
    let (b, _cb) = start_node(&redis.url(), "b", |_| {}).await;
    rooms_flow(&a, &b).await;
}

#[tokio::test]
async fn a_bad_list_rooms_is_refused_with_a_reason() {
    let chat = start().await;
    chat.add_member("c", "bob").await;
    let mut bob = chat.connect("bob", "b").await;
    let jr = join_ok(&mut bob, "notifications:bob").await;
    for (payload, reason) in [
        (r#"{"before":"not-a-cursor"}"#, "invalid_cursor"),
        (r#"{"before":"r1.zz.61"}"#, "invalid_cursor"),
        (r#"{"before":42}"#, "invalid_cursor"),
        (r#"{"limit":0}"#, "invalid_limit"),
        (r#"{"limit":51}"#, "invalid_limit"),
        (r#"{"limit":"2"}"#, "invalid_limit"),
        ("[1]", "invalid_payload"),
    ] {
        assert_eq!(
            call(&mut bob, &jr, "notifications:bob", "list_rooms", payload).await,
            ("error".into(), json!({ "reason": reason })),
            "{payload}"
        );
    }
    assert_eq!(
        call(&mut bob, &jr, "notifications:bob", "nope", "{}").await,
        ("error".into(), json!({"reason": "unknown_event"}))
    );
    // The channel still works.
    let (status, page) = call(&mut bob, &jr, "notifications:bob", "list_rooms", "{}").await;
    assert_eq!(status, "ok");
    assert_eq!(ids(&page["rooms"]), ["c"]);
    for bad in ["before=zz", "limit=0", "limit=x"] {
        let (status, body) = chat
            .api("GET", &format!("/api/users/bob/rooms?{bad}"), None)
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, _) = chat.api("POST", "/api/users/bob/rooms", None).await;
    assert_eq!(status, 405);
}

#[tokio::test]
async fn a_room_over_the_online_limit_has_no_online_count() {
    let chat = start_with(|c| c.online_fanout_max_members = 2).await;
    for user in ["a", "b", "c"] {
        chat.add_member("big", user).await;
    }
    chat.add_member("small", "a").await;
    let mut a = chat.connect("a", "d").await;
    let (_, _, reply) = join(&mut a, "notifications:a").await;
    let rooms = reply["rooms"].as_array().unwrap();
    let big = rooms.iter().find(|r| r["chat_id"] == "big").unwrap();
    let small = rooms.iter().find(|r| r["chat_id"] == "small").unwrap();
    assert_eq!(big["members_count"], 3);
    assert_eq!(big["online_count"], Value::Null);
    assert_eq!(small["online_count"], 1);
}
