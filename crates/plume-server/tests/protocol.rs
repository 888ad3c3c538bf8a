//! The Phoenix protocol over a real WebSocket: heartbeat, join, leave, duplicate join, stale
//! join_refs, replies, pushes, broadcasts, crashes, V1 and V2 binary. Expected frames are those
//! of a real Phoenix server, as protocol-spec/lifecycle.md and serializers.md write them down.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use plume_client::Client;
use plume_wire::Payload;

const QUIET: Duration = Duration::from_millis(200);

#[tokio::test]
async fn heartbeat_is_answered_with_the_same_ref() {
    let s = start().await;
    let mut c = s.v2().await;
    c.send_text(r#"[null,"1","phoenix","heartbeat",{}]"#)
        .await
        .unwrap();
    assert_eq!(
        next(&mut c).await,
        r#"[null,"1","phoenix","phx_reply",{"response":{},"status":"ok"}]"#
    );
    // join_ref and payload on a heartbeat are ignored, as in Phoenix.
    c.send_text(r#"["9","3","phoenix","heartbeat",{"x":1}]"#)
        .await
        .unwrap();
    assert_eq!(
        next(&mut c).await,
        r#"[null,"3","phoenix","phx_reply",{"response":{},"status":"ok"}]"#
    );
    // Other events on the phoenix topic are unmatched.
    c.send_text(r#"[null,"4","phoenix","something_else",{}]"#)
        .await
        .unwrap();
    assert_eq!(
        next(&mut c).await,
        r#"[null,"4","phoenix","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#
    );
}

#[tokio::test]
async fn numeric_refs_come_back_as_numbers() {
    let s = start().await;
    let mut c = s.v2().await;
    c.send_text(r#"[1,2,"phoenix","heartbeat",{}]"#)
        .await
        .unwrap();
    assert_eq!(
        next(&mut c).await,
        r#"[null,2,"phoenix","phx_reply",{"response":{},"status":"ok"}]"#
    );
    c.send_text(r#"[7,8,"echo:n","phx_join",{}]"#)
        .await
        .unwrap();
    let reply = c.recv_message().await.unwrap();
    assert!(
        show(&reply).starts_with(r#"[7,8,"echo:n","phx_reply","#),
        "{}",
        show(&reply)
    );
}

#[tokio::test]
async fn join_reply_echoes_refs_and_describes_the_connection() {
    let s = start().await;
    let mut c = Client::connect(&s.url("token=abc&user%5Bname%5D=a%20b&&vsn=2.0.0"))
        .await
        .unwrap();
    c.send_text(r#"["3","3","echo:1","phx_join",{}]"#)
        .await
        .unwrap();
    assert_eq!(
        next(&mut c).await,
        r#"["3","3","echo:1","phx_reply",{"response":{"auth_token":null,"params":{"token":"abc","user":{"name":"a b"},"vsn":"2.0.0"},"vsn":"2.0.0"},"status":"ok"}]"#
    );
}

#[tokio::test]
async fn join_refusal_failure_and_unmatched_topic() {
    let s = start().await;
    let mut c = s.v2().await;
    c.send_text(r#"["1","1","echo:a","phx_join",{"reject":"unauthorized"}]"#)
        .await
        .unwrap();
    assert_eq!(
        next(&mut c).await,
        r#"["1","1","echo:a","phx_reply",{"response":{"reason":"unauthorized"},"status":"error"}]"#
    );
    // A push to the refused topic is unmatched.
    c.send_text(r#"["1","2","echo:a","anything",{}]"#)
        .await
        .unwrap();
    assert_eq!(
        next(&mut c).await,
        r#"[null,"2","echo:a","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#
    );
    c.send_text(r#"["3","3","echo:b","phx_join",{"crash":true}]"#)
        .await
        .unwrap();
    assert_eq!(
        next(&mut c).await,
        r#"["3","3","echo:b","phx_reply",{"response":{"reason":"join crashed"},"status":"error"}]"#
    );
    c.send_text(r#"["4","4","nope:1","phx_join",{}]"#)
        .await
        .unwrap();
    assert_eq!(
        next(&mut c).await,
        r#"[null,"4","nope:1","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#
    );
}

#[tokio::test]
async fn pushes_to_unjoined_topics_are_unmatched() {
    let s = start().await;
    let mut c = s.v2().await;
    for (frame, reply_ref) in [
        (r#"["5","1","echo:2","ev",{}]"#, "1"),
        (r#"[null,"2","echo:2","ev",{}]"#, "2"),
        (r#"[null,"3","nope:1","hello",{}]"#, "3"),
    ] {
        c.send_text(frame).await.unwrap();
        let topic = if reply_ref == "3" { "nope:1" } else { "echo:2" };
        assert_eq!(
            next(&mut c).await,
            format!(
                r#"[null,"{reply_ref}","{topic}","phx_reply",{{"response":{{"reason":"unmatched topic"}},"status":"error"}}]"#
            )
        );
    }
}

#[tokio::test]
async fn leave_replies_then_closes_with_ref_equal_to_join_ref() {
    let s = start().await;
    let mut c = s.v2().await;
    c.send_text(r#"["6","4","echo:1","phx_join",{}]"#)
        .await
        .unwrap();
    next(&mut c).await;
    c.send_text(r#"["6","5","echo:1","phx_leave",{}]"#)
        .await
        .unwrap();
    assert_eq!(
        next(&mut c).await,
        r#"["6","5","echo:1","phx_reply",{"response":{},"status":"ok"}]"#
    );
    assert_eq!(next(&mut c).await, r#"["6","6","echo:1","phx_close",{}]"#);
    c.send_text(r#"["6","6","echo:1","ev",{}]"#).await.unwrap();
    assert_eq!(
        next(&mut c).await,
        r#"[null,"6","echo:1","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#
    );
    // Leaving a topic that is not joined is answered ok, echoing the join_ref.
    c.send_text(r#"["7","7","echo:3","phx_leave",{}]"#)
        .await
        .unwrap();
    assert_eq!(
        next(&mut c).await,
        r#"["7","7","echo:3","phx_reply",{"response":{},"status":"ok"}]"#
    );
    // The left topic no longer receives broadcasts.
    let mut other = s.v2().await;
    let jr = join_ok(&mut other, "echo:1").await;
    other
        .call(&jr, "echo:1", "shout", &json(r#"{"a":1}"#))
        .await
        .unwrap();
    assert!(c.expect_silence(QUIET).await.is_ok());
}

#[tokio::test]
async fn duplicate_join_replies_ok_then_closes_the_old_instance() {
    let s = start().await;
    let mut c = s.v2().await;
    c.send_text(r#"["1","1","echo:1","phx_join",{}]"#)
        .await
        .unwrap();
    next(&mut c).await;
    c.send_text(r#"["2","2","echo:1","phx_join",{}]"#)
        .await
        .unwrap();
    assert!(
        next(&mut c)
            .await
            .starts_with(r#"["2","2","echo:1","phx_reply","#)
    );
    assert_eq!(next(&mut c).await, r#"["1","1","echo:1","phx_close",{}]"#);
    // A message for the old instance (stale join_ref) is dropped without a reply.
    c.send_text(r#"["1","3","echo:1","echo",{"old":true}]"#)
        .await
        .unwrap();
    assert!(c.expect_silence(QUIET).await.is_ok());
    // The new instance answers, with its own join_ref.
    c.send_text(r#"["2","4","echo:1","echo",{"new":true}]"#)
        .await
        .unwrap();
    assert_eq!(
        next(&mut c).await,
        r#"["2","4","echo:1","phx_reply",{"response":{"new":true},"status":"ok"}]"#
    );
    // A null join_ref reaches the current instance (Phoenix 1.8.12).
    c.send_text(r#"[null,"5","echo:1","echo",{"n":1}]"#)
        .await
        .unwrap();
    assert_eq!(
        next(&mut c).await,
        r#"["2","5","echo:1","phx_reply",{"response":{"n":1},"status":"ok"}]"#
    );
    // A stale leave is ignored too; the channel stays joined.
    c.send_text(r#"["1","6","echo:1","phx_leave",{}]"#)
        .await
        .unwrap();
    assert!(c.expect_silence(QUIET).await.is_ok());
    c.send_text(r#"["2","7","echo:1","echo",{}]"#)
        .await
        .unwrap();
    assert!(
        next(&mut c)
            .await
            .starts_with(r#"["2","7","echo:1","phx_reply""#)
    );
}

#[tokio::test]
async fn pushes_carry_the_join_ref_and_broadcasts_reach_every_subscriber() {
    let s = start().await;
    let mut a = s.v2().await;
    let mut b = s.v2().await;
    let ja = join_ok(&mut a, "echo:room").await;
    let jb = join_ok(&mut b, "echo:room").await;

    let reply = a
        .call(&ja, "echo:room", "push_back", &json(r#"{"x":1}"#))
        .await
        .unwrap();
    assert_eq!(reply.reply_status().as_deref(), Some("ok"));
    let push = a.wait_for(|m| m.event == "push_back").await.unwrap();
    assert_eq!(
        show(&push),
        format!(
            r#"[{:?},null,"echo:room","push_back",{{"x":1}}]"#,
            ja.as_str()
        )
    );
    assert!(
        b.expect_silence(QUIET).await.is_ok(),
        "push_back went to another socket"
    );

    // A broadcast reaches both, sender included, with null refs.
    a.call(&ja, "echo:room", "shout", &json(r#"{"y":2}"#))
        .await
        .unwrap();
    let expected = r#"[null,null,"echo:room","shout",{"y":2}]"#;
    assert_eq!(
        show(&a.wait_for(|m| m.event == "shout").await.unwrap()),
        expected
    );
    assert_eq!(next(&mut b).await, expected);

    // broadcast_from skips the sender.
    b.call(&jb, "echo:room", "broadcast_from", &json(r#"{"z":3}"#))
        .await
        .unwrap();
    assert_eq!(
        next(&mut a).await,
        r#"[null,null,"echo:room","broadcast_from",{"z":3}]"#
    );
    assert!(
        b.expect_silence(QUIET).await.is_ok(),
        "broadcast_from reached its sender"
    );
}

#[tokio::test]
async fn a_crashing_channel_errors_and_the_socket_lives_on() {
    let s = start().await;
    let mut c = s.v2().await;
    for event in ["crash", "panic"] {
        c.send_text(r#"["1","1","echo:c","phx_join",{}]"#)
            .await
            .unwrap();
        next(&mut c).await;
        c.send_text(&format!(r#"["1","2","echo:c","{event}",{{}}]"#))
            .await
            .unwrap();
        assert_eq!(
            next(&mut c).await,
            r#"["1","1","echo:c","phx_error",{"reason":"channel_crash"}]"#,
            "{event}"
        );
        // The channel is gone, the socket is not.
        c.send_text(r#"["1","3","echo:c","echo",{}]"#)
            .await
            .unwrap();
        assert!(next(&mut c).await.contains("unmatched topic"));
        c.send_text(r#"[null,"4","phoenix","heartbeat",{}]"#)
            .await
            .unwrap();
        assert_eq!(
            next(&mut c).await,
            r#"[null,"4","phoenix","phx_reply",{"response":{},"status":"ok"}]"#
        );
    }
}

#[tokio::test]
async fn a_channel_that_stops_replies_then_closes() {
    let s = start().await;
    let mut c = s.v2().await;
    c.send_text(r#"["1","1","echo:s","phx_join",{}]"#)
        .await
        .unwrap();
    next(&mut c).await;
    c.send_text(r#"["1","2","echo:s","close",{}]"#)
        .await
        .unwrap();
    assert_eq!(
        next(&mut c).await,
        r#"["1","2","echo:s","phx_reply",{"response":{},"status":"ok"}]"#
    );
    assert_eq!(next(&mut c).await, r#"["1","1","echo:s","phx_close",{}]"#);
}

#[tokio::test]
async fn handle_info_runs_after_the_reply() {
    let s = start().await;
    let mut c = s.v2().await;
    c.send_text(r#"["1","1","echo:i","phx_join",{}]"#)
        .await
        .unwrap();
    next(&mut c).await;
    c.send_text(r#"["1","2","echo:i","info",{"later":true}]"#)
        .await
        .unwrap();
    assert_eq!(
        next(&mut c).await,
        r#"["1","2","echo:i","phx_reply",{"response":{},"status":"ok"}]"#
    );
    assert_eq!(
        next(&mut c).await,
        r#"["1",null,"echo:i","info",{"later":true}]"#
    );
}

#[tokio::test]
async fn channel_cap_refuses_the_next_join() {
    let s = start_with(
        |c| c.socket.max_channels = 2,
        std::sync::Arc::new(plume_channels::AcceptAll),
    )
    .await;
    let mut c = s.v2().await;
    join_ok(&mut c, "echo:1").await;
    join_ok(&mut c, "echo:2").await;
    c.send_text(r#"["9","9","echo:3","phx_join",{}]"#)
        .await
        .unwrap();
    assert_eq!(
        next(&mut c).await,
        r#"["9","9","echo:3","phx_reply",{"response":{"reason":"too many channels joined"},"status":"error"}]"#
    );
    // Re-joining a joined topic is a duplicate join, not a new channel.
    c.send_text(r#"["10","10","echo:2","phx_join",{}]"#)
        .await
        .unwrap();
    assert!(next(&mut c).await.contains(r#""status":"ok""#));
}

#[tokio::test]
async fn v1_sockets_speak_objects_without_join_refs() {
    let s = start().await;
    let mut raw = Client::connect(&s.url("vsn=1.0.0")).await.unwrap();
    raw.send_text(r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1"}"#)
        .await
        .unwrap();
    assert_eq!(
        next(&mut raw).await,
        r#"[null,"1","phoenix","phx_reply",{"response":{},"status":"ok"}]"#
    );
    raw.send_text(r#"{"topic":"echo:v1","event":"phx_join","payload":{},"ref":"2"}"#)
        .await
        .unwrap();
    let reply = raw.recv_message().await.unwrap();
    assert_eq!(reply.join_ref, None);
    assert_eq!(reply.reply_status().as_deref(), Some("ok"));
    raw.send_text(r#"{"topic":"echo:v1","event":"phx_leave","payload":{},"ref":"3"}"#)
        .await
        .unwrap();
    assert_eq!(
        next(&mut raw).await,
        r#"[null,"3","echo:v1","phx_reply",{"response":{},"status":"ok"}]"#
    );
    assert_eq!(
        next(&mut raw).await,
        r#"[null,null,"echo:v1","phx_close",{}]"#
    );
}

#[tokio::test]
async fn v1_frames_on_the_wire_have_phoenix_key_order() {
    // Read the raw text with a bare tungstenite client: the V1 encoding itself is the point.
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let s = start().await;
    let stream = tokio::net::TcpStream::connect(s.running.local_addr())
        .await
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(s.url("vsn=1.0.0"), stream)
        .await
        .unwrap();
    ws.send(Message::text(
        r#"{"topic":"echo:k","event":"phx_join","payload":{},"ref":"1","join_ref":"1"}"#,
    ))
    .await
    .unwrap();
    let Some(Ok(Message::Text(text))) = ws.next().await else {
        panic!("no reply")
    };
    assert!(
        text.starts_with(r#"{"event":"phx_reply","payload":{"response":{"#),
        "{text}"
    );
    assert!(
        text.ends_with(r#""status":"ok"},"ref":"1","topic":"echo:k"}"#),
        "{text}"
    );
    assert!(!text.contains("join_ref"), "{text}");
}

#[tokio::test]
async fn binary_payloads_both_ways() {
    let s = start().await;
    let mut a = s.v2().await;
    let mut b = s.v2().await;
    let ja = join_ok(&mut a, "echo:bin").await;
    join_ok(&mut b, "echo:bin").await;
    let data = Payload::Binary(Bytes::from_static(&[1, 2, 3, 0, 255]));

    // echo: a binary push gets a binary reply (kind 1) with the join_ref and ref.
    let reply = a.call(&ja, "echo:bin", "echo", &data).await.unwrap();
    assert_eq!(reply.status.as_deref(), Some("ok"));
    assert_eq!(reply.join_ref.as_ref(), Some(&ja));
    assert_eq!(reply.payload, data);

    // push_back: a binary server push (kind 0) with the join_ref and no ref.
    a.call(&ja, "echo:bin", "push_back", &data).await.unwrap();
    let push = a.wait_for(|m| m.event == "push_back").await.unwrap();
    assert_eq!(
        (push.join_ref.as_ref(), push.ref_.as_ref(), &push.payload),
        (Some(&ja), None, &data)
    );

    // A binary broadcast (kind 2) reaches the other socket with null refs.
    a.call(&ja, "echo:bin", "blob", &data).await.unwrap();
    let got = b.recv_message().await.unwrap();
    assert_eq!(
        (got.event.as_str(), got.join_ref, got.ref_, got.payload),
        ("blob", None, None, data)
    );
}

#[tokio::test]
async fn binary_transcript_frame_is_decoded() {
    // The exact client frame from binary_push.txt: join_ref "1", ref "2", chat:1, send_message.
    let s = start().await;
    let mut c = s.v2().await;
    c.send_text(r#"["1","1","echo:1","phx_join",{}]"#)
        .await
        .unwrap();
    next(&mut c).await;
    let mut frame = vec![0u8, 1, 1, 6, 4];
    frame.extend_from_slice(b"12echo:1echo");
    frame.extend_from_slice(&[1, 2, 3]);
    c.send_binary(frame).await.unwrap();
    let reply = c.recv_message().await.unwrap();
    assert_eq!(reply.status.as_deref(), Some("ok"));
    assert_eq!(reply.ref_, Some(r("2")));
    assert_eq!(
        reply.payload,
        Payload::Binary(Bytes::from_static(&[1, 2, 3]))
    );
}

#[tokio::test]
async fn the_echo_channel_will_not_rebroadcast_control_events() {
    let s = start().await;
    let mut a = s.v2().await;
    let mut b = s.v2().await;
    let ja = join_ok(&mut a, "echo:ctl").await;
    join_ok(&mut b, "echo:ctl").await;
    let reply = a
        .call(&ja, "echo:ctl", "phx_close", &json("{}"))
        .await
        .unwrap();
    assert_eq!(
        show(&reply),
        format!(
            r#"[{:?},"2","echo:ctl","phx_reply",{{"response":{{"reason":"reserved event"}},"status":"error"}}]"#,
            ja.as_str()
        )
    );
    assert!(b.expect_silence(QUIET).await.is_ok());
}
