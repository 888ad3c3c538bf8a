//! Plume's IO shell: the hyper listener, the WebSocket upgrade, one driver task per
//! connection, the health endpoint and graceful shutdown.
//!
//! # Layout
//!
//! - [`admission`]: the connection cap and its overflow, the accept backoff, the budget of
//!   request-body bytes in flight.
//! - [`api`]: [`HttpApi`], application HTTP routes on the same port, and how their bodies
//!   are read (only after the route and the caller are admitted).
//! - [`config`]: [`ServerConfig`], every transport limit with its default.
//! - [`handshake`]: the checks an upgrade request passes before the 101 (method, headers,
//!   origin, auth token subprotocol, `vsn`, the connect hook).
//! - [`query`]: Plug-style query-string decoding for connect params.
//! - [`origin`]: the optional `Origin` check.
//! - [`driver`]: the per-connection loop between the network and the socket state machine.
//! - [`longpoll`]: the LongPoll transport (sessions, signed tokens, cross-node relay).
//! - [`drain`]: [`drain::Drainer`], closing the sockets in batches when the node stops.
//! - this file: [`Server`] (accept loop, HTTP routing, shutdown).
//!
//! # HTTP routes
//!
//! | route                    | response |
//! |--------------------------|----------|
//! | `GET /socket/websocket`  | the WebSocket upgrade (or 400/403, see [`handshake`]; 404 when `websocket` is off) |
//! | `/socket/longpoll`       | the LongPoll transport (GET, POST, OPTIONS; see [`longpoll`]) |
//! | `GET /healthz`           | 200 `{"status":"ok","connections":N}` (liveness) |
//! | `GET /readyz`            | 200 when the [`Readiness`] checks pass, else 503 (503 at once when stopping) |
//! | `GET /metrics`           | the node's metrics, OpenMetrics text (see [`plume_channels::metrics`]) |
//! | a mounted [`HttpApi`]'s prefix | that API (the longest matching prefix wins) |
//! | anything else            | 404 |
//!
//! The fixed routes above come first; any other path goes to the mounted [`HttpApi`]
//! with the longest prefix the path starts with (so `/api/` reaches the backend API and `/`
//! a web page mounted beside it). Each API still decides on the request head before its body
//! is read.
//!
//! # Admission
//!
//! Before anything is routed: a connection must send its request head within
//! `handshake_timeout` (or be closed without an answer), and at most `max_connections` are
//! served at once; one over the cap gets 503 `{"error":"too many connections"}` (or 200 for
//! `GET /healthz`) and is closed. See [`admission`].
//!
//! # Stopping
//!
//! [`Running::shutdown`] (SIGTERM in the binary) first turns `/readyz` to 503 and refuses new
//! sockets (503 `{"error":"server shutting down"}`, which a load balancer can retry on another
//! node) while health, readiness and metrics are still answered; then the [`drain::Drainer`]
//! closes the sockets with 1001 in batches (`drain_batch_size` every `drain_interval`); then
//! the listener closes and the server waits up to `shutdown_grace` for connections to end.

pub mod admission;
pub mod api;
pub mod config;
pub mod drain;
pub mod driver;
mod frame_writer;
pub mod handshake;
pub mod longpoll;
pub mod origin;
pub mod query;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use plume_channels::{ConnectHook, ConnectInfo, NodeRelay, PubSub, Router, Socket};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use api::{ApiHead, ApiRequest, HttpApi, Readiness};
pub use config::{LongPollConfig, ServerConfig};
pub use longpoll::LONGPOLL_PATH;

use crate::admission::{AcceptBackoff, Admission, BodyBudget, ServedSlot, Ticket};
use crate::drain::Drainer;
use crate::driver::DriverConfig;
use crate::origin::OriginPattern;

/// The path phoenix.js connects to for `new Socket("/socket")`.
pub const WEBSOCKET_PATH: &str = "/socket/websocket";
/// The liveness endpoint.
pub const HEALTH_PATH: &str = "/healthz";
/// The readiness endpoint.
pub const READY_PATH: &str = "/readyz";
/// The metrics endpoint (Prometheus scrapes it).
pub const METRICS_PATH: &str = "/metrics";

