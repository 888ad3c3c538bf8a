//! The transport: upgrade checks, subprotocols, HTTP routes, idle timeout, socket ids and the
//! `disconnect` broadcast, slow consumers and graceful shutdown.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use plume_channels::{
    AcceptAll, Accepted, Broadcast, ConnectHook, ConnectRequest, PubSub, Refused,
};
use plume_client::{Client, ClientError, ConnectOptions};
use plume_wire::{Payload, close};

fn refused_status(err: ClientError) -> u16 {
    match err {
        ClientError::Refused(status) => status.as_u16(),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

#[tokio::test]
async fn unsupported_vsn_is_refused_before_the_upgrade() {
    let s = start().await;
    for vsn in ["3.0.0", "2.1.0", "2", "abc"] {
        let err = Client::connect(&s.url(&format!("vsn={vsn}")))
            .await
            .err()
            .unwrap();
        assert_eq!(refused_status(err), 403, "vsn={vsn}");
    }
    assert!(Client::connect(&s.url("vsn=2.0.1")).await.is_ok());
    assert!(Client::connect(&s.url("vsn=1.0.0")).await.is_ok());
    assert!(Client::connect(&s.url("")).await.is_ok());
}

#[tokio::test]
async fn wrong_path_is_404_and_healthz_is_200() {
    let s = start().await;
    let addr = s.running.local_addr();
    assert_eq!(http_get(addr, "/nope", "").await.0, 404);
    assert_eq!(http_get(addr, "/socket/websocket/extra", "").await.0, 404);
    let (status, body) = http_get(addr, "/healthz", "").await;
    assert_eq!(status, 200);
    assert!(body.contains(r#""status":"ok""#), "{body}");
    // A plain GET on the socket path is not an upgrade: 400 with a reason.
    let (status, body) = http_get(addr, "/socket/websocket", "").await;
    assert_eq!(status, 400);
    assert!(body.contains("upgrade"), "{body}");
}

struct TokenHook;

impl ConnectHook for TokenHook {
    fn connect(&self, req: &ConnectRequest) -> Result<Accepted, Refused> {
        let token = req
            .auth_token
            .as_deref()
            .or_else(|| req.param("token"))
            .unwrap_or("");
        match token.strip_prefix("user:") {
            Some(user) if !user.is_empty() => Ok(Accepted {
                socket_id: Some(format!("users_socket:{user}")),
                assigns: None,
            }),
            _ => Err(Refused(format!("bad token {token:?}"))),
        }
    }
}

#[tokio::test]
async fn the_connect_hook_can_refuse_with_403() {
    let s = start_with(|_| {}, Arc::new(TokenHook)).await;
    for q in ["vsn=2.0.0", "token=&vsn=2.0.0", "token=nobody&vsn=2.0.0"] {
        let err = Client::connect(&s.url(q)).await.err().unwrap();
        assert_eq!(refused_status(err), 403, "{q}");
    }
    assert!(
        Client::connect(&s.url("token=user:1&vsn=2.0.0"))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn auth_token_subprotocol_reaches_the_hook_and_phoenix_is_echoed() {
    let s = start_with(|_| {}, Arc::new(TokenHook)).await;
    let opts = ConnectOptions::default().with_auth_token("user:7");
    let mut c = s.connect("vsn=2.0.0", opts).await;
    assert_eq!(c.protocol(), Some("phoenix"));
    let (_, reply) = c.join("echo:t", &json("{}")).await.unwrap();
    assert!(
        show(&reply).contains(r#""auth_token":"user:7""#),
        "{}",
        show(&reply)
    );
    // Offering only foreign subprotocols is refused.
    let opts = ConnectOptions {
        subprotocols: vec!["mqtt".into()],
        ..ConnectOptions::default()
    };
    let err = Client::connect_with(&s.url("token=user:1&vsn=2.0.0"), opts)
        .await
        .err()
        .unwrap();
    assert_eq!(refused_status(err), 403);
    // No subprotocol offered: none selected.
    let c = Client::connect(&s.url("token=user:1&vsn=2.0.0"))
        .await
        .unwrap();
    assert_eq!(c.protocol(), None);
}

#[tokio::test]
async fn origin_check_refuses_foreign_origins() {
    let s = start_with(
        |c| c.check_origin = vec!["https://app.example.com".into()],
        Arc::new(AcceptAll),
    )
    .await;
    let with_origin = |o: &str| ConnectOptions {
        origin: Some(o.to_owned()),
        ..ConnectOptions::default()
    };
    assert!(
        Client::connect_with(&s.url("vsn=2.0.0"), with_origin("https://app.example.com"))
            .await
            .is_ok()
    );
    let err = Client::connect_with(&s.url("vsn=2.0.0"), with_origin("https://evil.com"))
        .await
        .err()
        .unwrap();
    assert_eq!(refused_status(err), 403);
    // Native clients send no Origin and are allowed.
    assert!(Client::connect(&s.url("vsn=2.0.0")).await.is_ok());
}

#[tokio::test]
async fn a_silent_socket_is_closed_after_the_idle_timeout() {
    let s = start_with(
        |c| c.idle_timeout = Duration::from_millis(1000),
        Arc::new(AcceptAll),
    )
    .await;
    let mut silent = s.v2().await;
    let mut chatty = s.v2().await;
    // The chatty socket heartbeats more often than the timeout and stays open.
    for i in 0..6 {
        chatty
            .send_text(&format!(r#"[null,"{i}","phoenix","heartbeat",{{}}]"#))
            .await
            .unwrap();
        chatty.recv_message().await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (code, reason) = silent.expect_close().await.unwrap();
    assert_eq!(code, Some(close::IDLE_TIMEOUT));
    assert!(reason.contains("idle"), "{reason}");
    chatty
        .send_text(r#"[null,"x","phoenix","heartbeat",{}]"#)
        .await
        .unwrap();
    assert!(
        chatty.recv_message().await.is_ok(),
        "the heartbeating socket was closed"
    );
}

#[tokio::test]
async fn disconnect_broadcast_closes_every_socket_with_that_id() {
    let s = start_with(|_| {}, Arc::new(TokenHook)).await;
    let mut a1 = Client::connect(&s.url("token=user:a&vsn=2.0.0"))
        .await
        .unwrap();
    let mut a2 = Client::connect(&s.url("token=user:a&vsn=2.0.0"))
        .await
        .unwrap();
    let mut b = Client::connect(&s.url("token=user:b&vsn=2.0.0"))
        .await
        .unwrap();
    join_ok(&mut a1, "echo:x").await;
    let jb = join_ok(&mut b, "echo:x").await;
    // Other events on the id topic are ignored.
    s.pubsub
        .broadcast(Broadcast {
            topic: "users_socket:a".into(),
            event: "something".into(),
            payload: Payload::empty(),
            from: None,
            seq: None,
        })
        .unwrap();
    s.pubsub
        .broadcast(Broadcast {
            topic: "users_socket:a".into(),
            event: "disconnect".into(),
            payload: Payload::empty(),
            from: None,
            seq: None,
        })
        .unwrap();
    for c in [&mut a1, &mut a2] {
        let (code, _) = c.expect_close().await.unwrap();
        assert_eq!(code, Some(close::GOING_AWAY));
    }
    let reply = b.call(&jb, "echo:x", "echo", &json("{}")).await.unwrap();
    assert_eq!(reply.reply_status().as_deref(), Some("ok"));
    // The closed socket's channel is gone from the topic.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(s.pubsub.subscriber_count("echo:x"), 1);
}

#[tokio::test]
async fn a_slow_consumer_is_closed_with_4008_and_others_are_not() {
    // current_thread runtime (the tokio::test default): the burst below is queued before the
    // slow socket's driver can run, so the overflow is deterministic.
    let s = start_with(|c| c.socket.outbound_capacity = 8, Arc::new(AcceptAll)).await;
    let mut slow = s.v2().await;
    join_ok(&mut slow, "echo:flood").await;
    for i in 0..50 {
        s.pubsub
            .broadcast(Broadcast {
                topic: "echo:flood".into(),
                event: "flood".into(),
                payload: json(&format!(r#"{{"i":{i}}}"#)),
                from: None,
                seq: None,
            })
            .unwrap();
    }
    let (code, reason) = slow.expect_close().await.unwrap();
    assert_eq!(code, Some(close::SLOW_CONSUMER), "{reason}");
    assert_eq!(s.pubsub.overflowed_total(), 1);
    // A new socket on the same topic works normally.
    let mut fresh = s.v2().await;
    let jr = join_ok(&mut fresh, "echo:flood").await;
    let reply = fresh
        .call(&jr, "echo:flood", "echo", &json(r#"{"still":"fine"}"#))
        .await
        .unwrap();
    assert_eq!(reply.reply_status().as_deref(), Some("ok"));
}

#[tokio::test]
async fn shutdown_closes_sockets_with_1001() {
    let s = start().await;
    let mut a = s.v2().await;
    let mut b = s.v2().await;
    join_ok(&mut a, "echo:bye").await;
    let TestServer { running, .. } = s;
    let stopping = tokio::spawn(running.shutdown());
    for c in [&mut a, &mut b] {
        let (code, reason) = c.expect_close().await.unwrap();
        assert_eq!(code, Some(close::GOING_AWAY));
        assert!(reason.contains("shutting down"), "{reason}");
    }
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn bracket_params_and_empty_pairs_reach_the_hook() {
    let s = start().await;
    let mut c = Client::connect(&s.url("a%5Bb%5D=1&list[]=x&list[]=y&&flag&vsn=2.0.0"))
        .await
        .unwrap();
    let (_, reply) = c.join("echo:p", &json("{}")).await.unwrap();
    assert!(
        show(&reply)
            .contains(r#""params":{"a":{"b":"1"},"flag":"","list":["x","y"],"vsn":"2.0.0"}"#),
        "{}",
        show(&reply)
    );
}
