//! The LongPoll transport on `/socket/longpoll`, as phoenix.js 1.8's `LongPoll` uses it.
//!
//! A session (`session.rs`) owns one socket state machine, as a WebSocket connection does, and
//! lives on the node that created it; its signed token (`token.rs`) names that node, and a
//! request that reaches another node is relayed to it (`relay.rs`). Every answer is JSON with
//! the logical status inside, as Phoenix does, because phoenix.js reads only the body:
//!
//! | request                                   | answer (HTTP 200 unless noted) |
//! |-------------------------------------------|--------|
//! | any method, `Origin` not allowed          | `{"status":403}` |
//! | `OPTIONS`                                 | CORS preflight, empty body |
//! | `GET` without a session token             | connect: `{"status":410,"token":T,"messages":[]}`, or `{"status":403}` when refused |
//! | `GET` with a live session's token         | `{"status":200,"token":T,"messages":[…]}` when frames wait or arrive within the window, else `{"status":204,"token":T,"messages":[]}` |
//! | `GET` or `POST` whose session is gone     | `{"status":410}` (phoenix.js then starts a new session and rejoins) |
//! | `POST` with a live session's token        | `{"status":200}` once every frame is handled; `{"status":408}` if that takes longer than the window |
//! | `POST` with a frame the WebSocket would close for | `{"status":400,"code":C,"reason":R}`; the session ends |
//! | `POST` over `max_post_bytes` / `max_post_frames` | HTTP 413 / 400 with `{"status":…,"reason":…}`; the session is untouched |
//! | a new session over `max_sessions`, or while shutting down | HTTP 503, `{"status":500,"reason":…}` |
//! | any other method                          | HTTP 405 |
//!
//! Every answer carries `cache-control: no-store` and `access-control-allow-origin: *`.

mod relay;
mod session;
mod token;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body as _, Incoming};
use percent_encoding::percent_decode_str;
use plume_channels::{ConnectInfo, ConnectRequest, NodeRelay, Socket};

use crate::Shared;
use crate::origin::origin_allowed;
use crate::query::parse_query;
use relay::{Failure, Relay, Relayed};
use session::{Command, Polled, Post, Posted, Registry, SessionConfig};
use token::{Parsed, Signer};

/// The path phoenix.js polls for `new Socket("/socket", {transport: LongPoll})`.
pub const LONGPOLL_PATH: &str = "/socket/longpoll";
/// The header phoenix.js sends the `authToken` option in (read when a session starts).
pub const AUTH_TOKEN_HEADER: &str = "x-phoenix-authtoken";
/// The header a client may send the session token in instead of the `token` param.
pub const SESSION_TOKEN_HEADER: &str = "x-phoenix-longpoll-token";

/// Extra time a relayed poll may take beyond the window before it counts as lost.
const RELAY_GRACE: Duration = Duration::from_secs(2);

/// An answer: HTTP status and JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
}

impl Answer {
    fn ok(body: impl Into<Bytes>) -> Answer {
        Answer {
            status: StatusCode::OK,
            body: body.into(),
        }
    }

    fn json(status: StatusCode, body: &serde_json::Value) -> Answer {
        Answer {
            status,
            body: Bytes::from(body.to_string()),
        }
    }
}

