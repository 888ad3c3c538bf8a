//! One worker task: connects its share of the plan, then drives those connections through
//! the send and drain phases (see the parent module for the shape).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::FutureExt;
use futures_util::stream::{self, FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{RunConfig, TIMELINE_BUCKET_MS};
use crate::conn::{AnyConn, ConnError, ConnEvent};
use crate::scenario::{ConnSpec, Pacing};
use crate::stamp::{self, Clock};
use crate::stats::{Latency, Timeline};
use crate::target::{Endpoint, source_ip};
use crate::token::Signer;

/// Counters the coordinator reads while workers run.
#[derive(Default)]
pub(super) struct Shared {
    pub(super) connected: AtomicU64,
    pub(super) connect_failed: AtomicU64,
    pub(super) sent: AtomicU64,
    pub(super) acked: AtomicU64,
    pub(super) expected: AtomicU64,
    pub(super) delivered: AtomicU64,
    pub(super) closed: AtomicU64,
    pub(super) first_error: Mutex<Option<String>>,
}

impl Shared {
    pub(super) fn note_error(&self, err: String) {
        if let Ok(mut first) = self.first_error.lock()
            && first.is_none()
        {
            *first = Some(err);
        }
    }
}

/// When sending starts and stops.
#[derive(Clone, Copy, Debug)]
pub(super) struct Schedule {
    pub(super) start: Instant,
    pub(super) stop_send: Instant,
}

/// What every worker shares.
pub(super) struct WorkerEnv {
    pub(super) endpoints: Vec<Endpoint>,
    pub(super) signer: Signer,
    pub(super) cfg: RunConfig,
    pub(super) shared: Shared,
    pub(super) clock: Clock,
    pub(super) per_worker_concurrency: usize,
}

/// A worker's measurements.
pub(super) struct WorkerReport {
    pub(super) delivery: Latency,
    pub(super) ack: Latency,
    pub(super) deliveries: Timeline,
    pub(super) sends: Timeline,
    pub(super) received: u64,
    pub(super) sent: u64,
    pub(super) acked: u64,
    pub(super) ack_errors: u64,
    pub(super) closes: BTreeMap<String, u64>,
    pub(super) errors: u64,
    pub(super) first_error: Option<String>,
    pub(super) last_delivery_ns: u64,
    pub(super) schedule_skips: u64,
}

impl WorkerReport {
    pub(super) fn new(span_ms: u64) -> WorkerReport {
        WorkerReport {
            delivery: Latency::new(),
            ack: Latency::new(),
            deliveries: Timeline::new(TIMELINE_BUCKET_MS, span_ms),
            sends: Timeline::new(TIMELINE_BUCKET_MS, span_ms),
            received: 0,
            sent: 0,
            acked: 0,
            ack_errors: 0,
            closes: BTreeMap::new(),
            errors: 0,
            first_error: None,
            last_delivery_ns: 0,
            schedule_skips: 0,
        }
    }

    pub(super) fn merge(&mut self, other: WorkerReport) {
        self.delivery.merge(&other.delivery);
        self.ack.merge(&other.ack);
        self.deliveries.merge(&other.deliveries);
        self.sends.merge(&other.sends);
        self.received += other.received;
        self.sent += other.sent;
        self.acked += other.acked;
        self.ack_errors += other.ack_errors;
        for (k, v) in other.closes {
            *self.closes.entry(k).or_default() += v;
        }
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.last_delivery_ns = self.last_delivery_ns.max(other.last_delivery_ns);
        self.schedule_skips += other.schedule_skips;
    }

    fn error(&mut self, err: &ConnError) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(err.to_string());
        }
    }
}

/// A connection's sending state.
struct Sender {
    topic: String,
    pacing: Pacing,
    fanout: u64,
    /// Delay of the first send after the start.
    phase: Duration,
    /// Fixed rate: the next send. Window: the first send (then acknowledgements drive).
    next_at: Option<Instant>,
    in_flight: u32,
    seq: u64,
    /// When this sender last pushed `typing`.
    typed_at: Option<Instant>,
    /// `--typing-apart`: when the next typing push is due (halfway to the next message).
    typing_due: Option<Instant>,
}