type Body = Full<Bytes>;

/// What the server is made of: configuration and the application's parts.
pub struct Server {
    config: ServerConfig,
    router: Arc<Router>,
    pubsub: Arc<dyn PubSub>,
    hook: Arc<dyn ConnectHook>,
    apis: Vec<Arc<dyn HttpApi>>,
    readiness: Option<Arc<dyn Readiness>>,
    relay: Option<Arc<dyn NodeRelay>>,
}

struct Shared {
    config: ServerConfig,
    origins: Vec<OriginPattern>,
    router: Arc<Router>,
    pubsub: Arc<dyn PubSub>,
    hook: Arc<dyn ConnectHook>,
    /// Longest prefix first, so the first match is the longest.
    apis: Vec<Arc<dyn HttpApi>>,
    readiness: Option<Arc<dyn Readiness>>,
    /// Cancelled when the node starts stopping: readiness 503, no new sockets, drain.
    stopping: CancellationToken,
    /// Cancelled after the drain: the listener and HTTP connections close.
    shutdown: CancellationToken,
    drainer: Arc<Drainer>,
    tracker: TaskTracker,
    connections: AtomicUsize,
    admission: Admission,
    bodies: BodyBudget,
    longpoll: longpoll::LongPoll,
}

/// A running server.
pub struct Running {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

/// Connections the kernel may hold completed but not yet accepted. tokio's `bind` asks for
/// 1,024, which a burst of connects (3,000 at once in `plume-bench attack --kind slowloris`)
/// overflowed 1,062 times: those clients saw a connect that TCP retried a second later. The
/// kernel caps it at `net.core.somaxconn` (4,096 on current Linux).
pub const LISTEN_BACKLOG: u32 = 4096;

/// A listening socket on `addr` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as tokio's own
/// `bind` sets, so a restarted server does not wait for old connections' TIME_WAIT).
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

impl Server {
    /// A server with its channels, pub/sub backend and connect hook.
    pub fn new(
        config: ServerConfig,
        router: Router,
        pubsub: Arc<dyn PubSub>,
        hook: Arc<dyn ConnectHook>,
    ) -> Server {
        Server {
            config,
            router: Arc::new(router),
            pubsub,
            hook,
            apis: Vec::new(),
            readiness: None,
            relay: None,
        }
    }

    /// Joins the node to a cluster for LongPoll: a poll or post for a session another node
    /// holds is relayed there through `relay`.
    pub fn with_node_relay(mut self, relay: Arc<dyn NodeRelay>) -> Server {
        self.relay = Some(relay);
        self
    }

    /// Makes `GET /readyz` check these dependencies.
    pub fn with_readiness(mut self, readiness: Arc<dyn Readiness>) -> Server {
        self.readiness = Some(readiness);
        self
    }

    /// Mounts application HTTP routes on the same port. Several may be mounted: a request
    /// goes to the one with the longest prefix its path starts with (the WebSocket, health and
    /// readiness paths excepted). Mounting a second API with the same prefix replaces the first.
    pub fn with_http_api(mut self, api: Arc<dyn HttpApi>) -> Server {
        self.apis.retain(|mounted| mounted.prefix() != api.prefix());
        self.apis.push(api);
        self
    }