fn gone() -> Answer {
    Answer::ok(&br#"{"status":410}"#[..])
}

fn forbidden() -> Answer {
    Answer::ok(&br#"{"status":403}"#[..])
}

/// The node's LongPoll state: its signing key, its sessions and the cross-node relay.
pub(crate) struct LongPoll {
    signer: Signer,
    registry: Arc<Registry>,
    relay: Option<Relay>,
}

impl LongPoll {
    /// State for node `node`, relaying through `link` when the node is part of a cluster.
    pub(crate) fn new(node: &str, link: Option<Arc<dyn NodeRelay>>) -> LongPoll {
        let relay = link.map(Relay::new);
        let node = relay.as_ref().map_or(node, |r| r.node_id()).to_owned();
        LongPoll {
            signer: Signer::new(&node),
            registry: Arc::new(Registry::default()),
            relay,
        }
    }

    /// Sessions held by this node.
    pub(crate) fn sessions(&self) -> usize {
        self.registry.len()
    }
}

/// Starts answering the requests other nodes relay to this one (cluster mode only).
pub(crate) fn start_inbox(shared: &Arc<Shared>) {
    let Some(relay) = &shared.longpoll.relay else {
        return;
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(1024);
    relay.link().set_inbox(tx);
    let shared_loop = shared.clone();
    shared.tracker.spawn(async move {
        let shared = shared_loop;
        loop {
            let msg = tokio::select! {
                () = shared.shutdown.cancelled() => return,
                msg = rx.recv() => match msg {
                    Some(msg) => msg,
                    None => return,
                },
            };
            match relay::decode(msg) {
                Some(relay::Message::Response(id, answer)) => {
                    if let Some(relay) = &shared.longpoll.relay {
                        relay.answered(id, answer);
                    }
                }
                Some(relay::Message::Request(incoming)) => {
                    let task_shared = shared.clone();
                    shared.tracker.spawn(async move {
                        let answer = match incoming.request {
                            Relayed::Poll => poll_here(&task_shared, &incoming.token).await,
                            Relayed::Post(post) => {
                                post_here(&task_shared, &incoming.token, post).await
                            }
                        };
                        if let Some(relay) = &task_shared.longpoll.relay {
                            let msg = relay::encode_response(incoming.id, &answer);
                            if let Err(err) = relay.link().send_to(&incoming.from, msg).await {
                                tracing::debug!(%err, "could not return a relayed long-poll answer");
                            }
                        }
                    });
                }
                None => tracing::warn!("dropping a malformed long-poll relay message"),
            }
        }
    });
}

/// Serves one request on [`LONGPOLL_PATH`].
pub(crate) async fn serve(
    req: Request<Incoming>,
    peer: SocketAddr,
    shared: &Arc<Shared>,
) -> Response<Full<Bytes>> {
    if !shared.config.longpoll.enabled {
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::NOT_FOUND;
        return resp;
    }
    let (parts, body) = req.into_parts();
    let origin = parts
        .headers
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or(""));
    let answer = if !origin_allowed(&shared.origins, origin) {
        tracing::info!(%peer, origin = origin.unwrap_or(""), "long poll refused: origin");
        forbidden()
    } else if parts.method == Method::OPTIONS {
        return preflight(&parts);
    } else if parts.method == Method::GET {
        match session_token(&parts) {
            None => open_session(&parts, peer, shared),
            Some(token) => poll(shared, &token).await,
        }
    } else if parts.method == Method::POST {
        // A post for no session, or for a session this node should hold and does not, is
        // answered before its body is read.
        match session_token(&parts) {
            Some(token) if !known_not_held(shared, &token) => {
                match read_post(&parts, body, shared).await {
                    Ok(post) => post_to(shared, &token, post).await,
                    Err(answer) => answer,
                }
            }
            _ => gone(),
        }
    } else {
        let mut resp = respond(Answer::json(
            StatusCode::METHOD_NOT_ALLOWED,
            &serde_json::json!({"status": 405, "reason": "LongPoll takes GET, POST and OPTIONS"}),
        ));
        resp.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        return resp;
    };
    respond(answer)
}

fn respond(answer: Answer) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(answer.body));
    *resp.status_mut() = answer.status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    resp
}

fn preflight(parts: &Parts) -> Response<Full<Bytes>> {
    let mut resp = respond(Answer::ok(Bytes::new()));
    let headers = resp.headers_mut();
    headers.remove(header::CONTENT_TYPE);
    let requested: Vec<&str> = parts
        .headers
        .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if let Ok(v) = HeaderValue::from_str(&requested.join(", ")) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
    }
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("get, post, options"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("3600"),
    );
    resp
}

