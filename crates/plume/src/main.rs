//! `plume`: the server binary. Thin by design: parse the command line, layer the
//! configuration, set up logging, wire the crates together and run.
//!
//! # Layout
//!
//! - `cli.rs`: the command line (`serve`, `token`), every flag with its `PLUME_*` variable.
//! - `config.rs`: layering defaults < config file < env < flags into one validated config.
//! - `web.rs`: the web chat at `GET /` (embedded files) and development mode's `POST /dev/token`.
//! - this file: logging, wiring and signal handling.

mod cli;
mod config;
mod web;

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use plume_channels::echo::EchoChannel;
use plume_channels::{LocalPubSub, PubSub, Router};
use plume_chat::{ChatConnect, ChatService, JwtVerifier, Stores};
use plume_redis::{Cluster, RedisPubSub};
use plume_server::Server;
use plume_server::api::{Readiness, ReadyFuture};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command, LogFormat, StoreKind, TokenArgs};
use crate::config::{Config, DEV_JWT_SECRET};

/// mimalloc instead of glibc's allocator: in the chat benchmark glibc's malloc and free were
/// about 9.5 % of server CPU (`_int_malloc`, `_int_free`, `malloc_consolidate`, …); see
/// BENCHMARKS.md for the runs with each. Built without transparent huge pages (the crate's
/// `no_thp` feature): with them an idle connection cost 9.0-9.5 instead of 7.7-7.8 KiB, for
/// no measurable CPU gain with the embedded store. The in-memory store's chat run, whose heap
/// grows by tens of MB a second, is about 15 % cheaper in CPU with them: for that, build
/// without the feature (the `madvise` calls are compiled out, so no setting brings them back).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let config = config::load(&args)?;
            if args.print_config {
                println!("{}", toml::to_string_pretty(&config.redacted())?);
                return Ok(());
            }
            init_logging(config.log_format);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            runtime.block_on(serve(config))
        }
        Command::Token(args) => token(&args),
    }
}

fn token(args: &TokenArgs) -> anyhow::Result<()> {
    let file = config::read_file(args.config.as_ref())?;
    let secret = args.jwt_secret.clone().or(file.auth.jwt_secret);
    config::check_jwt_secret(secret.as_deref())?;
    let secret = secret.unwrap_or_else(|| DEV_JWT_SECRET.to_owned());
    let token = plume_chat::auth::sign_hs256(secret.as_bytes(), &args.sub, args.ttl)?;
    println!("{token}");
    Ok(())
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

fn verifier(config: &Config) -> anyhow::Result<JwtVerifier> {
    let auth = &config.auth;
    let checks = |mut v: JwtVerifier| {
        if let Some(aud) = &auth.jwt_audience {
            v = v.with_audience(aud);
        }
        if let Some(iss) = &auth.jwt_issuer {
            v = v.with_issuer(iss);
        }
        v
    };
    if let Some(path) = &auth.jwt_public_key {
        let pem = std::fs::read(path)
            .with_context(|| format!("reading JWT public key {}", path.display()))?;
        // The algorithm follows the key unless configured; a mismatch names both.
        return JwtVerifier::public_key_for(auth.jwt_algorithm, &pem)
            .map(checks)
            .with_context(|| format!("loading JWT public key {}", path.display()));
    }
    match &auth.jwt_secret {
        Some(secret) => Ok(checks(JwtVerifier::hs256(secret.as_bytes()))),
        None => {
            tracing::warn!(
                "development mode (loopback address, no JWT secret or public key): accepting \
                 tokens signed with the published development secret (`plume token` signs \
                 with it); set PLUME_JWT_SECRET for anything but local development"
            );
            if config.membership_from_development_mode {
                tracing::info!(
                    "development mode: chat membership is open, any authenticated user may \
                     join chat:{{id}}; choose with --membership or PLUME_MEMBERSHIP"
                );
            }
            Ok(JwtVerifier::hs256(DEV_JWT_SECRET.as_bytes()))
        }
    }
}

/// `/readyz` on the embedded store: the database answers a read; the body carries the
/// writer's counters (commits, writes grouped into them, and flushes of the WAL to disk).
struct EmbeddedReadiness {
    log: Arc<dyn plume_chat::store::MessageLog>,
    stats: Arc<plume_chat::store::sqlite::SqliteStats>,
}

impl Readiness for EmbeddedReadiness {
    fn check(&self) -> ReadyFuture<'_> {
        Box::pin(async move {
            let commits = self.stats.commits.load(Ordering::Relaxed);
            let writes = self.stats.jobs.load(Ordering::Relaxed);
            let flushes = self.stats.flushes.load(Ordering::Relaxed);
            let counters =
                serde_json::json!({"commits": commits, "writes": writes, "flushes": flushes});
            match tokio::time::timeout(Duration::from_secs(2), self.log.head("")).await {
                Ok(Ok(_)) => Ok(serde_json::json!({"store": "ok", "counters": counters})),
                Ok(Err(err)) => Err(serde_json::json!({
                    "store": "error", "error": err.to_string(), "counters": counters,
                })),
                Err(_) => Err(serde_json::json!({
                    "store": "error", "error": "no answer within 2 s", "counters": counters,
                })),
            }
        })
    }
}

