//! The bounded outbound queue between everything that sends to a socket and its writer.
//!
//! Publishers (the pub/sub registry, other sockets' channels, background tasks) push with
//! [`OutboundTx::send`], which never blocks and never waits: when the queue already holds
//! `capacity` items, or its frames' bytes would go over `max_bytes`, the socket is marked
//! overflowed and the item is dropped. The writer sees the overflow on its next
//! [`OutboundRx::recv_batch`] and closes the socket with [`plume_wire::close::SLOW_CONSUMER`].
//! A slow client therefore costs at most `capacity` items and `max_bytes` of frames in the
//! queue (plus the one batch its writer is writing), never unbounded memory. Counting bytes
//! as well as items matters because frames differ a thousandfold in size: 1,024 queued 1 MiB
//! broadcasts are a gigabyte.
//!
//! The queue is an [`OutBatch`] behind a short mutex rather than a tokio mpsc channel because
//! an idle socket must be small: an empty one owns no allocation, while an mpsc channel
//! allocates a block of slots up front. The writer takes everything queued in one lock, which
//! is what lets it write a whole batch of frames per flush.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use plume_wire::Frame;
use tokio::sync::Notify;

/// Identifies one socket within this process (unique for the life of the process).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId(pub u64);

impl SocketId {
    /// A fresh id.
    pub fn next() -> SocketId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        SocketId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// A broadcast's frame, encoded once and shared by the queues of all its subscribers.
///
/// A queue holds a pointer to it rather than the frame itself: under overload the queues
/// of a big topic's subscribers hold many entries each, and an entry's size is what a
/// backlog costs (a fan-out heap profile had the queues at two thirds of the peak heap).
#[derive(Debug)]
pub struct SharedFrame {
    /// The encoded frame.
    pub frame: Frame,
    /// Its sequence number in a sequenced topic (see [`Out::Seq`]); 0 otherwise.
    pub seq: u64,
}

impl SharedFrame {
    /// A frame to share, with its seq (0 when the topic is not sequenced).
    pub fn new(frame: Frame, seq: u64) -> Arc<SharedFrame> {
        Arc::new(SharedFrame { frame, seq })
    }
}

/// One item for a socket.
pub enum Out {
    /// An encoded frame to write as is (broadcasts arrive this way, encoded once for all).
    Frame(Arc<SharedFrame>),
    /// A frame of a sequenced broadcast (see [`crate::pubsub::Seq`]): written only when its
    /// seq is above the subscription's `floor`, which it then raises. This is how a socket
    /// that replayed a topic's log up to some seq drops the live copies of what it replayed.
    Seq {
        /// The encoded frame and its seq.
        frame: Arc<SharedFrame>,
        /// The subscription's floor: the highest seq this socket has been given.
        floor: Arc<AtomicU64>,
    },
    /// The socket's id topic received a `disconnect` broadcast: close the socket (1001).
    Disconnect,
    /// The socket's id topic received a leave order for this topic: end the channel joined
    /// to it, if any, and send the client `phx_close` (see [`plume_wire::event::LEAVE_TOPIC`]).
    Leave {
        /// The topic to leave.
        topic: Arc<str>,
    },
    /// A message for one channel instance's `handle_info`.
    Info {
        /// The channel instance (see [`crate::Context::channel_id`]).
        channel: u64,
        /// The message.
        info: Box<dyn Any + Send>,
    },
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Out::Frame(shared) => f.debug_tuple("Frame").field(&shared.frame).finish(),
            Out::Seq { frame, .. } => f.debug_struct("Seq").field("seq", &frame.seq).finish(),
            Out::Disconnect => f.write_str("Disconnect"),
            Out::Leave { topic } => f.debug_struct("Leave").field("topic", topic).finish(),
            Out::Info { channel, .. } => f.debug_struct("Info").field("channel", channel).finish(),
        }
    }
}