fn decode(s: &str) -> String {
    percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

fn is_session_token_pair(pair: &str) -> Option<String> {
    let (key, value) = pair.split_once('=')?;
    if decode(key) != "token" {
        return None;
    }
    let value = decode(value);
    value.starts_with(token::PREFIX).then_some(value)
}

/// The session token: the `x-phoenix-longpoll-token` header, else the last `token` query
/// param that has a session token's prefix. phoenix.js appends its session token after the
/// application's params, which may have a `token` of their own (a JWT, say).
fn session_token(parts: &Parts) -> Option<String> {
    if let Some(v) = parts.headers.get(SESSION_TOKEN_HEADER)
        && let Ok(v) = v.to_str()
        && !v.is_empty()
    {
        return Some(v.to_owned());
    }
    parts
        .uri
        .query()?
        .split('&')
        .filter_map(is_session_token_pair)
        .next_back()
}

/// The connect params: the query without session tokens.
fn connect_params(parts: &Parts) -> serde_json::Map<String, serde_json::Value> {
    let query = parts.uri.query().unwrap_or("");
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| is_session_token_pair(pair).is_none())
        .collect();
    parse_query(&kept.join("&"))
}

/// A GET without a session token: the connect step, as for a WebSocket upgrade.
fn open_session(parts: &Parts, peer: SocketAddr, shared: &Arc<Shared>) -> Answer {
    let unavailable = |reason: &str| {
        Answer::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"status": 500, "reason": reason}),
        )
    };
    if shared.shutdown.is_cancelled() {
        return unavailable("server shutting down");
    }
    let params = connect_params(parts);
    let serializer = match crate::handshake::negotiate(&params) {
        Ok(serializer) => serializer,
        Err(refusal) => {
            tracing::info!(%peer, reason = %refusal.reason, "long-poll connect refused");
            return forbidden();
        }
    };
    let auth_token = parts
        .headers
        .get(AUTH_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let request = ConnectRequest {
        params,
        auth_token,
        serializer,
        peer: Some(peer),
    };
    let accepted = match shared.hook.connect(&request) {
        Ok(accepted) => accepted,
        Err(err) => {
            tracing::info!(%peer, %err, "long-poll connect refused");
            return forbidden();
        }
    };
    let info = ConnectInfo {
        request,
        socket_id: accepted.socket_id,
        assigns: accepted.assigns,
    };
    let cfg = &shared.config;
    let (socket, rx) = Socket::new(
        info,
        shared.router.clone(),
        shared.pubsub.clone(),
        cfg.socket,
    );
    let socket_id = socket.id().0;
    let session_cfg = SessionConfig {
        window: cfg.longpoll.window,
        max_frame_bytes: cfg.max_frame_bytes,
        max_buffered_frames: cfg.socket.outbound_capacity,
        max_buffered_bytes: cfg.socket.outbound_max_bytes,
    };
    let lp = &shared.longpoll;
    let (id, token) = lp.signer.issue();
    // Drained like a WebSocket (in its batch), and counted as a LongPoll connection while it
    // lives.
    let (registration, drained) = shared.drainer.register_token();
    match session::start(
        &lp.registry,
        id,
        socket,
        rx,
        session_cfg,
        cfg.longpoll.max_sessions,
        drained,
    ) {
        Ok(run) => {
            let counted = plume_channels::metrics::metrics()
                .connection_opened(plume_channels::metrics::Transport::LongPoll);
            shared.tracker.spawn(async move {
                let _held = (registration, counted);
                run.await;
            });
            tracing::debug!(socket = socket_id, %peer, "long-poll session started");
            Answer::json(
                StatusCode::OK,
                &serde_json::json!({"status": 410, "token": token, "messages": []}),
            )
        }
        Err(mut socket) => {
            shared.tracker.spawn(async move { socket.close().await });
            tracing::warn!(
                max = cfg.longpoll.max_sessions,
                "long-poll session cap reached"
            );
            unavailable("too many long-poll sessions")
        }
    }
}