    /// Binds the configured address and starts accepting connections. A bind error names the
    /// address (`binding 127.0.0.1:4000: Address already in use`).
    pub async fn start(self) -> io::Result<Running> {
        let bind = self.config.bind;
        let listener =
            listen(bind).map_err(|e| io::Error::new(e.kind(), format!("binding {bind}: {e}")))?;
        let addr = listener.local_addr()?;
        let mut origins = Vec::new();
        for pattern in &self.config.check_origin {
            match OriginPattern::parse(pattern) {
                Some(p) => origins.push(p),
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("check_origin entry {pattern:?} has no host"),
                    ));
                }
            }
        }
        let admission = Admission::new(
            self.config.max_connections,
            self.config.overflow_connections,
        );
        let bodies = BodyBudget::new(self.config.max_body_bytes_in_flight);
        let mut apis = self.apis;
        apis.sort_by_key(|api| std::cmp::Reverse(api.prefix().len()));
        let longpoll = longpoll::LongPoll::new("local", self.relay);
        let shared = Arc::new(Shared {
            config: self.config,
            origins,
            router: self.router,
            pubsub: self.pubsub,
            hook: self.hook,
            apis,
            readiness: self.readiness,
            stopping: CancellationToken::new(),
            shutdown: CancellationToken::new(),
            drainer: Drainer::new(),
            tracker: TaskTracker::new(),
            connections: AtomicUsize::new(0),
            admission,
            bodies,
            longpoll,
        });
        longpoll::start_inbox(&shared);
        tracing::info!(%addr, "listening");
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Running {
            addr,
            shared,
            accept,
        })
    }
}

impl Running {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Open WebSocket connections.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// LongPoll sessions this node holds.
    pub fn longpoll_sessions(&self) -> usize {
        self.shared.longpoll.sessions()
    }

    /// Connections accepted while all `max_connections` slots were taken (each was answered
    /// 503 `too many connections`, or 200 if it asked for `/healthz`, and closed).
    pub fn refused_connections(&self) -> u64 {
        self.shared.admission.refused()
    }

    /// API requests answered 503 because the budget of body bytes in flight was spent.
    pub fn refused_bodies(&self) -> u64 {
        self.shared.bodies.refused()
    }

    /// Stops gracefully: `/readyz` turns 503 and new sockets are refused at once, the open
    /// sockets are closed with 1001 in batches (`drain_batch_size` every `drain_interval`) so
    /// clients reconnect elsewhere spread out, then the listener closes and the server waits
    /// (up to `shutdown_grace`) for connections to finish.
    pub async fn shutdown(self) {
        let cfg = &self.shared.config;
        tracing::info!(
            sockets = self.shared.drainer.len(),
            batch = cfg.drain_batch_size,
            interval_ms = cfg.drain_interval.as_millis() as u64,
            "stopping: draining sockets"
        );
        self.shared.stopping.cancel();
        plume_channels::metrics::metrics().set_draining(true);
        let told = self
            .shared
            .drainer
            .drain(cfg.drain_batch_size, cfg.drain_interval)
            .await;
        tracing::info!(told, "drain done; shutting down");
        self.shared.shutdown.cancel();
        let _ = self.accept.await;
        self.shared.tracker.close();
        let grace = self.shared.config.shutdown_grace;
        if tokio::time::timeout(grace, self.shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = self.shared.tracker.len(),
                "shutdown grace period over; dropping remaining connections"
            );
        }
        tracing::info!("stopped");
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut backoff = AcceptBackoff::default();
    loop {
        // Room for one more open socket first (mini-redis's model), so a flood of
        // connections waits in the kernel's backlog instead of exhausting file descriptors.
        let room = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            room = shared.admission.room() => room,
        };
        let Some(room) = room else {
            tracing::error!("connection semaphore closed; no longer accepting");
            return;
        };
        let accepted = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff.succeeded();
                let _ = stream.set_nodelay(true);
                match shared.admission.admit(room) {
                    Ticket::Served(slot) => {
                        shared
                            .tracker
                            .spawn(serve_http(stream, peer, shared.clone(), slot));
                    }
                    Ticket::Overflow(room) => {
                        // Logged on the 1st, 2nd, 4th, 8th... refusal: an operator hears
                        // about the cap, and a flood costs only log2(n) lines.
                        let refused = shared.admission.refused();
                        if refused.is_power_of_two() {
                            tracing::warn!(
                                refused,
                                max_connections = shared.config.max_connections,
                                "connection cap reached; answering 503 too many connections"
                            );
                        }
                        let task_shared = shared.clone();
                        shared.tracker.spawn(async move {
                            let _room = room;
                            serve_overflow(stream, peer, task_shared).await;
                        });
                    }
                }
            }
            Err(err) => {
                // Out of file descriptors and similar: the error repeats until something
                // closes, so wait (1 ms doubling to 1 s) and log at a bounded rate.
                let retry = backoff.failed(Instant::now());
                if let Some(suppressed) = retry.log {
                    tracing::warn!(%err, suppressed, retry_ms = retry.delay.as_millis() as u64,
                        "accept failed");
                }
                tokio::select! {
                    () = shared.shutdown.cancelled() => return,
                    () = tokio::time::sleep(retry.delay) => {}
                }
            }
        }
    }
}

