//! `GET /metrics` after real traffic: every family is there in the OpenMetrics text format,
//! and the counters moved by what the clients did (one test per process under nextest, so
//! the process-wide counters start at zero).
#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use std::sync::Arc;

use common::{http_get, join_ok, json, start_with};
use plume_channels::{AcceptAll, Broadcast, PubSub};
use plume_client::{Client, ClientError};
use plume_wire::Payload;

/// The value of the sample `name` (exact label text) in the exposition.
fn sample(text: &str, name: &str) -> f64 {
    plume_channels::metrics::sample(text, name).unwrap_or_else(|| {
        panic!(
            "no sample {name} in:
{text}"
        )
    })
}

#[tokio::test]
async fn metrics_count_connections_joins_messages_deliveries_closes_and_refusals() {
    let s = start_with(|c| c.socket.outbound_capacity = 8, Arc::new(AcceptAll)).await;
    let addr = s.running.local_addr();
    let mut a = s.v2().await;
    let mut b = s.v2().await;
    let ja = join_ok(&mut a, "echo:m").await;
    join_ok(&mut b, "echo:m").await;
    // Unmatched: refused, labelled by no topic.
    let (_, reply) = a.join("nothing:here", &json("{}")).await.unwrap();
    assert_eq!(reply.reply_status().as_deref(), Some("error"));
    // An event the echo channel broadcasts to the topic: one delivery to each socket.
    let reply = a.call(&ja, "echo:m", "hello", &json("{}")).await.unwrap();
    assert_eq!(reply.reply_status().as_deref(), Some("ok"));
    // A refused upgrade (unsupported vsn).
    match Client::connect(&s.url("vsn=9.0.0")).await {
        Err(ClientError::Refused(status)) => assert_eq!(status.as_u16(), 403),
        other => panic!("vsn=9.0.0 was not refused: {:?}", other.map(|_| ())),
    }
    // A slow consumer: more broadcasts than its queue holds, before its driver runs.
    let mut slow = s.v2().await;
    join_ok(&mut slow, "echo:flood").await;
    for _ in 0..20 {
        s.pubsub
            .broadcast(Broadcast {
                topic: "echo:flood".into(),
                event: "flood".into(),
                payload: Payload::empty(),
                from: None,
                seq: None,
            })
            .unwrap();
    }
    let (code, _) = slow.expect_close().await.unwrap();
    assert_eq!(code, Some(4008));

    // The slow consumer's connection ends once its close handshake is over.
    let mut text = String::new();
    for _ in 0..100 {
        let (status, body) = http_get(addr, "/metrics", "").await;
        assert_eq!(status, 200);
        text = body;
        if sample(&text, "plume_connections{transport=\"websocket\"}") == 2.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(text.ends_with("# EOF\n"), "{text}");
    for family in [
        "# TYPE plume_connections gauge",
        "# TYPE plume_connections_opened counter",
        "# TYPE plume_joins counter",
        "# TYPE plume_channels gauge",
        "# TYPE plume_messages_in counter",
        "# TYPE plume_messages_out counter",
        "# TYPE plume_deliveries counter",
        "# TYPE plume_written_bytes counter",
        "# TYPE plume_closes counter",
        "# TYPE plume_upgrades_refused counter",
        "# TYPE plume_slow_consumer_closes counter",
        "# TYPE plume_redis_publish_duration_seconds histogram",
        "# TYPE plume_redis_pubsub_round_trip_seconds histogram",
        "# TYPE plume_broadcasts_dropped counter",
        "# TYPE plume_recoveries counter",
        "# TYPE plume_history_reads counter",
        "# TYPE plume_draining gauge",
        "# TYPE plume_build info",
    ] {
        assert!(text.contains(family), "missing {family:?} in:\n{text}");
    }
    assert_eq!(
        sample(&text, "plume_connections{transport=\"websocket\"}"),
        2.0
    );
    assert_eq!(
        sample(&text, "plume_connections{transport=\"longpoll\"}"),
        0.0
    );
    assert_eq!(
        sample(
            &text,
            "plume_connections_opened_total{transport=\"websocket\"}"
        ),
        3.0
    );
    assert_eq!(
        sample(&text, "plume_joins_total{prefix=\"echo:*\",result=\"ok\"}"),
        3.0
    );
    assert_eq!(
        sample(
            &text,
            "plume_joins_total{prefix=\"unmatched\",result=\"refused\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(&text, "plume_channels{prefix=\"echo:*\"}"),
        2.0,
        "the slow consumer's channel ended with its socket"
    );
    // 4 joins, 1 push.
    assert_eq!(sample(&text, "plume_messages_in_total"), 5.0);
    // At least 2 (the `hello` broadcast) + 20 queued to the slow consumer before it overflowed.
    assert!(
        sample(&text, "plume_deliveries_total") >= 2.0 + 8.0,
        "{text}"
    );
    assert!(sample(&text, "plume_messages_out_total") >= 7.0, "{text}");
    assert!(sample(&text, "plume_written_bytes_total") > 100.0, "{text}");
    assert_eq!(sample(&text, "plume_closes_total{code=\"4008\"}"), 1.0);
    assert_eq!(sample(&text, "plume_slow_consumer_closes_total"), 1.0);
    assert_eq!(
        sample(&text, "plume_upgrades_refused_total{reason=\"vsn\"}"),
        1.0
    );
    assert_eq!(sample(&text, "plume_draining"), 0.0);
    assert_eq!(
        sample(
            &text,
            "plume_broadcasts_dropped_total{reason=\"held_overflow\"}"
        ),
        0.0,
        "fixed label sets are exposed from the start"
    );
    assert_eq!(
        sample(&text, "plume_history_reads_total{source=\"api\"}"),
        0.0
    );
    let headers = raw_headers(addr).await;
    assert!(
        headers.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{headers}"
    );
    // No topic or socket id ever appears as a label value.
    assert!(!text.contains("echo:m"), "{text}");
    assert!(!text.contains("nothing:here"), "{text}");
}

async fn raw_headers(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_lowercase();
    text.split("\r\n\r\n").next().unwrap_or("").to_owned()
}
