//! `attack --kind stalled-reader`: big broadcasts (`--broadcast-bytes`, default 256 KiB,
//! through `POST /api/broadcast`, `--broadcast-rate` a second) into `chat:stall`, where
//! `--connections` readers (default 20) read everything.
//!
//! Phases, after `--warmup` seconds (default 2) that are not measured: `--baseline`
//! seconds with the readers alone, then `--duration` seconds (default 8) in which `--stalled` sockets (default 10) join and then stop reading. At the end of
//! the attack they read again, until the server's close frame arrives or 5 s pass without a
//! frame. The attack is shorter than the server's write timeout (10 s) on purpose: a socket
//! whose queue overflowed gets that long for its close frame to go out behind what its
//! stream already holds, so the stalled sockets still read the code they were closed with.
//!
//! Reported: the broadcasts' answers and API latency, the readers' delivery and heartbeat
//! latency in the baseline against the stall, how the stalled sockets ended (expected: 4008,
//! `outbound queue overflow`), and, in the footprint, the server's peak RSS.

use std::time::Duration;

use clap::Args;
use plume_client::{Client, Event};
use plume_wire::Payload;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::Ctx;
use super::http::{self, Ending};
use super::reply::close_label;
use super::report::{Check, Counts, Outcome, bump, counts_cell};
use super::watch::{self, Phased, PhasedMillis, Phases, Plan, Watched, ns_since};

/// stalled-reader flags.
#[derive(Args, Debug, Clone)]
pub struct StalledArgs {
    /// stalled-reader: sockets that stop reading during the attack.
    #[arg(long, default_value_t = 10)]
    pub stalled: usize,
    /// stalled-reader: bytes of each broadcast's payload.
    #[arg(long, default_value_t = 256 * 1024)]
    pub broadcast_bytes: usize,
    /// stalled-reader: broadcasts per second.
    #[arg(long, default_value_t = 8.0)]
    pub broadcast_rate: f64,
}

impl StalledArgs {
    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=10_000).contains(&self.stalled) {
            return Err("--stalled must be in 1..=10000".into());
        }
        // The API refuses bodies over 1 MiB.
        if !(64..=1_000_000).contains(&self.broadcast_bytes) {
            return Err("--broadcast-bytes must be in 64..=1000000".into());
        }
        if !(self.broadcast_rate.is_finite()
            && self.broadcast_rate > 0.0
            && self.broadcast_rate <= 1000.0)
        {
            return Err("--broadcast-rate must be in (0, 1000]".into());
        }
        Ok(())
    }
}

/// The readers.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Readers {
    /// Sockets.
    pub sockets: usize,
    /// Broadcast delivery latency, baseline against stall.
    pub delivery: PhasedMillis,
    /// Heartbeat round trip, baseline against stall.
    pub heartbeat: PhasedMillis,
    /// Readers the server closed (expected: none).
    pub closed: u64,
    /// How the first of them ended.
    pub first_close: Option<String>,
}

/// The stalled sockets.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stalled {
    /// Sockets.
    pub sockets: usize,
    /// How each ended once it read again (`closed 4008 outbound queue overflow: …`).
    pub endings: Counts,
    /// Frames read after the stall, before the close.
    pub frames_after_stall: u64,
}

/// The stalled-reader figures.
#[derive(Clone, Debug, Serialize)]
pub struct StalledFindings {
    /// Bytes of each broadcast payload.
    pub broadcast_bytes: usize,
    /// Broadcasts per second.
    pub broadcast_rate: f64,
    /// Seconds of warm-up before the baseline, not measured.
    pub warmup_s: f64,
    /// Seconds of baseline.
    pub baseline_s: f64,
    /// Seconds of stall.
    pub stall_s: f64,
    /// The API's answers to the broadcasts.
    pub broadcasts: Counts,
    /// `POST /api/broadcast` latency, baseline against stall.
    pub api: PhasedMillis,
    /// The readers.
    pub readers: Readers,
    /// The stalled sockets.
    pub stalled: Stalled,
}

