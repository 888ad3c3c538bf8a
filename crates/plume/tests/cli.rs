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
    cmd
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

#[test]
fn sigint_and_sigterm_stop_the_server_gracefully() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    for signal in ["-INT", "-TERM"] {
        let mut child = plume()
            .args(["serve", "--bind", "127.0.0.1:0"])
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let listening = lines
            .by_ref()
            .map_while(Result::ok)
            .find(|l| l.contains("listening"));
        assert!(listening.is_some(), "no listening line");
        let status = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        let exit = loop {
            if let Some(exit) = child.try_wait().unwrap() {
                break exit;
            }
            assert!(Instant::now() < deadline, "{signal}: still running");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(exit.success(), "{signal}: {exit:?}");
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        assert!(
            rest.iter().any(|l| l.contains("stopped")),
            "{signal}: {rest:?}"
        );
    }
}

#[test]
fn json_log_format_writes_one_json_object_per_line() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let mut child = plume()
        .args(["serve", "--bind", "127.0.0.1:0", "--log-format", "json"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let line = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("listening"))
        .unwrap();
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    let value: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(value["fields"]["message"], "listening", "{line}");
    assert!(
        value["fields"]["addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{line}"
    );
    assert_eq!(value["level"], "INFO");
}
