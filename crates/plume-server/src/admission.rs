//! Admission control: how many connections the node takes, what happens to the ones over the
//! cap, how the accept loop backs off when the system refuses it, and how many bytes of
//! request bodies may be in flight.
//!
//! The connection cap follows mini-redis's `server.rs`: a permit is taken from a semaphore
//! *before* `accept`, so the number of open sockets (file descriptors) is bounded by
//! construction. Unlike mini-redis, the semaphore before `accept` is sized
//! `max_connections + overflow_connections`: a connection that arrives while all
//! `max_connections` slots are taken is still accepted, into the overflow, only to be told
//! why (503 `{"error":"too many connections"}`, or the usual 200 for `GET /healthz`, so a
//! liveness probe keeps working at the cap). Only when the overflow is full too do new
//! connections wait in the kernel's listen backlog.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// The connection slots of one node and the count of connections refused for lack of one.
pub(crate) struct Admission {
    /// Every open accepted socket holds one of these (`max_connections + overflow`).
    room: Arc<Semaphore>,
    /// Every served connection holds one of these as well (`max_connections`).
    slots: Arc<Semaphore>,
    refused: AtomicU64,
}

/// What an accepted connection holds while it is open.
pub(crate) enum Ticket {
    /// A slot under the cap: the connection is served normally, and the WebSocket it may
    /// become keeps the slot.
    Served(ServedSlot),
    /// The cap was reached: the connection is only answered, then closed.
    Overflow(OwnedSemaphorePermit),
}

/// The permits of a served connection; dropping it frees the slot.
pub(crate) struct ServedSlot {
    _room: OwnedSemaphorePermit,
    _slot: OwnedSemaphorePermit,
}

impl Admission {
    pub(crate) fn new(max_connections: usize, overflow: usize) -> Admission {
        let cap = |n: usize| n.min(Semaphore::MAX_PERMITS);
        Admission {
            room: Arc::new(Semaphore::new(
                cap(max_connections.saturating_add(overflow)),
            )),
            slots: Arc::new(Semaphore::new(cap(max_connections))),
            refused: AtomicU64::new(0),
        }
    }

    /// Waits until one more socket may be open. Called before `accept`. `None` only if the
    /// semaphore was closed, which nothing does.
    pub(crate) async fn room(&self) -> Option<OwnedSemaphorePermit> {
        self.room.clone().acquire_owned().await.ok()
    }

    /// Decides, for a connection just accepted with `room`, whether it is served or refused.
    pub(crate) fn admit(&self, room: OwnedSemaphorePermit) -> Ticket {
        match self.slots.clone().try_acquire_owned() {
            Ok(slot) => Ticket::Served(ServedSlot {
                _room: room,
                _slot: slot,
            }),
            Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                Ticket::Overflow(room)
            }
        }
    }

    /// Connections accepted while every slot was taken (each was answered 503, or 200 for
    /// a health check, and closed).
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// The first wait after a failed `accept`.
pub const ACCEPT_BACKOFF_FIRST: Duration = Duration::from_millis(1);
/// The longest wait after a failed `accept`.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one "accept failed" log line per this interval; the others are counted in it.
pub const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Exponential backoff for a failing `accept` (EMFILE, ENFILE, ENOBUFS...), with a
/// rate-limited log. Pure: the caller passes the time, which keeps it testable without a
/// clock.
#[derive(Debug)]
pub struct AcceptBackoff {
    next: Duration,
    last_log: Option<Instant>,
    suppressed: u64,
}

/// What to do after a failed `accept`.
#[derive(Debug, PartialEq, Eq)]
pub struct AcceptRetry {
    /// Wait this long before accepting again.
    pub delay: Duration,
    /// `Some(n)`: log this failure, mentioning the `n` failures not logged since the last
    /// line. `None`: stay quiet.
    pub log: Option<u64>,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff {
            next: ACCEPT_BACKOFF_FIRST,
            last_log: None,
            suppressed: 0,
        }
    }
}

