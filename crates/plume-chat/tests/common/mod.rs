//! Harness for the chat integration tests: a real server on 127.0.0.1:0 running the chat
//! service with in-memory stores, tokens, and a tiny HTTP client for the backend API.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use plume_channels::{LocalPubSub, PubSub, Router};
use plume_chat::{ChatConfig, ChatConnect, ChatService, JwtVerifier, Stores};
use plume_client::{Client, ConnectOptions};
use plume_server::{Running, Server, ServerConfig};
use plume_wire::client::ServerMessage;
use plume_wire::{Json, Payload, Ref};
use serde_json::Value;

pub const SECRET: &[u8] = b"chat-test-secret";
pub const API_KEY: &str = "test-api-key";

pub struct Chat {
    pub running: Running,
}

pub async fn start() -> Chat {
    start_with(|_| {}).await
}

pub async fn start_with(configure: impl FnOnce(&mut ChatConfig)) -> Chat {
    start_custom(configure, JwtVerifier::hs256(SECRET), Some(API_KEY.into())).await
}

pub async fn start_custom(
    configure: impl FnOnce(&mut ChatConfig),
    verifier: JwtVerifier,
    api_key: Option<String>,
) -> Chat {
    let mut chat_config = ChatConfig::default();
    configure(&mut chat_config);
    let stores = Stores::memory(chat_config.retention());
    start_on(chat_config, stores, verifier, api_key).await
}

/// A chat server on the embedded (SQLite) store in `dir`.
pub async fn start_embedded(
    dir: &std::path::Path,
    configure: impl FnOnce(&mut ChatConfig),
) -> Chat {
    let mut chat_config = ChatConfig::default();
    configure(&mut chat_config);
    let (stores, _) = plume_chat::store::sqlite::open(dir, chat_config.retention()).unwrap();
    start_on(
        chat_config,
        stores,
        JwtVerifier::hs256(SECRET),
        Some(API_KEY.into()),
    )
    .await
}

pub async fn start_on(
    chat_config: ChatConfig,
    stores: Stores,
    verifier: JwtVerifier,
    api_key: Option<String>,
) -> Chat {
    let pubsub: Arc<dyn PubSub> = Arc::new(LocalPubSub::new());
    let service = ChatService::new(chat_config, stores, pubsub.clone());
    let router = service.routes(Router::new());
    let config = ServerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    };
    let running = Server::new(config, router, pubsub, Arc::new(ChatConnect::new(verifier)))
        .with_http_api(Arc::new(service.api(api_key)))
        .start()
        .await
        .unwrap();
    Chat { running }
}

/// A node of a cluster: the chat service over Redis stores and Redis fan-out.
pub async fn start_node(
    redis_url: &str,
    node: &str,
    configure: impl FnOnce(&mut ChatConfig),
) -> (Chat, plume_redis::Cluster) {
    let mut chat_config = ChatConfig::default();
    configure(&mut chat_config);
    let redis = plume_redis::RedisConfig {
        url: redis_url.to_owned(),
        node_id: node.to_owned(),
        node_ttl: Duration::from_secs(3),
        command_timeout: Duration::from_millis(500),
        ..plume_redis::RedisConfig::default()
    };
    let cluster = plume_redis::Cluster::connect(&redis, Arc::new(LocalPubSub::new()))
        .await
        .unwrap();
    let pubsub: Arc<dyn PubSub> = cluster.pubsub.clone();
    let stores = plume_chat::store::redis::stores(cluster.state.clone(), chat_config.retention());
    let service = ChatService::new(chat_config, stores, pubsub.clone());
    let config = ServerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    };
    let running = Server::new(
        config,
        service.routes(Router::new()),
        pubsub,
        Arc::new(ChatConnect::new(JwtVerifier::hs256(SECRET))),
    )
    .with_http_api(Arc::new(service.api(Some(API_KEY.into()))))
    .start()
    .await
    .unwrap();
    (Chat { running }, cluster)
}

