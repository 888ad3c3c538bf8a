//! The command line. Every `serve` flag can also come from a `PLUME_*` environment variable;
//! a flag beats the variable, which beats the config file, which beats the default.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

/// Plume: a Phoenix Channels server.
#[derive(Parser, Debug)]
#[command(name = "plume", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Print an HS256 token signed with the configured secret (development and tests).
    Token(TokenArgs),
}

/// `plume token` flags.
#[derive(Parser, Debug, Default)]
pub struct TokenArgs {
    /// The user id (`sub` claim).
    #[arg(long)]
    pub sub: String,
    /// Seconds until the token expires.
    #[arg(long, default_value_t = 3600)]
    pub ttl: u64,
    /// TOML config file to read the secret from.
    #[arg(long, env = "PLUME_CONFIG")]
    pub config: Option<PathBuf>,
    /// HS256 secret [default: the config file's, else the development secret].
    #[arg(long, env = "PLUME_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Public-key JWT algorithms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum JwtAlgorithm {
    /// RSA with SHA-256.
    RS256,
    /// ECDSA P-256 with SHA-256.
    ES256,
}

/// `--membership` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MembershipArg {
    /// Members only.
    Strict,
    /// Anyone authenticated.
    Open,
}

/// `--web` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Switch {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// `--store` values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// An embedded SQLite database under `--data-dir`: everything survives a restart.
    #[default]
    Embedded,
    /// In this process only (tests, throwaway runs): nothing survives a restart.
    Memory,
}

