//! The result of one attack: what every kind reports (server memory and descriptors over
//! time, the probes, the load average, the checks) around the kind's own findings, written
//! as JSON and printed as a table.

use std::collections::BTreeMap;

use comfy_table::{Cell, CellAlignment, Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;

use super::Kind;
use super::probe::ProbeSummary;
use super::sampler::Sample;
use super::target::ServerInfo;
use crate::procfs::Machine;
use crate::stats::Latency;

/// A small latency summary in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Millis {
    /// Values summarised.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

/// The nearest-rank percentile (0-100) of sorted values.
pub fn nearest_rank(sorted: &[f64], pct: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Millis {
    /// Summarises values given in milliseconds (`None` for none).
    pub fn of(mut values: Vec<f64>) -> Option<Millis> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        Some(Millis {
            count: values.len() as u64,
            p50_ms: nearest_rank(&values, 50.0),
            p99_ms: nearest_rank(&values, 99.0),
            max_ms: nearest_rank(&values, 100.0),
        })
    }

    /// Summarises an HDR histogram (microseconds).
    pub fn from_latency(l: &Latency) -> Option<Millis> {
        (!l.is_empty()).then(|| Millis {
            count: l.len(),
            p50_ms: l.percentile_us(50.0) as f64 / 1000.0,
            p99_ms: l.percentile_us(99.0) as f64 / 1000.0,
            max_ms: l.percentile_us(100.0) as f64 / 1000.0,
        })
    }

    /// `p50 / p99 / max` for tables.
    pub fn cell(m: &Option<Millis>) -> String {
        match m {
            Some(m) => format!("{:.1} / {:.1} / {:.1} ms", m.p50_ms, m.p99_ms, m.max_ms),
            None => "none".to_owned(),
        }
    }
}

/// Counts by label (statuses, reasons, close codes).
pub type Counts = BTreeMap<String, u64>;

/// Adds one to `label`.
pub fn bump(counts: &mut Counts, label: impl Into<String>) {
    *counts.entry(label.into()).or_default() += 1;
}

/// Counts as `a: 3, b: 1` for tables.
pub fn counts_cell(counts: &Counts) -> String {
    if counts.is_empty() {
        return "none".to_owned();
    }
    counts
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One expectation of the attack and whether the server met it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Check {
    /// What is expected.
    pub name: String,
    /// Whether it held.
    pub ok: bool,
    /// What was seen.
    pub detail: String,
}

impl Check {
    /// A check.
    pub fn new(name: &str, ok: bool, detail: impl Into<String>) -> Check {
        Check {
            name: name.to_owned(),
            ok,
            detail: detail.into(),
        }
    }
}

/// Server memory and descriptors around the attack.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Footprint {
    /// `VmRSS` before the attack, KiB.
    pub idle_rss_kib: Option<u64>,
    /// The highest sampled `VmRSS` during the attack, KiB.
    pub peak_rss_kib: Option<u64>,
    /// `VmRSS` after the attack, KiB.
    pub end_rss_kib: Option<u64>,
    /// `VmHWM` (the process's peak since it started) after the attack, KiB.
    pub hwm_kib: Option<u64>,
    /// Open descriptors before the attack.
    pub idle_fds: Option<u64>,
    /// The most sampled during the attack.
    pub peak_fds: Option<u64>,
    /// After the attack.
    pub end_fds: Option<u64>,
}

/// What one kind found, with its table rows and checks.
pub struct Outcome<F> {
    /// The kind's own figures (the `result` of the JSON).
    pub findings: F,
    /// Summary rows `(metric, value)`.
    pub rows: Vec<(String, String)>,
    /// Expectations.
    pub checks: Vec<Check>,
}

/// Everything one attack measured.
#[derive(Clone, Debug, Serialize)]
pub struct AttackReport<F: Serialize> {
    /// The attack.
    pub kind: Kind,
    /// The command line.
    pub command: String,
    /// When it started, seconds since the epoch.
    pub unix_time: u64,
    /// The machine.
    pub machine: Machine,
    /// 1/5/15-minute load average before the attack.
    pub load_average_before: Option<[f64; 3]>,
    /// And after.
    pub load_average_after: Option<[f64; 3]>,
    /// Set when the machine was busy before or after the run.
    pub load_warning: Option<String>,
    /// The server.
    pub server: ServerInfo,
    /// Seconds from the start of the attack to its end.
    pub attack_secs: f64,
    /// Server memory and descriptors.
    pub footprint: Footprint,
    /// What an ordinary client saw meanwhile.
    pub probes: ProbeSummary,
    /// The kind's own figures.
    pub result: F,
    /// Expectations and whether they held.
    pub checks: Vec<Check>,
    /// Server RSS and descriptors over time.
    pub samples: Vec<Sample>,
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("n/a".to_owned(), |k| {
        format!("{:.1} MiB", k as f64 / 1024.0)
    })
}

fn num(v: Option<u64>) -> String {
    v.map_or("n/a".to_owned(), |v| v.to_string())
}

/// The rows every kind prints before its own.
pub fn common_rows<F: Serialize>(r: &AttackReport<F>) -> Vec<(String, String)> {
    let f = &r.footprint;
    let p = &r.probes;
    vec![
        (
            "server RSS idle / peak / end".into(),
            format!(
                "{} / {} / {}",
                mib(f.idle_rss_kib),
                mib(f.peak_rss_kib),
                mib(f.end_rss_kib)
            ),
        ),
        (
            "server fds idle / peak / end".into(),
            format!(
                "{} / {} / {}",
                num(f.idle_fds),
                num(f.peak_fds),
                num(f.end_fds)
            ),
        ),
        (
            "probes: /healthz 200, p50 / p99 / max".into(),
            format!(
                "{} of {}, {}",
                p.healthz_ok,
                p.probes,
                Millis::cell(&p.healthz)
            ),
        ),
        (
            "probes: connect + join ok, p50 / p99 / max".into(),
            format!("{} of {}, {}", p.join_ok, p.probes, Millis::cell(&p.join)),
        ),
        (
            "load average before / after".into(),
            format!(
                "{} / {}",
                r.load_average_before
                    .map_or("n/a".into(), |l| format!("{:.2}", l[0])),
                r.load_average_after
                    .map_or("n/a".into(), |l| format!("{:.2}", l[0]))
            ),
        ),
    ]
}

/// Prints the summary table and the checks.
pub fn print<F: Serialize>(r: &AttackReport<F>, rows: &[(String, String)]) {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(vec![
        Cell::new(format!("attack {}", r.kind.name())),
        Cell::new(""),
    ]);
    for (k, v) in common_rows(r).iter().chain(rows) {
        table.add_row(vec![
            Cell::new(k),
            Cell::new(v).set_alignment(CellAlignment::Right),
        ]);
    }
    eprintln!("{table}");
    for c in &r.checks {
        eprintln!(
            "{} {}: {}",
            if c.ok { "ok  " } else { "FAIL" },
            c.name,
            c.detail
        );
    }
    if let Some(w) = &r.load_warning {
        eprintln!("warning: {w}");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(nearest_rank(&v, 50.0), 50.0);
        assert_eq!(nearest_rank(&v, 99.0), 99.0);
        assert_eq!(nearest_rank(&v, 100.0), 100.0);
        assert_eq!(nearest_rank(&v, 0.0), 1.0);
        assert_eq!(nearest_rank(&[], 50.0), 0.0);
        let m = Millis::of(vec![3.0, 1.0, 2.0]).unwrap();
        assert_eq!((m.count, m.p50_ms, m.p99_ms, m.max_ms), (3, 2.0, 3.0, 3.0));
        assert_eq!(Millis::of(Vec::new()), None);
        assert_eq!(Millis::cell(&None), "none");
    }

    #[test]
    fn latency_histograms_summarise_in_milliseconds() {
        let mut l = Latency::new();
        for ms in 1..=100u64 {
            l.record_ns(ms * 1_000_000);
        }
        let m = Millis::from_latency(&l).unwrap();
        assert_eq!(m.count, 100);
        assert!((m.p50_ms - 50.0).abs() < 0.1, "{m:?}");
        assert!((m.max_ms - 100.0).abs() < 0.1, "{m:?}");
        assert_eq!(Millis::from_latency(&Latency::new()), None);
    }

    #[test]
    fn counts() {
        let mut c = Counts::new();
        bump(&mut c, "503");
        bump(&mut c, "408");
        bump(&mut c, "503");
        assert_eq!(counts_cell(&c), "408: 1, 503: 2");
        assert_eq!(counts_cell(&Counts::new()), "none");
    }
}
