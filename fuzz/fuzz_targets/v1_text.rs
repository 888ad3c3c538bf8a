//! V1 JSON objects (`vsn=1.0.0`): client decoding, round trip, server decoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plume_wire::Serializer;

fuzz_target!(|data: &[u8]| {
    plume_fuzz::text_frame(Serializer::V1, data);
    // V1 has no binary frames: every binary frame is refused, never decoded.
    assert!(
        Serializer::V1
            .decode_binary(bytes::Bytes::copy_from_slice(data))
            .is_err()
    );
});
