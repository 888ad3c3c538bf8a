//! The command line, and the checks that keep every run bounded and on this machine.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::scenario::Scenario;
use crate::target::{Protocol, parse_loopback_url};

/// Longest run allowed, seconds.
pub const MAX_DURATION_SECS: f64 = 3600.0;
/// The shortest `--duration` of sending whose figures mean anything. A shorter run is mostly
/// warm-up (connection bursts, TCP windows opening, allocator growth) and drain, and on a shared
/// 2-core machine one scheduling hiccup decides its p99: a 5-second `compare` once reported
/// Plume at 0.38x of the Socket.IO peer's p99, where 15-second runs give 4x in Plume's favour.
/// Shorter runs still go (they check that a setup works), with a warning. The published results
/// use 15 s.
pub const MIN_MEANINGFUL_DURATION_SECS: f64 = 10.0;
/// Most connections one run may open.
pub const MAX_CONNECTIONS: usize = 1_000_000;
/// Connections per source address when `--source-ips` is automatic. The ephemeral port range
/// holds about 28,000 ports per address, but `bind(addr, 0)` (needed to pick the address)
/// searches the odd half first and slows down sharply once that half (~14,000) is taken.
pub const CONNECTIONS_PER_SOURCE_IP: usize = 10_000;

/// plume-bench: load generator and benchmark driver for Plume (and a Socket.IO peer).
#[derive(Parser, Debug)]
#[command(name = "plume-bench", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// N connections, each joined to a chat and its user's notifications topic, held idle:
    /// server memory per connection and connect rate.
    Idle(BenchArgs),
    /// One chat with N subscribers and one publisher: deliveries/s and end-to-end latency.
    Fanout(BenchArgs),
    /// M chats of K users each sending: send -> message_sent and receive latency.
    Chat(BenchArgs),
    /// Fanout or chat across several Plume nodes sharing a Redis.
    Cluster(ClusterArgs),
    /// The same scenario against Plume and the Socket.IO peer, with the ratios.
    Compare(CompareArgs),
    /// Many sockets rejoining at once, each some messages behind: time until all recovered.
    Recovery(crate::recovery::RecoveryArgs),
    /// Many sockets joining one chat with presence: time until every socket lists everyone.
    Presence(crate::presence::PresenceArgs),
    /// An attack from outside (issue 9): slowloris, body-stall, big-ids, flood or
    /// stalled-reader, with the server's memory, descriptors and an ordinary client's view.
    Attack(crate::attack::AttackArgs),
}

/// Which server kind a single run targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TargetKind {
    /// Plume (`plume serve`).
    Plume,
    /// The Socket.IO 4.8 peer (`node peers/socketio/server.js`).
    Socketio,
    /// Plume, driven over its LongPoll transport (`/socket/longpoll`) instead of WebSocket.
    PlumeLongpoll,
}

impl TargetKind {
    /// The protocol it speaks.
    pub fn protocol(self) -> Protocol {
        match self {
            TargetKind::Plume => Protocol::Phoenix,
            TargetKind::Socketio => Protocol::SocketIo,
            TargetKind::PlumeLongpoll => Protocol::LongPoll,
        }
    }

    /// Its label in reports.
    pub fn label(self) -> &'static str {
        match self {
            TargetKind::Plume => "plume",
            TargetKind::Socketio => "socket.io",
            TargetKind::PlumeLongpoll => "plume (longpoll)",
        }
    }
}

/// Which server to load and how to start it.
#[derive(Args, Debug, Clone)]
pub struct TargetArgs {
    /// The server kind (ignored by `compare`, which runs both, and `cluster`).
    #[arg(long, value_enum, default_value_t = TargetKind::Plume)]
    pub target: TargetKind,
    /// The plume binary to start.
    #[arg(long, default_value = "target/release/plume")]
    pub server_bin: PathBuf,
    /// An extra argument for `plume serve` (repeat for several), e.g.
    /// `--server-arg=--outbound-capacity=4096`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// Load a server that is already running instead of starting one (ws://127.0.0.1:PORT/…;
    /// loopback only; repeat for the nodes of a cluster).
    #[arg(long)]
    pub url: Vec<String>,
    /// The pid of the running server given with --url, for its memory and CPU (repeat in
    /// the same order as --url).
    #[arg(long)]
    pub server_pid: Vec<u32>,
    /// HS256 secret: the server is started with it and tokens are signed with it.
    #[arg(long, default_value = "plume-bench-secret", hide_default_value = true)]
    pub jwt_secret: String,
    /// The Socket.IO peer's folder (server.js, package.json).
    #[arg(long, default_value = "crates/plume-bench/peers/socketio")]
    pub peer_dir: PathBuf,
    /// The node binary for the Socket.IO peer.
    #[arg(long, default_value = "node")]
    pub node_bin: PathBuf,
}

