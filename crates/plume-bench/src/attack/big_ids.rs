//! `attack --kind big-ids`: oversize identifiers (issue 9, failure 3). `--connections`
//! authenticated sockets (default 20), each joined to `chat:big`, run `--rounds` rounds
//! (default 10) at once; every round tries each case below once and waits for the answer.
//! `--id-bytes` (default 900,000) is the size of the oversize fields; every frame stays
//! under the 1 MiB frame limit, so it is the identifier limits that answer.
//!
//! | case | sent | expected |
//! |---|---|---|
//! | `mobile_ref_id` | `send_message` with a 900 KB `mobile_ref_id` | `mobile_ref_id_too_long` |
//! | `content` | `send_message` with 900 KB of content | `content_too_long` |
//! | `topic` | a join of `chat:` + 900 KB | `topic_too_long` |
//! | `chat_id` | a join of `chat:` + 250 bytes (the longest topic that fits) | `chat_id_too_long` |
//! | `event` | a push whose event is 900 KB | `event_too_long` |
//! | `join_payload` | a join with a 900 KB payload | `join_payload_too_large` |
//! | `token_sub` | an upgrade whose token's `sub` is 200 bytes | HTTP 403 |
//! | `device_id` | an upgrade with a 200-byte `device_unique_id` | HTTP 403 |
//! | `device_id_huge` | an upgrade with a 900 KB `device_unique_id` | an HTTP 4xx |
//! | `api_chat_id` | `GET /api/chats/{200 bytes}/members` | HTTP 400 |
//! | `api_chat_id_huge` | `GET /api/chats/{900 KB}/members` | an HTTP 4xx |
//!
//! After each round the socket sends a heartbeat: it must still be open. Reported: per
//! case, the answers seen and their latency; sockets closed; the server's peak RSS against
//! idle is in the footprint.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Args;
use plume_client::Client;
use plume_wire::{Payload, Ref};
use serde::Serialize;

use super::Ctx;
use super::http::{self, Ending};
use super::reply::{self, Answer};
use super::report::{Check, Counts, Millis, Outcome, bump, counts_cell};

/// big-ids flags.
#[derive(Args, Debug, Clone)]
pub struct BigIdsArgs {
    /// big-ids: bytes of each oversize identifier.
    #[arg(long, default_value_t = 900_000)]
    pub id_bytes: usize,
    /// big-ids: rounds of every case per socket.
    #[arg(long, default_value_t = 10)]
    pub rounds: usize,
}

impl BigIdsArgs {
    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), String> {
        if !(256..=1_000_000).contains(&self.id_bytes) {
            return Err("--id-bytes must be in 256..=1000000 (frames stay under 1 MiB)".into());
        }
        if !(1..=10_000).contains(&self.rounds) {
            return Err("--rounds must be in 1..=10000".into());
        }
        Ok(())
    }
}

/// One way of sending an oversize identifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Case {
    /// `send_message` with a huge `mobile_ref_id`.
    MobileRefId,
    /// `send_message` with huge content.
    Content,
    /// A join of a huge topic.
    Topic,
    /// A join of a chat id over the id limit, within the topic limit.
    ChatId,
    /// A push with a huge event name.
    Event,
    /// A join with a huge payload.
    JoinPayload,
    /// An upgrade with a token whose subject is over the id limit.
    TokenSub,
    /// An upgrade with a `device_unique_id` over the id limit.
    DeviceId,
    /// An upgrade with a huge `device_unique_id`.
    DeviceIdHuge,
    /// An API request for a chat id over the id limit.
    ApiChatId,
    /// An API request for a huge chat id.
    ApiChatIdHuge,
}

/// Every case, in the order a round tries them.
pub const CASES: [Case; 11] = [
    Case::MobileRefId,
    Case::Content,
    Case::Topic,
    Case::ChatId,
    Case::Event,
    Case::JoinPayload,
    Case::TokenSub,
    Case::DeviceId,
    Case::DeviceIdHuge,
    Case::ApiChatId,
    Case::ApiChatIdHuge,
];