/// The frame of an [`Out::Seq`] if it is new to its subscription (and raises the floor), or
/// `None` for a seq the socket already has. Only the socket's own task calls this, so the
/// load and store need no compare-and-swap.
pub fn admit_seq(shared: &SharedFrame, floor: &AtomicU64) -> Option<Frame> {
    if shared.seq <= floor.load(Ordering::Acquire) {
        return None;
    }
    floor.store(shared.seq, Ordering::Release);
    Some(shared.frame.clone())
}

/// Why [`OutboundTx::send`] did not queue an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The queue was full; the socket is now marked overflowed and will be closed.
    #[error("outbound queue full")]
    Full,
    /// The socket is closed or overflowed already.
    #[error("socket closed")]
    Closed,
}

struct State {
    items: OutBatch,
    /// Bytes of the frames in `items`.
    bytes: usize,
    overflowed: bool,
    closed: bool,
    /// The server asked the socket to close (see [`GoAway`]).
    going_away: bool,
}

struct Shared {
    state: Mutex<State>,
    notify: Notify,
    capacity: usize,
    max_bytes: usize,
}

/// Items oldest first, the oldest held inline. Used for a queue's items and for what a
/// socket's driver takes from it in one turn: most of the time there is one item (a fan-out
/// to many sockets queues one frame on each), so writing it next to the lock just taken saves
/// the cache miss of a separate buffer on every delivery (the fan-out profile had it as the
/// single largest cost), and an idle socket keeps no buffer at all.
#[derive(Default)]
pub struct OutBatch {
    first: Option<Out>,
    /// The rest; empty whenever `first` is.
    rest: Vec<Out>,
}

impl Extend<Out> for OutBatch {
    fn extend<I: IntoIterator<Item = Out>>(&mut self, items: I) {
        let mut items = items.into_iter();
        if self.first.is_none() {
            self.first = items.next();
        }
        // One allocation for the rest when the source knows its length (a drain does).
        self.rest.extend(items);
    }
}

impl OutBatch {
    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn push_back(&mut self, item: Out) {
        if self.first.is_none() {
            self.first = Some(item);
        } else {
            self.rest.push(item);
        }
    }

    fn clear(&mut self) {
        self.first = None;
        self.rest = Vec::new();
    }

    /// Takes every item, oldest first (drop the iterator only once it is exhausted).
    pub fn drain(&mut self) -> impl Iterator<Item = Out> + '_ {
        self.first.take().into_iter().chain(self.rest.drain(..))
    }

    /// Frees the memory of a turn that took several items, once they are gone.
    pub fn release(&mut self) {
        if self.first.is_none() && self.rest.capacity() > 0 {
            self.rest = Vec::new();
        }
    }

    /// Moves every item into `buf`, oldest first.
    fn drain_into(&mut self, buf: &mut impl Extend<Out>) {
        buf.extend(self.drain());
        // A burst may have grown the buffer; give the memory back once it is large.
        if self.rest.capacity() > 64 {
            self.rest.shrink_to_fit();
        }
    }
}

impl Out {
    /// Bytes this item holds for the byte budget (frames; control items count 0).
    fn budget_bytes(&self) -> usize {
        match self {
            Out::Frame(shared) | Out::Seq { frame: shared, .. } => shared.frame.len(),
            Out::Disconnect | Out::Info { .. } | Out::Leave { .. } => 0,
        }
    }
}

/// Sending half; cheap to clone (one reference count).
#[derive(Clone)]
pub struct OutboundTx(Arc<Shared>);

/// Receiving half, owned by the socket's connection driver.
pub struct OutboundRx(Arc<Shared>);

/// What [`OutboundRx::recv_batch`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    /// Items were moved into the buffer.
    Items,
    /// The queue overflowed: close the socket as a slow consumer.
    Overflowed,
    /// The server is going away (a drain reached this socket): close it with 1001.
    GoingAway,
}

/// Tells one socket's driver that the server is going away, through the queue the driver
/// waits on anyway: the drain registry keeps one of these per socket (a reference count),
/// so a socket needs no cancellation token, and its driver no extra future to poll, for a
/// drain (they were about 260 bytes per idle connection in a heap profile).
pub struct GoAway(Arc<Shared>);

