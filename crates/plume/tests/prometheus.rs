//! A real Prometheus server scraping a real `plume serve` process: after phoenix-protocol
//! traffic, the counters are read back through Prometheus's HTTP query API. Needs the
//! `prometheus` binary (Debian package `prometheus`; `tests/setup` installs it); without it
//! the test fails and says so.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use plume_client::Client;
use plume_wire::{Json, Payload};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, sleep};

const SECRET: &str = "prometheus-test-secret";

/// A child process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_plume() -> (Killed, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_plume"));
    for (key, _) in std::env::vars() {
        if key.starts_with("PLUME_") {
            cmd.env_remove(key);
        }
    }
    let mut child = cmd
        .args(["serve", "--bind", "127.0.0.1:0", "--jwt-secret", SECRET])
        .args(["--store", "memory", "--echo-channel"])
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let child = Killed(child);
    for line in lines.by_ref().map_while(Result::ok) {
        if line.contains("listening")
            && let Some(addr) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
        {
            let addr = addr.to_owned();
            std::thread::spawn(move || for _ in lines.by_ref() {});
            return (child, addr);
        }
    }
    panic!("plume did not start");
}

fn prometheus_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/usr/local/bin".into()])
        .map(|dir| dir.join("prometheus"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "prometheus is not installed: apt-get install -y prometheus (tests/setup \
                 installs it)"
            )
        })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts Prometheus scraping `target` every second; returns it and its address.
fn start_prometheus(dir: &std::path::Path, target: &str) -> (Killed, String) {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: plume\n    scrape_interval: 1s\n    \
             scrape_timeout: 900ms\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(prometheus_binary())
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (Killed(child), addr)
}

/// An HTTP/1.0 GET (so the answer is not chunked); returns (status, body).
async fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text.split_once("\r\n\r\n")?.1.to_owned()))
}

/// Percent-encodes a PromQL expression for a query string.
fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The value of the single series `query` selects now, through `/api/v1/query`.
async fn query(prometheus: &str, query: &str) -> Option<f64> {
    let (status, body) = get(
        prometheus,
        &format!("/api/v1/query?query={}", encode(query)),
    )
    .await?;
    if status != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    assert_eq!(v["status"], "success", "{body}");
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// Waits (at most 60 s) until `query` reads at least `want`; returns the last value seen.
async fn wait_for(prometheus: &str, q: &str, want: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    while Instant::now() < deadline {
        last = query(prometheus, q).await;
        if last.is_some_and(|v| v >= want) {
            return last.unwrap_or_default();
        }
        sleep(Duration::from_millis(250)).await;
    }
    panic!("{q} never reached {want} through Prometheus (last: {last:?})");
}

fn json(text: &str) -> Payload {
    Payload::Json(Json::from_text(bytes::Bytes::copy_from_slice(text.as_bytes())).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_node_and_reads_its_counters_back() {
    let dir = tempfile::tempdir().unwrap();
    let (_plume, addr) = start_plume();
    let (_prometheus, prom) = start_prometheus(dir.path(), &addr);

    // Real traffic: two sockets on one topic, ten pushes broadcast to both.
    let token = plume_chat::auth::sign_hs256(SECRET.as_bytes(), "alice", 600).unwrap();
    let url = format!("ws://{addr}/socket/websocket?token={token}&vsn=2.0.0");
    let mut a = Client::connect(&url).await.unwrap();
    let mut b = Client::connect(&url).await.unwrap();
    let (ja, reply) = a.join("echo:prom", &json("{}")).await.unwrap();
    assert_eq!(reply.reply_status().as_deref(), Some("ok"));
    let (_, reply) = b.join("echo:prom", &json("{}")).await.unwrap();
    assert_eq!(reply.reply_status().as_deref(), Some("ok"));
    for i in 0..10 {
        let reply = a
            .call(&ja, "echo:prom", "said", &json(&format!(r#"{{"i":{i}}}"#)))
            .await
            .unwrap();
        assert_eq!(reply.reply_status().as_deref(), Some("ok"));
    }

    // Prometheus is up and scraping the node.
    assert_eq!(wait_for(&prom, "up{job=\"plume\"}", 1.0).await, 1.0);
    // 2 joins + 10 pushes received by the node.
    assert_eq!(
        wait_for(&prom, "plume_messages_in_total{job=\"plume\"}", 12.0).await,
        12.0
    );
    assert_eq!(
        wait_for(
            &prom,
            "plume_joins_total{job=\"plume\",prefix=\"echo:*\",result=\"ok\"}",
            2.0
        )
        .await,
        2.0
    );
    // Each push was broadcast to both sockets.
    assert!(wait_for(&prom, "plume_deliveries_total{job=\"plume\"}", 20.0).await >= 20.0);
    assert_eq!(
        wait_for(
            &prom,
            "plume_connections{job=\"plume\",transport=\"websocket\"}",
            2.0
        )
        .await,
        2.0
    );
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        wait_for(
            &prom,
            &format!("plume_build_info{{job=\"plume\",version=\"{version}\"}}"),
            1.0
        )
        .await,
        1.0
    );
}
