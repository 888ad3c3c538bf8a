//! The durable chat log, sentence by sentence: gapless seqs in order under concurrent
//! senders, recovery on rejoin (and when it is refused), history, what survives a restart of
//! the embedded store, and pending notifications deleted only once written.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::*;
use plume_channels::outbound::Batch;
use plume_channels::{ConnectInfo, ConnectRequest, LocalPubSub, PubSub, Router, Socket};
use plume_chat::store::{Notification, PendingItem};
use plume_chat::{ChatConfig, ChatService, Membership, Stores, UserSession};
use plume_client::Client;
use plume_wire::{Frame, Message, Serializer};
use serde_json::{Value, json};

/// Joins with `payload`; returns (join_ref, status, response).
async fn join_with(c: &mut Client, topic: &str, payload: &str) -> (plume_wire::Ref, String, Value) {
    let (jr, reply) = c.join(topic, &json(payload)).await.unwrap();
    let status = reply.reply_status().unwrap();
    let response = match reply.reply_response().unwrap() {
        plume_wire::Payload::Json(j) => j.parse().unwrap(),
        plume_wire::Payload::Binary(_) => Value::Null,
    };
    (jr, status, response)
}

/// The seqs of the next `n` `receive_message`s.
async fn receive_seqs(c: &mut Client, n: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.push(
            next_event(c, "receive_message").await["seq"]
                .as_u64()
                .unwrap(),
        );
    }
    out
}

