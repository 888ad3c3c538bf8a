//! One benchmark connection, whichever protocol it speaks.
//!
//! The scenarios only need a few verbs: connect as a user, join a topic (a Phoenix channel or
//! a Socket.IO room), send a chat message, and read what comes back, classified into the few
//! [`ConnEvent`]s the runner counts. [`AnyConn`] dispatches to [`phoenix::PhoenixConn`]
//! (built on `plume-client`), [`longpoll::LongPollConn`] (the same protocol over Plume's
//! LongPoll transport) or [`socketio::SioConn`] (Engine.IO v4 over tokio-tungstenite).
//!
//! [`AnyConn::next_event`] is cancel-safe: dropping it before it completes loses nothing, so
//! the runner can race it against timers.

pub mod longpoll;
pub mod phoenix;
pub mod socketio;

use std::net::IpAddr;

use thiserror::Error;

use crate::target::{Endpoint, Protocol};

/// What a connection reports to the runner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnEvent {
    /// A chat message from someone else (`receive_message`), with its send stamp.
    Received {
        /// The sender's stamp, when the content carried one.
        stamp: Option<u64>,
    },
    /// The confirmation of one of this connection's sends (`message_sent` on Plume, the
    /// acknowledgement on Socket.IO), with the stamp from its `mobile_ref_id`.
    Sent {
        /// The stamp of the send it confirms.
        stamp: Option<u64>,
        /// False when the server answered with an error status.
        ok: bool,
    },
    /// The server pinged (Engine.IO); answer with [`AnyConn::pong`].
    Ping,
    /// The connection is gone.
    Closed {
        /// The close code, when the server sent a close frame.
        code: Option<u16>,
        /// The close reason.
        reason: String,
    },
    /// Anything else (replies, heartbeats, notifications, pongs).
    Other,
}

/// A connection-level failure.
#[derive(Debug, Error)]
pub enum ConnError {
    /// The Phoenix client failed.
    #[error(transparent)]
    Phoenix(#[from] plume_client::ClientError),
    /// The WebSocket failed (Socket.IO side).
    #[error("websocket: {0}")]
    Ws(Box<tokio_tungstenite::tungstenite::Error>),
    /// TCP setup failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The server broke the protocol or refused something.
    #[error("{0}")]
    Protocol(String),
    /// The server did not answer in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
}

impl From<tokio_tungstenite::tungstenite::Error> for ConnError {
    fn from(err: tokio_tungstenite::tungstenite::Error) -> Self {
        ConnError::Ws(Box::new(err))
    }
}

/// A connection to Plume or to the Socket.IO peer.
pub enum AnyConn {
    /// Phoenix Channels V2 JSON.
    Phoenix(phoenix::PhoenixConn),
    /// Phoenix Channels V2 JSON over LongPoll.
    LongPoll(longpoll::LongPollConn),
    /// Socket.IO v5 over Engine.IO v4 WebSocket.
    SocketIo(socketio::SioConn),
}

impl AnyConn {
    /// Connects as the owner of `token`, from `local_ip` when given.
    pub async fn connect(
        endpoint: &Endpoint,
        token: &str,
        local_ip: Option<IpAddr>,
    ) -> Result<AnyConn, ConnError> {
        Ok(match endpoint.protocol {
            Protocol::Phoenix => {
                AnyConn::Phoenix(phoenix::PhoenixConn::connect(endpoint, token, local_ip).await?)
            }
            Protocol::SocketIo => {
                AnyConn::SocketIo(socketio::SioConn::connect(endpoint, token, local_ip).await?)
            }
            Protocol::LongPoll => {
                AnyConn::LongPoll(longpoll::LongPollConn::connect(endpoint, token, local_ip).await?)
            }
        })
    }

    /// Joins a topic (`chat:{id}`, `notifications:{user}`) and waits for the confirmation.
    pub async fn join(&mut self, topic: &str) -> Result<(), ConnError> {
        match self {
            AnyConn::Phoenix(c) => c.join(topic).await,
            AnyConn::LongPoll(c) => c.join(topic).await,
            AnyConn::SocketIo(c) => c.join(topic).await,
        }
    }

    /// Sends a chat message on a joined topic without waiting for its confirmation.
    pub async fn send_chat(
        &mut self,
        topic: &str,
        content: &str,
        mobile_ref_id: &str,
    ) -> Result<(), ConnError> {
        match self {
            AnyConn::Phoenix(c) => c.send_chat(topic, content, mobile_ref_id).await,
            AnyConn::LongPoll(c) => c.send_chat(topic, content, mobile_ref_id).await,
            AnyConn::SocketIo(c) => c.send_chat(topic, content, mobile_ref_id).await,
        }
    }

    /// Pushes `typing` `{"status":"typing"}` on a joined chat topic without waiting for the
    /// reply (Plume only: the Socket.IO peer has no typing event).
    pub async fn send_typing(&mut self, topic: &str) -> Result<(), ConnError> {
        match self {
            AnyConn::Phoenix(c) => c.send_typing(topic).await,
            AnyConn::LongPoll(c) => c.send_typing(topic).await,
            AnyConn::SocketIo(_) => Err(ConnError::Protocol(
                "--typing needs a Plume target: the Socket.IO peer has no typing event".into(),
            )),
        }
    }

    /// The next event. Cancel-safe.
    pub async fn next_event(&mut self) -> Result<ConnEvent, ConnError> {
        match self {
            AnyConn::Phoenix(c) => c.next_event().await,
            AnyConn::LongPoll(c) => c.next_event().await,
            AnyConn::SocketIo(c) => c.next_event().await,
        }
    }

    /// Keeps the connection alive: a Phoenix heartbeat (the server closes a socket silent for
    /// its idle timeout); nothing for LongPoll (its polls keep the session, as phoenix.js
    /// sends no heartbeats there) or Socket.IO, whose server pings instead.
    pub async fn keepalive(&mut self) -> Result<(), ConnError> {
        match self {
            AnyConn::Phoenix(c) => c.heartbeat().await,
            AnyConn::LongPoll(_) | AnyConn::SocketIo(_) => Ok(()),
        }
    }

    /// Answers an Engine.IO ping.
    pub async fn pong(&mut self) -> Result<(), ConnError> {
        match self {
            AnyConn::Phoenix(_) | AnyConn::LongPoll(_) => Ok(()),
            AnyConn::SocketIo(c) => c.pong().await,
        }
    }
}
