//! Shared harness for the server integration tests: a real server on 127.0.0.1:0 with the
//! sample `echo:*` channel, and helpers around plume-client.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;

use bytes::Bytes;
use plume_channels::echo::EchoChannel;
use plume_channels::{AcceptAll, ConnectHook, LocalPubSub, Router};
use plume_client::{Client, ConnectOptions};
use plume_server::{HttpApi, Running, Server, ServerConfig};
use plume_wire::client::ServerMessage;
use plume_wire::{Json, Payload, Ref};

pub struct TestServer {
    pub running: Running,
    pub pubsub: Arc<LocalPubSub>,
}

pub async fn start() -> TestServer {
    start_with(|_| {}, Arc::new(AcceptAll)).await
}

pub async fn start_with(
    configure: impl FnOnce(&mut ServerConfig),
    hook: Arc<dyn ConnectHook>,
) -> TestServer {
    start_with_api(configure, hook, None).await
}

/// A server with an application HTTP API mounted (when `api` is set).
pub async fn start_with_api(
    configure: impl FnOnce(&mut ServerConfig),
    hook: Arc<dyn ConnectHook>,
    api: Option<Arc<dyn HttpApi>>,
) -> TestServer {
    let mut config = ServerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    };
    configure(&mut config);
    let pubsub = Arc::new(LocalPubSub::new());
    let router = Router::new().channel::<EchoChannel>("echo:*", Arc::new(()));
    let mut server = Server::new(config, router, pubsub.clone(), hook);
    if let Some(api) = api {
        server = server.with_http_api(api);
    }
    let running = server.start().await.unwrap();
    TestServer { running, pubsub }
}

impl TestServer {
    pub fn url(&self, query: &str) -> String {
        format!(
            "ws://{}/socket/websocket?{query}",
            self.running.local_addr()
        )
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.local_addr())
    }

    /// A V2 socket.
    pub async fn v2(&self) -> Client {
        Client::connect(&self.url("vsn=2.0.0")).await.unwrap()
    }

    pub async fn connect(&self, query: &str, opts: ConnectOptions) -> Client {
        Client::connect_with(&self.url(query), opts).await.unwrap()
    }
}

pub fn json(text: &str) -> Payload {
    Payload::Json(Json::from_text(Bytes::copy_from_slice(text.as_bytes())).unwrap())
}

pub fn r(s: &str) -> Ref {
    Ref::Str(s.into())
}

fn ref_text(r: &Option<Ref>) -> String {
    match r {
        None => "null".into(),
        Some(Ref::Str(s)) => format!("{s:?}"),
        Some(Ref::Num(n)) => n.to_string(),
    }
}

/// A server message rendered as a V2 array, for compact exact assertions.
pub fn show(m: &ServerMessage) -> String {
    let payload = match &m.payload {
        Payload::Json(j) => String::from_utf8_lossy(j.as_bytes()).into_owned(),
        Payload::Binary(b) => format!("<binary {:?}>", b.as_ref()),
    };
    let status = m
        .status
        .as_ref()
        .map(|s| format!(" status={s}"))
        .unwrap_or_default();
    format!(
        "[{},{},{:?},{:?},{}]{}",
        ref_text(&m.join_ref),
        ref_text(&m.ref_),
        m.topic,
        m.event,
        payload,
        status
    )
}

/// Receives the next frame and renders it.
pub async fn next(c: &mut Client) -> String {
    show(&c.recv_message().await.unwrap())
}

/// Joins an echo topic, asserts the ok reply, returns the join_ref.
pub async fn join_ok(c: &mut Client, topic: &str) -> Ref {
    let (jr, reply) = c.join(topic, &json("{}")).await.unwrap();
    assert_eq!(
        reply.reply_status().as_deref(),
        Some("ok"),
        "{}",
        show(&reply)
    );
    jr
}

/// Plain HTTP/1.1 GET over a raw TCP stream; returns (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str, extra: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{extra}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}
