//! plume-redis's typed errors against a real redis-server (or a closed port): what each one
//! says, that `source()` reaches the client's `RedisError`, and that a broadcast whose
//! fan-out to other nodes fails was still delivered on this node and counted.
#![allow(clippy::unwrap_used)]

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use plume_channels::outbound::{Batch, outbound};
use plume_channels::{
    Broadcast, LocalPubSub, Out, OutboundRx, PubSub, PubSubError, SocketId, Subscriber,
    SubscriberKind,
};
use plume_redis::test_server::RedisServer;
use plume_redis::{Cluster, ClusterError, RedisConfig, StateError};
use plume_wire::{Json, Payload, Serializer};

fn config(url: String) -> RedisConfig {
    RedisConfig {
        url,
        node_id: "errors".into(),
        command_timeout: Duration::from_secs(1),
        ..RedisConfig::default()
    }
}

/// The first error in `err`'s chain of sources (itself included) that is a `RedisError`.
fn redis_cause<'a>(err: &'a (dyn Error + 'static)) -> Option<&'a redis::RedisError> {
    let mut at = Some(err);
    while let Some(e) = at {
        if let Some(found) = e.downcast_ref::<redis::RedisError>() {
            return Some(found);
        }
        at = e.source();
    }
    None
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

async fn subscribe(pubsub: &dyn PubSub, topic: &str) -> OutboundRx {
    let (tx, rx) = outbound(16);
    pubsub
        .subscribe(
            topic,
            Subscriber {
                socket: SocketId(1),
                serializer: Serializer::V2,
                kind: SubscriberKind::Fastlane,
                tx,
                floor: None,
            },
        )
        .await;
    rx
}

fn broadcast(topic: &str, event: &str) -> Broadcast {
    Broadcast {
        topic: topic.into(),
        event: event.into(),
        payload: Payload::Json(Json::from_text(Bytes::from_static(b"{}")).unwrap()),
        from: None,
        seq: None,
    }
}

/// How many frames are queued for the subscriber right now.
async fn queued(rx: &mut OutboundRx) -> usize {
    let mut buf = Vec::new();
    let mut n = 0;
    while let Ok(Batch::Items) =
        tokio::time::timeout(Duration::from_millis(100), rx.recv_batch(&mut buf)).await
    {
        n += buf.drain(..).filter(|o| matches!(o, Out::Frame(_))).count();
    }
    n
}

fn dropped(reason: &str) -> f64 {
    let text = plume_channels::metrics::encode();
    let name = format!("plume_broadcasts_dropped_total{{reason=\"{reason}\"}}");
    plume_channels::metrics::sample(&text, &name).unwrap()
}

#[tokio::test]
async fn joining_a_cluster_on_a_closed_port_is_a_connect_error_caused_by_the_refusal() {
    let url = format!("redis://127.0.0.1:{}/0", closed_port());
    let err = Cluster::connect(&config(url.clone()), Arc::new(LocalPubSub::new()))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, ClusterError::Connect { url: u, .. } if *u == url),
        "{err:?}"
    );
    // The message says what failed; the cause is the source (anyhow prints both).
    assert_eq!(err.to_string(), format!("connecting to {url}"));
    let cause = redis_cause(&err).unwrap();
    assert!(cause.is_connection_refusal(), "{cause:?}");
}

/// A password in the Redis URL never reaches the error (whose message and source chain end
/// up in the start-up log): the URL in it is redacted.
#[tokio::test]
async fn a_failed_join_does_not_print_the_redis_password() {
    let url = format!("redis://plume:hunter2@127.0.0.1:{}/0", closed_port());
    let err = Cluster::connect(&config(url), Arc::new(LocalPubSub::new()))
        .await
        .err()
        .unwrap();
    let mut chain = format!("{err} / {err:?}");
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        chain.push_str(&format!(" / {cause} / {cause:?}"));
        source = cause.source();
    }
    assert!(!chain.contains("hunter2"), "{chain}");
    assert!(
        chain.contains("127.0.0.1"),
        "the address is still named: {chain}"
    );
}

#[tokio::test]
async fn a_state_operation_on_a_stopped_server_names_itself_and_reaches_the_redis_error() {
    let mut redis = RedisServer::start();
    let cluster = Cluster::connect(&config(redis.url()), Arc::new(LocalPubSub::new()))
        .await
        .unwrap();
    assert!(!cluster.state.is_member("c", "u").await.unwrap());
    redis.stop();
    let err = cluster.state.is_member("c", "u").await.unwrap_err();
    let StateError::Command { op, source } = &err else {
        panic!("not a command error: {err:?}");
    };
    assert_eq!(*op, "is_member");
    assert!(source.is_io_error(), "{source:?}");
    assert!(
        err.to_string().starts_with("redis is_member: "),
        "the message names the operation: {err}"
    );
    assert!(redis_cause(&err).is_some());
}

/// A current-thread runtime: nothing else runs between two broadcasts of the test, so the
/// publisher task cannot take the first from its one-slot queue before the second arrives.
#[tokio::test(flavor = "current_thread")]
async fn a_full_publish_queue_still_delivers_locally_and_counts_the_broadcast() {
    let redis = RedisServer::start();
    let local = Arc::new(LocalPubSub::new());
    let cluster = Cluster::connect(
        &RedisConfig {
            publish_queue: 1,
            ..config(redis.url())
        },
        local,
    )
    .await
    .unwrap();
    let mut rx = subscribe(&*cluster.pubsub, "room").await;
    let before = dropped("publish_queue_full");
    assert!(cluster.pubsub.broadcast(broadcast("room", "one")).is_ok());
    let err = cluster
        .pubsub
        .broadcast(broadcast("room", "two"))
        .unwrap_err();
    assert!(
        matches!(err, PubSubError::QueueFull { capacity: 1 }),
        "{err:?}"
    );
    assert_eq!(err.drop_reason(), "publish_queue_full");
    assert_eq!(dropped("publish_queue_full") - before, 1.0);
    assert_eq!(
        queued(&mut rx).await,
        2,
        "both reached this node's subscriber"
    );
}

#[tokio::test]
async fn a_broadcast_the_envelope_cannot_carry_is_delivered_locally_and_counted() {
    let redis = RedisServer::start();
    let cluster = Cluster::connect(&config(redis.url()), Arc::new(LocalPubSub::new()))
        .await
        .unwrap();
    let mut rx = subscribe(&*cluster.pubsub, "room").await;
    let before = dropped("encode_failed");
    // The envelope holds an event name of at most 65535 bytes.
    let event = "e".repeat(70_000);
    let err = cluster
        .pubsub
        .broadcast(broadcast("room", &event))
        .unwrap_err();
    assert!(matches!(err, PubSubError::Encode { .. }), "{err:?}");
    assert!(err.source().is_some(), "the envelope's error is the source");
    assert_eq!(dropped("encode_failed") - before, 1.0);
    assert_eq!(queued(&mut rx).await, 1);
}
