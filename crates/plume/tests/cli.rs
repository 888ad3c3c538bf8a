//! The `plume` binary's command line: `token`, `--print-config` layering, refusing an unsafe
//! start, and the README's quick start (development mode).
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
    serve_with(plume(), extra)
}

/// [`serve`] with a prepared command (extra environment).
fn serve_with(cmd: Command, extra: &[&str]) -> (std::process::Child, Lines, Vec<String>) {
    serve_bound(cmd, "127.0.0.1:0", extra)
}

/// [`serve_with`] bound to `bind`.
fn serve_bound(
    mut cmd: Command,
    bind: &str,
    extra: &[&str],
) -> (std::process::Child, Lines, Vec<String>) {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .args(["serve", "--bind", bind])
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

/// The `addr=` of the listening line (the last line `serve` returns).
fn listening_addr(seen: &[String]) -> String {
    let line = seen.last().unwrap();
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .unwrap_or_else(|| panic!("no addr= in {line}"))
        .to_owned()
}

/// A token from `plume token` with no secret configured: the development secret.
fn dev_token(user: &str) -> String {
    let out = plume().args(["token", "--sub", user]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Connects to `addr` as `user` with a `plume token` token and joins `topic`; returns the
/// client, the join ref and the reply status.
async fn join_as(
    addr: &str,
    user: &str,
    topic: &str,
) -> (plume_client::Client, plume_wire::Ref, String) {
    let url = format!(
        "ws://{addr}/socket/websocket?token={}&vsn=2.0.0",
        dev_token(user)
    );
    let mut client = plume_client::Client::connect(&url).await.unwrap();
    let (join_ref, reply) = client
        .join(topic, &plume_wire::Payload::empty())
        .await
        .unwrap();
    let status = reply.reply_status().unwrap();
    (client, join_ref, status)
}

/// Alice, with a `plume token` token, joins `chat:1` and sends a message; both answered ok.
async fn alice_says_hi(addr: &str) {
    let (mut alice, join_ref, status) = join_as(addr, "alice", "chat:1").await;
    assert_eq!(status, "ok");
    let payload =
        plume_wire::Payload::json(&serde_json::json!({"content": "hi", "mobile_ref_id": "m1"}))
            .unwrap();
    let reply = alice
        .call(&join_ref, "chat:1", "send_message", &payload)
        .await
        .unwrap();
    assert_eq!(reply.reply_status().as_deref(), Some("ok"));
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn development_mode_opens_membership_so_the_quick_start_chats() {
    let (mut child, _, seen) = serve(&[]);
    assert!(
        seen.iter().any(|l| l.contains("chat membership is open")),
        "the start-up log says why anyone may join: {seen:?}"
    );
    let addr = listening_addr(&seen);
    block_on(alice_says_hi(&addr));
    signal(&child, "-TERM");
    let _ = child.wait();
}

#[test]
fn development_mode_keeps_a_membership_the_user_chose() {
    let print = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let dev = print(plume().args(["serve", "--print-config"]));
    assert!(dev.contains("membership = \"open\""), "{dev}");
    let flag = print(plume().args(["serve", "--print-config", "--membership", "strict"]));
    assert!(flag.contains("membership = \"strict\""), "{flag}");
    let env = print(
        plume()
            .args(["serve", "--print-config"])
            .env("PLUME_MEMBERSHIP", "strict"),
    );
    assert!(env.contains("membership = \"strict\""), "{env}");
    let dir = std::env::temp_dir().join(format!("plume-cli-membership-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("plume.toml");
    std::fs::write(&file, "[chat]\nmembership = \"strict\"\n").unwrap();
    let from_file = print(
        plume()
            .args(["serve", "--print-config", "--config"])
            .arg(&file),
    );
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(from_file.contains("membership = \"strict\""), "{from_file}");
    // Not development mode: a configured secret keeps the strict default.
    let production = print(plume().args(["serve", "--print-config", "--jwt-secret", "s"]));
    assert!(
        production.contains("membership = \"strict\""),
        "{production}"
    );
}

#[test]
fn a_refused_join_is_logged_with_its_topic_and_reason() {
    let (mut child, lines, seen) = serve(&["--membership", "strict"]);
    assert!(
        !seen.iter().any(|l| l.contains("membership is open")),
        "{seen:?}"
    );
    let addr = listening_addr(&seen);
    let status = block_on(async { join_as(&addr, "mallory", "chat:1").await.2 });
    assert_eq!(status, "error");
    signal(&child, "-TERM");
    let _ = child.wait();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let refused = rest
        .iter()
        .find(|l| l.contains("join refused"))
        .unwrap_or_else(|| panic!("no join refused line: {rest:?}"));
    assert!(refused.contains(" INFO "), "{refused}");
    assert!(
        refused.contains("topic=chat:1") && refused.contains("unauthorized"),
        "{refused}"
    );
}

/// Sends one command to Redis in its wire format and returns the first reply line.
fn redis_command(port: u16, args: &[&str]) -> String {
    use std::io::{BufRead, BufReader, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut frame = format!("*{}\r\n", args.len());
    for arg in args {
        frame.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    conn.write_all(frame.as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line).unwrap();
    line
}

#[test]
fn the_redis_password_never_reaches_the_log() {
    let redis = plume_redis::test_server::RedisServer::start();
    let password = "quick-start-secret-pw";
    assert_eq!(
        redis_command(redis.port(), &["CONFIG", "SET", "requirepass", password]),
        "+OK\r\n"
    );
    let url = format!("redis://:{password}@127.0.0.1:{}/0", redis.port());
    let (mut child, _, seen) = serve(&["--redis-url", &url]);
    signal(&child, "-TERM");
    let _ = child.wait();
    let joined = seen
        .iter()
        .find(|l| l.contains("joined the redis cluster"))
        .unwrap_or_else(|| panic!("the node did not join (wrong password?): {seen:?}"));
    assert!(
        joined.contains(&format!(
            "url=redis://<redacted>@127.0.0.1:{}/0",
            redis.port()
        )),
        "{joined}"
    );
    assert!(
        !seen.iter().any(|l| l.contains(password)),
        "the password is in the log: {seen:?}"
    );
    // A failed connect names the server but not the password either.
    let refused = plume()
        .args(["serve", "--bind", "127.0.0.1:0", "--redis-url"])
        .arg(format!("redis://:{password}@127.0.0.1:1/0"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("127.0.0.1:1") && !err.contains(password),
        "{err}"
    );
}

#[test]
fn an_empty_api_key_is_no_key() {
    let out = plume()
        .args(["serve", "--print-config"])
        .env("PLUME_API_KEY", "")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        !text.contains("api_key"),
        "an empty key is shown as unset:\n{text}"
    );
    let (mut child, _, seen) = {
        let mut cmd = plume();
        cmd.env("PLUME_API_KEY", "");
        serve_with(cmd, &[])
    };
    signal(&child, "-TERM");
    let _ = child.wait();
    assert!(
        seen.iter().any(|l| l.contains("backend HTTP API off")),
        "{seen:?}"
    );
}

#[test]
fn an_empty_jwt_secret_is_refused_with_a_clear_error() {
    for args in [&["serve"][..], &["token", "--sub", "alice"][..]] {
        let out = plume()
            .args(args)
            .env("PLUME_JWT_SECRET", "")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} accepted an empty secret");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("JWT secret is empty") && err.contains("PLUME_JWT_SECRET"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn an_address_in_use_is_named_in_the_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = plume().args(["serve", "--bind", &addr]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("binding {addr}")), "{err}");
}

#[test]
fn refused_tokens_are_logged_in_words() {
    let (mut child, lines, seen) = serve(&[]);
    let addr = listening_addr(&seen);
    let out = plume()
        .args([
            "token",
            "--sub",
            "alice",
            "--jwt-secret",
            "not-the-server-secret",
        ])
        .output()
        .unwrap();
    let wrong_key = String::from_utf8(out.stdout).unwrap();
    block_on(async {
        for token in [wrong_key.trim(), "not-a-jwt"] {
            let url = format!("ws://{addr}/socket/websocket?token={token}&vsn=2.0.0");
            match plume_client::Client::connect(&url).await {
                Err(plume_client::ClientError::Refused(status)) => assert_eq!(status, 403),
                Err(other) => panic!("{other}"),
                Ok(_) => panic!("{token} was accepted"),
            }
        }
    });
    signal(&child, "-TERM");
    let _ = child.wait();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let refused: Vec<&String> = rest
        .iter()
        .filter(|l| l.contains("upgrade refused"))
        .collect();
    assert_eq!(refused.len(), 2, "{rest:?}");
    assert!(
        refused[0].contains("connect refused: signature does not match"),
        "{}",
        refused[0]
    );
    assert!(
        refused[1].contains("connect refused: malformed token"),
        "{}",
        refused[1]
    );
}

#[test]
fn an_unusable_data_dir_refuses_to_start_and_names_the_path() {
    let base = fresh_data_dir();
    std::fs::create_dir_all(&base).unwrap();
    // A data dir under a regular file cannot be created.
    let file = base.join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let under_file = file.join("data");
    let out = plume()
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(&under_file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&*under_file.to_string_lossy()), "{err}");
    // A damaged database is refused, never replaced by an empty one.
    let damaged = base.join("damaged");
    std::fs::create_dir_all(&damaged).unwrap();
    std::fs::write(damaged.join("plume.db"), vec![0x5a; 8192]).unwrap();
    let out = plume()
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(&damaged)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("plume.db") && err.contains("cannot be used"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(damaged.join("plume.db")).unwrap(),
        vec![0x5a; 8192]
    );
}

#[test]
fn readyz_on_the_embedded_store_checks_the_database_and_counts_commits() {
    use std::io::{Read, Write};
    let (mut child, _, seen) = serve(&[]);
    let addr = listening_addr(&seen);
    block_on(alice_says_hi(&addr));
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let body: serde_json::Value =
        serde_json::from_str(out.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["checks"]["store"], "ok", "{body}");
    assert!(
        body["checks"]["counters"]["commits"].as_u64().unwrap() >= 1,
        "{body}"
    );
    signal(&child, "-TERM");
    let _ = child.wait();
}

/// One HTTP/1.1 request to `127.0.0.1:port`; the status and the body.
fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

fn port_of(seen: &[String]) -> u16 {
    let addr = listening_addr(seen);
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn development_mode_serves_the_web_chat_and_signs_tokens_for_it() {
    let (mut child, _, seen) = serve(&[]);
    let port = port_of(&seen);
    assert!(seen.iter().any(|l| l.contains("web chat on")), "{seen:?}");
    let (status, page) = http(port, "GET", "/", "");
    assert_eq!(status, 200);
    assert!(page.contains("<script src=\"/app.js\""), "{page}");
    let (status, script) = http(port, "GET", "/app.js", "");
    assert_eq!(status, 200);
    assert!(script.contains("phx_join"), "the bundle holds phoenix.js");
    assert_eq!(http(port, "GET", "/app.css", "").0, 200);
    assert_eq!(http(port, "GET", "/nothing-here", "").0, 404);
    assert_eq!(http(port, "POST", "/", "").0, 405);
    let (status, body) = http(port, "POST", "/dev/token", r#"{"user_id":"alice"}"#);
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["user_id"], "alice");
    // The token is one the server itself accepts: signed with the development secret.
    let verifier = plume_chat::JwtVerifier::hs256(b"plume-development-secret-not-for-production");
    assert_eq!(
        verifier.verify(body["token"].as_str().unwrap()).unwrap(),
        "alice"
    );
    for bad in [r#"{"user_id":""}"#, r#"{"user_id":7}"#, "[]", "nope"] {
        assert_eq!(http(port, "POST", "/dev/token", bad).0, 400, "{bad}");
    }
    let long = format!(r#"{{"user_id":"{}"}}"#, "a".repeat(129));
    assert_eq!(http(port, "POST", "/dev/token", &long).0, 400);
    assert_eq!(http(port, "GET", "/dev/token", "").0, 405);
    signal(&child, "-TERM");
    let _ = child.wait();
}

#[test]
fn the_token_endpoint_exists_only_in_development_mode() {
    // A real secret on loopback: the page is there (it takes #token=), the endpoint is not.
    let (mut child, _, seen) = serve(&["--jwt-secret", "a-real-secret"]);
    let port = port_of(&seen);
    assert_eq!(http(port, "GET", "/", "").0, 200);
    let (status, body) = http(port, "POST", "/dev/token", r#"{"user_id":"alice"}"#);
    assert_eq!(status, 404, "{body}");
    signal(&child, "-TERM");
    let _ = child.wait();
    // A non-loopback bind (which needs a secret): the web chat is off by default, and on
    // when asked for, still without the endpoint.
    for (extra, page) in [(&[][..], 404), (&["--web", "on"][..], 200)] {
        let mut cmd = plume();
        cmd.env("PLUME_JWT_SECRET", "a-real-secret");
        let (mut child, _, seen) = serve_bound(cmd, "0.0.0.0:0", extra);
        let port = port_of(&seen);
        assert_eq!(http(port, "GET", "/", "").0, page, "{extra:?}");
        assert_eq!(
            http(port, "POST", "/dev/token", r#"{"user_id":"alice"}"#).0,
            404
        );
        signal(&child, "-TERM");
        let _ = child.wait();
    }
}

#[test]
fn web_off_serves_no_page_and_print_config_shows_the_effective_switch() {
    let (mut child, _, seen) = serve(&["--web", "off"]);
    let port = port_of(&seen);
    assert_eq!(http(port, "GET", "/", "").0, 404);
    assert_eq!(
        http(port, "POST", "/dev/token", r#"{"user_id":"alice"}"#).0,
        404
    );
    signal(&child, "-TERM");
    let _ = child.wait();
    let print = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let loopback = print(plume().args(["serve", "--print-config"]));
    assert!(loopback.contains("web = \"on\""), "{loopback}");
    let public = print(
        plume()
            .args(["serve", "--print-config", "--bind", "0.0.0.0:4000"])
            .env("PLUME_JWT_SECRET", "s"),
    );
    assert!(public.contains("web = \"off\""), "{public}");
    let env = print(
        plume()
            .args(["serve", "--print-config"])
            .env("PLUME_WEB", "off"),
    );
    assert!(env.contains("web = \"off\""), "{env}");
}