/// `/readyz`: the Redis link, including a pub/sub round trip.
struct RedisReadiness(Arc<RedisPubSub>);

impl Readiness for RedisReadiness {
    fn check(&self) -> ReadyFuture<'_> {
        Box::pin(async move {
            let stats = self.0.stats();
            let counters = serde_json::json!({
                "published": stats.published.load(Ordering::Relaxed),
                "publish_errors": stats.publish_errors.load(Ordering::Relaxed),
                "publish_dropped": stats.publish_dropped.load(Ordering::Relaxed),
                "received": stats.received.load(Ordering::Relaxed),
                "reconnects": stats.reconnects.load(Ordering::Relaxed),
            });
            match self.0.health(Duration::from_secs(2)).await {
                Ok(rtt) => Ok(serde_json::json!({
                    "redis": "ok",
                    "pubsub_round_trip_ms": rtt.as_secs_f64() * 1000.0,
                    "counters": counters,
                })),
                Err(err) => Err(serde_json::json!({
                    "redis": "error",
                    "error": err.to_string(),
                    "counters": counters,
                })),
            }
        })
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let verifier = verifier(&config)?;
    let local = Arc::new(LocalPubSub::new());
    let retention = config.chat.retention();
    let mut embedded: Option<Arc<dyn Readiness>> = None;
    let (pubsub, stores, cluster): (Arc<dyn PubSub>, Stores, Option<Cluster>) =
        if !config.redis.url.is_empty() {
            let cluster = Cluster::connect(&config.redis, local)
                .await
                .context("joining the redis cluster")?;
            let stores =
                plume_chat::store::redis::stores(cluster.state.clone(), retention).timed("redis");
            (cluster.pubsub.clone(), stores, Some(cluster))
        } else {
            match config.store.kind {
                StoreKind::Memory => {
                    tracing::warn!("store: memory (chat state is lost when this process stops)");
                    (local, Stores::memory(retention).timed("memory"), None)
                }
                StoreKind::Embedded => {
                    let dir = &config.store.data_dir;
                    let (stores, stats) = plume_chat::store::sqlite::open(dir, retention)
                        .with_context(|| {
                            format!("opening the embedded store in {}", dir.display())
                        })?;
                    embedded = Some(Arc::new(EmbeddedReadiness {
                        log: stores.log.clone(),
                        stats,
                    }));
                    (local, stores.timed("sqlite"), None)
                }
            }
        };
    let chat = ChatService::new(config.chat.clone(), stores, pubsub.clone());
    let mut router = chat.routes(Router::new());
    if config.echo_channel {
        router = router.channel::<EchoChannel>("echo:*", Arc::new(()));
    }
    if config.api_key.is_none() {
        tracing::info!("backend HTTP API off (no PLUME_API_KEY)");
    }
    let server = Server::new(
        config.server.clone(),
        router,
        pubsub,
        Arc::new(
            ChatConnect::new(verifier)
                .max_user_id_bytes(config.chat.max_id_bytes)
                .online(chat.presence()),
        ),
    )
    .with_http_api(Arc::new(chat.api(config.api_key.clone())));
    let server = if config.web_enabled() {
        let dev_secret = config.development_mode().then(|| DEV_JWT_SECRET.to_owned());
        tracing::info!(
            url = %format_args!("http://{}/", config.server.bind),
            sign_in = if dev_secret.is_some() {
                "user name (development mode, POST /dev/token)"
            } else {
                "a token in the URL fragment: /#token=JWT"
            },
            "web chat on (--web off to disable)"
        );
        let transports = web::Transports {
            websocket: config.server.websocket,
            long_poll: config.server.longpoll.enabled,
        };
        server.with_http_api(Arc::new(web::WebChat::new(
            dev_secret,
            config.chat.max_id_bytes,
            transports,
        )))
    } else {
        server
    };
    let server = match &cluster {
        Some(cluster) => server
            .with_readiness(Arc::new(RedisReadiness(cluster.pubsub.clone())))
            .with_node_relay(cluster.pubsub.clone()),
        None => match embedded {
            Some(readiness) => server.with_readiness(readiness),
            None => server,
        },
    };
    let mut signals = StopSignals::install()?;
    let running = server.start().await.context("starting the server")?;
    signals.wait().await?;
    running.shutdown().await;
    if let Some(cluster) = cluster {
        cluster.depart().await;
    }
    Ok(())
}

/// Stop signals, listened for from before the listener opens: a SIGTERM that arrives right
/// after start-up must stop the server gracefully, not kill it.
struct StopSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> anyhow::Result<StopSignals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(StopSignals {
                term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
                int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            })
        }
        #[cfg(not(unix))]
        Ok(StopSignals {})
    }

    async fn wait(&mut self) -> anyhow::Result<()> {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
        Ok(())
    }
}
