//! Runs a plan: connect every connection, start sending at one instant, stop after the
//! duration, drain, and measure.
//!
//! # Shape
//!
//! A few worker tasks (`--workers`, spread over the multi-thread runtime) each own a share of
//! the connections. A worker keeps one future per connection in a `FuturesUnordered`: the
//! future waits for the connection's next event or its next timer (a send due, a heartbeat
//! due) and hands the connection back. The worker then handles the event, drains whatever
//! else that connection already has buffered, does what is due, and re-arms it. Histograms
//! and timelines are the worker's own values (no locks on the per-message path); only
//! counters the coordinator watches live (for the progress bar and the drain) are shared
//! atomics, updated once per wake-up.
//!
//! # Phases
//!
//! 1. connect: each worker opens its connections (bounded concurrency, source addresses
//!    spread over 127.0.0.x) and joins their topics, then reports ready;
//! 2. settle: a second for the servers' memory to be read after everyone joined;
//! 3. send: every sender starts at one instant and stops after `--duration`;
//! 4. drain: wait (at most `--drain`) until every expected delivery and acknowledgement has
//!    arrived;
//! 5. stop: workers return their measurements; dropping the connections closes them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::procfs;
use crate::report::{ClientStats, ConnectStats, Sample, ServerStats, TimelinePoint, Traffic};
use crate::scenario::ConnSpec;
use crate::spawn::Proc;
use crate::stamp::Clock;
use crate::stats::LatencySummary;
use crate::target::Endpoint;
use crate::token::Signer;

mod worker;

use worker::{Schedule, Shared, WorkerEnv, WorkerReport, worker};

/// Interval of the throughput timeline.
pub const TIMELINE_BUCKET_MS: u64 = 250;

/// How a plan is run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// How long senders send (idle: how long connections are held).
    pub duration: Duration,
    /// Longest wait for outstanding deliveries after the senders stop.
    pub drain: Duration,
    /// Worker tasks.
    pub workers: usize,
    /// Source addresses to spread connections over (127.0.0.1 … 127.0.0.N).
    pub source_ips: usize,
    /// First source address is 127.0.0.{1 + offset}.
    pub source_ip_offset: usize,
    /// Connection attempts in flight at once, all workers together.
    pub connect_concurrency: usize,
    /// Longest time for the whole connect phase.
    pub connect_timeout: Duration,
    /// Phoenix heartbeat interval.
    pub heartbeat: Duration,
    /// Bytes of message content.
    pub message_bytes: usize,
    /// Push `typing` before every chat message.
    pub typing: bool,
    /// With `typing`: the least time between two typing pushes of one sender (zero: before
    /// every message).
    pub typing_every: Duration,
    /// With `typing` and a fixed rate: push it halfway between two messages, not before each.
    pub typing_apart: bool,
    /// Pause between the last join and the start (memory is read at its end).
    pub settle: Duration,
    /// Draw a progress bar.
    pub progress: bool,
}

/// What the runner measured: the part of a report that comes from the run itself (a
/// [`crate::report::RunReport`] adds what was run, on which machine).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Measured {
    /// The connect phase.
    pub connect: ConnectStats,
    /// Messages.
    pub traffic: Traffic,
    /// Delivery latency.
    pub delivery_latency: Option<LatencySummary>,
    /// Acknowledgement latency.
    pub ack_latency: Option<LatencySummary>,
    /// Per server process.
    pub servers: Vec<ServerStats>,
    /// The load generator.
    pub client: ClientStats,
    /// Rates over time.
    pub timeline: Vec<TimelinePoint>,
    /// Samples over time.
    pub samples: Vec<Sample>,
    /// Stopped early.
    pub interrupted: bool,
}

/// A server process to watch, with the endpoint whose connections it serves (none for
/// Redis).
pub struct Watched {
    /// The process.
    pub proc_: Proc,
    /// The index of its endpoint in the run's endpoint list.
    pub endpoint: Option<usize>,
}

fn bar(len: u64, template: &str, enabled: bool) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

struct ProcSnapshot {
    rss_kib: Vec<u64>,
    cpu_secs: Vec<f64>,
}

fn snapshot(servers: &[Watched]) -> ProcSnapshot {
    ProcSnapshot {
        rss_kib: servers
            .iter()
            .map(|s| procfs::rss_kib(s.proc_.pid).unwrap_or(0))
            .collect(),
        cpu_secs: servers
            .iter()
            .map(|s| procfs::cpu_secs(s.proc_.pid).unwrap_or(0.0))
            .collect(),
    }
}

