//! [`TokenBucket`]: the per-socket rate limiter, and [`IdBudgets`]: one more bucket shared
//! by every socket of one identity (Phoenix's socket id) on this node.
//!
//! A bucket holds up to `burst` tokens and gains `rate` tokens a second; each admitted event
//! takes one. It lives inside the socket's state (no lock, no allocation: two integers and an
//! [`Instant`]) and reads tokio's clock, so tests drive it with paused time.
//!
//! Tokens are counted in billionths (one token = 10^9 units) so that refilling for any
//! elapsed time is exact integer arithmetic: no float drift, the same answer on every machine.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

const UNIT: u128 = 1_000_000_000;

/// A token bucket: `rate` events a second on average, up to `burst` at once.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    /// Tokens gained per second; 0 means the bucket never refuses.
    rate: u32,
    /// Most tokens held (at least 1 when `rate` is set).
    burst: u32,
    /// Tokens held, in billionths of a token.
    units: u128,
    /// When `units` was last brought up to date.
    last: Instant,
}

impl TokenBucket {
    /// A full bucket. `rate` 0 turns the limit off; `burst` below 1 is taken as 1.
    pub fn new(rate: u32, burst: u32) -> TokenBucket {
        let burst = burst.max(1);
        TokenBucket {
            rate,
            burst,
            units: u128::from(burst) * UNIT,
            last: Instant::now(),
        }
    }

    /// Takes one token if there is one (true), or refuses (false). Never blocks.
    pub fn take(&mut self) -> bool {
        self.take_at(Instant::now())
    }

    /// [`TokenBucket::take`] at a given instant (instants before the last one count as no
    /// time passed).
    pub fn take_at(&mut self, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        let cap = u128::from(self.burst) * UNIT;
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        // Bounded before multiplying: a bucket idle for a year is simply full.
        let full_after = Duration::from_secs(u64::from(self.burst / self.rate) + 1);
        let gained = elapsed.min(full_after).as_nanos() * u128::from(self.rate);
        self.units = (self.units + gained).min(cap);
        if self.units >= UNIT {
            self.units -= UNIT;
            true
        } else {
            false
        }
    }
}

impl TokenBucket {
    /// Whether the bucket would be full at `now` (so forgetting it changes nothing).
    fn full_at(&self, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        let missing = u128::from(self.burst) * UNIT - self.units.min(u128::from(self.burst) * UNIT);
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        elapsed.saturating_mul(u128::from(self.rate)) >= missing
    }
}

/// How many sockets join the registry between two sweeps of forgotten identities.
const SWEEP_EVERY_JOINS: u64 = 256;

/// Push budgets shared by the sockets of one identity on this node (the socket id a
/// connection was given at connect, `user_socket:{user}` in the chat service).
///
/// Why: a socket's own bucket starts full, so a client that floods, is closed, reconnects and
/// floods again got a fresh burst every time (3.5 times the per-socket rate in the flood
/// measurement). The identity's bucket outlives its sockets until it has refilled: a
/// reconnect gains nothing over waiting. An identity with no socket left is forgotten once
/// its bucket is full again (at once when its last socket closes, if it already is, else by
/// a sweep every 256 joins), so the registry holds the identities
/// connected now plus those closed in the last few seconds.
#[derive(Default)]
pub struct IdBudgets {
    inner: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    ids: HashMap<Arc<str>, Arc<IdEntry>>,
    joins: u64,
}

struct IdEntry {
    bucket: Mutex<TokenBucket>,
    /// Sockets holding an [`IdBudget`] for this identity (changed under the registry's lock).
    sockets: std::sync::atomic::AtomicUsize,
}

impl IdEntry {
    fn forgettable(&self, now: Instant) -> bool {
        self.sockets.load(std::sync::atomic::Ordering::Relaxed) == 0
            && self.bucket.lock().full_at(now)
    }
}

impl IdBudgets {
    /// The budget of identity `id` for one more socket: `rate` pushes a second, up to
    /// `burst` at once, shared with every other socket of `id` (the rate and burst of the
    /// identity's first socket apply while it is remembered).
    pub fn join(self: &Arc<Self>, id: &str, rate: u32, burst: u32) -> IdBudget {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        inner.joins += 1;
        if inner.joins.is_multiple_of(SWEEP_EVERY_JOINS) {
            inner.ids.retain(|_, entry| !entry.forgettable(now));
        }
        let (key, entry) = match inner.ids.get_key_value(id) {
            Some((key, entry)) => (key.clone(), entry.clone()),
            None => {
                let key: Arc<str> = Arc::from(id);
                let entry = Arc::new(IdEntry {
                    bucket: Mutex::new(TokenBucket::new(rate, burst)),
                    sockets: std::sync::atomic::AtomicUsize::new(0),
                });
                inner.ids.insert(key.clone(), entry.clone());
                (key, entry)
            }
        };
        entry
            .sockets
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        IdBudget {
            registry: self.clone(),
            key,
            entry,
        }
    }

