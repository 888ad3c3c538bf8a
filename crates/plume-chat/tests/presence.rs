//! Presence on `chat:{id}` on one node: `presence_state` after every join, `presence_diff`
//! on join, leave and close, two devices of one user, coalescing, a join/leave flood, and
//! `GET /api/chats/{id}/presence`.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use plume_client::Client;
use serde_json::json;

#[tokio::test]
async fn a_joiner_gets_the_state_and_everyone_gets_diffs() {
    let chat = start().await;
    for u in ["alice", "bob"] {
        chat.add_member("k", u).await;
    }
    let mut alice = chat.connect("alice", "phone").await;
    let jr = join_ok(&mut alice, "chat:k").await;
    // The state comes with the join's join_ref, right after the reply.
    let state = alice
        .wait_for(|m| m.event == "presence_state")
        .await
        .unwrap();
    assert_eq!(state.join_ref.as_ref(), Some(&jr));
    let mut seen_a = Seen::default();
    seen_a.state(&value(&state));
    assert_eq!(seen_a.counts(), users(&[("alice", 1)]));
    assert_eq!(seen_a.users["alice"][0].1, "phone");

    let mut bob = chat.connect("bob", "laptop").await;
    join_ok(&mut bob, "chat:k").await;
    let mut seen_b = Seen::default();
    until(&mut bob, "chat:k", &mut seen_b, |s| s.users.len() == 2).await;
    until(&mut alice, "chat:k", &mut seen_a, |s| s.users.len() == 2).await;
    assert_eq!(seen_a.users, seen_b.users, "the same metas, the same refs");

    // A second device of alice: one key, two metas.
    let mut alice2 = chat.connect("alice", "tablet").await;
    let jr2 = join_ok(&mut alice2, "chat:k").await;
    let mut seen_a2 = Seen::default();
    until(&mut alice2, "chat:k", &mut seen_a2, |s| {
        s.counts() == users(&[("alice", 2), ("bob", 1)])
    })
    .await;
    until(&mut bob, "chat:k", &mut seen_b, |s| {
        s.counts() == users(&[("alice", 2), ("bob", 1)])
    })
    .await;
    let devices: Vec<&str> = seen_b.users["alice"].iter().map(|m| m.1.as_str()).collect();
    assert_eq!(devices, ["phone", "tablet"]);
    let refs: std::collections::HashSet<&String> =
        seen_b.users.values().flatten().map(|m| &m.0).collect();
    assert_eq!(refs.len(), 3, "phx_ref unique per meta");

    // The API answers the same map.
    let (code, body) = chat.api("GET", "/api/chats/k/presence", None).await;
    assert_eq!(code, 200);
    let mut from_api = Seen::default();
    from_api.state(&body);
    assert_eq!(from_api.users, seen_b.users);

    // The tablet leaves: alice keeps one meta, the phone's.
    let leave = alice2
        .call(&jr2, "chat:k", "phx_leave", &json("{}"))
        .await
        .unwrap();
    assert_eq!(leave.reply_status().unwrap(), "ok");
    until(&mut bob, "chat:k", &mut seen_b, |s| {
        s.counts() == users(&[("alice", 1), ("bob", 1)])
    })
    .await;
    assert_eq!(seen_b.users["alice"][0].1, "phone");

    // Bob's socket closes without leaving: he leaves the roster.
    bob.close().await.unwrap();
    until(&mut alice, "chat:k", &mut seen_a, |s| {
        s.counts() == users(&[("alice", 1)])
    })
    .await;
    let (_, body) = chat.api("GET", "/api/chats/k/presence", None).await;
    assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
}

#[tokio::test]
async fn a_rejoin_gets_a_fresh_state_with_a_new_ref() {
    let chat = start().await;
    chat.add_member("k", "alice").await;
    chat.add_member("k", "bob").await;
    let mut bob = chat.connect("bob", "b").await;
    join_ok(&mut bob, "chat:k").await;
    let mut alice = chat.connect("alice", "a").await;
    let jr = join_ok(&mut alice, "chat:k").await;
    let mut seen = Seen::default();
    until(&mut alice, "chat:k", &mut seen, |s| s.users.len() == 2).await;
    let old_ref = seen.users["alice"][0].0.clone();
    alice
        .call(&jr, "chat:k", "phx_leave", &json("{}"))
        .await
        .unwrap();
    let jr2 = join_ok(&mut alice, "chat:k").await;
    let state = alice
        .wait_for(move |m| m.event == "presence_state" && m.join_ref.as_ref() == Some(&jr2))
        .await
        .unwrap();
    let mut fresh = Seen::default();
    fresh.state(&value(&state));
    assert_eq!(fresh.counts(), users(&[("alice", 1), ("bob", 1)]));
    assert_ne!(fresh.users["alice"][0].0, old_ref);
}