/// Over the id limit (128) but short enough for every other limit.
const LONG_ID_BYTES: usize = 200;
/// `chat:` plus this is the longest topic a join may have (255 bytes).
const LONGEST_CHAT_ID: usize = 250;
/// Longest wait for one answer.
const WAIT: Duration = Duration::from_secs(10);

impl Case {
    /// The answer the server should give.
    pub fn expected(self) -> &'static str {
        match self {
            Case::MobileRefId => "mobile_ref_id_too_long",
            Case::Content => "content_too_long",
            Case::Topic => "topic_too_long",
            Case::ChatId => "chat_id_too_long",
            Case::Event => "event_too_long",
            Case::JoinPayload => "join_payload_too_large",
            Case::TokenSub | Case::DeviceId => "HTTP 403",
            Case::ApiChatId => "HTTP 400",
            Case::DeviceIdHuge | Case::ApiChatIdHuge => "HTTP 4xx",
        }
    }

    /// Its name in tables (as serialized).
    pub fn name(self) -> &'static str {
        match self {
            Case::MobileRefId => "mobile_ref_id",
            Case::Content => "content",
            Case::Topic => "topic",
            Case::ChatId => "chat_id",
            Case::Event => "event",
            Case::JoinPayload => "join_payload",
            Case::TokenSub => "token_sub",
            Case::DeviceId => "device_id",
            Case::DeviceIdHuge => "device_id_huge",
            Case::ApiChatId => "api_chat_id",
            Case::ApiChatIdHuge => "api_chat_id_huge",
        }
    }

    /// Bytes of its oversize field.
    pub fn bytes(self, id_bytes: usize) -> usize {
        match self {
            Case::ChatId => LONGEST_CHAT_ID,
            Case::TokenSub | Case::DeviceId | Case::ApiChatId => LONG_ID_BYTES,
            _ => id_bytes,
        }
    }
}

/// Whether an answer label meets an expectation (`HTTP 4xx` takes any 4xx status).
pub fn meets(label: &str, expected: &str) -> bool {
    if expected == "HTTP 4xx" {
        label
            .strip_prefix("HTTP 4")
            .is_some_and(|rest| rest.len() == 2 && rest.bytes().all(|b| b.is_ascii_digit()))
    } else {
        label == expected
    }
}

/// What one case got over all sockets and rounds.
#[derive(Clone, Debug, Serialize)]
pub struct CaseFindings {
    /// The case.
    pub case: Case,
    /// Bytes of its oversize field.
    pub bytes: usize,
    /// Attempts.
    pub attempts: u64,
    /// Answers seen, by label.
    pub seen: Counts,
    /// The answer expected.
    pub expected: &'static str,
    /// Attempts that got it.
    pub as_expected: u64,
    /// Time to the answer.
    pub answer: Option<Millis>,
}

/// The big-ids figures.
#[derive(Clone, Debug, Serialize)]
pub struct BigIdsFindings {
    /// Sockets.
    pub sockets: usize,
    /// Rounds per socket.
    pub rounds: usize,
    /// The oversize field size.
    pub id_bytes: usize,
    /// Per case.
    pub cases: Vec<CaseFindings>,
    /// Sockets the server closed (expected: none).
    pub sockets_closed: u64,
    /// How the first of them ended.
    pub first_close: Option<String>,
}

#[derive(Serialize)]
struct SendMessage<'a> {
    content: &'a str,
    mobile_ref_id: &'a str,
}

fn json<T: Serialize>(v: &T) -> Payload {
    Payload::json(v).unwrap_or_else(|_| Payload::empty())
}

/// A complete WebSocket upgrade request for a URL path and query.
fn upgrade_request(path_and_query: &str) -> Vec<u8> {
    format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .into_bytes()
}