impl AcceptBackoff {
    /// A failed `accept` at `now`.
    pub fn failed(&mut self, now: Instant) -> AcceptRetry {
        let delay = self.next;
        self.next = (self.next * 2).min(ACCEPT_BACKOFF_MAX);
        let due = self
            .last_log
            .is_none_or(|last| now.saturating_duration_since(last) >= ACCEPT_LOG_INTERVAL);
        let log = if due {
            self.last_log = Some(now);
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        };
        AcceptRetry { delay, log }
    }

    /// A successful `accept`: the next failure waits the shortest time again. The log rate
    /// limit is kept, so an `accept` that alternates between success and failure still logs
    /// at most once per [`ACCEPT_LOG_INTERVAL`].
    pub fn succeeded(&mut self) {
        self.next = ACCEPT_BACKOFF_FIRST;
    }
}

/// The global budget of request-body bytes being read, and the count of requests refused
/// because it was spent.
pub(crate) struct BodyBudget {
    bytes: Arc<Semaphore>,
    refused: AtomicU64,
}

impl BodyBudget {
    pub(crate) fn new(bytes: usize) -> BodyBudget {
        BodyBudget {
            bytes: Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))),
            refused: AtomicU64::new(0),
        }
    }

    /// Reserves `n` bytes without waiting; `None` (counted) when they are not available.
    pub(crate) fn reserve(&self, n: usize) -> Option<OwnedSemaphorePermit> {
        let reserved = u32::try_from(n)
            .ok()
            .and_then(|n| self.bytes.clone().try_acquire_many_owned(n).ok());
        if reserved.is_none() {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        reserved
    }

    /// Requests refused because the budget was spent.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_millisecond_to_one_second_and_resets_on_success() {
        let mut b = AcceptBackoff::default();
        let t0 = Instant::now();
        let delays: Vec<u64> = (0..13)
            .map(|_| b.failed(t0).delay.as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 1000, 1000]
        );
        b.succeeded();
        assert_eq!(b.failed(t0).delay, ACCEPT_BACKOFF_FIRST);
    }

    #[test]
    fn accept_failures_are_logged_at_most_once_per_interval_with_the_count_skipped() {
        let mut b = AcceptBackoff::default();
        let t0 = Instant::now();
        assert_eq!(b.failed(t0).log, Some(0), "the first failure is logged");
        for ms in [1, 10, 100, 4999] {
            assert_eq!(b.failed(t0 + Duration::from_millis(ms)).log, None);
        }
        b.succeeded();
        assert_eq!(
            b.failed(t0 + Duration::from_millis(4999)).log,
            None,
            "a success in between does not reopen the log"
        );
        assert_eq!(
            b.failed(t0 + ACCEPT_LOG_INTERVAL).log,
            Some(5),
            "the next line says how many were not logged"
        );
        assert_eq!(b.failed(t0 + ACCEPT_LOG_INTERVAL).log, None);
    }

    #[test]
    fn connections_over_the_cap_go_to_the_overflow_and_are_counted() {
        let admission = Admission::new(1, 1);
        let first = admission.room.clone().try_acquire_owned().unwrap();
        let served = admission.admit(first);
        assert!(matches!(served, Ticket::Served(_)));
        let second = admission.room.clone().try_acquire_owned().unwrap();
        let refused = admission.admit(second);
        assert!(matches!(refused, Ticket::Overflow(_)));
        assert_eq!(admission.refused(), 1);
        let held = admission.room.clone().try_acquire_owned();
        assert!(
            held.is_err(),
            "with the slot served and the overflow in use, accept must wait"
        );
        drop(served);
        drop(refused);
        let third = admission.room.clone().try_acquire_owned().unwrap();
        assert!(
            matches!(admission.admit(third), Ticket::Served(_)),
            "a freed slot is served again"
        );
    }

    #[test]
    fn the_body_budget_refuses_what_does_not_fit_and_frees_on_drop() {
        let budget = BodyBudget::new(100);
        let a = budget.reserve(60).unwrap();
        assert!(budget.reserve(41).is_none());
        assert_eq!(budget.refused(), 1);
        let b = budget.reserve(40).unwrap();
        drop(a);
        assert!(budget.reserve(60).is_some());
        drop(b);
        assert!(budget.reserve(usize::MAX).is_none(), "no overflow into u32");
    }
}
