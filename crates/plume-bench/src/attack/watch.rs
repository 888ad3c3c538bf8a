//! A bystander: a joined socket that reads everything, sends a heartbeat every second (and,
//! when asked, a chat message at a modest rate), and keeps its delivery and heartbeat
//! latencies apart by phase: baseline (before the attack starts) or attack, decided by when
//! the message or heartbeat was *sent*.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use plume_client::{Client, Event};
use plume_wire::{Payload, Ref};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::reply::{close_label, reply_label};
use super::report::{Counts, Millis, bump};
use crate::stamp;
use crate::stats::Latency;

/// Nanoseconds from `origin` to now.
pub fn ns_since(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// When the measured phases start, in ns after the attack's origin: nothing sent before
/// `measure_from_ns` is recorded (the warm-up: new chats, first store writes, TCP windows),
/// then the baseline runs until `attack_from_ns`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Phases {
    /// The end of the warm-up.
    pub measure_from_ns: u64,
    /// The start of the attack.
    pub attack_from_ns: u64,
}

impl Phases {
    /// Phases for sockets ready at `ready` after the origin: `warmup`, then `baseline`.
    pub fn after(ready: Duration, warmup: Duration, baseline: Duration) -> Phases {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Phases {
            measure_from_ns: ns(ready + warmup),
            attack_from_ns: ns(ready + warmup + baseline),
        }
    }

    /// The start of the attack, after the origin.
    pub fn attack_from(self) -> Duration {
        Duration::from_nanos(self.attack_from_ns)
    }
}

/// Latencies of the two phases.
#[derive(Clone, Debug, Default)]
pub struct Phased {
    /// Sent before the attack.
    pub baseline: Latency,
    /// Sent during the attack.
    pub attack: Latency,
}

impl Phased {
    /// Records one latency by the phase its start (`sent_ns`) fell in; nothing during the
    /// warm-up.
    pub fn record(&mut self, sent_ns: u64, now_ns: u64, phases: Phases) {
        if sent_ns < phases.measure_from_ns {
            return;
        }
        let phase = if sent_ns < phases.attack_from_ns {
            &mut self.baseline
        } else {
            &mut self.attack
        };
        phase.record_ns(now_ns.saturating_sub(sent_ns));
    }

    /// Adds another socket's latencies.
    pub fn merge(&mut self, other: &Phased) {
        self.baseline.merge(&other.baseline);
        self.attack.merge(&other.attack);
    }

    /// The summaries.
    pub fn summary(&self) -> PhasedMillis {
        PhasedMillis {
            baseline: Millis::from_latency(&self.baseline),
            attack: Millis::from_latency(&self.attack),
        }
    }
}

/// Baseline against attack, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PhasedMillis {
    /// Before the attack.
    pub baseline: Option<Millis>,
    /// During it.
    pub attack: Option<Millis>,
}

impl PhasedMillis {
    /// `baseline p50/p99 -> attack p50/p99` for tables.
    pub fn cell(&self) -> String {
        let one = |m: &Option<Millis>| match m {
            Some(m) => format!("{:.1} / {:.1}", m.p50_ms, m.p99_ms),
            None => "none".to_owned(),
        };
        format!("{} -> {} ms", one(&self.baseline), one(&self.attack))
    }
}

/// What one bystander saw.
#[derive(Clone, Debug, Default)]
pub struct Watched {
    /// Stamped deliveries (from other bystanders or broadcasts), by phase.
    pub delivery: Phased,
    /// Heartbeat round trips, by phase.
    pub heartbeat: Phased,
    /// Deliveries of the watched events without a stamp (the attacker's).
    pub unstamped: u64,
    /// Its own sends, by their answer (`sent`, `rate_limited`, ...).
    pub sends: Counts,
    /// How it ended, when the server closed it.
    pub closed: Option<String>,
}

impl Watched {
    /// Adds another bystander's figures (the first close is kept).
    pub fn merge(&mut self, other: &Watched) {
        self.delivery.merge(&other.delivery);
        self.heartbeat.merge(&other.heartbeat);
        self.unstamped += other.unstamped;
        for (k, v) in &other.sends {
            *self.sends.entry(k.clone()).or_default() += v;
        }
        if self.closed.is_none() {
            self.closed.clone_from(&other.closed);
        }
    }
}

/// How a bystander behaves.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Its joined topic and join_ref.
    pub topic: String,
    /// The join_ref of `topic`.
    pub join_ref: Ref,
    /// The events whose deliveries are timed (`receive_message`, a broadcast's event).
    pub event: String,
    /// A chat message every this long, with content of this many bytes, first at `offset`.
    pub send: Option<(Duration, usize)>,
    /// When the first heartbeat and send go out, after the start.
    pub offset: Duration,
    /// Time between heartbeats.
    pub heartbeat: Duration,
    /// The phases.
    pub phases: Phases,
}

#[derive(Serialize)]
struct SendMessage<'a> {
    content: &'a str,
    mobile_ref_id: &'a str,
}

