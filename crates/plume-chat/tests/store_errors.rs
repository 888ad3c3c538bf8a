//! Store failures from real backends: an SQLite database that refuses a write and a Redis
//! server that is gone. Each is a typed `StoreError` whose `source()` chain reaches the
//! backend's own error, the client gets the reason `plume_chat::failure` decides
//! (`storage_unavailable`), and the failure is counted in `plume_store_errors_total`.
#![allow(clippy::unwrap_used)]

mod common;

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use plume_channels::LocalPubSub;
use plume_chat::failure::store_reason;
use plume_chat::store::{Draft, SendKey, StoreError, Stores};
use plume_chat::{ChatConfig, JwtVerifier, Membership};
use plume_redis::test_server::RedisServer;
use plume_redis::{Cluster, RedisConfig, StateError};
use serde_json::json;

/// The first error of type `T` in `err`'s chain of sources (itself included).
fn cause<'a, T: Error + 'static>(err: &'a (dyn Error + 'static)) -> Option<&'a T> {
    let mut at = Some(err);
    while let Some(e) = at {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        at = e.source();
    }
    None
}

fn store_errors(store: &str, kind: &str) -> f64 {
    let text = plume_channels::metrics::encode();
    let name = format!("plume_store_errors_total{{store=\"{store}\",kind=\"{kind}\"}}");
    plume_channels::metrics::sample(&text, &name).unwrap_or(0.0)
}

fn key(r: &str) -> SendKey {
    SendKey {
        user: "alice".into(),
        chat: "e".into(),
        mobile_ref_id: r.into(),
    }
}

fn draft() -> Draft {
    Draft {
        message_id: "m1".into(),
        ts_ms: 1,
        content: "x".into(),
    }
}

#[tokio::test]
async fn a_write_sqlite_refuses_is_storage_unavailable_with_the_sqlite_error_as_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let config = ChatConfig {
        membership: Membership::Open,
        ..ChatConfig::default()
    };
    let (stores, _) = plume_chat::store::sqlite::open(dir.path(), config.retention()).unwrap();
    let stores: Stores = stores.timed("sqlite");
    // A second connection to the live database, as an operator's sqlite3 shell would be:
    // from now on SQLite itself refuses every new message.
    let admin =
        rusqlite::Connection::open(dir.path().join(plume_chat::store::sqlite::DB_FILE)).unwrap();
    admin.busy_timeout(Duration::from_secs(5)).unwrap();
    admin
        .execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON messages \
             BEGIN SELECT RAISE(ABORT, 'messages refused by the test'); END;",
        )
        .unwrap();

    let err = stores.log.append(&key("r0"), &draft()).await.unwrap_err();
    assert!(matches!(err, StoreError::Sqlite(_)), "{err:?}");
    assert_eq!(err.kind(), "sqlite");
    assert_eq!(err.to_string(), "sqlite: messages refused by the test");
    let sqlite = cause::<rusqlite::Error>(&err).unwrap();
    assert_eq!(
        sqlite.sqlite_error_code(),
        Some(rusqlite::ErrorCode::ConstraintViolation)
    );
    assert_eq!(store_reason(&err), "storage_unavailable");
    assert_eq!(store_errors("sqlite", "sqlite"), 1.0);

    // The same failure, as a client sees it.
    let chat = start_on(config, stores, JwtVerifier::hs256(SECRET), None).await;
    let mut alice = chat.connect("alice", "a").await;
    let jr = join_ok(&mut alice, "chat:e").await;
    let (status, reply, sent) = send(
        &mut alice,
        &jr,
        "e",
        r#"{"content":"x","mobile_ref_id":"r1"}"#,
    )
    .await;
    assert_eq!(
        (status.as_str(), reply),
        ("error", json!({"reason": "storage_unavailable"}))
    );
    assert_eq!(
        (&sent["status"], &sent["reason"], &sent["mobile_ref_id"]),
        (&json!("error"), &json!("storage_unavailable"), &json!("r1"))
    );
    assert_eq!(store_errors("sqlite", "sqlite"), 2.0);
}

#[tokio::test]
async fn a_redis_store_whose_server_is_gone_fails_with_the_redis_error_as_its_source() {
    let mut redis = RedisServer::start();
    let config = RedisConfig {
        url: redis.url(),
        node_id: "store-errors".into(),
        command_timeout: Duration::from_secs(1),
        ..RedisConfig::default()
    };
    let cluster = Cluster::connect(&config, Arc::new(LocalPubSub::new()))
        .await
        .unwrap();
    let retention = ChatConfig::default().retention();
    let stores = plume_chat::store::redis::stores(cluster.state.clone(), retention).timed("redis");
    assert!(!stores.membership.is_member("e", "alice").await.unwrap());
    redis.stop();

    let err = stores.membership.is_member("e", "alice").await.unwrap_err();
    assert!(
        matches!(
            &err,
            StoreError::Redis(StateError::Command {
                op: "is_member",
                ..
            })
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with("redis is_member: "),
        "the message names the operation: {err}"
    );
    // StoreError -> StateError -> RedisError.
    assert!(err.source().unwrap().is::<StateError>());
    let redis_err = cause::<redis::RedisError>(&err).unwrap();
    assert!(redis_err.is_io_error(), "{redis_err:?}");
    assert_eq!(store_reason(&err), "storage_unavailable");
    assert_eq!(store_errors("redis", err.kind()), 1.0);
}