/// A connection and its timers.
struct Slot {
    conn: AnyConn,
    sender: Option<Sender>,
    next_heartbeat: Instant,
}

/// Why a slot's future completed.
enum Wake {
    Event(Result<ConnEvent, ConnError>),
    Timer,
}

impl Slot {
    fn next_wake(&self, stop_send: Instant) -> Instant {
        let mut at = self.next_heartbeat;
        if let Some(next) = self.sender.as_ref().and_then(|s| s.next_at)
            && next < stop_send
        {
            at = at.min(next);
        }
        if let Some(due) = self.sender.as_ref().and_then(|s| s.typing_due)
            && due < stop_send
        {
            at = at.min(due);
        }
        at
    }
}

async fn wait(mut slot: Slot, until: Instant) -> (Slot, Wake) {
    let until = tokio::time::Instant::from_std(until);
    match tokio::time::timeout_at(until, slot.conn.next_event()).await {
        Ok(result) => (slot, Wake::Event(result)),
        Err(_) => (slot, Wake::Timer),
    }
}

/// Per-wake-up deltas, added to the shared counters in one go.
#[derive(Default)]
struct Deltas {
    delivered: u64,
    sent: u64,
    acked: u64,
    expected: u64,
    closed: u64,
}

impl Deltas {
    fn flush(&mut self, shared: &Shared) {
        let add = |counter: &AtomicU64, n: &mut u64| {
            if *n > 0 {
                counter.fetch_add(*n, Ordering::Relaxed);
                *n = 0;
            }
        };
        add(&shared.delivered, &mut self.delivered);
        add(&shared.sent, &mut self.sent);
        add(&shared.acked, &mut self.acked);
        add(&shared.expected, &mut self.expected);
        add(&shared.closed, &mut self.closed);
    }
}

/// The loop of one worker over its connections once sending has been scheduled.
struct Driver<'a> {
    env: &'a WorkerEnv,
    sched: Schedule,
    start_ns: u64,
    report: WorkerReport,
    deltas: Deltas,
}