/// The body of one broadcast: the stamp first, so a receiver finds it at once.
fn broadcast_body(stamp_ns: u64, bytes: usize) -> Vec<u8> {
    let mut body = format!(
        r#"{{"topic":"chat:stall","event":"big","payload":{{"ts":"@ts:{stamp_ns}","data":""#
    )
    .into_bytes();
    body.resize(body.len() + bytes, b'x');
    body.extend_from_slice(br#""}}"#);
    body
}

async fn broadcaster(ctx: Ctx, phases: Phases, stop: CancellationToken) -> (Counts, Phased) {
    let a = &ctx.args.stalled;
    let auth = format!("Bearer {}", ctx.target.api_key);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / a.broadcast_rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut answers, mut latency) = (Counts::new(), Phased::default());
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let sent = ns_since(ctx.origin);
        let body = broadcast_body(sent, a.broadcast_bytes);
        let request = http::request(
            "POST",
            "/api/broadcast",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            &body,
        );
        let label = match http::exchange(ctx.target.addr(), &request, Duration::from_secs(10)).await
        {
            Ok(x) => match x.ending {
                Ending::Answered(status) => status.to_string(),
                other => other.label(),
            },
            Err(e) => format!("failed: {e}"),
        };
        latency.record(sent, ns_since(ctx.origin), phases);
        bump(&mut answers, label);
    }
    (answers, latency)
}

/// Reads a stalled socket again until its close (or 5 s of silence).
async fn resume(mut c: Client) -> (String, u64) {
    let mut frames = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), c.recv()).await {
            Err(_) => return ("not closed (5 s without a frame)".to_owned(), frames),
            Ok(Ok(Event::Message(_))) => frames += 1,
            Ok(Ok(Event::Closed { code, reason })) => return (close_label(code, &reason), frames),
            Ok(Err(e)) => return (format!("read failed: {e}"), frames),
        }
    }
}