/// Runs a bystander until `stop` (or until the server closes it).
pub async fn watch(
    mut c: Client,
    plan: Plan,
    origin: Instant,
    stop: CancellationToken,
) -> (Watched, Client) {
    let mut w = Watched::default();
    let start = tokio::time::Instant::now() + plan.offset;
    let mut hb = tokio::time::interval_at(start, plan.heartbeat);
    hb.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (every, bytes) = plan.send.unwrap_or((Duration::from_secs(3600), 0));
    let mut send = tokio::time::interval_at(start, every);
    send.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heartbeats: VecDeque<(Ref, u64)> = VecDeque::new();
    let mut seq = 0u64;
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            _ = hb.tick() => {
                let r = c.make_ref();
                heartbeats.push_back((r.clone(), ns_since(origin)));
                if c.send(None, Some(&r), "phoenix", "heartbeat", &Payload::empty()).await.is_err() {
                    w.closed = Some("failed to send a heartbeat".to_owned());
                    break;
                }
            }
            _ = send.tick(), if plan.send.is_some() => {
                seq += 1;
                let now = ns_since(origin);
                let content = stamp::content(seq, now, bytes);
                let mobile_ref_id = stamp::mobile_ref_id(seq, now);
                let payload = Payload::json(&SendMessage { content: &content, mobile_ref_id: &mobile_ref_id })
                    .unwrap_or_else(|_| Payload::empty());
                if c.push(Some(&plan.join_ref), &plan.topic, "send_message", &payload).await.is_err() {
                    w.closed = Some("failed to send a message".to_owned());
                    break;
                }
            }
            ev = c.recv() => match ev {
                Ok(Event::Message(m)) => {
                    let now = ns_since(origin);
                    if m.event == plan.event {
                        match m.payload.as_json().and_then(|j| stamp::extract(j.as_bytes())) {
                            Some(sent) => w.delivery.record(sent, now, plan.phases),
                            None => w.unstamped += 1,
                        }
                    } else if m.event == plume_wire::event::PHX_REPLY && m.topic == "phoenix" {
                        if let Some(pos) = heartbeats.iter().position(|(r, _)| m.ref_.as_ref() == Some(r)) {
                            // Older heartbeats without a reply are dropped with it: replies
                            // come back in order.
                            let sent = heartbeats.drain(..=pos).next_back().map_or(now, |(_, s)| s);
                            w.heartbeat.record(sent, now, plan.phases);
                        }
                    } else if m.event == plume_wire::event::PHX_REPLY && m.topic == plan.topic {
                        bump(&mut w.sends, reply_label(&m));
                    }
                }
                Ok(Event::Closed { code, reason }) => {
                    w.closed = Some(close_label(code, &reason));
                    break;
                }
                Err(e) => {
                    w.closed = Some(format!("read failed: {e}"));
                    break;
                }
            }
        }
    }
    (w, c)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn latencies_go_to_the_phase_they_were_sent_in() {
        let mut p = Phased::default();
        let ms = Duration::from_millis;
        // Ready at 0.5 ms, warm-up until 1 ms, baseline until 5 ms.
        let phases = Phases::after(
            Duration::from_micros(500),
            Duration::from_micros(500),
            ms(4),
        );
        assert_eq!(phases.attack_from(), ms(5));
        // Sent during the warm-up: not recorded.
        p.record(900_000, 2_000_000, phases);
        // Sent at 1 ms: baseline, 2 ms.
        p.record(1_000_000, 3_000_000, phases);
        // Sent at 4.9 ms, arrived during the attack: still baseline.
        p.record(4_900_000, 9_900_000, phases);
        // Sent at 5 ms: attack, 20 ms.
        p.record(5_000_000, 25_000_000, phases);
        let s = p.summary();
        assert_eq!(s.baseline.as_ref().unwrap().count, 2);
        assert_eq!(s.attack.as_ref().unwrap().count, 1);
        assert!((s.attack.as_ref().unwrap().max_ms - 20.0).abs() < 0.1);
        let mut all = Phased::default();
        all.merge(&p);
        all.merge(&p);
        assert_eq!(all.summary().baseline.unwrap().count, 4);
        assert_eq!(PhasedMillis::default().cell(), "none -> none ms".to_owned());
    }

    #[test]
    fn bystanders_merge() {
        let mut a = Watched::default();
        bump(&mut a.sends, "ok");
        a.unstamped = 3;
        let mut b = Watched::default();
        bump(&mut b.sends, "ok");
        bump(&mut b.sends, "rate_limited");
        b.closed = Some("closed 4029".into());
        a.merge(&b);
        assert_eq!(a.unstamped, 3);
        assert_eq!(a.sends.get("ok"), Some(&2));
        assert_eq!(a.sends.get("rate_limited"), Some(&1));
        assert_eq!(a.closed.as_deref(), Some("closed 4029"));
    }
}
