//! `plume-bench recovery`: many sockets rejoining at once, each some messages behind.
//!
//! 1. One writer per chat sends `--behind` messages into each of `--chats` chats while nobody
//!    else is joined (what the rejoiners missed).
//! 2. `--connections` sockets (spread evenly over the chats) connect, then all join at once
//!    with `{"last_seq": 0}`: each must get every message of its chat replayed, seq 1 to
//!    `--behind`, exactly once and in order.
//! 3. Reported: time from the first join sent until the last socket has its last message,
//!    the join reply latency, server CPU over that window, the server's peak RSS, and whether
//!    every message arrived exactly once.
//!
//! The server is started by the benchmark (`plume serve`, embedded store in a fresh data dir
//! unless `--server-arg` says otherwise), as for the other scenarios.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use hdrhistogram::Histogram;
use plume_client::{Client, ConnectOptions, Event};
use plume_wire::Payload;
use serde::Serialize;

use crate::procfs;
use crate::spawn::{self, PlumeLaunch};
use crate::token::Signer;

/// `recovery` flags.
#[derive(Args, Debug, Clone)]
pub struct RecoveryArgs {
    /// Sockets rejoining at once.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Chats they are spread over.
    #[arg(long, default_value_t = 1_000)]
    pub chats: usize,
    /// Messages each socket is behind (sent into each chat before the rejoin).
    #[arg(long, default_value_t = 50)]
    pub behind: usize,
    /// The `plume` binary.
    #[arg(long, default_value = "target/release/plume")]
    pub server_bin: std::path::PathBuf,
    /// Extra `plume serve` arguments (repeatable), e.g. `--server-arg=--store=memory`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// Longest the rejoin phase may take, seconds.
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,
    /// Write the result as JSON here.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

/// The result of a run.
#[derive(Debug, Serialize)]
pub struct RecoveryReport {
    /// The command line.
    pub command: String,
    /// Sockets that rejoined.
    pub connections: usize,
    /// Chats.
    pub chats: usize,
    /// Messages each was behind.
    pub behind: usize,
    /// Messages replayed in all (expected: connections x behind).
    pub replayed: u64,
    /// Sockets that got exactly seq 1..=behind, once each, in order.
    pub exact_sockets: usize,
    /// From the first join sent to the last socket's last replayed message.
    pub recovered_all_ms: f64,
    /// Join reply latency.
    pub join_reply_p50_ms: f64,
    /// Join reply latency.
    pub join_reply_p99_ms: f64,
    /// Replayed messages per second over the window.
    pub replayed_per_sec: f64,
    /// Server CPU over the window, seconds.
    pub server_cpu_secs: f64,
    /// Server CPU per replayed message, microseconds.
    pub server_cpu_per_message_us: f64,
    /// The server's peak RSS (VmHWM), MiB.
    pub server_peak_rss_mib: f64,
    /// Time to write the backlog (phase 1), seconds.
    pub backlog_secs: f64,
}

const SECRET: &str = "plume-bench-recovery-secret";

fn json(v: serde_json::Value) -> Payload {
    Payload::json(&v).unwrap_or_else(|_| Payload::empty())
}

async fn connect(url: &str, ip: IpAddr) -> anyhow::Result<Client> {
    let opts = ConnectOptions {
        local_ip: Some(ip),
        ..ConnectOptions::default()
    };
    Client::connect_with(url, opts)
        .await
        .map_err(|e| anyhow::anyhow!("connect: {e}"))
}

/// Runs the scenario.
pub async fn run(args: RecoveryArgs) -> anyhow::Result<()> {
    if args.connections == 0 || args.chats == 0 || args.behind == 0 {
        bail!("--connections, --chats and --behind must be at least 1");
    }
    if args.connections > 100_000 || args.behind > 1_000 {
        bail!("at most 100,000 connections and 1,000 messages behind");
    }
    let _ = procfs::raise_nofile_limit();
    let port = spawn::free_port()?;
    let mut extra = vec![
        "--recovery-limit".to_owned(),
        args.behind.max(1000).to_string(),
    ];
    extra.extend(args.server_args.iter().cloned());
    let launch = PlumeLaunch {
        bin: args.server_bin.clone(),
        jwt_secret: SECRET.to_owned(),
        extra_args: extra,
        rate_limits: false,
    };
    let server = spawn::spawn_plume(&launch, "plume", port, None).await?;
    let pid = server.pid;
    let signer = Signer::hs256(SECRET.as_bytes());
    let base = format!("ws://127.0.0.1:{port}/socket/websocket?vsn=2.0.0&token=");
    let url = |user: &str| -> anyhow::Result<String> {
        Ok(format!("{base}{}", signer.sign(user).context("sign")?))
    };

    // 1. The backlog: writer sockets sending into their chats one after another; each
    //    joins at most 90 chats (a socket may join 100).
    let started = Instant::now();
    let writers = args.chats.div_ceil(90).max(8).min(args.chats);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (url, chats, behind) = (url(&format!("writer{w}"))?, args.chats, args.behind);
        tasks.push(tokio::spawn(async move {
            let mut c = connect(&url, IpAddr::V4(Ipv4Addr::LOCALHOST)).await?;
            for chat in (w..chats).step_by(writers) {
                let topic = format!("chat:rec{chat}");
                let (jr, reply) = c.join(&topic, &json(serde_json::json!({}))).await?;
                anyhow::ensure!(reply.reply_status().as_deref() == Some("ok"), "join {topic}");
                for i in 0..behind {
                    let body = serde_json::json!({"content": format!("m{i}"), "mobile_ref_id": format!("{chat}-{i}")});
                    let r = c.call(&jr, &topic, "send_message", &json(body)).await?;
                    anyhow::ensure!(r.reply_status().as_deref() == Some("ok"), "send");
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let backlog_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "backlog: {} messages in {backlog_secs:.1} s",
        args.chats * args.behind
    );

    // 2. Connect everyone, then join all at once.
    let mut clients = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        // Spread over source addresses so ports never run short.
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, (i / 10_000) as u8 + 1, 1));
        clients.push(connect(&url(&format!("r{i}"))?, ip).await?);
    }
    eprintln!("{} connected; joining", clients.len());
    let cpu0 = procfs::cpu_secs(pid).unwrap_or(0.0);
    let t0 = Instant::now();
    let (behind, chats) = (args.behind as u64, args.chats);
    let mut tasks = Vec::with_capacity(clients.len());
    for (i, mut c) in clients.into_iter().enumerate() {
        let topic = format!("chat:rec{}", i % chats);
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let (_, reply) = c
                .join(&topic, &json(serde_json::json!({"last_seq": 0})))
                .await?;
            let join_ms = sent.elapsed().as_secs_f64() * 1000.0;
            anyhow::ensure!(
                reply.reply_status().as_deref() == Some("ok"),
                "rejoin {topic}"
            );
            let mut seqs = Vec::with_capacity(behind as usize);
            while seqs.len() < behind as usize {
                match c.recv().await? {
                    Event::Message(m) if m.event == "receive_message" => {
                        let v: serde_json::Value = match &m.payload {
                            Payload::Json(j) => j.parse()?,
                            Payload::Binary(_) => serde_json::Value::Null,
                        };
                        seqs.push(v["seq"].as_u64().unwrap_or(0));
                    }
                    Event::Closed { code, reason } => {
                        anyhow::bail!("closed {code:?} {reason}")
                    }
                    _ => {}
                }
            }
            let done = Instant::now();
            let exact = seqs.iter().copied().eq(1..=behind);
            anyhow::Ok((join_ms, done, exact, seqs.len() as u64, c))
        }));
    }
    let deadline = Duration::from_secs_f64(args.timeout);
    let mut joins = Histogram::<u64>::new(3)?;
    let (mut last, mut exact, mut replayed) = (t0, 0, 0);
    let mut keep = Vec::new();
    for t in tasks {
        let (join_ms, done, ok, n, c) = tokio::time::timeout(deadline, t)
            .await
            .context("the rejoin phase timed out")???;
        joins.record((join_ms * 1000.0) as u64)?;
        last = last.max(done);
        exact += usize::from(ok);
        replayed += n;
        keep.push(c);
    }
    let window = last.duration_since(t0).as_secs_f64();
    let cpu = procfs::cpu_secs(pid).unwrap_or(0.0) - cpu0;
    let report = RecoveryReport {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        connections: args.connections,
        chats: args.chats,
        behind: args.behind,
        replayed,
        exact_sockets: exact,
        recovered_all_ms: window * 1000.0,
        join_reply_p50_ms: joins.value_at_quantile(0.5) as f64 / 1000.0,
        join_reply_p99_ms: joins.value_at_quantile(0.99) as f64 / 1000.0,
        replayed_per_sec: replayed as f64 / window.max(1e-9),
        server_cpu_secs: cpu,
        server_cpu_per_message_us: cpu * 1e6 / replayed.max(1) as f64,
        server_peak_rss_mib: procfs::hwm_kib(pid).unwrap_or(0) as f64 / 1024.0,
        backlog_secs,
    };
    drop(keep);
    drop(server);
    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if exact != args.connections {
        bail!(
            "{} of {} sockets did not get exactly seq 1..={}",
            args.connections - exact,
            args.connections,
            args.behind
        );
    }
    Ok(())
}
