//! What a run produces: the [`RunReport`] written as JSON, the summary table printed at the
//! end, the side-by-side [`CompareReport`] with its ratios, and the SVG charts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use comfy_table::{Cell, CellAlignment, Table, presets::UTF8_FULL_CONDENSED};
use serde::{Deserialize, Serialize};

use crate::procfs::Machine;
use crate::runner::Measured;
use crate::scenario::Scenario;
use crate::stats::LatencySummary;
use crate::svg::{self, Series};

/// Everything one run measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// A label for the run.
    pub name: String,
    /// The scenario.
    pub scenario: Scenario,
    /// What was loaded (`plume`, `socket.io`, `plume x2 + redis`).
    pub target: String,
    /// When the run started, seconds since the epoch.
    pub unix_time: u64,
    /// The machine.
    pub machine: Machine,
    /// The parameters.
    pub params: Params,
    /// What the run measured (flattened: its fields sit at the top level of the JSON).
    #[serde(flatten)]
    pub measured: Measured,
}

/// The knobs of a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Params {
    /// Connections attempted.
    pub connections: usize,
    /// Seconds of sending (or of holding, for `idle`).
    pub duration_s: f64,
    /// Messages per second per sender; 0 = paced by acknowledgements.
    pub rate: f64,
    /// Unacknowledged messages allowed per sender when paced by acknowledgements.
    pub in_flight: u32,
    /// Bytes of message content.
    pub message_bytes: usize,
    /// Whether every chat message was preceded by a `typing` push.
    #[serde(default)]
    pub typing: bool,
    /// With `typing`: the least seconds between two typing pushes of one sender (0: before
    /// every message).
    #[serde(default)]
    pub typing_every_s: f64,
    /// With `typing` at a fixed rate: typing was pushed halfway between messages.
    #[serde(default)]
    pub typing_apart: bool,
    /// Chats (the `chat` scenario).
    pub chats: usize,
    /// Users per chat.
    pub users_per_chat: usize,
    /// Worker tasks of the load generator.
    pub workers: usize,
    /// Source addresses (127.0.0.1 … 127.0.0.N).
    pub source_ips: usize,
    /// Server nodes.
    pub nodes: usize,
    /// The command line.
    pub command: String,
}

/// The connect phase.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectStats {
    /// Connections attempted.
    pub attempted: u64,
    /// Connected and joined.
    pub connected: u64,
    /// Failed to connect or join.
    pub failed: u64,
    /// Seconds from the first attempt to the last outcome.
    pub secs: f64,
    /// Connected and joined per second.
    pub per_sec: f64,
    /// The first failure, for diagnosis.
    pub first_error: Option<String>,
}

/// Message counts and rates.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Traffic {
    /// Messages sent.
    pub sent: u64,
    /// Sends confirmed with status sent.
    pub acked: u64,
    /// Sends confirmed with an error.
    pub ack_errors: u64,
    /// `receive_message` events received.
    pub delivered: u64,
    /// Deliveries expected (sends times receivers per send).
    pub expected: u64,
    /// Seconds over which deliveries are counted: from the start to the last delivery (at
    /// least the send duration).
    pub window_s: f64,
    /// Sends per second over the send duration.
    pub sends_per_sec: f64,
    /// Deliveries per second over the window.
    pub deliveries_per_sec: f64,
    /// Connections the server closed during the run.
    pub closed: u64,
    /// Close codes and reasons, with counts.
    pub close_reasons: BTreeMap<String, u64>,
    /// Connection errors during the run.
    pub errors: u64,
    /// The first error.
    pub first_error: Option<String>,
    /// Sends skipped because a fixed-rate sender fell more than a second behind.
    pub schedule_skips: u64,
}

