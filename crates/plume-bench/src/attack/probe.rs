//! What an ordinary client sees during an attack: every `--probe-every` seconds a
//! `GET /healthz` (status and latency), then a fresh WebSocket that connects as user
//! `probe` and joins `chat:probe` (time until the join reply, or why it failed).

use std::time::{Duration, Instant};

use plume_wire::Payload;
use serde::Serialize;

use super::http;
use super::periodic::Periodic;
use super::report::Millis;
use super::target::Target;

/// Longest wait for `/healthz`.
const HEALTHZ_WAIT: Duration = Duration::from_secs(3);
/// Longest wait for a WebSocket connect and join.
const JOIN_WAIT: Duration = Duration::from_secs(5);
/// The topic the probe joins.
const PROBE_TOPIC: &str = "chat:probe";

/// One probe.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProbePoint {
    /// Seconds since the attack started.
    pub t_s: f64,
    /// `/healthz`'s status (`None`: no answer within 3 s).
    pub healthz_status: Option<u16>,
    /// Time to its answer (or to giving up), ms.
    pub healthz_ms: f64,
    /// Whether the WebSocket connected and its join was answered `ok` within 5 s.
    pub join_ok: bool,
    /// Time from the TCP connect to the join reply (or to the failure), ms.
    pub join_ms: f64,
    /// Why it failed.
    pub join_error: Option<String>,
}

/// What the probes saw.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ProbeSummary {
    /// Probes made.
    pub probes: usize,
    /// `/healthz` answered 200.
    pub healthz_ok: usize,
    /// Its latency over the probes that got an answer.
    pub healthz: Option<Millis>,
    /// The WebSocket connected and joined.
    pub join_ok: usize,
    /// Connect + join latency over the successful ones.
    pub join: Option<Millis>,
    /// The first failure of either, with its time.
    pub first_failure: Option<String>,
    /// Every probe, in order.
    pub points: Vec<ProbePoint>,
}

/// Summarises the probes.
pub fn summarize(points: Vec<ProbePoint>) -> ProbeSummary {
    let healthz: Vec<f64> = points
        .iter()
        .filter(|p| p.healthz_status.is_some())
        .map(|p| p.healthz_ms)
        .collect();
    let joins: Vec<f64> = points
        .iter()
        .filter(|p| p.join_ok)
        .map(|p| p.join_ms)
        .collect();
    let first_failure = points.iter().find_map(|p| {
        if p.healthz_status != Some(200) {
            Some(match p.healthz_status {
                Some(s) => format!("{:.1} s: /healthz answered {s}", p.t_s),
                None => format!("{:.1} s: /healthz did not answer in 3 s", p.t_s),
            })
        } else if !p.join_ok {
            Some(format!(
                "{:.1} s: join failed: {}",
                p.t_s,
                p.join_error.as_deref().unwrap_or("?")
            ))
        } else {
            None
        }
    });
    ProbeSummary {
        probes: points.len(),
        healthz_ok: points
            .iter()
            .filter(|p| p.healthz_status == Some(200))
            .count(),
        healthz: Millis::of(healthz),
        join_ok: joins.len(),
        join: Millis::of(joins),
        first_failure,
        points,
    }
}

async fn probe_once(target: &Target, origin: Instant) -> ProbePoint {
    let t_s = origin.elapsed().as_secs_f64();
    let started = Instant::now();
    let request = http::request("GET", "/healthz", &[], b"");
    let healthz_status = match http::exchange(target.addr(), &request, HEALTHZ_WAIT).await {
        Ok(x) => match x.ending {
            http::Ending::Answered(status) => Some(status),
            _ => None,
        },
        Err(_) => None,
    };
    let healthz_ms = started.elapsed().as_secs_f64() * 1000.0;
    let started = Instant::now();
    let joined = tokio::time::timeout(JOIN_WAIT, async {
        let mut client = target
            .connect("probe", None)
            .await?
            .map_err(|e| anyhow::anyhow!("connect: {e}"))?;
        let (_, reply) = client
            .join(PROBE_TOPIC, &Payload::empty())
            .await
            .map_err(|e| anyhow::anyhow!("join: {e}"))?;
        anyhow::ensure!(
            reply.reply_status().as_deref() == Some("ok"),
            "join refused: {:?}",
            reply.payload
        );
        let _ = client.close().await;
        anyhow::Ok(())
    })
    .await
    .unwrap_or_else(|_| Err(anyhow::anyhow!("no join reply within 5 s")));
    ProbePoint {
        t_s,
        healthz_status,
        healthz_ms,
        join_ok: joined.is_ok(),
        join_ms: started.elapsed().as_secs_f64() * 1000.0,
        join_error: joined.err().map(|e| e.to_string()),
    }
}

/// Probes running in a task of their own.
pub struct Prober(Periodic<ProbePoint>);

impl Prober {
    /// Starts probing every `every`.
    pub fn start(target: Target, origin: Instant, every: Duration) -> Prober {
        Prober(Periodic::start(every, move || {
            let target = target.clone();
            async move { Some(probe_once(&target, origin).await) }
        }))
    }

    /// Stops after the probe in progress and returns every probe.
    pub async fn finish(self) -> Vec<ProbePoint> {
        self.0.finish().await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn point(t_s: f64, healthz: Option<u16>, join_ok: bool) -> ProbePoint {
        ProbePoint {
            t_s,
            healthz_status: healthz,
            healthz_ms: 2.0 * t_s,
            join_ok,
            join_ms: 10.0 * t_s,
            join_error: (!join_ok).then(|| "connect: upgrade refused with HTTP 503".to_owned()),
        }
    }

    #[test]
    fn summary_counts_and_names_the_first_failure() {
        let s = summarize(vec![
            point(1.0, Some(200), true),
            point(2.0, Some(200), false),
            point(3.0, None, true),
            point(4.0, Some(200), true),
        ]);
        assert_eq!((s.probes, s.healthz_ok, s.join_ok), (4, 3, 3));
        // Only answered health checks count in the latency: 2, 4, 8 ms.
        let h = s.healthz.unwrap();
        assert_eq!((h.count, h.max_ms), (3, 8.0));
        assert_eq!(s.join.unwrap().max_ms, 40.0);
        let first = s.first_failure.unwrap();
        assert!(first.starts_with("2.0 s: join failed: connect"), "{first}");
        assert_eq!(summarize(Vec::new()), ProbeSummary::default());
        let clean = summarize(vec![point(1.0, Some(200), true)]);
        assert_eq!(clean.first_failure, None);
    }
}
