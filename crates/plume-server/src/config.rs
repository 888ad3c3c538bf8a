//! [`ServerConfig`]: every limit of the transport, with its default in one place.

use std::net::SocketAddr;
use std::time::Duration;

use plume_channels::SocketConfig;
use serde::{Deserialize, Serialize};

/// Transport settings. The binary layers file, `PLUME_*` env and flags over [`Default`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    /// Address to listen on. Default `127.0.0.1:4000`.
    pub bind: SocketAddr,
    /// Close a socket that sent nothing (not even a heartbeat) for this long, with close code
    /// 4000. phoenix.js sends a heartbeat every 30 s. Default 60 s.
    #[serde(with = "plume_channels::duration_secs")]
    pub idle_timeout: Duration,
    /// Largest WebSocket frame or message accepted from a client; a larger one closes the
    /// socket with 1009. Default 1 MiB.
    pub max_frame_bytes: usize,
    /// Read buffer allocated per connection. Small, because most sockets are idle most of the
    /// time (tungstenite allocates it up front); it grows for a larger frame. Default 1 KiB.
    pub read_buffer_bytes: usize,
    /// Bytes of queued frames that trigger a write before the batch's flush; the write buffer
    /// keeps this capacity once reached. Default 16 KiB.
    pub write_buffer_bytes: usize,
    /// A flush that cannot complete within this time (the client stopped reading) closes the
    /// connection. Default 10 s.
    #[serde(with = "plume_channels::duration_secs")]
    pub write_timeout: Duration,
    /// Allowed `Origin`s (Phoenix `check_origin` list syntax); empty = no check. Default empty.
    pub check_origin: Vec<String>,
    /// How long a graceful shutdown waits for sockets to close. Default 10 s.
    #[serde(with = "plume_channels::duration_secs")]
    pub shutdown_grace: Duration,
    /// Per-socket limits (channel cap, outbound queue).
    pub socket: SocketConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 4000)),
            idle_timeout: Duration::from_secs(60),
            max_frame_bytes: 1 << 20,
            read_buffer_bytes: 1 << 10,
            write_buffer_bytes: 16 << 10,
            write_timeout: Duration::from_secs(10),
            check_origin: Vec::new(),
            shutdown_grace: Duration::from_secs(10),
            socket: SocketConfig::default(),
        }
    }
}
