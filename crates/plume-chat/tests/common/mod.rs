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
    start_embedded_counted(dir, configure).await.0
}

/// A chat server on the embedded store in `dir`, with the store's writer counters.
pub async fn start_embedded_counted(
    dir: &std::path::Path,
    configure: impl FnOnce(&mut ChatConfig),
) -> (Chat, Arc<plume_chat::store::sqlite::SqliteStats>) {
    let mut chat_config = ChatConfig::default();
    configure(&mut chat_config);
    let (stores, stats) = plume_chat::store::sqlite::open(dir, chat_config.retention()).unwrap();
    let chat = start_on(
        chat_config,
        stores,
        JwtVerifier::hs256(SECRET),
        Some(API_KEY.into()),
    )
    .await;
    (chat, stats)
}

pub async fn start_on(
    chat_config: ChatConfig,
    stores: Stores,
    verifier: JwtVerifier,
    api_key: Option<String>,
) -> Chat {
    start_server(
        chat_config,
        stores,
        verifier,
        api_key,
        ServerConfig::default(),
    )
    .await
}

/// A chat server on in-memory stores with transport settings changed by `server`.
pub async fn start_with_server(
    configure: impl FnOnce(&mut ChatConfig),
    server: impl FnOnce(&mut ServerConfig),
) -> Chat {
    let mut chat_config = ChatConfig::default();
    configure(&mut chat_config);
    let mut config = ServerConfig::default();
    server(&mut config);
    let stores = Stores::memory(chat_config.retention());
    start_server(
        chat_config,
        stores,
        JwtVerifier::hs256(SECRET),
        Some(API_KEY.into()),
        config,
    )
    .await
}