/// The HTTP/1 settings every accepted connection is served with: hyper's header-read timer
/// runs from the moment the connection is served (and again after each response on a
/// keep-alive connection), so a peer that never completes a request head is closed.
fn http1_builder(config: &ServerConfig) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.handshake_timeout);
    builder
}

async fn serve_http(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>, slot: ServedSlot) {
    // The slot is shared with the WebSocket this connection may become, and freed when both
    // are gone.
    let slot = Arc::new(slot);
    let service_shared = shared.clone();
    let service = service_fn(move |req| {
        let shared = service_shared.clone();
        let slot = slot.clone();
        async move { Ok::<_, Infallible>(route(req, peer, shared, slot).await) }
    });
    let conn = http1_builder(&shared.config)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(err) = result {
                tracing::debug!(%peer, %err, "http connection error");
            }
        }
        () = shared.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// A connection over `max_connections`: one request is read (within the handshake timeout)
/// and answered without touching the application, then the connection is closed. The whole
/// exchange is bounded by the handshake timeout, so an overflow slot is never held longer.
async fn serve_overflow(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let service_shared = shared.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let shared = service_shared.clone();
        async move {
            let resp = if req.method() == http::Method::GET && req.uri().path() == HEALTH_PATH {
                health(&shared)
            } else {
                plume_channels::metrics::metrics().upgrade_refused("too_many_connections");
                api::json_error(StatusCode::SERVICE_UNAVAILABLE, "too many connections")
            };
            Ok::<_, Infallible>(resp)
        }
    });
    let mut builder = http1_builder(&shared.config);
    builder.keep_alive(false);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(shared.config.handshake_timeout, conn).await {
        Ok(Err(err)) => tracing::debug!(%peer, %err, "overflow connection error"),
        Err(_elapsed) => tracing::debug!(%peer, "overflow connection timed out"),
        Ok(Ok(())) => {}
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp
}

async fn route(
    req: Request<Incoming>,
    peer: SocketAddr,
    shared: Arc<Shared>,
    slot: Arc<ServedSlot>,
) -> Response<Body> {
    match req.uri().path() {
        // The fixed paths never reach a mounted API, even the WebSocket path while off.
        WEBSOCKET_PATH if shared.config.websocket => return upgrade(req, peer, shared, slot),
        WEBSOCKET_PATH => return text(StatusCode::NOT_FOUND, ""),
        LONGPOLL_PATH => return longpoll::serve(req, peer, &shared).await,
        HEALTH_PATH => return health(&shared),
        READY_PATH => return ready(&shared).await,
        METRICS_PATH => return metrics_response(),
        _ => {}
    }
    let path = req.uri().path();
    let Some(api) = shared
        .apis
        .iter()
        .find(|api| path.starts_with(api.prefix()))
    else {
        return text(StatusCode::NOT_FOUND, "");
    };
    let limits = api::BodyLimits {
        budget: &shared.bodies,
        timeout: shared.config.body_timeout,
    };
    api::serve(api.as_ref(), req, limits).await
}

