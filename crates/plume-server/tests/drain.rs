//! Stopping a node: `/readyz` turns 503 at once, new sockets are refused, and the open
//! sockets are closed with 1001 in batches of `drain_batch_size`, `drain_interval` apart.
//! (The exact batch instants are checked with paused time in `drain.rs`'s unit tests; here a
//! real server over real sockets.)
#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestServer, http_get, join_ok, start_with};
use plume_channels::AcceptAll;
use plume_client::{Client, ClientError};
use plume_wire::close;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_node_turns_unready_refuses_sockets_and_closes_them_in_batches() {
    let interval = Duration::from_millis(800);
    let s = start_with(
        |c| {
            c.drain_batch_size = 2;
            c.drain_interval = interval;
        },
        Arc::new(AcceptAll),
    )
    .await;
    let addr = s.running.local_addr();
    let url = s.url("vsn=2.0.0");
    let mut clients = Vec::new();
    for i in 0..5 {
        let mut c = s.v2().await;
        join_ok(&mut c, &format!("echo:d{i}")).await;
        clients.push(c);
    }
    assert_eq!(http_get(addr, "/readyz", "").await.0, 200);
    let start = Instant::now();
    let closes: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let (code, reason) = c.expect_close().await.unwrap();
                (start.elapsed(), code, reason)
            })
        })
        .collect();
    let TestServer { running, .. } = s;
    let stopping = tokio::spawn(running.shutdown());

    // As soon as the shutdown task has started (it is spawned, so the first request may
    // still beat it), and while the drain runs: not ready, no new socket, metrics served.
    let mut ready = http_get(addr, "/readyz", "").await;
    for _ in 0..250 {
        if ready.0 == 503 {
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        ready = http_get(addr, "/readyz", "").await;
    }
    let (status, body) = ready;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("stopping"), "{body}");
    match Client::connect(&url).await {
        Err(ClientError::Refused(status)) => assert_eq!(status.as_u16(), 503),
        other => panic!("a new socket during the drain: {:?}", other.map(|_| ())),
    }
    let (status, metrics) = http_get(addr, "/metrics", "").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("\nplume_draining 1\n"), "{metrics}");
    assert!(
        metrics.contains("plume_upgrades_refused_total{reason=\"draining\"} 1"),
        "{metrics}"
    );

    let mut at = Vec::new();
    for close in closes {
        let (t, code, reason) = close.await.unwrap();
        assert_eq!(code, Some(close::GOING_AWAY));
        assert!(reason.contains("shutting down"), "{reason}");
        at.push(t);
    }
    at.sort_unstable();
    // Five sockets in batches of two: 2 + 2 + 1, the batches at least the interval apart (a
    // lower bound only: the server never closes a batch early, a busy machine may be late).
    let early = interval / 2;
    assert!(at[2] - at[1] >= early, "second batch too soon: {at:?}");
    assert!(at[4] - at[3] >= early, "third batch too soon: {at:?}");
    assert!(at[4] - at[0] >= interval * 2 - early, "{at:?}");
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .unwrap()
        .unwrap();
}