pub async fn start_server(
    chat_config: ChatConfig,
    stores: Stores,
    verifier: JwtVerifier,
    api_key: Option<String>,
    server: ServerConfig,
) -> Chat {
    let pubsub: Arc<dyn PubSub> = Arc::new(LocalPubSub::new());
    let service = ChatService::new(chat_config, stores, pubsub.clone());
    let router = service.routes(Router::new());
    let config = ServerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        ..server
    };
    let hook = ChatConnect::new(verifier).online(service.presence());
    let running = Server::new(config, router, pubsub, Arc::new(hook))
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
    let mut config = ServerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    };
    // The cluster tests send thousands of messages from one socket as fast as acks return,
    // far over a client's push rate; the rate limit has its own tests (limits.rs).
    config.socket.max_pushes_per_second = 0;
    let running = Server::new(
        config,
        service.routes(Router::new()),
        pubsub,
        Arc::new(ChatConnect::new(JwtVerifier::hs256(SECRET)).online(service.presence())),
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

/// Fault injection around the real in-memory stores: a delay before the log's head is read
/// (to widen the window between a join's subscription and its log read) and membership
/// lookups that fail on demand (a delivery step that stops half-way).
#[derive(Default)]
pub struct Faults {
    pub head_delay_ms: std::sync::atomic::AtomicU64,
    /// How long every append waits before it reaches the log (a store that is slow).
    pub append_delay_ms: std::sync::atomic::AtomicU64,
    pub fail_members: std::sync::atomic::AtomicUsize,
}

pub struct FaultyLog {
    pub inner: Arc<dyn plume_chat::store::MessageLog>,
    pub faults: Arc<Faults>,
}

#[async_trait::async_trait]
impl plume_chat::store::MessageLog for FaultyLog {
    async fn append(
        &self,
        key: &plume_chat::store::SendKey,
        draft: &plume_chat::store::Draft,
    ) -> Result<plume_chat::store::Appended, plume_chat::store::StoreError> {
        let ms = self
            .faults
            .append_delay_ms
            .load(std::sync::atomic::Ordering::SeqCst);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        self.inner.append(key, draft).await
    }
    async fn mark_delivered(
        &self,
        key: &plume_chat::store::SendKey,
    ) -> Result<(), plume_chat::store::StoreError> {
        self.inner.mark_delivered(key).await
    }
    async fn head(
        &self,
        chat: &str,
    ) -> Result<plume_chat::store::LogHead, plume_chat::store::StoreError> {
        let ms = self
            .faults
            .head_delay_ms
            .load(std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.inner.head(chat).await
    }
    async fn after(
        &self,
        chat: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<plume_chat::store::LoggedMessage>, plume_chat::store::StoreError> {
        self.inner.after(chat, after, limit).await
    }
    async fn before(
        &self,
        chat: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<plume_chat::store::LoggedMessage>, plume_chat::store::StoreError> {
        self.inner.before(chat, before, limit).await
    }
    async fn get(
        &self,
        refs: &[(String, u64)],
    ) -> Result<Vec<Option<plume_chat::store::LoggedMessage>>, plume_chat::store::StoreError> {
        self.inner.get(refs).await
    }
    async fn count_unread(
        &self,
        chat: &str,
        after: u64,
        user: &str,
    ) -> Result<u64, plume_chat::store::StoreError> {
        self.inner.count_unread(chat, after, user).await
    }
}

pub struct FaultyMembership {
    pub inner: Arc<dyn plume_chat::store::MembershipStore>,
    pub faults: Arc<Faults>,
}

#[async_trait::async_trait]
impl plume_chat::store::MembershipStore for FaultyMembership {
    async fn add(&self, chat: &str, user: &str) -> Result<(), plume_chat::store::StoreError> {
        self.inner.add(chat, user).await
    }
    async fn remove(&self, chat: &str, user: &str) -> Result<bool, plume_chat::store::StoreError> {
        self.inner.remove(chat, user).await
    }
    async fn is_member(
        &self,
        chat: &str,
        user: &str,
    ) -> Result<bool, plume_chat::store::StoreError> {
        self.inner.is_member(chat, user).await
    }
    async fn members(&self, chat: &str) -> Result<Arc<[String]>, plume_chat::store::StoreError> {
        let fail = self
            .faults
            .fail_members
            .fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |n| n.checked_sub(1),
            )
            .is_ok();
        if fail {
            // What SQLite reports for a failed disk read.
            return Err(plume_chat::store::StoreError::Sqlite(
                rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
                    Some("injected failure".into()),
                ),
            ));
        }
        self.inner.members(chat).await
    }
    async fn chats_of(
        &self,
        user: &str,
    ) -> Result<Vec<plume_chat::store::UserChat>, plume_chat::store::StoreError> {
        self.inner.chats_of(user).await
    }
}

/// A chat server on in-memory stores wrapped with [`Faults`].
pub async fn start_faulty(configure: impl FnOnce(&mut ChatConfig)) -> (Chat, Arc<Faults>) {
    start_faulty_with(configure, |_| {}).await
}

/// [`start_faulty`] with transport settings changed by `server`.
pub async fn start_faulty_with(
    configure: impl FnOnce(&mut ChatConfig),
    server: impl FnOnce(&mut ServerConfig),
) -> (Chat, Arc<Faults>) {
    let mut chat_config = ChatConfig::default();
    configure(&mut chat_config);
    let faults = Arc::new(Faults::default());
    let mut stores = Stores::memory(chat_config.retention());
    stores.log = Arc::new(FaultyLog {
        inner: stores.log.clone(),
        faults: faults.clone(),
    });
    stores.membership = Arc::new(FaultyMembership {
        inner: stores.membership.clone(),
        faults: faults.clone(),
    });
    let mut config = ServerConfig::default();
    server(&mut config);
    let chat = start_server(
        chat_config,
        stores,
        JwtVerifier::hs256(SECRET),
        Some(API_KEY.into()),
        config,
    )
    .await;
    (chat, faults)
}

/// Waits for the server to close `topic` on `c` (a `phx_close`) and checks it names the
/// channel joined with `jr`.
pub async fn expect_phx_close(c: &mut Client, topic: &str, jr: &Ref) {
    let t = topic.to_owned();
    let closed = c
        .wait_for(move |m| m.event == "phx_close" && m.topic == t)
        .await
        .unwrap();
    assert_eq!(closed.join_ref.as_ref(), Some(jr), "{topic}");
}

/// A TCP proxy in front of Redis for one node: cutting it is that node dying as far as the
/// cluster can tell (no heartbeat, no cleanup, no fan-out), while its process keeps running.
pub struct Proxy {
    pub port: u16,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    pub async fn start(upstream: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, rx) = tokio::sync::watch::channel(false);
        let mut accept_rx = rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut down, _)) = accepted else { return };
                        let mut rx = rx.clone();
                        tokio::spawn(async move {
                            let Ok(mut up) =
                                tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                            else {
                                return;
                            };
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                                _ = rx.wait_for(|cut| *cut) => {}
                            }
                        });
                    }
                    _ = accept_rx.wait_for(|cut| *cut) => return,
                }
            }
        });
        Proxy { port, stop }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        let _ = self.stop.send(true);
    }
}

