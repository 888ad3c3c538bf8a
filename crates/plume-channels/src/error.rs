//! How a channel fails: [`ChannelError`] (a callback failed: the client gets `phx_error`) and
//! [`JoinError`] (a join refused or failed). The socket maps each to the wire
//! (`protocol-spec/errors.md`, "Server-side failures").

use plume_wire::Payload;

use crate::channel::reason_payload;
use crate::outbound::SendError;

/// What a failure of a channel may carry as its cause: any error, kept whole so that
/// `source()` still reaches it (a store's backend error, for example).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A channel failure. The socket answers it with `phx_error` `{"reason":"channel_crash"}`
/// and drops the channel (see `protocol-spec/errors.md`, "Server-side failures"); the message
/// is logged with the topic and socket.
///
/// The message names what the channel was doing and includes its cause's text, so one log
/// line says everything; the cause stays reachable through `source()`.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// A payload could not be encoded as JSON.
    #[error("encoding {what}: {source}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The encoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// A message from the channel to itself ([`crate::Context::send_info`]) could not be
    /// queued: the socket is closing or its outbound queue overflowed.
    #[error("queueing {what}: {source}")]
    Queue {
        /// What was being queued.
        what: &'static str,
        /// Why the queue refused it.
        #[source]
        source: SendError,
    },
    /// Something the channel depends on failed (a store, another service).
    #[error("{what}: {source}")]
    Failed {
        /// What the channel was doing.
        what: &'static str,
        /// The dependency's error.
        #[source]
        source: BoxError,
    },
    /// The channel found itself somewhere it cannot go on from (a bug, a misconfiguration,
    /// or on purpose, as the echo channel's `crash`), with no underlying error.
    #[error("{0}")]
    Internal(&'static str),
}

impl ChannelError {
    /// A failure of something the channel depends on, while doing `what`.
    pub fn failed(what: &'static str, source: impl Into<BoxError>) -> ChannelError {
        ChannelError::Failed {
            what,
            source: source.into(),
        }
    }

    /// A `map_err` adapter for [`ChannelError::Encode`]:
    /// `Payload::json(&v).map_err(ChannelError::encode("the reply"))`.
    pub fn encode(what: &'static str) -> impl FnOnce(serde_json::Error) -> ChannelError {
        move |source| ChannelError::Encode { what, source }
    }

    /// A `map_err` adapter for [`ChannelError::Queue`].
    pub fn queue(what: &'static str) -> impl FnOnce(SendError) -> ChannelError {
        move |source| ChannelError::Queue { what, source }
    }
}

/// Why a join did not succeed.
#[derive(Debug)]
pub enum JoinError {
    /// The channel refused the join: an `error` reply with this response
    /// (conventionally `{"reason": …}`).
    Refused(Payload),
    /// The join failed unexpectedly: `error` reply `{"reason":"join crashed"}`, the error
    /// logged.
    Failed(ChannelError),
}

impl JoinError {
    /// A refusal with `{"reason": reason}`.
    pub fn reason(reason: &str) -> JoinError {
        JoinError::Refused(reason_payload(reason))
    }
}

impl From<ChannelError> for JoinError {
    /// An unexpected failure: [`JoinError::Failed`].
    fn from(err: ChannelError) -> JoinError {
        JoinError::Failed(err)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use std::error::Error;

    use super::{ChannelError, JoinError, SendError};

    #[test]
    fn a_channel_error_names_what_failed_and_keeps_its_cause_as_the_source() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "read-only file");
        let err = ChannelError::failed("tracking presence", io);
        assert_eq!(err.to_string(), "tracking presence: read-only file");
        let source = err.source().unwrap().downcast_ref::<std::io::Error>();
        assert_eq!(
            source.map(std::io::Error::kind),
            Some(std::io::ErrorKind::PermissionDenied)
        );

        let err = ChannelError::queue("the after-join step")(SendError::Closed);
        assert_eq!(
            err.to_string(),
            "queueing the after-join step: socket closed"
        );
        assert_eq!(
            err.source().unwrap().downcast_ref::<SendError>(),
            Some(&SendError::Closed)
        );

        let json = serde_json::from_str::<u8>("x").unwrap_err();
        let err = ChannelError::encode("the join reply")(json);
        assert!(err.source().unwrap().is::<serde_json::Error>());

        // A failed join carries the channel error whole.
        let join: JoinError = ChannelError::Internal("no user").into();
        assert!(matches!(
            join,
            JoinError::Failed(ChannelError::Internal("no user"))
        ));
    }
}
