//! Bad input closes only the socket that sent it, with a specific close code and reason;
//! every other socket keeps working. (Phoenix closes with 1011 and no reason.)
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::*;
use plume_client::Client;
use plume_wire::close;

/// Sends `bad` on a fresh socket and asserts the close code and a reason fragment, while a
/// bystander joined to the same topic keeps receiving broadcasts.
async fn closes_with(s: &TestServer, url_query: &str, bad: Bad, code: u16, reason_has: &str) {
    let mut bystander = s.v2().await;
    let jr = join_ok(&mut bystander, "echo:shared").await;

    let mut c = Client::connect(&s.url(url_query)).await.unwrap();
    if c.serializer() == plume_wire::Serializer::V2 {
        join_ok(&mut c, "echo:shared").await;
    }
    match bad {
        Bad::Text(t) => c.send_text(&t).await.unwrap(),
        Bad::Binary(b) => c.send_binary(b).await.unwrap(),
    }
    let (got_code, reason) = c.expect_close().await.unwrap();
    assert_eq!(got_code, Some(code), "reason was {reason:?}");
    assert!(
        reason.contains(reason_has),
        "reason {reason:?} lacks {reason_has:?}"
    );

    // The bystander is unaffected: it still gets replies and broadcasts.
    let reply = bystander
        .call(&jr, "echo:shared", "after", &json(r#"{"ok":1}"#))
        .await
        .unwrap();
    assert_eq!(reply.reply_status().as_deref(), Some("ok"));
    let b = bystander.wait_for(|m| m.event == "after").await.unwrap();
    assert_eq!(show(&b), r#"[null,null,"echo:shared","after",{"ok":1}]"#);
}

enum Bad {
    Text(String),
    Binary(Vec<u8>),
}

fn text(s: &str) -> Bad {
    Bad::Text(s.to_owned())
}

#[tokio::test]
async fn invalid_json_closes_with_4001() {
    let s = start().await;
    closes_with(
        &s,
        "vsn=2.0.0",
        text("this is not json"),
        close::MALFORMED_JSON,
        "malformed JSON",
    )
    .await;
}

#[tokio::test]
async fn wrong_arity_closes_with_4002() {
    let s = start().await;
    closes_with(
        &s,
        "vsn=2.0.0",
        text(r#"[null,"1","phoenix","heartbeat"]"#),
        close::INVALID_MESSAGE,
        "got 4",
    )
    .await;
}

#[tokio::test]
async fn an_object_on_v2_closes_with_4002() {
    let s = start().await;
    let frame = r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1"}"#;
    closes_with(
        &s,
        "vsn=2.0.0",
        text(frame),
        close::INVALID_MESSAGE,
        "array",
    )
    .await;
}

#[tokio::test]
async fn non_string_topic_or_event_closes_with_4002() {
    let s = start().await;
    closes_with(
        &s,
        "vsn=2.0.0",
        text(r#"[null,"1",42,"heartbeat",{}]"#),
        close::INVALID_MESSAGE,
        "topic",
    )
    .await;
    closes_with(
        &s,
        "vsn=2.0.0",
        text(r#"[null,"1","phoenix",null,{}]"#),
        close::INVALID_MESSAGE,
        "event",
    )
    .await;
}

#[tokio::test]
async fn a_ref_that_is_an_object_closes_with_4002() {
    let s = start().await;
    closes_with(
        &s,
        "vsn=2.0.0",
        text(r#"[null,{"a":1},"phoenix","heartbeat",{}]"#),
        close::INVALID_MESSAGE,
        "ref",
    )
    .await;
}

#[tokio::test]
async fn v1_frame_missing_a_key_closes_with_4002() {
    let s = start().await;
    closes_with(
        &s,
        "vsn=1.0.0",
        text(r#"{"topic":"phoenix","event":"heartbeat","ref":"1"}"#),
        close::INVALID_MESSAGE,
        "payload",
    )
    .await;
}

#[tokio::test]
async fn undecodable_binary_closes_with_4003() {
    let s = start().await;
    // Kind 1 (a reply) may only come from a server.
    closes_with(
        &s,
        "vsn=2.0.0",
        Bad::Binary(vec![1, 0, 0, 0, 0]),
        close::INVALID_BINARY,
        "kind 1",
    )
    .await;
    // Header lengths that run past the end of the frame.
    closes_with(
        &s,
        "vsn=2.0.0",
        Bad::Binary(vec![0, 9, 9, 9, 9, b'x']),
        close::INVALID_BINARY,
        "truncated",
    )
    .await;
    closes_with(
        &s,
        "vsn=2.0.0",
        Bad::Binary(vec![]),
        close::INVALID_BINARY,
        "empty",
    )
    .await;
}

#[tokio::test]
async fn binary_on_v1_closes_with_1003() {
    let s = start().await;
    closes_with(
        &s,
        "vsn=1.0.0",
        Bad::Binary(vec![0, 0, 0, 1, 1, b't', b'e']),
        close::UNSUPPORTED_DATA,
        "vsn=2.0.0",
    )
    .await;
}

#[tokio::test]
async fn an_oversize_frame_closes_with_1009() {
    let s = start_with(
        |c| c.max_frame_bytes = 4096,
        Arc::new(plume_channels::AcceptAll),
    )
    .await;
    let big = format!(
        r#"[null,"1","phoenix","heartbeat",{{"pad":"{}"}}]"#,
        "x".repeat(5000)
    );
    closes_with(
        &s,
        "vsn=2.0.0",
        Bad::Text(big),
        close::MESSAGE_TOO_BIG,
        "limit 4096",
    )
    .await;
}

#[tokio::test]
async fn non_utf8_text_closes_with_1007() {
    // A raw client is needed: tungstenite refuses to build a non-UTF-8 text message.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = start().await;
    let mut tcp = tokio::net::TcpStream::connect(s.running.local_addr())
        .await
        .unwrap();
    let req = "GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\n\
               connection: upgrade\r\nsec-websocket-version: 13\r\n\
               sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tcp.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"));
    // Masked text frame (FIN, opcode 1), 2 bytes 0xC3 0x28 (invalid UTF-8), zero mask.
    tcp.write_all(&[0x81, 0x82, 0, 0, 0, 0, 0xC3, 0x28])
        .await
        .unwrap();
    let n = tcp.read(&mut buf).await.unwrap();
    // Close frame: opcode 8, then the 2-byte code.
    assert_eq!(buf[0], 0x88, "{:?}", &buf[..n]);
    assert_eq!(u16::from_be_bytes([buf[2], buf[3]]), close::INVALID_PAYLOAD);
}
