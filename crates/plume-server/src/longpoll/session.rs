//! A LongPoll session: one task that owns a [`Socket`] and its outbound queue, like the
//! WebSocket driver, but whose "connection" is a series of HTTP requests.
//!
//! Requests reach the task as [`Command`]s through a small bounded channel:
//! - a poll is held until the socket has frames to send (then answered with all of them), or
//!   until the poll window passes (then answered empty); a newer poll answers an older one
//!   that is still held, empty;
//! - a post's frames are decoded and handled in order, then the post is acknowledged (the
//!   replies go out with a later poll). A frame the WebSocket would close the socket for ends
//!   the session, and the post is told why.
//!
//! Memory is bounded like a WebSocket's: frames waiting for a poll are capped at the socket's
//! `outbound_capacity` items and `outbound_max_bytes` bytes; at the cap the task stops
//! taking items from the outbound queue, whose own overflow then closes the session as a slow
//! consumer. The session ends when no poll arrives for 1.5 poll windows, on a close the
//! socket asks for, or on server shutdown; held polls are then answered "gone".

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use parking_lot::Mutex;
use plume_channels::outbound::Batch;
use plume_channels::{Out, OutboundRx, Socket};
use plume_wire::Frame;
use plume_wire::close::{self, CloseReason};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

use super::token::SessionId;

/// Commands waiting for one session. Phoenix.js has at most one poll and one post in flight.
const COMMAND_QUEUE: usize = 8;

/// A request for a session.
pub(crate) enum Command {
    /// Answer with the frames waiting, or when some arrive, or empty at the window's end.
    Poll(oneshot::Sender<Polled>),
    /// Handle these frames in order, then acknowledge.
    Post(Post, oneshot::Sender<Posted>),
}

/// A post's body.
pub(crate) struct Post {
    /// The raw body.
    pub(crate) body: Bytes,
    /// `application/x-ndjson`: one frame per line. Otherwise the body is one text frame.
    pub(crate) ndjson: bool,
}

/// The answer to a poll.
#[derive(Debug)]
pub(crate) enum Polled {
    /// These text frames, in order.
    Messages(Vec<Bytes>),
    /// The window passed with nothing to send.
    Empty,
    /// The session ended.
    Gone,
}

/// The answer to a post.
#[derive(Debug)]
pub(crate) enum Posted {
    /// Every frame was handled.
    Done,
    /// A frame ended the session, for this reason (the WebSocket's close code and reason).
    Closed(CloseReason),
    /// The session had already ended.
    Gone,
}

/// The sessions this node holds.
#[derive(Default)]
pub(crate) struct Registry {
    sessions: Mutex<HashMap<SessionId, mpsc::Sender<Command>>>,
}

impl Registry {
    /// The session with this id, if it is alive.
    pub(crate) fn get(&self, id: &SessionId) -> Option<mpsc::Sender<Command>> {
        self.sessions.lock().get(id).cloned()
    }

    /// Registers a session unless `max` are already held.
    fn insert(&self, id: SessionId, tx: mpsc::Sender<Command>, max: usize) -> bool {
        let mut sessions = self.sessions.lock();
        if sessions.len() >= max {
            return false;
        }
        sessions.insert(id, tx);
        true
    }

    fn remove(&self, id: &SessionId) {
        self.sessions.lock().remove(id);
    }

    /// Sessions held now.
    pub(crate) fn len(&self) -> usize {
        self.sessions.lock().len()
    }
}

/// Limits of one session.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SessionConfig {
    pub(crate) window: Duration,
    pub(crate) max_frame_bytes: usize,
    pub(crate) max_buffered_frames: usize,
    pub(crate) max_buffered_bytes: usize,
}

/// Registers a session for `socket` and returns its task, or `None` (and the socket back,
/// closed) when `max` sessions are already held.
pub(crate) fn start(
    registry: &Arc<Registry>,
    id: SessionId,
    socket: Socket,
    rx: OutboundRx,
    cfg: SessionConfig,
    max: usize,
    shutdown: CancellationToken,
) -> Result<impl Future<Output = ()> + Send + 'static, Box<Socket>> {
    let (tx, cmds) = mpsc::channel(COMMAND_QUEUE);
    if !registry.insert(id, tx, max) {
        return Err(Box::new(socket));
    }
    let registry = registry.clone();
    Ok(async move {
        run(socket, rx, cmds, cfg, shutdown).await;
        registry.remove(&id);
    })
}