impl Driver<'_> {
    /// Handles one event; false when the connection is finished.
    async fn on_event(&mut self, slot: &mut Slot, event: Result<ConnEvent, ConnError>) -> bool {
        let event = match event {
            Ok(ev) => ev,
            Err(err) => {
                self.report.error(&err);
                return false;
            }
        };
        match event {
            ConnEvent::Received { stamp } => {
                let now = self.env.clock.now_ns();
                if let Some(sent_at) = stamp {
                    self.report.delivery.record_ns(now.saturating_sub(sent_at));
                }
                self.report.received += 1;
                self.report
                    .deliveries
                    .add(now.saturating_sub(self.start_ns), 1);
                self.report.last_delivery_ns = now;
                self.deltas.delivered += 1;
            }
            ConnEvent::Sent { stamp, ok } => {
                let now = self.env.clock.now_ns();
                if let Some(sent_at) = stamp {
                    self.report.ack.record_ns(now.saturating_sub(sent_at));
                }
                if ok {
                    self.report.acked += 1;
                    self.deltas.acked += 1;
                } else {
                    self.report.ack_errors += 1;
                }
                if let Some(sender) = &mut slot.sender {
                    sender.in_flight = sender.in_flight.saturating_sub(1);
                }
                if let Err(err) = self.send_due(slot).await {
                    self.report.error(&err);
                    return false;
                }
            }
            ConnEvent::Ping => {
                if let Err(err) = slot.conn.pong().await {
                    self.report.error(&err);
                    return false;
                }
            }
            ConnEvent::Closed { code, reason } => {
                let key = match code {
                    Some(code) => format!("{code} {reason}"),
                    None => format!("no close frame {reason}"),
                };
                *self.report.closes.entry(key.trim().to_owned()).or_default() += 1;
                self.deltas.closed += 1;
                return false;
            }
            ConnEvent::Other => {}
        }
        true
    }

    /// Sends whatever the connection's pacing says is due now.
    async fn send_due(&mut self, slot: &mut Slot) -> Result<(), ConnError> {
        let Some(sender) = &mut slot.sender else {
            return Ok(());
        };
        let now = Instant::now();
        if now >= self.sched.stop_send {
            // Sending is over: no more send timers.
            sender.next_at = None;
            return Ok(());
        }
        let cfg = &self.env.cfg;
        if sender.typing_due.is_some_and(|at| at <= now) {
            sender.typing_due = None;
            slot.conn.send_typing(&sender.topic).await?;
            sender.typed_at = Some(now);
        }
        let mut due = 0u32;
        match sender.pacing {
            Pacing::Rate { interval } => {
                if let Some(next) = &mut sender.next_at {
                    // Catch up on what is due, in bounded bursts; a sender more than a second
                    // behind skips ahead (and the skips are reported).
                    while *next <= now && *next < self.sched.stop_send && due < 64 {
                        due += 1;
                        *next += interval;
                    }
                    if *next + Duration::from_secs(1) < now {
                        let behind = now.duration_since(*next).as_secs_f64();
                        self.report.schedule_skips += (behind / interval.as_secs_f64()) as u64;
                        *next = now + interval;
                    }
                }
            }
            Pacing::Window(window) => {
                if sender.next_at.is_some_and(|first| first <= now) {
                    sender.next_at = None;
                }
                if sender.next_at.is_none() {
                    due = window.saturating_sub(sender.in_flight);
                }
            }
        }
        for _ in 0..due {
            sender.seq += 1;
            let stamp_ns = self.env.clock.now_ns();
            let content = stamp::content(sender.seq, stamp_ns, self.env.cfg.message_bytes);
            let mobile_ref_id = stamp::mobile_ref_id(sender.seq, stamp_ns);
            if cfg.typing
                && !cfg.typing_apart
                && sender
                    .typed_at
                    .is_none_or(|at| now.duration_since(at) >= cfg.typing_every)
            {
                slot.conn.send_typing(&sender.topic).await?;
                sender.typed_at = Some(now);
            }
            slot.conn
                .send_chat(&sender.topic, &content, &mobile_ref_id)
                .await?;
            if let (true, true, Pacing::Rate { interval }) =
                (cfg.typing, cfg.typing_apart, sender.pacing)
                && sender
                    .typed_at
                    .is_none_or(|at| now.duration_since(at) + interval / 2 >= cfg.typing_every)
            {
                sender.typing_due = Some(now + interval / 2);
            }
            sender.in_flight += 1;
            self.report.sent += 1;
            self.report
                .sends
                .add(stamp_ns.saturating_sub(self.start_ns), 1);
            self.deltas.sent += 1;
            self.deltas.expected += sender.fanout;
        }
        Ok(())
    }

    /// Everything a wake-up does for one connection; false when it is finished.
    async fn on_wake(&mut self, slot: &mut Slot, wake: Wake) -> bool {
        if let Wake::Event(event) = wake {
            if !self.on_event(slot, event).await {
                return false;
            }
            // Take what is already buffered without arming a timer for each frame.
            for _ in 0..64 {
                match slot.conn.next_event().now_or_never() {
                    Some(event) => {
                        if !self.on_event(slot, event).await {
                            return false;
                        }
                    }
                    None => break,
                }
            }
        }
        if let Err(err) = self.send_due(slot).await {
            self.report.error(&err);
            return false;
        }
        let now = Instant::now();
        if now >= slot.next_heartbeat {
            slot.next_heartbeat = now + self.env.cfg.heartbeat;
            if let Err(err) = slot.conn.keepalive().await {
                self.report.error(&err);
                return false;
            }
        }
        true
    }
}

