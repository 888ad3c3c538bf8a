//! A node killed with SIGKILL and started again keeps every acknowledged message, membership,
//! pending notification and send key: on the embedded store (the default), and on Redis with
//! AOF (the node killed, then Redis crashed too). Real processes, real sockets.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};

use plume_client::Client;
use plume_wire::{Payload, Ref};
use serde_json::{Value, json};

const SECRET: &str = "restart-test-secret";
const KEY: &str = "restart-api-key";

/// Starts `plume serve` with `extra` arguments; returns the process and its address.
fn start(extra: &[&str]) -> (Child, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_plume"));
    for (key, _) in std::env::vars() {
        if key.starts_with("PLUME_") {
            cmd.env_remove(key);
        }
    }
    let mut child = cmd
        .args(["serve", "--bind", "127.0.0.1:0", "--jwt-secret", SECRET])
        .args(["--api-key", KEY, "--membership", "strict"])
        .args(extra)
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.by_ref().map_while(Result::ok) {
        if let Some(addr) = line
            .contains("listening")
            .then(|| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
            })
            .flatten()
        {
            let addr = addr.to_owned();
            // Keep draining the log so the server never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines.by_ref() {});
            return (child, addr);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the server did not start");
}

fn sigkill(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

fn api(addr: &str, method: &str, path: &str) -> (u16, Value) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
         authorization: Bearer {KEY}\r\ncontent-length: 0\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

async fn connect(addr: &str, user: &str) -> Client {
    let token = plume_chat::auth::sign_hs256(SECRET.as_bytes(), user, 600).unwrap();
    Client::connect(&format!(
        "ws://{addr}/socket/websocket?token={token}&vsn=2.0.0"
    ))
    .await
    .unwrap()
}

fn payload(v: Value) -> Payload {
    Payload::json(&v).unwrap()
}

fn body(m: &plume_wire::client::ServerMessage) -> Value {
    match &m.payload {
        Payload::Json(j) => j.parse().unwrap(),
        Payload::Binary(_) => Value::Null,
    }
}

async fn join(c: &mut Client, topic: &str, ask: Value) -> (Ref, Value) {
    let (jr, reply) = c.join(topic, &payload(ask)).await.unwrap();
    assert_eq!(reply.reply_status().as_deref(), Some("ok"), "{topic}");
    let resp = match reply.reply_response().unwrap() {
        Payload::Json(j) => j.parse().unwrap(),
        Payload::Binary(_) => Value::Null,
    };
    (jr, resp)
}

async fn send(c: &mut Client, jr: &Ref, r: &str) -> Value {
    let reply = c
        .call(
            jr,
            "chat:k",
            "send_message",
            &payload(json!({"content": r, "mobile_ref_id": r})),
        )
        .await
        .unwrap();
    assert_eq!(reply.reply_status().as_deref(), Some("ok"));
    match reply.reply_response().unwrap() {
        Payload::Json(j) => j.parse().unwrap(),
        Payload::Binary(_) => Value::Null,
    }
}

const SENT: usize = 30;

/// Before the kill: members, 30 acknowledged messages, 30 pending notifications for olga.
/// Returns the chat's epoch and the reply to message m7.
async fn before_the_kill(addr: &str) -> (Value, Value) {
    for user in ["alice", "bob", "olga"] {
        assert_eq!(
            api(addr, "PUT", &format!("/api/chats/k/members/{user}")).0,
            200
        );
    }
    {
        let mut alice = connect(addr, "alice").await;
        let (jr, head) = join(&mut alice, "chat:k", json!({})).await;
        let mut m7 = Value::Null;
        for i in 0..SENT {
            let reply = send(&mut alice, &jr, &format!("m{i}")).await;
            if i == 7 {
                m7 = reply;
            }
        }
        (head["epoch"].clone(), m7)
    }
}

/// After the restart: everything is there.
async fn after_the_restart(addr: &str, epoch: &Value, m7: &Value) {
    let (code, page) = api(addr, "GET", "/api/chats/k/messages?limit=100");
    assert_eq!(code, 200);
    let contents: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..SENT).map(|i| format!("m{i}")).collect();
    assert_eq!(
        contents, expected,
        "every acknowledged message is in the history"
    );
    let (_, members) = api(addr, "GET", "/api/chats/k/members");
    assert_eq!(members, json!({"members": ["alice", "bob", "olga"]}));
    {
        // Bob recovers the whole log from 0 (strict membership admits him: it survived).
        let mut bob = connect(addr, "bob").await;
        let (_, reply) = join(&mut bob, "chat:k", json!({"last_seq": 0, "epoch": epoch})).await;
        assert_eq!(reply["recovered"], true, "{reply}");
        assert_eq!(&reply["epoch"], epoch, "the epoch survived");
        let mut seqs = Vec::new();
        while seqs.len() < SENT {
            let m = bob
                .wait_for(|m| m.event == "receive_message")
                .await
                .unwrap();
            seqs.push(body(&m)["seq"].as_u64().unwrap());
        }
        assert_eq!(seqs, (1..=SENT as u64).collect::<Vec<_>>());
        // Olga was offline the whole time: her pending notifications survived.
        let mut olga = connect(addr, "olga").await;
        join(&mut olga, "notifications:olga", json!({})).await;
        let all = olga
            .wait_for(|m| m.event == "pending_notifications")
            .await
            .unwrap();
        assert_eq!(body(&all)["notifications"].as_array().unwrap().len(), SENT);
        // Alice's retry of m7 gets the original and delivers nothing.
        let mut alice = connect(addr, "alice").await;
        let (jr, _) = join(&mut alice, "chat:k", json!({})).await;
        let again = send(&mut alice, &jr, "m7").await;
        assert_eq!(&again, m7, "the send key survived");
        let extra = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            bob.wait_for(|m| m.event == "receive_message"),
        )
        .await;
        assert!(extra.is_err(), "a retry delivered again: {extra:?}");
    }
}

#[tokio::test]
async fn a_sigkilled_node_on_the_embedded_store_keeps_everything() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("restart-embedded-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = ["--data-dir", dir.to_str().unwrap()];
    let (mut first, addr) = start(&data);
    let (epoch, m7) = before_the_kill(&addr).await;
    sigkill(&mut first);
    let (mut second, addr) = start(&data);
    after_the_restart(&addr, &epoch, &m7).await;
    sigkill(&mut second);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_sigkilled_node_on_redis_with_aof_keeps_everything_even_when_redis_crashes_too() {
    let mut redis = plume_redis::test_server::RedisServer::start();
    let url = redis.url();
    let cluster = ["--redis-url", url.as_str(), "--node-id", "n1"];
    let (mut first, addr) = start(&cluster);
    let (epoch, m7) = before_the_kill(&addr).await;
    sigkill(&mut first);
    redis.crash_and_restart();
    let (mut second, addr) = start(&cluster);
    after_the_restart(&addr, &epoch, &m7).await;
    sigkill(&mut second);
}
