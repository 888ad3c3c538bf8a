//! `attack --kind body-stall`: `--connections` requests (default 2,000) to the backend HTTP
//! API, `POST /api/broadcast`, each sending its headers with a large `Content-Length`
//! (`--content-length`, default 1,000,000 bytes: under the 1 MiB body limit, so the
//! in-flight budget of 16 MiB is what decides) and a few bytes of body (`--body-sent`), then
//! stalling. Half carry the valid API key, half none.
//!
//! Expected: without a key, 401 at once, the body never read; with the key, 503 ("too many
//! request bodies in flight") for those beyond the budget, and 408 after the body timeout
//! (10 s) for those it admitted. Reported: the answers and closes seen in each half and how
//! long each took; the server's peak RSS is in the footprint.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;

use super::Ctx;
use super::http::{self, Ending};
use super::report::{Check, Counts, Millis, Outcome, bump, counts_cell};
use crate::cli::CONNECTIONS_PER_SOURCE_IP;
use crate::target::source_ip;

/// body-stall flags.
#[derive(Args, Debug, Clone)]
pub struct BodyStallArgs {
    /// body-stall: the Content-Length each request declares.
    #[arg(long, default_value_t = 1_000_000)]
    pub content_length: u64,
    /// body-stall: bytes of body sent before stalling.
    #[arg(long, default_value_t = 16)]
    pub body_sent: usize,
}

impl BodyStallArgs {
    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), String> {
        if self.content_length == 0 || self.content_length > 1 << 40 {
            return Err("--content-length must be in 1..=2^40".into());
        }
        if self.body_sent as u64 >= self.content_length {
            return Err("--body-sent must be below --content-length (the body must stall)".into());
        }
        Ok(())
    }
}

/// One half of the attack.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Half {
    /// Requests made.
    pub requests: usize,
    /// Connects or writes that failed.
    pub failed: u64,
    /// The first such failure.
    pub first_error: Option<String>,
    /// How the requests ended (`401`, `503`, `408`, `closed without an answer`, `still open`).
    pub endings: Counts,
    /// Time from the request to each kind of ending.
    pub after: BTreeMap<String, Millis>,
}

/// The body-stall figures.
#[derive(Clone, Debug, Serialize)]
pub struct BodyStallFindings {
    /// The declared `Content-Length`.
    pub content_length: u64,
    /// Body bytes sent before the stall.
    pub body_sent: usize,
    /// Requests with the valid API key.
    pub with_key: Half,
    /// Requests without one.
    pub without_key: Half,
}

/// The request head and the start of its body.
fn stalled_request(key: Option<&str>, content_length: u64, body_sent: usize) -> Vec<u8> {
    let mut head = String::from(
        "POST /api/broadcast HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n",
    );
    if let Some(key) = key {
        head.push_str(&format!("Authorization: Bearer {key}\r\n"));
    }
    head.push_str(&format!("Content-Length: {content_length}\r\n\r\n"));
    let mut bytes = head.into_bytes();
    let body = br#"{"topic":"chat:stall","event":"x","payload":{"data":""#;
    bytes.extend(body.iter().cycle().take(body_sent));
    bytes
}

/// Gathers one half from `(ending, ms)` results and failures.
fn gather(results: Vec<Result<(Ending, f64), String>>) -> Half {
    let mut half = Half {
        requests: results.len(),
        ..Half::default()
    };
    let mut after: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in results {
        match r {
            Ok((ending, ms)) => {
                bump(&mut half.endings, ending.label());
                after.entry(ending.label()).or_default().push(ms);
            }
            Err(e) => {
                half.failed += 1;
                half.first_error.get_or_insert(e);
            }
        }
    }
    half.after = after
        .into_iter()
        .filter_map(|(k, v)| Millis::of(v).map(|m| (k, m)))
        .collect();
    half
}

async fn one(
    i: usize,
    addr: SocketAddr,
    request: Arc<Vec<u8>>,
    gate: Arc<Semaphore>,
    wait: Duration,
    ips: usize,
) -> Result<(Ending, f64), String> {
    let offset = (std::process::id() as usize % 50) * 4 + 100;
    let mut stream = {
        let _permit = gate.acquire().await;
        let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
        socket
            .bind(SocketAddr::new(source_ip(i, ips, offset), 0))
            .map_err(|e| e.to_string())?;
        socket.connect(addr).await.map_err(|e| e.to_string())?
    };
    let started = std::time::Instant::now();
    if let Err(e) = stream.write_all(&request).await {
        // The server may answer and close before the whole head is written; what it said
        // is still to be read.
        if e.kind() != std::io::ErrorKind::BrokenPipe
            && e.kind() != std::io::ErrorKind::ConnectionReset
        {
            return Err(e.to_string());
        }
    }
    let x = http::read_answer(&mut stream, wait).await;
    Ok((x.ending, started.elapsed().as_secs_f64() * 1000.0))
}