/// One server process.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerStats {
    /// Its label.
    pub name: String,
    /// Its pid.
    pub pid: u32,
    /// Connections it served (0 for Redis).
    pub connections: u64,
    /// Resident memory before connecting, KiB.
    pub rss_start_kib: u64,
    /// Resident memory once everyone was connected and joined, KiB.
    pub rss_connected_kib: u64,
    /// Resident memory at the end, KiB.
    pub rss_end_kib: u64,
    /// Peak resident memory (`VmHWM`), KiB.
    pub rss_peak_kib: u64,
    /// (connected - start) / connections, bytes.
    pub rss_per_conn_bytes: Option<f64>,
    /// CPU seconds used during the send window and drain.
    pub cpu_secs: f64,
    /// Average cores busy during that time.
    pub cpu_cores: f64,
    /// CPU microseconds per delivery.
    pub cpu_us_per_delivery: Option<f64>,
}

/// The load generator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientStats {
    /// CPU seconds used during the send window and drain.
    pub cpu_secs: f64,
    /// Average cores busy.
    pub cpu_cores: f64,
    /// Resident memory at the end, KiB.
    pub rss_kib: u64,
}

/// Rates in one interval.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TimelinePoint {
    /// End of the interval, seconds since the start of sending.
    pub t_s: f64,
    /// Sends per second.
    pub sent_per_s: f64,
    /// Deliveries per second.
    pub delivered_per_s: f64,
}

/// A periodic sample.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the start of the connect phase.
    pub t_s: f64,
    /// Connections established so far.
    pub connected: u64,
    /// Resident memory of all servers, KiB.
    pub server_rss_kib: u64,
    /// Deliveries so far.
    pub delivered: u64,
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1_000.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} k", v / 1e3)
    } else {
        format!("{v:.1}")
    }
}

/// The rows of the summary table: `(metric, value)`.
pub fn summary_rows(r: &RunReport) -> Vec<(String, String)> {
    let mut rows = vec![
        (
            "connections".into(),
            format!(
                "{} of {} ({} failed)",
                r.measured.connect.connected,
                r.measured.connect.attempted,
                r.measured.connect.failed
            ),
        ),
        (
            "connect + join rate".into(),
            format!(
                "{}/s over {:.1} s",
                rate(r.measured.connect.per_sec),
                r.measured.connect.secs
            ),
        ),
    ];
    if r.scenario != Scenario::Idle {
        let t = &r.measured.traffic;
        rows.push(("sends/s".into(), rate(t.sends_per_sec)));
        rows.push((
            "sent / acked / ack errors".into(),
            format!("{} / {} / {}", t.sent, t.acked, t.ack_errors),
        ));
        rows.push(("deliveries/s".into(), rate(t.deliveries_per_sec)));
        rows.push((
            "delivered / expected".into(),
            format!("{} / {}", t.delivered, t.expected),
        ));
    }
    for (label, lat) in [
        ("delivery latency ms", &r.measured.delivery_latency),
        ("ack latency ms", &r.measured.ack_latency),
    ] {
        if let Some(l) = lat {
            rows.push((
                format!("{label} p50 / p99 / p99.9 / max"),
                format!(
                    "{} / {} / {} / {}",
                    ms(l.p50_us),
                    ms(l.p99_us),
                    ms(l.p999_us),
                    ms(l.max_us)
                ),
            ));
        }
    }
    if r.measured.traffic.closed > 0 || r.measured.traffic.errors > 0 {
        let reasons: Vec<String> = r
            .measured
            .traffic
            .close_reasons
            .iter()
            .map(|(k, v)| format!("{v}x {k}"))
            .collect();
        rows.push((
            "closed / errors".into(),
            format!(
                "{} / {} {}",
                r.measured.traffic.closed,
                r.measured.traffic.errors,
                reasons.join(", ")
            ),
        ));
    }
    for s in &r.measured.servers {
        rows.push((
            format!("{} RSS MiB start / joined / end", s.name),
            format!(
                "{} / {} / {}",
                mib(s.rss_start_kib),
                mib(s.rss_connected_kib),
                mib(s.rss_end_kib)
            ),
        ));
        if let Some(per) = s.rss_per_conn_bytes {
            rows.push((
                format!("{} RSS per connection", s.name),
                format!("{:.2} KiB", per / 1024.0),
            ));
        }
        let mut cpu = format!("{:.2} cores", s.cpu_cores);
        if let Some(us) = s.cpu_us_per_delivery {
            let _ = write!(cpu, ", {us:.2} us/delivery");
        }
        rows.push((format!("{} CPU", s.name), cpu));
    }
    rows.push((
        "load generator CPU / RSS".into(),
        format!(
            "{:.2} cores / {} MiB",
            r.measured.client.cpu_cores,
            mib(r.measured.client.rss_kib)
        ),
    ));
    rows
}

