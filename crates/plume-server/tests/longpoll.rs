//! The LongPoll transport over real HTTP: limits that need a configured server (the session
//! cap, the POST size, the transport switches), shutdown, and the cross-node relay between
//! two servers sharing a real, private redis-server. The phoenix.js side is in
//! tests/js/longpoll.test.mjs and longpoll-cluster.test.mjs.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use plume_channels::echo::EchoChannel;
use plume_channels::{AcceptAll, LocalPubSub, Router};
use plume_redis::test_server::RedisServer;
use plume_redis::{Cluster, RedisConfig};
use plume_server::{Server, ServerConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PATIENCE: Duration = Duration::from_secs(10);

/// One HTTP/1.1 request on a fresh connection; returns (status, JSON body or Null).
async fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/x-ndjson\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

async fn open(addr: SocketAddr) -> String {
    let (status, body) = request(addr, "GET", "/socket/longpoll?vsn=2.0.0&", "").await;
    assert_eq!((status, &body["status"]), (200, &json!(410)), "{body}");
    body["token"].as_str().unwrap().to_owned()
}

fn path(token: &str) -> String {
    format!("/socket/longpoll?vsn=2.0.0&token={token}")
}

#[tokio::test]
async fn the_session_cap_refuses_new_sessions_with_status_500() {
    let server = start_with(|c| c.longpoll.max_sessions = 2, Arc::new(AcceptAll)).await;
    let addr = server.running.local_addr();
    open(addr).await;
    open(addr).await;
    assert_eq!(server.running.longpoll_sessions(), 2);
    let (status, body) = request(addr, "GET", "/socket/longpoll?vsn=2.0.0&", "").await;
    assert_eq!(status, 503);
    assert_eq!(
        body,
        json!({"status": 500, "reason": "too many long-poll sessions"})
    );
    assert_eq!(server.running.longpoll_sessions(), 2);
}

#[tokio::test]
async fn a_post_over_the_size_limit_is_413_and_leaves_the_session_alone() {
    let server = start_with(|c| c.longpoll.max_post_bytes = 1024, Arc::new(AcceptAll)).await;
    let addr = server.running.local_addr();
    let token = open(addr).await;
    let big = format!(
        r#"["1","1","echo:a","phx_join",{{"pad":"{}"}}]"#,
        "x".repeat(2000)
    );
    let (status, body) = request(addr, "POST", &path(&token), &big).await;
    assert_eq!((status, &body["status"]), (413, &json!(413)), "{body}");
    // Without a live session the body is never read: 410, whatever its size.
    let last = if token.ends_with('A') { 'B' } else { 'A' };
    let stale = format!("{}{last}", &token[..token.len() - 1]);
    assert_eq!(
        request(addr, "POST", &path(&stale), &big).await,
        (200, json!({"status": 410}))
    );
    let hb = r#"[null,"1","phoenix","heartbeat",{}]"#;
    assert_eq!(
        request(addr, "POST", &path(&token), hb).await.1,
        json!({"status": 200})
    );
    assert_eq!(
        request(addr, "GET", &path(&token), "").await.1["messages"],
        json!([r#"[null,"1","phoenix","phx_reply",{"response":{},"status":"ok"}]"#])
    );
}

#[tokio::test]
async fn each_transport_can_be_switched_off() {
    let no_ws = start_with(|c| c.websocket = false, Arc::new(AcceptAll)).await;
    let (status, _) = http_get(
        no_ws.running.local_addr(),
        "/socket/websocket?vsn=2.0.0",
        "upgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    )
    .await;
    assert_eq!(status, 404);
    open(no_ws.running.local_addr()).await;
    let no_lp = start_with(|c| c.longpoll.enabled = false, Arc::new(AcceptAll)).await;
    let (status, _) = request(
        no_lp.running.local_addr(),
        "GET",
        "/socket/longpoll?vsn=2.0.0&",
        "",
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn shutdown_answers_a_held_poll_410_so_the_client_reconnects_elsewhere() {
    let server = start().await;
    let addr = server.running.local_addr();
    let token = open(addr).await;
    let held = tokio::spawn(async move { request(addr, "GET", &path(&token), "").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopping = tokio::spawn(server.running.shutdown());
    let (status, body) = tokio::time::timeout(PATIENCE, held).await.unwrap().unwrap();
    assert_eq!((status, body), (200, json!({"status": 410})));
    tokio::time::timeout(PATIENCE, stopping)
        .await
        .unwrap()
        .unwrap();
}

async fn node(redis: &RedisServer, id: &str) -> (plume_server::Running, Cluster) {
    let local = Arc::new(LocalPubSub::new());
    let config = RedisConfig {
        url: redis.url(),
        node_id: id.into(),
        ..RedisConfig::default()
    };
    let cluster = Cluster::connect(&config, local).await.unwrap();
    let router = Router::new().channel::<EchoChannel>("echo:*", Arc::new(()));
    let config = ServerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    };
    let running = Server::new(config, router, cluster.pubsub.clone(), Arc::new(AcceptAll))
        .with_node_relay(cluster.pubsub.clone())
        .start()
        .await
        .unwrap();
    (running, cluster)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_and_posts_that_reach_another_node_are_relayed_to_the_holder() {
    let redis = RedisServer::start();
    let (a, _ca) = node(&redis, "lp-a").await;
    let (b, _cb) = node(&redis, "lp-b").await;
    let (a, b) = (a.local_addr(), b.local_addr());
    let token = open(a).await;
    assert!(token.starts_with("plp.lp-a."), "{token}");
    // A post through B reaches the session on A; a poll through B returns A's replies.
    let join = r#"["1","1","echo:r","phx_join",{}]"#;
    assert_eq!(
        request(b, "POST", &path(&token), join).await.1,
        json!({"status": 200})
    );
    let (status, polled) = request(b, "GET", &path(&token), "").await;
    assert_eq!(status, 200);
    assert_eq!(polled["status"], 200);
    assert_eq!(polled["token"], token.as_str());
    assert_eq!(
        polled["messages"],
        json!([
            r#"["1","1","echo:r","phx_reply",{"response":{"auth_token":null,"params":{"vsn":"2.0.0"},"vsn":"2.0.0"},"status":"ok"}]"#
        ])
    );
    // A frame that ends the session, relayed: the holder's answer comes back as it is.
    let (_, bad) = request(b, "POST", &path(&token), "[nope").await;
    assert_eq!((&bad["status"], &bad["code"]), (&json!(400), &json!(4001)));
    assert_eq!(
        request(b, "GET", &path(&token), "").await.1,
        json!({"status": 410})
    );
    // A token naming a node that is not in the cluster: 410 at once, no timeout.
    let started = std::time::Instant::now();
    let ghost = token.replace("plp.lp-a.", "plp.lp-gone.");
    assert_eq!(
        request(b, "GET", &path(&ghost), "").await.1,
        json!({"status": 410})
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}
