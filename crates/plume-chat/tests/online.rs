//! Online status on one node: `user_online_changed` on the notifications topic of the
//! members of a user's chats, with the linger and the fan-out bound.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const LINGER: Duration = Duration::from_millis(300);

#[tokio::test]
async fn first_socket_online_last_socket_offline_after_the_linger() {
    let chat = start_with(|c| c.online_linger = LINGER).await;
    for u in ["alice", "bob"] {
        chat.add_member("k", u).await;
    }
    chat.add_member("other", "alice").await;
    chat.add_member("other", "bob").await;
    let mut bob = chat.connect("bob", "b").await;
    join_ok(&mut bob, "notifications:bob").await;

    let alice1 = chat.connect("alice", "phone").await;
    let ev = next_event(&mut bob, "user_online_changed").await;
    assert_eq!(ev, json!({"user_id": "alice", "online": true}));
    // Once, although they share two chats.
    assert_no(&mut bob, "user_online_changed").await;

    // A second device is not news.
    let alice2 = chat.connect("alice", "tablet").await;
    assert_no(&mut bob, "user_online_changed").await;

    // Closing one device is not either; closing the last one is, after the linger.
    alice1.close().await.unwrap();
    assert_no(&mut bob, "user_online_changed").await;
    let closed = tokio::time::Instant::now();
    alice2.close().await.unwrap();
    let ev = next_event(&mut bob, "user_online_changed").await;
    assert_eq!(ev, json!({"user_id": "alice", "online": false}));
    assert!(closed.elapsed() >= LINGER, "not before the linger");
}

#[tokio::test]
async fn a_reconnect_within_the_linger_does_not_flap() {
    let chat = start_with(|c| c.online_linger = LINGER).await;
    chat.add_member("k", "alice").await;
    chat.add_member("k", "bob").await;
    let mut bob = chat.connect("bob", "b").await;
    join_ok(&mut bob, "notifications:bob").await;
    let alice = chat.connect("alice", "a").await;
    next_event(&mut bob, "user_online_changed").await;
    alice.close().await.unwrap();
    let _again = chat.connect("alice", "a").await;
    // Past the linger of the first socket: nothing happened as far as bob can tell.
    tokio::time::sleep(LINGER + Duration::from_millis(100)).await;
    assert_no(&mut bob, "user_online_changed").await;
}

#[tokio::test]
async fn only_small_chats_and_joined_notifications_hear_about_it() {
    let chat = start_with(|c| {
        c.online_linger = LINGER;
        c.online_fanout_max_members = 3;
    })
    .await;
    // A chat of four members does not propagate; a chat of three does.
    for u in ["alice", "bob", "carol", "dave"] {
        chat.add_member("big", u).await;
    }
    for u in ["alice", "carol", "erin"] {
        chat.add_member("small", u).await;
    }
    let mut bob = chat.connect("bob", "b").await;
    join_ok(&mut bob, "notifications:bob").await;
    let mut carol = chat.connect("carol", "c").await;
    join_ok(&mut carol, "notification:carol").await;
    // Erin is connected but has no notifications topic joined.
    let mut erin = chat.connect("erin", "e").await;
    join_ok(&mut erin, "chat:small").await;

    // Carol shares the small chat with erin too.
    let ev = next_event(&mut carol, "user_online_changed").await;
    assert_eq!(ev, json!({"user_id": "erin", "online": true}));
    let _alice = chat.connect("alice", "a").await;
    let ev = next_event(&mut carol, "user_online_changed").await;
    assert_eq!(ev, json!({"user_id": "alice", "online": true}));
    assert_no(&mut bob, "user_online_changed").await;
    assert_no(&mut erin, "user_online_changed").await;
}
