//! The chat log across nodes, against a private redis-server: concurrent senders on two
//! nodes get one gapless sequence that every receiver sees in order; a pub/sub connection
//! killed while messages flow loses nothing (the log repairs the gap); an append whose reply
//! is lost or late is still delivered, not mistaken for a retry.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use common::*;
use plume_client::Client;
use plume_redis::test_server::RedisServer;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The seqs of the next `n` `receive_message`s (a longer wait than the client's default,
/// for the bigger runs).
async fn receive_seqs(c: &mut Client, n: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let got = tokio::time::timeout(
            Duration::from_secs(30),
            c.wait_for(|m| m.event == "receive_message"),
        )
        .await
        .unwrap_or_else(|_| panic!("only {} messages arrived", out.len()))
        .unwrap();
        out.push(value(&got)["seq"].as_u64().unwrap());
    }
    out
}

async fn send_all(mut c: Client, jr: plume_wire::Ref, chat: &str, tag: &str, n: usize) {
    for i in 0..n {
        let body = format!(r#"{{"content":"{tag}{i}","mobile_ref_id":"{tag}{i}"}}"#);
        let (status, reply, _) = send(&mut c, &jr, chat, &body).await;
        assert_eq!(status, "ok", "{reply}");
    }
}

fn redis_command(port: u16, command: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let parts: Vec<&str> = command.split(' ').collect();
    let mut req = format!("*{}\r\n", parts.len());
    for p in parts {
        req.push_str(&format!("${}\r\n{p}\r\n", p.len()));
    }
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_senders_on_two_nodes_make_one_gapless_sequence_every_receiver_sees_in_order() {
    let redis = RedisServer::start();
    let open = |c: &mut plume_chat::ChatConfig| c.membership = plume_chat::Membership::Open;
    let (a, _ca) = start_node(&redis.url(), "a", open).await;
    let (b, _cb) = start_node(&redis.url(), "b", open).await;
    let mut on_a = a.connect("ra", "ra").await;
    let mut on_b = b.connect("rb", "rb").await;
    join_ok(&mut on_a, "chat:big").await;
    join_ok(&mut on_b, "chat:big").await;
    const PER: usize = 1250;
    let mut senders = Vec::new();
    for (i, node) in [&a, &a, &b, &b].into_iter().enumerate() {
        let tag = format!("s{i}-");
        let mut c = node.connect(&tag, &tag).await;
        let jr = join_ok(&mut c, "chat:big").await;
        senders.push(tokio::spawn(async move {
            send_all(c, jr, "big", &tag, PER).await
        }));
    }
    let expected: Vec<u64> = (1..=(4 * PER) as u64).collect();
    let (got_a, got_b) = tokio::join!(
        receive_seqs(&mut on_a, 4 * PER),
        receive_seqs(&mut on_b, 4 * PER)
    );
    assert_eq!(got_a, expected, "node a's receiver");
    assert_eq!(got_b, expected, "node b's receiver");
    for s in senders {
        s.await.unwrap();
    }
    assert_no(&mut on_a, "receive_message").await;
    assert_no(&mut on_b, "receive_message").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_pubsub_connection_loses_no_cross_node_message() {
    let redis = RedisServer::start();
    let open = |c: &mut plume_chat::ChatConfig| c.membership = plume_chat::Membership::Open;
    let (a, _ca) = start_node(&redis.url(), "a", open).await;
    let (b, cb) = start_node(&redis.url(), "b", open).await;
    let mut on_b = b.connect("rb", "rb").await;
    join_ok(&mut on_b, "chat:cut").await;
    let mut sender = a.connect("s", "s").await;
    let jr = join_ok(&mut sender, "chat:cut").await;
    let b_linked = |want: bool| {
        let stats = cb.pubsub.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while stats.stats().connected.load(Ordering::Relaxed) != want {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "link state never became {want}"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let port = redis.port();
    let kill = || async move {
        let out =
            tokio::task::spawn_blocking(move || redis_command(port, "CLIENT KILL TYPE pubsub"))
                .await
                .unwrap();
        assert!(out.starts_with(':'), "{out}");
    };
    let mut sent = 0;
    let mut send_some = async |n: usize, sender: &mut Client| {
        for _ in 0..n {
            let body = format!(r#"{{"content":"m{sent}","mobile_ref_id":"m{sent}"}}"#);
            let (status, _, _) = send(sender, &jr, "cut", &body).await;
            assert_eq!(status, "ok");
            sent += 1;
        }
    };
    send_some(50, &mut sender).await;
    // Twice: every pub/sub connection is killed, and messages are sent while node b's link
    // is down. The second time nothing is sent after them, so only the resync after the
    // reconnect can bring them (no later seq shows the gap).
    kill().await;
    b_linked(false).await;
    send_some(50, &mut sender).await;
    b_linked(true).await;
    kill().await;
    b_linked(false).await;
    send_some(50, &mut sender).await;
    let got = receive_seqs(&mut on_b, 150).await;
    assert_eq!(got, (1..=150).collect::<Vec<u64>>(), "each once, in order");
    assert_no(&mut on_b, "receive_message").await;
}

/// A burst from one socket (many sends under way at once, appended in batches) while every
/// command connection to Redis is killed, several times: each send is answered; those
/// answered "sent" have seqs in the order they were sent; node b's receiver gets every seq up
/// to the last of them, once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_keeps_the_order_it_was_sent_in_across_killed_redis_connections() {
    let redis = RedisServer::start();
    let open = |c: &mut plume_chat::ChatConfig| c.membership = plume_chat::Membership::Open;
    let (a, _ca) = start_node(&redis.url(), "a", open).await;
    let (b, _cb) = start_node(&redis.url(), "b", open).await;
    let mut on_b = b.connect("rb", "rb").await;
    join_ok(&mut on_b, "chat:burst").await;
    let mut sender = a.connect("s", "s").await;
    let jr = join_ok(&mut sender, "chat:burst").await;
    // The join's own Redis steps (presence) are done before the connections are killed.
    next_event(&mut sender, "presence_state").await;
    let port = redis.port();
    let mut refs = Vec::new();
    let mut killed = 0;
    for round in 0..4 {
        for i in 0..100 {
            let n = round * 100 + i;
            let body = json(&format!(r#"{{"content":"m{n}","mobile_ref_id":"m{n}"}}"#));
            let r = sender
                .push(Some(&jr), "chat:burst", "send_message", &body)
                .await
                .unwrap();
            refs.push(r);
        }
        // Killed while this round's sends are under way (TYPE normal: the nodes' command
        // connections, not pub/sub).
        let out =
            tokio::task::spawn_blocking(move || redis_command(port, "CLIENT KILL TYPE normal"))
                .await
                .unwrap();
        assert!(out.starts_with(':'), "{out}");
        killed += out[1..].trim().parse::<u32>().unwrap();
    }
    assert!(killed >= 1, "no connection was killed");
    let mut sent = Vec::new();
    let mut refused = 0;
    for r in &refs {
        let reply = sender.reply_to("chat:burst", r).await.unwrap();
        let response: serde_json::Value = match reply.reply_response().unwrap() {
            plume_wire::Payload::Json(j) => j.parse().unwrap(),
            plume_wire::Payload::Binary(_) => panic!("binary reply"),
        };
        match reply.reply_status().as_deref() {
            Some("ok") => sent.push(response["seq"].as_u64().unwrap()),
            _ => {
                assert_eq!(response["reason"], "storage_unavailable", "{response}");
                refused += 1;
            }
        }
    }
    assert!(
        sent.windows(2).all(|w| w[0] < w[1]),
        "seqs out of the order sent: {sent:?}"
    );
    assert!(sent.len() >= 300, "{refused} of 400 refused");
    let last = *sent.last().unwrap();
    let got = receive_seqs(&mut on_b, last as usize).await;
    assert_eq!(got, (1..=last).collect::<Vec<u64>>(), "each once, in order");
}

/// What the proxy does to the replies of the append script.
const PASS: u8 = 0;
/// Cut the connection when an append's "new" reply comes back (the reply is lost).
const CUT_NEXT_APPEND_REPLY: u8 = 1;
/// Hold an append's "new" reply past the command timeout.
const DELAY_NEXT_APPEND_REPLY: u8 = 2;

/// A TCP proxy in front of Redis that can lose or delay the reply of the next append.
async fn faulty_proxy(redis_port: u16, mode: Arc<AtomicU8>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = TcpStream::connect(("127.0.0.1", redis_port)).await.unwrap();
            let mode = mode.clone();
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut ur, mut uw) = upstream.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut uw).await;
                });
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = ur.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let chunk = &buf[..n];
                    // The append script answers `*7 $3 new …`.
                    let is_append = chunk.windows(9).any(|w| w == b"$3\r\nnew\r\n");
                    if is_append {
                        match mode.swap(PASS, Ordering::SeqCst) {
                            CUT_NEXT_APPEND_REPLY => break,
                            DELAY_NEXT_APPEND_REPLY => {
                                tokio::time::sleep(Duration::from_millis(900)).await;
                            }
                            _ => {}
                        }
                    }
                    if cw.write_all(chunk).await.is_err() {
                        break;
                    }
                }
                up.abort();
            });
        }
    });
    port
}

