//! Presence and online status across nodes sharing a real Redis: remote metas in
//! `presence_state`, diffs across nodes, a node that dies (its Redis connection cut: no
//! heartbeat, no cleanup), a Redis restart, and Redis losing its data.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use plume_redis::test_server::RedisServer;
use serde_json::json;

/// The node TTL of `start_node`.
const NODE_TTL: Duration = Duration::from_secs(3);

fn fast(c: &mut plume_chat::ChatConfig) {
    c.presence_interval = Duration::from_millis(50);
    c.online_linger = Duration::from_millis(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_on_another_node_is_in_the_state_and_the_diffs() {
    let redis = RedisServer::start();
    let (a, _ca) = start_node(&redis.url(), "a", fast).await;
    let (b, _cb) = start_node(&redis.url(), "b", fast).await;
    for u in ["alice", "bob", "carol"] {
        a.add_member("k", u).await;
    }
    let mut bob = b.connect("bob", "bob-phone").await;
    join_ok(&mut bob, "chat:k").await;
    let mut alice = a.connect("alice", "alice-phone").await;
    join_ok(&mut alice, "chat:k").await;
    let mut seen_a = Seen::default();
    until(&mut alice, "chat:k", &mut seen_a, |s| {
        s.counts() == users(&[("alice", 1), ("bob", 1)])
    })
    .await;
    assert_eq!(seen_a.users["bob"][0].1, "bob-phone");
    // Bob, on the other node, hears of alice through a diff.
    let mut seen_b = Seen::default();
    until(&mut bob, "chat:k", &mut seen_b, |s| s.users.len() == 2).await;
    assert_eq!(seen_a.users, seen_b.users);
    // A second device of bob on node a: one key, two metas, everywhere.
    let mut bob2 = a.connect("bob", "bob-tablet").await;
    join_ok(&mut bob2, "chat:k").await;
    for (c, seen) in [(&mut alice, &mut seen_a), (&mut bob, &mut seen_b)] {
        until(c, "chat:k", seen, |s| {
            s.counts() == users(&[("alice", 1), ("bob", 2)])
        })
        .await;
    }
    // Both nodes' APIs answer the same map.
    for node in [&a, &b] {
        let (code, body) = node.api("GET", "/api/chats/k/presence", None).await;
        assert_eq!(code, 200);
        let mut api = Seen::default();
        api.state(&body);
        assert_eq!(api.users, seen_a.users);
    }
    // Bob's phone (node b) closes: alice on node a sees one meta of bob left.
    bob.close().await.unwrap();
    until(&mut alice, "chat:k", &mut seen_a, |s| {
        s.counts() == users(&[("alice", 1), ("bob", 1)])
    })
    .await;
    assert_eq!(seen_a.users["bob"][0].1, "bob-tablet");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_status_crosses_nodes() {
    let redis = RedisServer::start();
    let (a, _ca) = start_node(&redis.url(), "a", fast).await;
    let (b, _cb) = start_node(&redis.url(), "b", fast).await;
    a.add_member("k", "alice").await;
    a.add_member("k", "bob").await;
    let mut bob = a.connect("bob", "b").await;
    join_ok(&mut bob, "notifications:bob").await;
    let alice_b = b.connect("alice", "a1").await;
    let ev = next_event(&mut bob, "user_online_changed").await;
    assert_eq!(ev, json!({"user_id": "alice", "online": true}));
    // Her second socket, on the other node, is not news; closing the first is not either.
    let alice_a = a.connect("alice", "a2").await;
    assert_no(&mut bob, "user_online_changed").await;
    alice_b.close().await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_no(&mut bob, "user_online_changed").await;
    alice_a.close().await.unwrap();
    let ev = next_event(&mut bob, "user_online_changed").await;
    assert_eq!(ev, json!({"user_id": "alice", "online": false}));
}

/// Node c's Redis connection is cut (as if it crashed): within the node TTL the other nodes
/// sweep its records, its users leave with a presence_diff, and go offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_users_leave_within_the_node_ttl() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(redis.port()).await;
    let (a, _ca) = start_node(&redis.url(), "a", fast).await;
    let (c, _cc) = start_node(&proxy.url(), "c", fast).await;
    for u in ["alice", "carol"] {
        a.add_member("k", u).await;
    }
    let mut alice = a.connect("alice", "a").await;
    join_ok(&mut alice, "notifications:alice").await;
    join_ok(&mut alice, "chat:k").await;
    let mut carol = c.connect("carol", "c").await;
    join_ok(&mut carol, "chat:k").await;
    let mut seen = Seen::default();
    until(&mut alice, "chat:k", &mut seen, |s| s.users.len() == 2).await;
    let ev = alice
        .wait_for(|m| m.event == "user_online_changed" && value(m)["user_id"] == "carol")
        .await
        .unwrap();
    assert_eq!(value(&ev)["online"], true);

    proxy.cut();
    let cut = tokio::time::Instant::now();
    let leave = alice
        .wait_for(|m| m.event == "presence_diff" && value(m)["leaves"].get("carol").is_some())
        .await
        .unwrap();
    let took = cut.elapsed();
    seen.diff(&value(&leave));
    assert_eq!(seen.counts(), users(&[("alice", 1)]));
    // Its last heartbeat was at most a third of the TTL before the cut, and the sweep
    // runs ten times per TTL.
    assert!(
        took <= NODE_TTL + NODE_TTL / 10 + Duration::from_millis(300),
        "left after {took:?}"
    );
    let ev = alice
        .wait_for(|m| m.event == "user_online_changed" && value(m)["user_id"] == "carol")
        .await
        .unwrap();
    assert_eq!(value(&ev)["online"], false);
    let (_, body) = a.api("GET", "/api/chats/k/presence", None).await;
    assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
    // Carol's socket is still open on the cut-off node: it is the cluster that lost it.
    drop(carol);
}

/// Redis restarts (keeping its data) while node c dies: the roster survives for the live
/// nodes, and c's user is gone within the node TTL, no ghost left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_a_redis_restart_presence_stays_and_a_dead_node_leaves_no_ghost() {
    let mut redis = RedisServer::start();
    let proxy = Proxy::start(redis.port()).await;
    let (a, _ca) = start_node(&redis.url(), "a", fast).await;
    let (b, _cb) = start_node(&redis.url(), "b", fast).await;
    let (c, _cc) = start_node(&proxy.url(), "c", fast).await;
    for u in ["alice", "bob", "carol", "dave"] {
        a.add_member("k", u).await;
    }
    let mut alice = a.connect("alice", "a").await;
    join_ok(&mut alice, "chat:k").await;
    let mut bob = b.connect("bob", "b").await;
    join_ok(&mut bob, "chat:k").await;
    let mut carol = c.connect("carol", "c").await;
    join_ok(&mut carol, "chat:k").await;
    let mut seen = Seen::default();
    until(&mut alice, "chat:k", &mut seen, |s| s.users.len() == 3).await;

    proxy.cut();
    let _redis = tokio::task::spawn_blocking(move || {
        redis.restart();
        redis
    })
    .await
    .unwrap();
    // No ghost once the node TTL has passed (the other nodes' links to Redis need up to a
    // few seconds of reconnect backoff on top, the wait below allows for it).
    tokio::time::sleep(NODE_TTL).await;
    until(&mut alice, "chat:k", &mut seen, |s| {
        s.counts() == users(&[("alice", 1), ("bob", 1)])
    })
    .await;
    // A joiner after the restart sees the live nodes' users and no ghost.
    let mut dave = b.connect("dave", "d").await;
    join_ok(&mut dave, "chat:k").await;
    let mut seen_d = Seen::default();
    until(&mut dave, "chat:k", &mut seen_d, |s| {
        s.counts() == users(&[("alice", 1), ("bob", 1), ("dave", 1)])
    })
    .await;
    let _ = carol.expect_silence(Duration::from_millis(10)).await;
}

/// Redis loses everything (FLUSHALL, as a restart without persistence): each live node
/// writes its records again and announces them; a node that died meanwhile leaves no ghost,
/// because the live nodes push a fresh presence_state once the roster is rebuilt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_redis_loses_its_data_presence_is_rebuilt_without_ghosts() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(redis.port()).await;
    let (a, _ca) = start_node(&redis.url(), "a", fast).await;
    let (b, _cb) = start_node(&redis.url(), "b", fast).await;
    let (c, _cc) = start_node(&proxy.url(), "c", fast).await;
    for u in ["alice", "bob", "carol", "dave"] {
        a.add_member("k", u).await;
    }
    let mut alice = a.connect("alice", "a").await;
    let jr = join_ok(&mut alice, "chat:k").await;
    let mut bob = b.connect("bob", "b").await;
    join_ok(&mut bob, "chat:k").await;
    let mut carol = c.connect("carol", "c").await;
    join_ok(&mut carol, "chat:k").await;
    let mut seen = Seen::default();
    until(&mut alice, "chat:k", &mut seen, |s| s.users.len() == 3).await;

    proxy.cut();
    assert!(
        redis_command(redis.port(), "FLUSHALL")
            .await
            .starts_with("+OK")
    );
    // Membership went with the data; the backend adds the members again.
    for u in ["alice", "bob", "carol", "dave"] {
        a.add_member("k", u).await;
    }
    // Alice's client gets a fresh state without the dead node's carol.
    let state = alice
        .wait_for(|m| m.event == "presence_state")
        .await
        .unwrap();
    assert_eq!(state.join_ref.as_ref(), Some(&jr));
    seen.state(&value(&state));
    assert_eq!(seen.counts(), users(&[("alice", 1), ("bob", 1)]));
    // And a joiner finds the rebuilt roster.
    let mut dave = a.connect("dave", "d").await;
    join_ok(&mut dave, "chat:k").await;
    let mut seen_d = Seen::default();
    until(&mut dave, "chat:k", &mut seen_d, |s| {
        s.counts() == users(&[("alice", 1), ("bob", 1), ("dave", 1)])
    })
    .await;
    let (_, body) = b.api("GET", "/api/chats/k/presence", None).await;
    let mut api = Seen::default();
    api.state(&body);
    assert_eq!(
        api.counts(),
        users(&[("alice", 1), ("bob", 1), ("dave", 1)])
    );
    let _ = carol.expect_silence(Duration::from_millis(10)).await;
}
