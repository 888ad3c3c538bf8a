//! JWT authentication on connect.
//!
//! The algorithm is pinned by configuration: an HS256 secret, or an RS256/ES256 PEM public
//! key. A token whose header names another algorithm (`none`, or HS256 signed with the public
//! key's bytes) is refused before its signature is even considered. `exp` is required and,
//! like `nbf`, checked with a small leeway for clock skew. The user id is the `sub` claim.
//!
//! The token comes from the `token` query parameter or, for phoenix.js `authToken`, from the
//! `base64url.bearer.phx.…` subprotocol. A refused connect is an HTTP 403 before the upgrade;
//! the log line says why.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use plume_channels::{Accepted, ConnectHook, ConnectRequest, Refused};
use serde::{Deserialize, Serialize};

use crate::presence::{OnlineGuard, Tracker};

/// Seconds of clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 30;

/// Why a token was refused. The messages are what the refused-connect log line says, so they
/// are words a newcomer can act on, not the JWT library's variant names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token in the params or the subprotocol.
    #[error("missing token")]
    Missing,
    /// Not a JWT: not three base64url parts, or a header or claims that are not JSON.
    #[error("malformed token")]
    Malformed,
    /// Signed with another key or secret.
    #[error("signature does not match")]
    BadSignature,
    /// `exp` is in the past (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not valid yet")]
    NotYetValid,
    /// The header names an algorithm other than the configured one.
    #[error("token algorithm is not the configured one")]
    WrongAlgorithm,
    /// A required claim (`exp`, `sub`) is absent.
    #[error("token has no {0} claim")]
    MissingClaim(String),
    /// A claim has the wrong type (a string `exp`, say).
    #[error("token claim {0} has the wrong type")]
    BadClaim(String),
    /// The `sub` claim is empty.
    #[error("token has no subject")]
    NoSubject,
    /// The `sub` claim is longer than the user id limit.
    #[error("token subject is {len} bytes, over the limit of {max}")]
    SubjectTooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit ([`crate::ChatConfig::max_id_bytes`]).
        max: usize,
    },
    /// The `device_unique_id` connect param is longer than the id limit.
    #[error("device_unique_id is {len} bytes, over the limit of {max}")]
    DeviceIdTooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit ([`crate::ChatConfig::max_id_bytes`]).
        max: usize,
    },
    /// The configured public key could not be loaded.
    #[error("public key: {0}")]
    BadKey(String),
    /// The configured public key is of another kind than the configured algorithm.
    #[error(
        "the public key is an {key} key, which signs {key_alg}, but the algorithm is set to {configured}"
    )]
    KeyAlgorithmMismatch {
        /// `RSA` or `EC P-256`.
        key: &'static str,
        /// What that key signs.
        key_alg: PublicKeyAlgorithm,
        /// What was configured.
        configured: PublicKeyAlgorithm,
    },
    /// `aud` is absent or not the configured audience.
    #[error("token audience is not the expected one")]
    WrongAudience,
    /// `iss` is absent or not the configured issuer.
    #[error("token issuer is not the expected one")]
    WrongIssuer,
    /// Any other failure of the JWT library (signing, or a kind it adds later).
    #[error("invalid token: {0}")]
    Invalid(String),
}

impl From<jsonwebtoken::errors::Error> for AuthError {
    fn from(err: jsonwebtoken::errors::Error) -> AuthError {
        use jsonwebtoken::errors::ErrorKind;
        match err.kind() {
            ErrorKind::InvalidToken
            | ErrorKind::Base64(_)
            | ErrorKind::Json(_)
            | ErrorKind::Utf8(_)
            | ErrorKind::InvalidAlgorithmName => AuthError::Malformed,
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidAlgorithm => AuthError::WrongAlgorithm,
            ErrorKind::InvalidAudience => AuthError::WrongAudience,
            ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
            ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => AuthError::WrongAudience,
            ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => AuthError::WrongIssuer,
            ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(claim.clone()),
            ErrorKind::InvalidClaimFormat(claim) => AuthError::BadClaim(claim.clone()),
            _ => AuthError::Invalid(err.to_string()),
        }
    }
}

/// The claims Plume reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry (seconds since the epoch).
    pub exp: u64,
    /// Not before (seconds since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// Verifies tokens with one pinned algorithm and key.
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
}

/// The public-key algorithms Plume accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PublicKeyAlgorithm {
    /// RSA PKCS#1 v1.5 with SHA-256.
    RS256,
    /// ECDSA P-256 with SHA-256.
    ES256,
}