fn health(shared: &Shared) -> Response<Body> {
    let body = format!(
        r#"{{"status":"ok","connections":{}}}"#,
        shared.connections.load(Ordering::Relaxed)
    );
    let mut resp = text(StatusCode::OK, body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn metrics_response() -> Response<Body> {
    let mut resp = text(StatusCode::OK, plume_channels::metrics::encode());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(plume_channels::metrics::CONTENT_TYPE),
    );
    resp
}

async fn ready(shared: &Shared) -> Response<Body> {
    if shared.stopping.is_cancelled() {
        let body = serde_json::json!({"status": "stopping"});
        return api::json_response(StatusCode::SERVICE_UNAVAILABLE, &body);
    }
    let Some(readiness) = &shared.readiness else {
        return api::json_response(StatusCode::OK, &serde_json::json!({"status": "ready"}));
    };
    match readiness.check().await {
        Ok(details) => api::json_response(
            StatusCode::OK,
            &serde_json::json!({"status": "ready", "checks": details}),
        ),
        Err(details) => api::json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"status": "unavailable", "checks": details}),
        ),
    }
}

fn upgrade(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    shared: Arc<Shared>,
    slot: Arc<ServedSlot>,
) -> Response<Body> {
    if shared.stopping.is_cancelled() {
        plume_channels::metrics::metrics().upgrade_refused("draining");
        return api::json_error(StatusCode::SERVICE_UNAVAILABLE, "server shutting down");
    }
    let up = match handshake::check(&req, Some(peer), &shared.origins, shared.hook.as_ref()) {
        Ok(up) => up,
        Err(refusal) => {
            tracing::info!(%peer, status = refusal.status.as_u16(), reason = %refusal.reason,
                "upgrade refused");
            plume_channels::metrics::metrics().upgrade_refused(refusal.label);
            let body = if refusal.status == StatusCode::BAD_REQUEST {
                Bytes::from(refusal.reason)
            } else {
                Bytes::new()
            };
            return text(refusal.status, body);
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let mut resp = text(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
    let headers = resp.headers_mut();
    headers.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    if let Ok(v) = header::HeaderValue::from_str(&up.accept_key) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if up.select_phoenix {
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            header::HeaderValue::from_static(handshake::PHOENIX_SUBPROTOCOL),
        );
    }
    let task_shared = shared.clone();
    shared.tracker.spawn(async move {
        let _slot = slot;
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => {
                tracing::debug!(%peer, %err, "upgrade failed");
                return;
            }
        };
        run_socket(upgraded, up, peer, task_shared).await;
    });
    resp
}

///
/// Not an `async fn`, for the reason given on [`driver::drive`]: this future lives as long as
/// the connection.
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn run_socket(
    upgraded: hyper::upgrade::Upgraded,
    up: handshake::Upgrade,
    peer: SocketAddr,
    shared: Arc<Shared>,
) -> impl Future<Output = ()> + Send {
    async move {
        let cfg = &shared.config;
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(cfg.read_buffer_bytes)
            .write_buffer_size(cfg.write_buffer_bytes)
            .max_frame_size(Some(cfg.max_frame_bytes))
            .max_message_size(Some(cfg.max_frame_bytes));
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(ws_config))
                .await;
        let info = ConnectInfo {
            request: up.request,
            socket_id: up.accepted.socket_id,
            assigns: up.accepted.assigns,
        };
        let driver_cfg = DriverConfig {
            idle_timeout: cfg.idle_timeout,
            write_timeout: cfg.write_timeout,
            max_frame_bytes: cfg.max_frame_bytes,
        };
        // The socket goes into the driver inside this block, so the task does not keep a
        // moved-from slot for it (352 bytes) beside the driver for the connection's life.
        let (id, _registration, driver) = {
            let (socket, rx) = Socket::new(
                info,
                shared.router.clone(),
                shared.pubsub.clone(),
                cfg.socket,
            );
            let id = socket.id();
            let registration = shared.drainer.register(rx.go_away_handle());
            (id, registration, driver::drive(ws, socket, rx, driver_cfg))
        };
        let _counted = plume_channels::metrics::metrics()
            .connection_opened(plume_channels::metrics::Transport::WebSocket);
        shared.connections.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(socket = id.0, %peer, "socket connected");
        driver.await;
        shared.connections.fetch_sub(1, Ordering::Relaxed);
        tracing::debug!(socket = id.0, %peer, "socket closed");
    }
}
