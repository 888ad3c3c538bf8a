//! `attack --kind flood`: one socket (`--flooders`) pushing `send_message` as fast as it can
//! into `chat:flood`, where `--connections` receivers (default 50) are joined, while
//! bystanders chat at a modest rate: `--same-chat-senders` of the receivers, and
//! `--other-chats` chats of `--other-users` users elsewhere, each sending
//! `--bystander-rate` messages a second.
//!
//! Phases, after `--warmup` seconds (default 2) that are not measured: `--baseline`
//! seconds with everyone but the flooder, then `--duration` seconds of flood. A flooder the server closes reconnects after `--reconnect-after` seconds (10 ms
//! by default: what phoenix.js waits after a connection that had opened) and floods again,
//! so the flood lasts the whole phase. Every bystander times the deliveries of the other
//! bystanders' messages and its own heartbeats, by the phase they were sent in.
//!
//! Reported: the flooder's pushes, its answers (`ok`, `rate_limited`, ...) and how each of
//! its connections ended (expected: `closed 4029`); per bystander group, delivery and
//! heartbeat latency p50/p99 in the baseline against the flood, how many were closed
//! (must be 0) and whether any of their sends was refused.

use std::time::Duration;

use clap::Args;
use plume_client::Event;
use plume_wire::Payload;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::Ctx;
use super::reply::{close_label, reply_label};
use super::report::{Check, Counts, Millis, Outcome, bump, counts_cell};
use super::watch::{self, PhasedMillis, Phases, Plan, Watched};

/// flood flags.
#[derive(Args, Debug, Clone)]
pub struct FloodArgs {
    /// flood: flooding sockets.
    #[arg(long, default_value_t = 1)]
    pub flooders: usize,
    /// flood: seconds a closed flooder waits before reconnecting.
    #[arg(long, default_value_t = 0.01)]
    pub reconnect_after: f64,
    /// flood: receivers in the flooded chat that also send, at the bystander rate.
    #[arg(long, default_value_t = 5)]
    pub same_chat_senders: usize,
    /// flood: other chats with bystanders.
    #[arg(long, default_value_t = 5)]
    pub other_chats: usize,
    /// flood: users in each other chat, all sending at the bystander rate.
    #[arg(long, default_value_t = 4)]
    pub other_users: usize,
    /// flood: messages per second of each bystander sender.
    #[arg(long, default_value_t = 2.0)]
    pub bystander_rate: f64,
}

impl FloodArgs {
    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=100).contains(&self.flooders) {
            return Err("--flooders must be in 1..=100".into());
        }
        if !(self.reconnect_after.is_finite() && (0.0..=60.0).contains(&self.reconnect_after)) {
            return Err("--reconnect-after must be in [0, 60] seconds".into());
        }
        if self.other_chats > 1000 || self.other_users > 100 {
            return Err("at most 1000 --other-chats of 100 --other-users".into());
        }
        if !(self.bystander_rate.is_finite()
            && self.bystander_rate > 0.0
            && self.bystander_rate <= 50.0)
        {
            return Err("--bystander-rate must be in (0, 50] (under the push limit)".into());
        }
        Ok(())
    }
}

/// What the flooders did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FlooderFindings {
    /// `send_message` pushes written.
    pub pushes: u64,
    /// Their replies, by label (`ok`, `rate_limited`, ...).
    pub replies: Counts,
    /// Connections opened (and joined) in all.
    pub connections: u64,
    /// How they ended (`closed 4029 rate limited: too many messages`, ...).
    pub closes: Counts,
    /// Connects or joins that failed, by error.
    pub connect_failures: Counts,
    /// Time from a connection's join to its close.
    pub closed_after: Option<Millis>,
    /// Pushes per second over the flood.
    pub pushes_per_sec: f64,
    /// Accepted (`ok`) sends per second over the flood.
    pub accepted_per_sec: f64,
}

