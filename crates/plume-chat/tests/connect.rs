//! JWT authentication on connect: every refusal is an HTTP 403 before the upgrade.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use plume_chat::{JwtVerifier, PublicKeyAlgorithm};
use plume_client::{ClientError, ConnectOptions};

fn status(r: Result<plume_client::Client, ClientError>) -> u16 {
    match r {
        Ok(_) => 101,
        Err(ClientError::Refused(s)) => s.as_u16(),
        Err(other) => panic!("unexpected {other}"),
    }
}

fn q(token: &str) -> String {
    format!("token={token}&device_unique_id=d&preferred_language=EN&vsn=2.0.0")
}

fn now() -> u64 {
    plume_chat::auth::now_secs()
}

fn hs(claims: serde_json::Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

#[tokio::test]
async fn valid_token_connects_and_bad_tokens_get_403() {
    let chat = start().await;
    let opts = ConnectOptions::default;
    assert_eq!(
        status(chat.connect_with(&q(&token("alice")), opts()).await),
        101
    );
    assert_eq!(
        status(chat.connect_with("vsn=2.0.0", opts()).await),
        403,
        "missing token"
    );
    assert_eq!(
        status(chat.connect_with(&q(""), opts()).await),
        403,
        "empty token"
    );
    assert_eq!(
        status(chat.connect_with(&q("abc.def.ghi"), opts()).await),
        403,
        "malformed"
    );
    let expired = hs(serde_json::json!({"sub":"a","exp": now() - 3600}), SECRET);
    assert_eq!(
        status(chat.connect_with(&q(&expired), opts()).await),
        403,
        "expired"
    );
    let wrong = hs(
        serde_json::json!({"sub":"a","exp": now() + 600}),
        b"another-secret",
    );
    assert_eq!(
        status(chat.connect_with(&q(&wrong), opts()).await),
        403,
        "wrong signature"
    );
    let early = hs(
        serde_json::json!({"sub":"a","exp": now() + 7200, "nbf": now() + 3600}),
        SECRET,
    );
    assert_eq!(
        status(chat.connect_with(&q(&early), opts()).await),
        403,
        "not yet valid"
    );
    // {"alg":"none"} with the claims and an empty signature.
    let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
    assert_eq!(
        status(chat.connect_with(&q(none), opts()).await),
        403,
        "alg none"
    );
}

#[tokio::test]
async fn the_token_may_arrive_through_the_auth_token_subprotocol() {
    let chat = start().await;
    let opts = ConnectOptions::default().with_auth_token(&token("bob"));
    let mut c = chat
        .connect_with("device_unique_id=d&vsn=2.0.0", opts)
        .await
        .unwrap();
    assert_eq!(c.protocol(), Some("phoenix"));
    // The socket belongs to bob: his notifications topic is his to join.
    join_ok(&mut c, "notifications:bob").await;
    let bad = ConnectOptions::default().with_auth_token("garbage");
    assert_eq!(status(chat.connect_with("vsn=2.0.0", bad).await), 403);
}

fn key(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// A server verifying with `public` accepts a token signed with `private` under `alg`, and
/// refuses an HS256 token whose secret is the public key's bytes (the algorithm-confusion
/// attack) and a token signed with the HS256 test secret.
async fn public_key_case(alg: PublicKeyAlgorithm, public: &str, private: &str) {
    let verifier = JwtVerifier::public_key(alg, &key(public)).unwrap();
    let chat = start_custom(|_| {}, verifier, None).await;
    let claims = serde_json::json!({"sub":"rita","exp": now() + 600});
    let (header, signing) = match alg {
        PublicKeyAlgorithm::RS256 => (
            Header::new(Algorithm::RS256),
            EncodingKey::from_rsa_pem(&key(private)).unwrap(),
        ),
        PublicKeyAlgorithm::ES256 => (
            Header::new(Algorithm::ES256),
            EncodingKey::from_ec_pem(&key(private)).unwrap(),
        ),
    };
    let good = jsonwebtoken::encode(&header, &claims, &signing).unwrap();
    let forged = hs(claims, &key(public));
    for (token, expected) in [(good, 101), (forged, 403), (token("rita"), 403)] {
        let got = status(
            chat.connect_with(&q(&token), ConnectOptions::default())
                .await,
        );
        assert_eq!(got, expected, "{alg:?}");
    }
}

#[tokio::test]
async fn rs256_public_key_accepts_rs256_and_refuses_hs256_signed_with_the_key() {
    public_key_case(
        PublicKeyAlgorithm::RS256,
        "rsa_public.pem",
        "rsa_private.pem",
    )
    .await;
}

#[tokio::test]
async fn es256_public_key_accepts_es256_and_refuses_hs256_signed_with_the_key() {
    public_key_case(PublicKeyAlgorithm::ES256, "ec_public.pem", "ec_private.pem").await;
}

#[test]
fn a_key_of_the_wrong_type_is_rejected_at_start_up() {
    assert!(JwtVerifier::public_key(PublicKeyAlgorithm::ES256, &key("rsa_public.pem")).is_err());
    assert!(JwtVerifier::public_key(PublicKeyAlgorithm::RS256, b"not a pem").is_err());
}

#[test]
fn the_algorithm_follows_the_key_and_a_mismatch_names_both() {
    use plume_chat::auth::AuthError;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({"sub": "ec-user", "exp": now + 600});
    let signed = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(&key("ec_private.pem")).unwrap(),
    )
    .unwrap();
    // No algorithm configured: an EC key means ES256 (it used to default to RS256 and fail).
    let v = JwtVerifier::public_key_for(None, &key("ec_public.pem")).unwrap();
    assert_eq!(v.verify(&signed).unwrap(), "ec-user");
    assert!(JwtVerifier::public_key_for(None, &key("rsa_public.pem")).is_ok());
    let err = JwtVerifier::public_key_for(Some(PublicKeyAlgorithm::RS256), &key("ec_public.pem"))
        .err()
        .unwrap();
    assert!(
        matches!(err, AuthError::KeyAlgorithmMismatch { .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("EC P-256") && text.contains("ES256") && text.contains("RS256"),
        "{text}"
    );
    assert!(JwtVerifier::public_key_for(None, b"not a pem").is_err());
}

#[test]
fn audience_and_issuer_are_checked_when_configured() {
    use plume_chat::auth::AuthError;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sign = |claims: serde_json::Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    };
    let v = JwtVerifier::hs256(SECRET)
        .with_audience("chat-app")
        .with_issuer("https://auth.example.com");
    let good = sign(
        serde_json::json!({"sub":"a","exp":now+60,"aud":"chat-app","iss":"https://auth.example.com"}),
    );
    assert_eq!(v.verify(&good).unwrap(), "a");
    let cases = [
        (
            serde_json::json!({"sub":"a","exp":now+60,"aud":"other","iss":"https://auth.example.com"}),
            "audience",
        ),
        (
            serde_json::json!({"sub":"a","exp":now+60,"iss":"https://auth.example.com"}),
            "audience",
        ),
        (
            serde_json::json!({"sub":"a","exp":now+60,"aud":"chat-app","iss":"https://evil.example"}),
            "issuer",
        ),
        (
            serde_json::json!({"sub":"a","exp":now+60,"aud":"chat-app"}),
            "issuer",
        ),
    ];
    for (claims, what) in cases {
        let err = v.verify(&sign(claims.clone())).err().unwrap();
        let expected = match what {
            "audience" => matches!(err, AuthError::WrongAudience),
            _ => matches!(err, AuthError::WrongIssuer),
        };
        assert!(expected, "{claims}: {err}");
    }
    // Without the checks configured, neither claim is needed.
    let plain = sign(serde_json::json!({"sub":"a","exp":now+60}));
    assert_eq!(JwtVerifier::hs256(SECRET).verify(&plain).unwrap(), "a");
}