/// A poll: answered here when this node holds the session, else relayed to its holder.
async fn poll(shared: &Arc<Shared>, token: &str) -> Answer {
    let Some(parsed) = Parsed::parse(token) else {
        return gone();
    };
    let lp = &shared.longpoll;
    if parsed.node == lp.signer.node() {
        return poll_here(shared, token).await;
    }
    let Some(relay) = &lp.relay else {
        return gone();
    };
    let limit = shared.config.longpoll.window + RELAY_GRACE;
    match relay
        .request(parsed.node, token, Relayed::Poll, limit)
        .await
    {
        Ok(answer) => answer,
        Err(failure) => {
            tracing::debug!(
                node = parsed.node,
                ?failure,
                "relayed poll failed; session gone"
            );
            gone()
        }
    }
}

/// A post: handled here when this node holds the session, else relayed to its holder.
async fn post_to(shared: &Arc<Shared>, token: &str, post: Post) -> Answer {
    let Some(parsed) = Parsed::parse(token) else {
        return gone();
    };
    let lp = &shared.longpoll;
    if parsed.node == lp.signer.node() {
        return post_here(shared, token, post).await;
    }
    let Some(relay) = &lp.relay else {
        return gone();
    };
    let limit = shared.config.longpoll.window + RELAY_GRACE;
    match relay
        .request(parsed.node, token, Relayed::Post(post), limit)
        .await
    {
        Ok(answer) => answer,
        Err(Failure::Unreachable) => gone(),
        Err(Failure::TimedOut) => Answer::ok(&br#"{"status":408}"#[..]),
    }
}

/// True when the token is malformed, or names this node but no session it holds.
fn known_not_held(shared: &Shared, token: &str) -> bool {
    match Parsed::parse(token) {
        None => true,
        Some(parsed) if parsed.node == shared.longpoll.signer.node() => {
            held_session(shared, token).is_none()
        }
        Some(_) => false,
    }
}

fn held_session(shared: &Shared, token: &str) -> Option<tokio::sync::mpsc::Sender<Command>> {
    let lp = &shared.longpoll;
    let id = lp.signer.verify(&Parsed::parse(token)?)?;
    lp.registry.get(&id)
}

/// A poll for a session of this node.
async fn poll_here(shared: &Shared, token: &str) -> Answer {
    let Some(session) = held_session(shared, token) else {
        return gone();
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    if session.send(Command::Poll(tx)).await.is_err() {
        return gone();
    }
    let limit = shared.config.longpoll.window + RELAY_GRACE;
    let polled = tokio::time::timeout(limit, rx).await;
    match polled {
        Ok(Ok(Polled::Messages(frames))) => Answer::ok(messages_body(200, token, &frames)),
        Ok(Ok(Polled::Empty)) => Answer::ok(messages_body(204, token, &[])),
        Ok(Ok(Polled::Gone) | Err(_)) | Err(_) => gone(),
    }
}

/// `{"status":S,"token":T,"messages":[...]}`, each frame as a JSON string.
fn messages_body(status: u16, token: &str, frames: &[Bytes]) -> Bytes {
    let size: usize = frames.iter().map(|f| f.len() + f.len() / 8 + 3).sum();
    let mut out = Vec::with_capacity(48 + token.len() + size);
    out.extend_from_slice(format!("{{\"status\":{status},\"token\":").as_bytes());
    // Writing JSON into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, token);
    out.extend_from_slice(b",\"messages\":[");
    for (i, frame) in frames.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Text frames are UTF-8 by construction (plume-wire encodes them from JSON).
        let text = String::from_utf8_lossy(frame);
        let _ = serde_json::to_writer(&mut out, text.as_ref());
    }
    out.extend_from_slice(b"]}");
    Bytes::from(out)
}

/// A post for a session of this node.
async fn post_here(shared: &Shared, token: &str, post: Post) -> Answer {
    let Some(session) = held_session(shared, token) else {
        return gone();
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    if session.send(Command::Post(post, tx)).await.is_err() {
        return gone();
    }
    match tokio::time::timeout(shared.config.longpoll.window, rx).await {
        Ok(Ok(Posted::Done)) => Answer::ok(&br#"{"status":200}"#[..]),
        Ok(Ok(Posted::Closed(reason))) => Answer::json(
            StatusCode::OK,
            &serde_json::json!({"status": 400, "code": reason.code, "reason": reason.reason}),
        ),
        Ok(Ok(Posted::Gone) | Err(_)) => gone(),
        Err(_) => Answer::ok(&br#"{"status":408}"#[..]),
    }
}

/// Reads a post's body under the limits; an answer when it breaks one.
async fn read_post(parts: &Parts, body: Incoming, shared: &Shared) -> Result<Post, Answer> {
    let cfg = &shared.config.longpoll;
    let too_large = || {
        Answer::json(
            StatusCode::PAYLOAD_TOO_LARGE,
            &serde_json::json!({"status": 413, "reason": format!("body over {} bytes", cfg.max_post_bytes)}),
        )
    };
    let hint = body.size_hint();
    if hint.lower() > cfg.max_post_bytes as u64 {
        return Err(too_large());
    }
    let charge = hint
        .exact()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(cfg.max_post_bytes);
    let Some(_reserved) = shared.bodies.reserve(charge) else {
        return Err(Answer::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"status": 500, "reason": "too many request bodies in flight"}),
        ));
    };
    let read = tokio::time::timeout(
        shared.config.body_timeout,
        Limited::new(body, cfg.max_post_bytes).collect(),
    );
    let body = match read.await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(err)) if err.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(too_large());
        }
        Ok(Err(_)) => {
            return Err(Answer::json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({"status": 400, "reason": "could not read the request body"}),
            ));
        }
        Err(_) => {
            return Err(Answer::json(
                StatusCode::REQUEST_TIMEOUT,
                &serde_json::json!({"status": 408, "reason": "request body timed out"}),
            ));
        }
    };
    let ndjson = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/x-ndjson"));
    if ndjson {
        let frames = body
            .split(|&b| b == b'\n')
            .filter(|line| !line.is_empty() && *line != b"\r")
            .count();
        if frames > cfg.max_post_frames {
            return Err(Answer::json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({"status": 400, "reason": format!("{frames} frames in one request, limit {}", cfg.max_post_frames)}),
            ));
        }
    }
    Ok(Post { body, ndjson })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use super::*;

    fn parts(uri: &str) -> Parts {
        Request::get(uri).body(()).unwrap().into_parts().0
    }

    #[test]
    fn the_session_token_is_told_apart_from_an_application_token_param() {
        let p = parts("/socket/longpoll?token=eyJhbGc.x.y&vsn=2.0.0&token=plp.n.abc.def");
        assert_eq!(session_token(&p).as_deref(), Some("plp.n.abc.def"));
        let params = connect_params(&p);
        assert_eq!(params["token"], "eyJhbGc.x.y");
        assert_eq!(params["vsn"], "2.0.0");
        // The first GET: no session token yet, and phoenix.js's trailing `&`.
        let first = parts("/socket/longpoll?token=eyJhbGc.x.y&vsn=2.0.0&");
        assert_eq!(session_token(&first), None);
        assert_eq!(connect_params(&first)["token"], "eyJhbGc.x.y");
    }

    #[test]
    fn the_header_beats_the_param() {
        let mut p = parts("/socket/longpoll?vsn=2.0.0&token=plp.n.abc.def");
        p.headers
            .insert(SESSION_TOKEN_HEADER, HeaderValue::from_static("plp.m.x.y"));
        assert_eq!(session_token(&p).as_deref(), Some("plp.m.x.y"));
    }

    #[test]
    fn messages_are_json_strings_of_the_frames() {
        let body = messages_body(
            200,
            "plp.n.a.b",
            &[Bytes::from_static(
                br#"["1","1","t","phx_reply",{"status":"ok","response":{}}]"#,
            )],
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"status":200,"token":"plp.n.a.b","messages":[r#"["1","1","t","phx_reply",{"status":"ok","response":{}}]"#]})
        );
        let empty: serde_json::Value =
            serde_json::from_slice(&messages_body(204, "t", &[])).unwrap();
        assert_eq!(
            empty,
            serde_json::json!({"status":204,"token":"t","messages":[]})
        );
    }
}