impl FlooderFindings {
    fn merge(&mut self, o: FlooderFindings, closed_after: &mut Vec<f64>, mine: Vec<f64>) {
        self.pushes += o.pushes;
        self.connections += o.connections;
        for (from, to) in [
            (o.replies, &mut self.replies),
            (o.closes, &mut self.closes),
            (o.connect_failures, &mut self.connect_failures),
        ] {
            for (k, v) in from {
                *to.entry(k).or_default() += v;
            }
        }
        closed_after.extend(mine);
    }
}

/// One group of bystanders.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Group {
    /// Sockets.
    pub sockets: usize,
    /// Of which sending.
    pub senders: usize,
    /// Delivery latency of the bystanders' messages, baseline against flood.
    pub delivery: PhasedMillis,
    /// Heartbeat round trip, baseline against flood.
    pub heartbeat: PhasedMillis,
    /// Deliveries of the flooder's messages.
    pub flood_deliveries: u64,
    /// Answers to their own sends (`ok`; `rate_limited` would be a bug).
    pub sends: Counts,
    /// Sockets the server closed (must be 0).
    pub closed: u64,
    /// How the first of them ended.
    pub first_close: Option<String>,
}

fn group(sockets: usize, senders: usize, watched: &[Watched]) -> Group {
    let mut all = Watched::default();
    for w in watched {
        all.merge(w);
    }
    Group {
        sockets,
        senders,
        delivery: all.delivery.summary(),
        heartbeat: all.heartbeat.summary(),
        flood_deliveries: all.unstamped,
        sends: all.sends,
        closed: watched.iter().filter(|w| w.closed.is_some()).count() as u64,
        first_close: all.closed,
    }
}

/// The flood figures.
#[derive(Clone, Debug, Serialize)]
pub struct FloodFindings {
    /// Seconds of warm-up before the baseline, not measured.
    pub warmup_s: f64,
    /// Seconds of baseline.
    pub baseline_s: f64,
    /// Seconds of flood.
    pub flood_s: f64,
    /// The flooders.
    pub flooder: FlooderFindings,
    /// The receivers in the flooded chat.
    pub same_chat: Group,
    /// The bystanders in other chats.
    pub other_chats: Group,
}

async fn flooder(ctx: Ctx, k: usize, stop: CancellationToken) -> (FlooderFindings, Vec<f64>) {
    let mut f = FlooderFindings::default();
    let mut closed_after = Vec::new();
    let pause = Duration::from_secs_f64(ctx.args.flood.reconnect_after);
    let mut seq = 0u64;
    'connections: while !stop.is_cancelled() {
        let joined = async {
            let mut c = ctx
                .target
                .connect(&format!("flooder{k}"), None)
                .await?
                .map_err(|e| anyhow::anyhow!("connect: {e}"))?;
            let (join_ref, reply) = c
                .join("chat:flood", &Payload::empty())
                .await
                .map_err(|e| anyhow::anyhow!("join: {e}"))?;
            anyhow::ensure!(
                reply.reply_status().as_deref() == Some("ok"),
                "join refused"
            );
            anyhow::Ok((c, join_ref))
        };
        let (mut c, join_ref) = match joined.await {
            Ok(x) => x,
            Err(e) => {
                bump(&mut f.connect_failures, e.to_string());
                tokio::time::sleep(pause.max(Duration::from_millis(10))).await;
                continue;
            }
        };
        f.connections += 1;
        let opened = std::time::Instant::now();
        let ended = loop {
            if stop.is_cancelled() {
                break 'connections;
            }
            seq += 1;
            let body = serde_json::json!({"content": format!("flood {seq}"), "mobile_ref_id": format!("f{k}-{seq}")});
            let payload = Payload::json(&body).unwrap_or_else(|_| Payload::empty());
            if let Err(e) = c
                .push(Some(&join_ref), "chat:flood", "send_message", &payload)
                .await
            {
                // The server may have closed first: its close frame may still be readable.
                match tokio::time::timeout(Duration::from_millis(500), c.recv()).await {
                    Ok(Ok(Event::Closed { code, reason })) => break close_label(code, &reason),
                    _ => break format!("write failed: {e}"),
                }
            }
            f.pushes += 1;
            // Whatever the server has answered so far, without waiting for more.
            let mut ended = None;
            while ended.is_none() {
                match tokio::time::timeout(Duration::ZERO, c.recv()).await {
                    Err(_) => break,
                    Ok(Ok(Event::Message(m))) => {
                        if m.event == plume_wire::event::PHX_REPLY && m.topic == "chat:flood" {
                            bump(&mut f.replies, reply_label(&m));
                        }
                    }
                    Ok(Ok(Event::Closed { code, reason })) => {
                        ended = Some(close_label(code, &reason))
                    }
                    Ok(Err(e)) => ended = Some(format!("read failed: {e}")),
                }
            }
            if let Some(e) = ended {
                break e;
            }
        };
        closed_after.push(opened.elapsed().as_secs_f64() * 1000.0);
        bump(&mut f.closes, ended);
        drop(c);
        tokio::time::sleep(pause).await;
    }
    (f, closed_after)
}