/// Prints the summary table of one run.
pub fn print_summary(r: &RunReport) {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(vec![
        Cell::new(format!("{} / {}", r.scenario.name(), r.target)),
        Cell::new(r.name.clone()),
    ]);
    for (k, v) in summary_rows(r) {
        table.add_row(vec![Cell::new(k), Cell::new(v)]);
    }
    println!("{table}");
}

/// One compared metric.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    /// What is compared.
    pub metric: String,
    /// Plume's value.
    pub plume: f64,
    /// The Socket.IO peer's value.
    pub socketio: f64,
    /// How many times better Plume is (above 1 = Plume better), whichever direction is
    /// better for the metric.
    pub advantage: f64,
}

/// A side-by-side run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompareReport {
    /// The scenario.
    pub scenario: Scenario,
    /// Plume's run.
    pub plume: RunReport,
    /// The Socket.IO peer's run.
    pub socketio: RunReport,
    /// The ratios.
    pub ratios: Vec<Ratio>,
}

/// The ratios of two runs of the same scenario.
pub fn ratios(plume: &RunReport, sio: &RunReport) -> Vec<Ratio> {
    let mut out = Vec::new();
    let mut push = |metric: &str, p: f64, s: f64, higher_is_better: bool| {
        if p > 0.0 && s > 0.0 {
            out.push(Ratio {
                metric: metric.to_owned(),
                plume: p,
                socketio: s,
                advantage: if higher_is_better { p / s } else { s / p },
            });
        }
    };
    if plume.scenario == Scenario::Idle {
        push(
            "connect+join per second",
            plume.measured.connect.per_sec,
            sio.measured.connect.per_sec,
            true,
        );
    } else {
        push(
            "deliveries per second",
            plume.measured.traffic.deliveries_per_sec,
            sio.measured.traffic.deliveries_per_sec,
            true,
        );
        push(
            "sends per second",
            plume.measured.traffic.sends_per_sec,
            sio.measured.traffic.sends_per_sec,
            true,
        );
    }
    let lat = |r: &RunReport, f: fn(&LatencySummary) -> u64| {
        r.measured
            .delivery_latency
            .as_ref()
            .map_or(0.0, |l| f(l) as f64 / 1e3)
    };
    push(
        "delivery latency p50 (ms)",
        lat(plume, |l| l.p50_us),
        lat(sio, |l| l.p50_us),
        false,
    );
    push(
        "delivery latency p99 (ms)",
        lat(plume, |l| l.p99_us),
        lat(sio, |l| l.p99_us),
        false,
    );
    let ack = |r: &RunReport, f: fn(&LatencySummary) -> u64| {
        r.measured
            .ack_latency
            .as_ref()
            .map_or(0.0, |l| f(l) as f64 / 1e3)
    };
    push(
        "ack latency p50 (ms)",
        ack(plume, |l| l.p50_us),
        ack(sio, |l| l.p50_us),
        false,
    );
    push(
        "ack latency p99 (ms)",
        ack(plume, |l| l.p99_us),
        ack(sio, |l| l.p99_us),
        false,
    );
    let first = |r: &RunReport| r.measured.servers.first().cloned().unwrap_or_default();
    let (ps, ss) = (first(plume), first(sio));
    push(
        "server CPU us per delivery",
        ps.cpu_us_per_delivery.unwrap_or(0.0),
        ss.cpu_us_per_delivery.unwrap_or(0.0),
        false,
    );
    push(
        "server RSS per connection (KiB)",
        ps.rss_per_conn_bytes.unwrap_or(0.0) / 1024.0,
        ss.rss_per_conn_bytes.unwrap_or(0.0) / 1024.0,
        false,
    );
    out
}