pub fn token(user: &str) -> String {
    plume_chat::auth::sign_hs256(SECRET, user, 600).unwrap()
}

impl Chat {
    pub fn addr(&self) -> SocketAddr {
        self.running.local_addr()
    }

    pub fn url(&self, query: &str) -> String {
        format!("ws://{}/socket/websocket?{query}", self.addr())
    }

    /// A V2 socket for `user` (device `dev`), as the seed documentation connects.
    pub async fn connect(&self, user: &str, dev: &str) -> Client {
        let q = format!(
            "token={}&device_unique_id={dev}&preferred_language=EN&vsn=2.0.0",
            token(user)
        );
        Client::connect(&self.url(&q)).await.unwrap()
    }

    pub async fn connect_with(
        &self,
        query: &str,
        opts: ConnectOptions,
    ) -> Result<Client, plume_client::ClientError> {
        Client::connect_with(&self.url(query), opts).await
    }

    /// Calls the backend API; returns (status, JSON body or Null).
    pub async fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        self.api_with_key(method, path, body, Some(API_KEY)).await
    }

    pub async fn api_with_key(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        key: Option<&str>,
    ) -> (u16, Value) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.addr()).await.unwrap();
        let body = body.unwrap_or("");
        let auth = key
            .map(|k| format!("authorization: Bearer {k}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{auth}\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    pub async fn add_member(&self, chat: &str, user: &str) {
        let (status, _) = self
            .api("PUT", &format!("/api/chats/{chat}/members/{user}"), None)
            .await;
        assert_eq!(status, 200);
    }
}

pub fn json(text: &str) -> Payload {
    Payload::Json(Json::from_text(Bytes::copy_from_slice(text.as_bytes())).unwrap())
}

pub fn value(m: &ServerMessage) -> Value {
    match &m.payload {
        Payload::Json(j) => j.parse().unwrap(),
        Payload::Binary(_) => panic!("binary payload"),
    }
}

/// Joins and returns (join_ref, reply status, reply response).
pub async fn join(c: &mut Client, topic: &str) -> (Ref, String, Value) {
    let (jr, reply) = c.join(topic, &json("{}")).await.unwrap();
    let status = reply.reply_status().unwrap();
    let response = match reply.reply_response().unwrap() {
        Payload::Json(j) => j.parse().unwrap(),
        Payload::Binary(_) => Value::Null,
    };
    (jr, status, response)
}

pub async fn join_ok(c: &mut Client, topic: &str) -> Ref {
    let (jr, status, resp) = join(c, topic).await;
    assert_eq!(status, "ok", "join {topic}: {resp}");
    jr
}

/// Sends `send_message` and returns (reply status, reply response, message_sent payload).
pub async fn send(c: &mut Client, jr: &Ref, chat: &str, payload: &str) -> (String, Value, Value) {
    let topic = format!("chat:{chat}");
    let reply = c
        .call(jr, &topic, "send_message", &json(payload))
        .await
        .unwrap();
    let status = reply.reply_status().unwrap();
    let response = match reply.reply_response().unwrap() {
        Payload::Json(j) => j.parse().unwrap(),
        Payload::Binary(_) => Value::Null,
    };
    let sent = c.wait_for(|m| m.event == "message_sent").await.unwrap();
    (status, response, value(&sent))
}

pub async fn next_event(c: &mut Client, event: &str) -> Value {
    let e = event.to_owned();
    value(&c.wait_for(move |m| m.event == e).await.unwrap())
}

pub const QUIET: Duration = Duration::from_millis(250);

/// Asserts that no frame with `event` arrives within QUIET.
pub async fn assert_no(c: &mut Client, event: &str) {
    let deadline = tokio::time::Instant::now() + QUIET;
    loop {
        match tokio::time::timeout_at(deadline, c.recv()).await {
            Err(_) => return,
            Ok(Ok(plume_client::Event::Message(m))) => {
                assert_ne!(m.event, event, "unexpected {event}: {:?}", m.payload)
            }
            Ok(other) => panic!("unexpected {other:?}"),
        }
    }
}
