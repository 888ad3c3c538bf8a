//! The connection driver: one task per WebSocket that moves bytes between the network and the
//! socket state machine.
//!
//! One task does both directions (no split halves, no second task), because an idle
//! connection must cost as little as possible. The loop waits on, in priority order: the
//! outbound queue (which also says when the server is going away), channel callbacks in
//! flight (one that waits on a store never stalls the loop: see `plume_channels::work`), the
//! next client frame and the idle timer. After every step it writes all frames the socket
//! produced with one flush, so a burst of broadcasts becomes one `write` system call.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use plume_channels::metrics::metrics;
use plume_channels::outbound::{Batch, OutBatch};
use plume_channels::{OutboundRx, Socket};
use plume_wire::close::{self, CloseReason};
use plume_wire::{DecodeError, Frame};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, sleep, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::frame_writer::FrameWriter;

/// The upgraded connection type the server drives.
pub type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// What a driver runs over: any byte stream (an upgraded HTTP connection in the server,
/// `tokio::io::duplex` in tests).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Stream for S {}

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

/// Drives one connection until it closes, then ends its channels. A drain reaches it through
/// its outbound queue ([`plume_channels::outbound::GoAway`]): the socket then closes with 1001.
///
/// Memory note: this future is the whole per-connection task, allocated once and kept for the
/// connection's life, so it must stay small. The socket's message handling (joins, channel
/// callbacks) is awaited through a `Box` that exists only while a message is processed;
/// inlined, its largest state would be carried by every idle connection.
///
/// Not an `async fn`: an `async fn` moves its arguments into locals, so the socket and the
/// stream would each be stored twice in the task (as arguments and as locals, about 680
/// bytes per connection); an `async move` block uses what it captured in place.
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub fn drive<S: Stream>(
    mut ws: WebSocketStream<S>,
    mut socket: Socket,
    mut rx: OutboundRx,
    cfg: DriverConfig,
) -> impl Future<Output = ()> + Send {
    async move {
        let idle = sleep(cfg.idle_timeout);
        tokio::pin!(idle);
        let mut batch = OutBatch::default();
        let mut writer = FrameWriter::default();
        let end = loop {
            let step = tokio::select! {
                biased;
                status = rx.recv_batch(&mut batch) => match status {
                    Batch::GoingAway => Some(End::Close(CloseReason::new(
                        close::GOING_AWAY,
                        "server shutting down",
                    ))),
                    Batch::Overflowed => Some(End::Close(overflow())),
                    Batch::Items => {
                        let mut end = None;
                        for item in batch.drain() {
                            // The fan-out path: an encoded frame goes straight to the writer.
                            // Rare items run boxed, so their state does not sit in every
                            // connection's task (see the note on `drive`).
                            if let Some(other) = socket.push_out(item)
                                && end.is_none()
                            {
                                end = Box::pin(socket.handle_out(other)).await.map(End::Close);
                            }
                        }
                        end
                    }
                },
                // A channel callback that waited (a store round trip) finished: its reply and
                // what waited behind it. Meanwhile the other branches kept running.
                done = socket.next_done(), if socket.busy() => {
                    Box::pin(socket.finish(done)).await;
                    None
                }
                // Not read while too many messages wait for busy channels: the client then
                // waits on TCP, not on this process's memory.
                incoming = ws.next(), if socket.accepting() => {
                    idle.as_mut().reset(Instant::now() + cfg.idle_timeout);
                    Box::pin(handle_incoming(&mut socket, incoming, &cfg)).await
                }
                () = &mut idle => Some(End::Close(CloseReason::new(
                    close::IDLE_TIMEOUT,
                    "idle timeout: nothing received",
                ))),
            };
            if let Some(End::Gone) = step {
                // The client closed or the connection broke: nothing more goes out.
                break End::Gone;
            }
            // While the client is slow to take a write, the queue may overflow: that is noticed
            // here, not after the write, so the socket is told at once (the close frame goes
            // after what the stream has already taken) instead of after `write_timeout`.
            let written = tokio::select! {
                biased;
                result = write_frames(&mut ws, &mut writer, &mut socket, cfg.write_timeout) => result,
                () = rx.overflowed() => break End::Close(overflow()),
            };
            match written {
                Ok(()) => {}
                Err(WsError::Io(err)) if err.kind() == std::io::ErrorKind::TimedOut => {
                    tracing::info!(socket = socket.id().0, "closing socket: write timed out");
                    break End::Close(CloseReason::new(
                        close::SLOW_CONSUMER,
                        format!(
                            "write timeout: the client took nothing for {} s",
                            cfg.write_timeout.as_secs()
                        ),
                    ));
                }
                Err(err) => {
                    tracing::debug!(socket = socket.id().0, %err, "write failed; dropping connection");
                    break End::Gone;
                }
            }
            // A burst can grow these buffers to the queue's capacity; give that back once the
            // burst is written, so a socket that was busy once does not stay large.
            batch.release();
            socket.release_frame_capacity();
            if let Some(end) = step {
                break end;
            }
        };
        Box::pin(socket.close()).await;
        if let End::Close(reason) = end {
            // A slow consumer's close frame waits behind what the stream already holds: it gets
            // as long as a write would to reach a client that is slow rather than gone. Any
            // other close is sent to a client that reads, and gets at most 2 s.
            let limit = if reason.code == close::SLOW_CONSUMER {
                metrics().slow_consumer_closed();
                cfg.write_timeout
            } else {
                cfg.write_timeout.min(Duration::from_secs(2))
            };
            let frames = socket.frames();
            let started = &frames[..writer.started_end(frames.len())];
            let id = socket.id().0;
            Box::pin(close_with(&mut ws, &mut writer, started, id, reason, limit)).await;
        }
    }
}