async fn connect_one(
    env: &WorkerEnv,
    index: usize,
    spec: ConnSpec,
    deadline: tokio::time::Instant,
) -> Result<Slot, String> {
    let endpoint = env
        .endpoints
        .get(spec.endpoint)
        .ok_or_else(|| format!("no endpoint {}", spec.endpoint))?;
    let token = env
        .signer
        .sign(&spec.user)
        .map_err(|e| format!("sign token: {e}"))?;
    let local_ip = endpoint
        .addr
        .is_ipv4()
        .then(|| source_ip(index, env.cfg.source_ips, env.cfg.source_ip_offset));
    let setup = async {
        let mut conn = AnyConn::connect(endpoint, &token, local_ip)
            .await
            .map_err(|e| format!("connect {}: {e}", spec.user))?;
        for topic in &spec.topics {
            conn.join(topic)
                .await
                .map_err(|e| format!("join {topic} as {}: {e}", spec.user))?;
        }
        Ok::<AnyConn, String>(conn)
    };
    let conn = tokio::time::timeout_at(deadline, setup)
        .await
        .map_err(|_| "connect phase timed out".to_owned())??;
    let sender = spec.send.map(|s| Sender {
        topic: s.topic,
        pacing: s.pacing,
        fanout: s.fanout,
        phase: s.phase,
        next_at: None,
        in_flight: 0,
        seq: 0,
        typed_at: None,
        typing_due: None,
    });
    Ok(Slot {
        conn,
        sender,
        // Stagger heartbeats so they do not all fall on the same instant.
        next_heartbeat: Instant::now()
            + env.cfg.heartbeat.mul_f64(0.5 + (index % 97) as f64 / 194.0),
    })
}

pub(super) async fn worker(
    env: Arc<WorkerEnv>,
    specs: Vec<(usize, ConnSpec)>,
    ready: mpsc::UnboundedSender<()>,
    mut start: watch::Receiver<Option<Schedule>>,
    cancel: CancellationToken,
    span_ms: u64,
) -> WorkerReport {
    let report = WorkerReport::new(span_ms);
    let deadline = tokio::time::Instant::now() + env.cfg.connect_timeout;
    let mut slots: Vec<Slot> = Vec::with_capacity(specs.len());
    {
        let env_ref = &*env;
        let mut pending = stream::iter(specs)
            .map(|(index, spec)| connect_one(env_ref, index, spec, deadline))
            .buffer_unordered(env.per_worker_concurrency);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return report,
                next = pending.next() => match next {
                    None => break,
                    Some(Ok(slot)) => {
                        env.shared.connected.fetch_add(1, Ordering::Relaxed);
                        slots.push(slot);
                    }
                    Some(Err(err)) => {
                        env.shared.connect_failed.fetch_add(1, Ordering::Relaxed);
                        env.shared.note_error(err);
                    }
                },
            }
        }
    }
    let _ = ready.send(());
    let sched = tokio::select! {
        () = cancel.cancelled() => return report,
        sched = start.wait_for(Option::is_some) => match sched.ok().and_then(|s| *s) {
            Some(sched) => sched,
            None => return report,
        },
    };
    let mut driver = Driver {
        env: &env,
        sched,
        start_ns: env.clock.ns_at(sched.start),
        report,
        deltas: Deltas::default(),
    };
    let mut running = FuturesUnordered::new();
    for mut slot in slots {
        if let Some(sender) = &mut slot.sender {
            sender.next_at = Some(sched.start + sender.phase);
        }
        let until = slot.next_wake(sched.stop_send);
        running.push(wait(slot, until));
    }
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    loop {
        tokio::select! {
            biased;
            () = &mut cancelled => break,
            next = running.next() => {
                let Some((mut slot, wake)) = next else {
                    // Every connection is gone: wait for the coordinator to stop.
                    (&mut cancelled).await;
                    break;
                };
                let keep = driver.on_wake(&mut slot, wake).await;
                driver.deltas.flush(&env.shared);
                if keep {
                    let until = slot.next_wake(sched.stop_send);
                    running.push(wait(slot, until));
                }
            }
        }
    }
    driver.deltas.flush(&env.shared);
    driver.report
}