/// Many joins within one interval reach an observer as a few diffs, not one each, and a
/// socket that joins and leaves in a loop is not fanned out at its own rate.
#[tokio::test]
async fn diffs_are_coalesced_and_a_flood_is_not_fanned_out_at_its_rate() {
    let chat = start_with(|c| c.presence_interval = Duration::from_millis(400)).await;
    chat.add_member("k", "watcher").await;
    let mut watcher = chat.connect("watcher", "w").await;
    join_ok(&mut watcher, "chat:k").await;
    let mut seen = Seen::default();
    until(&mut watcher, "chat:k", &mut seen, |s| s.users.len() == 1).await;
    let mut joiners = Vec::new();
    for i in 0..20 {
        let user = format!("u{i}");
        chat.add_member("k", &user).await;
        let mut c = chat.connect(&user, "d").await;
        join_ok(&mut c, "chat:k").await;
        joiners.push(c);
    }
    seen.diffs = 0;
    until(&mut watcher, "chat:k", &mut seen, |s| s.users.len() == 21).await;
    assert!(
        seen.diffs <= 4,
        "20 joins in well under a second came as {} diffs",
        seen.diffs
    );

    // The flood: 40 join/leave cycles of one socket.
    chat.add_member("k", "flooder").await;
    let mut flooder = chat.connect("flooder", "f").await;
    let started = tokio::time::Instant::now();
    for _ in 0..40 {
        let jr = join_ok(&mut flooder, "chat:k").await;
        flooder
            .call(&jr, "chat:k", "phx_leave", &json("{}"))
            .await
            .unwrap();
    }
    let took = started.elapsed();
    // The leaves of the last interval are out one interval after the last one.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let mut diffs = 0;
    while let Ok(plume_client::Event::Message(m)) =
        watcher.recv_timeout(Duration::from_millis(100)).await
    {
        if m.event == "presence_diff" {
            diffs += 1;
            let v = value(&m);
            assert!(
                v["joins"].get("flooder").is_none(),
                "a join that left within the interval is not announced: {v}"
            );
        }
    }
    let intervals = (took.as_millis() / 400) as usize + 2;
    assert!(
        diffs <= intervals,
        "80 presence changes in {took:?} came as {diffs} diffs (at most {intervals})"
    );
    assert_eq!(
        chat.api("GET", "/api/chats/k/presence", None)
            .await
            .1
            .as_object()
            .unwrap()
            .len(),
        21
    );
}

#[tokio::test]
async fn a_socket_without_a_device_id_gets_one_of_its_own() {
    let chat = start().await;
    chat.add_member("k", "alice").await;
    let q = format!("token={}&vsn=2.0.0", token("alice"));
    let mut a1 = Client::connect(&chat.url(&q)).await.unwrap();
    let mut a2 = Client::connect(&chat.url(&q)).await.unwrap();
    join_ok(&mut a1, "chat:k").await;
    join_ok(&mut a2, "chat:k").await;
    let mut seen = Seen::default();
    until(&mut a1, "chat:k", &mut seen, |s| {
        s.counts() == users(&[("alice", 2)])
    })
    .await;
    let devices: Vec<&str> = seen.users["alice"].iter().map(|m| m.1.as_str()).collect();
    assert!(
        devices.iter().all(|d| d.starts_with("anon-")),
        "{devices:?}"
    );
    assert_ne!(devices[0], devices[1]);
}

#[tokio::test]
async fn a_device_id_over_the_id_limit_refuses_the_connect() {
    let chat = start().await;
    let q = format!(
        "token={}&device_unique_id={}&vsn=2.0.0",
        token("alice"),
        "d".repeat(129)
    );
    let err = Client::connect(&chat.url(&q)).await.err().unwrap();
    assert!(err.to_string().contains("403"), "{err}");
}

#[tokio::test]
async fn presence_of_an_unknown_chat_is_empty_and_long_ids_are_refused() {
    let chat = start().await;
    let (code, body) = chat.api("GET", "/api/chats/nobody/presence", None).await;
    assert_eq!((code, body), (200, json!({})));
    let long = "c".repeat(129);
    let (code, _) = chat
        .api("GET", &format!("/api/chats/{long}/presence"), None)
        .await;
    assert_eq!(code, 400);
    let (code, _) = chat.api("POST", "/api/chats/k/presence", None).await;
    assert_eq!(code, 405);
}

/// A chat over `presence_max_members` does not track presence: its joiners get an empty
/// `presence_state` (the phoenix.js helper syncs to an empty list), no diffs follow, the API
/// map stays empty; a chat at the limit is tracked as usual.
#[tokio::test]
async fn a_chat_over_the_presence_limit_is_not_tracked() {
    let chat = start_with(|c| {
        c.presence_max_members = 2;
        c.presence_interval = Duration::ZERO;
    })
    .await;
    for u in ["alice", "bob", "carol"] {
        chat.add_member("big", u).await;
    }
    for u in ["alice", "bob"] {
        chat.add_member("small", u).await;
    }
    let mut alice = chat.connect("alice", "phone").await;
    let mut bob = chat.connect("bob", "laptop").await;

    let jr = join_ok(&mut alice, "chat:big").await;
    let state = alice
        .wait_for(|m| m.event == "presence_state" && m.topic == "chat:big")
        .await
        .unwrap();
    assert_eq!(state.join_ref.as_ref(), Some(&jr));
    assert_eq!(value(&state), serde_json::json!({}));
    join_ok(&mut bob, "chat:big").await;
    let state = bob
        .wait_for(|m| m.event == "presence_state" && m.topic == "chat:big")
        .await
        .unwrap();
    assert_eq!(
        value(&state),
        serde_json::json!({}),
        "bob is not told of alice"
    );
    let (code, body) = chat.api("GET", "/api/chats/big/presence", None).await;
    assert_eq!((code, body), (200, serde_json::json!({})));

    // The small chat is tracked: bob's join reaches alice as a diff. Diffs go out at once
    // (interval zero), so one for bob's earlier join of the big chat would have come first.
    join_ok(&mut alice, "chat:small").await;
    join_ok(&mut bob, "chat:small").await;
    let mut seen = Seen::default();
    until(&mut alice, "chat:small", &mut seen, |s| s.users.len() == 2).await;
    let big_diffs = alice
        .pending()
        .filter(|m| m.topic == "chat:big" && m.event == "presence_diff")
        .count();
    assert_eq!(big_diffs, 0, "no presence_diff in the untracked chat");
}