/// A send whose append reply is lost or late: the sender (retrying once with the same
/// mobile_ref_id, as a client does after `storage_unavailable`) hears "sent", and the
/// receiver on the other node and the offline member both get the message.
async fn a_lost_or_late_append_reply_still_delivers(mode_for_send: u8) {
    let redis = RedisServer::start();
    let mode = Arc::new(AtomicU8::new(PASS));
    let proxy = faulty_proxy(redis.port(), mode.clone()).await;
    let (a, _ca) = start_node(&format!("redis://127.0.0.1:{proxy}/"), "a", |_| {}).await;
    let (b, _cb) = start_node(&redis.url(), "b", |_| {}).await;
    for u in ["alice", "bob", "olga"] {
        a.add_member("l", u).await;
    }
    let mut alice = a.connect("alice", "a").await;
    let mut bob = b.connect("bob", "b").await;
    let jr = join_ok(&mut alice, "chat:l").await;
    join_ok(&mut bob, "chat:l").await;
    let body = r#"{"content":"important","mobile_ref_id":"r1"}"#;
    mode.store(mode_for_send, Ordering::SeqCst);
    let (mut status, mut reply, _) = send(&mut alice, &jr, "l", body).await;
    if status != "ok" {
        assert_eq!(reply, json!({"reason": "storage_unavailable"}));
        tokio::time::sleep(Duration::from_millis(1000)).await;
        (status, reply, _) = send(&mut alice, &jr, "l", body).await;
    }
    assert_eq!(status, "ok", "{reply}");
    assert_eq!(reply["seq"], 1);
    assert_eq!(mode.load(Ordering::SeqCst), PASS, "the fault was injected");
    let got = next_event(&mut bob, "receive_message").await;
    assert_eq!(
        (got["content"].clone(), got["seq"].clone()),
        (json!("important"), json!(1))
    );
    let mut olga = b.connect("olga", "o").await;
    join_ok(&mut olga, "notifications:olga").await;
    let pending = next_event(&mut olga, "pending_notifications").await;
    assert_eq!(pending["notifications"][0]["content"], "important");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_whose_reply_is_lost_is_delivered_not_taken_for_a_retry() {
    a_lost_or_late_append_reply_still_delivers(CUT_NEXT_APPEND_REPLY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_whose_reply_comes_after_the_timeout_is_delivered_by_the_retry() {
    a_lost_or_late_append_reply_still_delivers(DELAY_NEXT_APPEND_REPLY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_message_reaches_the_other_node_across_a_redis_restart() {
    let redis = Arc::new(parking_lot::Mutex::new(RedisServer::start()));
    let url = redis.lock().url();
    let open = |c: &mut plume_chat::ChatConfig| c.membership = plume_chat::Membership::Open;
    let (a, _ca) = start_node(&url, "a", open).await;
    let (b, _cb) = start_node(&url, "b", open).await;
    let mut on_b = b.connect("rb", "rb").await;
    join_ok(&mut on_b, "chat:rr").await;
    let mut sender = a.connect("s", "s").await;
    let jr = join_ok(&mut sender, "chat:rr").await;
    let mut acked = Vec::new();
    for i in 0..120 {
        if i == 40 {
            let redis = redis.clone();
            tokio::task::spawn_blocking(move || redis.lock().restart())
                .await
                .unwrap();
        }
        // A client retries a send that failed (Redis down) with the same mobile_ref_id.
        let body = format!(r#"{{"content":"m{i}","mobile_ref_id":"m{i}"}}"#);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (status, reply, _) = send(&mut sender, &jr, "rr", &body).await;
            if status == "ok" {
                acked.push(reply["seq"].as_u64().unwrap());
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Redis never came back"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(acked, (1..=120).collect::<Vec<u64>>());
    let got = receive_seqs(&mut on_b, 120).await;
    assert_eq!(got, acked, "every acknowledged message, once, in order");
}