async fn send_n(c: &mut Client, jr: &plume_wire::Ref, chat: &str, tag: &str, n: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    for i in 0..n {
        let body = format!(r#"{{"content":"{tag}-{i}","mobile_ref_id":"{tag}-{i}"}}"#);
        let (status, reply, sent) = send(c, jr, chat, &body).await;
        assert_eq!(status, "ok", "{reply}");
        assert_eq!(sent["seq"], reply["seq"]);
        seqs.push(reply["seq"].as_u64().unwrap());
    }
    seqs
}

/// Four senders at once into one chat: every seq from 1 to 4n taken once, and a reader
/// receives all of them in seq order.
async fn concurrent_senders_get_gapless_seqs_in_order(chat: Chat) {
    let senders = ["s1", "s2", "s3", "s4"];
    let per = 60;
    let mut reader = chat.connect("reader", "r").await;
    join_ok(&mut reader, "chat:busy").await;
    let mut tasks = Vec::new();
    for s in senders {
        let mut c = chat.connect(s, s).await;
        let jr = join_ok(&mut c, "chat:busy").await;
        tasks.push(tokio::spawn(async move {
            send_n(&mut c, &jr, "busy", s, per).await
        }));
    }
    let got = receive_seqs(&mut reader, senders.len() * per).await;
    let expected: Vec<u64> = (1..=(senders.len() * per) as u64).collect();
    assert_eq!(
        got, expected,
        "the reader saw seqs out of order or with a gap"
    );
    let mut acked: Vec<u64> = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    acked.sort_unstable();
    assert_eq!(acked, expected, "each seq acknowledged exactly once");
    assert_no(&mut reader, "receive_message").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_get_gapless_seqs_in_order_in_memory() {
    let chat = start_with(|c| c.membership = Membership::Open).await;
    concurrent_senders_get_gapless_seqs_in_order(chat).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_get_gapless_seqs_in_order_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let chat = start_embedded(dir.path(), |c| c.membership = Membership::Open).await;
    concurrent_senders_get_gapless_seqs_in_order(chat).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejoin_replays_what_was_missed_then_live_ones_with_no_gap_or_duplicate() {
    let (chat, faults) = start_faulty(|c| c.membership = Membership::Open).await;
    let mut alice = chat.connect("alice", "a").await;
    let ajr = join_ok(&mut alice, "chat:r").await;
    send_n(&mut alice, &ajr, "r", "before", 5).await;

    let mut bob = chat.connect("bob", "b").await;
    let (_, status, reply) = join_with(&mut bob, "chat:r", "{}").await;
    assert_eq!(status, "ok");
    assert_eq!(reply["last_seq"], 5);
    let epoch = reply["epoch"].as_str().unwrap().to_owned();
    assert_eq!(epoch.len(), 16, "{epoch}");
    assert!(
        reply.get("recovered").is_none(),
        "no recovery was asked: {reply}"
    );
    bob.close().await.unwrap();

    // Bob is away for 20 messages; his rejoin races 15 more. The log's head is read 300 ms
    // after the rejoin subscribed, so messages sent in between arrive both live and in the
    // replay: the socket must write each once.
    send_n(&mut alice, &ajr, "r", "away", 20).await;
    let mut bob = chat.connect("bob", "b2").await;
    faults
        .head_delay_ms
        .store(300, std::sync::atomic::Ordering::SeqCst);
    let sender = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        send_n(&mut alice, &ajr, "r", "during", 15).await;
        alice
    });
    let ask = format!(r#"{{"last_seq":5,"epoch":"{epoch}"}}"#);
    let (_, status, reply) = join_with(&mut bob, "chat:r", &ask).await;
    assert_eq!(
        (status.as_str(), &reply["recovered"]),
        ("ok", &json!(true)),
        "{reply}"
    );
    assert_eq!(reply["epoch"], epoch.as_str());
    let got = receive_seqs(&mut bob, 35).await;
    assert_eq!(got, (6..=40).collect::<Vec<u64>>());
    sender.await.unwrap();
    assert_no(&mut bob, "receive_message").await;
}

#[tokio::test]
async fn recovery_is_refused_for_another_epoch_a_trimmed_gap_or_too_long_a_gap() {
    let chat = start_with(|c| {
        c.membership = Membership::Open;
        c.history_limit = 5;
        c.recovery_limit = 3;
    })
    .await;
    let mut alice = chat.connect("alice", "a").await;
    let (ajr, _, reply) = join_with(&mut alice, "chat:t", "{}").await;
    assert_eq!(reply["last_seq"], 0, "an empty chat starts at 0: {reply}");
    let epoch = reply["epoch"].as_str().unwrap().to_owned();
    send_n(&mut alice, &ajr, "t", "m", 10).await;

    let cases = [
        (2, epoch.clone(), false, "messages 3..5 were trimmed"),
        (
            5,
            epoch.clone(),
            false,
            "5 missed is over the recovery limit of 3",
        ),
        (8, "0123456789abcdef".to_owned(), false, "another epoch"),
        (11, epoch.clone(), false, "ahead of the log"),
        (10, epoch.clone(), true, "nothing missed"),
        (8, epoch.clone(), true, "two missed"),
    ];
    for (last_seq, e, recovered, why) in cases {
        let mut bob = chat.connect("bob", "b").await;
        let ask = format!(r#"{{"last_seq":{last_seq},"epoch":"{e}"}}"#);
        let (_, status, reply) = join_with(&mut bob, "chat:t", &ask).await;
        assert_eq!(status, "ok");
        assert_eq!(reply["recovered"], recovered, "{why}: {reply}");
        assert_eq!(reply["last_seq"], 10);
        if recovered {
            let replayed = receive_seqs(&mut bob, (10 - last_seq) as usize).await;
            assert_eq!(
                replayed,
                ((last_seq + 1)..=10).collect::<Vec<u64>>(),
                "{why}"
            );
        }
        assert_no(&mut bob, "receive_message").await;
    }
}

#[tokio::test]
async fn history_pages_back_and_a_join_can_include_recent_messages() {
    let chat = start_with(|c| c.membership = Membership::Open).await;
    let mut alice = chat.connect("alice", "a").await;
    let jr = join_ok(&mut alice, "chat:h").await;
    send_n(&mut alice, &jr, "h", "m", 7).await;
    let page = |resp: &Value| -> (Vec<u64>, bool) {
        let seqs = resp["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect();
        (seqs, resp["has_more"].as_bool().unwrap())
    };
    let mut ask = async |payload: &str| {
        let reply = alice
            .call(&jr, "chat:h", "history", &json(payload))
            .await
            .unwrap();
        let body = match reply.reply_response().unwrap() {
            plume_wire::Payload::Json(j) => j.parse::<Value>().unwrap(),
            plume_wire::Payload::Binary(_) => Value::Null,
        };
        (reply.reply_status().unwrap(), body)
    };
    let (status, resp) = ask(r#"{"limit":3}"#).await;
    assert_eq!(
        (status.as_str(), page(&resp)),
        ("ok", (vec![5, 6, 7], true))
    );
    let first = &resp["messages"][0];
    assert_eq!(first["content"], "m-4");
    assert_eq!(first["sender_id"], "alice");
    assert_eq!(first["chat_id"], "h");
    assert!(first["message_id"].is_string() && first["timestamp"].is_string());
    let (_, resp) = ask(r#"{"before_seq":5,"limit":3}"#).await;
    assert_eq!(page(&resp), (vec![2, 3, 4], true));
    let (_, resp) = ask(r#"{"before_seq":2}"#).await;
    assert_eq!(page(&resp), (vec![1], false));
    for (bad, reason) in [
        (r#"{"limit":0}"#, "invalid_limit"),
        (r#"{"limit":101}"#, "invalid_limit"),
        (r#"{"limit":"5"}"#, "invalid_limit"),
        (r#"{"before_seq":-1}"#, "invalid_before_seq"),
        (r#"{"before_seq":0}"#, "invalid_before_seq"),
        ("[]", "invalid_payload"),
    ] {
        let (status, resp) = ask(bad).await;
        assert_eq!(
            (status.as_str(), resp),
            ("error", json!({ "reason": reason })),
            "{bad}"
        );
    }

    let mut bob = chat.connect("bob", "b").await;
    let (_, status, reply) = join_with(&mut bob, "chat:h", r#"{"history":2}"#).await;
    assert_eq!(status, "ok");
    assert_eq!(
        page(&json!({"messages": reply["messages"], "has_more": false})).0,
        [6, 7]
    );
    for (bad, reason) in [
        (r#"{"last_seq":"x"}"#, "invalid_last_seq"),
        (r#"{"last_seq":-3}"#, "invalid_last_seq"),
        (r#"{"last_seq":1,"epoch":5}"#, "invalid_epoch"),
        (r#"{"history":101}"#, "invalid_history"),
    ] {
        let mut c = chat.connect("carol", "c").await;
        let (_, status, resp) = join_with(&mut c, "chat:h", bad).await;
        assert_eq!(
            (status.as_str(), resp),
            ("error", json!({ "reason": reason })),
            "{bad}"
        );
    }

    let (code, body) = chat
        .api("GET", "/api/chats/h/messages?before_seq=3&limit=10", None)
        .await;
    assert_eq!((code, page(&body)), (200, (vec![1, 2], false)));
    let (code, body) = chat.api("GET", "/api/chats/h/messages", None).await;
    assert_eq!((code, page(&body).0.len()), (200, 7));
    let (code, _) = chat
        .api("GET", "/api/chats/h/messages?limit=500", None)
        .await;
    assert_eq!(code, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_keeps_messages_members_pending_and_send_keys_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (id, epoch) = {
        let chat = start_embedded(dir.path(), |_| {}).await;
        chat.add_member("k", "alice").await;
        chat.add_member("k", "bob").await;
        let mut alice = chat.connect("alice", "a").await;
        let jr = join_ok(&mut alice, "chat:k").await;
        let (_, reply, _) = send(
            &mut alice,
            &jr,
            "k",
            r#"{"content":"kept","mobile_ref_id":"once"}"#,
        )
        .await;
        let (_, _, head) = join_with(&mut chat.connect("alice", "a2").await, "chat:k", "{}").await;
        chat.running.shutdown().await;
        (
            reply["message_id"].as_str().unwrap().to_owned(),
            head["epoch"].clone(),
        )
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let chat = start_embedded(dir.path(), |_| {}).await;
    // Membership survived (strict membership admits bob), and so did the log and its epoch.
    let mut bob = chat.connect("bob", "b").await;
    let (_, status, reply) = join_with(&mut bob, "chat:k", r#"{"history":5}"#).await;
    assert_eq!(status, "ok", "{reply}");
    assert_eq!(
        (reply["last_seq"].clone(), reply["epoch"].clone()),
        (json!(1), epoch)
    );
    assert_eq!(reply["messages"][0]["message_id"], id.as_str());
    // Bob was offline: his pending notification survived too.
    join_ok(&mut bob, "notifications:bob").await;
    let pending = next_event(&mut bob, "pending_notifications").await;
    assert_eq!(pending["notifications"][0]["message_id"], id.as_str());
    assert_eq!(pending["notifications"][0]["seq"], 1);
    // The send key survived: a retry gets the original and delivers nothing.
    let mut alice = chat.connect("alice", "a").await;
    let jr = join_ok(&mut alice, "chat:k").await;
    let (status, reply, sent) = send(
        &mut alice,
        &jr,
        "k",
        r#"{"content":"kept","mobile_ref_id":"once"}"#,
    )
    .await;
    assert_eq!((status.as_str(), &reply["message_id"]), ("ok", &json!(id)));
    assert_eq!(
        (sent["status"].clone(), sent["seq"].clone()),
        (json!("sent"), json!(1))
    );
    assert_no(&mut bob, "receive_message").await;
}

/// A socket of the chat service driven without a network: the notifications channel's
/// pending delivery, step by step.
struct Bare {
    socket: Socket,
    rx: plume_channels::OutboundRx,
}

impl Bare {
    fn new(service: &ChatService, pubsub: &Arc<dyn PubSub>, user: &str) -> Bare {
        let connect = ConnectInfo {
            request: ConnectRequest {
                params: serde_json::Map::new(),
                auth_token: None,
                serializer: Serializer::V2,
                peer: None,
            },
            socket_id: None,
            assigns: Some(Arc::new(UserSession {
                user_id: user.into(),
                device_unique_id: String::new(),
                preferred_language: "en".into(),
                online: Default::default(),
            })),
        };
        let router = Arc::new(service.routes(Router::new()));
        let (socket, rx) = Socket::new(connect, router, pubsub.clone(), Default::default());
        Bare { socket, rx }
    }

    async fn join(&mut self, topic: &str) {
        let text = format!(r#"["1","1","{topic}","phx_join",{{}}]"#);
        let msg: Message = Serializer::V2.decode_text(text.into()).unwrap();
        assert_eq!(self.socket.handle_message(msg).await, None);
    }

    /// Runs the queued items once (what one turn of the connection driver does) and returns
    /// the frames produced, as text.
    async fn turn(&mut self) -> Vec<String> {
        let mut items = Vec::new();
        let got = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            self.rx.recv_batch(&mut items),
        )
        .await;
        if let Ok(Batch::Items) = got {
            for item in items {
                self.socket.handle_out(item).await;
            }
        }
        self.socket
            .drain_frames()
            .map(|f| match f {
                Frame::Text(b) => String::from_utf8(b.to_vec()).unwrap(),
                Frame::Binary(_) => String::new(),
            })
            .collect()
    }
}

#[tokio::test]
async fn pending_notifications_are_deleted_only_after_they_were_written() {
    let pubsub: Arc<dyn PubSub> = Arc::new(LocalPubSub::new());
    let stores = Stores::memory(ChatConfig::default().retention());
    let service = ChatService::new(ChatConfig::default(), stores.clone(), pubsub.clone());
    let note = Notification {
        chat_id: "c".into(),
        sender_id: "s".into(),
        content: "waiting".into(),
        timestamp: "2026-12-02T00:00:00.000Z".into(),
        message_id: "n1".into(),
        seq: None,
    };
    stores
        .pending
        .push_many(
            &["dan".into()],
            &PendingItem::Inline(note),
            plume_chat::store::PendingLimits {
                count: 10,
                bytes: usize::MAX,
            },
        )
        .await
        .unwrap();

    // A first socket joins and gets its pending frames, but dies before the driver wrote
    // them (its next turn never runs): nothing is deleted.
    let mut first = Bare::new(&service, &pubsub, "dan");
    first.join("notifications:dan").await;
    let reply = first.socket.drain_frames().count();
    assert_eq!(reply, 1, "the join reply");
    let pushed = first.turn().await;
    assert!(
        pushed.iter().any(|f| f.contains("pending_notifications")),
        "{pushed:?}"
    );
    assert_eq!(stores.pending.list("dan").await.unwrap().len(), 1);
    first.socket.close().await;
    drop(first);

    // The next socket gets them again; once its frames were written (the next turn), they
    // are gone.
    let mut second = Bare::new(&service, &pubsub, "dan");
    second.join("notifications:dan").await;
    second.socket.drain_frames();
    let pushed = second.turn().await;
    assert!(
        pushed.iter().any(|f| f.contains("\"waiting\"")),
        "{pushed:?}"
    );
    assert_eq!(stores.pending.list("dan").await.unwrap().len(), 1);
    second.turn().await;
    assert!(stores.pending.list("dan").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_whose_delivery_stopped_half_way_is_delivered_by_its_retry_once() {
    // The first attempt is committed and broadcast, but its notification step fails (the
    // member list cannot be read): the sender still hears "sent" (the message is in the
    // log), the offline member has nothing pending yet. The client's retry delivers again:
    // the offline member gets it pending, the member in the chat does not get it twice.
    let (chat, faults) = start_faulty(|_| {}).await;
    for u in ["alice", "bob", "olga"] {
        chat.add_member("d", u).await;
    }
    let mut alice = chat.connect("alice", "a").await;
    let mut bob = chat.connect("bob", "b").await;
    let jr = join_ok(&mut alice, "chat:d").await;
    join_ok(&mut bob, "chat:d").await;
    let body = r#"{"content":"x","mobile_ref_id":"same"}"#;
    faults
        .fail_members
        .store(1, std::sync::atomic::Ordering::SeqCst);
    let (status, first, sent) = send(&mut alice, &jr, "d", body).await;
    assert_eq!((status.as_str(), &sent["status"]), ("ok", &json!("sent")));
    assert_eq!(receive_seqs(&mut bob, 1).await, [1]);
    let mut olga = chat.connect("olga", "o").await;
    join_ok(&mut olga, "notifications:olga").await;
    assert_no(&mut olga, "pending_notifications").await;
    olga.close().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;

    let (_, again, _) = send(&mut alice, &jr, "d", body).await;
    assert_eq!(first, again, "the retry is answered with the original");
    let mut olga = chat.connect("olga", "o2").await;
    join_ok(&mut olga, "notifications:olga").await;
    let pending = next_event(&mut olga, "pending_notifications").await;
    assert_eq!(pending["notifications"][0]["seq"], 1);
    assert_no(&mut bob, "receive_message").await;

    // Once a delivery finished, a retry delivers nothing.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    send(&mut alice, &jr, "d", body).await;
    assert_no(&mut olga, "new_notification").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_keeps_reconnecting_misses_nothing() {
    // The receiver closes its socket 15 times while a sender sends without pause; each
    // rejoin asks for what came after the last seq it saw. Every message arrives once, in
    // order (the loss this ends: a message sent while a socket was closing reached no one).
    // The sender sends as fast as acks come back, well over the default rate limit, which
    // is not what this test is about.
    let chat = start_with_server(
        |c| c.membership = Membership::Open,
        |s| s.socket.max_pushes_per_second = 0,
    )
    .await;
    let mut alice = chat.connect("alice", "a").await;
    let ajr = join_ok(&mut alice, "chat:churn").await;
    const N: usize = 400;
    let sender = tokio::spawn(async move { send_n(&mut alice, &ajr, "churn", "m", N).await });
    let mut seen: Vec<u64> = Vec::new();
    let mut epoch = String::new();
    for round in 0..16 {
        let mut bob = chat.connect("bob", &format!("b{round}")).await;
        let ask = match seen.last() {
            Some(last) => format!(r#"{{"last_seq":{last},"epoch":"{epoch}"}}"#),
            None => r#"{"last_seq":0}"#.to_owned(),
        };
        let (_, status, reply) = join_with(&mut bob, "chat:churn", &ask).await;
        assert_eq!(
            (status.as_str(), &reply["recovered"]),
            ("ok", &json!(true)),
            "{reply}"
        );
        epoch = reply["epoch"].as_str().unwrap().to_owned();
        let take = if round == 15 {
            N - seen.len()
        } else {
            (N / 20).min(N - seen.len())
        };
        seen.extend(receive_seqs(&mut bob, take).await);
        bob.close().await.unwrap();
    }
    sender.await.unwrap();
    assert_eq!(seen, (1..=N as u64).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_pending_notification_refers_to_the_log_instead_of_copying_the_message() {
    let config = ChatConfig::default();
    let stores = Stores::memory(config.retention());
    let chat = start_on(
        config,
        stores.clone(),
        plume_chat::JwtVerifier::hs256(SECRET),
        Some(API_KEY.into()),
    )
    .await;
    let offline: Vec<String> = (0..50).map(|i| format!("off{i}")).collect();
    chat.add_member("big", "alice").await;
    for u in &offline {
        chat.add_member("big", u).await;
    }
    let mut alice = chat.connect("alice", "a").await;
    let jr = join_ok(&mut alice, "chat:big").await;
    let long = "x".repeat(4000);
    let body = format!(r#"{{"content":"{long}","mobile_ref_id":"r"}}"#);
    send(&mut alice, &jr, "big", &body).await;
    for u in &offline {
        let items: Vec<PendingItem> = stores
            .pending
            .list(u)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, i)| i)
            .collect();
        assert_eq!(
            items,
            [PendingItem::Message {
                chat_id: "big".into(),
                seq: 1
            }]
        );
    }
    // Delivered with the content read from the log.
    let mut o = chat.connect("off7", "o").await;
    join_ok(&mut o, "notifications:off7").await;
    let all = next_event(&mut o, "pending_notifications").await;
    assert_eq!(all["notifications"][0]["content"], long.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_stalls_then_resets_gets_everything_on_its_rejoin() {
    // 310 sends back to back: over the default push rate, which is not what this tests.
    let chat = start_with_server(
        |c| c.membership = Membership::Open,
        |s| s.socket.max_pushes_per_second = 0,
    )
    .await;
    let mut alice = chat.connect("alice", "a").await;
    let ajr = join_ok(&mut alice, "chat:stall").await;
    let mut bob = chat.connect("bob", "b").await;
    let (_, _, reply) = join_with(&mut bob, "chat:stall", "{}").await;
    let epoch = reply["epoch"].as_str().unwrap().to_owned();
    send_n(&mut alice, &ajr, "stall", "a", 10).await;
    let first = receive_seqs(&mut bob, 4).await;
    // Bob stops reading (his connection stalls) while 300 more are sent, then it resets:
    // whatever the server had queued or written for him is gone with it.
    send_n(&mut alice, &ajr, "stall", "b", 300).await;
    drop(bob);
    let last = *first.last().unwrap();
    let mut bob = chat.connect("bob", "b2").await;
    let ask = format!(r#"{{"last_seq":{last},"epoch":"{epoch}"}}"#);
    let (_, status, reply) = join_with(&mut bob, "chat:stall", &ask).await;
    assert_eq!(
        (status.as_str(), &reply["recovered"]),
        ("ok", &json!(true)),
        "{reply}"
    );
    let rest = receive_seqs(&mut bob, 310 - last as usize).await;
    assert_eq!(rest, ((last + 1)..=310).collect::<Vec<u64>>());
}

/// The in-process registry, but every broadcast also reports that the cross-node publish
/// failed (as the Redis backend does when its publish queue is full), after delivering
/// locally.
struct RemoteFails(LocalPubSub);

impl PubSub for RemoteFails {
    fn subscribe(
        &self,
        topic: &str,
        sub: plume_channels::Subscriber,
    ) -> plume_channels::Subscribed {
        self.0.subscribe(topic, sub)
    }
    fn unsubscribe(&self, topic: &str, socket: plume_channels::SocketId) {
        self.0.unsubscribe(topic, socket)
    }
    fn broadcast(&self, msg: plume_channels::Broadcast) -> Result<(), plume_channels::PubSubError> {
        self.0.dispatch(&msg);
        Err(plume_channels::PubSubError::QueueFull { capacity: 0 })
    }
    fn registry(&self) -> &LocalPubSub {
        &self.0
    }
}

/// A chat server (with the backend API) whose every broadcast fails to reach other nodes.
async fn start_remote_fails() -> Chat {
    let config = ChatConfig {
        membership: Membership::Open,
        ..ChatConfig::default()
    };
    let pubsub: Arc<dyn PubSub> = Arc::new(RemoteFails(LocalPubSub::new()));
    let service = ChatService::new(
        config.clone(),
        Stores::memory(config.retention()),
        pubsub.clone(),
    );
    let running = plume_server::Server::new(
        plume_server::ServerConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            ..plume_server::ServerConfig::default()
        },
        service.routes(Router::new()),
        pubsub,
        Arc::new(plume_chat::ChatConnect::new(
            plume_chat::JwtVerifier::hs256(SECRET),
        )),
    )
    .with_http_api(Arc::new(service.api(Some(API_KEY.into()))))
    .start()
    .await
    .unwrap();
    Chat { running }
}

#[tokio::test]
async fn delivered_locally_with_the_remote_fan_out_failing_is_still_sent() {
    let chat = start_remote_fails().await;
    let mut alice = chat.connect("alice", "a").await;
    let mut bob = chat.connect("bob", "b").await;
    let jr = join_ok(&mut alice, "chat:pf").await;
    join_ok(&mut bob, "chat:pf").await;
    let body = r#"{"content":"x","mobile_ref_id":"once"}"#;
    let (status, reply, sent) = send(&mut alice, &jr, "pf", body).await;
    assert_eq!(
        (status.as_str(), &sent["status"]),
        ("ok", &json!("sent")),
        "{reply}"
    );
    assert_eq!(receive_seqs(&mut bob, 1).await, [1]);
    // Its send key was kept, so the client's retry is a retry, not a second message.
    let (_, again, _) = send(&mut alice, &jr, "pf", body).await;
    assert_eq!(again, reply);
    assert_no(&mut bob, "receive_message").await;
}

/// A notification to a user whose notifications topic is joined on this node, and a backend
/// broadcast, both with the fan-out to other nodes failing: each reached this node's socket
/// and the backend hears success (a 503 would have it retry, and the local socket get it
/// twice).
#[tokio::test]
async fn the_api_with_the_remote_fan_out_failing_is_answered_as_delivered() {
    let chat = start_remote_fails().await;
    let body = r#"{"user_id":"bob","chat_id":"c9","sender_id":"system","content":"hi"}"#;
    let (code, resp) = chat.api("POST", "/api/notify", Some(body)).await;
    assert_eq!((code, &resp["status"]), (200, &json!("pending")), "{resp}");
    let mut bob = chat.connect("bob", "b").await;
    join_ok(&mut bob, "notifications:bob").await;
    // Sent once bob's topic counts as joined: from here a notification is live.
    next_event(&mut bob, "pending_notifications").await;
    join_ok(&mut bob, "chat:pf").await;
    let (code, resp) = chat.api("POST", "/api/notify", Some(body)).await;
    assert_eq!(
        (code, &resp["status"]),
        (200, &json!("delivered")),
        "{resp}"
    );
    assert_eq!(
        next_event(&mut bob, "new_notification").await["message_id"],
        resp["message_id"]
    );
    let body = r#"{"topic":"chat:pf","event":"announce","payload":{"n":1}}"#;
    let (code, resp) = chat.api("POST", "/api/broadcast", Some(body)).await;
    assert_eq!((code, resp), (202, json!({"status": "accepted"})));
    assert_eq!(next_event(&mut bob, "announce").await, json!({"n": 1}));
}

/// A burst of sends from one socket on the embedded store: the channel takes them without
/// waiting for each commit, so they share the writer's batches, and their seqs, replies and
/// deliveries still follow the order they were sent in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_from_one_socket_shares_commits_and_keeps_its_order() {
    let dir = tempfile::tempdir().unwrap();
    let (chat, stats) =
        start_embedded_counted(dir.path(), |c| c.membership = Membership::Open).await;
    let mut bob = chat.connect("bob", "b").await;
    join_ok(&mut bob, "chat:burst").await;
    let mut alice = chat.connect("alice", "a").await;
    let jr = join_ok(&mut alice, "chat:burst").await;
    let n = 48;
    let commits = stats.commits.load(std::sync::atomic::Ordering::SeqCst);
    let mut refs = Vec::new();
    for i in 0..n {
        let body = format!(r#"{{"content":"m{i}","mobile_ref_id":"b{i}"}}"#);
        refs.push(
            alice
                .push(Some(&jr), "chat:burst", "send_message", &json(&body))
                .await
                .unwrap(),
        );
    }
    // Replies in the order sent, with seqs 1..=n in that order.
    let mut seqs = Vec::new();
    while seqs.len() < n {
        let m = alice.wait_for(|m| m.event == "phx_reply").await.unwrap();
        assert_eq!(m.ref_.as_ref(), Some(&refs[seqs.len()]), "replies in order");
        assert_eq!(m.reply_status().as_deref(), Some("ok"));
        let response: Value = match m.reply_response().unwrap() {
            plume_wire::Payload::Json(j) => j.parse().unwrap(),
            plume_wire::Payload::Binary(_) => Value::Null,
        };
        seqs.push(response["seq"].as_u64().unwrap());
    }
    let expected: Vec<u64> = (1..=n as u64).collect();
    assert_eq!(seqs, expected, "seqs follow the sender's order");
    for (i, seq) in expected.iter().enumerate() {
        let m = next_event(&mut bob, "receive_message").await;
        assert_eq!(
            (m["seq"].as_u64(), m["content"].as_str()),
            (Some(*seq), Some(&*format!("m{i}")))
        );
    }
    let used = stats.commits.load(std::sync::atomic::Ordering::SeqCst) - commits;
    assert!(
        used < n as u64 / 2,
        "{used} commits for {n} sends: the burst did not share them"
    );
}