impl std::fmt::Display for PublicKeyAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PublicKeyAlgorithm::RS256 => "RS256",
            PublicKeyAlgorithm::ES256 => "ES256",
        })
    }
}

impl JwtVerifier {
    fn with(key: DecodingKey, alg: Algorithm) -> JwtVerifier {
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // `sub` is required too, but checked in `verify`, which can tell absent from mistyped.
        validation.set_required_spec_claims(&["exp"]);
        JwtVerifier { key, validation }
    }

    /// HS256 with a shared secret.
    pub fn hs256(secret: &[u8]) -> JwtVerifier {
        JwtVerifier::with(DecodingKey::from_secret(secret), Algorithm::HS256)
    }

    /// RS256 or ES256 with a PEM public key, the algorithm following the key: an RSA key
    /// verifies RS256, an EC P-256 key ES256. With `configured`, a key of the other kind is a
    /// [`AuthError::KeyAlgorithmMismatch`] naming both.
    pub fn public_key_for(
        configured: Option<PublicKeyAlgorithm>,
        pem: &[u8],
    ) -> Result<JwtVerifier, AuthError> {
        let kind = if DecodingKey::from_rsa_pem(pem).is_ok() {
            ("RSA", PublicKeyAlgorithm::RS256)
        } else if DecodingKey::from_ec_pem(pem).is_ok() {
            ("EC P-256", PublicKeyAlgorithm::ES256)
        } else {
            return Err(AuthError::BadKey(
                "not an RSA or EC public key in PEM format".into(),
            ));
        };
        match configured {
            Some(alg) if alg != kind.1 => Err(AuthError::KeyAlgorithmMismatch {
                key: kind.0,
                key_alg: kind.1,
                configured: alg,
            }),
            _ => JwtVerifier::public_key(kind.1, pem),
        }
    }

    /// Also requires `aud` to contain `audience`.
    pub fn with_audience(mut self, audience: &str) -> JwtVerifier {
        self.validation.set_audience(&[audience]);
        let mut required: Vec<&str> = vec!["exp", "aud"];
        if self.validation.iss.is_some() {
            required.push("iss");
        }
        self.validation.set_required_spec_claims(&required);
        self
    }

    /// Also requires `iss` to be `issuer`.
    pub fn with_issuer(mut self, issuer: &str) -> JwtVerifier {
        self.validation.set_issuer(&[issuer]);
        let mut required: Vec<&str> = vec!["exp", "iss"];
        if self.validation.aud.is_some() {
            required.push("aud");
        }
        self.validation.set_required_spec_claims(&required);
        self
    }

    /// RS256 or ES256 with a PEM public key.
    pub fn public_key(alg: PublicKeyAlgorithm, pem: &[u8]) -> Result<JwtVerifier, AuthError> {
        let (key, alg) = match alg {
            PublicKeyAlgorithm::RS256 => (DecodingKey::from_rsa_pem(pem), Algorithm::RS256),
            PublicKeyAlgorithm::ES256 => (DecodingKey::from_ec_pem(pem), Algorithm::ES256),
        };
        let key = key.map_err(|e| AuthError::BadKey(e.to_string()))?;
        Ok(JwtVerifier::with(key, alg))
    }

    /// Verifies a token and returns its subject.
    pub fn verify(&self, token: &str) -> Result<String, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        // Decoded as a plain map so that the library's validation, not serde, judges a missing
        // or mistyped `exp`/`sub`: that gives "token has no exp claim" rather than a parse error.
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &self.key,
            &self.validation,
        )?;
        match data.claims.get("sub") {
            Some(serde_json::Value::String(sub)) if sub.is_empty() => Err(AuthError::NoSubject),
            Some(serde_json::Value::String(sub)) => Ok(sub.clone()),
            Some(_) => Err(AuthError::BadClaim("sub".into())),
            None => Err(AuthError::MissingClaim("sub".into())),
        }
    }
}

