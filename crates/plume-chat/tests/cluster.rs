//! The chat service on two nodes sharing a private redis-server: delivery across nodes,
//! notifications and pending notifications across nodes, atomic pending delivery, retries on
//! another node, and a Redis outage.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use plume_redis::test_server::RedisServer;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_both_ways_exactly_once_across_nodes() {
    let redis = RedisServer::start();
    let (a, _ca) = start_node(&redis.url(), "a", |_| {}).await;
    let (b, _cb) = start_node(&redis.url(), "b", |_| {}).await;
    a.add_member("x", "alice").await;
    b.add_member("x", "bob").await; // membership is shared: added on either node
    let mut alice = a.connect("alice", "a1").await;
    let mut bob = b.connect("bob", "b1").await;
    let jra = join_ok(&mut alice, "chat:x").await;
    let jrb = join_ok(&mut bob, "chat:x").await;
    for i in 0..5 {
        send(
            &mut alice,
            &jra,
            "x",
            &format!(r#"{{"content":"a{i}","mobile_ref_id":"a{i}"}}"#),
        )
        .await;
        send(
            &mut bob,
            &jrb,
            "x",
            &format!(r#"{{"content":"b{i}","mobile_ref_id":"b{i}"}}"#),
        )
        .await;
    }
    for i in 0..5 {
        assert_eq!(
            next_event(&mut bob, "receive_message").await["content"],
            format!("a{i}")
        );
        assert_eq!(
            next_event(&mut alice, "receive_message").await["content"],
            format!("b{i}")
        );
    }
    assert_no(&mut bob, "receive_message").await;
    assert_no(&mut alice, "receive_message").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_and_pending_notifications_across_nodes() {
    let redis = RedisServer::start();
    let (a, _ca) = start_node(&redis.url(), "a", |_| {}).await;
    let (b, _cb) = start_node(&redis.url(), "b", |_| {}).await;
    for u in ["alice", "carol", "dave"] {
        a.add_member("n", u).await;
    }
    let mut alice = a.connect("alice", "a").await;
    let jr = join_ok(&mut alice, "chat:n").await;
    let mut carol = b.connect("carol", "c").await;
    join_ok(&mut carol, "notifications:carol").await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    send(
        &mut alice,
        &jr,
        "n",
        r#"{"content":"hi","mobile_ref_id":"1"}"#,
    )
    .await;
    // carol is online on node b: a live notification, not a pending one.
    assert_eq!(
        next_event(&mut carol, "new_notification").await["content"],
        "hi"
    );
    // dave was offline: his notification waits in Redis and reaches him on node b.
    let mut dave = b.connect("dave", "d").await;
    join_ok(&mut dave, "notifications:dave").await;
    assert_eq!(
        next_event(&mut dave, "pending_notification").await["content"],
        "hi"
    );
    assert_eq!(
        next_event(&mut dave, "pending_notifications").await["notifications"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_joining_at_once_on_two_nodes_lose_no_pending_notification() {
    let redis = RedisServer::start();
    let (a, _ca) = start_node(&redis.url(), "a", |_| {}).await;
    let (b, _cb) = start_node(&redis.url(), "b", |_| {}).await;
    for i in 0..20 {
        let body =
            format!(r#"{{"user_id":"erin","chat_id":"c","sender_id":"s","content":"m{i}"}}"#);
        let (code, resp) = a.api("POST", "/api/notify", Some(&body)).await;
        assert_eq!((code, resp["status"].clone()), (200, json!("pending")));
    }
    let mut phone = a.connect("erin", "phone").await;
    let mut tablet = b.connect("erin", "tablet").await;
    let empty = json("{}");
    let (p, t) = tokio::join!(
        phone.join("notifications:erin", &empty),
        tablet.join("notifications:erin", &empty)
    );
    p.unwrap();
    t.unwrap();
    // At least once: pending notifications are deleted only after they were written, so
    // two devices listing them at the same moment may both get them; none may be lost, and
    // each device sees them in order.
    let expected: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    let mut seen = std::collections::BTreeSet::new();
    for c in [&mut phone, &mut tablet] {
        if let Ok(m) = c.wait_for(|m| m.event == "pending_notifications").await {
            let got: Vec<String> = value(&m)["notifications"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["content"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(got, expected, "a device gets all of them, in order");
            seen.extend(got);
        }
    }
    assert_eq!(
        seen.len(),
        20,
        "every pending notification reached a device"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_through_another_node_is_not_duplicated() {
    let redis = RedisServer::start();
    let (a, _ca) = start_node(&redis.url(), "a", |_| {}).await;
    let (b, _cb) = start_node(&redis.url(), "b", |_| {}).await;
    a.add_member("r", "alice").await;
    a.add_member("r", "bob").await;
    let mut bob = b.connect("bob", "b").await;
    join_ok(&mut bob, "chat:r").await;
    let body = r#"{"content":"once","mobile_ref_id":"same"}"#;
    let mut first = a.connect("alice", "phone").await;
    let jr = join_ok(&mut first, "chat:r").await;
    let (_, r1, _) = send(&mut first, &jr, "r", body).await;
    // The phone lost its connection and the load balancer sent it to node b.
    let mut again = b.connect("alice", "phone").await;
    let jr2 = join_ok(&mut again, "chat:r").await;
    let (_, r2, _) = send(&mut again, &jr2, "r", body).await;
    assert_eq!(r1, r2);
    next_event(&mut bob, "receive_message").await;
    assert_no(&mut bob, "receive_message").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_fails_sends_visibly_and_service_resumes() {
    let mut redis = RedisServer::start();
    let (a, _ca) = start_node(&redis.url(), "a", |_| {}).await;
    let (b, _cb) = start_node(&redis.url(), "b", |_| {}).await;
    a.add_member("o", "alice").await;
    a.add_member("o", "bob").await;
    let mut alice = a.connect("alice", "a").await;
    let mut bob = b.connect("bob", "b").await;
    let jra = join_ok(&mut alice, "chat:o").await;
    join_ok(&mut bob, "chat:o").await;

    redis.stop();
    let (status, reply, sent) = send(
        &mut alice,
        &jra,
        "o",
        r#"{"content":"lost?","mobile_ref_id":"o1"}"#,
    )
    .await;
    assert_eq!(
        (status.as_str(), reply),
        ("error", json!({"reason":"storage_unavailable"}))
    );
    assert_eq!(
        (sent["status"].clone(), sent["reason"].clone()),
        (json!("error"), json!("storage_unavailable"))
    );
    // The node still serves its sockets.
    alice
        .send_text(r#"[null,"hb","phoenix","heartbeat",{}]"#)
        .await
        .unwrap();
    alice.wait_for(|m| m.topic == "phoenix").await.unwrap();

    redis.restart();
    // Within seconds a send works again and reaches the other node; the retry of the failed
    // send (same mobile_ref_id) goes through because the failure stored nothing.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let (status, _, _) = send(
            &mut alice,
            &jra,
            "o",
            r#"{"content":"back","mobile_ref_id":"o1"}"#,
        )
        .await;
        if status == "ok" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sends did not recover"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        match tokio::time::timeout_at(deadline, bob.wait_for(|m| m.event == "receive_message"))
            .await
        {
            Ok(Ok(m)) => {
                assert_eq!(value(&m)["content"], "back");
                break;
            }
            Ok(Err(_)) => {
                // Published before node b resubscribed: send again.
                let (status, _, _) = send(
                    &mut alice,
                    &jra,
                    "o",
                    &format!(
                        r#"{{"content":"back","mobile_ref_id":"o{}"}}"#,
                        rand_suffix()
                    ),
                )
                .await;
                assert_eq!(status, "ok");
            }
            Err(_) => panic!("cross-node delivery did not resume"),
        }
    }
    // Membership stored before the restart is still there.
    let (_, members) = b.api("GET", "/api/chats/o/members", None).await;
    assert_eq!(members, json!({"members":["alice","bob"]}));
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_published_on_one_node_closes_the_users_sockets_on_the_other() {
    let redis = RedisServer::start();
    let (a, _ca) = start_node(&redis.url(), "a", |_| {}).await;
    let (b, _cb) = start_node(&redis.url(), "b", |_| {}).await;
    let mut on_b = b.connect("mallory", "phone").await;
    join_ok(&mut on_b, "notifications:mallory").await;
    let body = r#"{"topic":"user_socket:mallory","event":"disconnect","payload":{}}"#;
    let (code, _) = a.api("POST", "/api/broadcast", Some(body)).await;
    assert_eq!(code, 202);
    let (code, _) = on_b.expect_close().await.unwrap();
    assert_eq!(code, Some(plume_wire::close::GOING_AWAY));
}

/// Removing a member through one node's API closes their chat channel on the other node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_member_on_one_node_closes_their_channel_on_the_other() {
    let redis = RedisServer::start();
    let (a, _ca) = start_node(&redis.url(), "a", |_| {}).await;
    let (b, _cb) = start_node(&redis.url(), "b", |_| {}).await;
    a.add_member("k", "alice").await;
    a.add_member("k", "bob").await;
    let mut alice = a.connect("alice", "a").await;
    let jra = join_ok(&mut alice, "chat:k").await;
    let mut bob_b = b.connect("bob", "b").await;
    let mut bob_a = a.connect("bob", "a").await;
    let jr_b = join_ok(&mut bob_b, "chat:k").await;
    let jr_a = join_ok(&mut bob_a, "chat:k").await;
    let (code, _) = a.api("DELETE", "/api/chats/k/members/bob", None).await;
    assert_eq!(code, 200);
    for (c, jr) in [(&mut bob_b, &jr_b), (&mut bob_a, &jr_a)] {
        expect_phx_close(c, "chat:k", jr).await;
    }
    send(
        &mut alice,
        &jra,
        "k",
        r#"{"content":"after","mobile_ref_id":"1"}"#,
    )
    .await;
    assert_no(&mut bob_b, "receive_message").await;
    let (_, status, resp) = join(&mut bob_b, "chat:k").await;
    assert_eq!(
        (status.as_str(), resp),
        ("error", json!({"reason":"unauthorized"}))
    );
}
