//! Writes a socket's encoded frames to its stream as WebSocket frames, without copying them.
//!
//! tungstenite copies every frame into the connection's write buffer before writing it, and
//! that buffer keeps its largest size for the connection's life (about 1.7 KB per idle
//! connection after the join replies, in a heap profile of 2,000 idle sockets). Here each
//! frame's header (2 to 10 bytes, built on the stack) and its encoded bytes, shared by every
//! subscriber of a broadcast, go to the kernel side by side in one vectored write: no copy,
//! no buffer kept, and a large frame goes out whole.
//!
//! Only frames from the server, so no mask (RFC 6455 section 5.1). The frames stay in the
//! socket's output until all are written; the writer keeps only its progress through them
//! (frames done, bytes of the next), so a write cut short (a timeout, an overflow) can finish
//! the frame it started before the close frame goes out. The driver lets tungstenite write
//! what it buffers itself (pongs, the close frame) before and after these, never in the middle
//! of one.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use plume_wire::Frame;
use tokio::io::AsyncWrite;

/// Frames handed to one vectored write at most (two slices each, under every `IOV_MAX`).
const FRAMES_PER_WRITE: usize = 32;

/// The longest header: 2 bytes, then a 64-bit length.
const MAX_HEADER: usize = 10;

/// Room on the stack for copies of small parts, per write.
const SMALL_BYTES: usize = 16 << 10;

/// Parts up to this long are copied (see `poll_write_all`).
const SMALL_PART: usize = 512;

/// One slice of a write: copied bytes, or frame `.0`'s payload from byte `.1`.
#[derive(Clone, Copy)]
enum Part {
    Small(usize, usize),
    Payload(usize, usize),
}

/// Progress through the frames being written.
#[derive(Debug, Default)]
pub struct FrameWriter {
    /// Frames written whole.
    done: usize,
    /// Bytes of the next frame (header, then payload) already written.
    sent: usize,
}