impl GoAway {
    /// From now on the driver's [`OutboundRx::recv_batch`] answers [`Batch::GoingAway`].
    pub fn go_away(&self) {
        self.0.state.lock().going_away = true;
        self.0.notify.notify_one();
    }
}

/// Creates a queue that holds at most `capacity` items (at least 1), with no byte budget.
pub fn outbound(capacity: usize) -> (OutboundTx, OutboundRx) {
    outbound_with_budget(capacity, usize::MAX)
}

/// Creates a queue of at most `capacity` items and `max_bytes` of frames. A frame is always
/// accepted into an empty queue, so one frame larger than the budget still goes out.
pub fn outbound_with_budget(capacity: usize, max_bytes: usize) -> (OutboundTx, OutboundRx) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: OutBatch::default(),
            bytes: 0,
            overflowed: false,
            closed: false,
            going_away: false,
        }),
        notify: Notify::new(),
        capacity: capacity.max(1),
        max_bytes,
    });
    (OutboundTx(shared.clone()), OutboundRx(shared))
}

impl OutboundTx {
    /// Queues an item without waiting. On overflow the item is dropped, the socket is marked
    /// for closing, and every later send fails with [`SendError::Closed`].
    pub fn send(&self, item: Out) -> Result<(), SendError> {
        let mut state = self.0.state.lock();
        if state.closed || state.overflowed {
            return Err(SendError::Closed);
        }
        let size = item.budget_bytes();
        let over_bytes = !state.items.is_empty() && state.bytes + size > self.0.max_bytes;
        if state.items.len() >= self.0.capacity || over_bytes {
            state.overflowed = true;
            state.items.clear();
            state.bytes = 0;
            drop(state);
            self.0.notify.notify_one();
            return Err(SendError::Full);
        }
        let was_empty = state.items.is_empty();
        state.bytes += size;
        state.items.push_back(item);
        drop(state);
        if was_empty {
            self.0.notify.notify_one();
        }
        Ok(())
    }

    /// True once the receiver is gone or the queue overflowed.
    pub fn is_closed(&self) -> bool {
        let state = self.0.state.lock();
        state.closed || state.overflowed
    }
}

impl OutboundRx {
    /// Waits until at least one item is queued (or the queue overflowed, or the server is
    /// going away, which come first) and moves every queued item into `buf`. Cancel-safe:
    /// nothing is taken before the future completes.
    pub async fn recv_batch(&mut self, buf: &mut impl Extend<Out>) -> Batch {
        loop {
            {
                let mut state = self.0.state.lock();
                if state.going_away {
                    return Batch::GoingAway;
                }
                if state.overflowed {
                    return Batch::Overflowed;
                }
                if !state.items.is_empty() {
                    state.items.drain_into(buf);
                    state.bytes = 0;
                    return Batch::Items;
                }
            }
            self.0.notify.notified().await;
        }
    }
}

impl OutboundRx {
    /// What tells this socket's driver that the server is going away.
    pub fn go_away_handle(&self) -> GoAway {
        GoAway(self.0.clone())
    }

    /// Resolves once the queue has overflowed: a writer blocked on a slow client waits on
    /// this beside its write, so that it can stop and say why at once. Cancel-safe, and it
    /// takes nothing from the queue.
    pub async fn overflowed(&self) {
        loop {
            if self.0.state.lock().overflowed {
                return;
            }
            self.0.notify.notified().await;
        }
    }
}

