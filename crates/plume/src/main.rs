//! `plume`: the server binary. Thin by design: parse the command line, layer the
//! configuration, set up logging, wire the crates together and run.
//!
//! # Layout
//!
//! - `cli.rs`: the command line (`serve`), every flag with its `PLUME_*` variable.
//! - `config.rs`: layering defaults < config file < env < flags into one validated config.
//! - this file: logging, wiring and signal handling.

mod cli;
mod config;

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use plume_channels::echo::EchoChannel;
use plume_channels::{AcceptAll, LocalPubSub, Router};
use plume_server::Server;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command, LogFormat};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let config = config::load(&args)?;
            if args.print_config {
                println!("{}", toml::to_string_pretty(&config)?);
                return Ok(());
            }
            init_logging(config.log_format);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            runtime.block_on(serve(config))
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .init(),
    }
}

async fn serve(config: config::Config) -> anyhow::Result<()> {
    let pubsub = Arc::new(LocalPubSub::new());
    let router = Router::new().channel::<EchoChannel>("echo:*", Arc::new(()));
    let server = Server::new(config.server, router, pubsub, Arc::new(AcceptAll));
    let running = server.start().await.context("binding the listener")?;
    wait_for_signal().await?;
    running.shutdown().await;
    Ok(())
}

#[cfg(unix)]
async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}

#[cfg(not(unix))]
async fn wait_for_signal() -> anyhow::Result<()> {
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")
}
