//! The processes under test: `plume serve`, the Socket.IO peer (`node server.js`) and
//! `redis-server`, started on free loopback ports and killed when their [`Proc`] is dropped.
//! A server started elsewhere is a [`Proc`] with only a pid (read, never killed).

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// How long a server may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A process the benchmark watches.
pub struct Proc {
    /// A short label (`plume`, `plume-n2`, `socket.io`, `redis`).
    pub name: String,
    /// Its pid, for `/proc`.
    pub pid: u32,
    /// Where its output goes, when the benchmark started it.
    pub log: Option<PathBuf>,
    /// A directory the process writes (a fresh embedded store), removed once it is killed.
    scratch: Option<PathBuf>,
    child: Option<Child>,
}

impl Proc {
    /// A process started elsewhere: only watched.
    pub fn external(name: &str, pid: u32) -> Proc {
        Proc {
            name: name.to_owned(),
            pid,
            log: None,
            scratch: None,
            child: None,
        }
    }

    /// True while a process the benchmark started is still running (always true for an
    /// external one that still has a `/proc` entry).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => Path::new(&format!("/proc/{}", self.pid)).exists(),
        }
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let Some(path) = &self.log else {
            return String::new();
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn start(name: &str, mut cmd: Command) -> anyhow::Result<Proc> {
        let log = std::env::temp_dir().join(format!(
            "plume-bench-{}-{}.log",
            std::process::id(),
            name.replace(['/', ' '], "_")
        ));
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .with_context(|| format!("start {name}: {cmd:?}"))?;
        Ok(Proc {
            name: name.to_owned(),
            pid: child.id(),
            log: Some(log),
            scratch: None,
            child: Some(child),
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A flood run leaves over 100 MB of embedded store behind: the results are in the
        // report, the data is of no further use.
        if let Some(dir) = &self.scratch {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound, read and released; the server binds it next).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Waits until `addr` accepts TCP connections, failing early if the process exits.
pub async fn wait_listening(proc_: &mut Proc, addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if !proc_.is_running() {
            bail!(
                "{} exited before listening on {addr}; its log:\n{}",
                proc_.name,
                proc_.log_tail()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not listen on {addr} within {START_TIMEOUT:?}; its log:\n{}",
                proc_.name,
                proc_.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What `plume serve` is started with.
#[derive(Clone, Debug)]
pub struct PlumeLaunch {
    /// The `plume` binary.
    pub bin: PathBuf,
    /// The HS256 secret.
    pub jwt_secret: String,
    /// Extra `serve` arguments, appended as given.
    pub extra_args: Vec<String>,
    /// Keep the server's per-socket push and join rate limits and its connection cap. Off
    /// for the load scenarios (their sockets send far more than any client may: that is
    /// their job); on for `attack`, which measures those limits.
    pub rate_limits: bool,
}

/// Starts `plume serve` on `port` with open membership (and Redis when given); returns once
/// it listens.
pub async fn spawn_plume(
    launch: &PlumeLaunch,
    name: &str,
    port: u16,
    redis: Option<(&str, &str)>,
) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(&launch.bin);
    cmd.arg("serve")
        .arg("--bind")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--jwt-secret")
        .arg(&launch.jwt_secret)
        .arg("--membership")
        .arg("open");
    if let Some((url, node_id)) = redis {
        cmd.arg("--redis-url")
            .arg(url)
            .arg("--node-id")
            .arg(node_id);
    }
    // A fresh embedded store per server (the default store), unless the extra arguments
    // name another: every run starts from an empty log.
    let data_dir = std::env::temp_dir().join(format!("plume-bench-{}-{port}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    cmd.env("PLUME_DATA_DIR", &data_dir);
    // A load generator's socket sends (and joins) far more than any client may: that is its
    // job, so the per-socket limits are off unless asked for; an extra
    // `--max-pushes-per-second` or `--max-joins-per-second` wins over this.
    if !launch.rate_limits {
        cmd.env("PLUME_MAX_PUSHES_PER_SECOND", "0");
        cmd.env("PLUME_MAX_JOINS_PER_SECOND", "0");
        // Nor is the connection cap theirs to meet: 10,000 subscribers and a publisher are
        // one over the default, and the last to connect was refused with 503.
        cmd.env("PLUME_MAX_CONNECTIONS", "1000000");
    }
    cmd.args(&launch.extra_args);
    // One log line per connection would cost the server more than the benchmark measures.
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "warn");
    }
    let mut proc_ = Proc::start(name, cmd).with_context(|| {
        format!(
            "is {} built? (cargo build --release -p plume)",
            launch.bin.display()
        )
    })?;
    proc_.scratch = Some(data_dir);
    wait_listening(&mut proc_, SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await?;
    Ok(proc_)
}

/// What the Socket.IO peer is started with.
#[derive(Clone, Debug)]
pub struct PeerLaunch {
    /// `node`.
    pub node_bin: PathBuf,
    /// The folder with `server.js` and `package.json`.
    pub dir: PathBuf,
    /// The HS256 secret.
    pub jwt_secret: String,
}

/// Starts the Socket.IO peer on `port` (running `npm ci` first if its modules are missing);
/// returns once it listens.
pub async fn spawn_socketio(launch: &PeerLaunch, port: u16) -> anyhow::Result<Proc> {
    let server = launch.dir.join("server.js");
    if !server.exists() {
        bail!(
            "{} not found (run from the workspace root or pass --peer-dir)",
            server.display()
        );
    }
    if !launch.dir.join("node_modules/socket.io").exists() {
        eprintln!(
            "installing the Socket.IO peer: npm ci in {}",
            launch.dir.display()
        );
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&launch.dir)
            .status()
            .context("run npm ci (is npm installed?)")?;
        if !status.success() {
            bail!("npm ci failed in {}", launch.dir.display());
        }
    }
    let mut cmd = Command::new(&launch.node_bin);
    cmd.arg(&server)
        .arg("--port")
        .arg(port.to_string())
        .arg("--jwt-secret")
        .arg(&launch.jwt_secret);
    let mut proc_ = Proc::start("socket.io", cmd)?;
    wait_listening(&mut proc_, SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await?;
    Ok(proc_)
}

/// Starts `redis-server` on `port` without persistence; returns once it listens.
pub async fn spawn_redis(bin: &Path, port: u16) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(bin);
    cmd.args(["--bind", "127.0.0.1", "--port"])
        .arg(port.to_string())
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ]);
    let mut proc_ = Proc::start("redis", cmd)?;
    wait_listening(&mut proc_, SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await?;
    Ok(proc_)
}
