//! [`Drainer`]: closes the node's sockets in batches when it stops, like Phoenix's socket
//! drainer, so that their clients reconnect to the other nodes spread over a few seconds
//! instead of all at once.
//!
//! Every socket (a WebSocket, a LongPoll session) registers while it lives. A WebSocket
//! registers the [`GoAway`] of its outbound queue, which its driver waits on anyway; a
//! LongPoll session gets a [`CancellationToken`]. Either way the socket closes with 1001
//! `server shutting down` when the drain reaches it. [`Drainer::drain`] tells `batch_size`
//! sockets, waits `interval`, tells the next batch, and so on until none is left. A socket
//! that registers once the drain has begun is told at once.
//!
//! Cost: one map entry per socket (and, for a LongPoll session, one token), taken and given
//! back under a mutex when the socket opens and closes, never per message.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use plume_channels::outbound::GoAway;
use tokio_util::sync::CancellationToken;

/// The registry of live sockets that a drain closes.
#[derive(Default)]
pub struct Drainer {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next: u64,
    draining: bool,
    sockets: HashMap<u64, Target>,
}

/// How a registered socket is told to close.
enum Target {
    /// A WebSocket: through its outbound queue.
    Queue(GoAway),
    /// A LongPoll session: through its token.
    Token(CancellationToken),
}

impl Target {
    fn tell(&self) {
        match self {
            Target::Queue(queue) => queue.go_away(),
            Target::Token(token) => token.cancel(),
        }
    }
}

/// A registered socket: it leaves the registry when this is dropped.
pub struct Registration {
    drainer: Arc<Drainer>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.drainer.state.lock().sockets.remove(&self.id);
    }
}

impl Drainer {
    /// An empty registry.
    pub fn new() -> Arc<Drainer> {
        Arc::new(Drainer::default())
    }

    /// Registers a WebSocket by its outbound queue. During a drain it is told at once.
    pub fn register(self: &Arc<Self>, queue: GoAway) -> Registration {
        self.add(Target::Queue(queue))
    }

    /// Registers a socket that waits on a token (a LongPoll session), and returns the token.
    /// During a drain it comes back already cancelled.
    pub fn register_token(self: &Arc<Self>) -> (Registration, CancellationToken) {
        let token = CancellationToken::new();
        (self.add(Target::Token(token.clone())), token)
    }

    fn add(self: &Arc<Self>, target: Target) -> Registration {
        let mut state = self.state.lock();
        let id = state.next;
        state.next += 1;
        if state.draining {
            target.tell();
        } else {
            state.sockets.insert(id, target);
        }
        drop(state);
        Registration {
            drainer: self.clone(),
            id,
        }
    }

    /// Sockets registered now.
    pub fn len(&self) -> usize {
        self.state.lock().sockets.len()
    }

    /// Whether no socket is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes every registered socket, `batch_size` at a time (at least one), the first batch
    /// at once and each next one `interval` later, and returns how many it told to close.
    /// Returns once the last batch is told; the sockets then close on their own.
    pub async fn drain(&self, batch_size: usize, interval: Duration) -> usize {
        let batch_size = batch_size.max(1);
        self.state.lock().draining = true;
        let mut told = 0;
        let mut batch = Vec::with_capacity(batch_size.min(4096));
        loop {
            {
                let mut state = self.state.lock();
                let ids: Vec<u64> = state.sockets.keys().take(batch_size).copied().collect();
                for id in ids {
                    if let Some(target) = state.sockets.remove(&id) {
                        batch.push(target);
                    }
                }
            }
            if batch.is_empty() {
                break;
            }
            told += batch.len();
            plume_channels::metrics::metrics().drain_closed(batch.len() as u64);
            tracing::info!(
                batch = batch.len(),
                told,
                left = self.len(),
                "drain: closing a batch of sockets"
            );
            for target in batch.drain(..) {
                target.tell();
            }
            if self.is_empty() {
                break;
            }
            tokio::time::sleep(interval).await;
        }
        told
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use super::*;
    use plume_channels::outbound::{Batch, outbound};
    use tokio::time::Instant;

    /// Seven sockets, batches of three a second apart: closed at 0 s, 1 s and 2 s (paused
    /// time, so the instants are exact).
    #[tokio::test(start_paused = true)]
    async fn closes_in_batches_at_the_interval() {
        let drainer = Drainer::new();
        let start = Instant::now();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut regs = Vec::new();
        // Four WebSockets (told through their queues) and three LongPoll sessions.
        for i in 0..7 {
            let tx = tx.clone();
            if i % 2 == 0 {
                let (_queue_tx, mut queue) = outbound(8);
                regs.push(drainer.register(queue.go_away_handle()));
                tokio::spawn(async move {
                    let mut items = Vec::new();
                    assert_eq!(queue.recv_batch(&mut items).await, Batch::GoingAway);
                    let _ = tx.send(start.elapsed());
                });
            } else {
                let (reg, token) = drainer.register_token();
                regs.push(reg);
                tokio::spawn(async move {
                    token.cancelled().await;
                    let _ = tx.send(start.elapsed());
                });
            }
        }
        drop(tx);
        let told = drainer.drain(3, Duration::from_secs(1)).await;
        assert_eq!(told, 7);
        let mut at = Vec::new();
        while let Some(t) = rx.recv().await {
            at.push(t.as_millis());
        }
        at.sort_unstable();
        assert_eq!(at, [0, 0, 0, 1000, 1000, 1000, 2000]);
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(2),
            "no wait after the last batch"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sockets_that_closed_are_skipped_and_late_ones_start_cancelled() {
        let drainer = Drainer::new();
        let (_a, a) = drainer.register_token();
        let (b, _) = drainer.register_token();
        drop(b);
        assert_eq!(drainer.len(), 1);
        let start = Instant::now();
        assert_eq!(drainer.drain(1, Duration::from_secs(5)).await, 1);
        assert!(a.is_cancelled());
        assert_eq!(start.elapsed(), Duration::ZERO);
        let (_late, late) = drainer.register_token();
        assert!(late.is_cancelled(), "a session opened while draining");
        let (_queue_tx, mut queue) = outbound(8);
        let _late_ws = drainer.register(queue.go_away_handle());
        let mut items = Vec::new();
        assert_eq!(
            queue.recv_batch(&mut items).await,
            Batch::GoingAway,
            "a WebSocket opened while draining"
        );
        assert!(drainer.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_node_drains_at_once() {
        let drainer = Drainer::new();
        assert_eq!(drainer.drain(0, Duration::from_secs(1)).await, 0);
    }
}
