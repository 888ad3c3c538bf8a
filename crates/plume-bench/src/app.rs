//! The commands: deploy what is to be loaded, run the scenario, report.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use tokio_util::sync::CancellationToken;

use crate::cli::{BenchArgs, Cli, ClusterArgs, Command, CompareArgs, Size, TargetKind};
use crate::procfs::{self, Machine};
use crate::report::{self, CompareReport, Params, RunReport};
use crate::runner::{self, RunConfig, Watched};
use crate::scenario::{self, Pacing, Scenario};
use crate::spawn::{self, PeerLaunch, PlumeLaunch, Proc};
use crate::target::{Endpoint, Protocol, loopback_ip, parse_loopback_url};

/// File descriptors the load generator keeps besides its connections.
const FD_MARGIN: u64 = 128;

/// Runs one command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: stopping");
            on_signal.cancel();
        }
    });
    match cli.command {
        Command::Idle(args) => single(Scenario::Idle, args, &stop).await,
        Command::Fanout(args) => single(Scenario::Fanout, args, &stop).await,
        Command::Chat(args) => single(Scenario::Chat, args, &stop).await,
        Command::Cluster(args) => cluster(args, &stop).await,
        Command::Compare(args) => compare(args, &stop).await,
        Command::Recovery(args) => crate::recovery::run(args).await,
        Command::Presence(args) => crate::presence::run(args).await,
        Command::Attack(args) => crate::attack::run(args).await,
    }
}

/// What is being loaded.
struct Deployment {
    endpoints: Vec<Endpoint>,
    watched: Vec<Watched>,
    label: String,
}

fn validate(args: &BenchArgs, scenario: Scenario) -> anyhow::Result<Size> {
    let size = args
        .validate(scenario)
        .map_err(|e| anyhow::anyhow!("invalid arguments: {e}"))?;
    if let Some(warning) = args.short_run_warning(scenario) {
        eprintln!("warning: {warning}");
    }
    Ok(size)
}

/// Raises this process's open-file limit and checks it fits the run.
fn check_fd_limit(connections: usize) -> anyhow::Result<()> {
    let need = connections as u64 + FD_MARGIN;
    // When the hard limit is too low, try to lift it (works as root where the kernel allows
    // it; never lowers it), then take the soft limit up to the hard one.
    if let Ok((_, hard)) = rlimit::Resource::NOFILE.get()
        && hard < need
    {
        let _ = rlimit::Resource::NOFILE.set(need, need);
    }
    let (soft, hard) = procfs::raise_nofile_limit().context("raise RLIMIT_NOFILE")?;
    eprintln!(
        "open files: this process {soft} (hard {hard}); the run needs {need} here and the server \
         needs about {} (ulimit -n) as well",
        connections as u64 + 64
    );
    if soft < need {
        bail!(
            "RLIMIT_NOFILE is {soft} (hard limit {hard}) but {connections} connections need {need}: \
             lower --connections or raise the hard limit (ulimit -Hn) before starting"
        );
    }
    Ok(())
}

fn warn_server_limit(watched: &[Watched], conns_per_server: usize) {
    for w in watched.iter().filter(|w| w.endpoint.is_some()) {
        if let Some(limit) = procfs::max_open_files(w.proc_.pid)
            && limit < conns_per_server as u64 + 64
        {
            eprintln!(
                "warning: {} (pid {}) may open only {limit} files but will hold about \
                 {conns_per_server} connections; raise its ulimit -n",
                w.proc_.name, w.proc_.pid
            );
        }
    }
}

async fn deploy(args: &BenchArgs, kind: TargetKind) -> anyhow::Result<Deployment> {
    let t = &args.target;
    if !t.url.is_empty() {
        let mut endpoints = Vec::new();
        let mut watched = Vec::new();
        for (i, url) in t.url.iter().enumerate() {
            endpoints.push(parse_loopback_url(url, kind.protocol())?);
            if let Some(pid) = t.server_pid.get(i) {
                watched.push(Watched {
                    proc_: Proc::external(&format!("{} {}", kind.label(), i + 1), *pid),
                    endpoint: Some(i),
                });
            }
        }
        return Ok(Deployment {
            endpoints,
            watched,
            label: format!("{} (running)", kind.label()),
        });
    }
    let port = spawn::free_port()?;
    let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
    let proc_ = match kind {
        TargetKind::Plume | TargetKind::PlumeLongpoll => {
            spawn::spawn_plume(&plume_launch(args), "plume", port, None).await?
        }
        TargetKind::Socketio => {
            spawn::spawn_socketio(
                &PeerLaunch {
                    node_bin: t.node_bin.clone(),
                    dir: t.peer_dir.clone(),
                    jwt_secret: t.jwt_secret.clone(),
                },
                port,
            )
            .await?
        }
    };
    eprintln!("started {} (pid {}) on {addr}", proc_.name, proc_.pid);
    Ok(Deployment {
        endpoints: vec![Endpoint::local(kind.protocol(), addr)],
        watched: vec![Watched {
            proc_,
            endpoint: Some(0),
        }],
        label: kind.label().to_owned(),
    })
}

