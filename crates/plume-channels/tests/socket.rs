//! The socket state machine without any network: messages in, frames out.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use bytes::Bytes;
use std::time::Duration;

use plume_channels::{
    Broadcast, Channel, ChannelError, ConnectInfo, ConnectRequest, Context, JoinError, LocalPubSub,
    OutboundRx, Outcome, PubSub, Reply, Router, Socket, SocketConfig,
};
use plume_wire::close::{self, CloseReason};
use plume_wire::{Frame, Json, Payload, Serializer, event};

struct Pushy;

impl Channel for Pushy {
    type State = ();

    async fn join(
        _: &Arc<()>,
        topic: &str,
        _: Payload,
        ctx: &mut Context<'_>,
    ) -> Result<(Pushy, Payload), JoinError> {
        ctx.push("welcome", &Payload::empty());
        if topic.ends_with("no") {
            return Err(JoinError::reason("nope"));
        }
        Ok((Pushy, Payload::empty()))
    }

    async fn handle_in(
        &mut self,
        _: &str,
        _: Payload,
        _: &mut Context<'_>,
    ) -> Result<Outcome, ChannelError> {
        Ok(Reply::ok_empty().into())
    }
}

/// A channel whose `wait` waits for its gate to open (a store round trip, say); `quick`
/// answers at once, `bye` stops the channel.
struct Gated {
    gate: Arc<tokio::sync::Notify>,
}

impl Channel for Gated {
    type State = tokio::sync::Notify;

    async fn join(
        gate: &Arc<tokio::sync::Notify>,
        _: &str,
        _: Payload,
        _: &mut Context<'_>,
    ) -> Result<(Gated, Payload), JoinError> {
        Ok((Gated { gate: gate.clone() }, Payload::empty()))
    }

    async fn handle_in(
        &mut self,
        event: &str,
        _: Payload,
        ctx: &mut Context<'_>,
    ) -> Result<Outcome, ChannelError> {
        match event {
            "wait" => {
                self.gate.notified().await;
                ctx.push("waited", &Payload::empty());
                Ok(Reply::ok_empty().into())
            }
            "bye" => Ok(Outcome::Stop(Some(Reply::ok_empty()))),
            _ => Ok(Reply::ok_empty().into()),
        }
    }
}

fn socket() -> Socket {
    socket_with(SocketConfig::default(), None, Arc::new(LocalPubSub::new())).0
}

fn socket_with(
    config: SocketConfig,
    socket_id: Option<&str>,
    pubsub: Arc<LocalPubSub>,
) -> (Socket, OutboundRx) {
    socket_gated(
        config,
        socket_id,
        pubsub,
        Arc::new(tokio::sync::Notify::new()),
    )
}

