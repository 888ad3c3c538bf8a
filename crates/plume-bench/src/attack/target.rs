//! The server under attack: started by the benchmark (`plume serve` with its own limits left
//! on) or already running (`--url`, `--server-pid`), and how the attacks reach it.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use plume_client::{Client, ClientError, ConnectOptions};
use serde::Serialize;

use crate::spawn::{self, PlumeLaunch, Proc};
use crate::target::{Endpoint, Protocol, parse_loopback_url};
use crate::token::Signer;

/// Where the started server keeps chat state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Store {
    /// The embedded SQLite store in a fresh data directory (`plume serve`'s default).
    Embedded,
    /// `--store memory`.
    Memory,
}

/// Which server to attack.
#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// The plume binary to start.
    #[arg(long, default_value = "target/release/plume")]
    pub server_bin: PathBuf,
    /// The started server's store.
    #[arg(long, value_enum, default_value_t = Store::Embedded)]
    pub store: Store,
    /// An extra argument for `plume serve` (repeat for several), e.g.
    /// `--server-arg=--handshake-timeout=5`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// Attack a server that is already running instead (ws://127.0.0.1:PORT/socket/websocket;
    /// loopback only). Its limits are whatever it was started with.
    #[arg(long)]
    pub url: Option<String>,
    /// The pid of the server given with --url, for its memory and descriptors.
    #[arg(long, requires = "url")]
    pub server_pid: Option<u32>,
    /// HS256 secret: the started server gets it, tokens are signed with it.
    #[arg(
        long,
        default_value = "plume-bench-attack-secret",
        hide_default_value = true
    )]
    pub jwt_secret: String,
    /// The backend API key: the started server gets it; a running one needs it for the
    /// HTTP API attacks (body-stall's keyed half, stalled-reader's broadcasts).
    #[arg(
        long,
        default_value = "plume-bench-attack-key",
        hide_default_value = true
    )]
    pub api_key: String,
}

/// What the report says about the server.
#[derive(Clone, Debug, Serialize)]
pub struct ServerInfo {
    /// True when the benchmark started it.
    pub started_by_bench: bool,
    /// Its address.
    pub addr: String,
    /// Its pid, when known.
    pub pid: Option<u32>,
    /// The store of a started server (`None` for a running one: not known).
    pub store: Option<Store>,
    /// The `plume serve` arguments added to the benchmark's own (`--bind`, `--jwt-secret`,
    /// `--membership open`, `--api-key`).
    pub extra_args: Vec<String>,
    /// Its soft open-file limit.
    pub max_open_files: Option<u64>,
}

/// How attacks reach the server (cheap to clone into tasks).
#[derive(Clone)]
pub struct Target {
    /// The WebSocket endpoint.
    pub endpoint: Endpoint,
    /// Signs connect tokens.
    pub signer: Signer,
    /// The API key.
    pub api_key: String,
    /// The server's pid, when known.
    pub pid: Option<u32>,
}

impl Target {
    /// The TCP address (HTTP and WebSocket share it).
    pub fn addr(&self) -> SocketAddr {
        self.endpoint.addr
    }

    /// The connect URL for `user`, with extra query text (`&device_unique_id=…`).
    pub fn url(&self, user: &str, extra_query: &str) -> anyhow::Result<String> {
        let token = self.signer.sign(user).context("sign a token")?;
        Ok(format!("{}{extra_query}", self.endpoint.url(&token)))
    }

    /// Opens a WebSocket as `user`, from `local_ip` when given.
    pub async fn connect(
        &self,
        user: &str,
        local_ip: Option<IpAddr>,
    ) -> anyhow::Result<Result<Client, ClientError>> {
        let url = self.url(user, "")?;
        let opts = ConnectOptions {
            local_ip,
            ..ConnectOptions::default()
        };
        Ok(Client::connect_with(&url, opts).await)
    }
}

/// The server of one attack: the [`Target`], its description, and the process when the
/// benchmark started it (killed on drop).
pub struct Server {
    /// How to reach it.
    pub target: Target,
    /// For the report.
    pub info: ServerInfo,
    /// The process, when started here.
    pub proc_: Option<Proc>,
}

impl Server {
    /// Starts `plume serve` or describes the running server.
    pub async fn start(args: &ServerArgs) -> anyhow::Result<Server> {
        let signer = Signer::hs256(args.jwt_secret.as_bytes());
        if let Some(url) = &args.url {
            let endpoint = parse_loopback_url(url, Protocol::Phoenix)?;
            let info = ServerInfo {
                started_by_bench: false,
                addr: endpoint.addr.to_string(),
                pid: args.server_pid,
                store: None,
                extra_args: Vec::new(),
                max_open_files: args.server_pid.and_then(crate::procfs::max_open_files),
            };
            return Ok(Server {
                target: Target {
                    endpoint,
                    signer,
                    api_key: args.api_key.clone(),
                    pid: args.server_pid,
                },
                info,
                proc_: None,
            });
        }
        let mut extra = vec!["--api-key".to_owned(), args.api_key.clone()];
        if args.store == Store::Memory {
            extra.extend(["--store".to_owned(), "memory".to_owned()]);
        }
        extra.extend(args.server_args.iter().cloned());
        let launch = PlumeLaunch {
            bin: args.server_bin.clone(),
            jwt_secret: args.jwt_secret.clone(),
            extra_args: extra,
            rate_limits: true,
        };
        let port = spawn::free_port()?;
        let proc_ = spawn::spawn_plume(&launch, "plume", port, None).await?;
        let addr = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
        eprintln!("started plume (pid {}) on {addr}", proc_.pid);
        let info = ServerInfo {
            started_by_bench: true,
            addr: addr.to_string(),
            pid: Some(proc_.pid),
            store: Some(args.store),
            // The key is the benchmark's own; the report does not need it.
            extra_args: launch.extra_args[2..].to_vec(),
            max_open_files: crate::procfs::max_open_files(proc_.pid),
        };
        Ok(Server {
            target: Target {
                endpoint: Endpoint::local(Protocol::Phoenix, addr),
                signer,
                api_key: args.api_key.clone(),
                pid: Some(proc_.pid),
            },
            info,
            proc_: Some(proc_),
        })
    }

    /// False once a server the benchmark started has exited.
    pub fn is_running(&mut self) -> bool {
        self.proc_.as_mut().is_none_or(Proc::is_running)
    }

    /// The end of its log, when the benchmark started it.
    pub fn log_tail(&self) -> String {
        self.proc_.as_ref().map(Proc::log_tail).unwrap_or_default()
    }
}