fn plume_launch(args: &BenchArgs) -> PlumeLaunch {
    PlumeLaunch {
        bin: args.target.server_bin.clone(),
        jwt_secret: args.target.jwt_secret.clone(),
        extra_args: args.target.server_args.clone(),
        rate_limits: false,
    }
}

fn plan(
    scenario: Scenario,
    args: &BenchArgs,
    size: Size,
    endpoints: usize,
) -> Vec<scenario::ConnSpec> {
    let pacing = Pacing::from_rate(args.load.rate, args.load.in_flight);
    match scenario {
        Scenario::Idle => scenario::idle_plan(size.connections, size.users, endpoints),
        Scenario::Fanout => scenario::fanout_plan(size.connections, pacing, endpoints),
        Scenario::Chat => scenario::chat_plan(size.chats, size.users, pacing, endpoints),
    }
}

fn run_config(args: &BenchArgs, connections: usize, offset_shift: usize) -> RunConfig {
    let source_ips = args.source_ips(connections);
    // Vary the first address per process so that a run right after another one does not
    // meet that run's ports in TIME_WAIT.
    let offset = args
        .run
        .source_ip_offset
        .unwrap_or((std::process::id() as usize % 50) * 4);
    RunConfig {
        duration: Duration::from_secs_f64(args.run.duration),
        drain: Duration::from_secs_f64(args.run.drain),
        workers: args.run.workers,
        source_ips,
        source_ip_offset: (offset + offset_shift) % 254,
        connect_concurrency: args.run.connect_concurrency,
        connect_timeout: Duration::from_secs_f64(args.run.connect_timeout),
        heartbeat: Duration::from_secs(30),
        message_bytes: args.load.message_bytes,
        typing: args.load.typing,
        typing_every: Duration::from_secs_f64(args.load.typing_every),
        typing_apart: args.load.typing_apart,
        settle: Duration::from_secs(1),
        progress: !args.run.no_progress,
    }
}

