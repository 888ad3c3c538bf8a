//! The chat service's metrics after real traffic on a real server: recoveries by result,
//! history reads by source (join, push, API), and the store latency histograms of the
//! embedded (SQLite) store, labelled by operation. One test per process under nextest, so
//! the process-wide counters start at zero.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use plume_chat::store::Stores;
use plume_chat::{JwtVerifier, Membership};

fn sample(text: &str, name: &str) -> f64 {
    plume_channels::metrics::sample(text, name).unwrap_or_else(|| {
        panic!(
            "no sample {name} in:
{text}"
        )
    })
}

#[tokio::test]
async fn recoveries_history_reads_and_store_latencies_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = plume_chat::ChatConfig {
        membership: Membership::Open,
        recovery_limit: 3,
        ..plume_chat::ChatConfig::default()
    };
    config.history_limit = 100;
    let (stores, _) = plume_chat::store::sqlite::open(dir.path(), config.retention()).unwrap();
    let stores: Stores = stores.timed("sqlite");
    let chat = start_on(
        config,
        stores,
        JwtVerifier::hs256(SECRET),
        Some(API_KEY.into()),
    )
    .await;
    let mut alice = chat.connect("alice", "a").await;
    let (jr, _, reply) = join(&mut alice, "chat:m").await;
    let epoch = reply["epoch"].as_str().unwrap().to_owned();
    for i in 0..6 {
        let body = format!(r#"{{"content":"m{i}","mobile_ref_id":"r{i}"}}"#);
        assert_eq!(send(&mut alice, &jr, "m", &body).await.0, "ok");
    }
    // Recovered (2 missed), then too far behind (6 missed, the limit is 3).
    for last_seq in [4, 0] {
        let mut bob = chat.connect("bob", "b").await;
        let ask = format!(r#"{{"last_seq":{last_seq},"epoch":"{epoch}"}}"#);
        let (_, reply) = bob.join("chat:m", &json(&ask)).await.unwrap();
        assert_eq!(reply.reply_status().as_deref(), Some("ok"));
    }
    // History: on a join, as a push, through the API.
    let mut carol = chat.connect("carol", "c").await;
    let (cjr, reply) = carol
        .join("chat:m", &json(r#"{"history":2}"#))
        .await
        .unwrap();
    assert_eq!(reply.reply_status().as_deref(), Some("ok"));
    let reply = carol
        .call(&cjr, "chat:m", "history", &json(r#"{"limit":3}"#))
        .await
        .unwrap();
    assert_eq!(reply.reply_status().as_deref(), Some("ok"));
    let (status, _) = chat.api("GET", "/api/chats/m/messages?limit=2", None).await;
    assert_eq!(status, 200);

    let (status, text) = http_get(chat.addr(), "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        sample(&text, "plume_recoveries_total{result=\"recovered\"}"),
        1.0
    );
    assert_eq!(
        sample(&text, "plume_recoveries_total{result=\"too_far_behind\"}"),
        1.0
    );
    assert_eq!(
        sample(&text, "plume_history_reads_total{source=\"join\"}"),
        1.0
    );
    assert_eq!(
        sample(&text, "plume_history_reads_total{source=\"push\"}"),
        1.0
    );
    assert_eq!(
        sample(&text, "plume_history_reads_total{source=\"api\"}"),
        1.0
    );
    let op = |op: &str| {
        sample(
            &text,
            &format!(
                "plume_store_operation_duration_seconds_count{{store=\"sqlite\",operation=\"{op}\"}}"
            ),
        )
    };
    assert_eq!(op("append"), 6.0);
    assert!(op("head") >= 4.0, "one per join");
    assert!(op("after") >= 1.0, "the recovery read");
    assert!(op("before") >= 3.0, "the three history reads");
    assert!(op("enter_chat") >= 4.0);
    assert_eq!(
        sample(&text, "plume_joins_total{prefix=\"chat:*\",result=\"ok\"}"),
        4.0
    );
    assert!(
        !text.contains("alice") && !text.contains("chat:m"),
        "no ids in labels"
    );
}

/// Plain HTTP/1.1 GET; returns (status, body).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (
        status,
        text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned(),
    )
}
