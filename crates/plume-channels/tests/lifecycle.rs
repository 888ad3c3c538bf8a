//! The rules of protocol-spec/lifecycle.md at the state-machine level: frames in, frames out,
//! no network and no clock. Each test names the section it checks. (The same rules run over
//! TCP in plume-server's protocol tests and through phoenix.js in tests/js.)
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use plume_channels::echo::EchoChannel;
use plume_channels::{
    ConnectInfo, ConnectRequest, LocalPubSub, OutboundRx, Router, Socket, SocketConfig,
};
use plume_wire::{Frame, Serializer};

fn socket_with(serializer: Serializer, config: SocketConfig) -> (Socket, OutboundRx) {
    let info = ConnectInfo {
        request: ConnectRequest {
            params: Default::default(),
            auth_token: None,
            serializer,
            peer: None,
        },
        socket_id: None,
        assigns: None,
    };
    let router = Arc::new(Router::new().channel::<EchoChannel>("echo:*", Arc::new(())));
    Socket::new(info, router, Arc::new(LocalPubSub::new()), config)
}

fn v2() -> (Socket, OutboundRx) {
    socket_with(Serializer::V2, SocketConfig::default())
}

/// Feeds one text frame; returns the frames the socket wrote for it.
async fn feed(s: &mut Socket, text: &str) -> Vec<String> {
    let msg = s
        .serializer()
        .decode_text(Bytes::copy_from_slice(text.as_bytes()))
        .unwrap();
    assert_eq!(s.handle_message(msg).await, None, "no close after {text}");
    texts(s)
}

fn texts(s: &mut Socket) -> Vec<String> {
    s.frames()
        .drain(..)
        .map(|f| match f {
            Frame::Text(b) => String::from_utf8(b.to_vec()).unwrap(),
            Frame::Binary(_) => panic!("binary frame"),
        })
        .collect()
}

/// Moves what the outbound queue holds through the socket, as the driver does.
async fn drain(s: &mut Socket, rx: &mut OutboundRx) -> Vec<String> {
    let mut batch = Vec::new();
    tokio::time::timeout(Duration::from_secs(1), rx.recv_batch(&mut batch))
        .await
        .unwrap();
    for item in batch {
        assert_eq!(s.handle_out(item).await, None);
    }
    texts(s)
}

const OK_EMPTY: &str = r#"{"response":{},"status":"ok"}"#;