/// Runs the attack.
pub async fn run(ctx: Ctx) -> anyhow::Result<Outcome<StalledFindings>> {
    let a = ctx.args.stalled.clone();
    let n = ctx.args.connections();
    let mut readers = Vec::new();
    for i in 0..n {
        let mut c = ctx
            .target
            .connect(&format!("h{i}"), None)
            .await?
            .map_err(|e| anyhow::anyhow!("reader {i}: connect: {e}"))?;
        let (join_ref, reply) = c
            .join("chat:stall", &Payload::empty())
            .await
            .map_err(|e| anyhow::anyhow!("reader {i}: join: {e}"))?;
        anyhow::ensure!(
            reply.reply_status().as_deref() == Some("ok"),
            "reader {i}: join refused"
        );
        readers.push((c, join_ref));
    }
    let phases = Phases::after(
        ctx.origin.elapsed(),
        Duration::from_secs_f64(ctx.args.warmup),
        Duration::from_secs_f64(ctx.args.baseline),
    );
    let attack_from = phases.attack_from();
    let heartbeat = Duration::from_secs_f64(ctx.args.heartbeat_every);
    let stop = CancellationToken::new();
    let watchers: Vec<_> = readers
        .into_iter()
        .enumerate()
        .map(|(i, (c, join_ref))| {
            let plan = Plan {
                topic: "chat:stall".to_owned(),
                join_ref,
                event: "big".to_owned(),
                send: None,
                offset: heartbeat / n.max(1) as u32 * i as u32,
                heartbeat,
                phases,
            };
            tokio::spawn(watch::watch(c, plan, ctx.origin, stop.clone()))
        })
        .collect();
    let broadcast_stop = CancellationToken::new();
    let broadcasts = tokio::spawn(broadcaster(ctx.clone(), phases, broadcast_stop.clone()));
    eprintln!(
        "{n} readers joined; warm-up {:.0} s, baseline {:.0} s, then {} stalled sockets for {:.0} s",
        ctx.args.warmup,
        ctx.args.baseline,
        a.stalled,
        ctx.args.duration().as_secs_f64()
    );
    tokio::time::sleep_until((ctx.origin + attack_from).into()).await;
    let mut stalled = Vec::new();
    for i in 0..a.stalled {
        let mut c = ctx
            .target
            .connect(&format!("s{i}"), None)
            .await?
            .map_err(|e| anyhow::anyhow!("stalled {i}: connect: {e}"))?;
        let (_, reply) = c
            .join("chat:stall", &Payload::empty())
            .await
            .map_err(|e| anyhow::anyhow!("stalled {i}: join: {e}"))?;
        anyhow::ensure!(
            reply.reply_status().as_deref() == Some("ok"),
            "stalled {i}: join refused"
        );
        // From here on nothing reads it.
        stalled.push(c);
    }
    let end = ctx.origin + attack_from + ctx.args.duration();
    tokio::time::sleep_until(end.into()).await;
    broadcast_stop.cancel();
    let stall_s = (ctx.origin.elapsed() - attack_from).as_secs_f64();
    let resumed: Vec<_> = stalled
        .into_iter()
        .map(|c| tokio::spawn(resume(c)))
        .collect();
    let (answers, api) = broadcasts.await?;
    let mut s = Stalled {
        sockets: a.stalled,
        ..Stalled::default()
    };
    for r in resumed {
        let (ending, frames) = r.await?;
        bump(&mut s.endings, ending);
        s.frames_after_stall += frames;
    }
    stop.cancel();
    let mut all = Watched::default();
    let mut closed = 0;
    for w in watchers {
        let (w, _) = w.await?;
        closed += u64::from(w.closed.is_some());
        all.merge(&w);
    }
    let findings = StalledFindings {
        broadcast_bytes: a.broadcast_bytes,
        broadcast_rate: a.broadcast_rate,
        warmup_s: ctx.args.warmup,
        baseline_s: ctx.args.baseline,
        stall_s,
        broadcasts: answers,
        api: api.summary(),
        readers: Readers {
            sockets: n,
            delivery: all.delivery.summary(),
            heartbeat: all.heartbeat.summary(),
            closed,
            first_close: all.closed,
        },
        stalled: s,
    };
    let r = &findings.readers;
    let rows = vec![
        (
            "broadcasts: answers".to_owned(),
            counts_cell(&findings.broadcasts),
        ),
        (
            "broadcast API p50 / p99, baseline -> stall".to_owned(),
            findings.api.cell(),
        ),
        (
            "readers: delivery p50 / p99, baseline -> stall".to_owned(),
            r.delivery.cell(),
        ),
        (
            "readers: heartbeat p50 / p99, baseline -> stall".to_owned(),
            r.heartbeat.cell(),
        ),
        (
            "readers closed".to_owned(),
            format!("{} of {}", r.closed, r.sockets),
        ),
        (
            "stalled: endings".to_owned(),
            counts_cell(&findings.stalled.endings),
        ),
        (
            "stalled: frames read after the stall".to_owned(),
            findings.stalled.frames_after_stall.to_string(),
        ),
    ];
    let overflowed = findings
        .stalled
        .endings
        .iter()
        .filter(|(k, _)| k.starts_with("closed 4008"))
        .map(|(_, v)| v)
        .sum::<u64>();
    let checks = vec![
        Check::new(
            "every broadcast was accepted (202)",
            findings.broadcasts.keys().all(|k| k == "202"),
            counts_cell(&findings.broadcasts),
        ),
        Check::new(
            "every stalled socket was closed with 4008",
            overflowed == a.stalled as u64,
            counts_cell(&findings.stalled.endings),
        ),
        Check::new(
            "no reader was closed",
            r.closed == 0,
            r.first_close.clone().unwrap_or_else(|| "none".to_owned()),
        ),
    ];
    Ok(Outcome {
        findings,
        rows,
        checks,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_bodies_carry_the_stamp_first() {
        let body = broadcast_body(42, 1000);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["topic"], "chat:stall");
        assert_eq!(v["payload"]["data"].as_str().unwrap().len(), 1000);
        assert_eq!(crate::stamp::extract(&body), Some(42));
    }
}