/// Runs one Redis command (inline protocol) against `port`; returns the raw reply.
pub async fn redis_command(port: u16, command: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(format!("{command}\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// What a client knows of a chat's presence, merged the way phoenix.js merges it: user ->
/// refs of their metas (with device ids).
#[derive(Default, Debug)]
pub struct Seen {
    pub users: std::collections::BTreeMap<String, Vec<(String, String)>>,
    pub diffs: usize,
}

impl Seen {
    fn metas(entry: &Value) -> Vec<(String, String)> {
        entry["metas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                assert!(m["online_at"].as_i64().unwrap() > 1_700_000_000_000, "{m}");
                (
                    m["phx_ref"].as_str().unwrap().to_owned(),
                    m["device_unique_id"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    pub fn state(&mut self, state: &Value) {
        self.users.clear();
        for (user, entry) in state.as_object().unwrap() {
            self.users.insert(user.clone(), Self::metas(entry));
        }
    }

    pub fn diff(&mut self, diff: &Value) {
        self.diffs += 1;
        for (user, entry) in diff["joins"].as_object().unwrap() {
            let metas = self.users.entry(user.clone()).or_default();
            for m in Self::metas(entry) {
                if !metas.iter().any(|(r, _)| *r == m.0) {
                    metas.push(m);
                }
            }
        }
        for (user, entry) in diff["leaves"].as_object().unwrap() {
            let gone: Vec<String> = Self::metas(entry).into_iter().map(|m| m.0).collect();
            if let Some(metas) = self.users.get_mut(user) {
                metas.retain(|(r, _)| !gone.contains(r));
                if metas.is_empty() {
                    self.users.remove(user);
                }
            }
        }
    }

    /// User -> number of metas.
    pub fn counts(&self) -> Vec<(String, usize)> {
        self.users
            .iter()
            .map(|(u, m)| (u.clone(), m.len()))
            .collect()
    }
}

/// Reads presence events on `topic` into `seen` until `done` holds.
pub async fn until(c: &mut Client, topic: &str, seen: &mut Seen, done: impl Fn(&Seen) -> bool) {
    while !done(seen) {
        let t = topic.to_owned();
        let m = c
            .wait_for(move |m| {
                m.topic == t && (m.event == "presence_state" || m.event == "presence_diff")
            })
            .await
            .unwrap_or_else(|e| panic!("waiting for presence on {topic}: {e}; seen {seen:?}"));
        match m.event.as_str() {
            "presence_state" => seen.state(&value(&m)),
            _ => seen.diff(&value(&m)),
        }
    }
}

pub fn users(list: &[(&str, usize)]) -> Vec<(String, usize)> {
    list.iter().map(|(u, n)| ((*u).to_owned(), *n)).collect()
}
