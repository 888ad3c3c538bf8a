//! `plume-bench presence`: a presence join storm.
//!
//! 1. `--connections` sockets connect (user `p{i}`, one socket each).
//! 2. They join one chat, spread evenly over `--join-over` seconds. Each keeps what the
//!    phoenix.js `Presence` helper would list: the keys of its `presence_state`, then the
//!    joins and leaves of every `presence_diff` (a diff that comes before the state is kept
//!    and applied after it, as the helper does).
//! 3. Reported: time from the first join until every socket's list holds all
//!    `--connections` users, presence frames and payload bytes received in all (state and
//!    diffs apart), the server's CPU over the window and its peak CPU use (sampled every
//!    250 ms), and its peak RSS.
//!
//! The server is started by the benchmark with open membership (anyone may join) and the
//! in-memory store, so what is measured is presence, not membership writes; `--server-arg`
//! adds to it (for example `--server-arg=--presence-interval=0.5`). With `--nodes 2` it
//! starts a `redis-server` and two nodes sharing presence through it, and socket `i` connects
//! to node `i % nodes`: every joiner's state then holds users of both nodes, and every diff
//! crosses Redis. CPU and RSS are reported per node, with Redis's CPU.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use plume_client::{Client, ConnectOptions, Event};
use plume_wire::Payload;
use serde::{Deserialize, Serialize};

use crate::procfs;
use crate::spawn::{self, PlumeLaunch};
use crate::token::Signer;

/// `presence` flags.
#[derive(Args, Debug, Clone)]
pub struct PresenceArgs {
    /// Sockets joining the chat.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// The joins are spread evenly over this many seconds.
    #[arg(long, default_value_t = 10.0)]
    pub join_over: f64,
    /// The `plume` binary.
    #[arg(long, default_value = "target/release/plume")]
    pub server_bin: std::path::PathBuf,
    /// Extra `plume serve` arguments (repeatable).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// Plume nodes (1 or 2); more than one share presence through a Redis the run starts.
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// redis-server to start when `--nodes` is above 1 (free port, no persistence).
    #[arg(long, default_value = "/usr/bin/redis-server")]
    pub redis_bin: std::path::PathBuf,
    /// Longest the run may take after the first join, seconds.
    #[arg(long, default_value_t = 300.0)]
    pub timeout: f64,
    /// Write the result as JSON here.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

/// The result of a run.
#[derive(Debug, Serialize)]
pub struct PresenceReport {
    /// The command line.
    pub command: String,
    /// Sockets that joined.
    pub connections: usize,
    /// Seconds the joins were spread over.
    pub join_over_secs: f64,
    /// From the first join sent until every socket listed everyone.
    pub all_listed_ms: f64,
    /// From the last join sent until every socket listed everyone.
    pub after_last_join_ms: f64,
    /// `presence_state` frames received (one per join).
    pub state_frames: u64,
    /// Their payload bytes.
    pub state_bytes: u64,
    /// `presence_diff` frames received.
    pub diff_frames: u64,
    /// Their payload bytes.
    pub diff_bytes: u64,
    /// Plume nodes the sockets were spread over.
    pub nodes: usize,
    /// Server CPU over the window, seconds (all nodes together).
    pub server_cpu_secs: f64,
    /// Each node's CPU over the window, seconds.
    pub node_cpu_secs: Vec<f64>,
    /// Highest server CPU use in a 250 ms sample, in cores (2.0 = two cores busy; all nodes
    /// together).
    pub server_peak_cpu_cores: f64,
    /// The server's peak RSS (VmHWM), MiB (the largest node's).
    pub server_peak_rss_mib: f64,
    /// Each node's peak RSS, MiB.
    pub node_peak_rss_mib: Vec<f64>,
    /// Redis's CPU over the window, seconds (with more than one node).
    pub redis_cpu_secs: Option<f64>,
}

const SECRET: &str = "plume-bench-presence-secret";
const TOPIC: &str = "chat:storm";

/// A presence map's keys, borrowed from the frame (the metas are not looked at: one socket
/// per user).
type Keys<'a> = BTreeMap<&'a str, serde::de::IgnoredAny>;

#[derive(Deserialize)]
struct Diff<'a> {
    #[serde(borrow)]
    joins: Keys<'a>,
    #[serde(borrow)]
    leaves: Keys<'a>,
}