fn reply(jr: &str, r: &str, topic: &str, body: &str) -> String {
    format!(r#"[{jr},{r},"{topic}","phx_reply",{body}]"#)
}

#[tokio::test]
async fn heartbeat_is_answered_with_its_ref() {
    let (mut s, _rx) = v2();
    assert_eq!(
        feed(&mut s, r#"[null,"7","phoenix","heartbeat",{}]"#).await,
        [reply("null", r#""7""#, "phoenix", OK_EMPTY)]
    );
    // Refs keep their JSON type.
    assert_eq!(
        feed(&mut s, r#"[null,8,"phoenix","heartbeat",{}]"#).await,
        [reply("null", "8", "phoenix", OK_EMPTY)]
    );
}

#[tokio::test]
async fn join_outcomes() {
    let (mut s, _rx) = socket_with(
        Serializer::V2,
        SocketConfig {
            max_channels: 2,
            ..SocketConfig::default()
        },
    );
    let ok = feed(&mut s, r#"["3","3","echo:1","phx_join",{}]"#).await;
    assert!(
        ok[0].starts_with(r#"["3","3","echo:1","phx_reply",{"response":{"#),
        "{ok:?}"
    );
    assert!(ok[0].ends_with(r#""status":"ok"}]"#));
    assert_eq!(
        feed(
            &mut s,
            r#"["1","1","echo:a","phx_join",{"reject":"unauthorized"}]"#
        )
        .await,
        [reply(
            r#""1""#,
            r#""1""#,
            "echo:a",
            r#"{"response":{"reason":"unauthorized"},"status":"error"}"#
        )]
    );
    assert_eq!(
        feed(&mut s, r#"["3","3","echo:b","phx_join",{"crash":true}]"#).await,
        [reply(
            r#""3""#,
            r#""3""#,
            "echo:b",
            r#"{"response":{"reason":"join crashed"},"status":"error"}"#
        )]
    );
    assert_eq!(
        feed(&mut s, r#"["4","4","nope:1","phx_join",{}]"#).await,
        [reply(
            "null",
            r#""4""#,
            "nope:1",
            r#"{"response":{"reason":"unmatched topic"},"status":"error"}"#
        )]
    );
    feed(&mut s, r#"["5","5","echo:2","phx_join",{}]"#).await;
    assert_eq!(
        feed(&mut s, r#"["9","9","echo:3","phx_join",{}]"#).await,
        [reply(
            r#""9""#,
            r#""9""#,
            "echo:3",
            r#"{"response":{"reason":"too many channels joined"},"status":"error"}"#
        )]
    );
    // A refused join leaves the topic unjoined.
    assert_eq!(
        feed(&mut s, r#"["1","2","echo:a","anything",{}]"#).await,
        [reply(
            "null",
            r#""2""#,
            "echo:a",
            r#"{"response":{"reason":"unmatched topic"},"status":"error"}"#
        )]
    );
}

#[tokio::test]
async fn messages_to_a_joined_topic_and_stale_join_refs() {
    let (mut s, _rx) = v2();
    feed(&mut s, r#"["2","2","echo:1","phx_join",{}]"#).await;
    assert_eq!(
        feed(&mut s, r#"["2","4","echo:1","echo",{"new":true}]"#).await,
        [reply(
            r#""2""#,
            r#""4""#,
            "echo:1",
            r#"{"response":{"new":true},"status":"ok"}"#
        )]
    );
    // A null join_ref is delivered, and answered with the instance's join_ref.
    assert_eq!(
        feed(&mut s, r#"[null,"5","echo:1","echo",{"n":1}]"#).await,
        [reply(
            r#""2""#,
            r#""5""#,
            "echo:1",
            r#"{"response":{"n":1},"status":"ok"}"#
        )]
    );
    // Another join_ref is for an earlier instance: dropped without a reply.
    assert!(
        feed(&mut s, r#"["1","6","echo:1","echo",{}]"#)
            .await
            .is_empty()
    );
    // Pushes come before the reply of the message that made them.
    assert_eq!(
        feed(&mut s, r#"["2","7","echo:1","push_back",{"x":1}]"#).await,
        [
            r#"["2",null,"echo:1","push_back",{"x":1}]"#.to_owned(),
            reply(r#""2""#, r#""7""#, "echo:1", OK_EMPTY)
        ]
    );
}

#[tokio::test]
async fn leave_replies_then_closes_and_leaving_an_unjoined_topic_is_fine() {
    let (mut s, _rx) = v2();
    feed(&mut s, r#"["1","1","echo:1","phx_join",{}]"#).await;
    assert_eq!(
        feed(&mut s, r#"["1","2","echo:1","phx_leave",{}]"#).await,
        [
            reply(r#""1""#, r#""2""#, "echo:1", OK_EMPTY),
            r#"["1","1","echo:1","phx_close",{}]"#.to_owned()
        ]
    );
    assert_eq!(s.joined().count(), 0);
    assert_eq!(
        feed(&mut s, r#"["1","3","echo:1","phx_leave",{}]"#).await,
        [reply(r#""1""#, r#""3""#, "echo:1", OK_EMPTY)]
    );
}

#[tokio::test]
async fn a_duplicate_join_replies_then_closes_the_old_instance() {
    let (mut s, _rx) = v2();
    feed(&mut s, r#"["1","1","echo:1","phx_join",{}]"#).await;
    let frames = feed(&mut s, r#"["3","3","echo:1","phx_join",{}]"#).await;
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert!(frames[0].starts_with(r#"["3","3","echo:1","phx_reply""#));
    assert_eq!(frames[1], r#"["1","1","echo:1","phx_close",{}]"#);
    let joined: Vec<_> = s
        .joined()
        .map(|(t, jr)| (t.to_owned(), jr.cloned()))
        .collect();
    assert_eq!(joined, [("echo:1".to_owned(), Some("3".into()))]);
}

#[tokio::test]
async fn stop_and_crash_end_only_that_channel() {
    let (mut s, _rx) = v2();
    feed(&mut s, r#"["1","1","echo:1","phx_join",{}]"#).await;
    feed(&mut s, r#"["2","2","echo:2","phx_join",{}]"#).await;
    feed(&mut s, r#"["3","3","echo:3","phx_join",{}]"#).await;
    assert_eq!(
        feed(&mut s, r#"["1","4","echo:1","close",{}]"#).await,
        [
            reply(r#""1""#, r#""4""#, "echo:1", OK_EMPTY),
            r#"["1","1","echo:1","phx_close",{}]"#.to_owned()
        ]
    );
    assert_eq!(
        feed(&mut s, r#"["2","5","echo:2","crash",{}]"#).await,
        [r#"["2","2","echo:2","phx_error",{"reason":"channel_crash"}]"#]
    );
    assert_eq!(
        feed(&mut s, r#"["3","6","echo:3","panic",{}]"#).await,
        [r#"["3","3","echo:3","phx_error",{"reason":"channel_crash"}]"#]
    );
    assert_eq!(s.joined().count(), 0);
    // The socket lives on.
    assert_eq!(
        feed(&mut s, r#"[null,"7","phoenix","heartbeat",{}]"#).await,
        [reply("null", r#""7""#, "phoenix", OK_EMPTY)]
    );
}

#[tokio::test]
async fn handle_info_runs_after_the_reply() {
    let (mut s, mut rx) = v2();
    feed(&mut s, r#"["1","1","echo:1","phx_join",{}]"#).await;
    assert_eq!(
        feed(&mut s, r#"["1","2","echo:1","info",{"later":true}]"#).await,
        [reply(r#""1""#, r#""2""#, "echo:1", OK_EMPTY)]
    );
    assert_eq!(
        drain(&mut s, &mut rx).await,
        [r#"["1",null,"echo:1","info",{"later":true}]"#]
    );
}

#[tokio::test]
async fn broadcasts_reach_the_topic_and_broadcast_from_skips_the_sender() {
    let (mut s, mut rx) = v2();
    feed(&mut s, r#"["1","1","echo:1","phx_join",{}]"#).await;
    assert_eq!(
        feed(&mut s, r#"["1","2","echo:1","shout",{"a":1}]"#).await,
        [reply(r#""1""#, r#""2""#, "echo:1", OK_EMPTY)]
    );
    assert_eq!(
        drain(&mut s, &mut rx).await,
        [r#"[null,null,"echo:1","shout",{"a":1}]"#]
    );
    feed(&mut s, r#"["1","3","echo:1","broadcast_from",{"b":2}]"#).await;
    let mut batch = Vec::new();
    let nothing = tokio::time::timeout(Duration::from_millis(50), rx.recv_batch(&mut batch)).await;
    assert!(
        nothing.is_err(),
        "the sender does not get its own broadcast_from"
    );
    assert_eq!(
        feed(&mut s, r#"["1","4","echo:1","phx_custom",{}]"#).await,
        [reply(
            r#""1""#,
            r#""4""#,
            "echo:1",
            r#"{"response":{"reason":"reserved event"},"status":"error"}"#
        )]
    );
}

#[tokio::test]
async fn v1_speaks_objects_without_join_refs() {
    let (mut s, _rx) = socket_with(Serializer::V1, SocketConfig::default());
    // Keys in Phoenix's order; no join_ref anywhere.
    assert_eq!(
        feed(
            &mut s,
            r#"{"topic":"echo:1","event":"phx_join","payload":{},"ref":"1"}"#
        )
        .await,
        [
            r#"{"event":"phx_reply","payload":{"response":{"auth_token":null,"params":{},"vsn":"1.0.0"},"status":"ok"},"ref":"1","topic":"echo:1"}"#
        ]
    );
    assert_eq!(
        feed(
            &mut s,
            r#"{"topic":"echo:1","event":"echo","payload":{"x":1},"ref":"2"}"#
        )
        .await,
        [
            r#"{"event":"phx_reply","payload":{"response":{"x":1},"status":"ok"},"ref":"2","topic":"echo:1"}"#
        ]
    );
}
