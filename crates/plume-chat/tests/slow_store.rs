//! Issue 9, failure 7: a store round trip must not stall the socket. While one send waits
//! three seconds on the log, the same socket's heartbeats are answered, its other channel
//! answers pushes, broadcasts to it keep flowing (far more than its outbound queue holds,
//! so a stalled driver would close it as a slow consumer, 4008), and a second send on the
//! waiting channel is answered after the first, in order.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use plume_chat::Membership;
use plume_client::Event;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_store_stalls_only_the_channel_that_waits_on_it() {
    let (chat, faults) = start_faulty_with(
        |c| c.membership = Membership::Open,
        |s| s.socket.outbound_capacity = 32,
    )
    .await;
    let mut alice = chat.connect("alice", "a").await;
    let slow = join_ok(&mut alice, "chat:slow").await;
    let other = join_ok(&mut alice, "chat:other").await;
    faults.append_delay_ms.store(3000, Ordering::SeqCst);

    let started = Instant::now();
    let first = alice
        .push(
            Some(&slow),
            "chat:slow",
            "send_message",
            &json(r#"{"content":"one","mobile_ref_id":"s1"}"#),
        )
        .await
        .unwrap();
    let second = alice
        .push(
            Some(&slow),
            "chat:slow",
            "send_message",
            &json(r#"{"content":"two","mobile_ref_id":"s2"}"#),
        )
        .await
        .unwrap();
    let heartbeat = alice
        .push(None, "phoenix", "heartbeat", &json("{}"))
        .await
        .unwrap();
    let typing = alice
        .push(
            Some(&other),
            "chat:other",
            "typing",
            &json(r#"{"status":"typing"}"#),
        )
        .await
        .unwrap();
    // 100 broadcasts to the socket while its send waits: three times its queue.
    for i in 0..100 {
        let body = format!(r#"{{"topic":"chat:other","event":"news","payload":{{"n":{i}}}}}"#);
        let (status, _) = chat.api("POST", "/api/broadcast", Some(&body)).await;
        assert_eq!(status, 202);
    }

    let mut order = Vec::new();
    let mut news = 0;
    while order
        .iter()
        .filter(|e: &&String| e.starts_with("send"))
        .count()
        < 2
    {
        match alice.recv_timeout(Duration::from_secs(10)).await.unwrap() {
            Event::Message(m) if m.event == "phx_reply" => {
                let r = m.ref_.clone().unwrap();
                let what = if r == first {
                    "send one"
                } else if r == second {
                    "send two"
                } else if r == heartbeat {
                    "heartbeat"
                } else if r == typing {
                    "typing"
                } else {
                    "other reply"
                };
                assert_eq!(m.reply_status().unwrap(), "ok", "{what}");
                order.push(what.to_owned());
            }
            Event::Message(m) if m.event == "news" => {
                news += 1;
                if news == 100 {
                    order.push("100 news".into());
                }
            }
            Event::Message(_) => {}
            Event::Closed { code, reason } => panic!("socket closed: {code:?} {reason}"),
        }
    }
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "the sends did wait on the store"
    );
    let at = |what: &str| {
        order
            .iter()
            .position(|e| e == what)
            .unwrap_or_else(|| panic!("{what} in {order:?}"))
    };
    assert!(at("heartbeat") < at("send one"), "{order:?}");
    assert!(at("typing") < at("send one"), "{order:?}");
    assert!(at("100 news") < at("send one"), "{order:?}");
    assert!(
        at("send one") < at("send two"),
        "one channel answers in order: {order:?}"
    );
}