fn command_line() -> String {
    let args: Vec<String> = std::env::args().collect();
    args.join(" ")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Runs one scenario against one deployment and builds its report.
async fn measure(
    scenario: Scenario,
    args: &BenchArgs,
    size: Size,
    mut deployment: Deployment,
    offset_shift: usize,
    stop: &CancellationToken,
) -> anyhow::Result<RunReport> {
    let specs = plan(scenario, args, size, deployment.endpoints.len());
    let total = specs.len();
    let per_server = total.div_ceil(deployment.endpoints.len().max(1));
    warn_server_limit(&deployment.watched, per_server);
    let cfg = run_config(args, total, offset_shift);
    let params = Params {
        connections: total,
        duration_s: args.run.duration,
        rate: args.load.rate,
        in_flight: args.load.in_flight,
        message_bytes: args.load.message_bytes,
        typing: args.load.typing,
        typing_every_s: args.load.typing_every,
        typing_apart: args.load.typing_apart,
        chats: size.chats,
        users_per_chat: size.users,
        workers: cfg.workers,
        source_ips: cfg.source_ips,
        nodes: deployment.endpoints.len(),
        command: command_line(),
    };
    eprintln!(
        "{} against {}: {total} connections from {} source address(es), {:.0} s",
        scenario.name(),
        deployment.label,
        cfg.source_ips,
        args.run.duration
    );
    let unix_time = unix_now();
    let m = runner::run(
        specs,
        deployment.endpoints.clone(),
        &args.target.jwt_secret,
        cfg,
        &mut deployment.watched,
        stop.clone(),
    )
    .await;
    for w in &mut deployment.watched {
        if !w.proc_.is_running() {
            eprintln!(
                "warning: {} exited during the run; its log:\n{}",
                w.proc_.name,
                w.proc_.log_tail()
            );
        }
    }
    let name = args.run.name.clone().unwrap_or_else(|| {
        format!("{}-{}-{}", scenario.name(), deployment.label, total).replace([' ', '(', ')'], "")
    });
    Ok(RunReport {
        name,
        scenario,
        target: deployment.label,
        unix_time,
        machine: Machine::detect(),
        params,
        measured: m,
    })
}

fn write_outputs(out: &Option<PathBuf>, reports: &[&RunReport]) -> anyhow::Result<()> {
    let Some(out) = out else {
        return Ok(());
    };
    for path in report::write_charts(out, reports)? {
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

async fn single(
    scenario: Scenario,
    args: BenchArgs,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let size = validate(&args, scenario)?;
    check_fd_limit(size.connections + 1)?;
    let kind = args.target.target;
    let deployment = deploy(&args, kind).await?;
    let report = measure(scenario, &args, size, deployment, 0, stop).await?;
    finish_single(&args, &report)
}

/// Prints, writes (JSON and charts) and judges the report of a one-target run.
fn finish_single(args: &BenchArgs, report: &report::RunReport) -> anyhow::Result<()> {
    report::print_summary(report);
    if let Some(out) = &args.run.out {
        report::write_json(out, report)?;
        eprintln!("wrote {}", out.display());
    }
    write_outputs(&args.run.out, &[report])?;
    if report.measured.interrupted {
        bail!("the run was interrupted");
    }
    Ok(())
}

async fn cluster(c: ClusterArgs, stop: &CancellationToken) -> anyhow::Result<()> {
    let scenario = c.scenario.scenario();
    let args = c.bench;
    let size = validate(&args, scenario)?;
    if !(2..=16).contains(&c.nodes) && args.target.url.is_empty() {
        bail!("--nodes must be in 2..=16");
    }
    check_fd_limit(size.connections + 1)?;
    let deployment = if args.target.url.is_empty() {
        let mut watched = Vec::new();
        let redis_url = match &c.redis_url {
            Some(url) => {
                let host = url
                    .strip_prefix("redis://")
                    .and_then(|rest| rest.rsplit('@').next())
                    .and_then(|rest| rest.split(['/', ':']).next())
                    .unwrap_or("");
                if loopback_ip(host).is_none() {
                    bail!("refusing non-loopback Redis {url:?}");
                }
                url.clone()
            }
            None => {
                let port = spawn::free_port()?;
                let redis = spawn::spawn_redis(&c.redis_bin, port).await?;
                eprintln!("started redis (pid {}) on 127.0.0.1:{port}", redis.pid);
                watched.push(Watched {
                    proc_: redis,
                    endpoint: None,
                });
                format!("redis://127.0.0.1:{port}/0")
            }
        };
        let launch = plume_launch(&args);
        let mut endpoints = Vec::new();
        let mut nodes = Vec::new();
        for i in 0..c.nodes {
            let port = spawn::free_port()?;
            let name = format!("plume-n{}", i + 1);
            let node_id = format!("bench-n{}", i + 1);
            let proc_ =
                spawn::spawn_plume(&launch, &name, port, Some((&redis_url, &node_id))).await?;
            eprintln!("started {name} (pid {}) on 127.0.0.1:{port}", proc_.pid);
            endpoints.push(Endpoint::local(
                Protocol::Phoenix,
                std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port)),
            ));
            nodes.push(Watched {
                proc_,
                endpoint: Some(i),
            });
        }
        // Nodes first (the report lists them first), then Redis.
        nodes.append(&mut watched);
        Deployment {
            endpoints,
            watched: nodes,
            label: format!("plume x{} + redis", c.nodes),
        }
    } else {
        deploy(&args, TargetKind::Plume).await?
    };
    let report = measure(scenario, &args, size, deployment, 0, stop).await?;
    finish_single(&args, &report)
}

async fn compare(c: CompareArgs, stop: &CancellationToken) -> anyhow::Result<()> {
    let scenario = c.scenario;
    let args = c.bench;
    if !args.target.url.is_empty() {
        bail!("compare starts both servers itself; --url is not supported here");
    }
    let size = validate(&args, scenario)?;
    check_fd_limit(size.connections + 1)?;
    let source_ips = args.source_ips(size.connections + 1);
    let mut runs = Vec::new();
    for (i, kind) in [TargetKind::Plume, TargetKind::Socketio]
        .into_iter()
        .enumerate()
    {
        let deployment = deploy(&args, kind).await?;
        // The second run uses fresh source addresses: the first run's ports are in TIME_WAIT.
        let report = measure(scenario, &args, size, deployment, i * source_ips, stop).await?;
        report::print_summary(&report);
        let interrupted = report.measured.interrupted;
        runs.push(report);
        if interrupted {
            bail!("the run was interrupted");
        }
        // Let the server's sockets close before the next server starts.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (Some(sio), Some(plume)) = (runs.pop(), runs.pop()) else {
        bail!("both runs are needed for a comparison");
    };
    let compared = CompareReport {
        scenario,
        ratios: report::ratios(&plume, &sio),
        plume,
        socketio: sio,
    };
    report::print_compare(&compared);
    if let Some(out) = &args.run.out {
        report::write_json(out, &compared)?;
        eprintln!("wrote {}", out.display());
    }
    write_outputs(&args.run.out, &[&compared.plume, &compared.socketio])?;
    Ok(())
}