async fn run(
    mut socket: Socket,
    mut rx: OutboundRx,
    mut cmds: mpsc::Receiver<Command>,
    cfg: SessionConfig,
    shutdown: CancellationToken,
) {
    let expire_after = cfg.window.saturating_mul(3) / 2;
    let window_end = sleep(cfg.window);
    let expiry = sleep(expire_after);
    tokio::pin!(window_end, expiry);
    let mut held: Option<oneshot::Sender<Polled>> = None;
    let mut batch: Vec<Out> = Vec::new();
    // Bytes of the frames in `socket.frames()`, counted up to `counted` of them.
    let mut buffered_bytes = 0usize;
    let mut counted = 0usize;
    let end = loop {
        let polling = held.is_some();
        let room = socket.frames().len() < cfg.max_buffered_frames
            && buffered_bytes < cfg.max_buffered_bytes;
        let step: Option<CloseReason> = tokio::select! {
            biased;
            () = shutdown.cancelled() => {
                Some(CloseReason::new(close::GOING_AWAY, "server shutting down"))
            }
            // Not taken while too many messages wait for busy channels (as the WebSocket
            // driver stops reading): posts then wait in the bounded command queue.
            cmd = cmds.recv(), if socket.accepting() => match cmd {
                // Unreachable while the registry holds a sender; end quietly if it happens.
                None => Some(CloseReason::new(close::GOING_AWAY, "session removed")),
                Some(Command::Poll(reply)) => {
                    if let Some(older) = held.replace(reply) {
                        let _ = older.send(Polled::Empty);
                    }
                    window_end.as_mut().reset(Instant::now() + cfg.window);
                    None
                }
                Some(Command::Post(post, reply)) => {
                    let end = Box::pin(handle_post(&mut socket, post, &cfg)).await;
                    let _ = reply.send(match &end {
                        None => Posted::Done,
                        Some(reason) => Posted::Closed(reason.clone()),
                    });
                    end
                }
            },
            status = rx.recv_batch(&mut batch), if room => match status {
                Batch::GoingAway => {
                    Some(CloseReason::new(close::GOING_AWAY, "server shutting down"))
                }
                Batch::Overflowed => Some(CloseReason::new(
                    close::SLOW_CONSUMER,
                    "outbound queue overflow: the client polls too slowly",
                )),
                Batch::Items => {
                    let mut end = None;
                    for item in batch.drain(..) {
                        if let Some(other) = socket.push_out(item)
                            && end.is_none()
                        {
                            end = Box::pin(socket.handle_out(other)).await;
                        }
                    }
                    end
                }
            },
            // A channel callback that waited (a store round trip) finished; meanwhile polls,
            // posts and the outbound queue kept going (see `plume_channels::work`).
            done = socket.next_done(), if socket.busy() => {
                Box::pin(socket.finish(done)).await;
                None
            }
            () = &mut window_end, if held.is_some() => {
                if let Some(reply) = held.take() {
                    let _ = reply.send(Polled::Empty);
                }
                None
            }
            () = &mut expiry, if held.is_none() => Some(CloseReason::new(
                close::IDLE_TIMEOUT,
                "idle timeout: no poll",
            )),
        };
        // While a poll is held, and when it is answered, the session is in use.
        if polling || held.is_some() {
            expiry.as_mut().reset(Instant::now() + expire_after);
        }
        let socket_id = socket.id().0;
        let frames = socket.frames();
        for frame in &frames[counted..] {
            buffered_bytes += frame.len();
        }
        counted = frames.len();
        if !frames.is_empty()
            && let Some(reply) = held.take()
        {
            let texts = text_frames(socket_id, socket.drain_frames());
            buffered_bytes = 0;
            counted = 0;
            if texts.is_empty() {
                // Only binary frames: nothing to answer with yet.
                held = Some(reply);
            } else {
                let bytes: usize = texts.iter().map(Bytes::len).sum();
                plume_channels::metrics::metrics().frames_written(texts.len() as u64, bytes as u64);
                let _ = reply.send(Polled::Messages(texts));
            }
        }
        if let Some(end) = step {
            break end;
        }
    };
    tracing::debug!(socket = socket.id().0, code = end.code, reason = %end.reason,
        "long-poll session ended");
    Box::pin(socket.close()).await;
    if let Some(reply) = held.take() {
        let _ = reply.send(Polled::Gone);
    }
    cmds.close();
    while let Some(cmd) = cmds.recv().await {
        match cmd {
            Command::Poll(reply) => drop(reply.send(Polled::Gone)),
            Command::Post(_, reply) => drop(reply.send(Posted::Gone)),
        }
    }
}

/// The text frames, in order. LongPoll carries text only (each message is a JSON string);
/// a binary frame (a V2 binary push or broadcast) cannot be delivered and is dropped.
fn text_frames(socket: u64, frames: std::vec::Drain<'_, Frame>) -> Vec<Bytes> {
    let mut texts = Vec::with_capacity(frames.len());
    for frame in frames {
        match frame {
            Frame::Text(text) => texts.push(text),
            Frame::Binary(data) => {
                tracing::debug!(
                    socket,
                    bytes = data.len(),
                    "binary frame dropped: LongPoll carries text only"
                );
            }
        }
    }
    texts
}

