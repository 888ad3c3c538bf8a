//! What a client gets when the server fails: the one place the chat service decides it. The
//! table in `protocol-spec/errors.md` ("Server-side failures") lists the same decisions, row
//! by row, with what is logged and counted.
//!
//! | error | client gets | decided by |
//! |---|---|---|
//! | [`StoreError`], any variant, in a channel | an `error` reply `storage_unavailable` (for `send_message` also its `message_sent`) | [`store_reason`] |
//! | [`StoreError`], any variant, in the backend API | 503 `{"error":"store unavailable"}` | [`store_status`] |
//! | [`StoreError`] after a send was committed (its delivery step) | nothing: the sender hears `sent` | `ChatChannel::deliver` logs it |
//! | [`PubSubError`], any variant | nothing: the broadcast reached this node's subscribers | the backend counts it, the caller logs it |
//! | `ChannelError` (from a channel callback) | `phx_error` `{"reason":"channel_crash"}` | the socket (plume-channels) |
//! | `JoinError::Failed` | join reply `{"reason":"join crashed"}` | the socket (plume-channels) |
//!
//! [`PubSubError`]: plume_channels::PubSubError

use http::StatusCode;

use crate::events::REASON_STORAGE_UNAVAILABLE;
use crate::store::StoreError;

/// The reply reason a channel answers a store failure with: in a join's `error` reply, a
/// push's `error` reply, and a refused send's `message_sent`.
///
/// Every variant gets `storage_unavailable`. Whatever failed (a refusal, a timeout, a damaged
/// value, a stopped thread), a client can do one thing about it, try again later; and a retry
/// of a send with the same `mobile_ref_id` is safe both when the failed attempt was not
/// written (a refusal) and when it may have been (a timeout: the retry is then answered with
/// the original). A finer reason would name the server's internals without giving the client
/// anything to act on, and would break clients that match this one. The variants are listed,
/// not matched with `_`, so a new one has to be decided here.
pub fn store_reason(err: &StoreError) -> &'static str {
    match err {
        StoreError::Sqlite(_)
        | StoreError::Begin(_)
        | StoreError::Commit(_)
        | StoreError::Sync(_)
        | StoreError::ThreadGone(_)
        | StoreError::Redis(_)
        | StoreError::Corrupt { .. }
        | StoreError::Encode { .. } => REASON_STORAGE_UNAVAILABLE,
    }
}

/// The backend API's answer to a store failure: its status and the `error` text of the
/// body. 503 for every variant, for the reason [`store_reason`] gives.
pub fn store_status(err: &StoreError) -> (StatusCode, &'static str) {
    // Derived from the reply reason, so the two answers cannot drift apart.
    match store_reason(err) {
        REASON_STORAGE_UNAVAILABLE => (StatusCode::SERVICE_UNAVAILABLE, "store unavailable"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use plume_redis::StateError;

    use super::*;

    /// One of each variant, as the backends build them.
    fn every_variant() -> Vec<StoreError> {
        let sqlite = || {
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_READONLY),
                Some("attempt to write a readonly database".into()),
            )
        };
        let timed_out = std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out");
        vec![
            StoreError::Sqlite(sqlite()),
            StoreError::Begin(sqlite()),
            StoreError::Commit(sqlite()),
            StoreError::Sync(std::io::Error::other("disk gone")),
            StoreError::ThreadGone("writer"),
            StoreError::Redis(StateError::Command {
                op: "append",
                source: redis::RedisError::from(timed_out),
            }),
            StoreError::Redis(StateError::reply("log_head", "2 values, not 3".into())),
            StoreError::corrupt("log entry 7 of chat c", "no `{seq}:` prefix"),
            StoreError::encode("pending item")(serde_json::from_str::<u8>("[").unwrap_err()),
        ]
    }

    #[test]
    fn every_store_error_is_storage_unavailable_in_a_reply_and_503_in_the_api() {
        let all = every_variant();
        let kinds: Vec<&str> = all.iter().map(StoreError::kind).collect();
        assert_eq!(
            kinds,
            [
                "sqlite",
                "sqlite_begin",
                "sqlite_commit",
                "sqlite_sync",
                "sqlite_thread_gone",
                "redis_timeout",
                "redis_reply",
                "corrupt",
                "encode"
            ]
        );
        for err in &all {
            assert_eq!(store_reason(err), "storage_unavailable", "{err}");
            assert_eq!(
                store_status(err),
                (StatusCode::SERVICE_UNAVAILABLE, "store unavailable"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_redis_timeout_says_so_and_names_the_operation() {
        let all = every_variant();
        let redis = all
            .iter()
            .find(|e| matches!(e, StoreError::Redis(StateError::Command { .. })))
            .unwrap();
        assert!(redis.is_timeout());
        assert!(redis.to_string().starts_with("redis append: "), "{redis}");
        assert!(all.iter().filter(|e| e.is_timeout()).count() == 1);
    }
}