    /// Identities remembered now (for tests and metrics).
    pub fn len(&self) -> usize {
        self.inner.lock().ids.len()
    }

    /// Whether no identity is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One socket's share of its identity's budget; dropping it tells the registry.
pub struct IdBudget {
    registry: Arc<IdBudgets>,
    key: Arc<str>,
    entry: Arc<IdEntry>,
}

impl IdBudget {
    /// Takes one push from the identity's bucket (false: over the identity's rate).
    pub fn take(&self) -> bool {
        self.entry.bucket.lock().take()
    }
}

impl Drop for IdBudget {
    fn drop(&mut self) {
        let mut inner = self.registry.inner.lock();
        self.entry
            .sockets
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if self.entry.forgettable(Instant::now()) {
            inner.ids.remove(&self.key);
        }
    }
}

impl std::fmt::Debug for IdBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdBudget").field("id", &self.key).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn sockets_of_one_id_share_a_bucket_that_outlives_them_until_refilled() {
        let budgets = Arc::new(IdBudgets::default());
        let first = budgets.join("user_socket:u1", 10, 20);
        let second = budgets.join("user_socket:u1", 10, 20);
        let other = budgets.join("user_socket:u2", 10, 20);
        let admitted = (0..100)
            .filter(|i| {
                if i % 2 == 0 {
                    first.take()
                } else {
                    second.take()
                }
            })
            .count();
        assert_eq!(admitted, 20, "two sockets of one id share one burst");
        assert!(other.take(), "another id has its own");
        // The flooder's sockets close and it reconnects at once: no fresh burst.
        drop(first);
        drop(second);
        assert_eq!(budgets.len(), 2, "an empty bucket is remembered");
        let again = budgets.join("user_socket:u1", 10, 20);
        assert!(!again.take(), "a reconnect gains nothing");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(again.take(), "the rate still applies");
        drop(again);
        // Refilled after burst / rate = 2 s: forgotten by the next sweep.
        tokio::time::advance(Duration::from_secs(3)).await;
        drop(other);
        assert_eq!(
            budgets.len(),
            1,
            "u2's full bucket is forgotten when its socket closes"
        );
        for i in 0..SWEEP_EVERY_JOINS {
            drop(budgets.join(&format!("user_socket:n{i}"), 10, 20));
        }
        assert!(budgets.is_empty(), "the sweep forgot u1: {}", budgets.len());
    }

    #[tokio::test(start_paused = true)]
    async fn admits_the_burst_then_the_rate() {
        let mut bucket = TokenBucket::new(100, 200);
        let admitted = (0..1000).filter(|_| bucket.take()).count();
        assert_eq!(admitted, 200, "a full bucket admits exactly its burst");
        assert!(!bucket.take());
        // 10 ms at 100/s is exactly one token.
        tokio::time::advance(Duration::from_millis(10)).await;
        assert!(bucket.take());
        assert!(!bucket.take());
        // 5 ms is half a token: refused, but the half is kept.
        tokio::time::advance(Duration::from_millis(5)).await;
        assert!(!bucket.take());
        tokio::time::advance(Duration::from_millis(5)).await;
        assert!(bucket.take());
        // One second gives 100, not more.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!((0..1000).filter(|_| bucket.take()).count(), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn refills_to_the_burst_and_no_further() {
        let mut bucket = TokenBucket::new(20, 100);
        while bucket.take() {}
        tokio::time::advance(Duration::from_secs(3600 * 24 * 365)).await;
        assert_eq!((0..1000).filter(|_| bucket.take()).count(), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_rate_at_the_limit_is_never_refused() {
        let mut bucket = TokenBucket::new(100, 1);
        for _ in 0..10_000 {
            assert!(bucket.take());
            tokio::time::advance(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn rate_zero_is_unlimited() {
        let mut bucket = TokenBucket::new(0, 0);
        assert!((0..100_000).all(|_| bucket.take()));
    }
}