/// How big and how long.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Connections (idle: all; fanout: subscribers, plus one publisher; chat: chats × users)
    /// [default: 1000].
    #[arg(long)]
    pub connections: Option<usize>,
    /// Seconds of sending (idle: of holding the connections).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Longest wait, in seconds, for outstanding deliveries after sending stops.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Worker tasks sharing the connections.
    #[arg(long, default_value_t = 8)]
    pub workers: usize,
    /// Source addresses 127.0.0.1 … 127.0.0.N to spread connections over [default: one per
    /// 10,000 connections].
    #[arg(long)]
    pub source_ips: Option<usize>,
    /// Start the source addresses at 127.0.0.{1 + OFFSET} [default: varies per process, so
    /// back-to-back runs do not meet the previous run's ports in TIME_WAIT].
    #[arg(long)]
    pub source_ip_offset: Option<usize>,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Longest connect phase, seconds.
    #[arg(long, default_value_t = 120.0)]
    pub connect_timeout: f64,
    /// Write the JSON result here; the SVG charts go next to it.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A label for the run [default: scenario and size].
    #[arg(long)]
    pub name: Option<String>,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// What is sent.
#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// Messages per second per sender (fanout: the publisher; chat: each user); 0 = as fast
    /// as acknowledgements allow.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Unacknowledged messages per sender when --rate is 0.
    #[arg(long, default_value_t = 1)]
    pub in_flight: u32,
    /// Bytes of message content.
    #[arg(long, default_value_t = 64)]
    pub message_bytes: usize,
    /// chat: push `typing` before every message, as a client showing a typing indicator
    /// does (Plume targets only).
    #[arg(long)]
    pub typing: bool,
    /// chat, with --typing: at most one `typing` push per sender in this many seconds (0:
    /// before every message). A client app throttles its typing indicator so; 1 matches the
    /// server's own throttle of forwarded typing events.
    #[arg(long, default_value_t = 0.0, value_parser = parse_typing_every)]
    pub typing_every: f64,
    /// chat, with --typing and --rate: push `typing` halfway between two messages instead
    /// of right before each, so the typing frames cannot share a write with a message.
    #[arg(long, requires_all = ["typing", "rate"])]
    pub typing_apart: bool,
    /// Users per chat (chat, idle).
    #[arg(long, default_value_t = 10)]
    pub users: usize,
    /// Chats (chat) [default: connections / users].
    #[arg(long)]
    pub chats: Option<usize>,
}

/// The arguments of `idle`, `fanout` and `chat`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Target.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Size and time.
    #[command(flatten)]
    pub run: RunArgs,
    /// Load.
    #[command(flatten)]
    pub load: LoadArgs,
}

/// Scenarios a cluster run supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ClusterScenario {
    /// Fanout across nodes.
    Fanout,
    /// Chat across nodes.
    Chat,
}

impl ClusterScenario {
    /// As a scenario.
    pub fn scenario(self) -> Scenario {
        match self {
            ClusterScenario::Fanout => Scenario::Fanout,
            ClusterScenario::Chat => Scenario::Chat,
        }
    }
}

/// `cluster` arguments.
#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    /// The scenario to spread over the nodes.
    #[arg(long, value_enum)]
    pub scenario: ClusterScenario,
    /// Plume nodes to start.
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    /// redis-server to start (on a free port, without persistence).
    #[arg(long, default_value = "/usr/bin/redis-server")]
    pub redis_bin: PathBuf,
    /// Use this running Redis instead (redis://127.0.0.1:PORT/DB; loopback only).
    #[arg(long)]
    pub redis_url: Option<String>,
    /// The rest.
    #[command(flatten)]
    pub bench: BenchArgs,
}

/// `compare` arguments.
#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// The scenario to run against both servers.
    #[arg(long, value_enum)]
    pub scenario: Scenario,
    /// The rest.
    #[command(flatten)]
    pub bench: BenchArgs,
}

/// The resolved size of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    /// Connections in the plan (fanout: subscribers, without the publisher).
    pub connections: usize,
    /// Chats (chat scenario) or users per chat (idle).
    pub chats: usize,
    /// Users per chat.
    pub users: usize,
}

impl BenchArgs {
    /// The warning for a run too short to measure throughput or latency, if this is one. Idle
    /// runs are exempt: their memory figure is read once every connection has joined.
    pub fn short_run_warning(&self, scenario: Scenario) -> Option<String> {
        (scenario != Scenario::Idle && self.run.duration < MIN_MEANINGFUL_DURATION_SECS).then(|| {
            format!(
                "--duration {} s is shorter than {MIN_MEANINGFUL_DURATION_SECS} s: the figures will \
                 be mostly warm-up and noise, so do not compare or quote them (the published runs \
                 use 15 s)",
                self.run.duration
            )
        })
    }