async fn http_case(ctx: &Ctx, user: &str, case: Case, n: usize) -> anyhow::Result<String> {
    let token = |sub: &str| ctx.target.signer.sign(sub);
    let request = match case {
        Case::TokenSub => upgrade_request(&format!(
            "/socket/websocket?vsn=2.0.0&token={}",
            token(&"u".repeat(n))?
        )),
        Case::DeviceId | Case::DeviceIdHuge => upgrade_request(&format!(
            "/socket/websocket?vsn=2.0.0&token={}&device_unique_id={}",
            token(user)?,
            "d".repeat(n)
        )),
        _ => {
            let key = format!("Bearer {}", ctx.target.api_key);
            let path = format!("/api/chats/{}/members", "c".repeat(n));
            http::request("GET", &path, &[("Authorization", &key)], b"")
        }
    };
    let x = http::exchange(ctx.target.addr(), &request, WAIT).await?;
    Ok(match x.ending {
        Ending::Answered(status) => format!("HTTP {status}"),
        other => other.label(),
    })
}

async fn socket_case(c: &mut Client, join_ref: &Ref, case: Case, n: usize) -> Answer {
    let big = "a".repeat(n);
    let (topic, event, payload) = match case {
        Case::MobileRefId => (
            "chat:big".to_owned(),
            "send_message",
            json(&SendMessage {
                content: "hello",
                mobile_ref_id: &big,
            }),
        ),
        Case::Content => (
            "chat:big".to_owned(),
            "send_message",
            json(&SendMessage {
                content: &big,
                mobile_ref_id: "m-big-content",
            }),
        ),
        Case::Topic | Case::ChatId => (format!("chat:{big}"), "phx_join", Payload::empty()),
        Case::Event => ("chat:big".to_owned(), big.as_str(), Payload::empty()),
        _ => (
            "chat:big-payload".to_owned(),
            "phx_join",
            json(&serde_json::json!({ "pad": big })),
        ),
    };
    reply::push(c, Some(join_ref), &topic, event, &payload, WAIT).await
}

type Seen = BTreeMap<Case, (Counts, Vec<f64>)>;