fn overflow() -> CloseReason {
    CloseReason::new(
        close::SLOW_CONSUMER,
        "outbound queue overflow: the client reads too slowly",
    )
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

/// Writes the socket's frames (see [`FrameWriter`]), after whatever tungstenite buffered
/// itself (a pong). The frames stay in the socket until all are written, so a write cut short
/// by the timeout or an overflow leaves the started frame for [`close_with`] to finish.
async fn write_frames<S: Stream>(
    ws: &mut WebSocketStream<S>,
    writer: &mut FrameWriter,
    socket: &mut Socket,
    limit: Duration,
) -> Result<(), WsError> {
    if !socket.frames().is_empty() {
        // Counted once per flush, not per frame: two atomic adds however large the batch.
        let count = socket.frames().len() as u64;
        let bytes: usize = socket.frames().iter().map(frame_len).sum();
        metrics().frames_written(count, bytes as u64);
    }
    let frames = socket.frames();
    let work = async {
        // A ping's pong may be waiting in tungstenite's buffer: it goes first, whole.
        ws.flush().await?;
        if !frames.is_empty() {
            let stream = ws.get_mut();
            writer.write_all(frames, stream).await?;
            stream.flush().await?;
        }
        Ok::<(), WsError>(())
    };
    match timeout(limit, work).await {
        Ok(Ok(())) => {
            socket.drain_frames();
            writer.reset();
            Ok(())
        }
        Ok(Err(err)) => Err(err),
        Err(_) => Err(WsError::Io(std::io::ErrorKind::TimedOut.into())),
    }
}

fn frame_len(frame: &Frame) -> usize {
    frame.len()
}

async fn close_with<S: Stream>(
    ws: &mut WebSocketStream<S>,
    writer: &mut FrameWriter,
    started: &[Frame],
    socket: u64,
    reason: CloseReason,
    limit: Duration,
) {
    tracing::debug!(socket, code = reason.code, reason = %reason.reason,
        "closing socket");
    metrics().close_sent(reason.code);
    let frame = CloseFrame {
        code: CloseCode::from(reason.code),
        reason: Utf8Bytes::from(reason.reason.as_ref()),
    };
    // The close frame gets `limit` to go out, behind the end of a frame whose write was cut
    // short (`started`; the frames not started are left out: the socket is closing)...
    let close = async {
        writer.write_all(started, ws.get_mut()).await?;
        ws.close(Some(frame)).await
    };
    match timeout(limit, close).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) | Err(_) => return,
    }
    // ...then the client's own close frame, so the handshake completes cleanly, at most 2 s.
    let answer = async { while let Some(Ok(_)) = ws.next().await {} };
    let _ = timeout(limit.min(Duration::from_secs(2)), answer).await;
}
