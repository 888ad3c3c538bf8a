//! [`Drainer`]: closes the node's sockets in batches when it stops, like Phoenix's socket
//! drainer, so that their clients reconnect to the other nodes spread over a few seconds
//! instead of all at once.
//!
//! Every socket (a WebSocket, a LongPoll session) registers while it lives and gets its own
//! [`CancellationToken`]; its driver closes the socket (1001 `server shutting down`) when that
//! token is cancelled. [`Drainer::drain`] cancels `batch_size` tokens, waits `interval`,
//! cancels the next batch, and so on until none is left. A socket that registers once the
//! drain has begun gets a token that is already cancelled.
//!
//! Cost: one token (a small allocation) and one map entry per socket, taken and given back
//! under a mutex when the socket opens and closes, never per message.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

/// The registry of live sockets that a drain closes.
#[derive(Debug, Default)]
pub struct Drainer {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    draining: bool,
    sockets: HashMap<u64, CancellationToken>,
}

/// A registered socket: it leaves the registry when this is dropped.
#[derive(Debug)]
pub struct Registration {
    drainer: Arc<Drainer>,
    id: u64,
    token: CancellationToken,
}

impl Registration {
    /// Cancelled when the drain reaches this socket.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
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

    /// Registers a socket. During a drain the token comes back already cancelled.
    pub fn register(self: &Arc<Self>) -> Registration {
        let token = CancellationToken::new();
        let mut state = self.state.lock();
        let id = state.next;
        state.next += 1;
        if state.draining {
            token.cancel();
        } else {
            state.sockets.insert(id, token.clone());
        }
        drop(state);
        Registration {
            drainer: self.clone(),
            id,
            token,
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
                    if let Some(token) = state.sockets.remove(&id) {
                        batch.push(token);
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
            for token in batch.drain(..) {
                token.cancel();
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
    use tokio::time::Instant;

    /// Seven sockets, batches of three a second apart: closed at 0 s, 1 s and 2 s (paused
    /// time, so the instants are exact).
    #[tokio::test(start_paused = true)]
    async fn closes_in_batches_at_the_interval() {
        let drainer = Drainer::new();
        let regs: Vec<Registration> = (0..7).map(|_| drainer.register()).collect();
        let start = Instant::now();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for reg in &regs {
            let token = reg.token().clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                token.cancelled().await;
                let _ = tx.send(start.elapsed());
            });
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
        let a = drainer.register();
        let b = drainer.register();
        drop(b);
        assert_eq!(drainer.len(), 1);
        let start = Instant::now();
        assert_eq!(drainer.drain(1, Duration::from_secs(5)).await, 1);
        assert!(a.token().is_cancelled());
        assert_eq!(start.elapsed(), Duration::ZERO);
        let late = drainer.register();
        assert!(
            late.token().is_cancelled(),
            "a socket opened while draining"
        );
        assert!(drainer.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_node_drains_at_once() {
        let drainer = Drainer::new();
        assert_eq!(drainer.drain(0, Duration::from_secs(1)).await, 0);
    }
}