impl Drop for OutboundRx {
    fn drop(&mut self) {
        let mut state = self.0.state.lock();
        state.closed = true;
        state.items.clear();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use super::*;
    use bytes::Bytes;

    fn text(bytes: Bytes) -> Out {
        Out::Frame(SharedFrame::new(Frame::Text(bytes), 0))
    }

    /// A queue's backlog costs one entry per item: a broadcast's frame is behind a pointer,
    /// so an entry stays at most 32 bytes (it was 56 with the frame inline).
    #[test]
    fn a_queued_item_is_small() {
        assert!(
            std::mem::size_of::<Out>() <= 32,
            "{}",
            std::mem::size_of::<Out>()
        );
    }

    fn frame(s: &'static str) -> Out {
        text(Bytes::from_static(s.as_bytes()))
    }

    #[tokio::test]
    async fn batches_everything_queued_in_order() {
        fn texts(buf: &[Out]) -> Vec<&[u8]> {
            buf.iter()
                .map(|o| match o {
                    Out::Frame(f) => f.frame.as_bytes().as_ref(),
                    other => panic!("unexpected {other:?}"),
                })
                .collect()
        }
        let (tx, mut rx) = outbound(8);
        tx.send(frame("a")).unwrap();
        tx.send(frame("b")).unwrap();
        tx.send(frame("c")).unwrap();
        let mut buf = Vec::new();
        assert_eq!(rx.recv_batch(&mut buf).await, Batch::Items);
        assert_eq!(texts(&buf), [b"a", b"b", b"c"]);
        // Emptied, the queue fills again in order, one item or several.
        buf.clear();
        tx.send(frame("d")).unwrap();
        assert_eq!(rx.recv_batch(&mut buf).await, Batch::Items);
        assert_eq!(texts(&buf), [b"d"]);
        buf.clear();
        for t in ["e", "f"] {
            tx.send(frame(t)).unwrap();
        }
        assert_eq!(rx.recv_batch(&mut buf).await, Batch::Items);
        assert_eq!(texts(&buf), [b"e", b"f"]);
    }

    #[tokio::test]
    async fn overflow_marks_the_socket_and_refuses_more() {
        let (tx, mut rx) = outbound(2);
        tx.send(frame("a")).unwrap();
        tx.send(frame("b")).unwrap();
        assert_eq!(tx.send(frame("c")), Err(SendError::Full));
        assert_eq!(tx.send(frame("d")), Err(SendError::Closed));
        assert!(tx.is_closed());
        let mut buf = Vec::new();
        assert_eq!(rx.recv_batch(&mut buf).await, Batch::Overflowed);
        assert!(buf.is_empty());
    }

    #[tokio::test]
    async fn the_byte_budget_overflows_before_the_item_count() {
        let (tx, mut rx) = outbound_with_budget(1000, 100);
        let forty = || text(Bytes::from(vec![b'x'; 40]));
        tx.send(forty()).unwrap();
        tx.send(forty()).unwrap();
        assert_eq!(tx.send(forty()), Err(SendError::Full), "120 bytes > 100");
        let mut buf = Vec::new();
        assert_eq!(rx.recv_batch(&mut buf).await, Batch::Overflowed);
    }

    #[tokio::test]
    async fn draining_frees_the_budget_and_one_big_frame_still_goes() {
        let (tx, mut rx) = outbound_with_budget(1000, 100);
        let big = text(Bytes::from(vec![b'x'; 500]));
        tx.send(big).unwrap();
        let mut buf = Vec::new();
        assert_eq!(rx.recv_batch(&mut buf).await, Batch::Items);
        for _ in 0..2 {
            tx.send(text(Bytes::from(vec![b'y'; 40]))).unwrap();
        }
    }

    #[tokio::test]
    async fn send_after_receiver_dropped_fails() {
        let (tx, rx) = outbound(2);
        drop(rx);
        assert_eq!(tx.send(frame("a")), Err(SendError::Closed));
    }

    #[tokio::test]
    async fn wakes_a_waiting_receiver() {
        let (tx, mut rx) = outbound(4);
        let waiter = tokio::spawn(async move {
            let mut buf = Vec::new();
            rx.recv_batch(&mut buf).await;
            buf.len()
        });
        tokio::task::yield_now().await;
        tx.send(frame("x")).unwrap();
        assert_eq!(waiter.await.unwrap(), 1);
    }
}