/// Signs an HS256 token for `sub`, valid for `ttl_secs` (for `plume token` and tests).
pub fn sign_hs256(secret: &[u8], sub: &str, ttl_secs: u64) -> Result<String, AuthError> {
    let now = now_secs();
    let claims = Claims {
        sub: sub.to_owned(),
        exp: now + ttl_secs,
        nbf: None,
        iat: Some(now),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(AuthError::from)
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The authenticated user of a socket, with the connect params the service keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSession {
    /// The `sub` claim.
    pub user_id: String,
    /// `device_unique_id` param; empty when absent.
    pub device_unique_id: String,
    /// `preferred_language` param; `en` when absent.
    pub preferred_language: String,
    /// Counts the socket towards the user's online status while it lives.
    pub online: OnlineSlot,
}

/// Holds a socket's [`OnlineGuard`] (when the hook counts online status): the guard goes
/// with the socket's session, and its drop is the socket's end. Compares equal to any other
/// slot, so sessions compare by their fields.
#[derive(Debug, Clone, Default)]
pub struct OnlineSlot(pub Option<Arc<OnlineGuard>>);

impl PartialEq for OnlineSlot {
    fn eq(&self, _other: &OnlineSlot) -> bool {
        true
    }
}

impl Eq for OnlineSlot {}

/// Default `preferred_language`.
pub const DEFAULT_LANGUAGE: &str = "en";

/// The connect hook of the chat service: a valid JWT whose subject is a usable user id, or
/// HTTP 403.
pub struct ChatConnect {
    verifier: JwtVerifier,
    max_user_id_bytes: usize,
    online: Option<Arc<Tracker>>,
}

impl ChatConnect {
    /// A hook that verifies with `verifier`, with the default user id limit.
    pub fn new(verifier: JwtVerifier) -> ChatConnect {
        ChatConnect {
            verifier,
            max_user_id_bytes: crate::ChatConfig::default().max_id_bytes,
            online: None,
        }
    }

    /// Counts every accepted socket towards its user's online status in `tracker`
    /// ([`crate::ChatService::presence`]) until the socket ends.
    pub fn online(mut self, tracker: Arc<Tracker>) -> ChatConnect {
        self.online = Some(tracker);
        self
    }

    /// Sets the longest user id (`sub`) accepted, in bytes ([`crate::ChatConfig::max_id_bytes`]).
    pub fn max_user_id_bytes(mut self, max: usize) -> ChatConnect {
        self.max_user_id_bytes = max;
        self
    }
}

impl ConnectHook for ChatConnect {
    fn connect(&self, req: &ConnectRequest) -> Result<Accepted, Refused> {
        let token = req
            .param("token")
            .filter(|t| !t.is_empty())
            .or(req.auth_token.as_deref())
            .unwrap_or("");
        let user_id = self
            .verifier
            .verify(token)
            .map_err(|e| Refused(e.to_string()))?;
        // Checked here, before the id is kept anywhere (socket id topic, presence, stores).
        if user_id.len() > self.max_user_id_bytes {
            let err = AuthError::SubjectTooLong {
                len: user_id.len(),
                max: self.max_user_id_bytes,
            };
            return Err(Refused(err.to_string()));
        }
        let device = req.param("device_unique_id").unwrap_or("");
        // It becomes part of every presence meta of the socket.
        if device.len() > self.max_user_id_bytes {
            let err = AuthError::DeviceIdTooLong {
                len: device.len(),
                max: self.max_user_id_bytes,
            };
            return Err(Refused(err.to_string()));
        }
        let online = OnlineSlot(
            self.online
                .as_ref()
                .map(|t| Arc::new(OnlineGuard::new(t, &user_id))),
        );
        let session = UserSession {
            online,
            device_unique_id: device.to_owned(),
            preferred_language: req
                .param("preferred_language")
                .filter(|l| !l.is_empty())
                .unwrap_or(DEFAULT_LANGUAGE)
                .to_owned(),
            user_id,
        };
        Ok(Accepted {
            socket_id: Some(crate::events::user_socket_topic(&session.user_id)),
            assigns: Some(Arc::new(session)),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test-secret";

    fn claims_token(claims: &serde_json::Value, alg: Algorithm, key: &EncodingKey) -> String {
        jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
    }

    #[test]
    fn a_signed_token_gives_its_subject() {
        let token = sign_hs256(SECRET, "alice", 60).unwrap();
        assert_eq!(JwtVerifier::hs256(SECRET).verify(&token).unwrap(), "alice");
    }

    #[test]
    fn wrong_secret_expired_future_and_garbage_are_refused() {
        let v = JwtVerifier::hs256(SECRET);
        let other = sign_hs256(b"other", "alice", 60).unwrap();
        assert_eq!(v.verify(&other), Err(AuthError::BadSignature));
        let key = EncodingKey::from_secret(SECRET);
        let now = now_secs();
        let expired = claims_token(
            &serde_json::json!({"sub":"a","exp": now - 3600}),
            Algorithm::HS256,
            &key,
        );
        assert_eq!(v.verify(&expired), Err(AuthError::Expired));
        let not_yet = claims_token(
            &serde_json::json!({"sub":"a","exp": now + 7200,"nbf": now + 3600}),
            Algorithm::HS256,
            &key,
        );
        assert_eq!(v.verify(&not_yet), Err(AuthError::NotYetValid));
        // Within the leeway is fine.
        let skewed = claims_token(
            &serde_json::json!({"sub":"a","exp": now - 5}),
            Algorithm::HS256,
            &key,
        );
        assert_eq!(v.verify(&skewed).unwrap(), "a");
        let no_exp = claims_token(&serde_json::json!({"sub":"a"}), Algorithm::HS256, &key);
        assert_eq!(
            v.verify(&no_exp),
            Err(AuthError::MissingClaim("exp".into()))
        );
        let no_sub = claims_token(
            &serde_json::json!({"sub":"","exp": now + 60}),
            Algorithm::HS256,
            &key,
        );
        assert_eq!(v.verify(&no_sub), Err(AuthError::NoSubject));
        assert_eq!(v.verify("not.a.jwt"), Err(AuthError::Malformed));
        assert_eq!(v.verify(""), Err(AuthError::Missing));
    }

    #[test]
    fn refusals_are_logged_in_words() {
        let v = JwtVerifier::hs256(SECRET);
        let key = EncodingKey::from_secret(SECRET);
        let now = now_secs();
        let said = |token: &str| v.verify(token).unwrap_err().to_string();
        assert_eq!(
            said(&sign_hs256(b"other", "a", 60).unwrap()),
            "signature does not match"
        );
        let expired = claims_token(
            &serde_json::json!({"sub":"a","exp": now - 3600}),
            Algorithm::HS256,
            &key,
        );
        assert_eq!(said(&expired), "token expired");
        assert_eq!(said("abc.def.ghi"), "malformed token");
        assert_eq!(said("no dots at all"), "malformed token");
        let no_exp = claims_token(&serde_json::json!({"sub":"a"}), Algorithm::HS256, &key);
        assert_eq!(said(&no_exp), "token has no exp claim");
        let bad_sub = claims_token(
            &serde_json::json!({"sub": 7, "exp": now + 60}),
            Algorithm::HS256,
            &key,
        );
        assert_eq!(said(&bad_sub), "token claim sub has the wrong type");
        let no_sub = claims_token(
            &serde_json::json!({"exp": now + 60}),
            Algorithm::HS256,
            &key,
        );
        assert_eq!(said(&no_sub), "token has no sub claim");
        // An HS256 token offered to an RS256 verifier names the mismatch, not `InvalidAlgorithm`.
        let rsa = JwtVerifier::public_key(
            PublicKeyAlgorithm::RS256,
            include_bytes!("../tests/keys/rsa_public.pem"),
        )
        .unwrap();
        assert_eq!(
            rsa.verify(&sign_hs256(SECRET, "a", 60).unwrap())
                .unwrap_err()
                .to_string(),
            "token algorithm is not the configured one"
        );
    }

    #[test]
    fn alg_none_is_refused() {
        // {"alg":"none","typ":"JWT"} . {"sub":"a","exp":9999999999} . (no signature)
        let token = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert!(JwtVerifier::hs256(SECRET).verify(token).is_err());
    }

    fn request(params: serde_json::Value, auth_token: Option<&str>) -> ConnectRequest {
        ConnectRequest {
            params: params.as_object().unwrap().clone(),
            auth_token: auth_token.map(str::to_owned),
            serializer: plume_wire::Serializer::V2,
            peer: None,
        }
    }

    #[test]
    fn the_hook_keeps_device_and_language_with_defaults() {
        let hook = ChatConnect::new(JwtVerifier::hs256(SECRET));
        let token = sign_hs256(SECRET, "u1", 60).unwrap();
        let accepted = hook
            .connect(&request(
                serde_json::json!({"token": token, "device_unique_id": "dev-9", "preferred_language": "pt"}),
                None,
            ))
            .unwrap();
        assert_eq!(accepted.socket_id.as_deref(), Some("user_socket:u1"));
        let session = accepted.assigns.unwrap().downcast::<UserSession>().unwrap();
        assert_eq!(
            *session,
            UserSession {
                user_id: "u1".into(),
                device_unique_id: "dev-9".into(),
                preferred_language: "pt".into(),
                online: OnlineSlot::default(),
            }
        );
        // Defaults, and the token taken from the authToken subprotocol.
        let accepted = hook
            .connect(&request(serde_json::json!({"vsn": "2.0.0"}), Some(&token)))
            .unwrap();
        let session = accepted.assigns.unwrap().downcast::<UserSession>().unwrap();
        assert_eq!(
            (
                session.device_unique_id.as_str(),
                session.preferred_language.as_str()
            ),
            ("", DEFAULT_LANGUAGE)
        );
        assert!(hook.connect(&request(serde_json::json!({}), None)).is_err());
    }
}