/// Runs the attack.
pub async fn run(ctx: Ctx) -> anyhow::Result<Outcome<BodyStallFindings>> {
    let a = &ctx.args.body_stall;
    let n = ctx.args.connections();
    let addr = ctx.target.addr();
    let keyed = Arc::new(stalled_request(
        Some(&ctx.target.api_key),
        a.content_length,
        a.body_sent,
    ));
    let unkeyed = Arc::new(stalled_request(None, a.content_length, a.body_sent));
    let gate = Arc::new(Semaphore::new(256));
    let ips = n.div_ceil(CONNECTIONS_PER_SOURCE_IP);
    let wait = ctx.args.duration();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let request = if i % 2 == 0 { &keyed } else { &unkeyed };
        tasks.push(tokio::spawn(one(
            i,
            addr,
            request.clone(),
            gate.clone(),
            wait,
            ips,
        )));
    }
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await?;
        if i % 2 == 0 {
            with.push(r);
        } else {
            without.push(r);
        }
    }
    let findings = BodyStallFindings {
        content_length: a.content_length,
        body_sent: a.body_sent,
        with_key: gather(with),
        without_key: gather(without),
    };
    let after = |h: &Half| {
        h.after
            .iter()
            .map(|(k, m)| format!("{k} {:.0} / {:.0} ms", m.p50_ms, m.max_ms))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rows = vec![
        (
            "with key: endings".to_owned(),
            counts_cell(&findings.with_key.endings),
        ),
        (
            "with key: after p50 / max".to_owned(),
            after(&findings.with_key),
        ),
        (
            "without key: endings".to_owned(),
            counts_cell(&findings.without_key.endings),
        ),
        (
            "without key: after p50 / max".to_owned(),
            after(&findings.without_key),
        ),
    ];
    let only = |h: &Half, allowed: &[&str]| {
        h.failed == 0 && h.endings.keys().all(|k| allowed.contains(&k.as_str()))
    };
    let checks = vec![
        Check::new(
            "without a key: every request refused 401",
            only(&findings.without_key, &["401"]),
            counts_cell(&findings.without_key.endings),
        ),
        Check::new(
            "with the key: every request answered 503 (budget) or 408 (body timeout)",
            only(&findings.with_key, &["503", "408"]),
            counts_cell(&findings.with_key.endings),
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
    fn the_request_declares_more_than_it_sends() {
        let r = stalled_request(Some("k"), 1_000_000, 16);
        let text = String::from_utf8(r.clone()).unwrap();
        assert!(text.starts_with("POST /api/broadcast HTTP/1.1\r\n"));
        assert!(text.contains("Authorization: Bearer k\r\n"));
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.ends_with("Content-Length: 1000000"));
        assert_eq!(body, r#"{"topic":"chat:s"#);
        let r = String::from_utf8(stalled_request(None, 10, 3)).unwrap();
        assert!(!r.contains("Authorization"));
        assert!(r.ends_with("\r\n\r\n{\"t"));
    }

    #[test]
    fn halves_count_endings_and_failures() {
        let h = gather(vec![
            Ok((Ending::Answered(503), 2.0)),
            Ok((Ending::Answered(503), 4.0)),
            Ok((Ending::Answered(408), 10_000.0)),
            Err("connect: refused".into()),
        ]);
        assert_eq!(h.requests, 4);
        assert_eq!(h.failed, 1);
        assert_eq!(h.endings.get("503"), Some(&2));
        assert_eq!(h.after["408"].max_ms, 10_000.0);
        assert_eq!(h.after["503"].p50_ms, 2.0);
        assert_eq!(h.first_error.as_deref(), Some("connect: refused"));
    }

    #[test]
    fn a_body_that_cannot_stall_is_refused() {
        let a = BodyStallArgs {
            content_length: 10,
            body_sent: 10,
        };
        assert!(a.validate().is_err());
    }
}