async fn one_socket(ctx: Ctx, i: usize) -> anyhow::Result<(Seen, Option<String>)> {
    let a = &ctx.args.big_ids;
    let user = format!("big{i}");
    let mut c = ctx
        .target
        .connect(&user, None)
        .await?
        .map_err(|e| anyhow::anyhow!("socket {i}: connect: {e}"))?;
    let (join_ref, reply) = c
        .join("chat:big", &Payload::empty())
        .await
        .map_err(|e| anyhow::anyhow!("socket {i}: join: {e}"))?;
    anyhow::ensure!(
        reply.reply_status().as_deref() == Some("ok"),
        "socket {i}: join chat:big refused: {:?}",
        reply.payload
    );
    let mut seen = Seen::new();
    for _ in 0..a.rounds {
        for case in CASES {
            let n = case.bytes(a.id_bytes);
            let started = Instant::now();
            let label = match case {
                Case::TokenSub
                | Case::DeviceId
                | Case::DeviceIdHuge
                | Case::ApiChatId
                | Case::ApiChatIdHuge => http_case(&ctx, &user, case, n)
                    .await
                    .unwrap_or_else(|e| format!("failed: {e}")),
                _ => {
                    let answer = socket_case(&mut c, &join_ref, case, n).await;
                    if answer.ended() {
                        return Ok((seen, Some(answer.label())));
                    }
                    answer.label()
                }
            };
            let entry = seen.entry(case).or_default();
            bump(&mut entry.0, label);
            entry.1.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        let alive = reply::push(
            &mut c,
            None,
            "phoenix",
            "heartbeat",
            &Payload::empty(),
            WAIT,
        )
        .await;
        if alive != Answer::Reply("ok".to_owned()) {
            return Ok((seen, Some(format!("heartbeat: {}", alive.label()))));
        }
    }
    Ok((seen, None))
}

/// Runs the attack.
pub async fn run(ctx: Ctx) -> anyhow::Result<Outcome<BigIdsFindings>> {
    let n = ctx.args.connections();
    let a = ctx.args.big_ids.clone();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        tasks.push(tokio::spawn(one_socket(ctx.clone(), i)));
    }
    let deadline = tokio::time::Instant::now() + ctx.args.duration();
    let mut all = Seen::new();
    let (mut closed, mut first_close) = (0u64, None);
    for t in tasks {
        let (seen, ended) = tokio::time::timeout_at(deadline, t)
            .await
            .map_err(|_| anyhow::anyhow!("the rounds did not finish within --duration"))???;
        for (case, (counts, times)) in seen {
            let entry = all.entry(case).or_default();
            for (k, v) in counts {
                *entry.0.entry(k).or_default() += v;
            }
            entry.1.extend(times);
        }
        if let Some(e) = ended {
            closed += 1;
            first_close.get_or_insert(e);
        }
    }
    let cases: Vec<CaseFindings> = CASES
        .iter()
        .map(|&case| {
            let (seen, times) = all.remove(&case).unwrap_or_default();
            let expected = case.expected();
            CaseFindings {
                case,
                bytes: case.bytes(a.id_bytes),
                attempts: seen.values().sum(),
                as_expected: seen
                    .iter()
                    .filter(|(k, _)| meets(k, expected))
                    .map(|(_, v)| v)
                    .sum(),
                seen,
                expected,
                answer: Millis::of(times),
            }
        })
        .collect();
    let mut rows = Vec::new();
    let mut checks = Vec::new();
    for c in &cases {
        rows.push((
            format!("{} ({} bytes)", c.case.name(), c.bytes),
            format!(
                "{} in {:.1} / {:.1} ms (p50 / max)",
                counts_cell(&c.seen),
                c.answer.as_ref().map_or(0.0, |m| m.p50_ms),
                c.answer.as_ref().map_or(0.0, |m| m.max_ms)
            ),
        ));
        checks.push(Check::new(
            &format!("{}: every attempt answered {}", c.case.name(), c.expected),
            c.attempts > 0 && c.as_expected == c.attempts,
            format!(
                "{} of {}: {}",
                c.as_expected,
                c.attempts,
                counts_cell(&c.seen)
            ),
        ));
    }
    rows.push(("sockets closed".to_owned(), closed.to_string()));
    checks.push(Check::new(
        "no attacking socket was closed",
        closed == 0,
        first_close.clone().unwrap_or_else(|| "none".to_owned()),
    ));
    Ok(Outcome {
        findings: BigIdsFindings {
            sockets: n,
            rounds: a.rounds,
            id_bytes: a.id_bytes,
            cases,
            sockets_closed: closed,
            first_close,
        },
        rows,
        checks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_match_labels() {
        assert!(meets("HTTP 431", "HTTP 4xx"));
        assert!(meets("HTTP 400", "HTTP 4xx"));
        assert!(!meets("HTTP 101", "HTTP 4xx"));
        assert!(!meets("HTTP 4000", "HTTP 4xx"));
        assert!(!meets("closed without an answer", "HTTP 4xx"));
        assert!(meets("topic_too_long", "topic_too_long"));
        assert!(!meets("ok", "topic_too_long"));
        // The chat id case fits the topic limit exactly.
        assert_eq!("chat:".len() + Case::ChatId.bytes(900_000), 255);
        assert_eq!(Case::Topic.bytes(900_000), 900_000);
        // Table names are the serialized names.
        for case in CASES {
            let json = serde_json::to_string(&case).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", case.name()));
        }
    }

    #[test]
    fn upgrade_requests_are_complete() {
        let r =
            String::from_utf8(upgrade_request("/socket/websocket?vsn=2.0.0")).unwrap_or_default();
        assert!(r.starts_with("GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\n"));
        assert!(r.ends_with("\r\n\r\n"));
        assert!(r.contains("Sec-WebSocket-Key: "));
    }
}