/// Runs the attack.
pub async fn run(ctx: Ctx) -> anyhow::Result<Outcome<FloodFindings>> {
    let a = ctx.args.flood.clone();
    let receivers = ctx.args.connections();
    let senders_here = a.same_chat_senders.min(receivers);
    let every = Duration::from_secs_f64(1.0 / a.bystander_rate);
    let heartbeat = Duration::from_secs_f64(ctx.args.heartbeat_every);
    // Everyone connects and joins first; the baseline starts when all have.
    let mut sockets = Vec::new();
    let topics: Vec<(String, String, bool)> = (0..receivers)
        .map(|i| (format!("r{i}"), "chat:flood".to_owned(), i < senders_here))
        .chain((0..a.other_chats * a.other_users).map(|i| {
            (
                format!("o{i}"),
                format!("chat:other{}", i / a.other_users.max(1)),
                true,
            )
        }))
        .collect();
    for (user, topic, sends) in &topics {
        let mut c = ctx
            .target
            .connect(user, None)
            .await?
            .map_err(|e| anyhow::anyhow!("{user}: connect: {e}"))?;
        let (join_ref, reply) = c
            .join(topic, &Payload::empty())
            .await
            .map_err(|e| anyhow::anyhow!("{user}: join {topic}: {e}"))?;
        anyhow::ensure!(
            reply.reply_status().as_deref() == Some("ok"),
            "{user}: join {topic} refused: {:?}",
            reply.payload
        );
        sockets.push((c, topic.clone(), join_ref, *sends));
    }
    let phases = Phases::after(
        ctx.origin.elapsed(),
        Duration::from_secs_f64(ctx.args.warmup),
        Duration::from_secs_f64(ctx.args.baseline),
    );
    let attack_from = phases.attack_from();
    let count = sockets.len().max(1) as u32;
    let stop = CancellationToken::new();
    let mut watchers = Vec::new();
    for (i, (c, topic, join_ref, sends)) in sockets.into_iter().enumerate() {
        let plan = Plan {
            topic,
            join_ref,
            event: "receive_message".to_owned(),
            send: sends.then_some((every, 64)),
            // Spread the sends and heartbeats evenly over one interval.
            offset: every.min(heartbeat) / count * i as u32,
            heartbeat,
            phases,
        };
        watchers.push(tokio::spawn(watch::watch(
            c,
            plan,
            ctx.origin,
            stop.clone(),
        )));
    }
    eprintln!(
        "{} bystanders joined; warm-up {:.0} s, baseline {:.0} s, then flood {:.0} s",
        topics.len(),
        ctx.args.warmup,
        ctx.args.baseline,
        ctx.args.duration().as_secs_f64()
    );
    tokio::time::sleep_until((ctx.origin + attack_from).into()).await;
    let flood_stop = CancellationToken::new();
    let flooders: Vec<_> = (0..a.flooders)
        .map(|k| tokio::spawn(flooder(ctx.clone(), k, flood_stop.clone())))
        .collect();
    tokio::time::sleep_until((ctx.origin + attack_from + ctx.args.duration()).into()).await;
    flood_stop.cancel();
    let flood_s = (ctx.origin.elapsed() - attack_from).as_secs_f64();
    let mut f = FlooderFindings::default();
    let mut closed_after = Vec::new();
    for t in flooders {
        let (one, times) = t.await?;
        f.merge(one, &mut closed_after, times);
    }
    f.closed_after = Millis::of(closed_after);
    f.pushes_per_sec = f.pushes as f64 / flood_s.max(1e-9);
    f.accepted_per_sec = f.replies.get("ok").copied().unwrap_or(0) as f64 / flood_s.max(1e-9);
    stop.cancel();
    let mut watched = Vec::new();
    for t in watchers {
        watched.push(t.await?.0);
    }
    let (here, elsewhere) = watched.split_at(receivers);
    let findings = FloodFindings {
        warmup_s: ctx.args.warmup,
        baseline_s: ctx.args.baseline,
        flood_s,
        flooder: f,
        same_chat: group(receivers, senders_here, here),
        other_chats: group(elsewhere.len(), elsewhere.len(), elsewhere),
    };
    Ok(outcome(findings))
}