/// The header of an unmasked, final frame carrying `frame`.
fn header(frame: &Frame, out: &mut [u8; MAX_HEADER]) -> usize {
    let (opcode, len) = match frame {
        Frame::Text(bytes) => (0x1, bytes.len()),
        Frame::Binary(bytes) => (0x2, bytes.len()),
    };
    out[0] = 0x80 | opcode;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if let Ok(len) = u16::try_from(len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&len.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

fn payload(frame: &Frame) -> &[u8] {
    match frame {
        Frame::Text(bytes) | Frame::Binary(bytes) => bytes,
    }
}

impl FrameWriter {
    /// The frames written so far are gone: the next write starts at the first frame.
    pub fn reset(&mut self) {
        *self = FrameWriter::default();
    }

    /// How many of `frames` must still go out before anything else may: up to the end of a
    /// frame whose write was cut short (the frames not started can be left out).
    pub fn started_end(&self, frames: usize) -> usize {
        (self.done + usize::from(self.sent > 0)).min(frames)
    }

    /// Writes `frames` from where the last call stopped (the same frames, perhaps with more
    /// behind them). Cancel-safe: what was written is remembered.
    pub async fn write_all<W: AsyncWrite + Unpin>(
        &mut self,
        frames: &[Frame],
        stream: &mut W,
    ) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_write_all(frames, cx, Pin::new(&mut *stream))).await
    }

    // The headers, the copies of small frames and the slices live on the stack of one poll,
    // not in the (per-connection) future.
    fn poll_write_all<W: AsyncWrite>(
        &mut self,
        frames: &[Frame],
        cx: &mut Context<'_>,
        mut stream: Pin<&mut W>,
    ) -> Poll<io::Result<()>> {
        while self.done < frames.len() {
            let queue = &frames[self.done..];
            // Small parts (headers, most frames) are copied side by side into `small`; the
            // kernel copies a few long slices faster than many short ones (`_copy_from_iter`
            // went from 0.2 % to 4.2 % of server samples in the chat run with one slice per
            // header and per payload). Larger payloads are written from where they are.
            let mut small = [0u8; SMALL_BYTES];
            let mut filled = 0;
            let mut parts = [Part::Small(0, 0); 2 * FRAMES_PER_WRITE];
            let mut used = 0;
            for (i, frame) in queue.iter().take(FRAMES_PER_WRITE).enumerate() {
                // Room for this frame's header and a small payload, or the write goes as is.
                if filled + MAX_HEADER + SMALL_PART > SMALL_BYTES {
                    break;
                }
                let mut head = [0u8; MAX_HEADER];
                let head_len = header(frame, &mut head);
                let body = payload(frame);
                let skip = if i == 0 { self.sent } else { 0 };
                let (head, body) = if skip < head_len {
                    (&head[skip..head_len], body)
                } else {
                    (&head[..0], &body[skip - head_len..])
                };
                for (part, copied) in [(head, true), (body, body.len() <= SMALL_PART)] {
                    if part.is_empty() {
                        continue;
                    }
                    if !copied {
                        parts[used] = Part::Payload(i, payload(frame).len() - part.len());
                        used += 1;
                        continue;
                    }
                    let start = filled;
                    filled += part.len();
                    small[start..filled].copy_from_slice(part);
                    match used.checked_sub(1).map(|last| &mut parts[last]) {
                        // Right after the copy before it: one slice for both.
                        Some(Part::Small(_, end)) if *end == start => *end = filled,
                        _ => {
                            parts[used] = Part::Small(start, filled);
                            used += 1;
                        }
                    }
                }
            }
            let mut slices = [IoSlice::new(&[]); 2 * FRAMES_PER_WRITE];
            for (slice, part) in slices.iter_mut().zip(&parts[..used]) {
                *slice = match *part {
                    Part::Small(start, end) => IoSlice::new(&small[start..end]),
                    Part::Payload(i, from) => IoSlice::new(&payload(&queue[i])[from..]),
                };
            }
            let written = ready!(stream.as_mut().poll_write_vectored(cx, &slices[..used]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(queue, written);
        }
        Poll::Ready(Ok(()))
    }

    /// Records `n` more bytes of `queue` (the frames not done) written.
    fn advance(&mut self, queue: &[Frame], mut n: usize) {
        for frame in queue {
            let mut head = [0u8; MAX_HEADER];
            let left = header(frame, &mut head) + payload(frame).len() - self.sent;
            if n < left {
                self.sent += n;
                return;
            }
            n -= left;
            self.sent = 0;
            self.done += 1;
            if n == 0 {
                return;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::Role;

    fn text(n: usize) -> Frame {
        Frame::Text(Bytes::from(
            (0..n).map(|i| b'a' + (i % 26) as u8).collect::<Vec<_>>(),
        ))
    }

    /// A stream that takes at most `chunk` bytes per write, as a busy socket does.
    struct Trickle {
        out: Vec<u8>,
        chunk: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.chunk);
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut n = 0;
            for buf in bufs {
                let take = buf.len().min(self.chunk - n);
                self.out.extend_from_slice(&buf[..take]);
                n += take;
                if n == self.chunk {
                    break;
                }
            }
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Every length class of the header (7-bit, 16-bit, 64-bit), empty frames, binary
    /// frames and more frames than one write takes, written through a stream that takes a
    /// few bytes at a time: a WebSocket client reads each as the message it was, in order.
    #[tokio::test]
    async fn frames_written_in_pieces_are_read_back_whole_and_in_order() {
        let mut frames: Vec<Frame> = [0, 1, 125, 126, 127, 512, 513, 65_535, 65_536, 200_000]
            .into_iter()
            .map(text)
            .collect();
        frames.push(Frame::Binary(Bytes::from_static(&[0, 1, 2, 255])));
        frames.extend((0..2 * FRAMES_PER_WRITE + 3).map(|i| text(i * 37 % 900)));
        for chunk in [1, 7, 4096, usize::MAX] {
            let mut writer = FrameWriter::default();
            let mut stream = Trickle {
                out: Vec::new(),
                chunk,
            };
            writer.write_all(&frames, &mut stream).await.unwrap();
            assert_eq!(writer.started_end(frames.len()), frames.len());
            let (mut a, b) = tokio::io::duplex(1 << 20);
            let reader = tokio::spawn(async move {
                let mut ws = WebSocketStream::from_raw_socket(b, Role::Client, None).await;
                let mut got = Vec::new();
                while let Some(Ok(msg)) = ws.next().await {
                    got.push(msg);
                }
                got
            });
            a.write_all(&stream.out).await.unwrap();
            drop(a);
            let got = reader.await.unwrap();
            assert_eq!(got.len(), frames.len(), "chunk {chunk}");
            for (msg, frame) in got.iter().zip(&frames) {
                match (msg, frame) {
                    (Message::Text(t), Frame::Text(b)) => assert_eq!(t.as_bytes(), &b[..]),
                    (Message::Binary(t), Frame::Binary(b)) => assert_eq!(t, b),
                    other => panic!("chunk {chunk}: {other:?}"),
                }
            }
        }
    }

    /// A write cut short remembers how far it got in its frame: finishing up to
    /// `started_end` (as a closing socket does, leaving out the frames not started) ends
    /// exactly on that frame's last byte.
    #[tokio::test]
    async fn a_started_frame_is_finished_and_the_rest_can_be_left_out() {
        let frames = [text(300), text(10)];
        let mut writer = FrameWriter::default();
        let mut stream = Trickle {
            out: Vec::new(),
            chunk: 100,
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // One poll takes 100 bytes of the first frame, then the stream is "busy".
        let mut limited = Limited {
            inner: Pin::new(&mut stream),
            calls: 1,
        };
        let poll = writer.poll_write_all(&frames, &mut cx, Pin::new(&mut limited));
        assert!(poll.is_pending());
        assert_eq!((writer.done, writer.sent), (0, 100));
        let end = writer.started_end(frames.len());
        assert_eq!(end, 1);
        writer.write_all(&frames[..end], &mut stream).await.unwrap();
        assert_eq!(
            stream.out.len(),
            4 + 300,
            "header of 4 bytes, then the payload"
        );
        assert_eq!(
            writer.started_end(frames.len()),
            1,
            "nothing of the second started"
        );
        writer.reset();
        assert_eq!(writer.started_end(frames.len()), 0);
    }

    /// Takes `calls` writes from `inner`, then is pending.
    struct Limited<'a> {
        inner: Pin<&'a mut Trickle>,
        calls: usize,
    }

    impl AsyncWrite for Limited<'_> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.calls == 0 {
                return Poll::Pending;
            }
            self.calls -= 1;
            self.inner.as_mut().poll_write(cx, buf)
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            if self.calls == 0 {
                return Poll::Pending;
            }
            self.calls -= 1;
            self.inner.as_mut().poll_write_vectored(cx, bufs)
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }
}
