//! The connection driver: one task per WebSocket that moves bytes between the network and the
//! socket state machine.
//!
//! One task does both directions (no split halves, no second task), because an idle
//! connection must cost as little as possible. The loop waits on, in priority order: server
//! shutdown, the outbound queue, the next client frame and the idle timer. After every step it
//! writes all frames the socket produced with one flush, so a burst of broadcasts becomes one
//! `write` system call.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use plume_channels::metrics::metrics;
use plume_channels::outbound::{Batch, admit_seq};
use plume_channels::{Out, OutboundRx, Socket};
use plume_wire::close::{self, CloseReason};
use plume_wire::{DecodeError, Frame};
use tokio::time::{Instant, sleep, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

/// The upgraded connection type.
pub type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Timing settings of a driver.
#[derive(Clone, Copy, Debug)]
pub struct DriverConfig {
    /// Close after this long without a frame from the client.
    pub idle_timeout: Duration,
    /// Give up on a flush that takes longer than this.
    pub write_timeout: Duration,
    /// The frame size limit, for the close reason text.
    pub max_frame_bytes: usize,
}

/// How the loop ended.
enum End {
    /// Close with this code and reason.
    Close(CloseReason),
    /// The client closed or the connection broke: nothing more to send.
    Gone,
}

fn to_message(frame: Frame) -> Message {
    match frame {
        Frame::Text(bytes) => match Utf8Bytes::try_from(bytes) {
            Ok(text) => Message::Text(text),
            // plume-wire only builds text frames from JSON, which is UTF-8; if that invariant
            // were ever broken the bytes still reach the client, as a binary frame.
            Err(err) => {
                tracing::error!(%err, "text frame is not UTF-8; sent as binary");
                Message::Binary(bytes::Bytes::new())
            }
        },
        Frame::Binary(bytes) => Message::Binary(bytes),
    }
}

/// Drives one connection until it closes, then ends its channels. `shutdown` is this
/// socket's drain token: when it is cancelled the socket closes with 1001.
///
/// Memory note: this future is the whole per-connection task, allocated once and kept for the
/// connection's life, so it must stay small. The socket's message handling (joins, channel
/// callbacks) is awaited through a `Box` that exists only while a message is processed;
/// inlined, its largest state would be carried by every idle connection.
pub async fn drive(
    mut ws: Ws,
    mut socket: Socket,
    mut rx: OutboundRx,
    cfg: DriverConfig,
    shutdown: CancellationToken,
) {
    let idle = sleep(cfg.idle_timeout);
    tokio::pin!(idle);
    let mut batch: Vec<Out> = Vec::new();
    let end = loop {
        let step = tokio::select! {
            biased;
            () = shutdown.cancelled() => {
                Some(End::Close(CloseReason::new(close::GOING_AWAY, "server shutting down")))
            }
            status = rx.recv_batch(&mut batch) => match status {
                Batch::Overflowed => {
                    metrics().slow_consumer_closed();
                    Some(End::Close(CloseReason::new(
                        close::SLOW_CONSUMER,
                        "outbound queue overflow: the client reads too slowly",
                    )))
                }
                Batch::Items => {
                    let mut end = None;
                    for item in batch.drain(..) {
                        match item {
                            // The fan-out path: an encoded frame goes straight to the writer.
                            Out::Frame(frame) => socket.frames().push(frame),
                            Out::Seq { frame, seq, floor } => {
                                if let Some(frame) = admit_seq(frame, seq, &floor) {
                                    socket.frames().push(frame);
                                }
                            }
                            // Rare items run boxed, so their state does not sit in every
                            // connection's task (see the note on `drive`).
                            other if end.is_none() => {
                                end = Box::pin(socket.handle_out(other)).await.map(End::Close);
                            }
                            _ => {}
                        }
                    }
                    end
                }
            },
            incoming = ws.next() => {
                idle.as_mut().reset(Instant::now() + cfg.idle_timeout);
                Box::pin(handle_incoming(&mut socket, incoming, &cfg)).await
            }
            () = &mut idle => Some(End::Close(CloseReason::new(
                close::IDLE_TIMEOUT,
                "idle timeout: nothing received",
            ))),
        };
        if let Err(err) = write_frames(&mut ws, &mut socket, cfg.write_timeout).await {
            tracing::debug!(socket = socket.id().0, %err, "write failed; dropping connection");
            break End::Gone;
        }
        // A burst can grow these buffers to the queue's capacity; give that back once the
        // burst is written, so a socket that was busy once does not stay large.
        release_burst_capacity(&mut batch);
        release_burst_capacity(socket.frames());
        if let Some(end) = step {
            break end;
        }
    };
    Box::pin(socket.close()).await;
    if let End::Close(reason) = end {
        Box::pin(close_with(
            &mut ws,
            socket.id().0,
            reason,
            cfg.write_timeout,
        ))
        .await;
    }
}

async fn handle_incoming(
    socket: &mut Socket,
    incoming: Option<Result<Message, WsError>>,
    cfg: &DriverConfig,
) -> Option<End> {
    let serializer = socket.serializer();
    let decoded = match incoming {
        None => return Some(End::Gone),
        Some(Ok(Message::Text(text))) => serializer.decode_text(text.into()),
        Some(Ok(Message::Binary(data))) => serializer.decode_binary(data),
        // tungstenite answers pings itself; the pong goes out with the next flush.
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => return None,
        Some(Ok(Message::Close(_))) => return Some(End::Gone),
        Some(Err(WsError::Capacity(err))) => {
            let size = match err {
                CapacityError::MessageTooLong { size, .. } => size.to_string(),
                CapacityError::TooManyHeaders => "unknown".to_owned(),
            };
            let reason = format!(
                "frame too large: {size} bytes, limit {}",
                cfg.max_frame_bytes
            );
            tracing::warn!(socket = socket.id().0, %reason, "closing socket: bad input");
            return Some(End::Close(CloseReason::new(close::MESSAGE_TOO_BIG, reason)));
        }
        Some(Err(WsError::Utf8(_))) => {
            tracing::warn!(
                socket = socket.id().0,
                "closing socket: bad input: text frame is not UTF-8"
            );
            return Some(End::Close(CloseReason::new(
                close::INVALID_PAYLOAD,
                "text frame is not valid UTF-8",
            )));
        }
        Some(Err(err)) => {
            tracing::debug!(socket = socket.id().0, %err, "connection error");
            return Some(End::Gone);
        }
    };
    match decoded {
        Ok(msg) => socket.handle_message(msg).await.map(End::Close),
        Err(err) => Some(End::Close(bad_input(socket, &err))),
    }
}

fn bad_input(socket: &Socket, err: &DecodeError) -> CloseReason {
    let reason = CloseReason::for_decode_error(err);
    tracing::warn!(socket = socket.id().0, code = reason.code, reason = %reason.reason,
        "closing socket: bad input");
    reason
}

/// Buffers above this many items are shrunk back after use.
const RETAINED_ITEMS: usize = 64;

fn release_burst_capacity<T>(buf: &mut Vec<T>) {
    if buf.is_empty() && buf.capacity() > RETAINED_ITEMS {
        buf.shrink_to(RETAINED_ITEMS);
    }
}

async fn write_frames(ws: &mut Ws, socket: &mut Socket, limit: Duration) -> Result<(), WsError> {
    let frames = socket.frames();
    if frames.is_empty() {
        // A ping's pong may be waiting in tungstenite's buffer.
        return match timeout(limit, ws.flush()).await {
            Ok(result) => result,
            Err(_) => Err(WsError::Io(std::io::ErrorKind::TimedOut.into())),
        };
    }
    // Counted once per flush, not per frame: two atomic adds however large the batch.
    let count = frames.len() as u64;
    let bytes: usize = frames.iter().map(frame_len).sum();
    metrics().frames_written(count, bytes as u64);
    let work = async {
        for frame in frames.drain(..) {
            ws.feed(to_message(frame)).await?;
        }
        ws.flush().await
    };
    match timeout(limit, work).await {
        Ok(result) => result,
        Err(_) => Err(WsError::Io(std::io::ErrorKind::TimedOut.into())),
    }
}

fn frame_len(frame: &Frame) -> usize {
    match frame {
        Frame::Text(b) | Frame::Binary(b) => b.len(),
    }
}

async fn close_with(ws: &mut Ws, socket: u64, reason: CloseReason, limit: Duration) {
    tracing::debug!(socket, code = reason.code, reason = %reason.reason,
        "closing socket");
    metrics().close_sent(reason.code);
    let frame = CloseFrame {
        code: CloseCode::from(reason.code),
        reason: Utf8Bytes::from(reason.reason.as_ref()),
    };
    let closing = async {
        if ws.close(Some(frame)).await.is_err() {
            return;
        }
        // Wait for the client's close frame so the close handshake completes cleanly.
        while let Some(Ok(_)) = ws.next().await {}
    };
    let _ = timeout(limit.min(Duration::from_secs(2)), closing).await;
}
