//! [`TokenBucket`]: the per-socket rate limiter.
//!
//! A bucket holds up to `burst` tokens and gains `rate` tokens a second; each admitted event
//! takes one. It lives inside the socket's state (no lock, no allocation: two integers and an
//! [`Instant`]) and reads tokio's clock, so tests drive it with paused time.
//!
//! Tokens are counted in billionths (one token = 10^9 units) so that refilling for any
//! elapsed time is exact integer arithmetic: no float drift, the same answer on every machine.

use std::time::Duration;

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

#[cfg(test)]
mod tests {
    use super::*;

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
