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
    /// The WebSocket library's write buffer, which holds only control frames (a pong, the
    /// close frame): data frames are written from their encoded bytes without a buffer (see
    /// the driver). Default 16 KiB.
    pub write_buffer_bytes: usize,
    /// A flush that cannot complete within this time (the client stopped reading) closes the
    /// connection. Default 10 s.
    #[serde(with = "plume_channels::duration_secs")]
    pub write_timeout: Duration,
    /// Allowed `Origin`s (Phoenix `check_origin` list syntax); empty = no check. Default empty.
    pub check_origin: Vec<String>,
    /// Sockets a stopping node closes (1001) at once; the next batch follows
    /// `drain_interval` later, so clients reconnect elsewhere spread out instead of all at
    /// once. Default 1,000.
    pub drain_batch_size: usize,
    /// Time between two drain batches. Default 0.5 s: 10,000 sockets are told to close over
    /// 4.5 s (ten batches).
    #[serde(with = "plume_channels::duration_secs")]
    pub drain_interval: Duration,
    /// How long a graceful shutdown waits for sockets to close after the drain's last batch.
    /// Default 10 s.
    #[serde(with = "plume_channels::duration_secs")]
    pub shutdown_grace: Duration,
    /// A connection must deliver a complete request head (request line and headers) within
    /// this long of connecting, or of its previous response on a keep-alive connection, or it
    /// is closed without an answer. Covers the WebSocket upgrade request and API requests;
    /// an upgraded socket is governed by `idle_timeout` instead. Default 10 s.
    #[serde(with = "plume_channels::duration_secs")]
    pub handshake_timeout: Duration,
    /// Connections this node serves at once (HTTP connections and the WebSockets they became).
    /// Default 10,000: the idle footprint measured in BENCHMARKS.md (7.8 KiB per joined
    /// socket) puts that at under 100 MiB, and it is the scale the benchmarks exercise; a
    /// node meant for more raises it together with `ulimit -n`.
    pub max_connections: usize,
    /// Connections accepted beyond `max_connections` only to be answered: `GET /healthz`
    /// gets its usual 200, anything else 503 `{"error":"too many connections"}`, then the
    /// connection is closed (each lives at most `handshake_timeout`). While this many are
    /// being answered, further connections wait in the kernel's listen backlog, so open
    /// sockets never exceed `max_connections + overflow_connections`. Default 64.
    pub overflow_connections: usize,
    /// An API request body must arrive completely within this long of the server starting
    /// to read it, else 408. Default 10 s.
    #[serde(with = "plume_channels::duration_secs")]
    pub body_timeout: Duration,
    /// Bytes of API request bodies being read at once, across all connections. A request is
    /// charged its `Content-Length` (or the 1 MiB body limit when it has none) before its
    /// body is read; one that does not fit gets 503 at once instead of waiting. Default
    /// 16 MiB.
    pub max_body_bytes_in_flight: usize,
    /// Per-socket limits (channel cap, outbound queue). They apply to LongPoll sessions too.
    pub socket: SocketConfig,
    /// Serve WebSocket upgrades on `/socket/websocket`. When false that path answers 404,
    /// as a proxy that blocks WebSockets would, and clients can only use LongPoll.
    /// Default true.
    pub websocket: bool,
    /// The LongPoll transport on `/socket/longpoll`.
    pub longpoll: LongPollConfig,
}

/// Settings of the LongPoll transport (see protocol-spec/transport.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LongPollConfig {
    /// Serve `/socket/longpoll`. When false that path answers 404. Default true.
    pub enabled: bool,
    /// How long a poll is held open when there is nothing to send; it is then answered
    /// `{"status":204}`. A session that receives no poll for 1.5 times this long ends (its
    /// channels leave). phoenix.js times a request out after 20 s (`longpollerTimeout`), so
    /// this must stay well under that. Default 10 s, as Phoenix.
    #[serde(with = "plume_channels::duration_secs")]
    pub window: Duration,
    /// Largest `POST` body, in bytes; a larger one is answered 413 and the session is
    /// untouched. Each frame in it is also held to `max_frame_bytes`. Default 2 MiB (100
    /// chat messages fit many times over; so does one 1 MiB binary frame in base64).
    pub max_post_bytes: usize,
    /// Most frames (lines) in one `POST`; more is answered 400 and none is processed.
    /// phoenix.js sends at most 100. Default 100.
    pub max_post_frames: usize,
    /// Most LongPoll sessions this node holds at once; a new one over the cap is answered
    /// `{"status":500}` (phoenix.js retries with backoff). Default 10,000.
    pub max_sessions: usize,
}

impl Default for LongPollConfig {
    fn default() -> Self {
        LongPollConfig {
            enabled: true,
            window: Duration::from_secs(10),
            max_post_bytes: 2 << 20,
            max_post_frames: 100,
            max_sessions: 10_000,
        }
    }
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
            drain_batch_size: 1_000,
            drain_interval: Duration::from_millis(500),
            shutdown_grace: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            overflow_connections: 64,
            body_timeout: Duration::from_secs(10),
            max_body_bytes_in_flight: 16 << 20,
            socket: SocketConfig::default(),
            websocket: true,
            longpoll: LongPollConfig::default(),
        }
    }
}
