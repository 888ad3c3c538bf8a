//! Codec micro-benchmarks: the per-frame costs on Plume's hot paths.
//!
//! - `decode_v2_push`: a client's `send_message` text frame into a [`Message`] (every inbound
//!   chat message pays this once).
//! - `encode_broadcast`: one `receive_message` broadcast per serializer; the pub/sub layer does
//!   this once per broadcast, however many subscribers there are, so `share_10k` adds what each
//!   subscriber then costs (a reference-count increment per queue slot).
//! - `v2_binary`: the V2 binary frames: decode a kind-0 client push, encode a kind-2 broadcast
//!   and a kind-1 reply.
//!
//! Run with `cargo bench -p plume-wire --bench codec`.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use plume_wire::client::encode_client_push;
use plume_wire::{Frame, Json, Payload, Ref, Serializer};

/// A `send_message` push the way phoenix.js sends it with the V2 serializer.
const PUSH_V2: &[u8] = br#"["3","17","chat:7","send_message",{"content":"hello from the benchmark, a message of a typical chat length","mobile_ref_id":"m-0193a1b2-17"}]"#;

/// The `receive_message` payload the chat service broadcasts.
const RECEIVE_PAYLOAD: &[u8] = br#"{"chat_id":"7","content":"hello from the benchmark, a message of a typical chat length","sender_id":"alice","message_id":"0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b","timestamp":"2026-11-24T08:00:00.123Z"}"#;

fn receive_payload() -> Payload {
    match Json::from_text(Bytes::from_static(RECEIVE_PAYLOAD)) {
        Ok(json) => Payload::Json(json),
        Err(err) => panic!("benchmark payload is not JSON: {err}"),
    }
}

fn decode_v2_push(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_v2_push");
    group.throughput(Throughput::Bytes(PUSH_V2.len() as u64));
    let frame = Bytes::from_static(PUSH_V2);
    group.bench_function("send_message", |b| {
        b.iter(|| Serializer::V2.decode_text(black_box(frame.clone())))
    });
    group.finish();
}

fn encode_broadcast(c: &mut Criterion) {
    let payload = receive_payload();
    let mut group = c.benchmark_group("encode_broadcast");
    group.throughput(Throughput::Bytes(RECEIVE_PAYLOAD.len() as u64));
    for ser in Serializer::ALL {
        group.bench_with_input(
            BenchmarkId::new("once", format!("{ser:?}")),
            &ser,
            |b, ser| {
                b.iter(|| ser.encode_broadcast(black_box("chat:7"), "receive_message", &payload))
            },
        );
    }
    // Encode once, then hand the frame to 10,000 subscriber queues, as the registry does.
    let mut slots: Vec<Frame> = Vec::with_capacity(10_000);
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("share_10k", |b| {
        b.iter(|| {
            slots.clear();
            if let Ok(frame) =
                Serializer::V2.encode_broadcast(black_box("chat:7"), "receive_message", &payload)
            {
                for _ in 0..10_000 {
                    slots.push(frame.clone());
                }
            }
            slots.len()
        })
    });
    group.finish();
}

fn v2_binary(c: &mut Criterion) {
    let body = Bytes::from(vec![0xA5u8; 256]);
    let binary = Payload::Binary(body.clone());
    let join_ref = Ref::from("3");
    let push_ref = Ref::from("17");
    let push = match encode_client_push(
        Serializer::V2,
        Some(&join_ref),
        Some(&push_ref),
        "chat:7",
        "upload",
        &binary,
    ) {
        Ok(Frame::Binary(bytes)) => bytes,
        other => panic!("expected a binary client push, got {other:?}"),
    };
    let mut group = c.benchmark_group("v2_binary");
    group.throughput(Throughput::Bytes(push.len() as u64));
    group.bench_function("decode_push", |b| {
        b.iter(|| Serializer::V2.decode_binary(black_box(push.clone())))
    });
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("encode_broadcast", |b| {
        b.iter(|| Serializer::V2.encode_broadcast(black_box("chat:7"), "frame", &binary))
    });
    group.bench_function("encode_reply", |b| {
        b.iter(|| {
            Serializer::V2.encode_reply(
                Some(&join_ref),
                Some(black_box(&push_ref)),
                "chat:7",
                "ok",
                &binary,
            )
        })
    });
    group.finish();
}

criterion_group!(benches, decode_v2_push, encode_broadcast, v2_binary);
criterion_main!(benches);
