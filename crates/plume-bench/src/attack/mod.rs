//! `plume-bench attack --kind KIND`: the attacks from outside of issue 9 ("impossible to
//! crash or starve from outside"), as repeatable measurements.
//!
//! Every kind runs against a server the benchmark starts (`plume serve` with its own limits
//! on: rate limits, admission, body budget; the embedded store unless `--store memory`), or
//! against one already running (`--url`, `--server-pid`). Meanwhile the server's RSS and
//! open descriptors are sampled from `/proc` ([`sampler`]) and an ordinary client probes it
//! ([`probe`]: `/healthz`, then a WebSocket connect and join). The result is one JSON file
//! ([`report`]): the kind's own figures under `result`, the footprint, the probes, the
//! samples over time, the load average before and after, and checks (what the server is
//! expected to do) with whether they held; a failed check makes the command fail after the
//! file is written.
//!
//! # Layout
//!
//! - [`slowloris`]: connections silent after connecting, or stopping inside an upgrade.
//! - [`body_stall`]: API requests that declare a large body and stall after a few bytes.
//! - [`big_ids`]: authenticated sockets sending oversize identifiers.
//! - [`flood`]: one socket pushing as fast as it can into a chat while bystanders chat.
//! - [`stalled_reader`]: big broadcasts into a chat where some sockets stop reading.
//! - [`target`] starts or describes the server, [`http`] writes raw HTTP/1.1, [`reply`]
//!   reads the answer to one push, [`watch`] runs a bystander socket and keeps its
//!   latencies apart by phase (baseline, attack).

pub mod big_ids;
pub mod body_stall;
pub mod flood;
pub mod http;
pub mod periodic;
pub mod probe;
pub mod reply;
pub mod report;
pub mod sampler;
pub mod slowloris;
pub mod stalled_reader;
pub mod target;
pub mod watch;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::procfs::{self, Machine};
use report::{AttackReport, Check, Footprint, Outcome};
use target::{Server, ServerArgs, Target};

/// Which attack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Connections silent after the TCP connect, or stopping inside an upgrade request.
    Slowloris,
    /// API requests declaring a large body, then stalling after a few bytes.
    BodyStall,
    /// Oversize identifiers from authenticated sockets.
    BigIds,
    /// One socket pushing as fast as it can into a chat with receivers and bystanders.
    Flood,
    /// Big broadcasts into a chat where some sockets stop reading.
    StalledReader,
}

impl Kind {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Slowloris => "slowloris",
            Kind::BodyStall => "body-stall",
            Kind::BigIds => "big-ids",
            Kind::Flood => "flood",
            Kind::StalledReader => "stalled-reader",
        }
    }

    /// `--connections` when not given.
    pub fn default_connections(self) -> usize {
        match self {
            Kind::Slowloris => 3_000,
            Kind::BodyStall => 2_000,
            Kind::BigIds => 20,
            Kind::Flood => 50,
            Kind::StalledReader => 20,
        }
    }

    /// `--duration` when not given, seconds.
    pub fn default_duration(self) -> f64 {
        match self {
            // Past the 30-second mark after the last connection opened.
            Kind::Slowloris => 32.0,
            // Past the body timeout (10 s) with a margin.
            Kind::BodyStall => 15.0,
            // An upper bound: the rounds end it.
            Kind::BigIds => 120.0,
            Kind::Flood => 15.0,
            // Below the write timeout (10 s), so a stalled socket still reads its close.
            Kind::StalledReader => 8.0,
        }
    }
}

