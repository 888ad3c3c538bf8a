//! Admission control, played from the attacker's side with raw TCP: connections that never
//! finish a request are closed, the connection cap answers 503 and keeps `/healthz` working,
//! API bodies are read only for admitted requests and under a global budget and a timeout.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use plume_channels::AcceptAll;
use plume_client::{Client, ClientError};
use plume_server::api::{ApiFuture, json_error, json_response};
use plume_server::{ApiHead, ApiRequest, HttpApi, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// The most any step below may take; the server's own timeouts in these tests are 300 ms.
const PATIENCE: Duration = Duration::from_secs(5);
const SHORT: Duration = Duration::from_millis(300);
const KEY: &str = "Bearer right";

/// An API under `/api/` that admits only `Authorization: Bearer right` and answers with the
/// length of the body it was given.
struct KeyedApi;

impl HttpApi for KeyedApi {
    fn prefix(&self) -> &str {
        "/api/"
    }

    fn admit(&self, head: &ApiHead<'_>) -> Result<(), Box<Response<Full<Bytes>>>> {
        match head.headers.get(header::AUTHORIZATION) {
            Some(v) if v == KEY => Ok(()),
            _ => Err(Box::new(json_error(StatusCode::UNAUTHORIZED, "wrong key"))),
        }
    }

    fn handle(&self, req: ApiRequest) -> ApiFuture {
        let len = req.body.len();
        Box::pin(async move { json_response(StatusCode::OK, &serde_json::json!({ "len": len })) })
    }
}

async fn start_api(configure: impl FnOnce(&mut ServerConfig)) -> TestServer {
    start_with_api(configure, Arc::new(AcceptAll), Some(Arc::new(KeyedApi))).await
}

/// Reads until the server closes the connection, or fails the test after [`PATIENCE`].
async fn read_until_closed(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    match timeout(PATIENCE, s.read_to_end(&mut out)).await {
        Ok(Ok(_)) => {}
        // A reset also means the server closed the connection.
        Ok(Err(err)) if err.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(Err(err)) => panic!("read failed: {err}"),
        Err(_) => panic!(
            "the server kept the connection open for {PATIENCE:?}; received so far: {:?}",
            String::from_utf8_lossy(&out)
        ),
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Status and body of a complete response text.
fn parse(response: &str) -> (u16, String) {
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

/// Sends `head` (request line and headers, without the blank line) and `body`.
async fn send(addr: SocketAddr, head: &str, body: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("{head}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    s.write_all(body).await.unwrap();
    s
}

fn post(auth: &str, content_length: usize, extra: &str) -> String {
    format!(
        "POST /api/x HTTP/1.1\r\nhost: x\r\nconnection: close\r\nauthorization: {auth}\r\n\
         content-length: {content_length}{extra}"
    )
}

async fn assert_closed_without_answer(s: &mut TcpStream, since: Instant) {
    let answer = read_until_closed(s).await;
    assert_eq!(answer, "", "closed without a response");
    assert!(
        since.elapsed() >= SHORT / 2,
        "closed by the handshake timeout, not earlier ({:?})",
        since.elapsed()
    );
}

#[tokio::test]
async fn half_a_request_line_is_closed_within_the_handshake_timeout() {
    let server = start_with(|c| c.handshake_timeout = SHORT, Arc::new(AcceptAll)).await;
    let started = Instant::now();
    let mut s = TcpStream::connect(server.running.local_addr())
        .await
        .unwrap();
    s.write_all(b"GET /socket/webso").await.unwrap();
    assert_closed_without_answer(&mut s, started).await;
}

#[tokio::test]
async fn headers_that_never_end_are_closed_within_the_handshake_timeout() {
    let server = start_with(|c| c.handshake_timeout = SHORT, Arc::new(AcceptAll)).await;
    let started = Instant::now();
    let mut s = TcpStream::connect(server.running.local_addr())
        .await
        .unwrap();
    s.write_all(b"GET /socket/websocket HTTP/1.1\r\nhost: x\r\nx-slow: 1\r\n")
        .await
        .unwrap();
    // Trickle one more header line well inside the timeout: the deadline is for the whole
    // head, not per byte.
    tokio::time::sleep(SHORT / 3).await;
    s.write_all(b"x-slow: 2\r\n").await.unwrap();
    assert_closed_without_answer(&mut s, started).await;
}

#[tokio::test]
async fn a_connection_silent_after_connect_is_closed_within_the_handshake_timeout() {
    let server = start_with(|c| c.handshake_timeout = SHORT, Arc::new(AcceptAll)).await;
    let started = Instant::now();
    let mut s = TcpStream::connect(server.running.local_addr())
        .await
        .unwrap();
    assert_closed_without_answer(&mut s, started).await;
}

#[tokio::test]
async fn a_keep_alive_connection_silent_after_its_response_is_closed() {
    let server = start_with(|c| c.handshake_timeout = SHORT, Arc::new(AcceptAll)).await;
    let mut s = TcpStream::connect(server.running.local_addr())
        .await
        .unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = timeout(PATIENCE, s.read(&mut buf)).await.unwrap().unwrap();
    let first = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let started = Instant::now();
    assert_closed_without_answer(&mut s, started).await;
}

#[tokio::test]
async fn a_prompt_upgrade_is_not_affected_by_the_handshake_timeout() {
    let server = start_with(|c| c.handshake_timeout = SHORT, Arc::new(AcceptAll)).await;
    let mut client = server.v2().await;
    join_ok(&mut client, "echo:a").await;
    // Outlive the handshake timeout several times over: the upgraded socket is governed by
    // the idle timeout (60 s here), not by the HTTP header timer.
    assert!(client.expect_silence(SHORT * 3).await.is_ok());
    join_ok(&mut client, "echo:b").await;
}

fn refused_status(err: ClientError) -> u16 {
    match err {
        ClientError::Refused(status) => status.as_u16(),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

#[tokio::test]
async fn over_max_connections_gets_503_healthz_still_answers_and_a_freed_slot_is_reused() {
    let server = start_with(|c| c.max_connections = 2, Arc::new(AcceptAll)).await;
    let addr = server.running.local_addr();
    let mut first = server.v2().await;
    let mut second = server.v2().await;
    join_ok(&mut first, "echo:a").await;
    join_ok(&mut second, "echo:a").await;

    let (status, body) = http_get(addr, "/socket/websocket?vsn=2.0.0", "").await;
    assert_eq!(status, 503);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        serde_json::json!({"error": "too many connections"})
    );
    let err = Client::connect(&server.url("vsn=2.0.0"))
        .await
        .err()
        .unwrap();
    assert_eq!(
        refused_status(err),
        503,
        "a WebSocket client is refused too"
    );

    let (status, body) = http_get(addr, "/healthz", "").await;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"status":"ok","connections":2}"#),
        "/healthz answers at the cap"
    );
    assert_eq!(server.running.refused_connections(), 3);

    // The sockets that hold the slots are unaffected.
    join_ok(&mut second, "echo:b").await;

    drop(first);
    // The slot is freed when the server notices the close; until then a connect may still
    // be refused.
    let deadline = Instant::now() + PATIENCE;
    let mut third = loop {
        match Client::connect(&server.url("vsn=2.0.0")).await {
            Ok(c) => break c,
            Err(err) => {
                assert_eq!(refused_status(err), 503);
                assert!(Instant::now() < deadline, "the freed slot was never reused");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    join_ok(&mut third, "echo:c").await;
    let (status, _) = http_get(addr, "/socket/websocket?vsn=2.0.0", "").await;
    assert_eq!(status, 503, "the cap holds again with the slot reused");
}

#[tokio::test]
async fn a_wrong_key_gets_401_without_the_server_waiting_for_the_body() {
    let server = start_api(|_| {}).await;
    let addr = server.running.local_addr();
    for auth in ["Bearer wrong", ""] {
        // 1 MiB declared, not a byte of it sent.
        let mut s = send(addr, &post(auth, 1 << 20, ""), b"").await;
        let (status, body) = parse(&read_until_closed(&mut s).await);
        assert_eq!(status, 401, "auth {auth:?}: {body}");
        assert_eq!(body, r#"{"error":"wrong key"}"#);
    }
    // With the right key the same request is admitted, and its body is awaited.
    let mut s = send(addr, &post(KEY, 5, ""), b"hello").await;
    let (status, body) = parse(&read_until_closed(&mut s).await);
    assert_eq!((status, body.as_str()), (200, r#"{"len":5}"#));
}

#[tokio::test]
async fn a_declared_body_over_the_limit_gets_413_before_it_is_read() {
    let server = start_api(|_| {}).await;
    let mut s = send(
        server.running.local_addr(),
        &post(KEY, plume_server::api::MAX_API_BODY + 1, ""),
        b"",
    )
    .await;
    let (status, _) = parse(&read_until_closed(&mut s).await);
    assert_eq!(status, 413);
}

#[tokio::test]
async fn bodies_over_the_in_flight_budget_get_503_at_once() {
    let server = start_api(|c| c.max_body_bytes_in_flight = 4096).await;
    let addr = server.running.local_addr();

    // A admits 3000 bytes and stalls after 100. `Expect: 100-continue` makes the server say
    // when it starts reading the body, which is after the bytes are reserved.
    let mut a = send(addr, &post(KEY, 3000, "\r\nexpect: 100-continue"), b"").await;
    let mut buf = [0u8; 64];
    let n = timeout(PATIENCE, a.read(&mut buf)).await.unwrap().unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 100"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    a.write_all(&[b'a'; 100]).await.unwrap();

    // B would need 3000 more: refused now, not queued behind A.
    let mut b = send(addr, &post(KEY, 3000, ""), &[b'b'; 3000]).await;
    let (status, body) = parse(&read_until_closed(&mut b).await);
    assert_eq!(
        (status, body.as_str()),
        (503, r#"{"error":"too many request bodies in flight"}"#)
    );
    assert_eq!(server.running.refused_bodies(), 1);

    // A small one still fits beside A.
    let mut small = send(addr, &post(KEY, 996, ""), &[b's'; 996]).await;
    let (status, _) = parse(&read_until_closed(&mut small).await);
    assert_eq!(status, 200);

    // A completes, which frees its bytes for C.
    a.write_all(&[b'a'; 2900]).await.unwrap();
    let (status, body) = parse(&read_until_closed(&mut a).await);
    assert_eq!((status, body.as_str()), (200, r#"{"len":3000}"#));
    let mut c = send(addr, &post(KEY, 3000, ""), &[b'c'; 3000]).await;
    let (status, _) = parse(&read_until_closed(&mut c).await);
    assert_eq!(status, 200);
    assert_eq!(server.running.refused_bodies(), 1);
}

#[tokio::test]
async fn a_body_that_stalls_gets_408_within_the_body_timeout() {
    let server = start_api(|c| c.body_timeout = SHORT).await;
    let mut s = send(
        server.running.local_addr(),
        &post(KEY, 100, ""),
        b"ten bytes.",
    )
    .await;
    let (status, body) = parse(&read_until_closed(&mut s).await);
    assert_eq!(
        (status, body.as_str()),
        (408, r#"{"error":"request body timed out"}"#)
    );
}

/// A page mounted at `/` beside [`KeyedApi`]: it admits only `GET /` and names itself.
struct RootPage;

impl HttpApi for RootPage {
    fn prefix(&self) -> &str {
        "/"
    }

    fn admit(&self, head: &ApiHead<'_>) -> Result<(), Box<Response<Full<Bytes>>>> {
        if head.path == "/" && head.method == http::Method::GET {
            Ok(())
        } else {
            Err(Box::new(json_error(StatusCode::NOT_FOUND, "no page")))
        }
    }

    fn handle(&self, _req: ApiRequest) -> ApiFuture {
        Box::pin(async { json_response(StatusCode::OK, &serde_json::json!({"page": "root"})) })
    }
}

#[tokio::test]
async fn several_apis_are_tried_by_longest_prefix_and_fixed_routes_come_first() {
    let mut config = ServerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    };
    config.handshake_timeout = PATIENCE;
    let pubsub = Arc::new(plume_channels::LocalPubSub::new());
    // Mounted shortest first: the order of mounting does not decide, the prefix length does.
    let running = plume_server::Server::new(
        config,
        plume_channels::Router::new(),
        pubsub,
        Arc::new(AcceptAll),
    )
    .with_http_api(Arc::new(RootPage))
    .with_http_api(Arc::new(KeyedApi))
    .start()
    .await
    .unwrap();
    let addr = running.local_addr();
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close");
    let ask = |head: String| async move {
        parse(&read_until_closed(&mut send(addr, &head, b"").await).await)
    };
    assert_eq!(ask(get("/")).await, (200, r#"{"page":"root"}"#.into()));
    assert_eq!(
        ask(get("/nothing")).await,
        (404, r#"{"error":"no page"}"#.into())
    );
    // `/api/` still reaches the API (its own 401), not the page at `/`.
    assert_eq!(
        ask(get("/api/x")).await,
        (401, r#"{"error":"wrong key"}"#.into())
    );
    let mut posted = send(addr, &post(KEY, 3, ""), b"abc").await;
    assert_eq!(
        parse(&read_until_closed(&mut posted).await),
        (200, r#"{"len":3}"#.into())
    );
    // The fixed routes are never shadowed by an API mounted at `/`.
    let (status, body) = ask(get("/healthz")).await;
    assert_eq!(
        (status, body.contains(r#""status":"ok""#)),
        (200, true),
        "{body}"
    );
    running.shutdown().await;
}