/// Runs `plan` against `endpoints`, watching `servers`; stops early when `stop` is
/// cancelled (Ctrl-C) or a server dies.
pub async fn run(
    plan: Vec<ConnSpec>,
    endpoints: Vec<Endpoint>,
    jwt_secret: &str,
    cfg: RunConfig,
    servers: &mut [Watched],
    stop: CancellationToken,
) -> Measured {
    let attempted = plan.len() as u64;
    let workers = cfg.workers.clamp(1, plan.len().max(1));
    let span_ms = (cfg.duration + cfg.drain + Duration::from_secs(5)).as_millis() as u64;
    let conns_per_endpoint: Vec<u64> = (0..endpoints.len())
        .map(|e| plan.iter().filter(|c| c.endpoint == e).count() as u64)
        .collect();
    let env = Arc::new(WorkerEnv {
        endpoints,
        signer: Signer::hs256(jwt_secret.as_bytes()),
        per_worker_concurrency: cfg.connect_concurrency.div_ceil(workers).max(1),
        cfg: cfg.clone(),
        shared: Shared::default(),
        clock: Clock::new(),
    });
    let shared = |f: fn(&Shared) -> &AtomicU64| f(&env.shared).load(Ordering::Relaxed);

    let self_pid = std::process::id();
    let rss_start = snapshot(servers).rss_kib;
    let t0 = Instant::now();
    let mut samples = Vec::new();
    let sample = |samples: &mut Vec<Sample>, servers: &[Watched], env: &WorkerEnv| {
        samples.push(Sample {
            t_s: t0.elapsed().as_secs_f64(),
            connected: env.shared.connected.load(Ordering::Relaxed),
            server_rss_kib: servers
                .iter()
                .filter(|s| s.endpoint.is_some())
                .map(|s| procfs::rss_kib(s.proc_.pid).unwrap_or(0))
                .sum(),
            delivered: env.shared.delivered.load(Ordering::Relaxed),
        });
    };

    // Workers.
    let cancel = stop.child_token();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let (start_tx, start_rx) = watch::channel(None);
    let mut shares: Vec<Vec<(usize, ConnSpec)>> = vec![Vec::new(); workers];
    for (i, spec) in plan.into_iter().enumerate() {
        shares[i % workers].push((i, spec));
    }
    let handles: Vec<_> = shares
        .into_iter()
        .map(|share| {
            tokio::spawn(worker(
                env.clone(),
                share,
                ready_tx.clone(),
                start_rx.clone(),
                cancel.clone(),
                span_ms,
            ))
        })
        .collect();
    drop(ready_tx);

    // Connect.
    let progress = bar(
        attempted,
        "{spinner} connect {bar:40} {pos}/{len} {per_sec} {elapsed} {msg}",
        cfg.progress,
    );
    let mut ready = 0;
    let mut interrupted = false;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut ticks = 0u64;
    while ready < workers {
        tokio::select! {
            r = ready_rx.recv() => match r {
                Some(()) => ready += 1,
                None => break,
            },
            _ = tick.tick() => {
                ticks += 1;
                progress.set_position(shared(|s| &s.connected) + shared(|s| &s.connect_failed));
                let failed = shared(|s| &s.connect_failed);
                if failed > 0 {
                    progress.set_message(format!("{failed} failed"));
                }
                if ticks.is_multiple_of(5) {
                    sample(&mut samples, servers, &env);
                }
                if servers.iter_mut().any(|s| !s.proc_.is_running()) || stop.is_cancelled() {
                    interrupted = true;
                    break;
                }
            }
        }
    }
    let connect_secs = t0.elapsed().as_secs_f64();
    let connected = shared(|s| &s.connected);
    progress.finish_and_clear();
    let connect = ConnectStats {
        attempted,
        connected,
        failed: shared(|s| &s.connect_failed),
        secs: connect_secs,
        per_sec: connected as f64 / connect_secs.max(1e-9),
        first_error: env.shared.first_error.lock().ok().and_then(|e| e.clone()),
    };
    eprintln!(
        "connected {connected} of {attempted} in {connect_secs:.1} s ({:.0}/s)",
        connect.per_sec
    );

    // Settle, then read memory with everyone joined.
    if !interrupted {
        tokio::time::sleep(cfg.settle).await;
    }
    sample(&mut samples, servers, &env);
    let rss_connected = snapshot(servers).rss_kib;

    // Send.
    let start = Instant::now() + Duration::from_millis(100);
    let stop_send = start + cfg.duration;
    let _ = start_tx.send(Some(Schedule { start, stop_send }));
    let cpu_start = snapshot(servers).cpu_secs;
    let self_cpu_start = procfs::cpu_secs(self_pid).unwrap_or(0.0);
    let progress = bar(
        cfg.duration.as_millis() as u64,
        "{spinner} run {bar:40} {elapsed}/{duration} {msg}",
        cfg.progress,
    );
    let mut last = (Instant::now(), 0u64);
    let mut drain_deadline = None;
    while !interrupted {
        tick.tick().await;
        ticks += 1;
        let now = Instant::now();
        if ticks.is_multiple_of(5) {
            sample(&mut samples, servers, &env);
            let delivered = shared(|s| &s.delivered);
            let rate = (delivered - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
            last = (now, delivered);
            progress.set_message(format!(
                "sent {} delivered {} ({:.0}/s) closed {}",
                shared(|s| &s.sent),
                delivered,
                rate,
                shared(|s| &s.closed)
            ));
        }
        progress.set_position(now.saturating_duration_since(start).as_millis() as u64);
        if servers.iter_mut().any(|s| !s.proc_.is_running()) || stop.is_cancelled() {
            interrupted = true;
            break;
        }
        if now < stop_send {
            continue;
        }
        let deadline = *drain_deadline.get_or_insert(stop_send + cfg.drain);
        let done = shared(|s| &s.delivered) >= shared(|s| &s.expected)
            && shared(|s| &s.acked) >= shared(|s| &s.sent);
        if done || now >= deadline {
            break;
        }
    }
    let end = Instant::now();
    progress.finish_and_clear();
    let cpu_end = snapshot(servers).cpu_secs;
    let self_cpu = procfs::cpu_secs(self_pid).unwrap_or(0.0) - self_cpu_start;
    let rss_end = snapshot(servers).rss_kib;
    sample(&mut samples, servers, &env);
    cancel.cancel();

    let mut total = WorkerReport::new(span_ms);
    for handle in handles {
        match handle.await {
            Ok(report) => total.merge(report),
            Err(err) => env.shared.note_error(format!("worker failed: {err}")),
        }
    }
    let run_secs = end.saturating_duration_since(start).as_secs_f64().max(1e-9);
    let send_secs = cfg.duration.as_secs_f64().min(run_secs).max(1e-9);
    let start_ns = env.clock.ns_at(start);
    let window_s = ((total.last_delivery_ns.saturating_sub(start_ns)) as f64 / 1e9)
        .max(send_secs)
        .min(run_secs.max(send_secs));
    let traffic = Traffic {
        sent: total.sent,
        acked: total.acked,
        ack_errors: total.ack_errors,
        delivered: total.received,
        expected: shared(|s| &s.expected),
        window_s,
        sends_per_sec: total.sent as f64 / send_secs,
        deliveries_per_sec: total.received as f64 / window_s,
        closed: shared(|s| &s.closed),
        close_reasons: total.closes.clone(),
        errors: total.errors,
        first_error: total.first_error.clone(),
        schedule_skips: total.schedule_skips,
    };
    let server_stats = servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let conns = s
                .endpoint
                .and_then(|e| conns_per_endpoint.get(e).copied())
                .unwrap_or(0);
            // The share of joined connections this server holds (plans spread evenly).
            let conns_here = if attempted > 0 {
                (conns as f64 * connected as f64 / attempted as f64).round() as u64
            } else {
                0
            };
            let cpu = (cpu_end[i] - cpu_start[i]).max(0.0);
            ServerStats {
                name: s.proc_.name.clone(),
                pid: s.proc_.pid,
                connections: conns_here,
                rss_start_kib: rss_start[i],
                rss_connected_kib: rss_connected[i],
                rss_end_kib: rss_end[i],
                rss_peak_kib: procfs::hwm_kib(s.proc_.pid).unwrap_or(0),
                rss_per_conn_bytes: (conns_here > 0).then(|| {
                    (rss_connected[i].saturating_sub(rss_start[i])) as f64 * 1024.0
                        / conns_here as f64
                }),
                cpu_secs: cpu,
                cpu_cores: cpu / run_secs,
                cpu_us_per_delivery: (total.received > 0)
                    .then(|| cpu * 1e6 / total.received as f64),
            }
        })
        .collect();
    let sends = total.sends.rates();
    let deliveries = total.deliveries.rates();
    let len = sends.len().max(deliveries.len());
    let bucket = total.deliveries.bucket_secs();
    let timeline = (0..len)
        .map(|i| TimelinePoint {
            t_s: (i + 1) as f64 * bucket,
            sent_per_s: sends.get(i).map_or(0.0, |p| p.1),
            delivered_per_s: deliveries.get(i).map_or(0.0, |p| p.1),
        })
        .collect();
    Measured {
        connect,
        traffic,
        delivery_latency: total.delivery.summary(),
        ack_latency: total.ack.summary(),
        servers: server_stats,
        client: ClientStats {
            cpu_secs: self_cpu,
            cpu_cores: self_cpu / run_secs,
            rss_kib: procfs::rss_kib(self_pid).unwrap_or(0),
        },
        timeline,
        samples,
        interrupted,
    }
}