/// A socket and the gate its `g:*` channels wait on, joined to `g:1`.
async fn gated(config: SocketConfig) -> (Socket, OutboundRx, Arc<tokio::sync::Notify>) {
    let gate = Arc::new(tokio::sync::Notify::new());
    let (mut s, rx) = socket_gated(config, None, Arc::new(LocalPubSub::new()), gate.clone());
    feed(&mut s, r#"["1","1","g:1","phx_join",{}]"#).await;
    (s, rx, gate)
}

/// A socket whose `g:*` channels wait on `gate`.
fn socket_gated(
    config: SocketConfig,
    socket_id: Option<&str>,
    pubsub: Arc<LocalPubSub>,
    gate: Arc<tokio::sync::Notify>,
) -> (Socket, OutboundRx) {
    let router = Arc::new(
        Router::new()
            .channel::<Pushy>("p:*", Arc::new(()))
            .channel::<Gated>("g:*", gate),
    );
    Socket::new(connect_info(socket_id), router, pubsub, config)
}

/// What an anonymous V2 client presents, with socket id `socket_id`.
fn connect_info(socket_id: Option<&str>) -> ConnectInfo {
    ConnectInfo {
        request: ConnectRequest {
            params: Default::default(),
            auth_token: None,
            serializer: Serializer::V2,
            peer: None,
        },
        socket_id: socket_id.map(str::to_owned),
        assigns: None,
    }
}

async fn feed(s: &mut Socket, text: &str) -> Vec<String> {
    let (frames, close) = feed_close(s, text).await;
    assert_eq!(close, None, "unexpected close after {text}");
    frames
}

fn texts(s: &mut Socket) -> Vec<String> {
    s.drain_frames()
        .map(|f| match f {
            Frame::Text(b) => String::from_utf8(b.to_vec()).unwrap(),
            Frame::Binary(_) => panic!("binary"),
        })
        .collect()
}

async fn feed_close(s: &mut Socket, text: &str) -> (Vec<String>, Option<CloseReason>) {
    let msg = Serializer::V2
        .decode_text(Bytes::copy_from_slice(text.as_bytes()))
        .unwrap();
    let close = s.handle_message(msg).await;
    (texts(s), close)
}

/// Feeds a message that must produce nothing yet (it waits behind a busy channel).
async fn waits(s: &mut Socket, text: &str) {
    assert!(
        feed(s, text).await.is_empty(),
        "{text} was answered at once"
    );
}

/// Moves everything queued for the socket through `handle_out`, as the driver does.
async fn drain_outbound(s: &mut Socket, rx: &mut OutboundRx) {
    let mut batch = Vec::new();
    let waited = tokio::time::timeout(Duration::from_secs(1), rx.recv_batch(&mut batch)).await;
    assert!(waited.is_ok(), "nothing was queued for the socket");
    for item in batch {
        assert_eq!(s.handle_out(item).await, None);
    }
}

const RATE_LIMITED: &str = r#"{"response":{"reason":"rate_limited"},"status":"error"}"#;

#[tokio::test(start_paused = true)]
async fn pushes_over_the_rate_are_refused_and_a_flooder_is_closed() {
    let config = SocketConfig {
        max_pushes_per_second: 10,
        push_burst: 5,
        max_rate_limited_per_10s: 20,
        ..SocketConfig::default()
    };
    let (mut s, _rx) = socket_with(config, None, Arc::new(LocalPubSub::new()));
    feed(&mut s, r#"["1","1","p:yes","phx_join",{}]"#).await;
    for i in 0..5 {
        let frames = feed(&mut s, &format!(r#"["1","{i}","p:yes","ev",{{}}]"#)).await;
        assert_eq!(
            frames,
            [format!(
                r#"["1","{i}","p:yes","phx_reply",{{"response":{{}},"status":"ok"}}]"#
            )]
        );
    }
    // The burst is spent: the next push is refused with the join_ref of the channel.
    assert_eq!(
        feed(&mut s, r#"["1","9","p:yes","ev",{}]"#).await,
        [format!(r#"["1","9","p:yes","phx_reply",{RATE_LIMITED}]"#)]
    );
    // Heartbeats are never limited.
    for _ in 0..50 {
        assert_eq!(
            feed(&mut s, r#"[null,"h","phoenix","heartbeat",{}]"#).await,
            [r#"[null,"h","phoenix","phx_reply",{"response":{},"status":"ok"}]"#]
        );
    }
    // 100 ms at 10/s is one more push.
    tokio::time::advance(Duration::from_millis(100)).await;
    assert_eq!(feed(&mut s, r#"["1","10","p:yes","ev",{}]"#).await.len(), 1);
    assert!(feed(&mut s, r#"["1","11","p:yes","ev",{}]"#).await[0].contains("rate_limited"));
    // 20 refusals are tolerated (two were above); the 21st closes the socket with 4029.
    for i in 0..18 {
        let frames = feed(&mut s, &format!(r#"["1","r{i}","p:yes","ev",{{}}]"#)).await;
        assert!(frames[0].contains("rate_limited"), "{frames:?}");
    }
    let (frames, close) = feed_close(&mut s, r#"["1","x","p:yes","ev",{}]"#).await;
    assert!(frames.is_empty());
    assert_eq!(close.map(|c| c.code), Some(close::RATE_LIMITED));
}

#[tokio::test(start_paused = true)]
async fn refusals_waiting_behind_a_busy_channel_are_answered_before_the_close() {
    let config = SocketConfig {
        max_pushes_per_second: 10,
        push_burst: 1,
        max_rate_limited_per_10s: 3,
        ..SocketConfig::default()
    };
    let (mut s, _rx, _gate) = gated(config).await;
    // The burst's one push makes g:1 busy; what follows is refused, and the refusals wait
    // behind it (its replies come in order).
    waits(&mut s, r#"["1","w","g:1","wait",{}]"#).await;
    for i in 0..3 {
        waits(&mut s, &format!(r#"["1","r{i}","g:1","quick",{{}}]"#)).await;
    }
    // One refusal too many: the socket closes, and the three waiting refusals go out first.
    let (frames, close) = feed_close(&mut s, r#"["1","x","g:1","quick",{}]"#).await;
    assert_eq!(close.map(|c| c.code), Some(close::RATE_LIMITED));
    assert_eq!(
        frames,
        (0..3)
            .map(|i| format!(r#"["1","r{i}","g:1","phx_reply",{RATE_LIMITED}]"#))
            .collect::<Vec<_>>()
    );
}

/// A socket of identity `id` on `router`, joined to `p:yes`.
async fn socket_of(router: &Arc<Router>, config: SocketConfig, id: &str) -> Socket {
    let (mut s, rx) = Socket::new(
        connect_info(Some(id)),
        router.clone(),
        Arc::new(LocalPubSub::new()),
        config,
    );
    // The queue's receiver goes with the socket's life in the driver; here it may go.
    drop(rx);
    feed(&mut s, r#"["1","1","p:yes","phx_join",{}]"#).await;
    s
}

/// Pushes admitted (answered ok) out of `n`, numbering refs from `from`.
async fn admitted(s: &mut Socket, n: usize, from: usize) -> usize {
    let mut ok = 0;
    for i in from..from + n {
        let frames = feed(s, &format!(r#"["1","{i}","p:yes","ev",{{}}]"#)).await;
        if frames[0].contains(r#""status":"ok""#) {
            ok += 1;
        }
    }
    ok
}

#[tokio::test(start_paused = true)]
async fn the_sockets_of_one_identity_share_a_budget_and_reconnecting_gives_no_fresh_burst() {
    let config = SocketConfig {
        max_pushes_per_second: 10,
        push_burst: 5,
        max_pushes_per_second_per_id: Some(10),
        max_rate_limited_per_10s: 0,
        ..SocketConfig::default()
    };
    let router = Arc::new(Router::new().channel::<Pushy>("p:*", Arc::new(())));
    let mut a = socket_of(&router, config, "user_socket:u1").await;
    let mut b = socket_of(&router, config, "user_socket:u1").await;
    let mut other = socket_of(&router, config, "user_socket:u2").await;
    // Each socket alone would take its burst of 5; together they share the identity's 20.
    assert_eq!(admitted(&mut a, 5, 0).await, 5);
    assert_eq!(admitted(&mut b, 5, 0).await, 5);
    assert_eq!(router.id_budgets().len(), 2);
    // A flooder closes its sockets and reconnects with new ones, ten times over: the
    // identity's bucket is not refilled by that (per-socket buckets alone would give 5 each).
    drop((a, b));
    let mut reconnected = 0;
    for round in 0..10 {
        let mut s = socket_of(&router, config, "user_socket:u1").await;
        reconnected += admitted(&mut s, 5, round * 5).await;
    }
    assert_eq!(
        reconnected, 10,
        "what was left of the identity's burst of 20, nothing more"
    );
    // Another identity is not affected.
    assert_eq!(admitted(&mut other, 5, 0).await, 5);
    // The rate refills the identity as it does a socket.
    tokio::time::advance(Duration::from_millis(500)).await;
    let mut later = socket_of(&router, config, "user_socket:u1").await;
    assert_eq!(admitted(&mut later, 10, 100).await, 5, "500 ms at 10/s");
}

#[tokio::test(start_paused = true)]
async fn the_identity_budget_is_off_with_the_socket_limit_unless_set() {
    let config = SocketConfig {
        max_pushes_per_second: 0,
        ..SocketConfig::default()
    };
    let router = Arc::new(Router::new().channel::<Pushy>("p:*", Arc::new(())));
    let mut a = socket_of(&router, config, "user_socket:u1").await;
    assert_eq!(admitted(&mut a, 1000, 0).await, 1000);
    assert!(
        router.id_budgets().is_empty(),
        "no budget is kept when the limit is off"
    );
}

#[tokio::test(start_paused = true)]
async fn joins_have_their_own_bucket_and_unjoined_topics_get_the_plain_reason() {
    let config = SocketConfig {
        max_joins_per_second: 1,
        join_burst: 2,
        ..SocketConfig::default()
    };
    let (mut s, _rx) = socket_with(config, None, Arc::new(LocalPubSub::new()));
    feed(&mut s, r#"["1","1","p:a","phx_join",{}]"#).await;
    feed(&mut s, r#"["2","2","p:b","phx_join",{}]"#).await;
    assert_eq!(
        feed(&mut s, r#"["3","3","p:c","phx_join",{}]"#).await,
        [format!(r#"["3","3","p:c","phx_reply",{RATE_LIMITED}]"#)]
    );
    // Pushes are not affected by the join bucket.
    assert_eq!(feed(&mut s, r#"["1","4","p:a","ev",{}]"#).await.len(), 1);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(feed(&mut s, r#"["3","5","p:c","phx_join",{}]"#).await[0].contains(r#""status":"ok""#));
}

#[tokio::test]
async fn sizes_a_client_chooses_are_bounded() {
    let mut s = socket();
    let long_topic = format!("p:{}", "t".repeat(254));
    let frames = feed(
        &mut s,
        &format!(r#"["1","1","{long_topic}","phx_join",{{}}]"#),
    )
    .await;
    assert_eq!(frames.len(), 1);
    assert!(
        frames[0].contains(r#"{"response":{"reason":"topic_too_long"},"status":"error"}"#),
        "{frames:?}"
    );
    assert_eq!(s.joined().count(), 0, "a topic that long is never kept");
    // 255 bytes is still fine.
    let topic = format!("p:{}", "t".repeat(253));
    let frames = feed(&mut s, &format!(r#"["2","2","{topic}","phx_join",{{}}]"#)).await;
    assert!(frames[0].contains(r#""status":"ok""#), "{frames:?}");

    let event = "e".repeat(65);
    assert_eq!(
        feed(&mut s, &format!(r#"["2","3","{topic}","{event}",{{}}]"#)).await,
        [format!(
            r#"[null,"3","{topic}","phx_reply",{{"response":{{"reason":"event_too_long"}},"status":"error"}}]"#
        )]
    );
    let event = "e".repeat(64);
    assert!(
        feed(&mut s, &format!(r#"["2","4","{topic}","{event}",{{}}]"#)).await[0]
            .contains(r#""status":"ok""#)
    );

    let big = format!(r#"{{"x":"{}"}}"#, "a".repeat(4096));
    assert_eq!(
        feed(&mut s, &format!(r#"["5","5","p:big","phx_join",{big}]"#)).await,
        [
            r#"["5","5","p:big","phx_reply",{"response":{"reason":"join_payload_too_large"},"status":"error"}]"#
        ]
    );
}

#[tokio::test]
async fn a_leave_order_on_the_socket_id_closes_that_channel_only() {
    let pubsub = Arc::new(LocalPubSub::new());
    let (mut s, mut rx) = socket_with(
        SocketConfig::default(),
        Some("user_socket:u"),
        pubsub.clone(),
    );
    feed(&mut s, r#"["1","1","p:a","phx_join",{}]"#).await;
    feed(&mut s, r#"["2","2","p:b","phx_join",{}]"#).await;
    let order = |topic: &str, payload: &str| Broadcast {
        topic: topic.into(),
        event: event::LEAVE_TOPIC.into(),
        payload: Payload::Json(
            Json::from_text(Bytes::copy_from_slice(payload.as_bytes())).unwrap(),
        ),
        from: None,
        seq: None,
    };
    // The same event on a channel topic (anything a channel could broadcast) is an ordinary
    // broadcast: delivered as a frame, the channel stays.
    pubsub
        .broadcast(order("p:a", r#"{"topic":"p:a"}"#))
        .unwrap();
    drain_outbound(&mut s, &mut rx).await;
    assert_eq!(s.joined().count(), 2);
    texts(&mut s);
    // On the socket id topic it removes the named channel, with phx_close on its join_ref.
    pubsub
        .broadcast(order("user_socket:u", r#"{"topic":"p:a"}"#))
        .unwrap();
    let mut batch = Vec::new();
    rx.recv_batch(&mut batch).await;
    for item in batch {
        assert_eq!(s.handle_out(item).await, None);
    }
    assert_eq!(texts(&mut s), [r#"["1","1","p:a","phx_close",{}]"#]);
    let joined: Vec<_> = s.joined().map(|(t, _)| t.to_owned()).collect();
    assert_eq!(joined, ["p:b"]);
    // A push to the removed topic is now unmatched.
    assert!(feed(&mut s, r#"["1","3","p:a","ev",{}]"#).await[0].contains("unmatched topic"));
    // A malformed order and one for a topic not joined change nothing.
    pubsub
        .broadcast(order("user_socket:u", r#"{"x":1}"#))
        .unwrap();
    pubsub
        .broadcast(order("user_socket:u", r#"{"topic":"p:zzz"}"#))
        .unwrap();
    let mut batch = Vec::new();
    rx.recv_batch(&mut batch).await;
    assert_eq!(batch.len(), 1, "the malformed order is not queued");
    for item in batch {
        assert_eq!(s.handle_out(item).await, None);
    }
    assert!(texts(&mut s).is_empty());
    assert_eq!(s.joined().count(), 1);
}

#[tokio::test]
async fn pushes_made_while_joining_follow_the_reply() {
    let mut s = socket();
    assert_eq!(
        feed(&mut s, r#"["1","1","p:yes","phx_join",{}]"#).await,
        [
            r#"["1","1","p:yes","phx_reply",{"response":{},"status":"ok"}]"#,
            r#"["1",null,"p:yes","welcome",{}]"#,
        ]
    );
}

#[tokio::test]
async fn pushes_made_by_a_refused_join_are_dropped() {
    let mut s = socket();
    assert_eq!(
        feed(&mut s, r#"["1","1","p:no","phx_join",{}]"#).await,
        [r#"["1","1","p:no","phx_reply",{"response":{"reason":"nope"},"status":"error"}]"#]
    );
    assert_eq!(s.joined().count(), 0);
}

#[tokio::test]
async fn null_join_ref_on_v2_join_uses_the_ref() {
    let mut s = socket();
    let frames = feed(&mut s, r#"[null,"5","p:yes","phx_join",{}]"#).await;
    assert_eq!(
        frames[0],
        r#"["5","5","p:yes","phx_reply",{"response":{},"status":"ok"}]"#
    );
    let joined: Vec<_> = s
        .joined()
        .map(|(t, jr)| (t.to_owned(), jr.cloned()))
        .collect();
    assert_eq!(joined, [("p:yes".to_owned(), Some("5".into()))]);
}

#[tokio::test]
async fn a_waiting_callback_holds_up_only_its_own_channel() {
    let (mut s, _rx, gate) = gated(SocketConfig::default()).await;
    feed(&mut s, r#"["2","2","p:yes","phx_join",{}]"#).await;
    waits(&mut s, r#"["1","3","g:1","wait",{}]"#).await;
    assert!(s.busy());
    // The heartbeat and the other channel are answered while g:1 waits.
    assert_eq!(
        feed(&mut s, r#"[null,"4","phoenix","heartbeat",{}]"#).await,
        [r#"[null,"4","phoenix","phx_reply",{"response":{},"status":"ok"}]"#]
    );
    assert_eq!(
        feed(&mut s, r#"["2","5","p:yes","ev",{}]"#).await,
        [r#"["2","5","p:yes","phx_reply",{"response":{},"status":"ok"}]"#]
    );
    // What arrives for g:1 waits behind its callback, in order.
    waits(&mut s, r#"["1","6","g:1","quick",{}]"#).await;
    waits(&mut s, r#"["1","7","g:1","phx_leave",{}]"#).await;
    waits(&mut s, r#"["1","8","g:1","quick",{}]"#).await;
    gate.notify_one();
    let done = tokio::time::timeout(Duration::from_secs(5), s.next_done())
        .await
        .unwrap();
    s.finish(done).await;
    assert!(!s.busy());
    assert_eq!(
        texts(&mut s),
        [
            r#"["1",null,"g:1","waited",{}]"#,
            r#"["1","3","g:1","phx_reply",{"response":{},"status":"ok"}]"#,
            r#"["1","6","g:1","phx_reply",{"response":{},"status":"ok"}]"#,
            r#"["1","7","g:1","phx_reply",{"response":{},"status":"ok"}]"#,
            r#"["1","1","g:1","phx_close",{}]"#,
            // Sent after the leave: the channel is gone.
            r#"[null,"8","g:1","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#,
        ]
    );
    assert_eq!(s.joined().map(|(t, _)| t).collect::<Vec<_>>(), ["p:yes"]);
}

#[tokio::test]
async fn a_join_of_a_busy_topic_replaces_it_once_the_callback_is_done() {
    let (mut s, _rx, gate) = gated(SocketConfig::default()).await;
    waits(&mut s, r#"["1","2","g:1","wait",{}]"#).await;
    waits(&mut s, r#"["3","3","g:1","phx_join",{}]"#).await;
    waits(&mut s, r#"["3","4","g:1","quick",{}]"#).await;
    gate.notify_one();
    let done = s.next_done().await;
    s.finish(done).await;
    assert_eq!(
        texts(&mut s),
        [
            r#"["1",null,"g:1","waited",{}]"#,
            r#"["1","2","g:1","phx_reply",{"response":{},"status":"ok"}]"#,
            r#"["3","3","g:1","phx_reply",{"response":{},"status":"ok"}]"#,
            r#"["1","1","g:1","phx_close",{}]"#,
            r#"["3","4","g:1","phx_reply",{"response":{},"status":"ok"}]"#,
        ]
    );
}

#[tokio::test]
async fn a_client_that_queues_too_much_behind_a_busy_channel_is_not_read() {
    let (mut s, _rx, gate) = gated(SocketConfig {
        max_pushes_per_second: 0,
        ..SocketConfig::default()
    })
    .await;
    feed(&mut s, r#"["1","2","g:1","wait",{}]"#).await;
    for i in 0..plume_channels::socket::MAX_QUEUED_MESSAGES {
        assert!(s.accepting(), "after {i}");
        feed(&mut s, &format!(r#"["1","q{i}","g:1","quick",{{}}]"#)).await;
    }
    assert!(!s.accepting());
    gate.notify_one();
    let done = s.next_done().await;
    s.finish(done).await;
    assert!(s.accepting());
    assert_eq!(
        texts(&mut s).len(),
        2 + plume_channels::socket::MAX_QUEUED_MESSAGES
    );
}

#[tokio::test]
async fn a_closing_socket_lets_its_callbacks_finish_before_terminate() {
    let (mut s, _rx, gate) = gated(SocketConfig::default()).await;
    feed(&mut s, r#"["1","2","g:1","wait",{}]"#).await;
    let opener = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        gate.notify_one();
    });
    tokio::time::timeout(Duration::from_secs(5), s.close())
        .await
        .unwrap();
    opener.await.unwrap();
    assert_eq!(s.joined().count(), 0);
}

/// A channel whose join reply says how many connect params its socket still holds; `READS`
/// is what it declares as [`Channel::READS_CONNECT_PARAMS`].
struct Peek<const READS: bool>;

impl<const READS: bool> Channel for Peek<READS> {
    type State = ();
    const READS_CONNECT_PARAMS: bool = READS;

    async fn join(
        _: &Arc<()>,
        _: &str,
        _: Payload,
        ctx: &mut Context<'_>,
    ) -> Result<(Self, Payload), JoinError> {
        let held = ctx.connect_info().request.params.len();
        Ok((
            Peek,
            Payload::json(&serde_json::json!({"params": held})).unwrap(),
        ))
    }

    async fn handle_in(
        &mut self,
        _: &str,
        _: Payload,
        _: &mut Context<'_>,
    ) -> Result<Outcome, ChannelError> {
        Ok(Reply::ok_empty().into())
    }
}

/// The join reply of `topic` on a socket connected with two params (a token among them).
async fn params_seen(router: Router, topic: &str) -> String {
    let mut info = connect_info(None);
    info.request
        .params
        .insert("token".into(), "a.jwt.here".into());
    info.request.params.insert("vsn".into(), "2.0.0".into());
    let (mut s, _rx) = Socket::new(
        info,
        Arc::new(router),
        Arc::new(LocalPubSub::new()),
        SocketConfig::default(),
    );
    feed(&mut s, &format!(r#"["1","1","{topic}","phx_join",{{}}]"#))
        .await
        .concat()
}

#[tokio::test]
async fn connect_params_are_dropped_unless_some_channel_reads_them() {
    let blind = Router::new().channel::<Peek<false>>("b:*", Arc::new(()));
    assert!(!blind.keeps_connect_params());
    assert!(
        params_seen(blind, "b:1")
            .await
            .contains(r#"{"response":{"params":0},"status":"ok"}"#)
    );
    // One reading route keeps them for every channel of the socket.
    let mixed = Router::new()
        .channel::<Peek<false>>("b:*", Arc::new(()))
        .channel::<Peek<true>>("r:*", Arc::new(()));
    assert!(mixed.keeps_connect_params());
    assert!(
        params_seen(mixed, "b:1")
            .await
            .contains(r#"{"response":{"params":2},"status":"ok"}"#)
    );
}