/// `attack` flags.
#[derive(Args, Debug, Clone)]
pub struct AttackArgs {
    /// Which attack.
    #[arg(long, value_enum)]
    pub kind: Kind,
    /// The server.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Attacking connections: slowloris 3,000, body-stall 2,000, big-ids 20 sockets, flood 50
    /// receivers in the flooded chat, stalled-reader 20 healthy readers [default: per kind].
    #[arg(long)]
    pub connections: Option<usize>,
    /// Seconds of attack: slowloris 32 after every connection is open, body-stall 15,
    /// big-ids at most 120 (its rounds end it), flood 15, stalled-reader 8 [default: per kind].
    #[arg(long)]
    pub duration: Option<f64>,
    /// Seconds after the bystanders joined whose latencies are not recorded (new chats, first
    /// store writes), before the baseline (flood, stalled-reader).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Seconds of baseline before the attack, same sockets, no attacker (flood,
    /// stalled-reader).
    #[arg(long, default_value_t = 10.0)]
    pub baseline: f64,
    /// Seconds between two heartbeats of each bystander, timed (flood, stalled-reader).
    #[arg(long, default_value_t = 1.0)]
    pub heartbeat_every: f64,
    /// Seconds between two readings of the server's RSS and descriptors.
    #[arg(long, default_value_t = 0.25)]
    pub sample_every: f64,
    /// Seconds between two probes (`/healthz`, connect + join).
    #[arg(long, default_value_t = 1.0)]
    pub probe_every: f64,
    /// Write the JSON result here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// body-stall.
    #[command(flatten)]
    pub body_stall: body_stall::BodyStallArgs,
    /// big-ids.
    #[command(flatten)]
    pub big_ids: big_ids::BigIdsArgs,
    /// flood.
    #[command(flatten)]
    pub flood: flood::FloodArgs,
    /// stalled-reader.
    #[command(flatten)]
    pub stalled: stalled_reader::StalledArgs,
}

/// Descriptors this process keeps besides its attack connections.
const FD_MARGIN: u64 = 256;

impl AttackArgs {
    /// Attacking connections for this kind.
    pub fn connections(&self) -> usize {
        self.connections
            .unwrap_or_else(|| self.kind.default_connections())
    }

    /// The attack's length.
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(
            self.duration
                .unwrap_or_else(|| self.kind.default_duration()),
        )
    }

    /// Checks every bound.
    pub fn validate(&self) -> Result<(), String> {
        let n = self.connections();
        let most = match self.kind {
            Kind::Slowloris | Kind::BodyStall => 100_000,
            Kind::BigIds | Kind::Flood | Kind::StalledReader => 10_000,
        };
        if !(1..=most).contains(&n) {
            return Err(format!(
                "--connections must be in 1..={most} for {}",
                self.kind.name()
            ));
        }
        let secs = |v: f64, name: &str, lo: f64| {
            if v.is_finite() && v >= lo && v <= 3600.0 {
                Ok(())
            } else {
                Err(format!("{name} must be in [{lo}, 3600] seconds"))
            }
        };
        secs(
            self.duration
                .unwrap_or_else(|| self.kind.default_duration()),
            "--duration",
            0.1,
        )?;
        secs(self.baseline, "--baseline", 0.0)?;
        secs(self.warmup, "--warmup", 0.0)?;
        secs(self.sample_every, "--sample-every", 0.01)?;
        secs(self.heartbeat_every, "--heartbeat-every", 0.05)?;
        secs(self.probe_every, "--probe-every", 0.1)?;
        if let Some(url) = &self.server.url {
            crate::target::parse_loopback_url(url, crate::target::Protocol::Phoenix)
                .map_err(|e| e.to_string())?;
        }
        match self.kind {
            Kind::BodyStall => self.body_stall.validate(),
            Kind::BigIds => self.big_ids.validate(),
            Kind::Flood => self.flood.validate(),
            Kind::StalledReader => self.stalled.validate(),
            Kind::Slowloris => Ok(()),
        }
    }
}

/// What the kinds get.
#[derive(Clone)]
pub struct Ctx {
    /// The server.
    pub target: Target,
    /// The start of the attack: every `t_s` counts from here.
    pub origin: Instant,
    /// The flags.
    pub args: AttackArgs,
}

impl Ctx {
    /// Seconds since the start of the attack.
    pub fn now_s(&self) -> f64 {
        self.origin.elapsed().as_secs_f64()
    }
}

/// How an attack ended: its JSON and the checks that failed.
pub struct Finished {
    /// The report, as written.
    pub json: serde_json::Value,
    /// Names and details of the failed checks.
    pub failed: Vec<String>,
}

