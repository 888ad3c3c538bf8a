//! [`StoreError`]: why a store could not answer, with the backend's own error as its source.
//!
//! Each variant says what failed; the message includes the cause's text, so the one log line
//! the channels write (`%err`) says everything, and `source()` still reaches the backend's
//! error ([`rusqlite::Error`], [`plume_redis::StateError`] and through it
//! `redis::RedisError`) for code that needs to look at it. What a client gets for each
//! variant is decided in one place, [`crate::failure`], and listed in
//! `protocol-spec/errors.md` ("Server-side failures").

use plume_redis::StateError;

/// A cause of any type, kept whole for `source()`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A store could not answer. See the module docs.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An SQLite statement of the operation failed: an I/O error, a full disk, a read-only
    /// or damaged database file, a lock held past the 5 s busy timeout, a column of the
    /// wrong type. The operation's own savepoint was rolled back.
    #[error("sqlite: {0}")]
    Sqlite(#[source] rusqlite::Error),
    /// The write batch the operation was queued in could not begin its transaction; none of
    /// the batch was run. (Every operation of the batch gets a copy of the one error.)
    #[error("sqlite: cannot begin the write transaction: {0}")]
    Begin(#[source] rusqlite::Error),
    /// The write batch the operation was part of failed to commit and was rolled back:
    /// nothing of the batch was written. (Every operation of the batch gets a copy.)
    #[error("sqlite: the write batch failed to commit: {0}")]
    Commit(#[source] rusqlite::Error),
    /// The write batch the operation was part of was committed, but the WAL could not be
    /// flushed to disk (`fdatasync` failed), so it is not known to be durable and is not
    /// acknowledged. A retry of a send (same `mobile_ref_id`) finds it if it survived.
    #[error("sqlite: the committed batch could not be flushed to disk: {0}")]
    Sync(#[source] std::io::Error),
    /// The thread that owns an SQLite connection (`writer` or `reader`) has stopped: it
    /// panicked, or the store is being dropped.
    #[error("sqlite: the {0} thread has stopped")]
    ThreadGone(&'static str),
    /// A Redis operation failed: no connection, no answer within the command timeout
    /// ([`StoreError::is_timeout`]), an error reply, or a reply of the wrong shape.
    #[error("{0}")]
    Redis(#[from] StateError),
    /// A value the store holds could not be decoded: what it was (`log entry 3 of chat
    /// c1`) and why.
    #[error("unreadable {what}: {source}")]
    Corrupt {
        /// What was being decoded.
        what: String,
        /// Why it could not be.
        #[source]
        source: BoxError,
    },
    /// A value could not be encoded as JSON, to be stored or sent.
    #[error("encoding {what}: {source}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The encoder's error.
        #[source]
        source: serde_json::Error,
    },
}

impl StoreError {
    /// A stored value that could not be decoded.
    pub fn corrupt(what: impl Into<String>, source: impl Into<BoxError>) -> StoreError {
        StoreError::Corrupt {
            what: what.into(),
            source: source.into(),
        }
    }

    /// A `map_err` adapter for [`StoreError::Encode`]:
    /// `serde_json::to_string(item).map_err(StoreError::encode("pending item"))`.
    pub fn encode(what: &'static str) -> impl FnOnce(serde_json::Error) -> StoreError {
        move |source| StoreError::Encode { what, source }
    }

    /// Whether the operation gave up waiting (a Redis command past its timeout, an SQLite
    /// lock past the busy timeout) rather than being refused: it may still have taken
    /// effect, which a retry of a send (same `mobile_ref_id`) finds out safely.
    pub fn is_timeout(&self) -> bool {
        match self {
            StoreError::Sqlite(err) => is_busy(err),
            StoreError::Redis(err) => err.is_timeout(),
            _ => false,
        }
    }

    /// The `kind` label of `plume_store_errors_total`, from a closed set: `sqlite`,
    /// `sqlite_busy`, `sqlite_begin`, `sqlite_commit`, `sqlite_sync`, `sqlite_thread_gone`, `redis`,
    /// `redis_timeout`, `redis_reply`, `corrupt`, `encode`.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Sqlite(err) if is_busy(err) => "sqlite_busy",
            StoreError::Sqlite(_) => "sqlite",
            StoreError::Begin(_) => "sqlite_begin",
            StoreError::Commit(_) => "sqlite_commit",
            StoreError::Sync(_) => "sqlite_sync",
            StoreError::ThreadGone(_) => "sqlite_thread_gone",
            StoreError::Redis(StateError::Reply { .. }) => "redis_reply",
            StoreError::Redis(err) if err.is_timeout() => "redis_timeout",
            StoreError::Redis(_) => "redis",
            StoreError::Corrupt { .. } => "corrupt",
            StoreError::Encode { .. } => "encode",
        }
    }
}

/// A copy of `err` for one more of the operations a failed batch answers (`rusqlite::Error`
/// is not `Clone`). SQLite's own failures, which is what `BEGIN` and `COMMIT` fail with, are
/// copied exactly (code, extended code, message); anything else keeps its message under
/// `SQLITE_ERROR`.
pub(crate) fn copy_sqlite_error(err: &rusqlite::Error) -> rusqlite::Error {
    match err {
        rusqlite::Error::SqliteFailure(code, msg) => {
            rusqlite::Error::SqliteFailure(*code, msg.clone())
        }
        other => rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(other.to_string()),
        ),
    }
}

/// SQLite gave up waiting for a lock (`busy_timeout`).
fn is_busy(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use std::error::Error;

    use super::*;

    fn sqlite_failure(code: std::ffi::c_int, msg: &str) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), Some(msg.into()))
    }

    #[test]
    fn the_message_includes_the_cause_and_the_source_is_the_backend_error() {
        let err = StoreError::Sqlite(sqlite_failure(rusqlite::ffi::SQLITE_FULL, "disk full"));
        assert_eq!(err.to_string(), "sqlite: disk full");
        let source = err.source().unwrap();
        assert!(source.downcast_ref::<rusqlite::Error>().is_some());
        assert_eq!(err.kind(), "sqlite");
        assert!(!err.is_timeout());

        let commit = sqlite_failure(rusqlite::ffi::SQLITE_IOERR, "disk I/O error");
        let err = StoreError::Commit(copy_sqlite_error(&commit));
        assert_eq!(
            err.to_string(),
            "sqlite: the write batch failed to commit: disk I/O error"
        );
        let source = err.source().unwrap().downcast_ref::<rusqlite::Error>();
        assert_eq!(
            source.and_then(rusqlite::Error::sqlite_error),
            commit.sqlite_error(),
            "the copy keeps the code and extended code"
        );

        let json = serde_json::from_str::<u64>("x").unwrap_err();
        let err = StoreError::corrupt("log entry 3 of chat c1", json);
        assert!(
            err.to_string()
                .starts_with("unreadable log entry 3 of chat c1: ")
        );
        assert!(err.source().unwrap().is::<serde_json::Error>());
        let err = StoreError::corrupt("log entry of chat c1", "no seq prefix");
        assert_eq!(
            err.to_string(),
            "unreadable log entry of chat c1: no seq prefix"
        );
    }

    #[test]
    fn a_lock_past_the_busy_timeout_is_a_timeout() {
        let err = StoreError::Sqlite(sqlite_failure(
            rusqlite::ffi::SQLITE_BUSY,
            "database is locked",
        ));
        assert!(err.is_timeout());
        assert_eq!(err.kind(), "sqlite_busy");
        assert!(!StoreError::ThreadGone("writer").is_timeout());
    }
}