    /// Checks every bound and resolves the connection count for `scenario`.
    pub fn validate(&self, scenario: Scenario) -> Result<Size, String> {
        let r = &self.run;
        let l = &self.load;
        if !(r.duration > 0.0 && r.duration <= MAX_DURATION_SECS) {
            return Err(format!(
                "--duration must be in (0, {MAX_DURATION_SECS}] seconds"
            ));
        }
        if !(r.drain >= 0.0 && r.drain <= 120.0) {
            return Err("--drain must be in [0, 120] seconds".into());
        }
        if !(r.connect_timeout > 0.0 && r.connect_timeout <= MAX_DURATION_SECS) {
            return Err("--connect-timeout must be in (0, 3600] seconds".into());
        }
        if !(1..=1024).contains(&r.workers) {
            return Err("--workers must be in 1..=1024".into());
        }
        if !(1..=100_000).contains(&r.connect_concurrency) {
            return Err("--connect-concurrency must be in 1..=100000".into());
        }
        if r.source_ips.is_some_and(|n| !(1..=254).contains(&n)) {
            return Err("--source-ips must be in 1..=254".into());
        }
        if r.source_ip_offset.is_some_and(|n| n > 253) {
            return Err("--source-ip-offset must be in 0..=253".into());
        }
        if !(l.rate.is_finite() && (0.0..=1_000_000.0).contains(&l.rate)) {
            return Err("--rate must be in [0, 1000000] (0 = acknowledgement-paced)".into());
        }
        if !(1..=100_000).contains(&l.in_flight) {
            return Err("--in-flight must be in 1..=100000".into());
        }
        if !(48..=4096).contains(&l.message_bytes) {
            return Err("--message-bytes must be in 48..=4096".into());
        }
        if l.users == 0 || l.users > MAX_CONNECTIONS {
            return Err("--users must be at least 1".into());
        }
        for url in &self.target.url {
            parse_loopback_url(url, self.target.target.protocol()).map_err(|e| e.to_string())?;
        }
        if !self.target.server_pid.is_empty()
            && self.target.server_pid.len() != self.target.url.len()
        {
            return Err("give one --server-pid per --url".into());
        }
        let size = match scenario {
            Scenario::Chat => {
                if l.users < 2 {
                    return Err("chat needs --users of at least 2".into());
                }
                let chats = match (l.chats, r.connections) {
                    (Some(c), Some(n)) if c.saturating_mul(l.users) != n => {
                        return Err(format!(
                            "--chats {c} × --users {} is not --connections {n}",
                            l.users
                        ));
                    }
                    (Some(c), _) => c,
                    (None, n) => n.unwrap_or(1000) / l.users,
                };
                Size {
                    connections: chats.saturating_mul(l.users),
                    chats,
                    users: l.users,
                }
            }
            Scenario::Idle | Scenario::Fanout => Size {
                connections: r.connections.unwrap_or(1000),
                chats: 0,
                users: l.users,
            },
        };
        if !(1..=MAX_CONNECTIONS).contains(&size.connections) {
            return Err(format!(
                "the run needs between 1 and {MAX_CONNECTIONS} connections (got {})",
                size.connections
            ));
        }
        Ok(size)
    }

    /// Source addresses for `connections`: as given, or one per 10,000.
    pub fn source_ips(&self, connections: usize) -> usize {
        self.run.source_ips.unwrap_or_else(|| {
            connections
                .div_ceil(CONNECTIONS_PER_SOURCE_IP)
                .clamp(1, 254)
        })
    }
}

