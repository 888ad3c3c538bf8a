//! plume-redis against a real, private redis-server: fan-out between two nodes, the shared
//! state operations, presence expiry and surviving a Redis restart.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use plume_channels::outbound::{Batch, outbound};
use plume_channels::{
    Broadcast, LocalPubSub, Out, OutboundRx, PubSub, SocketId, Subscriber, SubscriberKind,
};
use plume_redis::state::{AppendArgs, AppendKind};
use plume_redis::test_server::RedisServer;
use plume_redis::{Cluster, RedisConfig};
use plume_wire::{Frame, Json, Payload, Serializer};

fn config(redis: &RedisServer, node: &str) -> RedisConfig {
    RedisConfig {
        url: redis.url(),
        node_id: node.into(),
        node_ttl: Duration::from_secs(2),
        ..RedisConfig::default()
    }
}

async fn node(redis: &RedisServer, name: &str) -> Cluster {
    Cluster::connect(&config(redis, name), Arc::new(LocalPubSub::new()))
        .await
        .unwrap()
}

/// Subscribes a fake socket to `topic` on `pubsub`; returns its queue.
async fn subscribe(pubsub: &dyn PubSub, topic: &str, id: u64) -> OutboundRx {
    let (tx, rx) = outbound(1024);
    pubsub
        .subscribe(
            topic,
            Subscriber {
                socket: SocketId(id),
                serializer: Serializer::V2,
                kind: SubscriberKind::Fastlane,
                tx,
                floor: None,
            },
        )
        .await;
    rx
}

fn json(s: &str) -> Payload {
    Payload::Json(Json::from_text(Bytes::copy_from_slice(s.as_bytes())).unwrap())
}

fn broadcast(topic: &str, event: &str, payload: &str, from: Option<u64>) -> Broadcast {
    Broadcast {
        topic: topic.into(),
        event: event.into(),
        payload: json(payload),
        from: from.map(SocketId),
        seq: None,
    }
}

/// Collects frames from a queue until `n` arrived (or 5 s passed).
async fn frames(rx: &mut OutboundRx, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut buf = Vec::new();
    while got.len() < n {
        match tokio::time::timeout_at(deadline, rx.recv_batch(&mut buf)).await {
            Ok(Batch::Items) => {}
            _ => break,
        }
        for item in buf.drain(..) {
            if let Out::Frame(shared) = item
                && let Frame::Text(b) = &shared.frame
            {
                got.push(String::from_utf8(b.to_vec()).unwrap());
            }
        }
    }
    got
}

