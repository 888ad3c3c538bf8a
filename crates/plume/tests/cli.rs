//! The `plume` binary's command line: `token`, `--print-config` layering, and refusing an
//! unsafe start.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn plume() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_plume"));
    // A developer's environment must not leak into the checks.
    for (key, _) in std::env::vars() {
        if key.starts_with("PLUME_") {
            cmd.env_remove(key);
        }
    }
    // Servers keep their embedded store in a fresh directory, never the working directory.
    cmd.env("PLUME_DATA_DIR", fresh_data_dir());
    cmd
}

/// A new empty directory under the target dir (removed with it).
fn fresh_data_dir() -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cli-data-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn token_is_signed_with_the_configured_secret() {
    let out = plume()
        .args([
            "token",
            "--sub",
            "alice",
            "--ttl",
            "60",
            "--jwt-secret",
            "s3cret",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let verifier = plume_chat::JwtVerifier::hs256(b"s3cret");
    assert_eq!(verifier.verify(token.trim()).unwrap(), "alice");
    assert!(
        plume_chat::JwtVerifier::hs256(b"other")
            .verify(token.trim())
            .is_err()
    );
}

#[test]
fn token_reads_the_secret_from_the_environment() {
    let out = plume()
        .args(["token", "--sub", "bob"])
        .env("PLUME_JWT_SECRET", "from-env")
        .output()
        .unwrap();
    let token = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        plume_chat::JwtVerifier::hs256(b"from-env")
            .verify(token.trim())
            .unwrap(),
        "bob"
    );
}

#[test]
fn print_config_layers_env_over_file_and_flags_over_env() {
    let dir = std::env::temp_dir().join(format!("plume-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("plume.toml");
    std::fs::write(
        &file,
        "[server]\nidle_timeout = 30.0\nmax_frame_bytes = 2048\n[chat]\npending_limit = 5\n",
    )
    .unwrap();
    let out = plume()
        .args(["serve", "--print-config", "--config"])
        .arg(&file)
        .args(["--max-frame-bytes", "4096"])
        .env("PLUME_MAX_FRAME_BYTES", "3072")
        .env("PLUME_IDLE_TIMEOUT", "45")
        .env("PLUME_JWT_SECRET", "hidden-value")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("idle_timeout = 45.0"),
        "env beats the file:\n{text}"
    );
    assert!(
        text.contains("max_frame_bytes = 4096"),
        "the flag beats env:\n{text}"
    );
    assert!(
        text.contains("pending_limit = 5"),
        "the file beats the default:\n{text}"
    );
    assert!(
        !text.contains("hidden-value"),
        "secrets are redacted:\n{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_public_bind_without_a_jwt_key_refuses_to_start() {
    let out = plume()
        .args(["serve", "--bind", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("PLUME_JWT_SECRET"), "{err}");
}

#[test]
fn invalid_settings_are_reported() {
    let out = plume()
        .args(["serve", "--idle-timeout", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("idle timeout"));
}

type Lines = std::io::Lines<std::io::BufReader<std::process::ChildStderr>>;

/// Starts `plume serve --bind 127.0.0.1:0 EXTRA…` and reads its log until the listening line;
/// returns the process, the rest of its log, and every line up to and including that one.
fn serve(extra: &[&str]) -> (std::process::Child, Lines, Vec<String>) {
    use std::io::{BufRead, BufReader};
    let mut child = plume()
        .args(["serve", "--bind", "127.0.0.1:0"])
        .args(extra)
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref().map_while(Result::ok) {
        let done = line.contains("listening");
        seen.push(line);
        if done {
            return (child, lines, seen);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the server never logged its listening line: {seen:?}");
}

fn signal(child: &std::process::Child, signal: &str) {
    let status = Command::new("kill")
        .arg(signal)
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn sigint_and_sigterm_stop_the_server_gracefully() {
    use std::time::{Duration, Instant};

    for sig in ["-INT", "-TERM"] {
        let (mut child, lines, _) = serve(&[]);
        signal(&child, sig);
        let deadline = Instant::now() + Duration::from_secs(10);
        let exit = loop {
            if let Some(exit) = child.try_wait().unwrap() {
                break exit;
            }
            assert!(Instant::now() < deadline, "{sig}: still running");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(exit.success(), "{sig}: {exit:?}");
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        assert!(
            rest.iter().any(|l| l.contains("stopped")),
            "{sig}: {rest:?}"
        );
    }
}

#[test]
fn json_log_format_writes_one_json_object_per_line() {
    let (mut child, _, seen) = serve(&["--log-format", "json"]);
    signal(&child, "-TERM");
    let _ = child.wait();
    // The development-secret warning comes first, then the listening line; every line is JSON.
    assert!(seen.len() >= 2, "{seen:?}");
    let values: Vec<serde_json::Value> = seen
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(values[0]["level"], "WARN");
    let listening = values.last().unwrap();
    assert_eq!(listening["level"], "INFO");
    assert_eq!(listening["fields"]["message"], "listening");
    let addr = listening["fields"]["addr"].as_str().unwrap();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
}