/// Handles a post's frames in order; returns the close one of them caused.
async fn handle_post(socket: &mut Socket, post: Post, cfg: &SessionConfig) -> Option<CloseReason> {
    if !post.ndjson {
        return handle_frame(socket, Frame::Text(post.body), cfg).await;
    }
    let body = post.body;
    let mut start = 0;
    while start < body.len() {
        let end = body[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(body.len(), |i| start + i);
        let mut line = body.slice(start..end);
        start = end + 1;
        if line.last() == Some(&b'\r') {
            line.truncate(line.len() - 1);
        }
        if line.is_empty() {
            continue;
        }
        let frame = if line[0] == b'[' {
            Frame::Text(line)
        } else {
            match STANDARD.decode(&line) {
                Ok(data) => Frame::Binary(Bytes::from(data)),
                Err(err) => {
                    return Some(CloseReason::new(
                        close::INVALID_BINARY,
                        format!("a line that is not a JSON array is not valid base64: {err}"),
                    ));
                }
            }
        };
        if let Some(end) = Box::pin(handle_frame(socket, frame, cfg)).await {
            return Some(end);
        }
    }
    None
}

async fn handle_frame(
    socket: &mut Socket,
    frame: Frame,
    cfg: &SessionConfig,
) -> Option<CloseReason> {
    let size = frame.len();
    if size > cfg.max_frame_bytes {
        return Some(CloseReason::new(
            close::MESSAGE_TOO_BIG,
            format!(
                "frame too large: {size} bytes, limit {}",
                cfg.max_frame_bytes
            ),
        ));
    }
    let serializer = socket.serializer();
    let decoded = match frame {
        Frame::Text(text) => {
            if std::str::from_utf8(&text).is_err() {
                return Some(CloseReason::new(
                    close::INVALID_PAYLOAD,
                    "text frame is not valid UTF-8",
                ));
            }
            serializer.decode_text(text)
        }
        Frame::Binary(data) => serializer.decode_binary(data),
    };
    match decoded {
        Ok(msg) => socket.handle_message(msg).await,
        Err(err) => {
            let reason = CloseReason::for_decode_error(&err);
            tracing::warn!(socket = socket.id().0, code = reason.code, reason = %reason.reason,
                "ending long-poll session: bad input");
            Some(reason)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use super::*;
    use plume_channels::echo::EchoChannel;
    use plume_channels::{ConnectInfo, ConnectRequest, LocalPubSub, Router, SocketConfig};
    use plume_wire::Serializer;

    const WINDOW: Duration = Duration::from_secs(10);

    /// A session on the echo channel, registered as id [1; 16].
    fn session(socket_config: SocketConfig) -> (Arc<Registry>, CancellationToken) {
        let info = ConnectInfo {
            request: ConnectRequest {
                params: serde_json::Map::new(),
                auth_token: None,
                serializer: Serializer::V2,
                peer: None,
            },
            socket_id: None,
            assigns: None,
        };
        let router = Router::new().channel::<EchoChannel>("echo:*", Arc::new(()));
        let (socket, rx) = Socket::new(
            info,
            Arc::new(router),
            Arc::new(LocalPubSub::new()),
            socket_config,
        );
        let registry = Arc::new(Registry::default());
        let shutdown = CancellationToken::new();
        let cfg = SessionConfig {
            window: WINDOW,
            max_frame_bytes: 1 << 20,
            max_buffered_frames: socket_config.outbound_capacity,
            max_buffered_bytes: socket_config.outbound_max_bytes,
        };
        let run = start(&registry, [1; 16], socket, rx, cfg, 10, shutdown.clone())
            .ok()
            .unwrap();
        tokio::spawn(run);
        (registry, shutdown)
    }

    async fn poll(registry: &Registry) -> oneshot::Receiver<Polled> {
        let (tx, rx) = oneshot::channel();
        match registry.get(&[1; 16]) {
            Some(session) => session.send(Command::Poll(tx)).await.unwrap(),
            None => drop(tx.send(Polled::Gone)),
        }
        rx
    }

    async fn post(registry: &Registry, body: &'static str) -> Posted {
        let (tx, rx) = oneshot::channel();
        let Some(session) = registry.get(&[1; 16]) else {
            return Posted::Gone;
        };
        let post = Post {
            body: Bytes::from_static(body.as_bytes()),
            ndjson: true,
        };
        session.send(Command::Post(post, tx)).await.unwrap();
        rx.await.unwrap()
    }

    /// Lets an ending session finish (its channels' terminate, then the deregistration).
    async fn settle(registry: &Registry) {
        for _ in 0..100 {
            if registry.len() == 0 {
                return;
            }
            tokio::task::yield_now().await;
        }
    }

    fn texts(polled: Polled) -> Vec<String> {
        match polled {
            Polled::Messages(frames) => frames
                .iter()
                .map(|f| String::from_utf8(f.to_vec()).unwrap())
                .collect(),
            other => panic!("expected messages, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_is_held_for_the_window_then_answered_with_what_arrives() {
        let (registry, _shutdown) = session(SocketConfig::default());
        let started = Instant::now();
        let idle = poll(&registry).await.await.unwrap();
        assert!(matches!(idle, Polled::Empty), "{idle:?}");
        assert_eq!(started.elapsed(), WINDOW);
        // A held poll is answered as soon as a post produces replies, all of them at once.
        let held = poll(&registry).await;
        let body = "[\"1\",\"1\",\"echo:a\",\"phx_join\",{}]\r\n\n[\"1\",\"2\",\"echo:a\",\"echo\",{\"n\":1}]\n";
        assert!(matches!(post(&registry, body).await, Posted::Done));
        assert_eq!(
            texts(held.await.unwrap()),
            [
                r#"["1","1","echo:a","phx_reply",{"response":{"auth_token":null,"params":{},"vsn":"2.0.0"},"status":"ok"}]"#,
                r#"["1","2","echo:a","phx_reply",{"response":{"n":1},"status":"ok"}]"#,
            ]
        );
        // Replies that arrive between polls wait for the next one, which gets them at once.
        assert!(matches!(
            post(&registry, "[\"1\",\"3\",\"echo:a\",\"echo\",{}]").await,
            Posted::Done
        ));
        let at = Instant::now();
        assert_eq!(texts(poll(&registry).await.await.unwrap()).len(), 1);
        assert_eq!(at.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_newer_poll_answers_the_older_one_empty() {
        let (registry, _shutdown) = session(SocketConfig::default());
        let first = poll(&registry).await;
        let second = poll(&registry).await;
        assert!(matches!(first.await.unwrap(), Polled::Empty));
        assert!(matches!(
            post(&registry, "[null,\"9\",\"phoenix\",\"heartbeat\",{}]").await,
            Posted::Done
        ));
        assert_eq!(texts(second.await.unwrap()).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_session_ends_after_one_and_a_half_windows_without_a_poll() {
        let (registry, _shutdown) = session(SocketConfig::default());
        // A held poll keeps it alive however long it is held.
        assert!(matches!(
            poll(&registry).await.await.unwrap(),
            Polled::Empty
        ));
        tokio::time::sleep(WINDOW + WINDOW / 2 - Duration::from_millis(1)).await;
        assert_eq!(registry.len(), 1);
        tokio::time::sleep(Duration::from_millis(2)).await;
        settle(&registry).await;
        assert_eq!(registry.len(), 0);
        assert!(matches!(poll(&registry).await.await.unwrap(), Polled::Gone));
    }

    #[tokio::test(start_paused = true)]
    async fn bad_input_ends_the_session_with_the_websocket_close_code() {
        let (registry, _shutdown) = session(SocketConfig::default());
        let held = poll(&registry).await;
        match post(
            &registry,
            "[null,\"1\",\"phoenix\",\"heartbeat\",{}]\n[\"only\",\"three\",\"items\"]",
        )
        .await
        {
            Posted::Closed(reason) => assert_eq!(reason.code, close::INVALID_MESSAGE),
            other => panic!("expected a close, got {other:?}"),
        }
        // The heartbeat before it was handled; its reply went to the held poll.
        assert_eq!(texts(held.await.unwrap()).len(), 1);
        tokio::task::yield_now().await;
        assert!(matches!(post(&registry, "[]").await, Posted::Gone));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_polls_is_closed_as_a_slow_consumer_not_buffered_without_end() {
        let config = SocketConfig {
            outbound_capacity: 4,
            max_pushes_per_second: 0,
            ..SocketConfig::default()
        };
        let (registry, _shutdown) = session(config);
        // Each echo reply is a frame; with nobody polling they pile up to the cap, after which
        // the session stops reading its queue. (Replies to posts are bounded by the posts.)
        for _ in 0..8 {
            let _ = post(&registry, "[null,\"1\",\"phoenix\",\"heartbeat\",{}]").await;
        }
        assert_eq!(registry.len(), 1);
        // The expiry still applies: no poll, no session.
        tokio::time::sleep(WINDOW * 2).await;
        settle(&registry).await;
        assert_eq!(registry.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_answers_the_held_poll_gone() {
        let (registry, shutdown) = session(SocketConfig::default());
        let held = poll(&registry).await;
        shutdown.cancel();
        assert!(matches!(held.await.unwrap(), Polled::Gone));
    }
}