async fn silent(rx: &mut OutboundRx) -> bool {
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_millis(300), rx.recv_batch(&mut buf))
        .await
        .is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_reach_every_node_exactly_once_in_order() {
    let redis = RedisServer::start();
    let a = node(&redis, "a").await;
    let b = node(&redis, "b").await;
    let mut on_a = subscribe(a.pubsub.as_ref(), "room:1", 1).await;
    let mut on_b = subscribe(b.pubsub.as_ref(), "room:1", 2).await;
    for i in 0..50 {
        a.pubsub
            .broadcast(broadcast("room:1", "n", &format!(r#"{{"i":{i}}}"#), None))
            .unwrap();
    }
    let expected: Vec<String> = (0..50)
        .map(|i| format!(r#"[null,null,"room:1","n",{{"i":{i}}}]"#))
        .collect();
    assert_eq!(frames(&mut on_a, 50).await, expected);
    assert_eq!(frames(&mut on_b, 50).await, expected);
    assert!(
        silent(&mut on_a).await,
        "node a delivered its own broadcast twice"
    );
    assert!(silent(&mut on_b).await, "node b got duplicates");
    assert_eq!(
        a.pubsub
            .stats()
            .published
            .load(std::sync::atomic::Ordering::Relaxed),
        50
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_from_excludes_only_the_sender_across_nodes() {
    let redis = RedisServer::start();
    let a = node(&redis, "a").await;
    let b = node(&redis, "b").await;
    let mut sender = subscribe(a.pubsub.as_ref(), "room:2", 1).await;
    let mut neighbour = subscribe(a.pubsub.as_ref(), "room:2", 2).await;
    let mut remote = subscribe(b.pubsub.as_ref(), "room:2", 1).await; // same socket number, other node
    a.pubsub
        .broadcast(broadcast("room:2", "m", "{}", Some(1)))
        .unwrap();
    assert_eq!(frames(&mut neighbour, 1).await.len(), 1);
    assert_eq!(frames(&mut remote, 1).await.len(), 1);
    assert!(silent(&mut sender).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_subscribe_only_to_topics_with_local_subscribers() {
    let redis = RedisServer::start();
    let a = node(&redis, "a").await;
    let b = node(&redis, "b").await;
    let mut rx = subscribe(b.pubsub.as_ref(), "only:b", 7).await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let channels: Vec<String> = redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .arg("plume:t:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(channels, ["plume:t:only:b"]);
    a.pubsub
        .broadcast(broadcast("only:b", "x", "{}", None))
        .unwrap();
    assert_eq!(frames(&mut rx, 1).await.len(), 1);
    // After the last local subscriber leaves, the node unsubscribes.
    b.pubsub.unsubscribe("only:b", SocketId(7));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let channels: Vec<String> = redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .arg("plume:t:*")
            .query_async(&mut conn)
            .await
            .unwrap();
        if channels.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still subscribed: {channels:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_state_operations() {
    let redis = RedisServer::start();
    let a = node(&redis, "a").await;
    let s = &a.state;
    s.add_member("c:1", "bob", 10).await.unwrap();
    s.add_member("c:1", "al", 20).await.unwrap();
    s.add_member("c:2", "al", 30).await.unwrap();
    // Adding again keeps the first time.
    s.add_member("c:1", "al", 40).await.unwrap();
    assert_eq!(s.members("c:1").await.unwrap(), ["al", "bob"]);
    assert_eq!(
        s.chats_of("al").await.unwrap(),
        [("c:1".to_owned(), 20), ("c:2".to_owned(), 30)]
    );
    assert_eq!(
        s.count_members(&["c:1".into(), "c:2".into(), "none".into()])
            .await
            .unwrap(),
        [2, 1, 0]
    );
    assert!(s.is_member("c:1", "al").await.unwrap());
    assert!(s.remove_member("c:1", "al").await.unwrap());
    assert!(!s.remove_member("c:1", "al").await.unwrap());
    assert!(!s.is_member("c:1", "al").await.unwrap());
    assert_eq!(s.chats_of("al").await.unwrap(), [("c:2".to_owned(), 30)]);

    let mut dropped = 0;
    let users = ["u".to_owned()];
    for i in 0..5 {
        dropped += s
            .push_pending_many(&users, &format!("n{i}"), 3, usize::MAX)
            .await
            .unwrap();
    }
    // Storing an item again is a no-op (a retried command cannot double it).
    s.push_pending_many(&users, "n4", 3, usize::MAX)
        .await
        .unwrap();
    assert_eq!(dropped, 2);
    let listed = s.list_pending("u").await.unwrap();
    let items: Vec<&str> = listed.iter().map(|(_, i)| i.as_str()).collect();
    assert_eq!(items, ["n2", "n3", "n4"]);
    s.remove_pending("u", listed[1].0).await.unwrap();
    let left = s.list_pending("u").await.unwrap();
    assert_eq!(left, listed[2..]);

    // Bounded in bytes as well: items of 10 bytes under a budget of 25 keep the newest two;
    // removals give their bytes back, and one item over the whole budget stays, alone.
    let v = ["v".to_owned()];
    let mut dropped = 0;
    for i in 0..6 {
        dropped += s
            .push_pending_many(&v, &format!("{i}{}", "x".repeat(9)), 100, 25)
            .await
            .unwrap();
    }
    let items = |l: Vec<(u64, String)>| l.into_iter().map(|(_, i)| i).collect::<Vec<_>>();
    assert_eq!(dropped, 4);
    let kept = items(s.list_pending("v").await.unwrap());
    assert_eq!(kept, ["4xxxxxxxxx", "5xxxxxxxxx"]);
    s.remove_pending_item("v", &kept[0]).await.unwrap();
    s.push_pending_many(&v, "6xxxxxxxxx", 100, 25)
        .await
        .unwrap();
    assert_eq!(
        items(s.list_pending("v").await.unwrap()),
        ["5xxxxxxxxx", "6xxxxxxxxx"],
        "the removal gave its bytes back"
    );
    let huge = "h".repeat(100);
    s.push_pending_many(&v, &huge, 100, 25).await.unwrap();
    assert_eq!(items(s.list_pending("v").await.unwrap()), [huge]);
    let all = s.list_pending("v").await.unwrap();
    s.remove_pending("v", all[0].0).await.unwrap();
    for i in 0..2 {
        s.push_pending_many(&v, &format!("{i}{}", "y".repeat(9)), 100, 25)
            .await
            .unwrap();
    }
    assert_eq!(
        s.list_pending("v").await.unwrap().len(),
        2,
        "the counter was reset"
    );
}

fn append_args<'a>(user: &'a str, chat: &'a str, r: &'a str, id: &'a str) -> AppendArgs<'a> {
    AppendArgs {
        user,
        chat,
        mobile_ref_id: r,
        message_id: id,
        ts_ms: 1_000,
        entry: id,
        limit: 3,
        idempotency_ttl: Duration::from_secs(60),
        log_ttl: Duration::from_secs(600),
        new_epoch: 77,
        require_member: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_numbers_appends_and_knows_retries_from_reruns() {
    let redis = RedisServer::start();
    let a = node(&redis, "a").await;
    let s = &a.state;
    let head = s.log_head("c", Duration::from_secs(600), 77).await.unwrap();
    assert_eq!((head.epoch, head.last_seq, head.first_seq), (77, 0, None));
    let first = s.append(&append_args("u", "c", "r1", "m1")).await.unwrap();
    assert_eq!(
        (first.kind, first.seq, first.epoch),
        (AppendKind::New, 1, 77)
    );
    assert_eq!(first.entry.as_deref(), Some("1:m1"));
    // The same append run again (its reply was lost): recognised as its own.
    let rerun = s.append(&append_args("u", "c", "r1", "m1")).await.unwrap();
    assert_eq!((rerun.kind, rerun.seq), (AppendKind::Own, 1));
    // Another attempt with the same send key: a retry, answered with the original.
    let retry = s
        .append(&append_args("u", "c", "r1", "other"))
        .await
        .unwrap();
    assert_eq!(
        (retry.kind, retry.message_id.as_str(), retry.seq),
        (AppendKind::Retry, "m1", 1)
    );
    assert!(!retry.delivered);
    s.mark_delivered("u", "c", "r1").await.unwrap();
    assert!(
        s.append(&append_args("u", "c", "r1", "x"))
            .await
            .unwrap()
            .delivered
    );
    // Length prefixes keep ("u:1","c") and ("u","1:c") apart.
    assert_eq!(
        s.append(&append_args("u:1", "c", "r1", "m2"))
            .await
            .unwrap()
            .seq,
        2
    );
    assert_eq!(
        s.append(&append_args("u", "1:c", "r1", "z"))
            .await
            .unwrap()
            .seq,
        1
    );
    for (i, r) in ["r3", "r4", "r5"].iter().enumerate() {
        let id = format!("m{}", i + 3);
        s.append(&append_args("u", "c", r, &id)).await.unwrap();
    }
    // Trimmed to the newest three.
    let head = s.log_head("c", Duration::from_secs(600), 1).await.unwrap();
    assert_eq!(
        (head.epoch, head.last_seq, head.first_seq),
        (77, 5, Some(3))
    );
    assert_eq!(s.log_after("c", 3, 10).await.unwrap(), ["4:m4", "5:m5"]);
    assert_eq!(
        s.log_before("c", Some(5), 10).await.unwrap(),
        ["4:m4", "3:m3"]
    );
    assert_eq!(
        s.log_get(&[("c".into(), 1), ("c".into(), 4)])
            .await
            .unwrap(),
        [None, Some("4:m4".to_owned())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_cluster_wide_and_expires_with_its_node() {
    let redis = RedisServer::start();
    let a = node(&redis, "a").await;
    let b = node(&redis, "b").await;
    a.state.enter("u", "notifications", 1).await.unwrap();
    a.state.enter("u", "notifications", 2).await.unwrap();
    // Entering again (a retried command) changes nothing.
    a.state.enter("u", "notifications", 2).await.unwrap();
    assert!(b.state.present("u", "notifications").await.unwrap());
    assert!(!b.state.present("u", "chat:1").await.unwrap());
    a.state.leave("u", "notifications", 1).await.unwrap();
    assert!(
        b.state.present("u", "notifications").await.unwrap(),
        "one socket is left"
    );
    // Node a dies without leaving (no depart, no heartbeat): after its TTL it no longer
    // counts, and node b's heartbeat sweeps its records.
    drop(a);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while b.state.present("u", "notifications").await.unwrap() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead node still counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A node that departs cleanly stops counting at once.
    b.state.enter("v", "chat:9", 1).await.unwrap();
    let c = node(&redis, "c").await;
    assert!(c.state.present("v", "chat:9").await.unwrap());
    b.depart().await;
    assert!(!c.state.present("v", "chat:9").await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_resumes_after_redis_restarts_and_data_survives() {
    let mut redis = RedisServer::start();
    let a = node(&redis, "a").await;
    let b = node(&redis, "b").await;
    a.state.add_member("kept", "x", 1).await.unwrap();
    a.state
        .push_pending_many(&["x".to_owned()], "waiting", 10, usize::MAX)
        .await
        .unwrap();
    a.state
        .append(&append_args("x", "kept", "r", "m"))
        .await
        .unwrap();
    let mut on_b = subscribe(b.pubsub.as_ref(), "room:r", 1).await;
    a.pubsub
        .broadcast(broadcast("room:r", "before", "{}", None))
        .unwrap();
    assert_eq!(frames(&mut on_b, 1).await.len(), 1);
    assert!(a.pubsub.health(Duration::from_secs(2)).await.is_ok());

    redis.restart();
    // Within seconds, cross-node delivery works again (the subscriber reconnects and
    // resubscribes; the publisher's connection manager reconnects).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut i = 0;
    loop {
        i += 1;
        let _ = a.pubsub.broadcast(broadcast(
            "room:r",
            "after",
            &format!(r#"{{"i":{i}}}"#),
            None,
        ));
        let got = frames_within(&mut on_b, Duration::from_millis(200)).await;
        if got.iter().any(|f| f.contains(r#""after""#)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cross-node delivery did not resume"
        );
    }
    assert!(a.state.is_member("kept", "x").await.unwrap());
    let pending = a.state.list_pending("x").await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].1, "waiting");
    let head = a
        .state
        .log_head("kept", Duration::from_secs(600), 1)
        .await
        .unwrap();
    assert_eq!(
        (head.epoch, head.last_seq),
        (77, 1),
        "the log survived the restart"
    );
    assert!(a.pubsub.health(Duration::from_secs(2)).await.is_ok());
}

async fn frames_within(rx: &mut OutboundRx, limit: Duration) -> Vec<String> {
    let mut buf = Vec::new();
    let mut got = Vec::new();
    if let Ok(Batch::Items) = tokio::time::timeout(limit, rx.recv_batch(&mut buf)).await {
        for item in buf {
            if let Out::Frame(shared) = item
                && let Frame::Text(b) = &shared.frame
            {
                got.push(String::from_utf8(b.to_vec()).unwrap());
            }
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_fails_while_redis_is_down() {
    let mut redis = RedisServer::start();
    let a = node(&redis, "a").await;
    assert!(a.pubsub.health(Duration::from_secs(2)).await.is_ok());
    redis.stop();
    assert!(a.pubsub.health(Duration::from_millis(500)).await.is_err());
    assert!(
        a.state.is_member("c", "u").await.is_err(),
        "a store call must fail, not hang"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_broadcast_is_delivered_even_when_redis_is_down() {
    let mut redis = RedisServer::start();
    let a = node(&redis, "a").await;
    let mut local = subscribe(a.pubsub.as_ref(), "room:l", 1).await;
    redis.stop();
    let _ = a.pubsub.broadcast(broadcast("room:l", "still", "{}", None));
    assert_eq!(
        frames(&mut local, 1).await,
        [r#"[null,null,"room:l","still",{}]"#]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_users_are_located_and_notified_in_one_round_trip_each() {
    let redis = RedisServer::start();
    let a = node(&redis, "a").await;
    let b = node(&redis, "b").await;
    a.state.enter("in-chat", "chat:7", 1).await.unwrap();
    b.state
        .enter("listening", "notifications", 1)
        .await
        .unwrap();
    b.state.enter("both", "notifications", 1).await.unwrap();
    a.state.enter("both", "chat:7", 1).await.unwrap();
    let users: Vec<String> = ["in-chat", "listening", "both", "offline"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let rows = a
        .state
        .present_many(&users, &["notifications", "chat:7"])
        .await
        .unwrap();
    assert_eq!(
        rows,
        [
            vec![false, true],
            vec![true, false],
            vec![true, true],
            vec![false, false]
        ]
    );
    let offline = vec!["x".to_owned(), "y".to_owned()];
    for i in 0..3 {
        a.state
            .push_pending_many(&offline, &format!("n{i}"), 2, usize::MAX)
            .await
            .unwrap();
    }
    for user in ["x", "y"] {
        let items: Vec<String> = a
            .state
            .list_pending(user)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, i)| i)
            .collect();
        assert_eq!(items, ["n1", "n2"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_relay_delivers_to_one_named_node_and_reports_a_missing_one() {
    use plume_channels::NodeRelay;
    let redis = RedisServer::start();
    let a = node(&redis, "relay-a").await;
    let b = node(&redis, "relay-b").await;
    let (tx, mut inbox) = tokio::sync::mpsc::channel(8);
    b.pubsub.set_inbox(tx);
    let (tx_a, mut inbox_a) = tokio::sync::mpsc::channel(8);
    a.pubsub.set_inbox(tx_a);
    assert_eq!(a.pubsub.node_id(), "relay-a");
    for i in 0..3u8 {
        let took = a
            .pubsub
            .send_to("relay-b", Bytes::from(vec![i; 3]))
            .await
            .unwrap();
        assert!(took, "relay-b is alive and subscribed");
    }
    for i in 0..3u8 {
        let got = tokio::time::timeout(Duration::from_secs(5), inbox.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got[..], &[i; 3], "in send order");
    }
    // Only the named node receives it.
    assert!(inbox_a.try_recv().is_err());
    // A node that does not exist (or died) is reported at once.
    assert!(
        !a.pubsub
            .send_to("relay-gone", Bytes::from_static(b"x"))
            .await
            .unwrap()
    );
    drop(b);
}

/// The value of the unlabelled sample `name` in the node's metrics.
fn metric(name: &str) -> f64 {
    let text = plume_channels::metrics::encode();
    plume_channels::metrics::sample(&text, name)
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_and_pubsub_round_trips_are_timed_in_the_metrics() {
    let redis = RedisServer::start();
    let a = node(&redis, "a").await;
    let b = node(&redis, "b").await;
    let mut on_b = subscribe(b.pubsub.as_ref(), "room:m", 2).await;
    let publishes = metric("plume_redis_publish_duration_seconds_count");
    for i in 0..5 {
        a.pubsub
            .broadcast(broadcast("room:m", "n", &format!(r#"{{"i":{i}}}"#), None))
            .unwrap();
    }
    assert_eq!(frames(&mut on_b, 5).await.len(), 5);
    // The publisher times a batch when Redis answers it, which can come after the other
    // node has the messages: wait for it, a bounded while.
    let mut timed = metric("plume_redis_publish_duration_seconds_count");
    for _ in 0..200 {
        if timed > publishes {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        timed = metric("plume_redis_publish_duration_seconds_count");
    }
    assert!(
        timed > publishes,
        "each pipelined batch of publishes is timed"
    );
    assert!(metric("plume_redis_publish_duration_seconds_sum") > 0.0);
    let trips = metric("plume_redis_pubsub_round_trip_seconds_count");
    let rtt = a.pubsub.health(Duration::from_secs(2)).await.unwrap();
    assert!(metric("plume_redis_pubsub_round_trip_seconds_count") >= trips + 1.0);
    assert!(metric("plume_redis_pubsub_round_trip_seconds_sum") >= rtt.as_secs_f64());
    // Node b delivered the five to its subscriber (node a has none on the topic).
    assert!(metric("plume_deliveries_total") >= 5.0);
}

/// Calls of each command since Redis started (`INFO commandstats`; commands a script runs
/// count too).
async fn command_calls(redis: &RedisServer) -> std::collections::HashMap<String, u64> {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await
        .unwrap();
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

fn pending_of(items: Vec<(u64, String)>) -> Vec<String> {
    items.into_iter().map(|(_, i)| i).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_reads_only_the_absent_members_in_one_script() {
    let redis = RedisServer::start();
    let a = node(&redis, "a").await;
    let b = node(&redis, "b").await;
    // 1,000 members in the chat, spread over both nodes, plus two who are not in it: one
    // listening on its notifications topic (on b), one offline.
    let mut in_chat = Vec::new();
    for i in 0..1000 {
        let user = format!("m{i}");
        a.state.add_member("big", &user, 1).await.unwrap();
        let n = if i % 2 == 0 { &a } else { &b };
        n.state.enter(&user, "chat:big", i).await.unwrap();
        in_chat.push(user);
    }
    for user in ["listening", "offline"] {
        a.state.add_member("big", user, 1).await.unwrap();
    }
    b.state
        .enter("listening", "notifications", 7)
        .await
        .unwrap();
    // One member with two sockets on a: leaving one keeps them in the chat.
    a.state.add_member("big", "two", 1).await.unwrap();
    a.state.enter("two", "chat:big", 1).await.unwrap();
    a.state.enter("two", "chat:big", 2).await.unwrap();
    a.state.leave("two", "chat:big", 1).await.unwrap();

    let before = command_calls(&redis).await;
    let routed = a
        .state
        .route("m0", "big", "r1", "item-1", 10, usize::MAX)
        .await
        .unwrap();
    let after = command_calls(&redis).await;
    assert_eq!(routed.live, ["listening"]);
    assert_eq!(routed.dropped, 0);
    let delta =
        |cmd: &str| after.get(cmd).copied().unwrap_or(0) - before.get(cmd).copied().unwrap_or(0);
    assert_eq!(
        delta("sdiff"),
        1,
        "the present members are set aside by one SDIFF"
    );
    for per_member in ["hgetall", "hkeys", "smembers", "sismember", "zscore"] {
        // Only the two absent members cost anything: one SISMEMBER per live node at most for
        // the listener's topic, one ZSCORE each for the pending check.
        assert!(
            delta(per_member) <= 4,
            "{per_member} ran {} times for 1,003 members",
            delta(per_member)
        );
    }
    for user in ["listening", "offline"] {
        assert_eq!(
            pending_of(a.state.list_pending(user).await.unwrap()),
            ["item-1"]
        );
    }
    for user in ["m0", "m1", "m999", "two"] {
        assert!(
            a.state.list_pending(user).await.unwrap().is_empty(),
            "{user}"
        );
    }

    // The other socket of "two" leaves: now they are absent.
    a.state.leave("two", "chat:big", 2).await.unwrap();
    let routed = a
        .state
        .route("m0", "big", "r2", "item-2", 10, usize::MAX)
        .await
        .unwrap();
    assert_eq!(routed.live, ["listening"]);
    assert_eq!(
        pending_of(a.state.list_pending("two").await.unwrap()),
        ["item-2"]
    );

    // Node b dies without leaving: once its TTL passed, its 500 users are absent (and the
    // listener on b is no longer live), and a's heartbeat sweeps b's sets.
    drop(b);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let here_b = "plume:here:1:b:chat:big";
    let client = redis::Client::open(redis.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    loop {
        let exists: bool = redis::cmd("EXISTS")
            .arg(here_b)
            .query_async(&mut raw)
            .await
            .unwrap();
        if !exists {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "b's here set was not swept"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let routed = a
        .state
        .route("m0", "big", "r3", "item-3", 10, usize::MAX)
        .await
        .unwrap();
    assert!(routed.live.is_empty(), "{:?}", routed.live);
    assert_eq!(
        pending_of(a.state.list_pending("m1").await.unwrap()),
        ["item-3"]
    );
    assert!(a.state.list_pending("m2").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_can_require_membership_in_the_same_script() {
    let redis = RedisServer::start();
    let a = node(&redis, "a").await;
    let s = &a.state;
    let mut args = append_args("u", "c", "r1", "m1");
    args.require_member = true;
    assert_eq!(s.append(&args).await.unwrap().kind, AppendKind::NotMember);
    assert_eq!(
        s.log_after("c", 0, 10).await.unwrap().len(),
        0,
        "nothing appended"
    );
    s.add_member("c", "u", 1).await.unwrap();
    let reply = s.append(&args).await.unwrap();
    assert_eq!((reply.kind, reply.seq), (AppendKind::New, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_appends_is_one_request_numbered_in_order_and_safe_to_send_again() {
    let redis = RedisServer::start();
    let a = node(&redis, "a").await;
    let s = &a.state;
    s.append(&append_args("u", "c", "r0", "m0")).await.unwrap();
    let ids: Vec<String> = (1..=5).map(|i| format!("m{i}")).collect();
    let refs: Vec<String> = (1..=5).map(|i| format!("r{i}")).collect();
    let batch: Vec<AppendArgs<'_>> = ids
        .iter()
        .zip(&refs)
        .map(|(id, r)| append_args("u", "c", r, id))
        .collect();
    let before = command_calls(&redis).await;
    let replies = s.append_many(&batch).await.unwrap();
    let after = command_calls(&redis).await;
    assert_eq!(
        replies.iter().map(|r| (r.kind, r.seq)).collect::<Vec<_>>(),
        (2..=6)
            .map(|seq| (AppendKind::New, seq))
            .collect::<Vec<_>>(),
        "seqs follow the batch's order"
    );
    assert_eq!(
        after.get("evalsha").copied().unwrap_or(0) - before.get("evalsha").copied().unwrap_or(0),
        5,
        "one script call per append"
    );
    // The same batch again (its reply was lost): each append recognised as its own.
    let again = s.append_many(&batch).await.unwrap();
    assert_eq!(
        again.iter().map(|r| (r.kind, r.seq)).collect::<Vec<_>>(),
        (2..=6)
            .map(|seq| (AppendKind::Own, seq))
            .collect::<Vec<_>>()
    );
    // After the script cache is flushed (a Redis restart), the batch loads the script and
    // runs: nothing of it ran before the load.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut c)
        .await
        .unwrap();
    let late = [
        append_args("u", "c", "r7", "m7"),
        append_args("u", "c", "r8", "m8"),
    ];
    let replies = s.append_many(&late).await.unwrap();
    assert_eq!(
        replies.iter().map(|r| (r.kind, r.seq)).collect::<Vec<_>>(),
        [(AppendKind::New, 7), (AppendKind::New, 8)]
    );
    assert!(s.append_many(&[]).await.unwrap().is_empty());
}