fn outcome(findings: FloodFindings) -> Outcome<FloodFindings> {
    let f = &findings.flooder;
    let mut rows = vec![
        (
            "flooder: pushes (per s) / accepted per s".to_owned(),
            format!(
                "{} ({:.0}/s) / {:.0}/s",
                f.pushes, f.pushes_per_sec, f.accepted_per_sec
            ),
        ),
        ("flooder: replies".to_owned(), counts_cell(&f.replies)),
        (
            "flooder: connections, closed after p50 / max".to_owned(),
            format!(
                "{}, {}",
                f.connections,
                f.closed_after
                    .as_ref()
                    .map_or("n/a".to_owned(), |m| format!(
                        "{:.0} / {:.0} ms",
                        m.p50_ms, m.max_ms
                    ))
            ),
        ),
        ("flooder: endings".to_owned(), counts_cell(&f.closes)),
    ];
    let mut checks = vec![
        Check::new(
            "the flooder got rate_limited replies before its close",
            f.replies.get("rate_limited").is_some_and(|&n| n > 0),
            counts_cell(&f.replies),
        ),
        Check::new(
            "the flooder was closed with 4029",
            f.closes.keys().any(|k| k.starts_with("closed 4029")),
            counts_cell(&f.closes),
        ),
    ];
    for (name, g) in [
        ("same chat", &findings.same_chat),
        ("other chats", &findings.other_chats),
    ] {
        rows.push((
            format!("{name}: delivery p50 / p99, baseline -> flood"),
            g.delivery.cell(),
        ));
        rows.push((
            format!("{name}: heartbeat p50 / p99, baseline -> flood"),
            g.heartbeat.cell(),
        ));
        rows.push((
            format!("{name}: flood deliveries / closed / sends"),
            format!(
                "{} / {} of {} / {}",
                g.flood_deliveries,
                g.closed,
                g.sockets,
                counts_cell(&g.sends)
            ),
        ));
        checks.push(Check::new(
            &format!("{name}: no bystander was closed"),
            g.closed == 0,
            g.first_close.clone().unwrap_or_else(|| "none".to_owned()),
        ));
        checks.push(Check::new(
            &format!("{name}: no bystander send was refused"),
            g.sends.keys().all(|k| k == "ok"),
            counts_cell(&g.sends),
        ));
    }
    Outcome {
        findings,
        rows,
        checks,
    }
}