fn parse_typing_every(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs.is_finite() && (0.0..=3600.0).contains(&secs) => Ok(secs),
        _ => Err(format!(
            "{text:?} is not a number of seconds from 0 to 3600"
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn typing_every_is_a_bounded_number_of_seconds() {
        assert_eq!(parse_typing_every("0"), Ok(0.0));
        assert_eq!(parse_typing_every("1.5"), Ok(1.5));
        for bad in ["-1", "NaN", "inf", "x", "3601"] {
            assert!(parse_typing_every(bad).is_err(), "{bad}");
        }
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("plume-bench").chain(args.iter().copied()))
    }

    fn bench(args: &[&str]) -> BenchArgs {
        match parse(args).unwrap().command {
            Command::Idle(b) | Command::Fanout(b) | Command::Chat(b) => b,
            Command::Cluster(c) => c.bench,
            Command::Compare(c) => c.bench,
            Command::Recovery(_) => panic!("recovery has no bench arguments"),
            Command::Presence(_) => panic!("presence has no bench arguments"),
            Command::Attack(_) => panic!("attack has no bench arguments"),
        }
    }

    #[test]
    fn recovery_parses_with_bounded_defaults() {
        let Command::Recovery(r) = parse(&["recovery"]).unwrap().command else {
            panic!("not recovery")
        };
        assert_eq!((r.connections, r.chats, r.behind), (10_000, 1_000, 50));
    }

    #[test]
    fn defaults_are_bounded() {
        let b = bench(&["fanout"]);
        assert_eq!(
            b.validate(Scenario::Fanout),
            Ok(Size {
                connections: 1000,
                chats: 0,
                users: 10
            })
        );
        assert_eq!(b.run.duration, 10.0);
        assert_eq!(b.source_ips(1000), 1);
        assert_eq!(b.source_ips(100_000), 10);
        assert_eq!(b.source_ips(100_001), 11);
    }

    #[test]
    fn runs_shorter_than_ten_seconds_are_warned_about() {
        assert_eq!(bench(&["fanout"]).short_run_warning(Scenario::Fanout), None);
        let short = bench(&["compare", "--scenario", "fanout", "--duration", "5"]);
        let warning = short.short_run_warning(Scenario::Fanout).unwrap();
        assert!(
            warning.contains("--duration 5 s") && warning.contains("10 s"),
            "{warning}"
        );
        assert!(short.short_run_warning(Scenario::Chat).is_some());
        let just = bench(&["chat", "--duration", "10"]);
        assert_eq!(just.short_run_warning(Scenario::Chat), None);
        // Idle runs measure memory once everyone has joined; their length does not matter.
        let idle = bench(&["idle", "--duration", "2"]);
        assert_eq!(idle.short_run_warning(Scenario::Idle), None);
    }

    #[test]
    fn non_loopback_urls_are_refused() {
        let b = bench(&["fanout", "--url", "ws://10.1.2.3:4000/socket/websocket"]);
        let err = b.validate(Scenario::Fanout).unwrap_err();
        assert!(err.contains("non-loopback"), "{err}");
        let b = bench(&["idle", "--url", "ws://example.org/socket/websocket"]);
        assert!(b.validate(Scenario::Idle).is_err());
        let b = bench(&["idle", "--url", "ws://127.0.0.1:4000/socket/websocket"]);
        assert!(b.validate(Scenario::Idle).is_ok());
        let b = bench(&[
            "idle",
            "--url",
            "ws://127.0.0.1:4000/socket/websocket",
            "--server-pid",
            "1",
            "--server-pid",
            "2",
        ]);
        assert!(b.validate(Scenario::Idle).is_err());
    }

    #[test]
    fn unbounded_runs_are_refused() {
        for args in [
            &["idle", "--duration", "0"][..],
            &["idle", "--duration", "7200"],
            &["idle", "--duration", "NaN"],
            &["idle", "--connections", "0"],
            &["idle", "--connections", "2000000"],
            &["fanout", "--rate=-1"],
            &["fanout", "--rate", "inf"],
            &["fanout", "--message-bytes", "10"],
            &["fanout", "--in-flight", "0"],
            &["idle", "--workers", "0"],
            &["idle", "--source-ips", "255"],
            &["idle", "--drain", "1000"],
        ] {
            let b = bench(args);
            let scenario = if args[0] == "idle" {
                Scenario::Idle
            } else {
                Scenario::Fanout
            };
            assert!(b.validate(scenario).is_err(), "{args:?}");
        }
    }

    #[test]
    fn chat_size_resolution() {
        let b = bench(&["chat", "--chats", "100", "--users", "5"]);
        assert_eq!(
            b.validate(Scenario::Chat),
            Ok(Size {
                connections: 500,
                chats: 100,
                users: 5
            })
        );
        let b = bench(&["chat", "--connections", "1000", "--users", "20"]);
        assert_eq!(b.validate(Scenario::Chat).map(|s| s.chats), Ok(50));
        let b = bench(&["chat", "--connections", "1000", "--chats", "3"]);
        assert!(b.validate(Scenario::Chat).is_err());
        let b = bench(&["chat", "--users", "1"]);
        assert!(b.validate(Scenario::Chat).is_err());
    }

    #[test]
    fn subcommands_parse() {
        let cli = parse(&[
            "cluster",
            "--scenario",
            "chat",
            "--nodes",
            "3",
            "--server-arg=--outbound-capacity=4096",
        ])
        .unwrap();
        let Command::Cluster(c) = cli.command else {
            panic!("expected cluster");
        };
        assert_eq!(c.nodes, 3);
        assert_eq!(c.scenario, ClusterScenario::Chat);
        assert_eq!(c.bench.target.server_args, ["--outbound-capacity=4096"]);
        let cli = parse(&["compare", "--scenario", "fanout", "--rate", "50"]).unwrap();
        assert!(matches!(cli.command, Command::Compare(c) if c.scenario == Scenario::Fanout));
        assert!(parse(&["compare"]).is_err());
        assert!(parse(&["fanout", "--target", "socketio"]).is_ok());
    }
}
