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
    Serve(ServeArgs),
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
    /// Largest frame accepted from a client, in bytes [default: 1048576].
    #[arg(long, env = "PLUME_MAX_FRAME_BYTES", value_name = "N")]
    pub max_frame_bytes: Option<usize>,
    /// Most channels one socket may join [default: 100].
    #[arg(long, env = "PLUME_MAX_CHANNELS", value_name = "N")]
    pub max_channels: Option<usize>,
    /// Most frames queued for one socket before it is closed as a slow consumer [default: 1024].
    #[arg(long, env = "PLUME_OUTBOUND_CAPACITY", value_name = "N")]
    pub outbound_capacity: Option<usize>,
    /// Allowed Origins, comma separated (`https://app.example.com,//*.example.org`); unset or
    /// empty = no check.
    #[arg(long, env = "PLUME_CHECK_ORIGIN", value_delimiter = ',')]
    pub check_origin: Option<Vec<String>>,
    /// Log format [default: human].
    #[arg(long, env = "PLUME_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}