/// Prints both runs and the ratio table.
pub fn print_compare(c: &CompareReport) {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(vec![
        Cell::new(format!("{}: plume vs socket.io", c.scenario.name())),
        Cell::new("plume"),
        Cell::new("socket.io"),
        Cell::new("plume advantage"),
    ]);
    for r in &c.ratios {
        table.add_row(vec![
            Cell::new(&r.metric),
            Cell::new(format!("{:.3}", r.plume)).set_alignment(CellAlignment::Right),
            Cell::new(format!("{:.3}", r.socketio)).set_alignment(CellAlignment::Right),
            Cell::new(format!("{:.2}x", r.advantage)).set_alignment(CellAlignment::Right),
        ]);
    }
    println!("{table}");
}

/// Writes a value as pretty JSON, creating the folder.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("write {}", path.display()))
}

/// `results/fanout.json` + `-latency.svg` = `results/fanout-latency.svg`.
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bench".into());
    path.with_file_name(format!("{stem}{suffix}"))
}

/// Averages rates over groups of `n` intervals, for a readable line.
fn smooth(points: &[[f64; 2]], n: usize) -> Vec<[f64; 2]> {
    points
        .chunks(n.max(1))
        .map(|c| {
            let x = c.last().map_or(0.0, |p| p[0]);
            let y = c.iter().map(|p| p[1]).sum::<f64>() / c.len() as f64;
            [x, y]
        })
        .collect()
}