/// `plume serve` flags. Unset flags fall back to the config file, then the defaults.
#[derive(Parser, Debug, Default)]
pub struct ServeArgs {
    /// TOML config file (same keys as `--print-config` shows).
    #[arg(long, env = "PLUME_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Address to listen on [default: 127.0.0.1:4000].
    #[arg(long, env = "PLUME_BIND")]
    pub bind: Option<SocketAddr>,
    /// Close a socket silent for this many seconds [default: 60].
    #[arg(long, env = "PLUME_IDLE_TIMEOUT", value_name = "SECS")]
    pub idle_timeout: Option<f64>,
    /// Close a socket (4008) whose client takes nothing written to it for this many
    /// seconds [default: 10].
    #[arg(long, env = "PLUME_WRITE_TIMEOUT", value_name = "SECS")]
    pub write_timeout: Option<f64>,
    /// Largest frame accepted from a client, in bytes [default: 1048576].
    #[arg(long, env = "PLUME_MAX_FRAME_BYTES", value_name = "N")]
    pub max_frame_bytes: Option<usize>,
    /// Most channels one socket may join [default: 100].
    #[arg(long, env = "PLUME_MAX_CHANNELS", value_name = "N")]
    pub max_channels: Option<usize>,
    /// Most frames queued for one socket before it is closed as a slow consumer [default: 1024].
    #[arg(long, env = "PLUME_OUTBOUND_CAPACITY", value_name = "N")]
    pub outbound_capacity: Option<usize>,
    /// Most bytes of frames queued for one socket before it is closed as a slow consumer
    /// [default: 1048576].
    #[arg(long, env = "PLUME_OUTBOUND_MAX_BYTES", value_name = "N")]
    pub outbound_max_bytes: Option<usize>,
    /// Connections served at once; more get 503 "too many connections" [default: 10000].
    #[arg(long, env = "PLUME_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Sockets a stopping node (SIGTERM) closes with 1001 at once, per batch [default: 1000].
    #[arg(long, env = "PLUME_DRAIN_BATCH_SIZE", value_name = "N")]
    pub drain_batch_size: Option<usize>,
    /// Seconds between two drain batches of a stopping node [default: 0.5].
    #[arg(long, env = "PLUME_DRAIN_INTERVAL", value_name = "SECS")]
    pub drain_interval: Option<f64>,
    /// Close a connection that has not sent a complete request head within this many seconds
    /// (before the WebSocket upgrade, and between keep-alive requests) [default: 10].
    #[arg(long, env = "PLUME_HANDSHAKE_TIMEOUT", value_name = "SECS")]
    pub handshake_timeout: Option<f64>,
    /// Messages per second one socket may send, on average (heartbeats and joins aside);
    /// over it a message is answered rate_limited, and a socket that keeps on is closed with
    /// 4029. 0 = no limit [default: 100].
    #[arg(long, env = "PLUME_MAX_PUSHES_PER_SECOND", value_name = "N")]
    pub max_pushes_per_second: Option<u32>,
    /// Messages one socket may send at once before the per-second rate applies
    /// [default: 200].
    #[arg(long, env = "PLUME_PUSH_BURST", value_name = "N")]
    pub push_burst: Option<u32>,
    /// Messages per second all sockets of one user may send together on this node (burst:
    /// twice that); the user's budget outlives their sockets until it refills, so a client
    /// that reconnects gets no fresh burst. 0 = no limit [default: the per-socket rate and
    /// burst].
    #[arg(long, env = "PLUME_MAX_PUSHES_PER_SECOND_PER_USER", value_name = "N")]
    pub max_pushes_per_second_per_user: Option<u32>,
    /// Joins per second one socket may send, on average; 0 = no limit [default: 20].
    #[arg(long, env = "PLUME_MAX_JOINS_PER_SECOND", value_name = "N")]
    pub max_joins_per_second: Option<u32>,
    /// Allowed Origins, comma separated (`https://app.example.com,//*.example.org`); unset or
    /// empty = no check.
    #[arg(long, env = "PLUME_CHECK_ORIGIN", value_delimiter = ',')]
    pub check_origin: Option<Vec<String>>,
    /// Serve WebSocket upgrades on /socket/websocket; false answers 404 there, as a proxy that
    /// blocks WebSockets would, leaving clients LongPoll [default: true].
    #[arg(long, env = "PLUME_WEBSOCKET", value_name = "BOOL")]
    pub websocket: Option<bool>,
    /// Serve the LongPoll transport on /socket/longpoll [default: true].
    #[arg(long, env = "PLUME_LONGPOLL", value_name = "BOOL")]
    pub longpoll: Option<bool>,
    /// How long a LongPoll poll is held when there is nothing to send; a session without a
    /// poll for 1.5 times this long ends [default: 10].
    #[arg(long, env = "PLUME_LONGPOLL_WINDOW", value_name = "SECS")]
    pub longpoll_window: Option<f64>,
    /// HS256 secret for connect tokens. Without a secret or public key, a loopback bind uses
    /// a published development secret (with a warning) and any other bind refuses to start.
    /// An empty secret is refused.
    #[arg(long, env = "PLUME_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM public key for RS256/ES256 connect tokens (instead of a secret).
    #[arg(long, env = "PLUME_JWT_PUBLIC_KEY", value_name = "PATH")]
    pub jwt_public_key: Option<PathBuf>,
    /// Algorithm of --jwt-public-key: RS256 or ES256 [default: the key's: RS256 for an RSA
    /// key, ES256 for an EC P-256 key]; one that does not fit the key refuses to start.
    #[arg(long, env = "PLUME_JWT_ALGORITHM", value_enum)]
    pub jwt_algorithm: Option<JwtAlgorithm>,
    /// When set, a connect token's `aud` claim must contain this.
    #[arg(long, env = "PLUME_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// When set, a connect token's `iss` claim must be this.
    #[arg(long, env = "PLUME_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Who may join chat:{id}: strict (members added through the API) or open (anyone
    /// authenticated, recorded as a participant) [default: strict; open in development mode,
    /// a loopback bind without a JWT secret or public key].
    #[arg(long, env = "PLUME_MEMBERSHIP", value_enum)]
    pub membership: Option<MembershipArg>,
    /// Longest message content in characters [default: 4096].
    #[arg(long, env = "PLUME_MAX_MESSAGE_CHARS", value_name = "N")]
    pub max_message_chars: Option<usize>,
    /// Seconds a send is remembered for retries [default: 86400].
    #[arg(long, env = "PLUME_IDEMPOTENCY_TTL", value_name = "SECS")]
    pub idempotency_ttl: Option<f64>,
    /// Most pending notifications kept per user [default: 1000].
    #[arg(long, env = "PLUME_PENDING_LIMIT", value_name = "N")]
    pub pending_limit: Option<usize>,
    /// Most bytes of pending notifications kept per user [default: 1048576].
    #[arg(long, env = "PLUME_PENDING_BYTES_LIMIT", value_name = "N")]
    pub pending_bytes_limit: Option<usize>,
    /// Longest chat id and user id (token sub) in bytes [default: 128].
    #[arg(long, env = "PLUME_MAX_ID_BYTES", value_name = "N")]
    pub max_id_bytes: Option<usize>,
    /// Where chat state lives without Redis: embedded (a database under --data-dir) or
    /// memory (lost on restart) [default: embedded].
    #[arg(long, env = "PLUME_STORE", value_enum)]
    pub store: Option<StoreKind>,
    /// Directory of the embedded database, created on first start [default: ./plume-data].
    #[arg(long, env = "PLUME_DATA_DIR", value_name = "PATH")]
    pub data_dir: Option<PathBuf>,
    /// Newest messages kept per chat [default: 10000].
    #[arg(long, env = "PLUME_HISTORY_LIMIT", value_name = "N")]
    pub history_limit: Option<usize>,
    /// Seconds a message is kept [default: 2592000, 30 days].
    #[arg(long, env = "PLUME_HISTORY_TTL", value_name = "SECS")]
    pub history_ttl: Option<f64>,
    /// Most messages one rejoin replays; beyond it the join answers recovered: false
    /// [default: 1000].
    #[arg(long, env = "PLUME_RECOVERY_LIMIT", value_name = "N")]
    pub recovery_limit: Option<usize>,
    /// Seconds a chat's presence changes on this node are gathered into one presence_diff
    /// [default: 0.1].
    #[arg(long, env = "PLUME_PRESENCE_INTERVAL", value_name = "SECS")]
    pub presence_interval: Option<f64>,
    /// Seconds after a user's last socket closed before they count as offline
    /// [default: 5].
    #[arg(long, env = "PLUME_ONLINE_LINGER", value_name = "SECS")]
    pub online_linger: Option<f64>,
    /// Only chats of at most this many members propagate user_online_changed
    /// [default: 100].
    #[arg(long, env = "PLUME_ONLINE_FANOUT_MAX_MEMBERS", value_name = "N")]
    pub online_fanout_max_members: Option<usize>,
    /// Only chats of at most this many members track presence (presence_state, presence_diff)
    /// [default: 1000].
    #[arg(long, env = "PLUME_PRESENCE_MAX_MEMBERS", value_name = "N")]
    pub presence_max_members: Option<usize>,
    /// Bearer key of the backend HTTP API; the API is off without one (an empty key is none).
    #[arg(long, env = "PLUME_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Redis URL (`redis://host:6379/0`): share pub/sub and every store with other nodes.
    /// Without it everything stays in this process.
    #[arg(long, env = "PLUME_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// This node's id in the cluster (1-64 of A-Z a-z 0-9 . _ -) [default: random].
    #[arg(long, env = "PLUME_NODE_ID")]
    pub node_id: Option<String>,
    /// Seconds a node counts as alive after its last heartbeat [default: 15].
    #[arg(long, env = "PLUME_NODE_TTL", value_name = "SECS")]
    pub node_ttl: Option<f64>,
    /// Serve the web chat at GET / (on or off) [default: on for a loopback bind, off
    /// elsewhere].
    #[arg(long, env = "PLUME_WEB", value_enum)]
    pub web: Option<Switch>,
    /// Also mount the sample echo:* channel (runtime diagnostics and the protocol test suite).
    #[arg(long, env = "PLUME_ECHO_CHANNEL")]
    pub echo_channel: bool,
    /// Log format [default: human].
    #[arg(long, env = "PLUME_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}
