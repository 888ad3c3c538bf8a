//! Every decoder must turn any input into a value or an error, never a panic: mutated and
//! truncated copies of real frames, plus random bytes, from a fixed seed (so a failure
//! reproduces).

use bytes::Bytes;
use plume_wire::client::{decode_server_binary, decode_server_text};
use plume_wire::{Json, Payload, Serializer};

const SEEDS: &[&[u8]] = &[
    br#"[null,"1","phoenix","heartbeat",{}]"#,
    br#"["3","3","room:lobby","phx_join",{"name":"x","list":[1,2.5,-3e2,true,null]}]"#,
    br#"[1,2,"chat:\u00e9\"","ev\\n",{"a":"]\",["}]"#,
    br#"{"topic":"t","event":"e","payload":{"k":[{}]},"ref":"1","join_ref":7}"#,
    br#"["1","1","chat:1","phx_reply",{"response":{"reason":"x"},"status":"error"}]"#,
    b"\x00\x02\x03\x05\x0512123topicevent\x65\x66\x67",
    b"\x01\x02\x03\x05\x0212123topicok\x65\x66\x67",
    b"\x02\x05\x05topicevent\x65\x66\x67",
];

/// xorshift64*: small, deterministic, good enough to spread mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n.max(1) as u64).unwrap_or(0)
    }

    fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
    }
}

const INTERESTING: &[u8] = b"[]{}\",:\\0123456789-enulltrufas \x00\x01\x05\xff\xc3";

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(data.len() + 1);
        match rng.below(5) {
            0 => data.truncate(at),
            1 if at < data.len() => data[at] = INTERESTING[rng.below(INTERESTING.len())],
            2 => data.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
            3 if at < data.len() => {
                data.remove(at);
            }
            _ if at < data.len() => data[at] = rng.byte(),
            _ => data.push(rng.byte()),
        }
    }
    data
}

fn exercise(data: Vec<u8>) {
    let data = Bytes::from(data);
    for ser in Serializer::ALL {
        if let Ok(m) = ser.decode_text(data.clone()) {
            // A decoded JSON payload is always one valid JSON value.
            if let Payload::Json(json) = &m.payload {
                assert!(
                    Json::from_text(json.as_bytes().clone()).is_ok(),
                    "invalid payload {json:?} from {data:?}"
                );
            }
        }
        let _ = ser.decode_binary(data.clone());
        if let Ok(m) = decode_server_text(ser, data.clone()) {
            let _ = (m.reply_status(), m.reply_response());
        }
    }
    if let Ok(m) = decode_server_binary(data) {
        let _ = (m.reply_status(), m.reply_response());
    }
}

#[test]
fn mutated_frames_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let seed = SEEDS[rng.below(SEEDS.len())];
        exercise(mutate(&mut rng, seed));
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    for _ in 0..5_000 {
        let len = rng.below(64);
        exercise((0..len).map(|_| rng.byte()).collect());
    }
}
