//! The connection driver over an in-memory stream (`tokio::io::duplex`) with paused time:
//! what a client that stops reading is told (issue 9, failure 6). Before, a write that
//! blocked ran into `write_timeout` and the connection was dropped without a close frame,
//! and an overflow that happened meanwhile was only noticed after the blocked write.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use plume_channels::echo::EchoChannel;
use plume_channels::{
    Broadcast, ConnectInfo, ConnectRequest, LocalPubSub, OutboundRx, PubSub, Router, Socket,
    SocketConfig,
};
use plume_server::driver::{DriverConfig, drive};
use plume_wire::{Json, Payload, Serializer, close};
use tokio::io::DuplexStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

struct Setup {
    client: WebSocketStream<DuplexStream>,
    pubsub: Arc<LocalPubSub>,
    driver: JoinHandle<()>,
}

/// An anonymous V2 socket with the `echo:*` channel.
fn echo_socket(config: SocketConfig, pubsub: Arc<LocalPubSub>) -> (Socket, OutboundRx) {
    let router = Arc::new(Router::new().channel::<EchoChannel>("echo:*", Arc::new(())));
    let info = ConnectInfo {
        request: ConnectRequest {
            params: Default::default(),
            auth_token: None,
            serializer: Serializer::V2,
            peer: None,
        },
        socket_id: None,
        assigns: None,
    };
    Socket::new(info, router, pubsub, config)
}

/// A driven socket joined to `echo:x`, its client at the other end of an 8 KiB pipe.
async fn setup(outbound_capacity: usize) -> Setup {
    let (server_io, client_io) = tokio::io::duplex(8 * 1024);
    let server = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
    let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
    let pubsub = Arc::new(LocalPubSub::new());
    let config = SocketConfig {
        outbound_capacity,
        outbound_max_bytes: usize::MAX,
        ..SocketConfig::default()
    };
    let (socket, rx) = echo_socket(config, pubsub.clone());
    let cfg = DriverConfig {
        idle_timeout: Duration::from_secs(3600),
        write_timeout: WRITE_TIMEOUT,
        max_frame_bytes: 1 << 20,
    };
    let driver = tokio::spawn(drive(server, socket, rx, cfg));
    client
        .send(Message::text(r#"["1","1","echo:x","phx_join",{}]"#))
        .await
        .unwrap();
    let reply = client.next().await.unwrap().unwrap();
    assert!(reply.to_text().unwrap().contains("phx_reply"), "{reply:?}");
    Setup {
        client,
        pubsub,
        driver,
    }
}

fn broadcast(pubsub: &LocalPubSub, n: usize) {
    broadcast_text(
        pubsub,
        format!(r#"{{"n":{n},"pad":"{}"}}"#, "x".repeat(1000)),
    );
}

/// A `news` broadcast on `echo:x` with this JSON payload.
fn broadcast_text(pubsub: &LocalPubSub, text: String) {
    let payload = Payload::Json(Json::from_text(Bytes::from(text)).unwrap());
    pubsub
        .broadcast(Broadcast {
            topic: "echo:x".into(),
            event: "news".into(),
            payload,
            from: None,
            seq: None,
        })
        .unwrap();
}

/// Reads until the close frame; returns how many `news` came first and the close.
async fn read_to_close(
    client: &mut WebSocketStream<DuplexStream>,
) -> (usize, Option<(u16, String)>) {
    let mut news = 0;
    while let Some(msg) = client.next().await {
        match msg {
            Ok(Message::Text(t)) if t.contains("\"news\"") => news += 1,
            Ok(Message::Close(frame)) => {
                return (
                    news,
                    frame.map(|f| (u16::from(f.code), f.reason.to_string())),
                );
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    (news, None)
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_past_the_write_timeout_gets_4008_when_it_reads_again() {
    let mut s = setup(1024).await;
    // 40 KB for an 8 KiB pipe: the driver's write blocks.
    for n in 0..40 {
        broadcast(&s.pubsub, n);
    }
    // The client reads nothing for longer than the write timeout, then again.
    tokio::time::sleep(WRITE_TIMEOUT + Duration::from_secs(1)).await;
    let (news, closed) = read_to_close(&mut s.client).await;
    let (code, reason) = closed.expect("a close frame, not a dropped connection");
    assert_eq!(code, close::SLOW_CONSUMER);
    assert!(reason.starts_with("write timeout"), "{reason}");
    assert!(news > 0, "what the stream held came first");
    s.driver.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_overflow_while_a_write_is_blocked_is_told_at_once() {
    let mut s = setup(16).await;
    for n in 0..12 {
        broadcast(&s.pubsub, n);
    }
    // The write is blocked on the full pipe; 8 s later, 30 more overflow the queue of 16.
    tokio::time::sleep(Duration::from_secs(8)).await;
    for n in 12..42 {
        broadcast(&s.pubsub, n);
    }
    // The client comes back after the blocked write's own timeout would have passed.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_, closed) = read_to_close(&mut s.client).await;
    let (code, reason) = closed.expect("a close frame, not a dropped connection");
    assert_eq!(code, close::SLOW_CONSUMER);
    assert!(reason.starts_with("outbound queue overflow"), "{reason}");
    s.driver.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_client_that_never_reads_again_is_dropped() {
    let s = setup(1024).await;
    for n in 0..40 {
        broadcast(&s.pubsub, n);
    }
    // Write timeout, then as long again for the close frame: the driver ends by itself.
    tokio::time::timeout(3 * WRITE_TIMEOUT, s.driver)
        .await
        .expect("the driver gives up on a client that never reads")
        .unwrap();
    drop(s.client);
}

/// A broadcast of 80 KiB (written from its encoded bytes, through a duplex pipe of 1 KiB, so
/// in many writes) reaches the client as one message, byte for byte.
#[tokio::test(start_paused = true)]
async fn a_large_frame_arrives_whole() {
    let mut s = setup(1024).await;
    let pad = "y".repeat(5 * (16 << 10) + 17);
    broadcast_text(&s.pubsub, format!(r#"{{"n":1,"pad":"{pad}"}}"#));
    let msg = s.client.next().await.unwrap().unwrap();
    let Message::Text(got) = msg else {
        panic!("a text message, not {msg:?}");
    };
    let value: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(value[3], "news");
    assert_eq!(value[4]["pad"].as_str().unwrap(), pad);
    // The socket goes on working after it: a small broadcast arrives too.
    broadcast(&s.pubsub, 2);
    let next = s.client.next().await.unwrap().unwrap();
    assert!(next.to_text().unwrap().contains("\"n\":2"), "{next:?}");
    s.driver.abort();
}

/// The driver's future is most of every connection's task, kept for the connection's life:
/// it stays small. (It was 2,464 bytes in a release build while it was an `async fn`, which
/// stores its arguments twice; 1,728 after.)
#[tokio::test]
async fn the_driver_future_of_a_connection_stays_small() {
    let (server_io, _client_io) = tokio::io::duplex(64);
    let server = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
    let (socket, rx) = echo_socket(SocketConfig::default(), Arc::new(LocalPubSub::new()));
    let cfg = DriverConfig {
        idle_timeout: Duration::from_secs(3600),
        write_timeout: WRITE_TIMEOUT,
        max_frame_bytes: 1 << 20,
    };
    let future = drive(server, socket, rx, cfg);
    let size = std::mem::size_of_val(&future);
    assert!(size <= 2048, "the driver's future grew to {size} bytes");
}