/// The SVG charts of one or more runs of the same scenario; returns the files written next
/// to `out` (`{stem}-latency.svg`, `{stem}-throughput.svg`, or for `idle`
/// `{stem}-connections.svg` and `{stem}-memory.svg`).
pub fn write_charts(out: &Path, runs: &[&RunReport]) -> anyhow::Result<Vec<PathBuf>> {
    let Some(first) = runs.first() else {
        return Ok(Vec::new());
    };
    let scenario = first.scenario.name();
    let mut charts: Vec<(PathBuf, String)> = Vec::new();
    if first.scenario == Scenario::Idle {
        let connected: Vec<Series> = runs
            .iter()
            .map(|r| {
                Series::new(
                    r.target.clone(),
                    r.measured
                        .samples
                        .iter()
                        .map(|s| [s.t_s, s.connected as f64])
                        .collect(),
                )
            })
            .collect();
        charts.push((
            sibling(out, "-connections.svg"),
            svg::line_chart(
                &format!("{scenario}: connections joined over time"),
                "seconds",
                "connections",
                &connected,
            ),
        ));
        let memory: Vec<Series> = runs
            .iter()
            .map(|r| {
                Series::new(
                    format!("{} server RSS", r.target),
                    r.measured
                        .samples
                        .iter()
                        .map(|s| [s.t_s, s.server_rss_kib as f64 / 1024.0])
                        .collect(),
                )
            })
            .collect();
        charts.push((
            sibling(out, "-memory.svg"),
            svg::line_chart(
                &format!("{scenario}: server resident memory"),
                "seconds",
                "MiB",
                &memory,
            ),
        ));
    } else {
        let mut latency = Vec::new();
        for (i, r) in runs.iter().enumerate() {
            if let Some(l) = &r.measured.delivery_latency {
                let mut s = Series::new(format!("{} delivery", r.target), l.curve.clone());
                s.color = Some(i);
                latency.push(s);
            }
            if let Some(l) = &r.measured.ack_latency {
                let mut s = Series::new(format!("{} ack", r.target), l.curve.clone());
                s.dashed = true;
                s.color = Some(i);
                latency.push(s);
            }
        }
        charts.push((
            sibling(out, "-latency.svg"),
            svg::percentile_chart(&format!("{scenario}: latency by percentile"), &latency),
        ));
        let mut rates = Vec::new();
        for (i, r) in runs.iter().enumerate() {
            let delivered: Vec<[f64; 2]> = r
                .measured
                .timeline
                .iter()
                .map(|p| [p.t_s, p.delivered_per_s])
                .collect();
            let mut s = Series::new(format!("{} deliveries/s", r.target), smooth(&delivered, 2));
            s.color = Some(i);
            rates.push(s);
            let sent: Vec<[f64; 2]> = r
                .measured
                .timeline
                .iter()
                .map(|p| [p.t_s, p.sent_per_s])
                .collect();
            if r.scenario == Scenario::Chat {
                let mut s = Series::new(format!("{} sends/s", r.target), smooth(&sent, 2));
                s.dashed = true;
                s.color = Some(i);
                rates.push(s);
            }
        }
        charts.push((
            sibling(out, "-throughput.svg"),
            svg::line_chart(
                &format!("{scenario}: throughput over time"),
                "seconds",
                "per second",
                &rates,
            ),
        ));
    }
    let mut written = Vec::new();
    for (path, text) in charts {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn report(target: &str, deliveries: f64, p99_us: u64) -> RunReport {
        let lat = LatencySummary {
            count: 10,
            min_us: 10,
            mean_us: 100.0,
            p50_us: p99_us / 4,
            p90_us: p99_us / 2,
            p99_us,
            p999_us: p99_us * 2,
            max_us: p99_us * 3,
            curve: vec![[0.0, 0.01], [99.0, p99_us as f64 / 1e3], [100.0, 1.0]],
        };
        RunReport {
            name: "t".into(),
            scenario: Scenario::Fanout,
            target: target.into(),
            unix_time: 0,
            machine: Machine::default(),
            params: Params::default(),
            measured: Measured {
                traffic: Traffic {
                    deliveries_per_sec: deliveries,
                    sends_per_sec: deliveries / 100.0,
                    ..Traffic::default()
                },
                delivery_latency: Some(lat.clone()),
                ack_latency: Some(lat),
                servers: vec![ServerStats {
                    name: target.into(),
                    cpu_us_per_delivery: Some(1e6 / deliveries),
                    ..ServerStats::default()
                }],
                timeline: (0..8)
                    .map(|i| TimelinePoint {
                        t_s: f64::from(i) * 0.25,
                        sent_per_s: 10.0,
                        delivered_per_s: deliveries,
                    })
                    .collect(),
                ..Measured::default()
            },
        }
    }

    #[test]
    fn ratios_point_the_right_way() {
        let p = report("plume", 1_000_000.0, 2_000);
        let s = report("socket.io", 100_000.0, 20_000);
        let r = ratios(&p, &s);
        let get = |m: &str| r.iter().find(|x| x.metric == m).unwrap().advantage;
        assert!((get("deliveries per second") - 10.0).abs() < 1e-9);
        assert!((get("delivery latency p99 (ms)") - 10.0).abs() < 1e-9);
        assert!((get("server CPU us per delivery") - 10.0).abs() < 1e-9);
        // Metrics missing on either side are left out rather than divided by zero.
        assert!(r.iter().all(|x| x.advantage.is_finite()));
        assert!(!r.iter().any(|x| x.metric.starts_with("server RSS")));
    }

    #[test]
    fn published_results_still_parse() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/results/fanout-1k-500k.json");
        let r: RunReport = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(r.scenario, Scenario::Fanout);
        assert!(r.measured.traffic.deliveries_per_sec > 0.0);
        assert!(r.measured.delivery_latency.is_some());
    }

    #[test]
    fn json_round_trip_and_charts() {
        let dir = std::env::temp_dir().join(format!("plume-bench-test-{}", std::process::id()));
        let out = dir.join("fanout.json");
        let p = report("plume", 1e6, 2_000);
        write_json(&out, &p).unwrap();
        let back: RunReport =
            serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        assert_eq!(back, p);
        let files = write_charts(&out, &[&p, &report("socket.io", 1e5, 9_000)]).unwrap();
        assert_eq!(files.len(), 2);
        assert!(files[0].ends_with("fanout-latency.svg"));
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap();
            roxmltree::Document::parse(&text).unwrap();
        }
        assert!(!summary_rows(&p).is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn sibling_names() {
        assert_eq!(
            sibling(Path::new("results/fanout-10k.json"), "-latency.svg"),
            PathBuf::from("results/fanout-10k-latency.svg")
        );
    }
}