/// Runs `attack` from the command line: the report is printed and written, then a failed
/// check is an error.
pub async fn run(args: AttackArgs) -> anyhow::Result<()> {
    let finished = execute(args).await?;
    if !finished.failed.is_empty() {
        bail!("checks failed: {}", finished.failed.join("; "));
    }
    Ok(())
}

/// Runs one attack and returns its report.
pub async fn execute(args: AttackArgs) -> anyhow::Result<Finished> {
    match args.kind {
        Kind::Slowloris => attack(args, slowloris::run).await,
        Kind::BodyStall => attack(args, body_stall::run).await,
        Kind::BigIds => attack(args, big_ids::run).await,
        Kind::Flood => attack(args, flood::run).await,
        Kind::StalledReader => attack(args, stalled_reader::run).await,
    }
}

fn read_now(pid: Option<u32>) -> Option<sampler::Sample> {
    sampler::read(pid?, Instant::now())
}

async fn attack<F, Fut>(args: AttackArgs, kind: impl FnOnce(Ctx) -> Fut) -> anyhow::Result<Finished>
where
    F: Serialize,
    Fut: Future<Output = anyhow::Result<Outcome<F>>>,
{
    args.validate()
        .map_err(|e| anyhow::anyhow!("invalid arguments: {e}"))?;
    let (soft, _) = procfs::raise_nofile_limit().context("raise RLIMIT_NOFILE")?;
    let need = args.connections() as u64 + FD_MARGIN;
    if soft < need {
        bail!(
            "RLIMIT_NOFILE is {soft} but {} connections need {need}: lower --connections",
            args.connections()
        );
    }
    let machine = Machine::detect();
    let load_before = procfs::load_average();
    if let Some(w) = load_before.and_then(|l| procfs::load_warning(l, machine.cpus)) {
        eprintln!("warning: {w}");
    }
    let unix_time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut server = Server::start(&args.server).await?;
    let pid = server.target.pid;
    if let (Some(pid), Some(limit)) = (pid, server.info.max_open_files)
        && limit < need
    {
        eprintln!(
            "warning: the server (pid {pid}) may open only {limit} files; the attack opens {}",
            args.connections()
        );
    }
    // Let a server that just started finish its start-up allocations.
    if server.proc_.is_some() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let idle = read_now(pid);
    let origin = Instant::now();
    let every = Duration::from_secs_f64(args.sample_every);
    let sampler = pid.map(|pid| sampler::Sampler::start(pid, origin, every));
    let prober = probe::Prober::start(
        server.target.clone(),
        origin,
        Duration::from_secs_f64(args.probe_every),
    );
    eprintln!(
        "attack {} against {}: {} connections",
        args.kind.name(),
        server.info.addr,
        args.connections()
    );
    let ctx = Ctx {
        target: server.target.clone(),
        origin,
        args: args.clone(),
    };
    let outcome = kind(ctx).await;
    let attack_secs = origin.elapsed().as_secs_f64();
    let probes = probe::summarize(prober.finish().await);
    let samples = match sampler {
        Some(s) => s.finish().await,
        None => Vec::new(),
    };
    let exited = !server.is_running();
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) if exited => {
            bail!("{e:#}; the server exited, its log:\n{}", server.log_tail())
        }
        Err(e) => return Err(e),
    };
    let end = read_now(pid);
    let (peak_rss, peak_fds) = sampler::peaks(&samples);
    let footprint = Footprint {
        idle_rss_kib: idle.map(|s| s.rss_kib),
        peak_rss_kib: peak_rss,
        end_rss_kib: end.map(|s| s.rss_kib),
        hwm_kib: pid.and_then(procfs::hwm_kib),
        idle_fds: idle.map(|s| s.fds),
        peak_fds,
        end_fds: end.map(|s| s.fds),
    };
    let load_after = procfs::load_average();
    let load_warning = [load_before, load_after]
        .into_iter()
        .flatten()
        .find_map(|l| procfs::load_warning(l, machine.cpus));
    let mut checks = vec![Check::new(
        "the server kept running",
        !exited,
        if exited {
            format!("it exited; its log:\n{}", server.log_tail())
        } else {
            "running".to_owned()
        },
    )];
    checks.push(Check::new(
        "/healthz answered 200 at every probe",
        probes.probes > 0 && probes.healthz_ok == probes.probes,
        format!("{} of {}", probes.healthz_ok, probes.probes),
    ));
    checks.push(Check::new(
        "a new client connected and joined at every probe",
        probes.probes > 0 && probes.join_ok == probes.probes,
        match &probes.first_failure {
            Some(f) => format!("{} of {}; first failure {f}", probes.join_ok, probes.probes),
            None => format!("{} of {}", probes.join_ok, probes.probes),
        },
    ));
    checks.extend(outcome.checks);
    let report = AttackReport {
        kind: args.kind,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        unix_time,
        machine,
        load_average_before: load_before,
        load_average_after: load_after,
        load_warning,
        server: server.info.clone(),
        attack_secs,
        footprint,
        probes,
        result: outcome.findings,
        checks,
        samples,
    };
    report::print(&report, &outcome.rows);
    let json = serde_json::to_value(&report)?;
    if let Some(out) = &args.out {
        crate::report::write_json(out, &report)?;
        eprintln!("wrote {}", out.display());
    }
    let failed = report
        .checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    drop(server);
    Ok(Finished { json, failed })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser as _;

    fn parse(args: &[&str]) -> AttackArgs {
        let cli = Cli::try_parse_from(["plume-bench", "attack"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Attack(a) => a,
            _ => panic!("not attack"),
        }
    }

    #[test]
    fn defaults_per_kind() {
        let a = parse(&["--kind", "slowloris"]);
        assert_eq!((a.connections(), a.duration().as_secs()), (3_000, 32));
        assert_eq!(a.server.store, target::Store::Embedded);
        assert!(a.validate().is_ok());
        let a = parse(&["--kind", "body-stall"]);
        assert_eq!(a.connections(), 2_000);
        assert_eq!(a.body_stall.content_length, 1_000_000);
        let a = parse(&["--kind", "flood", "--connections", "7"]);
        assert_eq!((a.connections(), a.flood.flooders), (7, 1));
        let a = parse(&["--kind", "stalled-reader"]);
        assert_eq!(
            (a.stalled.stalled, a.stalled.broadcast_bytes),
            (10, 262_144)
        );
        // Below the server's write timeout, so the stalled sockets read their close.
        assert!(a.duration().as_secs_f64() < 10.0);
        assert_eq!(parse(&["--kind", "big-ids"]).big_ids.id_bytes, 900_000);
        assert!(Cli::try_parse_from(["plume-bench", "attack"]).is_err());
        assert!(Cli::try_parse_from(["plume-bench", "attack", "--kind", "ddos"]).is_err());
        // --server-pid only with --url.
        assert!(
            Cli::try_parse_from([
                "plume-bench",
                "attack",
                "--kind",
                "flood",
                "--server-pid",
                "1"
            ])
            .is_err()
        );
    }

    #[test]
    fn unbounded_or_remote_attacks_are_refused() {
        for args in [
            &["--kind", "slowloris", "--connections", "0"][..],
            &["--kind", "flood", "--connections", "20000"],
            &["--kind", "flood", "--duration", "NaN"],
            &["--kind", "flood", "--baseline=-1"],
            &["--kind", "flood", "--bystander-rate", "500"],
            &["--kind", "big-ids", "--id-bytes", "2000000"],
            &["--kind", "stalled-reader", "--broadcast-bytes", "2000000"],
            &[
                "--kind",
                "body-stall",
                "--content-length",
                "8",
                "--body-sent",
                "8",
            ],
            &[
                "--kind",
                "slowloris",
                "--url",
                "ws://10.0.0.1:4000/socket/websocket",
            ],
        ] {
            assert!(parse(args).validate().is_err(), "{args:?}");
        }
        let ok = parse(&[
            "--kind",
            "slowloris",
            "--url",
            "ws://127.0.0.1:4000/socket/websocket",
        ]);
        assert!(ok.validate().is_ok());
    }
}
