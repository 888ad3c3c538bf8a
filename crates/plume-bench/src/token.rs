//! Connect tokens: HS256 JWTs with the same claims `plume token` signs (`sub`, `exp`, `iat`),
//! accepted by Plume started with the same `--jwt-secret` and by the Socket.IO peer.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// How long benchmark tokens stay valid (longer than any run may last).
pub const TOKEN_TTL_SECS: u64 = 4 * 3600;

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    iat: u64,
}

/// Signs tokens with one secret.
#[derive(Clone)]
pub struct Signer {
    key: EncodingKey,
    header: Header,
}

impl Signer {
    /// A signer for an HS256 secret.
    pub fn hs256(secret: &[u8]) -> Signer {
        Signer {
            key: EncodingKey::from_secret(secret),
            header: Header::new(Algorithm::HS256),
        }
    }

    /// A token for `sub`, valid for [`TOKEN_TTL_SECS`].
    pub fn sign(&self, sub: &str) -> Result<String, jsonwebtoken::errors::Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = Claims {
            sub,
            exp: now + TOKEN_TTL_SECS,
            iat: now,
        };
        jsonwebtoken::encode(&self.header, &claims, &self.key)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    #[derive(serde::Deserialize)]
    struct Decoded {
        sub: String,
        exp: u64,
    }

    #[test]
    fn tokens_verify_with_the_same_secret_only() {
        let token = Signer::hs256(b"s3cret").sign("alice").unwrap();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<Decoded>(
            &token,
            &DecodingKey::from_secret(b"s3cret"),
            &validation,
        )
        .unwrap();
        assert_eq!(data.claims.sub, "alice");
        assert!(data.claims.exp > 0);
        assert!(
            jsonwebtoken::decode::<Decoded>(
                &token,
                &DecodingKey::from_secret(b"other"),
                &validation
            )
            .is_err()
        );
    }
}
