//! `plume-bench attack --kind flood` against a real `plume serve`, with tiny numbers: the
//! JSON has its fields, the flooder was closed with 4029, and no bystander was closed.

use std::path::PathBuf;

use clap::Parser;
use plume_bench::cli::{Cli, Command};

/// The `plume` binary next to this package's own (cargo builds both into the same directory
/// for a workspace test run).
fn plume_bin() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_plume-bench")).with_file_name("plume");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p plume` (a workspace test run builds it)",
        bin.display()
    );
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_flood_reports_the_flooder_and_closes_no_bystander() {
    let bin = plume_bin();
    let cli = Cli::try_parse_from([
        "plume-bench",
        "attack",
        "--kind",
        "flood",
        "--server-bin",
        bin.to_str().expect("a UTF-8 path"),
        "--store",
        "memory",
        "--connections",
        "4",
        "--same-chat-senders",
        "2",
        "--other-chats",
        "1",
        "--other-users",
        "2",
        "--bystander-rate",
        "5",
        "--heartbeat-every",
        "0.2",
        "--warmup",
        "0.5",
        "--baseline",
        "2",
        "--duration",
        "3",
    ])
    .expect("the command line parses");
    let Command::Attack(args) = cli.command else {
        panic!("not an attack command");
    };
    let finished = plume_bench::attack::execute(args)
        .await
        .expect("the attack runs");
    let j = &finished.json;
    assert_eq!(j["kind"], "flood");
    let r = &j["result"];
    assert!(r["flooder"]["pushes"].as_u64().unwrap_or(0) > 0, "{r}");
    assert!(
        r["flooder"]["connections"].as_u64().unwrap_or(0) >= 1,
        "{r}"
    );
    let closes = r["flooder"]["closes"].as_object().expect("closes");
    assert!(
        closes.keys().any(|k| k.starts_with("closed 4029")),
        "the flooder was never closed with 4029: {closes:?}"
    );
    for group in ["same_chat", "other_chats"] {
        let g = &r[group];
        assert_eq!(g["closed"], 0, "{group}: a bystander was closed: {g}");
        for phase in ["baseline", "attack"] {
            for what in ["delivery", "heartbeat"] {
                let m = &g[what][phase];
                assert!(
                    m["count"].as_u64().unwrap_or(0) > 0 && m["p99_ms"].is_number(),
                    "{group} {what} {phase}: {m}"
                );
            }
        }
    }
    assert!(r["same_chat"]["flood_deliveries"].as_u64().unwrap_or(0) > 0);
    assert_eq!(r["other_chats"]["flood_deliveries"], 0);
    assert!(j["footprint"]["peak_rss_kib"].as_u64().unwrap_or(0) > 0);
    assert!(!j["samples"].as_array().expect("samples").is_empty());
    assert!(j["probes"]["probes"].as_u64().unwrap_or(0) > 0);
    let failed: Vec<&String> = finished
        .failed
        .iter()
        .filter(|f| f.contains("bystander"))
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
}
