//! V2 JSON arrays (`vsn=2.0.0`): client decoding, round trip, server decoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plume_wire::Serializer;

fuzz_target!(|data: &[u8]| {
    plume_fuzz::text_frame(Serializer::V2, data);
});
