//! JWT verification (`JwtVerifier::verify`, HS256 with a fixed secret) of any text as a token.
//!
//! Input without a NUL byte is the token itself. Input `header \0 claims` is two JSON texts
//! that the target base64url-encodes and signs with the verifier's own secret, so the
//! fuzzer reaches header parsing (alg, typ, kid, crit, ...), claims parsing and the claim
//! checks behind a valid signature, which random tokens never get past.
#![no_main]

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use plume_chat::JwtVerifier;
use serde_json::Value;

const SECRET: &[u8] = b"plume fuzz secret";

fn verifier() -> &'static JwtVerifier {
    static VERIFIER: OnceLock<JwtVerifier> = OnceLock::new();
    VERIFIER.get_or_init(|| JwtVerifier::hs256(SECRET))
}

fn signed(header: &[u8], claims: &[u8]) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let key = EncodingKey::from_secret(SECRET);
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256)
        .expect("HS256 signing with a secret cannot fail");
    format!("{message}.{signature}")
}

fuzz_target!(|data: &[u8]| {
    match data.iter().position(|&b| b == 0) {
        None => {
            let token = String::from_utf8_lossy(data);
            // A seed token signed with SECRET can verify (and a mutation of it that keeps
            // header, claims and signature); any token that does has a subject.
            if let Ok(sub) = verifier().verify(&token) {
                assert!(!sub.is_empty(), "{token:?}");
            }
        }
        Some(nul) => {
            let (header, claims) = (&data[..nul], &data[nul + 1..]);
            let token = signed(header, claims);
            if let Ok(sub) = verifier().verify(&token) {
                assert!(!sub.is_empty());
                // Verified means: the header pins HS256, and `sub` is the claims' string sub.
                let header: Value = serde_json::from_slice(header).expect("verified header");
                assert_eq!(header["alg"], "HS256", "{header}");
                let claims: Value = serde_json::from_slice(claims).expect("verified claims");
                assert_eq!(claims["sub"], Value::String(sub), "{claims}");
                assert!(claims["exp"].is_number(), "{claims}");
            }
        }
    }
});
