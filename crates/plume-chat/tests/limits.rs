//! Limits on what a client chooses (issue 9, failures 3 and 4): sizes of ids, topics, refs,
//! events and join payloads, and the per-socket rate limit under a flood.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use plume_client::{ClientError, ConnectOptions, Event};
use serde_json::Value;

#[tokio::test]
async fn a_user_id_over_the_limit_refuses_the_connect() {
    let chat = start().await;
    let long = "u".repeat(129);
    let q = format!("token={}&vsn=2.0.0", token(&long));
    match chat.connect_with(&q, ConnectOptions::default()).await {
        Err(ClientError::Refused(status)) => assert_eq!(status.as_u16(), 403),
        other => panic!("expected 403, got {:?}", other.map(|_| "a connection")),
    }
    // 128 bytes is fine.
    let ok = "u".repeat(128);
    let q = format!("token={}&vsn=2.0.0", token(&ok));
    assert!(
        chat.connect_with(&q, ConnectOptions::default())
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn long_topics_chat_ids_and_join_payloads_are_refused_on_join() {
    let chat = start_with(|c| c.membership = plume_chat::Membership::Open).await;
    let mut alice = chat.connect("alice", "a").await;
    let topic = format!("chat:{}", "x".repeat(300));
    let (_, status, resp) = join(&mut alice, &topic).await;
    assert_eq!(
        (status.as_str(), resp),
        ("error", serde_json::json!({"reason":"topic_too_long"}))
    );
    let topic = format!("chat:{}", "x".repeat(129));
    let (_, status, resp) = join(&mut alice, &topic).await;
    assert_eq!(
        (status.as_str(), resp),
        ("error", serde_json::json!({"reason":"chat_id_too_long"}))
    );
    // Nothing about either was kept: no membership was recorded in open mode.
    let (code, body) = chat
        .api(
            "GET",
            &format!("/api/chats/{}/members", "x".repeat(129)),
            None,
        )
        .await;
    assert_eq!(code, 400, "{body}");
    let big = format!(r#"{{"history":0,"pad":"{}"}}"#, "p".repeat(5000));
    let (_, reply) = alice.join("chat:ok", &json(&big)).await.unwrap();
    assert_eq!(reply.reply_status().unwrap(), "error");
    assert_eq!(
        value_of_reply(&reply),
        serde_json::json!({"reason":"join_payload_too_large"})
    );
    // At the limits, all is well.
    join_ok(&mut alice, &format!("chat:{}", "x".repeat(128))).await;
}

fn value_of_reply(m: &plume_wire::client::ServerMessage) -> Value {
    match m.reply_response().unwrap() {
        plume_wire::Payload::Json(j) => j.parse().unwrap(),
        plume_wire::Payload::Binary(_) => Value::Null,
    }
}

#[tokio::test]
async fn a_long_mobile_ref_id_is_refused_and_not_echoed() {
    let chat = start().await;
    chat.add_member("m", "alice").await;
    let mut alice = chat.connect("alice", "a").await;
    let jr = join_ok(&mut alice, "chat:m").await;
    let long = "r".repeat(129);
    let (status, resp, sent) = send(
        &mut alice,
        &jr,
        "m",
        &format!(r#"{{"content":"hi","mobile_ref_id":"{long}"}}"#),
    )
    .await;
    assert_eq!(status, "error");
    assert_eq!(resp, serde_json::json!({"reason":"mobile_ref_id_too_long"}));
    assert_eq!(sent["status"], "error");
    assert_eq!(sent["reason"], "mobile_ref_id_too_long");
    assert_eq!(sent["mobile_ref_id"], "", "a refused id is not echoed back");
    let ok = "r".repeat(128);
    let (status, _, _) = send(
        &mut alice,
        &jr,
        "m",
        &format!(r#"{{"content":"hi","mobile_ref_id":"{ok}"}}"#),
    )
    .await;
    assert_eq!(status, "ok");
}

#[tokio::test]
async fn api_ids_over_the_limit_are_refused() {
    let chat = start().await;
    let long = "i".repeat(129);
    for path in [
        format!("/api/chats/{long}/members/bob"),
        format!("/api/chats/c/members/{long}"),
    ] {
        let (code, body) = chat.api("PUT", &path, None).await;
        assert_eq!(code, 400, "{path}: {body}");
    }
    let body = format!(r#"{{"user_id":"{long}","chat_id":"c","sender_id":"s","content":"x"}}"#);
    let (code, _) = chat.api("POST", "/api/notify", Some(&body)).await;
    assert_eq!(code, 400);
}

/// One socket floods `send_message` as fast as it can while 20 members of the same chat
/// read: the flooder is refused with `rate_limited` (reply and `message_sent`), then closed
/// with 4029, and no reader is closed as a slow consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooder_is_rate_limited_and_closed_and_nobody_else_is() {
    let chat = start().await;
    chat.add_member("f", "mallory").await;
    let mut readers = Vec::new();
    for i in 0..20 {
        let user = format!("r{i}");
        chat.add_member("f", &user).await;
        let mut c = chat.connect(&user, "d").await;
        join_ok(&mut c, "chat:f").await;
        readers.push(c);
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let received = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for mut c in readers {
        let mut stopped = stopped.clone();
        let received = received.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stopped.changed() => return None,
                    ev = c.recv() => match ev {
                        Ok(Event::Message(m)) if m.event == "receive_message" => {
                            received.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Event::Message(_)) => {}
                        Ok(Event::Closed { code, reason }) => return Some((code, reason)),
                        Err(err) => return Some((None, err.to_string())),
                    },
                }
            }
        }));
    }
    let mut mallory = chat.connect("mallory", "m").await;
    let jr = join_ok(&mut mallory, "chat:f").await;
    let mut limited_replies = 0;
    let mut limited_sent = 0;
    let mut close = None;
    let mut n = 0u64;
    'flood: for _ in 0..2000 {
        for _ in 0..20 {
            n += 1;
            let payload = json(&format!(r#"{{"content":"spam","mobile_ref_id":"s{n}"}}"#));
            if mallory
                .push(Some(&jr), "chat:f", "send_message", &payload)
                .await
                .is_err()
            {
                break 'flood;
            }
        }
        // Read whatever is there without waiting, so the flooder is not a slow reader.
        loop {
            match tokio::time::timeout(Duration::from_millis(1), mallory.recv()).await {
                Err(_) => break,
                Ok(Ok(Event::Message(m))) => {
                    let v = value(&m);
                    if m.event == "phx_reply" && v["response"]["reason"] == "rate_limited" {
                        limited_replies += 1;
                    }
                    if m.event == "message_sent" && v["reason"] == "rate_limited" {
                        assert_eq!(v["status"], "error");
                        limited_sent += 1;
                    }
                }
                Ok(Ok(Event::Closed { code, reason })) => {
                    close = Some((code, reason));
                    break 'flood;
                }
                Ok(Err(_)) => break 'flood,
            }
        }
    }
    if close.is_none() {
        close = mallory.expect_close().await.ok();
    }
    let (code, reason) = close.expect("the flooder was never closed");
    assert_eq!(code, Some(4029), "flooder closed with {code:?} {reason}");
    assert!(
        limited_replies > 0 && limited_sent > 0,
        "replies {limited_replies}, message_sent {limited_sent}"
    );
    // Readers got what was admitted (at most the burst plus the rate over the flood's life).
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.send(true).unwrap();
    for t in tasks {
        let ended = t.await.unwrap();
        assert!(ended.is_none(), "a reader was closed: {ended:?}");
    }
    let per_reader = received.load(Ordering::Relaxed) / 20;
    assert!(
        per_reader >= 200,
        "each reader got the admitted burst, got {per_reader}"
    );
}
