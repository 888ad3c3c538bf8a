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
use plume_channels::outbound::{Batch, admit_seq};
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
) -> Result<impl Future<Output = ()> + Send + 'static, Socket> {
    let (tx, cmds) = mpsc::channel(COMMAND_QUEUE);
    if !registry.insert(id, tx, max) {
        return Err(socket);
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
        let room = socket.frames().len() < cfg.max_buffered_frames
            && buffered_bytes < cfg.max_buffered_bytes;
        let step: Option<CloseReason> = tokio::select! {
            biased;
            () = shutdown.cancelled() => {
                Some(CloseReason::new(close::GOING_AWAY, "server shutting down"))
            }
            cmd = cmds.recv() => match cmd {
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
                Batch::Overflowed => Some(CloseReason::new(
                    close::SLOW_CONSUMER,
                    "outbound queue overflow: the client polls too slowly",
                )),
                Batch::Items => {
                    let mut end = None;
                    for item in batch.drain(..) {
                        match item {
                            Out::Frame(frame) => socket.frames().push(frame),
                            Out::Seq { frame, seq, floor } => {
                                if let Some(frame) = admit_seq(frame, seq, &floor) {
                                    socket.frames().push(frame);
                                }
                            }
                            other if end.is_none() => {
                                end = Box::pin(socket.handle_out(other)).await;
                            }
                            _ => {}
                        }
                    }
                    end
                }
            },
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
        // While a poll is held (and when it is answered) the session is in use.
        if held.is_some() {
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
            let texts = text_frames(socket_id, frames);
            buffered_bytes = 0;
            counted = 0;
            if texts.is_empty() {
                // Only binary frames: nothing to answer with yet.
                held = Some(reply);
            } else {
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
fn text_frames(socket: u64, frames: &mut Vec<Frame>) -> Vec<Bytes> {
    let mut texts = Vec::with_capacity(frames.len());
    for frame in frames.drain(..) {
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