/// Which users a socket lists, by index (`p{i}`): what the phoenix.js helper's `list` holds.
struct Listed {
    users: Vec<bool>,
    count: usize,
}

impl Listed {
    fn set(&mut self, key: &str, on: bool) {
        let Some(i) = key.strip_prefix('p').and_then(|i| i.parse::<usize>().ok()) else {
            return;
        };
        if let Some(slot) = self.users.get_mut(i)
            && *slot != on
        {
            *slot = on;
            if on {
                self.count += 1;
            } else {
                self.count -= 1;
            }
        }
    }
}

#[derive(Default)]
struct Counters {
    state_frames: AtomicU64,
    state_bytes: AtomicU64,
    diff_frames: AtomicU64,
    diff_bytes: AtomicU64,
}

fn payload_bytes(p: &Payload) -> &[u8] {
    match p {
        Payload::Json(j) => j.as_bytes(),
        Payload::Binary(b) => b,
    }
}

/// Runs the scenario.
pub async fn run(args: PresenceArgs) -> anyhow::Result<()> {
    if args.connections == 0 || args.connections > 100_000 {
        bail!("--connections must be from 1 to 100,000");
    }
    if !(0.0..=600.0).contains(&args.join_over) {
        bail!("--join-over must be from 0 to 600 seconds");
    }
    if !(1..=2).contains(&args.nodes) {
        bail!("--nodes must be 1 or 2");
    }
    let _ = procfs::raise_nofile_limit();
    // The launcher already opens membership.
    let mut extra = vec!["--store".to_owned(), "memory".to_owned()];
    // The storm measures presence itself, so the chat is tracked however big it gets, unless
    // a --server-arg sets the limit.
    if !args
        .server_args
        .iter()
        .any(|a| a.starts_with("--presence-max-members"))
    {
        extra.push(format!("--presence-max-members={}", args.connections));
    }
    extra.extend(args.server_args.iter().cloned());
    let launch = PlumeLaunch {
        bin: args.server_bin.clone(),
        jwt_secret: SECRET.to_owned(),
        extra_args: extra,
        rate_limits: false,
    };
    let redis = if args.nodes > 1 {
        let port = spawn::free_port()?;
        let proc_ = spawn::spawn_redis(&args.redis_bin, port).await?;
        Some((proc_, format!("redis://127.0.0.1:{port}/0")))
    } else {
        None
    };
    let mut servers = Vec::with_capacity(args.nodes);
    let mut ports = Vec::with_capacity(args.nodes);
    for node in 0..args.nodes {
        let port = spawn::free_port()?;
        let name = format!("plume-n{}", node + 1);
        let node_id = format!("storm-n{}", node + 1);
        let shared = redis
            .as_ref()
            .map(|(_, url)| (url.as_str(), node_id.as_str()));
        servers.push(spawn::spawn_plume(&launch, &name, port, shared).await?);
        ports.push(port);
    }
    let pids: Vec<u32> = servers.iter().map(|s| s.pid).collect();
    let redis_pid = redis.as_ref().map(|(p, _)| p.pid);
    let signer = Signer::hs256(SECRET.as_bytes());

    let mut clients = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let user = format!("p{i}");
        let url = format!(
            "ws://127.0.0.1:{}/socket/websocket?vsn=2.0.0&device_unique_id=d{i}&token={}",
            ports[i % ports.len()],
            signer.sign(&user).context("sign")?
        );
        // Spread over source addresses so ports never run short.
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, (i / 10_000) as u8 + 1, 1));
        let opts = ConnectOptions {
            local_ip: Some(ip),
            ..ConnectOptions::default()
        };
        clients.push(
            Client::connect_with(&url, opts)
                .await
                .map_err(|e| anyhow::anyhow!("connect {i}: {e}"))?,
        );
    }
    eprintln!(
        "{} connected; joining over {} s",
        clients.len(),
        args.join_over
    );

    let counters = Arc::new(Counters::default());
    let n = args.connections;
    let step = Duration::from_secs_f64(args.join_over / n as f64);
    let cpu_of = |pid: u32| procfs::cpu_secs(pid).unwrap_or(0.0);
    let cpu0: Vec<f64> = pids.iter().map(|&p| cpu_of(p)).collect();
    let redis_cpu0 = redis_pid.map(cpu_of);
    let t0 = Instant::now();
    let sampled = pids.clone();
    let sampler = tokio::spawn(async move {
        let total = move || sampled.iter().map(|&p| cpu_of(p)).sum::<f64>();
        let mut peak: f64 = 0.0;
        let mut last = (Instant::now(), total());
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = (Instant::now(), total());
            let dt = now.0.duration_since(last.0).as_secs_f64();
            if dt > 0.0 {
                peak = peak.max((now.1 - last.1) / dt);
            }
            last = now;
            // The task is aborted at the end; the peak so far is read from PEAK.
            PEAK.store(peak.to_bits(), Ordering::Relaxed);
        }
    });
    // What each socket lists, shared so that a run that times out can say who is missing.
    let lists: Arc<Vec<std::sync::Mutex<Listed>>> = Arc::new(
        (0..n)
            .map(|_| {
                std::sync::Mutex::new(Listed {
                    users: vec![false; n],
                    count: 0,
                })
            })
            .collect(),
    );
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        let counters = counters.clone();
        let lists = lists.clone();
        let at = t0 + step * i as u32;
        tasks.spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            // Joined by hand: on this loaded machine the reply may take longer than the
            // client's own join timeout, and that is part of what is measured.
            let r = c.make_ref();
            c.send(Some(&r), Some(&r), TOPIC, "phx_join", &Payload::empty())
                .await?;
            // Diffs that arrive before the first presence_state (possible in a cluster: the
            // state is read from Redis while this node's own diffs are dispatched at once)
            // wait for it, as the phoenix.js helper keeps them in `pendingDiffs`.
            let mut waiting: Option<Vec<(Vec<String>, Vec<String>)>> = Some(Vec::new());
            loop {
                if lists[i].lock().map_or(true, |l| l.count >= n) {
                    break;
                }
                match c.recv().await? {
                    Event::Message(m) if m.event == "phx_reply" => {
                        anyhow::ensure!(
                            m.reply_status().as_deref() == Some("ok"),
                            "join {i}: {:?}",
                            m.payload
                        );
                    }
                    Event::Message(m) if m.event == "presence_state" => {
                        let bytes = payload_bytes(&m.payload);
                        counters.state_frames.fetch_add(1, Ordering::Relaxed);
                        counters
                            .state_bytes
                            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                        let keys: Keys<'_> = serde_json::from_slice(bytes)?;
                        let mut known = lists[i].lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                        known.users.fill(false);
                        known.count = 0;
                        for k in keys.into_keys() {
                            known.set(k, true);
                        }
                        // As the helper does: the diffs that came before the state, on top.
                        for (joins, leaves) in waiting.take().unwrap_or_default() {
                            for k in &joins {
                                known.set(k, true);
                            }
                            for k in &leaves {
                                known.set(k, false);
                            }
                        }
                    }
                    Event::Message(m) if m.event == "presence_diff" => {
                        let bytes = payload_bytes(&m.payload);
                        counters.diff_frames.fetch_add(1, Ordering::Relaxed);
                        counters
                            .diff_bytes
                            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                        let diff: Diff<'_> = serde_json::from_slice(bytes)?;
                        if let Some(waiting) = waiting.as_mut() {
                            waiting.push((
                                diff.joins.into_keys().map(str::to_owned).collect(),
                                diff.leaves.into_keys().map(str::to_owned).collect(),
                            ));
                            continue;
                        }
                        let mut known = lists[i].lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                        for k in diff.joins.into_keys() {
                            known.set(k, true);
                        }
                        for k in diff.leaves.into_keys() {
                            known.set(k, false);
                        }
                    }
                    Event::Closed { code, reason } => {
                        let knew = lists[i].lock().map_or(0, |l| l.count);
                        anyhow::bail!("socket {i} closed {code:?} {reason} knowing {knew}")
                    }
                    _ => {}
                }
            }
            anyhow::Ok((Instant::now(), c))
        });
    }
    // In completion order, so that one socket failing (closed as a slow consumer, say)
    // stops the run at once: the others would wait for its user forever.
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(args.timeout);
    let mut last = t0;
    let mut keep = Vec::with_capacity(n);
    while let Some(joined) = tokio::time::timeout_at(deadline, tasks.join_next())
        .await
        .with_context(|| {
            format!(
                "the storm timed out with {} sockets done; {}",
                keep.len(),
                missing(&lists, args.nodes)
            )
        })?
    {
        let (done, c) = joined??;
        last = last.max(done);
        keep.push(c);
    }
    sampler.abort();
    let window = last.duration_since(t0).as_secs_f64();
    let node_cpu: Vec<f64> = pids
        .iter()
        .zip(&cpu0)
        .map(|(&p, before)| cpu_of(p) - before)
        .collect();
    let node_rss: Vec<f64> = pids
        .iter()
        .map(|&p| procfs::hwm_kib(p).unwrap_or(0) as f64 / 1024.0)
        .collect();
    let redis_cpu = redis_pid
        .zip(redis_cpu0)
        .map(|(p, before)| cpu_of(p) - before);
    let last_join = step.as_secs_f64() * (n - 1) as f64;
    let report = PresenceReport {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        connections: n,
        join_over_secs: args.join_over,
        all_listed_ms: window * 1000.0,
        after_last_join_ms: (window - last_join).max(0.0) * 1000.0,
        state_frames: counters.state_frames.load(Ordering::Relaxed),
        state_bytes: counters.state_bytes.load(Ordering::Relaxed),
        diff_frames: counters.diff_frames.load(Ordering::Relaxed),
        diff_bytes: counters.diff_bytes.load(Ordering::Relaxed),
        nodes: args.nodes,
        server_cpu_secs: node_cpu.iter().sum(),
        node_cpu_secs: node_cpu,
        server_peak_cpu_cores: f64::from_bits(PEAK.load(Ordering::Relaxed)),
        server_peak_rss_mib: node_rss.iter().copied().fold(0.0, f64::max),
        node_peak_rss_mib: node_rss,
        redis_cpu_secs: redis_cpu,
    };
    drop(keep);
    drop(servers);
    drop(redis);
    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Which sockets do not list everyone yet, and whom they miss (the first few of each), for a
/// run that timed out.
fn missing(lists: &[std::sync::Mutex<Listed>], nodes: usize) -> String {
    let mut unfinished = 0;
    let mut shown = Vec::new();
    for (i, list) in lists.iter().enumerate() {
        let Ok(list) = list.lock() else { continue };
        if list.count >= list.users.len() {
            continue;
        }
        unfinished += 1;
        if shown.len() < 8 {
            let absent: Vec<String> = list
                .users
                .iter()
                .enumerate()
                .filter(|(_, on)| !**on)
                .take(6)
                .map(|(u, _)| format!("p{u} (node {})", u % nodes + 1))
                .collect();
            shown.push(format!(
                "p{i} (node {}) lists {} of {}, missing {}",
                i % nodes + 1,
                list.count,
                list.users.len(),
                absent.join(", ")
            ));
        }
    }
    format!("{unfinished} do not list everyone: {}", shown.join("; "))
}

/// The sampler's peak CPU use (f64 bits).
static PEAK: AtomicU64 = AtomicU64::new(0);
